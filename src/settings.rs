//! Deployment settings read from the environment (secrets and knobs that differ per
//! deployment). The route rules live in the TOML file named by `FLEXGATE_CONFIG`; this
//! module only knows its path.
//!
//! Variables are read with `envy` as strings first and validated one by one, so an
//! operator sees *every* bad variable in one run, each with the variable's name and what
//! it expects. Secret values are never echoed. Tests pass a map to [`Settings::from_vars`]
//! instead of touching the process environment.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Where the zero-setup default keeps its data: an SQLite file next to the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://flexgate.db";
/// FlexMeasures' token lifetime (6 hours).
pub const DEFAULT_TOKEN_MAX_AGE_SECS: u64 = 21_600;
/// Shortest secret accepted for signing tokens and identity headers.
pub const MIN_SECRET_LEN: usize = 32;
/// bcrypt work factor used when the environment does not say otherwise.
pub const DEFAULT_BCRYPT_COST: u32 = 12;

/// A problem with one environment variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The variable's name, e.g. `SECURITY_TOKEN_MAX_AGE`.
    pub var: &'static str,
    /// What is wrong and what is expected; never contains a secret value.
    pub message: String,
}

/// Why the settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One or more variables are set to values flexgate cannot use.
    #[error("{}", format_problems(.0))]
    Invalid(Vec<Problem>),
    /// A variable that this command needs is not set.
    #[error("{var} is not set: {hint}")]
    Missing {
        /// The variable's name.
        var: &'static str,
        /// How to fix it.
        hint: &'static str,
    },
}

fn format_problems(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems
        .iter()
        .map(|p| format!("{}: {}", p.var, p.message))
        .collect();
    format!("invalid environment:\n  {}", lines.join("\n  "))
}

/// A secret from the environment; its `Debug` output never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wrap secret bytes (used by the demo, which generates its own secrets).
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }

    /// A fresh random secret of `len` bytes, hex encoded (for the demo and tests).
    pub fn generate(len: usize) -> Self {
        Secret(crate::auth::random_hex(len).into_bytes())
    }

    /// The secret bytes, for deriving keys.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Validated deployment settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `DATABASE_URL`: `postgres://...` or `sqlite://...`; the scheme picks the driver.
    pub database_url: String,
    /// `SECRET_KEY`: signs access tokens. Optional here; [`Settings::secret_key`] enforces it.
    pub secret_key: Option<Secret>,
    /// `SECURITY_TOKEN_MAX_AGE`: how long an access token stays valid.
    pub token_max_age: Duration,
    /// `FLEXGATE_CONFIG`: the route-rule TOML file.
    pub config_path: Option<PathBuf>,
    /// `FLEXGATE_BCRYPT_COST`: bcrypt work factor for new password hashes.
    pub bcrypt_cost: u32,
    /// `FLEXGATE_MIGRATE_ON_START`: apply pending migrations when `serve` starts.
    pub migrate_on_start: bool,
    /// `FLEXGATE_UPSTREAM_SECRET`: signs the identity headers sent upstream.
    pub upstream_secret: Option<Secret>,
    /// `FLEXGATE_LOG_FORMAT`: `text` or `json`.
    pub log_format: LogFormat,
    /// FlexMeasures' own secrets, for FlexMeasures mode.
    pub flexmeasures: FlexMeasuresSecrets,
    /// `FLEXGATE_STATE_URL`: where replicas share logged-out sessions and failed
    /// logins when `DATABASE_URL` is not flexgate's own (FlexMeasures mode).
    pub state_url: Option<String>,
    /// `FLEXGATE_DECISION_SECRET`: when set, the decision listener answers only requests
    /// carrying it in `X-Flexgate-Decision-Secret`.
    pub decision_secret: Option<Secret>,
}

