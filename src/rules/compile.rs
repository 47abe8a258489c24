//! Raw TOML -> [`Config`]: every name checked, every template parsed, every principal
//! resolved to a column, every route's shape compared with the others. All problems are
//! collected (not just the first), each with its line, its rule and a way to fix it.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, StatusCode};
use toml::Spanned;

use super::extract::{IdType, JsonPointer, Source, TextClass};
use super::matcher::{Matcher, Methods, Template};
use super::raw::{RawAcl, RawCheck, RawConfig, RawItem, RawKind, RawRoute, RawSource};
use super::{
    AllowedHosts, CacheSettings, Check, Config, Credentials, CrossOrigin, DecisionHeaders,
    Diagnostic, Diagnostics, HttpMode, IdentityHeaders, IdentitySource, IfAbsent, Kind, Limits,
    PathOptions, Route, RuleSet, ServerConfig, Target, ThrottleSettings, TrustedProxies,
};
use crate::policy::acl::parse_term;
use crate::policy::{
    Acl, AdminRoles, Condition, Item, KindPolicy, Permission, RoleRequirements, Term, Value,
};

/// Role names with a built-in meaning somewhere in FlexMeasures, for typo warnings.
const KNOWN_ROLES: &[&str] = &[
    "admin",
    "admin-reader",
    "account-admin",
    "consultant",
    "task-runner",
];
const KNOWN_ACCOUNT_ROLES: &[&str] = &["Consultancy", "MDC", "Prosumer", "Supplier", "ESCo", "DSO"];

/// Compile the text of a rule file named `file`.
pub fn compile_text(text: &str, file: &Path) -> Result<Config, Diagnostics> {
    let mut cx = Compiler {
        lines: super::LineIndex::new(text),
        diagnostics: Diagnostics {
            file: file.to_owned(),
            ..Diagnostics::default()
        },
    };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let line = e.span().map(|s| cx.line_of(s.start));
            let mut message = e.message().trim().to_owned();
            if message.is_empty() {
                // toml has no words for some bytes (NUL and other control characters).
                let at = e
                    .span()
                    .and_then(|s| text.get(s.start..))
                    .and_then(|t| t.chars().next());
                message = match at {
                    Some(c) if c.is_control() => format!(
                        "control character U+{:04X} is not allowed in a TOML file; remove it",
                        u32::from(c)
                    ),
                    _ => "this is not valid TOML".to_owned(),
                };
            }
            cx.error(line, None, message);
            return Err(cx.diagnostics);
        }
    };
    let base = file.parent().unwrap_or(Path::new("."));
    let server = cx.server(&raw, base);
    let admins = AdminRoles {
        admin: raw
            .auth
            .admin_role
            .clone()
            .unwrap_or_else(|| "admin".into()),
        admin_reader: raw
            .auth
            .admin_reader_role
            .clone()
            .unwrap_or_else(|| "admin-reader".into()),
    };
    for (what, name) in [
        ("admin_role", &admins.admin),
        ("admin_reader_role", &admins.admin_reader),
    ] {
        if let Err(e) = check_role_name(name) {
            cx.error(None, Some("[auth]".into()), format!("{what}: {e}"));
        }
    }
    let permissions = cx.permissions(&raw.permissions);
    let kinds = cx.kinds(&raw.kinds, &permissions);
    let paths = PathOptions {
        allow_semicolons: raw.paths.allow_semicolons.unwrap_or(false),
        allow_empty_segments: raw.paths.allow_empty_segments.unwrap_or(false),
        case_insensitive: raw.paths.case_insensitive.unwrap_or(false),
    };
    let default_credentials = cx
        .credentials(raw.auth.credentials.as_deref(), None, "[auth]")
        .unwrap_or(Credentials {
            token: true,
            session: false,
        });
    let routes = cx.routes(
        &raw.routes,
        &kinds,
        &permissions,
        &admins,
        default_credentials,
    );
    if server.decision.is_some() {
        for r in routes.iter().filter(|r| r.needs_body) {
            let what = if r.plain_text_multipart {
                "an upload: its parts' headers"
            } else {
                "JSON or a form: ids, refused or admins-only fields, text classes"
            };
            cx.warn(
                Some(r.line),
                Some(format!("route {:?}", &*r.name)),
                format!("reads the body ({what}), which nginx and Caddy do not send to a decision listener: decision mode refuses it (403) unless the body comes along (Traefik forwardBody, Envoy with_request_body)"),
            );
        }
    }
    if server.identity_source == IdentitySource::Native
        && let Some(r) = routes.iter().find(|r| r.login_form.is_some())
    {
        cx.warn(
            Some(r.line),
            Some(format!("route {:?}", &*r.name)),
            "login_form counts an upstream login form's attempts by the session FlexMeasures answers with, so only with [identity] source = \"flexmeasures\": here its attempts are not counted".into(),
        );
    }
    if let Some(r) = routes.iter().find(|r| {
        r.login_form.as_deref().is_some_and(|f| f.is_empty())
            || (r.login_form.is_some() && !r.methods.allows(&http::Method::POST))
    }) {
        cx.error(
            Some(r.line),
            Some(format!("route {:?}", &*r.name)),
            "login_form names the form's email field (login_form = \"email\") on a route that takes POST".into(),
        );
    }
    if server.identity_source == IdentitySource::Native
        && let Some(r) = routes.iter().find(|r| r.reauthentication)
    {
        cx.warn(
            Some(r.line),
            Some(format!("route {:?}", &*r.name)),
            "reauthentication counts an upstream's password checks by the answer FlexMeasures gives, so only with [identity] source = \"flexmeasures\": here they are not counted".into(),
        );
    }
    if let Some(r) = routes
        .iter()
        .find(|r| r.reauthentication && (r.public || !r.methods.allows(&http::Method::POST)))
    {
        cx.error(
            Some(r.line),
            Some(format!("route {:?}", &*r.name)),
            "reauthentication counts the signed-in caller's password checks: the route must take POST and must not be auth = \"public\"".into(),
        );
    }
    if server.identity_source == IdentitySource::Native
        && let Some(r) = routes.iter().find(|r| r.credentials.session && !r.public)
    {
        cx.warn(
            Some(r.line),
            Some(format!("route {:?}", &*r.name)),
            "accepts \"session\" credentials, but sessions are FlexMeasures' and authenticate only with [identity] source = \"flexmeasures\"".into(),
        );
    }
    cx.overlaps(&routes, paths.case_insensitive);

    let token_endpoint = raw
        .auth
        .token_endpoint
        .clone()
        .unwrap_or_else(|| "/api/requestAuthToken".into());
    match Template::parse(&token_endpoint) {
        Ok(t) if t.params.is_empty() => {
            for route in &routes {
                if route.template.matches(&token_endpoint, paths.case_insensitive).is_some() {
                    cx.warn(
                        Some(route.line),
                        Some(format!("route {:?}", &*route.name)),
                        format!("never sees {token_endpoint}: flexgate answers the token endpoint itself"),
                    );
                }
            }
        }
        _ => cx.error(
            None,
            Some("[auth]".into()),
            format!("token_endpoint {token_endpoint:?} must be a plain path such as /api/requestAuthToken"),
        ),
    }
    let unmatched_status = match raw.paths.unmatched_status.unwrap_or(404) {
        403 => StatusCode::FORBIDDEN,
        404 => StatusCode::NOT_FOUND,
        other => {
            cx.error(
                None,
                Some("[paths]".into()),
                format!("unmatched_status = {other}: use 403 or 404"),
            );
            StatusCode::NOT_FOUND
        }
    };
    let identity = cx.identity(
        raw.identity
            .header_prefix
            .as_deref()
            .unwrap_or("X-Flexgate-"),
    );
    let max_login_body_bytes = raw.auth.max_login_body_bytes.unwrap_or(4096);
    if !(256..=1 << 20).contains(&max_login_body_bytes) {
        cx.error(
            None,
            Some("[auth]".into()),
            "max_login_body_bytes must be between 256 and 1048576".into(),
        );
    }
    if server.limits.max_buffered_body_bytes / 8 < max_login_body_bytes {
        cx.error(
            None,
            Some("[server.limits]".into()),
            format!(
                "max_buffered_body_bytes = {}: logins get an eighth of it, less than one login of max_login_body_bytes = {max_login_body_bytes}; raise it to at least {}",
                server.limits.max_buffered_body_bytes,
                max_login_body_bytes * 8
            ),
        );
    }
    let limits = &server.limits;
    let shared = limits.max_buffered_body_bytes - limits.max_buffered_body_bytes / 8;
    if let Some(upload) = routes.iter().find(|r| r.plain_text_multipart)
        && shared < limits.max_multipart_body_bytes
    {
        cx.error(
            Some(upload.line),
            Some(format!("route {:?}", &*upload.name)),
            format!(
                "plain_text_multipart reads bodies of up to max_multipart_body_bytes = {}, more than the {shared} bytes max_buffered_body_bytes = {} leaves beside the logins' eighth; raise max_buffered_body_bytes or lower max_multipart_body_bytes",
                limits.max_multipart_body_bytes, limits.max_buffered_body_bytes
            ),
        );
    }

    let mut cors_preflight_paths = Vec::new();
    for prefix in &raw.paths.cors_preflight_paths {
        if prefix.starts_with('/') && Template::parse(prefix).is_ok() {
            cors_preflight_paths.push(Box::from(prefix.as_str()));
        } else {
            cx.error(
                None,
                Some("[paths]".into()),
                format!("cors_preflight_paths: {prefix:?} is not a path prefix; write one as requests arrive normalised, e.g. \"/api/\""),
            );
        }
    }
    if !cx.diagnostics.errors.is_empty() {
        return Err(cx.diagnostics);
    }
    let matcher = Matcher::build(
        routes
            .iter()
            .map(|r| (r.template.clone(), r.methods.clone()))
            .collect(),
        paths.case_insensitive,
    );
    let rules = RuleSet {
        file: file.to_owned(),
        admins,
        token_endpoint,
        query_token: raw.auth.query_token.unwrap_or(false),
        max_login_body_bytes,
        paths,
        unmatched_status,
        cors_preflight_paths,
        identity: identity.expect("identity errors were reported above"),
        permissions,
        kinds,
        takes_uploads: routes.iter().any(|r| r.plain_text_multipart),
        routes,
        matcher,
    };
    Ok(Config {
        server,
        rules: Arc::new(rules),
        warnings: cx.diagnostics,
    })
}

