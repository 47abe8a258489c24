//! Accepting connections: the HTTPS listener (rustls, TLS 1.2+, HTTP/1.1 and HTTP/2 by
//! ALPN), the plain-HTTP listener (308 to HTTPS, or proxying when TLS ends in front of
//! flexgate), and the admin listener. Each connection holds a permit of its listener's
//! [`ConnectionLimit`] (in all and per client, shared by all workers; a connection over
//! a limit is closed at once), applies the head-read timeout (slowloris) and the header-size
//! limit, and on shutdown stops accepting and lets in-flight requests finish until the
//! grace period ends.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::conn::{self, Protocol};
use super::conn_limit::ConnectionLimit;
use super::deny::json_response;
use super::host::split_authority;
use super::pipeline::ConnInfo;
use super::{Error, Gateway, ProxyBody, admin, pipeline};
use crate::rules::AllowedHosts;

/// Build the rustls server config from PEM files: TLS 1.2 and 1.3 only, ALPN h2 and
/// http/1.1.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, Error> {
    let (certs, key) = load_identity(cert, key)?;
    let mut config = server_builder()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The decision listener's TLS config under `decision_client_ca`: the same certificate
/// as the HTTPS listener, and a handshake that fails unless the client presents a
/// certificate chaining to one of `client_ca`'s. Mutual TLS is how an ingress outside
/// loopback proves it is the ingress: the listener trusts the headers that describe a
/// request, so anyone else who reached it could have any request allowed. HTTP/1.1
/// only, as every ingress asks.
pub fn decision_tls_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<Arc<ServerConfig>, Error> {
    let (certs, key) = load_identity(cert, key)?;
    let fail = |e: &dyn std::fmt::Display| Error::Tls(format!("{}: {e}", client_ca.display()));
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(client_ca).map_err(|e| fail(&e))? {
        roots.add(ca.map_err(|e| fail(&e))?).map_err(|e| fail(&e))?;
    }
    if roots.is_empty() {
        return Err(fail(&"no CA certificate found"));
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| fail(&e))?;
    let mut config = server_builder()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The certificate chain and private key of a listener, from PEM files.
fn load_identity(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
    let certs = load_certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::Tls(format!("{}: {e}", key.display())))?;
    Ok((certs, key))
}

/// The certificates of a PEM file, at least one.
fn load_certificates(cert: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| Error::Tls(format!("{}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "{}: no certificate found",
            cert.display()
        )));
    }
    Ok(certs)
}

/// TLS 1.2 and 1.3 with ring, before the choice of client authentication.
fn server_builder() -> Result<rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier>, Error> {
    ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Tls(e.to_string()))
}

