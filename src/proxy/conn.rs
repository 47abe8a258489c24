//! Serving one client connection once its protocol is known: HTTP/1.1 or HTTP/2 as
//! ALPN (or the listener) decided, never sniffed from the first bytes, with deadlines
//! that hold from the first byte on every listener.
//!
//! * HTTP/1.1: hyper's head-read timer runs from the moment the connection is served,
//!   so a client that connects and sends nothing, or sends its head slowly, or idles
//!   between keep-alive requests, is cut off after `header_read_timeout`.
//! * HTTP/2: hyper has no such timers, so a watchdog drives the connection beside a
//!   [`FrameWatch`] that follows the client's frame headers (never their payloads):
//!   the preface and first complete header block must arrive within
//!   `header_read_timeout`; every later header block (HEADERS plus CONTINUATIONs) must
//!   complete within it too; a connection with no stream in flight for
//!   `idle_timeout` is sent GOAWAY even if it answers every PING; and a client that
//!   resets most of the streams it opens (rapid reset) is disconnected.
//!
//! Shutdown is graceful on both: no new requests, in-flight ones finish.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::rules::Limits;

/// The protocol a connection speaks, fixed before its first byte is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (plain listeners, and TLS without ALPN `h2`).
    Http1,
    /// HTTP/2 (TLS with ALPN `h2`).
    Http2,
}

/// After this many streams, a connection whose client reset more than half of the
/// streams it opened is closed (Envoy's "premature reset" rule against rapid reset).
const RESET_FLOOD_MIN_STREAMS: u64 = 100;

/// Serve `io` with `service` until the client or the server ends the connection.
/// `shutdown` flipping to `true` starts a graceful close.
pub async fn serve<I, S, B>(
    protocol: Protocol,
    io: I,
    limits: &Limits,
    shutdown: watch::Receiver<bool>,
    service: S,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match protocol {
        Protocol::Http1 => serve_http1(io, limits, shutdown, service).await,
        Protocol::Http2 => serve_http2(io, limits, shutdown, service).await,
    }
}

