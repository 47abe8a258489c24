//! The `flexgate` command line: the clap tree and the dispatch to one module per command
//! group. Commands are built for scripts: they print results on stdout (`--json` where a
//! script wants to read them), errors on stderr, and exit non-zero on any failure.
//!
//! Whoever can run the CLI on the server is an admin: it talks to the database directly
//! and needs no token.

mod apikey;
mod config;
mod db;
mod demo;
mod explain;
mod identity;
mod probe;
mod rule_tests;
mod serve;
mod token;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::settings::{LogFormat, Settings};
use crate::store::{ConnectOptions, Store};

/// flexgate: an authorization proxy reproducing the FlexMeasures security model.
#[derive(Debug, Parser)]
#[command(name = "flexgate", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy with a rule file.
    Serve(serve::ServeArgs),
    /// Run everything on the embedded default: demo data, demo upstream, self-signed TLS.
    Demo(demo::DemoArgs),
    /// Check a rule file.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Explain why a request would be allowed or denied.
    Explain(explain::ExplainArgs),
    /// Issue or revoke access tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Create, list and revoke API keys for machines.
    #[command(subcommand)]
    Apikey(apikey::ApiKeyCommand),
    /// Database maintenance.
    #[command(subcommand)]
    Db(db::DbCommand),
    /// GET a URL and exit 0 on 2xx (container health checks).
    Probe(probe::ProbeArgs),
    /// Create an account or a user.
    #[command(subcommand)]
    Add(identity::AddCommand),
    /// List accounts or users.
    #[command(subcommand)]
    List(identity::ListCommand),
    /// Add or remove user roles and account roles.
    #[command(subcommand)]
    Roles(identity::RolesCommand),
    /// Set or clear the consultancy account of an account.
    #[command(subcommand)]
    Consultancy(identity::ConsultancyCommand),
    /// Deactivate a user: their tokens stop working at once.
    #[command(subcommand)]
    Deactivate(identity::ActivationCommand),
    /// Activate a user again (old tokens stay dead).
    #[command(subcommand)]
    Activate(identity::ActivationCommand),
    /// Change a user's password: their tokens stop working at once.
    Passwd(identity::PasswdArgs),
}

/// How a command wants its output.
#[derive(Debug, Clone, Copy, Args)]
pub(crate) struct OutputArgs {
    /// Print machine-readable JSON instead of text.
    #[arg(long)]
    json: bool,
}

impl Cli {
    /// Run the parsed command; the returned code is the process exit code.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let settings = Settings::from_env()?;
        init_tracing(settings.log_format);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        runtime.block_on(self.command.run(settings))
    }
}

impl Command {
    async fn run(self, settings: Settings) -> anyhow::Result<ExitCode> {
        match self {
            Command::Serve(args) => args.run(&settings).await,
            Command::Demo(args) => args.run(settings).await,
            Command::Config(cmd) => cmd.run(&settings).await,
            Command::Explain(args) => args.run(&settings).await,
            Command::Token(cmd) => cmd.run(&settings).await,
            Command::Apikey(cmd) => cmd.run(&settings).await,
            Command::Db(cmd) => cmd.run(&settings).await,
            Command::Probe(args) => args.run().await,
            Command::Add(cmd) => cmd.run(&settings).await,
            Command::List(cmd) => cmd.run(&settings).await,
            Command::Roles(cmd) => cmd.run(&settings).await,
            Command::Consultancy(cmd) => cmd.run(&settings).await,
            Command::Deactivate(cmd) => cmd.run(&settings, false).await,
            Command::Activate(cmd) => cmd.run(&settings, true).await,
            Command::Passwd(args) => args.run(&settings).await,
        }
    }
}

/// Connect to the configured database and bring its schema up to date, so admin commands
/// work on a fresh SQLite file without a separate `db migrate`. A FlexMeasures database
/// (one with `fm_user`) is never migrated: FlexMeasures mode writes nothing there.
pub(crate) async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    let store = Store::connect(&settings.database_url, &ConnectOptions::default())
        .await
        .with_context(|| {
            format!(
                "connecting to the {} database",
                scheme(&settings.database_url)
            )
        })?;
    let flexmeasures = store
        .flexmeasures_schema()
        .await
        .context("inspecting the database")?;
    if settings.migrate_on_start && flexmeasures.is_none() {
        store.migrate().await.context("migrating the database")?;
    }
    Ok(store)
}

/// [`open_store`] for commands that read or change flexgate's own identity tables:
/// refused on a FlexMeasures database, whose users live in FlexMeasures.
pub(crate) async fn open_identity_store(settings: &Settings) -> anyhow::Result<Store> {
    let store = open_store(settings).await?;
    if store.flexmeasures_schema().await? == Some(false) {
        anyhow::bail!("{FLEXMEASURES_IDENTITIES}");
    }
    Ok(store)
}

/// Why identity commands refuse a FlexMeasures database.
pub(crate) const FLEXMEASURES_IDENTITIES: &str = "DATABASE_URL is FlexMeasures' database: \
    its accounts, users, roles and passwords are FlexMeasures' own, and flexgate's FlexMeasures \
    mode only reads them. Manage them with FlexMeasures (`flexmeasures add account`, \
    `flexmeasures add user`, `flexmeasures edit ...`, its API or UI); flexgate sees each change \
    within [identity] revalidate_ms";

/// An authenticator for one-shot commands (issuing and checking tokens): default
/// caches, one hashing thread, metrics nobody scrapes.
pub(crate) fn authenticator(
    store: Store,
    settings: &Settings,
) -> anyhow::Result<crate::auth::NativeAuthenticator> {
    Ok(crate::auth::NativeAuthenticator::new(
        store,
        settings.secret_key()?,
        &crate::auth::AuthSettings {
            max_age: settings.token_max_age,
            bcrypt_cost: settings.bcrypt_cost,
            max_concurrent_logins: 1,
            cache: Default::default(),
            throttle: Default::default(),
        },
        crate::metrics::Metrics::new(),
    )?)
}

/// The URL scheme only: the rest may hold a password.
fn scheme(url: &str) -> &str {
    url.split(':').next().unwrap_or("configured")
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("FLEXGATE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (only possible in tests) is harmless; ignore it.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
