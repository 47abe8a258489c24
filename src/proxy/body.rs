//! Request bodies flexgate reads whole before it forwards anything: a login's, a
//! route's whose rules read the body, the decision listener's. The client decides how
//! fast such a body arrives and, before anyone is authenticated, how many of them it
//! sends at once; so every read has a deadline (`body_read_timeout_ms`: 408, and the
//! HTTP/1.1 connection closed or the HTTP/2 stream reset, not a slot held for ever) and
//! every buffered byte comes out of the process's budget (`max_buffered_body_bytes`,
//! an eighth of it kept for logins: 503 once it is spent), which the bytes hold until
//! the request is done with them. Bodies that are only streamed
//! to the upstream do not come through here: the upstream's back-pressure and
//! `upstream_timeout` bound them.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::deny::Deny;
use crate::rules::Limits;

/// Reads request bodies whole, within the deadline and the byte budget of [`Limits`].
/// One per process: the budget is shared by every listener and worker. Logins draw on
/// an eighth of it kept for them, so that bodies sent to other routes before
/// authentication (FlexMeasures mode reads JSON bodies first) cannot lock logins out.
#[derive(Debug)]
pub struct BodyReader {
    timeout: Duration,
    budget: Arc<Semaphore>,
    logins: Arc<Semaphore>,
}

/// Which share of the budget a body draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A login (the token endpoint, an upstream's login form).
    Login,
    /// Anything else read whole.
    Other,
}

impl BodyReader {
    /// A reader with `limits`' deadline and a budget of `max_buffered_body_bytes`.
    pub fn new(limits: &Limits) -> BodyReader {
        let total = limits.max_buffered_body_bytes.min(Semaphore::MAX_PERMITS);
        let logins = total / 8;
        BodyReader {
            timeout: limits.body_read_timeout,
            budget: Arc::new(Semaphore::new(total - logins)),
            logins: Arc::new(Semaphore::new(logins)),
        }
    }

    /// The whole body, at most `limit` bytes: 413 beyond (before a byte is read when
    /// `Content-Length` says so), 408 when it has not all arrived within the deadline
    /// (HTTP/1.1 then closes the connection, HTTP/2 resets the stream), 503 when the
    /// process already holds its budget of bodies, 400 when it breaks off. Trailers
    /// are dropped, as the upstream client drops them.
    pub async fn read(
        &self,
        headers: &HeaderMap,
        body: Incoming,
        limit: usize,
        purpose: Purpose,
    ) -> Result<Bytes, Deny> {
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(Deny::BodyTooLarge);
        }
        let budget = match purpose {
            Purpose::Login => &self.logins,
            Purpose::Other => &self.budget,
        };
        tokio::time::timeout(self.timeout, collect(budget, body, limit))
            .await
            .unwrap_or(Err(Deny::BodyTimeout))
    }
}

async fn collect(budget: &Arc<Semaphore>, mut body: Incoming, limit: usize) -> Result<Bytes, Deny> {
    // Copied out of the connection's read buffers as it comes: a frame kept as a
    // slice would keep its whole buffer alive, more than the budget counts.
    let mut bytes = Vec::new();
    let mut held: Option<OwnedSemaphorePermit> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Deny::BadRequestBody)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if bytes.len() + data.len() > limit {
            return Err(Deny::BodyTooLarge);
        }
        // `limit` is at most 64 MiB (the config's bound), so a frame's length fits.
        let n = u32::try_from(data.len()).map_err(|_| Deny::BodyTooLarge)?;
        let more = Arc::clone(budget)
            .try_acquire_many_owned(n)
            .map_err(|_| Deny::Unavailable("body_budget_spent"))?;
        match &mut held {
            Some(permit) => permit.merge(more),
            None => held = Some(more),
        }
        bytes.extend_from_slice(&data);
    }
    Ok(match held {
        None => Bytes::new(),
        Some(permit) => Bytes::from_owner(Budgeted {
            bytes: bytes.into_boxed_slice(),
            _permit: permit,
        }),
    })
}

/// Body bytes and the share of the budget they hold, given back when the last copy of
/// the bytes is dropped.
struct Budgeted {
    bytes: Box<[u8]>,
    _permit: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}
