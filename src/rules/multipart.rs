//! `multipart/form-data` bodies, read for what an upstream's pages could take for
//! markup in their parts' headers (`plain_text_multipart`): FlexMeasures writes an
//! uploaded file's name into the asset's audit log, whose page inserts it as HTML.
//!
//! The reading follows Werkzeug's (`werkzeug.sansio.multipart`) and errs towards seeing
//! more, never less: every `--boundary` followed by optional blanks and a line break
//! (`\r\n`, `\n` or `\r`) starts a part's headers for flexgate, also where Werkzeug
//! would not take it for a delimiter (no line break before it), and those headers run
//! to the first blank line as Werkzeug finds it. The boundary must come from a
//! `Content-Type` both read alike: exactly one `boundary` parameter, its value of
//! RFC 2046's characters, every parameter well formed; anything else is refused.
//! Pure functions over a received body; the proxy decides when to buffer it.

use super::extract::TextClass;

/// Why a body is refused on a route that reads multipart bodies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    /// A body that is not `multipart/form-data` (422: the route takes files).
    #[error("send this body as multipart/form-data")]
    NotMultipart,
    /// The `Content-Type`'s parameters could be read two ways (400).
    #[error("the Content-Type's boundary {0}")]
    Boundary(&'static str),
    /// A part's headers are not text of the class (422); `part` counts from 1.
    #[error("part {part}'s headers are not plain text")]
    NotText {
        /// Which part.
        part: usize,
    },
}

/// Check every part's headers of a body sent with `content_type` (`None`: no header)
/// against `class`. An empty body passes whatever its type: it holds no part.
pub fn check(
    content_type: Option<&[u8]>,
    body: &[u8],
    class: TextClass,
) -> Result<(), MultipartError> {
    if body.is_empty() {
        return Ok(());
    }
    let boundary = boundary(content_type.ok_or(MultipartError::NotMultipart)?)?;
    check_parts(body, boundary, class)
}

/// The boundary of a `multipart/form-data` Content-Type, read strictly (see the module
/// doc).
pub fn boundary(content_type: &[u8]) -> Result<&[u8], MultipartError> {
    // Werkzeug: the media type is what comes before the first `;`, trimmed of spaces
    // and tabs, in any case.
    let (media, mut rest) = match content_type.iter().position(|&b| b == b';') {
        Some(i) => (&content_type[..i], &content_type[i + 1..]),
        None => (content_type, &[][..]),
    };
    if !trim_blanks(media).eq_ignore_ascii_case(b"multipart/form-data") {
        return Err(MultipartError::NotMultipart);
    }
    let malformed = MultipartError::Boundary("is in a malformed parameter list");
    let mut found = None;
    loop {
        rest = trim_blanks_start(rest);
        if rest.is_empty() {
            break;
        }
        let name_len = rest.iter().take_while(|&&b| is_tchar(b)).count();
        if name_len == 0 || rest.get(name_len) != Some(&b'=') {
            return Err(malformed);
        }
        let name = &rest[..name_len];
        rest = &rest[name_len + 1..];
        let value = if rest.first() == Some(&b'"') {
            // A quoted string without escapes: Werkzeug also undoes `\"` and `%22`,
            // which no boundary holds.
            let close = rest[1..]
                .iter()
                .position(|&b| b == b'"')
                .ok_or(malformed.clone())?;
            let value = &rest[1..1 + close];
            if value.iter().any(|&b| b == b'\\' || b < 0x20 || b == 0x7f) {
                return Err(malformed);
            }
            rest = &rest[close + 2..];
            value
        } else {
            let len = rest.iter().take_while(|&&b| is_tchar(b)).count();
            if len == 0 {
                return Err(malformed);
            }
            let value = &rest[..len];
            rest = &rest[len..];
            value
        };
        rest = trim_blanks_start(rest);
        match rest.first() {
            None => {}
            Some(b';') => rest = &rest[1..],
            Some(_) => return Err(malformed),
        }
        let lower = name.to_ascii_lowercase();
        if lower == b"boundary" {
            if found.replace(value).is_some() {
                return Err(MultipartError::Boundary("is given more than once"));
            }
        } else if lower.starts_with(b"boundary") {
            // `boundary*`, `boundary*0`: RFC 2231 forms Werkzeug reads as the boundary.
            return Err(MultipartError::Boundary("is given in an extended form"));
        }
    }
    let boundary = found.ok_or(MultipartError::Boundary("is missing"))?;
    if boundary.is_empty()
        || boundary.len() > 70
        || boundary.last() == Some(&b' ')
        || !boundary.iter().all(|&b| is_bchar(b))
    {
        return Err(MultipartError::Boundary(
            "must be 1 to 70 of RFC 2046's characters",
        ));
    }
    Ok(boundary)
}