async fn serve_http1<I, S, B>(
    io: I,
    limits: &Limits,
    mut shutdown: watch::Receiver<bool>,
    service: S,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = std::convert::Infallible>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        // One buffer, one write per response (hyper's own advice for TLS, and fewer
        // instructions than a vectored write on plain TCP too: see docs/performance.md).
        .writev(false);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut closing = *shutdown.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "HTTP/1.1 connection ended with an error");
                }
                return;
            }
            changed = shutdown.changed(), if !closing => {
                if changed.is_err() || *shutdown.borrow() {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Streams one HTTP/2 connection may have open at once.
pub const MAX_CONCURRENT_STREAMS: u32 = 100;

async fn serve_http2<I, S, B>(
    io: I,
    limits: &Limits,
    mut shutdown: watch::Receiver<bool>,
    service: S,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let activity = Arc::new(Activity::new());
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // nginx's default (128) rounded down: every stream may hold a body being read
        // before its sender is authenticated (bounded by the body budget too).
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(Some(limits.idle_timeout))
        .keep_alive_timeout(limits.header_read_timeout);
    let io = FrameWatch::new(io, Arc::clone(&activity));
    let service = Tracked {
        inner: service,
        activity: Arc::clone(&activity),
    };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);

    let header_timeout = limits.header_read_timeout;
    let mut closing = false;
    // When a graceful close was started by the watchdog, the connection gets this long
    // to finish before it is dropped.
    let mut close_by: Option<Instant> = None;
    if *shutdown.borrow() {
        closing = true;
        conn.as_mut().graceful_shutdown();
    }
    loop {
        let notified = activity.changed.notified();
        tokio::pin!(notified);
        let now = Instant::now();
        let verdict = activity.check(now, header_timeout, limits.idle_timeout);
        match verdict {
            Verdict::Close(why) => {
                tracing::debug!(reason = why, "closing an HTTP/2 connection");
                return;
            }
            Verdict::GoAway(why) if !closing => {
                tracing::debug!(reason = why, "sending GOAWAY to an HTTP/2 connection");
                closing = true;
                close_by = Some(now + header_timeout);
                conn.as_mut().graceful_shutdown();
                continue;
            }
            _ => {}
        }
        if close_by.is_some_and(|t| now >= t) && activity.active() == 0 {
            tracing::debug!("an HTTP/2 connection did not close after GOAWAY; dropping it");
            return;
        }
        let wake = match (verdict, close_by) {
            (Verdict::WaitUntil(t), Some(c)) => Some(t.min(c)),
            (Verdict::WaitUntil(t), None) => Some(t),
            (_, c) => c,
        };
        let sleep = async {
            match wake {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
                }
                return;
            }
            changed = shutdown.changed(), if !closing => {
                if changed.is_err() || *shutdown.borrow() {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = &mut notified => {}
            _ = sleep => {}
        }
    }
}

// === Activity ===

/// What the watchdog of one HTTP/2 connection knows, shared with its [`FrameWatch`]
/// and its service. Times are milliseconds since the connection started, plus one
/// (zero means "none"). Written by the connection's own task only; atomics because
/// hyper requires the IO and service to be `Send`.
#[derive(Debug)]
pub struct Activity {
    started: Instant,
    /// When the header block now being received began (0: none pending).
    block_since: AtomicU64,
    /// Header blocks received whole.
    blocks: AtomicU64,
    /// Streams the client opened (HEADERS frames that start a block on a new stream).
    opened: AtomicU64,
    /// RST_STREAM frames the client sent.
    resets: AtomicU64,
    /// Requests whose answer (head or body) is still in progress.
    active: AtomicUsize,
    /// When `active` last fell to zero (0: at the start).
    idle_since: AtomicU64,
    changed: Notify,
}

/// What the watchdog should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Drop the connection at once (a deadline passed, or abuse).
    Close(&'static str),
    /// Send GOAWAY and let in-flight streams finish.
    GoAway(&'static str),
    /// Look again at this time (or when notified).
    WaitUntil(Instant),
    /// Nothing is due; wait to be notified.
    Wait,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            started: Instant::now(),
            block_since: AtomicU64::new(0),
            blocks: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    fn stamp(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    fn at(&self, stamp: u64) -> Instant {
        self.started + Duration::from_millis(stamp.saturating_sub(1))
    }

    fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Take in what a read of client bytes began and finished; `open` is whether a
    /// header block is still in progress after it.
    fn record(&self, events: &FrameEvents, open: bool) {
        let mut wake = false;
        if events.streams_opened > 0 {
            self.opened
                .fetch_add(u64::from(events.streams_opened), Ordering::Relaxed);
        }
        if events.blocks_finished > 0 {
            self.blocks
                .fetch_add(u64::from(events.blocks_finished), Ordering::Relaxed);
        }
        if open {
            // A block that began in this read is timed from now; one still open from an
            // earlier read keeps its start.
            if events.blocks_started > 0 || self.block_since.load(Ordering::Relaxed) == 0 {
                self.block_since.store(self.stamp(), Ordering::Relaxed);
                wake = true;
            }
        } else {
            self.block_since.store(0, Ordering::Relaxed);
        }
        if events.resets > 0 {
            self.resets
                .fetch_add(u64::from(events.resets), Ordering::Relaxed);
            wake |= self.reset_flood();
        }
        if wake {
            self.changed.notify_one();
        }
    }

    fn reset_flood(&self) -> bool {
        let opened = self.opened.load(Ordering::Relaxed);
        opened >= RESET_FLOOD_MIN_STREAMS && self.resets.load(Ordering::Relaxed) * 2 > opened
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.active.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    fn check(&self, now: Instant, header_timeout: Duration, idle_timeout: Duration) -> Verdict {
        if self.reset_flood() {
            return Verdict::Close("the client reset most of the streams it opened");
        }
        let mut next: Option<Instant> = None;
        let mut due = |deadline: Instant| {
            next = Some(next.map_or(deadline, |n| n.min(deadline)));
            deadline <= now
        };
        if self.blocks.load(Ordering::Relaxed) == 0 && due(self.started + header_timeout) {
            return Verdict::Close("no complete request head within header_read_timeout");
        }
        let since = self.block_since.load(Ordering::Relaxed);
        if since != 0 && due(self.at(since) + header_timeout) {
            return Verdict::Close("a header block was not completed within header_read_timeout");
        }
        if self.active() == 0 && since == 0 {
            let idle = self.at(self.idle_since.load(Ordering::Relaxed).max(1));
            if due(idle + idle_timeout) {
                return Verdict::GoAway("idle for idle_timeout");
            }
        }
        next.map_or(Verdict::Wait, Verdict::WaitUntil)
    }
}

/// One request in progress on an HTTP/2 connection; dropped when its response body
/// ends or the stream is reset.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle_since.store(self.0.stamp(), Ordering::Relaxed);
            self.0.changed.notify_one();
        }
    }
}

// === FrameWatch ===

const FRAME_HEADERS: u8 = 0x1;
const FRAME_RST_STREAM: u8 = 0x3;
const FRAME_PUSH_PROMISE: u8 = 0x5;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_HEADERS: u8 = 0x4;
const PREFACE_LEN: usize = 24;

/// Where the reader stands in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Inside the 24-byte connection preface (checked by h2 itself).
    Preface(usize),
    /// Collecting a 9-byte frame header.
    Header([u8; 9], usize),
    /// Skipping a frame payload; `ends_block` when the frame carries END_HEADERS.
    Payload { left: u32, ends_block: bool },
}

/// Follows the frames of an HTTP/2 client's byte stream: which header blocks begin and
/// end, how many streams are opened and reset. Pure bookkeeping over the frame
/// headers of bytes h2 reads anyway (payloads are skipped); h2 itself validates them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameTracker {
    phase: Phase,
    /// A header block has begun (HEADERS or PUSH_PROMISE) and its END_HEADERS frame has
    /// not been read whole yet.
    open: bool,
    /// The highest stream id a HEADERS frame opened.
    last_stream: u32,
}

