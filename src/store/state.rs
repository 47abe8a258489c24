//! State that replicas share beside the identities: logged-out browser sessions
//! (FlexMeasures mode) and failed logins (brute-force limits). Rows are appended and
//! read back by id, so each replica follows them like the change feed; expired rows
//! are pruned by whichever replica gets there first.

use sqlx::Row;

use super::{Error, Store, dispatch};

/// A logged-out session, as a replica reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedSession {
    /// Feed position.
    pub id: i64,
    /// The session's revocation key.
    pub key: [u8; 32],
    /// Unix seconds after which the cookie could not be valid anyway (for a lifted
    /// row: until when it is kept for replicas to read).
    pub expires_at: i64,
    /// The revocation was lifted: forget it.
    pub lifted: bool,
}

impl Store {
    /// Record a logged-out session for every replica, as of `changed_at` (Unix
    /// milliseconds, when the logout passed). The key's row is replaced, so a key
    /// revoked again after a lift gets a new feed position the replicas read.
    pub async fn revoke_session(
        &self,
        key: &[u8; 32],
        expires_at: i64,
        changed_at: i64,
    ) -> Result<(), Error> {
        self.replace_revocation(key, expires_at, false, changed_at)
            .await
    }

    /// Lift a revocation on every replica, as of `changed_at`: the lifted row is kept
    /// until `keep_until` so that every replica reads it, then pruned.
    pub async fn lift_session(
        &self,
        key: &[u8; 32],
        keep_until: i64,
        changed_at: i64,
    ) -> Result<(), Error> {
        self.replace_revocation(key, keep_until, true, changed_at)
            .await
    }

    /// Replace the key's row in one transaction, unless the row there records a later
    /// event: a lift and a logout racing between replicas keep the later of the two.
    async fn replace_revocation(
        &self,
        key: &[u8; 32],
        expires_at: i64,
        lifted: bool,
        changed_at: i64,
    ) -> Result<(), Error> {
        dispatch!(self.pool(), p => {
            let mut tx = p.begin().await?;
            sqlx::query("DELETE FROM flexgate_revoked_session WHERE key = $1 AND changed_at <= $2")
                .bind(&key[..])
                .bind(changed_at)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO flexgate_revoked_session (key, expires_at, lifted, changed_at) VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO NOTHING",
            )
            .bind(&key[..])
            .bind(expires_at)
            .bind(lifted)
            .bind(changed_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Revoked sessions after feed position `after` that have not expired by `now`.
    pub async fn revoked_sessions_since(
        &self,
        after: i64,
        now: i64,
    ) -> Result<Vec<RevokedSession>, Error> {
        dispatch!(self.pool(), p => {
            let rows = sqlx::query(
                "SELECT id, key, expires_at, lifted FROM flexgate_revoked_session WHERE id > $1 AND expires_at > $2 ORDER BY id LIMIT 10000",
            )
            .bind(after)
            .bind(now)
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| {
                    let key: Vec<u8> = r.try_get("key")?;
                    Ok(RevokedSession {
                        id: r.try_get("id")?,
                        key: key.try_into().map_err(|_| Error::Invalid("a revocation key is not 32 bytes".into()))?,
                        expires_at: r.try_get("expires_at")?,
                        lifted: r.try_get("lifted")?,
                    })
                })
                .collect()
        })
    }

    /// Count a login attempt for each subject (its email, its client) before the
    /// password is checked, unless one of them already has `limits` attempts since
    /// `since`: `Ok(Ok(rows))` counted it as these rows; `Ok(Err(oldest))` refused it
    /// (the oldest attempt of a subject at its limit, for `Retry-After`). One
    /// transaction, serialised per subject (advisory locks on PostgreSQL; SQLite has
    /// one writer), so that concurrent attempts cannot all pass a count none of them
    /// has added to yet.
    pub async fn reserve_login_attempt(
        &self,
        subjects: &[[u8; 32]; 2],
        limits: [u32; 2],
        now: i64,
        since: i64,
    ) -> Result<Result<[i64; 2], i64>, Error> {
        macro_rules! reserve {
            ($tx:expr) => {{
                let mut rows = [0i64; 2];
                let mut refused = None;
                for (i, subject) in subjects.iter().enumerate() {
                    rows[i] = sqlx::query_scalar(
                        "INSERT INTO flexgate_login_failure (subject, at) VALUES ($1, $2) RETURNING id",
                    )
                    .bind(&subject[..])
                    .bind(now)
                    .fetch_one(&mut *$tx)
                    .await?;
                    let row = sqlx::query(
                        "SELECT COUNT(*) AS n, MIN(at) AS oldest FROM flexgate_login_failure WHERE subject = $1 AND at > $2",
                    )
                    .bind(&subject[..])
                    .bind(since)
                    .fetch_one(&mut *$tx)
                    .await?;
                    let n: i64 = row.try_get("n")?;
                    if n > i64::from(limits[i]) {
                        let oldest: Option<i64> = row.try_get("oldest")?;
                        refused = Some(refused.unwrap_or(i64::MAX).min(oldest.unwrap_or(now)));
                    }
                }
                match refused {
                    // Dropped without commit: the rows just added go with it.
                    Some(oldest) => Ok(Err(oldest)),
                    None => {
                        $tx.commit().await?;
                        Ok(Ok(rows))
                    }
                }
            }};
        }
        match self.pool() {
            super::Pool::Postgres(p) => {
                let mut tx = p.begin().await?;
                let mut keys: Vec<i64> = subjects
                    .iter()
                    .map(|s| i64::from_be_bytes(s[..8].try_into().expect("8 bytes")))
                    .collect();
                // In one order everywhere: two attempts never wait for each other.
                keys.sort_unstable();
                for key in keys {
                    sqlx::query("SELECT pg_advisory_xact_lock($1)")
                        .bind(key)
                        .execute(&mut *tx)
                        .await?;
                }
                reserve!(tx)
            }
            super::Pool::Sqlite(p) => {
                let mut tx = p.begin().await?;
                reserve!(tx)
            }
        }
    }

    /// Forget one counted attempt (a login that succeeded gives its client's back).
    pub async fn release_login_attempt(&self, row: i64) -> Result<(), Error> {
        dispatch!(self.pool(), p => {
            sqlx::query("DELETE FROM flexgate_login_failure WHERE id = $1")
                .bind(row)
                .execute(p)
                .await?;
        });
        Ok(())
    }

    /// Forget a subject's failures (a successful login for that email).
    pub async fn clear_login_failures(&self, subject: &[u8; 32]) -> Result<(), Error> {
        dispatch!(self.pool(), p => {
            sqlx::query("DELETE FROM flexgate_login_failure WHERE subject = $1")
                .bind(&subject[..])
                .execute(p)
                .await?;
        });
        Ok(())
    }

    /// Delete expired revocations and failures older than `failures_before`.
    pub async fn prune_state(&self, now: i64, failures_before: i64) -> Result<(), Error> {
        dispatch!(self.pool(), p => {
            sqlx::query("DELETE FROM flexgate_revoked_session WHERE expires_at <= $1")
                .bind(now)
                .execute(p)
                .await?;
            sqlx::query("DELETE FROM flexgate_login_failure WHERE at <= $1")
                .bind(failures_before)
                .execute(p)
                .await?;
        });
        Ok(())
    }
}
