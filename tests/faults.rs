//! Broken neighbours: the database stopped, unreachable or slow in the middle of a load,
//! and an upstream that is down, slow or resetting. flexgate must fail closed, keep
//! serving what it may from cache, report itself unready, recover on its own, and leak
//! nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;

/// More assets, so every uncached request can name a fresh id.
const MORE_ASSETS: &str = "INSERT INTO demo_asset (id, name, account_id) \
    SELECT g, 'asset ' || g, 3 FROM generate_series(100, 5000) g;";

/// Counts of answers by status during a load.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    unavailable: AtomicUsize,
    other: AtomicUsize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_fails_closed_serves_the_cache_and_recovers() {
    let Some((db, faults, via)) = postgres_behind_proxy().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let gw = Arc::new(
        GatewayBuilder::new(&db, &upstream)
            .demo()
            .database_url(&via)
            .start()
            .await,
    );
    gw.store.execute_script(MORE_ASSETS).await.unwrap();
    let token = Arc::new(gw.demo_token("prosumer@flexgate.demo").await);
    assert_eq!(
        gw.get("/api/v3_0/assets/1", Some(&token)).await.status,
        200,
        "warm the caches"
    );

    // Load: one loop on a cached decision, one on ever-new ids (each needs the database).
    let stop = Arc::new(AtomicBool::new(false));
    let (cached, uncached) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
    let next_id = Arc::new(AtomicUsize::new(100));
    let mut load = Vec::new();
    for fresh in [false, true] {
        let (gw, token, stop, next_id) = (
            Arc::clone(&gw),
            Arc::clone(&token),
            Arc::clone(&stop),
            Arc::clone(&next_id),
        );
        let tally = Arc::clone(if fresh { &uncached } else { &cached });
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let path = if fresh {
                    format!(
                        "/api/v3_0/assets/{}",
                        next_id.fetch_add(1, Ordering::Relaxed)
                    )
                } else {
                    "/api/v3_0/assets/1".to_owned()
                };
                let answer = gw.get(&path, Some(&token)).await;
                match answer.status {
                    200 => &tally.ok,
                    503 => {
                        assert_eq!(answer.json()["status"], 503);
                        &tally.unavailable
                    }
                    _ => &tally.other,
                }
                .fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_cut = uncached.ok.load(Ordering::Relaxed);
    assert!(before_cut > 0);

    faults.cut();
    let cut_at = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || async {
            uncached.unavailable.load(Ordering::Relaxed) >= 3
        })
        .await,
        "lookups did not fail closed"
    );
    assert_eq!(plain_get(gw.admin, "/readyz").await.0, 503);
    let cached_during = cached.ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        cached.ok.load(Ordering::Relaxed) > cached_during,
        "cached decisions stopped during the outage"
    );
    // Logging in needs the database too: 503, not 401.
    let login = gw
        .send(
            "POST",
            "/api/requestAuthToken",
            &[("content-type", "application/json")],
            r#"{"email": "prosumer@flexgate.demo", "password": "flexgate-demo"}"#,
        )
        .await;
    assert_eq!(login.status, 503, "{}", login.text());
    println!("failed closed after {:?}", cut_at.elapsed());

    faults.restore();
    let unavailable_at_restore = uncached.unavailable.load(Ordering::Relaxed);
    let ok_at_restore = uncached.ok.load(Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(15), || async {
            uncached.ok.load(Ordering::Relaxed) > ok_at_restore + 20
        })
        .await,
        "uncached lookups did not recover without a restart"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            plain_get(gw.admin, "/readyz").await.0 == 200
        })
        .await
    );
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(
        cached.other.load(Ordering::Relaxed) + uncached.other.load(Ordering::Relaxed),
        0,
        "answers other than 200 or 503"
    );
    assert_eq!(
        cached.unavailable.load(Ordering::Relaxed),
        0,
        "a cached decision failed during the outage"
    );
    println!(
        "uncached: {} ok, {} unavailable ({} during the outage)",
        uncached.ok.load(Ordering::Relaxed),
        uncached.unavailable.load(Ordering::Relaxed),
        unavailable_at_restore
    );
    Arc::try_unwrap(gw).ok().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_database_fails_requests_closed_within_the_query_timeout() {
    let Some((db, faults, via)) = postgres_behind_proxy().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let gw = GatewayBuilder::new(&db, &upstream)
        .demo()
        .database_url(&via)
        .start()
        .await;
    let token = gw.demo_token("prosumer@flexgate.demo").await;
    assert_eq!(gw.get("/api/v3_0/assets/1", Some(&token)).await.status, 200);
    faults.slow(Duration::from_secs(6));
    let started = Instant::now();
    let answer = gw.get("/api/v3_0/assets/2", Some(&token)).await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited {:?} for a hung database",
        started.elapsed()
    );
    // The cached decision is unaffected.
    let started = Instant::now();
    assert_eq!(gw.get("/api/v3_0/assets/1", Some(&token)).await.status, 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    faults.restore();
    assert!(
        eventually(Duration::from_secs(15), || async {
            gw.get("/api/v3_0/assets/2", Some(&token)).await.status == 200
        })
        .await
    );
    gw.stop().await;
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_leak_no_connections() {
    use crate::serve::{call, serve_config, spawn};
    let db = TestDb::sqlite();
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules =
        "[[route]]\nname = \"any\"\nmethods = [\"GET\"]\npath = \"/{*rest}\"\nauth = \"public\"\n";
    let config = serve_config(
        dir.path(),
        &upstream,
        rules,
        "[server.limits]\nupstream_timeout_secs = 1\nheader_read_timeout_ms = 500\nupstream_idle_secs = 1",
    );
    let process = spawn(
        &db,
        &["serve", "--config", config.to_str().unwrap()],
        &[],
        dir.path(),
    );
    let pid = process.child.id();
    let https = process.https.clone();
    // Warm up, then let pooled connections expire: the baseline holds no idle ones.
    for _ in 0..5 {
        call(&https, "GET", "/status/200", &[("connection", "close")], "").await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let baseline = open_fds(pid);
    // Three storms of failing calls (resets, timeouts, upstream 503s); after each has
    // settled, the process holds no more descriptors than before.
    let mut after_storm = Vec::new();
    for _ in 0..3 {
        let tasks: Vec<_> = (0..60)
            .map(|i| {
                let https = https.clone();
                tokio::spawn(async move {
                    let path = match i % 3 {
                        0 => "/reset",
                        1 => "/slow/2000",
                        _ => "/status/503",
                    };
                    call(&https, "GET", path, &[("connection", "close")], "")
                        .await
                        .0
                })
            })
            .collect();
        let mut statuses = std::collections::BTreeMap::new();
        for task in tasks {
            *statuses.entry(task.await.unwrap()).or_insert(0) += 1;
        }
        assert_eq!(statuses.get(&502), Some(&20), "{statuses:?}");
        assert_eq!(statuses.get(&504), Some(&20), "{statuses:?}");
        assert_eq!(
            statuses.get(&503),
            Some(&20),
            "the upstream's own 503 passes through: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(2500)).await;
        after_storm.push(open_fds(pid));
    }
    assert!(
        after_storm.iter().all(|n| *n <= baseline + 2),
        "descriptors stayed open after the storms: baseline {baseline}, after each {after_storm:?}"
    );
    assert_eq!(
        call(&https, "GET", "/status/200", &[], "").await.0,
        200,
        "the gateway still serves"
    );
}
