//! Route rules: which requests are allowed, for whom, on which resources.
//!
//! The operator's TOML file is parsed into [`raw`] structs, then compiled into a
//! [`RuleSet`] (templates parsed, principals resolved to columns, permissions interned,
//! header names built) that requests read through an `Arc` snapshot. Compilation
//! reports every problem with file, line, rule and fix ([`Diagnostics`]); a file with
//! errors never replaces a working rule set. [`matcher`] finds the route, [`extract`]
//! reads resource ids, and `crate::policy` decides.

pub mod compile;
pub mod duration;
pub mod extract;
pub mod matcher;
pub mod multipart;
pub mod raw;
pub mod suite;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, StatusCode};

use crate::policy::{AdminRoles, KindPolicy, Permission, RoleRequirements};
use extract::{IdType, JsonPointer, Source, TextClass};
use matcher::{Matcher, Methods, Template};

/// Line numbers of byte offsets in one file, each a binary search: diagnostics name
/// the line of every rule and test case, and files run to thousands of them.
pub(crate) struct LineIndex {
    newlines: Vec<usize>,
    len: usize,
}

impl LineIndex {
    pub(crate) fn new(text: &str) -> LineIndex {
        LineIndex {
            newlines: text
                .bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i)
                .collect(),
            len: text.len(),
        }
    }

    /// The 1-based line `offset` lies on.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        let offset = offset.min(self.len);
        self.newlines.partition_point(|&n| n < offset) + 1
    }
}

/// One problem found in a rule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The rule it concerns (`route "asset-read"`, `kind "asset"`), when any.
    pub rule: Option<String>,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Every problem found in one file, errors and warnings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics {
    /// The file, as named by the operator.
    pub file: PathBuf,
    /// Problems that make the file unusable.
    pub errors: Vec<Diagnostic>,
    /// Suspicious but valid (e.g. a role that looks like a typo).
    pub warnings: Vec<Diagnostic>,
}

impl Diagnostics {
    fn render(&self, f: &mut fmt::Formatter<'_>, level: &str, list: &[Diagnostic]) -> fmt::Result {
        for d in list {
            write!(f, "{}", self.file.display())?;
            if let Some(line) = d.line {
                write!(f, ":{line}")?;
            }
            write!(f, ": {level}: ")?;
            if let Some(rule) = &d.rule {
                write!(f, "{rule}: ")?;
            }
            writeln!(f, "{}", d.message)?;
        }
        Ok(())
    }
}

impl Diagnostics {
    /// Log each warning as one structured line (target `flexgate::config`), so a
    /// JSON log stays JSON.
    pub fn log_warnings(&self) {
        for d in &self.warnings {
            tracing::warn!(
                target: "flexgate::config",
                file = %self.file.display(),
                line = d.line,
                rule = d.rule.as_deref(),
                "{}",
                d.message
            );
        }
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.render(f, "error", &self.errors)?;
        self.render(f, "warning", &self.warnings)
    }
}

impl std::error::Error for Diagnostics {}

/// Whether plain HTTP redirects or is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMode {
    /// 308 to the same path on HTTPS (the default).
    Redirect,
    /// Serve the proxy over plain HTTP: only when TLS terminates in front of flexgate.
    Proxy,
}

