//! The decision for one described request, without the network: the stages of the
//! pipeline from normalizing to the ACLs, each step noted in a [`Trace`]. `flexgate
//! explain` runs it against the live database and `flexgate config test` against a
//! suite's fixtures; both see the very functions requests go through.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};

use super::deny::Deny;
use super::normalize::normalize;
use super::pipeline::{self, Credential, Facts, OwnerSource, Trace};
use crate::auth::Identity;
use crate::rules::RuleSet;

/// A request as an operator describes it.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The method.
    pub method: Method,
    /// The path as sent, before normalizing.
    pub path: String,
    /// The raw query, if any.
    pub query: Option<String>,
    /// Request headers.
    pub headers: HeaderMap,
    /// The body's bytes, if any: a route that reads the body reads them with the proxy's
    /// checks (a JSON `Content-Type`, strict JSON, no duplicate keys).
    pub body: Option<Bytes>,
    /// How the caller authenticates; the cross-origin check applies to browser
    /// sessions only. A token unless said otherwise.
    pub credential: Credential,
    /// The request's authority as the proxy checked it (`host[:port]`) and whether it
    /// came over TLS: what a browser's `Origin` is compared with. Without it no
    /// request counts as cross-origin.
    pub authority: Option<HeaderValue>,
    /// Whether the request came over TLS.
    pub tls: bool,
    /// Whether a route's `login_form` is read and counted (FlexMeasures mode): its POSTs
    /// then need the form's email field, as on the proxy.
    pub reads_login_forms: bool,
}

impl Probe {
    /// A probe from `path?query`, for a token's bearer, with no authority.
    pub fn new(method: Method, target: &str, headers: HeaderMap, body: Option<Bytes>) -> Probe {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (target.to_owned(), None),
        };
        Probe {
            method,
            path,
            query,
            headers,
            body,
            credential: Credential::Token,
            authority: None,
            tls: false,
            reads_login_forms: false,
        }
    }
}

