//! Access-control lists as FlexMeasures writes them: a list (OR) of items, each item a
//! group (AND) of principals such as `account:{account_id}` or `role:consultant`.
//!
//! Templates are compiled once (by `rules::compile`) into [`Term`]s whose value comes
//! from a literal or from a column of the resource's owner row, so matching a request
//! allocates nothing. Pure: no IO, no clock.

use std::fmt;

/// A value from a resource's owner row (or a literal in a template).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value {
    /// SQL NULL: renders as FlexMeasures' `None`, which never matches.
    Null,
    /// An integer column (ids).
    Int(i64),
    /// A text column.
    Text(Box<str>),
    /// A boolean column (public flags).
    Bool(bool),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("None"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Text(s) => f.write_str(s),
            Value::Bool(b) => f.write_str(if *b { "True" } else { "False" }),
        }
    }
}

impl Value {
    /// The id this value names, if it is one: an integer, or text of digits only.
    /// Anything else (`None`, `""`, `"12a"`) names no id, as in FlexMeasures.
    pub fn as_id(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Text(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse().ok()
            }
            _ => None,
        }
    }

    /// The text this value names, for role principals; `None` and empty never match.
    pub fn as_name(&self) -> Option<&str> {
        match self {
            Value::Text(s) if !s.is_empty() => Some(s),
            _ => None,
        }
    }
}

/// Where a principal's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// Written literally in the template (`role:consultant`, `account:3`).
    Literal(Value),
    /// A column of the owner row, by position (`account:{account_id}`).
    Column(usize),
}

/// One principal of an ACL item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Term {
    /// `user:<id>`.
    User(Slot),
    /// `account:<id>`.
    Account(Slot),
    /// `role:<name>` (a user role).
    Role(Slot),
    /// `account-role:<name>`.
    AccountRole(Slot),
    /// `every-logged-in-user`.
    EveryLoggedInUser,
}

/// One alternative of an ACL: every term must match. An empty item never matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The principals, all required.
    pub terms: Vec<Term>,
    /// The item as the operator wrote it, for `explain` and logs.
    pub source: String,
}

/// The ACL of one permission on one kind of resource: any item may match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Acl {
    /// Alternatives, tried in order.
    pub items: Vec<Item>,
}

/// The caller as the ACLs see them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Principal {
    /// `user:<id>`.
    pub user_id: i64,
    /// `account:<id>`.
    pub account_id: i64,
    /// User roles (exact names).
    pub roles: Vec<String>,
    /// Roles of the user's account.
    pub account_roles: Vec<String>,
}

impl Principal {
    /// Whether the user has this user role (exact match: case matters).
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Whether the user's account has this account role.
    pub fn has_account_role(&self, role: &str) -> bool {
        self.account_roles.iter().any(|r| r == role)
    }
}

fn resolve<'a>(slot: &'a Slot, row: &'a [Value]) -> &'a Value {
    match slot {
        Slot::Literal(v) => v,
        // A column index out of range is a compile bug; treat it as None (no match).
        Slot::Column(i) => row.get(*i).unwrap_or(&Value::Null),
    }
}

impl Term {
    /// Whether this principal describes the caller, given the resource's owner row.
    pub fn matches(&self, who: &Principal, row: &[Value]) -> bool {
        match self {
            Term::User(slot) => resolve(slot, row).as_id() == Some(who.user_id),
            Term::Account(slot) => resolve(slot, row).as_id() == Some(who.account_id),
            Term::Role(slot) => resolve(slot, row)
                .as_name()
                .is_some_and(|r| who.has_role(r)),
            Term::AccountRole(slot) => resolve(slot, row)
                .as_name()
                .is_some_and(|r| who.has_account_role(r)),
            Term::EveryLoggedInUser => true,
        }
    }
}

impl Item {
    /// FlexMeasures' rule: an item holding `every-logged-in-user` matches anyone
    /// authenticated, whatever else it holds; an empty item matches nobody; otherwise
    /// every term must match.
    pub fn matches(&self, who: &Principal, row: &[Value]) -> bool {
        if self.terms.is_empty() {
            return false;
        }
        if self.terms.contains(&Term::EveryLoggedInUser) {
            return true;
        }
        self.terms.iter().all(|t| t.matches(who, row))
    }
}

impl Acl {
    /// The index of the first item that matches, if any.
    pub fn first_match(&self, who: &Principal, row: &[Value]) -> Option<usize> {
        self.items.iter().position(|item| item.matches(who, row))
    }
}

/// Parse one principal as written in a rule (`account:{account_id}`), resolving column
/// placeholders with `column`. Errors say how to fix the principal.
pub fn parse_term(text: &str, column: impl Fn(&str) -> Option<usize>) -> Result<Term, String> {
    if text == "every-logged-in-user" {
        return Ok(Term::EveryLoggedInUser);
    }
    let Some((prefix, value)) = text.split_once(':') else {
        return Err(format!(
            "principal {text:?} has no prefix; write user:<id>, account:<id>, role:<name>, account-role:<name> or every-logged-in-user"
        ));
    };
    let slot = if let Some(name) = value.strip_prefix('{').and_then(|v| v.strip_suffix('}')) {
        match column(name) {
            Some(i) => Slot::Column(i),
            None => {
                return Err(format!(
                    "principal {text:?} uses {{{name}}}, which the kind's query does not return; add `{name}` to its SELECT list or fix the name"
                ));
            }
        }
    } else if value.contains(['{', '}']) {
        return Err(format!(
            "principal {text:?}: a placeholder must be the whole value, as in account:{{account_id}}"
        ));
    } else {
        Slot::Literal(Value::Text(value.into()))
    };
    match prefix {
        "user" => Ok(Term::User(slot)),
        "account" => Ok(Term::Account(slot)),
        "role" => Ok(Term::Role(slot)),
        "account-role" => Ok(Term::AccountRole(slot)),
        other => Err(format!(
            "principal {text:?} has unknown prefix {other:?}; use user, account, role or account-role"
        )),
    }
}
