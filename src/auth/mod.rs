//! Authentication: who is calling. Passwords ([`password`]) are checked only at the token
//! endpoint; every other request carries a signed access token ([`token`]).
//!
//! [`Authenticator`] turns a token into an [`Identity`] without a database round trip in
//! the common case: the signature is checked (HMAC, microseconds), the principal comes
//! from a cache that the change feed invalidates, and the expensive sha256_crypt binding
//! check runs once per token per process, its result cached until the token expires.
//! Authorization (what the caller may do) is not here; see [`crate::policy`].

pub mod apikey;
pub mod crypt_threads;
pub mod flask_session;
pub mod flexmeasures;
pub mod itsdangerous;
pub mod password;
pub mod throttle;
pub mod token;

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use moka::Expiry;
use subtle::ConstantTimeEq;

pub use password::PasswordHasher;
use throttle::{LoginLimits, Refusal};
use token::{TokenError, TokenKey};

use crate::cache::{Expiring, FRONT_SLOTS, FrontCache};
use crate::metrics::Metrics;
use crate::policy::Principal;
use crate::rules::{CacheSettings, ThrottleSettings};
use crate::store::{self, PrincipalRecord, Store};

/// Why an authentication operation failed (not why a request was denied: that is a
/// `DenyReason` in the proxy).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A new password does not meet the length rules.
    #[error("{0}")]
    WeakPassword(String),
    /// bcrypt or sha256_crypt could not run.
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// A secret the identity source needs is missing or unusable.
    #[error(transparent)]
    Settings(#[from] crate::settings::Error),
}

/// `bytes` random bytes from the OS, hex encoded: uniquifiers, salts, demo secrets.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // The OS random source only fails on a broken platform; nothing can be done then
    // and continuing with predictable bytes would be worse.
    getrandom::fill(&mut buf).expect("the operating system's random source failed");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An authenticated user with everything decisions and identity headers need, built
/// once per principal load and shared by every request of that user.
pub struct Identity {
    /// What the ACLs see.
    pub principal: Principal,
    /// Login email.
    pub email: String,
    /// The account's consultancy account, if any.
    pub consultancy_account_id: Option<i64>,
    /// Identity header values, encoded once.
    pub headers: IdentityValues,
    active: bool,
    uniquifier: String,
    password_hash: String,
    credential_version: u64,
    /// FlexMeasures mode: the database's fingerprint of the user row (empty otherwise).
    fingerprint: Box<str>,
    /// Set when an API key authenticated the request: what the key grants.
    pub key: Option<apikey::Grant>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("principal", &self.principal)
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

/// Identity header values for the upstream.
#[derive(Debug, Clone)]
pub struct IdentityValues {
    /// User id.
    pub user_id: HeaderValue,
    /// Email.
    pub email: HeaderValue,
    /// Account id.
    pub account_id: HeaderValue,
    /// User roles, comma separated.
    pub roles: HeaderValue,
    /// Account roles, comma separated.
    pub account_roles: HeaderValue,
    /// The five values above as the identity signature's last lines ("\n" before each):
    /// joined once per identity, not on every request.
    signed_fields: Box<[u8]>,
}

impl IdentityValues {
    /// The values, and the signature lines they make.
    fn new(
        user_id: HeaderValue,
        email: HeaderValue,
        account_id: HeaderValue,
        roles: HeaderValue,
        account_roles: HeaderValue,
    ) -> Self {
        let mut signed_fields = Vec::new();
        for value in [&user_id, &email, &account_id, &roles, &account_roles] {
            signed_fields.push(b'\n');
            signed_fields.extend_from_slice(value.as_bytes());
        }
        IdentityValues {
            user_id,
            email,
            account_id,
            roles,
            account_roles,
            signed_fields: signed_fields.into_boxed_slice(),
        }
    }

