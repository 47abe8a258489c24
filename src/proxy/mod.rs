//! The proxy: listeners, the request pipeline, forwarding.
//!
//! Every request on a public listener walks [`pipeline::handle`], one stage per line:
//! 1. [`normalize::normalize`]: the one path used to match and to forward (400 if ambiguous);
//! 2. [`login::handle`] if it is the token endpoint;
//! 3. [`pipeline::match_rule`]: method + template, deny by default;
//! 4. [`pipeline::authenticate`]: exactly one token, checked ([`crate::auth`]);
//! 5. [`pipeline::check_roles`]: `roles_required` / `roles_accepted` / account roles;
//! 6. [`body::BodyReader::read`] and [`pipeline::checked_body`]: only for routes that read
//!    ids from a JSON or form body (and, in FlexMeasures mode, for JSON bodies that may
//!    carry a token);
//! 7. [`pipeline::authorize`]: ids extracted, owners resolved (cache, then SQL), ACLs decided;
//! 8. headers rewritten ([`headers`]): hop-by-hop and client identity out, ours in, signed;
//! 9. [`forward::Upstream::forward`]: streamed to the upstream with a `Permit`, on a
//!    connection from this worker's [`pool`].
//!
//! A deny at any stage becomes a response in [`deny`], the only place that maps reasons
//! to statuses and bodies. [`listener`] accepts connections; [`admin`] serves metrics
//! and health; [`background`] reloads rules and follows the identity change feed.

pub mod admin;
pub mod background;
pub mod body;
pub mod conn;
pub mod conn_limit;
pub mod decision;
pub mod deny;
pub mod evaluate;
pub mod forward;
pub mod forwarded;
pub mod h1;
pub mod headers;
pub mod host;
pub mod listener;
pub mod login;
pub mod login_form;
pub mod normalize;
pub mod pipeline;
pub mod pool;
pub mod shadow;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use conn_limit::ConnectionLimit;
use http::{HeaderValue, Method};
use http_body_util::{Either, Full};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::auth::{AuthSettings, Authenticator};
use crate::metrics::{Metrics, RouteMetrics};
use crate::rules::{Config, HttpMode, IdentitySource, Limits, RuleSet, ServerConfig};
use crate::settings::Settings;
use crate::store::Store;
use crate::store::owner::OwnerResolver;
use forward::Upstream;
use headers::UpstreamSigner;
use pipeline::ConnInfo;

