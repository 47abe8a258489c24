//! API keys for machines: long-lived, named, revocable credentials that act for one
//! user (optionally narrowed to read-only, or to some of the user's roles).
//!
//! A key is `fgk_` + 43 characters of base64url (32 random bytes, 256 bits) + 6
//! characters of base64url CRC32 over the prefix and the random part. The prefix lets
//! secret scanners recognise a leaked key; the checksum refuses a mistyped key before
//! any database lookup (not a made-up one: anyone can compute a CRC32, so a well-formed
//! unknown key costs one lookup, and its negative answer is cached).
//!
//! Keys are stored only as HMAC-SHA256 under a key derived from `SECRET_KEY`. A fast
//! hash is right here, unlike for passwords: a key has 256 bits of randomness, so
//! there is nothing to brute-force that a slow hash would slow down, and a fast one
//! keeps the check at a microsecond. The keying means a copy of the database alone
//! cannot even confirm a guessed key.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::settings::Secret;

/// What every key starts with.
pub const PREFIX: &str = "fgk_";
/// Length of a key.
pub const KEY_LEN: usize = PREFIX.len() + 43 + 6;

/// Why a string is not a well-formed key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not `fgk_` and 49 base64url characters.
    #[error("not an API key")]
    Malformed,
    /// The checksum does not match: mistyped or made up.
    #[error("bad checksum")]
    BadChecksum,
}

impl KeyError {
    /// A stable label for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            KeyError::Malformed => "malformed",
            KeyError::BadChecksum => "bad_checksum",
        }
    }
}

/// Whether a bearer credential is meant as an API key (it has the prefix).
pub fn looks_like_key(credential: &str) -> bool {
    credential.starts_with(PREFIX)
}

fn checksum(body: &str) -> String {
    let mut crc = crc32fast::Hasher::new();
    crc.update(PREFIX.as_bytes());
    crc.update(body.as_bytes());
    URL_SAFE_NO_PAD.encode(crc.finalize().to_be_bytes())
}

/// A new random key.
pub fn generate() -> String {
    let mut random = [0u8; 32];
    // The OS random source only fails on a broken platform; a predictable key would be
    // worse than stopping.
    getrandom::fill(&mut random).expect("the operating system's random source failed");
    let body = URL_SAFE_NO_PAD.encode(random);
    format!("{PREFIX}{body}{}", checksum(&body))
}

/// Check a key's shape and checksum (no secret involved, no lookup).
pub fn check(key: &str) -> Result<(), KeyError> {
    let Some(rest) = key.strip_prefix(PREFIX) else {
        return Err(KeyError::Malformed);
    };
    if key.len() != KEY_LEN
        || !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(KeyError::Malformed);
    }
    let (body, sum) = rest.split_at(43);
    if URL_SAFE_NO_PAD.decode(body).map(|b| b.len()) != Ok(32) {
        return Err(KeyError::Malformed);
    }
    use subtle::ConstantTimeEq;
    if !bool::from(checksum(body).as_bytes().ct_eq(sum.as_bytes())) {
        return Err(KeyError::BadChecksum);
    }
    Ok(())
}

/// The keyed hash a key is stored and looked up by.
#[derive(Clone)]
pub struct KeyHasher {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHasher(<redacted>)")
    }
}

impl KeyHasher {
    /// Derive the hashing key from `SECRET_KEY`: HMAC-SHA256(SECRET_KEY, "flexgate api key v1").
    pub fn new(secret: &Secret) -> KeyHasher {
        let mut derive =
            Hmac::<Sha256>::new_from_slice(secret.expose()).expect("HMAC takes keys of any length");
        derive.update(b"flexgate api key v1");
        let key = derive.finalize().into_bytes();
        KeyHasher {
            mac: Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length"),
        }
    }

    /// The stored form of `key`.
    pub fn hash(&self, key: &str) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(key.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// The last four characters of a key, shown in listings.
pub fn hint(key: &str) -> String {
    key.get(key.len().saturating_sub(4)..)
        .unwrap_or("")
        .to_owned()
}

/// What a key grants, carried by the identity it authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The key's id (audit lines and metrics name keys by id and name, never by value).
    pub id: i64,
    /// The key's name.
    pub name: std::sync::Arc<str>,
    /// Only `read` checks on safe methods pass.
    pub read_only: bool,
}

/// Why a key did not authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRefusal {
    /// Shape or checksum.
    Key(KeyError),
    /// No such key.
    Unknown,
    /// Revoked.
    Revoked,
    /// Past its expiry.
    Expired,
    /// Keys cannot be checked here (no `SECRET_KEY`, or no database for keys).
    NotConfigured,
    /// The database could not answer.
    Unavailable(String),
}

impl KeyRefusal {
    /// A stable label for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            KeyRefusal::Key(e) => e.as_str(),
            KeyRefusal::Unknown => "unknown",
            KeyRefusal::Revoked => "revoked",
            KeyRefusal::Expired => "expired",
            KeyRefusal::NotConfigured => "not_configured",
            KeyRefusal::Unavailable(_) => "unavailable",
        }
    }
}

/// How long a key's record (or its absence) is reused before the database is asked
/// again: a revocation reaches every replica within this.
pub const KEY_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(2);
/// Last use is written at most this often per key.
pub const USE_RECORD_INTERVAL: i64 = 60;

