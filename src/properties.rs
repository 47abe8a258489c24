//! Properties that must hold for any input, checked by the fuzz targets in `fuzz/` and by
//! the seed-corpus test in `tests/`, so a regression is caught by `cargo test` without a
//! fuzzer. Each function takes arbitrary bytes and panics when a property is violated.
//! Pure: no IO, no clock.

use std::sync::OnceLock;

use serde_json::Value as Json;

use crate::auth::token::{self, TokenKey};
use crate::proxy::normalize::normalize;
use crate::rules::compile::compile_text;
use crate::rules::extract::{self, IdParse, IdType, JsonPointer, ResourceId};
use crate::rules::{PathOptions, RuleSet};
use crate::settings::Secret;

/// The clock the token properties use (2027-01-15).
pub const NOW: u64 = 1_800_000_000;
/// The lifetime the token properties use.
pub const MAX_AGE: u64 = 21_600;

/// The key seed tokens are signed with.
pub fn token_key() -> TokenKey {
    TokenKey::derive(&Secret::new(
        b"flexgate-fuzz-secret-0123456789abcdef".to_vec(),
    ))
}

/// Token decoding: a token that decodes was signed by the key (it is exactly what the
/// encoder makes of its claims), and a token made from any claims decodes to them.
pub fn token_decoder(data: &[u8]) {
    let key = token_key();
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(claims) = token::decode(&key, text, NOW, MAX_AGE)
    {
        let again = token::encode(
            &key,
            claims.user_id,
            &claims.password_binding,
            &claims.uniquifier,
            claims.issued_at,
        );
        assert_eq!(
            again, text,
            "a token decoded that the key did not sign in this form"
        );
    }
    // Round trip of claims drawn from the input.
    let (head, rest) = data.split_at(data.len().min(8));
    let user_id = head.iter().fold(0i64, |acc, b| {
        acc.wrapping_mul(31).wrapping_add(i64::from(*b))
    });
    let text = String::from_utf8_lossy(rest);
    let middle = (0..=text.len() / 2)
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    let (binding, uniquifier) = text.split_at(middle);
    let issued = NOW - u64::from(head.first().copied().unwrap_or(0)) * 60;
    let token = token::encode(&key, user_id, binding, uniquifier, issued);
    if token.len() > token::MAX_TOKEN_LEN {
        // Beyond the size the decoder looks at (real tokens are about 200 bytes).
        assert_eq!(
            token::decode(&key, &token, NOW, MAX_AGE),
            Err(token::TokenError::Malformed)
        );
        return;
    }
    let claims =
        token::decode(&key, &token, NOW, MAX_AGE).expect("a freshly signed token verifies");
    assert_eq!(
        (
            claims.user_id,
            claims.password_binding.as_str(),
            claims.uniquifier.as_str()
        ),
        (user_id, binding, uniquifier)
    );
    assert_eq!(claims.issued_at, issued);
}

fn demo_rules() -> &'static RuleSet {
    static RULES: OnceLock<std::sync::Arc<RuleSet>> = OnceLock::new();
    RULES.get_or_init(|| {
        compile_text(
            include_str!("../config/demo.toml"),
            std::path::Path::new("demo.toml"),
        )
        .expect("the demo rules compile")
        .rules
    })
}