struct Compiler {
    lines: super::LineIndex,
    diagnostics: Diagnostics,
}

impl Compiler {
    fn line_of(&self, offset: usize) -> usize {
        self.lines.line_of(offset)
    }

    fn error(&mut self, line: Option<usize>, rule: Option<String>, message: String) {
        self.diagnostics.errors.push(Diagnostic {
            line,
            rule,
            message,
        });
    }

    fn warn(&mut self, line: Option<usize>, rule: Option<String>, message: String) {
        self.diagnostics.warnings.push(Diagnostic {
            line,
            rule,
            message,
        });
    }

    // === [server], [cache], [auth.throttle] ===

    fn server(&mut self, raw: &RawConfig, base: &Path) -> ServerConfig {
        let s = &raw.server;
        let ctx = Some("[server]".to_owned());
        let addr = |cx: &mut Self, key: &str, value: &Option<String>| -> Option<SocketAddr> {
            let v = value.as_ref()?;
            match v.parse() {
                Ok(a) => Some(a),
                Err(_) => {
                    cx.error(None, ctx.clone(), format!("{key} = {v:?} is not an address; write host:port, e.g. \"0.0.0.0:8443\""));
                    None
                }
            }
        };
        let https = addr(self, "https", &s.https);
        let http = addr(self, "http", &s.http);
        let admin = addr(self, "admin", &s.admin);
        let decision = addr(self, "decision", &s.decision);
        let decision_client_ca = s.decision_client_ca.as_ref().map(|p| base.join(p));
        if let Some(d) = decision
            && !d.ip().is_loopback()
            && decision_client_ca.is_none()
        {
            self.warn(None, ctx.clone(), format!("decision = \"{d}\" is not a loopback address: the decision listener trusts the headers that describe requests, so only the ingress may reach it; bind 127.0.0.1 (or a private address), or require the ingress's client certificate with decision_client_ca, and set FLEXGATE_DECISION_SECRET"));
        }
        if decision_client_ca.is_some() && decision.is_none() {
            self.error(
                None,
                ctx.clone(),
                "decision_client_ca is set but decision is not; add decision = \"host:port\" or remove decision_client_ca".into(),
            );
        }
        let http_mode = match s.http_mode.as_deref() {
            None | Some("redirect") => HttpMode::Redirect,
            Some("proxy") => HttpMode::Proxy,
            Some(other) => {
                self.error(
                    None,
                    ctx.clone(),
                    format!("http_mode = {other:?}: use \"redirect\" or \"proxy\""),
                );
                HttpMode::Redirect
            }
        };
        let tls = match (&s.tls_cert, &s.tls_key) {
            (Some(c), Some(k)) => Some((base.join(c), base.join(k))),
            (None, None) => None,
            _ => {
                self.error(
                    None,
                    ctx.clone(),
                    "set both tls_cert and tls_key, or neither".into(),
                );
                None
            }
        };
        if https.is_some() && tls.is_none() {
            self.error(
                None,
                ctx.clone(),
                "https is set but tls_cert and tls_key are not; add the PEM files".into(),
            );
        }
        if decision_client_ca.is_some() && tls.is_none() {
            self.error(
                None,
                ctx.clone(),
                "decision_client_ca makes the decision listener speak TLS with tls_cert and tls_key, which are not set; add the PEM files".into(),
            );
        }
        if http_mode == HttpMode::Redirect && http.is_some() && https.is_none() {
            self.error(None, ctx.clone(), "http_mode = \"redirect\" needs an https listener to redirect to; add https or set http_mode = \"proxy\"".into());
        }
        let upstream = s.upstream.as_ref().and_then(|u| match u.parse::<http::Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.authority().is_some()
                    && matches!(uri.path(), "" | "/")
                    && uri.query().is_none() =>
            {
                Some(uri)
            }
            _ => {
                self.error(None, ctx.clone(), format!("upstream = {u:?}: write a base URL such as \"http://127.0.0.1:5000\" (no path)"));
                None
            }
        });
        let d = Limits::default();
        let l = &s.limits;
        let limit =
            |cx: &mut Self, key: &str, v: Option<u64>, min: u64, max: u64, default: u64| -> u64 {
                match v {
                    None => default,
                    Some(v) if (min..=max).contains(&v) => v,
                    Some(v) => {
                        cx.error(
                            None,
                            Some("[server.limits]".into()),
                            format!("{key} = {v} is outside {min}..={max}"),
                        );
                        default
                    }
                }
            };
        let limits = Limits {
            max_header_bytes: limit(
                self,
                "max_header_bytes",
                l.max_header_bytes.map(|v| v as u64),
                1024,
                1 << 20,
                d.max_header_bytes as u64,
            ) as usize,
            header_read_timeout: Duration::from_millis(limit(
                self,
                "header_read_timeout_ms",
                l.header_read_timeout_ms,
                100,
                300_000,
                d.header_read_timeout.as_millis() as u64,
            )),
            idle_timeout: Duration::from_secs(limit(
                self,
                "idle_timeout_secs",
                l.idle_timeout_secs,
                1,
                3600,
                d.idle_timeout.as_secs(),
            )),
            max_connections: limit(
                self,
                "max_connections",
                l.max_connections.map(|v| v as u64),
                1,
                1_000_000,
                d.max_connections as u64,
            ) as usize,
            max_connections_per_client: limit(
                self,
                "max_connections_per_client",
                l.max_connections_per_client.map(|v| v as u64),
                0,
                1_000_000,
                d.max_connections_per_client as u64,
            ) as usize,
            max_json_body_bytes: limit(
                self,
                "max_json_body_bytes",
                l.max_json_body_bytes.map(|v| v as u64),
                64,
                64 << 20,
                d.max_json_body_bytes as u64,
            ) as usize,
            max_multipart_body_bytes: limit(
                self,
                "max_multipart_body_bytes",
                l.max_multipart_body_bytes.map(|v| v as u64),
                4096,
                64 << 20,
                d.max_multipart_body_bytes as u64,
            ) as usize,
            body_read_timeout: Duration::from_millis(limit(
                self,
                "body_read_timeout_ms",
                l.body_read_timeout_ms,
                100,
                600_000,
                d.body_read_timeout.as_millis() as u64,
            )),
            max_buffered_body_bytes: limit(
                self,
                "max_buffered_body_bytes",
                l.max_buffered_body_bytes.map(|v| v as u64),
                4096,
                1 << 40,
                d.max_buffered_body_bytes as u64,
            ) as usize,
            upstream_connect_timeout: Duration::from_millis(limit(
                self,
                "upstream_connect_timeout_ms",
                l.upstream_connect_timeout_ms,
                10,
                60_000,
                d.upstream_connect_timeout.as_millis() as u64,
            )),
            upstream_timeout: Duration::from_secs(limit(
                self,
                "upstream_timeout_secs",
                l.upstream_timeout_secs,
                1,
                3600,
                d.upstream_timeout.as_secs(),
            )),
            upstream_idle: Duration::from_secs(limit(
                self,
                "upstream_idle_secs",
                l.upstream_idle_secs,
                1,
                3600,
                d.upstream_idle.as_secs(),
            )),
            shutdown_grace: Duration::from_secs(limit(
                self,
                "shutdown_grace_secs",
                l.shutdown_grace_secs,
                0,
                3600,
                d.shutdown_grace.as_secs(),
            )),
        };
        if limits.max_buffered_body_bytes < limits.max_json_body_bytes {
            self.error(
                None,
                Some("[server.limits]".into()),
                format!(
                    "max_buffered_body_bytes = {} is below max_json_body_bytes = {}: no body that size could ever be read; raise it (it bounds all bodies held at once) or lower max_json_body_bytes",
                    limits.max_buffered_body_bytes, limits.max_json_body_bytes
                ),
            );
        }
        let c = &raw.cache;
        let dc = CacheSettings::default();
        let secs = |v: Option<u64>, d: Duration| v.map_or(d, Duration::from_secs);
        let cache = CacheSettings {
            principal_ttl: secs(c.principal_ttl_secs, dc.principal_ttl),
            owner_ttl: secs(c.owner_ttl_secs, dc.owner_ttl),
            owner_negative_ttl: secs(c.owner_negative_ttl_secs, dc.owner_negative_ttl),
            owner_capacity: c.owner_capacity.unwrap_or(dc.owner_capacity),
            principal_capacity: c.principal_capacity.unwrap_or(dc.principal_capacity),
            token_capacity: c.token_capacity.unwrap_or(dc.token_capacity),
        };
        if cache.principal_ttl.is_zero() || cache.principal_ttl > Duration::from_secs(3600) {
            self.error(
                None,
                Some("[cache]".into()),
                "principal_ttl_secs must be between 1 and 3600".into(),
            );
        }
        let t = &raw.auth.throttle;
        let dt = ThrottleSettings::default();
        let throttle = ThrottleSettings {
            failures_per_email: t.failures_per_email.unwrap_or(dt.failures_per_email),
            failures_per_client: t.failures_per_client.unwrap_or(dt.failures_per_client),
            window: secs(t.window_secs, dt.window),
        };
        if throttle.failures_per_email == 0
            || throttle.failures_per_client == 0
            || throttle.window.is_zero()
        {
            self.error(
                None,
                Some("[auth.throttle]".into()),
                "failures and window must be at least 1".into(),
            );
        }
        ServerConfig {
            https,
            http,
            http_mode,
            admin,
            decision,
            decision_client_ca,
            tls,
            upstream,
            upstream_ca: s.upstream_ca.as_ref().map(|p| base.join(p)),
            hsts_max_age: s.hsts_max_age.unwrap_or(31_536_000),
            workers: match s.workers {
                None => std::thread::available_parallelism().map_or(1, |n| n.get()),
                Some(n) if (1..=256).contains(&n) => n,
                Some(n) => {
                    self.error(
                        None,
                        ctx.clone(),
                        format!("workers = {n}: use 1 to 256 (default: one per CPU)"),
                    );
                    1
                }
            },
            rules_poll: match s.rules_poll_secs.unwrap_or(2) {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
            limits,
            cache,
            throttle,
            max_concurrent_logins: raw.auth.max_concurrent_logins.unwrap_or(4).max(1),
            forward_authorization: raw.identity.forward_authorization.unwrap_or(false),
            audit_allows: raw.audit.log_allows.unwrap_or(false),
            allowed_hosts: self.allowed_hosts(s.allowed_hosts.as_deref()),
            trusted_proxies: self.trusted_proxies(s.trusted_proxies.as_deref()),
            decision_headers: self.decision_headers(&s.decision_headers),
            preserve_host: s.preserve_host.unwrap_or(false),
            identity_source: self.identity_source(&raw.identity),
            shadow: raw.shadow.rules.as_ref().map(|p| base.join(p)),
        }
    }

