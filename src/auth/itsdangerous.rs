//! The signed, timestamped values of Python's itsdangerous 2.x `URLSafeTimedSerializer`,
//! which FlexMeasures uses for its auth tokens (through Flask-Security) and Flask for its
//! session cookie: `payload.timestamp.signature`, three unpadded base64url parts, where
//! `payload` is compact JSON (zlib-compressed behind a leading `.` when that saves two
//! bytes or more), `timestamp` the big-endian Unix seconds without leading zero bytes,
//! and `signature` HMAC-SHA1 over everything before the last `.`.
//!
//! Keys: itsdangerous derives one signing key per secret, either `SHA1(salt + "signer" +
//! secret)` ("django-concat", tokens) or `HMAC-SHA1(secret, salt)` ("hmac", Flask's
//! session); it verifies with every key of its list and signs with the last one.
//!
//! Pure and strict: only canonical base64url is accepted (FlexMeasures only issues
//! canonical values; Python's decoder is laxer, so flexgate may refuse a hand-made
//! variant FlexMeasures would take, never the reverse), signatures are compared in
//! constant time, and a compressed payload may not inflate beyond [`MAX_PAYLOAD`].

use std::io::Read;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

use super::token::TokenError;

/// Longest value looked at.
pub const MAX_VALUE_LEN: usize = 8 * 1024;
/// Largest payload after decompression (a zlib bomb stops here).
pub const MAX_PAYLOAD: usize = 16 * 1024;

type HmacSha1 = Hmac<Sha1>;

/// How itsdangerous turns a secret into a signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derivation {
    /// `SHA1(salt + "signer" + secret)`: itsdangerous' default (Flask-Security tokens).
    DjangoConcat,
    /// `HMAC-SHA1(secret, salt)`: Flask's session cookie.
    Hmac,
}

/// The signing keys of one serializer: derived once, verified newest first.
#[derive(Clone)]
pub struct Keys {
    /// Derived keys in the serializer's order; the last one signs.
    derived: Vec<[u8; 20]>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys(<{} redacted>)", self.derived.len())
    }
}

impl Keys {
    /// Keys for `secrets` in the serializer's order (the last one signs), with `salt`.
    pub fn derive<'a>(
        secrets: impl IntoIterator<Item = &'a [u8]>,
        salt: &[u8],
        derivation: Derivation,
    ) -> Keys {
        let derived = secrets
            .into_iter()
            .map(|secret| {
                let mut key = [0u8; 20];
                match derivation {
                    Derivation::DjangoConcat => {
                        let mut h = Sha1::new();
                        h.update(salt);
                        h.update(b"signer");
                        h.update(secret);
                        key.copy_from_slice(&h.finalize());
                    }
                    Derivation::Hmac => {
                        let mut mac = HmacSha1::new_from_slice(secret)
                            .expect("HMAC takes keys of any length");
                        mac.update(salt);
                        key.copy_from_slice(&mac.finalize().into_bytes());
                    }
                }
                key
            })
            .collect();
        Keys { derived }
    }

    fn mac(key: &[u8; 20], value: &[u8]) -> [u8; 20] {
        let mut mac = HmacSha1::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(value);
        let mut out = [0u8; 20];
        out.copy_from_slice(&mac.finalize().into_bytes());
        out
    }

    /// Whether any key signed `value` with `signature` (all keys are tried, in constant
    /// time each).
    fn verifies(&self, value: &[u8], signature: &[u8]) -> bool {
        let mut ok = subtle::Choice::from(0);
        for key in self.derived.iter().rev() {
            ok |= Self::mac(key, value).ct_eq(signature);
        }
        bool::from(ok)
    }
}

/// A value whose signature checked out: its decoded payload and timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsigned {
    /// The payload bytes (decompressed when it was compressed): JSON.
    pub payload: Vec<u8>,
    /// Unix seconds when it was signed.
    pub timestamp: u64,
}

/// Check the signature of `value` and decode it. The age is not checked here (see
/// [`check_age`]).
pub fn unsign(keys: &Keys, value: &str) -> Result<Unsigned, TokenError> {
    if value.is_empty() || value.len() > MAX_VALUE_LEN {
        return Err(TokenError::Malformed);
    }
    let (signed, signature) = value.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let (payload, timestamp) = signed.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let signature = decode(signature)?;
    let timestamp = decode(timestamp)?;
    if signature.len() != 20 || timestamp.is_empty() || timestamp.len() > 8 {
        return Err(TokenError::Malformed);
    }
    if !keys.verifies(signed.as_bytes(), &signature) {
        return Err(TokenError::BadSignature);
    }
    let timestamp = timestamp
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    let payload = match payload.strip_prefix('.') {
        Some(compressed) => inflate(&decode(compressed)?)?,
        None => decode(payload)?,
    };
    Ok(Unsigned { payload, timestamp })
}

/// itsdangerous' age rule: older than `max_age` seconds, or dated in the future (no
/// tolerance, as in `TimestampSigner.unsign`), is refused.
pub fn check_age(timestamp: u64, now: u64, max_age: u64) -> Result<(), TokenError> {
    if timestamp > now {
        return Err(TokenError::FutureDated);
    }
    if now - timestamp > max_age {
        return Err(TokenError::Expired);
    }
    Ok(())
}

