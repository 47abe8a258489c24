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

    /// Record one failed login for each subject at `at` (Unix seconds).
    pub async fn record_login_failure(&self, subjects: &[[u8; 32]], at: i64) -> Result<(), Error> {
        dispatch!(self.pool(), p => {
            for subject in subjects {
                sqlx::query("INSERT INTO flexgate_login_failure (subject, at) VALUES ($1, $2)")
                    .bind(&subject[..])
                    .bind(at)
                    .execute(p)
                    .await?;
            }
        });
        Ok(())
    }

    /// Failed logins of each subject since `since` (Unix seconds), and the oldest of
    /// them (for `Retry-After`), in one round trip.
    pub async fn login_failures(
        &self,
        subjects: &[[u8; 32]],
        since: i64,
    ) -> Result<Vec<(u32, Option<i64>)>, Error> {
        let mut out = Vec::with_capacity(subjects.len());
        dispatch!(self.pool(), p => {
            for subject in subjects {
                let row = sqlx::query(
                    "SELECT COUNT(*) AS n, MIN(at) AS oldest FROM flexgate_login_failure WHERE subject = $1 AND at > $2",
                )
                .bind(&subject[..])
                .bind(since)
                .fetch_one(p)
                .await?;
                let n: i64 = row.try_get("n")?;
                out.push((u32::try_from(n).unwrap_or(u32::MAX), row.try_get("oldest")?));
            }
        });
        Ok(out)
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