/// The API keys of a deployment: where they are stored, how they are hashed, a short
/// cache, and the last-use times waiting to be written.
pub struct ApiKeys {
    store: Option<crate::store::Store>,
    hasher: Option<KeyHasher>,
    cache: moka::future::Cache<[u8; 32], Option<crate::store::apikeys::ApiKey>>,
    /// Key id -> (last use not yet written, last use written).
    uses: std::sync::Mutex<std::collections::HashMap<i64, (i64, i64)>>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field(
                "configured",
                &(self.store.is_some() && self.hasher.is_some()),
            )
            .finish()
    }
}

impl ApiKeys {
    /// Keys stored in `store`, hashed with a key derived from `secret` (either missing:
    /// keys are refused as not configured).
    pub fn new(store: Option<crate::store::Store>, secret: Option<&Secret>) -> ApiKeys {
        ApiKeys {
            store,
            hasher: secret.map(KeyHasher::new),
            cache: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(KEY_CACHE_TTL)
                .build(),
            uses: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The live key `key` names: shape and checksum first, then the cache, then the
    /// database. A use is noted for the background writer.
    pub async fn find(&self, key: &str) -> Result<crate::store::apikeys::ApiKey, KeyRefusal> {
        check(key).map_err(KeyRefusal::Key)?;
        let (Some(store), Some(hasher)) = (&self.store, &self.hasher) else {
            return Err(KeyRefusal::NotConfigured);
        };
        let hash = hasher.hash(key);
        let db = store.clone();
        let found = self
            .cache
            .try_get_with(hash, async move {
                let lookup = db.clone();
                db.offload(async move { lookup.api_key_by_hash(&hash).await })
                    .await
            })
            .await
            .map_err(|e| KeyRefusal::Unavailable(e.to_string()))?;
        let key = found.ok_or(KeyRefusal::Unknown)?;
        let now = crate::auth::unix_now() as i64;
        if key.revoked_at.is_some() {
            return Err(KeyRefusal::Revoked);
        }
        if key.expires_at.is_some_and(|at| at <= now) {
            return Err(KeyRefusal::Expired);
        }
        let mut uses = self.uses.lock().unwrap_or_else(|p| p.into_inner());
        let entry = uses
            .entry(key.id)
            .or_insert((0, key.last_used_at.unwrap_or(0)));
        entry.0 = now;
        Ok(key)
    }

    /// Write the last-use times that are at least a minute newer than what was written
    /// (off the request path: the background task calls this).
    pub async fn flush_uses(&self) -> Result<usize, crate::store::Error> {
        let Some(store) = &self.store else {
            return Ok(0);
        };
        // (key, last use, what was written before): taken as written now, so uses
        // that arrive during the write are not lost, and put back if the write fails.
        let due: Vec<(i64, i64, i64)> = {
            let mut uses = self.uses.lock().unwrap_or_else(|p| p.into_inner());
            uses.iter_mut()
                .filter(|(_, (used, written))| {
                    *used - *written >= USE_RECORD_INTERVAL || (*written == 0 && *used > 0)
                })
                .map(|(id, (used, written))| {
                    let before = std::mem::replace(written, *used);
                    (*id, *used, before)
                })
                .collect()
        };
        if due.is_empty() {
            return Ok(0);
        }
        let db = store.clone();
        let batch: Vec<(i64, i64)> = due.iter().map(|&(id, used, _)| (id, used)).collect();
        if let Err(e) = store
            .offload(async move { db.touch_api_keys(&batch).await })
            .await
        {
            let mut uses = self.uses.lock().unwrap_or_else(|p| p.into_inner());
            for (id, used, before) in &due {
                if let Some(entry) = uses.get_mut(id)
                    && entry.1 == *used
                {
                    entry.1 = *before;
                }
            }
            return Err(e);
        }
        Ok(due.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_check_and_differ() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        for key in [&a, &b] {
            assert_eq!(key.len(), KEY_LEN);
            assert!(key.starts_with("fgk_"));
            assert_eq!(check(key), Ok(()));
            assert!(
                crate::auth::token::token_from_authorization(format!("Bearer {key}").as_bytes())
                    .is_some()
            );
        }
    }

    #[test]
    fn typos_and_strangers_are_refused_before_any_lookup() {
        let key = generate();
        let mut typo = key.clone().into_bytes();
        typo[10] = if typo[10] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            check(std::str::from_utf8(&typo).unwrap()),
            Err(KeyError::BadChecksum)
        );
        assert_eq!(check(&key[..KEY_LEN - 1]), Err(KeyError::Malformed));
        assert_eq!(check(&format!("{key}x")), Err(KeyError::Malformed));
        assert_eq!(
            check(&key.replacen("fgk_", "fgx_", 1)),
            Err(KeyError::Malformed)
        );
        assert_eq!(
            check(&key.replace(&key[10..11], ".")),
            Err(KeyError::Malformed)
        );
    }

    #[test]
    fn the_stored_hash_is_keyed() {
        let key = generate();
        let a = KeyHasher::new(&Secret::new(b"one secret".to_vec()));
        let b = KeyHasher::new(&Secret::new(b"another secret".to_vec()));
        assert_eq!(a.hash(&key), a.hash(&key));
        assert_ne!(a.hash(&key), b.hash(&key));
        assert_eq!(hint(&key), &key[KEY_LEN - 4..]);
    }
}
