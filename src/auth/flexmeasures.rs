//! FlexMeasures mode: identities, tokens and passwords of an unmodified FlexMeasures,
//! read from its own tables (see `crate::store::flexmeasures`), checked exactly as
//! FlexMeasures checks them, and nothing written anywhere.
//!
//! * **Tokens** are Flask-Security's: itsdangerous-signed JSON (see [`super::itsdangerous`])
//!   with key `SHA1(SECURITY_REMEMBER_SALT + "signer" + secret)` for `SECRET_KEY` and each
//!   of `SECRET_KEY_FALLBACKS` (the last one signs), refused when older than
//!   `SECURITY_TOKEN_MAX_AGE`, dated in the future, past a non-zero `exp`, or naming a
//!   `fs_uniquifier` that is unknown or belongs to an inactive user.
//! * **Passwords** are argon2id (or, in older databases, bcrypt of the first 72 bytes)
//!   over `base64(HMAC-SHA512(SECURITY_PASSWORD_SALT, password))`, verified on the
//!   hashing threads; an unknown email and an inactive user cost the same argon2 work as
//!   a wrong password and get the same answer.
//! * **Revocation**: FlexMeasures rotates `fs_uniquifier` on password change, reset and
//!   deactivation, and changes roles in place. [`FmAuthenticator::revalidate`] compares
//!   the fingerprints of every cached user with the database in one query per ten
//!   thousand users; a changed or vanished user is dropped from the caches, so the next
//!   request sees FlexMeasures' current state (`cargo bench --bench revalidate`: 10,000
//!   cached users cost PostgreSQL about 40 ms of CPU per pass).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use moka::Expiry;
use sha2::{Digest, Sha256, Sha512};

use super::crypt_threads::CryptThreads;
use super::itsdangerous::{self, Derivation, Keys};
use super::throttle::LoginLimits;
use super::token::TokenError;
use super::{AuthError, Error, Identity, IssuedToken, KnownToken, LoginError, unix_now};
use crate::cache::{Expiring, FRONT_SLOTS, FrontCache};
use crate::metrics::Metrics;
use crate::rules::{CacheSettings, ThrottleSettings};
use crate::settings::FlexMeasuresSecrets;
use crate::store::{self, Store};

/// How long a FlexMeasures token made for an API key's user is reused (its own life is
/// `SECURITY_TOKEN_MAX_AGE`, hours).
const UPSTREAM_TOKEN_REUSE: Duration = Duration::from_secs(300);

/// Users whose fingerprints one revalidation query asks for.
const REVALIDATE_BATCH: usize = 10_000;

/// argon2id with FlexMeasures' (passlib's) parameters, of a password nobody knows:
/// verified in place of a missing user's hash, so an unknown email costs the same.
const DUMMY_ARGON2: &str = "$argon2id$v=19$m=65536,t=3,p=4$AAECAwQFBgcICQoLDA0ODw$c53R05Lwd7DB9NqeK6AwMqGq6FV45KS5YaiFfkUtyJ4";

