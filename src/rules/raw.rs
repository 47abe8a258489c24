//! The route-rule file exactly as an operator writes it: serde structs over TOML, with
//! spans on names so diagnostics can point at a line. Nothing here is validated beyond
//! types and unknown keys (a typo in a key is an error, never silently ignored); the
//! meaning is checked by `compile`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Listeners, TLS and upstream; read at start only.
    #[serde(default)]
    pub server: RawServer,
    /// Token endpoint, admin role names, login throttling.
    #[serde(default)]
    pub auth: RawAuth,
    /// Path normalisation switches and the answer for unmatched routes.
    #[serde(default)]
    pub paths: RawPaths,
    /// Identity headers sent upstream.
    #[serde(default)]
    pub identity: RawIdentity,
    /// Cache lifetimes and sizes.
    #[serde(default)]
    pub cache: RawCache,
    /// Audit log switches.
    #[serde(default)]
    pub audit: RawAudit,
    /// Candidate rules decided beside the enforced ones, without effect.
    #[serde(default)]
    pub shadow: RawShadow,
    /// Permissions beyond create-children, read, update and delete.
    #[serde(default)]
    pub permissions: Vec<Spanned<String>>,
    /// Resource kinds by name.
    #[serde(default, rename = "kind")]
    pub kinds: BTreeMap<Spanned<String>, RawKind>,
    /// Routes in file order.
    #[serde(default, rename = "route")]
    pub routes: Vec<RawRoute>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// HTTPS listener address, e.g. `0.0.0.0:8443`.
    pub https: Option<String>,
    /// Plain-HTTP listener address.
    pub http: Option<String>,
    /// `redirect` (default: 308 to HTTPS) or `proxy` (only when TLS ends before flexgate).
    pub http_mode: Option<String>,
    /// Admin listener (metrics, health).
    pub admin: Option<String>,
    /// Decision listener for an existing ingress (nginx `auth_request`, Traefik
    /// ForwardAuth, Caddy `forward_auth`, Envoy `ext_authz`); off when unset. Keep it
    /// on loopback or a private network: it trusts the headers that describe requests.
    pub decision: Option<String>,
    /// PEM CA certificates, relative to the config file: when set, the decision
    /// listener speaks TLS with `tls_cert`/`tls_key` and answers only clients whose
    /// certificate chains to one of them (the ingress's client certificate).
    pub decision_client_ca: Option<PathBuf>,
    /// PEM certificate chain, relative to the config file.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key, relative to the config file.
    pub tls_key: Option<PathBuf>,
    /// Upstream base URL, `http://` or `https://`.
    pub upstream: Option<String>,
    /// Extra CA certificates (PEM) trusted for an `https://` upstream.
    pub upstream_ca: Option<PathBuf>,
    /// `Strict-Transport-Security` max-age in seconds on HTTPS responses (0 = off).
    pub hsts_max_age: Option<u64>,
    /// How often the rule file is checked for changes, seconds (0 = only on SIGHUP).
    pub rules_poll_secs: Option<u64>,
    /// Worker threads serving the public listeners (default: one per CPU).
    pub workers: Option<usize>,
    /// Host names clients may address (`api.example.com`, `*.example.com`); any other
    /// `Host` is refused with 400 before authentication. Empty: every host (warned).
    pub allowed_hosts: Option<Vec<String>>,
    /// The headers the nginx flavour of the decision listener reads the original
    /// request from (nginx sends what its `proxy_set_header` lines say).
    #[serde(default)]
    pub decision_headers: RawDecisionHeaders,
    /// Addresses or networks (`"127.0.0.1"`, `"10.0.0.0/8"`) of proxies in front of
    /// flexgate whose `X-Forwarded-For` is believed: a request from one of them is
    /// throttled, logged and forwarded as coming from the client they name.
    pub trusted_proxies: Option<Vec<String>>,
    /// Send the client's `Host` upstream instead of the upstream's own authority, so an
    /// upstream that checks host names (FlexMeasures' `TRUSTED_HOSTS`) still can.
    pub preserve_host: Option<bool>,
    /// Connection and size limits.
    #[serde(default)]
    pub limits: RawLimits,
}