/// Connection and size limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Time allowed for a request head; also bounds idle HTTP/1.1 keep-alive waits.
    pub header_read_timeout: Duration,
    /// HTTP/2 ping interval and the idle limit of upgraded tunnels.
    pub idle_timeout: Duration,
    /// Concurrent connections per listener.
    pub max_connections: usize,
    /// Concurrent connections per listener from one client (0: no such limit).
    pub max_connections_per_client: usize,
    /// Largest buffered JSON body.
    pub max_json_body_bytes: usize,
    /// Largest buffered multipart body (routes with `plain_text_multipart`).
    pub max_multipart_body_bytes: usize,
    /// Time allowed for a body flexgate reads whole ([`crate::proxy::body`]).
    pub body_read_timeout: Duration,
    /// Bytes of bodies read whole that the process holds at once: clients choose how
    /// many they send before they are authenticated.
    pub max_buffered_body_bytes: usize,
    /// Upstream connect timeout.
    pub upstream_connect_timeout: Duration,
    /// Upstream response-head timeout.
    pub upstream_timeout: Duration,
    /// Idle pooled upstream connections are closed after this.
    pub upstream_idle: Duration,
    /// Drain deadline at shutdown.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_connections_per_client: 1024,
            max_json_body_bytes: 1024 * 1024,
            max_multipart_body_bytes: 4 * 1024 * 1024,
            body_read_timeout: Duration::from_secs(30),
            max_buffered_body_bytes: 128 * 1024 * 1024,
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(60),
            upstream_idle: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Cache sizes and lifetimes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// Longest a principal is trusted without hearing from the change feed.
    pub principal_ttl: Duration,
    /// Longest an owner row is reused.
    pub owner_ttl: Duration,
    /// Longest "not found" is remembered.
    pub owner_negative_ttl: Duration,
    /// Owner entries kept.
    pub owner_capacity: u64,
    /// Principal entries kept.
    pub principal_capacity: u64,
    /// Verified-token entries kept.
    pub token_capacity: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            principal_ttl: Duration::from_secs(60),
            owner_ttl: Duration::from_secs(30),
            owner_negative_ttl: Duration::from_secs(5),
            owner_capacity: 200_000,
            principal_capacity: 100_000,
            token_capacity: 200_000,
        }
    }
}

/// Login throttling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleSettings {
    /// Failures per email within the window before 429.
    pub failures_per_email: u32,
    /// Failures per client address within the window before 429.
    pub failures_per_client: u32,
    /// Window length.
    pub window: Duration,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        ThrottleSettings {
            failures_per_email: 5,
            failures_per_client: 20,
            window: Duration::from_secs(900),
        }
    }
}

/// The parts of the file read once at start (a reload that changes them logs that a
/// restart is needed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// HTTPS listener.
    pub https: Option<SocketAddr>,
    /// Plain-HTTP listener.
    pub http: Option<SocketAddr>,
    /// What the plain-HTTP listener does.
    pub http_mode: HttpMode,
    /// Admin listener (metrics, health).
    pub admin: Option<SocketAddr>,
    /// Decision listener (decision mode), if any.
    pub decision: Option<SocketAddr>,
    /// CA certificates the decision listener's clients must present a certificate
    /// from (mutual TLS); `None`: plain HTTP, trusted by address (and the secret).
    pub decision_client_ca: Option<PathBuf>,
    /// Certificate chain and key (PEM), resolved against the config file's directory.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Upstream base URI.
    pub upstream: Option<http::Uri>,
    /// Extra trusted CAs for an https upstream.
    pub upstream_ca: Option<PathBuf>,
    /// HSTS max-age (0 = no header).
    pub hsts_max_age: u64,
    /// Rule-file poll interval (`None` = only on SIGHUP).
    pub rules_poll: Option<Duration>,
    /// Worker threads for the public listeners.
    pub workers: usize,
    /// Connection and size limits.
    pub limits: Limits,
    /// Cache sizes and lifetimes.
    pub cache: CacheSettings,
    /// Login throttling.
    pub throttle: ThrottleSettings,
    /// Concurrent bcrypt verifications.
    pub max_concurrent_logins: usize,
    /// Pass the client's `Authorization` header upstream.
    pub forward_authorization: bool,
    /// Log allowed requests too.
    pub audit_allows: bool,
    /// Host names clients may address (empty: any).
    pub allowed_hosts: AllowedHosts,
    /// Header names the nginx flavour of the decision listener reads (lowercase;
    /// `None`: its default).
    pub decision_headers: DecisionHeaders,
    /// Proxies in front of flexgate whose `X-Forwarded-For` names the client.
    pub trusted_proxies: TrustedProxies,
    /// Forward the client's `Host` rather than the upstream's authority.
    pub preserve_host: bool,
    /// Where identities come from.
    pub identity_source: IdentitySource,
    /// Candidate rules decided in shadow (`[shadow] rules`), resolved against this file.
    pub shadow: Option<PathBuf>,
}

/// Where identities come from (`[identity] source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentitySource {
    /// flexgate's own tables and tokens.
    Native,
    /// An unmodified FlexMeasures' tables, tokens and passwords, read only.
    FlexMeasures {
        /// How often cached users are compared with FlexMeasures' tables.
        revalidate: Duration,
    },
}