    /// `\n` and each value in signature order (user id, email, account id, user roles,
    /// account roles): the part of the signed text that is the same on every request.
    pub fn signed_fields(&self) -> &[u8] {
        &self.signed_fields
    }
}

/// A user's identity from the database into a shared cache, for a cache miss:
/// concurrent misses of one key share the query, which runs off the request's runtime
/// within the store's query timeout. A user the query does not find is `UnknownUser`.
pub(crate) async fn load_identity<K, R, Q>(
    cache: &moka::future::Cache<K, Expiring<Arc<Identity>>>,
    key: K,
    store: &Store,
    ttl: Duration,
    query: Q,
    into_identity: fn(R) -> Identity,
) -> Result<Expiring<Arc<Identity>>, AuthError>
where
    K: Hash + Eq + Send + Sync + 'static,
    R: Send + 'static,
    Q: std::future::Future<Output = Result<Option<R>, store::Error>> + Send + 'static,
{
    cache
        .try_get_with(key, async move {
            match store.offload(query).await {
                Ok(Some(record)) => Ok(Expiring {
                    value: Arc::new(into_identity(record)),
                    expires: Instant::now() + ttl,
                }),
                Ok(None) => Err(None),
                Err(e) => Err(Some(Arc::new(e))),
            }
        })
        .await
        .map_err(|e| match &*e {
            None => AuthError::UnknownUser,
            Some(err) => AuthError::Unavailable(Arc::clone(err)),
        })
}

/// The roles header value: names joined by `,`. A name that would read as another
/// list there (a `,` in it, or blanks around it, which upstream parsers trim) is left
/// out, with a warning: FlexMeasures' own tables do not refuse such names, and `a,b`
/// must not reach the upstream as the two roles `a` and `b`. The policy still sees the
/// name as it is (it matches no role but itself).
fn header_roles(user_id: i64, roles: &[String]) -> String {
    let plain = |r: &&String| {
        !r.is_empty() && !r.contains(',') && r.trim_matches([' ', '\t']).len() == r.len()
    };
    if roles.iter().all(|r| plain(&r)) {
        return roles.join(",");
    }
    for odd in roles.iter().filter(|r| !plain(r)) {
        tracing::warn!(user_id, role = %odd.escape_debug(), "a role name with ',' or blanks around it is left out of the identity headers");
    }
    roles
        .iter()
        .filter(plain)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

impl Identity {
    /// Build from a store record (header values encoded here, once).
    pub fn from_record(r: PrincipalRecord) -> Identity {
        let mut hasher = DefaultHasher::new();
        (&r.uniquifier, &r.password_hash).hash(&mut hasher);
        let value =
            |s: String| HeaderValue::try_from(s).unwrap_or_else(|_| HeaderValue::from_static(""));
        Identity {
            headers: IdentityValues::new(
                HeaderValue::from(r.user_id),
                value(r.email.clone()),
                HeaderValue::from(r.account_id),
                value(header_roles(r.user_id, &r.roles)),
                value(header_roles(r.user_id, &r.account_roles)),
            ),
            principal: Principal {
                user_id: r.user_id,
                account_id: r.account_id,
                roles: r.roles,
                account_roles: r.account_roles,
            },
            email: r.email,
            consultancy_account_id: r.consultancy_account_id,
            active: r.active,
            uniquifier: r.uniquifier,
            password_hash: r.password_hash,
            credential_version: hasher.finish(),
            fingerprint: Box::from(""),
            key: None,
        }
    }

    /// This identity as an API key presents it: only the roles the key keeps, and the
    /// key's grant attached.
    pub fn narrowed(&self, key: &crate::store::apikeys::ApiKey) -> Identity {
        let roles: Vec<String> = match &key.roles {
            None => self.principal.roles.clone(),
            Some(kept) => self
                .principal
                .roles
                .iter()
                .filter(|r| kept.contains(r))
                .cloned()
                .collect(),
        };
        let mut narrowed = Identity::from_record(PrincipalRecord {
            user_id: self.principal.user_id,
            email: self.email.clone(),
            active: self.active,
            uniquifier: self.uniquifier.clone(),
            password_hash: self.password_hash.clone(),
            account_id: self.principal.account_id,
            consultancy_account_id: self.consultancy_account_id,
            roles,
            account_roles: self.principal.account_roles.clone(),
        });
        narrowed.credential_version = self.credential_version;
        narrowed.fingerprint = self.fingerprint.clone();
        narrowed.key = Some(apikey::Grant {
            id: key.id,
            name: Arc::from(key.name.as_str()),
            read_only: key.read_only,
        });
        narrowed
    }

    /// Build from a FlexMeasures user row (FlexMeasures mode).
    pub fn from_flexmeasures(u: store::FmUser) -> Identity {
        let mut hasher = DefaultHasher::new();
        u.fingerprint.hash(&mut hasher);
        let fingerprint = u.fingerprint.into_boxed_str();
        let mut identity = Identity::from_record(PrincipalRecord {
            user_id: u.user_id,
            email: u.email,
            active: u.active,
            uniquifier: u.uniquifier,
            password_hash: String::new(),
            account_id: u.account_id,
            consultancy_account_id: u.consultancy_account_id,
            roles: u.roles,
            account_roles: u.account_roles,
        });
        identity.credential_version = hasher.finish();
        identity.fingerprint = fingerprint;
        identity
    }

    /// Whether the user may authenticate at all.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The uniquifier tokens and sessions carry (`fs_uniquifier` in FlexMeasures mode).
    pub fn uniquifier(&self) -> &str {
        &self.uniquifier
    }

    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// Why a token did not authenticate. Every variant is a 401 except `Unavailable`
/// (503: fail closed when the database cannot answer).
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// The token itself is bad (shape, signature, age).
    #[error("token rejected: {0}")]
    Token(#[from] TokenError),
    /// The user no longer exists.
    #[error("unknown user")]
    UnknownUser,
    /// The user is deactivated.
    #[error("inactive user")]
    Inactive,
    /// The uniquifier rotated (password change, deactivation, explicit revocation).
    #[error("token revoked")]
    Revoked,
    /// The password hash changed since the token was issued.
    #[error("password changed")]
    PasswordChanged,
    /// The database could not be asked.
    #[error("identity store unavailable: {0}")]
    Unavailable(Arc<store::Error>),
    /// No usable browser session (FlexMeasures mode).
    #[error("no session")]
    NoSession,
    /// An API key was refused; the label says why.
    #[error("API key refused: {0}")]
    ApiKey(&'static str),
}

impl AuthError {
    /// A stable label for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            AuthError::Token(e) => e.as_str(),
            AuthError::UnknownUser => "unknown_user",
            AuthError::Inactive => "inactive",
            AuthError::Revoked => "revoked",
            AuthError::PasswordChanged => "password_changed",
            AuthError::Unavailable(_) => "unavailable",
            AuthError::NoSession => "no_session",
            AuthError::ApiKey(why) => match *why {
                "malformed" => "api_key_malformed",
                "bad_checksum" => "api_key_bad_checksum",
                "unknown" => "api_key_unknown",
                "revoked" => "api_key_revoked",
                "expired" => "api_key_expired",
                _ => "api_key_not_configured",
            },
        }
    }
}

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Wrong password, unknown email or inactive user: one answer for all three.
    #[error("bad credentials")]
    BadCredentials,
    /// Too many failures for this email or address.
    #[error("throttled; retry after {0:?}")]
    Throttled(Duration),
    /// The database or the hasher could not run.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl From<Refusal> for LoginError {
    fn from(r: Refusal) -> LoginError {
        match r {
            Refusal::Throttled(wait) => LoginError::Throttled(wait),
            Refusal::Unavailable(why) => LoginError::Unavailable(why),
        }
    }
}

/// A freshly issued token.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The token to send as `Authorization`.
    pub token: String,
    /// Whose it is.
    pub user_id: i64,
}

