//! The HTTP/1.1 wire format flexgate speaks to its upstream, without IO: request heads
//! written straight from the rewritten request, response heads parsed with `httparse`,
//! and response bodies de-framed as RFC 9112 section 6.3 says. [`super::pool`] does the
//! reading and writing.
//!
//! Being pure keeps the parts an upstream could attack (head size, header count,
//! conflicting lengths, malformed chunks) unit-tested on bytes alone. Everything
//! ambiguous is an error (the request answers 502) or at least closes the connection
//! after use, never a guess that could desynchronise a reused connection.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version, header};

/// Longest response head accepted (status line and headers).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most response headers accepted.
pub const MAX_HEADERS: usize = 128;
/// Longest chunk-size line (with extensions) or trailer section accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// Why an upstream's answer cannot be used. Each maps to 502.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The status line or a header did not parse.
    #[error("malformed response head")]
    MalformedHead,
    /// The head is longer than [`MAX_HEAD_BYTES`] or has more than [`MAX_HEADERS`].
    #[error("response head too large")]
    HeadTooLarge,
    /// Content-Length is not a number, or several disagree.
    #[error("invalid Content-Length")]
    BadContentLength,
    /// A chunk size, chunk ending or trailer section is malformed.
    #[error("malformed chunked body")]
    BadChunk,
    /// The connection ended before the body did.
    #[error("the upstream closed the connection in the middle of the body")]
    Truncated,
}