/// FlexMeasures' secrets as flexgate needs them in FlexMeasures mode, from
/// `FLEXMEASURES_*` variables or the files their `*_FILE` variants name (Kubernetes
/// secrets); never from the rule file, never logged.
#[derive(Debug, Clone)]
pub struct FlexMeasuresSecrets {
    /// `FLEXMEASURES_SECRET_KEY`: FlexMeasures' `SECRET_KEY`.
    pub secret_key: Option<Secret>,
    /// `FLEXMEASURES_SECRET_KEY_FALLBACKS`: a JSON list of older keys (or one per line
    /// in the file); tokens signed with any of them verify.
    pub fallbacks: Vec<Secret>,
    /// `FLEXMEASURES_SECURITY_PASSWORD_SALT` (FlexMeasures defaults it to `SECRET_KEY`).
    pub password_salt: Option<Secret>,
    /// `FLEXMEASURES_SECURITY_REMEMBER_SALT` (default `remember-salt`).
    pub remember_salt: String,
    /// `FLEXMEASURES_PERMANENT_SESSION_LIFETIME`: FlexMeasures' `PERMANENT_SESSION_LIFETIME`
    /// in seconds (Flask's default, 31 days, unless FlexMeasures' config sets another):
    /// a browser session older than this is refused, as FlexMeasures refuses it.
    pub session_lifetime: u64,
}

impl Default for FlexMeasuresSecrets {
    /// No secrets, and FlexMeasures' defaults for the rest.
    fn default() -> Self {
        FlexMeasuresSecrets {
            secret_key: None,
            fallbacks: Vec::new(),
            password_salt: None,
            remember_salt: "remember-salt".to_owned(),
            session_lifetime: crate::auth::flask_session::DEFAULT_SESSION_MAX_AGE,
        }
    }
}

impl FlexMeasuresSecrets {
    /// The secret key, required in FlexMeasures mode.
    pub fn secret_key(&self) -> Result<&Secret, Error> {
        self.secret_key.as_ref().ok_or(Error::Missing {
            var: "FLEXMEASURES_SECRET_KEY",
            hint: "set it (or FLEXMEASURES_SECRET_KEY_FILE) to FlexMeasures' SECRET_KEY: FlexMeasures mode checks and issues FlexMeasures' own tokens",
        })
    }

    /// The password salt: the configured one, else the secret key (as FlexMeasures does).
    pub fn password_salt(&self) -> Result<&Secret, Error> {
        match &self.password_salt {
            Some(salt) => Ok(salt),
            None => self.secret_key(),
        }
    }
}

/// The variables exactly as found; every field is validated in [`Settings::from_vars`].
#[derive(Debug, Default, Deserialize)]
struct RawSettings {
    database_url: Option<String>,
    secret_key: Option<String>,
    security_token_max_age: Option<String>,
    flexgate_config: Option<String>,
    flexgate_bcrypt_cost: Option<String>,
    flexgate_migrate_on_start: Option<String>,
    flexgate_upstream_secret: Option<String>,
    flexgate_log_format: Option<String>,
    flexmeasures_secret_key: Option<String>,
    flexmeasures_secret_key_file: Option<String>,
    flexmeasures_secret_key_fallbacks: Option<String>,
    flexmeasures_secret_key_fallbacks_file: Option<String>,
    flexmeasures_security_password_salt: Option<String>,
    flexmeasures_security_password_salt_file: Option<String>,
    flexmeasures_security_remember_salt: Option<String>,
    flexmeasures_permanent_session_lifetime: Option<String>,
    flexgate_state_url: Option<String>,
    flexgate_decision_secret: Option<String>,
}