/// `[server.decision_headers]`: where an nginx `auth_request` describes the original
/// request, when its configuration uses other names than the usual ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecisionHeaders {
    /// The original method.
    pub method: Option<String>,
    /// The original request-target.
    pub uri: Option<String>,
    /// The original host.
    pub host: Option<String>,
    /// The original scheme.
    pub proto: Option<String>,
}

/// The proxies in front of flexgate (a load balancer ending TLS, an ingress sending
/// logins on) whose `X-Forwarded-For` is believed. Without them every client behind
/// such a proxy has the proxy's address, and the per-address login limit would lock
/// all of them out together; with them, a client's own address is throttled. Empty:
/// the connection's address is the client's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    /// Networks as (address, prefix length).
    nets: Vec<(std::net::IpAddr, u8)>,
}

impl TrustedProxies {
    /// Parse `"10.0.0.0/8"`, `"127.0.0.1"` or `"::1"` (a plain address is one host).
    pub fn parse(entry: &str) -> Option<(std::net::IpAddr, u8)> {
        let (addr, len) = match entry.split_once('/') {
            Some((addr, len)) => (addr, Some(len.parse::<u8>().ok()?)),
            None => (entry, None),
        };
        let addr: std::net::IpAddr = addr.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        (len <= max).then_some((addr, len))
    }

    /// The networks (already parsed).
    pub fn new(nets: Vec<(std::net::IpAddr, u8)>) -> TrustedProxies {
        TrustedProxies { nets }
    }

    /// Whether any proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` is one of the trusted proxies (an IPv4-mapped IPv6 address counts
    /// as its IPv4 address).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|&(net, len)| match (net, ip) {
            (std::net::IpAddr::V4(net), std::net::IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (std::net::IpAddr::V6(net), std::net::IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        })
    }
}

/// The `Host` names a deployment answers to: exact names and `*.suffix` wildcards,
/// compared without the port and without regard to ASCII case. Refusing other names
/// keeps an upstream's own host check meaningful behind flexgate and stops forged
/// hosts from reaching redirects and links.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts {
    exact: Vec<String>,
    /// `.example.com` for `*.example.com`.
    suffixes: Vec<String>,
}

impl AllowedHosts {
    /// Compile the configured patterns (already validated by the compiler).
    pub fn new<'a>(patterns: impl IntoIterator<Item = &'a str>) -> AllowedHosts {
        let mut hosts = AllowedHosts::default();
        for p in patterns {
            let p = p.to_ascii_lowercase();
            match p.strip_prefix('*') {
                Some(suffix) => hosts.suffixes.push(suffix.to_owned()),
                None => hosts.exact.push(p),
            }
        }
        hosts
    }

    /// Whether no list is configured (every host is accepted).
    pub fn is_any(&self) -> bool {
        self.exact.is_empty() && self.suffixes.is_empty()
    }

    /// Whether `host` (the host part of an authority, without port) is allowed.
    pub fn allows(&self, host: &str) -> bool {
        if self.is_any() {
            return true;
        }
        self.exact.iter().any(|e| e.eq_ignore_ascii_case(host))
            || self.suffixes.iter().any(|s| {
                host.len() > s.len()
                    && host
                        .get(host.len() - s.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(s))
            })
    }
}

/// Path normalisation switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathOptions {
    /// Accept `;`.
    pub allow_semicolons: bool,
    /// Accept `//`.
    pub allow_empty_segments: bool,
    /// Match static segments case-insensitively.
    pub case_insensitive: bool,
}

/// Names of the identity headers, built once from the configured prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeaders {
    /// The prefix, lower-cased; any client header starting with it (or its `_` variant)
    /// is removed.
    pub prefix: String,
    /// `<prefix>User-Id`.
    pub user_id: HeaderName,
    /// `<prefix>User-Email`.
    pub email: HeaderName,
    /// `<prefix>Account-Id`.
    pub account_id: HeaderName,
    /// `<prefix>User-Roles` (comma separated).
    pub roles: HeaderName,
    /// `<prefix>Account-Roles` (comma separated).
    pub account_roles: HeaderName,
    /// `<prefix>Timestamp` (Unix seconds of the signature).
    pub timestamp: HeaderName,
    /// `<prefix>Signature` (`v1=<hex HMAC-SHA256>`).
    pub signature: HeaderName,
}

