//! Header rewriting between client and upstream, in the order that keeps it safe:
//! 1. remove hop-by-hop headers, including any the client named in `Connection`;
//! 2. remove every client-sent identity header (the configured prefix, in any case,
//!    with `-` or `_`) and every header a backend might trust for routing or client
//!    identity (`Forwarded`, `X-Forwarded-*`, `X-Original-URL`, `X-Real-IP`, ...);
//! 3. only then set `X-Forwarded-For/-Proto/-Host` and, for an authenticated request, the
//!    identity headers and their HMAC signature.
//!
//! Signature (header `<prefix>Signature: v1=<hex>`): HMAC-SHA256 keyed with
//! `FLEXGATE_UPSTREAM_SECRET` over these lines joined by `\n`:
//! `v1`, timestamp (Unix seconds, also sent as `<prefix>Timestamp`), method, path (as
//! forwarded, without the query), user id, email, account id, user roles, account roles
//! (roles comma separated, sorted, as in their headers).

use std::net::IpAddr;

use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use sha2::Sha256;

use crate::auth::Identity;
use crate::rules::IdentityHeaders;
use crate::settings::Secret;

/// Never passed on: hop-by-hop (RFC 9110 7.6.1, plus the legacy ones and h2c's
/// `HTTP2-Settings`), and `Expect`, which hyper has already answered for the client:
/// flexgate sends the body at once, and an upstream that answered the expectation early
/// could read that body as a request of its own.
const HOP_BY_HOP: [HeaderName; 11] = [
    header::CONNECTION,
    header::EXPECT,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    HeaderName::from_static("http2-settings"),
];

/// Headers many frameworks read to run a request as another method; a request checked
/// as `POST` must not run as `DELETE`.
pub const METHOD_OVERRIDE: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// Why method-override headers cannot be honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverrideError {
    /// Several override headers (or values) that disagree, or one that is not a method.
    Ambiguous,
}

/// The method the override headers ask for, if any: all given values must name the
/// same method (compared as sent, upper-cased by the caller's framework or not).
pub fn method_override(headers: &HeaderMap) -> Result<Option<Method>, OverrideError> {
    let mut found: Option<&HeaderValue> = None;
    for name in &METHOD_OVERRIDE {
        for value in headers.get_all(name) {
            match found {
                Some(f) if !f.as_bytes().eq_ignore_ascii_case(value.as_bytes()) => {
                    return Err(OverrideError::Ambiguous);
                }
                _ => found = Some(value),
            }
        }
    }
    let Some(value) = found else { return Ok(None) };
    let upper = value.as_bytes().to_ascii_uppercase();
    if upper.is_empty() || !upper.iter().all(u8::is_ascii_alphabetic) {
        return Err(OverrideError::Ambiguous);
    }
    Method::from_bytes(&upper)
        .map(Some)
        .map_err(|_| OverrideError::Ambiguous)
}

/// Remove every method-override header.
pub fn strip_method_override(headers: &mut HeaderMap) {
    for name in &METHOD_OVERRIDE {
        headers.remove(name);
    }
}

/// The one protocol an upgrade request asks for (`websocket`); `None` when the request
/// does not ask to switch, or offers several protocols at once (never passed on).
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<&HeaderValue> {
    if !is_upgrade_request(headers) {
        return None;
    }
    let mut values = headers.get_all(header::UPGRADE).iter();
    let (value, extra) = (values.next()?, values.next());
    if extra.is_some() || value.as_bytes().contains(&b',') || value.is_empty() {
        return None;
    }
    Some(value)
}

/// FlexMeasures' browser-session cookies (Flask's `session`, Flask-Login's
/// `remember_token`): with either present, FlexMeasures acts as the session's user even
/// when a token authenticated the request.
pub const FLEXMEASURES_SESSION_COOKIES: &[&str] = &["session", "remember_token"];

