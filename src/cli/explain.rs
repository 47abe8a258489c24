//! `flexgate explain`: why a request would be allowed or denied, step by step, using the
//! same stage functions as the proxy (normalise, match, roles, ids, owners, ACLs) against
//! the live database. Nothing is forwarded.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::json;

use super::open_store;
use super::serve::load_config;
use crate::auth::Identity;
use crate::proxy::deny::Deny;
use crate::proxy::normalize::normalize;
use crate::proxy::pipeline::{self, Facts};
use crate::rules::extract::parse_json_strict;
use crate::settings::Settings;
use crate::store::owner::OwnerResolver;
use crate::store::{Store, UserRef};

#[derive(Debug, Args)]
pub(crate) struct ExplainArgs {
    /// The rule file (default: FLEXGATE_CONFIG).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Explain as this user (email or id).
    #[arg(long, conflicts_with = "token")]
    email: Option<String>,
    /// Explain for this access token (checks it too; needs SECRET_KEY).
    #[arg(long)]
    token: Option<String>,
    /// HTTP method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Path, with query if any: /api/v3_0/assets?account=2.
    #[arg(long)]
    path: String,
    /// Request header, `Name: value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// JSON request body.
    #[arg(long)]
    body: Option<String>,
    /// Print the explanation as JSON.
    #[arg(long)]
    json: bool,
}

