//! The single walk every request takes, one named stage after another:
//! `normalize` -> `match_rule` -> `authenticate` -> `check_roles` -> `read_body` ->
//! `authorize` (extract ids, `resolve_owner`, `decide`) -> `rewrite_headers` -> `forward`.
//!
//! A stage either hands on or ends the request with a [`Deny`]; only the end of the allow
//! path creates the [`Permit`] that `forward` requires, so forwarding without a decision
//! cannot be written. `flexgate explain` runs the same `authorize` with a [`Trace`] that
//! records each step; the request path uses `()`, which records nothing and costs nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::Value as Json;

use super::body::{BodyReader, Purpose};
use super::decision::IngressBody;
use super::deny::Deny;
use super::evaluate::Probe;
use super::forward::{Outgoing, UpstreamBody};
use super::normalize::normalize;
use super::{Gateway, Installed, ProxyBody, headers, host, login};
use crate::auth::flexmeasures::{FmAuthenticator, SessionCookies, Verdict};
use crate::auth::token::token_from_authorization;
use crate::auth::{AuthError, Authenticator, Identity, apikey, flask_session, unix_now};
use crate::metrics;
use crate::policy::{self, Decision, Permission, Refused, Value};
use crate::rules::extract::{self, ExtractError, IdParse, IdType, ResourceId, Source, TextClass};
use crate::rules::matcher::{Found, Params};
use crate::rules::multipart::{self, MultipartError};
use crate::rules::{Check, IfAbsent, Kind, Route, RuleSet, Target};
use crate::store::owner::OwnerResolver;

/// What the listener knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The client's address as an `X-Forwarded-For` value, encoded once per connection.
    pub client: HeaderValue,
    /// The worker thread serving the connection (selects its upstream pool).
    pub worker: usize,
}

impl ConnInfo {
    /// Describe a new connection.
    pub fn new(peer: SocketAddr, tls: bool, worker: usize) -> ConnInfo {
        ConnInfo {
            peer,
            tls,
            client: headers::client_value(peer.ip()),
            worker,
        }
    }
}

/// Proof that a request passed every check. Only this module can make one, and only on
/// the allow path; `Upstream::forward` takes it by value.
#[derive(Debug)]
pub struct Permit {
    route: Arc<str>,
    identity: Option<Arc<Identity>>,
    credential: Credential,
}

impl Permit {
    fn new(route: &Route, identity: Option<Arc<Identity>>, credential: Credential) -> Permit {
        Permit {
            route: Arc::clone(&route.name),
            identity,
            credential,
        }
    }

    /// How the request authenticated.
    pub fn credential(&self) -> Credential {
        self.credential
    }

    /// The route that allowed the request.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// Who is calling (`None` on public routes).
    pub fn identity(&self) -> Option<&Arc<Identity>> {
        self.identity.as_ref()
    }
}

/// Receives explanations of each step; `()` ignores them at no cost.
pub trait Trace {
    /// Whether notes are wanted (so callers skip formatting them).
    fn enabled(&self) -> bool;
    /// Record one line.
    fn note(&mut self, line: String);
    /// The check about to be decided (for the audit line); ignored by default.
    fn checking(&mut self, _permission: Permission, _kind: usize, _id: Option<&ResourceId>) {}
}

/// Remembers the last check decided, for the audit line of a request.
#[derive(Debug, Default)]
pub struct Checking {
    /// `(permission, kind index, resource id)` of the last check.
    pub last: Option<(Permission, usize, Option<ResourceId>)>,
}

impl Trace for Checking {
    #[inline]
    fn enabled(&self) -> bool {
        false
    }
    #[inline]
    fn note(&mut self, _: String) {}
    fn checking(&mut self, permission: Permission, kind: usize, id: Option<&ResourceId>) {
        self.last = Some((permission, kind, id.cloned()));
    }
}

impl Trace for () {
    #[inline]
    fn enabled(&self) -> bool {
        false
    }
    #[inline]
    fn note(&mut self, _: String) {}
}

impl Trace for Vec<String> {
    fn enabled(&self) -> bool {
        true
    }
    fn note(&mut self, line: String) {
        self.push(line);
    }
}

/// The parts of a request that ids are read from.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// Template parameters of the matched route.
    pub params: Params<'a>,
    /// The raw query string.
    pub query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The parsed JSON body, when the route reads one and it was given.
    pub body: Option<&'a Json>,
}

/// What one request did, for the metrics and the audit line.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    route: Option<Arc<str>>,
    route_index: Option<usize>,
    pub(super) user_id: Option<i64>,
    pub(super) account_id: Option<i64>,
    /// The API key that authenticated the request: id and name, never its value.
    pub(super) key: Option<(i64, Arc<str>)>,
    /// `(permission, kind index, resource id)` of the last check; names are looked up
    /// only when an audit line is written, so an unaudited allow formats nothing.
    pub(super) checked: Option<(Permission, usize, Option<ResourceId>)>,
    deny: Option<(&'static str, &'static str)>,
    /// Candidate rules are in shadow: what they need of the enforced path (boxed, so
    /// a request without a shadow carries one pointer).
    shadow: Option<Box<ShadowFacts>>,
    /// Refused by the server's settings, not its rules (`Host`, a throttled login
    /// form): the candidate rules would refuse it alike.
    server_refused: bool,
}

impl Outcome {
    /// Record the deny the request got.
    fn denied(&mut self, deny: &Deny) {
        self.deny = Some((deny.decision(), deny.reason()));
        self.server_refused = matches!(deny, Deny::BadHost(_) | Deny::Throttled(_));
    }
}

/// What the enforced path learnt that the shadow's candidate decides with.
#[derive(Debug, Default)]
struct ShadowFacts {
    /// The identity it found.
    identity: Option<Arc<Identity>>,
    /// How the caller authenticated.
    credential: Option<Credential>,
    /// The authority it checked.
    authority: Option<HeaderValue>,
    /// The body bytes it read.
    body: Option<Bytes>,
}

/// Status recorded for a request the client abandoned (nginx's "client closed
/// request"): the stream was reset or the connection dropped before an answer.
const CLIENT_CLOSED: u16 = 499;

/// The bookkeeping of one request: the in-flight gauge, the request counter and
/// histogram, and the audit line. It runs however the request ends: when the answer
/// is ready, or when the request's future is dropped because the client reset the
/// stream or went away (then as `cancelled`, status 499).
struct Bookkeeping<'a> {
    gw: &'a Gateway,
    conn: &'a ConnInfo,
    installed: Arc<Installed>,
    method: http::Method,
    started: Instant,
    outcome: Outcome,
    done: bool,
    /// Record nothing (nginx asking again for the body of a denial it already counted).
    silent: bool,
}

impl<'a> Bookkeeping<'a> {
    fn start(gw: &'a Gateway, conn: &'a ConnInfo, method: http::Method) -> Bookkeeping<'a> {
        gw.metrics.in_flight().inc();
        Bookkeeping {
            gw,
            conn,
            installed: gw.installed(),
            method,
            started: Instant::now(),
            outcome: Outcome::default(),
            done: false,
            silent: false,
        }
    }

    fn finish(&mut self, status: u16) {
        self.done = true;
        let (decision, reason) = self.outcome.deny.unwrap_or(("allow", "allowed"));
        self.record(decision, reason, status);
    }

    fn record(&self, decision: &str, reason: &str, status: u16) {
        if self.silent {
            self.gw.metrics.in_flight().dec();
            return;
        }
        let route_metrics = self
            .outcome
            .route_index
            .and_then(|i| self.installed.routes.get(i));
        let route = self.outcome.route.as_deref().unwrap_or(metrics::NO_ROUTE);
        let elapsed = self.started.elapsed();
        let gw = self.gw;
        gw.metrics.request(
            route_metrics,
            route,
            &self.method,
            decision,
            status,
            elapsed,
        );
        gw.metrics.in_flight().dec();
        gw.audit(
            self.conn,
            &self.installed.rules,
            route,
            &self.method,
            decision,
            reason,
            status,
            &self.outcome,
            elapsed,
        );
    }
}

impl Drop for Bookkeeping<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.record("cancelled", "client_cancelled", CLIENT_CLOSED);
        }
    }
}