/// The TLS handshake of a new connection, within the head-read deadline: a client that
/// connects and says nothing holds a connection slot no longer than one that sends a
/// request head slowly. A failed or late handshake is logged at debug and ends the
/// connection.
async fn handshake(
    acceptor: &TlsAcceptor,
    stream: tokio::net::TcpStream,
    deadline: std::time::Duration,
    peer: std::net::SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    match tokio::time::timeout(deadline, Box::pin(acceptor.accept(stream))).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// What a listener does with each request.
#[derive(Clone)]
pub enum Role {
    /// The proxy pipeline, over TLS.
    Https(TlsAcceptor),
    /// The proxy pipeline over plain HTTP (TLS ends in front of flexgate).
    PlainProxy,
    /// 308 to HTTPS, to the hosts [`RedirectTarget`] accepts.
    Redirect(Arc<RedirectTarget>),
    /// Metrics and health.
    Admin,
    /// Decisions for an ingress (decision mode), over mutual TLS when an acceptor is
    /// given (`decision_client_ca`), else plain HTTP.
    Decision(Option<TlsAcceptor>),
}

/// Accept connections until `shutdown` flips, then drain for the grace period.
pub async fn run(
    listener: TcpListener,
    role: Role,
    gw: Arc<Gateway>,
    mut shutdown: watch::Receiver<bool>,
    permits: Arc<ConnectionLimit>,
    worker: usize,
) {
    let limits = Arc::new(gw.limits().clone());
    // Every connection task holds a clone of `drain`; when the last one is gone, the
    // receiver learns that all connections have finished.
    let (drain, mut drained) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        // Over a limit the new connection is closed at once: shedding load keeps the
        // connections already served fast, and a client retries elsewhere.
        let permit = match permits.admit(peer.ip()) {
            Ok(permit) => permit,
            Err(refused) => {
                gw.metrics.connection_refused(refused);
                tracing::debug!(%peer, ?refused, "connection limit reached; closing the new connection");
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let gw = Arc::clone(&gw);
        let role = role.clone();
        let limits = Arc::clone(&limits);
        let signal = shutdown.clone();
        let drain = drain.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _drain = drain;
            match role {
                Role::Https(acceptor) => {
                    // Each role's state is boxed, so a connection's task holds only
                    // what its own role needs (a plain connection no TLS state).
                    let Some(tls) =
                        handshake(&acceptor, stream, limits.header_read_timeout, peer).await
                    else {
                        return;
                    };
                    // ALPN decides, never the first bytes: a client that agreed on
                    // http/1.1 and sends the HTTP/2 preface (or the reverse) gets a
                    // protocol error from the codec ALPN chose.
                    let protocol = if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                        Protocol::Http2
                    } else {
                        Protocol::Http1
                    };
                    let conn = ConnInfo::new(peer, true, worker);
                    Box::pin(conn::serve(
                        protocol,
                        tls,
                        &limits,
                        signal,
                        service(gw, conn, Served::Proxy),
                    ))
                    .await;
                }
                Role::PlainProxy => {
                    let conn = ConnInfo::new(peer, false, worker);
                    Box::pin(conn::serve(
                        Protocol::Http1,
                        stream,
                        &limits,
                        signal,
                        service(gw, conn, Served::Proxy),
                    ))
                    .await;
                }
                Role::Redirect(target) => {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (gw, target) = (Arc::clone(&gw), Arc::clone(&target));
                        async move { Ok::<_, Infallible>(redirect(&gw, &req, &target)) }
                    });
                    conn::serve(Protocol::Http1, stream, &limits, signal, service).await;
                }
                Role::Decision(None) => {
                    let service = service(gw, ConnInfo::new(peer, false, worker), Served::Decision);
                    Box::pin(conn::serve(
                        Protocol::Http1,
                        stream,
                        &limits,
                        signal,
                        service,
                    ))
                    .await;
                }
                Role::Decision(Some(acceptor)) => {
                    // The handshake is the check: rustls refuses a client without a
                    // certificate from decision_client_ca before a byte of HTTP.
                    let Some(tls) =
                        handshake(&acceptor, stream, limits.header_read_timeout, peer).await
                    else {
                        return;
                    };
                    let service = service(gw, ConnInfo::new(peer, true, worker), Served::Decision);
                    Box::pin(conn::serve(Protocol::Http1, tls, &limits, signal, service)).await;
                }
                Role::Admin => {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let gw = Arc::clone(&gw);
                        async move { Ok::<_, Infallible>(admin::handle(&gw, req).await) }
                    });
                    conn::serve(Protocol::Http1, stream, &limits, signal, service).await;
                }
            }
        });
    }
    drop(listener);
    drop(drain);
    let grace = limits.shutdown_grace;
    if tokio::time::timeout(grace, drained.recv()).await.is_err() {
        tracing::warn!(
            ?grace,
            "shutdown grace period ended with requests still in flight"
        );
    }
}

/// What a connection's requests go to.
#[derive(Clone, Copy)]
enum Served {
    /// The proxy pipeline.
    Proxy,
    /// The decision listener's answers.
    Decision,
}