    fn identity_source(&mut self, raw: &super::raw::RawIdentity) -> IdentitySource {
        let ctx = Some("[identity]".to_owned());
        let revalidate = match raw.revalidate_ms {
            None => Duration::from_secs(1),
            Some(ms) if (100..=5000).contains(&ms) => Duration::from_millis(ms),
            Some(ms) => {
                self.error(None, ctx.clone(), format!("revalidate_ms = {ms}: use 100 to 5000 (changes in FlexMeasures must reach flexgate within seconds)"));
                Duration::from_secs(1)
            }
        };
        match raw.source.as_deref() {
            None | Some("native") => {
                if raw.revalidate_ms.is_some() {
                    self.warn(
                        None,
                        ctx,
                        "revalidate_ms only applies with source = \"flexmeasures\"".into(),
                    );
                }
                IdentitySource::Native
            }
            Some("flexmeasures") => IdentitySource::FlexMeasures { revalidate },
            Some(other) => {
                self.error(None, ctx, format!("source = {other:?}: use \"native\" (flexgate's own tables) or \"flexmeasures\" (FlexMeasures' tables, tokens and passwords)"));
                IdentitySource::Native
            }
        }
    }

    fn allowed_hosts(&mut self, patterns: Option<&[String]>) -> AllowedHosts {
        let ctx = Some("[server]".to_owned());
        let patterns = patterns.unwrap_or_default();
        if patterns.is_empty() {
            self.warn(
                None,
                ctx.clone(),
                "allowed_hosts is empty: any Host is accepted and forwarded; list the names clients use, e.g. allowed_hosts = [\"api.example.com\", \"*.example.com\"]".into(),
            );
        }
        for p in patterns {
            let name = p.strip_prefix("*.").unwrap_or(p);
            let valid = !name.is_empty()
                && name.len() <= 253
                && !name.starts_with('.')
                && !name.ends_with('.')
                && !name.contains("..")
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
                || name.parse::<std::net::Ipv4Addr>().is_ok()
                || (name.starts_with('[') && name.ends_with(']'));
            if !valid || (p.starts_with('*') && !p.starts_with("*.")) {
                self.error(
                    None,
                    ctx.clone(),
                    format!("allowed_hosts: {p:?} is not a host name; write a name such as \"api.example.com\" or a wildcard such as \"*.example.com\" (no port, no scheme)"),
                );
            }
        }
        AllowedHosts::new(patterns.iter().map(String::as_str))
    }