/// Handle one request from start to finish; never fails (a failure is a response).
pub async fn handle(
    gw: &Arc<Gateway>,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    // First of all: what the upstream would not see as sent is gone before any stage
    // (or a shadow rule) reads the headers.
    headers::drop_unforwarded(req.headers_mut());
    // Behind a trusted proxy the client is the one it names (one branch when no proxy
    // is trusted).
    let behind;
    let trusted = &gw.server().trusted_proxies;
    let conn = if trusted.is_empty() {
        conn
    } else {
        let client = super::forwarded::client_behind(trusted, conn.peer.ip(), req.headers());
        let tls = super::forwarded::tls_behind(trusted, conn.peer.ip(), req.headers());
        match (client, tls) {
            (None, None) => conn,
            _ => {
                let addr = client.map_or(conn.peer, |ip| SocketAddr::new(ip, 0));
                behind = ConnInfo::new(addr, conn.tls || tls == Some(true), conn.worker);
                &behind
            }
        }
    };
    let mut book = Bookkeeping::start(gw, conn, req.method().clone());
    let installed = Arc::clone(&book.installed);
    // With candidate rules in shadow, the request as described to them (the body and
    // the identity are added as the pipeline finds them).
    let shadow = gw.shadow_rules().map(|candidate| {
        let probe = Probe::new(
            req.method().clone(),
            req.uri().path_and_query().map_or("/", |p| p.as_str()),
            req.headers().clone(),
            None,
        );
        book.outcome.shadow = Some(Box::default());
        (candidate, probe)
    });
    let upgrade = headers::is_upgrade_request(req.headers()).then(|| hyper::upgrade::on(&mut req));
    let mut response = match serve(gw, &installed, conn, req, upgrade, &mut book.outcome).await {
        Ok(response) => response,
        Err(deny) => {
            book.outcome.denied(&deny);
            deny.into_response()
        }
    };
    if conn.tls
        && let Some(hsts) = gw.hsts()
    {
        response
            .headers_mut()
            .insert(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    book.finish(response.status().as_u16());
    if let Some((candidate, mut probe)) = shadow {
        let outcome = &mut book.outcome;
        let facts = outcome.shadow.take().unwrap_or_default();
        probe.body = facts.body;
        probe.authority = facts.authority;
        probe.tls = conn.tls;
        if let Some(credential) = facts.credential {
            probe.credential = credential;
        }
        let (decision, reason) = match outcome.deny {
            // Allowed, then the upstream failed: the authorization decision was allow.
            Some((_, "upstream_unreachable" | "upstream_timeout")) | None => ("allow", "allowed"),
            Some(deny) => deny,
        };
        // Logins are flexgate's own answer whatever the rules, and a refused `Host`
        // or a throttled login form the server's: nothing to compare.
        let login = outcome.route.as_deref() == Some(metrics::TOKEN_ENDPOINT);
        if decision != "cancelled" && !login && !outcome.server_refused {
            let enforced = super::shadow::Enforced {
                route: outcome
                    .route
                    .clone()
                    .unwrap_or_else(|| Arc::from(metrics::NO_ROUTE)),
                decision,
                reason,
            };
            super::shadow::spawn(Arc::clone(gw), candidate, probe, facts.identity, enforced);
        }
    }
    response
}

async fn serve(
    gw: &Gateway,
    installed: &Installed,
    conn: &ConnInfo,
    req: Request<Incoming>,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    outcome: &mut Outcome,
) -> Result<Response<ProxyBody>, Deny> {
    let rules = &*installed.rules;
    let (mut parts, body) = req.into_parts();
    let authority = host::take_authority(&mut parts, &gw.server().allowed_hosts)?;
    if let Some(shadow) = &mut outcome.shadow {
        shadow.authority = Some(authority.clone());
    }
    // One Cookie line for both the session check and the upstream (HTTP/2 crumbs).
    headers::join_cookies(&mut parts.headers);
    // Borrowed from the request URI (no copy unless an escape was decoded).
    let path = normalize(parts.uri.path(), &rules.paths).map_err(Deny::BadPath)?;
    if path == rules.token_endpoint {
        outcome.route = Some(Arc::from(metrics::TOKEN_ENDPOINT));
        // Boxed: a login's future is large and rare; requests should not carry it.
        return Box::pin(login::handle(gw, rules, conn, &parts, body)).await;
    }
    let matched = match_with_override(
        rules,
        &parts.method,
        &mut parts.headers,
        &path,
        parts.uri.query(),
    )?;
    let route = matched.route;
    outcome.route = Some(Arc::clone(&route.name));
    outcome.route_index = Some(matched.index);
    // A preflight's headers say it has no body; over HTTP/2 only the stream's end can.
    if matched.preflight && !hyper::body::Body::is_end_stream(&body) {
        return Err(preflight_with_a_body());
    }
    let route_metrics = installed.routes.get(matched.index);
    // Only a protocol the route allows may be switched to; any other offer (h2c above
    // all) is removed with the hop-by-hop headers and the request goes on as a plain one.
    let upgrade = match (upgrade, headers::upgrade_protocol(&parts.headers)) {
        (Some(on), Some(protocol)) if route_allows_upgrade(route, protocol) => {
            Some((on, protocol.clone()))
        }
        _ => None,
    };

    let FmCookies {
        carried_remember,
        ending,
        session_names_user,
    } = match &*gw.auth {
        Authenticator::FlexMeasures(fm) if parts.headers.contains_key(http::header::COOKIE) => {
            fm_cookies(fm, route, &mut parts.headers)
        }
        _ => FmCookies::default(),
    };

    // The upstream's own login form: counted as a login before it goes on.
    let (body, form_login) = match (&*gw.auth, &route.login_form) {
        (Authenticator::FlexMeasures(fm), Some(field)) if parts.method == http::Method::POST => {
            let limit = rules.max_login_body_bytes;
            let begun =
                super::login_form::begin(gw.bodies(), fm, conn, field, &parts.headers, body, limit);
            let (bytes, login) = Box::pin(begun).await?;
            (UpstreamBody::Buffered(bytes), Some(login))
        }
        _ => (UpstreamBody::Streamed(body), None),
    };
    let (permit, body) = admit(gw, rules, conn, matched, &parts, &authority, body, outcome).await?;
    // The upstream checks the caller's password here: counted as a login.
    let reauthentication = match (&*gw.auth, permit.identity()) {
        (Authenticator::FlexMeasures(fm), Some(identity))
            if route.reauthentication && parts.method == http::Method::POST =>
        {
            let begun = super::login_form::begin_reauthentication(fm, conn, &identity.email);
            Some(Box::pin(begun).await?)
        }
        _ => None,
    };
    // Authenticated by the session: the remember cookie is not what flexgate checked,
    // and FlexMeasures must not fall back on it.
    if session_names_user && permit.credential() == Credential::Session {
        headers::strip_cookies(&mut parts.headers, &["remember_token"]);
    }

    let added = rewrite_headers(
        gw,
        rules,
        conn,
        &mut parts.headers,
        &parts.method,
        &permit,
        &path,
        upgrade.is_some(),
        route.forward_authorization,
        &authority,
    );
    let uri = gw.upstream().uri_for(&parts.uri, &path)?;
    drop(path);
    parts.uri = uri;
    let response = gw
        .upstream()
        .forward(
            permit,
            Outgoing { parts, added, body },
            upgrade,
            route_metrics,
            conn.worker,
        )
        .await?;
    if let (Authenticator::FlexMeasures(fm), Some(login)) = (&*gw.auth, reauthentication) {
        let login_page = route.login_redirect.as_deref();
        super::login_form::finish_reauthentication(
            fm,
            login,
            response.status(),
            response.headers(),
            login_page,
        )
        .await;
    }
    if let (Authenticator::FlexMeasures(fm), Some(login)) = (&*gw.auth, form_login) {
        super::login_form::finish(fm, login, response.headers()).await;
    }
    if let Authenticator::FlexMeasures(fm) = &*gw.auth
        && response.status().as_u16() < 400
    {
        if let Some(proof) = ending
            && !proof.keys.is_empty()
        {
            fm.revoke(&proof);
        }
        if response.headers().contains_key(http::header::SET_COOKIE) {
            fm.lift_reissued_remember(response.headers(), carried_remember);
        }
    }
    Ok(response)
}

/// Stages 4 to 7 for one matched route: authenticate, roles, the body (only when
/// something reads it), the ACL checks; the [`Permit`] on success. The proxy and the
/// decision listener both come through here.
#[allow(clippy::too_many_arguments)]
async fn admit(
    gw: &Gateway,
    rules: &RuleSet,
    conn: &ConnInfo,
    matched: Matched<'_, '_>,
    parts: &http::request::Parts,
    authority: &HeaderValue,
    body: UpstreamBody,
    outcome: &mut Outcome,
) -> Result<(Permit, UpstreamBody), Deny> {
    let (route, params) = (matched.route, matched.params);
    if matched.needs_no_identity() {
        return Ok((Permit::new(route, None, Credential::None), body));
    }
    one_content_type(&parts.headers)?;
    let query = parts.uri.query();
    let facts = Facts {
        params,
        query,
        headers: &parts.headers,
        body: None,
    };
    if route.resolve_before_auth {
        preresolve(&gw.owners, rules, route, &facts).await?;
    }
    let limits = gw.limits();
    let limit = limits.max_json_body_bytes;
    let mut body = Some(body);
    // FlexMeasures reads a token from a JSON body too (before the query and the
    // header): in FlexMeasures mode such a body is read first, so flexgate checks
    // the very token FlexMeasures will use.
    let early = if gw.auth.is_flexmeasures() && is_json(parts.headers.get(CONTENT_TYPE)) {
        match body.take() {
            Some(b) => Some(into_bytes(gw.bodies(), &parts.headers, b, limit).await?),
            None => None,
        }
    } else {
        None
    };
    if let Some(shadow) = &mut outcome.shadow {
        shadow.body.clone_from(&early);
    }
    let body_token = match &early {
        Some(bytes) => body_token(bytes)?,
        None => None,
    };
    let (identity, credential) = match authenticate(
        gw,
        rules,
        route,
        &parts.headers,
        query,
        body_token.as_deref(),
    )
    .await
    {
        Ok(found) => found,
        Err(Deny::Unauthenticated(reason))
            if route.login_redirect.is_some() && parts.method.is_safe() =>
        {
            return Err(Deny::LoginRedirect {
                reason,
                location: login_location(route, &parts.uri),
            });
        }
        Err(deny) => return Err(deny),
    };
    outcome.user_id = Some(identity.principal.user_id);
    outcome.key = identity.key.as_ref().map(|k| (k.id, Arc::clone(&k.name)));
    if let Some(shadow) = &mut outcome.shadow {
        // Kept from here on, so the candidate decides for the same caller also when a
        // later stage (origin, roles, key scope, body) refuses the request.
        shadow.identity = Some(Arc::clone(&identity));
        shadow.credential = Some(credential);
    }
    check_origin(
        route,
        &parts.method,
        credential,
        &parts.headers,
        Some(authority),
        conn.tls,
    )?;
    check_roles(rules, route, &identity)?;
    check_key_scope(rules, route, &parts.method, &identity)?;
    if route.needs_body {
        let mut checking = Checking::default();
        let decided =
            authorize_before_body(&gw.owners, rules, route, &facts, &identity, &mut checking).await;
        if decided.is_err() {
            outcome.account_id = Some(identity.principal.account_id);
            outcome.checked = checking.last;
        }
        decided?;
    }
    let (forward_body, json) = match (route.needs_body, early, body.take()) {
        (true, Some(bytes), _) => {
            let json = checked_body(&parts.headers, &bytes, route)?;
            (UpstreamBody::Buffered(bytes), json)
        }
        (true, None, Some(body)) => {
            let limit = route.body_limit(limits);
            let bytes = into_bytes(gw.bodies(), &parts.headers, body, limit).await?;
            if let Some(shadow) = &mut outcome.shadow {
                shadow.body = Some(bytes.clone());
            }
            let json = checked_body(&parts.headers, &bytes, route)?;
            (UpstreamBody::Buffered(bytes), json)
        }
        (false, Some(bytes), _) => (UpstreamBody::Buffered(bytes), None),
        (_, None, Some(body)) => (body, None),
        (_, None, None) => (UpstreamBody::Buffered(Bytes::new()), None),
    };
    let facts = Facts {
        body: json.as_ref(),
        ..facts
    };
    outcome.account_id = Some(identity.principal.account_id);
    let mut checking = Checking::default();
    let decided = authorize(&gw.owners, rules, route, &facts, &identity, &mut checking).await;
    outcome.checked = checking.last;
    decided?;
    Ok((Permit::new(route, Some(identity), credential), forward_body))
}

/// One Content-Type (RFC 9110 8.3): with two, flexgate and the upstream could read the
/// body differently (a JSON body's ids and token checked here, another kind of body run
/// there).
pub fn one_content_type(headers: &HeaderMap) -> Result<(), Deny> {
    let mut content_types = headers.get_all(CONTENT_TYPE).iter();
    if content_types.next().is_some() && content_types.next().is_some() {
        return Err(Deny::Ambiguous(
            "The Content-Type header is given more than once.".into(),
        ));
    }
    Ok(())
}

/// A body's bytes: read it whole (up to `limit`) if it still streams.
async fn into_bytes(
    bodies: &BodyReader,
    headers: &HeaderMap,
    body: UpstreamBody,
    limit: usize,
) -> Result<Bytes, Deny> {
    match body {
        UpstreamBody::Buffered(bytes) => Ok(bytes),
        UpstreamBody::Streamed(incoming) => {
            bodies.read(headers, incoming, limit, Purpose::Other).await
        }
    }
}

/// How a request authenticated: which credential the upstream must see again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// A public route: nothing.
    None,
    /// An access token.
    Token,
    /// An API key (`Authorization: Bearer fgk_...`).
    ApiKey,
    /// FlexMeasures' browser session cookies.
    Session,
}

/// What the proxy learnt of a FlexMeasures-mode request's session cookies.
#[derive(Default)]
struct FmCookies {
    /// The remember cookie it carries (its revocation key), so that only a login
    /// setting it anew lifts its revocation, not a replayed copy.
    carried_remember: Option<[u8; 32]>,
    /// On a logout route: the sessions it ends (revoked once the upstream accepts it).
    ending: Option<crate::auth::flexmeasures::SessionProof>,
    /// The session cookie verifies and names a user (who authenticates by it).
    session_names_user: bool,
}

/// FlexMeasures mode, for a request with cookies: FlexMeasures sees only session
/// cookies flexgate verified. One it could read otherwise (ambiguous, or spelled so
/// that only itsdangerous takes it) could log a user in there, a logged-out one above
/// all; on public routes, which authenticate nobody, logged-out cookies go too.
fn fm_cookies(fm: &FmAuthenticator, route: &Route, headers: &mut HeaderMap) -> FmCookies {
    let cookies = match session_cookies(headers) {
        Ok(cookies) => cookies,
        // Read one way here and maybe another there: on a public route nobody is
        // authenticated by them, so they go; elsewhere a session login is refused.
        Err(_) => {
            if route.public {
                headers::strip_cookies(headers, headers::FLEXMEASURES_SESSION_COOKIES);
            }
            return FmCookies::default();
        }
    };
    let mut found = FmCookies {
        carried_remember: cookies.remember.map(flask_session::remember_revocation_key),
        ..FmCookies::default()
    };
    if !(route.public || route.credentials.session) {
        return found;
    }
    let vetted = fm.vet(cookies);
    found.session_names_user = matches!(
        vetted.session,
        Some(Verdict::Verified {
            names_user: true,
            revoked: false,
            ..
        })
    );
    if route.ends_session {
        found.ending = Some(vetted.proof()).filter(|p| !p.keys.is_empty());
    }
    for (name, verdict) in [
        ("session", vetted.session),
        ("remember_token", vetted.remember),
    ] {
        if verdict.is_some_and(|v| v.unverified() || (route.public && v.revoked())) {
            headers::strip_cookies(headers, &[name]);
        }
    }
    found
}

/// The FlexMeasures session cookies of a request (the joined `Cookie` header).
fn session_cookies(headers: &HeaderMap) -> Result<SessionCookies<'_>, Deny> {
    let Some(value) = headers.get(http::header::COOKIE) else {
        return Ok(SessionCookies::default());
    };
    let ambiguous = || {
        Deny::Ambiguous(
            "A session cookie is given more than once, or beside quotes or escapes.".into(),
        )
    };
    // Werkzeug reads the header's bytes as UTF-8 (what is not becomes U+FFFD).
    let text = std::str::from_utf8(value.as_bytes()).map_err(|_| ambiguous())?;
    Ok(SessionCookies {
        session: flask_session::cookie(text, "session").map_err(|_| ambiguous())?,
        remember: flask_session::cookie(text, "remember_token").map_err(|_| ambiguous())?,
    })
}