/// Path normalisation and matching: a normalised path has no dot segments, no encoded
/// separator, NUL or control character, normalising it again changes nothing, and it
/// matches the same route as its normal form.
pub fn path_and_matcher(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let lenient = PathOptions {
        allow_semicolons: true,
        allow_empty_segments: true,
        case_insensitive: true,
    };
    for options in [PathOptions::default(), lenient] {
        let Ok(path) = normalize(raw, &options) else {
            continue;
        };
        assert!(path.starts_with('/'), "{path:?}");
        let upper = path.to_ascii_uppercase();
        for forbidden in ["%2F", "%5C", "%00"] {
            assert!(!upper.contains(forbidden), "{path:?} keeps {forbidden}");
        }
        assert!(
            !path
                .chars()
                .any(|c| c.is_control() || c == '\\' || c == ' '),
            "{path:?}"
        );
        for segment in path[1..].split('/') {
            let name = segment.split(';').next().unwrap_or(segment);
            assert!(name != "." && name != "..", "{path:?} has a dot segment");
        }
        if !options.allow_empty_segments {
            assert!(!path[1..].trim_end_matches('/').contains("//"), "{path:?}");
        }
        let again = normalize(&path, &options).expect("a normal path normalises");
        assert_eq!(again, path, "normalising twice changed {raw:?}");
        let rules = demo_rules();
        for method in [http::Method::GET, http::Method::POST, http::Method::DELETE] {
            assert_eq!(
                rules.matcher.find(&method, &path),
                rules.matcher.find(&method, &again)
            );
        }
    }
}

/// The rule compiler: never panics, reports errors with lines inside the file, and
/// compiles the same text to the same rules twice.
pub fn rules_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("fuzz.toml");
    match compile_text(text, path) {
        Ok(first) => {
            let second = compile_text(text, path).expect("the same text compiles twice");
            assert_eq!(first.rules.routes.len(), second.rules.routes.len());
            assert_eq!(first.rules.kinds.len(), second.rules.kinds.len());
            assert_eq!(
                first.rules.matcher.order().collect::<Vec<_>>(),
                second.rules.matcher.order().collect::<Vec<_>>()
            );
        }
        Err(diagnostics) => {
            assert!(!diagnostics.errors.is_empty());
            let lines = text.lines().count() + 1;
            for d in &diagnostics.errors {
                assert!(!d.message.is_empty());
                assert!(
                    d.line.is_none_or(|l| l >= 1 && l <= lines),
                    "line {:?} of {lines}",
                    d.line
                );
            }
            assert!(diagnostics.to_string().contains("fuzz.toml"));
        }
    }
}

/// JSON-body ids: the strict parser agrees with serde_json except that it refuses
/// duplicate keys, and every id read from a body is exactly a JSON integer or a string
/// of digits found there.
pub fn json_ids(data: &[u8]) {
    let strict = extract::parse_json_strict(data);
    let lenient: Result<Json, _> = serde_json::from_slice(data);
    match (&strict, &lenient) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "the strict parser read a different document"),
        (Ok(_), Err(e)) => panic!("strict parser accepted what serde_json refuses: {e}"),
        (Err(e), Ok(_)) => assert!(
            e.contains("duplicate key") || e.contains("recursion"),
            "refused a valid document: {e}"
        ),
        (Err(_), Err(_)) => {}
    }
    let Ok(body) = strict else { return };
    for pointer in [
        "/account_id",
        "/*/id",
        "/**/sensor",
        "/items/*/asset",
        "/flex-model/**/sensor",
    ] {
        let pointer = JsonPointer::parse(pointer).expect("valid pointer");
        let reached = pointer.select(&body);
        for id in extract::json_ids(&body, &pointer, IdType::Integer) {
            if let IdParse::Id(ResourceId::Int(n)) = id {
                let found = reached.iter().any(|v| holds_id(v, n));
                assert!(found, "id {n} was read but is not in the body");
            }
        }
    }
}

fn holds_id(value: &Json, id: i64) -> bool {
    match value {
        Json::Number(n) => n.as_i64() == Some(id),
        Json::String(s) => {
            s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<i64>().ok() == Some(id)
        }
        Json::Array(items) => items.iter().any(|v| holds_id(v, id)),
        _ => false,
    }
}

/// The `Authorization` header parser: what it returns is a non-empty run of token
/// characters taken verbatim from the header.
pub fn authorization_header(data: &[u8]) {
    if let Some(token) = token::token_from_authorization(data) {
        assert!(!token.is_empty());
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')),
            "{token:?}"
        );
        let header = std::str::from_utf8(data).expect("a token came from text");
        assert!(header.contains(token));
    }
}

