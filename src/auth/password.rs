//! Password hashing and verification with bcrypt.
//!
//! bcrypt is deliberately slow, so every hash and verify runs on a few low-priority
//! threads ([`CryptThreads`]): a flood of logins queues up there instead of starving the
//! proxy's workers. An unknown email (or an inactive user) is verified against a dummy hash of the
//! same cost, so it takes as long as a wrong password and cannot be told apart by timing.

use std::sync::{Arc, OnceLock};

use super::Error;
use super::crypt_threads::CryptThreads;

/// Shortest password accepted for new credentials (Flask-Security's default).
pub const MIN_PASSWORD_LEN: usize = 8;
/// bcrypt only looks at the first 72 bytes; longer passwords are refused rather than
/// silently truncated.
pub const MAX_PASSWORD_LEN: usize = 72;

/// Hashes and verifies passwords off the async runtime with bounded concurrency.
#[derive(Clone)]
pub struct PasswordHasher {
    cost: u32,
    threads: CryptThreads,
    dummy: Arc<OnceLock<String>>,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("cost", &self.cost)
            .finish_non_exhaustive()
    }
}

impl PasswordHasher {
    /// `max_concurrent` hashing threads bound how many bcrypt computations run at once;
    /// `cost` must be a valid bcrypt cost (4 to 31).
    pub fn new(cost: u32, max_concurrent: usize) -> Result<Self, Error> {
        if !(4..=31).contains(&cost) {
            return Err(Error::Hash(format!("bcrypt cost {cost} is outside 4..=31")));
        }
        Ok(PasswordHasher {
            cost,
            threads: CryptThreads::start(max_concurrent)
                .map_err(|e| Error::Hash(format!("cannot start hashing threads: {e}")))?,
            dummy: Arc::new(OnceLock::new()),
        })
    }

    /// Hash a new password (after checking its length).
    pub async fn hash(&self, password: String) -> Result<String, Error> {
        validate_new_password(&password)?;
        let cost = self.cost;
        self.blocking(move || bcrypt::non_truncating_hash(password.as_bytes(), cost))
            .await?
            .map_err(|e| Error::Hash(e.to_string()))
    }

    /// Whether `password` matches `hash`. With `None` (unknown user) the same work is
    /// done against a dummy hash and the answer is `false`.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, Error> {
        let cost = self.cost;
        let dummy = Arc::clone(&self.dummy);
        self.blocking(move || {
            let (hash, real) = match &hash {
                Some(h) => (h.as_str(), true),
                None => (
                    dummy
                        .get_or_init(|| {
                            // Hashing a fixed short string only fails for an invalid cost,
                            // which `new` has ruled out.
                            bcrypt::hash("flexgate-dummy-password", cost)
                                .expect("cost checked in PasswordHasher::new")
                        })
                        .as_str(),
                    false,
                ),
            };
            // A malformed stored hash or an over-long password is a mismatch, not an error
            // the caller could distinguish.
            let matched = bcrypt::non_truncating_verify(password.as_bytes(), hash).unwrap_or(false);
            matched && real
        })
        .await
    }

    async fn blocking<T, F>(&self, work: F) -> Result<T, Error>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.threads
            .run(work)
            .await
            .map_err(|e| Error::Hash(e.to_string()))
    }

    /// The hashing threads, for other slow credential work (sha256_crypt bindings).
    pub fn threads(&self) -> &CryptThreads {
        &self.threads
    }
}

/// Refuse passwords that are too short to be safe or too long for bcrypt.
pub fn validate_new_password(password: &str) -> Result<(), Error> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(Error::WeakPassword(format!(
            "password must be at least {MIN_PASSWORD_LEN} characters"
        )));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(Error::WeakPassword(format!(
            "password must be at most {MAX_PASSWORD_LEN} bytes (bcrypt ignores the rest)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let hasher = PasswordHasher::new(4, 2).unwrap();
        let hash = hasher.hash("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$2b$04$"));
        assert!(
            hasher
                .verify("correct horse".into(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify("wrong horse".into(), Some(hash))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn unknown_user_never_matches() {
        let hasher = PasswordHasher::new(4, 2).unwrap();
        assert!(
            !hasher
                .verify("flexgate-dummy-password".into(), None)
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn malformed_hash_is_a_mismatch() {
        let hasher = PasswordHasher::new(4, 2).unwrap();
        assert!(
            !hasher
                .verify("whatever1".into(), Some("not-a-hash".into()))
                .await
                .unwrap()
        );
    }

    #[test]
    fn password_length_limits() {
        assert!(validate_new_password("short").is_err());
        assert!(validate_new_password("long enough").is_ok());
        assert!(validate_new_password(&"x".repeat(73)).is_err());
    }
}