/// What the token-binding cache remembers about a token that passed every check.
#[derive(Debug, Clone)]
struct Verified {
    user_id: i64,
    issued_at: u64,
    credential_version: u64,
    /// When the token expires: the entry's end in the shared and the front cache.
    expires: Instant,
}

/// A front-cache copy of a token cache's entry with the text of the token it was
/// verified for, filed under [`token::probe`]: a later request presenting the same text
/// needs no parsing, hashing or MAC, since only a token that passed every check is ever
/// filed. Both token formats (native and FlexMeasures) keep their checks this way.
#[derive(Debug, Clone)]
struct KnownToken<V> {
    verified: V,
    text: Arc<str>,
}

impl<V: Clone + Send> KnownToken<V> {
    fn new(text: &str, verified: V) -> Self {
        KnownToken {
            verified,
            text: Arc::from(text),
        }
    }

    /// This thread's entry for exactly this token text, if it has one.
    fn find(front: &FrontCache<u64, KnownToken<V>>, token: &str) -> Option<V> {
        let probe = token::probe(token)?;
        front.read(&probe, Instant::now(), |known| {
            token::same_text(&known.text, token).then(|| known.verified.clone())
        })
    }

    /// File `verified` for this thread under the text of the token it was verified for.
    fn file(front: &FrontCache<u64, KnownToken<V>>, token: &str, verified: V, expires: Instant) {
        // Token entries are never invalidated wholesale (a changed credential is caught
        // later, by the user's entry), so the epoch only orders this copy after any bump.
        let epoch = front.epoch();
        if let Some(probe) = token::probe(token) {
            front.put(probe, KnownToken::new(token, verified), expires, epoch);
        }
    }
}

