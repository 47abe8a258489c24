//! The HTTP/2 attack table: hostile requests built frame by frame (see
//! `common/h2raw.rs`) against the real proxy over TLS, covering the classes that turn
//! an HTTP/2-to-HTTP/1.1 proxy into a smuggling or spoofing device (H2.CL, H2.TE, CR/LF
//! in fields, connection-specific headers, pseudo-header tricks, CONNECT) and bounded
//! floods (CONTINUATION, HPACK). Each row is refused (stream reset, GOAWAY or a 4xx)
//! or neutralised (served, with the dangerous part gone), never passed on; afterwards
//! flexgate still serves and nothing is left in flight.

use std::time::Duration;

use crate::common::h2raw::*;
use crate::common::*;
use crate::hardening::RULES;

/// What must happen to a row.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Not served: reset, GOAWAY, closed, or 4xx; the upstream never sees the path
    /// (or, for body rows, never a body longer than the client declared).
    Refused,
    /// Served, and none of these headers reach the upstream.
    Stripped(&'static [&'static str]),
    /// Either refused, or served with these headers gone (for inputs RFC 9113 calls
    /// malformed but that an HTTP/2 layer may also normalise away).
    RefusedOrStripped(&'static [&'static str]),
}

struct Row {
    name: &'static str,
    /// Header fields in order (pseudo-headers included), sent as literals.
    fields: Vec<(&'static [u8], &'static [u8])>,
    /// DATA frames, the last one with END_STREAM.
    data: Vec<&'static [u8]>,
    /// Trailer fields, sent after the data with END_STREAM.
    trailers: Vec<(&'static [u8], &'static [u8])>,
    expect: Expect,
}

fn get(
    path: &'static str,
    extra: &[(&'static [u8], &'static [u8])],
) -> Vec<(&'static [u8], &'static [u8])> {
    request_fields("GET", path, extra)
}

fn post(
    path: &'static str,
    extra: &[(&'static [u8], &'static [u8])],
) -> Vec<(&'static [u8], &'static [u8])> {
    request_fields("POST", path, extra)
}

fn row(name: &'static str, fields: Vec<(&'static [u8], &'static [u8])>, expect: Expect) -> Row {
    Row {
        name,
        fields,
        data: Vec::new(),
        trailers: Vec::new(),
        expect,
    }
}

