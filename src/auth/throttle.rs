//! Brute-force protection for the token endpoint: failed logins are counted per email
//! and per client address in fixed windows; past the limit, logins for that email or
//! from that address get 429 with `Retry-After` until the window ends. Successes are
//! never slowed, and a success clears its email's count.

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