/// Where an unauthenticated page request is sent: the route's login page with `next`
/// set to the path and query asked for, as FlexMeasures' UI does.
pub(crate) fn login_location(route: &Route, uri: &http::Uri) -> String {
    let login = route.login_redirect.as_deref().unwrap_or("/login");
    let next = uri.path_and_query().map_or("/", |p| p.as_str());
    let encoded: String = form_urlencoded::byte_serialize(next.as_bytes()).collect();
    format!("{login}?next={encoded}")
}

/// Stage: a browser session's request from another site, on a route that guards the
/// method, is refused (CSRF). Tokens and API keys are no browser's; without the
/// request's authority nothing counts as cross-origin.
pub fn check_origin(
    route: &Route,
    method: &http::Method,
    credential: Credential,
    headers: &HeaderMap,
    authority: Option<&HeaderValue>,
    tls: bool,
) -> Result<(), Deny> {
    if credential == Credential::Session
        && route.cross_origin.guards(method)
        && authority.is_some_and(|ours| is_cross_origin(headers, ours, tls))
    {
        return Err(Deny::Forbidden("cross_origin_session_request"));
    }
    Ok(())
}

/// Whether a browser says the request comes from another origin: `Sec-Fetch-Site` other
/// than `same-origin`/`none`, or else an `Origin` that is not this site's. A request
/// with neither (not a browser's, or a very old one) is not taken as cross-origin.
fn is_cross_origin(headers: &HeaderMap, authority: &HeaderValue, tls: bool) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(http::header::ORIGIN) else {
        return false;
    };
    let Ok(origin) = origin.to_str() else {
        return true;
    };
    let (scheme, host) = match origin.split_once("://") {
        Some(parts) => parts,
        None => return true,
    };
    let default_port = |scheme: &str| if scheme == "https" { ":443" } else { ":80" };
    let strip = |h: &str, scheme: &str| {
        let h = h.to_ascii_lowercase();
        h.strip_suffix(default_port(scheme))
            .map(str::to_owned)
            .unwrap_or(h)
    };
    let ours = authority.to_str().unwrap_or("");
    let ours_scheme = if tls { "https" } else { scheme };
    scheme != ours_scheme || strip(host, scheme) != strip(ours, ours_scheme)
}

/// Decision mode: decide the request an ingress describes, as the proxy would, and
/// answer 200 with the identity headers for the ingress to copy upstream, or the deny
/// status and body the proxy would send. Nothing is forwarded. `replay` marks nginx
/// asking again for a denial's body: answered the same, counted once.
pub async fn decide_for_ingress(
    gw: &Gateway,
    conn: &ConnInfo,
    parts: http::request::Parts,
    body: IngressBody,
    flavour: &'static str,
    replay: bool,
) -> Response<ProxyBody> {
    let mut book = Bookkeeping::start(gw, conn, parts.method.clone());
    let installed = Arc::clone(&book.installed);
    let response = match decide_request(gw, &installed, conn, parts, body, &mut book.outcome).await
    {
        Ok(headers) => super::decision::identity_answer(headers),
        Err(deny) => {
            book.outcome.denied(&deny);
            deny.into_response()
        }
    };
    // nginx asks a second time only for a denial's body: an allowed "replay" is no
    // such ask (a client's mark the ingress let through) and is counted and logged.
    book.silent = replay && book.outcome.deny.is_some();
    if !book.silent {
        gw.metrics
            .decision(flavour, book.outcome.deny.map_or("allow", |(d, _)| d));
    }
    book.finish(response.status().as_u16());
    response
}

