//! The policy engine: given who is calling, what they want to do and the resource's
//! owner row, decide. Pure: no IO, no async, no clock, so every rule of the FlexMeasures
//! model is a table-driven unit test here.
//!
//! The order of checks follows FlexMeasures' `check_access`: anonymous callers are
//! refused first (401), a request without a resource context is refused (403, even for
//! admins), `admin` passes everything and `admin-reader` passes `read`, and otherwise an
//! ACL item must match. Unknown permission names never get this far: the rule compiler
//! refuses them. Role decorators (`roles_required`, ...) are [`check_roles`].

pub mod acl;

pub use acl::{Acl, Item, Principal, Slot, Term, Value};

/// A permission, interned by the rule compiler. The four FlexMeasures permissions have
/// fixed ids; operator-declared ones follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Permission(pub u16);

impl Permission {
    /// Creating things under a resource (users in an account, sensors on an asset).
    pub const CREATE_CHILDREN: Permission = Permission(0);
    /// Reading; the one permission `admin-reader` passes.
    pub const READ: Permission = Permission(1);
    /// Changing.
    pub const UPDATE: Permission = Permission(2);
    /// Deleting.
    pub const DELETE: Permission = Permission(3);
    /// The built-in names, in id order.
    pub const BUILTIN: [&'static str; 4] = ["create-children", "read", "update", "delete"];
}

/// The role names with built-in meaning; configurable because some deployments rename them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminRoles {
    /// Passes every check.
    pub admin: String,
    /// Passes every `read` check.
    pub admin_reader: String,
}

impl Default for AdminRoles {
    fn default() -> Self {
        AdminRoles {
            admin: "admin".into(),
            admin_reader: "admin-reader".into(),
        }
    }
}

/// A test on one column of the owner row that picks a different ACL set, e.g. a public
/// asset (owner NULL) is readable by every logged-in user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The column is NULL.
    IsNull(usize),
    /// The column is not NULL.
    NotNull(usize),
    /// The column equals this value (booleans, kinds, ...).
    Equals(usize, Value),
}

impl Condition {
    /// Whether the row satisfies the condition.
    pub fn holds(&self, row: &[Value]) -> bool {
        let col = |i: &usize| row.get(*i).unwrap_or(&Value::Null);
        match self {
            Condition::IsNull(i) => *col(i) == Value::Null,
            Condition::NotNull(i) => *col(i) != Value::Null,
            Condition::Equals(i, v) => col(i) == v,
        }
    }
}

/// The ACLs of one resource kind: one [`Acl`] per permission (a missing one means
/// "admins only"), with optional cases that replace the whole set when they hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KindPolicy {
    /// ACL per permission id; `None` = not in the ACL.
    pub acls: Vec<Option<Acl>>,
    /// `(condition, acls)`: the first case that holds wins over `acls`.
    pub cases: Vec<(Condition, Vec<Option<Acl>>)>,
}

impl KindPolicy {
    /// The ACL that applies to `permission` on a resource with this owner row, and which
    /// case chose it (`None` = the default set).
    pub fn acl_for(&self, permission: Permission, row: &[Value]) -> (Option<&Acl>, Option<usize>) {
        let (set, case) = match self.cases.iter().position(|(c, _)| c.holds(row)) {
            Some(i) => (&self.cases[i].1, Some(i)),
            None => (&self.acls, None),
        };
        (
            set.get(usize::from(permission.0)).and_then(Option::as_ref),
            case,
        )
    }
}

/// Why access was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granted {
    /// The caller has the admin role.
    Admin,
    /// The caller has the admin-reader role and the permission is `read`.
    AdminReader,
    /// This ACL item (index) matched.
    Item(usize),
}

/// Why access was refused. Never shown to the client; logged and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No authenticated caller (401).
    Anonymous,
    /// No resource to check against (403, even for admins).
    NoContext,
    /// The permission is not in the kind's ACL: admins only (403).
    NotInAcl,
    /// No ACL item matched the caller (403).
    NoItemMatched,
}

/// The outcome of [`check_access`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow(Granted),
    /// Stop.
    Deny(Refused),
}

