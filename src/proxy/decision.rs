//! Decision mode: an ingress that people already run (nginx `auth_request`, Traefik
//! ForwardAuth, Caddy `forward_auth`, Envoy `ext_authz`) asks flexgate whether a
//! request may pass, and copies the identity headers of the answer upstream. The
//! request is decided by the same pipeline as in the proxy ([`super::pipeline::decide_for_ingress`]);
//! nothing is forwarded.
//!
//! Each ingress describes the original request in its own way. [`FLAVOURS`] is the one
//! table of those ways: the path the ingress calls on the decision listener, and where
//! the original method, URI, host and scheme come from. Adding a flavour is a row.
//!
//! Trust: the describing headers are read only here, on a listener that binds loopback
//! by default (`config check` warns otherwise) and can require a shared secret header
//! (`FLEXGATE_DECISION_SECRET`, sent as `X-Flexgate-Decision-Secret`). On the public
//! listeners the same headers (and those `[server.decision_headers]` names) are never
//! read, and stripped before forwarding.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use subtle::ConstantTimeEq;

use super::body::Purpose;
use super::deny::json_response;
use super::pipeline::{self, ConnInfo};
use super::{Gateway, ProxyBody};

/// The original request's body as the ingress sent it along.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngressBody {
    /// The whole body (possibly empty).
    Whole(Bytes),
    /// No body: this ingress never sends one, or sent none.
    NotSent,
    /// A body cut at the ingress's buffer limit (Envoy `allow_partial_message`, which
    /// marks it `x-envoy-auth-partial-body: true`), or not marked whole by an ingress
    /// that marks bodies: what lies past a cut would reach the upstream unchecked, so it
    /// counts as no body, and a route that reads the body refuses it with 413.
    Partial,
}

/// The header Envoy's `ext_authz` sets, with `allow_partial_message`, to say whether
/// the body it sent is cut short.
pub const PARTIAL_BODY_HEADER: &str = "x-envoy-auth-partial-body";

/// Where one part of the original request comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// A request header set by the ingress.
    Header(&'static str),
    /// The decision request's own method.
    OwnMethod,
    /// The decision request's own path after the flavour's path prefix, and its query
    /// (Envoy appends the original path to `path_prefix`).
    PathAfterPrefix,
    /// The decision request's own `Host` (`:authority`).
    OwnHost,
}

/// How one ingress describes the request it asks about.
#[derive(Debug, Clone, Copy)]
pub struct Flavour {
    /// Metrics label and the path the ingress calls (`/nginx`; a prefix for Envoy).
    pub name: &'static str,
    /// The path on the decision listener.
    pub path: &'static str,
    /// Whether `path` is a prefix followed by the original path.
    pub prefix: bool,
    /// The original method.
    pub method: From,
    /// The original request-target (path and query).
    pub uri: From,
    /// The original host (falls back to the decision request's `Host`).
    pub host: From,
    /// The original scheme (`https` or `http`), when the ingress says.
    pub proto: Option<&'static str>,
    /// Whether the ingress may send the request body along (Envoy `with_request_body`).
    pub body: bool,
    /// The header in which the ingress says whether the body it sent is whole (Envoy's
    /// [`PARTIAL_BODY_HEADER`], `false` when it is): a body without it is not taken
    /// as whole, since an ingress that can cut bodies may have cut this one.
    pub whole_body_marker: Option<&'static str>,
    /// Whether this ingress asks a second time for a denial's body (nginx, whose
    /// `auth_request` keeps only the status), marked `X-Flexgate-Replay: 1` and then
    /// not counted again. Ingresses that pass client headers through (Traefik, Caddy,
    /// Envoy as configured) never get that mark believed: a client could otherwise
    /// keep its requests out of the audit log and the metrics.
    pub asks_twice: bool,
    /// Whether the operator chooses the describing headers (`[server.decision_headers]`):
    /// nginx sends whatever its `proxy_set_header` lines name; the other ingresses
    /// send fixed names.
    pub configurable: bool,
}

