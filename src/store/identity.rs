//! The identity tables: accounts, account roles, consultancy links, users and user roles,
//! as the admin CLI edits them and as authentication reads them.
//!
//! Every write runs in one transaction that first checks its preconditions (so a bad
//! input names the problem and changes nothing) and, when the change can affect a
//! decision already cached somewhere, appends a row to the change feed in the same
//! transaction, which is how other replicas learn about it.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;

use super::{Error, Store, conflict_or, dispatch};

/// An account as listed by the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    /// Database id; principals refer to it as `account:<id>`.
    pub id: i64,
    /// Unique, human-chosen name.
    pub name: String,
    /// The account that consults for this one, if any.
    pub consultancy_account_id: Option<i64>,
    /// Account roles, sorted.
    pub roles: Vec<String>,
}

/// A user as listed by the CLI (never with its password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// Database id; principals refer to it as `user:<id>`.
    pub id: i64,
    /// Login name, stored lower-cased.
    pub email: String,
    /// Inactive users never authenticate.
    pub active: bool,
    /// The one account the user belongs to.
    pub account_id: i64,
    /// User roles, sorted.
    pub roles: Vec<String>,
}

/// What `add account` needs.
#[derive(Debug, Clone, Default)]
pub struct NewAccount {
    /// Explicit id (to mirror an upstream's account ids); `None` = next free id.
    pub id: Option<i64>,
    /// Unique name.
    pub name: String,
    /// Optional consultancy account id (must exist).
    pub consultancy_account_id: Option<i64>,
    /// Account roles to give it (created when new).
    pub roles: Vec<String>,
}

/// What `add user` needs; the password arrives already hashed.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Explicit id (to mirror an upstream's user ids); `None` = next free id.
    pub id: Option<i64>,
    /// Login email (normalised to lower case).
    pub email: String,
    /// bcrypt hash of the password.
    pub password_hash: String,
    /// The account the user belongs to (must exist).
    pub account_id: i64,
    /// User roles to give them (created when new).
    pub roles: Vec<String>,
}

/// How the CLI names a user: by id or by email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserRef {
    /// `user:<id>`.
    Id(i64),
    /// Login email, matched case-insensitively.
    Email(String),
}

impl UserRef {
    /// All digits means an id; anything else is an email.
    pub fn parse(text: &str) -> UserRef {
        match text.parse::<i64>() {
            Ok(id) if text.bytes().all(|b| b.is_ascii_digit()) => UserRef::Id(id),
            _ => UserRef::Email(normalize_email(text)),
        }
    }
}

impl std::fmt::Display for UserRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserRef::Id(id) => write!(f, "{id}"),
            UserRef::Email(email) => write!(f, "{email:?}"),
        }
    }
}

/// What a login needs to check a password; never leaves the auth module.
#[derive(Clone)]
pub struct Credentials {
    /// The user's id.
    pub user_id: i64,
    /// bcrypt hash to verify against.
    pub password_hash: String,
    /// Inactive users get the same answer as a wrong password.
    pub active: bool,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user_id", &self.user_id)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

/// Everything a decision can depend on about a user, loaded in one go and cached.
#[derive(Clone, PartialEq, Eq)]
pub struct PrincipalRecord {
    /// `user:<id>`.
    pub user_id: i64,
    /// For the identity headers.
    pub email: String,
    /// Inactive users are refused even with a valid token.
    pub active: bool,
    /// Rotated on password change, deactivation and revocation; tokens carry it.
    pub uniquifier: String,
    /// Tokens carry a sha256_crypt hash of it, so a password change kills them.
    pub password_hash: String,
    /// `account:<id>`.
    pub account_id: i64,
    /// One level of consultancy, as in FlexMeasures.
    pub consultancy_account_id: Option<i64>,
    /// `role:<name>`, sorted.
    pub roles: Vec<String>,
    /// `account-role:<name>`, sorted.
    pub account_roles: Vec<String>,
}

impl std::fmt::Debug for PrincipalRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrincipalRecord")
            .field("user_id", &self.user_id)
            .field("email", &self.email)
            .field("active", &self.active)
            .field("account_id", &self.account_id)
            .field("consultancy_account_id", &self.consultancy_account_id)
            .field("roles", &self.roles)
            .field("account_roles", &self.account_roles)
            .finish_non_exhaustive()
    }
}

