//! Request bodies flexgate reads whole before it forwards anything: a login's, a
//! route's whose rules read the body, the decision listener's. The client decides how
//! fast such a body arrives and, before anyone is authenticated, how many of them it
//! sends at once; so every read has a deadline (`body_read_timeout_ms`: 408 and the
//! connection closed, not a slot held for ever) and every buffered byte comes out of
//! one process-wide budget (`max_buffered_body_bytes`: 503 once it is spent), which
//! the bytes hold until the request is done with them. Bodies that are only streamed
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
/// One per process: the budget is shared by every listener and worker.
#[derive(Debug)]
pub struct BodyReader {
    timeout: Duration,
    budget: Arc<Semaphore>,
}

impl BodyReader {
    /// A reader with `limits`' deadline and a budget of `max_buffered_body_bytes`.
    pub fn new(limits: &Limits) -> BodyReader {
        let budget = limits.max_buffered_body_bytes.min(Semaphore::MAX_PERMITS);
        BodyReader {
            timeout: limits.body_read_timeout,
            budget: Arc::new(Semaphore::new(budget)),
        }
    }

    /// The whole body, at most `limit` bytes: 413 beyond (before a byte is read when
    /// `Content-Length` says so), 408 when it has not all arrived within the deadline,
    /// 503 when the process already holds `max_buffered_body_bytes` of bodies, 400 when
    /// it breaks off. Trailers are dropped, as the upstream client drops them.
    pub async fn read(
        &self,
        headers: &HeaderMap,
        body: Incoming,
        limit: usize,
    ) -> Result<Bytes, Deny> {
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(Deny::BodyTooLarge);
        }
        tokio::time::timeout(self.timeout, self.collect(body, limit))
            .await
            .unwrap_or(Err(Deny::BodyTimeout))
    }

    async fn collect(&self, mut body: Incoming, limit: usize) -> Result<Bytes, Deny> {
        let mut held = Held::default();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| Deny::BadRequestBody)?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            if held.len() + data.len() > limit {
                return Err(Deny::BodyTooLarge);
            }
            // `limit` is at most 64 MiB (the config's bound), so a frame's length fits.
            let n = u32::try_from(data.len()).map_err(|_| Deny::BodyTooLarge)?;
            let more = Arc::clone(&self.budget)
                .try_acquire_many_owned(n)
                .map_err(|_| Deny::Unavailable("body_budget_spent"))?;
            held.push(data, more);
        }
        Ok(held.into_bytes())
    }

    /// Bytes of the budget not held by a body now (for tests and the admin listener).
    pub fn budget_left(&self) -> usize {
        self.budget.available_permits()
    }
}

/// A body being read: its frames (one frame, the common case, is kept as it came) and
/// the budget they hold.
#[derive(Default)]
struct Held {
    first: Bytes,
    joined: Vec<u8>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Held {
    fn len(&self) -> usize {
        if self.joined.is_empty() {
            self.first.len()
        } else {
            self.joined.len()
        }
    }

    fn push(&mut self, data: Bytes, permit: OwnedSemaphorePermit) {
        match &mut self.permit {
            Some(p) => p.merge(permit),
            None => self.permit = Some(permit),
        }
        if self.first.is_empty() && self.joined.is_empty() {
            self.first = data;
            return;
        }
        if self.joined.is_empty() {
            self.joined
                .extend_from_slice(&std::mem::take(&mut self.first));
        }
        self.joined.extend_from_slice(&data);
    }

    /// The bytes, which give their budget back when the last copy of them is dropped.
    fn into_bytes(self) -> Bytes {
        let Some(permit) = self.permit else {
            return Bytes::new();
        };
        let bytes = if self.joined.is_empty() {
            self.first
        } else {
            Bytes::from(self.joined)
        };
        Bytes::from_owner(Budgeted {
            bytes,
            _permit: permit,
        })
    }
}

/// Body bytes and the share of the budget they hold.
struct Budgeted {
    bytes: Bytes,
    _permit: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}
