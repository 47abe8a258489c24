//! Brute-force protection for the token endpoint: failed logins are counted per email
//! and per client address; past the limit, logins for that email or from that address
//! get 429 with `Retry-After` until the window ends. Successes are never slowed, and a
//! success clears its email's count.
//!
//! [`LoginLimits`] keeps the counts where every replica sees them (flexgate's own
//! database: `flexgate_login_failure`, a sliding window, subjects stored only as
//! SHA-256), so N replicas behind a load balancer allow the configured number of
//! attempts, not N times it; a database that cannot answer refuses logins (503) rather
//! than lifting the limits. Without a database of flexgate's own (FlexMeasures mode
//! without `FLEXGATE_STATE_URL`) the counts are this process's ([`Throttle`]).

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use moka::sync::Cache;

use crate::rules::ThrottleSettings;

struct Window {
    started: Instant,
    failures: AtomicU32,
}

/// Failure counters with a time-to-live of one window.
pub struct Throttle {
    settings: ThrottleSettings,
    emails: Cache<String, Arc<Window>>,
    clients: Cache<IpAddr, Arc<Window>>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Throttle {
    /// Counters for `settings`; at most 100k emails and 100k addresses are tracked.
    pub fn new(settings: ThrottleSettings) -> Self {
        Throttle {
            emails: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(settings.window)
                .build(),
            clients: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(settings.window)
                .build(),
            settings,
        }
    }

    /// `Err(retry_after)` if this email or address is over its limit.
    pub fn check(&self, email: &str, client: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let over = |w: Option<Arc<Window>>, limit: u32| {
            w.filter(|w| w.failures.load(Ordering::Relaxed) >= limit)
                .map(|w| (w.started + self.settings.window).saturating_duration_since(now))
        };
        let by_email = over(self.emails.get(email), self.settings.failures_per_email);
        let by_client = over(self.clients.get(&client), self.settings.failures_per_client);
        match by_email.into_iter().chain(by_client).max() {
            Some(wait) => Err(wait.max(Duration::from_secs(1))),
            None => Ok(()),
        }
    }

    /// Count a failed login.
    pub fn failure(&self, email: &str, client: IpAddr) {
        bump(&self.emails, email.to_owned());
        bump(&self.clients, client);
    }

    /// A successful login clears its email's failures (not the address's: one good
    /// password must not reset guessing at other accounts).
    pub fn success(&self, email: &str) {
        self.emails.invalidate(email);
    }
}

/// Where failed logins are counted.
pub enum LoginLimits {
    /// In this process only.
    Local(Throttle),
    /// In flexgate's own database, shared by every replica.
    Shared {
        /// The database (its `flexgate_login_failure` table).
        store: crate::store::Store,
        /// Limits and window.
        settings: ThrottleSettings,
    },
}

impl std::fmt::Debug for LoginLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoginLimits::Local(t) => t.fmt(f),
            LoginLimits::Shared { settings, .. } => f
                .debug_struct("SharedLimits")
                .field("settings", settings)
                .finish(),
        }
    }
}

/// Why a login may not be tried now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Over a limit: retry after this long.
    Throttled(Duration),
    /// The shared counts cannot be read: logins are refused (fail closed).
    Unavailable(String),
}

fn subject(kind: &str, value: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    h.update([0]);
    h.update(value.as_bytes());
    h.finalize().into()
}

impl LoginLimits {
    /// Counts in `store` when given, else in this process.
    pub fn new(store: Option<crate::store::Store>, settings: ThrottleSettings) -> LoginLimits {
        match store {
            Some(store) => LoginLimits::Shared { store, settings },
            None => LoginLimits::Local(Throttle::new(settings)),
        }
    }

    /// Whether this email or address is over its limit.
    pub async fn check(&self, email: &str, client: IpAddr) -> Result<(), Refusal> {
        let (store, settings) = match self {
            LoginLimits::Local(t) => return t.check(email, client).map_err(Refusal::Throttled),
            LoginLimits::Shared { store, settings } => (store, settings),
        };
        let now = crate::auth::unix_now() as i64;
        let window = i64::try_from(settings.window.as_secs()).unwrap_or(i64::MAX);
        let subjects = [
            subject("email", email),
            subject("client", &client.to_string()),
        ];
        let db = store.clone();
        let counts = store
            .offload(async move { db.login_failures(&subjects, now - window).await })
            .await
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
        let limits = [settings.failures_per_email, settings.failures_per_client];
        let wait = counts
            .iter()
            .zip(limits)
            .filter(|((n, _), limit)| n >= limit)
            .filter_map(|((_, oldest), _)| *oldest)
            .map(|oldest| Duration::from_secs(u64::try_from(oldest + window - now).unwrap_or(1)))
            .max();
        match wait {
            Some(wait) => Err(Refusal::Throttled(wait.max(Duration::from_secs(1)))),
            None => Ok(()),
        }
    }

    /// Count a failed login.
    pub async fn failure(&self, email: &str, client: IpAddr) {
        let store = match self {
            LoginLimits::Local(t) => return t.failure(email, client),
            LoginLimits::Shared { store, .. } => store,
        };
        let subjects = [
            subject("email", email),
            subject("client", &client.to_string()),
        ];
        let now = crate::auth::unix_now() as i64;
        let db = store.clone();
        if let Err(e) = store
            .offload(async move { db.record_login_failure(&subjects, now).await })
            .await
        {
            tracing::warn!(error = %e, "cannot record a failed login");
        }
    }

    /// A successful login clears its email's failures (not the address's).
    pub async fn success(&self, email: &str) {
        let store = match self {
            LoginLimits::Local(t) => return t.success(email),
            LoginLimits::Shared { store, .. } => store,
        };
        let email = subject("email", email);
        let db = store.clone();
        if let Err(e) = store
            .offload(async move { db.clear_login_failures(&email).await })
            .await
        {
            tracing::warn!(error = %e, "cannot clear the failed logins of a successful one");
        }
    }
}

fn bump<K: Hash + Eq + Send + Sync + 'static>(cache: &Cache<K, Arc<Window>>, key: K) {
    cache
        .get_with(key, || {
            Arc::new(Window {
                started: Instant::now(),
                failures: AtomicU32::new(0),
            })
        })
        .failures
        .fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_email_and_per_client() {
        let t = Throttle::new(ThrottleSettings {
            failures_per_email: 2,
            failures_per_client: 3,
            window: Duration::from_secs(60),
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(t.check("x@y", a).is_ok());
        t.failure("x@y", a);
        assert!(t.check("x@y", a).is_ok());
        t.failure("x@y", a);
        let wait = t.check("x@y", b).unwrap_err();
        assert!(
            wait > Duration::from_secs(50) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        // Other emails from the same address are fine until the address limit.
        assert!(t.check("other@y", a).is_ok());
        t.failure("other@y", a);
        assert!(t.check("third@y", a).is_err(), "address limit reached");
        assert!(t.check("third@y", b).is_ok());
        // A success clears the email's count, not the address's.
        t.success("x@y");
        assert!(t.check("x@y", b).is_ok());
        assert!(t.check("x@y", a).is_err());
    }
}