fn table() -> Vec<Row> {
    use Expect::*;
    let identity: &[&str] = &[
        "x-flexgate-user-id",
        "x_flexgate_user_id",
        "x-flexgate-signature",
    ];
    vec![
        // H2.CL and H2.TE: the body framing the client claims never reaches HTTP/1.1.
        Row {
            name: "content-length above the DATA sent",
            fields: post("/public/cl-short", &[(b"content-length", b"10")]),
            data: vec![b"hello"],
            trailers: vec![],
            expect: Refused,
        },
        Row {
            name: "content-length below the DATA sent, smuggled request behind",
            fields: post("/public/cl-long", &[(b"content-length", b"5")]),
            data: vec![
                b"hello",
                b"GET /public/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n",
            ],
            trailers: vec![],
            expect: Refused,
        },
        Row {
            name: "transfer-encoding chunked with a smuggled request in the body",
            fields: post("/public/te", &[(b"transfer-encoding", b"chunked")]),
            data: vec![b"0\r\n\r\nGET /public/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n"],
            trailers: vec![],
            expect: Refused,
        },
        // Connection-specific fields are malformed in HTTP/2 (RFC 9113 8.2.2).
        row(
            "connection",
            get("/public/conn", &[(b"connection", b"keep-alive")]),
            Refused,
        ),
        row(
            "upgrade h2c",
            get("/public/upgrade", &[(b"upgrade", b"h2c")]),
            Refused,
        ),
        row(
            "keep-alive",
            get("/public/ka", &[(b"keep-alive", b"timeout=5")]),
            Refused,
        ),
        row(
            "proxy-connection",
            get("/public/pc", &[(b"proxy-connection", b"keep-alive")]),
            Refused,
        ),
        row(
            "te other than trailers",
            get("/public/te-gzip", &[(b"te", b"gzip")]),
            Refused,
        ),
        // Field syntax (RFC 9113 8.2.1): CR, LF, NUL, colon, uppercase, space.
        row(
            "CRLF in a value",
            get("/public/crlf", &[(b"x-a", b"b\r\nx-flexgate-user-id: 1")]),
            Refused,
        ),
        row(
            "LF in a value",
            get("/public/lf", &[(b"x-a", b"b\nx-flexgate-user-id: 1")]),
            Refused,
        ),
        row(
            "NUL in a value",
            get("/public/nul", &[(b"x-a", b"b\0c")]),
            Refused,
        ),
        row(
            "colon in a name",
            get("/public/colon", &[(b"x:a", b"1")]),
            Refused,
        ),
        row(
            "space in a name",
            get("/public/space", &[(b"x a", b"1")]),
            Refused,
        ),
        row(
            "uppercase name",
            get("/public/upper", &[(b"X-Flexgate-User-Id", b"1")]),
            RefusedOrStripped(identity),
        ),
        row(
            "leading space in a value",
            get("/public/lws", &[(b"x-a", b" b")]),
            RefusedOrStripped(&[]),
        ),
        // Pseudo-header tricks (RFC 9113 8.3).
        row(
            "pseudo-header after a regular field",
            vec![
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", b"localhost"),
                (b"x-a", b"1"),
                (b":path", b"/public/late"),
            ],
            Refused,
        ),
        row(
            "duplicate :path",
            vec![
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", b"localhost"),
                (b":path", b"/public/dup"),
                (b":path", b"/private/dup"),
            ],
            Refused,
        ),
        row(
            "unknown pseudo-header",
            get("/public/unknown-pseudo", &[(b":foo", b"bar")]),
            Refused,
        ),
        row(
            ":status in a request",
            get("/public/status-pseudo", &[(b":status", b"200")]),
            Refused,
        ),
        row(
            "missing :method",
            vec![
                (b":scheme", b"https"),
                (b":authority", b"localhost"),
                (b":path", b"/public/no-method"),
            ],
            Refused,
        ),
        row(
            "empty :path",
            vec![
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", b"localhost"),
                (b":path", b""),
            ],
            Refused,
        ),
        row(
            "relative :path",
            vec![
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", b"localhost"),
                (b":path", b"public/relative"),
            ],
            Refused,
        ),
        row(
            "asterisk :path on GET",
            vec![
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", b"localhost"),
                (b":path", b"*"),
            ],
            Refused,
        ),
        row(
            "space in :path",
            vec![
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", b"localhost"),
                (b":path", b"/public/a b"),
            ],
            Refused,
        ),
        row(
            "dot segments in :path",
            get("/public/../private/x", &[]),
            Refused,
        ),
        row(
            "userinfo in :authority",
            vec![
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", b"user@localhost"),
                (b":path", b"/public/userinfo"),
            ],
            Refused,
        ),
        row(
            "host disagreeing with :authority",
            get("/public/host-mismatch", &[(b"host", b"evil.example")]),
            Refused,
        ),
        row(
            "lower-case method",
            request_fields("get", "/public/lower-method", &[]),
            Refused,
        ),
        // CONNECT and extended CONNECT (RFC 8441) are not proxied.
        row(
            "CONNECT",
            vec![(b":method", b"CONNECT"), (b":authority", b"localhost:443")],
            Refused,
        ),
        row(
            "extended CONNECT",
            vec![
                (b":method", b"CONNECT"),
                (b":protocol", b"websocket"),
                (b":scheme", b"https"),
                (b":authority", b"localhost"),
                (b":path", b"/public/ws"),
            ],
            Refused,
        ),
        // Spoofed identity and forwarding fields: removed, whatever the spelling.
        row(
            "identity header",
            get("/public/identity", &[(b"x-flexgate-user-id", b"1")]),
            Stripped(identity),
        ),
        row(
            "identity header with underscores",
            get("/public/underscore", &[(b"x_flexgate_user_id", b"1")]),
            Stripped(identity),
        ),
        row(
            "forged signature",
            get("/public/signature", &[(b"x-flexgate-signature", b"v1=00")]),
            Stripped(identity),
        ),
        row(
            "forwarded",
            get("/public/forwarded", &[(b"forwarded", b"for=1.2.3.4")]),
            Stripped(&["forwarded"]),
        ),
        row(
            "method override",
            post(
                "/public/override",
                &[(b"x-http-method-override", b"DELETE")],
            ),
            Stripped(&["x-http-method-override"]),
        ),
        Row {
            name: "identity header in trailers",
            fields: post("/public/trailers", &[]),
            data: vec![b"abc"],
            trailers: vec![(b"x-flexgate-user-id", b"1")],
            expect: Stripped(identity),
        },
    ]
}