/// Check the headers of every part `boundary` delimits in `body`. Linear in the
/// body's length, whatever it holds: delimiters are looked for at every byte (one may
/// overlap the last), a blank line is looked for once per stretch of the body, and a
/// delimiter inside the last part's headers is refused.
pub fn check_parts(body: &[u8], boundary: &[u8], class: TextClass) -> Result<(), MultipartError> {
    let mut delimiter = Vec::with_capacity(boundary.len() + 2);
    delimiter.extend_from_slice(b"--");
    delimiter.extend_from_slice(boundary);
    let mut part = 0;
    let mut from = 0;
    // Where the last headers checked end; the first blank line at or after `scanned`.
    let mut checked_end = None;
    let mut blank = BlankLines::default();
    while let Some(at) = find(&body[from..], &delimiter) {
        let after = from + at + delimiter.len();
        from += at + 1;
        // `--boundary--` closes the body (Werkzeug reads no part after it; flexgate
        // goes on looking).
        if body[after..].starts_with(b"--") {
            continue;
        }
        let blanks = body[after..]
            .iter()
            .take_while(|&&b| matches!(b, b' ' | b'\t' | 0x0b | 0x0c))
            .count();
        let line_start = after + blanks;
        let Some(break_len) = line_break(&body[line_start..]) else {
            // Not a delimiter to Werkzeug either: part of a part's data.
            continue;
        };
        let start = line_start + break_len;
        let end = blank.first_from(body, start);
        if checked_end == Some(end) {
            // A delimiter inside the headers just checked. No client writes one there,
            // but a parser that missed the earlier delimiter (Werkzeug can, at the edge
            // of its 64 KiB reads) starts a part's headers here, and reads their first
            // line apart from the line before it: refuse rather than guess.
            return Err(MultipartError::Boundary("appears inside a part's headers"));
        }
        checked_end = Some(end);
        part += 1;
        if !headers_are_text(&body[start..end], class) {
            return Err(MultipartError::NotText { part });
        }
    }
    Ok(())
}

/// The first blank line (`\r\n\r\n`, `\r\r` or `\n\n`, leftmost first, as Werkzeug
/// finds it) at or after a position that only grows, each byte looked at once.
#[derive(Default)]
struct BlankLines {
    /// The last answer and the position it was asked for.
    last: Option<(usize, usize)>,
}

impl BlankLines {
    /// Where the headers starting at `start` end: the next blank line, or the body's end.
    fn first_from(&mut self, body: &[u8], start: usize) -> usize {
        if let Some((asked, found)) = self.last
            && asked <= start
            && start <= found
        {
            return found;
        }
        let found = blank_line(&body[start..]).map_or(body.len(), |i| start + i);
        self.last = Some((start, found));
        found
    }
}

/// Whether a part's header block is UTF-8 (Werkzeug decodes it so), every line of it,
/// as sent and with its percent escapes decoded, is text of `class`, and so is every
/// parameter value Werkzeug's `parse_options_header` makes of each header (backslash
/// escapes undone, RFC 2231 continuations joined, ISO-8859-1 escapes decoded as such).
fn headers_are_text(block: &[u8], class: TextClass) -> bool {
    let Ok(text) = std::str::from_utf8(block) else {
        return false;
    };
    let lines_are_text = text.split(['\r', '\n']).all(|line| {
        class.allows(line)
            && (!line.contains('%')
                || class.allows(&percent_encoding::percent_decode_str(line).decode_utf8_lossy()))
    });
    lines_are_text
        && join_continued_lines(text).split(['\r', '\n']).all(|line| {
            let value = line.split_once(':').map_or("", |(_, value)| value);
            parameter_values(value.trim_matches([' ', '\t']))
                .iter()
                .all(|v| class.allows(v))
        })
}

