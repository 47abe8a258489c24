//! Upstream connections: one idle list per worker thread, HTTP/1.1 over TCP or TLS.
//!
//! A connection is opened, driven and reused by one worker only, so checking one out is
//! an uncontended lock and a pop, and a response never wakes another thread. A
//! connection goes back to its list only once its response body has been read to the
//! end ([`PooledBody`]); a body dropped half-read closes the connection instead, so a
//! reused connection is never in an unknown state. A request that could not be written
//! to a pooled connection (the upstream closed it while idle) is retried once on a
//! fresh one; a request that was written is never replayed. Idle connections are closed
//! after `upstream_idle_secs` by a timer per worker.

use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use super::forward::UpstreamBody;

/// Idle connections kept per worker; more are closed when they come back.
const MAX_IDLE_PER_WORKER: usize = 1024;

/// Why no response came back. `Timeout` maps to 504, the rest to 502.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The TCP connect, TLS handshake or HTTP/1 handshake did not finish in time.
    #[error("connecting to the upstream timed out")]
    ConnectTimeout,
    /// The connection could not be made.
    #[error("connecting to the upstream: {0}")]
    Connect(#[source] std::io::Error),
    /// The HTTP exchange failed.
    #[error("upstream HTTP: {0}")]
    Http(#[source] hyper::Error),
}

/// Where and how to connect.
pub struct Destination {
    /// `host:port`, resolved on each connect (DNS changes are picked up).
    pub address: String,
    /// TLS settings and the name to verify, for an https upstream.
    pub tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// Limit for TCP connect plus TLS and HTTP/1 handshakes.
    pub connect_timeout: Duration,
    /// How long an idle connection is kept.
    pub idle_timeout: Duration,
}

/// The per-worker idle lists for one upstream.
pub struct Pool {
    destination: Destination,
    workers: Box<[Arc<Slot>]>,
}

/// One worker's idle connections, most recently used last.
#[derive(Default)]
struct Slot {
    idle: Mutex<Vec<Idle>>,
    reaper: std::sync::OnceLock<()>,
}

struct Idle {
    sender: SendRequest<UpstreamBody>,
    since: Instant,
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

    /// Send `request` (origin-form URI, `Host` set) on a pooled or new connection of
    /// `worker`, and return the response with a body that hands the connection back
    /// once read to the end.
    pub async fn send(
        &self,
        worker: usize,
        mut request: http::Request<UpstreamBody>,
    ) -> Result<http::Response<PooledBody>, PoolError> {
        let slot = &self.workers[worker % self.workers.len()];
        if let Some(mut sender) = self.checkout(slot).await {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.wrap(slot, sender, response)),
                Err(mut failed) => match failed.take_message() {
                    // Never written: the connection died while idle. Try a fresh one.
                    Some(unsent) => request = unsent,
                    None => return Err(PoolError::Http(failed.into_error())),
                },
            }
        }
        let mut sender = self.connect(slot).await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(PoolError::Http)?;
        Ok(self.wrap(slot, sender, response))
    }

    /// The most recently used idle connection that is still open and ready.
    async fn checkout(&self, slot: &Slot) -> Option<SendRequest<UpstreamBody>> {
        loop {
            let idle = lock(&slot.idle).pop()?;
            let mut sender = idle.sender;
            if sender.is_closed() || idle.since.elapsed() >= self.destination.idle_timeout {
                continue;
            }
            if sender.is_ready() {
                return Some(sender);
            }
            // Its body was read to the end but the connection has not been polled back
            // to idle yet: that takes one turn of this worker's scheduler.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    async fn connect(&self, slot: &Arc<Slot>) -> Result<SendRequest<UpstreamBody>, PoolError> {
        let d = &self.destination;
        let sender = tokio::time::timeout(d.connect_timeout, async {
            let tcp = TcpStream::connect(d.address.as_str())
                .await
                .map_err(PoolError::Connect)?;
            tcp.set_nodelay(true).map_err(PoolError::Connect)?;
            match &d.tls {
                None => handshake(TokioIo::new(tcp)).await,
                Some((connector, name)) => {
                    let tls = connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(PoolError::Connect)?;
                    handshake(TokioIo::new(tls)).await
                }
            }
        })
        .await
        .map_err(|_| PoolError::ConnectTimeout)??;
        slot.reaper.get_or_init(|| {
            tokio::spawn(reap(Arc::downgrade(slot), d.idle_timeout));
        });
        Ok(sender)
    }

    fn wrap(
        &self,
        slot: &Arc<Slot>,
        sender: SendRequest<UpstreamBody>,
        response: http::Response<Incoming>,
    ) -> http::Response<PooledBody> {
        // A 101 hands the connection over to the tunnel: it never comes back.
        let keep = response.status() != http::StatusCode::SWITCHING_PROTOCOLS;
        response.map(|body| {
            let mut pooled = PooledBody {
                body,
                release: keep.then(|| Release {
                    sender,
                    slot: Arc::clone(slot),
                }),
            };
            if pooled.body.is_end_stream() {
                pooled.release();
            }
            pooled
        })
    }
}

async fn handshake<T>(io: T) -> Result<SendRequest<UpstreamBody>, PoolError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(PoolError::Http)?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// Close this worker's connections that stayed idle too long; stops with the pool.
async fn reap(slot: Weak<Slot>, idle_timeout: Duration) {
    let period = (idle_timeout / 2).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(period).await;
        let Some(slot) = slot.upgrade() else { return };
        lock(&slot.idle).retain(|i| !i.sender.is_closed() && i.since.elapsed() < idle_timeout);
    }
}

fn lock(idle: &Mutex<Vec<Idle>>) -> std::sync::MutexGuard<'_, Vec<Idle>> {
    // The lists hold no invariant a panic could break: keep going after one.
    idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Release {
    sender: SendRequest<UpstreamBody>,
    slot: Arc<Slot>,
}

/// A response body from the upstream that returns its connection to the pool when it
/// has been read to the end, and closes it when dropped before.
pub struct PooledBody {
    body: Incoming,
    release: Option<Release>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some(Release { sender, slot }) = self.release.take() {
            let mut idle = lock(&slot.idle);
            if idle.len() < MAX_IDLE_PER_WORKER {
                idle.push(Idle {
                    sender,
                    since: Instant::now(),
                });
            }
        }
    }
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PooledBody")
    }
}

impl Body for PooledBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.release(),
            // A broken body: the connection is dropped with `release`.
            Poll::Ready(Some(Err(_))) => self.release = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
