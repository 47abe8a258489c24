//! Rule test suites (`flexgate config test RULES TESTS...`): a TOML file of fixtures
//! (principals, and owner rows per kind and id, so no database is needed) and cases (who
//! asks what, and the expected outcome). The file is parsed and checked against the
//! rules it tests the way rule files are (every problem, with file, line and fix), and
//! each case is then decided by the pipeline's own `evaluate`.
//!
//! ```toml
//! [principals.alice]                 # a user, with the account the ACLs see
//! user_id = 5
//! account_id = 3
//! roles = ["account-admin"]
//! account_roles = ["Prosumer"]
//! consultancy_account_id = 2
//!
//! [owners.asset]                     # owner rows by id; a column left out is NULL
//! 1 = { account_id = 3, consultancy_account_id = 2 }
//!
//! [[case]]
//! name = "alice may delete her account's asset"
//! who = "alice"                      # or "anonymous"
//! method = "DELETE"
//! path = "/api/v3_0/assets/1"        # a query may follow the path
//! status = 200                       # and/or decision = "allow" | "deny", reason = "..."
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::{Diagnostic, Diagnostics, RuleSet};
use crate::auth::Identity;
use crate::policy::Value;
use crate::store::PrincipalRecord;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSuite {
    #[serde(default)]
    principals: BTreeMap<Spanned<String>, RawPrincipal>,
    #[serde(default)]
    owners: BTreeMap<Spanned<String>, BTreeMap<Spanned<String>, toml::Table>>,
    #[serde(default, rename = "case")]
    cases: Vec<Spanned<RawCase>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrincipal {
    user_id: i64,
    account_id: i64,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    account_roles: Vec<String>,
    consultancy_account_id: Option<i64>,
    email: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: Option<String>,
    who: Option<String>,
    method: String,
    path: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// A JSON body written as TOML (a table, or any value).
    body: Option<toml::Value>,
    /// A JSON body written as JSON text.
    json: Option<String>,
    /// A body of any other kind, sent as written with the case's Content-Type (an
    /// upload's `multipart/form-data`).
    text: Option<String>,
    status: Option<u16>,
    decision: Option<String>,
    reason: Option<String>,
}

/// What a case expects.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Expected {
    /// The HTTP status (200 for an allow).
    pub status: Option<u16>,
    /// `allow` or `deny`.
    pub allow: Option<bool>,
    /// The deny reason (`no_acl_item_matched`, ...), or `allowed`.
    pub reason: Option<String>,
}

/// One case, ready to run.
#[derive(Debug, Clone)]
pub struct Case {
    /// Its name (or `METHOD path as who`).
    pub name: String,
    /// The line it starts on.
    pub line: usize,
    /// Who asks (`None`: anonymous).
    pub who: Option<Arc<Identity>>,
    /// The request.
    pub probe: crate::proxy::evaluate::Probe,
    /// The expected outcome.
    pub expected: Expected,
}

/// A parsed suite: owner fixtures and cases.
#[derive(Debug)]
pub struct Suite {
    /// The file.
    pub file: std::path::PathBuf,
    /// Owner rows by kind name and id (as text).
    pub owners: HashMap<(String, String), Arc<[Value]>>,
    /// The cases, in file order.
    pub cases: Vec<Case>,
}