/// Flask-Security's password pre-hash: `base64(HMAC-SHA512(salt, password))`, 88
/// ASCII characters.
pub fn password_hmac(salt: &[u8], password: &str) -> String {
    let mut mac = Hmac::<Sha512>::new_from_slice(salt).expect("HMAC takes keys of any length");
    mac.update(password.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether `password` matches a hash from `fm_user.password`: argon2id/argon2i (the
/// parameters come from the hash) or bcrypt (`$2a$`, `$2b$`, `$2y$`, over the first 72
/// bytes of the HMAC, as Flask-Security truncates for bcrypt). Any other or malformed
/// hash is a mismatch.
pub fn verify_password(stored: &str, password: &str, salt: &[u8]) -> bool {
    let hmac = password_hmac(salt, password);
    if stored.starts_with("$argon2") {
        use argon2::PasswordVerifier;
        let Ok(hash) = argon2::PasswordHash::new(stored) else {
            return false;
        };
        argon2::Argon2::default()
            .verify_password(hmac.as_bytes(), &hash)
            .is_ok()
    } else if stored.starts_with("$2") {
        let truncated = &hmac.as_bytes()[..hmac.len().min(72)];
        bcrypt::verify(truncated, stored).unwrap_or(false)
    } else {
        false
    }
}

/// `secret` (UTF-8, as the environment gives it) encoded as latin-1, as Flask-Login
/// encodes `SECRET_KEY` for remember cookies; `None` for characters beyond U+00FF.
fn latin1(secret: &[u8]) -> Option<Vec<u8>> {
    std::str::from_utf8(secret)
        .ok()?
        .chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect()
}

/// Whether [`verify_password`] can check a password against `stored` at all.
fn verifiable(stored: &str) -> bool {
    if stored.starts_with("$argon2") {
        argon2::PasswordHash::new(stored).is_ok()
    } else {
        stored.starts_with("$2") && stored.parse::<bcrypt::HashParts>().is_ok()
    }
}

/// The claims flexgate reads from a FlexMeasures token payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The `fs_uniquifier` the token names.
    pub uid: String,
    /// A non-zero `exp` (Unix seconds), after which the token is dead.
    pub exp: Option<u64>,
}

/// Read a token payload as Flask-Security's `parse_auth_token` does: a JSON object with
/// `ver`, `uid` and `exp` (a truthy `exp` in the past kills it), or one of the older
/// lists `[uid]` and `[id, hash, uid, ...]`. The uid must be a string, since it is
/// compared with `fs_uniquifier`.
pub fn parse_claims(payload: &[u8], now: u64) -> Result<Claims, TokenError> {
    let json: serde_json::Value =
        serde_json::from_slice(payload).map_err(|_| TokenError::BadPayload)?;
    let (uid, exp) = match &json {
        serde_json::Value::Object(map) => {
            if !(map.contains_key("ver") && map.contains_key("uid") && map.contains_key("exp")) {
                return Err(TokenError::BadPayload);
            }
            (&map["uid"], map.get("exp"))
        }
        serde_json::Value::Array(list) if list.len() == 1 => (&list[0], None),
        serde_json::Value::Array(list) if list.len() >= 3 => (&list[2], None),
        _ => return Err(TokenError::BadPayload),
    };
    let uid = uid.as_str().ok_or(TokenError::BadPayload)?;
    if uid.is_empty() || uid.len() > 255 {
        return Err(TokenError::BadPayload);
    }
    // Python truthiness: 0, 0.0, null, false and "" mean "no expiry".
    let exp = match exp {
        None | Some(serde_json::Value::Null) | Some(serde_json::Value::Bool(false)) => None,
        Some(serde_json::Value::String(s)) if s.is_empty() => None,
        Some(serde_json::Value::Number(n)) => {
            let at = n.as_f64().ok_or(TokenError::BadPayload)?;
            if at == 0.0 {
                None
            } else if at < now as f64 {
                return Err(TokenError::Expired);
            } else {
                Some(at as u64)
            }
        }
        // `True < now` holds in Python: an `exp` of true is already past.
        Some(serde_json::Value::Bool(true)) => return Err(TokenError::Expired),
        Some(_) => return Err(TokenError::BadPayload),
    };
    Ok(Claims {
        uid: uid.to_owned(),
        exp,
    })
}

/// The payload of a token FlexMeasures itself would issue for this user now. `exp` is
/// Flask-Security's own expiry (unix seconds; 0: only `SECURITY_TOKEN_MAX_AGE` limits
/// the token, as for the tokens FlexMeasures issues at login).
pub fn token_payload(uid: &str, now: std::time::SystemTime, exp: u64) -> Vec<u8> {
    let at = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    // Written by hand to keep Flask-Security's key order; a string always serialises.
    let uid = serde_json::to_string(uid).unwrap_or_default();
    format!(r#"{{"ver":"5","uid":{uid},"fs_paa":{at:?},"exp":{exp}}}"#).into_bytes()
}

/// What the token cache remembers about a token that passed every check.
#[derive(Debug, Clone)]
struct Verified {
    uid: Arc<str>,
    issued_at: u64,
    exp: Option<u64>,
    expires: Instant,
}

struct UntilExpiry;

impl Expiry<[u8; 32], Verified> for UntilExpiry {
    fn expire_after_create(&self, _: &[u8; 32], v: &Verified, now: Instant) -> Option<Duration> {
        Some(v.expires.saturating_duration_since(now))
    }
}

/// The browser cookies of a request that may carry a FlexMeasures session.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionCookies<'a> {
    /// The `session` cookie's value.
    pub session: Option<&'a str>,
    /// The `remember_token` cookie's value.
    pub remember: Option<&'a str>,
}

/// [`FmAuthenticator::vet`]'s reading of the `session` and `remember_token` cookies
/// (`None`: the cookie was not sent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VettedCookies {
    /// The `session` cookie.
    pub session: Option<Verdict>,
    /// The `remember_token` cookie.
    pub remember: Option<Verdict>,
}

/// What one session or remember cookie is to flexgate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It verifies (signature, and a session's age).
    Verified {
        /// Its revocation key (a session names no user: none).
        key: Option<[u8; 32]>,
        /// It names a user (a remember cookie always does).
        names_user: bool,
        /// A logout through flexgate ended it.
        revoked: bool,
    },
    /// It does not verify here. `canonical`: it is in the form Flask writes, so
    /// FlexMeasures does not verify it either; otherwise FlexMeasures may.
    Unverified {
        /// See above.
        canonical: bool,
    },
}

impl Verdict {
    /// Whether FlexMeasures may act on this cookie while flexgate does not.
    pub fn unverified(&self) -> bool {
        matches!(self, Verdict::Unverified { .. })
    }

    /// Whether it verifies and a logout ended it.
    pub fn revoked(&self) -> bool {
        matches!(self, Verdict::Verified { revoked: true, .. })
    }
}

