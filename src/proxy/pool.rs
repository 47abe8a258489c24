//! Upstream connections: one idle list per worker thread, HTTP/1.1 over TCP or TLS,
//! driven inline by the request that uses them.
//!
//! A request checks a connection out of its worker's list, writes its head (and a body
//! it already holds) with one write, reads the response head, and returns a body that
//! reads the rest from the same socket. There is no connection task, channel or
//! cross-task wake-up: the request's own task does the IO, and [`super::h1`] the
//! framing. A connection goes back to its list only when its response body has been
//! read to the end with nothing left over ([`PooledBody`]); a body dropped half-read
//! closes the connection, so a reused connection is never in an unknown state.
//!
//! Reuse races: an idle connection the upstream has closed is noticed before use when
//! the close has arrived (its socket turned readable). One closed in the moment between
//! that check and the write fails with nothing received; such a request is sent again on
//! a fresh connection only when it is idempotent and its body is in memory (the rule
//! nginx applies), so nothing that may have had an effect is ever replayed. Idle
//! connections are closed after `upstream_idle_secs` by a timer per worker.

use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::forward::UpstreamBody;
use super::h1::{self, Decoded, Decoder, ProtocolError, RequestFraming, ResponseHead};

/// Idle connections kept per worker; more are closed when they come back.
const MAX_IDLE_PER_WORKER: usize = 1024;
/// Read buffer reserved before each read.
const READ_CHUNK: usize = 16 * 1024;
/// Bodies up to this size are copied behind the head and sent with one write.
const INLINE_BODY: usize = 16 * 1024;

