//! Identity administration, modelled on the FlexMeasures CLI: `add account|user`,
//! `list accounts|users`, `roles add|remove`, `consultancy set|clear`,
//! `activate|deactivate user` and `passwd`.
//!
//! Every change is one transaction in the store: bad input (unknown account, duplicate
//! email, self-consultancy, empty role name) is refused with a message and leaves the
//! database as it was.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use super::{OutputArgs, open_identity_store};
use crate::auth::PasswordHasher;
use crate::settings::Settings;
use crate::store::{Account, NewAccount, NewUser, User, UserRef};

#[derive(Debug, Subcommand)]
pub(crate) enum AddCommand {
    /// Create an account: `flexgate add account --name "Account2" --consultancy 1 --roles MDC,Prosumer`.
    Account {
        /// Unique account name.
        #[arg(long)]
        name: String,
        /// Use this id (to mirror the upstream's account ids, e.g. FlexMeasures').
        #[arg(long)]
        id: Option<i64>,
        /// Id of the account that consults for this one.
        #[arg(long)]
        consultancy: Option<i64>,
        /// Account roles, comma separated (created when new).
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Create a user; the password is prompted for, or read from stdin with --password-stdin.
    User {
        /// Login email (stored lower-cased).
        #[arg(long)]
        email: String,
        /// Use this id (to mirror the upstream's user ids).
        #[arg(long)]
        id: Option<i64>,
        /// Id of the user's account.
        #[arg(long)]
        account: i64,
        /// User roles, comma separated (created when new), e.g. account-admin,consultant.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Read the password from the first line of stdin instead of prompting.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ListCommand {
    /// Every account with its consultancy and roles.
    Accounts {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Every user (optionally of one account) with their roles.
    Users {
        /// Only users of this account.
        #[arg(long)]
        account: Option<i64>,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RolesCommand {
    /// Give roles: `flexgate roles add --user alice@example.com account-admin`.
    Add(RoleEdit),
    /// Take roles away: `flexgate roles remove --account 2 Prosumer`.
    Remove(RoleEdit),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["user", "account"])))]
pub(crate) struct RoleEdit {
    /// Edit this user's roles (id or email).
    #[arg(long)]
    user: Option<String>,
    /// Edit this account's account roles.
    #[arg(long)]
    account: Option<i64>,
    /// Role names (space or comma separated).
    #[arg(required = true, value_delimiter = ',')]
    roles: Vec<String>,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConsultancyCommand {
    /// Make one account the consultancy of another.
    Set {
        /// The account being consulted.
        #[arg(long)]
        account: i64,
        /// The consultancy account.
        #[arg(long)]
        consultancy: i64,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Remove an account's consultancy.
    Clear {
        /// The account being consulted.
        #[arg(long)]
        account: i64,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ActivationCommand {
    /// The user to change.
    User {
        /// User id or email.
        #[arg(long)]
        user: String,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Debug, Args)]
pub(crate) struct PasswdArgs {
    /// User id or email.
    #[arg(long)]
    user: String,
    /// Read the new password from the first line of stdin instead of prompting.
    #[arg(long)]
    password_stdin: bool,
    #[command(flatten)]
    output: OutputArgs,
}

impl AddCommand {
    pub(crate) async fn run(self, settings: &Settings) -> anyhow::Result<ExitCode> {
        match self {
            AddCommand::Account {
                name,
                id,
                consultancy,
                roles,
                output,
            } => {
                let store = open_identity_store(settings).await?;
                let account = store
                    .add_account(&NewAccount {
                        id,
                        name,
                        consultancy_account_id: consultancy,
                        roles: clean(roles),
                    })
                    .await?;
                print_account("created", &account, output)?;
            }
            AddCommand::User {
                email,
                id,
                account,
                roles,
                password_stdin,
                output,
            } => {
                let password = read_password(password_stdin)?;
                let hasher = PasswordHasher::new(settings.bcrypt_cost, 1)?;
                let password_hash = hasher.hash(password).await?;
                let store = open_identity_store(settings).await?;
                let user = store
                    .add_user(&NewUser {
                        id,
                        email,
                        password_hash,
                        account_id: account,
                        roles: clean(roles),
                    })
                    .await?;
                print_user("created", &user, output)?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl ListCommand {
    pub(crate) async fn run(self, settings: &Settings) -> anyhow::Result<ExitCode> {
        let store = open_identity_store(settings).await?;
        match self {
            ListCommand::Accounts { output } => {
                let accounts = store.list_accounts().await?;
                if output.json {
                    println!("{}", serde_json::to_string_pretty(&accounts)?);
                } else {
                    println!("{:>6}  {:<30}  {:>11}  roles", "id", "name", "consultancy");
                    for a in &accounts {
                        println!(
                            "{:>6}  {:<30}  {:>11}  {}",
                            a.id,
                            a.name,
                            a.consultancy_account_id
                                .map_or("-".into(), |c| c.to_string()),
                            a.roles.join(",")
                        );
                    }
                }
            }
            ListCommand::Users { account, output } => {
                let users = store.list_users(account).await?;
                if output.json {
                    println!("{}", serde_json::to_string_pretty(&users)?);
                } else {
                    println!(
                        "{:>6}  {:<40}  {:>7}  {:<6}  roles",
                        "id", "email", "account", "active"
                    );
                    for u in &users {
                        println!(
                            "{:>6}  {:<40}  {:>7}  {:<6}  {}",
                            u.id,
                            u.email,
                            u.account_id,
                            u.active,
                            u.roles.join(",")
                        );
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl RolesCommand {
    pub(crate) async fn run(self, settings: &Settings) -> anyhow::Result<ExitCode> {
        let (edit, adding) = match self {
            RolesCommand::Add(edit) => (edit, true),
            RolesCommand::Remove(edit) => (edit, false),
        };
        let roles = clean(edit.roles);
        let (add, remove) = if adding {
            (roles, Vec::new())
        } else {
            (Vec::new(), roles)
        };
        let store = open_identity_store(settings).await?;
        match (edit.user, edit.account) {
            (Some(user), None) => {
                let user = store
                    .edit_user_roles(&UserRef::parse(&user), &add, &remove)
                    .await?;
                print_user("updated", &user, edit.output)?;
            }
            (None, Some(account)) => {
                let account = store.edit_account_roles(account, &add, &remove).await?;
                print_account("updated", &account, edit.output)?;
            }
            // clap's argument group guarantees exactly one target.
            _ => bail!("name exactly one of --user or --account"),
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl ConsultancyCommand {
    pub(crate) async fn run(self, settings: &Settings) -> anyhow::Result<ExitCode> {
        let store = open_identity_store(settings).await?;
        let (account, output) = match self {
            ConsultancyCommand::Set {
                account,
                consultancy,
                output,
            } => (
                store.set_consultancy(account, Some(consultancy)).await?,
                output,
            ),
            ConsultancyCommand::Clear { account, output } => {
                (store.set_consultancy(account, None).await?, output)
            }
        };
        print_account("updated", &account, output)?;
        Ok(ExitCode::SUCCESS)
    }
}

impl ActivationCommand {
    pub(crate) async fn run(self, settings: &Settings, active: bool) -> anyhow::Result<ExitCode> {
        let ActivationCommand::User { user, output } = self;
        let store = open_identity_store(settings).await?;
        let user = store.set_active(&UserRef::parse(&user), active).await?;
        let verb = if active { "activated" } else { "deactivated" };
        print_user(verb, &user, output)?;
        Ok(ExitCode::SUCCESS)
    }
}

impl PasswdArgs {
    pub(crate) async fn run(self, settings: &Settings) -> anyhow::Result<ExitCode> {
        let store = open_identity_store(settings).await?;
        let who = UserRef::parse(&self.user);
        // Fail on an unknown user before asking for a password.
        store.user(&who).await?;
        let password = read_password(self.password_stdin)?;
        let hasher = PasswordHasher::new(settings.bcrypt_cost, 1)?;
        let hash = hasher.hash(password).await?;
        let user = store.set_password(&who, &hash).await?;
        print_user("password changed for", &user, self.output)?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Trim role names; empty ones stay so the store can refuse them by name.
fn clean(roles: Vec<String>) -> Vec<String> {
    roles.into_iter().map(|r| r.trim().to_owned()).collect()
}

/// Read a password from stdin (`--password-stdin`) or prompt twice on the terminal.
fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin {
        let mut line = String::new();
        let read = std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        if read == 0 {
            bail!("no password on stdin (--password-stdin reads its first line)");
        }
        let password = line.trim_end_matches(['\n', '\r']).to_owned();
        crate::auth::password::validate_new_password(&password)?;
        return Ok(password);
    }
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to prompt for a password: pipe it in and pass --password-stdin");
    }
    let password = rpassword::prompt_password("Password: ")?;
    crate::auth::password::validate_new_password(&password)?;
    let again = rpassword::prompt_password("Repeat password: ")?;
    if again != password {
        bail!("the passwords do not match; nothing was changed");
    }
    Ok(password)
}

fn print_account(verb: &str, account: &Account, output: OutputArgs) -> anyhow::Result<()> {
    if output.json {
        println!("{}", serde_json::to_string(account)?);
    } else {
        println!(
            "{verb} account {} {:?} (consultancy: {}, roles: {})",
            account.id,
            account.name,
            account
                .consultancy_account_id
                .map_or("none".into(), |c| c.to_string()),
            list_or_none(&account.roles)
        );
    }
    Ok(())
}

fn print_user(verb: &str, user: &User, output: OutputArgs) -> anyhow::Result<()> {
    if output.json {
        println!("{}", serde_json::to_string(user)?);
    } else {
        println!(
            "{verb} user {} {} (account: {}, active: {}, roles: {})",
            user.id,
            user.email,
            user.account_id,
            user.active,
            list_or_none(&user.roles)
        );
    }
    Ok(())
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}
