//! What flexgate's upstream client puts on the wire and accepts from it, against a
//! scripted raw-TCP upstream: request framing, response framing (chunked, until close,
//! interim 1xx), malformed answers (502, never passed on), an answer that comes before
//! the upload ends, and which requests are sent again when a pooled connection turns
//! out to be closed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::common::*;

const WIRE_RULES: &str = r#"
[[route]]
name = "any"
methods = ["GET", "HEAD", "POST", "PUT", "DELETE"]
path = "/{*rest}"
auth = "public"
"#;

/// What the scripted upstream does with one request.
#[derive(Clone, Copy)]
enum Act {
    /// Write these bytes and keep the connection.
    Answer(&'static [u8]),
    /// Write these bytes and close.
    AnswerAndClose(&'static [u8]),
    /// Close without answering.
    Close,
}

/// Every request received: (connection number, raw bytes).
type Log = Arc<Mutex<Vec<(usize, Vec<u8>)>>>;

/// A raw-TCP upstream: reads each request (head and body, framed by Content-Length or
/// chunked), records it with its connection number, and acts as `script` says for
/// (connection number, request number on that connection).
struct Scripted {
    addr: SocketAddr,
    seen: Log,
    task: tokio::task::JoinHandle<()>,
}

impl Scripted {
    async fn start(script: fn(usize, usize, &[u8]) -> Act) -> Scripted {
        Scripted::start_with(script, None).await
    }

    /// The same upstream, speaking HTTPS with the test certificate.
    async fn start_tls(script: fn(usize, usize, &[u8]) -> Act, tls: &Tls) -> Scripted {
        Scripted::start_with(script, Some(tls_acceptor(tls))).await
    }

    async fn start_with(
        script: fn(usize, usize, &[u8]) -> Act,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let mut conn_no = 0;
            while let Ok((stream, _)) = listener.accept().await {
                conn_no += 1;
                let log = Arc::clone(&log);
                match &tls {
                    None => drop(tokio::spawn(serve(stream, conn_no, script, log))),
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve(stream, conn_no, script, log).await;
                            }
                        });
                    }
                }
            }
        });
        Scripted { addr, seen, task }
    }

    fn requests(&self) -> Vec<(usize, String)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(c, r)| (*c, String::from_utf8_lossy(r).into_owned()))
            .collect()
    }
}

async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    conn_no: usize,
    script: fn(usize, usize, &[u8]) -> Act,
    log: Log,
) {
    let mut buf = Vec::new();
    let mut request_no = 0;
    loop {
        let Some(len) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        let request: Vec<u8> = buf.drain(..len).collect();
        request_no += 1;
        log.lock().unwrap().push((conn_no, request.clone()));
        match script(conn_no, request_no, &request) {
            Act::Answer(bytes) => {
                if stream.write_all(bytes).await.is_err() || stream.flush().await.is_err() {
                    return;
                }
            }
            Act::AnswerAndClose(bytes) => {
                let _ = stream.write_all(bytes).await;
                return;
            }
            Act::Close => return,
        }
    }
}

