//! How many connections a listener serves at once: in all (`max_connections`, shared
//! by the listener's workers) and from one client (`max_connections_per_client`), so
//! that one address cannot take every slot and lock everyone else out. A client is an
//! IPv4 address or an IPv6 /64 (what one host or home network is usually given);
//! `trusted_proxies`, which carry many clients each, count only against the total.
//!
//! The per-client counts live in a few mutex-guarded maps, touched once when a
//! connection opens and once when it closes, never per request.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::rules::TrustedProxies;

/// Shards of the per-client map: accepts on different workers rarely share a lock.
const SHARDS: usize = 16;

/// A listener's connection limits.
#[derive(Debug)]
pub struct ConnectionLimit {
    total: Arc<Semaphore>,
    per_client: Option<PerClient>,
}

#[derive(Debug)]
struct PerClient {
    max: u32,
    exempt: TrustedProxies,
    hasher: foldhash::fast::FixedState,
    shards: Box<[Mutex<HashMap<ClientKey, u32>>]>,
}

/// Whom a connection counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ClientKey {
    V4(u32),
    /// The /64 prefix.
    V6(u64),
}

impl ClientKey {
    fn of(ip: IpAddr) -> ClientKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => ClientKey::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The listener serves `max_connections` already.
    Listener,
    /// This client holds `max_connections_per_client` already.
    Client,
}

/// A connection's place: given back when the connection ends.
#[derive(Debug)]
pub struct ConnectionPermit {
    _total: OwnedSemaphorePermit,
    client: Option<(Arc<ConnectionLimit>, ClientKey)>,
}

impl ConnectionLimit {
    /// `max_total` in all; `per_client` (`None`: no per-client limit) from any one
    /// client not in `exempt`.
    pub fn new(max_total: usize, per_client: Option<(u32, TrustedProxies)>) -> ConnectionLimit {
        ConnectionLimit {
            total: Arc::new(Semaphore::new(max_total)),
            per_client: per_client.map(|(max, exempt)| PerClient {
                max,
                exempt,
                hasher: foldhash::fast::FixedState::default(),
                shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            }),
        }
    }

    /// A place for a connection from `peer`, if both limits allow it.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<ConnectionPermit, Refused> {
        let total = Arc::clone(&self.total)
            .try_acquire_owned()
            .map_err(|_| Refused::Listener)?;
        let client = match &self.per_client {
            Some(pc) if !pc.exempt.contains(peer) => {
                let key = ClientKey::of(peer);
                let mut shard = pc.shard(key).lock().unwrap_or_else(|e| e.into_inner());
                let held = shard.entry(key).or_insert(0);
                if *held >= pc.max {
                    return Err(Refused::Client);
                }
                *held += 1;
                Some((Arc::clone(self), key))
            }
            _ => None,
        };
        Ok(ConnectionPermit {
            _total: total,
            client,
        })
    }

    /// Connections `peer`'s client holds now (for tests and metrics).
    pub fn held_by(&self, peer: IpAddr) -> u32 {
        self.per_client.as_ref().map_or(0, |pc| {
            let key = ClientKey::of(peer);
            let shard = pc.shard(key).lock().unwrap_or_else(|e| e.into_inner());
            shard.get(&key).copied().unwrap_or(0)
        })
    }
}

impl PerClient {
    fn shard(&self, key: ClientKey) -> &Mutex<HashMap<ClientKey, u32>> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        if let Some((limit, key)) = self.client.take()
            && let Some(pc) = &limit.per_client
        {
            let mut shard = pc.shard(key).lock().unwrap_or_else(|e| e.into_inner());
            if let Some(held) = shard.get_mut(&key) {
                *held -= 1;
                if *held == 0 {
                    shard.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn one_client_gets_its_share_and_no_more() {
        let limit = Arc::new(ConnectionLimit::new(
            10,
            Some((2, TrustedProxies::new(vec![]))),
        ));
        let a = [
            limit.admit(ip("192.0.2.1")).unwrap(),
            limit.admit(ip("192.0.2.1")).unwrap(),
        ];
        assert_eq!(limit.admit(ip("192.0.2.1")).unwrap_err(), Refused::Client);
        // The same address spelled as IPv4-mapped IPv6 is the same client.
        assert_eq!(
            limit.admit(ip("::ffff:192.0.2.1")).unwrap_err(),
            Refused::Client
        );
        let other = limit.admit(ip("192.0.2.2")).unwrap();
        drop(a);
        assert_eq!(limit.held_by(ip("192.0.2.1")), 0);
        let again = limit.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(limit.held_by(ip("192.0.2.1")), 1);
        drop((other, again));
    }

    #[test]
    fn an_ipv6_client_is_its_64() {
        let limit = Arc::new(ConnectionLimit::new(
            10,
            Some((1, TrustedProxies::new(vec![]))),
        ));
        let _a = limit.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            limit.admit(ip("2001:db8:1:2:ffff::9")).unwrap_err(),
            Refused::Client
        );
        assert!(limit.admit(ip("2001:db8:1:3::1")).is_ok());
    }

    #[test]
    fn trusted_proxies_count_only_against_the_total() {
        let proxies = TrustedProxies::new(vec![TrustedProxies::parse("10.0.0.0/8").unwrap()]);
        let limit = Arc::new(ConnectionLimit::new(3, Some((1, proxies))));
        let held: Vec<_> = (0..3)
            .map(|_| limit.admit(ip("10.1.2.3")).unwrap())
            .collect();
        assert_eq!(limit.admit(ip("192.0.2.1")).unwrap_err(), Refused::Listener);
        drop(held);
        // Refused by the total: the client's count was not taken.
        assert_eq!(limit.held_by(ip("192.0.2.1")), 0);
    }

    #[test]
    fn without_a_per_client_limit_only_the_total_counts() {
        let limit = Arc::new(ConnectionLimit::new(2, None));
        let _held = [
            limit.admit(ip("192.0.2.1")).unwrap(),
            limit.admit(ip("192.0.2.1")).unwrap(),
        ];
        assert_eq!(limit.admit(ip("192.0.2.1")).unwrap_err(), Refused::Listener);
    }
}