/// Why no response came back. `ConnectTimeout` and timed-out IO map to 504, the rest
/// to 502.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The TCP connect or TLS handshake did not finish in time.
    #[error("connecting to the upstream timed out")]
    ConnectTimeout,
    /// The connection could not be made.
    #[error("connecting to the upstream: {0}")]
    Connect(#[source] std::io::Error),
    /// Writing the request or reading the response failed.
    #[error("talking to the upstream: {0}")]
    Io(#[source] std::io::Error),
    /// The connection ended before a response head.
    #[error("the upstream closed the connection without answering")]
    Closed,
    /// The response is not HTTP/1.1 flexgate can pass on safely.
    #[error("the upstream's response: {0}")]
    Protocol(#[source] ProtocolError),
    /// The client's request body broke off while it was being sent.
    #[error("reading the request body: {0}")]
    RequestBody(#[source] hyper::Error),
}

/// An upstream's answer: a response, or a protocol switch with the raw connection.
pub enum Answer {
    /// A final response whose body streams from the connection.
    Response(http::Response<PooledBody>),
    /// `101 Switching Protocols`: the connection now belongs to the tunnel.
    Switching(http::Response<()>, Upgraded),
}

/// The upstream side of a switched connection.
pub struct Upgraded {
    /// The connection.
    pub io: Io,
    /// Bytes the upstream sent right behind its 101 head, owed to the client first.
    pub early: Bytes,
}

/// Where and how to connect.
pub struct Destination {
    /// `host:port`, resolved on each connect (DNS changes are picked up).
    pub address: String,
    /// TLS settings and the name to verify, for an https upstream.
    pub tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// Limit for TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// How long an idle connection is kept.
    pub idle_timeout: Duration,
}

/// The per-worker idle lists for one upstream.
pub struct Pool {
    destination: Destination,
    workers: Box<[Arc<Slot>]>,
}

/// One worker's idle connections, most recently used last. The lock is only ever
/// taken by its own worker thread (and the reaper on that thread): never contended.
#[derive(Default)]
struct Slot {
    idle: Mutex<Vec<Idle>>,
    reaper: std::sync::OnceLock<()>,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// A TCP or TLS stream to the upstream.
pub enum Io {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A connection with its read buffer (bytes received but not yet consumed) and its
/// write buffer (kept to avoid an allocation per request).
struct Conn {
    io: Io,
    read: BytesMut,
    write: Vec<u8>,
}

/// A failed exchange, and whether the request can be safely sent again: nothing came
/// back on a reused connection.
struct Failure {
    error: PoolError,
    nothing_received: bool,
}

impl From<PoolError> for Failure {
    fn from(error: PoolError) -> Failure {
        Failure {
            error,
            nothing_received: false,
        }
    }
}

impl Pool {
    /// A pool with one idle list per worker.
    pub fn new(destination: Destination, workers: usize) -> Pool {
        Pool {
            destination,
            workers: (0..workers.max(1))
                .map(|_| Arc::new(Slot::default()))
                .collect(),
        }
    }

    /// Send a request (origin-form URI; hop-by-hop, `Host` and length headers removed;
    /// `added` the header lines flexgate sets, `Host` among them) on a pooled or new
    /// connection of `worker`.
    pub async fn send(
        &self,
        worker: usize,
        parts: &Parts,
        added: &[u8],
        mut body: UpstreamBody,
    ) -> Result<Answer, PoolError> {
        let slot = &self.workers[worker % self.workers.len()];
        let known = match &body {
            UpstreamBody::Buffered(bytes) => Some(bytes.len() as u64),
            UpstreamBody::Streamed(incoming) if incoming.is_end_stream() => Some(0),
            UpstreamBody::Streamed(incoming) => incoming.size_hint().exact(),
        };
        let framing = RequestFraming::for_body(&parts.method, known);
        let replayable = parts.method.is_idempotent()
            && match &body {
                UpstreamBody::Buffered(_) => true,
                UpstreamBody::Streamed(incoming) => incoming.is_end_stream(),
            };
        if let Some(conn) = self.checkout(slot) {
            match exchange(slot, conn, parts, added, &mut body, framing).await {
                Ok(answer) => return Ok(answer),
                Err(f) if f.nothing_received && replayable => {
                    tracing::debug!(error = %f.error, "a pooled upstream connection had closed; sending again on a new one");
                }
                Err(f) => return Err(f.error),
            }
        }
        let conn = self.connect(slot).await?;
        exchange(slot, conn, parts, added, &mut body, framing)
            .await
            .map_err(|f| f.error)
    }

    /// The most recently used idle connection that is still open.
    fn checkout(&self, slot: &Slot) -> Option<Conn> {
        loop {
            let idle = lock(&slot.idle).pop()?;
            if idle.since.elapsed() < self.destination.idle_timeout && idle.conn.looks_open() {
                return Some(idle.conn);
            }
        }
    }

    async fn connect(&self, slot: &Arc<Slot>) -> Result<Conn, PoolError> {
        let d = &self.destination;
        let io = tokio::time::timeout(d.connect_timeout, async {
            let tcp = TcpStream::connect(d.address.as_str())
                .await
                .map_err(PoolError::Connect)?;
            tcp.set_nodelay(true).map_err(PoolError::Connect)?;
            Ok(match &d.tls {
                None => Io::Tcp(tcp),
                Some((connector, name)) => Io::Tls(Box::new(
                    connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(PoolError::Connect)?,
                )),
            })
        })
        .await
        .map_err(|_| PoolError::ConnectTimeout)??;
        slot.reaper.get_or_init(|| {
            tokio::spawn(reap(Arc::downgrade(slot), d.idle_timeout));
        });
        Ok(Conn {
            io,
            read: BytesMut::with_capacity(READ_CHUNK),
            write: Vec::with_capacity(1024),
        })
    }
}

/// One request and response head on `conn`.
async fn exchange(
    slot: &Arc<Slot>,
    mut conn: Conn,
    parts: &Parts,
    added: &[u8],
    body: &mut UpstreamBody,
    framing: RequestFraming,
) -> Result<Answer, Failure> {
    conn.write.clear();
    h1::encode_request_head(
        &mut conn.write,
        &parts.method,
        &parts.uri,
        &parts.headers,
        added,
        framing,
    );
    let stale = |e: std::io::Error| Failure {
        error: PoolError::Io(e),
        nothing_received: true,
    };
    let mut request_complete = true;
    let head = match body {
        UpstreamBody::Buffered(bytes) if bytes.len() <= INLINE_BODY => {
            conn.write.extend_from_slice(bytes);
            write_all(&mut conn.io, &conn.write).await.map_err(stale)?;
            read_head(&mut conn.io, &mut conn.read, &parts.method).await?
        }
        UpstreamBody::Buffered(bytes) => {
            write_all(&mut conn.io, &conn.write).await.map_err(stale)?;
            write_all(&mut conn.io, bytes).await.map_err(stale)?;
            read_head(&mut conn.io, &mut conn.read, &parts.method).await?
        }
        UpstreamBody::Streamed(incoming) if incoming.is_end_stream() => {
            write_all(&mut conn.io, &conn.write).await.map_err(stale)?;
            read_head(&mut conn.io, &mut conn.read, &parts.method).await?
        }
        UpstreamBody::Streamed(incoming) => {
            write_all(&mut conn.io, &conn.write).await.map_err(stale)?;
            // Send the body while watching for the response: an upstream may answer
            // (413, 401, ...) before reading it all, and must not be kept waiting.
            let Conn { io, read, write } = &mut conn;
            let (mut reader, mut writer) = tokio::io::split(io);
            let send = send_body(&mut writer, incoming, framing, write);
            let head = read_head(&mut reader, read, &parts.method);
            tokio::pin!(send, head);
            let mut sent = false;
            loop {
                tokio::select! {
                    done = &mut send, if !sent => {
                        done?;
                        sent = true;
                    }
                    head = &mut head => {
                        request_complete = sent;
                        break head?;
                    }
                }
            }
        }
    };
    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        let early = conn.read.split().freeze();
        let (response, ()) = into_response(head, ());
        return Ok(Answer::Switching(response, Upgraded { io: conn.io, early }));
    }
    let reusable = head.reusable && request_complete && !h1::closes_after(&parts.method, framing);
    let decoder = Decoder::new(head.framing);
    let reading = Reading {
        conn,
        decoder,
        slot: Arc::clone(slot),
        reusable,
    };
    let (response, body) = into_response(head, reading.into_body());
    Ok(Answer::Response(response.map(|()| body)))
}

fn into_response<B>(head: ResponseHead, body: B) -> (http::Response<()>, B) {
    let mut response = http::Response::new(());
    *response.status_mut() = head.status;
    *response.version_mut() = head.version;
    *response.headers_mut() = head.headers;
    (response, body)
}

async fn write_all(io: &mut Io, bytes: &[u8]) -> std::io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await
}

/// Read until a final (or 101) response head is complete, skipping other 1xx heads.
async fn read_head<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    method: &Method,
) -> Result<ResponseHead, Failure> {
    let mut received_any = !buf.is_empty();
    loop {
        if !buf.is_empty()
            && let Some((head, len)) =
                h1::parse_response_head(buf, method).map_err(PoolError::Protocol)?
        {
            let _ = buf.split_to(len);
            if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS {
                continue;
            }
            return Ok(head);
        }
        buf.reserve(READ_CHUNK);
        match reader.read_buf(buf).await {
            Ok(0) => {
                return Err(Failure {
                    error: PoolError::Closed,
                    nothing_received: !received_any,
                });
            }
            Ok(_) => received_any = true,
            Err(e) => {
                return Err(Failure {
                    error: PoolError::Io(e),
                    nothing_received: !received_any,
                });
            }
        }
    }
}

/// Stream the client's body upstream with the chosen framing (trailers are dropped: a
/// client must not be able to send headers an upstream merges after flexgate's checks).
async fn send_body<W: AsyncWrite + Unpin>(
    writer: &mut W,
    body: &mut hyper::body::Incoming,
    framing: RequestFraming,
    scratch: &mut Vec<u8>,
) -> Result<(), Failure> {
    let chunked = framing == RequestFraming::Chunked;
    let io = |e: std::io::Error| Failure::from(PoolError::Io(e));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Failure::from(PoolError::RequestBody(e)))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            scratch.clear();
            h1::chunk_header(data.len(), scratch);
            writer.write_all(scratch).await.map_err(io)?;
            writer.write_all(&data).await.map_err(io)?;
            writer.write_all(b"\r\n").await.map_err(io)?;
        } else {
            writer.write_all(&data).await.map_err(io)?;
        }
    }
    if chunked {
        writer.write_all(b"0\r\n\r\n").await.map_err(io)?;
    }
    writer.flush().await.map_err(io)
}