/// Read one whole request into `buf`; its length, or `None` at end of input.
async fn read_request<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Option<usize> {
    loop {
        if let Some(len) = request_len(buf) {
            return Some(len);
        }
        let mut chunk = [0u8; 65536];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn request_len(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if head.contains("transfer-encoding: chunked") {
        let end = buf[head_end..].windows(5).position(|w| w == b"0\r\n\r\n")?;
        return Some(head_end + end + 5);
    }
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
    (buf.len() >= head_end + length).then_some(head_end + length)
}

/// The request target of a raw request (`/path` of `GET /path HTTP/1.1`).
fn target_of(request: &[u8]) -> &[u8] {
    request.split(|b| *b == b' ').nth(1).unwrap_or_default()
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

async fn gateway(db: &TestDb, upstream: &Scripted) -> TestGateway {
    let placeholder = Upstream::start().await;
    GatewayBuilder::new(db, &placeholder)
        .upstream_addr(upstream.addr)
        .rules(WIRE_RULES)
        .server("workers = 1")
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_framing_comes_from_the_body_sent_never_from_the_client() {
    let db = TestDb::sqlite();
    let upstream = Scripted::start(|_, _, _| Act::Answer(OK)).await;
    let gw = gateway(&db, &upstream).await;

    // A buffered body of known length: one Content-Length, ours.
    assert_eq!(gw.send("POST", "/a", &[], "hello").await.status, 200);
    // No body on a GET: no length header at all; an empty POST says 0.
    assert_eq!(gw.get("/b", None).await.status, 200);
    assert_eq!(gw.send("POST", "/c", &[], "").await.status, 200);
    // A body streamed with chunked coding goes on chunked, re-framed by flexgate.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let mut sender = gw.connect::<ChannelBody>().await;
    let request = http::Request::put(gw.url("/d"))
        .header("host", "localhost")
        .body(ChannelBody(rx))
        .unwrap();
    let response = tokio::spawn(async move { sender.send_request(request).await.unwrap() });
    tx.send(Bytes::from_static(b"abc")).await.unwrap();
    tx.send(Bytes::from_static(b"defgh")).await.unwrap();
    drop(tx);
    assert_eq!(response.await.unwrap().status(), 200);

    let seen = upstream.requests();
    assert_eq!(seen.len(), 4, "{seen:?}");
    let (post, get, empty, put) = (&seen[0].1, &seen[1].1, &seen[2].1, &seen[3].1);
    assert!(post.starts_with("POST /a HTTP/1.1\r\n"), "{post}");
    assert_eq!(post.matches("content-length").count(), 1, "{post}");
    assert!(post.contains("content-length: 5\r\n") && post.ends_with("\r\n\r\nhello"));
    assert!(get.starts_with("GET /b HTTP/1.1\r\n") && !get.contains("content-length"));
    assert!(!get.contains("transfer-encoding"), "{get}");
    assert!(empty.contains("content-length: 0\r\n"), "{empty}");
    assert!(put.contains("transfer-encoding: chunked\r\n"), "{put}");
    assert!(
        put.ends_with("\r\n\r\n3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n"),
        "{put:?}"
    );
    // Every request went over the one pooled connection.
    assert!(seen.iter().all(|(conn, _)| *conn == 1), "{seen:?}");
    // An expectation is the client's with flexgate (hyper answers it); the upstream
    // gets the body at once, and no `Expect` it could answer early and then read that
    // body as a request of its own.
    let answer = gw
        .send("POST", "/e", &[("expect", "100-continue")], "hello")
        .await;
    assert_eq!(answer.status, 200);
    let expecting = &upstream.requests()[4].1;
    assert!(
        expecting.ends_with("\r\n\r\nhello") && !expecting.contains("expect"),
        "{expecting}"
    );
    // A body on a GET: an upstream that ignores it would read it as a request of its
    // own; the connection ends with this exchange.
    assert_eq!(gw.send("GET", "/g", &[], "abc").await.status, 200);
    assert_eq!(gw.get("/h", None).await.status, 200);
    let seen = upstream.requests();
    let (with_body, next) = (&seen[5], &seen[6]);
    assert!(
        with_body.1.contains("connection: close\r\n") && with_body.1.ends_with("\r\n\r\nabc"),
        "{}",
        with_body.1
    );
    assert_eq!((with_body.0, next.0), (1, 2), "{seen:?}");
    gw.stop().await;
    upstream.task.abort();
}

/// One answer that fills the upstream client's first read exactly (16 KiB), and behind
/// it, in the same flight, an answer to a request nobody sent.
static EXACT_READ_THEN_STALE: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let head = b"HTTP/1.1 200 OK\r\ncontent-length: 16342\r\n\r\n";
    let mut out = head.to_vec();
    out.resize(16 * 1024, b'x');
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nSTALE");
    out
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_an_https_upstream_sent_beyond_its_answer_never_answer_the_next_request() {
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let tls = test_tls(dir.path());
    let upstream = Scripted::start_tls(
        |conn, request, _| match (conn, request) {
            (1, 1) => Act::Answer(&EXACT_READ_THEN_STALE),
            _ => Act::Answer(OK),
        },
        &tls,
    )
    .await;
    let placeholder = Upstream::start().await;
    let gw = GatewayBuilder::new(&db, &placeholder)
        .upstream_url(&format!("https://localhost:{}", upstream.addr.port()))
        .server(&format!(
            "workers = 1\nupstream_ca = {:?}",
            tls.ca.display().to_string()
        ))
        .rules(WIRE_RULES)
        .start()
        .await;
    let first = gw.get("/first", None).await;
    assert_eq!((first.status, first.body.len()), (200, 16342));
    // rustls has decrypted the stale answer already; the socket itself is quiet.
    let second = gw.get("/second", None).await;
    assert_eq!(second.status, 200);
    assert_eq!(
        &second.body[..],
        b"ok",
        "answered from bytes left on the connection"
    );
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].0, 2, "the second request went on a new connection");
    gw.stop().await;
    upstream.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_interim_and_close_delimited_answers_arrive_whole() {
    let db = TestDb::sqlite();
    let upstream = Scripted::start(|_, _, request| {
        let path = target_of(request);
        match path {
            b"/chunked" => Act::Answer(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nx-trailer: t\r\n\r\n",
            ),
            b"/interim" => Act::Answer(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\ndone",
            ),
            b"/until-close" => Act::AnswerAndClose(b"HTTP/1.1 200 OK\r\n\r\nuntil the end"),
            _ => Act::Answer(OK),
        }
    })
    .await;
    let gw = gateway(&db, &upstream).await;
    for _ in 0..2 {
        let answer = gw.get("/chunked", None).await;
        assert_eq!(
            (answer.status, answer.text().as_str()),
            (200, "hello world")
        );
        assert!(!answer.headers.contains_key("x-trailer"));
        let answer = gw.get("/interim", None).await;
        assert_eq!((answer.status, answer.text().as_str()), (201, "done"));
        let answer = gw.get("/until-close", None).await;
        assert_eq!(
            (answer.status, answer.text().as_str()),
            (200, "until the end")
        );
        assert_eq!(gw.get("/after", None).await.status, 200);
    }
    // The chunked and interim answers left their connection reusable; a close-
    // delimited one cannot be: each round's ends with its connection.
    let connections: Vec<usize> = upstream.requests().iter().map(|(c, _)| *c).collect();
    assert_eq!(
        connections,
        [1, 1, 1, 2, 2, 2, 2, 3],
        "{:?}",
        upstream.requests()
    );
    gw.stop().await;
    upstream.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_answers_are_502_and_never_reach_the_client() {
    let db = TestDb::sqlite();
    let upstream = Scripted::start(|_, _, request| {
        let path = target_of(request);
        Act::AnswerAndClose(match path {
            b"/two-lengths" => {
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nokk"
            }
            b"/bad-length" => b"HTTP/1.1 200 OK\r\ncontent-length: 2x\r\n\r\nok",
            b"/bad-status" => b"HTTP/1.1 2000 OK\r\ncontent-length: 2\r\n\r\nok",
            b"/not-http" => b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
            b"/bad-header" => b"HTTP/1.1 200 OK\r\nbad header: x\r\ncontent-length: 2\r\n\r\nok",
            b"/nothing" => b"",
            _ => OK,
        })
    })
    .await;
    let gw = gateway(&db, &upstream).await;
    for path in [
        "/two-lengths",
        "/bad-length",
        "/bad-status",
        "/not-http",
        "/bad-header",
        "/nothing",
    ] {
        let answer = gw.get(path, None).await;
        assert_eq!(answer.status, 502, "{path}: {}", answer.text());
        assert!(answer.json()["message"].is_string(), "{path}");
        assert!(!answer.text().contains("okk"), "{path}");
    }
    gw.stop().await;
    upstream.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_by_the_upstream_is_never_completed_for_the_client() {
    let db = TestDb::sqlite();
    let upstream = Scripted::start(|_, _, request| {
        let path = target_of(request);
        Act::AnswerAndClose(match path {
            b"/short" => b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
            _ => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
        })
    })
    .await;
    let gw = gateway(&db, &upstream).await;
    for path in ["/short", "/chunk-cut"] {
        let mut sender = gw.connect::<Full<Bytes>>().await;
        let request = http::Request::get(gw.url(path))
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap();
        // The head may or may not have gone out before the cut; a complete body never.
        let body = match sender.send_request(request).await {
            Ok(response) => Some(response.into_body().collect().await.map(|b| b.to_bytes())),
            Err(_) => None,
        };
        assert!(
            !matches!(body, Some(Ok(_))),
            "{path}: the client got a complete body: {body:?}"
        );
    }
    gw.stop().await;
    upstream.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_upload_ends_reaches_the_client_at_once() {
    let db = TestDb::sqlite();
    // Answers 413 from the head alone and keeps the connection open, reading nothing
    // more: flexgate must not wait for the upload to end.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    let server = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let _ = stream
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 3\r\n\r\nbig")
                .await;
            open.push(stream);
        }
    });
    let placeholder = Upstream::start().await;
    let gw = GatewayBuilder::new(&db, &placeholder)
        .upstream_addr(addr)
        .rules(WIRE_RULES)
        .server("workers = 1")
        .start()
        .await;
    for round in 1..=2 {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let mut sender = gw.connect::<ChannelBody>().await;
        let request = http::Request::post(gw.url("/upload"))
            .header("host", "localhost")
            .body(ChannelBody(rx))
            .unwrap();
        let response = tokio::spawn(async move { sender.send_request(request).await });
        // The client keeps the upload open without sending more (sending into a connection
        // the server closes after answering would race the answer with a reset); the
        // answer must come anyway.
        let response = tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .expect("flexgate waited for the upload to end")
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), 413);
        drop(tx);
        // A connection whose request was not fully sent is never reused.
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            round,
            "round {round}"
        );
    }
    gw.stop().await;
    server.abort();
}

