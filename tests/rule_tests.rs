//! Operators' safety net: `flexgate config test` runs rule test suites like a test
//! runner (the shipped FlexMeasures and demo matrices among them), reports errors in a
//! suite like rule-file errors, and writes JUnit XML; shadow rules decide live requests
//! beside the enforced ones without changing a response; `config check` counts every
//! warning it prints.

use std::time::Duration;

use serde_json::Value;

use crate::common::*;

fn manifest(path: &str) -> String {
    format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_shipped_permission_matrices_pass() {
    let db = TestDb::sqlite();
    for (rules, suite, cases) in [
        (
            "config/flexmeasures.toml",
            "config/flexmeasures.tests.toml",
            309,
        ),
        ("config/demo.toml", "config/demo.tests.toml", 198),
    ] {
        let out = run(
            &db,
            &["config", "test", &manifest(rules), &manifest(suite)],
            None,
        );
        assert_eq!(out.code, 0, "{rules}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stdout.contains(&format!("{cases} passed, 0 failed")),
            "{}",
            out.stdout
        );
        assert_eq!(
            out.stdout.lines().filter(|l| l.starts_with("ok")).count(),
            cases
        );
    }
}

const SUITE: &str = r#"
[principals.member]
user_id = 10
account_id = 1

[owners.asset]
1 = { account_id = 1 }
3 = { account_id = 4 }

[[case]]
name = "own asset"
who = "member"
method = "GET"
path = "/api/v3_0/assets/1"
status = 200

[[case]]
name = "wrongly expected: another tenant's asset"
who = "member"
method = "GET"
path = "/api/v3_0/assets/3"
decision = "allow"

[[case]]
who = "member"
method = "DELETE"
path = "/api/v3_0/assets/1"
reason = "no_acl_item_matched"
"#;

#[test]
fn failures_show_what_was_expected_what_happened_and_why() {
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("rules.tests.toml");
    std::fs::write(&suite, SUITE).unwrap();
    let junit = dir.path().join("junit.xml");
    let rules = manifest("config/demo.toml");
    let out = run(
        &db,
        &[
            "config",
            "test",
            &rules,
            &suite.display().to_string(),
            "--junit",
            &junit.display().to_string(),
        ],
        None,
    );
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stdout.contains("ok      own asset"), "{}", out.stdout);
    assert!(
        out.stdout.contains("FAILED  wrongly expected"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("ok      DELETE /api/v3_0/assets/1 as member"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("expected: allow"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("actual:   status 403, deny, reason no_acl_item_matched"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("| check 1: read on asset 3"),
        "the failure lacks explain's trace: {}",
        out.stdout
    );
    assert!(out.stdout.contains("2 passed, 1 failed"), "{}", out.stdout);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains(r#"tests="3" failures="1""#), "{xml}");
    assert!(
        xml.contains(
            "<failure message=\"expected allow; got status 403, deny, reason no_acl_item_matched\">"
        ),
        "{xml}"
    );
    let out = run(
        &db,
        &[
            "config",
            "test",
            &rules,
            &suite.display().to_string(),
            "--json",
        ],
        None,
    );
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        (report["passed"].as_u64(), report["failed"].as_u64()),
        (Some(2), Some(1))
    );
}

#[test]
fn mistakes_in_a_suite_are_reported_with_file_and_line() {
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("bad.tests.toml");
    std::fs::write(
        &suite,
        "[owners.assett]\n1 = { account_id = 1 }\n\n[owners.asset]\n2 = { acount_id = 1 }\n\n[[case]]\nwho = \"bob\"\nmethod = \"GET\"\npath = \"/x\"\nstatus = 200\n",
    )
    .unwrap();
    let out = run(
        &db,
        &[
            "config",
            "test",
            &manifest("config/demo.toml"),
            &suite.display().to_string(),
        ],
        None,
    );
    assert_eq!(out.code, 1);
    let name = suite.display().to_string();
    for needle in [
        format!("{name}:1: error: owners.assett: the rules have no kind \"assett\""),
        format!("{name}:5: error: owners.asset.2: kind \"asset\" has no column \"acount_id\""),
        format!("{name}:7: error: case \"GET /x as bob\": who = \"bob\" names no principal"),
        "no case was run".to_owned(),
    ] {
        assert!(
            out.stderr.contains(&needle),
            "missing {needle:?} in:\n{}",
            out.stderr
        );
    }
}

#[test]
fn config_check_counts_the_warnings_it_prints() {
    let Some(db) = TestDb::postgres() else { return };
    run(&db, &["db", "migrate"], None).ok();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[route]]\nname = \"r\"\nmethods = [\"GET\"]\npath = \"/x\"\nroles_accepted = [\"gardener\"]\n",
    )
    .unwrap();
    let out = run(
        &db,
        &["config", "check", &rules.display().to_string()],
        None,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let printed = out
        .stderr
        .lines()
        .filter(|l| l.contains(": warning: "))
        .count();
    assert!(printed >= 2, "{}", out.stderr);
    assert!(
        out.stdout.contains(&format!("{printed} warnings)")),
        "printed {printed}, summary: {}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_rules_decide_beside_the_enforced_ones_without_effect() {
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    let demo = std::fs::read_to_string(manifest("config/demo.toml")).unwrap();
    // The candidate: asset reads for admins only.
    let dir = tempfile::tempdir().unwrap();
    let candidate = dir.path().join("candidate.toml");
    let stricter = demo.replace(
        "name = \"asset-read\"\nmethods = [\"GET\"]\npath = \"/api/v3_0/assets/{id}\"\n",
        "name = \"asset-read\"\nmethods = [\"GET\"]\npath = \"/api/v3_0/assets/{id}\"\nroles_required = [\"admin\"]\n",
    );
    assert_ne!(stricter, demo);
    std::fs::write(&candidate, &stricter).unwrap();
    let gw = GatewayBuilder::new(&db, &upstream)
        .demo()
        .rules(&format!(
            "[shadow]\nrules = {:?}\n\n{demo}",
            candidate.display().to_string()
        ))
        .start()
        .await;
    let token = gw.demo_token("prosumer@flexgate.demo").await;
    for _ in 0..3 {
        assert_eq!(
            gw.get("/api/v3_0/assets/1", Some(&token)).await.status,
            200,
            "the shadow changed a response"
        );
    }
    let series = "flexgate_shadow_decisions_total{enforced=\"allow\",route=\"asset-read\",shadow=\"forbidden\"}";
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&gw.metrics().await, series) >= 3.0
        })
        .await,
        "no disagreement counted: {}",
        gw.metrics().await
    );
    // Agreement is counted too.
    assert_eq!(gw.get("/api/v3_0/assets/3", Some(&token)).await.status, 403);
    let agree = "flexgate_shadow_decisions_total{enforced=\"forbidden\",route=\"asset-read\",shadow=\"forbidden\"}";
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&gw.metrics().await, agree) >= 1.0
        })
        .await
    );
    // A candidate with errors is not taken; the enforced rules go on, as do the old shadow rules.
    std::fs::write(&candidate, "this is not toml [").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(gw.get("/api/v3_0/assets/1", Some(&token)).await.status, 200);
    // A fixed candidate reloads: now it agrees.
    std::fs::write(&candidate, &demo).unwrap();
    let now_agree =
        "flexgate_shadow_decisions_total{enforced=\"allow\",route=\"asset-read\",shadow=\"allow\"}";
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.get("/api/v3_0/assets/1", Some(&token)).await;
            metric(&gw.metrics().await, now_agree) >= 1.0
        })
        .await,
        "the shadow rules were not reloaded"
    );
    gw.stop().await;

    // explain --shadow shows both decisions.
    std::fs::write(&candidate, &stricter).unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        format!("[shadow]\nrules = \"candidate.toml\"\n\n{demo}"),
    )
    .unwrap();
    let out = run(
        &db,
        &[
            "explain",
            "--config",
            &rules.display().to_string(),
            "--email",
            "prosumer@flexgate.demo",
            "--method",
            "GET",
            "--path",
            "/api/v3_0/assets/1",
            "--shadow",
        ],
        None,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("result: ALLOW"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("shadow result: DENY 403 (roles_required)"),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_of_the_enforced_rules_agrees_on_every_request() {
    // The candidate is the enforced file itself: any disagreement is the shadow
    // deciding another request than the proxy did (a refused Host, a second
    // Content-Type, a body that is not JSON).
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    let demo = std::fs::read_to_string(manifest("config/demo.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let candidate = dir.path().join("candidate.toml");
    std::fs::write(&candidate, &demo).unwrap();
    let gw = GatewayBuilder::new(&db, &upstream)
        .demo()
        .server("allowed_hosts = [\"localhost\"]")
        .rules(&format!(
            "[shadow]\nrules = {:?}\n\n{demo}",
            candidate.display().to_string()
        ))
        .start()
        .await;
    let token = gw.demo_token("prosumer@flexgate.demo").await;
    let trigger = "/api/v3_0/sensors/1/schedules/trigger";
    let body = r#"{"flex-model": [{"sensor": 1}]}"#;
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16);
    let cases: [Case; 3] = [
        ("allowed", &[("content-type", "application/json")], 200),
        ("not JSON", &[("content-type", "text/plain")], 422),
        (
            "two Content-Types",
            &[
                ("content-type", "application/json"),
                ("content-type", "text/plain"),
            ],
            400,
        ),
    ];
    for (what, headers, status) in cases {
        let mut all = vec![("authorization", token.as_str())];
        all.extend_from_slice(headers);
        let answer = gw.send("POST", trigger, &all, body).await;
        assert_eq!(answer.status, status, "{what}: {}", answer.text());
    }
    let wrong_host = gw
        .raw(format!("GET /api/v3_0/assets/1 HTTP/1.1\r\nHost: evil.example\r\nAuthorization: {token}\r\nConnection: close\r\n\r\n").as_bytes())
        .await;
    assert!(wrong_host.starts_with("HTTP/1.1 400"), "{wrong_host}");
    // Three decisions on the trigger route, all agreeing; none for the Host.
    let agreed = |text: &str| {
        ["allow", "bad_request"]
            .iter()
            .map(|d| {
                metric(
                    text,
                    &format!("flexgate_shadow_decisions_total{{enforced=\"{d}\",route=\"sensor-schedule-trigger\",shadow=\"{d}\"}}"),
                )
            })
            .sum::<f64>()
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            agreed(&gw.metrics().await) >= 3.0
        })
        .await,
        "the shadow did not agree three times: {}",
        gw.metrics().await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = gw.metrics().await;
    let disagreements: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("flexgate_shadow_decisions_total{"))
        .filter(|l| {
            let field = |name: &str| {
                l.split(&format!("{name}=\""))
                    .nth(1)
                    .and_then(|r| r.split('"').next())
            };
            field("enforced") != field("shadow")
        })
        .collect();
    assert!(disagreements.is_empty(), "{disagreements:?}");
    gw.stop().await;
}