/// Close this worker's connections that stayed idle too long; stops with the pool.
async fn reap(slot: Weak<Slot>, idle_timeout: Duration) {
    let period = (idle_timeout / 2).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(period).await;
        let Some(slot) = slot.upgrade() else { return };
        lock(&slot.idle).retain(|i| i.since.elapsed() < idle_timeout);
    }
}

fn lock(idle: &Mutex<Vec<Idle>>) -> std::sync::MutexGuard<'_, Vec<Idle>> {
    // The lists hold no invariant a panic could break: keep going after one.
    idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Conn {
    /// Whether an idle connection can carry a request: its socket has not turned
    /// readable (an idle upstream sends nothing but a close). Costs a system call only
    /// when the reactor saw it become readable.
    fn looks_open(&self) -> bool {
        let tcp = match &self.io {
            Io::Tcp(tcp) => tcp,
            // rustls may hold bytes it has already decrypted (the upstream sent more
            // than its answer), or a close_notify: then it wants no read, and the next
            // request would be answered from those bytes.
            Io::Tls(tls) if !tls.get_ref().1.wants_read() => return false,
            Io::Tls(tls) => tls.get_ref().0,
        };
        let mut cx = Context::from_waker(Waker::noop());
        match tcp.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => matches!(
                tcp.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
            ),
        }
    }
}