impl VettedCookies {
    /// The revocation keys of the cookies that verify (what a logout ends).
    pub fn proof(&self) -> SessionProof {
        SessionProof {
            keys: [self.session, self.remember]
                .into_iter()
                .flatten()
                .filter_map(|v| match v {
                    Verdict::Verified { key, .. } => key,
                    Verdict::Unverified { .. } => None,
                })
                .collect(),
        }
    }
}

/// What a session authentication rested on, so that a logout can revoke exactly it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionProof {
    /// Revocation keys of the session and remember cookies presented.
    pub keys: Vec<[u8; 32]>,
}

struct UntilInstant;

impl Expiry<[u8; 32], Instant> for UntilInstant {
    fn expire_after_create(&self, _: &[u8; 32], until: &Instant, now: Instant) -> Option<Duration> {
        Some(until.saturating_duration_since(now))
    }
}

/// The FlexMeasures identity source.
pub struct FmAuthenticator {
    store: Store,
    keys: Keys,
    session_keys: Keys,
    remember_secret: Vec<u8>,
    session_max_age: u64,
    /// Logged-out sessions and remember cookies (by revocation key), until the cookie
    /// would have expired anyway.
    revoked: moka::sync::Cache<[u8; 32], Instant>,
    password_salt: Vec<u8>,
    max_age: u64,
    /// Identities by `fs_uniquifier`; revalidated every interval.
    users: moka::future::Cache<Arc<str>, Expiring<Arc<Identity>>>,
    /// Tokens that passed every check, by the SHA-256 of the whole token.
    verified: moka::sync::Cache<[u8; 32], Verified>,
    /// Recent answers of the two caches above, per thread (see [`crate::cache`]).
    front_users: FrontCache<Arc<str>, Arc<Identity>>,
    front_verified: FrontCache<u64, KnownToken<Verified>>,
    users_ttl: Duration,
    threads: CryptThreads,
    throttle: LoginLimits,
    metrics: Metrics,
    /// Where logouts are shared with the other replicas (none: this process only).
    state: Option<Store>,
    /// API keys (in the state database, hashed with flexgate's own `SECRET_KEY`).
    api_keys: super::apikey::ApiKeys,
    /// FlexMeasures tokens that stand in for API keys upstream, per user.
    upstream_tokens: moka::sync::Cache<i64, (Arc<str>, Arc<str>)>,
}