async fn decide_request(
    gw: &Gateway,
    installed: &Installed,
    conn: &ConnInfo,
    mut parts: http::request::Parts,
    body: IngressBody,
    outcome: &mut Outcome,
) -> Result<Vec<(http::HeaderName, HeaderValue)>, Deny> {
    let rules = &*installed.rules;
    let authority = host::take_authority(&mut parts, &gw.server().allowed_hosts)?;
    headers::join_cookies(&mut parts.headers);
    let raw = parts.uri.path();
    let path = normalize(raw, &rules.paths).map_err(Deny::BadPath)?;
    // The ingress forwards the path as the client sent it: only a path that needs no
    // normalising is decided, so the path checked is the path forwarded.
    if path != raw {
        return Err(Deny::Ambiguous(
            "The path is not in normal form; send it as the upstream should see it.".into(),
        ));
    }
    let names = &rules.identity;
    let empty = || {
        [
            &names.user_id,
            &names.email,
            &names.account_id,
            &names.roles,
            &names.account_roles,
            &names.timestamp,
            &names.signature,
        ]
        .into_iter()
        .map(|n| (n.clone(), HeaderValue::from_static("")))
        .collect()
    };
    if path == rules.token_endpoint {
        outcome.route = Some(Arc::from(metrics::TOKEN_ENDPOINT));
        // Logins are flexgate's own work, on its proxy listener (password check off
        // the runtime, one answer for unknown and wrong, limits across replicas): a
        // login decided here and passed on would reach FlexMeasures' own, unthrottled
        // and telling unknown emails apart. The ingress routes the endpoint to the proxy.
        return Err(Deny::LoginNotDecided);
    }
    // The ingress forwards the client's headers as they are: a header the client named
    // in `Connection`, or one whose name has `_`, may reach the upstream in another
    // shape than the one decided (gone, or read as its `-` spelling). Refuse.
    if headers::has_unforwarded(&parts.headers) {
        return Err(Deny::Ambiguous(
            "A header named in Connection, or a header name with '_', cannot be decided: the upstream may not see it as flexgate would.".into(),
        ));
    }
    let overridden = headers::METHOD_OVERRIDE
        .iter()
        .any(|name| parts.headers.contains_key(name));
    let matched = match_with_override(
        rules,
        &parts.method,
        &mut parts.headers,
        &path,
        parts.uri.query(),
    )?;
    let route = matched.route;
    outcome.route = Some(Arc::clone(&route.name));
    outcome.route_index = Some(matched.index);
    // The proxy strips a method override the route does not take; here the ingress
    // forwards the client's headers as they are, so the upstream could run the request
    // as a method other than the one decided: refuse it.
    if overridden
        && !headers::METHOD_OVERRIDE
            .iter()
            .any(|name| parts.headers.contains_key(name))
    {
        return Err(Deny::Ambiguous(
            "A method-override header is not taken on this route: the upstream could run the request as another method than the one decided.".into(),
        ));
    }
    // Ids in a body that never reaches flexgate, or reaches it cut short, cannot be
    // checked, nor, in FlexMeasures mode, a token FlexMeasures would take from a JSON
    // body: fail closed.
    let body = match body {
        // Read before the route was known, up to the larger limit: each route takes
        // no more than its own (uploads, or a JSON body).
        IngressBody::Whole(bytes) if bytes.len() > route.body_limit(gw.limits()) => {
            return Err(Deny::BodyTooLarge);
        }
        // A preflight has no body, and the ingress takes the framing headers off
        // what it describes: only an empty body it sends shows there is none.
        IngressBody::Whole(bytes) if matched.preflight && !bytes.is_empty() => {
            return Err(preflight_with_a_body());
        }
        IngressBody::Whole(bytes) => bytes,
        // A preflight has no Content-Type, so an upstream reads no body of it, seen or
        // not.
        unseen => {
            if !matched.preflight
                && (route.needs_body
                    || (gw.auth.is_flexmeasures() && is_json(parts.headers.get(CONTENT_TYPE))))
            {
                return Err(match unseen {
                    IngressBody::Partial => Deny::PartialBody,
                    _ => Deny::Forbidden("body_needed_for_decision"),
                });
            }
            Bytes::new()
        }
    };
    // FlexMeasures mode: the ingress forwards the client's cookies as they are, so what
    // the proxy would take out is refused: a session cookie FlexMeasures may verify and
    // flexgate does not (spelled otherwise than Flask writes it), and, on public routes,
    // a logged-out one (FlexMeasures would log its user in again from it). A logout
    // ends its session when it is decided (flexgate does not see FlexMeasures' answer).
    let mut ending = None;
    if let Authenticator::FlexMeasures(fm) = &*gw.auth
        && (route.public || route.credentials.session)
        && parts.headers.contains_key(http::header::COOKIE)
    {
        let vetted = fm.vet(session_cookies(&parts.headers)?);
        let both = [vetted.session, vetted.remember];
        if both
            .iter()
            .flatten()
            .any(|v| matches!(v, Verdict::Unverified { canonical: false }))
        {
            return Err(Deny::Ambiguous(
                "A session cookie is not in the form FlexMeasures writes it.".into(),
            ));
        }
        if route.public && both.iter().flatten().any(Verdict::revoked) {
            return Err(Deny::Unauthenticated("revoked"));
        }
        if route.ends_session {
            ending = Some(vetted.proof()).filter(|p| !p.keys.is_empty());
        }
    }
    let (permit, _) = admit(
        gw,
        rules,
        conn,
        matched,
        &parts,
        &authority,
        UpstreamBody::Buffered(body),
        outcome,
    )
    .await?;
    // The ingress chooses which client headers flexgate sees (Envoy's
    // `allowed_headers`): a session request on a route guarded against other sites,
    // shown with neither `Sec-Fetch-Site` (which every current browser sends) nor
    // `Origin`, cannot be told to be this site's.
    if permit.credential() == Credential::Session
        && route.cross_origin.guards(&parts.method)
        && !parts.headers.contains_key("sec-fetch-site")
        && !parts.headers.contains_key(http::header::ORIGIN)
    {
        return Err(Deny::Forbidden("cross_origin_not_shown"));
    }
    if let (Authenticator::FlexMeasures(fm), Some(proof)) = (&*gw.auth, ending) {
        fm.revoke(&proof);
    }
    let Some(identity) = permit.identity() else {
        return Ok(empty());
    };
    if gw.auth.is_flexmeasures() {
        // The ingress forwards the client's headers as they are: FlexMeasures would act
        // as a session's user over the token's, and takes no API key.
        if permit.credential() == Credential::ApiKey {
            return Err(Deny::Unauthenticated("api_key_needs_the_proxy"));
        }
        let cookies = session_cookies(&parts.headers)?;
        if permit.credential() == Credential::Token
            && (cookies.session.is_some() || cookies.remember.is_some())
        {
            return Err(Deny::Ambiguous(
                "Send a token or a session cookie, not both.".into(),
            ));
        }
    }
    let now = unix_now();
    let v = &identity.headers;
    let mut ts = itoa::Buffer::new();
    let ts =
        HeaderValue::from_str(ts.format(now)).unwrap_or_else(|_| HeaderValue::from_static("0"));
    Ok(vec![
        (names.user_id.clone(), v.user_id.clone()),
        (names.email.clone(), v.email.clone()),
        (names.account_id.clone(), v.account_id.clone()),
        (names.roles.clone(), v.roles.clone()),
        (names.account_roles.clone(), v.account_roles.clone()),
        (names.timestamp.clone(), ts),
        (
            names.signature.clone(),
            gw.signer().sign(now, &parts.method, &path, identity),
        ),
    ])
}

/// Whether `route` lets a client switch to `protocol` (compared without case; a
/// versioned token such as `websocket/13` counts as its name).
fn route_allows_upgrade(route: &Route, protocol: &HeaderValue) -> bool {
    let name = protocol.as_bytes();
    let name = name.split(|b| *b == b'/').next().unwrap_or(name);
    !name.eq_ignore_ascii_case(b"h2c")
        && route
            .upgrades
            .iter()
            .any(|p| p.as_bytes().eq_ignore_ascii_case(name))
}

/// The refusal of a preflight that turns out to have a body (HTTP/2 DATA, or one the
/// ingress shows) although its headers said none.
pub fn preflight_with_a_body() -> Deny {
    Deny::Ambiguous("A CORS preflight has no body.".into())
}

/// The method a CORS preflight asks about, where the rule file forwards preflights
/// (`[paths] cors_preflight_paths`, for an upstream that answers them itself without
/// running a view, as FlexMeasures does with flask-cors): an `OPTIONS` request under
/// one of those paths with `Origin` and exactly one `Access-Control-Request-Method`,
/// and nothing a browser never sends on a preflight: no `Authorization`, `Cookie` or
/// token in the query (FlexMeasures would read it), no method override, no `Upgrade`,
/// no body and no `Content-Type` (so that no upstream reads one it was sent anyway).
/// It is matched with the method it asks about, so only a path some route takes for
/// that method gets an answer. Anything else sent as `OPTIONS` is matched as
/// `OPTIONS`, as before.
pub fn cors_preflight(
    rules: &RuleSet,
    method: &http::Method,
    headers: &HeaderMap,
    path: &str,
    query: Option<&str>,
) -> Option<http::Method> {
    use http::header::{
        ACCESS_CONTROL_REQUEST_METHOD, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, ORIGIN,
        TRANSFER_ENCODING, UPGRADE,
    };
    if method != http::Method::OPTIONS
        || !rules
            .cors_preflight_paths
            .iter()
            .any(|prefix| path.starts_with(&**prefix))
        || !headers.contains_key(ORIGIN)
        || [
            AUTHORIZATION,
            COOKIE,
            CONTENT_TYPE,
            TRANSFER_ENCODING,
            UPGRADE,
        ]
        .iter()
        .any(|name| headers.contains_key(name))
        || headers::METHOD_OVERRIDE
            .iter()
            .any(|name| headers.contains_key(name))
        || headers
            .get_all(CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes() != b"0")
        || query.is_some_and(|q| {
            form_urlencoded::parse(q.as_bytes()).any(|(key, _)| key == "auth_token")
        })
    {
        return None;
    }
    let mut asked = headers.get_all(ACCESS_CONTROL_REQUEST_METHOD).iter();
    let (Some(asked), None) = (asked.next(), asked.next()) else {
        return None;
    };
    let asked = http::Method::from_bytes(asked.as_bytes()).ok()?;
    (asked != http::Method::OPTIONS && asked != http::Method::CONNECT).then_some(asked)
}

