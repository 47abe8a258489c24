//! `flexgate config check FILE`: everything that can be checked without serving. The
//! file is compiled (every error and warning, with line, rule and fix); when
//! `DATABASE_URL` is set, each kind's owner query is prepared against that database and
//! the roles the routes name are compared with the roles that exist there.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use crate::rules;
use crate::settings::Settings;
use crate::store::{ConnectOptions, Store};

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Validate a rule file (and its SQL, when DATABASE_URL is set).
    Check {
        /// The rule file.
        file: PathBuf,
    },
    /// Run rule test suites against a rule file (no database needed).
    Test {
        /// The rule file.
        rules: PathBuf,
        /// Test suites (TOML: principals, owner rows, cases).
        #[arg(required = true)]
        suites: Vec<PathBuf>,
        /// Also write JUnit XML here, for CI systems.
        #[arg(long)]
        junit: Option<PathBuf>,
        /// Print the results as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

impl ConfigCommand {
    pub(crate) async fn run(self, settings: &Settings) -> anyhow::Result<ExitCode> {
        let file = match self {
            ConfigCommand::Check { file } => file,
            ConfigCommand::Test {
                rules,
                suites,
                junit,
                json,
            } => return super::rule_tests::run(&rules, &suites, junit.as_deref(), json).await,
        };
        let config = match rules::load(&file) {
            Ok(config) => config,
            Err(diagnostics) => {
                eprint!("{diagnostics}");
                eprintln!("{}: {} error(s)", file.display(), diagnostics.errors.len());
                return Ok(ExitCode::FAILURE);
            }
        };
        eprint!("{}", config.warnings);
        let mut problems = Vec::new();
        let mut db_warnings = 0;
        if std::env::var_os("DATABASE_URL").is_some() {
            let options = ConnectOptions {
                max_connections: 2,
                acquire_timeout: Duration::from_secs(5),
                query_timeout: Duration::from_secs(10),
            };
            match Store::connect(&settings.database_url, &options).await {
                Ok(store) => {
                    for kind in &config.rules.kinds {
                        if let Some(query) = &kind.query
                            && let Err(e) = crate::store::owner::describe_owner_query(
                                &store,
                                query,
                                &kind.columns,
                                kind.id_type,
                            )
                            .await
                        {
                            problems.push(format!(
                                "{}: error: kind {:?}: {e}",
                                file.display(),
                                kind.name
                            ));
                        }
                    }
                    db_warnings += roles_exist(&store, &config.rules, &file).await;
                }
                Err(e) => eprintln!(
                    "{}: note: SQL not checked: cannot reach DATABASE_URL ({e})",
                    file.display()
                ),
            }
        } else {
            eprintln!(
                "{}: note: SQL not checked: set DATABASE_URL to check owner queries against a database",
                file.display()
            );
        }
        for p in &problems {
            eprintln!("{p}");
        }
        if problems.is_empty() {
            println!(
                "{}: OK ({} routes, {} kinds, {} warnings)",
                file.display(),
                config.rules.routes.len(),
                config.rules.kinds.len(),
                config.warnings.warnings.len() + db_warnings
            );
            Ok(ExitCode::SUCCESS)
        } else {
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Warn about role names that exist nowhere in the database (a likely typo); returns
/// how many warnings it printed.
async fn roles_exist(store: &Store, rules: &rules::RuleSet, file: &std::path::Path) -> usize {
    // FlexMeasures' database: its own role tables.
    let names = if store.flexmeasures_schema().await.ok().flatten().is_some() {
        store.fm_role_names().await
    } else {
        store.role_names().await
    };
    let Ok((user_roles, account_roles)) = names else {
        eprintln!(
            "{}: note: roles not checked: cannot read the role tables",
            file.display()
        );
        return 0;
    };
    let mut printed = 0;
    let builtin = [
        rules.admins.admin.as_str(),
        rules.admins.admin_reader.as_str(),
    ];
    for route in &rules.routes {
        let r = &route.roles;
        let user_side = r
            .required
            .iter()
            .chain(&r.accepted)
            .map(|x| (x, &user_roles, "user role"));
        let account_side = r
            .account_required
            .iter()
            .chain(&r.account_accepted)
            .map(|x| (x, &account_roles, "account role"));
        for (role, known, what) in user_side.chain(account_side) {
            if known.contains(role) || builtin.contains(&role.as_str()) {
                continue;
            }
            let hint = crate::rules::compile::did_you_mean(role, known.iter().map(String::as_str))
                .map(|c| format!("; did you mean {c:?}?"))
                .unwrap_or_default();
            eprintln!(
                "{}:{}: warning: route {:?}: no {what} {role:?} exists in the database yet{hint}",
                file.display(),
                route.line,
                &*route.name
            );
            printed += 1;
        }
    }
    printed
}