/// Remove the named cookies from the (joined) `Cookie` header, keeping the others as
/// sent; the header goes when nothing is left.
pub fn strip_cookies(headers: &mut HeaderMap, names: &[&str]) {
    let Some(value) = headers.get(header::COOKIE) else {
        return;
    };
    let Ok(text) = value.to_str() else {
        // Not text: no cookie can be told apart safely; drop them all.
        headers.remove(header::COOKIE);
        return;
    };
    let is_named = |pair: &str| {
        let name = pair.split('=').next().unwrap_or("").trim();
        names.contains(&name)
    };
    if !text.split(';').any(is_named) {
        return;
    }
    let kept: Vec<&str> = text
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty() && !is_named(p))
        .collect();
    match HeaderValue::from_str(&kept.join("; ")) {
        Ok(v) if !kept.is_empty() => {
            headers.insert(header::COOKIE, v);
        }
        _ => {
            headers.remove(header::COOKIE);
        }
    }
}

/// Send the token of an `Authorization: Bearer <token>` header raw, as FlexMeasures
/// reads the header (a `Bearer ` prefix makes it fail).
pub fn raw_authorization(headers: &mut HeaderMap) {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return;
    };
    if let Some(token) = crate::auth::token::token_from_authorization(value.as_bytes())
        && token.len() != value.len()
        && let Ok(raw) = HeaderValue::from_str(token)
    {
        headers.insert(header::AUTHORIZATION, raw);
    }
}

/// Join HTTP/2 cookie crumbs (several `cookie` fields) into one `Cookie` line with
/// `; `, as RFC 9113 section 8.2.3 requires before HTTP/1.1.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let mut joined: Vec<u8> = Vec::new();
    for v in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    // Each crumb was a valid header value and "; " is too, so the join is one.
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// Headers a backend may trust for the original URL or the client's address; a client
/// must never set them. Compared after mapping `_` to `-`.
const SPOOFABLE_PREFIXES: [&str; 11] = [
    "forwarded",
    "x-forwarded-",
    "x-original-url",
    "x-original-uri",
    "x-original-method",
    "x-flexgate-replay",
    "x-flexgate-decision-secret",
    "x-rewrite-url",
    "x-real-ip",
    "x-client-ip",
    "x-envoy-",
];

/// Whether the request asks to switch protocols (WebSocket and friends).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Remove, before anything reads them, the client's headers the upstream would not see
/// as flexgate does, so that what is matched and checked is what is forwarded:
/// - headers the client named in `Connection` (hop-by-hop: they never reach the
///   upstream, so a rule that read one would check a value the upstream never gets);
/// - header names with `_`: many servers read `X_HTTP_Method_Override` or `Content_Type`
///   as their `-` spelling (CGI-style environments), which flexgate would not have
///   checked. nginx (`underscores_in_headers off`) and gunicorn drop them too.
///
/// The usual request carries neither: one pass over the names finds that.
pub fn drop_unforwarded(headers: &mut HeaderMap) {
    let odd = |name: &HeaderName| name == header::CONNECTION || underscored(name);
    if !headers.keys().any(odd) {
        return;
    }
    let mut doomed: Vec<HeaderName> = nominated(headers).collect();
    doomed.extend(headers.keys().filter(|n| underscored(n)).cloned());
    for name in doomed {
        headers.remove(name);
    }
}

/// Whether the client named in `Connection` a header other than the protocol's own
/// tokens, or sent a header name with `_`: such a request cannot be decided for an
/// ingress, which forwards the client's headers as they are (see [`drop_unforwarded`]).
pub fn has_unforwarded(headers: &HeaderMap) -> bool {
    nominated(headers).next().is_some() || headers.keys().any(underscored)
}

/// A header name with `_`, which CGI-style servers read as its `-` spelling.
fn underscored(name: &HeaderName) -> bool {
    name.as_str().contains('_')
}

/// The headers named in `Connection`, but for the tokens `keep-alive`, `close` and
/// `upgrade` (handled with the hop-by-hop headers).
fn nominated(headers: &HeaderMap) -> impl Iterator<Item = HeaderName> + '_ {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            !t.is_empty()
                && !["keep-alive", "close", "upgrade"]
                    .iter()
                    .any(|k| t.eq_ignore_ascii_case(k))
        })
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
}