/// Stage: match the route, honouring a method-override header only on `POST` and only
/// where the route matched by the overriding method opts in (`method_override`); then
/// that method is the one matched and checked, and the header goes upstream. Anywhere
/// else the override headers are removed, so the upstream runs the method checked.
pub fn match_with_override<'r, 'p>(
    rules: &'r RuleSet,
    method: &http::Method,
    headers: &mut HeaderMap,
    path: &'p str,
    query: Option<&str>,
) -> Result<Matched<'r, 'p>, Deny> {
    if let Some(asked) = cors_preflight(rules, method, headers, path, query) {
        let mut found = match_rule(rules, &asked, path)?;
        found.preflight = true;
        return Ok(found);
    }
    let wanted = headers::method_override(headers).map_err(|_| {
        Deny::Ambiguous("The method-override headers disagree or name no method.".into())
    })?;
    if let Some(wanted) = wanted {
        if method == http::Method::POST
            && let Ok(found) = match_rule(rules, &wanted, path)
            && found.route.method_override
        {
            return Ok(found);
        }
        headers::strip_method_override(headers);
    }
    match_rule(rules, method, path)
}

/// The route a request matched.
#[derive(Debug, Clone, Copy)]
pub struct Matched<'r, 'p> {
    /// Position in the rule file (and in the per-route metric handles).
    pub index: usize,
    /// The route.
    pub route: &'r Route,
    /// Its template's parameter values.
    pub params: Params<'p>,
    /// A CORS preflight for the method it asks about ([`cors_preflight`]): it goes on
    /// with no identity and no checks, as on a public route.
    pub preflight: bool,
}

impl Matched<'_, '_> {
    /// Whether the request goes on without authentication: a public route, or a CORS
    /// preflight (which carries no credentials, and for which the upstream runs no
    /// view; its `before_request` hooks still run, as for any anonymous request).
    pub fn needs_no_identity(&self) -> bool {
        self.route.public || self.preflight
    }
}

/// Stage: find the route for the method and the normalised path (deny by default).
pub fn match_rule<'r, 'p>(
    rules: &'r RuleSet,
    method: &http::Method,
    path: &'p str,
) -> Result<Matched<'r, 'p>, Deny> {
    match rules.matcher.find(method, path) {
        Found::Route(index, params) => rules
            .routes
            .get(index)
            .map(|route| Matched {
                index,
                route,
                params,
                preflight: false,
            })
            .ok_or(Deny::NoRoute(rules.unmatched_status)),
        Found::MethodNotAllowed => Err(Deny::MethodNotAllowed(rules.unmatched_status)),
        Found::NoRoute => Err(Deny::NoRoute(rules.unmatched_status)),
    }
}

/// Stage: find exactly one token and check it. Native mode reads the `Authorization`
/// header (raw or `Bearer`) and, when enabled, `?auth_token=`; FlexMeasures mode reads
/// every place FlexMeasures does (JSON body `auth_token`, then the query, then the
/// header) and refuses a request that uses more than one (400), so the token checked is
/// the token FlexMeasures will use.
pub async fn authenticate(
    gw: &Gateway,
    rules: &RuleSet,
    route: &Route,
    headers: &HeaderMap,
    query: Option<&str>,
    body_token: Option<&str>,
) -> Result<(Arc<Identity>, Credential), Deny> {
    let flexmeasures = gw.auth.is_flexmeasures();
    let result = async {
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let from_header = match (values.next(), values.next()) {
            (None, _) => None,
            (Some(v), None) => Some(
                token_from_authorization(v.as_bytes())
                    .ok_or(Deny::Unauthenticated("malformed_authorization"))?,
            ),
            (Some(_), Some(_)) => {
                return Err(Deny::Unauthenticated("several_authorization_headers"));
            }
        };
        let from_query = match (rules.query_token || flexmeasures, query) {
            (true, Some(q)) => extract::query_value(q, &["auth_token".to_owned()])
                .map_err(|_| Deny::Unauthenticated("several_query_tokens"))?,
            _ => None,
        };
        let token: &str = match (&from_header, &from_query, body_token) {
            (Some(t), None, None) => t,
            (None, Some(t), None) => t,
            (None, None, Some(t)) => t,
            (None, None, None) => {
                return Box::pin(authenticate_session(gw, route, headers)).await;
            }
            _ if flexmeasures => {
                return Err(Deny::Ambiguous(
                    "A token was given in more than one place (JSON body, query, header); send it once."
                        .into(),
                ));
            }
            _ => return Err(Deny::Unauthenticated("token_in_header_and_query")),
        };
        if !route.credentials.token {
            return Err(Deny::Unauthenticated("token_not_accepted"));
        }
        // A key goes in the header only: in a query or body the upstream would see it.
        if apikey::looks_like_key(token) && from_header.is_none() {
            return Err(Deny::Unauthenticated("api_key_not_in_header"));
        }
        gw.auth
            .authenticate(token)
            .await
            .map(|identity| {
                let credential = if identity.key.is_some() {
                    Credential::ApiKey
                } else {
                    Credential::Token
                };
                (identity, credential)
            })
            .map_err(auth_deny)
    }
    .await;
    gw.metrics.token_validation(match &result {
        Ok(_) => "valid",
        Err(d) => d.reason(),
    });
    result
}

/// Stage: what an API key may do. A read-only key passes only safe methods on routes
/// whose every check is a `read`.
pub fn check_key_scope(
    rules: &RuleSet,
    route: &Route,
    method: &http::Method,
    who: &Identity,
) -> Result<(), Deny> {
    match &who.key {
        Some(key)
            if key.read_only
                && (!method.is_safe()
                    || route
                        .checks
                        .iter()
                        .any(|c| rules.permission_name(c.permission) != "read")) =>
        {
            Err(Deny::Forbidden("read_only_api_key"))
        }
        _ => Ok(()),
    }
}

fn auth_deny(e: AuthError) -> Deny {
    match e {
        AuthError::Unavailable(_) => Deny::Unavailable("identity_store"),
        other => Deny::Unauthenticated(other.as_str()),
    }
}

/// No token anywhere: FlexMeasures' browser session, where the route accepts one.
async fn authenticate_session(
    gw: &Gateway,
    route: &Route,
    headers: &HeaderMap,
) -> Result<(Arc<Identity>, Credential), Deny> {
    let Authenticator::FlexMeasures(fm) = &*gw.auth else {
        return Err(Deny::Unauthenticated("no_token"));
    };
    if !route.credentials.session {
        return Err(Deny::Unauthenticated("no_token"));
    }
    let cookies = session_cookies(headers)?;
    if cookies.session.is_none() && cookies.remember.is_none() {
        return Err(Deny::Unauthenticated("no_credentials"));
    }
    fm.authenticate_session(cookies)
        .await
        .map(|(identity, _)| (identity, Credential::Session))
        .map_err(auth_deny)
}

/// FlexMeasures mode: the `auth_token` of a JSON object body, as Flask-Security reads it
/// (`request.get_json(silent=True)`); a key that is not a string is a token that cannot
/// verify, and two `auth_token` keys are ambiguous (400). A body that does not parse
/// here is refused (400) rather than read as carrying no token: Python's `json` takes
/// more than strict JSON (`NaN`, `Infinity`, unpaired surrogate escapes, UTF-16 and
/// UTF-32, numbers out of range, deeper nesting), so FlexMeasures could find a token
/// in a body flexgate cannot read and act as a user flexgate never checked. Only a
/// UTF-8 byte-order mark, which Python skips too, is skipped.
fn body_token(bytes: &Bytes) -> Result<Option<String>, Deny> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match extract::parse_json_strict(text) {
        Ok(Json::Object(map)) => Ok(map.get("auth_token").map(|v| match v {
            Json::String(s) => s.clone(),
            _ => String::new(),
        })),
        Ok(_) => Ok(None),
        Err(e) if e.contains("duplicate key") => {
            Err(Deny::Ambiguous("The JSON body has a duplicate key.".into()))
        }
        Err(_) => Err(Deny::MalformedJson),
    }
}

/// Stage: the route's role requirements (FlexMeasures decorator semantics).
pub fn check_roles(rules: &RuleSet, route: &Route, who: &Identity) -> Result<(), Deny> {
    use policy::RoleRefused::*;
    policy::check_roles(&who.principal, &route.roles, &rules.admins).map_err(
        |refused| match refused {
            Required => Deny::RoleForbidden {
                reason: "roles_required",
                suffix: policy::role_message_suffix(&route.roles.required),
            },
            Accepted => Deny::RoleForbidden {
                reason: "roles_accepted",
                suffix: policy::role_message_suffix(&route.roles.accepted),
            },
            AccountRequired => Deny::Forbidden("account_roles_required"),
            AccountAccepted => Deny::Forbidden("account_roles_accepted"),
        },
    )
}

/// The body a route reads ids from, as a JSON value. A route with a form source also
/// reads a url-encoded body (its fields as text, see [`extract::form_fields`]), refuses
/// a multipart one (422) and reads nothing from other non-JSON ones, as the upstream's
/// form parser does; every other body goes through [`checked_json`].
pub fn checked_body(
    headers: &HeaderMap,
    bytes: &Bytes,
    route: &Route,
) -> Result<Option<Json>, Deny> {
    if route.plain_text_multipart {
        return checked_multipart(headers, bytes).map(|()| None);
    }
    let mut body = read_body(headers, bytes, route.reads_form)?;
    // Flask-WTF turns a JSON body into a form field by field, and a list (a field
    // given twice, a JSON list value, a JSON list of pairs) into several values of one
    // field, of which WTForms takes the first: on a form route every field has one
    // value, or the pointers would check another value than the form takes.
    if route.reads_form {
        match &body {
            None => {}
            Some(Json::Object(fields)) => {
                if let Some(name) = fields.iter().find_map(|(k, v)| v.is_array().then_some(k)) {
                    return Err(Deny::Ambiguous(format!(
                        "form field {name} is given more than once"
                    )));
                }
            }
            Some(_) => {
                return Err(Deny::Ambiguous(
                    "A form sent as JSON must be an object.".into(),
                ));
            }
        }
    }
    // A route reads its ids by key: a body that is no object has none to check, while
    // the upstream may still find keys in it (FlexMeasures' MultiDict.update takes a
    // list of [key, value] pairs as a dict), so it is refused.
    if matches!(&body, Some(b) if !b.is_object()) {
        return Err(Deny::Invalid {
            location: "json",
            field: "_schema".into(),
            message: "Invalid input type: the JSON body must be an object.".into(),
        });
    }
    // Fields that may hold JSON written as a string are read as that JSON, so the
    // pointers reach into them whichever way the client wrote them.
    if let Some(Json::Object(fields)) = &mut body {
        for name in &route.json_strings {
            if let Some(value) = fields.get_mut(name)
                && let Json::String(text) = value
            {
                *value =
                    extract::parse_json_strict(text.as_bytes()).map_err(|_| Deny::Invalid {
                        location: if route.reads_form { "form" } else { "json" },
                        field: name.clone(),
                        message: "Not a valid JSON string.".into(),
                    })?;
            }
        }
    }
    Ok(body)
}

