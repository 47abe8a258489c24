//! `flexgate token issue|revoke`: tokens for operators and scripts, and revocation of
//! every token a user holds (effective on every replica within a poll interval).

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;

use super::{OutputArgs, open_identity_store};
use crate::settings::Settings;
use crate::store::UserRef;

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Print a fresh access token for an active user (no password needed: the CLI is admin).
    Issue {
        /// The user's email (or id).
        #[arg(long)]
        email: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Revoke every token of a user (rotates their uniquifier).
    Revoke {
        /// User id or email.
        #[arg(long)]
        user: String,
        #[command(flatten)]
        output: OutputArgs,
    },
}

impl TokenCommand {
    pub(crate) async fn run(self, settings: &Settings) -> anyhow::Result<ExitCode> {
        let store = open_identity_store(settings).await?;
        match self {
            TokenCommand::Issue { email, output } => {
                let user = store.user(&UserRef::parse(&email)).await?;
                let auth = super::authenticator(store, settings)?;
                let issued = auth
                    .issue(user.id)
                    .await
                    .with_context(|| format!("cannot issue a token for user {}", user.id))?;
                if output.json {
                    println!(
                        "{}",
                        json!({"auth_token": issued.token, "user_id": issued.user_id, "expires_in": settings.token_max_age.as_secs()})
                    );
                } else {
                    println!("{}", issued.token);
                }
            }
            TokenCommand::Revoke { user, output } => {
                let user = store.revoke_tokens(&UserRef::parse(&user)).await?;
                if output.json {
                    println!("{}", json!({"revoked": true, "user_id": user.id}));
                } else {
                    println!("revoked every token of user {} {}", user.id, user.email);
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
