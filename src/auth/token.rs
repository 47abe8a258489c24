//! flexgate's native access tokens, as the FlexMeasures seed describes them: signed,
//! URL-safe, carrying the user id, a sha256_crypt hash of the user's current password
//! hash and the user's uniquifier, with the issue time as seconds since
//! 2011-01-01T00:00:00Z.
//!
//! Wire format (three unpadded base64url parts, like itsdangerous' timed serializer):
//! `payload.timestamp.signature`, where `payload` is the JSON array
//! `[user_id, "<sha256_crypt of the password hash>", "<uniquifier>"]`, `timestamp` is the
//! big-endian issue time without leading zero bytes, and `signature` is
//! HMAC-SHA256(key, "payload.timestamp") with the key derived from `SECRET_KEY`.
//!
//! Pure: the clock is an argument, so expiry is tested without sleeping. Checking the
//! token against the user's current state (active, uniquifier, password) happens in
//! [`super::Authenticator`].

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha_crypt::{PasswordHasher as _, PasswordVerifier as _, ShaCrypt};
use sha2::Sha256;

use crate::settings::Secret;

/// 2011-01-01T00:00:00Z as Unix seconds: the epoch of token timestamps.
pub const EPOCH_2011: u64 = 1_293_840_000;
/// Longest token looked at; anything longer is refused before any work.
pub const MAX_TOKEN_LEN: usize = 1024;
/// How far in the future an issue time may lie (clock skew between replicas).
pub const MAX_CLOCK_SKEW_SECS: u64 = 30;

type HmacSha256 = Hmac<Sha256>;

/// Why a token was refused. Each is a 401 to the client; the variant goes to logs and
/// metrics only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts, too long, or empty.
    #[error("malformed token")]
    Malformed,
    /// The signature does not match (tampered, or signed with another key).
    #[error("bad signature")]
    BadSignature,
    /// Signed correctly but the payload is not `[id, binding, uniquifier]`.
    #[error("unexpected payload shape")]
    BadPayload,
    /// Older than the maximum age.
    #[error("expired")]
    Expired,
    /// Issued further in the future than the allowed clock skew.
    #[error("issued in the future")]
    FutureDated,
}

impl TokenError {
    /// A stable label for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::BadSignature => "bad_signature",
            TokenError::BadPayload => "bad_payload",
            TokenError::Expired => "expired",
            TokenError::FutureDated => "future_dated",
        }
    }
}

/// The signing key, derived from `SECRET_KEY` so the raw secret is used for nothing else.
#[derive(Clone)]
pub struct TokenKey {
    mac: HmacSha256,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

impl TokenKey {
    /// Derive the token key: HMAC-SHA256(SECRET_KEY, "flexgate access token v1").
    pub fn derive(secret: &Secret) -> Self {
        let derived = hmac_sha256(secret.expose(), b"flexgate access token v1");
        TokenKey {
            mac: HmacSha256::new_from_slice(&derived).expect("HMAC accepts keys of any length"),
        }
    }

    fn sign(&self, message: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(message);
        mac.finalize().into_bytes().into()
    }
}

/// HMAC-SHA256 of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Whose token it is.
    pub user_id: i64,
    /// sha256_crypt of the user's password hash at issue time.
    pub password_binding: String,
    /// The user's uniquifier at issue time.
    pub uniquifier: String,
    /// Issue time, Unix seconds.
    pub issued_at: u64,
    /// Expiry time, Unix seconds.
    pub expires_at: u64,
    /// The signature: a unique, unforgeable key for caching this token's checks.
    pub tag: [u8; 32],
}

/// Issue a token for `user_id` at Unix time `now`.
pub fn encode(
    key: &TokenKey,
    user_id: i64,
    password_binding: &str,
    uniquifier: &str,
    now: u64,
) -> String {
    let payload = serde_json::to_vec(&(user_id, password_binding, uniquifier))
        .expect("a tuple of an integer and strings always serializes");
    let since_2011 = now.saturating_sub(EPOCH_2011).to_be_bytes();
    let first = since_2011
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(since_2011.len() - 1);
    let mut token = URL_SAFE_NO_PAD.encode(payload);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(&since_2011[first..], &mut token);
    let tag = key.sign(token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(tag, &mut token);
    token
}

/// Verify a token's signature and age at Unix time `now`, then read its claims.
/// Nothing but the signature is decoded before the signature checks out.
pub fn decode(key: &TokenKey, token: &str, now: u64, max_age: u64) -> Result<Claims, TokenError> {
    verify(key, token)?.claims(now, max_age)
}

/// A token whose signature checked out; its other parts are still undecoded.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'t> {
    payload: &'t str,
    stamp: &'t str,
    /// The signature: unique per token, so it keys caches of this token's checks.
    pub tag: [u8; 32],
}