/// Parse a suite file and check it against `rules` (principals named, kinds and
/// columns that exist, methods and statuses that make sense).
pub fn load(path: &Path, rules: &RuleSet) -> Result<Suite, Diagnostics> {
    let mut d = Diagnostics {
        file: path.to_owned(),
        ..Diagnostics::default()
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            d.errors.push(Diagnostic {
                line: None,
                rule: None,
                message: format!("cannot read the file: {e}"),
            });
            return Err(d);
        }
    };
    let lines = super::LineIndex::new(&text);
    let raw: RawSuite = match toml::from_str(&text) {
        Ok(r) => r,
        Err(e) => {
            d.errors.push(Diagnostic {
                line: e.span().map(|s| lines.line_of(s.start)),
                rule: None,
                message: e.message().trim().to_owned(),
            });
            return Err(d);
        }
    };
    let mut principals: HashMap<String, Arc<Identity>> = HashMap::new();
    for (name, p) in raw.principals {
        let identity = Identity::from_record(PrincipalRecord {
            user_id: p.user_id,
            email: p
                .email
                .unwrap_or_else(|| format!("{}@tests", name.get_ref())),
            active: true,
            uniquifier: String::new(),
            password_hash: String::new(),
            account_id: p.account_id,
            consultancy_account_id: p.consultancy_account_id,
            roles: p.roles,
            account_roles: p.account_roles,
        });
        principals.insert(name.into_inner(), Arc::new(identity));
    }
    let mut owners = HashMap::new();
    for (kind_name, rows) in raw.owners {
        let line = Some(lines.line_of(kind_name.span().start));
        let Some(kind) = rules.kinds.iter().find(|k| k.name == *kind_name.get_ref()) else {
            let known: Vec<&str> = rules.kinds.iter().map(|k| k.name.as_str()).collect();
            d.errors.push(Diagnostic {
                line,
                rule: Some(format!("owners.{}", kind_name.get_ref())),
                message: format!(
                    "the rules have no kind {:?}; use one of {}",
                    kind_name.get_ref(),
                    known.join(", ")
                ),
            });
            continue;
        };
        for (id, columns) in rows {
            let row_line = Some(lines.line_of(id.span().start));
            let mut row = vec![Value::Null; kind.columns.len()];
            for (column, value) in columns {
                let Some(i) = kind.columns.iter().position(|c| *c == column) else {
                    d.errors.push(Diagnostic {
                        line: row_line,
                        rule: Some(format!("owners.{}.{}", kind.name, id.get_ref())),
                        message: format!(
                            "kind {:?} has no column {column:?}; its columns are {}",
                            kind.name,
                            kind.columns.join(", ")
                        ),
                    });
                    continue;
                };
                row[i] = match value {
                    toml::Value::Integer(n) => Value::Int(n),
                    toml::Value::String(s) => Value::Text(s.into_boxed_str()),
                    toml::Value::Boolean(b) => Value::Bool(b),
                    other => {
                        d.errors.push(Diagnostic {
                            line: row_line,
                            rule: Some(format!("owners.{}.{}", kind.name, id.get_ref())),
                            message: format!("column {column:?}: {other} is not an integer, string or boolean (leave a column out for NULL)"),
                        });
                        Value::Null
                    }
                };
            }
            owners.insert((kind.name.clone(), id.into_inner()), Arc::from(row));
        }
    }
    let mut cases = Vec::new();
    for spanned in raw.cases {
        let line = lines.line_of(spanned.span().start);
        let c = spanned.into_inner();
        let label = c.name.clone().unwrap_or_else(|| {
            format!(
                "{} {} as {}",
                c.method,
                c.path,
                c.who.as_deref().unwrap_or("anonymous")
            )
        });
        let rule = Some(format!("case {label:?}"));
        let mut error = |message: String| {
            d.errors.push(Diagnostic {
                line: Some(line),
                rule: rule.clone(),
                message,
            })
        };
        let who = match c.who.as_deref() {
            None | Some("anonymous") => None,
            Some(name) => match principals.get(name) {
                Some(p) => Some(Arc::clone(p)),
                None => {
                    let known: Vec<&str> = principals.keys().map(String::as_str).collect();
                    error(format!(
                        "who = {name:?} names no principal; declare [principals.{name}] or use one of {}",
                        known.join(", ")
                    ));
                    continue;
                }
            },
        };
        let Ok(method) = http::Method::from_bytes(c.method.to_ascii_uppercase().as_bytes()) else {
            error(format!("method = {:?} is not an HTTP method", c.method));
            continue;
        };
        let mut headers = http::HeaderMap::new();
        let mut headers_ok = true;
        for (k, v) in &c.headers {
            match (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                (Ok(k), Ok(v)) => {
                    headers.append(k, v);
                }
                _ => {
                    error(format!("header {k:?} is not a valid header"));
                    headers_ok = false;
                }
            }
        }
        if !headers_ok {
            continue;
        }
        let is_json = c.text.is_none();
        let body = match (c.body, c.json, c.text) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
                error(
                    "give the body once: as body (TOML), json (JSON text) or text (as sent)".into(),
                );
                continue;
            }
            (None, None, Some(text)) => Some(bytes::Bytes::from(text)),
            (Some(v), None, None) => match serde_json::to_vec(&v) {
                Ok(bytes) => Some(bytes::Bytes::from(bytes)),
                Err(e) => {
                    error(format!("body: {e}"));
                    continue;
                }
            },
            (None, Some(text), None) => {
                match crate::rules::extract::parse_json_strict(text.as_bytes()) {
                    // The text as written: the proxy reads the bytes a client sends.
                    Ok(_) => Some(bytes::Bytes::from(text)),
                    Err(e) => {
                        error(format!("json is not valid JSON: {e}"));
                        continue;
                    }
                }
            }
            (None, None, None) => None,
        };
        // A body is JSON unless the case says otherwise, as clients send it.
        if is_json && body.is_some() && !headers.contains_key(http::header::CONTENT_TYPE) {
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
        }
        let allow = match c.decision.as_deref() {
            None => None,
            Some("allow") => Some(true),
            Some("deny") => Some(false),
            Some(other) => {
                error(format!("decision = {other:?}: use \"allow\" or \"deny\""));
                continue;
            }
        };
        if c.status.is_none() && allow.is_none() && c.reason.is_none() {
            error("say what to expect: status, decision or reason".into());
            continue;
        }
        if let Some(status) = c.status
            && !(100..=599).contains(&status)
        {
            error(format!("status = {status} is not an HTTP status"));
            continue;
        }
        cases.push(Case {
            name: label,
            line,
            who,
            probe: crate::proxy::evaluate::Probe::new(method, &c.path, headers, body),
            expected: Expected {
                status: c.status,
                allow,
                reason: c.reason,
            },
        });
    }
    if !d.errors.is_empty() {
        return Err(d);
    }
    Ok(Suite {
        file: path.to_owned(),
        owners,
        cases,
    })
}

/// A suite's owner rows as the pipeline asks for them.
impl crate::proxy::pipeline::OwnerSource for Suite {
    async fn owner(
        &self,
        kind: &super::Kind,
        id: &super::extract::ResourceId,
    ) -> Result<Option<Arc<[Value]>>, ()> {
        Ok(self
            .owners
            .get(&(kind.name.clone(), id.to_string()))
            .cloned())
    }
}
