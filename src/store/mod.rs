//! Everything flexgate keeps in a database: the identity tables (accounts, users, roles),
//! the change feed that keeps every replica's caches honest, and the operator's
//! resource-owner queries.
//!
//! One [`Store`] wraps either a PostgreSQL or an SQLite pool, chosen by the URL scheme.
//! Queries are runtime strings with `$n` placeholders, which both drivers accept, so each
//! query is written once and run through [`dispatch!`] on whichever pool is configured.
//! Migrations for both databases live in `migrations/` and are compiled into the binary.

pub mod apikeys;
pub mod flexmeasures;
mod identity;
pub mod owner;
pub mod state;

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

pub use flexmeasures::{FmCredentials, FmUser};
pub use identity::{
    Account, Change, Credentials, NewAccount, NewUser, PrincipalRecord, User, UserRef,
    normalize_email, validate_role_name,
};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be reached or refused a query. Callers on the request
    /// path treat this as "fail closed".
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A named record does not exist.
    #[error("{what} {key} does not exist")]
    NotFound {
        /// The kind of record (`account`, `user`).
        what: &'static str,
        /// How the caller named it.
        key: String,
    },
    /// The change would break a uniqueness rule (duplicate email, account name).
    #[error("{0}")]
    Conflict(String),
    /// The input can never be valid (empty role name, self-consultancy).
    #[error("{0}")]
    Invalid(String),
    /// A request-path query took longer than the query timeout.
    #[error("database query timed out after {0:?}")]
    Timeout(Duration),
    /// A query that served several lookups at once (a batch of owner ids) failed; each
    /// of them gets this.
    #[error("{0}")]
    Shared(std::sync::Arc<Error>),
    /// The `DATABASE_URL` names a database flexgate cannot use.
    #[error("unsupported DATABASE_URL scheme: expected postgres://, postgresql:// or sqlite://")]
    UnsupportedUrl,
}

/// The pool of whichever database the URL named.
#[derive(Clone, Debug)]
pub enum Pool {
    /// Production: shared by every replica.
    Postgres(sqlx::PgPool),
    /// Zero-setup default: a local file (or `:memory:` in tests).
    Sqlite(sqlx::SqlitePool),
}

/// Run the same query code on whichever pool is configured. The body is compiled once
/// per driver, so it may use driver-specific row and transaction types freely.
#[macro_export]
#[doc(hidden)]
macro_rules! dispatch {
    ($pool:expr, $p:ident => $body:expr) => {
        match $pool {
            $crate::store::Pool::Postgres($p) => $body,
            $crate::store::Pool::Sqlite($p) => $body,
        }
    };
}
pub use crate::dispatch;

/// Connection knobs; the defaults suit a sidecar.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Largest number of pooled connections.
    pub max_connections: u32,
    /// How long a request waits for a connection before failing closed.
    pub acquire_timeout: Duration,
    /// How long a request-path query may take before it fails closed.
    pub query_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(3),
            query_timeout: Duration::from_secs(3),
        }
    }
}

/// Handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: Pool,
    /// The runtime whose reactor owns the pool's sockets (the one that connected).
    runtime: Option<tokio::runtime::Handle>,
    query_timeout: Duration,
}