/// What one slice of client bytes began and finished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameEvents {
    /// Header blocks that began.
    pub blocks_started: u32,
    /// HEADERS frames on a new (higher) stream id.
    pub streams_opened: u32,
    /// Header blocks that completed (their END_HEADERS frame read whole).
    pub blocks_finished: u32,
    /// RST_STREAM frame headers read.
    pub resets: u32,
}

impl Default for FrameTracker {
    fn default() -> Self {
        FrameTracker::new()
    }
}

impl FrameTracker {
    /// A tracker at the start of a connection (before the preface).
    pub fn new() -> FrameTracker {
        FrameTracker {
            phase: Phase::Preface(PREFACE_LEN),
            open: false,
            last_stream: 0,
        }
    }

    /// Whether a header block has begun and not yet ended.
    pub fn block_open(&self) -> bool {
        self.open
    }

    /// Consume the next client bytes, adding what they began and finished to `events`.
    pub fn feed(&mut self, mut data: &[u8], events: &mut FrameEvents) {
        while !data.is_empty() {
            match &mut self.phase {
                Phase::Preface(left) => {
                    let n = (*left).min(data.len());
                    data = &data[n..];
                    *left -= n;
                    if *left == 0 {
                        self.phase = Phase::Header([0; 9], 0);
                    }
                }
                Phase::Header(buf, have) => {
                    let n = (9 - *have).min(data.len());
                    buf[*have..*have + n].copy_from_slice(&data[..n]);
                    *have += n;
                    data = &data[n..];
                    if *have == 9 {
                        let header = *buf;
                        self.begin_frame(header, events);
                    }
                }
                Phase::Payload { left, ends_block } => {
                    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
                    data = &data[n..];
                    // n <= left, and left is a u32.
                    *left -= n as u32;
                    if *left == 0 {
                        let ends = *ends_block;
                        self.end_frame(ends, events);
                    }
                }
            }
        }
    }