/// Response bodies: streamed from the upstream, or generated here.
pub type ProxyBody = Either<pool::PooledBody, Full<Bytes>>;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Certificate or key problems.
    #[error("TLS: {0}")]
    Tls(String),
    /// A listener could not bind.
    #[error("cannot bind {0}")]
    Bind(String),
    /// The configuration cannot be served.
    #[error("{0}")]
    Config(String),
    /// Settings (secrets) are missing.
    #[error(transparent)]
    Settings(#[from] crate::settings::Error),
    /// The authenticator could not be built.
    #[error(transparent)]
    Auth(#[from] crate::auth::Error),
}

/// A rule set as requests use it: the rules plus the metric handles of each route.
pub struct Installed {
    /// The rules.
    pub rules: Arc<RuleSet>,
    /// Per-route metric handles, by route index.
    pub routes: Vec<RouteMetrics>,
}

impl Installed {
    fn new(rules: Arc<RuleSet>, metrics: &Metrics) -> Installed {
        let routes = rules
            .routes
            .iter()
            .map(|r| metrics.route(&r.name))
            .collect();
        Installed { rules, routes }
    }
}

/// Everything requests share: the current rules, caches, the upstream client, metrics.
pub struct Gateway {
    installed: ArcSwap<Installed>,
    /// Candidate rules that decide every request too, without effect ([`shadow`]).
    shadow: arc_swap::ArcSwapOption<RuleSet>,
    shadow_permits: Arc<Semaphore>,
    server: ServerConfig,
    /// Reads bodies whole, within one deadline and one byte budget for the process.
    bodies: body::BodyReader,
    /// Tokens and principals.
    pub auth: Arc<Authenticator>,
    /// Resource owners.
    pub owners: OwnerResolver,
    upstream: Upstream,
    signer: UpstreamSigner,
    hsts: Option<HeaderValue>,
    forward_authorization: bool,
    audit_allows: bool,
    decision_secret: Option<crate::settings::Secret>,
    /// The decision listener's flavours, with the configured describing headers.
    decision_flavours: Vec<decision::Flavour>,
    /// The headers `[server.decision_headers]` names (nginx describing a request with
    /// its own names): a client's copies are removed on the public listeners.
    decision_header_names: Vec<http::HeaderName>,
    store: Store,
    /// `/readyz`'s database check.
    ready_check: admin::ReadyCheck,
    /// This gateway's metrics.
    pub metrics: Metrics,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Assemble a gateway for `config` over `store`. State shared between replicas
    /// (logouts, failed logins) lives in `store` in native mode and only in memory in
    /// FlexMeasures mode; see [`Gateway::with_state`].
    pub fn new(config: &Config, store: Store, settings: &Settings) -> Result<Arc<Gateway>, Error> {
        let state = match config.server.identity_source {
            IdentitySource::Native => Some(store.clone()),
            IdentitySource::FlexMeasures { .. } => None,
        };
        Gateway::with_state(config, store, state, settings)
    }

    /// [`Gateway::new`] with the database replicas share state in (`FLEXGATE_STATE_URL`,
    /// migrated; never FlexMeasures' database).
    pub fn with_state(
        config: &Config,
        store: Store,
        state: Option<Store>,
        settings: &Settings,
    ) -> Result<Arc<Gateway>, Error> {
        let server = &config.server;
        // A deployment with only a decision listener forwards nothing: its upstream
        // client is built (connections are made on demand) but never used.
        let decision_only_upstream = http::Uri::from_static("http://127.0.0.1:9");
        let upstream_uri = match (&server.upstream, server.https.or(server.http)) {
            (Some(uri), _) => uri,
            (None, None) if server.decision.is_some() => &decision_only_upstream,
            (None, _) => {
                return Err(Error::Config(format!(
                    "{}: [server] upstream is not set",
                    config.rules.file.display()
                )));
            }
        };
        let metrics = Metrics::new();
        let upstream = Upstream::new(
            upstream_uri,
            server.upstream_ca.as_deref(),
            &server.limits,
            server.workers,
            metrics.clone(),
        )?;
        let auth_settings = AuthSettings {
            max_age: settings.token_max_age,
            bcrypt_cost: settings.bcrypt_cost,
            max_concurrent_logins: server.max_concurrent_logins,
            cache: server.cache.clone(),
            throttle: server.throttle.clone(),
        };
        let auth = match server.identity_source {
            IdentitySource::Native => Authenticator::new(
                store.clone(),
                settings.secret_key()?,
                &auth_settings,
                metrics.clone(),
            )?,
            IdentitySource::FlexMeasures { .. } => Authenticator::flexmeasures(
                store.clone(),
                state,
                settings.secret_key.as_ref(),
                &settings.flexmeasures,
                &auth_settings,
                metrics.clone(),
            )?,
        };
        metrics.reload(true, config.rules.routes.len(), crate::auth::unix_now());
        let shadow = server.shadow.as_deref().and_then(|path| match crate::rules::load(path) {
            Ok(candidate) => Some(candidate.rules),
            Err(diagnostics) => {
                tracing::error!(file = %path.display(), "the shadow rules have errors; no shadow decisions until they are fixed:\n{diagnostics}");
                None
            }
        });
        Ok(Arc::new(Gateway {
            shadow: arc_swap::ArcSwapOption::from(shadow),
            shadow_permits: Arc::new(Semaphore::new(shadow::MAX_IN_FLIGHT)),
            bodies: body::BodyReader::new(&server.limits),
            installed: ArcSwap::new(Arc::new(Installed::new(
                Arc::clone(&config.rules),
                &metrics,
            ))),
            owners: OwnerResolver::new(
                store.clone(),
                &server.cache,
                metrics.clone(),
                server.workers.max(1),
            ),
            auth: Arc::new(auth),
            upstream,
            signer: UpstreamSigner::new(settings.upstream_secret()?),
            hsts: (server.hsts_max_age > 0)
                .then(|| {
                    HeaderValue::from_str(&format!(
                        "max-age={}; includeSubDomains",
                        server.hsts_max_age
                    ))
                    .ok()
                })
                .flatten(),
            forward_authorization: server.forward_authorization,
            audit_allows: server.audit_allows,
            decision_secret: settings.decision_secret.clone(),
            decision_flavours: decision::flavours(&server.decision_headers),
            decision_header_names: decision::configured_names(&server.decision_headers),
            server: server.clone(),
            store,
            ready_check: admin::ReadyCheck::default(),
            metrics,
        }))
    }

    /// The current rules (an `Arc` snapshot: a reload never changes a running request's).
    pub fn rules(&self) -> Arc<RuleSet> {
        Arc::clone(&self.installed.load().rules)
    }

    /// The current rules with their metric handles.
    pub fn installed(&self) -> Arc<Installed> {
        self.installed.load_full()
    }

    /// Swap in new rules atomically.
    pub fn install(&self, rules: Arc<RuleSet>) {
        self.metrics
            .reload(true, rules.routes.len(), crate::auth::unix_now());
        self.installed
            .store(Arc::new(Installed::new(rules, &self.metrics)));
    }

    /// The candidate rules in shadow, if any.
    pub fn shadow_rules(&self) -> Option<Arc<RuleSet>> {
        self.shadow.load_full()
    }

    /// Swap in new candidate rules.
    pub fn install_shadow(&self, rules: Arc<RuleSet>) {
        self.shadow.store(Some(rules));
    }

    fn shadow_permits(&self) -> &Arc<Semaphore> {
        &self.shadow_permits
    }

    /// Start-only settings.
    pub fn server(&self) -> &ServerConfig {
        &self.server
    }

    /// Connection and size limits.
    pub fn limits(&self) -> &Limits {
        &self.server.limits
    }

    /// Where bodies that must be read whole are read ([`body`]).
    pub fn bodies(&self) -> &body::BodyReader {
        &self.bodies
    }

    /// The database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    fn signer(&self) -> &UpstreamSigner {
        &self.signer
    }

    fn hsts(&self) -> Option<&HeaderValue> {
        self.hsts.as_ref()
    }

    /// The header names `[server.decision_headers]` configures (usually none).
    pub fn decision_header_names(&self) -> &[http::HeaderName] {
        &self.decision_header_names
    }

    /// The flavours the decision listener answers.
    pub fn decision_flavours(&self) -> &[decision::Flavour] {
        &self.decision_flavours
    }

    /// The shared secret decision requests must carry, when one is configured.
    pub fn decision_secret(&self) -> Option<&crate::settings::Secret> {
        self.decision_secret.as_ref()
    }

    fn forwards_authorization(&self) -> bool {
        self.forward_authorization
    }

    /// Refresh gauges that are read at scrape time.
    pub async fn update_gauges(&self) {
        let (principals, tokens) = self.auth.cache_sizes().await;
        self.metrics.cache_entries("principals", principals);
        self.metrics.cache_entries("tokens", tokens);
        self.metrics
            .cache_entries("owners", self.owners.entry_count().await);
    }

    /// The audit line of one request: always for denies, for allows when asked. Never a
    /// token, password, hash or body.
    #[allow(clippy::too_many_arguments)]
    fn audit(
        &self,
        conn: &ConnInfo,
        rules: &RuleSet,
        route: &str,
        method: &Method,
        decision: &str,
        reason: &str,
        status: u16,
        outcome: &pipeline::Outcome,
        elapsed: Duration,
    ) {
        if decision == "allow" && !self.audit_allows {
            return;
        }
        let checked = outcome.checked.as_ref();
        let permission = checked.map(|(p, _, _)| rules.permission_name(*p));
        let kind = checked
            .and_then(|(_, k, _)| rules.kinds.get(*k))
            .map(|k| k.name.as_str());
        let id = checked.and_then(|(_, _, id)| id.as_ref());
        tracing::info!(
            target: "flexgate::audit",
            decision,
            reason,
            client.address = %conn.peer.ip(),
            rule.name = route,
            http.method = %method,
            http.status = status,
            user.id = outcome.user_id,
            account.id = outcome.account_id,
            key.id = outcome.key.as_ref().map(|(id, _)| *id),
            key.name = outcome.key.as_ref().map(|(_, name)| &**name),
            permission,
            resource.kind = kind,
            resource.id = id.map(tracing::field::display),
            duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            "request"
        );
    }

    fn audit_login(
        &self,
        conn: &ConnInfo,
        result: &Result<http::Response<ProxyBody>, deny::Deny>,
        user_id: Option<i64>,
    ) {
        let (decision, reason) = match result {
            Ok(_) => ("allow", "token_issued"),
            Err(d) => (d.decision(), d.reason()),
        };
        tracing::info!(
            target: "flexgate::audit",
            decision,
            reason,
            client.address = %conn.peer.ip(),
            rule.name = crate::metrics::TOKEN_ENDPOINT,
            user.id = user_id,
            "login"
        );
    }
}

