//! How the proxy behaves around requests: streaming bodies, protocol upgrades, a broken
//! or slow upstream, hot reload under load, graceful shutdown, and listener limits.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// Public routes onto the upstream's test behaviours.
const OPS_RULES: &str = r#"
[[route]]
name = "slow"
methods = ["GET"]
path = "/slow/{ms}"
auth = "public"

[[route]]
name = "count"
methods = ["POST"]
path = "/count"
auth = "public"

[[route]]
name = "ws"
methods = ["GET"]
path = "/ws"
auth = "public"

[[route]]
name = "big"
methods = ["GET"]
path = "/big/{n}"
auth = "public"

[[route]]
name = "status"
methods = ["GET"]
path = "/status/{code}"
auth = "public"

[[route]]
name = "reset"
methods = ["GET"]
path = "/reset"
auth = "public"
"#;

async fn ops_gateway(db: &TestDb, upstream: &Upstream, server: &str) -> TestGateway {
    GatewayBuilder::new(db, upstream)
        .rules(OPS_RULES)
        .server(server)
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_stream_to_the_upstream_without_buffering() {
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    let gw = ops_gateway(&db, &upstream, "").await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let mut sender = gw.connect::<ChannelBody>().await;
    let request = http::Request::post(gw.url("/count"))
        .header("host", "localhost")
        .header("transfer-encoding", "chunked")
        .body(ChannelBody(rx))
        .unwrap();
    let response = tokio::spawn(async move { sender.send_request(request).await.unwrap() });
    let chunk = Bytes::from(vec![7u8; 1024 * 1024]);
    tx.send(chunk.clone()).await.unwrap();
    // The upstream has the request while the client is still sending: nothing waits
    // for the whole body.
    assert!(
        eventually(Duration::from_secs(5), || async { upstream.count() == 1 }).await,
        "the head did not arrive before the body ended"
    );
    for _ in 0..24 {
        tx.send(chunk.clone()).await.unwrap();
    }
    drop(tx);
    let response = response.await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        &body[..],
        format!("{{\"bytes\":{}}}", 25 * 1024 * 1024).as_bytes(),
        "25 MiB, far above the 1 MiB JSON limit"
    );
    // Responses stream too: 64 MiB arrives in pieces.
    let answer = gw.get("/big/67108864", None).await;
    assert_eq!(answer.body.len(), 64 << 20);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_pass_through_only_on_101() {
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    let gw = ops_gateway(&db, &upstream, "[server.limits]\nidle_timeout_secs = 1").await;
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&gw.tls.client));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tcp = tokio::net::TcpStream::connect(gw.https).await.unwrap();
    let mut tls = connector.connect(name.clone(), tcp).await.unwrap();
    tls.write_all(b"GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = vec![0u8; 4096];
    let n = tls.read(&mut head).await.unwrap();
    let head = String::from_utf8_lossy(&head[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    tls.write_all(b"ping through the tunnel").await.unwrap();
    let mut echo = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo[..n], b"ping through the tunnel");
    // A tunnel without traffic for idle_timeout_secs is closed.
    let started = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut echo))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "idle tunnel still open");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed too early: {:?}",
        started.elapsed()
    );

    // An upgrade request answered 200 is an ordinary response: the connection stays
    // HTTP and the next request on it is parsed as one.
    let tcp = tokio::net::TcpStream::connect(gw.https).await.unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /status/200 HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET /status/204 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains("HTTP/1.1 204"),
        "second request not served as HTTP: {out}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_or_slow_upstream_gives_502_or_504_with_json() {
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    let gw = ops_gateway(&db, &upstream, "[server.limits]\nupstream_timeout_secs = 1").await;
    let answer = gw.get("/slow/3000", None).await;
    assert_eq!(answer.status, 504, "{}", answer.text());
    assert_eq!(answer.json()["status"], 504);
    let answer = gw.get("/reset", None).await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert_eq!(
        answer.json()["message"],
        "The upstream service could not be reached."
    );
    // The gateway keeps serving.
    assert_eq!(gw.get("/status/201", None).await.status, 201);
    gw.stop().await;

    // Nothing listens upstream at all.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gw = GatewayBuilder::new(&db, &upstream)
        .upstream_addr(closed)
        .rules(OPS_RULES)
        .start()
        .await;
    let answer = gw.get("/status/200", None).await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.headers["content-type"], "application/json");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_verified_against_upstream_ca() {
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let tls = test_tls(dir.path());
    let upstream = Upstream::start_tls(&tls).await;
    let port = upstream.addr.port();
    for host in ["localhost", "127.0.0.1"] {
        let gw = GatewayBuilder::new(&db, &upstream)
            .upstream_url(&format!("https://{host}:{port}"))
            .server(&format!("upstream_ca = {:?}", tls.ca.display().to_string()))
            .rules(OPS_RULES)
            .start()
            .await;
        for _ in 0..3 {
            assert_eq!(gw.get("/status/201", None).await.status, 201, "{host}");
        }
        // The three requests shared one TLS connection.
        assert_eq!(upstream.connections(), 1, "{host}");
        assert_eq!(upstream.last().headers["host"], format!("{host}:{port}"));
        gw.stop().await;
        let before = upstream.connections();
        // Without the CA, the upstream's certificate is not trusted: 502, nothing sent.
        let seen = upstream.count();
        let gw = GatewayBuilder::new(&db, &upstream)
            .upstream_url(&format!("https://{host}:{port}"))
            .rules(OPS_RULES)
            .start()
            .await;
        let answer = gw.get("/status/201", None).await;
        assert_eq!(answer.status, 502, "{}", answer.text());
        assert_eq!(upstream.count(), seen);
        assert!(upstream.connections() > before);
        gw.stop().await;
        // Reset the connection count for the next host.
        upstream.reset_connections();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused_and_idle_closes_are_survived() {
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    // One worker: every client connection shares one idle list, so counts are exact.
    let gw = ops_gateway(&db, &upstream, "workers = 1").await;
    for _ in 0..20 {
        assert_eq!(gw.get("/status/200", None).await.status, 200);
    }
    assert_eq!(
        upstream.connections(),
        1,
        "sequential requests reuse one connection"
    );
    // A big body read to the end hands its connection back too.
    let answer = gw.get("/big/300000", None).await;
    assert_eq!(answer.body.len(), 300_000);
    assert_eq!(gw.get("/status/200", None).await.status, 200);
    assert_eq!(upstream.connections(), 1);
    // A client that leaves after the first chunk of a big body: that upstream connection
    // is in an unknown state and must be closed, never handed to the next request.
    let mut sender = gw.connect::<http_body_util::Empty<Bytes>>().await;
    let request = http::Request::get(gw.url("/big/50000000"))
        .header("host", "localhost")
        .body(http_body_util::Empty::new())
        .unwrap();
    let mut response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.body_mut().frame().await.unwrap().is_ok());
    drop((response, sender));
    let answer = gw.get("/status/200", None).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json(), serde_json::json!({}));
    assert_eq!(
        upstream.connections(),
        2,
        "the half-read request reuses the idle connection, which is then closed, not reused"
    );
    gw.stop().await;

    // An upstream with a 20 ms keep-alive timeout that closes idle connections without
    // announcing it, as servers do: requests arriving while the pooled connection is
    // open reuse it, those arriving after it closed get a new one, none fails.
    const KEEP_ALIVE_MS: u64 = 20;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closing = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let server = tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                let mut answered = false;
                loop {
                    // The keep-alive timeout runs only between requests, while nothing
                    // has arrived: a new connection waits for its first request as long
                    // as a busy machine needs (a limit there fails the very request that
                    // was rightly sent again on a fresh connection).
                    let wait = if head.is_empty() && answered {
                        Duration::from_millis(KEEP_ALIVE_MS)
                    } else {
                        Duration::from_secs(5)
                    };
                    match tokio::time::timeout(wait, stream.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                    if head.windows(4).any(|w| w == b"\r\n\r\n") {
                        head.clear();
                        answered = true;
                        if stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    let gw = GatewayBuilder::new(&db, &upstream)
        .upstream_addr(closing)
        .rules(OPS_RULES)
        .start()
        .await;
    let mut failures = Vec::new();
    for i in 0..60u64 {
        let answer = gw.get("/status/200", None).await;
        if answer.status != 200 {
            failures.push((i, answer.status, answer.text()));
        }
        // Well inside the keep-alive time, or well after it (never on its edge).
        // (20 ms is long enough that a loaded CI machine does not stretch a 1 ms pause
        // past it.)
        let pause = if i % 2 == 0 { 1 } else { 3 * KEEP_ALIVE_MS };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    assert!(failures.is_empty(), "{failures:?}");
    let opened = accepted.load(Ordering::SeqCst);
    assert!(
        (25..=35).contains(&opened),
        "{opened} connections for 30 idle closes"
    );
    gw.stop().await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_valid_rules_and_keeps_the_old_ones_on_errors_under_load() {
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    let gw = Arc::new(ops_gateway(&db, &upstream, "").await);
    // Load: requests on a route that every version of the file keeps.
    let failures = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (gw, failures, sent, stop) = (
            Arc::clone(&gw),
            Arc::clone(&failures),
            Arc::clone(&sent),
            Arc::clone(&stop),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if gw.get("/status/200", None).await.status != 200 {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    assert_eq!(gw.get("/new", None).await.status, 404);
    gw.rewrite_rules(&format!("{OPS_RULES}\n[[route]]\nname = \"new\"\nmethods = [\"GET\"]\npath = \"/new\"\nauth = \"public\"\n"));
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.get("/new", None).await.status == 200
        })
        .await,
        "valid file not reloaded"
    );

    gw.rewrite_rules(&format!(
        "{OPS_RULES}\n[[route]]\nname = \"broken\"\nmethods = [\"GET\"]\npath = \"no-slash\"\n"
    ));
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(
                &gw.metrics().await,
                "flexgate_config_reloads_total{result=\"failure\"}",
            ) >= 1.0
        })
        .await,
        "invalid file not noticed"
    );
    assert_eq!(
        gw.get("/new", None).await.status,
        200,
        "the old rules stay after an invalid file"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert!(sent.load(Ordering::Relaxed) > 20);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    let metrics = gw.metrics().await;
    assert!(
        metric(
            &metrics,
            "flexgate_config_reloads_total{result=\"success\"}"
        ) >= 2.0,
        "{metrics}"
    );
    Arc::try_unwrap(gw).ok().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests_and_stops_accepting() {
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    let mut gw = ops_gateway(&db, &upstream, "").await;
    let mut in_flight = Vec::new();
    for _ in 0..5 {
        let mut sender = gw.connect::<http_body_util::Empty<Bytes>>().await;
        let request = http::Request::get(gw.url("/slow/800"))
            .header("host", "localhost")
            .body(http_body_util::Empty::new())
            .unwrap();
        in_flight.push(tokio::spawn(async move {
            sender
                .send_request(request)
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    assert!(eventually(Duration::from_secs(5), || async { upstream.count() == 5 }).await);
    let https = gw.https;
    let started = Instant::now();
    let stopping = tokio::spawn(gw.running.take().unwrap().shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tokio::net::TcpStream::connect(https).await.is_err(),
        "still accepting after shutdown began"
    );
    for request in in_flight {
        assert_eq!(
            request
                .await
                .unwrap()
                .expect("an in-flight request was dropped"),
            200
        );
    }
    stopping.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_big_headers_and_too_many_connections_are_cut_off() {
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    let gw = ops_gateway(
        &db,
        &upstream,
        "[server.limits]\nheader_read_timeout_ms = 500\nmax_header_bytes = 8192\nmax_connections = 2",
    )
    .await;
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&gw.tls.client));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();

    // A request head that never ends is cut off after the head timeout.
    let tcp = tokio::net::TcpStream::connect(gw.https).await.unwrap();
    let mut slow = connector.connect(name.clone(), tcp).await.unwrap();
    slow.write_all(b"GET /status/200 HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "slowloris connection held open"
    );
    drop(slow);

    // A keep-alive connection that sends no next request is closed after the same timeout.
    let tcp = tokio::net::TcpStream::connect(gw.https).await.unwrap();
    let mut idle = connector.connect(name.clone(), tcp).await.unwrap();
    idle.write_all(b"GET /status/200 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut first = vec![0u8; 1024];
    let n = idle.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest)).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "idle keep-alive connection held open"
    );

    // Oversized headers are refused before any routing.
    let before = upstream.count();
    let big = format!(
        "GET /status/200 HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let answer = gw.raw(big.as_bytes()).await;
    assert!(
        answer.is_empty()
            || answer.starts_with("HTTP/1.1 431")
            || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    assert_eq!(upstream.count(), before);

    // Two connections are the limit: a third is not served until one closes.
    let mut held = Vec::new();
    for _ in 0..2 {
        let tcp = tokio::net::TcpStream::connect(gw.https).await.unwrap();
        let mut tls = connector.connect(name.clone(), tcp).await.unwrap();
        tls.write_all(b"GET /slow/1500 HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        held.push(tls);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A third connection is closed at once (its TLS handshake fails).
    let third = tokio::time::timeout(Duration::from_secs(3), async {
        let tcp = tokio::net::TcpStream::connect(gw.https).await.unwrap();
        connector.connect(name.clone(), tcp).await
    })
    .await
    .expect("the third connection was neither served nor closed");
    assert!(
        third.is_err(),
        "a third connection was served beyond max_connections"
    );
    assert_eq!(
        metric(&gw.metrics().await, "flexgate_connections_refused_total"),
        1.0
    );
    drop(held);
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.get("/status/200", None).await.status == 200
        })
        .await
    );
    gw.stop().await;
}