struct UntilTokenExpiry;

impl Expiry<[u8; 32], Verified> for UntilTokenExpiry {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        v: &Verified,
        now: std::time::Instant,
    ) -> Option<Duration> {
        Some(v.expires.saturating_duration_since(now))
    }
}

/// Checks flexgate's native tokens and passwords; owns the principal and token caches.
pub struct NativeAuthenticator {
    store: Store,
    key: TokenKey,
    max_age: u64,
    principals: moka::future::Cache<i64, Expiring<Arc<Identity>>>,
    principal_ttl: Duration,
    verified: moka::sync::Cache<[u8; 32], Verified>,
    /// Recent answers of the two caches above, per thread (see [`crate::cache`]).
    front_principals: FrontCache<i64, Arc<Identity>>,
    /// Keyed by [`token::probe`]: a hit still compares the whole text.
    front_verified: FrontCache<u64, KnownToken<Verified>>,
    hasher: PasswordHasher,
    throttle: LoginLimits,
    metrics: Metrics,
    keys: apikey::ApiKeys,
}

impl std::fmt::Debug for NativeAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeAuthenticator")
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

/// How to build an [`Authenticator`].
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Token lifetime.
    pub max_age: Duration,
    /// bcrypt cost of new hashes.
    pub bcrypt_cost: u32,
    /// Concurrent bcrypt verifications.
    pub max_concurrent_logins: usize,
    /// Cache sizes and lifetimes.
    pub cache: CacheSettings,
    /// Login throttling.
    pub throttle: ThrottleSettings,
}

impl NativeAuthenticator {
    /// An authenticator over `store`, signing with a key derived from `secret`.
    pub fn new(
        store: Store,
        secret: &crate::settings::Secret,
        s: &AuthSettings,
        metrics: Metrics,
    ) -> Result<Self, Error> {
        let (principal_evictions, token_evictions) = (metrics.clone(), metrics.clone());
        let throttle = LoginLimits::new(Some(store.clone()), s.throttle.clone());
        let keys = apikey::ApiKeys::new(Some(store.clone()), Some(secret));
        Ok(NativeAuthenticator {
            keys,
            store,
            key: TokenKey::derive(secret),
            max_age: s.max_age.as_secs(),
            principals: moka::future::Cache::builder()
                .name("principals")
                .max_capacity(s.cache.principal_capacity)
                .time_to_live(s.cache.principal_ttl)
                .eviction_listener(move |_, _, cause| {
                    if cause.was_evicted() {
                        principal_evictions.cache_eviction("principals");
                    }
                })
                .build(),
            principal_ttl: s.cache.principal_ttl,
            verified: moka::sync::Cache::builder()
                .name("tokens")
                .max_capacity(s.cache.token_capacity)
                .expire_after(UntilTokenExpiry)
                .eviction_listener(move |_, _, cause| {
                    if cause.was_evicted() {
                        token_evictions.cache_eviction("tokens");
                    }
                })
                .build(),
            front_principals: FrontCache::new(FRONT_SLOTS),
            front_verified: FrontCache::new(FRONT_SLOTS),
            hasher: PasswordHasher::new(s.bcrypt_cost, s.max_concurrent_logins)?,
            throttle,
            metrics,
        })
    }

