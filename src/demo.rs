//! Everything `flexgate demo` needs that a real deployment brings itself: a small
//! schema of assets and sensors, demo accounts and users of every role, a self-signed
//! certificate, and a demo upstream that echoes what it receives and verifies the
//! identity signature the way an upstream service should.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::auth::PasswordHasher;
use crate::proxy::headers::verify_signature;
use crate::settings::Secret;
use crate::store::{NewAccount, NewUser, Store, UserRef};

/// Why the demo could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Seeding the database failed.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// Hashing the demo password failed.
    #[error(transparent)]
    Auth(#[from] crate::auth::Error),
    /// The certificate could not be generated.
    #[error("generating the demo certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// A file or socket could not be used.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The password of every demo user.
pub const DEMO_PASSWORD: &str = "flexgate-demo";

/// The demo's assets and sensors (SQLite and PostgreSQL alike).
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS demo_asset (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    account_id INTEGER NULL REFERENCES flexgate_account (id),
    parent_asset_id INTEGER NULL REFERENCES demo_asset (id)
);
CREATE TABLE IF NOT EXISTS demo_sensor (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    asset_id INTEGER NOT NULL REFERENCES demo_asset (id)
);
INSERT INTO demo_asset (id, name, account_id, parent_asset_id) VALUES
    (1, 'Prosumer battery', 3, NULL),
    (2, 'Prosumer PV', 3, 1),
    (3, 'Supplier portfolio', 4, NULL),
    (4, 'Public weather station', NULL, NULL);
INSERT INTO demo_sensor (id, name, asset_id) VALUES
    (1, 'battery state of charge', 1),
    (2, 'PV production', 2),
    (3, 'day-ahead prices', 3),
    (4, 'outside temperature', 4);
";

/// Demo accounts: (id, name, consultancy, account roles).
pub const ACCOUNTS: &[(i64, &str, Option<i64>, &[&str])] = &[
    (1, "Demo Host", None, &[]),
    (2, "Green Consultancy", None, &["Consultancy"]),
    (3, "Prosumer Co", Some(2), &["Prosumer"]),
    (4, "Supplier Ltd", None, &["Supplier"]),
];

/// Demo users: (id, email, account, roles, active).
pub const USERS: &[(i64, &str, i64, &[&str], bool)] = &[
    (1, "admin@flexgate.demo", 1, &["admin"], true),
    (2, "reader@flexgate.demo", 1, &["admin-reader"], true),
    (3, "consultant@flexgate.demo", 2, &["consultant"], true),
    (
        4,
        "prosumer-admin@flexgate.demo",
        3,
        &["account-admin"],
        true,
    ),
    (5, "prosumer@flexgate.demo", 3, &[], true),
    (6, "supplier@flexgate.demo", 4, &["account-admin"], true),
    (7, "inactive@flexgate.demo", 3, &[], false),
    (8, "task-runner@flexgate.demo", 1, &["task-runner"], true),
];

/// Create the demo accounts, users, assets and sensors in an empty, migrated database.
pub async fn seed(store: &Store, bcrypt_cost: u32) -> Result<(), Error> {
    for (id, name, consultancy, roles) in ACCOUNTS {
        store
            .add_account(&NewAccount {
                id: Some(*id),
                name: (*name).into(),
                consultancy_account_id: *consultancy,
                roles: roles.iter().map(|r| r.to_string()).collect(),
            })
            .await?;
    }
    let hasher = PasswordHasher::new(bcrypt_cost, 2)?;
    let hash = hasher.hash(DEMO_PASSWORD.into()).await?;
    for (id, email, account, roles, active) in USERS {
        store
            .add_user(&NewUser {
                id: Some(*id),
                email: (*email).into(),
                password_hash: hash.clone(),
                account_id: *account,
                roles: roles.iter().map(|r| r.to_string()).collect(),
            })
            .await?;
        if !active {
            store.set_active(&UserRef::Id(*id), false).await?;
        }
    }
    store.execute_script(SCHEMA).await?;
    Ok(())
}

/// Write a self-signed certificate for `localhost` and `127.0.0.1` into `dir`.
pub fn self_signed(dir: &Path) -> Result<(PathBuf, PathBuf), Error> {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, certified.cert.pem())?;
    std::fs::write(&key, certified.signing_key.serialize_pem())?;
    Ok((cert, key))
}

/// Start the demo upstream on `addr`: it answers every request with a JSON echo of the
/// method, path, identity headers and whether their signature verifies.
pub async fn start_upstream(
    addr: SocketAddr,
    secret: Secret,
    prefix: String,
) -> Result<(SocketAddr, JoinHandle<()>), Error> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let secret = secret.clone();
            let prefix = prefix.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let answer = echo(&req, &secret, &prefix);
                    async move { Ok::<_, Infallible>(answer) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((local, task))
}

fn echo(req: &Request<Incoming>, secret: &Secret, prefix: &str) -> Response<Full<Bytes>> {
    let header = |suffix: &str| {
        req.headers()
            .get(format!("{prefix}{suffix}"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let signature = verify_signature(
        secret,
        req.headers(),
        prefix,
        req.method(),
        req.uri().path(),
        crate::auth::unix_now(),
        60,
    );
    let body = json!({
        "upstream": "flexgate demo upstream",
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "identity": {
            "user_id": header("user-id"),
            "email": header("user-email"),
            "account_id": header("account-id"),
            "roles": header("user-roles"),
            "account_roles": header("account-roles"),
        },
        "signature_valid": signature.is_ok(),
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
