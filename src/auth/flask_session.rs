//! FlexMeasures' browser credentials, read as Flask, Flask-Login and Flask-Security read
//! them (FlexMeasures mode):
//!
//! * the `session` cookie: itsdangerous-signed JSON (see [`super::itsdangerous`]) with
//!   salt `cookie-session`, key derivation "hmac" (`HMAC-SHA1(secret, salt)`), verified
//!   with `SECRET_KEY_FALLBACKS` and `SECRET_KEY` (the latter signs), valid for
//!   `PERMANENT_SESSION_LIFETIME` (31 days) from its timestamp and never dated in the
//!   future. The user is the `_user_id` key (Flask-Security puts `fs_uniquifier` there);
//!   `fs_paa` is the login time, which tells one login's session from another's;
//! * the `remember_token` cookie: `<fs_uniquifier>|hex(HMAC-SHA512(SECRET_KEY,
//!   fs_uniquifier))`, without any timestamp, used only when the session names no user.
//!
//! Pure: the clock is an argument; looking the user up and revocation are the caller's.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use super::itsdangerous::{self, Derivation, Keys};
use super::token::TokenError;

/// Flask's default `PERMANENT_SESSION_LIFETIME` (31 days), which FlexMeasures keeps.
pub const DEFAULT_SESSION_MAX_AGE: u64 = 31 * 86_400;

/// What a valid session cookie says.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// `_user_id`: the `fs_uniquifier` of the logged-in user, if any.
    pub uid: Option<String>,
    /// `fs_paa`: when that login happened (absent for sessions a remember cookie made).
    pub login_time: Option<f64>,
    /// `_remember == "clear"`: Flask-Login will not use the remember cookie.
    pub remember_cleared: bool,
    /// The cookie's timestamp (Unix seconds).
    pub issued_at: u64,
}

impl Session {
    /// The key that names this login session in revocation lists: the user and the
    /// login time, so that logging out ends this session and no other of the user's.
    pub fn revocation_key(&self) -> Option<[u8; 32]> {
        Some(session_revocation_key(
            self.uid.as_deref()?,
            self.login_time,
        ))
    }
}

/// The revocation key of a user's login session by its login time (`None`: a session
/// Flask-Login made from a remember cookie; all of a user's such sessions share it).
pub fn session_revocation_key(uid: &str, login_time: Option<f64>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"flexgate session v1\0");
    h.update(uid.as_bytes());
    h.update(b"\0");
    match login_time {
        Some(t) => h.update(t.to_bits().to_be_bytes()),
        None => h.update(b"no login time"),
    }
    h.finalize().into()
}

/// The revocation key of a remember cookie value.
pub fn remember_revocation_key(value: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"flexgate remember v1\0");
    h.update(value.as_bytes());
    h.finalize().into()
}

/// The keys of Flask's session serializer for `secrets` (`SECRET_KEY_FALLBACKS` first,
/// `SECRET_KEY` last: it signs).
pub fn session_keys<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Keys {
    Keys::derive(secrets, b"cookie-session", Derivation::Hmac)
}

/// Read a `session` cookie value. A cookie that fails any check is an error (Flask
/// then starts an empty session: no user).
pub fn parse_session(
    keys: &Keys,
    value: &str,
    now: u64,
    max_age: u64,
) -> Result<Session, TokenError> {
    let unsigned = itsdangerous::unsign(keys, value)?;
    itsdangerous::check_age(unsigned.timestamp, now, max_age)?;
    let json: serde_json::Value =
        serde_json::from_slice(&unsigned.payload).map_err(|_| TokenError::BadPayload)?;
    let serde_json::Value::Object(map) = json else {
        return Err(TokenError::BadPayload);
    };
    let uid = match map.get("_user_id") {
        Some(serde_json::Value::String(s)) if !s.is_empty() && s.len() <= 255 => Some(s.clone()),
        _ => None,
    };
    Ok(Session {
        uid,
        login_time: map.get("fs_paa").and_then(serde_json::Value::as_f64),
        remember_cleared: map.get("_remember").and_then(serde_json::Value::as_str) == Some("clear"),
        issued_at: unsigned.timestamp,
    })
}