/// The upstream response codec: a head parses to the same answer however its bytes
/// arrive (every shorter prefix is "need more" or the same refusal), what is kept of it
/// holds no hop-by-hop header (a 101 aside), and a body decodes to the same bytes and the
/// same end whatever the read sizes. The first byte picks the request method and the
/// read size; the rest is what the upstream sent.
pub fn upstream_response(data: &[u8]) {
    use crate::proxy::h1::{self, Decoded, Decoder};
    use bytes::BytesMut;

    let Some((&control, wire)) = data.split_first() else {
        return;
    };
    let method = if control & 1 == 0 {
        http::Method::GET
    } else {
        http::Method::HEAD
    };
    let step = usize::from(control >> 1).max(1);
    let whole = h1::parse_response_head(wire, &method);
    let cut = match &whole {
        Ok(Some((_, len))) => *len,
        _ => wire.len(),
    };
    for end in (0..cut).step_by(step) {
        match (h1::parse_response_head(&wire[..end], &method), &whole) {
            (Ok(None), _) => {}
            (Err(e), Err(w)) if e == *w => {}
            (other, _) => panic!("prefix of {end} bytes: {other:?}, whole: {whole:?}"),
        }
    }
    let Ok(Some((head, len))) = whole else {
        return;
    };
    assert!(len <= wire.len() && len <= h1::MAX_HEAD_BYTES);
    if head.status != http::StatusCode::SWITCHING_PROTOCOLS {
        for name in [
            "connection",
            "keep-alive",
            "transfer-encoding",
            "upgrade",
            "te",
            "trailer",
        ] {
            assert!(!head.headers.contains_key(name), "{name} kept");
        }
    }

    /// Bytes decoded, then how decoding ended: `Ok(leftover)` after the end of the
    /// body, or the error (end of input included).
    fn decode(
        framing: h1::BodyFraming,
        body: &[u8],
        step: usize,
    ) -> (Vec<u8>, Result<usize, h1::ProtocolError>) {
        let mut decoder = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf) {
                Ok(Decoded::Data(d)) => out.extend_from_slice(&d),
                Ok(Decoded::Done) => return (out, Ok(buf.len() + body.len() - fed)),
                Ok(Decoded::NeedMore) if fed < body.len() => {
                    let next = (fed + step).min(body.len());
                    buf.extend_from_slice(&body[fed..next]);
                    fed = next;
                }
                Ok(Decoded::NeedMore) => {
                    return match decoder.at_eof() {
                        Ok(()) => (out, Ok(0)),
                        Err(e) => (out, Err(e)),
                    };
                }
                Err(e) => return (out, Err(e)),
            }
        }
    }
    let body = &wire[len..];
    let at_once = decode(head.framing, body, body.len().max(1));
    let piecewise = decode(head.framing, body, step);
    assert_eq!(at_once, piecewise, "read size {step} changed the body");
}

/// The `Host` parser: what it accepts is exactly `host[:port]` with the host made of
/// the allowed characters and the port the digits written; an allow-list built from
/// the host (exact or as a wildcard's parent) decides as the rules say.
pub fn host_authority(data: &[u8]) {
    use crate::proxy::host::split_authority;
    use crate::rules::AllowedHosts;

    let Some((host, port)) = split_authority(data) else {
        return;
    };
    let text = std::str::from_utf8(data).expect("accepted input is UTF-8");
    let rest = text
        .strip_prefix(host)
        .expect("the host is the input's start");
    match port {
        None => assert!(rest.is_empty(), "{text:?}: unparsed rest {rest:?}"),
        Some(p) => {
            let digits = rest.strip_prefix(':').expect("a port follows a colon");
            assert!(
                !digits.is_empty()
                    && digits.len() <= 5
                    && digits.bytes().all(|b| b.is_ascii_digit())
            );
            assert_eq!(digits.parse::<u16>().ok(), Some(p));
        }
    }
    assert!(!host.is_empty());
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').expect("a bracketed host closes");
        assert!(
            inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        );
    } else {
        assert!(
            host.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        );
        let exact = AllowedHosts::new([host]);
        assert!(exact.allows(host) && exact.allows(&host.to_ascii_uppercase()));
        let wildcard = format!("*.{host}");
        let parent = AllowedHosts::new([wildcard.as_str()]);
        assert!(
            !parent.allows(host),
            "a wildcard never matches its own parent"
        );
        assert!(parent.allows(&format!("a.{host}")));
    }
}

