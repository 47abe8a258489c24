//! Network parts of the harness: a test CA and server certificate, a recording upstream
//! with a few misbehaviours on request, an in-process gateway built from a rule file, and
//! HTTPS clients (HTTP/1.1, HTTP/2, and raw bytes for hostile requests).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use flexgate::proxy::{self, Gateway, Running};
use flexgate::settings::{Secret, Settings};
use flexgate::store::Store;

use super::TestDb;

pub const SECRET_KEY: &str = "test-secret-key-0123456789abcdef0123456789";
pub const UPSTREAM_SECRET: &str = "test-upstream-secret-0123456789abcdef012345";

// === TLS ===

/// A CA and a server certificate for localhost/127.0.0.1 signed by it.
pub struct Tls {
    /// The CA certificate (PEM), for `upstream_ca`.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub roots: rustls::RootCertStore,
    pub client: Arc<rustls::ClientConfig>,
}

/// A TLS server side with the test certificate, for upstreams that speak HTTPS.
pub fn tls_acceptor(tls: &Tls) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(&tls.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&tls.key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

pub fn test_tls(dir: &Path) -> Tls {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    // Distinct subject names: rcgen gives every certificate the same default one, and
    // OpenSSL (nginx, Caddy's peers) then takes the leaf for self-signed.
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "flexgate test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let mut server_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    server_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    let cert = dir.join("server.pem");
    let key = dir.join("server.key");
    std::fs::write(&cert, server_cert.pem()).unwrap();
    std::fs::write(&key, server_key.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots.clone())
    .with_no_client_auth();
    Tls {
        ca,
        cert,
        key,
        roots,
        client: Arc::new(client),
    }
}

// === upstream ===

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Trailer fields after a chunked body, if any came.
    pub trailers: HeaderMap,
}

/// A recording upstream. Behaviour by path: `/slow/<ms>` waits, `/status/<code>`
/// answers that code, `/reset` drops the connection, `/count` streams the body and
/// answers its size, `/ws` switches protocols and echoes, `/big/<bytes>` streams a
/// large response; anything else answers 200 with a small JSON body.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start() -> Upstream {
        Upstream::serve(None).await
    }

    /// The same upstream behind HTTPS with `tls`'s certificate (localhost, 127.0.0.1).
    pub async fn start_tls(tls: &Tls) -> Upstream {
        Upstream::serve(Some(tls_acceptor(tls))).await
    }

    async fn serve(tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (s, c) = (Arc::clone(&seen), Arc::clone(&connections));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let seen = Arc::clone(&s);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| upstream_answer(req, Arc::clone(&seen)));
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        None => {
                            http.serve_connection(TokioIo::new(stream), service)
                                .with_upgrades()
                                .await
                        }
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(stream) => {
                                http.serve_connection(TokioIo::new(stream), service)
                                    .with_upgrades()
                                    .await
                            }
                            Err(_) => return,
                        },
                    };
                });
            }
        });
        Upstream {
            addr,
            seen,
            connections,
            task,
        }
    }

    /// Everything received so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests arrived.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The last request received.
    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw no request")
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Start counting connections from zero again.
    pub fn reset_connections(&self) {
        self.connections.store(0, Ordering::SeqCst);
    }
}

type UpstreamBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> UpstreamBody {
    Full::new(bytes.into()).boxed()
}

async fn upstream_answer(
    mut req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<UpstreamBody>, std::io::Error> {
    let path = req.uri().path().to_owned();
    let record = |body: Bytes, req: &Request<Incoming>| Seen {
        method: req.method().clone(),
        path: req.uri().path().to_owned(),
        query: req.uri().query().map(str::to_owned),
        headers: req.headers().clone(),
        body,
        trailers: HeaderMap::new(),
    };
    if path == "/ws" {
        seen.lock().unwrap().push(record(Bytes::new(), &req));
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(io) = upgrade.await {
                let mut io = TokioIo::new(io);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        return Ok(Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .body(full(Bytes::new()))
            .unwrap());
    }
    if path == "/count" {
        // Recorded when the head arrives, before the body: tests see streaming start.
        seen.lock().unwrap().push(record(Bytes::new(), &req));
        let mut body = req.into_body();
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.map(|f| f.into_data()) {
                total += data.map(|d| d.len()).unwrap_or(0);
            }
        }
        return Ok(Response::new(full(format!("{{\"bytes\":{total}}}"))));
    }
    let (parts, body) = req.into_parts();
    let (body, trailers) = match body.collect().await {
        Ok(collected) => {
            let trailers = collected.trailers().cloned().unwrap_or_default();
            (collected.to_bytes(), trailers)
        }
        Err(_) => Default::default(),
    };
    seen.lock().unwrap().push(Seen {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers.clone(),
        body,
        trailers,
    });
    if let Some(ms) = path
        .strip_prefix("/slow/")
        .and_then(|m| m.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(code) = path
        .strip_prefix("/status/")
        .and_then(|c| c.parse::<u16>().ok())
    {
        return Ok(Response::builder().status(code).body(full("{}")).unwrap());
    }
    if path == "/reset" {
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset on request",
        ));
    }
    if let Some(n) = path
        .strip_prefix("/big/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        return Ok(Response::new(repeat_body(n)));
    }
    Ok(Response::builder()
        .header("content-type", "application/json")
        .header("connection", "keep-alive")
        .header("x-upstream", "yes")
        .body(full(format!("{{\"ok\":true,\"path\":{path:?}}}")))
        .unwrap())
}