/// A header block with each line break followed by a blank turned into one space, as
/// Werkzeug joins continued headers before reading them.
fn join_continued_lines(text: &str) -> std::borrow::Cow<'_, str> {
    let bytes = text.as_bytes();
    let blank_at = |i: usize| matches!(bytes.get(i), Some(b' ' | b'\t'));
    if !(0..bytes.len()).any(|i| matches!(bytes[i], b'\r' | b'\n') && blank_at(i + 1)) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let joined = if bytes[i..].starts_with(b"\r\n") && blank_at(i + 2) {
            3
        } else if matches!(bytes[i], b'\r' | b'\n') && blank_at(i + 1) {
            2
        } else {
            0
        };
        if joined > 0 {
            out.push(' ');
            i += joined;
        } else {
            // Only ASCII is ever replaced, so the rest is copied as it stands.
            let next = (i + 1..=bytes.len())
                .find(|&j| text.is_char_boundary(j))
                .unwrap_or(bytes.len());
            out.push_str(&text[i..next]);
            i = next;
        }
    }
    out.into()
}

/// The parameter values of one header value (`form-data; name="f"; filename*=...`) as
/// Werkzeug 3's `parse_options_header` computes them: token or quoted values, quoted
/// ones with backslash escapes undone and `%22` read as `"`, `key*=charset'lang'value`
/// percent-decoded in its charset (ASCII and UTF-8 lossily, ISO-8859-1 byte for byte;
/// others left as they are), and `key*0`, `key*1`, ... joined in the order sent.
fn parameter_values(value: &str) -> Vec<String> {
    let Some((_, rest)) = value.split_once(';') else {
        return Vec::new();
    };
    let rest = rest.trim_matches([' ', '\t']).as_bytes();
    // The raw (key, value) parts, found as Werkzeug scans for them.
    let mut parts: Vec<(String, &[u8])> = Vec::new();
    let mut at = 0;
    while at < rest.len() {
        let key_len = rest[at..].iter().take_while(|&&b| is_tchar(b)).count();
        if key_len > 0 && rest.get(at + key_len) == Some(&b'=') {
            let key = String::from_utf8_lossy(&rest[at..at + key_len]).to_ascii_lowercase();
            at += key_len + 1;
            let token_len = rest[at..].iter().take_while(|&&b| is_tchar(b)).count();
            if token_len > 0 {
                parts.push((key, &rest[at..at + token_len]));
                at += token_len;
            } else if rest.get(at) == Some(&b'"') {
                let mut end = at + 1;
                loop {
                    match rest.get(end..) {
                        Some([b'\\', b'\\' | b'"', ..]) => end += 2,
                        Some([b'"', ..]) => break,
                        Some([_, ..]) => end += 1,
                        // No closing quote: Werkzeug reads no further parameter.
                        _ => return options(parts),
                    }
                }
                parts.push((key, &rest[at..=end]));
                at = end + 1;
            }
        }
        match rest[at.min(rest.len())..].iter().position(|&b| b == b';') {
            Some(i) => {
                at += i + 1;
                at += rest[at..]
                    .iter()
                    .take_while(|&&b| matches!(b, b' ' | b'\t'))
                    .count();
            }
            None => break,
        }
    }
    options(parts)
}