/// Check the shape and the signature (constant-time), decoding nothing else.
pub fn verify<'t>(key: &TokenKey, token: &'t str) -> Result<Signed<'t>, TokenError> {
    parse(token)?.verify(key)
}

/// A token of the right shape whose signature is not checked yet: what a cache of
/// verified tokens is asked about before any HMAC is computed.
#[derive(Debug, Clone, Copy)]
pub struct Unverified<'t> {
    token: &'t str,
    payload: &'t str,
    stamp: &'t str,
    /// The signature as the token claims it; only [`Unverified::verify`] vouches for it.
    pub tag: [u8; 32],
}

/// Split a token into its three parts and decode the signature, checking nothing else.
pub fn parse(token: &str) -> Result<Unverified<'_>, TokenError> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let Some(first) = token.find('.') else {
        return Err(TokenError::Malformed);
    };
    let Some(second) = token[first + 1..].find('.') else {
        return Err(TokenError::Malformed);
    };
    let second = first + 1 + second;
    // A fourth part would leave a '.' in the signature, which is not base64url: the
    // decoding below refuses it.
    let signature = &token[second + 1..];
    let mut tag = [0u8; 32];
    match URL_SAFE_NO_PAD.decode_slice(signature, &mut tag) {
        Ok(32) => {}
        _ => return Err(TokenError::Malformed),
    }
    Ok(Unverified {
        token,
        payload: &token[..first],
        stamp: &token[first + 1..second],
        tag,
    })
}

impl<'t> Unverified<'t> {
    /// The whole token text.
    pub fn text(&self) -> &'t str {
        self.token
    }

    /// Check the signature (constant-time).
    pub fn verify(self, key: &TokenKey) -> Result<Signed<'t>, TokenError> {
        let signed_len = self.payload.len() + 1 + self.stamp.len();
        let mut mac = key.mac.clone();
        mac.update(&self.token.as_bytes()[..signed_len]);
        mac.verify_slice(&self.tag)
            .map_err(|_| TokenError::BadSignature)?;
        Ok(Signed {
            payload: self.payload,
            stamp: self.stamp,
            tag: self.tag,
        })
    }
}

/// Where a token's text is looked up among the texts verified before: its last 8 bytes
/// (the end of its signature). Only a lookup key: a hit means nothing until the whole
/// text compares equal ([`same_text`]). `None` for a text too short to be a token.
pub fn probe(token: &str) -> Option<u64> {
    token
        .as_bytes()
        .last_chunk::<8>()
        .map(|tail| u64::from_le_bytes(*tail))
}

/// Whether two texts are equal, in time that depends on their lengths only: for
/// comparing a presented token with one verified earlier without telling, by timing,
/// how much of it matched. Eight bytes a step (`subtle`'s slice comparison goes byte by
/// byte, about seven times the instructions on a 200-byte token, on every request).
pub fn same_text(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut words_a = a.chunks_exact(8);
    let mut words_b = b.chunks_exact(8);
    let mut diff = 0u64;
    for (x, y) in (&mut words_a).zip(&mut words_b) {
        let x = u64::from_ne_bytes(x.try_into().expect("chunks of 8"));
        let y = u64::from_ne_bytes(y.try_into().expect("chunks of 8"));
        diff |= x ^ y;
    }
    for (x, y) in words_a.remainder().iter().zip(words_b.remainder()) {
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

impl Signed<'_> {
    /// The issue time, Unix seconds.
    pub fn issued_at(&self) -> Result<u64, TokenError> {
        let mut bytes = [0u8; 8];
        let since_2011 = match URL_SAFE_NO_PAD.decode_slice(self.stamp, &mut bytes) {
            Ok(n @ 1..=8) => bytes[..n]
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
            _ => return Err(TokenError::BadPayload),
        };
        since_2011
            .checked_add(EPOCH_2011)
            .ok_or(TokenError::FutureDated)
    }

    /// Check the age and read the payload.
    pub fn claims(&self, now: u64, max_age: u64) -> Result<Claims, TokenError> {
        let issued_at = self.issued_at()?;
        let expires_at = check_age(issued_at, now, max_age)?;
        let payload = URL_SAFE_NO_PAD
            .decode(self.payload)
            .map_err(|_| TokenError::BadPayload)?;
        let (user_id, password_binding, uniquifier): (i64, String, String) =
            serde_json::from_slice(&payload).map_err(|_| TokenError::BadPayload)?;
        Ok(Claims {
            user_id,
            password_binding,
            uniquifier,
            issued_at,
            expires_at,
            tag: self.tag,
        })
    }
}

/// Refuse a token issued beyond the clock skew in the future or older than `max_age`;
/// otherwise its expiry time.
pub fn check_age(issued_at: u64, now: u64, max_age: u64) -> Result<u64, TokenError> {
    if issued_at > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
        return Err(TokenError::FutureDated);
    }
    let expires_at = issued_at.saturating_add(max_age);
    if now > expires_at {
        return Err(TokenError::Expired);
    }
    Ok(expires_at)
}