impl Settings {
    /// Read the process environment.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_vars(std::env::vars())
    }

    /// Build settings from any set of variables (tests pass a map).
    pub fn from_vars<I>(vars: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        // Keep only the variables we know, so unrelated entries cannot upset envy.
        let known: HashMap<String, String> = vars
            .into_iter()
            .filter(|(k, _)| KNOWN_VARS.contains(&k.as_str()))
            .collect();
        let raw: RawSettings = envy::from_iter(known).map_err(|e| {
            Error::Invalid(vec![Problem {
                var: "environment",
                message: e.to_string(),
            }])
        })?;
        let mut problems = Vec::new();

        let database_url = match nonempty(raw.database_url) {
            None => DEFAULT_DATABASE_URL.to_owned(),
            Some(url) if is_supported_url(&url) => url,
            Some(_) => {
                problems.push(Problem {
                    var: "DATABASE_URL",
                    message: "expected a postgres://, postgresql:// or sqlite:// URL".into(),
                });
                String::new()
            }
        };
        let secret_key = secret(raw.secret_key, "SECRET_KEY", &mut problems);
        let upstream_secret = secret(
            raw.flexgate_upstream_secret,
            "FLEXGATE_UPSTREAM_SECRET",
            &mut problems,
        );
        let token_max_age = seconds(
            raw.security_token_max_age,
            "SECURITY_TOKEN_MAX_AGE",
            60..=30 * 86_400,
            "expected whole seconds between 60 and 2592000 (30 days)",
            &mut problems,
        )
        .unwrap_or(DEFAULT_TOKEN_MAX_AGE_SECS);
        let bcrypt_cost = match nonempty(raw.flexgate_bcrypt_cost) {
            None => DEFAULT_BCRYPT_COST,
            Some(v) => match v.parse::<u32>() {
                Ok(cost) if (4..=31).contains(&cost) => cost,
                _ => {
                    problems.push(Problem {
                        var: "FLEXGATE_BCRYPT_COST",
                        message: format!("expected a bcrypt cost between 4 and 31, got {v:?}"),
                    });
                    DEFAULT_BCRYPT_COST
                }
            },
        };
        let migrate_on_start = match nonempty(raw.flexgate_migrate_on_start) {
            None => true,
            Some(v) => match parse_bool(&v) {
                Some(b) => b,
                None => {
                    problems.push(Problem {
                        var: "FLEXGATE_MIGRATE_ON_START",
                        message: format!("expected true or false, got {v:?}"),
                    });
                    true
                }
            },
        };
        let log_format = match nonempty(raw.flexgate_log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                problems.push(Problem {
                    var: "FLEXGATE_LOG_FORMAT",
                    message: format!("expected text or json, got {other:?}"),
                });
                LogFormat::Text
            }
        };

        let flexmeasures = FlexMeasuresSecrets {
            secret_key: secret_or_file(
                raw.flexmeasures_secret_key,
                raw.flexmeasures_secret_key_file,
                "FLEXMEASURES_SECRET_KEY",
                &mut problems,
            ),
            fallbacks: fallbacks(
                raw.flexmeasures_secret_key_fallbacks,
                raw.flexmeasures_secret_key_fallbacks_file,
                &mut problems,
            ),
            password_salt: secret_or_file(
                raw.flexmeasures_security_password_salt,
                raw.flexmeasures_security_password_salt_file,
                "FLEXMEASURES_SECURITY_PASSWORD_SALT",
                &mut problems,
            ),
            remember_salt: nonempty(raw.flexmeasures_security_remember_salt)
                .unwrap_or_else(|| "remember-salt".to_owned()),
            session_lifetime: seconds(
                raw.flexmeasures_permanent_session_lifetime,
                "FLEXMEASURES_PERMANENT_SESSION_LIFETIME",
                1..=366 * 86_400,
                "expected whole seconds between 1 and 31622400 (366 days), as FlexMeasures' PERMANENT_SESSION_LIFETIME",
                &mut problems,
            )
            .unwrap_or(crate::auth::flask_session::DEFAULT_SESSION_MAX_AGE),
        };

        let state_url = match nonempty(raw.flexgate_state_url) {
            Some(url) if is_supported_url(&url) => Some(url),
            Some(_) => {
                problems.push(Problem {
                    var: "FLEXGATE_STATE_URL",
                    message: "expected a postgres://, postgresql:// or sqlite:// URL".into(),
                });
                None
            }
            None => None,
        };

        if !problems.is_empty() {
            return Err(Error::Invalid(problems));
        }
        let decision_secret = secret(
            raw.flexgate_decision_secret,
            "FLEXGATE_DECISION_SECRET",
            &mut problems,
        );
        if !problems.is_empty() {
            return Err(Error::Invalid(problems));
        }
        Ok(Settings {
            flexmeasures,
            state_url,
            decision_secret,
            database_url,
            secret_key,
            token_max_age: Duration::from_secs(token_max_age),
            config_path: nonempty(raw.flexgate_config).map(PathBuf::from),
            bcrypt_cost,
            migrate_on_start,
            upstream_secret,
            log_format,
        })
    }

    /// The token-signing secret, required by commands that issue or check tokens.
    pub fn secret_key(&self) -> Result<&Secret, Error> {
        self.secret_key.as_ref().ok_or(Error::Missing {
            var: "SECRET_KEY",
            hint: "set it to a random value of at least 32 bytes, e.g. `openssl rand -hex 32`",
        })
    }

    /// The secret that signs identity headers for the upstream, required by `serve`.
    pub fn upstream_secret(&self) -> Result<&Secret, Error> {
        self.upstream_secret.as_ref().ok_or(Error::Missing {
            var: "FLEXGATE_UPSTREAM_SECRET",
            hint: "set it to a random value of at least 32 bytes and give the upstream the same value to verify X-Flexgate-Signature",
        })
    }
}