    fn decision_headers(&mut self, raw: &super::raw::RawDecisionHeaders) -> DecisionHeaders {
        let mut name = |key: &str, value: &Option<String>| -> Option<String> {
            let v = value.as_ref()?.to_ascii_lowercase();
            // Headers with a meaning of their own to HTTP or to flexgate.
            const RESERVED: &[&str] = &[
                "host",
                "connection",
                "keep-alive",
                "proxy-connection",
                "te",
                "trailer",
                "transfer-encoding",
                "upgrade",
                "content-length",
                "content-type",
                "cookie",
                "authorization",
                "proxy-authorization",
                "x-forwarded-for",
                "x-http-method-override",
                "x-http-method",
                "x-method-override",
            ];
            let reserved = RESERVED.contains(&v.as_str()) || v.starts_with("x-flexgate-");
            if http::HeaderName::from_bytes(v.as_bytes()).is_err() || reserved {
                self.error(
                    None,
                    Some("[server.decision_headers]".to_owned()),
                    format!("{key} = {v:?} cannot describe a request: use a header name of your ingress's own, e.g. \"X-Original-Method\" (not Host, a hop-by-hop header or an X-Flexgate-* one)"),
                );
                return None;
            }
            Some(v)
        };
        DecisionHeaders {
            method: name("method", &raw.method),
            uri: name("uri", &raw.uri),
            host: name("host", &raw.host),
            proto: name("proto", &raw.proto),
        }
    }

    fn trusted_proxies(&mut self, entries: Option<&[String]>) -> TrustedProxies {
        let mut nets = Vec::new();
        for entry in entries.unwrap_or_default() {
            match TrustedProxies::parse(entry) {
                Some(net) => nets.push(net),
                None => self.error(
                    None,
                    Some("[server]".to_owned()),
                    format!("trusted_proxies: {entry:?} is not an address or network; write e.g. \"127.0.0.1\", \"10.0.0.0/8\" or \"fd00::/8\""),
                ),
            }
        }
        TrustedProxies::new(nets)
    }