/// Remove hop-by-hop headers (step 1). With `keep_upgrade`, `Upgrade` survives and
/// `Connection: upgrade` is set again, for a protocol switch. Most requests carry none:
/// one pass over the names finds that without hashing or allocating.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    // Headers named in Connection are hop-by-hop too (on requests they went with
    // `drop_unforwarded`; an upstream's 101 names its own).
    let named: Vec<HeaderName> = nominated(headers).collect();
    for name in named {
        if !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(&name);
        }
    }
    let upgrade = keep_upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(protocol) = upgrade {
        headers.insert(header::UPGRADE, protocol);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Remove client-sent identity and spoofable routing headers (step 2). `prefix` is
/// lower-case, e.g. `x-flexgate-`. Allocates only when there is something to remove.
pub fn strip_client_identity(headers: &mut HeaderMap, prefix: &str) {
    let doomed = |name: &HeaderName| {
        let name = name.as_str().as_bytes();
        // Every spoofable prefix starts with `x` or `f`: most names are done here.
        let lead = name.first().copied();
        if lead != Some(b'x') && lead != Some(b'f') && lead != prefix.as_bytes().first().copied() {
            return false;
        }
        starts_with_dashed(name, prefix.as_bytes())
            || SPOOFABLE_PREFIXES
                .iter()
                .any(|p| starts_with_dashed(name, p.as_bytes()))
    };
    if !headers.keys().any(doomed) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|n| doomed(n)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

/// `name` starts with `prefix` when `_` in `name` counts as `-` (names are lower-case).
fn starts_with_dashed(name: &[u8], prefix: &[u8]) -> bool {
    name.len() >= prefix.len()
        && name
            .iter()
            .zip(prefix)
            .all(|(n, p)| *n == *p || (*n == b'_' && *p == b'-'))
}

/// Write the forwarding headers (step 3) as header lines for the upstream request
/// head. `client` is the connection's address, encoded once per connection; `host` the
/// client's `Host`.
pub fn set_forwarded(
    out: &mut Vec<u8>,
    client: &HeaderValue,
    tls: bool,
    host: Option<&HeaderValue>,
) {
    write_line(out, &X_FORWARDED_FOR, client.as_bytes());
    write_line(
        out,
        &X_FORWARDED_PROTO,
        if tls { b"https" } else { b"http" },
    );
    if let Some(host) = host {
        write_line(out, &X_FORWARDED_HOST, host.as_bytes());
    }
}

/// Append `name: value\r\n`. Headers flexgate adds go straight into the upstream
/// request head this way: no map insertions for headers that are only ever written.
pub fn write_line(out: &mut Vec<u8>, name: &HeaderName, value: &[u8]) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The `X-Forwarded-For` value of a client address.
pub fn client_value(client: IpAddr) -> HeaderValue {
    HeaderValue::try_from(client.to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Signs identity headers for the upstream.
#[derive(Clone)]
pub struct UpstreamSigner {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for UpstreamSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamSigner(<redacted>)")
    }
}

impl UpstreamSigner {
    /// A signer keyed with `FLEXGATE_UPSTREAM_SECRET`.
    pub fn new(secret: &Secret) -> Self {
        UpstreamSigner {
            mac: Hmac::new_from_slice(secret.expose()).expect("HMAC accepts keys of any length"),
        }
    }

    /// `v1=<hex>` over the canonical lines (see the module doc).
    pub fn sign(&self, timestamp: u64, method: &Method, path: &str, id: &Identity) -> HeaderValue {
        let mut ts = itoa::Buffer::new();
        HeaderValue::from_bytes(&self.signature(ts.format(timestamp).as_bytes(), method, path, id))
            .expect("hex is a valid header value")
    }

    /// The signature header's value as bytes; `ts` is the timestamp in decimal.
    fn signature(&self, ts: &[u8], method: &Method, path: &str, id: &Identity) -> [u8; 67] {
        // The canonical lines of `canonical_mac`, with the identity's five joined once
        // per identity (`IdentityValues::signed_fields`).
        let mut mac = self.mac.clone();
        mac.update(b"v1\n");
        mac.update(ts);
        mac.update(b"\n");
        mac.update(method.as_str().as_bytes());
        mac.update(b"\n");
        mac.update(path.as_bytes());
        mac.update(id.headers.signed_fields());
        let digest: [u8; 32] = mac.finalize().into_bytes().into();
        let mut out = [0u8; 3 + 64];
        out[..3].copy_from_slice(b"v1=");
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in digest.iter().enumerate() {
            out[3 + 2 * i] = HEX[usize::from(b >> 4)];
            out[4 + 2 * i] = HEX[usize::from(b & 0xf)];
        }
        out
    }
}

/// HMAC over `v1` and the fields, joined by newlines.
fn canonical_mac(mut mac: Hmac<Sha256>, fields: &[&[u8]; 8]) -> [u8; 32] {
    mac.update(b"v1");
    for field in fields {
        mac.update(b"\n");
        mac.update(field);
    }
    mac.finalize().into_bytes().into()
}

/// Why an upstream should refuse a request's identity headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A signed header is missing or not text.
    #[error("identity or signature header missing")]
    Missing,
    /// The timestamp is further from now than allowed.
    #[error("signature timestamp too old or in the future")]
    Stale,
    /// The signature does not match the headers.
    #[error("signature mismatch")]
    Mismatch,
}

/// What an upstream does with a request: check that its identity headers were signed by
/// flexgate for this method and path within `max_skew` seconds of `now`. `prefix` is the
/// configured header prefix (any case).
pub fn verify_signature(
    secret: &Secret,
    headers: &HeaderMap,
    prefix: &str,
    method: &Method,
    path: &str,
    now: u64,
    max_skew: u64,
) -> Result<(), SignatureError> {
    let prefix = prefix.to_ascii_lowercase();
    let get = |suffix: &str| -> Result<&[u8], SignatureError> {
        let mut values = headers.get_all(format!("{prefix}{suffix}")).iter();
        match (values.next(), values.next()) {
            (Some(v), None) => Ok(v.as_bytes()),
            _ => Err(SignatureError::Missing),
        }
    };
    let ts = get("timestamp")?;
    let signed_at: u64 = std::str::from_utf8(ts)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(SignatureError::Missing)?;
    if signed_at.abs_diff(now) > max_skew {
        return Err(SignatureError::Stale);
    }
    let given = get("signature")?
        .strip_prefix(b"v1=")
        .ok_or(SignatureError::Mismatch)?;
    let mac =
        Hmac::<Sha256>::new_from_slice(secret.expose()).expect("HMAC accepts keys of any length");
    let expected = canonical_mac(
        mac,
        &[
            ts,
            method.as_str().as_bytes(),
            path.as_bytes(),
            get("user-id")?,
            get("user-email")?,
            get("account-id")?,
            get("user-roles")?,
            get("account-roles")?,
        ],
    );
    let mut hex = [0u8; 64];
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in expected.iter().enumerate() {
        hex[2 * i] = HEX[usize::from(b >> 4)];
        hex[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
    use subtle::ConstantTimeEq;
    if bool::from(hex[..].ct_eq(given)) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Write the identity headers and their signature (step 3, authenticated requests) as
/// header lines for the upstream request head.
pub fn inject_identity(
    out: &mut Vec<u8>,
    names: &IdentityHeaders,
    id: &Identity,
    signer: &UpstreamSigner,
    method: &Method,
    path: &str,
    now: u64,
) {
    let mut ts = itoa::Buffer::new();
    let ts = ts.format(now);
    write_line(out, &names.user_id, id.headers.user_id.as_bytes());
    write_line(out, &names.email, id.headers.email.as_bytes());
    write_line(out, &names.account_id, id.headers.account_id.as_bytes());
    write_line(out, &names.roles, id.headers.roles.as_bytes());
    write_line(
        out,
        &names.account_roles,
        id.headers.account_roles.as_bytes(),
    );
    write_line(out, &names.timestamp, ts.as_bytes());
    write_line(
        out,
        &names.signature,
        &signer.signature(ts.as_bytes(), method, path, id),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hmac_of_the_canonical_lines() {
        let secret = Secret::new(b"0123456789abcdef0123456789abcdef".to_vec());
        let id = Identity::from_record(crate::store::PrincipalRecord {
            user_id: 5,
            email: "prosumer@flexgate.demo".into(),
            active: true,
            uniquifier: "u".into(),
            password_hash: "h".into(),
            account_id: 3,
            consultancy_account_id: Some(2),
            roles: vec!["account-admin".into(), "consultant".into()],
            account_roles: vec!["Prosumer".into()],
        });
        let got = UpstreamSigner::new(&secret).signature(
            b"1800000000",
            &Method::POST,
            "/api/v3_0/assets/1",
            &id,
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose()).unwrap();
        mac.update(b"v1\n1800000000\nPOST\n/api/v3_0/assets/1\n5\nprosumer@flexgate.demo\n3\naccount-admin,consultant\nProsumer");
        let want: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(std::str::from_utf8(&got).unwrap(), format!("v1={want}"));
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn client_identity_headers_are_removed_in_every_spelling() {
        let mut h = map(&[
            ("X-Flexgate-User-Id", "1"),
            ("x-flexgate-user-id", "2"),
            ("X_Flexgate_User_Id", "3"),
            ("x-FLEXGATE_roles", "admin"),
            ("X-Flexgate-Signature", "v1=00"),
            ("X-Forwarded-For", "1.2.3.4"),
            ("X_Forwarded_User", "admin"),
            ("X-Forwarded-Uri", "/public"),
            ("X-Original-URL", "/admin"),
            ("Forwarded", "for=1.2.3.4"),
            ("X-Real-IP", "1.2.3.4"),
            ("X-Flexgatex", "kept"),
            ("Accept", "application/json"),
        ]);
        strip_client_identity(&mut h, "x-flexgate-");
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x-flexgatex"]);
        // The decision listener's own headers go whatever the identity prefix.
        let mut h = map(&[
            ("X-Original-Method", "DELETE"),
            ("X-Flexgate-Replay", "1"),
            ("X-Flexgate-Decision-Secret", "guess"),
            ("Accept", "application/json"),
        ]);
        strip_client_identity(&mut h, "x-id-");
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["accept"]);
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed_before_forwarding_headers_are_set() {
        let mut h = map(&[
            ("Connection", "keep-alive, X-Forwarded-For, x-custom"),
            ("Keep-Alive", "timeout=5"),
            ("X-Custom", "secret"),
            ("Transfer-Encoding", "chunked"),
            ("TE", "trailers"),
            ("Upgrade", "websocket"),
            ("Accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let mut lines = Vec::new();
        set_forwarded(
            &mut lines,
            &client_value("10.1.2.3".parse().unwrap()),
            true,
            Some(&HeaderValue::from_static("example.org")),
        );
        assert!(h.get("x-custom").is_none());
        assert!(h.get("upgrade").is_none());
        assert!(h.get("transfer-encoding").is_none());
        assert!(h.get("x-forwarded-for").is_none(), "named in Connection");
        assert_eq!(
            String::from_utf8(lines).unwrap(),
            "x-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: https\r\nx-forwarded-host: example.org\r\n"
        );
        assert_eq!(h["accept"], "*/*");
    }

    #[test]
    fn named_and_underscored_headers_go_before_any_stage_reads_them() {
        let mut h = map(&[
            ("Connection", "keep-alive, X-HTTP-Method-Override, upgrade"),
            ("X-HTTP-Method-Override", "DELETE"),
            ("X_Asset_Id", "3"),
            ("Content_Type", "text/plain"),
            ("Upgrade", "websocket"),
            ("Accept", "*/*"),
        ]);
        assert!(has_unforwarded(&h));
        drop_unforwarded(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        // The protocol's own tokens stay for the hop-by-hop stage and the upgrade.
        assert_eq!(left, ["accept", "connection", "upgrade"]);
        assert!(is_upgrade_request(&h));
        let plain = map(&[("Connection", "close"), ("Accept", "*/*")]);
        assert!(!has_unforwarded(&plain));
    }

    #[test]
    fn upgrades_keep_their_protocol() {
        let mut h = map(&[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Key", "k"),
        ]);
        assert!(is_upgrade_request(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["sec-websocket-key"], "k");
        assert!(!is_upgrade_request(&map(&[("Upgrade", "websocket")])));
    }

    #[test]
    fn http2_settings_is_always_hop_by_hop() {
        let mut h = map(&[
            ("HTTP2-Settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
            ("Connection", "keep-alive"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("http2-settings").is_none());
    }

    #[test]
    fn the_upgrade_protocol_is_one_token_or_none() {
        let one = map(&[("Connection", "Upgrade"), ("Upgrade", "websocket")]);
        assert_eq!(upgrade_protocol(&one).unwrap(), "websocket");
        for pairs in [
            &[("Connection", "Upgrade"), ("Upgrade", "h2c, websocket")][..],
            &[
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
                ("Upgrade", "h2c"),
            ],
            &[("Upgrade", "websocket")],
            &[("Connection", "Upgrade"), ("Upgrade", "")],
        ] {
            assert!(upgrade_protocol(&map(pairs)).is_none(), "{pairs:?}");
        }
    }

    #[test]
    fn method_overrides_must_agree_and_name_a_method() {
        assert_eq!(method_override(&map(&[])), Ok(None));
        assert_eq!(
            method_override(&map(&[
                ("X-HTTP-Method-Override", "delete"),
                ("X-Method-Override", "DELETE")
            ])),
            Ok(Some(Method::DELETE))
        );
        for pairs in [
            &[
                ("X-HTTP-Method-Override", "DELETE"),
                ("X-HTTP-Method", "PUT"),
            ][..],
            &[
                ("X-HTTP-Method-Override", "DELETE"),
                ("X-HTTP-Method-Override", "PATCH"),
            ],
            &[("X-HTTP-Method", "DEL ETE")],
            &[("X-HTTP-Method", "")],
            &[("X-HTTP-Method", "GET2")],
        ] {
            assert_eq!(
                method_override(&map(pairs)),
                Err(OverrideError::Ambiguous),
                "{pairs:?}"
            );
        }
        let mut h = map(&[
            ("X-HTTP-Method", "PUT"),
            ("x-http-method-override", "PUT"),
            ("Keep", "1"),
        ]);
        strip_method_override(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn cookie_crumbs_are_joined_and_a_single_cookie_is_left_alone() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2")]);
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().collect::<Vec<_>>(), ["a=1; b=2"]);
        let mut h = map(&[("cookie", "a=1; b=2")]);
        join_cookies(&mut h);
        assert_eq!(h["cookie"], "a=1; b=2");
    }

    #[test]
    fn session_cookies_are_stripped_and_others_kept() {
        let mut h = map(&[("cookie", "a=1; session=xyz; remember_token=u|h; b=2")]);
        strip_cookies(&mut h, FLEXMEASURES_SESSION_COOKIES);
        assert_eq!(h["cookie"], "a=1; b=2");
        let mut h = map(&[("cookie", "session=xyz")]);
        strip_cookies(&mut h, FLEXMEASURES_SESSION_COOKIES);
        assert!(h.get("cookie").is_none());
        let mut h = map(&[("cookie", "sessionx=1; xsession=2")]);
        strip_cookies(&mut h, FLEXMEASURES_SESSION_COOKIES);
        assert_eq!(h["cookie"], "sessionx=1; xsession=2");
    }

    #[test]
    fn bearer_tokens_go_upstream_raw() {
        let mut h = map(&[("authorization", "Bearer abc.def.ghi")]);
        raw_authorization(&mut h);
        assert_eq!(h["authorization"], "abc.def.ghi");
        let mut h = map(&[("authorization", "abc.def.ghi")]);
        raw_authorization(&mut h);
        assert_eq!(h["authorization"], "abc.def.ghi");
    }
}
