//! Decision mode behind real ingresses: Debian's nginx (`auth_request`) and Caddy
//! (`forward_auth`) run the templates in `tests/ingress/` in front of a recording
//! upstream and ask flexgate's decision listener about every request. Allowed requests
//! arrive with flexgate's signed identity headers; denied ones never arrive and the
//! client gets flexgate's own status and body; a client-sent description of the
//! request or identity header changes nothing. Under `CI=true` missing programs fail.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// A running ingress process, stopped when dropped.
struct Ingress {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Ingress {
    /// The ingress's own error log, to explain a failed assertion.
    fn log(&self) -> String {
        ["error.log", "caddy.log"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(self.dir.path().join(f)).ok())
            .collect()
    }
}

impl Drop for Ingress {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn program(path: &str, package: &str) -> bool {
    if std::path::Path::new(path).exists() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("CI=true but {path} is missing (apt-get install {package})");
    }
    eprintln!("skipping: {path} is missing (apt-get install {package})");
    false
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A CA for ingresses and a client certificate it signed, as `decision_client_ca`
/// and the ingress's `proxy_ssl_certificate` / `tls_client_auth` take them.
struct IngressCert {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// The client side of a rustls config presenting this certificate.
    client: Arc<rustls::ClientConfig>,
}

impl IngressCert {
    fn new(dir: &Path, name: &str, server_roots: &rustls::RootCertStore) -> IngressCert {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![format!("{name}.ingress.test")]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name}.ingress.test"));
        let cert = params.signed_by(&key, &issuer).unwrap();
        let paths = IngressCert {
            ca: dir.join(format!("{name}-ca.pem")),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
            client: Arc::new(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(server_roots.clone())
                .with_client_auth_cert(
                    vec![cert.der().clone()],
                    rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
                )
                .unwrap(),
            ),
        };
        std::fs::write(&paths.ca, ca_cert.pem()).unwrap();
        std::fs::write(&paths.cert, cert.pem()).unwrap();
        std::fs::write(&paths.key, key.serialize_pem()).unwrap();
        paths
    }
}

/// How the ingress reaches the decision listener over mutual TLS: its client
/// certificate and the CA of flexgate's own certificate.
struct DecisionTls<'a> {
    client: &'a IngressCert,
    server_ca: &'a Path,
}