const KNOWN_VARS: &[&str] = &[
    "DATABASE_URL",
    "SECRET_KEY",
    "SECURITY_TOKEN_MAX_AGE",
    "FLEXGATE_CONFIG",
    "FLEXGATE_BCRYPT_COST",
    "FLEXGATE_MIGRATE_ON_START",
    "FLEXGATE_UPSTREAM_SECRET",
    "FLEXGATE_LOG_FORMAT",
    "FLEXMEASURES_SECRET_KEY",
    "FLEXMEASURES_SECRET_KEY_FILE",
    "FLEXMEASURES_SECRET_KEY_FALLBACKS",
    "FLEXMEASURES_SECRET_KEY_FALLBACKS_FILE",
    "FLEXMEASURES_SECURITY_PASSWORD_SALT",
    "FLEXMEASURES_SECURITY_PASSWORD_SALT_FILE",
    "FLEXMEASURES_SECURITY_REMEMBER_SALT",
    "FLEXMEASURES_PERMANENT_SESSION_LIFETIME",
    "FLEXGATE_STATE_URL",
    "FLEXGATE_DECISION_SECRET",
];

/// A secret given either directly or as a file (the file's content without its final
/// line break). Both at once is a mistake, reported.
fn secret_or_file(
    value: Option<String>,
    file: Option<String>,
    var: &'static str,
    problems: &mut Vec<Problem>,
) -> Option<Secret> {
    match (nonempty(value), nonempty(file)) {
        (Some(_), Some(_)) => {
            problems.push(Problem {
                var,
                message: format!("set either {var} or {var}_FILE, not both"),
            });
            None
        }
        (Some(v), None) => Some(Secret(v.into_bytes())),
        (None, Some(path)) => match read_secret_file(&path) {
            Ok(v) if !v.is_empty() => Some(Secret(v.into_bytes())),
            Ok(_) => {
                problems.push(Problem {
                    var,
                    message: format!("{var}_FILE names an empty file"),
                });
                None
            }
            Err(e) => {
                problems.push(Problem {
                    var,
                    message: format!("{var}_FILE cannot be read: {e}"),
                });
                None
            }
        },
        (None, None) => None,
    }
}

fn read_secret_file(path: &str) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text)
        .to_owned())
}

/// `FLEXMEASURES_SECRET_KEY_FALLBACKS`: a JSON list of strings (FlexMeasures' own config
/// syntax); the `_FILE` variant holds one key per line.
fn fallbacks(
    value: Option<String>,
    file: Option<String>,
    problems: &mut Vec<Problem>,
) -> Vec<Secret> {
    const VAR: &str = "FLEXMEASURES_SECRET_KEY_FALLBACKS";
    match (nonempty(value), nonempty(file)) {
        (Some(_), Some(_)) => {
            problems.push(Problem {
                var: VAR,
                message: format!("set either {VAR} or {VAR}_FILE, not both"),
            });
            Vec::new()
        }
        (Some(v), None) => match serde_json::from_str::<Vec<String>>(&v) {
            Ok(keys) => keys
                .into_iter()
                .filter(|k| !k.is_empty())
                .map(|k| Secret(k.into_bytes()))
                .collect(),
            Err(_) => {
                problems.push(Problem {
                    var: VAR,
                    message: "expected a JSON list of strings, e.g. [\"old-key\"] (or use the _FILE variant, one key per line)".into(),
                });
                Vec::new()
            }
        },
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(text) => text
                .lines()
                .map(|l| l.trim_end_matches('\r'))
                .filter(|l| !l.is_empty())
                .map(|l| Secret(l.as_bytes().to_vec()))
                .collect(),
            Err(e) => {
                problems.push(Problem {
                    var: VAR,
                    message: format!("{VAR}_FILE cannot be read: {e}"),
                });
                Vec::new()
            }
        },
        (None, None) => Vec::new(),
    }
}

