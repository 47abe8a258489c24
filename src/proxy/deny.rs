//! Every way a request can end without reaching the upstream, and the one place that
//! turns each into a status and a FlexMeasures-shaped JSON body. The reason (a stable
//! label) goes to logs and metrics only; clients see the generic FlexMeasures messages.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{Either, Full};
use serde_json::json;

use super::ProxyBody;
use super::normalize::PathError;

/// FlexMeasures' 401 message.
pub const UNAUTHORIZED_MESSAGE: &str =
    "You could not be properly authenticated for this content or functionality.";
/// FlexMeasures' 403 message.
pub const FORBIDDEN_MESSAGE: &str = "You cannot be authorized for this content or functionality.";

/// Why a request was not forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deny {
    /// The path is ambiguous or malformed (400).
    BadPath(PathError),
    /// No route matches (configured 403 or 404).
    NoRoute(StatusCode),
    /// A route matches the path but not the method (configured 403 or 404).
    MethodNotAllowed(StatusCode),
    /// No valid credentials (401); the label says which check failed.
    Unauthenticated(&'static str),
    /// A page asked for without credentials: 302 to the login page (FlexMeasures' UI).
    LoginRedirect {
        /// Why authentication failed.
        reason: &'static str,
        /// `/login?next=...`.
        location: String,
    },
    /// Authenticated but not allowed (403); the label says which check failed.
    Forbidden(&'static str),
    /// A role requirement failed (403 with Flask-Security's suffix).
    RoleForbidden {
        /// Which requirement.
        reason: &'static str,
        /// `" It requires ... permission(s)."`
        suffix: String,
    },
    /// The named resource does not exist (404, or 422 where FlexMeasures says so).
    NotFound {
        /// 404 or 422.
        status: StatusCode,
        /// The message (`Asset 5 not found`).
        message: String,
        /// Where the id came from (for the 422 shape).
        location: &'static str,
        /// Which field (for the 422 shape).
        field: String,
    },
    /// An id or field is missing or malformed (422).
    Invalid {
        /// `path`, `query`, `headers`, `json`.
        location: &'static str,
        /// The field.
        field: String,
        /// Marshmallow-style message.
        message: String,
    },
    /// The same parameter twice, duplicate JSON keys, several tokens (400).
    Ambiguous(String),
    /// `Host` missing, repeated, malformed, disagreeing with `:authority`, or not in
    /// `allowed_hosts` (400); the label says which.
    BadHost(&'static str),
    /// The client's request body broke off or was malformed (bad chunk framing) while
    /// it was being forwarded (400; the upstream connection that saw it is closed).
    BadRequestBody,
    /// The body exceeds the buffering limit (413).
    BodyTooLarge,
    /// The ingress sent only the start of a body the route reads, or did not mark it
    /// whole (413): Envoy's `max_request_bytes` is below the body, with
    /// `allow_partial_message` on, or its `x-envoy-auth-partial-body` is filtered out.
    PartialBody,
    /// A body flexgate reads whole did not arrive within `body_read_timeout_ms` (408;
    /// the connection is closed with the unread rest).
    BodyTimeout,
    /// The JSON body does not parse (400).
    MalformedJson,
    /// The endpoint does not answer this method (405).
    WrongMethod(&'static str),
    /// Too many failed logins (429).
    Throttled(Duration),
    /// The decision listener was asked about a login (404): flexgate answers logins
    /// itself on its proxy listener, with its brute-force limits; an ingress must send
    /// them there rather than have them decided and passed on.
    LoginNotDecided,
    /// A dependency could not answer, so flexgate fails closed (503).
    Unavailable(&'static str),
    /// The upstream refused or broke the connection (502).
    BadGateway,
    /// The upstream did not answer in time (504).
    GatewayTimeout,
}

impl Deny {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Deny::BadPath(_)
            | Deny::Ambiguous(_)
            | Deny::MalformedJson
            | Deny::BadHost(_)
            | Deny::BadRequestBody => StatusCode::BAD_REQUEST,
            Deny::NoRoute(s) | Deny::MethodNotAllowed(s) => *s,
            Deny::LoginNotDecided => StatusCode::NOT_FOUND,
            Deny::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Deny::LoginRedirect { .. } => StatusCode::FOUND,
            Deny::Forbidden(_) | Deny::RoleForbidden { .. } => StatusCode::FORBIDDEN,
            Deny::NotFound { status, .. } => *status,
            Deny::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Deny::BodyTooLarge | Deny::PartialBody => StatusCode::PAYLOAD_TOO_LARGE,
            Deny::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Deny::WrongMethod(_) => StatusCode::METHOD_NOT_ALLOWED,
            Deny::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            Deny::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Deny::BadGateway => StatusCode::BAD_GATEWAY,
            Deny::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The decision label for metrics: a small fixed set.
    pub fn decision(&self) -> &'static str {
        match self {
            Deny::Unauthenticated(_) | Deny::LoginRedirect { .. } => "unauthenticated",
            Deny::Forbidden(_) | Deny::RoleForbidden { .. } => "forbidden",
            Deny::NoRoute(_)
            | Deny::MethodNotAllowed(_)
            | Deny::NotFound { .. }
            | Deny::LoginNotDecided => "not_found",
            Deny::BadPath(_)
            | Deny::Invalid { .. }
            | Deny::Ambiguous(_)
            | Deny::BadHost(_)
            | Deny::BadRequestBody
            | Deny::BodyTooLarge
            | Deny::PartialBody
            | Deny::BodyTimeout
            | Deny::MalformedJson
            | Deny::WrongMethod(_) => "bad_request",
            Deny::Throttled(_) => "throttled",
            Deny::Unavailable(_) | Deny::BadGateway | Deny::GatewayTimeout => "error",
        }
    }

    /// A stable, low-cardinality reason for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Deny::BadPath(e) => e.as_str(),
            Deny::NoRoute(_) => "no_route",
            Deny::LoginNotDecided => "login_not_decided",
            Deny::MethodNotAllowed(_) => "method_not_allowed",
            Deny::Unauthenticated(r)
            | Deny::Forbidden(r)
            | Deny::Unavailable(r)
            | Deny::WrongMethod(r)
            | Deny::BadHost(r) => r,
            Deny::BadRequestBody => "malformed_request_body",
            Deny::RoleForbidden { reason, .. } | Deny::LoginRedirect { reason, .. } => reason,
            Deny::NotFound { .. } => "resource_not_found",
            Deny::Invalid { .. } => "invalid_input",
            Deny::Ambiguous(_) => "ambiguous_input",
            Deny::BodyTooLarge => "body_too_large",
            Deny::PartialBody => "partial_body",
            Deny::BodyTimeout => "body_timeout",
            Deny::MalformedJson => "malformed_json",
            Deny::Throttled(_) => "login_throttled",
            Deny::BadGateway => "upstream_unreachable",
            Deny::GatewayTimeout => "upstream_timeout",
        }
    }

    /// The response the client gets.
    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        let body = match &self {
            Deny::Unauthenticated(_) => {
                json!({"message": UNAUTHORIZED_MESSAGE, "status": "UNAUTHORIZED"})
            }
            Deny::LoginRedirect { location, .. } => {
                json!({"message": "Please log in.", "location": location, "status": 302})
            }
            Deny::Forbidden(_) => forbidden(""),
            Deny::RoleForbidden { suffix, .. } => forbidden(suffix),
            Deny::NoRoute(s) | Deny::MethodNotAllowed(s) if *s == StatusCode::FORBIDDEN => {
                forbidden("")
            }
            Deny::NoRoute(_) | Deny::MethodNotAllowed(_) => {
                json!({"message": "The requested URL was not found on the server.", "status": 404})
            }
            Deny::NotFound {
                status, message, ..
            } if *status == StatusCode::NOT_FOUND => {
                json!({"message": message, "status": 404})
            }
            Deny::NotFound {
                message,
                location,
                field,
                ..
            } => unprocessable(location, field, message),
            Deny::Invalid {
                location,
                field,
                message,
            } => unprocessable(location, field, message),
            Deny::BadPath(_) => simple(status, "The request path is malformed or ambiguous."),
            Deny::LoginNotDecided => simple(
                status,
                "Logins are answered by flexgate's proxy listener, not decided here; route the token endpoint there.",
            ),
            Deny::Ambiguous(what) => simple(status, what),
            Deny::BadHost(_) => simple(
                status,
                "The Host header is missing, repeated or not accepted here.",
            ),
            Deny::BadRequestBody => {
                simple(status, "The request body is malformed or was cut short.")
            }
            Deny::MalformedJson => simple(status, "The request body is not valid JSON."),
            Deny::BodyTooLarge => simple(status, "The request body is too large."),
            Deny::PartialBody => simple(
                status,
                "The ingress sent only part of the request body, or did not say it sent all of it, and this route is decided on all of it; raise the ingress's body limit (Envoy: with_request_body.max_request_bytes) and let its marker through (Envoy: x-envoy-auth-partial-body in allowed_headers).",
            ),
            Deny::BodyTimeout => simple(status, "The request body did not arrive in time."),
            Deny::WrongMethod(_) => {
                simple(status, "The method is not allowed for the requested URL.")
            }
            Deny::Throttled(_) => {
                simple(status, "Too many failed login attempts; try again later.")
            }
            Deny::Unavailable(_) => simple(status, "The service is temporarily unavailable."),
            Deny::BadGateway => simple(status, "The upstream service could not be reached."),
            Deny::GatewayTimeout => simple(status, "The upstream service did not answer in time."),
        };
        let mut response = json_response(status, &body);
        if let Deny::LoginRedirect { location, .. } = &self
            && let Ok(value) = HeaderValue::from_str(location)
        {
            response.headers_mut().insert(header::LOCATION, value);
        }
        if let Deny::Throttled(wait) = self {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(wait.as_secs().max(1)),
            );
        }
        response
    }
}