/// How a request body is framed on the wire: derived from the body flexgate actually
/// sends, never from the client's headers (they were removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body and no length header (GET, HEAD, DELETE, ... without a body).
    None,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked` (a streamed body of unknown length).
    Chunked,
}

impl RequestFraming {
    /// Framing for a body of `known` length (`None`: streamed, length unknown).
    pub fn for_body(method: &Method, known: Option<u64>) -> RequestFraming {
        match known {
            // Methods whose requests usually carry a body get an explicit zero, as
            // clients send them; others get no length header at all.
            Some(0) if !expects_body(method) => RequestFraming::None,
            Some(n) => RequestFraming::Length(n),
            None => RequestFraming::Chunked,
        }
    }
}

fn expects_body(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

/// Whether the upstream connection ends with this request: a body on a method that
/// usually has none (GET, HEAD, DELETE, OPTIONS, ...). An upstream that ignores such a
/// body would read it as the next request on the connection (a "CL.0" desync): one
/// nobody checked, whose answer would go to whoever came next. So it is sent with
/// `Connection: close`, and the connection is never reused.
pub fn closes_after(method: &Method, framing: RequestFraming) -> bool {
    framing != RequestFraming::None && !expects_body(method)
}

/// Write `METHOD origin-form HTTP/1.1`, the client's headers (already stripped of
/// hop-by-hop, identity, `Host` and length headers), the header lines flexgate adds
/// (`added`, complete with CRLFs) and the framing header into `out`.
pub fn encode_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    added: &[u8],
    framing: RequestFraming,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        uri.path_and_query()
            .map_or("/", |pq| pq.as_str())
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        // Framing is ours alone (see `RequestFraming`), whatever a caller left in.
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(added);
    if closes_after(method, framing) {
        out.extend_from_slice(b"connection: close\r\n");
    }
    match framing {
        RequestFraming::None => {}
        RequestFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// The frame header of one chunk of a chunked request body: `<hex size>\r\n`.
pub fn chunk_header(len: usize, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut start = digits.len();
    let mut n = len;
    loop {
        start -= 1;
        digits[start] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
    out.extend_from_slice(b"\r\n");
}

/// A parsed response head and how its body is framed.
#[derive(Debug)]
pub struct ResponseHead {
    /// The status.
    pub status: StatusCode,
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub version: Version,
    /// The headers as sent (hop-by-hop ones are removed later, by the caller).
    pub headers: HeaderMap,
    /// How the body is delimited.
    pub framing: BodyFraming,
    /// Whether the connection may carry another request after this response.
    pub reusable: bool,
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// Parse a response head from the start of `buf`: `Ok(None)` when more bytes are
/// needed, otherwise the head and its length in bytes. `method` is the request's (a
/// response to HEAD has no body whatever its headers say).
pub fn parse_response_head(
    buf: &[u8],
    method: &Method,
) -> Result<Option<(ResponseHead, usize)>, ProtocolError> {
    // Uninitialised slots: filling 128 empty headers (4 KiB) before every parse cost
    // about 400 instructions per proxied request (callgrind).
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let parsing = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    );
    let len = match parsing {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return Err(ProtocolError::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ProtocolError::HeadTooLarge),
        Err(_) => return Err(ProtocolError::MalformedHead),
    };
    if len > MAX_HEAD_BYTES {
        return Err(ProtocolError::HeadTooLarge);
    }
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(ProtocolError::MalformedHead)?;
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Err(ProtocolError::MalformedHead),
    };
    let facts = HeadFacts::read(parsed.headers)?;
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        // Hop-by-hop headers, and those the upstream named in Connection, end here;
        // a protocol switch keeps them for the tunnel's own handling.
        if !switching && (is_hop_by_hop(h.name) || facts.named_in_connection(h.name)) {
            continue;
        }
        // With Transfer-Encoding, Content-Length is not the body's length (RFC 9112
        // 6.3): the client would cut the de-chunked body at it.
        if !switching
            && facts.transfer_encoding.is_some()
            && h.name.eq_ignore_ascii_case("content-length")
        {
            continue;
        }
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| ProtocolError::MalformedHead)?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| ProtocolError::MalformedHead)?;
        headers.append(name, value);
    }
    let (framing, reusable) = facts.framing(status, version, method);
    Ok(Some((
        ResponseHead {
            status,
            version,
            headers,
            framing,
            reusable: reusable && version == Version::HTTP_11 && !facts.close,
        },
        len,
    )))
}

/// Hop-by-hop by definition (RFC 9110 7.6.1, plus the legacy ones).
fn is_hop_by_hop(name: &str) -> bool {
    const NAMES: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// What the framing and connection headers of a response say, read from the raw
/// headers in one pass.
#[derive(Debug, Default)]
struct HeadFacts<'h> {
    /// Some Transfer-Encoding was present; whether its last coding is chunked.
    transfer_encoding: Option<bool>,
    content_length: Option<u64>,
    /// `Connection: close`.
    close: bool,
    /// Other headers named in Connection (hop-by-hop for this message).
    named: Vec<&'h str>,
}

impl<'h> HeadFacts<'h> {
    fn read(headers: &[httparse::Header<'h>]) -> Result<HeadFacts<'h>, ProtocolError> {
        let mut facts = HeadFacts::default();
        for h in headers {
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let last = tokens(h.value).last();
                let chunked = match last {
                    Some(coding) => coding.eq_ignore_ascii_case("chunked"),
                    None => facts.transfer_encoding.unwrap_or(false),
                };
                facts.transfer_encoding = Some(chunked);
            } else if h.name.eq_ignore_ascii_case("content-length") {
                let text =
                    std::str::from_utf8(h.value).map_err(|_| ProtocolError::BadContentLength)?;
                for part in text.split(',') {
                    let n = parse_decimal(part.trim()).ok_or(ProtocolError::BadContentLength)?;
                    if facts.content_length.is_some_and(|l| l != n) {
                        return Err(ProtocolError::BadContentLength);
                    }
                    facts.content_length = Some(n);
                }
            } else if h.name.eq_ignore_ascii_case("connection") {
                for token in tokens(h.value) {
                    if token.eq_ignore_ascii_case("close") {
                        facts.close = true;
                    } else if !token.eq_ignore_ascii_case("keep-alive")
                        && !token.eq_ignore_ascii_case("upgrade")
                    {
                        facts.named.push(token);
                    }
                }
            }
        }
        Ok(facts)
    }

    fn named_in_connection(&self, name: &str) -> bool {
        self.named.iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    /// RFC 9112 6.3, in its order; also whether the framing leaves the connection
    /// reusable.
    fn framing(
        &self,
        status: StatusCode,
        version: Version,
        method: &Method,
    ) -> (BodyFraming, bool) {
        if *method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            // A 204 that announces a body (which HEAD and 304 answers may, for the
            // representation they describe) may send it after all: a pooled connection
            // would read it as the next request's response.
            let announces_body = status == StatusCode::NO_CONTENT
                && (self.transfer_encoding.is_some() || self.content_length.is_some_and(|n| n > 0));
            return (BodyFraming::Empty, !announces_body);
        }
        if let Some(chunked) = self.transfer_encoding {
            // Transfer-Encoding wins over Content-Length, but a message carrying both
            // (or a 1.0 message carrying it) may be an attempt to desynchronise: the
            // connection is never reused.
            let clean = version == Version::HTTP_11 && self.content_length.is_none();
            return if chunked {
                (BodyFraming::Chunked, clean)
            } else {
                (BodyFraming::UntilClose, false)
            };
        }
        match self.content_length {
            Some(n) => (BodyFraming::Length(n), true),
            None => (BodyFraming::UntilClose, false),
        }
    }
}

/// The non-empty comma-separated tokens of a header value (none if it is not text).
fn tokens(value: &[u8]) -> impl Iterator<Item = &str> {
    std::str::from_utf8(value)
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// One step of body decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// Nothing decodable yet: read more (or, at end of input, call [`Decoder::at_eof`]).
    NeedMore,
    /// The body is complete.
    Done,
}

/// Incremental decoder of one response body, fed from the connection's read buffer.
#[derive(Debug)]
pub struct Decoder {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    UntilClose,
    Done,
}

impl Decoder {
    /// A decoder for a body framed as `framing`.
    pub fn new(framing: BodyFraming) -> Decoder {
        let state = match framing {
            BodyFraming::Empty | BodyFraming::Length(0) => State::Done,
            BodyFraming::Length(n) => State::Length(n),
            BodyFraming::Chunked => State::ChunkSize,
            BodyFraming::UntilClose => State::UntilClose,
        };
        Decoder { state }
    }

    /// Whether the whole body has been decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Body bytes still expected, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Take the next piece of body from the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ProtocolError> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::Done),
                State::Length(_) | State::ChunkData(_) if buf.is_empty() => {
                    return Ok(Decoded::NeedMore);
                }
                // A counted run of bytes: the whole body, or one chunk.
                State::Length(n) | State::ChunkData(n) => {
                    let take = n.min(buf.len() as u64);
                    let rest = n - take;
                    let chunked = matches!(self.state, State::ChunkData(_));
                    self.state = match (chunked, rest) {
                        (false, 0) => State::Done,
                        (false, _) => State::Length(rest),
                        (true, 0) => State::ChunkEnd,
                        (true, _) => State::ChunkData(rest),
                    };
                    return Ok(Decoded::Data(buf.split_to(take as usize).freeze()));
                }
                State::UntilClose if buf.is_empty() => return Ok(Decoded::NeedMore),
                State::UntilClose => return Ok(Decoded::Data(buf.split().freeze())),
                State::ChunkSize => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = parse_chunk_size(&line)?;
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ProtocolError::BadChunk);
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    // Trailer fields are dropped (as for requests): read up to the
                    // empty line that ends them.
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    if line.is_empty() {
                        self.state = State::Done;
                    } else if !line.contains(&b':') {
                        return Err(ProtocolError::BadChunk);
                    }
                }
            }
        }
    }

    /// The connection ended: fine only for a body delimited by the close.
    pub fn at_eof(&mut self) -> Result<(), ProtocolError> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(ProtocolError::Truncated),
        }
    }
}

/// A CRLF-terminated line from the front of `buf`, without its CRLF; `None` until the
/// whole line is there. A bare LF or an over-long line is an error.
fn take_line(buf: &mut BytesMut) -> Result<Option<Bytes>, ProtocolError> {
    match buf.iter().position(|b| *b == b'\n') {
        Some(end) if end > MAX_CHUNK_LINE => Err(ProtocolError::BadChunk),
        Some(0) => Err(ProtocolError::BadChunk),
        Some(end) if buf[end - 1] != b'\r' => Err(ProtocolError::BadChunk),
        Some(end) => {
            let line = buf.split_to(end + 1).freeze();
            Ok(Some(line.slice(..end - 1)))
        }
        None if buf.len() > MAX_CHUNK_LINE => Err(ProtocolError::BadChunk),
        None => Ok(None),
    }
}

/// `1*HEXDIG [ BWS ";" extensions ]`; extensions are ignored.
fn parse_chunk_size(line: &[u8]) -> Result<u64, ProtocolError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(ProtocolError::BadChunk);
    }
    let rest = &line[digits..];
    let rest_ok = rest.is_empty() || {
        let after_ws = rest.iter().position(|b| *b != b' ' && *b != b'\t');
        matches!(after_ws.map(|i| rest[i]), Some(b';'))
    };
    if !rest_ok {
        return Err(ProtocolError::BadChunk);
    }
    let text = std::str::from_utf8(&line[..digits]).map_err(|_| ProtocolError::BadChunk)?;
    u64::from_str_radix(text, 16).map_err(|_| ProtocolError::BadChunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<(ResponseHead, usize)>, ProtocolError> {
        parse_response_head(text.as_bytes(), &Method::GET)
    }

    fn framing(text: &str) -> (BodyFraming, bool) {
        let (h, _) = head(text).unwrap().unwrap();
        (h.framing, h.reusable)
    }

    fn decode_all(framing: BodyFraming, wire: &[u8]) -> Result<(Vec<u8>, bool), ProtocolError> {
        // Feed one byte at a time: every state must cope with partial input.
        let mut decoder = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for byte in wire {
            buf.extend_from_slice(&[*byte]);
            while let Decoded::Data(d) = decoder.decode(&mut buf)? {
                out.extend_from_slice(&d);
            }
        }
        Ok((out, decoder.is_done() && buf.is_empty()))
    }

    #[test]
    fn a_content_length_beside_transfer_encoding_is_not_passed_on() {
        let (h, _) = head(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 2\r\nx-a: 1\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(!h.headers.contains_key(header::CONTENT_LENGTH));
        assert!(h.headers.contains_key("x-a"));
        assert!(matches!(h.framing, BodyFraming::Chunked) && !h.reusable);
        let (h, _) = head("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.headers[header::CONTENT_LENGTH], "2");
    }

    #[test]
    fn request_heads_carry_our_framing_only() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("up:80"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("gzip"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let uri: Uri = "/api/v3_0/assets/1?x=1".parse().unwrap();
        let mut out = Vec::new();
        encode_request_head(
            &mut out,
            &Method::POST,
            &uri,
            &headers,
            b"x-added: 1\r\n",
            RequestFraming::Length(12),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /api/v3_0/assets/1?x=1 HTTP/1.1\r\nhost: up:80\r\nx-a: 1\r\nx-a: 2\r\nx-added: 1\r\ncontent-length: 12\r\n\r\n"
        );
        let mut out = Vec::new();
        encode_request_head(
            &mut out,
            &Method::PUT,
            &uri,
            &HeaderMap::new(),
            b"",
            RequestFraming::Chunked,
        );
        assert!(out.ends_with(b"transfer-encoding: chunked\r\n\r\n"));
    }

    #[test]
    fn a_body_on_a_method_without_one_ends_the_connection() {
        let uri: Uri = "/x".parse().unwrap();
        for (method, framing, closes) in [
            (Method::GET, RequestFraming::Length(3), true),
            (Method::DELETE, RequestFraming::Chunked, true),
            (Method::OPTIONS, RequestFraming::Length(1), true),
            (Method::GET, RequestFraming::None, false),
            (Method::POST, RequestFraming::Length(3), false),
            (Method::PUT, RequestFraming::Chunked, false),
        ] {
            assert_eq!(
                closes_after(&method, framing),
                closes,
                "{method} {framing:?}"
            );
            let mut out = Vec::new();
            encode_request_head(&mut out, &method, &uri, &HeaderMap::new(), b"", framing);
            let text = String::from_utf8(out).unwrap();
            assert_eq!(text.contains("connection: close\r\n"), closes, "{text}");
        }
    }

    #[test]
    fn empty_bodies_get_a_length_only_where_one_is_expected() {
        assert_eq!(
            RequestFraming::for_body(&Method::GET, Some(0)),
            RequestFraming::None
        );
        assert_eq!(
            RequestFraming::for_body(&Method::POST, Some(0)),
            RequestFraming::Length(0)
        );
        assert_eq!(
            RequestFraming::for_body(&Method::GET, Some(3)),
            RequestFraming::Length(3)
        );
        assert_eq!(
            RequestFraming::for_body(&Method::PATCH, None),
            RequestFraming::Chunked
        );
        for n in [1usize, 15, 16, 255, 65536] {
            let mut out = Vec::new();
            chunk_header(n, &mut out);
            assert_eq!(out, format!("{n:x}\r\n").into_bytes());
        }
    }

    #[test]
    fn heads_parse_incrementally() {
        let full = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nok";
        for cut in 0..full.len() - 2 {
            assert!(head(&full[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        let (h, len) = head(full).unwrap().unwrap();
        assert_eq!(len, full.len() - 2);
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.headers["x-a"], "b");
        assert_eq!(h.framing, BodyFraming::Length(2));
        assert!(h.reusable);
    }

    #[test]
    fn framing_follows_rfc_9112() {
        use BodyFraming::*;
        assert_eq!(framing("HTTP/1.1 204 No Content\r\n\r\n"), (Empty, true));
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"),
            (Empty, true)
        );
        // A 204 announcing a body is not trusted with another request.
        for announced in ["Content-Length: 5", "Transfer-Encoding: chunked"] {
            assert_eq!(
                framing(&format!("HTTP/1.1 204 No Content\r\n{announced}\r\n\r\n")),
                (Empty, false),
                "{announced}"
            );
        }
        assert_eq!(
            framing("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"),
            (Empty, true)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            (Chunked, true)
        );
        // Both length headers: chunked wins, and the connection is not trusted again.
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            (Chunked, false)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
            (UntilClose, false)
        );
        assert_eq!(framing("HTTP/1.1 200 OK\r\n\r\n"), (UntilClose, false));
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\nContent-Length: 4\r\n\r\n"),
            (Length(4), true)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\n"),
            (Length(4), false)
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\n"),
            (Length(4), false)
        );
        let (h, _) = parse_response_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
            &Method::HEAD,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Empty);
    }

    #[test]
    fn hop_by_hop_headers_stop_here_unless_the_protocol_switches() {
        let text = "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Internal\r\nKeep-Alive: timeout=5\r\nX-Internal: secret\r\nTrailer: x\r\nProxy-Authenticate: Basic\r\nUpgrade: h2c\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nPROXY-AUTHORIZATION: x\r\nX-Kept: yes\r\nTe-X: kept\r\n\r\n";
        let (h, _) = head(text).unwrap().unwrap();
        let names: Vec<&str> = h.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept", "te-x"]);
        assert_eq!(h.framing, BodyFraming::Chunked);
        let text =
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        let (h, _) = head(text).unwrap().unwrap();
        assert_eq!(h.headers["upgrade"], "websocket");
        assert_eq!(h.headers["connection"], "Upgrade");
    }

    #[test]
    fn hostile_heads_are_refused() {
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 4, 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
        ] {
            assert_eq!(
                head(bad).unwrap_err(),
                ProtocolError::BadContentLength,
                "{bad:?}"
            );
        }
        for bad in [
            "HTTP/2 200 OK\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
            "garbage\r\n\r\n",
        ] {
            assert_eq!(
                head(bad).unwrap_err(),
                ProtocolError::MalformedHead,
                "{bad:?}"
            );
        }
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(head(&many).unwrap_err(), ProtocolError::HeadTooLarge);
        let most = format!("HTTP/1.1 200 OK\r\n{}\r\n", "X: y\r\n".repeat(MAX_HEADERS));
        let (kept, _) = head(&most)
            .unwrap()
            .expect("exactly MAX_HEADERS is accepted");
        assert_eq!(kept.headers.get_all("x").iter().count(), MAX_HEADERS);
        let long = format!("HTTP/1.1 200 OK\r\nX: {}", "y".repeat(MAX_HEAD_BYTES));
        assert_eq!(head(&long).unwrap_err(), ProtocolError::HeadTooLarge);
    }

    #[test]
    fn chunked_bodies_decode_from_any_split() {
        let wire = b"5\r\nhello\r\n1;ext=1\r\n \r\n0\r\nX-Trailer: t\r\n\r\n";
        let (body, clean) = decode_all(BodyFraming::Chunked, wire).unwrap();
        assert_eq!(body, b"hello ");
        assert!(clean);
        let (body, clean) =
            decode_all(BodyFraming::Chunked, b"A \t;x\r\n0123456789\r\n0\r\n\r\n").unwrap();
        assert_eq!(body, b"0123456789");
        assert!(clean);
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"-5\r\n",
            b"5 x\r\nhello\r\n",
            b"1111111111111111\r\n",
            b"0\r\nno colon\r\n\r\n",
            // A bare LF inside a trailer section, which would end it for a lenient peer.
            b"0\r\nX: a\n\r\n",
        ] {
            assert_eq!(
                decode_all(BodyFraming::Chunked, bad).unwrap_err(),
                ProtocolError::BadChunk,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let endless = vec![b'1'; MAX_CHUNK_LINE + 2];
        assert!(decode_all(BodyFraming::Chunked, &endless).is_err());
    }

    #[test]
    fn lengths_stop_exactly_and_leave_the_rest() {
        let (body, clean) = decode_all(BodyFraming::Length(3), b"abc").unwrap();
        assert_eq!((body.as_slice(), clean), (&b"abc"[..], true));
        let mut decoder = Decoder::new(BodyFraming::Length(3));
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        assert_eq!(
            decoder.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from_static(b"abc"))
        );
        assert!(decoder.is_done());
        assert_eq!(&buf[..], b"def");
        assert_eq!(decoder.decode(&mut buf).unwrap(), Decoded::Done);
    }

    #[test]
    fn an_early_close_is_an_error_except_for_close_delimited_bodies() {
        let mut d = Decoder::new(BodyFraming::Length(3));
        assert_eq!(d.at_eof(), Err(ProtocolError::Truncated));
        let mut d = Decoder::new(BodyFraming::Chunked);
        assert_eq!(d.at_eof(), Err(ProtocolError::Truncated));
        let mut d = Decoder::new(BodyFraming::UntilClose);
        let mut buf = BytesMut::from(&b"tail"[..]);
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from_static(b"tail"))
        );
        assert_eq!(d.at_eof(), Ok(()));
        assert!(d.is_done());
    }
}