/// One row of the change feed: whose cached state is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// Monotonic feed position.
    pub id: i64,
    /// A user whose tokens or principal changed.
    pub user_id: Option<i64>,
    /// An account whose roles or consultancy changed (affects all its users).
    pub account_id: Option<i64>,
}

/// Lower-case and trim, so `Alice@Example.com` and `alice@example.com` are one user.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

fn validate_email(email: &str) -> Result<(), Error> {
    let ok = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && matches!(email.split_once('@'), Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !domain.contains('@'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{email:?} is not an email address (expected name@domain, no spaces)"
        )))
    }
}

fn validate_name(what: &str, name: &str) -> Result<(), Error> {
    if name.trim().is_empty() {
        return Err(Error::Invalid(format!("{what} must not be empty")));
    }
    if name.len() > 200 || name.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "{what} {name:?} is too long or contains control characters"
        )));
    }
    Ok(())
}

/// Role names are matched exactly by the rules, so refuse anything that would not
/// survive being written in a rule or a comma-separated flag.
pub fn validate_role_name(role: &str) -> Result<(), Error> {
    if role.is_empty() {
        return Err(Error::Invalid("role name must not be empty".into()));
    }
    if role.len() > 80
        || role
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',')
    {
        return Err(Error::Invalid(format!(
            "role name {role:?} must be at most 80 characters without spaces or commas"
        )));
    }
    Ok(())
}

fn validate_roles(roles: &[String]) -> Result<(), Error> {
    roles.iter().try_for_each(|r| validate_role_name(r))
}

/// Which role tables an edit touches; keeps user and account role code as one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RoleKind {
    User,
    Account,
}

impl RoleKind {
    fn upsert_role(self) -> &'static str {
        match self {
            RoleKind::User => {
                "INSERT INTO flexgate_role (name) VALUES ($1) ON CONFLICT (name) DO NOTHING"
            }
            RoleKind::Account => {
                "INSERT INTO flexgate_account_role (name) VALUES ($1) ON CONFLICT (name) DO NOTHING"
            }
        }
    }
    fn link(self) -> &'static str {
        match self {
            RoleKind::User => {
                "INSERT INTO flexgate_user_roles (user_id, role_id) \
                 SELECT $1, id FROM flexgate_role WHERE name = $2 ON CONFLICT DO NOTHING"
            }
            RoleKind::Account => {
                "INSERT INTO flexgate_account_roles (account_id, role_id) \
                 SELECT $1, id FROM flexgate_account_role WHERE name = $2 ON CONFLICT DO NOTHING"
            }
        }
    }
    fn unlink(self) -> &'static str {
        match self {
            RoleKind::User => {
                "DELETE FROM flexgate_user_roles WHERE user_id = $1 \
                 AND role_id IN (SELECT id FROM flexgate_role WHERE name = $2)"
            }
            RoleKind::Account => {
                "DELETE FROM flexgate_account_roles WHERE account_id = $1 \
                 AND role_id IN (SELECT id FROM flexgate_account_role WHERE name = $2)"
            }
        }
    }
    fn names_of(self) -> &'static str {
        match self {
            RoleKind::User => {
                "SELECT r.name FROM flexgate_user_roles l JOIN flexgate_role r ON r.id = l.role_id \
                 WHERE l.user_id = $1 ORDER BY r.name"
            }
            RoleKind::Account => {
                "SELECT r.name FROM flexgate_account_roles l JOIN flexgate_account_role r ON r.id = l.role_id \
                 WHERE l.account_id = $1 ORDER BY r.name"
            }
        }
    }
    fn all_links(self) -> &'static str {
        match self {
            RoleKind::User => {
                "SELECT l.user_id AS owner, r.name FROM flexgate_user_roles l \
                 JOIN flexgate_role r ON r.id = l.role_id ORDER BY r.name"
            }
            RoleKind::Account => {
                "SELECT l.account_id AS owner, r.name FROM flexgate_account_roles l \
                 JOIN flexgate_account_role r ON r.id = l.role_id ORDER BY r.name"
            }
        }
    }
}

