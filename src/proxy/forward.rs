//! Forwarding to the upstream: per-worker pooled HTTP/1.1 connections ([`super::pool`],
//! http or https), bodies streamed both ways, hop-by-hop headers removed from responses, timeouts mapped to
//! 502/504, and protocol upgrades passed through only when the upstream answers 101
//! (a 200 is never taken as an upgrade).

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Response, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use super::deny::Deny;
use super::headers;
use super::pipeline::Permit;
use super::pool::{Answer, Destination, Pool, PoolError, Upgraded};
use super::{Error, ProxyBody};
use crate::metrics::{Metrics, RouteMetrics};
use crate::rules::Limits;

/// A request body on its way upstream: streamed as the client sends it, or the JSON
/// body that was buffered to read ids from. Trailers are never forwarded: a client must
/// not be able to send headers (identity headers above all) that an upstream merges
/// after flexgate's checks.
#[derive(Debug)]
pub enum UpstreamBody {
    /// Streamed frame by frame.
    Streamed(Incoming),
    /// Already read (and checked) in full.
    Buffered(Bytes),
}

/// A request as it goes upstream.
#[derive(Debug)]
pub struct Outgoing {
    /// Method, URI (from [`Upstream::uri_for`]) and the client's headers, stripped of
    /// hop-by-hop, identity, `Host` and length headers.
    pub parts: Parts,
    /// The header lines flexgate sets (`Host`, forwarding, identity), CRLF-terminated.
    pub added: Vec<u8>,
    /// The body.
    pub body: UpstreamBody,
}

/// The upstream service and a connection pool to it.
pub struct Upstream {
    /// One idle list per worker thread: a connection is only ever driven by the thread
    /// that opened it, so forwarding never wakes another thread.
    pool: Pool,
    scheme: Scheme,
    authority: Authority,
    timeout: Duration,
    tunnel_idle: Duration,
    host: HeaderValue,
    metrics: Metrics,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Upstream({}://{})", self.scheme, self.authority)
    }
}

