//! A raw HTTP/2 client for hostile tests: frames are built by hand and header blocks are
//! HPACK literals written byte by byte (no Huffman, no indexing), so a test can send
//! what no well-behaved client library would (uppercase names, CR/LF in values, pseudo
//! headers out of order, floods). Answers are decoded with `fluke-hpack`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One frame as read.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// What the server did with one stream.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// `:status` of the final response, if one came.
    pub status: Option<u16>,
    /// Response headers (lower-case names).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// RST_STREAM error code, if the stream was reset.
    pub reset: Option<u32>,
    /// GOAWAY error code, if the connection was closed that way.
    pub goaway: Option<u32>,
    /// The connection ended (EOF or error) before the stream did.
    pub closed: bool,
}

impl Outcome {
    /// The request was refused by the HTTP/2 layer (stream reset or connection closed)
    /// or answered with a 4xx status: in every case it was not served.
    pub fn refused(&self) -> bool {
        self.reset.is_some()
            || self.goaway.is_some()
            || self.closed
            || self.status.is_some_and(|s| (400..500).contains(&s))
    }
}

/// An HTTP/2 connection to flexgate's TLS listener, ALPN `h2`.
pub struct RawH2 {
    tls: TlsStream<TcpStream>,
    read: Vec<u8>,
    decoder: fluke_hpack::Decoder<'static>,
    next_stream: u32,
}

/// A frame: 9-byte header and payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn integer(out: &mut Vec<u8>, first: u8, prefix_bits: u8, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

/// An HPACK header block of literal fields without indexing (names and values sent
/// exactly as given, any bytes at all).
pub fn block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        integer(&mut out, 0, 7, name.len());
        out.extend_from_slice(name);
        integer(&mut out, 0, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

/// A field that is also added to the server's dynamic table (literal with incremental
/// indexing, new name), for HPACK table tests.
pub fn indexed_literal(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x40];
    integer(&mut out, 0, 7, name.len());
    out.extend_from_slice(name);
    integer(&mut out, 0, 7, value.len());
    out.extend_from_slice(value);
    out
}

/// A reference to dynamic-table entry `index` (62 is the newest entry).
pub fn indexed(index: usize) -> Vec<u8> {
    let mut out = Vec::new();
    integer(&mut out, 0x80, 7, index);
    out
}

/// The pseudo-headers of a plain request, then `extra` fields.
pub fn request_fields<'a>(
    method: &'a str,
    path: &'a str,
    extra: &[(&'a [u8], &'a [u8])],
) -> Vec<(&'a [u8], &'a [u8])> {
    let mut fields: Vec<(&[u8], &[u8])> = vec![
        (b":method", method.as_bytes()),
        (b":scheme", b"https"),
        (b":authority", b"localhost"),
        (b":path", path.as_bytes()),
    ];
    fields.extend_from_slice(extra);
    fields
}

impl RawH2 {
    /// Connect with ALPN `h2`, send the preface and an empty SETTINGS frame.
    pub async fn connect(addr: SocketAddr, client: &Arc<rustls::ClientConfig>) -> RawH2 {
        let mut h2 = RawH2::connect_silent(addr, client, &[b"h2"]).await;
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        h2.write(&hello).await;
        h2
    }

    /// Connect and finish the TLS handshake with these ALPN protocols, sending nothing.
    pub async fn connect_silent(
        addr: SocketAddr,
        client: &Arc<rustls::ClientConfig>,
        alpn: &[&[u8]],
    ) -> RawH2 {
        RawH2 {
            tls: tls_connect(addr, client, alpn).await,
            read: Vec::new(),
            decoder: fluke_hpack::Decoder::new(),
            next_stream: 1,
        }
    }

    /// Write raw bytes (ignoring errors: the server may already have closed).
    pub async fn write(&mut self, bytes: &[u8]) {
        let _ = self.tls.write_all(bytes).await;
        let _ = self.tls.flush().await;
    }

    /// A fresh client stream id.
    pub fn stream(&mut self) -> u32 {
        let id = self.next_stream;
        self.next_stream += 2;
        id
    }

    /// Send a complete request (HEADERS with END_HEADERS, END_STREAM unless a body
    /// follows) on a new stream; returns the stream id.
    pub async fn send(&mut self, fields: &[(&[u8], &[u8])], body: Option<&[u8]>) -> u32 {
        let id = self.stream();
        let flags = END_HEADERS | if body.is_none() { END_STREAM } else { 0 };
        let mut bytes = frame(HEADERS, flags, id, &block(fields));
        if let Some(body) = body {
            bytes.extend(frame(DATA, END_STREAM, id, body));
        }
        self.write(&bytes).await;
        id
    }