impl std::fmt::Debug for FmAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FmAuthenticator")
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl FmAuthenticator {
    /// A FlexMeasures identity source over FlexMeasures' database; `state` is flexgate's
    /// own database, where logouts reach the other replicas.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        state: Option<Store>,
        key_secret: Option<&crate::settings::Secret>,
        secrets: &FlexMeasuresSecrets,
        max_age: Duration,
        max_concurrent_logins: usize,
        cache: &CacheSettings,
        throttle: &ThrottleSettings,
        metrics: Metrics,
    ) -> Result<FmAuthenticator, Error> {
        let secret = secrets.secret_key()?;
        let keys = Keys::derive(
            std::iter::once(secret.expose()).chain(secrets.fallbacks.iter().map(|s| s.expose())),
            secrets.remember_salt.as_bytes(),
            Derivation::DjangoConcat,
        );
        let evictions = metrics.clone();
        let session_keys = super::flask_session::session_keys(
            secrets
                .fallbacks
                .iter()
                .map(|s| s.expose())
                .chain(std::iter::once(secret.expose())),
        );
        Ok(FmAuthenticator {
            store,
            keys,
            session_keys,
            remember_secret: latin1(secret.expose()).ok_or_else(|| {
                crate::settings::Error::Invalid(vec![crate::settings::Problem {
                    var: "FLEXMEASURES_SECRET_KEY",
                    message: "has characters beyond U+00FF: Flask-Login keys remember cookies with SECRET_KEY encoded as latin-1, which cannot hold them (FlexMeasures would fail on them too); use a key of ASCII characters".into(),
                }])
            })?,
            session_max_age: secrets.session_lifetime,
            revoked: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .expire_after(UntilInstant)
                .build(),
            password_salt: secrets.password_salt()?.expose().to_vec(),
            max_age: max_age.as_secs(),
            users: moka::future::Cache::builder()
                .name("principals")
                .max_capacity(cache.principal_capacity)
                .time_to_live(cache.principal_ttl)
                .build(),
            verified: moka::sync::Cache::builder()
                .name("tokens")
                .max_capacity(cache.token_capacity)
                .expire_after(UntilExpiry)
                .eviction_listener(move |_, _, cause| {
                    if cause.was_evicted() {
                        evictions.cache_eviction("tokens");
                    }
                })
                .build(),
            front_users: FrontCache::new(FRONT_SLOTS),
            front_verified: FrontCache::new(FRONT_SLOTS),
            users_ttl: cache.principal_ttl,
            threads: CryptThreads::start(max_concurrent_logins)
                .map_err(|e| Error::Hash(format!("cannot start hashing threads: {e}")))?,
            throttle: LoginLimits::new(state.clone(), throttle.clone()),
            metrics,
            api_keys: super::apikey::ApiKeys::new(state.clone(), key_secret),
            upstream_tokens: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(UPSTREAM_TOKEN_REUSE)
                .build(),
            state,
        })
    }

    /// The API keys of this deployment.
    pub fn api_keys(&self) -> &super::apikey::ApiKeys {
        &self.api_keys
    }

    /// This source's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The identity of the user with this `fm_user.id` (what an API key names), from
    /// the database.
    pub async fn user_by_id(&self, id: i64) -> Result<Arc<Identity>, AuthError> {
        let db = self.store.clone();
        match self
            .store
            .offload(async move { db.fm_user_by_id(id).await })
            .await
        {
            Ok(Some(user)) => Ok(Arc::new(Identity::from_flexmeasures(user))),
            Ok(None) => Err(AuthError::UnknownUser),
            Err(e) => Err(AuthError::Unavailable(Arc::new(e))),
        }
    }

    /// The FlexMeasures token that goes upstream in place of an API key: FlexMeasures
    /// takes no key, so flexgate, which knows its secret, signs a token for the key's
    /// user; reused for a few minutes per user (and while the user's uniquifier holds).
    /// The client never sees it.
    pub fn upstream_token(&self, identity: &Identity) -> Arc<str> {
        let user = identity.principal.user_id;
        if let Some((token, uid)) = self.upstream_tokens.get(&user)
            && &*uid == identity.uniquifier()
        {
            return token;
        }
        // It expires at FlexMeasures a minute after its reuse ends: a stand-in token
        // that leaked from FlexMeasures' side (a log, a debugger) is worth minutes, not
        // SECURITY_TOKEN_MAX_AGE.
        let exp = unix_now() + UPSTREAM_TOKEN_REUSE.as_secs() + 60;
        let token: Arc<str> = Arc::from(self.issue_until(identity.uniquifier(), user, exp).token);
        self.upstream_tokens
            .insert(user, (Arc::clone(&token), Arc::from(identity.uniquifier())));
        token
    }

    /// The database this source reads.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Check a FlexMeasures token and return its user.
    pub async fn authenticate(&self, token: &str) -> Result<Arc<Identity>, AuthError> {
        let now = unix_now();
        // This thread checked this very text before: no hashing or lookup in the shared
        // cache. Anything else goes by the SHA-256 of the whole text.
        let verified = match KnownToken::find(&self.front_verified, token) {
            Some(known) => {
                self.metrics.cache_lookup("tokens", true);
                known
            }
            None => {
                let tag: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                let hit = self.verified.get(&tag);
                self.metrics.cache_lookup("tokens", hit.is_some());
                match hit {
                    Some(hit) => {
                        KnownToken::file(&self.front_verified, token, hit.clone(), hit.expires);
                        hit
                    }
                    None => self.check_unknown(token, tag, now)?,
                }
            }
        };
        let Verified {
            uid,
            issued_at,
            exp,
            ..
        } = verified;
        itsdangerous::check_age(issued_at, now, self.max_age)?;
        if exp.is_some_and(|exp| exp < now) {
            return Err(AuthError::Token(TokenError::Expired));
        }
        let identity = self.user(&uid).await?;
        if !identity.active {
            return Err(AuthError::Inactive);
        }
        Ok(identity)
    }

    /// Check a token no cache knows (its signature, age and claims) and remember it,
    /// under `tag` (the SHA-256 of its text) and in this thread's front cache.
    fn check_unknown(&self, token: &str, tag: [u8; 32], now: u64) -> Result<Verified, AuthError> {
        let unsigned = itsdangerous::unsign(&self.keys, token)?;
        itsdangerous::check_age(unsigned.timestamp, now, self.max_age)?;
        let claims = parse_claims(&unsigned.payload, now)?;
        let mut until = unsigned.timestamp.saturating_add(self.max_age + 1);
        if let Some(exp) = claims.exp {
            until = until.min(exp.saturating_add(1));
        }
        let verified = Verified {
            uid: Arc::from(claims.uid),
            issued_at: unsigned.timestamp,
            exp: claims.exp,
            expires: Instant::now() + Duration::from_secs(until.saturating_sub(now)),
        };
        KnownToken::file(
            &self.front_verified,
            token,
            verified.clone(),
            verified.expires,
        );
        self.verified.insert(tag, verified.clone());
        Ok(verified)
    }

    /// Authenticate by FlexMeasures' browser session, as Flask-Login does: the
    /// `session` cookie's user, or, when the session names none (and was not told to
    /// forget it), the `remember_token` cookie's. A session or remember cookie whose
    /// login was logged out through flexgate is refused.
    pub async fn authenticate_session(
        &self,
        cookies: SessionCookies<'_>,
    ) -> Result<(Arc<Identity>, SessionProof), AuthError> {
        use super::flask_session::{check_remember, parse_session, remember_revocation_key};
        let now = unix_now();
        let mut proof = SessionProof::default();
        let session = cookies.session.and_then(|value| {
            parse_session(&self.session_keys, value, now, self.session_max_age).ok()
        });
        let uid = match &session {
            Some(s) if s.uid.is_some() => {
                let key = s.revocation_key().expect("a session with a user has a key");
                if self.revoked.contains_key(&key) {
                    return Err(AuthError::Revoked);
                }
                proof.keys.push(key);
                s.uid.clone()
            }
            _ => None,
        };
        let uid = match uid {
            Some(uid) => uid,
            None => {
                let remember_allowed = !session.as_ref().is_some_and(|s| s.remember_cleared);
                let Some(value) = cookies.remember.filter(|_| remember_allowed) else {
                    return Err(AuthError::NoSession);
                };
                let uid =
                    check_remember(&self.remember_secret, value).ok_or(AuthError::NoSession)?;
                let key = remember_revocation_key(value);
                if self.revoked.contains_key(&key) {
                    return Err(AuthError::Revoked);
                }
                proof.keys.push(key);
                uid
            }
        };
        let identity = self.user(&Arc::from(uid)).await?;
        if !identity.active {
            return Err(AuthError::Inactive);
        }
        Ok((identity, proof))
    }

    /// The login limits (the token endpoint's, and an upstream login form's).
    pub fn login_limits(&self) -> &LoginLimits {
        &self.throttle
    }

    /// What flexgate makes of a request's session and remember cookies, whatever user
    /// they name: each one verifies (with its revocation key, and whether it was logged
    /// out) or not. For a logout passing through, and to keep FlexMeasures from seeing
    /// a cookie flexgate did not verify.
    pub fn vet(&self, cookies: SessionCookies<'_>) -> VettedCookies {
        use super::flask_session::{check_remember, parse_session, remember_revocation_key};
        let now = unix_now();
        let session = cookies.session.map(|value| {
            match parse_session(&self.session_keys, value, now, self.session_max_age) {
                Ok(s) => self.verdict(s.revocation_key(), s.uid.is_some()),
                Err(_) => Verdict::Unverified {
                    canonical: super::flask_session::is_canonical_session(value),
                },
            }
        });
        let remember = cookies.remember.map(|value| {
            if check_remember(&self.remember_secret, value).is_some() {
                self.verdict(Some(remember_revocation_key(value)), true)
            } else {
                Verdict::Unverified { canonical: true }
            }
        });
        VettedCookies { session, remember }
    }

    fn verdict(&self, key: Option<[u8; 32]>, names_user: bool) -> Verdict {
        Verdict::Verified {
            revoked: key.is_some_and(|k| self.revoked.contains_key(&k)),
            key,
            names_user,
        }
    }

    /// Refuse these sessions from now on, until a cookie could no longer be valid anyway
    /// (a session cookie lives `session_max_age`; a remember cookie a year in browsers,
    /// and as long as the user's uniquifier at FlexMeasures).
    pub fn revoke(&self, proof: &SessionProof) {
        let lifetime = self.session_max_age.max(366 * 86_400);
        let until = Instant::now() + Duration::from_secs(lifetime);
        for key in &proof.keys {
            self.revoked.insert(*key, until);
        }
        if let Some(state) = &self.state {
            let (state, keys) = (state.clone(), proof.keys.clone());
            let expires_at = i64::try_from(unix_now() + lifetime).unwrap_or(i64::MAX);
            let changed_at = unix_millis();
            self.store.spawn(async move {
                for key in keys {
                    if let Err(e) = state.revoke_session(&key, expires_at, changed_at).await {
                        tracing::warn!(error = %e, "cannot share a logout with the other replicas");
                    }
                }
            });
        }
    }

    /// A response passing through that sets a `remember_token` cookie FlexMeasures
    /// signed (a new "remember me" login) lifts that cookie's revocation, on every
    /// replica: Flask-Login's remember cookie has no issue time, so the value a logout
    /// revoked is the very value the user's next login gets. (A copy taken before the
    /// logout is then valid again too, as it is at FlexMeasures; the value changes only
    /// with the user's `fs_uniquifier`.)
    pub fn lift_reissued_remember(&self, headers: &http::HeaderMap, carried: Option<[u8; 32]>) {
        use super::flask_session::{check_remember, remember_revocation_key};
        for set in headers.get_all(http::header::SET_COOKIE) {
            let Some(value) = set
                .to_str()
                .ok()
                .and_then(|c| c.strip_prefix("remember_token="))
                .map(|rest| {
                    rest.split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .trim_matches('"')
                })
            else {
                continue;
            };
            let Some(uid) = Some(value)
                .filter(|v| !v.is_empty())
                .and_then(|v| check_remember(&self.remember_secret, v))
            else {
                continue;
            };
            let key = remember_revocation_key(value);
            // Set back to the very cookie the request carried (Flask-Login refreshing
            // it): no new login, so nothing is lifted.
            if carried == Some(key) {
                continue;
            }
            // A new "Remember Me" login: its cookie, and the sessions Flask-Login will
            // make from it (they carry no login time, so all share one key, which a
            // logout of one of them revoked for the others too).
            let made_from_it = super::flask_session::session_revocation_key(&uid, None);
            for key in [key, made_from_it] {
                self.lift(key);
            }
        }
    }

    /// Forget a revocation here and on every replica.
    fn lift(&self, key: [u8; 32]) {
        if !self.revoked.contains_key(&key) && self.state.is_none() {
            return;
        }
        self.revoked.invalidate(&key);
        if let Some(state) = &self.state {
            let state = state.clone();
            // Kept as long as a replica could take to read it, many times over.
            let keep_until = i64::try_from(unix_now() + 3_600).unwrap_or(i64::MAX);
            let changed_at = unix_millis();
            self.store.spawn(async move {
                if let Err(e) = state.lift_session(&key, keep_until, changed_at).await {
                    tracing::warn!(error = %e, "cannot share a lifted revocation with the other replicas");
                }
            });
        }
    }

    /// Take in the logouts other replicas recorded after feed position `last`.
    pub async fn follow_revocations(&self, last: &mut i64) -> Result<usize, store::Error> {
        let Some(state) = &self.state else {
            return Ok(0);
        };
        let now = unix_now();
        let db = state.clone();
        let after = *last;
        let rows = state
            .offload(async move { db.revoked_sessions_since(after, now as i64).await })
            .await?;
        for row in &rows {
            if row.lifted {
                self.revoked.invalidate(&row.key);
                *last = row.id;
                continue;
            }
            let left = u64::try_from(row.expires_at)
                .unwrap_or(0)
                .saturating_sub(now);
            self.revoked
                .insert(row.key, Instant::now() + Duration::from_secs(left));
            *last = row.id;
        }
        Ok(rows.len())
    }

    /// The shared state database, if any.
    pub fn state(&self) -> Option<&Store> {
        self.state.as_ref()
    }

    /// The cached identity of the user with this `fs_uniquifier`.
    pub async fn user(&self, uid: &Arc<str>) -> Result<Arc<Identity>, AuthError> {
        if let Some(hit) = self.front_users.get(uid, Instant::now()) {
            self.metrics.cache_lookup("principals", true);
            return Ok(hit);
        }
        // Boxed: the shared cache's and the loading futures are several KiB, and every
        // request future that awaits this one would otherwise carry that room, front
        // cache hits included.
        Box::pin(self.user_shared(uid)).await
    }

    /// [`FmAuthenticator::user`] past the front cache: the shared cache, then one query
    /// shared by concurrent misses.
    async fn user_shared(&self, uid: &Arc<str>) -> Result<Arc<Identity>, AuthError> {
        let epoch = self.front_users.epoch();
        if let Some(hit) = self.users.get(uid).await {
            self.metrics.cache_lookup("principals", true);
            self.front_users
                .put(Arc::clone(uid), Arc::clone(&hit.value), hit.expires, epoch);
            return Ok(hit.value);
        }
        self.metrics.cache_lookup("principals", false);
        let (db, key) = (self.store.clone(), Arc::clone(uid));
        let loaded = super::load_identity(
            &self.users,
            Arc::clone(uid),
            &self.store,
            self.users_ttl,
            async move { db.fm_user_by_uniquifier(&key).await },
            Identity::from_flexmeasures,
        )
        .await?;
        self.front_users.put(
            Arc::clone(uid),
            Arc::clone(&loaded.value),
            loaded.expires,
            epoch,
        );
        Ok(loaded.value)
    }

    /// The identity of a user named by email or id (for `explain`), from the database.
    pub async fn lookup(&self, who: &str) -> Result<Option<Arc<Identity>>, store::Error> {
        let user = match who.parse::<i64>() {
            Ok(id) => self.store.fm_user_by_id(id).await?,
            Err(_) => self.store.fm_user_by_email(who).await?,
        };
        Ok(user.map(|u| Arc::new(Identity::from_flexmeasures(u))))
    }

    /// Check email and password against `fm_user` and issue a FlexMeasures token. An
    /// unknown email, a wrong password and an inactive user get one answer after the
    /// same work.
    pub async fn login(
        &self,
        email: &str,
        password: String,
        client: IpAddr,
    ) -> Result<IssuedToken, LoginError> {
        // FlexMeasures' token endpoint finds users by the exact email, its login form
        // without regard to case, and both count against one allowance per user: the
        // throttle counts the lower-cased email, as the login form's attempts are.
        let counted = email.trim().to_lowercase();
        let attempt = self
            .throttle
            .begin(&counted, client)
            .await
            .map_err(LoginError::from)?;
        let db = self.store.clone();
        let lookup = email.to_owned();
        let credentials = self
            .store
            .offload(async move { db.fm_credentials(&lookup).await })
            .await
            .map_err(|e| LoginError::Unavailable(e.to_string()))?;
        // A hash that cannot verify anything (none, another scheme, malformed) costs
        // the dummy's work too: answering at once would tell the email exists.
        let (hash, real) = match &credentials {
            Some(c) if verifiable(&c.password_hash) => (c.password_hash.clone(), true),
            _ => (DUMMY_ARGON2.to_owned(), false),
        };
        let salt = self.password_salt.clone();
        let matched = self
            .threads
            .run(move || verify_password(&hash, &password, &salt))
            .await
            .map_err(|e| LoginError::Unavailable(e.to_string()))?
            && real;
        match credentials {
            Some(c) if matched && c.user.active => {
                self.throttle.succeeded(&counted, attempt).await;
                Ok(self.issue(&c.user.uniquifier, c.user.user_id))
            }
            // Counted already, by `begin`.
            _ => Err(LoginError::BadCredentials),
        }
    }

    /// A token FlexMeasures accepts for the user with this uniquifier, signed as
    /// FlexMeasures signs (the last of `SECRET_KEY` and its fallbacks). Its timestamp is
    /// one second in the past, so that a FlexMeasures whose clock lags flexgate's by up
    /// to a second does not see it as "signed in the future".
    pub fn issue(&self, uid: &str, user_id: i64) -> IssuedToken {
        self.issue_until(uid, user_id, 0)
    }

    /// [`Self::issue`] with Flask-Security's `exp` set (0: none).
    fn issue_until(&self, uid: &str, user_id: i64, exp: u64) -> IssuedToken {
        let now = std::time::SystemTime::now();
        let timestamp = unix_now().saturating_sub(1);
        let token = itsdangerous::sign(&self.keys, &token_payload(uid, now, exp), timestamp);
        IssuedToken { token, user_id }
    }

    /// Compare every cached user with FlexMeasures' tables and drop those that changed
    /// or vanished, then make every worker's front copies stale. Returns how many users
    /// were checked and how many dropped.
    ///
    /// The front copies go on every pass, not only when a user was dropped: the shared
    /// cache can lose a user to its size bound (or refuse to keep one it just loaded)
    /// while a worker still holds a copy, and no pass would ever check that copy. So a
    /// copy lives at most about one pass; a worker then asks the shared cache, or
    /// FlexMeasures' tables, once per user and pass.
    pub async fn revalidate(&self) -> Result<(usize, usize), store::Error> {
        self.users.run_pending_tasks().await;
        let cached: Vec<(Arc<str>, String)> = self
            .users
            .iter()
            .map(|(uid, identity)| (Arc::clone(&*uid), identity.value.fingerprint().to_owned()))
            .collect();
        let mut dropped = 0;
        for batch in cached.chunks(REVALIDATE_BATCH) {
            let uids: Vec<String> = batch.iter().map(|(u, _)| u.to_string()).collect();
            let db = self.store.clone();
            let current = self
                .store
                .offload(async move { db.fm_fingerprints(&uids).await })
                .await?;
            let current: std::collections::HashMap<&str, &str> = current
                .iter()
                .map(|(u, f)| (u.as_str(), f.as_str()))
                .collect();
            for (uid, fingerprint) in batch {
                if current.get(&**uid) != Some(&fingerprint.as_str()) {
                    self.users.invalidate(uid).await;
                    dropped += 1;
                }
            }
        }
        // After the shared cache, so that no thread can file an old identity again; and
        // on every pass, for copies of users the shared cache no longer holds.
        self.front_users.invalidate_all();
        Ok((cached.len(), dropped))
    }

    /// Entry counts of the user and token caches, for metrics.
    pub async fn cache_sizes(&self) -> (u64, u64) {
        self.users.run_pending_tasks().await;
        self.verified.run_pending_tasks();
        (self.users.entry_count(), self.verified.entry_count())
    }
}

