//! `flexgate db ...`: schema maintenance.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use crate::settings::Settings;
use crate::store::{ConnectOptions, Store};

#[derive(Debug, Subcommand)]
pub(crate) enum DbCommand {
    /// Apply every pending migration to DATABASE_URL (safe to run repeatedly).
    Migrate,
}

impl DbCommand {
    pub(crate) async fn run(self, settings: &Settings) -> anyhow::Result<ExitCode> {
        match self {
            DbCommand::Migrate => {
                let store = Store::connect(&settings.database_url, &ConnectOptions::default())
                    .await
                    .context("connecting to the database")?;
                if store.flexmeasures_schema().await? == Some(false) {
                    anyhow::bail!(
                        "DATABASE_URL is FlexMeasures' database: flexgate adds no tables there. \
                         FlexMeasures mode ([identity] source = \"flexmeasures\") needs no migration; \
                         for native mode give flexgate a database of its own"
                    );
                }
                store.migrate().await?;
                println!("{} database is up to date", store.backend());
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}