fn service(
    gw: Arc<Gateway>,
    conn: ConnInfo,
    served: Served,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<ProxyBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send,
> + Clone
+ Send
+ Sync {
    let conn = Arc::new(conn);
    service_fn(move |req: Request<Incoming>| {
        let gw = Arc::clone(&gw);
        let conn = Arc::clone(&conn);
        // Boxed: hyper keeps room for one request future in every connection, idle or
        // not, and the pipeline's is several KiB; boxed, an idle keep-alive
        // connection holds a pointer and the allocation lives only while a request does.
        Box::pin(async move {
            Ok::<_, Infallible>(match served {
                Served::Proxy => pipeline::handle(&gw, &conn, req).await,
                Served::Decision => super::decision::handle(&gw, &conn, req).await,
            })
        })
    })
}

/// Where the plain-HTTP listener redirects to: the HTTPS listener's port, and the
/// certificate whose names stand in for `allowed_hosts` when that list is empty.
#[derive(Debug)]
pub struct RedirectTarget {
    /// The HTTPS listener's port.
    port: u16,
    /// The HTTPS listener's certificate (its first), when `allowed_hosts` is empty.
    certificate: Option<CertificateDer<'static>>,
}

impl RedirectTarget {
    /// A target for `port`; with no `allowed_hosts`, the names of `cert` (PEM) decide.
    pub fn new(port: u16, allowed: &AllowedHosts, cert: &Path) -> Result<RedirectTarget, Error> {
        if !allowed.is_any() {
            return Ok(RedirectTarget {
                port,
                certificate: None,
            });
        }
        let der = load_certificates(cert)?.swap_remove(0);
        if let Err(e) = rustls::server::ParsedCertificate::try_from(&der) {
            return Err(Error::Tls(format!(
                "{}: its names cannot be read ({e}), and with allowed_hosts empty the HTTP redirect goes only to them; list allowed_hosts in [server]",
                cert.display()
            )));
        }
        Ok(RedirectTarget {
            port,
            certificate: Some(der),
        })
    }

    /// Whether a redirect may name `host` (from `Host`, port removed).
    fn accepts(&self, allowed: &AllowedHosts, host: &str) -> bool {
        let Some(der) = &self.certificate else {
            return allowed.allows(host);
        };
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let Ok(name) = ServerName::try_from(bare) else {
            return false;
        };
        rustls::server::ParsedCertificate::try_from(der)
            .is_ok_and(|cert| rustls::client::verify_server_name(&cert, &name).is_ok())
    }
}

/// 308 to the same path and query on HTTPS.
/// Only a host in `allowed_hosts` is redirected to, or with no list, a name the HTTPS
/// certificate is valid for (any other would fail TLS anyway): a forged `Host` must
/// not turn the redirect into a link to somewhere else, which a shared cache could
/// then serve to everyone.
fn redirect(gw: &Gateway, req: &Request<Incoming>, target: &RedirectTarget) -> Response<ProxyBody> {
    let allowed = &gw.server().allowed_hosts;
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(value), None) => split_authority(value.as_bytes())
            .map(|(host, _)| host)
            .filter(|host| target.accepts(allowed, host)),
        _ => None,
    };
    let https_port = target.port;
    let Some(host) = host else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"message": "A valid Host header is required.", "status": 400}),
        );
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = if https_port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{https_port}{path}")
    };
    let mut response = json_response(
        StatusCode::PERMANENT_REDIRECT,
        &serde_json::json!({"message": "Use HTTPS.", "location": location, "status": 308}),
    );
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// Bind `count` listening sockets on one address with `SO_REUSEPORT`, so each worker
/// thread accepts on its own socket and the kernel spreads connections between them.
/// With port 0 the first socket picks the port and the others share it. The sockets are
/// returned unregistered, to be adopted by each worker's runtime.
pub fn bind_shared(
    addr: SocketAddr,
    count: usize,
    what: &str,
) -> Result<(SocketAddr, Vec<std::net::TcpListener>), Error> {
    let fail = |e: std::io::Error| Error::Bind(format!("{what} listener on {addr}: {e}"));
    let mut bound = addr;
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let socket = if bound.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .map_err(fail)?;
        socket.set_reuseaddr(true).map_err(fail)?;
        #[cfg(unix)]
        socket.set_reuseport(true).map_err(fail)?;
        socket.bind(bound).map_err(fail)?;
        let listener = socket.listen(1024).map_err(fail)?;
        bound = listener.local_addr().map_err(fail)?;
        sockets.push(listener.into_std().map_err(fail)?);
    }
    Ok((bound, sockets))
}

/// Bind a TCP listener on the current runtime, naming the address in the error.
pub async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Bind(format!("{what} listener on {addr}: {e}")))
}