    /// The next frame within `within`; `None` at end of stream, error or timeout.
    /// SETTINGS and PING are acknowledged as they come (a live client).
    pub async fn next_frame(&mut self, within: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.read.len() >= 9 {
                let len =
                    u32::from_be_bytes([0, self.read[0], self.read[1], self.read[2]]) as usize;
                if self.read.len() >= 9 + len {
                    let f = Frame {
                        kind: self.read[3],
                        flags: self.read[4],
                        stream: u32::from_be_bytes([
                            self.read[5],
                            self.read[6],
                            self.read[7],
                            self.read[8],
                        ]) & 0x7fff_ffff,
                        payload: self.read[9..9 + len].to_vec(),
                    };
                    self.read.drain(..9 + len);
                    match (f.kind, f.flags & ACK) {
                        (SETTINGS, 0) => self.write(&frame(SETTINGS, ACK, 0, &[])).await,
                        (PING, 0) => self.write(&frame(PING, ACK, 0, &f.payload)).await,
                        _ => {}
                    }
                    return Some(f);
                }
            }
            let mut chunk = [0u8; 16384];
            match tokio::time::timeout_at(deadline, self.tls.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.read.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Read until `stream` ends (response with END_STREAM, reset) or the connection
    /// does; other streams' header blocks are decoded too, to keep HPACK in step.
    pub async fn outcome(&mut self, stream: u32, within: Duration) -> Outcome {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Outcome::default();
        let mut block_buf: Vec<u8> = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(f) = self.next_frame(left).await else {
                out.closed = true;
                return out;
            };
            match f.kind {
                HEADERS | CONTINUATION => {
                    let mut payload = &f.payload[..];
                    if f.kind == HEADERS {
                        payload = strip_headers_padding(&f);
                    }
                    block_buf.extend_from_slice(payload);
                    if f.flags & END_HEADERS != 0 {
                        let fields = self.decoder.decode(&block_buf).unwrap_or_default();
                        block_buf.clear();
                        if f.stream == stream {
                            for (n, v) in fields {
                                let (n, v) = (
                                    String::from_utf8_lossy(&n).into_owned(),
                                    String::from_utf8_lossy(&v).into_owned(),
                                );
                                if n == ":status" {
                                    let status: u16 = v.parse().unwrap_or(0);
                                    if status >= 200 {
                                        out.status = Some(status);
                                    }
                                } else {
                                    out.headers.push((n, v));
                                }
                            }
                        }
                    }
                    if f.stream == stream && f.flags & END_STREAM != 0 {
                        return out;
                    }
                }
                DATA if f.stream == stream => {
                    out.body.extend_from_slice(&f.payload);
                    if !f.payload.is_empty() {
                        // Keep the windows open for large answers.
                        let n = (f.payload.len() as u32).to_be_bytes();
                        let mut updates = frame(WINDOW_UPDATE, 0, 0, &n);
                        updates.extend(frame(WINDOW_UPDATE, 0, stream, &n));
                        self.write(&updates).await;
                    }
                    if f.flags & END_STREAM != 0 {
                        return out;
                    }
                }
                RST_STREAM if f.stream == stream => {
                    out.reset = Some(code(&f.payload, 0));
                    return out;
                }
                GOAWAY => {
                    out.goaway = Some(code(&f.payload, 4));
                }
                _ => {}
            }
        }
    }

    /// Whether the server closes the connection within `within` (frames before the
    /// close, GOAWAY among them, are read and answered).
    pub async fn closed_within(&mut self, within: Duration) -> (bool, Vec<u8>) {
        let deadline = tokio::time::Instant::now() + within;
        let mut kinds = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return (false, kinds);
            }
            match self.next_frame(left).await {
                Some(f) => kinds.push(f.kind),
                None => return (tokio::time::Instant::now() < deadline, kinds),
            }
        }
    }
}

fn strip_headers_padding(f: &Frame) -> &[u8] {
    let mut p = &f.payload[..];
    let mut pad = 0usize;
    if f.flags & 0x8 != 0 && !p.is_empty() {
        pad = p[0] as usize;
        p = &p[1..];
    }
    if f.flags & 0x20 != 0 && p.len() >= 5 {
        p = &p[5..];
    }
    &p[..p.len().saturating_sub(pad)]
}

fn code(payload: &[u8], at: usize) -> u32 {
    payload
        .get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(u32::MAX)
}

/// TCP connect and TLS handshake with the given ALPN protocols.
pub async fn tls_connect(
    addr: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
    alpn: &[&[u8]],
) -> TlsStream<TcpStream> {
    let mut config = (**client).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

/// Whether the peer closes `stream` within `within` without sending anything.
pub async fn closed_silently<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    within: Duration,
) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}