/// An upstream whose first connection answers its first request, then takes the second
/// and closes without answering: the race a pooled connection can lose. Later
/// connections answer everything.
async fn losing_the_race(db: &TestDb) -> (Scripted, TestGateway) {
    let upstream = Scripted::start(|conn, request_no, _| match (conn, request_no) {
        (1, 2) => Act::Close,
        _ => Act::Answer(OK),
    })
    .await;
    let gw = gateway(db, &upstream).await;
    (upstream, gw)
}

/// Send on one client connection (one worker, so one upstream idle list); the status.
async fn send_on(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    gw: &TestGateway,
    method: &str,
    body: &'static str,
) -> http::StatusCode {
    let request = http::Request::builder()
        .method(method)
        .uri(gw.url("/r"))
        .header("host", "localhost")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    sender.ready().await.unwrap();
    sender.send_request(request).await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_closed_under_a_request_is_retried_only_when_safe() {
    let db = TestDb::sqlite();
    let (upstream, gw) = losing_the_race(&db).await;
    let mut sender = gw.connect::<Full<Bytes>>().await;
    assert_eq!(send_on(&mut sender, &gw, "GET", "").await, 200);
    // An idempotent request with nothing received back: sent again on a new connection.
    assert_eq!(send_on(&mut sender, &gw, "GET", "").await, 200);
    let seen = upstream.requests();
    assert_eq!(
        seen.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
        [1, 1, 2],
        "{seen:?}"
    );
    gw.stop().await;
    upstream.task.abort();

    // A POST in the same spot may have had its effect: 502, never sent twice.
    let (upstream, gw) = losing_the_race(&db).await;
    let mut sender = gw.connect::<Full<Bytes>>().await;
    assert_eq!(send_on(&mut sender, &gw, "GET", "").await, 200);
    assert_eq!(send_on(&mut sender, &gw, "POST", "pay 10 EUR").await, 502);
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[1].1.starts_with("POST /r") && seen[1].1.ends_with("pay 10 EUR"));
    // The next request still works, on a fresh connection.
    assert_eq!(send_on(&mut sender, &gw, "GET", "").await, 200);
    assert_eq!(upstream.requests().last().unwrap().0, 2);
    gw.stop().await;
    upstream.task.abort();
}