/// A running proxy: its bound addresses and the means to stop it.
pub struct Running {
    /// The HTTPS listener's address.
    pub https: Option<SocketAddr>,
    /// The plain-HTTP listener's address.
    pub http: Option<SocketAddr>,
    /// The admin listener's address.
    pub admin: Option<SocketAddr>,
    /// The decision listener's address.
    pub decision: Option<SocketAddr>,
    /// The shared state (for tests and the reload task).
    pub gateway: Arc<Gateway>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("https", &self.https)
            .field("http", &self.http)
            .field("admin", &self.admin)
            .field("decision", &self.decision)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// A receiver that flips to `true` at shutdown, for background tasks.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Keep a background task with the listeners, so shutdown waits for it.
    pub fn attach(&mut self, task: JoinHandle<()>) {
        self.tasks.push(task);
    }

    /// Stop accepting, drain in-flight requests (up to the grace period), return.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Bind the configured listeners and start accepting. The public listeners are served
/// by `workers` threads, each a single-threaded runtime with its own `SO_REUSEPORT`
/// socket and upstream pool, so a request never hops between threads; the admin
/// listener and background work stay on the caller's runtime.
pub async fn start(gateway: Arc<Gateway>) -> Result<Running, Error> {
    let server = gateway.server().clone();
    let workers = server.workers.max(1);
    let (shutdown, signal) = watch::channel(false);
    let mut running = Running {
        https: None,
        http: None,
        admin: None,
        decision: None,
        gateway: Arc::clone(&gateway),
        shutdown,
        tasks: Vec::new(),
    };
    type WorkerListener = (std::net::TcpListener, listener::Role, Arc<ConnectionLimit>);
    let mut per_worker: Vec<Vec<WorkerListener>> = (0..workers).map(|_| Vec::new()).collect();
    let mut share = |sockets: Vec<std::net::TcpListener>, role: listener::Role| {
        // The decision listener's one client is the ingress: no per-client limit there.
        let per_client = match (&role, server.limits.max_connections_per_client) {
            (listener::Role::Decision(_), _) | (_, 0) => None,
            (_, max) => Some((
                u32::try_from(max).unwrap_or(u32::MAX),
                server.trusted_proxies.clone(),
            )),
        };
        let permits = Arc::new(ConnectionLimit::new(
            server.limits.max_connections,
            per_client,
        ));
        for (socket, slot) in sockets.into_iter().zip(per_worker.iter_mut()) {
            slot.push((socket, role.clone(), Arc::clone(&permits)));
        }
    };
    if let Some(addr) = server.https {
        let (cert, key) = server
            .tls
            .as_ref()
            .ok_or_else(|| Error::Config("https is set without tls_cert and tls_key".into()))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(listener::tls_config(cert, key)?);
        let (bound, sockets) = listener::bind_shared(addr, workers, "https")?;
        running.https = Some(bound);
        share(sockets, listener::Role::Https(acceptor));
    }
    if let Some(addr) = server.http {
        let role = match (server.http_mode, running.https, &server.tls) {
            (HttpMode::Proxy, _, _) => listener::Role::PlainProxy,
            (HttpMode::Redirect, Some(https), Some((cert, _))) => {
                listener::Role::Redirect(Arc::new(listener::RedirectTarget::new(
                    https.port(),
                    &server.allowed_hosts,
                    cert,
                )?))
            }
            (HttpMode::Redirect, _, _) => {
                return Err(Error::Config(
                    "http_mode = \"redirect\" needs an https listener".into(),
                ));
            }
        };
        let (bound, sockets) = listener::bind_shared(addr, workers, "http")?;
        running.http = Some(bound);
        share(sockets, role);
    }
    if let Some(addr) = server.decision {
        let (bound, sockets) = listener::bind_shared(addr, workers, "decision")?;
        running.decision = Some(bound);
        let acceptor = match (&server.decision_client_ca, &server.tls) {
            (None, _) => None,
            (Some(ca), Some((cert, key))) => Some(tokio_rustls::TlsAcceptor::from(
                listener::decision_tls_config(cert, key, ca)?,
            )),
            (Some(_), None) => {
                return Err(Error::Config(
                    "decision_client_ca is set without tls_cert and tls_key".into(),
                ));
            }
        };
        share(sockets, listener::Role::Decision(acceptor));
    }
    if running.https.is_none() && running.http.is_none() && running.decision.is_none() {
        return Err(Error::Config(
            "no listener configured: set [server] https (and http), or decision".into(),
        ));
    }
    if let Some(addr) = server.admin {
        let l = listener::bind(addr, "admin").await?;
        running.admin = Some(l.local_addr().map_err(|e| Error::Bind(e.to_string()))?);
        let permits = Arc::new(ConnectionLimit::new(server.limits.max_connections, None));
        running.tasks.push(tokio::spawn(listener::run(
            l,
            listener::Role::Admin,
            Arc::clone(&gateway),
            signal.clone(),
            permits,
            0,
        )));
    }
    for (worker, listeners) in per_worker.into_iter().enumerate() {
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let gw = Arc::clone(&gateway);
        let signal = signal.clone();
        std::thread::Builder::new()
            .name(format!("flexgate-worker-{worker}"))
            .spawn(move || {
                crate::store::owner::set_worker(worker);
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        tracing::error!(worker, error = %e, "cannot start a worker runtime");
                        return;
                    }
                };
                runtime.block_on(async move {
                    let mut tasks = Vec::new();
                    for (socket, role, permits) in listeners {
                        match tokio::net::TcpListener::from_std(socket) {
                            Ok(l) => tasks.push(tokio::spawn(listener::run(
                                l,
                                role,
                                Arc::clone(&gw),
                                signal.clone(),
                                permits,
                                worker,
                            ))),
                            Err(e) => tracing::error!(worker, error = %e, "cannot adopt a listening socket"),
                        }
                    }
                    for task in tasks {
                        let _ = task.await;
                    }
                });
                let _ = done.send(());
            })
            .map_err(|e| Error::Bind(format!("worker thread: {e}")))?;
        running.tasks.push(tokio::spawn(async move {
            let _ = finished.await;
        }));
    }
    Ok(running)
}
