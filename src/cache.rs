//! Per-thread front caches for the hot path.
//!
//! The shared caches (moka) are right for capacity, eviction and concurrent loads, but a
//! hit there costs a few thousand instructions: hashing with a keyed hasher, an
//! epoch-guarded lookup and a read record queued for the eviction policy. An authorized
//! request makes three such lookups (token, principal, owner), and on the cached path
//! they answer the same few keys again and again. A [`FrontCache`] keeps, per thread, a
//! small direct-mapped table of the latest answers in front of the shared cache, so a
//! repeated lookup is one hash, one compare and two integer checks, with no atomic
//! read-modify-write and nothing shared between threads.
//!
//! Correctness rests on two rules, both checked on every read:
//!
//! * **Never outlive the shared entry.** Every slot carries the instant its value stops
//!   being valid, taken from the value as it was loaded (see [`Expiring`]), which is no
//!   later than the shared cache's own expiry of it.
//! * **Invalidation reaches every thread at once.** Invalidating the shared cache is
//!   followed by [`FrontCache::invalidate_all`], which bumps an epoch; a slot written
//!   under an older epoch is a miss. A caller reads the epoch *before* it asks the
//!   shared cache ([`FrontCache::epoch`]) and files what it got under that epoch, so an
//!   answer that raced an invalidation is never served again.
//!
//! A copy can outlive its shared entry in one way: the shared cache drops an entry for
//! its size bound (or does not admit one it just loaded) while a thread holds a copy.
//! That is safe only where invalidations name keys whether or not the shared cache
//! holds them (the change feed). FlexMeasures mode's revalidation checks the entries
//! the shared cache holds, so it bumps the epoch after every pass.
//!
//! A collision simply replaces the slot: the front cache holds hot keys, the shared
//! cache holds everything.

use std::cell::RefCell;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use thread_local::ThreadLocal;

/// Front-cache slots per thread and cache: enough for a worker's hot set (the tokens,
/// users and resources of its busy clients) at about 100 KB per thread and cache, and
/// about 300 KB for the token caches, whose slots also hold each token's text.
pub const FRONT_SLOTS: usize = 1024;

/// A value together with the instant it stops being valid, as stored in a shared cache
/// so that a front cache in front of it knows how long it may keep a copy.
#[derive(Debug, Clone)]
pub struct Expiring<V> {
    /// The cached value.
    pub value: V,
    /// When the value stops being valid (no later than the shared cache's expiry).
    pub expires: Instant,
}

/// A small per-thread, direct-mapped cache of recent answers from a shared cache.
pub struct FrontCache<K: Send, V: Send> {
    tables: ThreadLocal<RefCell<Table<K, V>>>,
    epoch: AtomicU64,
    mask: usize,
    hasher: foldhash::fast::RandomState,
}

/// One thread's slots.
type Table<K, V> = Box<[Option<Slot<K, V>>]>;

struct Slot<K, V> {
    key: K,
    value: V,
    expires: Instant,
    epoch: u64,
}

impl<K: Send, V: Send> std::fmt::Debug for FrontCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontCache")
            .field("slots", &(self.mask + 1))
            .field("epoch", &self.epoch.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Send, V: Clone + Send> FrontCache<K, V> {
    /// A front cache with `slots` entries per thread (rounded up to a power of two).
    pub fn new(slots: usize) -> Self {
        let slots = slots.max(1).next_power_of_two();
        FrontCache {
            tables: ThreadLocal::new(),
            epoch: AtomicU64::new(0),
            mask: slots - 1,
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// The current epoch: read it before asking the shared cache, and pass it to
    /// [`FrontCache::put`] with the answer.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// This thread's copy of `key`'s value, if it is still valid at `now` and was filed
    /// after the latest invalidation.
    pub fn get(&self, key: &K, now: Instant) -> Option<V> {
        self.read(key, now, |value| Some(value.clone()))
    }

    /// What `read` makes of this thread's copy of `key`'s value, under the same
    /// conditions as [`FrontCache::get`]; for reading part of a value without cloning it.
    pub fn read<R>(&self, key: &K, now: Instant, read: impl FnOnce(&V) -> Option<R>) -> Option<R> {
        let epoch = self.epoch();
        let table = self.tables.get()?.borrow();
        let slot = table[self.index(key)].as_ref()?;
        if slot.epoch == epoch && now < slot.expires && slot.key == *key {
            read(&slot.value)
        } else {
            None
        }
    }

    /// File `value` for `key` on this thread, as read from the shared cache under
    /// `epoch`, valid until `expires`.
    pub fn put(&self, key: K, value: V, expires: Instant, epoch: u64) {
        let index = self.index(&key);
        let table = self
            .tables
            .get_or(|| RefCell::new((0..=self.mask).map(|_| None).collect()));
        table.borrow_mut()[index] = Some(Slot {
            key,
            value,
            expires,
            epoch,
        });
    }

    /// Make every thread's copies stale. Call it after invalidating the shared cache.
    pub fn invalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn index(&self, key: &K) -> usize {
        // The hash is 64 bits and the mask at most a few thousand: truncation is intended.
        (self.hasher.hash_one(key) as usize) & self.mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn later(secs: u64) -> Instant {
        Instant::now() + Duration::from_secs(secs)
    }

    #[test]
    fn a_filed_value_is_served_until_it_expires() {
        let cache = FrontCache::new(16);
        let now = Instant::now();
        assert_eq!(cache.get(&1u64, now), None, "empty");
        cache.put(1u64, "one", now + Duration::from_secs(5), cache.epoch());
        assert_eq!(cache.get(&1, now), Some("one"));
        assert_eq!(cache.get(&2, now), None, "another key");
        assert_eq!(cache.get(&1, now + Duration::from_secs(5)), None, "expired");
    }

    #[test]
    fn invalidation_makes_every_copy_stale() {
        let cache = FrontCache::new(16);
        cache.put(1u64, 10, later(60), cache.epoch());
        cache.invalidate_all();
        assert_eq!(cache.get(&1, Instant::now()), None);
        cache.put(1, 11, later(60), cache.epoch());
        assert_eq!(cache.get(&1, Instant::now()), Some(11));
    }

    #[test]
    fn an_answer_read_before_an_invalidation_is_never_served() {
        let cache = FrontCache::new(16);
        let epoch = cache.epoch();
        // ... the shared cache answers with the old value, then an invalidation lands ...
        cache.invalidate_all();
        cache.put(1u64, "old", later(60), epoch);
        assert_eq!(cache.get(&1, Instant::now()), None);
    }

    #[test]
    fn a_colliding_key_replaces_the_slot_and_never_answers_for_another() {
        let cache = FrontCache::new(1);
        cache.put(1u64, 1, later(60), cache.epoch());
        cache.put(2u64, 2, later(60), cache.epoch());
        assert_eq!(cache.get(&1, Instant::now()), None);
        assert_eq!(cache.get(&2, Instant::now()), Some(2));
    }

    #[test]
    fn each_thread_has_its_own_copies_and_sees_invalidations() {
        let cache = Arc::new(FrontCache::new(16));
        cache.put(1u64, 1, later(60), cache.epoch());
        let other = Arc::clone(&cache);
        std::thread::spawn(move || {
            assert_eq!(
                other.get(&1, Instant::now()),
                None,
                "not filed on this thread"
            );
            other.put(1, 2, later(60), other.epoch());
            assert_eq!(other.get(&1, Instant::now()), Some(2));
            other.invalidate_all();
        })
        .join()
        .unwrap();
        assert_eq!(
            cache.get(&1, Instant::now()),
            None,
            "the other thread invalidated"
        );
    }
}