impl Store {
    /// Connect to `url` (creating an SQLite file if it does not exist yet).
    pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Self, Error> {
        let pool = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(options.max_connections)
                .acquire_timeout(options.acquire_timeout)
                .connect(url)
                .await?;
            Pool::Postgres(pool)
        } else if url.starts_with("sqlite:") {
            let connect = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .foreign_keys(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(5));
            let pool = SqlitePoolOptions::new()
                .max_connections(options.max_connections)
                .acquire_timeout(options.acquire_timeout)
                .connect_with(connect)
                .await?;
            Pool::Sqlite(pool)
        } else {
            return Err(Error::UnsupportedUrl);
        };
        Ok(Store {
            pool,
            runtime: tokio::runtime::Handle::try_current().ok(),
            query_timeout: options.query_timeout,
        })
    }

    /// Run a query future on the runtime that owns the pool. The proxy's worker threads
    /// are single-threaded runtimes that only drive their own sockets between requests;
    /// a connection opened on one of them would stall every other worker's queries while
    /// that worker is busy. Request-path lookups therefore go through here, bounded by
    /// the query timeout: a hung database fails requests closed instead of holding them.
    pub async fn offload<F, T>(&self, work: F) -> Result<T, Error>
    where
        F: std::future::Future<Output = Result<T, Error>> + Send + 'static,
        T: Send + 'static,
    {
        let limit = self.query_timeout;
        let bounded = async move {
            tokio::time::timeout(limit, work)
                .await
                .map_err(|_| Error::Timeout(limit))?
        };
        match &self.runtime {
            Some(handle) => handle
                .spawn(bounded)
                .await
                .map_err(|e| Error::Invalid(format!("database task failed: {e}")))?,
            None => bounded.await,
        }
    }

    /// Run `work` in the background on the runtime that owns the pool (see
    /// [`Store::offload`]); bound its queries with [`Store::query_timeout`].
    pub fn spawn<F>(&self, work: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        match &self.runtime {
            Some(handle) => drop(handle.spawn(work)),
            None => drop(tokio::spawn(work)),
        }
    }

    /// How long a request-path query may take.
    pub fn query_timeout(&self) -> Duration {
        self.query_timeout
    }

    /// The underlying pool, for modules that run their own queries.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// `postgres` or `sqlite`, for messages and metrics.
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Postgres(_) => "postgres",
            Pool::Sqlite(_) => "sqlite",
        }
    }

    /// Apply every pending migration for this database.
    pub async fn migrate(&self) -> Result<(), Error> {
        match &self.pool {
            Pool::Postgres(p) => migrator(POSTGRES_MIGRATIONS).run(p).await?,
            Pool::Sqlite(p) => migrator(SQLITE_MIGRATIONS).run(p).await?,
        }
        Ok(())
    }

    /// A cheap round trip, for readiness checks.
    pub async fn ping(&self) -> Result<(), Error> {
        dispatch!(&self.pool, p => sqlx::query("SELECT 1").execute(p).await.map(drop)?);
        Ok(())
    }

    /// Run a trusted multi-statement SQL script (the demo schema, test fixtures). Never
    /// pass request data here.
    pub async fn execute_script(&self, sql: &str) -> Result<(), Error> {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        dispatch!(&self.pool, p => sqlx::raw_sql(sql).execute(p).await.map(drop)?);
        Ok(())
    }

    /// Close every connection (tests and shutdown).
    pub async fn close(&self) {
        dispatch!(&self.pool, p => p.close().await)
    }
}

/// `(version, description, sql)` of each migration, in order.
type MigrationSource = &'static [(i64, &'static str, &'static str)];

const POSTGRES_MIGRATIONS: MigrationSource = &[
    (
        1,
        "identity",
        include_str!("../../migrations/postgres/0001_identity.sql"),
    ),
    (
        2,
        "state",
        include_str!("../../migrations/postgres/0002_state.sql"),
    ),
    (
        3,
        "api_keys",
        include_str!("../../migrations/postgres/0003_api_keys.sql"),
    ),
    (
        4,
        "lifted_revocations",
        include_str!("../../migrations/postgres/0004_lifted_revocations.sql"),
    ),
];

const SQLITE_MIGRATIONS: MigrationSource = &[
    (
        1,
        "identity",
        include_str!("../../migrations/sqlite/0001_identity.sql"),
    ),
    (
        2,
        "state",
        include_str!("../../migrations/sqlite/0002_state.sql"),
    ),
    (
        3,
        "api_keys",
        include_str!("../../migrations/sqlite/0003_api_keys.sql"),
    ),
    (
        4,
        "lifted_revocations",
        include_str!("../../migrations/sqlite/0004_lifted_revocations.sql"),
    ),
];

fn migrator(source: MigrationSource) -> Migrator {
    let migrations = source
        .iter()
        .map(|&(version, description, sql)| {
            Migration::new(
                version,
                Cow::Borrowed(description),
                MigrationType::Simple,
                sqlx::SqlStr::from_static(sql),
                false,
            )
        })
        .collect();
    Migrator::with_migrations(migrations)
}

/// Map a uniqueness violation to a readable conflict; everything else stays a
/// database error.
fn conflict_or(err: sqlx::Error, message: impl FnOnce() -> String) -> Error {
    match err.as_database_error() {
        Some(db) if db.is_unique_violation() => Error::Conflict(message()),
        _ => Error::Database(err),
    }
}