/// A route that takes uploads (`plain_text_multipart`): a multipart body whose parts'
/// headers are plain text, or none.
fn checked_multipart(headers: &HeaderMap, bytes: &Bytes) -> Result<(), Deny> {
    let content_type = headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes);
    multipart::check(content_type, bytes, TextClass::Plain).map_err(|e| match e {
        MultipartError::NotMultipart => Deny::Invalid {
            location: "form",
            field: "_schema".into(),
            message: "Invalid input type: send the files as multipart/form-data.".into(),
        },
        MultipartError::Boundary(_) => Deny::Ambiguous(format!("{e}.")),
        MultipartError::NotText { .. } => Deny::Invalid {
            location: "files",
            field: "uploaded-files".into(),
            message: format!(
                "Not plain text: {e} ({} are refused in file names here).",
                TextClass::Plain.refuses()
            ),
        },
    })
}

fn read_body(headers: &HeaderMap, bytes: &Bytes, reads_form: bool) -> Result<Option<Json>, Deny> {
    if reads_form && !bytes.is_empty() {
        match form_kind(headers.get(CONTENT_TYPE)) {
            FormKind::UrlEncoded => return Ok(Some(extract::form_fields(bytes))),
            // Werkzeug reads a multipart body's fields as a form too; flexgate does not.
            FormKind::Multipart => {
                return Err(Deny::Invalid {
                    location: "form",
                    field: "_schema".into(),
                    message: "Send this form url-encoded: a multipart body is not read here."
                        .into(),
                });
            }
            // Neither form nor JSON: the upstream reads no form from it.
            FormKind::Other if !is_json(headers.get(CONTENT_TYPE)) => return Ok(None),
            FormKind::Other => {}
        }
    }
    checked_json(headers, bytes)
}

/// What kind of form a body is, by its media type as Werkzeug reads it.
enum FormKind {
    UrlEncoded,
    Multipart,
    Other,
}

fn form_kind(content_type: Option<&HeaderValue>) -> FormKind {
    let Some(value) = content_type else {
        return FormKind::Other;
    };
    let bytes = value.as_bytes();
    let end = bytes.iter().position(|&b| b == b';').unwrap_or(bytes.len());
    let media = bytes[..end].trim_ascii();
    if media.eq_ignore_ascii_case(b"application/x-www-form-urlencoded") {
        FormKind::UrlEncoded
    } else if media
        .get(..10)
        .is_some_and(|m| m.eq_ignore_ascii_case(b"multipart/"))
    {
        FormKind::Multipart
    } else {
        FormKind::Other
    }
}

/// The JSON a route reads ids from: none for an empty body; otherwise it must be
/// declared JSON (422), parse (400) and repeat no key (400).
pub fn checked_json(headers: &HeaderMap, bytes: &Bytes) -> Result<Option<Json>, Deny> {
    if bytes.is_empty() {
        return Ok(None);
    }
    if !is_json(headers.get(CONTENT_TYPE)) {
        // The upstream might parse it as JSON anyway; the ids in it were not checked.
        return Err(Deny::Invalid {
            location: "json",
            field: "_schema".into(),
            message: "Invalid input type: send the body as application/json.".into(),
        });
    }
    let json = extract::parse_json_strict(bytes).map_err(|e| {
        if e.contains("duplicate key") {
            Deny::Ambiguous("The JSON body has a duplicate key.".into())
        } else {
            Deny::MalformedJson
        }
    })?;
    Ok(Some(json))
}

/// Whether a Content-Type is JSON (`application/json`, `application/*+json`), read from
/// its bytes as Werkzeug reads it (latin-1): a parameter with other than ASCII bytes
/// must not make a JSON body look like none.
pub fn is_json(content_type: Option<&HeaderValue>) -> bool {
    let Some(ct) = content_type else {
        return false;
    };
    let bytes = ct.as_bytes();
    let essence = bytes
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii()
        .to_ascii_lowercase();
    essence == b"application/json"
        || (essence.starts_with(b"application/") && essence.ends_with(b"+json"))
}

/// FlexMeasures `/api/dev`: answer an unknown or malformed path id before asking for
/// credentials.
async fn preresolve<O: OwnerSource>(
    owners: &O,
    rules: &RuleSet,
    route: &Route,
    facts: &Facts<'_>,
) -> Result<(), Deny> {
    for check in &route.checks {
        let Target::Sources(alternatives) = &check.target else {
            continue;
        };
        for (k, source) in alternatives {
            if let Source::Path { .. } = source {
                let kind = &rules.kinds[*k];
                for parsed in read_ids(source, kind, facts, None)? {
                    resolve_owner(owners, kind, check, source, parsed).await?;
                }
            }
        }
    }
    Ok(())
}

/// Stage: every permission check of the route, in order. Each id is parsed, its owner
/// resolved (a missing resource answers before the ACL, even for admins, as in
/// FlexMeasures), and the ACL decided.
pub async fn authorize<T: Trace, O: OwnerSource>(
    owners: &O,
    rules: &RuleSet,
    route: &Route,
    facts: &Facts<'_>,
    who: &Identity,
    trace: &mut T,
) -> Result<(), Deny> {
    refuse_fields(rules, route, facts, who, trace)?;
    run_checks(owners, rules, route, facts, who, trace, false).await
}

/// Stage, on a route that reads the body: the checks that need no body (ids in the
/// path, query or headers, kinds without ids), decided before the body is read, so a
/// caller refused on them never has flexgate buffer an upload for nothing. The same
/// checks are decided again, with the rest, by [`authorize`] once the body is in.
pub async fn authorize_before_body<T: Trace, O: OwnerSource>(
    owners: &O,
    rules: &RuleSet,
    route: &Route,
    facts: &Facts<'_>,
    who: &Identity,
    trace: &mut T,
) -> Result<(), Deny> {
    run_checks(owners, rules, route, facts, who, trace, true).await
}

