//! Decision mode behind real ingresses: Debian's nginx (`auth_request`) and Caddy
//! (`forward_auth`) run the templates in `tests/ingress/` in front of a recording
//! upstream and ask flexgate's decision listener about every request. Allowed requests
//! arrive with flexgate's signed identity headers; denied ones never arrive and the
//! client gets flexgate's own status and body; a client-sent description of the
//! request or identity header changes nothing. Under `CI=true` missing programs fail.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// A running ingress process, stopped when dropped.
struct Ingress {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
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

async fn start_ingress(kind: &str, decision: SocketAddr, upstream: SocketAddr) -> Option<Ingress> {
    let (binary, package, template) = match kind {
        "nginx" => ("/usr/sbin/nginx", "nginx", "nginx.conf.tmpl"),
        _ => ("/usr/bin/caddy", "caddy", "Caddyfile.tmpl"),
    };
    if !program(binary, package) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let text = std::fs::read_to_string(format!(
        "{}/tests/ingress/{template}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .replace("{{LISTEN_PORT}}", &port.to_string())
    .replace("{{DECISION_ADDR}}", &decision.to_string())
    .replace("{{UPSTREAM_ADDR}}", &upstream.to_string())
    .replace("{{TMP}}", &dir.path().display().to_string());
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
    Some(Ingress {
        child,
        addr,
        _dir: dir,
    })
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

async fn behind(kind: &str) {
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    let gw = GatewayBuilder::new(&db, &upstream)
        .demo()
        .server("decision = \"127.0.0.1:0\"\nallowed_hosts = [\"app.example\", \"localhost\"]\n")
        .start()
        .await;
    let decision = gw.decision.expect("the decision listener is bound");
    let Some(ingress) = start_ingress(kind, decision, upstream.addr).await else {
        return;
    };
    let token = gw.demo_token("prosumer@flexgate.demo").await;
    let auth = [("authorization", token.as_str())];

    // Allowed: the upstream gets the request with flexgate's signed identity.
    let (status, _, body) = ask(ingress.addr, "GET", "/api/v3_0/assets/1", &auth, "").await;
    assert_eq!(status, 200, "{kind}: {body}");
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
    behind("nginx").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_forward_auth_asks_flexgate() {
    behind("caddy").await;
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
    gw.stop().await;
}
