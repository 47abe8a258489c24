//! Several flexgate processes on one PostgreSQL, as the README says to run them: the
//! brute-force limits hold across replicas (failed logins are counted in the shared
//! database), and a database that cannot count refuses logins instead of lifting the
//! limits.

use serde_json::json;

use crate::common::*;

const THROTTLE: &str =
    "[auth.throttle]\nfailures_per_email = 3\nfailures_per_client = 100\nwindow_secs = 60";

fn demo_rules() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml")).unwrap()
}

/// Two flexgate processes' worth of gateways on one database (the first seeds the demo
/// data), with these throttle settings.
async fn two_replicas(
    db: &TestDb,
    upstream: &Upstream,
    throttle: &str,
) -> (TestGateway, TestGateway) {
    let a = GatewayBuilder::new(db, upstream)
        .demo()
        .server(throttle)
        .start()
        .await;
    let b = GatewayBuilder::new(db, upstream)
        .rules(&demo_rules())
        .server(throttle)
        .start()
        .await;
    (a, b)
}

async fn attempt(gw: &TestGateway, email: &str, password: &str) -> Answer {
    gw.send(
        "POST",
        "/api/requestAuthToken",
        &[("content-type", "application/json")],
        &json!({"email": email, "password": password}).to_string(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_count_across_replicas() {
    let Some(db) = TestDb::postgres() else { return };
    let upstream = Upstream::start().await;
    let (a, b) = two_replicas(&db, &upstream, THROTTLE).await;
    let email = "prosumer@flexgate.demo";
    // Three failures, spread over both replicas...
    for gw in [&a, &b, &a] {
        assert_eq!(attempt(gw, email, "wrong-password").await.status, 401);
    }
    // ...and the limit holds on both, for the right password too.
    for gw in [&b, &a] {
        let answer = attempt(gw, email, "flexgate-demo").await;
        assert_eq!(answer.status, 429, "{}", answer.text());
        let retry: u64 = answer.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
    }
    // Another email is not affected.
    assert_eq!(
        attempt(&b, "prosumer-admin@flexgate.demo", "flexgate-demo")
            .await
            .status,
        200
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_per_client_address_count_across_replicas() {
    let Some(db) = TestDb::postgres() else { return };
    let upstream = Upstream::start().await;
    let per_client =
        "[auth.throttle]\nfailures_per_email = 100\nfailures_per_client = 4\nwindow_secs = 60";
    let (a, b) = two_replicas(&db, &upstream, per_client).await;
    // Four failures from one address, each for another email, over both replicas...
    for (n, gw) in [&a, &b, &a, &b].into_iter().enumerate() {
        let email = format!("guess-{n}@example.com");
        assert_eq!(attempt(gw, &email, "wrong").await.status, 401);
    }
    // ...and that address is refused on both, whatever email it tries next.
    for gw in [&a, &b] {
        let answer = attempt(gw, "prosumer@flexgate.demo", "flexgate-demo").await;
        assert_eq!(answer.status, 429, "{}", answer.text());
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_fail_closed_when_only_the_counts_cannot_be_read() {
    let Some(db) = TestDb::postgres() else { return };
    let upstream = Upstream::start().await;
    let gw = GatewayBuilder::new(&db, &upstream)
        .demo()
        .server(THROTTLE)
        .start()
        .await;
    assert_eq!(
        attempt(&gw, "prosumer@flexgate.demo", "flexgate-demo")
            .await
            .status,
        200
    );
    // The users stay readable; only the failure counts are gone.
    let sql = |q: &str| crate::common::fm::psql(&db.url, q);
    sql("ALTER TABLE flexgate_login_failure RENAME TO flexgate_login_failure_away");
    for password in ["flexgate-demo", "wrong-password"] {
        let answer = attempt(&gw, "prosumer@flexgate.demo", password).await;
        assert_eq!(
            answer.status,
            503,
            "a login was decided without its failure counts: {}",
            answer.text()
        );
    }
    sql("ALTER TABLE flexgate_login_failure_away RENAME TO flexgate_login_failure");
    assert!(
        eventually(std::time::Duration::from_secs(10), || async {
            attempt(&gw, "prosumer@flexgate.demo", "flexgate-demo")
                .await
                .status
                == 200
        })
        .await
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_fail_closed_when_the_counts_cannot_be_read() {
    let Some((db, faults, via)) = postgres_behind_proxy().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let gw = GatewayBuilder::new(&db, &upstream)
        .demo()
        .database_url(&via)
        .server(THROTTLE)
        .start()
        .await;
    assert_eq!(
        attempt(&gw, "prosumer@flexgate.demo", "flexgate-demo")
            .await
            .status,
        200
    );
    faults.cut();
    let answer = attempt(&gw, "prosumer@flexgate.demo", "flexgate-demo").await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    faults.restore();
    assert!(
        eventually(std::time::Duration::from_secs(10), || async {
            attempt(&gw, "prosumer@flexgate.demo", "flexgate-demo")
                .await
                .status
                == 200
        })
        .await
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_and_a_lift_keep_the_later_event_whatever_order_they_land_in() {
    let mut dbs = vec![TestDb::sqlite()];
    dbs.extend(TestDb::postgres());
    for db in &dbs {
        let store = flexgate::store::Store::connect(&db.url, &Default::default())
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let key = [7u8; 32];
        let state = |store: &flexgate::store::Store| {
            let store = store.clone();
            async move {
                let rows = store.revoked_sessions_since(0, 0).await.unwrap();
                rows.iter().find(|r| r.key == [7u8; 32]).map(|r| r.lifted)
            }
        };
        // The logout (at 2) lands after the lift of an earlier login (at 1)...
        store.revoke_session(&key, i64::MAX, 2).await.unwrap();
        store.lift_session(&key, i64::MAX, 1).await.unwrap();
        assert_eq!(
            state(&store).await,
            Some(false),
            "{}: an older lift won",
            db.url
        );
        // ...and a later login's lift (at 3) replaces it, as a logout after it would.
        store.lift_session(&key, i64::MAX, 3).await.unwrap();
        assert_eq!(state(&store).await, Some(true));
        store.revoke_session(&key, i64::MAX, 4).await.unwrap();
        assert_eq!(state(&store).await, Some(false));
        store.close().await;
    }
}
