//! `flexgate apikey create|list|revoke`: API keys for machines. A key is printed once,
//! at creation, and stored only as its keyed hash; listings show its name, owner, dates
//! and last four characters, never the key.
//!
//! Native mode keeps keys beside flexgate's users (`DATABASE_URL`). When `DATABASE_URL`
//! is FlexMeasures' database, the users are FlexMeasures' and the keys live in
//! flexgate's own state database (`FLEXGATE_STATE_URL`, required then).

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::json;

use super::{OutputArgs, open_store};
use crate::auth::apikey::{self, KeyHasher};
use crate::settings::Settings;
use crate::store::apikeys::{ApiKey, NewApiKey};
use crate::store::{ConnectOptions, Store, UserRef};

#[derive(Debug, Subcommand)]
pub(crate) enum ApiKeyCommand {
    /// Create a key for a user and print it (once).
    Create {
        /// The user the key acts for (id or email).
        #[arg(long)]
        user: String,
        /// A name, unique among the user's live keys (e.g. the device).
        #[arg(long)]
        name: String,
        /// Lifetime: `90d`, `12h`, `30m` or seconds (default: no expiry).
        #[arg(long)]
        expires: Option<String>,
        /// The key passes only `read` checks on safe methods.
        #[arg(long)]
        read_only: bool,
        /// Keep only these of the user's roles (comma separated).
        #[arg(long, value_delimiter = ',')]
        roles: Option<Vec<String>>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List keys (never their values).
    List {
        /// Only this user's keys (id or email).
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Revoke a key by id, or by name (with --user when names repeat across users).
    Revoke {
        /// The key's id or name.
        key: String,
        /// The key's user (id or email).
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// A user as the key commands show them.
struct Owner {
    id: i64,
    email: String,
    roles: Vec<String>,
}

/// Where users and keys are.
struct Stores {
    users: Store,
    keys: Store,
    flexmeasures: bool,
}

async fn stores(settings: &Settings) -> anyhow::Result<Stores> {
    let users = open_store(settings).await?;
    if users.flexmeasures_schema().await? != Some(false) {
        return Ok(Stores {
            keys: users.clone(),
            users,
            flexmeasures: false,
        });
    }
    let url = settings.state_url.as_deref().context(
        "DATABASE_URL is FlexMeasures' database: API keys live in flexgate's own database; set FLEXGATE_STATE_URL",
    )?;
    let keys = Store::connect(url, &ConnectOptions::default())
        .await
        .context("connecting to FLEXGATE_STATE_URL")?;
    keys.migrate()
        .await
        .context("migrating FLEXGATE_STATE_URL")?;
    Ok(Stores {
        users,
        keys,
        flexmeasures: true,
    })
}

impl Stores {
    async fn owner(&self, who: &str) -> anyhow::Result<Owner> {
        if self.flexmeasures {
            let user = match who.parse::<i64>() {
                Ok(id) => self.users.fm_user_by_id(id).await?,
                Err(_) => self.users.fm_user_by_email(who).await?,
            }
            .with_context(|| format!("no FlexMeasures user {who:?}"))?;
            return Ok(Owner {
                id: user.user_id,
                email: user.email,
                roles: user.roles,
            });
        }
        let user = self.users.user(&UserRef::parse(who)).await?;
        Ok(Owner {
            id: user.id,
            email: user.email,
            roles: user.roles,
        })
    }

    async fn email_of(&self, id: i64) -> String {
        self.owner(&id.to_string())
            .await
            .map_or_else(|_| "(unknown user)".into(), |o| o.email)
    }
}

/// `90d`, `12h`, `30m`, `45s` or plain seconds.
fn parse_lifetime(text: &str) -> anyhow::Result<i64> {
    let (number, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c),
        _ => (text, 's'),
    };
    let n: i64 = number
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .with_context(|| format!("--expires {text:?}: write e.g. 90d, 12h, 30m or seconds"))?;
    let scale = match unit {
        'd' => 86_400,
        'h' => 3_600,
        'm' => 60,
        's' => 1,
        _ => bail!("--expires {text:?}: the unit is d, h, m or s"),
    };
    n.checked_mul(scale).context("--expires is too long")
}

fn describe(key: &ApiKey, email: &str) -> serde_json::Value {
    json!({
        "id": key.id,
        "name": key.name,
        "user_id": key.user_id,
        "user_email": email,
        "hint": format!("...{}", key.hint),
        "read_only": key.read_only,
        "roles": key.roles,
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "last_used_at": key.last_used_at,
        "revoked_at": key.revoked_at,
    })
}

impl ApiKeyCommand {
    pub(crate) async fn run(self, settings: &Settings) -> anyhow::Result<ExitCode> {
        let stores = stores(settings).await?;
        let now = crate::auth::unix_now() as i64;
        match self {
            ApiKeyCommand::Create {
                user,
                name,
                expires,
                read_only,
                roles,
                output,
            } => {
                let hasher = KeyHasher::new(
                    settings
                        .secret_key()
                        .context("API keys are hashed with SECRET_KEY")?,
                );
                let owner = stores.owner(&user).await?;
                // `--roles ""` keeps none of the user's roles.
                let roles =
                    roles.map(|r| r.into_iter().filter(|r| !r.is_empty()).collect::<Vec<_>>());
                if name.is_empty() || name.len() > 100 {
                    bail!("--name must be 1 to 100 characters");
                }
                if let Some(roles) = &roles
                    && let Some(extra) = roles.iter().find(|r| !owner.roles.contains(r))
                {
                    bail!(
                        "--roles {extra:?}: user {} does not have that role (they have: {}); a key can only narrow the user's roles",
                        owner.email,
                        owner.roles.join(", ")
                    );
                }
                // FlexMeasures acts with the user's own roles on the stand-in token it
                // gets, and filters some answers by role itself (an admin's listings):
                // a narrowed key would be narrowed at flexgate's checks only.
                if stores.flexmeasures
                    && let Some(roles) = &roles
                    && let Some(dropped) = owner.roles.iter().find(|r| !roles.contains(r))
                {
                    bail!(
                        "--roles: in FlexMeasures mode a key cannot drop the user's role {dropped:?}: FlexMeasures acts with the user's own roles and filters some answers by them, so the narrowing would hold at flexgate's checks only; create the key for a FlexMeasures user with just the roles it needs (--read-only is enforced by flexgate and works)"
                    );
                }
                let expires_at = match &expires {
                    Some(text) => Some(now + parse_lifetime(text)?),
                    None => None,
                };
                let key = apikey::generate();
                let record = stores
                    .keys
                    .add_api_key(&NewApiKey {
                        user_id: owner.id,
                        name: &name,
                        hash: hasher.hash(&key),
                        hint: apikey::hint(&key),
                        read_only,
                        roles,
                        expires_at,
                        created_at: now,
                    })
                    .await?;
                if output.json {
                    let mut described = describe(&record, &owner.email);
                    described["key"] = json!(key);
                    println!("{described}");
                } else {
                    println!("{key}");
                    eprintln!(
                        "key {} {:?} for user {} <{}>: shown once; store it now",
                        record.id, record.name, owner.id, owner.email
                    );
                }
            }
            ApiKeyCommand::List { user, output } => {
                let owner = match &user {
                    Some(u) => Some(stores.owner(u).await?.id),
                    None => None,
                };
                let keys = stores.keys.list_api_keys(owner).await?;
                let mut rows = Vec::new();
                for key in &keys {
                    rows.push(describe(key, &stores.email_of(key.user_id).await));
                }
                if output.json {
                    println!("{}", serde_json::Value::Array(rows));
                } else {
                    for row in rows {
                        let when = |v: &serde_json::Value| {
                            v.as_i64().map_or("-".into(), |t| t.to_string())
                        };
                        println!(
                            "{}\t{}\t{} <{}>\t{}\t{}created {}\texpires {}\tlast used {}{}",
                            row["id"],
                            row["name"].as_str().unwrap_or(""),
                            row["user_id"],
                            row["user_email"].as_str().unwrap_or(""),
                            row["hint"].as_str().unwrap_or(""),
                            if row["read_only"] == true {
                                "read-only\t"
                            } else {
                                ""
                            },
                            when(&row["created_at"]),
                            when(&row["expires_at"]),
                            when(&row["last_used_at"]),
                            if row["revoked_at"].is_null() {
                                ""
                            } else {
                                "\tREVOKED"
                            },
                        );
                    }
                }
            }
            ApiKeyCommand::Revoke { key, user, output } => {
                let owner = match &user {
                    Some(u) => Some(stores.owner(u).await?.id),
                    None => None,
                };
                let revoked = stores.keys.revoke_api_keys(&key, owner, now).await?;
                match revoked.len() {
                    0 => bail!(
                        "no live key {key:?}{}",
                        user.map(|u| format!(" of user {u}")).unwrap_or_default()
                    ),
                    1 => {}
                    n => eprintln!("warning: {n} keys named {key:?} were revoked (one per user)"),
                }
                if output.json {
                    let rows: Vec<_> = revoked.iter().map(|k| json!({"revoked": true, "id": k.id, "name": k.name, "user_id": k.user_id})).collect();
                    println!("{}", serde_json::Value::Array(rows));
                } else {
                    for k in &revoked {
                        println!(
                            "revoked key {} {:?} of user {} (every replica refuses it within {} s)",
                            k.id,
                            k.name,
                            k.user_id,
                            apikey::KEY_CACHE_TTL.as_secs()
                        );
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
