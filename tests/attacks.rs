//! Hostile requests against a running gateway, as raw bytes over TLS so nothing on the
//! client side tidies them up. Each row says what must come back and whether the
//! upstream may see the request at all; a denied request must never reach it.

use serde_json::json;

use crate::common::*;

/// How a row's answer is judged.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Exactly this status, and the upstream saw nothing.
    Denied(u16),
    /// One of these statuses (or the connection closed), and the upstream saw nothing.
    Refused(&'static [u16]),
    /// 200, and the upstream saw exactly this path.
    Forwarded(&'static str),
}

fn status_of(answer: &str) -> Option<u16> {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
}

async fn judge(
    gw: &TestGateway,
    upstream: &Upstream,
    name: &str,
    raw: &[u8],
    expect: Expect,
    failures: &mut Vec<String>,
) {
    let before = upstream.count();
    let answer = gw.raw(raw).await;
    let status = status_of(&answer);
    let seen = upstream.count() - before;
    let ok = match expect {
        Expect::Denied(code) => status == Some(code) && seen == 0,
        Expect::Refused(codes) => status.is_none_or(|s| codes.contains(&s)) && seen == 0,
        Expect::Forwarded(path) => status == Some(200) && seen == 1 && upstream.last().path == path,
    };
    if !ok {
        let first = answer.lines().next().unwrap_or("(connection closed)");
        failures.push(format!(
            "{name}: expected {expect:?}, got {first:?}, upstream saw {seen}"
        ));
    }
}

fn get(path: &str, token: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {token}\r\n{extra}Connection: close\r\n\r\n").into_bytes()
}

fn post_json(path: &str, token: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {token}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

both_backends_async! {
    async fn hostile_requests_are_refused_and_never_reach_the_upstream(db) {
        let upstream = Upstream::start().await;
        let gw = GatewayBuilder::new(db, &upstream).demo().start().await;
        // The prosumer may read assets 1, 2 and 4; asset 3 belongs to another account.
        let t = gw.demo_token("prosumer@flexgate.demo").await;
        let t = t.as_str();
        use Expect::*;
        let rows: Vec<(&str, Vec<u8>, Expect)> = vec![
            // the baseline: allowed, forwarded as normalised
            ("own asset", get("/api/v3_0/assets/1", t, ""), Forwarded("/api/v3_0/assets/1")),
            ("unreserved escapes decoded", get("/api/v3_0/assets/%31", t, ""), Forwarded("/api/v3_0/assets/1")),
            ("escaped letters decoded", get("/api/%76%33_0/assets/1", t, ""), Forwarded("/api/v3_0/assets/1")),
            ("someone else's asset", get("/api/v3_0/assets/3", t, ""), Denied(403)),
            // path tricks aimed at asset 3
            ("dot-dot", get("/api/v3_0/assets/1/../3", t, ""), Denied(400)),
            ("encoded dot-dot", get("/api/v3_0/assets/1/%2e%2e/3", t, ""), Denied(400)),
            ("upper-case encoded dot-dot", get("/api/v3_0/assets/1/%2E%2E/3", t, ""), Denied(400)),
            ("half-encoded dot-dot", get("/api/v3_0/assets/1/.%2e/3", t, ""), Denied(400)),
            ("dot segment", get("/api/v3_0/./assets/3", t, ""), Denied(400)),
            ("encoded slash", get("/api/v3_0/assets%2F3", t, ""), Denied(400)),
            ("encoded slash lower", get("/api/v3_0/assets/1%2f..%2f3", t, ""), Denied(400)),
            ("double-encoded slash", get("/api/v3_0/assets/%252F3", t, ""), Denied(422)),
            ("encoded backslash", get("/api/v3_0/assets/1%5C..%5C3", t, ""), Denied(400)),
            ("raw backslash", get("/api/v3_0/assets/1\\..\\3", t, ""), Refused(&[400])),
            ("double slash", get("//api/v3_0/assets/3", t, ""), Denied(400)),
            ("inner double slash", get("/api/v3_0//assets/3", t, ""), Denied(400)),
            ("trailing dot", get("/api/v3_0/assets/3.", t, ""), Denied(422)),
            ("semicolon parameter", get("/api/v3_0/assets/3;jsessionid=1", t, ""), Denied(400)),
            ("dot-dot with parameter", get("/api/v3_0/assets/1/..;/3", t, ""), Denied(400)),
            ("overlong dot", get("/api/v3_0/assets/1/%C0%AE%C0%AE/3", t, ""), Denied(400)),
            ("overlong slash", get("/api/v3_0/assets/1%C0%AF..%C0%AF3", t, ""), Denied(400)),
            ("encoded NUL", get("/api/v3_0/assets/3%00", t, ""), Denied(400)),
            ("raw NUL", get("/api/v3_0/assets/3\0", t, ""), Refused(&[400])),
            ("raw space", get("/api/v3_0/assets/1 3", t, ""), Refused(&[400])),
            ("mixed case, case-sensitive upstream", get("/API/V3_0/ASSETS/3", t, ""), Denied(404)),
            ("absolute form", get("https://localhost/api/v3_0/assets/3", t, ""), Denied(403)),
            ("number beyond 64 bits", get("/api/v3_0/assets/99999999999999999999999", t, ""), Denied(404)),
            ("signed id", get("/api/v3_0/assets/+3", t, ""), Denied(422)),
            // identity spoofing
            ("spoofed identity, no token", b"GET /api/v3_0/assets/1 HTTP/1.1\r\nHost: localhost\r\nX-Flexgate-User-Id: 1\r\nX-Flexgate-User-Roles: admin\r\nConnection: close\r\n\r\n".to_vec(), Denied(401)),
            ("two Authorization headers", get("/api/v3_0/assets/1", t, &format!("Authorization: {t}\r\n")), Denied(401)),
            ("obs-fold header", get("/api/v3_0/assets/1", t, "X-Flexgate-User-Id: 4\r\n 1\r\n"), Refused(&[400])),
            ("header with NUL", get("/api/v3_0/assets/1", t, "X-Flexgate-User-Id: 1\0\r\n"), Refused(&[400])),
            // request smuggling shapes
            ("CL and TE", format!("POST /api/v3_0/assets/1 HTTP/1.1\r\nHost: localhost\r\nAuthorization: {t}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\nGET /api/v3_0/assets/3 HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes(), Refused(&[400, 404])),
            ("two Content-Lengths", format!("POST /api/v3_0/assets HTTP/1.1\r\nHost: localhost\r\nAuthorization: {t}\r\nContent-Length: 2\r\nContent-Length: 40\r\nConnection: close\r\n\r\n{{}}").into_bytes(), Refused(&[400])),
            ("bad transfer coding", format!("POST /api/v3_0/assets HTTP/1.1\r\nHost: localhost\r\nAuthorization: {t}\r\nTransfer-Encoding: xchunked\r\nConnection: close\r\n\r\n").into_bytes(), Refused(&[400, 501])),
            // JSON-body tricks for body-extracted ids
            ("duplicate keys", post_json("/api/v3_0/assets", t, "application/json", r#"{"parent_asset_id": 1, "parent_asset_id": 3}"#), Denied(400)),
            ("nested duplicate keys", post_json("/api/v3_0/sensors/1/schedules/trigger", t, "application/json", r#"{"flex-model": [{"sensor": 2, "sensor": 3}]}"#), Denied(400)),
            ("id as string of another account", post_json("/api/v3_0/assets", t, "application/json", r#"{"parent_asset_id": "3"}"#), Denied(403)),
            ("float id", post_json("/api/v3_0/assets", t, "application/json", r#"{"parent_asset_id": 1.0}"#), Denied(422)),
            ("huge number", post_json("/api/v3_0/assets", t, "application/json", r#"{"parent_asset_id": 1e400}"#), Denied(400)),
            ("beyond u64", post_json("/api/v3_0/assets", t, "application/json", r#"{"parent_asset_id": 999999999999999999999}"#), Denied(422)),
            ("id in an object", post_json("/api/v3_0/assets", t, "application/json", r#"{"parent_asset_id": {"id": 1}}"#), Denied(422)),
            ("deep nesting", post_json("/api/v3_0/assets", t, "application/json", &("[".repeat(5000) + &"]".repeat(5000))), Denied(400)),
            ("JSON as text/plain", post_json("/api/v3_0/assets", t, "text/plain", r#"{"parent_asset_id": 3}"#), Denied(422)),
            ("JSON as form", post_json("/api/v3_0/assets", t, "application/x-www-form-urlencoded", r#"{"parent_asset_id": 3}"#), Denied(422)),
            ("list smuggling another sensor", post_json("/api/v3_0/sensors/1/schedules/trigger", t, "application/json", r#"{"flex-model": [{"sensor": 2}, {"sensor": 3}]}"#), Denied(403)),
            ("charset parameter accepted", post_json("/api/v3_0/assets", t, "application/json; charset=utf-8", r#"{"parent_asset_id": 1}"#), Forwarded("/api/v3_0/assets")),
            // query tricks
            ("repeated query id", get("/api/v3_0/users?account=3&account=4", t, ""), Denied(400)),
            ("encoded query name", get("/api/v3_0/users?account=3&%61ccount=4", t, ""), Denied(400)),
            ("query id with semicolon", get("/api/v3_0/users?account=3;account=4", t, ""), Denied(422)),
            // sizes
            ("body over the JSON limit", post_json("/api/v3_0/assets", t, "application/json", &format!("{{\"pad\": \"{}\"}}", "x".repeat(2 << 20))), Denied(413)),
            ("chunked body over the JSON limit", {
                let chunk = "x".repeat(1 << 20);
                let mut raw = format!("POST /api/v3_0/assets HTTP/1.1\r\nHost: localhost\r\nAuthorization: {t}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
                for _ in 0..3 {
                    raw.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
                }
                raw.push_str("0\r\n\r\n");
                raw.into_bytes()
            }, Denied(413)),
            ("oversized headers", get("/api/v3_0/assets/1", t, &format!("X-Pad: {}\r\n", "a".repeat(40_000))), Refused(&[431, 400])),
            ("oversized token", get("/api/v3_0/assets/1", &"a".repeat(5000), ""), Denied(401)),
        ];
        let mut failures = Vec::new();
        for (name, raw, expect) in &rows {
            judge(&gw, &upstream, name, raw, *expect, &mut failures).await;
        }
        assert!(failures.is_empty(), "{} of {} hostile requests misbehaved:\n{}", failures.len(), rows.len(), failures.join("\n"));
        gw.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_upstream_sees_is_clean() {
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    let gw = GatewayBuilder::new(&db, &upstream).demo().start().await;
    let t = gw.demo_token("prosumer@flexgate.demo").await;
    // Host and X-Forwarded-* from the client are replaced; identity headers in every
    // spelling are dropped, also when repeated; trailers never arrive.
    let raw = format!(
        "POST /api/v3_0/sensors/1/data HTTP/1.1\r\nHost: evil.example\r\nAuthorization: {t}\r\n\
         X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: http\r\n\
         x-flexgate-user-id: 1\r\nX-FLEXGATE-USER-ID: 2\r\nX_Flexgate_User_Id: 3\r\nX-Flexgate-Anything: x\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nTrailer: X-Flexgate-User-Id\r\nConnection: close\r\n\r\n\
         2\r\n{{}}\r\n0\r\nX-Flexgate-User-Id: 1\r\nX-Flexgate-User-Roles: admin\r\n\r\n"
    );
    let answer = gw.raw(raw.as_bytes()).await;
    assert_eq!(status_of(&answer), Some(200), "{answer}");
    let seen = upstream.last();
    let h = &seen.headers;
    assert_eq!(
        h.get_all("x-flexgate-user-id").iter().collect::<Vec<_>>(),
        ["5"]
    );
    assert!(h.get("x_flexgate_user_id").is_none());
    assert!(h.get("x-flexgate-anything").is_none());
    assert!(h.get("trailer").is_none());
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-host"], "evil.example");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["host"], upstream.addr.to_string().as_str());
    assert_eq!(&seen.body[..], b"{}");
    let sig = h["x-flexgate-signature"].to_str().unwrap();
    assert_eq!(
        sig,
        expected_signature(h, "POST", "/api/v3_0/sensors/1/data")
    );

    // A case-insensitive upstream: matching ignores case, so mixed case cannot dodge a rule.
    let rules =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml")).unwrap();
    gw.rewrite_rules(&format!(
        "[paths]\ncase_insensitive = true\n{}",
        rules.replace("[paths]\nunmatched_status = 404\n", "")
    ));
    assert!(
        eventually(std::time::Duration::from_secs(5), || async {
            gw.get("/API/V3_0/ASSETS/1", Some(&t)).await.status == 200
        })
        .await
    );
    assert_eq!(gw.get("/API/V3_0/ASSETS/3", Some(&t)).await.status, 403);
    assert_eq!(
        gw.get("/Api/V3_0/Assets/3", Some(&t)).await.json()["status"],
        json!("INVALID_SENDER")
    );
    gw.stop().await;
}