/// A kind of resource: how to find its owner and who may do what.
#[derive(Debug, Clone)]
pub struct Kind {
    /// Name used in rules.
    pub name: String,
    /// Name used in "not found" messages.
    pub label: String,
    /// Owner query with `$1` = id; `None` for a singleton.
    pub query: Option<Arc<str>>,
    /// Columns of the owner row, in order.
    pub columns: Vec<String>,
    /// Shape of ids.
    pub id_type: IdType,
    /// Status for an unknown id.
    pub not_found_status: StatusCode,
    /// Message for an unknown id (`{id}` replaced).
    pub not_found_message: String,
    /// The ACLs.
    pub policy: KindPolicy,
    /// Changes whenever the query or columns change; part of owner-cache keys, so a
    /// reload never serves rows of an older query.
    pub fingerprint: u64,
}

impl Kind {
    /// Whether the kind has no ids (e.g. "the platform").
    pub fn is_singleton(&self) -> bool {
        self.query.is_none()
    }
}

/// What a check does when the request names no id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfAbsent {
    /// 422, naming the missing field.
    Reject,
    /// The check does not apply.
    Skip,
    /// Only admins may proceed (FlexMeasures' `POST /assets` without an owner).
    AdminsOnly,
}

/// Where a check's resource comes from.
#[derive(Debug, Clone)]
pub enum Target {
    /// A kind without ids (index into [`RuleSet::kinds`]).
    Singleton(usize),
    /// `(kind index, source)` alternatives; the first with a value decides.
    Sources(Vec<(usize, Source)>),
}

/// A permission check of a route.
#[derive(Debug, Clone)]
pub struct Check {
    /// The permission.
    pub permission: Permission,
    /// The resource.
    pub target: Target,
    /// When the request names no id.
    pub if_absent: IfAbsent,
    /// When a JSON source is there but names no id (an empty list); `if_absent` unless
    /// the rule says otherwise.
    pub if_empty: IfAbsent,
    /// Status for an unknown id, overriding the kind's.
    pub not_found_status: Option<StatusCode>,
}

impl Route {
    /// The largest body this route reads whole: an upload's, or a JSON body's.
    pub fn body_limit(&self, limits: &Limits) -> usize {
        if self.plain_text_multipart {
            limits.max_multipart_body_bytes
        } else {
            limits.max_json_body_bytes
        }
    }
}

impl Check {
    /// Whether deciding this check needs the request body: an id read from it, or a
    /// column of the first resource (which may have been named in it).
    pub fn reads_body(&self) -> bool {
        match &self.target {
            Target::Singleton(_) => false,
            Target::Sources(alternatives) => alternatives.iter().any(|(_, source)| {
                matches!(
                    source,
                    Source::Json(_) | Source::Form { .. } | Source::Column { .. }
                )
            }),
        }
    }
}

/// A compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Unique name (metrics label).
    pub name: Arc<str>,
    /// Line in the file.
    pub line: usize,
    /// Methods answered.
    pub methods: Methods,
    /// Path template.
    pub template: Template,
    /// No authentication at all.
    pub public: bool,
    /// Role requirements.
    pub roles: RoleRequirements,
    /// Permission checks (all must pass).
    pub checks: Vec<Check>,
    /// Answer unknown ids before authentication.
    pub resolve_before_auth: bool,
    /// Some check reads the body (JSON, or a form).
    pub needs_body: bool,
    /// Some check reads a form field: a url-encoded body is read too, not refused.
    pub reads_form: bool,
    /// Top-level body fields read as JSON when they come as a string (`json_strings`).
    pub json_strings: Vec<String>,
    /// Body fields refused whatever their value (`refuse_json`): 422, as an unknown field.
    pub refuse_json: Vec<JsonPointer>,
    /// Query parameters refused whatever their value (`refuse_query`), decoded.
    pub refuse_query: Vec<String>,
    /// Body fields only admins may send (`admins_only_json`).
    pub admins_only_json: Vec<JsonPointer>,
    /// Body fields held to a text class (`plain_text_json`, `line_text_json`,
    /// `quote_free_json`).
    pub text_json: Vec<(JsonPointer, TextClass)>,
    /// The body is multipart, its parts' headers plain text (`plain_text_multipart`):
    /// read whole up to `max_multipart_body_bytes`, never as JSON.
    pub plain_text_multipart: bool,
    /// Body fields that must be ISO 8601 durations of at most this long
    /// (`max_duration_json`), with the bound as written for messages.
    pub max_duration_json: Vec<(JsonPointer, std::time::Duration, String)>,
    /// Pass the client's `Authorization` header upstream on this route.
    pub forward_authorization: bool,
    /// Protocols a client may switch to (lower-case; never `h2c`).
    pub upgrades: Vec<String>,
    /// Honour method-override headers on `POST` (the overriding method is checked).
    pub method_override: bool,
    /// What authenticates on this route.
    pub credentials: Credentials,
    /// Unauthenticated page requests are redirected here (`?next=` the path).
    pub login_redirect: Option<String>,
    /// A successful request here ends the browser session it carried.
    pub ends_session: bool,
    /// The upstream's login form: its email field (POSTs are throttled as logins).
    pub login_form: Option<String>,
    /// The upstream checks the caller's password here: POSTs are throttled as logins
    /// under the caller's email.
    pub reauthentication: bool,
    /// Cross-origin session requests.
    pub cross_origin: CrossOrigin,
}