/// `[server.decision_headers]`: header names, each optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDecisionHeaders {
    /// The original method (default `X-Original-Method`).
    pub method: Option<String>,
    /// The original request-target (default `X-Original-URI`).
    pub uri: Option<String>,
    /// The original host (default `X-Forwarded-Host`, else `Host`).
    pub host: Option<String>,
    /// The original scheme (default `X-Forwarded-Proto`).
    pub proto: Option<String>,
}

/// `[server.limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Largest request head (request line plus headers), bytes.
    pub max_header_bytes: Option<usize>,
    /// Time allowed to send a request head (slowloris), milliseconds. On HTTP/1.1 the
    /// clock also runs while a keep-alive connection waits for its next request, so it
    /// bounds idle HTTP/1.1 connections too.
    pub header_read_timeout_ms: Option<u64>,
    /// HTTP/2 connections are pinged this often and closed when a ping goes unanswered;
    /// upgraded tunnels (WebSocket) close after this long without traffic. Seconds.
    pub idle_timeout_secs: Option<u64>,
    /// Concurrent client connections per listener.
    pub max_connections: Option<usize>,
    /// Concurrent connections per listener from one client address (IPv6: one /64),
    /// trusted proxies exempt; 0 turns the limit off.
    pub max_connections_per_client: Option<usize>,
    /// Largest JSON body buffered for body-extracted ids, bytes.
    pub max_json_body_bytes: Option<usize>,
    /// Largest multipart body buffered on routes with `plain_text_multipart`, bytes.
    pub max_multipart_body_bytes: Option<usize>,
    /// Time allowed to send a body flexgate reads whole (logins, routes whose rules
    /// read the body, the decision listener), milliseconds; 408 after it.
    pub body_read_timeout_ms: Option<u64>,
    /// Bytes of such bodies the whole process holds at once; 503 beyond.
    pub max_buffered_body_bytes: Option<usize>,
    /// Upstream connect timeout, milliseconds.
    pub upstream_connect_timeout_ms: Option<u64>,
    /// Time to wait for the upstream's response head, seconds.
    pub upstream_timeout_secs: Option<u64>,
    /// Idle pooled upstream connections are closed after this many seconds.
    pub upstream_idle_secs: Option<u64>,
    /// How long shutdown waits for in-flight requests, seconds.
    pub shutdown_grace_secs: Option<u64>,
}

/// `[auth]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// Path of the token endpoint flexgate serves itself.
    pub token_endpoint: Option<String>,
    /// Also accept `?auth_token=` (off by default: query strings end up in logs).
    pub query_token: Option<bool>,
    /// The role that passes everything.
    pub admin_role: Option<String>,
    /// The role that passes every `read`.
    pub admin_reader_role: Option<String>,
    /// Largest login body, bytes.
    pub max_login_body_bytes: Option<usize>,
    /// Concurrent bcrypt verifications.
    pub max_concurrent_logins: Option<usize>,
    /// What authenticates on routes that do not say (`["token"]` by default; FlexMeasures
    /// mode also knows `"session"`: FlexMeasures' browser session cookies).
    pub credentials: Option<Vec<String>>,
    /// Login failure throttling.
    #[serde(default)]
    pub throttle: RawThrottle,
}

/// `[auth.throttle]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThrottle {
    /// Failed logins per email within the window before 429.
    pub failures_per_email: Option<u32>,
    /// Failed logins per client address within the window before 429.
    pub failures_per_client: Option<u32>,
    /// Window length, seconds.
    pub window_secs: Option<u64>,
}