fn forbidden(suffix: &str) -> serde_json::Value {
    json!({
        "result": "Rejected",
        "status": "INVALID_SENDER",
        "message": format!("{FORBIDDEN_MESSAGE}{suffix}"),
    })
}

fn unprocessable(location: &str, field: &str, message: &str) -> serde_json::Value {
    json!({
        "message": {location: {field: [message]}},
        "result": "Rejected",
        "status": "UNPROCESSABLE_ENTITY",
    })
}

fn simple(status: StatusCode, message: &str) -> serde_json::Value {
    json!({"message": message, "status": status.as_u16()})
}

/// A JSON response with the given status.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<ProxyBody> {
    let bytes = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
    let mut response = Response::new(Either::Right(Full::new(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(deny: Deny) -> (u16, serde_json::Value) {
        let response = deny.into_response();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn flexmeasures_shaped_bodies() {
        assert_eq!(
            body_of(Deny::Unauthenticated("expired")).await,
            (
                401,
                json!({"message": UNAUTHORIZED_MESSAGE, "status": "UNAUTHORIZED"})
            )
        );
        assert_eq!(
            body_of(Deny::Forbidden("no_acl_match")).await,
            (
                403,
                json!({"result": "Rejected", "status": "INVALID_SENDER", "message": FORBIDDEN_MESSAGE})
            )
        );
        let (_, body) = body_of(Deny::RoleForbidden {
            reason: "roles_required",
            suffix: " It requires task-runner permission(s).".into(),
        })
        .await;
        assert_eq!(
            body["message"],
            format!("{FORBIDDEN_MESSAGE} It requires task-runner permission(s).")
        );
        assert_eq!(
            body_of(Deny::NotFound {
                status: StatusCode::NOT_FOUND,
                message: "Asset 5 not found".into(),
                location: "path",
                field: "id".into()
            })
            .await,
            (404, json!({"message": "Asset 5 not found", "status": 404}))
        );
        assert_eq!(
            body_of(Deny::NotFound {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                message: "Sensor 5 not found".into(),
                location: "path",
                field: "id".into()
            })
            .await,
            (
                422,
                json!({"message": {"path": {"id": ["Sensor 5 not found"]}}, "result": "Rejected", "status": "UNPROCESSABLE_ENTITY"})
            )
        );
        assert_eq!(body_of(Deny::NoRoute(StatusCode::FORBIDDEN)).await.0, 403);
        assert_eq!(
            body_of(Deny::NoRoute(StatusCode::NOT_FOUND)).await.1["status"],
            404
        );
    }

    #[test]
    fn throttled_responses_say_when_to_retry() {
        let response = Deny::Throttled(Duration::from_secs(42)).into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "42");
        assert_eq!(response.status(), 429);
    }

    #[test]
    fn every_deny_has_a_bounded_label() {
        let all = [
            Deny::BadPath(PathError::DotSegment),
            Deny::NoRoute(StatusCode::NOT_FOUND),
            Deny::Unauthenticated("x"),
            Deny::Unavailable("store"),
            Deny::BadGateway,
            Deny::GatewayTimeout,
            Deny::BodyTooLarge,
            Deny::PartialBody,
        ];
        for d in all {
            assert!(
                [
                    "unauthenticated",
                    "forbidden",
                    "not_found",
                    "bad_request",
                    "throttled",
                    "error"
                ]
                .contains(&d.decision())
            );
        }
    }
}