const UPGRADE_RULES: &str = r#"
[[route]]
name = "public"
methods = ["GET"]
path = "/public/{*rest}"
auth = "public"

[[route]]
name = "plain"
methods = ["GET"]
path = "/plain/{*rest}"
auth = "public"
upgrades = []

[[route]]
name = "private"
methods = ["GET", "DELETE"]
path = "/private/{*rest}"
"#;

/// Answers every request with a switch to h2c, as an upstream open to h2c smuggling
/// does.
const SWITCH_H2C: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";

async fn read_answer<S: tokio::io::AsyncRead + Unpin>(io: &mut S) -> String {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, io.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&out);
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                break;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Issue 18, defect 1: `Upgrade: h2c` is never forwarded, and an upstream's 101 to a
/// request that did not (or could not) ask for it never turns the client's connection
/// into an unchecked tunnel: the next request on it is decided like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_never_becomes_an_unchecked_tunnel() {
    let db = TestDb::sqlite();
    let upstream = Scripted::start(|_, _, _| Act::Answer(SWITCH_H2C)).await;
    let placeholder = Upstream::start().await;
    let gw = GatewayBuilder::new(&db, &placeholder)
        .upstream_addr(upstream.addr)
        .rules(UPGRADE_RULES)
        .server("workers = 1")
        .start()
        .await;
    let mut tls = h2raw::tls_connect(gw.https, &gw.tls.client, &[b"http/1.1"]).await;
    tls.write_all(
        b"GET /public/x HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await
    .unwrap();
    let answer = read_answer(&mut tls).await;
    assert!(
        answer.starts_with("HTTP/1.1 502"),
        "the upstream's 101 was passed on: {answer}"
    );
    // The same client connection, now with a forged identity and no token.
    tls.write_all(
        b"DELETE /private/x HTTP/1.1\r\nHost: localhost\r\nX-Flexgate-User-Id: 1\r\n\r\n",
    )
    .await
    .unwrap();
    let answer = read_answer(&mut tls).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 401"),
        "a request after the 101 was not decided: {answer}"
    );
    let seen = upstream.requests();
    assert_eq!(
        seen.len(),
        1,
        "only the first request reached the upstream: {seen:?}"
    );
    let first = seen[0].1.to_ascii_lowercase();
    assert!(!first.contains("upgrade"), "Upgrade was forwarded: {first}");
    assert!(
        !first.contains("http2-settings"),
        "HTTP2-Settings was forwarded: {first}"
    );
    gw.stop().await;
}