/// The values Werkzeug makes of the raw parameter parts (see [`parameter_values`]),
/// and every part's own value besides, those Werkzeug drops for a later one included.
fn options(parts: Vec<(String, &[u8])>) -> Vec<String> {
    let mut every = Vec::with_capacity(parts.len());
    let mut continued: Vec<(String, Vec<String>, Option<String>)> = Vec::new();
    for (mut key, raw) in parts {
        // `key*N*`, `key*N` and `key*` markers at the key's end.
        let (continuation, charset) = {
            let b = key.as_bytes();
            let star = b.last() == Some(&b'*');
            let body = &b[..b.len() - usize::from(star)];
            let digits = body.iter().rev().take_while(|d| d.is_ascii_digit()).count();
            let numbered =
                digits > 0 && body.len() > digits && body[body.len() - digits - 1] == b'*';
            let cut = if numbered {
                body.len() - digits - 1
            } else {
                body.len()
            };
            key.truncate(cut);
            (numbered, star)
        };
        let raw = String::from_utf8_lossy(raw);
        let mut encoding = None;
        let value = if charset {
            let mut value = raw.to_string();
            if let Some((declared, encoded)) = split_charset(&raw) {
                encoding = Some(declared.to_ascii_lowercase()).filter(|e| !e.is_empty());
                value = encoded.to_owned();
            }
            if encoding.is_none() && continuation {
                encoding = continued
                    .iter()
                    .find(|(k, _, _)| *k == key)
                    .and_then(|(_, _, e)| e.clone());
            }
            match encoding.as_deref() {
                Some("iso-8859-1") => percent_decode_chars(&value, char::from),
                Some("ascii" | "us-ascii") => percent_decode_chars(&value, |b| {
                    if b.is_ascii() {
                        char::from(b)
                    } else {
                        char::REPLACEMENT_CHARACTER
                    }
                }),
                Some("utf-8") => percent_encoding::percent_decode_str(&value)
                    .decode_utf8_lossy()
                    .into_owned(),
                _ => value,
            }
        } else {
            unquote(&raw).replace("%22", "\"")
        };
        every.push(value.clone());
        if continuation {
            match continued.iter_mut().find(|(k, _, _)| *k == key) {
                Some((_, pieces, known)) => {
                    pieces.push(value);
                    if encoding.is_some() {
                        *known = encoding;
                    }
                }
                None => continued.push((key, vec![value], encoding)),
            }
        } else {
            // A plain `key=` ends the continuation of that key so far.
            continued.retain(|(k, _, _)| *k != key);
        }
    }
    every.extend(continued.into_iter().map(|(_, pieces, _)| pieces.concat()));
    every
}

