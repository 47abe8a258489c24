//! `flexgate serve`: load the rule file, check it against the database, start the
//! listeners and the background tasks, and run until SIGTERM or SIGINT, then drain.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;

use super::open_store;
use crate::proxy::{self, Gateway, Running, background};
use crate::rules::{self, Config, IdentitySource};
use crate::settings::Settings;
use crate::store::Store;

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The rule file (default: FLEXGATE_CONFIG).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Write the bound addresses as JSON to this file once listening (for scripts and
    /// tests that bind port 0).
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

impl ServeArgs {
    pub(crate) async fn run(self, settings: &Settings) -> anyhow::Result<ExitCode> {
        let path = self
            .config
            .or_else(|| settings.config_path.clone())
            .context("no rule file: pass --config FILE or set FLEXGATE_CONFIG")?;
        let config = load_config(&path)?;
        settings.upstream_secret()?;
        let store = open_store(settings).await?;
        match config.server.identity_source {
            IdentitySource::Native => {
                settings.secret_key()?;
            }
            IdentitySource::FlexMeasures { .. } => {
                settings.flexmeasures.secret_key()?;
                if store.flexmeasures_schema().await?.is_none() {
                    bail!(
                        "{}: [identity] source = \"flexmeasures\" needs DATABASE_URL to be FlexMeasures' \
                         PostgreSQL database (no fm_user table found there)",
                        path.display()
                    );
                }
            }
        }
        check_queries(&store, &config).await?;
        serve(
            settings,
            config,
            store,
            Some(path),
            self.ready_file.as_deref(),
            |_| {},
        )
        .await?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Load a rule file, printing warnings; errors become the command's error.
pub(crate) fn load_config(path: &Path) -> anyhow::Result<Config> {
    match rules::load(path) {
        Ok(config) => {
            config.warnings.log_warnings();
            Ok(config)
        }
        Err(diagnostics) => {
            eprint!("{diagnostics}");
            bail!(
                "{}: {} error(s); nothing was started",
                path.display(),
                diagnostics.errors.len()
            )
        }
    }
}

/// Every owner query must prepare against the live database and return its columns.
pub(crate) async fn check_queries(store: &Store, config: &Config) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for kind in &config.rules.kinds {
        if let Some(query) = &kind.query
            && let Err(e) =
                crate::store::owner::describe_owner_query(store, query, &kind.columns, kind.id_type)
                    .await
        {
            problems.push(format!(
                "{}: kind {:?}: {e}",
                config.rules.file.display(),
                kind.name
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!(
            "owner queries do not work against DATABASE_URL:\n  {}",
            problems.join("\n  ")
        )
    }
}

/// Start the gateway for `config`, run until a termination signal, then drain.
/// `on_ready` runs once the listeners are bound (the demo prints its instructions there).
pub(crate) async fn serve(
    settings: &Settings,
    config: Config,
    store: Store,
    watch: Option<PathBuf>,
    ready_file: Option<&Path>,
    on_ready: impl FnOnce(&Running),
) -> anyhow::Result<()> {
    let gateway = match &settings.state_url {
        None => Gateway::new(&config, store, settings)?,
        Some(url) => {
            let state = Store::connect(url, &crate::store::ConnectOptions::default())
                .await
                .context("connecting to FLEXGATE_STATE_URL")?;
            if state.flexmeasures_schema().await?.is_some() {
                bail!(
                    "FLEXGATE_STATE_URL names FlexMeasures' database: give flexgate a database of its own for shared state"
                );
            }
            state
                .migrate()
                .await
                .context("migrating FLEXGATE_STATE_URL")?;
            Gateway::with_state(&config, store, Some(state), settings)?
        }
    };
    if let (IdentitySource::FlexMeasures { .. }, None) =
        (config.server.identity_source, &settings.state_url)
    {
        tracing::warn!(
            "FLEXGATE_STATE_URL is not set: logouts are remembered by this process only; with several replicas set it to a database of flexgate's own"
        );
    }
    let mut running = proxy::start(Arc::clone(&gateway)).await?;
    running.attach(tokio::spawn(background::follow_changes(
        Arc::clone(&gateway),
        background::CHANGE_POLL_INTERVAL,
        running.shutdown_signal(),
    )));
    if let Some(path) = watch {
        running.attach(tokio::spawn(background::watch_rules(
            Arc::clone(&gateway),
            path,
            gateway.server().rules_poll,
            running.shutdown_signal(),
        )));
    }
    let addresses = json!({
        "https": running.https.map(|a| a.to_string()),
        "http": running.http.map(|a| a.to_string()),
        "admin": running.admin.map(|a| a.to_string()),
        "decision": running.decision.map(|a| a.to_string()),
    });
    tracing::info!(
        https = ?running.https,
        http = ?running.http,
        admin = ?running.admin,
        decision = ?running.decision,
        decision_mutual_tls = gateway.server().decision_client_ca.is_some(),
        routes = config.rules.routes.len(),
        "flexgate is listening"
    );
    if let Some(file) = ready_file {
        std::fs::write(file, addresses.to_string())
            .with_context(|| format!("writing {}", file.display()))?;
    }
    on_ready(&running);
    termination().await;
    tracing::info!("shutting down: no new connections; draining in-flight requests");
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
