//! The token endpoint (`POST /api/requestAuthToken` by default), served by flexgate:
//! JSON `{"email", "password"}` in, `{"auth_token", "user_id", "status": 200}` out.
//!
//! Validation follows FlexMeasures' schema answers (422 naming the field, 400 for
//! malformed JSON, 413 for an oversized body); bad credentials of any kind get the one
//! FlexMeasures 401 after the same bcrypt work; repeated failures get 429.

use http::request::Parts;
use http::{Method, Response};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::body::Purpose;
use super::deny::Deny;
use super::pipeline::{ConnInfo, is_json, ok_json};
use super::{Gateway, ProxyBody};
use crate::auth::LoginError;
use crate::rules::RuleSet;

/// Serve one token request.
pub async fn handle(
    gw: &Gateway,
    rules: &RuleSet,
    conn: &ConnInfo,
    parts: &Parts,
    body: Incoming,
) -> Result<Response<ProxyBody>, Deny> {
    let result = login(gw, rules, conn, parts, body).await;
    let user_id = result.as_ref().ok().map(|(_, id)| *id);
    let result = result.map(|(response, _)| response);
    gw.metrics.login(match &result {
        Ok(_) => "success",
        Err(Deny::Unauthenticated(_)) => "bad_credentials",
        Err(Deny::Throttled(_)) => "throttled",
        Err(Deny::Unavailable(_)) => "error",
        Err(_) => "invalid",
    });
    gw.audit_login(conn, &result, user_id);
    result
}

async fn login(
    gw: &Gateway,
    rules: &RuleSet,
    conn: &ConnInfo,
    parts: &Parts,
    body: Incoming,
) -> Result<(Response<ProxyBody>, i64), Deny> {
    if parts.method != Method::POST {
        return Err(Deny::WrongMethod("token_endpoint_method"));
    }
    let limit = rules.max_login_body_bytes;
    let bytes = gw
        .bodies()
        .read(&parts.headers, body, limit, Purpose::Login)
        .await?;
    if !is_json(parts.headers.get(http::header::CONTENT_TYPE)) {
        return Err(invalid(
            "_schema",
            "Invalid input type: send the body as application/json.",
        ));
    }
    let value =
        crate::rules::extract::parse_json_strict(&bytes).map_err(|_| Deny::MalformedJson)?;
    let Value::Object(mut fields) = value else {
        return Err(invalid("_schema", "Invalid input type."));
    };
    if let Some(unknown) = fields.keys().find(|k| *k != "email" && *k != "password") {
        return Err(invalid(unknown, "Unknown field."));
    }
    let mut take = |name: &str| match fields.remove(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(invalid(name, "Not a valid string.")),
        None => Err(invalid(name, "Missing data for required field.")),
    };
    let email = take("email")?;
    let password = take("password")?;
    if email.is_empty() || email.len() > 254 {
        return Err(invalid("email", "Not a valid email address."));
    }
    match gw.auth.login(&email, password, conn.peer.ip()).await {
        Ok(issued) => Ok((
            ok_json(&json!({
                "auth_token": issued.token,
                "user_id": issued.user_id,
                "status": 200,
            })),
            issued.user_id,
        )),
        Err(LoginError::BadCredentials) => Err(Deny::Unauthenticated("bad_credentials")),
        Err(LoginError::Throttled(wait)) => Err(Deny::Throttled(wait)),
        Err(LoginError::Unavailable(_)) => Err(Deny::Unavailable("login")),
    }
}

fn invalid(field: &str, message: &str) -> Deny {
    Deny::Invalid {
        location: "json",
        field: field.to_owned(),
        message: message.to_owned(),
    }
}