/// Decide `probe` for `who` (`None`: no credentials), noting every step.
pub async fn evaluate<O: OwnerSource, T: Trace>(
    rules: &RuleSet,
    probe: &Probe,
    who: Option<&Arc<Identity>>,
    owners: &O,
    trace: &mut T,
) -> Result<(), Deny> {
    let method = &probe.method;
    let note = |t: &mut T, line: String| {
        if t.enabled() {
            t.note(line);
        }
    };
    note(trace, format!("request: {method} {}", probe.path));
    let path = normalize(&probe.path, &rules.paths).map_err(Deny::BadPath)?;
    note(trace, format!("normalized path: {path}"));
    if path == rules.token_endpoint {
        note(
            trace,
            "the token endpoint: flexgate answers it itself (POST email and password)".into(),
        );
        return Ok(());
    }
    let mut headers = probe.headers.clone();
    // As on the proxy: what the upstream would not get as sent is gone before any rule.
    super::headers::drop_unforwarded(&mut headers);
    let found =
        pipeline::match_with_override(rules, method, &mut headers, &path, probe.query.as_deref())
            // A caller explained with credentials sends them, and an OPTIONS with
            // credentials is no preflight: the proxy matches it as OPTIONS.
            .and_then(|m| {
                if m.preflight && who.is_some() {
                    pipeline::match_rule(rules, method, &path)
                } else {
                    Ok(m)
                }
            });
    let matched @ pipeline::Matched { route, params, .. } = match found {
        Ok(found) => found,
        Err(deny) => {
            note(
                trace,
                format!("rule: none matches {method} {path}: denied by default"),
            );
            return Err(deny);
        }
    };
    note(
        trace,
        format!(
            "rule: {:?} ({}:{}) {} {}",
            &*route.name,
            rules.file.display(),
            route.line,
            route.methods.names().join("|"),
            route.template.text
        ),
    );
    // As on the proxy: the upstream's login form is read for its email before anything
    // else, and the attempt counted (the limits themselves are state: not shown here).
    if probe.reads_login_forms
        && let Some(field) = &route.login_form
        && method == Method::POST
    {
        let body = probe.body.as_deref().unwrap_or_default();
        if let Err(deny) = super::login_form::counted_email_of(&headers, body, field) {
            note(trace, format!("login form: refused ({})", deny.reason()));
            return Err(deny);
        }
        note(
            trace,
            format!(
                "login form: the attempt counts against [auth.throttle] under its {field:?} and the client's address"
            ),
        );
    }
    if matched.preflight {
        if probe.body.as_ref().is_some_and(|b| !b.is_empty()) {
            note(trace, "a CORS preflight with a body: refused".into());
            return Err(pipeline::preflight_with_a_body());
        }
        note(
            trace,
            "a CORS preflight (Origin, Access-Control-Request-Method, no credentials): matched with the method it asks about and forwarded with no authentication, no checks and no identity headers; the upstream answers it".into(),
        );
        return Ok(());
    }
    if route.public {
        note(
            trace,
            "the rule is public: no authentication, no identity headers".into(),
        );
        return Ok(());
    }
    if let Err(deny) = pipeline::one_content_type(&headers) {
        note(trace, "Content-Type: given more than once".into());
        return Err(deny);
    }
    let Some(identity) = who else {
        // As the proxy answers: a page sends a browser without credentials to log in.
        if route.login_redirect.is_some()
            && method.is_safe()
            && let Ok(uri) = probe.path.parse::<http::Uri>()
        {
            let location = pipeline::login_location(route, &uri);
            note(
                trace,
                format!("no credentials: the page sends the browser to {location}"),
            );
            return Err(Deny::LoginRedirect {
                reason: "no_token",
                location,
            });
        }
        note(trace, "no credentials: the route needs them".into());
        return Err(Deny::Unauthenticated("no_token"));
    };
    let p = &identity.principal;
    note(
        trace,
        format!(
            "principal: user {} <{}>, account {} (consultancy {}), roles [{}], account roles [{}]",
            p.user_id,
            identity.email,
            p.account_id,
            identity
                .consultancy_account_id
                .map_or("none".into(), |c| c.to_string()),
            p.roles.join(", "),
            p.account_roles.join(", ")
        ),
    );
    if probe.credential == Credential::Session && route.cross_origin.guards(method) {
        let site = probe
            .authority
            .as_ref()
            .map_or("no authority given".into(), |a| {
                let scheme = if probe.tls { "https" } else { "http" };
                format!("{scheme}://{}", a.to_str().unwrap_or("?"))
            });
        let checked = pipeline::check_origin(
            route,
            method,
            probe.credential,
            &headers,
            probe.authority.as_ref(),
            probe.tls,
        );
        if let Err(deny) = checked {
            note(
                trace,
                format!(
                    "cross-origin: a browser session from another site than {site}, on a route that refuses it"
                ),
            );
            return Err(deny);
        }
        note(
            trace,
            format!("cross-origin: the session request comes from {site} or says nothing"),
        );
    }
    if let Err(deny) = pipeline::check_roles(rules, route, identity) {
        note(trace, format!("roles: {}", deny.reason()));
        return Err(deny);
    }
    if !route.roles.is_empty() {
        note(trace, "roles: requirements met".into());
    }
    if let Some(key) = &identity.key {
        note(
            trace,
            format!(
                "API key {} {:?}{}",
                key.id,
                &*key.name,
                if key.read_only { ", read-only" } else { "" }
            ),
        );
        if let Err(deny) = pipeline::check_key_scope(rules, route, method, identity) {
            note(
                trace,
                "the key is read-only: only safe methods on routes that check only read".into(),
            );
            return Err(deny);
        }
    }
    // As on the proxy: the checks that need no body come before the body is read.
    if route.needs_body {
        let before = Facts {
            params,
            query: probe.query.as_deref(),
            headers: &headers,
            body: None,
        };
        if pipeline::authorize_before_body(owners, rules, route, &before, identity, &mut ())
            .await
            .is_err()
        {
            note(
                trace,
                "before the body is read: the checks that need none".into(),
            );
            // Traced again for the notes; an owner that changed in between is decided
            // with the rest below.
            pipeline::authorize_before_body(owners, rules, route, &before, identity, trace).await?;
        }
    }
    // As on the proxy: a route that reads the body reads it as JSON, or refuses it.
    let json = match (&probe.body, route.needs_body) {
        (Some(bytes), true) => match pipeline::checked_body(&headers, bytes, route) {
            Ok(json) => json,
            Err(deny) => {
                note(trace, format!("body: refused ({})", deny.reason()));
                return Err(deny);
            }
        },
        _ => None,
    };
    let facts = Facts {
        params,
        query: probe.query.as_deref(),
        headers: &headers,
        body: json.as_ref(),
    };
    if route.checks.is_empty() {
        note(trace, "checks: none (any authenticated user)".into());
    }
    pipeline::authorize(owners, rules, route, &facts, identity, trace).await
}