    fn permissions(&mut self, declared: &[Spanned<String>]) -> Vec<String> {
        let mut names: Vec<String> = Permission::BUILTIN.iter().map(|s| s.to_string()).collect();
        for p in declared {
            let line = Some(self.line_of(p.span().start));
            let name = p.get_ref();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                self.error(
                    line,
                    None,
                    format!("permission {name:?}: use lower-case letters, digits and '-'"),
                );
            } else if names.contains(name) {
                self.error(
                    line,
                    None,
                    format!("permission {name:?} is declared twice or is built in"),
                );
            } else {
                names.push(name.clone());
            }
        }
        names
    }

    fn permission(
        &mut self,
        name: &str,
        known: &[String],
        line: Option<usize>,
        rule: &str,
    ) -> Option<Permission> {
        match known.iter().position(|k| k == name) {
            Some(i) => Some(Permission(i as u16)),
            None => {
                let hint = did_you_mean(name, known.iter().map(String::as_str))
                    .map(|s| format!("did you mean {s:?}? "))
                    .unwrap_or_default();
                self.error(
                    line,
                    Some(rule.to_owned()),
                    format!("unknown permission {name:?}; {hint}use one of {} or declare it in `permissions`", known.join(", ")),
                );
                None
            }
        }
    }

    // === [kind.*] ===

    fn kinds(
        &mut self,
        raw: &BTreeMap<Spanned<String>, RawKind>,
        permissions: &[String],
    ) -> Vec<Kind> {
        let mut kinds = Vec::new();
        for (name, kind) in raw {
            let line = Some(self.line_of(name.span().start));
            let name = name.get_ref().clone();
            let rule = format!("kind {name:?}");
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            {
                self.error(
                    line,
                    Some(rule.clone()),
                    "kind names use lower-case letters, digits, '-' and '_'".into(),
                );
            }
            if let Some(k) = self.kind(&name, kind, permissions, line, &rule) {
                kinds.push(k);
            }
        }
        kinds
    }

    fn kind(
        &mut self,
        name: &str,
        raw: &RawKind,
        permissions: &[String],
        line: Option<usize>,
        rule: &str,
    ) -> Option<Kind> {
        let query = match &raw.query {
            Some(q) => {
                if !q.contains("$1") {
                    self.error(line, Some(rule.into()), "query must use $1 for the id, e.g. \"SELECT account_id FROM asset WHERE id = $1\"".into());
                }
                if raw.columns.is_empty() {
                    self.error(line, Some(rule.into()), "columns is empty: list the columns the query returns, in order, e.g. columns = [\"account_id\"]".into());
                }
                Some(Arc::<str>::from(q.as_str()))
            }
            None => {
                if !raw.columns.is_empty() || raw.id.is_some() {
                    self.error(line, Some(rule.into()), "a kind without a query is a singleton: remove columns and id, or add the query".into());
                }
                None
            }
        };
        for (i, c) in raw.columns.iter().enumerate() {
            if c.is_empty() || !c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                self.error(
                    line,
                    Some(rule.into()),
                    format!(
                        "column {c:?}: use letters, digits and '_' (alias it in the query with AS)"
                    ),
                );
            }
            if raw.columns[..i].contains(c) {
                self.error(
                    line,
                    Some(rule.into()),
                    format!("column {c:?} is listed twice"),
                );
            }
        }
        let id_type = match raw.id.as_deref() {
            None | Some("integer") => IdType::Integer,
            Some("text") => IdType::Text,
            Some(other) => {
                self.error(
                    line,
                    Some(rule.into()),
                    format!("id = {other:?}: use \"integer\" or \"text\""),
                );
                IdType::Integer
            }
        };
        let label = raw.label.clone().unwrap_or_else(|| capitalize(name));
        let not_found_status = self
            .not_found_status(raw.not_found_status, line, rule)
            .unwrap_or(StatusCode::NOT_FOUND);
        let not_found_message = raw
            .not_found_message
            .clone()
            .unwrap_or_else(|| format!("{label} {{id}} not found"));
        let column = |n: &str| raw.columns.iter().position(|c| c == n);
        let acls = self.acl_set(&raw.acl, permissions, &column, line, rule);
        let mut cases = Vec::new();
        for case in &raw.cases {
            let Some(col) = column(&case.column) else {
                self.error(
                    line,
                    Some(rule.into()),
                    format!(
                        "case column {:?} is not in columns ({})",
                        case.column,
                        raw.columns.join(", ")
                    ),
                );
                continue;
            };
            let condition = match (case.is_null, &case.equals) {
                (Some(true), None) => Condition::IsNull(col),
                (Some(false), None) => Condition::NotNull(col),
                (None, Some(v)) => match toml_to_value(v) {
                    Some(v) => Condition::Equals(col, v),
                    None => {
                        self.error(
                            line,
                            Some(rule.into()),
                            "case equals must be a string, an integer or a boolean".into(),
                        );
                        continue;
                    }
                },
                _ => {
                    self.error(
                        line,
                        Some(rule.into()),
                        "a case needs exactly one test: is_null = true|false, or equals = <value>"
                            .into(),
                    );
                    continue;
                }
            };
            cases.push((
                condition,
                self.acl_set(&case.acl, permissions, &column, line, rule),
            ));
        }
        let mut hasher = DefaultHasher::new();
        (name, &raw.query, &raw.columns, raw.id.as_deref()).hash(&mut hasher);
        // A kind with errors is still returned, so routes naming it do not report
        // cascading "unknown kind" errors; the errors already fail the compile.
        Some(Kind {
            name: name.to_owned(),
            label,
            query,
            columns: raw.columns.clone(),
            id_type,
            not_found_status,
            not_found_message,
            policy: KindPolicy { acls, cases },
            fingerprint: hasher.finish(),
        })
    }

    fn not_found_status(
        &mut self,
        status: Option<u16>,
        line: Option<usize>,
        rule: &str,
    ) -> Option<StatusCode> {
        match status? {
            404 => Some(StatusCode::NOT_FOUND),
            422 => Some(StatusCode::UNPROCESSABLE_ENTITY),
            other => {
                self.error(
                    line,
                    Some(rule.into()),
                    format!("not_found_status = {other}: use 404 or 422"),
                );
                None
            }
        }
    }

    fn acl_set(
        &mut self,
        raw: &BTreeMap<String, RawAcl>,
        permissions: &[String],
        column: &dyn Fn(&str) -> Option<usize>,
        line: Option<usize>,
        rule: &str,
    ) -> Vec<Option<Acl>> {
        let mut set = vec![None; permissions.len()];
        for (perm, acl) in raw {
            let Some(p) = self.permission(perm, permissions, line, rule) else {
                continue;
            };
            let groups: Vec<Vec<String>> = match acl {
                RawAcl::One(s) => vec![vec![s.clone()]],
                RawAcl::Many(items) => items
                    .iter()
                    .map(|i| match i {
                        RawItem::One(s) => vec![s.clone()],
                        RawItem::All(v) => v.clone(),
                    })
                    .collect(),
            };
            let mut items = Vec::new();
            for group in groups {
                let mut terms = Vec::new();
                for text in &group {
                    match parse_term(text, column) {
                        Ok(t) => terms.push(t),
                        Err(e) => self.error(line, Some(format!("{rule}, acl {perm:?}")), e),
                    }
                }
                if group.is_empty() {
                    self.warn(
                        line,
                        Some(format!("{rule}, acl {perm:?}")),
                        "an empty group never matches; remove it".into(),
                    );
                }
                if terms.contains(&Term::EveryLoggedInUser) && terms.len() > 1 {
                    self.warn(
                        line,
                        Some(format!("{rule}, acl {perm:?}")),
                        format!("{group:?} matches every logged-in user: the other principals in the group are ignored (FlexMeasures semantics)"),
                    );
                }
                items.push(Item {
                    source: if group.len() == 1 {
                        group[0].clone()
                    } else {
                        format!("({})", group.join(", "))
                    },
                    terms,
                });
            }
            set[usize::from(p.0)] = Some(Acl { items });
        }
        set
    }

    // === [[route]] ===

    fn credentials(
        &mut self,
        raw: Option<&[String]>,
        line: Option<usize>,
        rule: &str,
    ) -> Option<Credentials> {
        let raw = raw?;
        let mut c = Credentials {
            token: false,
            session: false,
        };
        for name in raw {
            match name.as_str() {
                "token" => c.token = true,
                "session" => c.session = true,
                other => self.error(line, Some(rule.into()), format!("credentials: {other:?} is not a credential; use \"token\", \"session\" or both")),
            }
        }
        if !c.token && !c.session {
            self.error(
                line,
                Some(rule.into()),
                "credentials is empty: list \"token\", \"session\" or both (or auth = \"public\")"
                    .into(),
            );
            return None;
        }
        Some(c)
    }

    fn routes(
        &mut self,
        raw: &[RawRoute],
        kinds: &[Kind],
        permissions: &[String],
        admins: &AdminRoles,
        default_credentials: Credentials,
    ) -> Vec<Route> {
        let mut routes: Vec<Route> = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for r in raw {
            let line = self.line_of(r.name.span().start);
            let name = r.name.get_ref();
            let rule = format!("route {name:?}");
            if name.is_empty()
                || name.len() > 100
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
            {
                self.error(
                    Some(line),
                    Some(rule.clone()),
                    "names use letters, digits, '-', '_', '.' and ':' (at most 100)".into(),
                );
            }
            if let Some(first) = seen.insert(name.clone(), line) {
                self.error(
                    Some(line),
                    Some(rule.clone()),
                    format!("duplicate name; line {first} already uses it"),
                );
            }
            if let Some(route) = self.route(
                r,
                line,
                &rule,
                kinds,
                permissions,
                admins,
                default_credentials,
            ) {
                routes.push(route);
            }
        }
        routes
    }

    #[allow(clippy::too_many_arguments)]
    fn route(
        &mut self,
        r: &RawRoute,
        line: usize,
        rule: &str,
        kinds: &[Kind],
        permissions: &[String],
        admins: &AdminRoles,
        default_credentials: Credentials,
    ) -> Option<Route> {
        let l = Some(line);
        let methods = Methods::parse(&r.methods)
            .map_err(|e| self.error(l, Some(rule.into()), e))
            .ok();
        let template = Template::parse(&r.path)
            .map_err(|e| self.error(l, Some(rule.into()), e))
            .ok();
        let public = match r.auth.as_deref() {
            None | Some("token") => false,
            Some("public") => true,
            Some(other) => {
                self.error(
                    l,
                    Some(rule.into()),
                    format!("auth = {other:?}: use \"token\" (default) or \"public\""),
                );
                false
            }
        };
        let roles = RoleRequirements {
            required: self.roles(&r.roles_required, KNOWN_ROLES, admins, l, rule),
            accepted: self.roles(&r.roles_accepted, KNOWN_ROLES, admins, l, rule),
            account_required: self.roles(
                &r.account_roles_required,
                KNOWN_ACCOUNT_ROLES,
                admins,
                l,
                rule,
            ),
            account_accepted: self.roles(
                &r.account_roles_accepted,
                KNOWN_ACCOUNT_ROLES,
                admins,
                l,
                rule,
            ),
            admin_passes_required: r.admin_bypass.unwrap_or(true),
        };
        if public && (!roles.is_empty() || !r.checks.is_empty()) {
            self.error(l, Some(rule.into()), "a public route cannot have role requirements or checks; remove auth = \"public\" or them".into());
        }
        let mut template = template?;
        if r.trailing_slash == Some(true) {
            if template.can_take_trailing_slash() {
                template.trailing_slash = true;
            } else {
                self.error(
                    l,
                    Some(rule.into()),
                    format!(
                        "trailing_slash = true on path {:?}, which ends in '/' or a catch-all already; remove trailing_slash",
                        template.text
                    ),
                );
            }
        }
        let mut checks = Vec::new();
        for (i, c) in r.checks.iter().enumerate() {
            let first = checks.first();
            if let Some(check) = self.check(c, i, first, &template, kinds, permissions, l, rule) {
                checks.push(check);
            }
        }
        if checks.len() != r.checks.len() {
            return None;
        }
        let resolve_before_auth = r.resolve_before_auth.unwrap_or(false);
        if resolve_before_auth && checks.is_empty() {
            self.error(
                l,
                Some(rule.into()),
                "resolve_before_auth needs at least one check".into(),
            );
        }
        let mut pointers = |key: &str, texts: &Option<Vec<String>>| {
            let mut out = Vec::new();
            for text in texts.iter().flatten() {
                match JsonPointer::parse(text) {
                    Ok(pointer) => out.push(pointer),
                    Err(e) => self.error(l, Some(rule.into()), format!("{key}: {e}")),
                }
            }
            out
        };
        let refuse_json = pointers("refuse_json", &r.refuse_json);
        let admins_only_json = pointers("admins_only_json", &r.admins_only_json);
        let text_json: Vec<(JsonPointer, TextClass)> = [
            ("plain_text_json", &r.plain_text_json, TextClass::Plain),
            ("line_text_json", &r.line_text_json, TextClass::Line),
            ("quote_free_json", &r.quote_free_json, TextClass::QuoteFree),
        ]
        .into_iter()
        .flat_map(|(key, texts, class)| pointers(key, texts).into_iter().map(move |p| (p, class)))
        .collect();
        let mut max_duration_json = Vec::new();
        for (text, bound) in r.max_duration_json.iter().flatten() {
            let Some(max) = super::duration::upper_bound(bound) else {
                self.error(
                    l,
                    Some(rule.into()),
                    format!("max_duration_json: {bound:?} for {text} is not an ISO 8601 duration such as \"P31D\" or \"PT48H\""),
                );
                continue;
            };
            match JsonPointer::parse(text) {
                Ok(pointer) => max_duration_json.push((pointer, max, bound.clone())),
                Err(e) => self.error(l, Some(rule.into()), format!("max_duration_json: {e}")),
            }
        }
        let refuse_query = r.refuse_query.clone().unwrap_or_default();
        if refuse_query.iter().any(String::is_empty) {
            self.error(
                l,
                Some(rule.into()),
                "refuse_query names query parameters, as in refuse_query = [\"output-path\"]"
                    .into(),
            );
        }
        let plain_text_multipart = r.plain_text_multipart.unwrap_or(false);
        if public
            && !(refuse_json.is_empty()
                && refuse_query.is_empty()
                && admins_only_json.is_empty()
                && max_duration_json.is_empty()
                && text_json.is_empty()
                && !plain_text_multipart)
        {
            self.error(
                l,
                Some(rule.into()),
                "refuse_json, refuse_query, admins_only_json, max_duration_json and the text classes (plain_text_json, line_text_json, quote_free_json, plain_text_multipart) apply to routes that authorize: a public route reads no body; take them out, or drop auth = \"public\"".into(),
            );
        }
        let reads_json = !refuse_json.is_empty()
            || !admins_only_json.is_empty()
            || !max_duration_json.is_empty()
            || !text_json.is_empty()
            || checks.iter().any(|c| match &c.target {
                Target::Sources(s) => s.iter().any(|(_, src)| src.needs_body()),
                Target::Singleton(_) => false,
            });
        if plain_text_multipart && reads_json {
            self.error(
                l,
                Some(rule.into()),
                "plain_text_multipart reads the body as multipart/form-data, which holds no JSON: take out the JSON and form options and the checks that read the body, or plain_text_multipart".into(),
            );
        }
        let needs_body = reads_json || plain_text_multipart;
        let reads_form = checks.iter().any(|c| match &c.target {
            Target::Sources(s) => s.iter().any(|(_, src)| matches!(src, Source::Form { .. })),
            Target::Singleton(_) => false,
        });
        let json_strings = r.json_strings.clone().unwrap_or_default();
        if json_strings.iter().any(String::is_empty) {
            self.error(
                l,
                Some(rule.into()),
                "json_strings names top-level body fields, as in json_strings = [\"flex_model\"]"
                    .into(),
            );
        }
        if !json_strings.is_empty() && !reads_json {
            self.warn(
                l,
                Some(rule.into()),
                "json_strings has no effect: no check on this route reads the body".into(),
            );
        }
        let upgrades: Vec<String> = r
            .upgrades
            .clone()
            .unwrap_or_else(|| vec!["websocket".to_owned()])
            .iter()
            .map(|p| p.to_ascii_lowercase())
            .collect();
        for p in &upgrades {
            if p == "h2c" {
                self.error(l, Some(rule.into()), "upgrades: \"h2c\" is never allowed: an h2c upgrade turns the connection into an HTTP/2 tunnel that flexgate cannot check; remove it".into());
            } else if p.is_empty()
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'/'))
            {
                self.error(
                    l,
                    Some(rule.into()),
                    format!("upgrades: {p:?} is not a protocol name such as \"websocket\""),
                );
            }
        }
        let credentials = self
            .credentials(r.credentials.as_deref(), l, rule)
            .unwrap_or(default_credentials);
        if public && r.credentials.is_some() {
            self.error(
                l,
                Some(rule.into()),
                "a public route takes no credentials; remove credentials or auth = \"public\""
                    .into(),
            );
        }
        if let Some(to) = &r.login_redirect
            && !(to.starts_with('/')
                && !to.starts_with("//")
                && !to.contains(['?', '#', '\\', ' ']))
        {
            self.error(l, Some(rule.into()), format!("login_redirect = {to:?}: give a local path such as \"/login\" (no query, no other host)"));
        }
        let cross_origin = match r.cross_origin.as_deref() {
            None | Some("refuse-writes") => CrossOrigin::RefuseWrites,
            Some("refuse") => CrossOrigin::Refuse,
            Some("allow") => CrossOrigin::Allow,
            Some(other) => {
                self.error(l, Some(rule.into()), format!("cross_origin = {other:?}: use \"refuse-writes\" (default), \"refuse\" or \"allow\""));
                CrossOrigin::RefuseWrites
            }
        };
        let method_override = r.method_override.unwrap_or(false);
        if method_override && public {
            self.warn(l, Some(rule.into()), "method_override on a public route lets any client choose the method the upstream runs".into());
        }
        Some(Route {
            name: Arc::from(r.name.get_ref().as_str()),
            upgrades,
            method_override,
            credentials,
            login_redirect: r.login_redirect.clone(),
            ends_session: r.ends_session.unwrap_or(false),
            login_form: r.login_form.clone(),
            reauthentication: r.reauthentication.unwrap_or(false),
            cross_origin,
            line,
            methods: methods?,
            template,
            public,
            roles,
            checks,
            resolve_before_auth,
            needs_body,
            reads_form,
            json_strings,
            refuse_json,
            refuse_query,
            admins_only_json,
            text_json,
            plain_text_multipart,
            max_duration_json,
            forward_authorization: r.forward_authorization.unwrap_or(false),
        })
    }

    fn roles(
        &mut self,
        roles: &[String],
        known: &[&str],
        admins: &AdminRoles,
        line: Option<usize>,
        rule: &str,
    ) -> Vec<String> {
        for role in roles {
            if let Err(e) = check_role_name(role) {
                self.error(line, Some(rule.into()), e);
                continue;
            }
            let candidates = known
                .iter()
                .copied()
                .chain([admins.admin.as_str(), admins.admin_reader.as_str()]);
            if !candidates.clone().any(|k| k == role)
                && let Some(close) = did_you_mean(role, candidates)
            {
                self.warn(
                    line,
                    Some(rule.into()),
                    format!("role {role:?} is not a built-in role; did you mean {close:?}?"),
                );
            }
        }
        roles.to_vec()
    }

    #[allow(clippy::too_many_arguments)]
    fn check(
        &mut self,
        c: &RawCheck,
        index: usize,
        first: Option<&Check>,
        template: &Template,
        kinds: &[Kind],
        permissions: &[String],
        line: Option<usize>,
        rule: &str,
    ) -> Option<Check> {
        let rule = format!("{rule}, check {}", index + 1);
        let permission = self.permission(&c.permission, permissions, line, &rule);
        let if_absent = self
            .if_absent("if_absent", c.if_absent.as_deref(), line, &rule)
            .unwrap_or(IfAbsent::Reject);
        let if_empty = self
            .if_absent("if_empty", c.if_empty.as_deref(), line, &rule)
            .unwrap_or(if_absent);
        let not_found_status = match c.not_found_status {
            Some(s) => Some(self.not_found_status(Some(s), line, &rule)?),
            None => None,
        };
        let first_kind = first.and_then(|f| match &f.target {
            Target::Sources(s) if s.len() == 1 => kinds.get(s[0].0),
            _ => None,
        });
        let target = if c.first_of.is_empty() {
            let Some(kind_name) = &c.kind else {
                self.error(
                    line,
                    Some(rule),
                    "set kind (and where its id comes from), or first_of".into(),
                );
                return None;
            };
            let own = RawSource {
                kind: kind_name.clone(),
                path: c.path.clone(),
                query: c.query.clone(),
                header: c.header.clone(),
                json: c.json.clone(),
                id_in_object: c.id_in_object.clone(),
                form: c.form.clone(),
                form_none: c.form_none,
                column: c.column.clone(),
            };
            let (k, source) = self.source(&own, template, kinds, first_kind, line, &rule)?;
            match source {
                None => Target::Singleton(k),
                Some(s) => Target::Sources(vec![(k, s)]),
            }
        } else {
            if c.kind.is_some()
                || c.path.is_some()
                || c.query.is_some()
                || c.header.is_some()
                || c.json.is_some()
                || c.id_in_object.is_some()
                || c.form.is_some()
                || c.form_none.is_some()
                || c.column.is_some()
            {
                self.error(
                    line,
                    Some(rule),
                    "with first_of, put kind and the id source inside each alternative".into(),
                );
                return None;
            }
            let mut alternatives = Vec::new();
            for alt in &c.first_of {
                match self.source(alt, template, kinds, first_kind, line, &rule)? {
                    (k, Some(s)) => alternatives.push((k, s)),
                    (_, None) => {
                        self.error(line, Some(rule), "each first_of alternative needs an id source (path, query, header, json or column)".into());
                        return None;
                    }
                }
            }
            Target::Sources(alternatives)
        };
        let reads_json = match &target {
            Target::Sources(alternatives) => alternatives
                .iter()
                .any(|(_, s)| matches!(s, Source::Json(_))),
            Target::Singleton(_) => false,
        };
        if c.if_empty.is_some() && !reads_json {
            self.error(
                line,
                Some(rule),
                "if_empty applies to a json source (an empty list); this check reads none: take it out".into(),
            );
            return None;
        }
        Some(Check {
            permission: permission?,
            target,
            if_absent,
            if_empty,
            not_found_status,
        })
    }

    /// Parse an `if_absent` or `if_empty` value (None when unset or wrong).
    fn if_absent(
        &mut self,
        key: &str,
        value: Option<&str>,
        line: Option<usize>,
        rule: &str,
    ) -> Option<IfAbsent> {
        match value? {
            "reject" => Some(IfAbsent::Reject),
            "skip" => Some(IfAbsent::Skip),
            "admins-only" => Some(IfAbsent::AdminsOnly),
            other => {
                self.error(
                    line,
                    Some(rule.to_string()),
                    format!("{key} = {other:?}: use \"reject\", \"skip\" or \"admins-only\""),
                );
                None
            }
        }
    }

    fn source(
        &mut self,
        s: &RawSource,
        template: &Template,
        kinds: &[Kind],
        first_kind: Option<&Kind>,
        line: Option<usize>,
        rule: &str,
    ) -> Option<(usize, Option<Source>)> {
        let Some(k) = kinds.iter().position(|k| k.name == s.kind) else {
            let names: Vec<&str> = kinds.iter().map(|k| k.name.as_str()).collect();
            let hint = did_you_mean(&s.kind, names.iter().copied())
                .map(|n| format!(" did you mean {n:?}?"))
                .unwrap_or_default();
            self.error(
                line,
                Some(rule.into()),
                format!(
                    "unknown kind {:?};{hint} declare it as [kind.{}] (known: {})",
                    s.kind,
                    s.kind,
                    names.join(", ")
                ),
            );
            return None;
        };
        let kind = &kinds[k];
        let given = [
            s.path.is_some(),
            s.query.is_some(),
            s.header.is_some(),
            s.json.is_some(),
            s.form.is_some(),
            s.column.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if given > 1 {
            self.error(
                line,
                Some(rule.into()),
                "give one id source: path, query, header, json, form or column".into(),
            );
            return None;
        }
        if s.id_in_object.is_some() && s.json.is_none() {
            self.error(
                line,
                Some(rule.into()),
                "id_in_object reads the id of an object a JSON pointer reaches: use it with json = \"/pointer\"".into(),
            );
            return None;
        }
        if s.form_none.is_some() && s.form.is_none() {
            self.error(
                line,
                Some(rule.into()),
                "form_none is the value of a form field that means none: use it with form = \"<field>\"".into(),
            );
            return None;
        }
        if kind.is_singleton() {
            if given > 0 {
                self.error(
                    line,
                    Some(rule.into()),
                    format!(
                        "kind {:?} has no query (a singleton), so it takes no id source",
                        kind.name
                    ),
                );
                return None;
            }
            return Some((k, None));
        }
        if given == 0 {
            self.error(
                line,
                Some(rule.into()),
                format!(
                    "kind {:?} needs an id: add path = \"<param>\", query, header, json or column",
                    kind.name
                ),
            );
            return None;
        }
        let source = if let Some(p) = &s.path {
            match template.params.iter().position(|n| n == p) {
                Some(index) => Source::Path {
                    index,
                    name: p.clone(),
                },
                None => {
                    self.error(
                        line,
                        Some(rule.into()),
                        format!(
                            "path parameter {p:?} is not in the template {:?} (it has: {})",
                            template.text,
                            template.params.join(", ")
                        ),
                    );
                    return None;
                }
            }
        } else if let Some(q) = &s.query {
            let names = q.clone().into_vec();
            if names.is_empty() || names.iter().any(|n| n.is_empty()) {
                self.error(
                    line,
                    Some(rule.into()),
                    "query names must not be empty".into(),
                );
                return None;
            }
            Source::Query(names)
        } else if let Some(h) = &s.header {
            match HeaderName::from_bytes(h.as_bytes()) {
                Ok(name) => Source::Header(name),
                Err(_) => {
                    self.error(
                        line,
                        Some(rule.into()),
                        format!("header {h:?} is not a valid header name"),
                    );
                    return None;
                }
            }
        } else if let Some(j) = &s.json {
            match JsonPointer::parse(j) {
                Ok(p) => match &s.id_in_object {
                    Some(key) if key.is_empty() => {
                        self.error(
                            line,
                            Some(rule.into()),
                            "id_in_object must name a key, as in id_in_object = \"sensor\"".into(),
                        );
                        return None;
                    }
                    Some(key) => Source::Json(p.with_object_key(key)),
                    None => Source::Json(p),
                },
                Err(e) => {
                    self.error(line, Some(rule.into()), e);
                    return None;
                }
            }
        } else if let Some(f) = &s.form {
            if f.is_empty() {
                self.error(
                    line,
                    Some(rule.into()),
                    "form must name a field, as in form = \"parent_asset_id\"".into(),
                );
                return None;
            }
            Source::Form {
                name: f.clone(),
                none: s.form_none,
            }
        } else if let Some(col) = &s.column {
            let Some(first) = first_kind else {
                self.error(line, Some(rule.into()), "column takes the id from the route's first check's resource; the first check must name one resource (not first_of, not a singleton), and a column source cannot be in the first check".into());
                return None;
            };
            match first.columns.iter().position(|c| c == col) {
                Some(index) => Source::Column {
                    index,
                    name: col.clone(),
                },
                None => {
                    self.error(
                        line,
                        Some(rule.into()),
                        format!(
                            "column {col:?} is not a column of kind {:?} ({})",
                            first.name,
                            first.columns.join(", ")
                        ),
                    );
                    return None;
                }
            }
        } else {
            unreachable!("exactly one source was counted above")
        };
        Some((k, Some(source)))
    }

    /// Two routes of the same shape sharing a method: the later one can never match.
    /// Routes are grouped by shape first, so a rule file of 10,000 routes is checked in
    /// one pass, not in 50 million comparisons.
    fn overlaps(&mut self, routes: &[Route], case_insensitive: bool) {
        let mut by_shape: HashMap<String, Vec<&Route>> = HashMap::new();
        for later in routes {
            // A route with trailing_slash has two shapes, its own and the slashed one.
            let mut reported = false;
            for (slashed, key) in later
                .template
                .shape_keys(case_insensitive)
                .into_iter()
                .enumerate()
            {
                let same_shape = by_shape.entry(key).or_default();
                if !reported
                    && let Some(earlier) = same_shape
                        .iter()
                        .find(|e| e.methods.overlaps(&later.methods))
                {
                    reported = true;
                    let what = if slashed == 1 {
                        "its trailing_slash can never match"
                    } else {
                        "can never match"
                    };
                    let how = if slashed == 1 {
                        "remove trailing_slash or split the methods"
                    } else {
                        "merge them or split the methods"
                    };
                    self.error(
                        Some(later.line),
                        Some(format!("route {:?}", &*later.name)),
                        format!(
                            "{what}: route {:?} (line {}) has the same path shape ({}{}) and shares a method; {how}",
                            &*earlier.name,
                            earlier.line,
                            earlier.template.text,
                            if earlier.template.trailing_slash { ", with trailing_slash" } else { "" }
                        ),
                    );
                }
                same_shape.push(later);
            }
        }
    }

    fn identity(&mut self, prefix: &str) -> Option<IdentityHeaders> {
        let valid = !prefix.is_empty()
            && prefix.ends_with('-')
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid {
            self.error(None, Some("[identity]".into()), format!("header_prefix {prefix:?} must be letters, digits and '-', ending in '-', e.g. \"X-Flexgate-\""));
            return None;
        }
        let name = |suffix: &str| {
            HeaderName::from_bytes(format!("{prefix}{suffix}").to_ascii_lowercase().as_bytes()).ok()
        };
        Some(IdentityHeaders {
            prefix: prefix.to_ascii_lowercase(),
            user_id: name("User-Id")?,
            email: name("User-Email")?,
            account_id: name("Account-Id")?,
            roles: name("User-Roles")?,
            account_roles: name("Account-Roles")?,
            timestamp: name("Timestamp")?,
            signature: name("Signature")?,
        })
    }
}

/// Role names as the store accepts them.
fn check_role_name(role: &str) -> Result<(), String> {
    crate::store::validate_role_name(role).map_err(|e| e.to_string())
}

fn toml_to_value(v: &toml::Value) -> Option<Value> {
    match v {
        toml::Value::String(s) => Some(Value::Text(s.as_str().into())),
        toml::Value::Integer(i) => Some(Value::Int(*i)),
        toml::Value::Boolean(b) => Some(Value::Bool(*b)),
        _ => None,
    }
}

fn capitalize(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The closest candidate within two edits, if any.
pub fn did_you_mean<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d > 0 && *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests;