/// sha256_crypt of a password hash, with a fresh salt: what a token carries so that a
/// password change invalidates it.
pub fn bind_password(password_hash: &str) -> String {
    let mut salt = [0u8; 12];
    getrandom::fill(&mut salt).expect("the operating system's random source failed");
    ShaCrypt::SHA256
        .hash_password_with_salt(password_hash.as_bytes(), &salt)
        .expect("sha256_crypt accepts any input and a 12-byte salt")
        .to_string()
}

/// Whether `binding` is a sha256_crypt hash of `password_hash` (constant-time compare).
pub fn check_binding(password_hash: &str, binding: &str) -> bool {
    binding.starts_with("$5$")
        && ShaCrypt::SHA256
            .verify_password(password_hash.as_bytes(), binding)
            .is_ok()
}

/// The token in an `Authorization` header value: either the raw token (FlexMeasures) or
/// `Bearer <token>`. Anything else (other schemes, spaces inside, control bytes) is
/// `None`.
pub fn token_from_authorization(value: &[u8]) -> Option<&str> {
    let start = value.iter().position(|&b| b != b' ')?;
    let end = value.iter().rposition(|&b| b != b' ')? + 1;
    let value = &value[start..end];
    // Bytes, not text, until the token is known to be ASCII: one pass over it. A value
    // with a space that is not a Bearer scheme's fails the token-text check below.
    let token = match value.split_at_checked(BEARER.len()) {
        Some((scheme, rest))
            if scheme.eq_ignore_ascii_case(BEARER) && rest.first() == Some(&b' ') =>
        {
            let skip = rest.iter().take_while(|&&b| b == b' ').count();
            &rest[skip..]
        }
        _ => value,
    };
    if token.is_empty() || !is_token_text(token) {
        return None;
    }
    std::str::from_utf8(token).ok()
}

const BEARER: &[u8] = b"bearer";