impl ExplainArgs {
    pub(crate) async fn run(self, settings: &Settings) -> anyhow::Result<ExitCode> {
        let path_file = self
            .config
            .clone()
            .or_else(|| settings.config_path.clone())
            .context("no rule file: pass --config FILE or set FLEXGATE_CONFIG")?;
        let config = load_config(&path_file)?;
        let store = open_store(settings).await?;
        let mut trace: Vec<String> = Vec::new();
        let result = self.explain(settings, &config, store, &mut trace).await?;
        let (decision, status, reason) = match &result {
            Ok(()) => ("allow", 200, "allowed".to_owned()),
            Err(deny) => ("deny", deny.status().as_u16(), deny.reason().to_owned()),
        };
        if self.json {
            println!(
                "{}",
                json!({"decision": decision, "status": status, "reason": reason, "trace": trace})
            );
        } else {
            for line in &trace {
                println!("{line}");
            }
            match result {
                Ok(()) => {
                    println!("result: ALLOW (forwarded to the upstream with identity headers)")
                }
                Err(deny) => println!(
                    "result: DENY {status} ({reason}; the client sees the generic {} body)",
                    deny.decision()
                ),
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn explain(
        &self,
        settings: &Settings,
        config: &crate::rules::Config,
        store: Store,
        trace: &mut Vec<String>,
    ) -> anyhow::Result<Result<(), Deny>> {
        let rules = &config.rules;
        let method = Method::from_bytes(self.method.to_ascii_uppercase().as_bytes())
            .context("--method is not an HTTP method")?;
        let (raw_path, query) = match self.path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (self.path.as_str(), None),
        };
        let mut headers = HeaderMap::new();
        for h in &self.headers {
            let (name, value) = h
                .split_once(':')
                .context("--header must look like `Name: value`")?;
            headers.append(
                HeaderName::from_bytes(name.trim().as_bytes()).context("bad header name")?,
                HeaderValue::from_str(value.trim()).context("bad header value")?,
            );
        }
        trace.push(format!("request: {method} {}", self.path));
        let path = match normalize(raw_path, &rules.paths) {
            Ok(p) => p.into_owned(),
            Err(e) => return Ok(Err(Deny::BadPath(e))),
        };
        trace.push(format!("normalized path: {path}"));
        if path == rules.token_endpoint {
            trace.push(
                "the token endpoint: flexgate answers it itself (POST email and password)".into(),
            );
            return Ok(Ok(()));
        }
        let pipeline::Matched { route, params, .. } =
            match pipeline::match_with_override(rules, &method, &mut headers, &path) {
                Ok(found) => found,
                Err(deny) => {
                    trace.push(format!(
                        "rule: none matches {method} {path}: denied by default"
                    ));
                    return Ok(Err(deny));
                }
            };
        trace.push(format!(
            "rule: {:?} ({}:{}) {} {}",
            &*route.name,
            rules.file.display(),
            route.line,
            route.methods.names().join("|"),
            route.template.text
        ));
        if route.public {
            trace.push("the rule is public: no authentication, no identity headers".into());
            return Ok(Ok(()));
        }
        let identity = match self.identity(settings, config, store.clone()).await? {
            Ok(identity) => identity,
            Err(deny) => return Ok(Err(deny)),
        };
        let p = &identity.principal;
        trace.push(format!(
            "principal: user {} <{}>, account {} (consultancy {}), roles [{}], account roles [{}]",
            p.user_id,
            identity.email,
            p.account_id,
            identity
                .consultancy_account_id
                .map_or("none".into(), |c| c.to_string()),
            p.roles.join(", "),
            p.account_roles.join(", ")
        ));
        if let Err(deny) = pipeline::check_roles(rules, route, &identity) {
            trace.push(format!("roles: {}", deny.reason()));
            return Ok(Err(deny));
        }
        if !route.roles.is_empty() {
            trace.push("roles: requirements met".into());
        }
        if let Some(key) = &identity.key {
            trace.push(format!(
                "API key {} {:?}{}",
                key.id,
                &*key.name,
                if key.read_only { ", read-only" } else { "" }
            ));
            if let Err(deny) = pipeline::check_key_scope(rules, route, &method, &identity) {
                trace.push(
                    "the key is read-only: only safe methods on routes that check only read".into(),
                );
                return Ok(Err(deny));
            }
        }
        let body = match &self.body {
            Some(text) => match parse_json_strict(text.as_bytes()) {
                Ok(v) => Some(v),
                Err(e) => {
                    trace.push(format!("body: {e}"));
                    return Ok(Err(Deny::MalformedJson));
                }
            },
            None => None,
        };
        let facts = Facts {
            params,
            query,
            headers: &headers,
            body: body.as_ref(),
        };
        if route.checks.is_empty() {
            trace.push("checks: none (any authenticated user)".into());
        }
        let owners = OwnerResolver::new(
            store,
            &config.server.cache,
            crate::metrics::Metrics::new(),
            1,
        );
        Ok(pipeline::authorize(&owners, rules, route, &facts, &identity, trace).await)
    }

    async fn identity(
        &self,
        settings: &Settings,
        config: &crate::rules::Config,
        store: Store,
    ) -> anyhow::Result<Result<std::sync::Arc<Identity>, Deny>> {
        if let crate::rules::IdentitySource::FlexMeasures { .. } = config.server.identity_source {
            let state = match &settings.state_url {
                Some(url) => Some(
                    Store::connect(url, &Default::default())
                        .await
                        .context("connecting to FLEXGATE_STATE_URL")?,
                ),
                None => None,
            };
            let fm = crate::auth::flexmeasures::FmAuthenticator::new(
                store,
                state,
                settings.secret_key.as_ref(),
                &settings.flexmeasures,
                settings.token_max_age,
                1,
                &config.server.cache,
                &config.server.throttle,
                crate::metrics::Metrics::new(),
            )?;
            if let Some(token) = &self.token {
                // Through the seam, so API keys are explained too.
                return Ok(crate::auth::Authenticator::FlexMeasures(fm)
                    .authenticate(token)
                    .await
                    .map_err(|e| Deny::Unauthenticated(e.as_str())));
            }
            let who = self
                .email
                .as_deref()
                .context("pass --email USER or --token TOKEN")?;
            let identity = fm
                .lookup(who)
                .await?
                .with_context(|| format!("no FlexMeasures user {who:?}"))?;
            if !identity.is_active() {
                return Ok(Err(Deny::Unauthenticated("inactive")));
            }
            return Ok(Ok(identity));
        }
        if let Some(token) = &self.token {
            let auth = crate::auth::Authenticator::Native(super::authenticator(store, settings)?);
            return Ok(auth
                .authenticate(token)
                .await
                .map_err(|e| Deny::Unauthenticated(e.as_str())));
        }
        let Some(email) = &self.email else {
            bail!("pass --email USER or --token TOKEN");
        };
        let user = store.user(&UserRef::parse(email)).await?;
        let record = store
            .principal(user.id)
            .await?
            .context("the user vanished")?;
        if !record.active {
            return Ok(Err(Deny::Unauthenticated("inactive")));
        }
        Ok(Ok(std::sync::Arc::new(Identity::from_record(record))))
    }
}