    /// The store this authenticator reads.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Check a token and return who it belongs to.
    pub async fn authenticate(&self, token: &str) -> Result<Arc<Identity>, AuthError> {
        let now = unix_now();
        // This thread verified this very text before: nothing to parse or verify again.
        // Anything else (a miss, or another text under the same probe) is checked in full.
        let (signed, hit) = match KnownToken::find(&self.front_verified, token) {
            Some(known) => (None, Some(known)),
            None => {
                let signed = token::parse(token)?.verify(&self.key)?;
                (Some(signed), self.verified_token(&signed.tag, token))
            }
        };
        self.metrics.cache_lookup("tokens", hit.is_some());
        let was_cached = hit.is_some();
        if let Some(hit) = hit {
            token::check_age(hit.issued_at, now, self.max_age)?;
            let identity = self.identity(hit.user_id).await?;
            if !identity.active {
                return Err(AuthError::Inactive);
            }
            if identity.credential_version == hit.credential_version {
                return Ok(identity);
            }
        }
        let signed = match signed {
            Some(signed) => signed,
            None => token::parse(token)?.verify(&self.key)?,
        };
        if was_cached {
            // The user's credentials changed since: check from scratch. (A front copy
            // of this entry may stay; it carries the old version, so it leads here too.)
            self.verified.invalidate(&signed.tag);
        }
        let claims = signed.claims(now, self.max_age)?;
        let identity = self.identity(claims.user_id).await?;
        if !identity.active {
            return Err(AuthError::Inactive);
        }
        if !bool::from(
            identity
                .uniquifier
                .as_bytes()
                .ct_eq(claims.uniquifier.as_bytes()),
        ) {
            return Err(AuthError::Revoked);
        }
        let bound = self
            .off_runtime({
                let hash = identity.password_hash.clone();
                move || token::check_binding(&hash, &claims.password_binding)
            })
            .await
            .map_err(|e| AuthError::Unavailable(Arc::new(store::Error::Invalid(e.to_string()))))?;
        if !bound {
            return Err(AuthError::PasswordChanged);
        }
        let ttl = Duration::from_secs(claims.expires_at.saturating_sub(now).max(1));
        let verified = Verified {
            user_id: claims.user_id,
            issued_at: claims.issued_at,
            credential_version: identity.credential_version,
            expires: Instant::now() + ttl,
        };
        KnownToken::file(
            &self.front_verified,
            token,
            verified.clone(),
            verified.expires,
        );
        self.verified.insert(signed.tag, verified);
        Ok(identity)
    }

    /// What the shared token cache remembers about the verified token with this tag;
    /// a hit is copied to this thread's front cache with the token's text.
    fn verified_token(&self, tag: &[u8; 32], token: &str) -> Option<Verified> {
        let hit = self.verified.get(tag)?;
        KnownToken::file(&self.front_verified, token, hit.clone(), hit.expires);
        Some(hit)
    }

    /// The cached identity of a user, loading it once under concurrent misses.
    pub async fn identity(&self, user_id: i64) -> Result<Arc<Identity>, AuthError> {
        if let Some(hit) = self.front_principals.get(&user_id, Instant::now()) {
            self.metrics.cache_lookup("principals", true);
            return Ok(hit);
        }
        // Boxed, so a front-cache hit's future does not carry the room of the shared
        // cache's and the database's (several KiB).
        Box::pin(self.identity_shared(user_id)).await
    }

    /// [`NativeAuthenticator::identity`] past the front cache.
    async fn identity_shared(&self, user_id: i64) -> Result<Arc<Identity>, AuthError> {
        let epoch = self.front_principals.epoch();
        if let Some(hit) = self.principals.get(&user_id).await {
            self.metrics.cache_lookup("principals", true);
            self.front_principals
                .put(user_id, Arc::clone(&hit.value), hit.expires, epoch);
            return Ok(hit.value);
        }
        self.metrics.cache_lookup("principals", false);
        let db = self.store.clone();
        let loaded = load_identity(
            &self.principals,
            user_id,
            &self.store,
            self.principal_ttl,
            async move { db.principal(user_id).await },
            Identity::from_record,
        )
        .await?;
        self.front_principals
            .put(user_id, Arc::clone(&loaded.value), loaded.expires, epoch);
        Ok(loaded.value)
    }

