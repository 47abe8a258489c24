//! What FlexMeasures mode's revalidation costs PostgreSQL: FlexMeasures-shaped identity
//! tables with N users (default 10,000, `FLEXGATE_BENCH_USERS`), all of them in the
//! cache, then revalidation passes as the background task runs them once a second.
//! Reports the time per pass and the CPU the PostgreSQL server processes spent per pass
//! (read from `/proc`, so PostgreSQL must run on this machine), and what that is as a
//! share of one core at the default interval.
//!
//! `DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench revalidate`
//! (a scratch database is created next to the named one and dropped afterwards).

use std::time::{Duration, Instant};

use flexgate::auth::flexmeasures::FmAuthenticator;
use flexgate::metrics::Metrics;
use flexgate::rules::{CacheSettings, ThrottleSettings};
use flexgate::settings::{FlexMeasuresSecrets, Secret};
use flexgate::store::{ConnectOptions, Store};
use sqlx::Connection;

const SCHEMA: &str = "
CREATE TABLE account (id serial PRIMARY KEY, name varchar(100) UNIQUE, consultancy_account_id integer REFERENCES account(id));
CREATE TABLE account_role (id serial PRIMARY KEY, name varchar(80) UNIQUE);
CREATE TABLE roles_accounts (id serial PRIMARY KEY, account_id integer REFERENCES account(id), role_id integer REFERENCES account_role(id), UNIQUE (role_id, account_id));
CREATE TABLE fm_user (id serial PRIMARY KEY, email varchar(255) UNIQUE, username varchar(255) UNIQUE, password varchar(255), active boolean, fs_uniquifier varchar(64) NOT NULL UNIQUE, account_id integer NOT NULL REFERENCES account(id));
CREATE TABLE role (id serial PRIMARY KEY, name varchar(80) UNIQUE);
CREATE TABLE roles_users (id serial PRIMARY KEY, user_id integer REFERENCES fm_user(id), role_id integer REFERENCES role(id), UNIQUE (role_id, user_id));
";

fn postgres_cpu_ticks() -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let path = entry.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if !comm.starts_with("postgres") {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let utime: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
        let stime: u64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        total += utime + stime;
    }
    total
}

#[tokio::main]
async fn main() {
    let Ok(admin) = std::env::var("DATABASE_URL") else {
        eprintln!("set DATABASE_URL=postgres://... to run this bench");
        return;
    };
    let users: usize = std::env::var("FLEXGATE_BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let passes: usize = std::env::var("FLEXGATE_BENCH_PASSES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let name = format!("flexgate_bench_revalidate_{}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .unwrap();
    let url = format!("{}/{name}", &admin[..admin.rfind('/').unwrap()]);
    let store = Store::connect(&url, &ConnectOptions::default())
        .await
        .unwrap();
    store.execute_script(SCHEMA).await.unwrap();
    store
        .execute_script(&format!(
            "INSERT INTO account (name) SELECT 'account ' || g FROM generate_series(1, 100) g;
             UPDATE account SET consultancy_account_id = 1 WHERE id > 1 AND id % 2 = 0;
             INSERT INTO account_role (name) VALUES ('Consultancy'), ('Prosumer');
             INSERT INTO roles_accounts (account_id, role_id) SELECT id, 2 FROM account WHERE id > 1;
             INSERT INTO role (name) VALUES ('admin'), ('account-admin'), ('consultant');
             INSERT INTO fm_user (email, username, password, active, fs_uniquifier, account_id)
               SELECT 'u' || g || '@example.com', 'u' || g, '$2b$04$xxxxxxxxxxxxxxxxxxxxxu', true,
                      'uid-' || g, 1 + g % 100 FROM generate_series(1, {users}) g;
             INSERT INTO roles_users (user_id, role_id) SELECT id, 2 FROM fm_user WHERE id % 10 = 0;
             ANALYZE;"
        ))
        .await
        .unwrap();
    let secrets = FlexMeasuresSecrets {
        secret_key: Some(Secret::new(b"bench-secret".to_vec())),
        ..Default::default()
    };
    let cache = CacheSettings {
        principal_ttl: Duration::from_secs(3600),
        ..Default::default()
    };
    let fm = FmAuthenticator::new(
        store.clone(),
        None,
        None,
        &secrets,
        Duration::from_secs(21600),
        1,
        &cache,
        &ThrottleSettings::default(),
        Metrics::new(),
    )
    .unwrap();
    let started = Instant::now();
    for g in 1..=users {
        let uid: std::sync::Arc<str> = std::sync::Arc::from(format!("uid-{g}"));
        fm.user(&uid).await.expect("user loads");
    }
    println!(
        "cached {users} users in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let (_, dropped) = fm.revalidate().await.unwrap();
    assert_eq!(dropped, 0, "nothing changed, nothing is dropped");
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    let cpu_before = postgres_cpu_ticks();
    let started = Instant::now();
    for _ in 0..passes {
        let (checked, dropped) = fm.revalidate().await.unwrap();
        assert_eq!((checked, dropped), (users, 0));
    }
    let wall = started.elapsed() / passes as u32;
    let cpu = (postgres_cpu_ticks() - cpu_before) as f64 / ticks_per_sec / passes as f64;
    println!(
        "revalidation of {users} cached users: {:.1} ms per pass, PostgreSQL CPU {:.1} ms per pass ({:.1}% of one core at one pass a second), {} queries per pass",
        wall.as_secs_f64() * 1000.0,
        cpu * 1000.0,
        cpu * 100.0,
        users.div_ceil(10_000)
    );
    // A change is found: one user deactivated.
    store
        .execute_script("UPDATE fm_user SET active = false WHERE id = 7")
        .await
        .unwrap();
    let (_, dropped) = fm.revalidate().await.unwrap();
    assert_eq!(dropped, 1);
    store.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
}