/// Every ingress flexgate answers, one row each.
pub const FLAVOURS: &[Flavour] = &[
    Flavour {
        name: "nginx",
        path: "/nginx",
        prefix: false,
        method: From::Header("x-original-method"),
        uri: From::Header("x-original-uri"),
        host: From::Header("x-forwarded-host"),
        proto: Some("x-forwarded-proto"),
        body: false,
        whole_body_marker: None,
        asks_twice: true,
        configurable: true,
    },
    Flavour {
        name: "traefik",
        path: "/traefik",
        prefix: false,
        method: From::Header("x-forwarded-method"),
        uri: From::Header("x-forwarded-uri"),
        host: From::Header("x-forwarded-host"),
        proto: Some("x-forwarded-proto"),
        body: true,
        whole_body_marker: None,
        asks_twice: false,
        configurable: false,
    },
    Flavour {
        name: "caddy",
        path: "/caddy",
        prefix: false,
        method: From::Header("x-forwarded-method"),
        uri: From::Header("x-forwarded-uri"),
        host: From::Header("x-forwarded-host"),
        proto: Some("x-forwarded-proto"),
        body: false,
        whole_body_marker: None,
        asks_twice: false,
        configurable: false,
    },
    Flavour {
        name: "envoy",
        path: "/envoy",
        prefix: true,
        method: From::OwnMethod,
        uri: From::PathAfterPrefix,
        host: From::OwnHost,
        proto: Some("x-forwarded-proto"),
        body: true,
        whole_body_marker: Some(PARTIAL_BODY_HEADER),
        asks_twice: false,
        configurable: false,
    },
];

/// Headers that describe the request to flexgate (or carry its secret) and are not the
/// client's own: never part of the request decided.
const DESCRIBING: &[&str] = &[
    "x-original-method",
    "x-original-uri",
    "x-forwarded-method",
    "x-forwarded-uri",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-for",
    "x-flexgate-replay",
    "x-flexgate-decision-secret",
    PARTIAL_BODY_HEADER,
    "content-length",
    "transfer-encoding",
];

/// The header a shared secret travels in.
pub const SECRET_HEADER: &str = "x-flexgate-decision-secret";

/// Why a decision request itself is unusable (before any decision): 400 or 403.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadDescription(pub StatusCode, pub &'static str);

impl Flavour {
    /// Whether this flavour reads the original request from header `name` (which is
    /// then the ingress's, not the client's).
    fn reads(&self, name: &str) -> bool {
        [self.method, self.uri, self.host]
            .iter()
            .any(|f| matches!(f, From::Header(h) if *h == name))
            || self.proto == Some(name)
    }
}

/// The flavours this deployment answers: [`FLAVOURS`] with the configurable ones
/// reading the headers `[server.decision_headers]` names. Built once at start; the
/// configured names are kept for the process's life (the table holds `'static`
/// names, and server settings change only with a restart).
pub fn flavours(configured: &crate::rules::DecisionHeaders) -> Vec<Flavour> {
    fn named(configured: &Option<String>, default: From) -> From {
        match configured {
            Some(name) => From::Header(Box::leak(name.clone().into_boxed_str())),
            None => default,
        }
    }
    FLAVOURS
        .iter()
        .map(|f| {
            if !f.configurable {
                return *f;
            }
            Flavour {
                method: named(&configured.method, f.method),
                uri: named(&configured.uri, f.uri),
                host: named(&configured.host, f.host),
                proto: match &configured.proto {
                    Some(name) => Some(Box::leak(name.clone().into_boxed_str())),
                    None => f.proto,
                },
                ..*f
            }
        })
        .collect()
}

/// The header names an operator configured for nginx to describe requests with.
pub fn configured_names(configured: &crate::rules::DecisionHeaders) -> Vec<HeaderName> {
    [
        &configured.method,
        &configured.uri,
        &configured.host,
        &configured.proto,
    ]
    .into_iter()
    .flatten()
    .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
    .collect()
}

/// The flavour a decision request's path names.
pub fn flavour_of<'a>(flavours: &'a [Flavour], path: &str) -> Option<&'a Flavour> {
    flavours.iter().find(|f| {
        path == f.path
            || (f.prefix
                && path
                    .strip_prefix(f.path)
                    .is_some_and(|rest| rest.starts_with('/')))
    })
}

fn one<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h HeaderValue>, BadDescription> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (v, None) => Ok(v),
        (Some(_), Some(_)) => Err(BadDescription(StatusCode::BAD_REQUEST, "described_twice")),
        (None, Some(_)) => Ok(None),
    }
}