fn path_of(fields: &[(&'static [u8], &'static [u8])]) -> String {
    fields
        .iter()
        .find(|(n, _)| *n == b":path")
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn http2_attack_table() {
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    let gw = GatewayBuilder::new(&db, &upstream)
        .rules(RULES)
        .server("workers = 1\n")
        .start()
        .await;
    let mut failures = Vec::new();
    for row in table() {
        let before = upstream.count();
        // A fresh connection per row: a refused row may cost the connection.
        let mut h2 = RawH2::connect(gw.https, &gw.tls.client).await;
        let id = h2.stream();
        let ends_in_headers = row.data.is_empty() && row.trailers.is_empty();
        let flags = END_HEADERS | if ends_in_headers { END_STREAM } else { 0 };
        let mut bytes = frame(HEADERS, flags, id, &block(&row.fields));
        for (i, data) in row.data.iter().enumerate() {
            let last = i + 1 == row.data.len() && row.trailers.is_empty();
            bytes.extend(frame(DATA, if last { END_STREAM } else { 0 }, id, data));
        }
        if !row.trailers.is_empty() {
            bytes.extend(frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                id,
                &block(&row.trailers),
            ));
        }
        h2.write(&bytes).await;
        let out = h2.outcome(id, Duration::from_secs(3)).await;
        let path = path_of(&row.fields);
        let seen: Vec<Seen> = upstream.requests().into_iter().skip(before).collect();
        let smuggled = seen.iter().any(|s| s.path.contains("smuggled"));
        let verdict = match row.expect {
            Expect::Refused => {
                let declared = row
                    .fields
                    .iter()
                    .find(|(n, _)| *n == b"content-length")
                    .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<usize>().ok());
                let served_whole = seen.iter().any(|s| match declared {
                    Some(n) => s.body.len() > n || (s.body.len() == n && n > 0),
                    None => true,
                });
                if !out.refused() {
                    Err(format!("served: {out:?}"))
                } else if served_whole || smuggled {
                    Err(format!("the upstream got it: {seen:?}"))
                } else {
                    Ok(())
                }
            }
            Expect::Stripped(names) | Expect::RefusedOrStripped(names) => {
                let refused_ok = matches!(row.expect, Expect::RefusedOrStripped(_));
                match (out.status, seen.last()) {
                    (Some(200), Some(s)) => {
                        match names
                            .iter()
                            .find(|n| s.headers.contains_key(**n) || s.trailers.contains_key(**n))
                        {
                            Some(n) => Err(format!("{n} reached the upstream")),
                            None if s.path != path => {
                                Err(format!("the upstream saw {} for {path}", s.path))
                            }
                            None => Ok(()),
                        }
                    }
                    _ if refused_ok && out.refused() && seen.is_empty() => Ok(()),
                    _ => Err(format!(
                        "not served as expected: {out:?}, upstream {seen:?}"
                    )),
                }
            }
        };
        if let Err(why) = verdict {
            failures.push(format!("{}: {why}", row.name));
        }
    }
    assert!(failures.is_empty(), "rows failed:\n{}", failures.join("\n"));
    // Still serving, and nothing left in flight.
    assert_eq!(gw.get("/public/after-table", None).await.status, 200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&gw.metrics().await, "flexgate_requests_in_flight") == 0.0
        })
        .await
    );
    gw.stop().await;
}

#[tokio::test]
async fn continuation_and_hpack_floods_are_bounded() {
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    let gw = GatewayBuilder::new(&db, &upstream)
        .rules(RULES)
        .server("workers = 1\n")
        .start()
        .await;

    // CONTINUATION flood: a header block that grows without end.
    let mut h2 = RawH2::connect(gw.https, &gw.tls.client).await;
    let id = h2.stream();
    let mut bytes = frame(
        HEADERS,
        END_STREAM,
        id,
        &block(&request_fields("GET", "/public/continuation", &[])),
    );
    let pad = vec![b'a'; 1000];
    let crumb = block(&[(b"x-pad", &pad)]);
    for _ in 0..2000 {
        bytes.extend(frame(CONTINUATION, 0, id, &crumb));
    }
    h2.write(&bytes).await;
    let (closed, kinds) = h2.closed_within(Duration::from_secs(5)).await;
    assert!(
        closed,
        "a CONTINUATION flood kept its connection; frames {kinds:?}"
    );

    // HPACK amplification: one large entry in the dynamic table, referenced many times.
    let mut h2 = RawH2::connect(gw.https, &gw.tls.client).await;
    let id = h2.stream();
    let big = vec![b'b'; 4000];
    let mut block_bytes = block(&request_fields("GET", "/public/hpack", &[]));
    block_bytes.extend(indexed_literal(b"x-big", &big));
    for _ in 0..200 {
        block_bytes.extend(indexed(62));
    }
    h2.write(&frame(HEADERS, END_HEADERS | END_STREAM, id, &block_bytes))
        .await;
    let out = h2.outcome(id, Duration::from_secs(5)).await;
    assert!(
        out.refused(),
        "an 800 kB decoded header list was served: {out:?}"
    );

    assert_eq!(upstream.count(), 0, "a flood request reached the upstream");
    assert_eq!(gw.get("/public/after-floods", None).await.status, 200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&gw.metrics().await, "flexgate_requests_in_flight") == 0.0
        })
        .await
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_path_of_only_a_query_reaches_the_upstream_as_the_path_checked() {
    // `:path ?x=1` is read as path `/`; the upstream must get `/?x=1`, not the
    // request line `GET ?x=1 HTTP/1.1`, which it would parse otherwise or refuse.
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    let gw = GatewayBuilder::new(&db, &upstream)
        .rules("[[route]]\nname = \"root\"\nmethods = [\"GET\"]\npath = \"/\"\nauth = \"public\"\n")
        .start()
        .await;
    let mut h2 = RawH2::connect(gw.https, &gw.tls.client).await;
    let id = h2.stream();
    let bytes = frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        id,
        &block(&request_fields("GET", "?x=1", &[])),
    );
    h2.write(&bytes).await;
    let out = h2.outcome(id, Duration::from_secs(3)).await;
    assert_eq!(out.status, Some(200), "{out:?}");
    let seen = upstream.last();
    assert_eq!(
        (seen.path.as_str(), seen.query.as_deref()),
        ("/", Some("x=1"))
    );
    gw.stop().await;
}