/// A response body being read from its connection.
struct Reading {
    conn: Conn,
    decoder: Decoder,
    slot: Arc<Slot>,
    reusable: bool,
}

impl Reading {
    /// The body, already complete when the first read brought all of it (the usual
    /// small response): then the connection is back in its list before the body is
    /// even polled.
    fn into_body(mut self) -> PooledBody {
        match self.decoder.remaining() {
            Some(n) if n <= self.conn.read.len() as u64 => {
                let data = match self.decoder.decode(&mut self.conn.read) {
                    Ok(Decoded::Data(data)) => Some(data),
                    _ => None,
                };
                self.finish();
                PooledBody {
                    state: BodyState::Ready(data),
                }
            }
            _ => PooledBody {
                state: BodyState::Reading(Box::new(self)),
            },
        }
    }

    /// The body is complete: keep the connection if nothing about it is in doubt.
    fn finish(self) {
        if self.reusable && self.decoder.is_done() && self.conn.read.is_empty() {
            let mut idle = lock(&self.slot.idle);
            if idle.len() < MAX_IDLE_PER_WORKER {
                idle.push(Idle {
                    conn: self.conn,
                    since: Instant::now(),
                });
            }
        }
    }
}

/// A response body from the upstream that returns its connection to the pool when it
/// has been read to the end, and closes it when dropped before.
pub struct PooledBody {
    state: BodyState,
}

enum BodyState {
    /// All there is (the connection is settled).
    Ready(Option<Bytes>),
    /// Still on the wire.
    Reading(Box<Reading>),
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PooledBody")
    }
}

impl PooledBody {
    fn settle(&mut self, keep: bool) {
        if let BodyState::Reading(reading) =
            std::mem::replace(&mut self.state, BodyState::Ready(None))
            && keep
        {
            reading.finish();
        }
    }
}

fn broken(e: ProtocolError) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        loop {
            let reading = match &mut self.state {
                BodyState::Ready(data) => {
                    return Poll::Ready(data.take().map(|d| Ok(Frame::data(d))));
                }
                BodyState::Reading(reading) => reading,
            };
            match reading.decoder.decode(&mut reading.conn.read) {
                Ok(Decoded::Data(data)) => {
                    if reading.decoder.is_done() {
                        self.settle(true);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Done) => {
                    self.settle(true);
                    return Poll::Ready(None);
                }
                Err(e) => {
                    self.settle(false);
                    return Poll::Ready(Some(Err(broken(e))));
                }
                Ok(Decoded::NeedMore) => {}
            }
            reading.conn.read.reserve(READ_CHUNK);
            let Conn { io, read, .. } = &mut reading.conn;
            let read = std::pin::pin!(io.read_buf(read));
            match read.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    let ended = reading.decoder.at_eof();
                    self.settle(false);
                    return Poll::Ready(ended.err().map(|e| Err(broken(e))));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    self.settle(false);
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            BodyState::Ready(data) => data.is_none(),
            BodyState::Reading(reading) => reading.decoder.is_done(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            BodyState::Ready(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            BodyState::Reading(reading) => match reading.decoder.remaining() {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::default(),
            },
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