impl Decision {
    /// Whether the request may proceed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

/// FlexMeasures' `check_access`, minus the unknown-permission case (refused at compile).
pub fn check_access(
    who: Option<&Principal>,
    permission: Permission,
    resource: Option<(&KindPolicy, &[Value])>,
    admins: &AdminRoles,
) -> Decision {
    let Some(who) = who else {
        return Decision::Deny(Refused::Anonymous);
    };
    let Some((kind, row)) = resource else {
        return Decision::Deny(Refused::NoContext);
    };
    if who.has_role(&admins.admin) {
        return Decision::Allow(Granted::Admin);
    }
    if permission == Permission::READ && who.has_role(&admins.admin_reader) {
        return Decision::Allow(Granted::AdminReader);
    }
    match kind.acl_for(permission, row).0 {
        None => Decision::Deny(Refused::NotInAcl),
        Some(acl) => match acl.first_match(who, row) {
            Some(i) => Decision::Allow(Granted::Item(i)),
            None => Decision::Deny(Refused::NoItemMatched),
        },
    }
}

/// Role requirements of a route, with FlexMeasures' decorator semantics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleRequirements {
    /// `roles_required`: the user has every one.
    pub required: Vec<String>,
    /// `roles_accepted`: the user has at least one (admin always accepted).
    pub accepted: Vec<String>,
    /// `account_roles_required`: the account has every one (admin passes).
    pub account_required: Vec<String>,
    /// `account_roles_accepted`: the account has at least one (admin passes).
    pub account_accepted: Vec<String>,
    /// Whether `admin` passes `roles_required` (flexgate's default, as the seed says;
    /// FlexMeasures' own `task-runner` check opts out).
    pub admin_passes_required: bool,
}

impl Default for RoleRequirements {
    fn default() -> Self {
        RoleRequirements {
            required: Vec::new(),
            accepted: Vec::new(),
            account_required: Vec::new(),
            account_accepted: Vec::new(),
            admin_passes_required: true,
        }
    }
}

impl RoleRequirements {
    /// Whether the route has any role requirement at all.
    pub fn is_empty(&self) -> bool {
        self.required.is_empty()
            && self.accepted.is_empty()
            && self.account_required.is_empty()
            && self.account_accepted.is_empty()
    }
}

/// Which role requirement failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleRefused {
    /// `roles_required` failed.
    Required,
    /// `roles_accepted` failed.
    Accepted,
    /// `account_roles_required` failed.
    AccountRequired,
    /// `account_roles_accepted` failed.
    AccountAccepted,
}

/// Check a route's role requirements for an authenticated caller.
pub fn check_roles(
    who: &Principal,
    req: &RoleRequirements,
    admins: &AdminRoles,
) -> Result<(), RoleRefused> {
    let admin = who.has_role(&admins.admin);
    if !(admin && req.admin_passes_required) && unmet(&req.required, true, |r| who.has_role(r)) {
        return Err(RoleRefused::Required);
    }
    if !admin && unmet(&req.accepted, false, |r| who.has_role(r)) {
        return Err(RoleRefused::Accepted);
    }
    if !admin && unmet(&req.account_required, true, |r| who.has_account_role(r)) {
        return Err(RoleRefused::AccountRequired);
    }
    if !admin && unmet(&req.account_accepted, false, |r| who.has_account_role(r)) {
        return Err(RoleRefused::AccountAccepted);
    }
    Ok(())
}

/// Whether a role list is unmet (`every`: all needed, else one); an empty list is met.
fn unmet(list: &[String], every: bool, has: impl Fn(&str) -> bool) -> bool {
    let met = if every {
        list.iter().all(|r| has(r))
    } else {
        list.is_empty() || list.iter().any(|r| has(r))
    };
    !met
}

/// Flask-Security's suffix for role 403s: " It requires a, b, and c permission(s)."
pub fn role_message_suffix(roles: &[String]) -> String {
    let joined = match roles {
        [] => String::new(),
        [one] => one.clone(),
        [a, b] => format!("{a} and {b}"),
        [init @ .., last] => format!("{}, and {last}", init.join(", ")),
    };
    format!(" It requires {joined} permission(s).")
}

#[cfg(test)]
mod tests;