/// A WebSocket upgrade passes only where the route allows it, and a 101 naming another
/// protocol than the one asked for is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_pass_only_for_the_protocols_a_route_allows() {
    let db = TestDb::sqlite();
    let upstream = Scripted::start(|_, _, _| Act::Answer(SWITCH_H2C)).await;
    let placeholder = Upstream::start().await;
    let gw = GatewayBuilder::new(&db, &placeholder)
        .upstream_addr(upstream.addr)
        .rules(UPGRADE_RULES)
        .server("workers = 1")
        .start()
        .await;
    let websocket = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    };
    // Allowed protocol, but the upstream switches to h2c: refused.
    let mut tls = h2raw::tls_connect(gw.https, &gw.tls.client, &[b"http/1.1"]).await;
    tls.write_all(websocket("/public/ws").as_bytes())
        .await
        .unwrap();
    let answer = read_answer(&mut tls).await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    let seen = upstream.requests();
    assert!(
        seen[0]
            .1
            .to_ascii_lowercase()
            .contains("upgrade: websocket"),
        "an allowed upgrade is forwarded"
    );
    // A route with `upgrades = []`: the offer is removed.
    let mut tls = h2raw::tls_connect(gw.https, &gw.tls.client, &[b"http/1.1"]).await;
    tls.write_all(websocket("/plain/ws").as_bytes())
        .await
        .unwrap();
    let answer = read_answer(&mut tls).await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    let seen = upstream.requests();
    assert!(
        !seen[1].1.to_ascii_lowercase().contains("upgrade"),
        "{}",
        seen[1].1
    );
    gw.stop().await;
}
