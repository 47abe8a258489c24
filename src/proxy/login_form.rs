//! The upstream's own login form (FlexMeasures' `POST /login`, a route with
//! `login_form = "<email field>"`): its attempts count against the same limits as the
//! token endpoint's, or a password could be guessed there without end. The form (or
//! the JSON Flask-Security also takes there) is read before it is forwarded, the
//! attempt is counted by its email and the client's address (429 past a limit), and a
//! login counts as a success when FlexMeasures answers with a session that names a
//! user.

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::Incoming;
use serde_json::Value;

use super::body::{BodyReader, Purpose};
use super::deny::Deny;
use super::pipeline::{ConnInfo, is_json};
use crate::auth::flexmeasures::{FmAuthenticator, SessionCookies, Verdict};
use crate::auth::throttle::{Attempt, Refusal};

/// A form login counted before it is forwarded.
#[derive(Debug)]
pub struct FormLogin {
    email: String,
    attempt: Attempt,
}

/// Read the form, take its email `field` (exactly once) and count the attempt.
pub async fn begin(
    bodies: &BodyReader,
    fm: &FmAuthenticator,
    conn: &ConnInfo,
    field: &str,
    headers: &HeaderMap,
    body: Incoming,
    limit: usize,
) -> Result<(Bytes, FormLogin), Deny> {
    let bytes = bodies.read(headers, body, limit, Purpose::Login).await?;
    let email = counted_email_of(headers, &bytes, field)?;
    Ok((bytes, count_attempt(fm, conn, email).await?))
}

/// The address a login form's attempt is counted under: its email `field`, given
/// exactly once, as plain ASCII (see [`counted_email`]). `flexgate explain` reads it
/// the same way.
pub fn counted_email_of(headers: &HeaderMap, body: &[u8], field: &str) -> Result<String, Deny> {
    counted_email(&email_of(headers, body, field)?, field)
}

/// Count one attempt under `email` before the upstream checks the password, or refuse
/// it (429 past a limit, counted as a throttled login).
async fn count_attempt(
    fm: &FmAuthenticator,
    conn: &ConnInfo,
    email: String,
) -> Result<FormLogin, Deny> {
    let attempt = fm
        .login_limits()
        .begin(&email, conn.peer.ip())
        .await
        .map_err(|refusal| match refusal {
            Refusal::Throttled(wait) => {
                fm.metrics().login("throttled");
                Deny::Throttled(wait)
            }
            Refusal::Unavailable(_) => Deny::Unavailable("login"),
        })?;
    Ok(FormLogin { email, attempt })
}

/// Record how a counted attempt ended: a success uses nothing up; a failure stays
/// counted.
async fn settle(fm: &FmAuthenticator, login: FormLogin, passed: bool) {
    if passed {
        fm.login_limits()
            .succeeded(&login.email, login.attempt)
            .await;
    }
    fm.metrics()
        .login(if passed { "success" } else { "bad_credentials" });
}

/// The address a login attempt is counted under. Flask-Security finds users by email
/// without regard to case, so the address is lower-cased; it also normalises it
/// (email_validator: NFKC, ignorable characters dropped, IDNA dots), so that
/// `alice@ＥXAMPLE.com`, or one with a variation selector, logs into alice@example.com.
/// Counted apart, each such spelling would get its own allowance of guesses: only plain
/// ASCII addresses are counted and passed on (400 otherwise).
fn counted_email(email: &str, field: &str) -> Result<String, Deny> {
    let email = email.trim().to_lowercase();
    if !email.is_ascii() {
        return Err(Deny::Ambiguous(format!(
            "The login form's {field:?} field must be a plain ASCII address."
        )));
    }
    Ok(email)
}

/// Count a re-authentication (the upstream checks the signed-in caller's password, as
/// Flask-Security's `/verify` does) against the login limits, under the caller's email:
/// a stolen session or token must not become a way to guess the password without end.
pub async fn begin_reauthentication(
    fm: &FmAuthenticator,
    conn: &ConnInfo,
    email: &str,
) -> Result<FormLogin, Deny> {
    count_attempt(fm, conn, email.trim().to_lowercase()).await
}

/// A re-authentication went through when Flask-Security redirects (the form) or
/// answers 2xx with JSON (the JSON form); a failed one shows the form again (200,
/// HTML) or answers 400. A redirect to the login page (`login_path`: the upstream did
/// not see the caller as signed in) is no success: it must not clear the failures.
pub async fn finish_reauthentication(
    fm: &FmAuthenticator,
    login: FormLogin,
    status: http::StatusCode,
    answer: &HeaderMap,
    login_path: Option<&str>,
) {
    settle(fm, login, reauthenticated(status, answer, login_path)).await;
}

fn reauthenticated(status: http::StatusCode, answer: &HeaderMap, login_path: Option<&str>) -> bool {
    if status.is_success() {
        return is_json(answer.get(http::header::CONTENT_TYPE));
    }
    if !status.is_redirection() {
        return false;
    }
    let Some(location) = answer
        .get(http::header::LOCATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    // The path of the target, relative or absolute (`https://host/login?next=...`).
    let path = match location.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => location,
    };
    let path = path.split(['?', '#']).next().unwrap_or(path);
    login_path.is_none_or(|login| path != login)
}