/// The HTTP/2 frame tracker: fed in any slicing (the first byte picks the slice size)
/// it reports the same events and ends in the same state as when fed at once, and a
/// block is open exactly when a HEADERS (or PUSH_PROMISE) began and no END_HEADERS
/// frame has been read whole since.
pub fn h2_frames(data: &[u8]) {
    use crate::proxy::conn::{FrameEvents, FrameTracker};

    let Some((&control, wire)) = data.split_first() else {
        return;
    };
    let step = usize::from(control).max(1);
    let mut whole = FrameTracker::new();
    let mut at_once = FrameEvents::default();
    whole.feed(wire, &mut at_once);
    let mut sliced = FrameTracker::new();
    let mut piecewise = FrameEvents::default();
    for chunk in wire.chunks(step) {
        sliced.feed(chunk, &mut piecewise);
    }
    assert_eq!(at_once, piecewise, "slice size {step} changed the events");
    assert_eq!(whole, sliced, "slice size {step} changed the state");
    assert!(at_once.blocks_finished <= at_once.blocks_started);
    assert!(at_once.streams_opened <= at_once.blocks_started);
    assert_eq!(
        whole.block_open(),
        at_once.blocks_started > at_once.blocks_finished,
        "open state disagrees with the counts"
    );
}

/// Upload part headers (`plain_text_multipart`): the check answers any body the same
/// twice; an accepted boundary is 1 to 70 of RFC 2046's characters taken from the
/// header; and a part whose header block is the input (its blank lines taken out) is
/// accepted only if every line of it, as sent and percent-decoded, holds no markup:
/// no `<`, `>`, backtick or `${`. The first line is the Content-Type for the first
/// property, the rest the body.
pub fn multipart_headers(data: &[u8]) {
    use crate::rules::extract::TextClass;
    use crate::rules::multipart::{boundary, check};

    let (content_type, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let first = check(Some(content_type), body, TextClass::Plain);
    assert_eq!(first, check(Some(content_type), body, TextClass::Plain));
    if let Ok(b) = boundary(content_type) {
        assert!((1..=70).contains(&b.len()), "{b:?}");
        assert!(
            content_type.windows(b.len()).any(|w| w == b),
            "the boundary comes from the header"
        );
    }
    // One part, its headers the input with every blank line taken out.
    let mut block = Vec::with_capacity(data.len());
    for &b in data {
        let breaks = |b: u8| b == b'\r' || b == b'\n';
        if breaks(b) && block.last().is_some_and(|&l| breaks(l)) {
            continue;
        }
        block.push(b);
    }
    let mut part = b"--B\r\n".to_vec();
    part.extend_from_slice(&block);
    part.extend_from_slice(b"\r\n\r\ndata\r\n--B--\r\n");
    if check(
        Some(b"multipart/form-data; boundary=B"),
        &part,
        TextClass::Plain,
    )
    .is_ok()
    {
        let text = std::str::from_utf8(&block).expect("accepted headers are UTF-8");
        for line in text.split(['\r', '\n']) {
            let decoded = percent_encoding::percent_decode_str(line).decode_utf8_lossy();
            for seen in [line, &decoded] {
                assert!(
                    !seen.contains(['<', '>', '`']) && !seen.contains("${"),
                    "accepted markup in {line:?}"
                );
            }
        }
    }
}