async fn run_checks<T: Trace, O: OwnerSource>(
    owners: &O,
    rules: &RuleSet,
    route: &Route,
    facts: &Facts<'_>,
    who: &Identity,
    trace: &mut T,
    body_free_only: bool,
) -> Result<(), Deny> {
    let mut subject: Option<Arc<[Value]>> = None;
    for (n, check) in route.checks.iter().enumerate() {
        if body_free_only && check.reads_body() {
            continue;
        }
        let permission = rules.permission_name(check.permission);
        match &check.target {
            Target::Singleton(k) => {
                let kind = &rules.kinds[*k];
                if trace.enabled() {
                    trace.note(format!(
                        "check {}: {permission} on {} (no id)",
                        n + 1,
                        kind.name
                    ));
                }
                trace.checking(check.permission, *k, None);
                decide(rules, kind, check, who, &[], trace)?;
            }
            Target::Sources(alternatives) => {
                let mut chosen = None;
                for (k, source) in alternatives {
                    let ids = read_ids(source, &rules.kinds[*k], facts, subject.as_deref())?;
                    if !ids.is_empty() {
                        chosen = Some((*k, source, ids));
                        break;
                    }
                }
                let Some((k, source, ids)) = chosen else {
                    let (_, first) = &alternatives[0];
                    if trace.enabled() {
                        trace.note(format!(
                            "check {}: {permission}: no id given ({} {})",
                            n + 1,
                            first.location(),
                            first.field()
                        ));
                    }
                    let empty_list =
                        check.if_empty != check.if_absent && names_empty_list(alternatives, facts);
                    if empty_list && trace.enabled() {
                        trace.note(format!("check {}: the list names no id", n + 1));
                    }
                    let policy = if empty_list {
                        check.if_empty
                    } else {
                        check.if_absent
                    };
                    match policy {
                        IfAbsent::Skip => continue,
                        IfAbsent::AdminsOnly if who.principal.has_role(&rules.admins.admin) => {
                            continue;
                        }
                        IfAbsent::AdminsOnly => {
                            return Err(Deny::Forbidden("admins_only_without_id"));
                        }
                        IfAbsent::Reject => {
                            return Err(Deny::Invalid {
                                location: first.location(),
                                field: first.field(),
                                message: if empty_list {
                                    "The list names no id.".into()
                                } else {
                                    "Missing data for required field.".into()
                                },
                            });
                        }
                    }
                };
                let kind = &rules.kinds[k];
                for parsed in ids {
                    if let IdParse::Id(id) = &parsed {
                        trace.checking(check.permission, k, Some(id));
                    }
                    let (id, row) = resolve_owner(owners, kind, check, source, parsed).await?;
                    if trace.enabled() {
                        trace.note(format!(
                            "check {}: {permission} on {} {id} ({} {}): owner row {}",
                            n + 1,
                            kind.name,
                            source.location(),
                            source.field(),
                            render_row(kind, &row)
                        ));
                    }
                    decide(rules, kind, check, who, &row, trace)?;
                    if n == 0 && subject.is_none() {
                        subject = Some(row);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Stage: the fields a route refuses whatever their value (`refuse_json`,
/// `refuse_query`: 422, as FlexMeasures answers an unknown field), and those only
/// admins may send (`admins_only_json`: 403).
fn refuse_fields<T: Trace>(
    rules: &RuleSet,
    route: &Route,
    facts: &Facts<'_>,
    who: &Identity,
    trace: &mut T,
) -> Result<(), Deny> {
    let refused = |location: &'static str, field: String, trace: &mut T| {
        if trace.enabled() {
            trace.note(format!("{location} field {field:?}: refused on this route"));
        }
        Deny::Invalid {
            location,
            field,
            message: "Unknown field.".into(),
        }
    };
    if let Some(body) = facts.body {
        for pointer in &route.refuse_json {
            if !pointer.select(body).is_empty() {
                return Err(refused("json", pointer.field_name(), trace));
            }
        }
        for (pointer, class) in &route.text_json {
            if !pointer
                .select(body)
                .iter()
                .all(|value| extract::is_safe_text(value, *class))
            {
                let location = if route.reads_form { "form" } else { "json" };
                if trace.enabled() {
                    trace.note(format!(
                        "{location} field {:?}: holds {} (refused on this route)",
                        pointer.field_name(),
                        class.refuses()
                    ));
                }
                return Err(Deny::Invalid {
                    location,
                    field: pointer.field_name(),
                    message: format!("Not plain text: {} are refused here.", class.refuses()),
                });
            }
        }
        for (pointer, max, written) in &route.max_duration_json {
            // null is absent to FlexMeasures (its default applies).
            let within = |value: &&Json| {
                value.is_null()
                    || value
                        .as_str()
                        .and_then(crate::rules::duration::upper_bound)
                        .is_some_and(|d| d <= *max)
            };
            if !pointer.select(body).iter().all(within) {
                if trace.enabled() {
                    trace.note(format!(
                        "json field {:?}: not an ISO 8601 duration of at most {written} (refused on this route)",
                        pointer.field_name()
                    ));
                }
                return Err(Deny::Invalid {
                    location: "json",
                    field: pointer.field_name(),
                    message: format!(
                        "Not a duration of at most {written} (ISO 8601, such as P7D or PT48H)."
                    ),
                });
            }
        }
        if !route.admins_only_json.is_empty() && !who.principal.has_role(&rules.admins.admin) {
            for pointer in &route.admins_only_json {
                if !pointer.select(body).is_empty() {
                    if trace.enabled() {
                        trace.note(format!(
                            "json field {:?}: admins only on this route",
                            pointer.field_name()
                        ));
                    }
                    return Err(Deny::Forbidden("admins_only_field"));
                }
            }
        }
    }
    if let (Some(query), false) = (facts.query, route.refuse_query.is_empty()) {
        for (key, _) in form_urlencoded::parse(query.as_bytes()) {
            if let Some(name) = route.refuse_query.iter().find(|n| **n == key) {
                return Err(refused("query", name.clone(), trace));
            }
        }
    }
    Ok(())
}

/// Stage: parse one id and find its owner row (a missing one is a 404 or 422).
async fn resolve_owner<O: OwnerSource>(
    owners: &O,
    kind: &Kind,
    check: &Check,
    source: &Source,
    parsed: IdParse,
) -> Result<(ResourceId, Arc<[Value]>), Deny> {
    let not_found = |id: &dyn std::fmt::Display| Deny::NotFound {
        status: check.not_found_status.unwrap_or(kind.not_found_status),
        message: kind.not_found_message.replace("{id}", &id.to_string()),
        location: source.location(),
        field: source.field(),
    };
    let id = match parsed {
        IdParse::Id(id) => id,
        IdParse::OutOfRange(text) => return Err(not_found(&text)),
        IdParse::Invalid(message) => {
            return Err(Deny::Invalid {
                location: source.location(),
                field: source.field(),
                message: message.into(),
            });
        }
    };
    match owners.owner(kind, &id).await {
        Ok(Some(row)) => Ok((id, row)),
        Ok(None) => Err(not_found(&id)),
        Err(()) => Err(Deny::Unavailable("owner_lookup")),
    }
}

/// Where resource owners come from: the database behind its caches (serving), or a
/// rule test's fixtures (`flexgate config test`). `Err` means the source could not
/// answer (the request fails closed).
pub trait OwnerSource: Sync {
    /// The owner row of `id` of `kind`, or `None` when there is no such resource.
    fn owner(
        &self,
        kind: &Kind,
        id: &ResourceId,
    ) -> impl std::future::Future<Output = Result<Option<Arc<[Value]>>, ()>> + Send;
}

impl OwnerSource for OwnerResolver {
    async fn owner(&self, kind: &Kind, id: &ResourceId) -> Result<Option<Arc<[Value]>>, ()> {
        self.resolve(kind, id)
            .await
            .map(|(row, _)| row)
            .map_err(|_| ())
    }
}

/// Stage: the pure policy decision for one resource.
fn decide<T: Trace>(
    rules: &RuleSet,
    kind: &Kind,
    check: &Check,
    who: &Identity,
    row: &[Value],
    trace: &mut T,
) -> Result<(), Deny> {
    let decision = policy::check_access(
        Some(&who.principal),
        check.permission,
        Some((&kind.policy, row)),
        &rules.admins,
    );
    if trace.enabled() {
        let (acl, case) = kind.policy.acl_for(check.permission, row);
        if let Some(case) = case {
            trace.note(format!("  case {} of kind {} applies", case + 1, kind.name));
        }
        match acl {
            None => trace.note(format!(
                "  {} is not in the ACL of {}: admins only",
                rules.permission_name(check.permission),
                kind.name
            )),
            Some(acl) => {
                for item in &acl.items {
                    let mark = if item.matches(&who.principal, row) {
                        "matches"
                    } else {
                        "no match"
                    };
                    trace.note(format!("  ACL item {}: {mark}", item.source));
                }
            }
        }
        trace.note(format!("  decision: {decision:?}"));
    }
    match decision {
        Decision::Allow(_) => Ok(()),
        Decision::Deny(Refused::NotInAcl) => Err(Deny::Forbidden("permission_not_in_acl")),
        Decision::Deny(Refused::NoItemMatched) => Err(Deny::Forbidden("no_acl_item_matched")),
        Decision::Deny(Refused::NoContext) => Err(Deny::Forbidden("no_context")),
        Decision::Deny(Refused::Anonymous) => Err(Deny::Unauthenticated("anonymous")),
    }
}

fn render_row(kind: &Kind, row: &[Value]) -> String {
    let fields: Vec<String> = kind
        .columns
        .iter()
        .zip(row)
        .map(|(c, v)| format!("{c}={v}"))
        .collect();
    format!("{{{}}}", fields.join(", "))
}

/// Read the ids a source names in this request (empty = absent).
pub fn read_ids(
    source: &Source,
    kind: &Kind,
    facts: &Facts<'_>,
    subject: Option<&[Value]>,
) -> Result<Vec<IdParse>, Deny> {
    let one = |text: &str| vec![extract::parse_text_id(text, kind.id_type)];
    Ok(match source {
        Source::Path { index, .. } => match facts.params.get(*index) {
            Some(segment) => match percent_decode(segment) {
                Some(text) => one(&text),
                None => vec![IdParse::Invalid("Not a valid identifier.")],
            },
            None => Vec::new(),
        },
        Source::Query(names) => match facts.query {
            Some(q) => match extract::query_value(q, names) {
                Ok(Some(v)) => one(&v),
                Ok(None) => Vec::new(),
                Err(ExtractError::Ambiguous(why)) => return Err(Deny::Ambiguous(why)),
            },
            None => Vec::new(),
        },
        Source::Header(name) => {
            let mut values = facts.headers.get_all(name).iter();
            match (values.next(), values.next()) {
                (None, _) => Vec::new(),
                (Some(v), None) => match v.to_str() {
                    Ok(text) => one(text.trim()),
                    Err(_) => vec![IdParse::Invalid("Not a valid identifier.")],
                },
                (Some(_), Some(_)) => {
                    return Err(Deny::Ambiguous(format!(
                        "header {name} is given more than once"
                    )));
                }
            }
        }
        Source::Json(pointer) => match facts.body {
            Some(body) => extract::json_ids(body, pointer, kind.id_type),
            None => Vec::new(),
        },
        // A form field, as WTForms reads it: blank is absent, anything but an id
        // (" 5", "+5", 5.0: Python's int() takes them) is refused. A field given twice
        // never gets here ([`checked_body`]). The field's "none" value, spelled as a
        // browser sends it (`-1`, or -1 in a JSON form), is absent too; any other
        // spelling of it is no id.
        Source::Form { name, none } => match facts.body {
            Some(Json::Object(fields)) => match fields.get(name) {
                None | Some(Json::Null) => Vec::new(),
                Some(Json::String(text)) if text.trim().is_empty() => Vec::new(),
                Some(value) if none.is_some_and(|none| is_form_none(value, none)) => Vec::new(),
                Some(value) => vec![extract::parse_json_id(value, kind.id_type)],
            },
            _ => Vec::new(),
        },
        Source::Column { index, .. } => match subject.and_then(|row| row.get(*index)) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Int(i)) => match kind.id_type {
                IdType::Integer => vec![IdParse::Id(ResourceId::Int(*i))],
                IdType::Text => one(&i.to_string()),
            },
            Some(Value::Text(s)) => one(s),
            Some(Value::Bool(_)) => vec![IdParse::Invalid("Not a valid identifier.")],
        },
    })
}

/// Whether a form field holds exactly its "none" value: the text a form sends, or the
/// JSON integer.
fn is_form_none(value: &Json, none: i64) -> bool {
    match value {
        Json::String(text) => *text == none.to_string(),
        Json::Number(n) => n.as_i64() == Some(none),
        _ => false,
    }
}

/// Whether a JSON source of the check is there as a list that names no id.
fn names_empty_list(alternatives: &[(usize, Source)], facts: &Facts<'_>) -> bool {
    let Some(body) = facts.body else {
        return false;
    };
    alternatives.iter().any(|(_, source)| match source {
        Source::Json(pointer) => extract::json_has_list(body, pointer),
        _ => false,
    })
}

/// Decode the escapes the normaliser left (reserved and non-ASCII characters).
fn percent_decode(segment: &str) -> Option<std::borrow::Cow<'_, str>> {
    if !segment.contains('%') {
        return Some(std::borrow::Cow::Borrowed(segment));
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(std::borrow::Cow::Owned)
}

/// Stage: prepare the headers the upstream sees (see `headers` for the order).
#[allow(clippy::too_many_arguments)]
fn rewrite_headers(
    gw: &Gateway,
    rules: &RuleSet,
    conn: &ConnInfo,
    h: &mut HeaderMap,
    method: &http::Method,
    permit: &Permit,
    path: &str,
    upgrade: bool,
    keep_authorization: bool,
    authority: &HeaderValue,
) -> Vec<u8> {
    headers::strip_hop_by_hop(h, upgrade);
    headers::strip_client_identity(h, &rules.identity.prefix);
    for name in gw.decision_header_names() {
        h.remove(name);
    }
    if let (Authenticator::FlexMeasures(fm), Credential::ApiKey, Some(identity)) =
        (&*gw.auth, permit.credential(), permit.identity())
    {
        // FlexMeasures takes no API key: it gets a token of its own for the key's user,
        // signed by flexgate, which the client never sees.
        if let Ok(token) = HeaderValue::from_str(&fm.upstream_token(identity)) {
            h.insert(AUTHORIZATION, token);
        } else {
            h.remove(AUTHORIZATION);
        }
        headers::strip_cookies(h, headers::FLEXMEASURES_SESSION_COOKIES);
    } else if gw.auth.is_flexmeasures() && permit.credential() == Credential::Token {
        // FlexMeasures authenticates the request again: it must get the very token
        // flexgate checked (raw, as it reads the header), and no session cookie that
        // would make it act as the session's user instead.
        headers::raw_authorization(h);
        headers::strip_cookies(h, headers::FLEXMEASURES_SESSION_COOKIES);
    } else if !gw.forwards_authorization() && !keep_authorization {
        h.remove(AUTHORIZATION);
    }
    // Framing is re-derived by the upstream client from the body actually sent, so a
    // client's Content-Length (alone, doubled, or beside Transfer-Encoding) never
    // reaches the upstream.
    h.remove(CONTENT_LENGTH);
    // What flexgate adds is written once, as header lines, after what is left of the
    // client's headers (none of which can share these names any more; `Host` was taken
    // out when the authority was checked).
    let mut added = Vec::with_capacity(512);
    let upstream_host = if gw.server().preserve_host {
        authority
    } else {
        gw.upstream().host()
    };
    headers::write_line(&mut added, &HOST, upstream_host.as_bytes());
    headers::set_forwarded(&mut added, &conn.client, conn.tls, Some(authority));
    if let Some(identity) = permit.identity() {
        headers::inject_identity(
            &mut added,
            &rules.identity,
            identity,
            gw.signer(),
            method,
            path,
            unix_now(),
        );
    }
    added
}

/// 200 OK with a JSON body (token endpoint, admin endpoints).
pub fn ok_json(body: &Json) -> Response<ProxyBody> {
    super::deny::json_response(StatusCode::OK, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn token_of(body: &[u8]) -> Result<Option<String>, &'static str> {
        body_token(&Bytes::copy_from_slice(body)).map_err(|d| d.reason())
    }

    #[test]
    fn a_cors_preflight_is_what_a_browser_sends_and_is_matched_with_the_method_it_asks() {
        let text = |prefixes: &str| {
            format!(
                "[paths]\ncors_preflight_paths = [{prefixes}]\n\n[[route]]\nname = \"asset\"\nmethods = [\"GET\", \"PATCH\"]\npath = \"/api/assets/{{id}}\"\n\n[[route]]\nname = \"page\"\nmethods = [\"GET\"]\npath = \"/assets/{{id}}\"\n"
            )
        };
        let compile = |prefixes: &str| {
            crate::rules::compile::compile_text(&text(prefixes), std::path::Path::new("r.toml"))
                .unwrap()
                .rules
        };
        let (on, off) = (compile("\"/api/\""), compile(""));
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, HeaderValue::from_static(v));
            }
            h
        };
        let browser = [
            ("origin", "https://app.example"),
            ("access-control-request-method", "PATCH"),
        ];
        let options = http::Method::OPTIONS;
        let asks = |rules: &RuleSet, pairs: &[(&'static str, &'static str)], path, query| {
            cors_preflight(rules, &options, &headers(pairs), path, query)
        };
        let api = "/api/assets/7";
        assert_eq!(asks(&on, &browser, api, None), Some(http::Method::PATCH));
        assert_eq!(
            asks(
                &on,
                &[&browser[..], &[("content-length", "0")]].concat(),
                api,
                Some("a=1")
            ),
            Some(http::Method::PATCH)
        );
        let found = match_with_override(&on, &options, &mut headers(&browser), api, None).unwrap();
        assert!(found.preflight && found.needs_no_identity());
        assert_eq!(found.params.get(0), Some("7"));
        let origin = ("origin", "https://app.example");
        for not_one in [
            &[origin][..],
            &[("access-control-request-method", "PATCH")],
            &[&browser[..], &[("authorization", "Bearer x")]].concat(),
            &[&browser[..], &[("cookie", "session=x")]].concat(),
            &[&browser[..], &[("content-length", "5")]].concat(),
            &[&browser[..], &[("transfer-encoding", "chunked")]].concat(),
            &[&browser[..], &[("access-control-request-method", "GET")]].concat(),
            &[&browser[..], &[("x-http-method-override", "DELETE")]].concat(),
            &[&browser[..], &[("upgrade", "websocket")]].concat(),
            &[&browser[..], &[("content-type", "application/json")]].concat(),
            &[origin, ("access-control-request-method", "OPTIONS")],
            &[origin, ("access-control-request-method", "CONNECT")],
            &[origin, ("access-control-request-method", "P A")],
        ] {
            assert_eq!(asks(&on, not_one, api, None), None, "{not_one:?}");
        }
        for query in ["auth_token=x", "a=1&auth%5Ftoken=x"] {
            assert_eq!(asks(&on, &browser, api, Some(query)), None, "{query}");
        }
        // Only under the configured prefixes, and only for OPTIONS.
        assert_eq!(asks(&on, &browser, "/assets/7", None), None);
        assert_eq!(asks(&off, &browser, api, None), None);
        assert_eq!(
            cors_preflight(&on, &http::Method::GET, &headers(&browser), api, None),
            None
        );
        // A method no route takes on the path: as any unmatched request.
        let put = [origin, ("access-control-request-method", "PUT")];
        assert!(match_with_override(&on, &options, &mut headers(&put), api, None).is_err());
        assert!(match_with_override(&off, &options, &mut headers(&browser), api, None).is_err());
        let report = match crate::rules::compile::compile_text(
            &text("\"api/\""),
            std::path::Path::new("r.toml"),
        ) {
            Ok(_) => panic!("a prefix without '/' compiled"),
            Err(d) => d.to_string(),
        };
        assert!(
            report.contains("cors_preflight_paths: \"api/\" is not a path prefix"),
            "{report}"
        );
    }

    #[test]
    fn json_content_types_are_read_from_their_bytes() {
        let ct = |v: &[u8]| is_json(Some(&HeaderValue::from_bytes(v).unwrap()));
        assert!(ct(b"application/json"));
        assert!(ct(b" Application/JSON ; charset=utf-8"));
        assert!(ct(b"application/json; x=\xe9"), "a latin-1 parameter");
        assert!(ct(b"application/vnd.api+json"));
        assert!(!ct(b"text/plain"));
        assert!(!ct(b"application/jsonx"));
        assert!(!is_json(None));
    }

    #[test]
    fn only_the_form_none_value_as_a_browser_sends_it_is_none() {
        assert!(is_form_none(&json!("-1"), -1));
        assert!(is_form_none(&json!(-1), -1));
        // Python's int() takes these as -1 too: they are no id, not "none".
        for other in [
            json!(" -1"),
            json!("-01"),
            json!("-1 "),
            json!(-1.0),
            json!("1"),
        ] {
            assert!(!is_form_none(&other, -1), "{other}");
        }
        assert!(!is_form_none(&json!(["-1"]), -1));
    }

    #[test]
    fn a_body_token_is_read_as_flask_security_reads_it() {
        assert_eq!(token_of(b""), Ok(None));
        assert_eq!(token_of(br#"{"x": 1}"#), Ok(None));
        assert_eq!(token_of(br#"[1, 2]"#), Ok(None));
        assert_eq!(token_of(br#"{"auth_token": "T"}"#), Ok(Some("T".into())));
        assert_eq!(
            token_of(br#"{"auth\u005ftoken": "T"}"#),
            Ok(Some("T".into()))
        );
        assert_eq!(token_of(br#"{"auth_token": 5}"#), Ok(Some(String::new())));
        assert_eq!(
            token_of(b"\xEF\xBB\xBF{\"auth_token\": \"T\"}"),
            Ok(Some("T".into()))
        );
        assert_eq!(
            token_of(br#"{"auth_token": "A", "auth_token": "B"}"#),
            Err("ambiguous_input")
        );
    }

    #[test]
    fn a_body_python_would_read_and_flexgate_cannot_is_refused() {
        let utf16: Vec<u8> =
            r#"{"auth_token": "B"}"#.encode_utf16().flat_map(u16::to_le_bytes).collect();
        for body in [
            &br#"{"auth_token": "B", "x": NaN}"#[..],
            br#"{"auth_token": "B", "x": -Infinity}"#,
            br#"{"auth_token": "B", "x": "\ud800"}"#,
            br#"{"auth_token": "B", "x": 1e400}"#,
            br#"{"auth_token": "B",}"#,
            &utf16,
            b"\xFF\xFE{\x00}\x00",
        ] {
            assert_eq!(
                token_of(body),
                Err("malformed_json"),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(token_of(deep.as_bytes()), Err("malformed_json"));
    }
}