/// `[paths]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPaths {
    /// Accept `;` in paths (refused by default: some servers treat it as a parameter).
    pub allow_semicolons: Option<bool>,
    /// Accept empty segments (`//`).
    pub allow_empty_segments: Option<bool>,
    /// Match static segments without regard to ASCII case (for case-insensitive upstreams).
    pub case_insensitive: Option<bool>,
    /// Status for requests no route matches: 403 or 404.
    pub unmatched_status: Option<u16>,
    /// Path prefixes under which CORS preflights (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`, no credentials) are forwarded without
    /// authentication, on paths a route takes for the method they ask about: for an
    /// upstream that answers them itself without running a view (FlexMeasures:
    /// flask-cors, whose `CORS_RESOURCES` is `/api/*`). None by default.
    #[serde(default)]
    pub cors_preflight_paths: Vec<String>,
}

/// `[identity]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    /// Prefix of identity headers; client-sent ones are always removed.
    pub header_prefix: Option<String>,
    /// Pass the client's `Authorization` header upstream (default false: the upstream
    /// trusts the signed identity headers instead).
    pub forward_authorization: Option<bool>,
    /// Where identities come from: `native` (flexgate's tables and tokens, the default)
    /// or `flexmeasures` (an unmodified FlexMeasures' tables, tokens and passwords).
    pub source: Option<String>,
    /// FlexMeasures mode: how often the cached users are compared with FlexMeasures'
    /// tables, milliseconds (a password change, deactivation or role change made in
    /// FlexMeasures takes effect within this).
    pub revalidate_ms: Option<u64>,
}

/// `[shadow]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShadow {
    /// A candidate rule file (relative to this one), hot-reloaded like it.
    pub rules: Option<PathBuf>,
}

/// `[audit]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// Also log allowed requests (denies are always logged).
    pub log_allows: Option<bool>,
}

/// `[cache]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// How long a loaded principal is trusted without the change feed, seconds.
    pub principal_ttl_secs: Option<u64>,
    /// How long a resolved owner is reused, seconds.
    pub owner_ttl_secs: Option<u64>,
    /// How long "no such resource" is remembered, seconds.
    pub owner_negative_ttl_secs: Option<u64>,
    /// Most owners kept.
    pub owner_capacity: Option<u64>,
    /// Most principals kept.
    pub principal_capacity: Option<u64>,
    /// Most verified tokens kept.
    pub token_capacity: Option<u64>,
}

/// `[kind.<name>]`: a kind of resource and who may do what to it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKind {
    /// SQL returning the owner row for `$1` (the id); absent for a singleton such as
    /// "the platform".
    pub query: Option<String>,
    /// Names of the columns the query returns, in order; templates refer to them.
    #[serde(default)]
    pub columns: Vec<String>,
    /// `integer` (default) or `text`.
    pub id: Option<String>,
    /// Display name in "not found" messages (default: the kind name, capitalised).
    pub label: Option<String>,
    /// Status for an unknown id: 404 (default) or 422.
    pub not_found_status: Option<u16>,
    /// Message for an unknown id; `{id}` is replaced by the id.
    pub not_found_message: Option<String>,
    /// ACL per permission.
    #[serde(default)]
    pub acl: BTreeMap<String, RawAcl>,
    /// Alternative ACLs chosen by a column's value.
    #[serde(default, rename = "case")]
    pub cases: Vec<RawCase>,
}

/// `[[kind.<name>.case]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCase {
    /// The column tested.
    pub column: String,
    /// `is_null = true` (or `false` for "not null").
    pub is_null: Option<bool>,
    /// The column equals this value.
    pub equals: Option<toml::Value>,
    /// The ACL set used when the test holds (replaces the kind's whole set).
    #[serde(default)]
    pub acl: BTreeMap<String, RawAcl>,
}

/// An ACL: a list of items, or a single item written bare.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawAcl {
    /// `read = "every-logged-in-user"`.
    One(String),
    /// `read = ["account:{account_id}", ["account:{consultancy_account_id}", "role:consultant"]]`.
    Many(Vec<RawItem>),
}