/// A body of `left` bytes produced in 64 KiB chunks, never held whole.
struct Repeat {
    left: usize,
    chunk: Bytes,
}

impl hyper::body::Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.chunk.len().min(self.left);
        self.left -= n;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(self.chunk.slice(..n)))))
    }
}

fn repeat_body(total: usize) -> UpstreamBody {
    Repeat {
        left: total,
        chunk: Bytes::from(vec![b'x'; 64 * 1024]),
    }
    .boxed()
}

// === gateway ===

/// A gateway running in this process against a test database.
pub struct TestGateway {
    pub running: Option<Running>,
    pub https: SocketAddr,
    pub http: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub decision: Option<SocketAddr>,
    pub rules_path: PathBuf,
    pub store: Store,
    pub settings: Settings,
    pub tls: Tls,
    pub dir: tempfile::TempDir,
    client: Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >,
}

/// How to build a [`TestGateway`].
pub struct GatewayBuilder<'a> {
    db: &'a TestDb,
    upstream: String,
    rules: String,
    server_extra: String,
    seed_demo: bool,
    env: Vec<(String, String)>,
    gateway_url: Option<String>,
    state_url: Option<String>,
}

impl<'a> GatewayBuilder<'a> {
    /// Point at another upstream address (e.g. a closed port).
    pub fn upstream_addr(mut self, addr: SocketAddr) -> Self {
        self.upstream = format!("http://{addr}");
        self
    }

    /// Point at an upstream URL (e.g. an https one).
    pub fn upstream_url(mut self, url: &str) -> Self {
        self.upstream = url.to_owned();
        self
    }

    pub fn new(db: &'a TestDb, upstream: &Upstream) -> Self {
        GatewayBuilder {
            db,
            upstream: format!("http://{}", upstream.addr),
            rules: String::new(),
            server_extra: String::new(),
            seed_demo: false,
            env: Vec::new(),
            gateway_url: None,
            state_url: None,
        }
    }

    /// The shipped demo rules and the demo data (accounts, users of every role, assets,
    /// sensors; password `flexgate-demo`).
    pub fn demo(mut self) -> Self {
        self.rules =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml"))
                .unwrap();
        self.seed_demo = true;
        self
    }

    /// Rules (without [server]).
    pub fn rules(mut self, rules: &str) -> Self {
        self.rules = rules.to_owned();
        self
    }

    /// Extra lines for the [server] section, e.g. `http_mode = "proxy"`.
    pub fn server(mut self, lines: &str) -> Self {
        self.server_extra.push_str(lines);
        self.server_extra.push('\n');
        self
    }

    /// Let the gateway reach the database at another URL (a [`FaultyProxy`] in front
    /// of it); seeding still uses the test database directly.
    pub fn database_url(mut self, url: &str) -> Self {
        self.gateway_url = Some(url.to_owned());
        self
    }

    /// Share state (logouts, failed logins) through this database, as FLEXGATE_STATE_URL.
    pub fn state(mut self, url: &str) -> Self {
        self.state_url = Some(url.to_owned());
        self
    }