    /// Check email and password (throttled, constant work for unknown emails) and issue
    /// a token.
    pub async fn login(
        &self,
        email: &str,
        password: String,
        client: IpAddr,
    ) -> Result<IssuedToken, LoginError> {
        let email = store::normalize_email(email);
        let attempt = self
            .throttle
            .begin(&email, client)
            .await
            .map_err(LoginError::from)?;
        let db = self.store.clone();
        let lookup = email.clone();
        let credentials = self
            .store
            .offload(async move { db.credentials(&lookup).await })
            .await
            .map_err(|e| LoginError::Unavailable(e.to_string()))?;
        let hash = credentials.as_ref().map(|c| c.password_hash.clone());
        let matched = self
            .hasher
            .verify(password, hash)
            .await
            .map_err(|e| LoginError::Unavailable(e.to_string()))?;
        match credentials {
            Some(c) if matched && c.active => {
                self.throttle.succeeded(&email, attempt).await;
                self.issue(c.user_id).await.map_err(|e| match e {
                    AuthError::UnknownUser | AuthError::Inactive => LoginError::BadCredentials,
                    other => LoginError::Unavailable(other.to_string()),
                })
            }
            // Counted already, by `begin`.
            _ => Err(LoginError::BadCredentials),
        }
    }

    /// Issue a token for an active user, bound to their current password and uniquifier.
    pub async fn issue(&self, user_id: i64) -> Result<IssuedToken, AuthError> {
        let db = self.store.clone();
        let record = self
            .store
            .offload(async move { db.principal(user_id).await })
            .await
            .map_err(|e| AuthError::Unavailable(Arc::new(e)))?
            .ok_or(AuthError::UnknownUser)?;
        if !record.active {
            return Err(AuthError::Inactive);
        }
        let hash = record.password_hash.clone();
        let binding = self
            .off_runtime(move || token::bind_password(&hash))
            .await
            .map_err(|e| AuthError::Unavailable(Arc::new(store::Error::Invalid(e.to_string()))))?;
        let token = token::encode(&self.key, user_id, &binding, &record.uniquifier, unix_now());
        Ok(IssuedToken { token, user_id })
    }

    /// Forget one user's cached principal (their next request reloads it).
    pub async fn invalidate_user(&self, user_id: i64) {
        self.principals.invalidate(&user_id).await;
        // After the shared cache, so that no thread can file the old identity again.
        self.front_principals.invalidate_all();
    }

    /// Forget every cached principal (an account's roles or consultancy changed).
    pub fn invalidate_all(&self) {
        self.principals.invalidate_all();
        self.front_principals.invalidate_all();
    }

    /// Entry counts of the principal and token caches, for metrics.
    pub async fn cache_sizes(&self) -> (u64, u64) {
        self.principals.run_pending_tasks().await;
        self.verified.run_pending_tasks();
        (self.principals.entry_count(), self.verified.entry_count())
    }

    async fn off_runtime<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        self.hasher
            .threads()
            .run(work)
            .await
            .map_err(|e| Error::Hash(e.to_string()))
    }
}

/// Where identities come from: flexgate's own tables and tokens, or an unmodified
/// FlexMeasures' (its tables, its tokens, its password hashes). The pipeline asks this
/// one seam for an [`Identity`] and never learns which source answered.
// One per process, behind an `Arc`: the variants' sizes do not matter, and boxing the
// native one would add a pointer hop to every request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Authenticator {
    /// flexgate's identity tables and native tokens.
    Native(NativeAuthenticator),
    /// FlexMeasures' tables and Flask-Security tokens.
    FlexMeasures(flexmeasures::FmAuthenticator),
}

impl Authenticator {
    /// A native authenticator (flexgate's own tables and tokens).
    pub fn new(
        store: Store,
        secret: &crate::settings::Secret,
        s: &AuthSettings,
        metrics: Metrics,
    ) -> Result<Self, Error> {
        NativeAuthenticator::new(store, secret, s, metrics).map(Authenticator::Native)
    }

    /// A FlexMeasures-mode authenticator over FlexMeasures' database, sharing logouts
    /// through `state` (flexgate's own database), if given.
    pub fn flexmeasures(
        store: Store,
        state: Option<Store>,
        key_secret: Option<&crate::settings::Secret>,
        secrets: &crate::settings::FlexMeasuresSecrets,
        s: &AuthSettings,
        metrics: Metrics,
    ) -> Result<Self, Error> {
        flexmeasures::FmAuthenticator::new(
            store,
            state,
            key_secret,
            secrets,
            s.max_age,
            s.max_concurrent_logins,
            &s.cache,
            &s.throttle,
            metrics,
        )
        .map(Authenticator::FlexMeasures)
    }

