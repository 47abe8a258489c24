//! Path normalisation, done once per request: the result is the one string used both to
//! match a route and to forward upstream, so a rule can never be checked against one
//! path while the upstream serves another (Envoy CVE-2019-9901, Traefik CVE-2026-48020).
//!
//! Percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded; every
//! other escape stays encoded (hex upper-cased). Refused outright: encoded `/` and `\`,
//! NUL and control bytes (raw or encoded), raw `\`, bytes outside the URI grammar, bad
//! escapes, escapes that do not decode to UTF-8 (overlong forms included), and `.` / `..`
//! segments however spelled. `;` and empty segments (`//`) are refused unless the
//! configuration allows them. Pure.

use std::borrow::Cow;

use crate::rules::PathOptions;

/// Longest path accepted (the header limit bounds it too).
pub const MAX_PATH_LEN: usize = 8 * 1024;

/// Why a path was refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not an absolute path.
    NotAbsolute,
    /// Longer than [`MAX_PATH_LEN`].
    TooLong,
    /// `%2F` or `%5C`: a separator hidden from the matcher.
    EncodedSeparator,
    /// NUL or another control character, raw or encoded.
    ControlCharacter,
    /// A raw byte the URI grammar does not allow in a path (space, `\`, non-ASCII, ...).
    InvalidCharacter,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// Escapes that decode to invalid (or overlong) UTF-8.
    InvalidUtf8,
    /// A `.` or `..` segment, however encoded.
    DotSegment,
    /// `//` (unless allowed).
    EmptySegment,
    /// `;` (unless allowed).
    Semicolon,
}

impl PathError {
    /// A stable label for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            PathError::NotAbsolute => "not_absolute",
            PathError::TooLong => "too_long",
            PathError::EncodedSeparator => "encoded_separator",
            PathError::ControlCharacter => "control_character",
            PathError::InvalidCharacter => "invalid_character",
            PathError::BadEscape => "bad_escape",
            PathError::InvalidUtf8 => "invalid_utf8",
            PathError::DotSegment => "dot_segment",
            PathError::EmptySegment => "empty_segment",
            PathError::Semicolon => "semicolon",
        }
    }
}

const fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// pchar minus `%` and `;` (handled separately), plus `/`.
const fn is_plain_path_byte(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
                | b'/'
        )
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Bytes that can never need normalising: plain path bytes except `.` (`%` and `;` are
/// not plain).
const ALREADY_NORMAL: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = b as u8 != b'.' && is_plain_path_byte(b as u8);
        b += 1;
    }
    table
};

/// The common case, decided in one pass: a path of such bytes without `//` has nothing
/// to decode, no dot segment and no empty segment but perhaps a trailing one, so
/// [`normalize_in_full`] would return it unchanged.
fn is_already_normal(bytes: &[u8]) -> bool {
    let mut after_slash = false;
    for &b in bytes {
        let slash = b == b'/';
        if !ALREADY_NORMAL[usize::from(b)] || (slash && after_slash) {
            return false;
        }
        after_slash = slash;
    }
    true
}

/// Normalise a request path; borrowed when nothing needed changing (the common case).
pub fn normalize<'a>(raw: &'a str, options: &PathOptions) -> Result<Cow<'a, str>, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if bytes.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if is_already_normal(bytes) {
        return Ok(Cow::Borrowed(raw));
    }
    normalize_in_full(raw, options)
}

/// Every rule of the module doc, byte by byte (`raw` is absolute and not too long).
fn normalize_in_full<'a>(raw: &'a str, options: &PathOptions) -> Result<Cow<'a, str>, PathError> {
    let bytes = raw.as_bytes();
    let mut out: Option<String> = None;
    // Fully decoded bytes of the current run of escapes, to validate UTF-8.
    let mut decoded_run: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEscape);
            };
            let value = hi << 4 | lo;
            match value {
                b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
                _ => {}
            }
            let buf = out.get_or_insert_with(|| raw[..i].to_owned());
            if value < 0x80 {
                check_utf8(&mut decoded_run)?;
                if is_unreserved(value) {
                    buf.push(char::from(value));
                } else {
                    push_escape(buf, value);
                }
            } else {
                decoded_run.push(value);
                push_escape(buf, value);
            }
            i += 3;
            continue;
        }
        check_utf8(&mut decoded_run)?;
        match b {
            0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            b';' if !options.allow_semicolons => return Err(PathError::Semicolon),
            b';' => {}
            _ if is_plain_path_byte(b) => {}
            _ => return Err(PathError::InvalidCharacter),
        }
        if let Some(buf) = out.as_mut() {
            buf.push(char::from(b));
        }
        i += 1;
    }
    check_utf8(&mut decoded_run)?;
    let path = match out {
        Some(s) => Cow::Owned(s),
        None => Cow::Borrowed(raw),
    };
    check_segments(&path, options)?;
    Ok(path)
}

fn push_escape(buf: &mut String, value: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    buf.push('%');
    buf.push(char::from(HEX[usize::from(value >> 4)]));
    buf.push(char::from(HEX[usize::from(value & 0xf)]));
}

fn check_utf8(run: &mut Vec<u8>) -> Result<(), PathError> {
    if run.is_empty() {
        return Ok(());
    }
    let valid = std::str::from_utf8(run).is_ok();
    run.clear();
    if valid {
        Ok(())
    } else {
        Err(PathError::InvalidUtf8)
    }
}