/// The original request an ingress describes: its method, URI, headers (the client's,
/// with `Host` set to the original host) and whether it came over HTTPS.
pub fn describe(
    flavour: &Flavour,
    own_method: &Method,
    own_uri: &Uri,
    headers: &HeaderMap,
) -> Result<(http::request::Parts, bool), BadDescription> {
    let missing = |_| BadDescription(StatusCode::BAD_REQUEST, "not_described");
    let text = |v: &HeaderValue| {
        v.to_str()
            .map(str::to_owned)
            .map_err(|_| BadDescription(StatusCode::BAD_REQUEST, "bad_description"))
    };
    let method = match flavour.method {
        From::OwnMethod => own_method.clone(),
        From::Header(name) => {
            let v = one(headers, name)?.ok_or(()).map_err(missing)?;
            Method::from_bytes(v.as_bytes())
                .map_err(|_| BadDescription(StatusCode::BAD_REQUEST, "bad_method"))?
        }
        _ => {
            return Err(BadDescription(
                StatusCode::INTERNAL_SERVER_ERROR,
                "flavour_table",
            ));
        }
    };
    let target = match flavour.uri {
        From::PathAfterPrefix => {
            let path = own_uri.path().strip_prefix(flavour.path).unwrap_or("/");
            match own_uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.to_owned(),
            }
        }
        From::Header(name) => text(one(headers, name)?.ok_or(()).map_err(missing)?)?,
        _ => {
            return Err(BadDescription(
                StatusCode::INTERNAL_SERVER_ERROR,
                "flavour_table",
            ));
        }
    };
    if !target.starts_with('/') {
        return Err(BadDescription(StatusCode::BAD_REQUEST, "bad_uri"));
    }
    let uri: Uri = target
        .parse()
        .map_err(|_| BadDescription(StatusCode::BAD_REQUEST, "bad_uri"))?;
    // The URI parser cuts a `#...` part off, which the ingress forwards and some
    // upstreams read as part of the query: decide only a target kept whole.
    if uri.path_and_query().map(http::uri::PathAndQuery::as_str) != Some(target.as_str()) {
        return Err(BadDescription(StatusCode::BAD_REQUEST, "bad_uri"));
    }
    let host = match flavour.host {
        From::Header(name) => one(headers, name)?.or(one(headers, "host")?),
        From::OwnHost => one(headers, "host")?,
        _ => None,
    }
    .cloned()
    .ok_or(BadDescription(StatusCode::BAD_REQUEST, "no_host"))?;
    let tls = match flavour.proto {
        Some(name) => {
            one(headers, name)?.is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
        }
        None => false,
    };
    let mut original = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if name == http::header::HOST
            || DESCRIBING.contains(&name.as_str())
            || flavour.reads(name.as_str())
        {
            continue;
        }
        original.append(name.clone(), value.clone());
    }
    original.insert(http::header::HOST, host);
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .version(http::Version::HTTP_11);
    if let Some(h) = builder.headers_mut() {
        *h = original;
    }
    let (parts, ()) = builder
        .body(())
        .map_err(|_| BadDescription(StatusCode::BAD_REQUEST, "bad_description"))?
        .into_parts();
    Ok((parts, tls))
}