/// One ACL item: a principal, or a group that must all match.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawItem {
    /// A single principal.
    One(String),
    /// All of these.
    All(Vec<String>),
}

/// `[[route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Unique name; metrics and logs use it.
    pub name: Spanned<String>,
    /// HTTP methods (HEAD is implied by GET).
    pub methods: Vec<String>,
    /// Path template, e.g. `/api/v3_0/assets/{id}/sensors`; `{*rest}` matches the rest.
    pub path: String,
    /// Also match the path with one `/` added at the end, as Flask's
    /// `strict_slashes=False` does (FlexMeasures' chart routes): the same route, checks
    /// and parameters; the path is forwarded as sent.
    pub trailing_slash: Option<bool>,
    /// `token` (default) or `public`.
    pub auth: Option<String>,
    /// The user must have every one of these roles.
    #[serde(default)]
    pub roles_required: Vec<String>,
    /// The user must have at least one of these roles.
    #[serde(default)]
    pub roles_accepted: Vec<String>,
    /// The user's account must have every one of these roles.
    #[serde(default)]
    pub account_roles_required: Vec<String>,
    /// The user's account must have at least one of these roles.
    #[serde(default)]
    pub account_roles_accepted: Vec<String>,
    /// Whether `admin` passes `roles_required` (default true).
    pub admin_bypass: Option<bool>,
    /// Answer an unknown id before asking for authentication (FlexMeasures `/api/dev`).
    pub resolve_before_auth: Option<bool>,
    /// Pass the client's `Authorization` header to the upstream on this route (for
    /// upstream-checked secrets such as FlexMeasures' task-check token).
    pub forward_authorization: Option<bool>,
    /// Protocols a client may switch to with `Upgrade` on this route (default
    /// `["websocket"]`; `h2c` is never allowed). Any other upgrade offer is removed.
    pub upgrades: Option<Vec<String>>,
    /// Honour `X-HTTP-Method-Override` (and its variants) on `POST`: the overriding
    /// method is matched and checked, and the header is forwarded. Off by default: the
    /// headers are removed.
    pub method_override: Option<bool>,
    /// What authenticates on this route: `token`, `session` (FlexMeasures mode), or both.
    pub credentials: Option<Vec<String>>,
    /// For pages: answer a request without credentials (GET or HEAD) with a redirect to
    /// this login page, `next=` holding the path, as FlexMeasures' UI does.
    pub login_redirect: Option<String>,
    /// This route logs the browser out (FlexMeasures' `POST /logout`): once the upstream
    /// accepts it, flexgate refuses that session's cookies on every later request.
    pub ends_session: Option<bool>,
    /// This route is the upstream's own login form (FlexMeasures' `POST /login`): the
    /// name of its email field. Its POSTs count against the login limits like the
    /// token endpoint's, by that email and the client's address.
    pub login_form: Option<String>,
    /// The upstream checks the signed-in caller's password here (Flask-Security's
    /// `/verify`, which also hands out a token): its POSTs count against the login
    /// limits under the caller's email, like a login.
    pub reauthentication: Option<bool>,
    /// Session-authenticated requests from another origin (by `Sec-Fetch-Site` or
    /// `Origin`): `refuse-writes` (default: refused unless the method is safe),
    /// `refuse` (refused whatever the method: for GETs that change state), `allow`.
    pub cross_origin: Option<String>,
    /// Top-level body fields that may hold JSON written as a string (FlexMeasures'
    /// `JSON` fields take `{"a": 1}` and `"{\"a\": 1}"` alike): read as the JSON they
    /// hold before any check's pointer reaches into them.
    pub json_strings: Option<Vec<String>>,
    /// Body fields (JSON pointers) refused on this route whatever their value (422), such
    /// as options the upstream means for its command line only.
    pub refuse_json: Option<Vec<String>>,
    /// Query parameters refused on this route whatever their value (422).
    pub refuse_query: Option<Vec<String>>,
    /// Body fields (JSON pointers) only admins may send on this route (403 for others).
    pub admins_only_json: Option<Vec<String>>,
    /// Body fields whose strings (at any depth) may not hold `<`, `>`, backticks, `${`
    /// or control characters (422): text an upstream's pages place unescaped.
    pub plain_text_json: Option<Vec<String>>,
    /// As `plain_text_json`, on one line and without double quotes or backslash: text
    /// placed in double-quoted attributes or read as one line (a colour).
    pub line_text_json: Option<Vec<String>>,
    /// As `plain_text_json`, and no quotes, backslash or `#` either: text placed inside
    /// quoted script strings.
    pub quote_free_json: Option<Vec<String>>,
    /// The body must be `multipart/form-data` (or empty), read whole, and its parts'
    /// headers (file names above all) plain text, as `plain_text_json` (422): names an
    /// upstream's pages place unescaped (FlexMeasures' audit log of uploads).
    pub plain_text_multipart: Option<bool>,
    /// Body fields (JSON pointers) that are ISO 8601 durations of at most the value
    /// given (`{ "/duration" = "P31D" }`; 422 beyond, or when not a duration): lengths
    /// an upstream turns into work without a bound of its own.
    pub max_duration_json: Option<std::collections::BTreeMap<String, String>>,
    /// Permission checks, all of which must pass.
    #[serde(default, rename = "check")]
    pub checks: Vec<RawCheck>,
}