/// Whether every byte is one a token may hold (URL-safe base64 and the dots between its
/// parts). This runs over every byte of every token on the request path, so it is
/// written without branches or early exit, which the compiler turns into SIMD
/// comparisons.
fn is_token_text(bytes: &[u8]) -> bool {
    bytes.iter().fold(true, |ok, &b| {
        let letter = (b | 0x20).wrapping_sub(b'a') < 26;
        let digit = b.wrapping_sub(b'0') < 10;
        ok & (letter | digit | (b == b'-') | (b == b'_') | (b == b'.'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;
    const MAX_AGE: u64 = 21_600;

    fn key() -> TokenKey {
        TokenKey::derive(&Secret::new(b"0123456789abcdef0123456789abcdef".to_vec()))
    }

    #[test]
    fn token_text_is_exactly_url_safe_base64_and_dots() {
        for b in 0..=255u8 {
            let expected = b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.';
            assert_eq!(is_token_text(&[b]), expected, "byte {b}");
            assert_eq!(is_token_text(&[b'a', b, b'Z']), expected, "byte {b} inside");
        }
        assert!(is_token_text(b""));
    }

    fn token() -> String {
        encode(&key(), 42, "$5$salt$binding", "uniq-1", NOW)
    }

    /// Re-sign arbitrary first two parts with the real key, to test payload checks.
    fn sign_parts(payload: &[u8], stamp: &[u8]) -> String {
        let mut t = URL_SAFE_NO_PAD.encode(payload);
        t.push('.');
        t.push_str(&URL_SAFE_NO_PAD.encode(stamp));
        let tag = key().sign(t.as_bytes());
        t.push('.');
        t.push_str(&URL_SAFE_NO_PAD.encode(tag));
        t
    }

    #[test]
    fn round_trip() {
        let claims = decode(&key(), &token(), NOW, MAX_AGE).unwrap();
        assert_eq!(claims.user_id, 42);
        assert_eq!(claims.password_binding, "$5$salt$binding");
        assert_eq!(claims.uniquifier, "uniq-1");
        assert_eq!(claims.issued_at, NOW);
        assert_eq!(claims.expires_at, NOW + MAX_AGE);
    }

    #[test]
    fn timestamp_counts_seconds_since_2011() {
        let t = token();
        let stamp = t.split('.').nth(1).unwrap();
        let bytes = URL_SAFE_NO_PAD.decode(stamp).unwrap();
        let secs = bytes.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b));
        assert_eq!(secs, NOW - EPOCH_2011);
        assert_ne!(bytes[0], 0, "leading zero bytes are stripped");
    }

    #[test]
    fn expiry_and_future_dates() {
        let t = token();
        assert!(
            decode(&key(), &t, NOW + MAX_AGE, MAX_AGE).is_ok(),
            "valid up to max age"
        );
        assert_eq!(
            decode(&key(), &t, NOW + MAX_AGE + 1, MAX_AGE),
            Err(TokenError::Expired)
        );
        assert!(
            decode(&key(), &t, NOW - MAX_CLOCK_SKEW_SECS, MAX_AGE).is_ok(),
            "small skew allowed"
        );
        assert_eq!(
            decode(&key(), &t, NOW - MAX_CLOCK_SKEW_SECS - 1, MAX_AGE),
            Err(TokenError::FutureDated)
        );
        // A shorter configured max age applies to tokens already issued.
        assert_eq!(decode(&key(), &t, NOW + 61, 60), Err(TokenError::Expired));
    }

    #[test]
    fn tampering_with_any_part_breaks_the_signature() {
        let t = token();
        let parts: Vec<&str> = t.split('.').collect();
        let forged_payload = URL_SAFE_NO_PAD.encode(br#"[1,"$5$salt$binding","uniq-1"]"#);
        let later = URL_SAFE_NO_PAD.encode((NOW + 3600 - EPOCH_2011).to_be_bytes());
        let mut flipped = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        flipped[0] ^= 1;
        let flipped = URL_SAFE_NO_PAD.encode(flipped);
        for forged in [
            format!("{forged_payload}.{}.{}", parts[1], parts[2]),
            format!("{}.{later}.{}", parts[0], parts[2]),
            format!("{}.{}.{flipped}", parts[0], parts[1]),
        ] {
            assert_eq!(
                decode(&key(), &forged, NOW, MAX_AGE),
                Err(TokenError::BadSignature),
                "{forged}"
            );
        }
        let other = TokenKey::derive(&Secret::new(b"another-secret-another-secret-xx".to_vec()));
        assert_eq!(
            decode(&other, &t, NOW, MAX_AGE),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn malformed_input_is_refused_before_any_parsing() {
        let t = token();
        let cases = [
            String::new(),
            "abc".into(),
            "a.b".into(),
            format!("{t}.extra"),
            t[..t.len() - 3].into(),
            format!("{}.{}.{}", "###", "AA", "B".repeat(43)),
            "x".repeat(MAX_TOKEN_LEN + 1),
            t.replace('.', ".="),
        ];
        for (i, case) in cases.iter().enumerate() {
            let result = decode(&key(), case, NOW, MAX_AGE);
            assert!(
                matches!(
                    result,
                    Err(TokenError::Malformed | TokenError::BadSignature)
                ),
                "case {i} {case:?}: {result:?}"
            );
        }
    }

    #[test]
    fn parsing_splits_without_vouching_and_verifying_vouches() {
        let t = token();
        let parsed = parse(&t).unwrap();
        assert_eq!(parsed.text(), t);
        assert_eq!(parsed.verify(&key()).unwrap().tag, parsed.tag);
        // Another payload under the same signature parses to the same tag, and only
        // verification tells them apart.
        let forged = format!("x{t}");
        let parsed_forgery = parse(&forged).unwrap();
        assert_eq!(parsed_forgery.tag, parsed.tag);
        assert_eq!(
            parsed_forgery.verify(&key()).map(|s| s.tag),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            parse(&format!("{t}.x")).map(|p| p.tag),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn same_text_compares_every_byte() {
        let t = token();
        assert!(same_text(&t, &t.clone()));
        assert!(same_text("", ""));
        assert!(!same_text(&t, &t[..t.len() - 1]), "a prefix");
        for at in [0, 7, 8, t.len() / 2, t.len() - 1] {
            let mut other = t.clone().into_bytes();
            other[at] ^= 0x01;
            let other = String::from_utf8(other).unwrap();
            assert!(!same_text(&t, &other), "differs at {at}");
        }
    }

    #[test]
    fn signed_but_wrong_payloads_are_refused() {
        let stamp = (NOW - EPOCH_2011).to_be_bytes();
        for payload in [
            &br#"{"uid":"x"}"#[..],
            br#"[42,"b"]"#,
            br#"["42","b","u"]"#,
            br#"[42,"b","u","extra"]"#,
            b"not json",
        ] {
            let t = sign_parts(payload, &stamp);
            assert_eq!(
                decode(&key(), &t, NOW, MAX_AGE),
                Err(TokenError::BadPayload),
                "{payload:?}"
            );
        }
        // Empty and over-long timestamps.
        let good = br#"[42,"b","u"]"#;
        assert_eq!(
            decode(&key(), &sign_parts(good, &[]), NOW, MAX_AGE),
            Err(TokenError::BadPayload)
        );
        assert_eq!(
            decode(&key(), &sign_parts(good, &[1; 9]), NOW, MAX_AGE),
            Err(TokenError::BadPayload)
        );
        // A timestamp so large that adding the epoch overflows.
        assert_eq!(
            decode(&key(), &sign_parts(good, &[0xff; 8]), NOW, MAX_AGE),
            Err(TokenError::FutureDated)
        );
    }

    #[test]
    fn password_binding_checks_the_hash() {
        let hash = "$2b$04$abcdefghijklmnopqrstuuq1p0aY1nE2n4/0hX1sQhQk0b8pQ7r6e";
        let binding = bind_password(hash);
        assert!(binding.starts_with("$5$"));
        assert!(check_binding(hash, &binding));
        assert!(!check_binding("$2b$04$another-hash", &binding));
        assert!(!check_binding(hash, "garbage"));
        assert!(!check_binding(hash, "$6$salt$notsha256"));
        assert_ne!(bind_password(hash), binding, "salted");
    }

    /// The header grammar written the obvious way, on text: what the byte-level parser
    /// must agree with.
    fn reference_token(value: &[u8]) -> Option<&str> {
        let value = std::str::from_utf8(value).ok()?.trim_matches(' ');
        let token = match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => {
                rest.trim_start_matches(' ')
            }
            Some(_) => return None,
            None => value,
        };
        (!token.is_empty() && is_token_text(token.as_bytes())).then_some(token)
    }

    #[test]
    fn authorization_parser_agrees_with_the_reference() {
        let prefixes: &[&[u8]] = &[
            b"",
            b" ",
            b"bearer",
            b"Bearer",
            b"BEARER",
            b"bearer ",
            b"Bearer  ",
            b" bEaReR ",
            b"bear",
            b"bearerx",
            b"Basic ",
            b"B\xc3\xa9arer ",
            b"\xff",
        ];
        let alphabet: &[u8] = b" .x=\t\xffBr";
        let mut value = Vec::new();
        for prefix in prefixes {
            for len in 0..=4u32 {
                for mut n in 0..alphabet.len().pow(len) {
                    value.clear();
                    value.extend_from_slice(prefix);
                    for _ in 0..len {
                        value.push(alphabet[n % alphabet.len()]);
                        n /= alphabet.len();
                    }
                    assert_eq!(
                        token_from_authorization(&value),
                        reference_token(&value),
                        "{:?}",
                        String::from_utf8_lossy(&value)
                    );
                }
            }
        }
    }

    #[test]
    fn authorization_header_forms() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"abc.def.ghi", Some("abc.def.ghi")),
            (b"Bearer abc.def.ghi", Some("abc.def.ghi")),
            (b"bearer  abc.def.ghi", Some("abc.def.ghi")),
            (b"BEARER abc", Some("abc")),
            (b"Basic dXNlcjpwdw==", None),
            (b"Bearer", Some("Bearer")), // a bare word is a (bad) raw token
            (b"Bearer ", Some("Bearer")),
            (b"", None),
            (b"Bearer a b", None),
            (b"abc\0def", None),
            (b"abc\tdef", None),
            (b"Bearer abc=", None),
            (&[0xff, 0xfe], None),
            (b"  Bearer abc  ", Some("abc")),
            (b"Bearerabc", Some("Bearerabc")),
            (b"Token abc", None),
            (b"   ", None),
            (b"Bearer \xffabc", None),
            (b"B\xc3\xa9arer abc", None),
        ];
        for (value, expected) in cases {
            assert_eq!(
                token_from_authorization(value),
                *expected,
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
    }
}