/// The login went through when the answer sets a session cookie, signed by
/// FlexMeasures, that names a user; otherwise the attempt stays counted.
pub async fn finish(fm: &FmAuthenticator, login: FormLogin, answer: &HeaderMap) {
    let logged_in = answer
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter_map(|c| c.to_str().ok()?.strip_prefix("session="))
        .filter_map(|c| c.split(';').next())
        .any(|value| {
            let cookies = SessionCookies {
                session: Some(value),
                remember: None,
            };
            matches!(
                fm.vet(cookies).session,
                Some(Verdict::Verified {
                    names_user: true,
                    ..
                })
            )
        });
    settle(fm, login, logged_in).await;
}

/// The form's email: urlencoded (the browser's form) or JSON (Flask-Security takes
/// both on its login view). Any other body, or the field missing or given twice,
/// cannot be counted and is refused.
fn email_of(headers: &HeaderMap, body: &[u8], field: &str) -> Result<String, Deny> {
    let content_type = headers.get(http::header::CONTENT_TYPE);
    let ambiguous = || {
        Deny::Ambiguous(format!(
            "The login form's {field:?} field is given more than once."
        ))
    };
    let missing = || Deny::Invalid {
        location: "form",
        field: field.to_owned(),
        message: "Missing data for required field.".into(),
    };
    if is_json(content_type) {
        let value =
            crate::rules::extract::parse_json_strict(body).map_err(|_| Deny::MalformedJson)?;
        return match value.get(field) {
            Some(Value::String(email)) => Ok(email.clone()),
            _ => Err(missing()),
        };
    }
    let urlencoded = content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !urlencoded {
        return Err(Deny::Invalid {
            location: "form",
            field: field.to_owned(),
            message: "Send the login form as application/x-www-form-urlencoded or JSON.".into(),
        });
    }
    let mut found = None;
    for (key, value) in form_urlencoded::parse(body) {
        if key == field {
            if found.is_some() {
                return Err(ambiguous());
            }
            found = Some(value.into_owned());
        }
    }
    found.ok_or_else(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_str(content_type).unwrap(),
        );
        h
    }

    #[test]
    fn the_email_comes_from_the_form_or_json_once() {
        let form = typed("application/x-www-form-urlencoded; charset=utf-8");
        assert_eq!(
            email_of(&form, b"email=a%40b.c&password=x&csrf_token=t", "email").unwrap(),
            "a@b.c"
        );
        assert!(matches!(
            email_of(&form, b"email=a%40b.c&email=d%40e.f", "email"),
            Err(Deny::Ambiguous(_))
        ));
        assert!(email_of(&form, b"password=x", "email").is_err());
        let json = typed("application/json");
        assert_eq!(
            email_of(&json, br#"{"email": "a@b.c", "password": "x"}"#, "email").unwrap(),
            "a@b.c"
        );
        assert!(email_of(&json, br#"{"email": "a@b.c", "email": "d@e.f"}"#, "email").is_err());
        assert!(email_of(&typed("multipart/form-data; boundary=x"), b"", "email").is_err());
    }

    #[test]
    fn a_reauthentication_passes_on_a_redirect_away_from_the_login_page_or_json() {
        use http::StatusCode;
        let answer = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(v).unwrap(),
                );
            }
            h
        };
        let login = Some("/login");
        let found = StatusCode::FOUND;
        assert!(reauthenticated(
            found,
            &answer(&[("location", "/dashboard")]),
            login
        ));
        assert!(reauthenticated(
            found,
            &answer(&[("location", "https://fm.example/")]),
            login
        ));
        for back_to_login in [
            "/login?next=%2Fverify",
            "https://fm.example/login",
            "/login#x",
        ] {
            assert!(
                !reauthenticated(found, &answer(&[("location", back_to_login)]), login),
                "{back_to_login}"
            );
        }
        assert!(!reauthenticated(found, &answer(&[]), login), "no Location");
        let json = answer(&[("content-type", "application/json")]);
        assert!(reauthenticated(StatusCode::OK, &json, login));
        assert!(!reauthenticated(StatusCode::BAD_REQUEST, &json, login));
        let html = answer(&[("content-type", "text/html; charset=utf-8")]);
        assert!(
            !reauthenticated(StatusCode::OK, &html, login),
            "the form again"
        );
    }

    #[test]
    fn only_plain_ascii_addresses_are_counted() {
        assert_eq!(
            counted_email(" Alice@Example.COM ", "email").unwrap(),
            "alice@example.com"
        );
        for spelling in [
            "alice@\u{FF25}xample.com",
            "alice@exa\u{FE0F}mple.com",
            "alice@example\u{3002}com",
            "alice@e\u{034F}xample.com",
        ] {
            assert!(
                matches!(counted_email(spelling, "email"), Err(Deny::Ambiguous(_))),
                "{spelling}"
            );
        }
    }
}