/// Answer one decision request.
pub async fn handle(gw: &Gateway, conn: &ConnInfo, req: Request<Incoming>) -> Response<ProxyBody> {
    let (parts, body) = req.into_parts();
    let refuse = |status: StatusCode, why: &str| {
        json_response(
            status,
            &serde_json::json!({"message": why, "status": status.as_u16()}),
        )
    };
    let Some(flavour) = flavour_of(gw.decision_flavours(), parts.uri.path()) else {
        return refuse(
            StatusCode::NOT_FOUND,
            "Ask /nginx, /traefik, /caddy or /envoy/<path> on the decision listener.",
        );
    };
    if let Some(secret) = gw.decision_secret() {
        let given = parts
            .headers
            .get(SECRET_HEADER)
            .map(HeaderValue::as_bytes)
            .unwrap_or(b"");
        if !bool::from(given.ct_eq(secret.expose())) {
            gw.metrics.decision(flavour.name, "untrusted");
            return refuse(
                StatusCode::FORBIDDEN,
                "This decision listener needs its shared secret.",
            );
        }
    }
    let replay = flavour.asks_twice
        && parts
            .headers
            .get("x-flexgate-replay")
            .is_some_and(|v| v == "1");
    let (original, tls) = match describe(flavour, &parts.method, &parts.uri, &parts.headers) {
        Ok(described) => described,
        Err(BadDescription(status, why)) => {
            gw.metrics.decision(flavour.name, "bad_request");
            return refuse(
                status,
                &format!("The ingress did not describe the request ({why})."),
            );
        }
    };
    // Envoy says whether the body it sent is whole (its header allow-list must pass
    // the marker): only one marker, `false`, is a whole body (fail closed).
    let partial = flavour.whole_body_marker.is_some_and(|marker| {
        let mut values = parts.headers.get_all(marker).iter();
        !(values.next().is_some_and(|v| v == "false") && values.next().is_none())
    });
    let body = if !flavour.body || body_is_empty(&parts.headers) {
        IngressBody::NotSent
    } else if partial {
        IngressBody::Partial
    } else {
        // The route is not known yet: read up to the largest body a route may take
        // (the pipeline holds every other route to the JSON limit).
        let limits = gw.limits();
        let limit = if gw.rules().takes_uploads {
            limits
                .max_json_body_bytes
                .max(limits.max_multipart_body_bytes)
        } else {
            limits.max_json_body_bytes
        };
        match gw
            .bodies()
            .read(&parts.headers, body, limit, Purpose::Other)
            .await
        {
            Ok(bytes) => IngressBody::Whole(bytes),
            Err(deny) => {
                gw.metrics.decision(flavour.name, deny.decision());
                return deny.into_response();
            }
        }
    };
    // The client's address, as the ingress saw it (trusted on this listener only): the
    // entry the ingress appended, the last one; those before it are the client's own.
    let client = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
        .map_or(conn.peer, |ip| std::net::SocketAddr::new(ip, 0));
    let conn = ConnInfo::new(client, tls, conn.worker);
    pipeline::decide_for_ingress(gw, &conn, original, body, flavour.name, replay).await
}

fn body_is_empty(headers: &HeaderMap) -> bool {
    let length = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok());
    length == Some("0")
        || (length.is_none() && !headers.contains_key(http::header::TRANSFER_ENCODING))
}