/// The `fs_uniquifier` a `remember_token` cookie vouches for, if its HMAC (keyed with
/// `SECRET_KEY` alone, as Flask-Login does) checks out in constant time.
pub fn check_remember(secret: &[u8], value: &str) -> Option<String> {
    let (uid, digest) = value.rsplit_once('|')?;
    if uid.is_empty() || uid.len() > 255 || digest.len() != 128 {
        return None;
    }
    let mut mac = Hmac::<Sha512>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(uid.as_bytes());
    let expected = hex(&mac.finalize().into_bytes());
    bool::from(expected.as_bytes().ct_eq(digest.as_bytes())).then(|| uid.to_owned())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Why a `Cookie` header cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ambiguous;

/// The value of cookie `name` in a (joined) `Cookie` header, read so that Werkzeug
/// cannot read another. Ambiguous, and so taken from nobody:
/// - the name twice (a bare `name` without `=` counts: Werkzeug reads it as an empty
///   value, and takes the first);
/// - a `"` or `\` anywhere in the header: Werkzeug unquotes and unescapes values, and a
///   quoted value may hold a `;` that hides or makes up a pair. FlexMeasures never sets
///   such values (its cookies are base64url and `uid|hex`).
pub fn cookie<'h>(header: &'h str, name: &str) -> Result<Option<&'h str>, Ambiguous> {
    let mut found = None;
    for pair in header.split(';') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k.trim() == name {
            if found.is_some() {
                return Err(Ambiguous);
            }
            found = Some(v.trim());
        }
    }
    if found.is_some() && header.contains(['"', '\\']) {
        return Err(Ambiguous);
    }
    Ok(found)
}