/// Sign `payload` (JSON bytes) at `timestamp` with the last key, compressing it as
/// itsdangerous does when that saves at least two bytes.
pub fn sign(keys: &Keys, payload: &[u8], timestamp: u64) -> String {
    let compressed = deflate(payload);
    let mut value = if compressed.len() + 1 < payload.len() {
        format!(".{}", URL_SAFE_NO_PAD.encode(&compressed))
    } else {
        URL_SAFE_NO_PAD.encode(payload)
    };
    let ts = timestamp.to_be_bytes();
    let first = ts.iter().position(|b| *b != 0).unwrap_or(7);
    value.push('.');
    value.push_str(&URL_SAFE_NO_PAD.encode(&ts[first..]));
    let key = keys
        .derived
        .last()
        .expect("a serializer is built with at least one secret");
    let signature = Keys::mac(key, value.as_bytes());
    value.push('.');
    value.push_str(&URL_SAFE_NO_PAD.encode(signature));
    value
}

fn decode(part: &str) -> Result<Vec<u8>, TokenError> {
    if part.is_empty() {
        return Err(TokenError::Malformed);
    }
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed)
}

fn inflate(compressed: &[u8]) -> Result<Vec<u8>, TokenError> {
    let mut out = Vec::new();
    let mut reader = flate2::read::ZlibDecoder::new(compressed).take(MAX_PAYLOAD as u64 + 1);
    reader
        .read_to_end(&mut out)
        .map_err(|_| TokenError::Malformed)?;
    if out.len() > MAX_PAYLOAD {
        return Err(TokenError::Malformed);
    }
    Ok(out)
}

fn deflate(payload: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(payload);
    encoder.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_keys(secrets: &[&str]) -> Keys {
        Keys::derive(
            secrets.iter().map(|s| s.as_bytes()),
            b"remember-salt",
            Derivation::DjangoConcat,
        )
    }

    #[test]
    fn a_signed_value_unsigns_to_its_payload_and_time() {
        let keys = token_keys(&["k"]);
        for payload in [&b"{\"a\":1}"[..], &[b'x'; 300][..]] {
            let value = sign(&keys, payload, 1_796_140_800);
            assert_eq!(
                value.starts_with('.'),
                payload.len() == 300,
                "long repetitive payloads compress"
            );
            let u = unsign(&keys, &value).unwrap();
            assert_eq!(u.payload, payload);
            assert_eq!(u.timestamp, 1_796_140_800);
        }
    }

    #[test]
    fn tampering_and_other_keys_are_refused() {
        let keys = token_keys(&["k"]);
        let value = sign(&keys, b"[\"uid\"]", 1000);
        assert_eq!(
            unsign(&token_keys(&["other"]), &value),
            Err(TokenError::BadSignature)
        );
        let mut bytes = value.clone().into_bytes();
        bytes[2] ^= 1;
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(unsign(&keys, &tampered).is_err());
        for bad in [
            "",
            "a.b",
            "..",
            "a.b.c",
            &format!("{value}="),
            &value.replace('-', "+"),
        ] {
            assert!(unsign(&keys, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fallbacks_verify_and_the_last_key_signs() {
        let rotated = token_keys(&["new", "old"]);
        let by_old = sign(&token_keys(&["old"]), b"1", 5);
        let by_new = sign(&token_keys(&["new"]), b"1", 5);
        assert!(unsign(&rotated, &by_old).is_ok());
        assert!(unsign(&rotated, &by_new).is_ok());
        assert_eq!(
            sign(&rotated, b"1", 5),
            by_old,
            "itsdangerous signs with the last secret"
        );
    }

    #[test]
    fn the_age_rule_is_itsdangerous_own() {
        assert_eq!(check_age(100, 100 + 21_600, 21_600), Ok(()));
        assert_eq!(
            check_age(100, 100 + 21_601, 21_600),
            Err(TokenError::Expired)
        );
        assert_eq!(check_age(101, 100, 21_600), Err(TokenError::FutureDated));
    }

    #[test]
    fn a_zlib_bomb_is_refused() {
        let keys = token_keys(&["k"]);
        let bomb = vec![b' '; MAX_PAYLOAD + 10];
        let value = sign(&keys, &bomb, 1);
        assert!(value.starts_with('.'));
        assert_eq!(unsign(&keys, &value), Err(TokenError::Malformed));
    }

    /// Vectors made by FlexMeasures' own libraries (`tests/fm/gen_vectors.py`).
    #[test]
    fn flexmeasures_vectors_verify() {
        let vectors: serde_json::Value = serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fm/vectors.json"
        )))
        .unwrap();
        let secret = vectors["inputs"]["SECRET_KEY"].as_str().unwrap();
        let mut checked = 0;
        for t in vectors["auth_tokens"].as_array().unwrap() {
            let token = t["token"].as_str().unwrap();
            let mut secrets: Vec<&str> = vec![secret];
            if let Some(fallbacks) = t["secret_key_fallbacks"].as_array() {
                secrets.extend(fallbacks.iter().filter_map(|f| f.as_str()));
            }
            let keys = token_keys(&secrets);
            let u = unsign(&keys, token).unwrap_or_else(|e| panic!("{}: {e}", t["name"]));
            assert_eq!(
                u.timestamp,
                t["timestamp"].as_u64().unwrap(),
                "{}",
                t["name"]
            );
            let payload = t["payload_json"].as_str().unwrap();
            assert_eq!(u.payload, payload.as_bytes(), "{}", t["name"]);
            if t["compressed"] == false {
                // Uncompressed values are deterministic: flexgate signs them identically.
                assert_eq!(
                    sign(&keys, payload.as_bytes(), u.timestamp),
                    token,
                    "{}",
                    t["name"]
                );
            }
            checked += 1;
        }
        assert!(checked >= 5);
    }
}