/// The headers of an allowed decision: the seven identity headers, empty when the route
/// is public (so an ingress that copies them always overwrites whatever came before).
pub fn identity_answer(headers: Vec<(HeaderName, HeaderValue)>) -> Response<ProxyBody> {
    let mut response = Response::new(http_body_util::Either::Right(http_body_util::Full::new(
        Bytes::new(),
    )));
    for (name, value) in headers {
        response.headers_mut().insert(name, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn described(
        path: &str,
        pairs: &[(&str, &str)],
    ) -> Result<(http::request::Parts, bool), BadDescription> {
        let uri: Uri = path.parse().unwrap();
        let flavour = flavour_of(FLAVOURS, uri.path()).expect("a flavour");
        describe(flavour, &Method::GET, &uri, &headers(pairs))
    }

    #[test]
    fn nginx_auth_request_describes_by_x_original() {
        let (p, tls) = described(
            "/nginx",
            &[
                ("host", "app.example"),
                ("x-original-method", "DELETE"),
                ("x-original-uri", "/api/v3_0/assets/5?x=1"),
                ("x-forwarded-proto", "https"),
                ("authorization", "tok"),
                ("x-forwarded-uri", "/ignored"),
            ],
        )
        .unwrap();
        assert_eq!(p.method, Method::DELETE);
        assert_eq!(p.uri, "/api/v3_0/assets/5?x=1");
        assert_eq!(p.headers["host"], "app.example");
        assert_eq!(p.headers["authorization"], "tok");
        assert!(
            p.headers.get("x-original-uri").is_none() && p.headers.get("x-forwarded-uri").is_none()
        );
        assert!(tls);
    }

    #[test]
    fn an_operator_names_the_headers_nginx_describes_with() {
        let configured = crate::rules::DecisionHeaders {
            method: Some("x-auth-method".into()),
            uri: Some("x-auth-uri".into()),
            host: None,
            proto: Some("x-auth-scheme".into()),
        };
        let table = flavours(&configured);
        let uri: Uri = "/nginx".parse().unwrap();
        let nginx = flavour_of(&table, uri.path()).unwrap();
        let (p, tls) = describe(
            nginx,
            &Method::GET,
            &uri,
            &headers(&[
                ("host", "app.example"),
                ("x-auth-method", "PUT"),
                ("x-auth-uri", "/api/v3_0/assets/7"),
                ("x-auth-scheme", "https"),
                ("x-original-uri", "/ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(p.method, Method::PUT);
        assert_eq!(p.uri, "/api/v3_0/assets/7");
        assert!(tls);
        for name in [
            "x-auth-method",
            "x-auth-uri",
            "x-auth-scheme",
            "x-original-uri",
        ] {
            assert!(
                p.headers.get(name).is_none(),
                "{name} reached the request decided"
            );
        }
        // The usual names no longer describe it, and the fixed flavours are unchanged.
        let usual = headers(&[
            ("host", "app.example"),
            ("x-original-method", "GET"),
            ("x-original-uri", "/api/v3_0/assets/7"),
        ]);
        assert_eq!(
            describe(nginx, &Method::GET, &uri, &usual).unwrap_err().1,
            "not_described"
        );
        let traefik = flavour_of(&table, "/traefik").unwrap();
        assert_eq!(traefik.method, From::Header("x-forwarded-method"));
    }

    #[test]
    fn traefik_and_caddy_describe_by_x_forwarded() {
        for path in ["/traefik", "/caddy"] {
            let (p, tls) = described(
                path,
                &[
                    ("host", "flexgate:9191"),
                    ("x-forwarded-method", "PATCH"),
                    ("x-forwarded-uri", "/api/v3_0/sensors/1"),
                    ("x-forwarded-host", "app.example"),
                    ("x-forwarded-proto", "http"),
                ],
            )
            .unwrap();
            assert_eq!(
                (p.method.as_str(), p.uri.to_string().as_str()),
                ("PATCH", "/api/v3_0/sensors/1")
            );
            assert_eq!(
                p.headers["host"], "app.example",
                "{path}: the original host, not the decision listener's"
            );
            assert!(!tls);
        }
    }

    #[test]
    fn envoy_appends_the_original_path_to_its_prefix() {
        let uri: Uri = "/envoy/api/v3_0/assets/1?page=2".parse().unwrap();
        let flavour = flavour_of(FLAVOURS, uri.path()).unwrap();
        assert_eq!(flavour.name, "envoy");
        let (p, _) = describe(
            flavour,
            &Method::POST,
            &uri,
            &headers(&[("host", "app.example")]),
        )
        .unwrap();
        assert_eq!(
            (p.method.as_str(), p.uri.to_string().as_str()),
            ("POST", "/api/v3_0/assets/1?page=2")
        );
        assert!(
            flavour_of(FLAVOURS, "/envoyx/a").is_none()
                && flavour_of(FLAVOURS, "/nginx/extra").is_none()
        );
    }

    #[test]
    fn incomplete_or_doubled_descriptions_are_refused() {
        for pairs in [
            &[("host", "a"), ("x-original-uri", "/x")][..],
            &[("host", "a"), ("x-original-method", "GET")],
            &[
                ("host", "a"),
                ("x-original-method", "GET"),
                ("x-original-uri", "x"),
            ],
            &[
                ("host", "a"),
                ("x-original-method", "GET"),
                ("x-original-uri", "/x"),
                ("x-original-uri", "/y"),
            ],
            &[("x-original-method", "GET"), ("x-original-uri", "/x")],
        ] {
            assert!(described("/nginx", pairs).is_err(), "{pairs:?}");
        }
    }

    #[test]
    fn a_target_the_uri_parser_would_cut_short_is_refused() {
        // nginx forwards `#...` upstream as sent; some upstreams read it as query.
        for (path, header, target) in [
            ("/nginx", "x-original-uri", "/api/v3_0/users?x#&account=7"),
            ("/nginx", "x-original-uri", "/api/v3_0/health/ready#/x"),
            (
                "/traefik",
                "x-forwarded-uri",
                "/api/v3_0/users?x#&account=7",
            ),
        ] {
            let described = described(
                path,
                &[
                    ("host", "a"),
                    ("x-original-method", "GET"),
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-host", "a"),
                    (header, target),
                ],
            );
            assert_eq!(
                described.unwrap_err(),
                BadDescription(StatusCode::BAD_REQUEST, "bad_uri"),
                "{target}"
            );
        }
    }
}