    /// An extra environment variable for the settings.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub async fn start(self) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        let tls = test_tls(dir.path());
        let mut vars = vec![
            ("DATABASE_URL".to_owned(), self.db.url.clone()),
            ("SECRET_KEY".to_owned(), SECRET_KEY.to_owned()),
            (
                "FLEXGATE_UPSTREAM_SECRET".to_owned(),
                UPSTREAM_SECRET.to_owned(),
            ),
            ("FLEXGATE_BCRYPT_COST".to_owned(), "4".to_owned()),
        ];
        vars.extend(self.env);
        let settings = Settings::from_vars(vars).unwrap();
        let seeding = Store::connect(&self.db.url, &Default::default())
            .await
            .unwrap();
        if !self.db.external {
            seeding.migrate().await.unwrap();
        }
        if self.seed_demo {
            flexgate::demo::seed(&seeding, 4).await.unwrap();
        }
        let store = match &self.gateway_url {
            Some(url) => Store::connect(url, &Default::default()).await.unwrap(),
            None => seeding,
        };
        let server = format!(
            "[server]\nhttps = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
             tls_cert = {:?}\ntls_key = {:?}\nupstream = \"{}\"\n{}\n",
            tls.cert.display().to_string(),
            tls.key.display().to_string(),
            self.upstream,
            self.server_extra
        );
        let rules_path = dir.path().join("rules.toml");
        std::fs::write(&rules_path, format!("{server}{}", self.rules)).unwrap();
        let config = flexgate::rules::load(&rules_path)
            .unwrap_or_else(|d| panic!("test rules do not compile:\n{d}"));
        let gateway = match &self.state_url {
            None => Gateway::new(&config, store.clone(), &settings).unwrap(),
            Some(url) => {
                let state = Store::connect(url, &Default::default()).await.unwrap();
                state.migrate().await.unwrap();
                Gateway::with_state(&config, store.clone(), Some(state), &settings).unwrap()
            }
        };
        let mut running = proxy::start(Arc::clone(&gateway)).await.unwrap();
        running.attach(tokio::spawn(proxy::background::follow_changes(
            Arc::clone(&gateway),
            Duration::from_millis(200),
            running.shutdown_signal(),
        )));
        running.attach(tokio::spawn(proxy::background::watch_rules(
            Arc::clone(&gateway),
            rules_path.clone(),
            config.server.rules_poll.map(|_| Duration::from_millis(200)),
            running.shutdown_signal(),
        )));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls.client).clone())
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        TestGateway {
            https: running.https.unwrap(),
            http: running.http,
            admin: running.admin.unwrap(),
            decision: running.decision,
            running: Some(running),
            rules_path,
            store,
            settings,
            tls,
            dir,
            client,
        }
    }
}

/// A response, fully read.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl TestGateway {
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.running.as_ref().unwrap().gateway
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.https.port())
    }

    /// Send a request to the HTTPS listener.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        let mut builder = Request::builder().method(method).uri(self.url(path));
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let req = builder
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let response = self
            .client
            .request(req)
            .await
            .expect("request to flexgate failed");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }

    /// GET with an optional token.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        match token {
            Some(t) => self.send("GET", path, &[("authorization", t)], "").await,
            None => self.send("GET", path, &[], "").await,
        }
    }

    /// A request with a token and an optional JSON body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        json: Option<&serde_json::Value>,
    ) -> Answer {
        match json {
            Some(j) => {
                self.send(
                    method,
                    path,
                    &[
                        ("authorization", token),
                        ("content-type", "application/json"),
                    ],
                    &j.to_string(),
                )
                .await
            }
            None => {
                self.send(method, path, &[("authorization", token)], "")
                    .await
            }
        }
    }

    /// Log in through the token endpoint and return the token.
    pub async fn login(&self, email: &str, password: &str) -> String {
        let answer = self
            .send(
                "POST",
                "/api/requestAuthToken",
                &[("content-type", "application/json")],
                &serde_json::json!({"email": email, "password": password}).to_string(),
            )
            .await;
        assert_eq!(
            answer.status,
            200,
            "login of {email} failed: {}",
            answer.text()
        );
        answer.json()["auth_token"].as_str().unwrap().to_owned()
    }

    /// A token for a demo user (password `flexgate-demo`).
    pub async fn demo_token(&self, email: &str) -> String {
        self.login(email, flexgate::demo::DEMO_PASSWORD).await
    }

    /// The admin listener's /metrics text.
    pub async fn metrics(&self) -> String {
        plain_get(self.admin, "/metrics").await.1
    }

    /// Raw bytes over TLS; returns whatever the server answered before closing (or
    /// within two seconds).
    pub async fn raw(&self, bytes: &[u8]) -> String {
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls.client));
        let tcp = TcpStream::connect(self.https).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        // The server may answer (413, 431) and close before everything is written.
        let _ = tls.write_all(bytes).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), tls.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Rewrite the rule file (the watcher reloads it).
    pub fn rewrite_rules(&self, rules: &str) {
        let current = std::fs::read_to_string(&self.rules_path).unwrap();
        let server_end = current.find("\n\n").map_or(0, |i| i + 2);
        std::fs::write(
            &self.rules_path,
            format!("{}{rules}", &current[..server_end]),
        )
        .unwrap();
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}

/// A request body fed from a channel, to prove bodies stream.
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

impl TestGateway {
    /// Open an HTTP/1.1 connection over TLS for requests with any body type.
    pub async fn connect<B>(&self) -> hyper::client::conn::http1::SendRequest<B>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls.client));
        let tcp = TcpStream::connect(self.https).await.unwrap();
        let tls = connector
            .connect(
                rustls_pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn.with_upgrades());
        sender
    }
}