const INSERT_CHANGE: &str = "INSERT INTO flexgate_change (user_id, account_id) VALUES ($1, $2)";
const SELECT_ACCOUNT: &str =
    "SELECT id, name, consultancy_account_id FROM flexgate_account WHERE id = $1";
const SELECT_USER_BY_ID: &str =
    "SELECT id, email, active, account_id FROM flexgate_user WHERE id = $1";
const SELECT_USER_BY_EMAIL: &str =
    "SELECT id, email, active, account_id FROM flexgate_user WHERE email = $1";

impl Store {
    /// Create an account, optionally with a consultancy and account roles.
    pub async fn add_account(&self, new: &NewAccount) -> Result<Account, Error> {
        validate_name("account name", &new.name)?;
        validate_roles(&new.roles)?;
        let name = new.name.trim();
        let id = dispatch!(&self.pool, p => {
            let mut tx = p.begin().await?;
            if let Some(c) = new.consultancy_account_id {
                let found = sqlx::query(SELECT_ACCOUNT).bind(c).fetch_optional(&mut *tx).await?;
                if found.is_none() {
                    return Err(Error::NotFound { what: "consultancy account", key: c.to_string() });
                }
            }
            if let Some(id) = new.id
                && sqlx::query(SELECT_ACCOUNT).bind(id).fetch_optional(&mut *tx).await?.is_some() {
                    return Err(Error::Conflict(format!("account {id} already exists")));
                }
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO flexgate_account (id, name, consultancy_account_id) \
                 VALUES (COALESCE($3, (SELECT COALESCE(MAX(id), 0) + 1 FROM flexgate_account)), $1, $2) RETURNING id",
            )
            .bind(name)
            .bind(new.consultancy_account_id)
            .bind(new.id)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| conflict_or(e, || format!("an account named {name:?} already exists")))?;
            for role in &new.roles {
                sqlx::query(RoleKind::Account.upsert_role()).bind(role).execute(&mut *tx).await?;
                sqlx::query(RoleKind::Account.link()).bind(id).bind(role).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            id
        });
        self.account(id).await
    }

    /// Create a user in an existing account.
    pub async fn add_user(&self, new: &NewUser) -> Result<User, Error> {
        let email = normalize_email(&new.email);
        validate_email(&email)?;
        validate_roles(&new.roles)?;
        let uniquifier = crate::auth::random_hex(16);
        let id = dispatch!(&self.pool, p => {
            let mut tx = p.begin().await?;
            let found = sqlx::query(SELECT_ACCOUNT).bind(new.account_id).fetch_optional(&mut *tx).await?;
            if found.is_none() {
                return Err(Error::NotFound { what: "account", key: new.account_id.to_string() });
            }
            if let Some(id) = new.id
                && sqlx::query(SELECT_USER_BY_ID).bind(id).fetch_optional(&mut *tx).await?.is_some() {
                    return Err(Error::Conflict(format!("user {id} already exists")));
                }
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO flexgate_user (id, email, password_hash, active, uniquifier, account_id) \
                 VALUES (COALESCE($6, (SELECT COALESCE(MAX(id), 0) + 1 FROM flexgate_user)), $1, $2, $3, $4, $5) RETURNING id",
            )
            .bind(&email)
            .bind(&new.password_hash)
            .bind(true)
            .bind(&uniquifier)
            .bind(new.account_id)
            .bind(new.id)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| conflict_or(e, || format!("a user with email {email:?} already exists")))?;
            for role in &new.roles {
                sqlx::query(RoleKind::User.upsert_role()).bind(role).execute(&mut *tx).await?;
                sqlx::query(RoleKind::User.link()).bind(id).bind(role).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            id
        });
        self.user(&UserRef::Id(id)).await
    }

    /// One account with its roles.
    pub async fn account(&self, id: i64) -> Result<Account, Error> {
        dispatch!(&self.pool, p => {
            let row = sqlx::query(SELECT_ACCOUNT).bind(id).fetch_optional(p).await?
                .ok_or_else(|| Error::NotFound { what: "account", key: id.to_string() })?;
            let roles: Vec<String> = sqlx::query_scalar(RoleKind::Account.names_of()).bind(id).fetch_all(p).await?;
            Ok(Account {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                consultancy_account_id: row.try_get("consultancy_account_id")?,
                roles,
            })
        })
    }

    /// One user with their roles.
    pub async fn user(&self, who: &UserRef) -> Result<User, Error> {
        dispatch!(&self.pool, p => {
            let row = match who {
                UserRef::Id(id) => sqlx::query(SELECT_USER_BY_ID).bind(*id).fetch_optional(p).await?,
                UserRef::Email(email) => sqlx::query(SELECT_USER_BY_EMAIL).bind(email).fetch_optional(p).await?,
            };
            let row = row.ok_or_else(|| Error::NotFound { what: "user", key: who.to_string() })?;
            let id: i64 = row.try_get("id")?;
            let roles: Vec<String> = sqlx::query_scalar(RoleKind::User.names_of()).bind(id).fetch_all(p).await?;
            Ok(User {
                id,
                email: row.try_get("email")?,
                active: row.try_get("active")?,
                account_id: row.try_get("account_id")?,
                roles,
            })
        })
    }

    /// Every account, by id.
    pub async fn list_accounts(&self) -> Result<Vec<Account>, Error> {
        dispatch!(&self.pool, p => {
            let mut roles = role_map(sqlx::query(RoleKind::Account.all_links()).fetch_all(p).await?)?;
            let rows = sqlx::query("SELECT id, name, consultancy_account_id FROM flexgate_account ORDER BY id")
                .fetch_all(p).await?;
            rows.into_iter().map(|row| {
                let id: i64 = row.try_get("id")?;
                Ok(Account {
                    id,
                    name: row.try_get("name")?,
                    consultancy_account_id: row.try_get("consultancy_account_id")?,
                    roles: roles.remove(&id).unwrap_or_default(),
                })
            }).collect()
        })
    }

    /// Every user (of one account, if given), by id.
    pub async fn list_users(&self, account_id: Option<i64>) -> Result<Vec<User>, Error> {
        dispatch!(&self.pool, p => {
            let mut roles = role_map(sqlx::query(RoleKind::User.all_links()).fetch_all(p).await?)?;
            let rows = sqlx::query(
                "SELECT id, email, active, account_id FROM flexgate_user \
                 WHERE ($1 IS NULL OR account_id = $1) ORDER BY id",
            )
            .bind(account_id)
            .fetch_all(p)
            .await?;
            rows.into_iter().map(|row| {
                let id: i64 = row.try_get("id")?;
                Ok(User {
                    id,
                    email: row.try_get("email")?,
                    active: row.try_get("active")?,
                    account_id: row.try_get("account_id")?,
                    roles: roles.remove(&id).unwrap_or_default(),
                })
            }).collect()
        })
    }

    /// Add and remove user roles in one transaction. Adding a role the user has is a
    /// no-op; removing one they lack is an error (most likely a typo).
    pub async fn edit_user_roles(
        &self,
        who: &UserRef,
        add: &[String],
        remove: &[String],
    ) -> Result<User, Error> {
        let user = self.user(who).await?;
        self.edit_roles(RoleKind::User, user.id, add, remove)
            .await?;
        self.user(&UserRef::Id(user.id)).await
    }

    /// Add and remove account roles in one transaction (same rules as user roles).
    pub async fn edit_account_roles(
        &self,
        account_id: i64,
        add: &[String],
        remove: &[String],
    ) -> Result<Account, Error> {
        self.account(account_id).await?;
        self.edit_roles(RoleKind::Account, account_id, add, remove)
            .await?;
        self.account(account_id).await
    }

    async fn edit_roles(
        &self,
        kind: RoleKind,
        owner: i64,
        add: &[String],
        remove: &[String],
    ) -> Result<(), Error> {
        validate_roles(add)?;
        validate_roles(remove)?;
        if let Some(both) = add.iter().find(|r| remove.contains(r)) {
            return Err(Error::Invalid(format!(
                "role {both:?} is both added and removed"
            )));
        }
        let (user_id, account_id) = match kind {
            RoleKind::User => (Some(owner), None),
            RoleKind::Account => (None, Some(owner)),
        };
        dispatch!(&self.pool, p => {
            let mut tx = p.begin().await?;
            let held: Vec<String> = sqlx::query_scalar(kind.names_of()).bind(owner).fetch_all(&mut *tx).await?;
            if let Some(missing) = remove.iter().find(|r| !held.contains(r)) {
                let whose = match kind { RoleKind::User => "user", RoleKind::Account => "account" };
                return Err(Error::Invalid(format!(
                    "{whose} {owner} does not have role {missing:?} (it has: {})",
                    if held.is_empty() { "none".to_owned() } else { held.join(", ") }
                )));
            }
            for role in add {
                sqlx::query(kind.upsert_role()).bind(role).execute(&mut *tx).await?;
                sqlx::query(kind.link()).bind(owner).bind(role).execute(&mut *tx).await?;
            }
            for role in remove {
                sqlx::query(kind.unlink()).bind(owner).bind(role).execute(&mut *tx).await?;
            }
            sqlx::query(INSERT_CHANGE).bind(user_id).bind(account_id).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Set (or clear, with `None`) the consultancy account of an account.
    pub async fn set_consultancy(
        &self,
        account_id: i64,
        consultancy: Option<i64>,
    ) -> Result<Account, Error> {
        if consultancy == Some(account_id) {
            return Err(Error::Invalid(format!(
                "account {account_id} cannot be its own consultancy"
            )));
        }
        dispatch!(&self.pool, p => {
            let mut tx = p.begin().await?;
            for (what, id) in [("account", Some(account_id)), ("consultancy account", consultancy)] {
                if let Some(id) = id
                    && sqlx::query(SELECT_ACCOUNT).bind(id).fetch_optional(&mut *tx).await?.is_none() {
                        return Err(Error::NotFound { what, key: id.to_string() });
                    }
            }
            sqlx::query("UPDATE flexgate_account SET consultancy_account_id = $1 WHERE id = $2")
                .bind(consultancy).bind(account_id).execute(&mut *tx).await?;
            sqlx::query(INSERT_CHANGE).bind(None::<i64>).bind(account_id).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        self.account(account_id).await
    }

    /// Activate or deactivate a user. Either way the uniquifier rotates, so tokens
    /// issued before a deactivation stay dead after a later activation.
    pub async fn set_active(&self, who: &UserRef, active: bool) -> Result<User, Error> {
        let user = self.user(who).await?;
        self.update_user(user.id, Some(active), None).await?;
        self.user(&UserRef::Id(user.id)).await
    }

    /// Store a new password hash and rotate the uniquifier (kills the user's tokens).
    pub async fn set_password(&self, who: &UserRef, password_hash: &str) -> Result<User, Error> {
        let user = self.user(who).await?;
        self.update_user(user.id, None, Some(password_hash)).await?;
        self.user(&UserRef::Id(user.id)).await
    }

    /// Rotate the uniquifier: every token issued to the user so far stops working.
    pub async fn revoke_tokens(&self, who: &UserRef) -> Result<User, Error> {
        let user = self.user(who).await?;
        self.update_user(user.id, None, None).await?;
        self.user(&UserRef::Id(user.id)).await
    }

    /// Change what is given, always rotate the uniquifier, and tell the change feed.
    async fn update_user(
        &self,
        user_id: i64,
        active: Option<bool>,
        password_hash: Option<&str>,
    ) -> Result<(), Error> {
        let uniquifier = crate::auth::random_hex(16);
        dispatch!(&self.pool, p => {
            let mut tx = p.begin().await?;
            sqlx::query(
                "UPDATE flexgate_user SET active = COALESCE($1, active), \
                 password_hash = COALESCE($2, password_hash), uniquifier = $3 WHERE id = $4",
            )
            .bind(active)
            .bind(password_hash)
            .bind(&uniquifier)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
            sqlx::query(INSERT_CHANGE).bind(user_id).bind(None::<i64>).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// The password hash and status for a login; `None` for an unknown email.
    pub async fn credentials(&self, email: &str) -> Result<Option<Credentials>, Error> {
        let email = normalize_email(email);
        dispatch!(&self.pool, p => {
            let row = sqlx::query("SELECT id, password_hash, active FROM flexgate_user WHERE email = $1")
                .bind(&email).fetch_optional(p).await?;
            row.map(|row| Ok(Credentials {
                user_id: row.try_get("id")?,
                password_hash: row.try_get("password_hash")?,
                active: row.try_get("active")?,
            })).transpose()
        })
    }

    /// Everything about a user that a decision may depend on; `None` if the user is gone.
    pub async fn principal(&self, user_id: i64) -> Result<Option<PrincipalRecord>, Error> {
        dispatch!(&self.pool, p => {
            let Some(row) = sqlx::query(
                "SELECT u.id, u.email, u.active, u.uniquifier, u.password_hash, u.account_id, \
                 a.consultancy_account_id FROM flexgate_user u \
                 JOIN flexgate_account a ON a.id = u.account_id WHERE u.id = $1",
            )
            .bind(user_id)
            .fetch_optional(p)
            .await? else {
                return Ok(None);
            };
            let account_id: i64 = row.try_get("account_id")?;
            let roles: Vec<String> = sqlx::query_scalar(RoleKind::User.names_of()).bind(user_id).fetch_all(p).await?;
            let account_roles: Vec<String> =
                sqlx::query_scalar(RoleKind::Account.names_of()).bind(account_id).fetch_all(p).await?;
            Ok(Some(PrincipalRecord {
                user_id,
                email: row.try_get("email")?,
                active: row.try_get("active")?,
                uniquifier: row.try_get("uniquifier")?,
                password_hash: row.try_get("password_hash")?,
                account_id,
                consultancy_account_id: row.try_get("consultancy_account_id")?,
                roles,
                account_roles,
            }))
        })
    }

    /// Every user role and account role name that exists, sorted.
    pub async fn role_names(&self) -> Result<(Vec<String>, Vec<String>), Error> {
        dispatch!(&self.pool, p => {
            let users: Vec<String> = sqlx::query_scalar("SELECT name FROM flexgate_role ORDER BY name").fetch_all(p).await?;
            let accounts: Vec<String> =
                sqlx::query_scalar("SELECT name FROM flexgate_account_role ORDER BY name").fetch_all(p).await?;
            Ok((users, accounts))
        })
    }

    /// The newest change-feed position (0 when empty), where a new poller starts.
    pub async fn latest_change(&self) -> Result<i64, Error> {
        dispatch!(&self.pool, p => {
            let id: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM flexgate_change").fetch_one(p).await?;
            Ok(id.unwrap_or(0))
        })
    }

    /// Changes after position `after`, oldest first, at most `limit`.
    pub async fn changes_since(&self, after: i64, limit: i64) -> Result<Vec<Change>, Error> {
        dispatch!(&self.pool, p => {
            let rows = sqlx::query(
                "SELECT id, user_id, account_id FROM flexgate_change WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .bind(after)
            .bind(limit)
            .fetch_all(p)
            .await?;
            rows.into_iter().map(|row| Ok(Change {
                id: row.try_get("id")?,
                user_id: row.try_get("user_id")?,
                account_id: row.try_get("account_id")?,
            })).collect()
        })
    }
}

/// Group `(owner, name)` rows into sorted role lists per owner.
fn role_map<R>(rows: Vec<R>) -> Result<BTreeMap<i64, Vec<String>>, Error>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let mut map: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for row in rows {
        map.entry(row.try_get("owner")?)
            .or_default()
            .push(row.try_get("name")?);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ref_is_id_only_when_all_digits() {
        assert_eq!(UserRef::parse("42"), UserRef::Id(42));
        assert_eq!(
            UserRef::parse(" Alice@Example.COM "),
            UserRef::Email("alice@example.com".into())
        );
        assert_eq!(UserRef::parse("+42"), UserRef::Email("+42".into()));
    }

    #[test]
    fn role_names_are_checked() {
        assert!(validate_role_name("account-admin").is_ok());
        for bad in ["", "two words", "a,b", "tab\there", &"x".repeat(81)] {
            assert!(validate_role_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn emails_are_checked() {
        assert!(validate_email("a@b").is_ok());
        for bad in ["", "no-at", "@b", "a@", "a b@c", "a@b@c"] {
            assert!(validate_email(bad).is_err(), "{bad:?} accepted");
        }
    }
}