impl Upstream {
    /// A client for `base` (scheme and authority only), trusting the system's CAs plus
    /// `extra_ca` for https.
    pub fn new(
        base: &Uri,
        extra_ca: Option<&Path>,
        limits: &Limits,
        workers: usize,
        metrics: Metrics,
    ) -> Result<Self, Error> {
        let (connect_timeout, timeout, tunnel_idle) = (
            limits.upstream_connect_timeout,
            limits.upstream_timeout,
            limits.idle_timeout,
        );
        let (Some(scheme), Some(authority)) = (base.scheme().cloned(), base.authority().cloned())
        else {
            return Err(Error::Config(format!(
                "upstream {base} needs a scheme and a host"
            )));
        };
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if let Some(path) = extra_ca {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| Error::Config(format!("upstream_ca {}: {e}", path.display())))?
                .collect::<Result<_, _>>()
                .map_err(|e| Error::Config(format!("upstream_ca {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(Error::Config(format!(
                    "upstream_ca {} holds no certificate",
                    path.display()
                )));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| Error::Config(format!("upstream_ca {}: {e}", path.display())))?;
            }
        }
        let tls = if scheme == Scheme::HTTPS {
            let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let host = authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = ServerName::try_from(host.to_owned()).map_err(|_| {
                Error::Config(format!("upstream {base}: {host} is not a valid TLS name"))
            })?;
            Some((
                tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)),
                name,
            ))
        } else if scheme == Scheme::HTTP {
            None
        } else {
            return Err(Error::Config(format!(
                "upstream {base}: the scheme must be http or https"
            )));
        };
        let port = authority
            .port_u16()
            .unwrap_or(if tls.is_some() { 443 } else { 80 });
        let pool = Pool::new(
            Destination {
                address: format!("{}:{port}", authority.host()),
                tls,
                connect_timeout,
                idle_timeout: limits.upstream_idle,
            },
            workers,
        );
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| {
            Error::Config(format!(
                "upstream {base}: the host is not a valid header value"
            ))
        })?;
        Ok(Upstream {
            metrics,
            host,
            pool,
            scheme,
            authority,
            timeout,
            tunnel_idle,
        })
    }

    /// The upstream URI for a request, in origin form: the normalised path and the raw
    /// query (the upstream's authority goes in `Host`). The request's own path-and-query
    /// is reused when normalising changed nothing (the common case: no copy, no parse).
    pub fn uri_for(&self, original: &Uri, path: &str) -> Result<Uri, Deny> {
        let path_and_query = match original.path_and_query() {
            // Reused only when it starts with the path: an HTTP/2 `:path` of `?x=1`
            // reads as path `/` but would be written as it came, a request line the
            // upstream parses otherwise (or refuses).
            Some(pq) if pq.path() == path && pq.as_str().starts_with('/') => pq.clone(),
            _ => {
                let text = match original.query() {
                    Some(q) => format!("{path}?{q}"),
                    None => path.to_owned(),
                };
                PathAndQuery::try_from(text)
                    .map_err(|_| Deny::Ambiguous("The request URI cannot be forwarded.".into()))?
            }
        };
        Ok(Uri::from(path_and_query))
    }

    /// The `Host` header the upstream gets (its own authority), encoded once.
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// Send an allowed request upstream and stream the answer back.
    pub async fn forward(
        &self,
        permit: Permit,
        outgoing: Outgoing,
        client_upgrade: Option<(OnUpgrade, HeaderValue)>,
        route_metrics: Option<&RouteMetrics>,
        worker: usize,
    ) -> Result<Response<ProxyBody>, Deny> {
        let started = Instant::now();
        let result = tokio::time::timeout(
            self.timeout,
            self.pool
                .send(worker, &outgoing.parts, &outgoing.added, outgoing.body),
        )
        .await;
        self.metrics
            .upstream(route_metrics, permit.route(), started.elapsed());
        let answer = match result {
            Err(_) => return Err(Deny::GatewayTimeout),
            // The client's fault, not the upstream's: the request is refused and the
            // upstream connection that saw part of it was closed, never reused.
            Ok(Err(PoolError::RequestBody(e))) => {
                tracing::debug!(route = permit.route(), error = %e, "the request body broke off while being forwarded");
                return Err(Deny::BadRequestBody);
            }
            Ok(Err(e)) => {
                tracing::warn!(route = permit.route(), error = %error_chain(&e), "upstream request failed");
                return Err(
                    if matches!(e, PoolError::ConnectTimeout) || is_timeout(&e) {
                        Deny::GatewayTimeout
                    } else {
                        Deny::BadGateway
                    },
                );
            }
            Ok(Ok(answer)) => answer,
        };

        let response = match (answer, client_upgrade) {
            // Its hop-by-hop headers were dropped as the head was parsed (`h1`).
            (Answer::Response(response), _) => response.map(Either::Left),
            // A switch to anything but the protocol the client asked for (and the route
            // allows) never becomes a tunnel.
            (Answer::Switching(head, _), Some((_, asked)))
                if !head
                    .headers()
                    .get(http::header::UPGRADE)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(asked.as_bytes())) =>
            {
                tracing::warn!(
                    route = permit.route(),
                    "the upstream switched to a protocol the client did not ask for; refused"
                );
                return Err(Deny::BadGateway);
            }
            (Answer::Switching(mut head, upstream), Some((client_side, _))) => {
                let idle = self.tunnel_idle;
                tokio::spawn(async move {
                    match client_side.await {
                        Ok(client) => tunnel(TokioIo::new(client), upstream, idle).await,
                        Err(e) => tracing::debug!(error = %e, "upgrade did not complete"),
                    }
                });
                headers::strip_hop_by_hop(head.headers_mut(), true);
                head.map(|()| Either::Right(Full::new(Bytes::new())))
            }
            // 101 to a request that did not ask to switch: refuse it.
            (Answer::Switching(..), None) => return Err(Deny::BadGateway),
        };
        drop(permit);
        Ok(response)
    }
}

/// Copy bytes both ways until either side closes or nothing moves for `idle`; first
/// the bytes the upstream sent right behind its 101.
async fn tunnel<A>(mut a: A, upstream: Upgraded, idle: Duration)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Upgraded { io: mut b, early } = upstream;
    if !early.is_empty() && a.write_all(&early).await.is_err() {
        return;
    }
    let (mut from_a, mut from_b) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        let moved = tokio::select! {
            n = a.read(&mut from_a) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => b.write_all(&from_a[..n]).await.is_ok(),
            },
            n = b.read(&mut from_b) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => a.write_all(&from_b[..n]).await.is_ok(),
            },
            _ = tokio::time::sleep(idle) => {
                tracing::debug!(?idle, "closing an idle tunnel");
                break;
            }
        };
        if !moved {
            break;
        }
    }
    let _ = a.shutdown().await;
    let _ = b.shutdown().await;
}

fn is_timeout(e: &PoolError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        source = s.source();
    }
    false
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