/// Whether a `session` cookie value is in the one form Flask writes: base64url and dots,
/// with a signature part that decodes exactly (itsdangerous' decoder also takes other
/// spellings of the same signature, which flexgate does not verify). A value that is
/// not canonical may verify at FlexMeasures and not here.
pub fn is_canonical_session(value: &str) -> bool {
    use base64::Engine;
    let alphabet = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.';
    value.bytes().all(alphabet)
        && value.rsplit_once('.').is_some_and(|(_, signature)| {
            signature.len() == 27
                && base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(signature)
                    .is_ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vectors() -> serde_json::Value {
        serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fm/vectors.json"
        )))
        .unwrap()
    }

    #[test]
    fn a_session_flask_made_reads_back() {
        let v = vectors();
        let secret = v["inputs"]["SECRET_KEY"].as_str().unwrap();
        let s = &v["session_cookie"];
        let cookie = s["cookie_value"].as_str().unwrap();
        let ts = s["timestamp"].as_u64().unwrap();
        let keys = session_keys([secret.as_bytes()]);
        let session = parse_session(&keys, cookie, ts, DEFAULT_SESSION_MAX_AGE).unwrap();
        let dict = &s["session_dict"];
        assert_eq!(session.uid.as_deref(), dict["_user_id"].as_str());
        assert_eq!(session.login_time, dict["fs_paa"].as_f64());
        assert!(session.revocation_key().is_some());
        assert_eq!(
            parse_session(
                &keys,
                cookie,
                ts + DEFAULT_SESSION_MAX_AGE + 1,
                DEFAULT_SESSION_MAX_AGE
            ),
            Err(TokenError::Expired)
        );
        assert_eq!(
            parse_session(&keys, cookie, ts - 1, DEFAULT_SESSION_MAX_AGE),
            Err(TokenError::FutureDated)
        );
        let other = session_keys([&b"another secret"[..]]);
        assert_eq!(
            parse_session(&other, cookie, ts, DEFAULT_SESSION_MAX_AGE),
            Err(TokenError::BadSignature)
        );
        // The token serializer's keys (another salt and derivation) do not verify it.
        let token_keys = Keys::derive(
            [secret.as_bytes()],
            b"remember-salt",
            Derivation::DjangoConcat,
        );
        assert!(parse_session(&token_keys, cookie, ts, DEFAULT_SESSION_MAX_AGE).is_err());
    }

    #[test]
    fn an_anonymous_session_names_no_user() {
        let v = vectors();
        let secret = v["inputs"]["SECRET_KEY"].as_str().unwrap();
        let s = &v["session_cookie_anonymous"];
        let keys = session_keys([secret.as_bytes()]);
        let session = parse_session(
            &keys,
            s["cookie_value"].as_str().unwrap(),
            s["timestamp"].as_u64().unwrap(),
            DEFAULT_SESSION_MAX_AGE,
        )
        .unwrap();
        assert_eq!(session.uid, None);
        assert_eq!(session.revocation_key(), None);
    }

    #[test]
    fn remember_tokens_check_their_hmac() {
        let v = vectors();
        let secret = v["inputs"]["SECRET_KEY"].as_str().unwrap();
        let r = &v["remember_token"];
        let value = r["cookie_value"].as_str().unwrap();
        let uid = check_remember(secret.as_bytes(), value).unwrap();
        assert_eq!(uid, r["uid"].as_str().unwrap());
        assert_eq!(check_remember(b"other", value), None);
        let mut tampered = value.to_owned();
        tampered.replace_range(0..1, if tampered.starts_with('a') { "b" } else { "a" });
        assert_eq!(check_remember(secret.as_bytes(), &tampered), None);
        assert_eq!(check_remember(secret.as_bytes(), "nobar"), None);
    }

    #[test]
    fn logins_are_told_apart_by_their_time() {
        let a = Session {
            uid: Some("u".into()),
            login_time: Some(1.5),
            remember_cleared: false,
            issued_at: 1,
        };
        let b = Session {
            login_time: Some(2.5),
            ..a.clone()
        };
        let later_cookie_same_login = Session {
            issued_at: 99,
            ..a.clone()
        };
        assert_ne!(a.revocation_key(), b.revocation_key());
        assert_eq!(a.revocation_key(), later_cookie_same_login.revocation_key());
    }

    #[test]
    fn cookies_are_found_by_exact_name_once() {
        assert_eq!(cookie("a=1; session=xyz; b=2", "session"), Ok(Some("xyz")));
        assert_eq!(cookie("sessionx=1", "session"), Ok(None));
        assert_eq!(cookie("session=1; session=2", "session"), Err(Ambiguous));
    }

    #[test]
    fn cookies_werkzeug_could_read_otherwise_are_ambiguous() {
        // Werkzeug takes a bare name as an empty value, and the first of two.
        assert_eq!(cookie("session; session=A", "session"), Err(Ambiguous));
        // It unquotes and unescapes, and a quoted value can swallow a `;`.
        for header in [
            "session=\"A",
            "session=\"A\"",
            "remember_token=\"u\\|d\"",
            "a=\"x; session=A; y\"",
        ] {
            let name = if header.contains("remember") {
                "remember_token"
            } else {
                "session"
            };
            assert_eq!(cookie(header, name), Err(Ambiguous), "{header}");
        }
        // A quote elsewhere does not matter when the name is not there at all.
        assert_eq!(cookie("a=\"x\"", "session"), Ok(None));
    }

    #[test]
    fn only_the_form_flask_writes_is_a_canonical_session() {
        let v = vectors();
        let value = v["session_cookie"]["cookie_value"].as_str().unwrap();
        assert!(is_canonical_session(value));
        // The signature (20 bytes in 27 characters) leaves two bits of its last
        // character unused: flipping one is another spelling of the same bytes for
        // itsdangerous, and not canonical.
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut other = value.as_bytes().to_vec();
        let last = other.pop().unwrap();
        let index = ALPHABET.iter().position(|c| *c == last).unwrap();
        other.push(ALPHABET[index ^ 1]);
        assert!(!is_canonical_session(std::str::from_utf8(&other).unwrap()));
        assert!(!is_canonical_session(&format!("{value}!")));
        assert!(!is_canonical_session("no-signature"));
    }
}
