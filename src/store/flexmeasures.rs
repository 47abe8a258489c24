//! FlexMeasures' own identity tables, read only (FlexMeasures mode): `fm_user`,
//! `role`/`roles_users`, `account`, `account_role`/`roles_accounts`. Nothing here writes;
//! a read-only PostgreSQL role with `SELECT` on these tables (and on the tables the owner
//! queries read) is all flexgate needs.
//!
//! Each user row comes with a fingerprint: an MD5, computed by PostgreSQL, of every
//! column a decision or a token check depends on (email, active, uniquifier, password
//! hash, account, consultancy, user roles, account roles). The revalidation loop asks
//! for the fingerprints of the cached users only, so a change made through FlexMeasures
//! (API, UI or CLI) is seen without FlexMeasures' schema changing and without a change
//! feed.

use sqlx::Row;

use super::{Error, Pool, Store};

/// A FlexMeasures user as flexgate needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct FmUser {
    /// `fm_user.id`.
    pub user_id: i64,
    /// `fm_user.email`.
    pub email: String,
    /// `fm_user.active` (NULL counts as inactive, as in FlexMeasures).
    pub active: bool,
    /// `fm_user.fs_uniquifier`: what tokens and sessions carry.
    pub uniquifier: String,
    /// `fm_user.account_id`.
    pub account_id: i64,
    /// The account's consultancy account.
    pub consultancy_account_id: Option<i64>,
    /// User role names, sorted.
    pub roles: Vec<String>,
    /// Account role names, sorted.
    pub account_roles: Vec<String>,
    /// MD5 (hex) of everything above plus the password hash: changes whenever any of
    /// it does.
    pub fingerprint: String,
}

impl std::fmt::Debug for FmUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FmUser")
            .field("user_id", &self.user_id)
            .field("email", &self.email)
            .field("active", &self.active)
            .field("account_id", &self.account_id)
            .field("roles", &self.roles)
            .field("account_roles", &self.account_roles)
            .finish_non_exhaustive()
    }
}

/// What a login checks; the hash never leaves the auth module.
#[derive(Clone)]
pub struct FmCredentials {
    /// The user.
    pub user: FmUser,
    /// `fm_user.password`: argon2id or bcrypt over Flask-Security's HMAC.
    pub password_hash: String,
}

/// The user rows with their fingerprint; `{filter}` is the WHERE clause.
const USER_QUERY: &str = "\
SELECT u.id::bigint AS id, u.email, u.active, u.fs_uniquifier, u.account_id::bigint AS account_id,
       u.consultancy_account_id, u.roles, u.account_roles, u.password,
       md5(concat_ws('|', u.email, u.active::text, u.fs_uniquifier, u.account_id::text,
           coalesce(u.consultancy_account_id::text, '-'), array_to_string(u.roles, ','),
           array_to_string(u.account_roles, ','), coalesce(u.password, ''))) AS fingerprint
FROM (
  SELECT fu.id, fu.email, coalesce(fu.active, false) AS active, fu.fs_uniquifier, fu.account_id,
         a.consultancy_account_id::bigint AS consultancy_account_id, fu.password,
         ARRAY(SELECT r.name::text FROM roles_users ru JOIN role r ON r.id = ru.role_id
               WHERE ru.user_id = fu.id AND r.name IS NOT NULL ORDER BY r.name) AS roles,
         ARRAY(SELECT ar.name::text FROM roles_accounts ra JOIN account_role ar ON ar.id = ra.role_id
               WHERE ra.account_id = fu.account_id AND ar.name IS NOT NULL ORDER BY ar.name) AS account_roles
  FROM fm_user fu JOIN account a ON a.id = fu.account_id
  WHERE {filter}
) u";

fn query(filter: &str) -> String {
    USER_QUERY.replace("{filter}", filter)
}

/// The same rows for many users at once. FlexMeasures indexes `roles_users` and
/// `roles_accounts` by role first, so the per-user subqueries of [`USER_QUERY`] would
/// each scan them; here each is aggregated once and hash-joined, so a batch costs one
/// pass over the role tables plus an index lookup per user. The wanted users are joined
/// from `unnest($1)`, not filtered with `= ANY($1)`: under the prepared statement's
/// generic plan PostgreSQL compares every row with every element of the array (11.7 ms
/// for 1,000 users on a 1,000-user table, against 0.8 ms joined).
const BATCH_QUERY: &str = "\
SELECT u.fs_uniquifier,
       md5(concat_ws('|', u.email, u.active::text, u.fs_uniquifier, u.account_id::text,
           coalesce(u.consultancy_account_id::text, '-'), array_to_string(u.roles, ','),
           array_to_string(u.account_roles, ','), coalesce(u.password, ''))) AS fingerprint