/// Now in Unix milliseconds: the order of logouts and logins shared between replicas.
fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remember_key_is_secret_key_in_latin1_as_flask_login_encodes_it() {
        assert_eq!(latin1(b"ascii-key").unwrap(), b"ascii-key");
        assert_eq!(latin1("cl\u{e9}".as_bytes()).unwrap(), b"cl\xe9");
        assert_eq!(latin1("\u{20ac}uro".as_bytes()), None);
    }

    fn vectors() -> serde_json::Value {
        serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fm/vectors.json"
        )))
        .unwrap()
    }

    #[test]
    fn the_password_hmac_is_flask_securitys() {
        let v = vectors();
        let salt = v["inputs"]["SECURITY_PASSWORD_SALT"].as_str().unwrap();
        let p = &v["passwords"];
        assert_eq!(
            password_hmac(salt.as_bytes(), p["password"].as_str().unwrap()),
            p["get_hmac_b64"].as_str().unwrap()
        );
    }

    #[test]
    fn argon2_and_bcrypt_hashes_made_by_flexmeasures_verify() {
        let v = vectors();
        let salt = v["inputs"]["SECURITY_PASSWORD_SALT"]
            .as_str()
            .unwrap()
            .as_bytes();
        let p = &v["passwords"];
        let password = p["password"].as_str().unwrap();
        for field in [
            "argon2id_by_hash_password",
            "argon2id_fixed_salt",
            "bcrypt_fixed_salt",
        ] {
            let hash = p[field].as_str().unwrap();
            assert!(verify_password(hash, password, salt), "{field}");
            assert!(!verify_password(hash, "wrong-password", salt), "{field}");
            assert!(!verify_password(hash, password, b"another-salt"), "{field}");
        }
        assert!(!verify_password("plaintext", password, salt));
        assert!(!verify_password("$argon2id$garbage", password, salt));
        assert!(!verify_password(DUMMY_ARGON2, "", salt));
    }

    #[test]
    fn claims_follow_parse_auth_token() {
        let now = 1_000_000;
        let ok = |json: &str| parse_claims(json.as_bytes(), now);
        assert_eq!(
            ok(r#"{"ver":"5","uid":"abc","fs_paa":1.5,"exp":0}"#).unwrap(),
            Claims {
                uid: "abc".into(),
                exp: None
            }
        );
        assert_eq!(
            ok(r#"{"ver":"4","uid":"abc","exp":null}"#).unwrap().exp,
            None
        );
        assert_eq!(
            ok(r#"{"ver":"5","uid":"abc","exp":2000000}"#).unwrap().exp,
            Some(2_000_000)
        );
        assert_eq!(ok(r#"["abc"]"#).unwrap().uid, "abc");
        assert_eq!(ok(r#"[7,"hash","abc"]"#).unwrap().uid, "abc");
        for (bad, why) in [
            (r#"{"ver":"5","uid":"abc"}"#, TokenError::BadPayload),
            (r#"{"uid":"abc","exp":0}"#, TokenError::BadPayload),
            (r#"{"ver":"5","uid":7,"exp":0}"#, TokenError::BadPayload),
            (
                r#"{"ver":"5","uid":"abc","exp":999999}"#,
                TokenError::Expired,
            ),
            (r#"{"ver":"5","uid":"abc","exp":true}"#, TokenError::Expired),
            (
                r#"{"ver":"5","uid":"abc","exp":"soon"}"#,
                TokenError::BadPayload,
            ),
            (r#"[7,"hash"]"#, TokenError::BadPayload),
            (r#"[]"#, TokenError::BadPayload),
            (r#""abc""#, TokenError::BadPayload),
            ("not json", TokenError::BadPayload),
        ] {
            assert_eq!(ok(bad), Err(why), "{bad}");
        }
    }

    #[test]
    fn the_vector_tokens_carry_the_expected_claims() {
        let v = vectors();
        for t in v["auth_tokens"].as_array().unwrap() {
            let payload = t["payload_json"].as_str().unwrap();
            let ts = t["timestamp"].as_u64().unwrap();
            let expected_valid = t["parse_auth_token"]["now=ts"]["valid"].as_bool().unwrap();
            let parsed = parse_claims(payload.as_bytes(), ts);
            assert_eq!(parsed.is_ok(), expected_valid, "{}: {parsed:?}", t["name"]);
            if let Ok(c) = parsed {
                let uid = t["uid"]
                    .as_str()
                    .unwrap_or("4f0d8c2b9a6e4e1f8b7c3d2a1e0f9b8c");
                assert_eq!(c.uid, uid, "{}", t["name"]);
            }
            // The expiring vectors are refused an hour later, by `exp` or by age.
            if let Some(later) = t["parse_auth_token"].get("now=ts+3601") {
                let at = ts + 3601;
                let refused = parse_claims(payload.as_bytes(), at).is_err()
                    || itsdangerous::check_age(ts, at, 21_600).is_err();
                assert_eq!(!refused, later["valid"].as_bool().unwrap(), "{}", t["name"]);
            }
        }
    }

    #[test]
    fn issued_payloads_have_flexmeasures_shape() {
        let p = token_payload(
            "u1",
            std::time::UNIX_EPOCH + Duration::from_millis(1_796_140_800_250),
            0,
        );
        let text = String::from_utf8(p).unwrap();
        assert!(
            text.starts_with(r#"{"ver":"5","uid":"u1","fs_paa":1796140800.25"#),
            "{text}"
        );
        assert!(text.ends_with(r#","exp":0}"#), "{text}");
        let claims = parse_claims(
            &token_payload("u1", std::time::UNIX_EPOCH, 1_796_141_160),
            1_796_141_000,
        )
        .unwrap();
        assert_eq!(claims.exp, Some(1_796_141_160));
        assert!(
            parse_claims(
                &token_payload("u1", std::time::UNIX_EPOCH, 1_796_141_160),
                1_796_141_161
            )
            .is_err(),
            "a stand-in token past its exp"
        );
    }
}