/// `%XX` escapes decoded one byte to one character (Python's `unquote` in a single-byte
/// charset); every other character kept as it is.
fn percent_decode_chars(value: &str, byte: impl Fn(u8) -> char) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let hex = rest.as_bytes().get(i + 1..i + 3);
        match hex
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok())
        {
            Some(b) => {
                out.push(byte(b));
                rest = &rest[i + 3..];
            }
            None => {
                out.push('%');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// RFC 2231's `charset'language'value`, as Werkzeug matches it: the charset and
/// language of token characters but `'`, the value of one or more token characters.
fn split_charset(raw: &str) -> Option<(&str, &str)> {
    let (charset, rest) = raw.split_once('\'')?;
    let (language, value) = rest.split_once('\'')?;
    let token_but_quote = |s: &str| s.bytes().all(|b| b != b'\'' && is_tchar(b));
    (token_but_quote(charset)
        && token_but_quote(language)
        && !value.is_empty()
        && value.bytes().all(is_tchar))
    .then_some((charset, value))
}

/// A quoted value's content with every backslash escape undone (Werkzeug's
/// `unquote_header_value`); a token as it is.
fn unquote(raw: &str) -> String {
    let Some(inner) = raw
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .filter(|_| raw.len() >= 2)
    else {
        return raw.to_owned();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped) => out.push(escaped),
                None => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

/// The length of the line break `bytes` starts with, as Werkzeug's `\r\n|\n|\r`.
fn line_break(bytes: &[u8]) -> Option<usize> {
    match bytes {
        [b'\r', b'\n', ..] => Some(2),
        [b'\r' | b'\n', ..] => Some(1),
        _ => None,
    }
}

/// Where the first blank line (`\r\n\r\n`, `\r\r` or `\n\n`, leftmost first) starts.
fn blank_line(bytes: &[u8]) -> Option<usize> {
    (0..bytes.len()).find(|&i| {
        let rest = &bytes[i..];
        rest.starts_with(b"\r\n\r\n") || rest.starts_with(b"\r\r") || rest.starts_with(b"\n\n")
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn trim_blanks_start(bytes: &[u8]) -> &[u8] {
    let n = bytes
        .iter()
        .take_while(|&&b| matches!(b, b' ' | b'\t'))
        .count();
    &bytes[n..]
}

fn trim_blanks(bytes: &[u8]) -> &[u8] {
    let bytes = trim_blanks_start(bytes);
    let n = bytes
        .iter()
        .rev()
        .take_while(|&&b| matches!(b, b' ' | b'\t'))
        .count();
    &bytes[..bytes.len() - n]
}

/// RFC 9110's `tchar`, which is also Werkzeug's parameter key and token value.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 2046's `bchars`.
fn is_bchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: TextClass = TextClass::Plain;

    fn body(parts: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for headers in parts {
            out.extend_from_slice(b"--XyZ\r\n");
            out.extend_from_slice(headers.as_bytes());
            out.extend_from_slice(b"\r\n\r\ntime,value\r\n2026-01-01T00:00:00Z,1\r\n");
        }
        out.extend_from_slice(b"--XyZ--\r\n");
        out
    }

    fn file(name: &str) -> String {
        format!(
            "Content-Disposition: form-data; name=\"uploaded-files\"; filename=\"{name}\"\r\nContent-Type: text/csv"
        )
    }

    #[test]
    fn the_boundary_is_read_as_werkzeug_reads_it() {
        for (ct, want) in [
            (&b"multipart/form-data; boundary=XyZ"[..], &b"XyZ"[..]),
            (b"Multipart/Form-Data ;boundary=\"a b:c\"", b"a b:c"),
            (b"multipart/form-data; charset=utf-8; BOUNDARY=x.y", b"x.y"),
            (
                b"multipart/form-data; x=\"a;boundary=other\"; boundary=real",
                b"real",
            ),
        ] {
            assert_eq!(boundary(ct), Ok(want), "{}", String::from_utf8_lossy(ct));
        }
    }

    #[test]
    fn a_boundary_that_could_be_read_two_ways_is_refused() {
        for ct in [
            &b"multipart/form-data"[..],
            b"multipart/form-data; boundary=",
            b"multipart/form-data; boundary=\"\"",
            b"multipart/form-data; boundary=a; boundary=b",
            b"multipart/form-data; boundary*=utf-8''abc",
            b"multipart/form-data; boundary*0=a; boundary=b",
            // Werkzeug's token stops at `/`: it would read `abc`.
            b"multipart/form-data; boundary=abc/def",
            b"multipart/form-data; boundary = abc",
            b"multipart/form-data; boundary=\"ab\\\"c\"",
            b"multipart/form-data; boundary=\"ab%22c\"",
            b"multipart/form-data; boundary=\"abc",
            b"multipart/form-data; boundary=\"abc \"",
            b"multipart/form-data; junk; boundary=abc",
        ] {
            assert!(
                matches!(boundary(ct), Err(MultipartError::Boundary(_))),
                "{}",
                String::from_utf8_lossy(ct)
            );
        }
        let long = format!("multipart/form-data; boundary={}", "a".repeat(71));
        assert!(boundary(long.as_bytes()).is_err());
        let longest = format!("multipart/form-data; boundary={}", "a".repeat(70));
        assert!(boundary(longest.as_bytes()).is_ok());
    }

    #[test]
    fn other_media_types_are_not_multipart() {
        for ct in [
            &b"application/json"[..],
            b"multipart/mixed; boundary=a",
            b"application/x-www-form-urlencoded",
            b"",
        ] {
            assert_eq!(boundary(ct), Err(MultipartError::NotMultipart));
        }
        assert_eq!(check(None, b"x", PLAIN), Err(MultipartError::NotMultipart));
        assert_eq!(check(None, b"", PLAIN), Ok(()));
    }

    #[test]
    fn plain_file_names_pass() {
        let ct = Some(&b"multipart/form-data; boundary=XyZ"[..]);
        let ok = body(&[
            &file("meter readings (2026).csv"),
            &file("zählerstand_o'brien.xlsx"),
            "Content-Disposition: form-data; name=\"unit\"",
            // UTF-8 whose bytes, read as ISO-8859-1, would be C1 controls (`ß` is
            // C3 9F), a file name in pieces, an escaped quote, an ASCII `%85`.
            "Content-Disposition: form-data; name=\"f\"; filename*=UTF-8''stra%C3%9Fe.csv",
            "Content-Disposition: form-data; name=\"f\"; filename*0=\"meter \"; filename*1=readings.csv",
            "Content-Disposition: form-data; name=\"f\"; filename=\"o\\\"brien $ {x}.csv\"",
            "Content-Disposition: form-data; name=\"f\"; filename*=us-ascii''a%85.csv",
            // Joined in the order sent (Werkzeug's), not by number: `{x}.csv$`.
            "Content-Disposition: form-data; name=\"f\"; filename*1=\"{x}.csv\"; filename*0=\"$\"",
        ]);
        assert_eq!(check(ct, &ok, PLAIN), Ok(()));
    }

    #[test]
    fn markup_in_a_file_name_is_refused_however_it_is_written() {
        let ct = Some(&b"multipart/form-data; boundary=XyZ"[..]);
        for headers in [
            file("<img src=x onerror=alert(1)>.csv"),
            file("a`b.csv"),
            file("${x}.csv"),
            "Content-Disposition: form-data; name=\"f\"; filename*=UTF-8''%3Cimg%20src%3Dx%3E.csv"
                .into(),
            "Content-Disposition: form-data; name=\"f\"; filename*0*=UTF-8''%3Cb; filename*1=%3E.csv"
                .into(),
            // A continuation line, which Werkzeug joins to the header before it.
            "Content-Disposition: form-data; name=\"f\";\r\n filename=\"<b>.csv\"".into(),
            // Another header holding markup (Werkzeug keeps them all).
            "Content-Disposition: form-data; name=\"f\"; filename=\"a.csv\"\r\nContent-Type: text/<b>".into(),
            "Content-Disposition: form-data; name=\"f\"; filename=\"a\u{2028}.csv\"".into(),
            "Content-Disposition: form-data; name=\"f\"; filename=\"a\x07.csv\"".into(),
        ] {
            assert_eq!(
                check(ct, &body(&[&file("ok.csv"), &headers]), PLAIN),
                Err(MultipartError::NotText { part: 2 }),
                "{headers:?}"
            );
        }
        // Made only by Werkzeug's own reading of the parameters.
        for disposition in [
            // A backslash escape undone inside quotes.
            r#"filename="$\{x}.csv""#,
            // RFC 2231 continuations, joined in the order sent, quoted or encoded,
            // across a continued header line, with the charset given once.
            r#"filename*0="$"; filename*1="{x}.csv""#,
            "filename*0*=utf-8''%24; filename*1*=%7Bx%7D.csv",
            "filename*0=\"$\";\r\n filename*1=\"{x}.csv\"",
            "filename*0*=UTF-8''a%24; name=\"b\"; filename*1*=%7B.csv",
            // ISO-8859-1 escapes are bytes: `%85` is a C1 control, not a broken UTF-8.
            "filename*=iso-8859-1''a%85.csv",
            "filename*0*=ISO-8859-1''a; filename*1*=%9B31m.csv",
        ] {
            let headers = format!("Content-Disposition: form-data; name=\"f\"; {disposition}");
            assert_eq!(
                check(ct, &body(&[&headers]), PLAIN),
                Err(MultipartError::NotText { part: 1 }),
                "{disposition:?}"
            );
        }
        let mut latin1 = body(&[&file("ok.csv")]);
        latin1.extend_from_slice(
            b"--XyZ\r\nContent-Disposition: form-data; filename=\"\xe9.csv\"\r\n\r\n",
        );
        assert!(check(ct, &latin1, PLAIN).is_err());
    }

    #[test]
    fn every_line_break_werkzeug_takes_starts_a_part() {
        let bad = "Content-Disposition: form-data; name=\"f\"; filename=\"<b>.csv\"";
        for (before, after, blank) in [
            ("\n", "\n", "\n\n"),
            ("\r", "\r", "\r\r"),
            ("", " \t\r\n", "\r\n\r\n"),
            // A delimiter not at a line's start: Werkzeug takes it for data, flexgate
            // reads the headers all the same.
            ("data", "\r\n", "\r\n\r\n"),
        ] {
            let mut b = format!("--XyZ\r\n{}\r\n\r\nx", file("ok.csv")).into_bytes();
            b.extend_from_slice(
                format!("{before}--XyZ{after}{bad}{blank}data\r\n--XyZ--").as_bytes(),
            );
            assert_eq!(
                check_parts(&b, b"XyZ", PLAIN),
                Err(MultipartError::NotText { part: 2 }),
                "{before:?} {after:?} {blank:?}"
            );
        }
        // Headers with no blank line after them run to the end of the body.
        let b = format!("--XyZ\r\n{bad}");
        assert!(check_parts(b.as_bytes(), b"XyZ", PLAIN).is_err());
        // What follows the closing delimiter, or a delimiter with other text after it,
        // is data.
        let b = format!(
            "--XyZ\r\n{}\r\n\r\nx\r\n--XyZ--\r\n<b>\r\n--XyZx<b>\r\n",
            file("a.csv")
        );
        assert_eq!(check_parts(b.as_bytes(), b"XyZ", PLAIN), Ok(()));
    }

    #[test]
    fn a_delimiter_overlapping_the_last_one_is_found() {
        // `--a-` then `--a-\r\n` starting inside it: Werkzeug finds the second.
        let b = b"--a--a-\r\nContent-Disposition: form-data; filename=\"<b>.csv\"\r\n\r\n";
        assert_eq!(
            check_parts(b, b"a-", PLAIN),
            Err(MultipartError::NotText { part: 1 })
        );
    }

    #[test]
    fn a_delimiter_inside_a_parts_headers_is_refused() {
        // Werkzeug misses a first delimiter that straddles its 64 KiB reads (with
        // blanks after it) and takes the one in the quoted value for the start: its
        // part's first line, a continuation line to flexgate, names the file.
        let hidden = "--B \t\r\nX: y; k=\"--B\r\n Content-Disposition: form-data; filename=\"$\\{x}.csv\"; name=f\r\n\r\ndata\r\n--B--\r\n";
        // A delimiter in a part's data with no line break before it is data to
        // Werkzeug; the next one, inside the headers flexgate read from the first,
        // starts Werkzeug's part.
        let after_data = "--a:b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"r.csv\"\r\n\r\nzz--a:b\r\n--a:b\r\n X;k=\"x: v; filename=\"$\\{x}.csv\"\r\nContent-Disposition: form-data; name=\"f\"; filename=\"r.csv\"\r\n\r\ndata\r\n--a:b--\r\n";
        for (body, boundary) in [(hidden, &b"B"[..]), (after_data, b"a:b")] {
            assert_eq!(
                check_parts(body.as_bytes(), boundary, PLAIN),
                Err(MultipartError::Boundary("appears inside a part's headers")),
                "{body:?}"
            );
        }
    }

    #[test]
    fn single_byte_charsets_decode_escapes_only() {
        // ISO-8859-1 inherited by a quoted piece: its characters stay as they are
        // (Werkzeug: `a"Ā.csv"`), and ASCII escapes of high bytes are replacement
        // characters, not C1 controls.
        let ct = Some(&b"multipart/form-data; boundary=XyZ"[..]);
        let inherited = body(&[
            "Content-Disposition: form-data; name=\"f\"; filename*0*=iso-8859-1''a; filename*1*=\"\u{100}.csv\"",
        ]);
        assert_eq!(check(ct, &inherited, PLAIN), Ok(()));
        assert_eq!(
            percent_decode_chars("a%85%zz%4", char::from),
            "a\u{85}%zz%4"
        );
        assert_eq!(
            options(vec![("filename*".into(), &b"us-ascii''a%85"[..])]),
            vec!["a\u{fffd}".to_owned()]
        );
    }

    #[test]
    fn a_body_of_delimiters_alone_is_read_in_one_pass() {
        // Every delimiter starts headers that run to the body's end: the second one,
        // inside the first one's headers, is refused at once.
        let b = "--XyZ\r\n".repeat(1 << 17);
        assert_eq!(
            check_parts(b.as_bytes(), b"XyZ", PLAIN),
            Err(MultipartError::Boundary("appears inside a part's headers"))
        );
        let mut b = "--XyZ\n\n".repeat(1 << 17).into_bytes();
        b.extend_from_slice(b"--XyZ\r\nfilename=\"<b>\"");
        assert!(matches!(
            check_parts(&b, b"XyZ", PLAIN),
            Err(MultipartError::NotText { .. })
        ));
    }

    #[test]
    fn the_first_blank_line_ends_the_headers_as_werkzeug_finds_it() {
        // `\r\n\n`: Werkzeug's leftmost blank line is the `\n\n`; what follows is data.
        let b = format!("--XyZ\r\n{}\r\n\n<b>data</b>\r\n--XyZ--", file("a.csv"));
        assert_eq!(check_parts(b.as_bytes(), b"XyZ", PLAIN), Ok(()));
        assert_eq!(blank_line(b"a\r\n\nb"), Some(2));
        assert_eq!(blank_line(b"a\r\r\nb"), Some(1));
        assert_eq!(blank_line(b"a\r\nb"), None);
    }
}
