//! Brute-force protection for the token endpoint: login attempts are counted per email
//! and per client address before the password is checked (so that attempts sent all at
//! once cannot all pass a count none has added to yet); past the limit, logins for that
//! email or from that address get 429 with `Retry-After` until the window ends. A
//! success clears its email's count and gives its address the attempt back, so only
//! failures use the budgets up.
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

/// One email's or address's attempts in the current window.
#[derive(Debug)]
pub struct Window {
    started: Instant,
    attempts: AtomicU32,
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

    /// Count a login attempt for this email and address before its password is
    /// checked, or `Err(retry_after)` if either is at its limit (then nothing is
    /// counted). Counting first is what makes the limit hold for attempts sent all at
    /// once: each one adds to the count before the next can read it.
    pub fn begin(&self, email: &str, client: IpAddr) -> Result<Arc<Window>, Duration> {
        let client = counted_as(client);
        let now = Instant::now();
        let by_email = window(&self.emails, email.to_owned());
        let by_client = window(&self.clients, client);
        let over = |w: &Window, limit: u32| {
            (w.attempts.fetch_add(1, Ordering::AcqRel) >= limit)
                .then(|| (w.started + self.settings.window).saturating_duration_since(now))
        };
        let waits = [
            over(&by_email, self.settings.failures_per_email),
            over(&by_client, self.settings.failures_per_client),
        ];
        match waits.into_iter().flatten().max() {
            Some(wait) => {
                release(&by_email);
                release(&by_client);
                Err(wait.max(Duration::from_secs(1)))
            }
            None => Ok(by_client),
        }
    }

    /// A successful login clears its email's count, and gives its address the attempt
    /// back (`client`, from [`Throttle::begin`]): one good password must not reset
    /// guessing at other accounts, nor may good logins use up an address's budget.
    pub fn succeeded(&self, email: &str, client: &Window) {
        self.emails.invalidate(email);
        release(client);
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

    /// Count a login attempt before its password is checked (see [`Throttle::begin`]),
    /// or refuse it: over a limit, or the shared counts cannot be reached (fail
    /// closed). A failed login needs nothing more; pass a successful one's attempt to
    /// [`LoginLimits::succeeded`].
    pub async fn begin(&self, email: &str, client: IpAddr) -> Result<Attempt, Refusal> {
        let (store, settings) = match self {
            LoginLimits::Local(t) => {
                return t
                    .begin(email, client)
                    .map(Attempt::Local)
                    .map_err(Refusal::Throttled);
            }
            LoginLimits::Shared { store, settings } => (store, settings),
        };
        let now = crate::auth::unix_now() as i64;
        let window = i64::try_from(settings.window.as_secs()).unwrap_or(i64::MAX);
        let subjects = [
            subject("email", email),
            subject("client", &counted_as(client).to_string()),
        ];
        let limits = [settings.failures_per_email, settings.failures_per_client];
        let db = store.clone();
        let reserved = store
            .offload(async move {
                db.reserve_login_attempt(&subjects, limits, now, now - window)
                    .await
            })
            .await
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
        match reserved {
            Ok([_, client_row]) => Ok(Attempt::Shared { client_row }),
            Err(oldest) => {
                let wait = u64::try_from(oldest.saturating_add(window) - now).unwrap_or(1);
                Err(Refusal::Throttled(Duration::from_secs(wait.max(1))))
            }
        }
    }

    /// A successful login clears its email's count and gives its address the attempt
    /// back (not the address's earlier failures: one good password must not reset
    /// guessing at other accounts).
    pub async fn succeeded(&self, email: &str, attempt: Attempt) {
        let store = match (self, attempt) {
            (LoginLimits::Local(t), Attempt::Local(client)) => return t.succeeded(email, &client),
            (LoginLimits::Shared { store, .. }, Attempt::Shared { client_row }) => {
                let db = store.clone();
                if let Err(e) = store
                    .offload(async move { db.release_login_attempt(client_row).await })
                    .await
                {
                    tracing::warn!(error = %e, "cannot give a successful login's attempt back");
                }
                store
            }
            _ => return,
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

/// A login attempt counted by [`LoginLimits::begin`].
#[derive(Debug)]
pub enum Attempt {
    /// Counted in this process (the address's window).
    Local(Arc<Window>),
    /// Counted in the shared table (the address's row).
    Shared {
        /// The row that counts this attempt for its client address.
        client_row: i64,
    },
}

/// The address a client's attempts are counted under: an IPv6 client by its /64 (one
/// host usually has a whole /64, and would otherwise get a budget per address in it),
/// an IPv4-mapped one as IPv4.
fn counted_as(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

fn window<K: Hash + Eq + Send + Sync + 'static>(
    cache: &Cache<K, Arc<Window>>,
    key: K,
) -> Arc<Window> {
    cache.get_with(key, || {
        Arc::new(Window {
            started: Instant::now(),
            attempts: AtomicU32::new(0),
        })
    })
}

/// Take one attempt back (never below zero).
fn release(w: &Window) {
    let _ = w
        .attempts
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
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
        // Two attempts (failed: nothing more is said of them) use the email's budget.
        assert!(t.begin("x@y", a).is_ok());
        assert!(t.begin("x@y", a).is_ok());
        let wait = t.begin("x@y", b).unwrap_err();
        assert!(
            wait > Duration::from_secs(50) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        // Other emails from the same address are fine until the address limit; a
        // refused attempt counted nothing.
        assert!(t.begin("other@y", a).is_ok());
        assert!(t.begin("third@y", a).is_err(), "address limit reached");
        let ok = t.begin("third@y", b).unwrap();
        // A success clears the email's count and gives the address its attempt back,
        // not the address's earlier failures.
        t.succeeded("third@y", &ok);
        assert!(t.begin("x@y", b).is_err(), "x@y is still at its limit");
        let good = t.begin("fourth@y", b).unwrap();
        t.succeeded("fourth@y", &good);
        assert!(
            t.begin("fifth@y", b).is_ok(),
            "b's successes used up nothing"
        );
        assert!(t.begin("fifth@y", a).is_err());
    }

    #[test]
    fn an_ipv6_host_is_counted_by_its_slash_64() {
        let t = Throttle::new(ThrottleSettings {
            failures_per_email: 100,
            failures_per_client: 2,
            window: Duration::from_secs(60),
        });
        let host = |n: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, n]);
        assert!(t.begin("a@x", host(1)).is_ok());
        assert!(t.begin("b@x", host(2)).is_ok());
        assert!(t.begin("c@x", host(3)).is_err(), "the same /64");
        assert!(
            t.begin("c@x", IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]))
                .is_ok()
        );
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert!(t.begin("d@x", mapped).is_ok());
        assert!(t.begin("e@x", "192.0.2.7".parse().unwrap()).is_ok());
        assert!(
            t.begin("f@x", mapped).is_err(),
            "mapped and plain IPv4 are one client"
        );
    }

    #[test]
    fn attempts_sent_at_once_cannot_all_pass_the_count() {
        let t = Arc::new(Throttle::new(ThrottleSettings {
            failures_per_email: 3,
            failures_per_client: 1000,
            window: Duration::from_secs(60),
        }));
        let passed: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..32)
                .map(|i| {
                    let t = Arc::clone(&t);
                    scope.spawn(move || {
                        let client = IpAddr::from([10, 0, 0, i as u8]);
                        t.begin("victim@y", client).is_ok()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| usize::from(h.join().unwrap()))
                .sum()
        });
        assert_eq!(passed, 3);
    }
}