fn nonempty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

/// A duration in whole seconds within `range`, if set; a value outside it is a problem
/// (`expected` says what is, the value given is appended) and reads as unset.
fn seconds(
    value: Option<String>,
    var: &'static str,
    range: std::ops::RangeInclusive<u64>,
    expected: &str,
    problems: &mut Vec<Problem>,
) -> Option<u64> {
    let v = nonempty(value)?;
    match v.parse::<u64>() {
        Ok(secs) if range.contains(&secs) => Some(secs),
        _ => {
            problems.push(Problem {
                var,
                message: format!("{expected}, got {v:?}"),
            });
            None
        }
    }
}

fn secret(value: Option<String>, var: &'static str, problems: &mut Vec<Problem>) -> Option<Secret> {
    let value = nonempty(value)?;
    if value.len() < MIN_SECRET_LEN {
        problems.push(Problem {
            var,
            message: format!(
                "must be at least {MIN_SECRET_LEN} bytes long (it has {}); generate one with `openssl rand -hex 32`",
                value.len()
            ),
        });
        return None;
    }
    Some(Secret(value.into_bytes()))
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Whether the URL names a database driver flexgate has.
pub fn is_supported_url(url: &str) -> bool {
    ["postgres://", "postgresql://", "sqlite:"]
        .iter()
        .any(|scheme| url.starts_with(scheme))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_need_no_variables() {
        let s = Settings::from_vars(vars(&[])).unwrap();
        assert_eq!(s.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(s.token_max_age, Duration::from_secs(21_600));
        assert_eq!(s.bcrypt_cost, 12);
        assert!(s.migrate_on_start);
        assert!(s.secret_key.is_none());
        assert_eq!(s.log_format, LogFormat::Text);
    }

    #[test]
    fn every_bad_variable_is_reported_at_once() {
        let err = Settings::from_vars(vars(&[
            ("SECURITY_TOKEN_MAX_AGE", "six hours"),
            ("FLEXGATE_BCRYPT_COST", "99"),
            ("SECRET_KEY", "short-secret"),
            ("DATABASE_URL", "mysql://x"),
            ("FLEXGATE_LOG_FORMAT", "xml"),
            ("FLEXGATE_MIGRATE_ON_START", "maybe"),
        ]))
        .unwrap_err();
        let Error::Invalid(problems) = &err else {
            panic!("expected Invalid, got {err:?}")
        };
        let names: Vec<_> = problems.iter().map(|p| p.var).collect();
        assert_eq!(
            names,
            [
                "DATABASE_URL",
                "SECRET_KEY",
                "SECURITY_TOKEN_MAX_AGE",
                "FLEXGATE_BCRYPT_COST",
                "FLEXGATE_MIGRATE_ON_START",
                "FLEXGATE_LOG_FORMAT"
            ]
        );
        let text = err.to_string();
        assert!(text.contains("SECURITY_TOKEN_MAX_AGE: expected whole seconds"));
        assert!(
            !text.contains("short-secret"),
            "secret leaked into message: {text}"
        );
    }

    #[test]
    fn secret_key_is_required_only_when_asked_for() {
        let s = Settings::from_vars(vars(&[])).unwrap();
        let err = s.secret_key().unwrap_err().to_string();
        assert!(err.starts_with("SECRET_KEY is not set"), "{err}");
        let s = Settings::from_vars(vars(&[("SECRET_KEY", &"k".repeat(32))])).unwrap();
        assert_eq!(s.secret_key().unwrap().expose().len(), 32);
        assert_eq!(format!("{:?}", s.secret_key), "Some(Secret(<redacted>))");
    }

    #[test]
    fn flexmeasures_secrets_come_from_variables_or_files_and_never_show() {
        let dir = std::env::temp_dir().join(format!("flexgate-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("secret_key");
        let salt = dir.join("salt");
        let old = dir.join("fallbacks");
        let empty = dir.join("empty");
        std::fs::write(&key, "file-secret-key-0123456789abcdef\n").unwrap();
        std::fs::write(&salt, "file-salt\r\n").unwrap();
        std::fs::write(&old, "older-key-1\n\nolder-key-2\r\n").unwrap();
        std::fs::write(&empty, "\n").unwrap();
        let path = |p: &std::path::Path| p.display().to_string();
        let s = Settings::from_vars(vars(&[
            ("FLEXMEASURES_SECRET_KEY_FILE", &path(&key)),
            ("FLEXMEASURES_SECURITY_PASSWORD_SALT_FILE", &path(&salt)),
            ("FLEXMEASURES_SECRET_KEY_FALLBACKS_FILE", &path(&old)),
        ]))
        .unwrap();
        let fm = &s.flexmeasures;
        assert_eq!(
            fm.secret_key().unwrap().expose(),
            b"file-secret-key-0123456789abcdef"
        );
        assert_eq!(fm.password_salt().unwrap().expose(), b"file-salt");
        let fallbacks: Vec<&[u8]> = fm.fallbacks.iter().map(Secret::expose).collect();
        assert_eq!(fallbacks, [&b"older-key-1"[..], b"older-key-2"]);
        assert_eq!(fm.remember_salt, "remember-salt");
        assert_eq!(fm.session_lifetime, 31 * 86_400, "Flask's default");
        let shown = format!("{s:?}");
        for secret in ["file-secret-key", "file-salt", "older-key"] {
            assert!(!shown.contains(secret), "{secret} shows in {shown}");
        }
        // The variables themselves, FlexMeasures' JSON list for the fallbacks, and the
        // salt defaulting to the key as in FlexMeasures.
        let s = Settings::from_vars(vars(&[
            ("FLEXMEASURES_SECRET_KEY", "direct-key"),
            ("FLEXMEASURES_SECRET_KEY_FALLBACKS", r#"["a", "", "b"]"#),
        ]))
        .unwrap();
        assert_eq!(
            s.flexmeasures.password_salt().unwrap().expose(),
            b"direct-key"
        );
        assert_eq!(s.flexmeasures.fallbacks.len(), 2);
        // Mistakes, each named, none showing a secret.
        let err = Settings::from_vars(vars(&[
            ("FLEXMEASURES_SECRET_KEY", "both-ways"),
            ("FLEXMEASURES_SECRET_KEY_FILE", &path(&key)),
            ("FLEXMEASURES_SECURITY_PASSWORD_SALT_FILE", &path(&empty)),
            ("FLEXMEASURES_SECRET_KEY_FALLBACKS", "old-key-not-json"),
            ("FLEXMEASURES_PERMANENT_SESSION_LIFETIME", "a month"),
        ]))
        .unwrap_err()
        .to_string();
        for needle in [
            "set either FLEXMEASURES_SECRET_KEY or FLEXMEASURES_SECRET_KEY_FILE, not both",
            "FLEXMEASURES_SECURITY_PASSWORD_SALT_FILE names an empty file",
            "expected a JSON list of strings",
            "FLEXMEASURES_PERMANENT_SESSION_LIFETIME: expected whole seconds",
        ] {
            assert!(err.contains(needle), "{needle}: {err}");
        }
        assert!(
            !err.contains("both-ways") && !err.contains("old-key-not-json"),
            "{err}"
        );
        let missing = dir.join("missing");
        let err = Settings::from_vars(vars(&[("FLEXMEASURES_SECRET_KEY_FILE", &path(&missing))]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("FLEXMEASURES_SECRET_KEY_FILE cannot be read"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn typed_values_are_parsed() {
        let s = Settings::from_vars(vars(&[
            ("DATABASE_URL", "postgres://u@127.0.0.1/db"),
            ("SECURITY_TOKEN_MAX_AGE", "600"),
            ("FLEXGATE_BCRYPT_COST", "4"),
            ("FLEXGATE_MIGRATE_ON_START", "false"),
            ("FLEXGATE_CONFIG", "config/demo.toml"),
            ("FLEXGATE_LOG_FORMAT", "json"),
            ("UNRELATED", "ignored"),
        ]))
        .unwrap();
        assert_eq!(s.database_url, "postgres://u@127.0.0.1/db");
        assert_eq!(s.token_max_age, Duration::from_secs(600));
        assert_eq!(s.bcrypt_cost, 4);
        assert!(!s.migrate_on_start);
        assert_eq!(s.config_path, Some(PathBuf::from("config/demo.toml")));
        assert_eq!(s.log_format, LogFormat::Json);
    }
}