FROM (
  SELECT fu.email, coalesce(fu.active, false) AS active, fu.fs_uniquifier, fu.account_id,
         a.consultancy_account_id::bigint AS consultancy_account_id, fu.password,
         coalesce(ur.roles, '{}') AS roles, coalesce(ar.roles, '{}') AS account_roles
  FROM unnest($1::text[]) AS wanted(uid)
  JOIN fm_user fu ON fu.fs_uniquifier = wanted.uid
  JOIN account a ON a.id = fu.account_id
  LEFT JOIN (SELECT ru.user_id, array_agg(r.name::text ORDER BY r.name) AS roles
             FROM roles_users ru JOIN role r ON r.id = ru.role_id
             WHERE r.name IS NOT NULL GROUP BY ru.user_id) ur ON ur.user_id = fu.id
  LEFT JOIN (SELECT ra.account_id, array_agg(x.name::text ORDER BY x.name) AS roles
             FROM roles_accounts ra JOIN account_role x ON x.id = ra.role_id
             WHERE x.name IS NOT NULL GROUP BY ra.account_id) ar ON ar.account_id = fu.account_id
) u";

fn user_of(row: &sqlx::postgres::PgRow) -> Result<(FmUser, Option<String>), Error> {
    Ok((
        FmUser {
            user_id: row.try_get("id")?,
            email: row
                .try_get::<Option<String>, _>("email")?
                .unwrap_or_default(),
            active: row.try_get("active")?,
            uniquifier: row.try_get("fs_uniquifier")?,
            account_id: row.try_get("account_id")?,
            consultancy_account_id: row.try_get("consultancy_account_id")?,
            roles: row.try_get("roles")?,
            account_roles: row.try_get("account_roles")?,
            fingerprint: row.try_get("fingerprint")?,
        },
        row.try_get("password")?,
    ))
}

impl Store {
    fn postgres(&self) -> Result<&sqlx::PgPool, Error> {
        match self.pool() {
            Pool::Postgres(p) => Ok(p),
            Pool::Sqlite(_) => Err(Error::Invalid(
                "FlexMeasures mode needs FlexMeasures' PostgreSQL database as DATABASE_URL".into(),
            )),
        }
    }

    /// The user whose `fs_uniquifier` a token or session names.
    pub async fn fm_user_by_uniquifier(&self, uniquifier: &str) -> Result<Option<FmUser>, Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(query("fu.fs_uniquifier = $1")))
            .bind(uniquifier)
            .fetch_optional(self.postgres()?)
            .await?;
        row.as_ref()
            .map(user_of)
            .transpose()
            .map(|o| o.map(|(u, _)| u))
    }

    /// A user by exact email (FlexMeasures' login compares emails exactly).
    pub async fn fm_user_by_email(&self, email: &str) -> Result<Option<FmUser>, Error> {
        Ok(self.fm_credentials(email).await?.map(|c| c.user))
    }

    /// A user by id (for `explain`).
    pub async fn fm_user_by_id(&self, id: i64) -> Result<Option<FmUser>, Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(query("fu.id = $1")))
            .bind(i32::try_from(id).map_err(|_| Error::NotFound {
                what: "user",
                key: id.to_string(),
            })?)
            .fetch_optional(self.postgres()?)
            .await?;
        row.as_ref()
            .map(user_of)
            .transpose()
            .map(|o| o.map(|(u, _)| u))
    }

    /// What a login needs: the user and their password hash.
    pub async fn fm_credentials(&self, email: &str) -> Result<Option<FmCredentials>, Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(query("fu.email = $1")))
            .bind(email)
            .fetch_optional(self.postgres()?)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let (user, hash) = user_of(&row)?;
        Ok(Some(FmCredentials {
            user,
            password_hash: hash.unwrap_or_default(),
        }))
    }

    /// The current fingerprints of the users with these uniquifiers; a uniquifier that
    /// no longer exists (rotated by a password change, a reset or a deactivation) is
    /// simply absent from the answer.
    pub async fn fm_fingerprints(
        &self,
        uniquifiers: &[String],
    ) -> Result<Vec<(String, String)>, Error> {
        let rows = sqlx::query(BATCH_QUERY)
            .bind(uniquifiers)
            .fetch_all(self.postgres()?)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("fs_uniquifier")?, r.try_get("fingerprint")?)))
            .collect()
    }

    /// Whether this database is FlexMeasures' (it has `fm_user`), and whether flexgate's
    /// own tables are in it too: flexgate never migrates into a FlexMeasures database.
    pub async fn flexmeasures_schema(&self) -> Result<Option<bool>, Error> {
        let Pool::Postgres(p) = self.pool() else {
            return Ok(None);
        };
        let (fm, ours): (bool, bool) = sqlx::query_as(
            "SELECT to_regclass('fm_user') IS NOT NULL, to_regclass('flexgate_user') IS NOT NULL",
        )
        .fetch_one(p)
        .await?;
        Ok(fm.then_some(ours))
    }

    /// Every user role and account role name in FlexMeasures' tables, sorted.
    pub async fn fm_role_names(&self) -> Result<(Vec<String>, Vec<String>), Error> {
        let p = self.postgres()?;
        let users: Vec<String> =
            sqlx::query_scalar("SELECT name::text FROM role WHERE name IS NOT NULL ORDER BY name")
                .fetch_all(p)
                .await?;
        let accounts: Vec<String> = sqlx::query_scalar(
            "SELECT name::text FROM account_role WHERE name IS NOT NULL ORDER BY name",
        )
        .fetch_all(p)
        .await?;
        Ok((users, accounts))
    }
}