    /// Whether identities come from FlexMeasures' tables.
    pub fn is_flexmeasures(&self) -> bool {
        matches!(self, Authenticator::FlexMeasures(_))
    }

    /// The database identities are read from.
    pub fn store(&self) -> &Store {
        match self {
            Authenticator::Native(a) => a.store(),
            Authenticator::FlexMeasures(a) => a.store(),
        }
    }

    /// Check a token (or an API key: `fgk_...`) and return who it belongs to.
    pub async fn authenticate(&self, token: &str) -> Result<Arc<Identity>, AuthError> {
        if apikey::looks_like_key(token) {
            // Boxed, like every path off the token hot path: its future is large.
            return Box::pin(self.authenticate_key(token)).await;
        }
        match self {
            Authenticator::Native(a) => a.authenticate(token).await,
            Authenticator::FlexMeasures(a) => a.authenticate(token).await,
        }
    }

    /// The API keys of this deployment.
    pub fn api_keys(&self) -> &apikey::ApiKeys {
        match self {
            Authenticator::Native(a) => &a.keys,
            Authenticator::FlexMeasures(a) => a.api_keys(),
        }
    }

    async fn authenticate_key(&self, key: &str) -> Result<Arc<Identity>, AuthError> {
        let metrics = match self {
            Authenticator::Native(a) => &a.metrics,
            Authenticator::FlexMeasures(a) => a.metrics(),
        };
        let result = async {
            let record = self
                .api_keys()
                .find(key)
                .await
                .map_err(|refusal| match refusal {
                    apikey::KeyRefusal::Unavailable(e) => {
                        AuthError::Unavailable(Arc::new(store::Error::Invalid(e)))
                    }
                    other => AuthError::ApiKey(other.as_str()),
                })?;
            let identity = match self {
                Authenticator::Native(a) => a.identity(record.user_id).await?,
                Authenticator::FlexMeasures(a) => a.user_by_id(record.user_id).await?,
            };
            if !identity.active {
                return Err(AuthError::Inactive);
            }
            Ok(Arc::new(identity.narrowed(&record)))
        }
        .await;
        metrics.api_key_validation(match &result {
            Ok(_) => "valid",
            Err(AuthError::ApiKey(outcome)) => outcome,
            Err(AuthError::Inactive) | Err(AuthError::UnknownUser) => "inactive",
            Err(_) => "unavailable",
        });
        result
    }

    /// Check email and password and issue a token of the source's own format.
    pub async fn login(
        &self,
        email: &str,
        password: String,
        client: IpAddr,
    ) -> Result<IssuedToken, LoginError> {
        match self {
            Authenticator::Native(a) => a.login(email, password, client).await,
            Authenticator::FlexMeasures(a) => a.login(email, password, client).await,
        }
    }

    /// Forget one user's cached principal (native change feed).
    pub async fn invalidate_user(&self, user_id: i64) {
        if let Authenticator::Native(a) = self {
            a.invalidate_user(user_id).await;
        }
    }

    /// Forget every cached principal (native change feed).
    pub fn invalidate_all(&self) {
        if let Authenticator::Native(a) = self {
            a.invalidate_all();
        }
    }

    /// Entry counts of the principal and token caches, for metrics.
    pub async fn cache_sizes(&self) -> (u64, u64) {
        match self {
            Authenticator::Native(a) => a.cache_sizes().await,
            Authenticator::FlexMeasures(a) => a.cache_sizes().await,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_hex_has_the_asked_length_and_differs() {
        let a = super::random_hex(16);
        let b = super::random_hex(16);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn a_role_name_that_reads_as_a_list_stays_out_of_the_roles_header() {
        let roles = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(
            super::header_roles(1, &roles(&["account-admin", "consultant"])),
            "account-admin,consultant"
        );
        assert_eq!(
            super::header_roles(
                1,
                &roles(&["admin,x", " admin", "reader\t", "", "consultant"])
            ),
            "consultant"
        );
        assert_eq!(super::header_roles(1, &[]), "");
    }
}