async fn start_ingress(
    kind: &str,
    decision: SocketAddr,
    upstream: SocketAddr,
    proxy: SocketAddr,
    tls: Option<DecisionTls<'_>>,
) -> Option<Ingress> {
    let (binary, package, template) = match kind {
        "nginx" => ("/usr/sbin/nginx", "nginx", "nginx.conf.tmpl"),
        _ => ("/usr/bin/caddy", "caddy", "Caddyfile.tmpl"),
    };
    if !program(binary, package) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let template = std::fs::read_to_string(format!(
        "{}/tests/ingress/{template}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    // The placeholders are filled in below the template's header comment, which names
    // them and would be broken by a value of several lines.
    let body_at = template
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .find(|&i| !template[i..].starts_with('#'))
        .unwrap_or(0);
    let (header, body) = template.split_at(body_at);
    let text = body
    .replace("{{LISTEN_PORT}}", &port.to_string())
    .replace("{{DECISION_ADDR}}", &decision.to_string())
    .replace("{{UPSTREAM_ADDR}}", &upstream.to_string())
    .replace("{{PROXY_ADDR}}", &proxy.to_string())
    .replace("{{TMP}}", &dir.path().display().to_string())
    .replace(
        "{{DECISION_SCHEME}}",
        if tls.is_some() { "https" } else { "http" },
    )
    .replace(
        "{{DECISION_TLS}}",
        &match (&tls, kind) {
            (None, _) => String::new(),
            (Some(t), "nginx") => format!(
                "proxy_ssl_certificate {};\n            proxy_ssl_certificate_key {};\n            \
                 proxy_ssl_trusted_certificate {};\n            proxy_ssl_verify on;\n            \
                 proxy_ssl_name localhost;\n            proxy_ssl_session_reuse on;",
                t.client.cert.display(),
                t.client.key.display(),
                t.server_ca.display()
            ),
            (Some(t), _) => format!(
                "tls\n\t\t\t\ttls_client_auth {} {}\n\t\t\t\ttls_trusted_ca_certs {}\n\t\t\t\ttls_server_name localhost",
                t.client.cert.display(),
                t.client.key.display(),
                t.server_ca.display()
            ),
        },
    );
    let text = format!("{header}{text}");
    let tmp = dir.path().display().to_string();
    let child = match kind {
        "nginx" => {
            let conf = dir.path().join("nginx.conf");
            std::fs::write(&conf, text).unwrap();
            Command::new(binary)
                .args([
                    "-p",
                    &tmp,
                    "-c",
                    &conf.display().to_string(),
                    "-e",
                    &format!("{tmp}/error.log"),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        }
        _ => {
            let conf = dir.path().join("Caddyfile");
            std::fs::write(&conf, text).unwrap();
            Command::new(binary)
                .args([
                    "run",
                    "--config",
                    &conf.display().to_string(),
                    "--adapter",
                    "caddyfile",
                ])
                .env("XDG_DATA_HOME", format!("{tmp}/data"))
                .env("XDG_CONFIG_HOME", format!("{tmp}/config"))
                .env("HOME", &tmp)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        }
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            TcpStream::connect(addr).await.is_ok()
        })
        .await,
        "{kind} did not start listening"
    );
    Some(Ingress { child, addr, dir })
}

/// One HTTP/1.1 request on a new connection; (status, headers text, body).
async fn ask(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(body);
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // Chunked answers: keep the JSON between the chunk sizes.
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if b >= a => body[a..=b].to_owned(),
        _ => body.to_owned(),
    };
    (status, head.to_owned(), body)
}

/// The ingress `kind` in front of the recording upstream, asking flexgate's decision
/// listener; over mutual TLS with `mtls`.
async fn behind(kind: &str, mtls: bool) {
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    let certs = tempfile::tempdir().unwrap();
    let client = IngressCert::new(certs.path(), kind, &rustls::RootCertStore::empty());
    // The plain listener answers logins, which the ingress sends there.
    let mut server = String::from(
        "decision = \"127.0.0.1:0\"\nallowed_hosts = [\"app.example\", \"localhost\"]\n\
         http_mode = \"proxy\"\ntrusted_proxies = [\"127.0.0.1\"]\n",
    );
    if mtls {
        server.push_str(&format!("decision_client_ca = {:?}\n", client.ca));
    }
    let gw = GatewayBuilder::new(&db, &upstream)
        .demo()
        .server(&server)
        .start()
        .await;
    let decision = gw.decision.expect("the decision listener is bound");
    let tls = mtls.then(|| DecisionTls {
        client: &client,
        server_ca: &gw.tls.ca,
    });
    let proxy = gw.http.expect("the plain proxy listener is bound");
    let Some(ingress) = start_ingress(kind, decision, upstream.addr, proxy, tls).await else {
        return;
    };
    let token = gw.demo_token("prosumer@flexgate.demo").await;
    let auth = [("authorization", token.as_str())];

    // Allowed: the upstream gets the request with flexgate's signed identity.
    let (status, _, body) = ask(ingress.addr, "GET", "/api/v3_0/assets/1", &auth, "").await;
    assert_eq!(status, 200, "{kind}: {body}\n{}", ingress.log());
    let seen = upstream.last();
    assert_eq!(seen.path, "/api/v3_0/assets/1");
    assert_eq!(seen.headers["x-flexgate-user-id"], "5");
    assert_eq!(seen.headers["x-flexgate-account-id"], "3");
    assert_eq!(
        seen.headers["x-flexgate-signature"].to_str().unwrap(),
        expected_signature(&seen.headers, "GET", "/api/v3_0/assets/1"),
        "{kind}: the identity the upstream got is not flexgate's"
    );
    let before = upstream.count();

    // Denied: flexgate's status and body, and the upstream never sees it.
    for (path, headers, expected, needle) in [
        ("/api/v3_0/assets/3", &auth[..], 403, "INVALID_SENDER"),
        ("/api/v3_0/assets/1", &[][..], 401, "UNAUTHORIZED"),
        ("/api/v3_0/nothing-here", &auth[..], 404, "not found"),
    ] {
        let (status, _, body) = ask(ingress.addr, "GET", path, headers, "").await;
        assert_eq!(status, expected, "{kind} {path}: {body}");
        assert!(
            body.contains(needle),
            "{kind} {path}: flexgate's body did not reach the client: {body}"
        );
    }
    // A client-sent description of the request changes nothing.
    let spoof = [
        ("authorization", token.as_str()),
        ("x-original-uri", "/api/v3_0/assets/1"),
        ("x-original-method", "GET"),
        ("x-forwarded-uri", "/api/v3_0/assets/1"),
        ("x-forwarded-method", "GET"),
    ];
    let (status, _, body) = ask(ingress.addr, "DELETE", "/api/v3_0/assets/3", &spoof, "").await;
    assert_eq!(
        status, 403,
        "{kind}: a client-sent original URI changed the decision: {body}"
    );
    // A route whose checks read the body fails closed: the ingress sends no body.
    let create = [
        ("authorization", token.as_str()),
        ("content-type", "application/json"),
    ];
    let (status, _, _) = ask(
        ingress.addr,
        "POST",
        "/api/v3_0/assets",
        &create,
        r#"{"account_id": 3}"#,
    )
    .await;
    assert_eq!(
        status, 403,
        "{kind}: a body-checked route was decided without its body"
    );
    assert_eq!(
        upstream.count(),
        before,
        "{kind}: a denied request reached the upstream"
    );

    // Spoofed identity headers never reach the upstream, public route or not.
    let forged = [
        ("authorization", token.as_str()),
        ("x-flexgate-user-id", "1"),
        ("x-flexgate-user-roles", "admin"),
    ];
    let (status, _, _) = ask(ingress.addr, "GET", "/api/v3_0/assets/1", &forged, "").await;
    assert_eq!(status, 200);
    assert_eq!(upstream.last().headers["x-flexgate-user-id"], "5");
    let (status, _, _) = ask(
        ingress.addr,
        "GET",
        "/api/v3_0/health/ready",
        &[("x-flexgate-user-id", "1")],
        "",
    )
    .await;
    assert_eq!(status, 200, "{kind}: public route");
    let public = upstream.last();
    assert!(
        public
            .headers
            .get("x-flexgate-user-id")
            .is_none_or(|v| v.is_empty() || v == " "),
        "{kind}: a forged identity reached the upstream: {:?}",
        public.headers.get("x-flexgate-user-id")
    );
    // Logins go through the ingress to flexgate's proxy listener, which answers them;
    // the decision listener refuses to decide one.
    let login = |password: &'static str| {
        let addr = ingress.addr;
        async move {
            ask(
                addr,
                "POST",
                "/api/requestAuthToken",
                &[("content-type", "application/json")],
                &format!(r#"{{"email": "prosumer@flexgate.demo", "password": "{password}"}}"#),
            )
            .await
        }
    };
    let (status, _, body) = login("flexgate-demo").await;
    assert_eq!(status, 200, "{kind}: a login through the ingress: {body}");
    assert!(body.contains("auth_token"), "{kind}: {body}");
    let (status, _, body) = login("wrong").await;
    assert_eq!(status, 401, "{kind}: {body}");
    if !mtls {
        let (status, _, body) = ask(
            decision,
            "POST",
            "/nginx",
            &[
                ("x-original-method", "POST"),
                ("x-original-uri", "/api/requestAuthToken"),
            ],
            "",
        )
        .await;
        assert_eq!(status, 404, "{kind}: a login was decided: {body}");
        assert!(body.contains("proxy listener"), "{body}");
    }
    // The decisions were counted by flavour.
    let metrics = gw.metrics().await;
    assert!(
        metric(
            &metrics,
            &format!("flexgate_decisions_total{{decision=\"allow\",flavour=\"{kind}\"}}")
        ) >= 3.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            &format!("flexgate_decisions_total{{decision=\"forbidden\",flavour=\"{kind}\"}}")
        ) >= 2.0,
        "{metrics}"
    );
    drop(ingress);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_asks_flexgate() {
    behind("nginx", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_forward_auth_asks_flexgate() {
    behind("caddy", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_and_caddy_ask_over_mutual_tls() {
    behind("nginx", true).await;
    behind("caddy", true).await;
}

/// What a client gets from the decision listener for one described request over TLS
/// with `config` (the first bytes of the answer; empty when the connection was refused).
async fn ask_tls(decision: SocketAddr, config: Arc<rustls::ClientConfig>) -> String {
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = TcpStream::connect(decision).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let Ok(mut tls) = connector.connect(name, tcp).await else {
        return String::new();
    };
    let request = "GET /nginx HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
                   X-Original-Method: GET\r\nX-Original-URI: /api/v3_0/health/ready\r\n\r\n";
    // With TLS 1.3 the client's handshake ends before the server has checked its
    // certificate: a refusal shows as an alert on the first read.
    if tls.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_listener_can_require_a_client_certificate() {
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    let certs = tempfile::tempdir().unwrap();
    let placeholder = rustls::RootCertStore::empty();
    let ingress = IngressCert::new(certs.path(), "ingress", &placeholder);
    let gw = GatewayBuilder::new(&db, &upstream)
        .demo()
        .server(&format!(
            "decision = \"127.0.0.1:0\"\ndecision_client_ca = {:?}\n",
            ingress.ca
        ))
        .start()
        .await;
    let decision = gw.decision.unwrap();
    // A certificate from a CA flexgate was not told about.
    let rogue = IngressCert::new(certs.path(), "rogue", &gw.tls.roots);
    // The ingress's certificate, from the configured CA: answered.
    let with_cert = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(gw.tls.roots.clone())
    .with_client_auth_cert(
        rustls_pki_types::CertificateDer::pem_file_iter(&ingress.cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap(),
        rustls_pki_types::PrivateKeyDer::from_pem_file(&ingress.key).unwrap(),
    )
    .unwrap();
    let answer = ask_tls(decision, Arc::new(with_cert)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // No certificate, or one from another CA: no answer at all.
    let answer = ask_tls(decision, Arc::clone(&gw.tls.client)).await;
    assert!(
        !answer.starts_with("HTTP/"),
        "answered a client without a certificate: {answer}"
    );
    let answer = ask_tls(decision, Arc::clone(&rogue.client)).await;
    assert!(
        !answer.starts_with("HTTP/"),
        "answered a certificate from another CA: {answer}"
    );
    // Plain HTTP is not spoken there.
    let (status, head, _) = ask(
        decision,
        "GET",
        "/nginx",
        &[
            ("x-original-method", "GET"),
            ("x-original-uri", "/api/v3_0/health/ready"),
        ],
        "",
    )
    .await;
    assert_eq!(status, 0, "answered plain HTTP: {head}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_an_operator_gives_the_decision_headers_are_never_a_clients_upstream() {
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    let gw = GatewayBuilder::new(&db, &upstream)
        .demo()
        .server(
            "decision = \"127.0.0.1:0\"\n[server.decision_headers]\n\
             method = \"x-auth-method\"\nuri = \"x-auth-uri\"\n",
        )
        .start()
        .await;
    // nginx describing with the configured names is understood.
    let decision = gw.decision.unwrap();
    let described = [
        ("x-auth-method", "GET"),
        ("x-auth-uri", "/api/v3_0/health/ready"),
    ];
    let (status, head, _) = ask(decision, "GET", "/nginx", &described, "").await;
    assert_eq!(status, 200, "{head}");
    // On the proxy, a client's copies of any describing header go nowhere.
    let answer = gw
        .send(
            "GET",
            "/api/v3_0/health/ready",
            &[
                ("x-auth-uri", "/api/v3_0/users"),
                ("x-auth-method", "DELETE"),
                ("x-original-method", "DELETE"),
                ("x-flexgate-replay", "1"),
                ("x-kept", "yes"),
            ],
            "",
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let seen = upstream.last();
    assert_eq!(seen.headers["x-kept"], "yes");
    for name in [
        "x-auth-uri",
        "x-auth-method",
        "x-original-method",
        "x-flexgate-replay",
    ] {
        assert!(
            seen.headers.get(name).is_none(),
            "{name} reached the upstream"
        );
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_listener_can_require_a_shared_secret() {
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    let gw = GatewayBuilder::new(&db, &upstream)
        .demo()
        .server("decision = \"127.0.0.1:0\"\n")
        .env(
            "FLEXGATE_DECISION_SECRET",
            "decision-secret-0123456789abcdef0123",
        )
        .start()
        .await;
    let decision = gw.decision.unwrap();
    let describe = [
        ("x-original-method", "GET"),
        ("x-original-uri", "/api/v3_0/health/ready"),
    ];
    let (status, _, _) = ask(decision, "GET", "/nginx", &describe, "").await;
    assert_eq!(status, 403, "answered without the secret");
    let mut with = describe.to_vec();
    with.push((
        "x-flexgate-decision-secret",
        "decision-secret-0123456789abcdef0123",
    ));
    let (status, head, _) = ask(decision, "GET", "/nginx", &with, "").await;
    assert_eq!(status, 200, "{head}");
    // Envoy: the original path appended to the prefix, the method as it is.
    let (status, _, body) = ask(
        decision,
        "DELETE",
        "/envoy/api/v3_0/assets/3",
        &with[2..],
        "",
    )
    .await;
    assert_eq!(status, 401, "{body}");
    // A method override the route does not take would reach the upstream through the
    // ingress (the proxy strips it; an ingress cannot be told to): refused.
    let mut overriding = with.clone();
    overriding[0] = ("x-original-method", "POST");
    overriding[1] = ("x-original-uri", "/api/v3_0/assets");
    overriding.push(("x-http-method-override", "DELETE"));
    let (status, _, body) = ask(decision, "GET", "/nginx", &overriding, "").await;
    assert_eq!(status, 400, "{body}");
    // Nor can flexgate take out what the upstream may see in another shape: an
    // override spelled with `_` (read as `X-HTTP-Method-Override` by CGI-style
    // servers), a header named in Connection (dropped by some ingresses, not others).
    let mut odd = with.clone();
    odd[0] = ("x-original-method", "POST");
    odd[1] = ("x-original-uri", "/api/v3_0/assets");
    odd.push(("X_HTTP_Method_Override", "DELETE"));
    let (status, _, body) = ask(decision, "GET", "/nginx", &odd, "").await;
    assert_eq!(status, 400, "{body}");
    let mut nominated = with.clone();
    nominated.push(("x-asset-id", "1"));
    nominated.push(("connection", "x-asset-id"));
    let (status, _, body) = ask(decision, "GET", "/nginx", &nominated, "").await;
    assert_eq!(status, 400, "{body}");
    // A target the URI parser would cut at `#` (the ingress forwards all of it).
    let mut fragment = with.clone();
    fragment[1] = ("x-original-uri", "/api/v3_0/health/ready?x#&account=7");
    let (status, _, body) = ask(decision, "GET", "/nginx", &fragment, "").await;
    assert_eq!(status, 400, "{body}");
    // Only nginx's second ask is left uncounted: from an ingress that passes client
    // headers through (Traefik here), the replay mark is not believed.
    let counted = |metrics: &str, flavour: &str| {
        metric(
            metrics,
            &format!(
                "flexgate_decisions_total{{decision=\"unauthenticated\",flavour=\"{flavour}\"}}"
            ),
        )
    };
    let before = gw.metrics().await;
    let mut replayed = with.clone();
    replayed[1] = ("x-original-uri", "/api/v3_0/assets/1");
    replayed.push(("x-flexgate-replay", "1"));
    let (status, _, _) = ask(decision, "GET", "/nginx", &replayed, "").await;
    assert_eq!(status, 401);
    let mut traefik = vec![
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", "/api/v3_0/assets/1"),
    ];
    traefik.extend_from_slice(&replayed[2..]);
    let (status, _, _) = ask(decision, "GET", "/traefik", &traefik, "").await;
    assert_eq!(status, 401);
    // nginx asks again only for a denial: an allowed request marked as a second ask
    // (a client's mark let through) is counted all the same.
    let allowed = |metrics: &str| {
        metric(
            metrics,
            "flexgate_decisions_total{decision=\"allow\",flavour=\"nginx\"}",
        )
    };
    let mut marked = with.clone();
    marked.push(("x-flexgate-replay", "1"));
    let (status, _, _) = ask(decision, "GET", "/nginx", &marked, "").await;
    assert_eq!(status, 200);
    let after = gw.metrics().await;
    assert_eq!(
        counted(&after, "nginx"),
        counted(&before, "nginx"),
        "nginx's second ask was counted"
    );
    assert_eq!(
        allowed(&after),
        allowed(&before) + 1.0,
        "an allowed request hid from the metrics: {after}"
    );
    assert_eq!(
        counted(&after, "traefik"),
        counted(&before, "traefik") + 1.0,
        "a client-sent replay mark hid a request from the metrics: {after}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_in_a_body_the_ingress_sends_are_checked_and_a_cut_body_is_refused() {
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    let gw = GatewayBuilder::new(&db, &upstream)
        .demo()
        .server("decision = \"127.0.0.1:0\"\n")
        .start()
        .await;
    let decision = gw.decision.unwrap();
    let token = gw.demo_token("prosumer-admin@flexgate.demo").await;
    let json = [
        ("authorization", token.as_str()),
        ("content-type", "application/json"),
    ];
    let own = r#"{"name": "battery", "account_id": 3}"#;
    let other = r#"{"name": "battery", "account_id": 1}"#;
    // Envoy and Traefik send the body along: the account in it is the one checked.
    // Envoy marks a body it sent whole `x-envoy-auth-partial-body: false`.
    let traefik = [
        ("x-forwarded-method", "POST"),
        ("x-forwarded-uri", "/api/v3_0/assets"),
    ];
    let traefik: Vec<_> = traefik.iter().chain(&json).copied().collect();
    let mut envoy = json.to_vec();
    envoy.push(("x-envoy-auth-partial-body", "false"));
    for (path, method, headers) in [
        ("/envoy/api/v3_0/assets", "POST", &envoy[..]),
        ("/traefik", "GET", &traefik[..]),
    ] {
        let (status, head, body) = ask(decision, method, path, headers, own).await;
        assert_eq!(status, 200, "{path}, own account: {head}\n{body}");
        assert!(head.contains("x-flexgate-user-id: 4"), "{head}");
        let (status, _, body) = ask(decision, method, path, headers, other).await;
        assert_eq!(status, 403, "{path}, another account: {body}");
        // Sent without its body, the request cannot be decided (fail closed).
        let (status, _, body) = ask(decision, method, path, headers, "").await;
        assert_eq!(status, 403, "{path}, no body: {body}");
    }
    // Envoy with allow_partial_message cuts a body at max_request_bytes and says so:
    // the ids past the cut (here, a second account_id the upstream's parser may take)
    // were never seen, so a route that reads the body refuses it.
    let mut cut = json.to_vec();
    cut.push(("x-envoy-auth-partial-body", "true"));
    let (status, _, body) = ask(decision, "POST", "/envoy/api/v3_0/assets", &cut, own).await;
    assert_eq!(status, 413, "a cut body was decided as whole: {body}");
    assert!(body.contains("only part of the request body"), "{body}");
    // Any marker but Envoy's `false` counts as cut; `false` is a whole body.
    for (marker, expected) in [("TRUE", 413), ("1", 413), ("false", 200)] {
        cut[2].1 = marker;
        let (status, _, body) = ask(decision, "POST", "/envoy/api/v3_0/assets", &cut, own).await;
        assert_eq!(status, expected, "marker {marker:?}: {body}");
    }
    // No marker (Envoy's allow-list filtered it out), or two: not known to be whole.
    let (status, _, body) = ask(decision, "POST", "/envoy/api/v3_0/assets", &json, own).await;
    assert_eq!(status, 413, "a body Envoy did not mark whole: {body}");
    let mut twice = envoy.clone();
    twice.push(("x-envoy-auth-partial-body", "true"));
    let (status, _, body) = ask(decision, "POST", "/envoy/api/v3_0/assets", &twice, own).await;
    assert_eq!(status, 413, "two markers: {body}");
    // A route that reads no body is decided on its path and headers, cut body or not.
    cut[2].1 = "true";
    let (status, head, body) = ask(
        decision,
        "GET",
        "/envoy/api/v3_0/assets/1",
        &cut,
        "{\"account_id\": 1",
    )
    .await;
    assert_eq!(status, 200, "{head}\n{body}");
    let metrics = gw.metrics().await;
    assert!(
        metric(
            &metrics,
            "flexgate_decisions_total{decision=\"bad_request\",flavour=\"envoy\"}"
        ) >= 5.0,
        "cut bodies were not counted as bad requests"
    );
    gw.stop().await;
}

/// The decision listener reads a body before it knows the route: up to the uploads'
/// limit when a route takes uploads, and then holds every other route to the JSON one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_sent_for_a_decision_get_the_uploads_limit_and_other_bodies_the_json_one() {
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    let rules = demo_rules_with_uploads();
    let gw = GatewayBuilder::new(&db, &upstream)
        .demo()
        .rules(&rules)
        .server(
            "decision = \"127.0.0.1:0\"\n[server.limits]\nmax_json_body_bytes = 4096\nmax_multipart_body_bytes = 65536\n",
        )
        .start()
        .await;
    let decision = gw.decision.unwrap();
    let token = gw.demo_token("prosumer-admin@flexgate.demo").await;
    let upload = |name: &str| {
        format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"uploaded-files\"; filename=\"{name}\"\r\nContent-Type: text/csv\r\n\r\n{}\r\n--XyZ--\r\n",
            "2026-12-01T00:00:00Z,1\r\n".repeat(1000)
        )
    };
    let multipart = [
        ("authorization", token.as_str()),
        ("content-type", "multipart/form-data; boundary=XyZ"),
        ("x-envoy-auth-partial-body", "false"),
    ];
    let path = "/envoy/api/v3_0/sensors/1/data/upload";
    let (status, head, body) = ask(decision, "POST", path, &multipart, &upload("a.csv")).await;
    assert_eq!(status, 200, "a 23 KB upload: {head}\n{body}");
    let (status, _, body) = ask(decision, "POST", path, &multipart, &upload("<b>.csv")).await;
    assert_eq!(status, 422, "markup in an upload's file name: {body}");
    // A JSON body of the same size, to a route that reads JSON: over its limit.
    let json = [
        ("authorization", token.as_str()),
        ("content-type", "application/json"),
        ("x-envoy-auth-partial-body", "false"),
    ];
    let big = format!(r#"{{"account_id": 3, "name": "{}"}}"#, "x".repeat(20_000));
    let (status, _, body) = ask(decision, "POST", "/envoy/api/v3_0/assets", &json, &big).await;
    assert_eq!(status, 413, "a 20 KB JSON body: {body}");
    let small = r#"{"account_id": 3, "name": "battery"}"#;
    let (status, _, body) = ask(decision, "POST", "/envoy/api/v3_0/assets", &json, small).await;
    assert_eq!(status, 200, "{body}");
    // Past the uploads' limit, even an upload is refused.
    let huge = upload(&"a".repeat(10)).repeat(3);
    let (status, _, _) = ask(decision, "POST", path, &multipart, &huge).await;
    assert_eq!(status, 413);
    gw.stop().await;
    // With the JSON limit the larger one, an upload is still held to its own.
    let db = TestDb::sqlite();
    let gw = GatewayBuilder::new(&db, &upstream)
        .demo()
        .rules(&rules)
        .server(
            "decision = \"127.0.0.1:0\"\n[server.limits]\nmax_json_body_bytes = 65536\nmax_multipart_body_bytes = 8192\n",
        )
        .start()
        .await;
    let decision = gw.decision.unwrap();
    let token = gw.demo_token("prosumer-admin@flexgate.demo").await;
    let multipart = [
        ("authorization", token.as_str()),
        ("content-type", "multipart/form-data; boundary=XyZ"),
        ("x-envoy-auth-partial-body", "false"),
    ];
    let (status, _, body) = ask(decision, "POST", path, &multipart, &upload("a.csv")).await;
    assert_eq!(status, 413, "a 23 KB upload over its 8 KiB limit: {body}");
    let json = [
        ("authorization", token.as_str()),
        ("content-type", "application/json"),
        ("x-envoy-auth-partial-body", "false"),
    ];
    let (status, _, body) = ask(decision, "POST", "/envoy/api/v3_0/assets", &json, &big).await;
    assert_eq!(
        status, 200,
        "a 20 KB JSON body under its 64 KiB limit: {body}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_name_the_client_for_login_limits_and_the_upstream() {
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    let limits =
        "[auth.throttle]\nfailures_per_email = 100\nfailures_per_client = 3\nwindow_secs = 60\n";
    let start = |trusted: &'static str| {
        GatewayBuilder::new(&db, &upstream)
            .demo()
            .server(&format!("http_mode = \"proxy\"\n{trusted}"))
            .rules(&format!("{}\n{limits}", demo_rules()))
            .start()
    };
    let login = |addr: SocketAddr, client: &'static str, n: usize| async move {
        ask(
            addr,
            "POST",
            "/api/requestAuthToken",
            &[
                ("content-type", "application/json"),
                ("x-forwarded-for", client),
            ],
            &format!(r#"{{"email": "guess-{n}@example.com", "password": "wrong"}}"#),
        )
        .await
        .0
    };
    // Behind a trusted proxy (this test's loopback address), each client it names has
    // its own count...
    let gw = start("trusted_proxies = [\"127.0.0.1\"]\n").await;
    let plain = gw.http.unwrap();
    for n in 0..3 {
        assert_eq!(login(plain, "192.0.2.1", n).await, 401);
    }
    assert_eq!(
        login(plain, "192.0.2.1", 3).await,
        429,
        "the named client's limit"
    );
    assert_eq!(
        login(plain, "192.0.2.2", 4).await,
        401,
        "another client behind the same proxy was locked out"
    );
    // ...and the upstream is told the client, not what the client claimed before it.
    let (status, _, _) = ask(
        plain,
        "GET",
        "/api/v3_0/health/ready",
        &[("x-forwarded-for", "203.0.113.66, 192.0.2.9")],
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(upstream.last().headers["x-forwarded-for"], "192.0.2.9");
    assert_eq!(upstream.last().headers["x-forwarded-proto"], "http");
    // A trusted proxy that ended TLS says so: the upstream is told https and the
    // browser gets HSTS, as on flexgate's own TLS listener.
    let (status, headers, _) = ask(
        plain,
        "GET",
        "/api/v3_0/health/ready",
        &[("x-forwarded-proto", "https")],
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(upstream.last().headers["x-forwarded-proto"], "https");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("strict-transport-security"),
        "{headers}"
    );
    gw.stop().await;
    // Trusting no proxy, X-Forwarded-For names nobody: the connection's address counts.
    let db = TestDb::sqlite();
    let gw = GatewayBuilder::new(&db, &upstream)
        .demo()
        .server("http_mode = \"proxy\"\n")
        .rules(&format!("{}\n{limits}", demo_rules()))
        .start()
        .await;
    let plain = gw.http.unwrap();
    for n in 0..3 {
        assert_eq!(login(plain, "192.0.2.1", n).await, 401);
    }
    assert_eq!(login(plain, "192.0.2.2", 3).await, 429);
    // Nor does a client's X-Forwarded-Proto count.
    let (_, headers, _) = ask(
        plain,
        "GET",
        "/api/v3_0/health/ready",
        &[("x-forwarded-proto", "https")],
        "",
    )
    .await;
    assert_eq!(upstream.last().headers["x-forwarded-proto"], "http");
    assert!(
        !headers
            .to_ascii_lowercase()
            .contains("strict-transport-security")
    );
    gw.stop().await;
}

fn demo_rules() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cors_preflight_is_decided_with_no_identity_and_a_body_it_shows_is_refused() {
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    let rules = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml"))
        .unwrap()
        .replacen(
            "[paths]\n",
            "[paths]\ncors_preflight_paths = [\"/api/\"]\n",
            1,
        );
    let gw = GatewayBuilder::new(&db, &upstream)
        .demo()
        .rules(&rules)
        .server("decision = \"127.0.0.1:0\"\n")
        .start()
        .await;
    let decision = gw.decision.unwrap();
    let preflight = [
        ("origin", "https://dashboard.example"),
        ("access-control-request-method", "PATCH"),
    ];
    // Traefik (forwardBody) sends the body along, nginx never does: either way the
    // preflight is allowed with no identity (it has no Content-Type, so no upstream
    // reads a body of it); a body the ingress shows is refused.
    let described = |method_name, uri_name| -> Vec<(&'static str, &'static str)> {
        [(method_name, "OPTIONS"), (uri_name, "/api/v3_0/assets/1")]
            .into_iter()
            .chain(preflight)
            .collect()
    };
    let traefik = described("x-forwarded-method", "x-forwarded-uri");
    let nginx = described("x-original-method", "x-original-uri");
    for (path, headers) in [("/traefik", &traefik), ("/nginx", &nginx)] {
        let (status, head, body) = ask(decision, "GET", path, headers, "").await;
        assert_eq!(status, 200, "{path}: {head}\n{body}");
        let user = head
            .lines()
            .find_map(|l| l.strip_prefix("x-flexgate-user-id:"))
            .map_or("", str::trim);
        assert_eq!(user, "", "{path}: a preflight got an identity: {head}");
    }
    let (status, _, body) = ask(decision, "GET", "/traefik", &traefik, "{}").await;
    assert_eq!(status, 400, "a preflight with a body: {body}");
    // With a Content-Type it is no preflight, and no route takes OPTIONS.
    let typed: Vec<_> = nginx
        .iter()
        .copied()
        .chain([("content-type", "application/json")])
        .collect();
    let (status, _, body) = ask(decision, "GET", "/nginx", &typed, "").await;
    assert_eq!(status, 404, "{body}");
    gw.stop().await;
}
