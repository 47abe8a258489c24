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

async fn ready(gw: &Gateway) -> Response<ProxyBody> {
    let rules = gw.rules();
    let database = matches!(
        tokio::time::timeout(READY_TIMEOUT, gw.store().ping()).await,
        Ok(Ok(()))
    );
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
