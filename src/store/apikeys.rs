//! The `flexgate_api_key` table: keys by their keyed hash, never by value. In native
//! mode it lives in `DATABASE_URL`, in FlexMeasures mode in flexgate's state database.

use sqlx::Row;

use super::{Error, Store, conflict_or, dispatch};

/// One API key's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Its id (what `apikey revoke` takes).
    pub id: i64,
    /// The user it acts for.
    pub user_id: i64,
    /// Its name, unique per user among live keys.
    pub name: String,
    /// Its last four characters.
    pub hint: String,
    /// Passes only `read` checks on safe methods.
    pub read_only: bool,
    /// The user's roles it keeps (`None`: all of them).
    pub roles: Option<Vec<String>>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds, if it expires.
    pub expires_at: Option<i64>,
    /// Unix seconds of the last recorded use (at most a minute old when used).
    pub last_used_at: Option<i64>,
    /// Unix seconds, once revoked.
    pub revoked_at: Option<i64>,
}

/// A key to create.
#[derive(Debug, Clone)]
pub struct NewApiKey<'a> {
    /// The user it acts for.
    pub user_id: i64,
    /// Its name.
    pub name: &'a str,
    /// Its keyed hash.
    pub hash: [u8; 32],
    /// Its last four characters.
    pub hint: String,
    /// Read-only.
    pub read_only: bool,
    /// Roles kept (`None`: all).
    pub roles: Option<Vec<String>>,
    /// Expiry, Unix seconds.
    pub expires_at: Option<i64>,
    /// Now, Unix seconds.
    pub created_at: i64,
}

const COLUMNS: &str =
    "id, user_id, name, hint, read_only, roles, created_at, expires_at, last_used_at, revoked_at";

macro_rules! key_of {
    ($row:expr) => {{
        let row = $row;
        let roles: Option<String> = row.try_get("roles")?;
        Ok::<ApiKey, Error>(ApiKey {
            id: row.try_get("id")?,
            user_id: row.try_get("user_id")?,
            name: row.try_get("name")?,
            hint: row.try_get("hint")?,
            read_only: row.try_get("read_only")?,
            roles: roles.map(|r| {
                r.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            }),
            created_at: row.try_get("created_at")?,
            expires_at: row.try_get("expires_at")?,
            last_used_at: row.try_get("last_used_at")?,
            revoked_at: row.try_get("revoked_at")?,
        })
    }};
}

impl Store {
    /// Store a new key.
    pub async fn add_api_key(&self, new: &NewApiKey<'_>) -> Result<ApiKey, Error> {
        let roles = new.roles.as_ref().map(|r| r.join(","));
        dispatch!(self.pool(), p => {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO flexgate_api_key (user_id, name, hash, hint, read_only, roles, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {COLUMNS}"
            )))
            .bind(new.user_id)
            .bind(new.name)
            .bind(&new.hash[..])
            .bind(&new.hint)
            .bind(new.read_only)
            .bind(roles)
            .bind(new.created_at)
            .bind(new.expires_at)
            .fetch_one(p)
            .await
            .map_err(|e| conflict_or(e, || format!("user {} already has a live key named {:?}; revoke it or pick another name", new.user_id, new.name)))?;
            key_of!(&row)
        })
    }

    /// The key with this keyed hash, revoked or not.
    pub async fn api_key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<ApiKey>, Error> {
        dispatch!(self.pool(), p => {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM flexgate_api_key WHERE hash = $1")))
                .bind(&hash[..])
                .fetch_optional(p)
                .await?;
            row.as_ref().map(|r| key_of!(r)).transpose()
        })
    }

    /// Every key, or one user's, oldest first.
    pub async fn list_api_keys(&self, user_id: Option<i64>) -> Result<Vec<ApiKey>, Error> {
        dispatch!(self.pool(), p => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM flexgate_api_key WHERE ($1 IS NULL OR user_id = $1) ORDER BY id"
            )))
            .bind(user_id)
            .fetch_all(p)
            .await?;
            rows.iter().map(|r| key_of!(r)).collect()
        })
    }

    /// Revoke live keys by id, or by name (for one user when given); returns them.
    pub async fn revoke_api_keys(
        &self,
        id_or_name: &str,
        user_id: Option<i64>,
        now: i64,
    ) -> Result<Vec<ApiKey>, Error> {
        let id = id_or_name.parse::<i64>().ok();
        dispatch!(self.pool(), p => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE flexgate_api_key SET revoked_at = $1 WHERE revoked_at IS NULL \
                 AND (id = $2 OR ($2 IS NULL AND name = $3)) AND ($4 IS NULL OR user_id = $4) RETURNING {COLUMNS}"
            )))
            .bind(now)
            .bind(id)
            .bind(id_or_name)
            .bind(user_id)
            .fetch_all(p)
            .await?;
            rows.iter().map(|r| key_of!(r)).collect()
        })
    }

    /// Record when keys were last used (one statement per key; called in the background
    /// at most once a minute).
    pub async fn touch_api_keys(&self, uses: &[(i64, i64)]) -> Result<(), Error> {
        dispatch!(self.pool(), p => {
            for (id, at) in uses {
                sqlx::query("UPDATE flexgate_api_key SET last_used_at = $2 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)")
                    .bind(id)
                    .bind(at)
                    .execute(p)
                    .await?;
            }
        });
        Ok(())
    }
}