/// Which credentials a route accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    /// An access token (header, query or, in FlexMeasures mode, JSON body).
    pub token: bool,
    /// FlexMeasures' browser session (`session` / `remember_token` cookies).
    pub session: bool,
}

/// What happens to session-authenticated requests from another origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrossOrigin {
    /// Refused unless the method is safe (GET, HEAD, OPTIONS).
    RefuseWrites,
    /// Refused whatever the method.
    Refuse,
    /// Allowed (the route is meant to be used across sites).
    Allow,
}

impl CrossOrigin {
    /// Whether a session request with this method must come from this site.
    pub fn guards(self, method: &http::Method) -> bool {
        match self {
            CrossOrigin::Allow => false,
            CrossOrigin::Refuse => true,
            CrossOrigin::RefuseWrites => !method.is_safe(),
        }
    }
}

/// Everything a request is decided with; swapped whole on reload.
#[derive(Debug, Clone)]
pub struct RuleSet {
    /// The file it came from.
    pub file: PathBuf,
    /// Admin role names.
    pub admins: AdminRoles,
    /// Token endpoint path.
    pub token_endpoint: String,
    /// Accept `?auth_token=`.
    pub query_token: bool,
    /// Largest login body.
    pub max_login_body_bytes: usize,
    /// Path normalisation switches.
    pub paths: PathOptions,
    /// Status for unmatched requests.
    pub unmatched_status: StatusCode,
    /// Path prefixes under which CORS preflights are forwarded without authentication
    /// on paths a route takes for the method they ask about (`[paths]
    /// cors_preflight_paths`; see `proxy::pipeline::cors_preflight`).
    pub cors_preflight_paths: Vec<Box<str>>,
    /// Identity header names.
    pub identity: IdentityHeaders,
    /// Permission names by id.
    pub permissions: Vec<String>,
    /// Resource kinds.
    pub kinds: Vec<Kind>,
    /// Routes in file order.
    pub routes: Vec<Route>,
    /// Routes in precedence order.
    pub matcher: Matcher,
    /// Whether a route takes uploads (`plain_text_multipart`): the decision listener,
    /// which reads a body before it knows the route, then reads up to the uploads'
    /// limit.
    pub takes_uploads: bool,
}

impl RuleSet {
    /// The name of a permission id.
    pub fn permission_name(&self, p: Permission) -> &str {
        self.permissions
            .get(usize::from(p.0))
            .map_or("unknown", String::as_str)
    }
}

/// A loaded file: start-only settings and the hot-swappable rules.
#[derive(Debug, Clone)]
pub struct Config {
    /// Read at start.
    pub server: ServerConfig,
    /// Swapped on reload.
    pub rules: Arc<RuleSet>,
    /// Warnings worth logging.
    pub warnings: Diagnostics,
}

/// Read, parse and compile a rule file.
pub fn load(path: &Path) -> Result<Config, Diagnostics> {
    let text = std::fs::read_to_string(path).map_err(|e| Diagnostics {
        file: path.to_owned(),
        errors: vec![Diagnostic {
            line: None,
            rule: None,
            message: format!("cannot read the file: {e}"),
        }],
        warnings: Vec::new(),
    })?;
    compile::compile_text(&text, path)
}