    fn begin_frame(&mut self, h: [u8; 9], events: &mut FrameEvents) {
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
        let (kind, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        let end_headers = flags & FLAG_END_HEADERS != 0;
        let ends_block = match kind {
            // A block begun inside another is a protocol error h2 answers with GOAWAY;
            // it is not counted as a second block.
            FRAME_HEADERS | FRAME_PUSH_PROMISE if !self.open => {
                events.blocks_started += 1;
                self.open = true;
                if kind == FRAME_HEADERS && stream > self.last_stream {
                    self.last_stream = stream;
                    events.streams_opened += 1;
                }
                end_headers
            }
            FRAME_HEADERS | FRAME_PUSH_PROMISE => end_headers,
            FRAME_CONTINUATION => end_headers,
            FRAME_RST_STREAM => {
                events.resets += 1;
                false
            }
            _ => false,
        };
        self.phase = Phase::Payload {
            left: len,
            ends_block,
        };
        if len == 0 {
            self.end_frame(ends_block, events);
        }
    }

    fn end_frame(&mut self, ends_block: bool, events: &mut FrameEvents) {
        if ends_block && self.open {
            events.blocks_finished += 1;
            self.open = false;
        }
        self.phase = Phase::Header([0; 9], 0);
    }
}

/// The client side of an HTTP/2 connection, with a [`FrameTracker`] reporting to the
/// connection's [`Activity`].
struct FrameWatch<I> {
    io: I,
    tracker: FrameTracker,
    activity: Arc<Activity>,
}

impl<I> FrameWatch<I> {
    fn new(io: I, activity: Arc<Activity>) -> FrameWatch<I> {
        FrameWatch {
            io,
            tracker: FrameTracker::new(),
            activity,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FrameWatch<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && let Some(new) = buf.filled().get(before..)
            && !new.is_empty()
        {
            let mut events = FrameEvents::default();
            this.tracker.feed(new, &mut events);
            this.activity.record(&events, this.tracker.block_open());
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FrameWatch<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

// === Tracked service ===

/// A service whose requests count as activity until their response body ends.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = std::convert::Infallible>,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
{
    type Response = Response<Guarded<B>>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let guard = self.activity.begin();
        let future = self.inner.call(req);
        Box::pin(async move {
            let response = future.await?;
            Ok(response.map(|body| Guarded {
                body,
                _guard: guard,
            }))
        })
    }
}

/// A response body that keeps its request counted as in flight until it is dropped.
struct Guarded<B> {
    body: B,
    _guard: InFlight,
}

impl<B: Body + Unpin> Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.extend([kind, flags]);
        out.extend(stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn preface() -> Vec<u8> {
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()
    }

    fn feed(parts: &[&[u8]]) -> (FrameTracker, FrameEvents) {
        let mut t = FrameTracker::new();
        let mut e = FrameEvents::default();
        for p in parts {
            t.feed(p, &mut e);
        }
        (t, e)
    }

    #[test]
    fn a_complete_headers_frame_opens_and_closes_one_block() {
        let bytes = [
            preface(),
            frame(FRAME_HEADERS, FLAG_END_HEADERS | 1, 1, b"abc"),
        ]
        .concat();
        let (t, e) = feed(&[&bytes]);
        assert!(!t.block_open());
        assert_eq!(
            (e.blocks_started, e.blocks_finished, e.streams_opened),
            (1, 1, 1)
        );
    }

    #[test]
    fn a_block_stays_open_until_its_end_headers_frame_is_read_whole() {
        let head = [preface(), frame(FRAME_HEADERS, 0, 1, b"abc")].concat();
        let (t, e) = feed(&[&head]);
        assert!(t.block_open(), "HEADERS without END_HEADERS");
        assert_eq!(e.blocks_finished, 0);
        let cont = frame(FRAME_CONTINUATION, 0, 1, b"d");
        let last = frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 1, b"efgh");
        let (t, e) = feed(&[&head, &cont, &last[..12]]);
        assert!(
            t.block_open(),
            "the END_HEADERS frame's payload is still arriving"
        );
        assert_eq!(e.blocks_finished, 0);
        let (t, e) = feed(&[&head, &cont, &last]);
        assert!(!t.block_open());
        assert_eq!(e.blocks_finished, 1);
    }

    #[test]
    fn a_slowly_sent_headers_payload_counts_as_an_open_block() {
        let bytes = [
            preface(),
            frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &[0; 100]),
        ]
        .concat();
        let (t, _) = feed(&[&bytes[..24 + 9 + 50]]);
        assert!(t.block_open());
    }

    #[test]
    fn resets_and_new_streams_are_counted_and_other_frames_ignored() {
        let bytes = [
            preface(),
            frame(0x4, 0, 0, b""),
            frame(FRAME_HEADERS, 5, 1, b"x"),
            frame(FRAME_RST_STREAM, 0, 1, &8u32.to_be_bytes()),
            frame(FRAME_HEADERS, 5, 3, b"y"),
            frame(FRAME_HEADERS, 5, 3, b"trailers on the same stream"),
            frame(FRAME_RST_STREAM, 0, 3, &8u32.to_be_bytes()),
            frame(0x6, 0, 0, &[0; 8]),
            frame(0x0, 1, 3, b"data"),
        ]
        .concat();
        for step in [1, 7, bytes.len()] {
            let mut t = FrameTracker::new();
            let mut e = FrameEvents::default();
            for chunk in bytes.chunks(step) {
                t.feed(chunk, &mut e);
            }
            assert_eq!(e.resets, 2, "step {step}");
            assert_eq!(e.streams_opened, 2, "step {step}");
            assert_eq!(e.blocks_started, 3, "step {step}");
            assert_eq!(e.blocks_finished, 3, "step {step}");
            assert!(!t.block_open());
        }
    }

    #[test]
    fn the_watchdog_verdicts_follow_the_deadlines() {
        let a = Activity::new();
        let start = a.started;
        let hrt = Duration::from_secs(10);
        let idle = Duration::from_secs(60);
        assert_eq!(a.check(start, hrt, idle), Verdict::WaitUntil(start + hrt));
        assert!(
            matches!(a.check(start + hrt, hrt, idle), Verdict::Close(_)),
            "no first request"
        );
        a.record(
            &FrameEvents {
                blocks_started: 1,
                blocks_finished: 1,
                streams_opened: 1,
                resets: 0,
            },
            false,
        );
        assert_eq!(a.check(start, hrt, idle), Verdict::WaitUntil(start + idle));
        assert!(matches!(
            a.check(start + idle, hrt, idle),
            Verdict::GoAway(_)
        ));
        let a = Arc::new(a);
        let busy = a.begin();
        assert_eq!(
            a.check(start + idle * 2, hrt, idle),
            Verdict::Wait,
            "a request in flight is not idle"
        );
        drop(busy);
        assert_eq!(a.active(), 0);
        a.record(
            &FrameEvents {
                blocks_started: 1,
                ..Default::default()
            },
            true,
        );
        match a.check(start, hrt, idle) {
            Verdict::WaitUntil(t) => assert!(t <= Instant::now() + hrt),
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(a.check(Instant::now() + hrt, hrt, idle), Verdict::Close(_)),
            "an open block past its deadline"
        );
    }

    #[test]
    fn resetting_most_streams_is_a_flood() {
        let a = Activity::new();
        let opened = FrameEvents {
            blocks_started: 1,
            blocks_finished: 1,
            streams_opened: 1,
            resets: 0,
        };
        for _ in 0..RESET_FLOOD_MIN_STREAMS {
            a.record(&opened, false);
        }
        a.record(
            &FrameEvents {
                resets: 50,
                ..Default::default()
            },
            false,
        );
        assert!(!a.reset_flood(), "half reset is not yet a flood");
        a.record(
            &FrameEvents {
                resets: 1,
                ..Default::default()
            },
            false,
        );
        assert!(a.reset_flood());
        let hrt = Duration::from_secs(1);
        assert!(matches!(
            a.check(Instant::now(), hrt, hrt),
            Verdict::Close(_)
        ));
    }
}