/// `[[route.check]]`: a permission on a resource named by the request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    /// `read`, `update`, `create-children`, `delete` or a declared permission.
    pub permission: String,
    /// The kind of resource (with one source below, or alone for a singleton kind).
    pub kind: Option<String>,
    /// Take the id from this path parameter.
    pub path: Option<String>,
    /// Take the id from this query parameter (or the first present of several names).
    pub query: Option<OneOrMany>,
    /// Take the id from this header.
    pub header: Option<String>,
    /// Take the id(s) from the JSON body at this pointer (`*` and `**` wildcards).
    pub json: Option<String>,
    /// With `json`: an object where an id should be is a reference, its id under this
    /// key (`{"sensor": 7, ...}` in a list that also takes plain ids).
    pub id_in_object: Option<String>,
    /// Take the id from this field of a form body (url-encoded, or a JSON object as
    /// Flask-WTF reads one).
    pub form: Option<String>,
    /// With `form`: the value that means "none" (a select's placeholder option, such
    /// as FlexMeasures' `--Select account--`, -1): the field is then absent.
    pub form_none: Option<i64>,
    /// Take the id from this column of the route's first check's resource.
    pub column: Option<String>,
    /// Alternatives: the first source with a value decides the kind.
    #[serde(default)]
    pub first_of: Vec<RawSource>,
    /// When no id is present: `reject` (default, 422), `skip`, or `admins-only`.
    pub if_absent: Option<String>,
    /// When a JSON field is there but names no id (`[]`): as `if_absent` unless set
    /// (an empty list of account roles clears them: it is not the same as no list).
    pub if_empty: Option<String>,
    /// Status for an unknown id, overriding the kind's (404 or 422).
    pub not_found_status: Option<u16>,
}

/// One alternative of `first_of`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// The kind this alternative checks.
    pub kind: String,
    /// Path parameter.
    pub path: Option<String>,
    /// Query parameter(s).
    pub query: Option<OneOrMany>,
    /// Header.
    pub header: Option<String>,
    /// JSON pointer.
    pub json: Option<String>,
    /// With `json`: the key of a reference object's id.
    pub id_in_object: Option<String>,
    /// Form field.
    pub form: Option<String>,
    /// With `form`: the value that means none.
    pub form_none: Option<i64>,
    /// Column of the first check's resource.
    pub column: Option<String>,
}

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One name.
    One(String),
    /// Several names; the first present wins, two present is ambiguous.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The names as a list.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}