/// GET over plain HTTP/1.1 (admin and redirect listeners): (status, body, headers).
pub async fn plain_get(addr: SocketAddr, path: &str) -> (u16, String, HeaderMap) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = client
        .request(
            Request::get(format!("http://{addr}{path}"))
                .header("host", format!("localhost:{}", addr.port()))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status.as_u16(),
        String::from_utf8_lossy(&body).into_owned(),
        parts.headers,
    )
}

/// Poll `check` until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of a metric line (exact name with labels), 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Independently recompute the identity signature (the README's recipe).
pub fn expected_signature(headers: &HeaderMap, method: &str, path: &str) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let h = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let canonical = [
        "v1".to_owned(),
        h("x-flexgate-timestamp"),
        method.to_owned(),
        path.to_owned(),
        h("x-flexgate-user-id"),
        h("x-flexgate-user-email"),
        h("x-flexgate-account-id"),
        h("x-flexgate-user-roles"),
        h("x-flexgate-account-roles"),
    ]
    .join("\n");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(UPSTREAM_SECRET.as_bytes()).unwrap();
    mac.update(canonical.as_bytes());
    let digest = mac.finalize().into_bytes();
    format!(
        "v1={}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

pub fn secret(text: &str) -> Secret {
    Secret::new(text.as_bytes().to_vec())
}

pub fn header(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).unwrap()
}

// === faults ===

/// A TCP forwarder between flexgate and a dependency (PostgreSQL) that a test can cut,
/// slow down and restore, to play "database stopped", "unreachable" and "slow".
pub struct FaultyProxy {
    pub addr: SocketAddr,
    state: Arc<Mutex<FaultState>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct FaultState {
    down: bool,
    delay: Duration,
    pipes: Vec<tokio::task::AbortHandle>,
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.task.abort();
        for pipe in self.state.lock().unwrap().pipes.drain(..) {
            pipe.abort();
        }
    }
}

impl FaultyProxy {
    pub async fn start(target: SocketAddr) -> FaultyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(FaultState::default()));
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if shared.lock().unwrap().down {
                    drop(client);
                    continue;
                }
                let state = Arc::clone(&shared);
                let pipe = tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = cr.read(&mut buf).await {
                            if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    let down = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = sr.read(&mut buf).await {
                            let delay = state.lock().unwrap().delay;
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            if n == 0 || cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    tokio::join!(up, down);
                });
                shared.lock().unwrap().pipes.push(pipe.abort_handle());
            }
        });
        FaultyProxy { addr, state, task }
    }

    /// Stop: existing connections are dropped, new ones refused at once.
    pub fn cut(&self) {
        let mut state = self.state.lock().unwrap();
        state.down = true;
        for pipe in state.pipes.drain(..) {
            pipe.abort();
        }
    }

    /// Answers arrive `delay` late.
    pub fn slow(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    /// Back to normal.
    pub fn restore(&self) {
        let mut state = self.state.lock().unwrap();
        state.down = false;
        state.delay = Duration::ZERO;
    }
}

/// A PostgreSQL test database reached through a [`FaultyProxy`]: returns the database,
/// the proxy and the URL flexgate should use.
pub async fn postgres_behind_proxy() -> Option<(TestDb, FaultyProxy, String)> {
    let db = TestDb::postgres()?;
    let url: url_lite::Url = url_lite::Url::parse(&db.url);
    let target: SocketAddr = format!("{}:{}", url.host, url.port).parse().unwrap();
    let proxy = FaultyProxy::start(target).await;
    let via = url.with_host_port("127.0.0.1", proxy.addr.port());
    Some((db, proxy, via))
}

/// Just enough URL handling for `postgres://user@host:port/db?query`.
mod url_lite {
    pub struct Url {
        pub scheme_user: String,
        pub host: String,
        pub port: u16,
        pub rest: String,
    }
    impl Url {
        pub fn parse(url: &str) -> Url {
            let (scheme, after) = url.split_once("://").unwrap();
            let (authority, rest) = after.split_once('/').map_or((after, ""), |(a, r)| (a, r));
            let (user, hostport) = authority
                .rsplit_once('@')
                .map_or(("", authority), |(u, h)| (u, h));
            let (host, port) = hostport
                .rsplit_once(':')
                .map_or((hostport, 5432), |(h, p)| (h, p.parse().unwrap()));
            let host = if host == "localhost" {
                "127.0.0.1"
            } else {
                host
            };
            Url {
                scheme_user: if user.is_empty() {
                    format!("{scheme}://")
                } else {
                    format!("{scheme}://{user}@")
                },
                host: host.to_owned(),
                port,
                rest: rest.to_owned(),
            }
        }
        pub fn with_host_port(&self, host: &str, port: u16) -> String {
            format!("{}{host}:{port}/{}", self.scheme_user, self.rest)
        }
    }
}