fn check_segments(path: &str, options: &PathOptions) -> Result<(), PathError> {
    // Skip the leading '/'; a trailing '/' leaves an empty last segment, which is allowed.
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        // With ';' allowed, "..;x" is still a dot segment to servers that strip parameters.
        let name = segment.split(';').next().unwrap_or(segment);
        if name == "." || name == ".." {
            return Err(PathError::DotSegment);
        }
        let last = segments.peek().is_none();
        if segment.is_empty() && !last && !options.allow_empty_segments {
            return Err(PathError::EmptySegment);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> Result<String, PathError> {
        normalize(raw, &PathOptions::default()).map(Cow::into_owned)
    }

    #[test]
    fn accepted_paths() {
        let cases = [
            ("/", "/"),
            ("/api/v3_0/assets/1", "/api/v3_0/assets/1"),
            ("/api/v3_0/assets/", "/api/v3_0/assets/"),
            ("/api/%76%33_0/assets/%31", "/api/v3_0/assets/1"),
            ("/a/%7e%2D%2e%5F", "/a/~-._"),
            ("/a/%20b", "/a/%20b"),
            ("/a/%2a", "/a/%2A"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a/b.c/d..e/...", "/a/b.c/d..e/..."),
            ("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,="),
        ];
        for (raw, expected) in cases {
            assert_eq!(norm(raw).as_deref(), Ok(expected), "{raw}");
        }
    }

    #[test]
    fn the_fast_path_agrees_with_the_full_rules_on_every_short_path() {
        // Every path up to 6 bytes over an alphabet with each kind of trouble.
        const ALPHABET: &[u8] = b"/a.%2F;_\\ ";
        let options = [
            PathOptions::default(),
            PathOptions {
                allow_semicolons: true,
                allow_empty_segments: true,
                case_insensitive: false,
            },
        ];
        let mut fast = 0;
        let mut paths = vec![b"/".to_vec()];
        for _ in 0..5 {
            let mut longer = Vec::new();
            for path in &paths {
                for &b in ALPHABET {
                    let mut p = path.clone();
                    p.push(b);
                    longer.push(p);
                }
            }
            for path in &longer {
                let raw = std::str::from_utf8(path).unwrap();
                if !is_already_normal(path) {
                    continue;
                }
                fast += 1;
                for o in &options {
                    assert!(
                        matches!(normalize_in_full(raw, o), Ok(Cow::Borrowed(p)) if p == raw),
                        "{raw:?}"
                    );
                }
            }
            paths = longer;
        }
        assert!(fast > 100, "only {fast} paths took the fast path");
    }

    #[test]
    fn unchanged_paths_are_borrowed() {
        assert!(matches!(
            normalize("/api/v3_0/assets/1", &PathOptions::default()),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn refused_paths() {
        use PathError::*;
        let cases = [
            ("api/x", NotAbsolute),
            ("", NotAbsolute),
            ("/a%2Fb", EncodedSeparator),
            ("/a%2fb", EncodedSeparator),
            ("/a%5Cb", EncodedSeparator),
            ("/a%5cb", EncodedSeparator),
            ("/a\\b", InvalidCharacter),
            ("/a%00", ControlCharacter),
            ("/a%0A", ControlCharacter),
            ("/a%7F", ControlCharacter),
            ("/a\u{0}b", ControlCharacter),
            ("/a b", InvalidCharacter),
            ("/a\"b", InvalidCharacter),
            ("/a<b", InvalidCharacter),
            ("/é", InvalidCharacter),
            ("/a%", BadEscape),
            ("/a%2", BadEscape),
            ("/a%zz", BadEscape),
            ("/a%C0%AE", InvalidUtf8),
            ("/a%C0%AF", InvalidUtf8),
            ("/a%E0%80%AE", InvalidUtf8),
            ("/a%C3", InvalidUtf8),
            ("/a%C3/b", InvalidUtf8),
            ("/a%FF", InvalidUtf8),
            ("/assets/1/../2", DotSegment),
            ("/assets/1/./2", DotSegment),
            ("/assets/%2e%2e/2", DotSegment),
            ("/assets/%2E%2E", DotSegment),
            ("/assets/.%2e/x", DotSegment),
            ("/assets/%2e/x", DotSegment),
            ("/..", DotSegment),
            ("/.", DotSegment),
            ("//api", EmptySegment),
            ("/api//assets", EmptySegment),
            ("/api/assets;jsessionid=1", Semicolon),
            ("/api/..;/assets", Semicolon),
        ];
        for (raw, expected) in cases {
            assert_eq!(norm(raw), Err(expected), "{raw:?}");
        }
        let too_long = format!("/{}", "a".repeat(MAX_PATH_LEN));
        assert_eq!(norm(&too_long), Err(TooLong));
    }

    #[test]
    fn switches_allow_semicolons_and_empty_segments_but_never_dot_segments() {
        let lenient = PathOptions {
            allow_semicolons: true,
            allow_empty_segments: true,
            case_insensitive: false,
        };
        assert_eq!(normalize("/a;b=c/d", &lenient).as_deref(), Ok("/a;b=c/d"));
        assert_eq!(normalize("/a//b", &lenient).as_deref(), Ok("/a//b"));
        assert_eq!(normalize("/a/..;x/b", &lenient), Err(PathError::DotSegment));
        assert_eq!(
            normalize("/a/%2e%2e;x/b", &lenient),
            Err(PathError::DotSegment)
        );
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        for raw in ["/api/%76%33_0/x", "/a/%2a%c3%a9", "/x/%41%42c", "/a/"] {
            let once = norm(raw).unwrap();
            assert_eq!(norm(&once).unwrap(), once, "{raw}");
        }
    }
}
