//! The admin listener: `/healthz` (the process answers), `/readyz` (rules loaded and the
//! database reachable within a second; 503 with a JSON reason otherwise) and `/metrics`
//! (Prometheus text format). Kept off the public listeners.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use serde_json::json;

use super::deny::json_response;
use super::{Gateway, ProxyBody};

/// How long `/readyz` waits for the database.
pub const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// Serve one admin request.
pub async fn handle(gw: &Gateway, req: Request<Incoming>) -> Response<ProxyBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"message": "Use GET.", "status": 405}),
        );
    }
    match req.uri().path() {
        "/healthz" => json_response(StatusCode::OK, &json!({"status": "ok"})),
        "/readyz" => ready(gw).await,
        "/metrics" => {
            gw.update_gauges().await;
            let mut response =
                Response::new(Either::Right(Full::new(Bytes::from(gw.metrics.render()))));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"message": "Not found.", "status": 404}),
        ),
    }
}

/// The database check behind `/readyz`, one at a time: a caller takes the answer of a
/// ping that started after it asked, or pings itself. However often `/readyz` is
/// called, it holds at most one of the pool's connections, so a flood of probes cannot
/// starve the owner lookups of the request path, and no answer predates its question.
#[derive(Debug, Default)]
pub struct ReadyCheck {
    /// Pings started so far.
    started: std::sync::atomic::AtomicU64,
    /// The latest ping's number and answer.
    last: tokio::sync::Mutex<Option<(u64, bool)>>,
}

impl ReadyCheck {
    /// Whether the database answers within [`READY_TIMEOUT`].
    async fn database(&self, gw: &Gateway) -> bool {
        self.check(|| async {
            matches!(
                tokio::time::timeout(READY_TIMEOUT, gw.store().ping()).await,
                Ok(Ok(()))
            )
        })
        .await
    }

    /// `ping`'s answer, from a run that started after this call.
    async fn check<F, Fut>(&self, ping: F) -> bool
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        use std::sync::atomic::Ordering;
        let asked = self.started.load(Ordering::Acquire);
        let mut last = self.last.lock().await;
        if let Some((number, reachable)) = *last
            && number > asked
        {
            return reachable;
        }
        let number = self.started.fetch_add(1, Ordering::AcqRel) + 1;
        let reachable = ping().await;
        *last = Some((number, reachable));
        reachable
    }
}

async fn ready(gw: &Gateway) -> Response<ProxyBody> {
    let rules = gw.rules();
    let database = gw.ready_check.database(gw).await;
    gw.metrics.ready("database", database);
    gw.metrics.ready("rules", true);
    if database {
        json_response(
            StatusCode::OK,
            &json!({"status": "ready", "routes": rules.routes.len()}),
        )
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "not ready", "reason": "the database is unreachable"}),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_ready_probes_shares_pings_and_no_answer_predates_its_question() {
        let check = Arc::new(ReadyCheck::default());
        let pings = Arc::new(AtomicUsize::new(0));
        let up = Arc::new(AtomicBool::new(true));
        let probe = |check: Arc<ReadyCheck>, pings: Arc<AtomicUsize>, up: Arc<AtomicBool>| async move {
            check
                .check(|| async {
                    pings.fetch_add(1, Ordering::SeqCst);
                    let answer = up.load(Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    answer
                })
                .await
        };
        let flood: Vec<_> = (0..200)
            .map(|_| {
                tokio::spawn(probe(
                    Arc::clone(&check),
                    Arc::clone(&pings),
                    Arc::clone(&up),
                ))
            })
            .collect();
        for task in flood {
            assert!(task.await.unwrap());
        }
        // The first ping, then one for everyone who asked while it ran.
        assert_eq!(pings.load(Ordering::SeqCst), 2);
        // The database goes away: the next question gets a new ping, not the old answer.
        up.store(false, Ordering::SeqCst);
        assert!(!probe(Arc::clone(&check), Arc::clone(&pings), Arc::clone(&up)).await);
        assert_eq!(pings.load(Ordering::SeqCst), 3);
    }
}
