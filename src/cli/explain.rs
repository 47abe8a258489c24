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
use crate::proxy::evaluate::{Probe, evaluate};
use crate::proxy::host;
use crate::proxy::normalize::normalize;
use crate::proxy::pipeline::{self, Credential};
use crate::rules::IdentitySource;
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
    /// Request body: JSON, sent as `application/json` unless a `Content-Type` header
    /// says otherwise (a url-encoded form, say).
    #[arg(long)]
    body: Option<String>,
    /// FlexMeasures mode: explain the request as the user's browser session (cookies)
    /// rather than a token, so the route's cross-origin check applies (give `Origin`
    /// or `Sec-Fetch-Site` and `Host` with --header).
    #[arg(long, requires = "email")]
    session: bool,
    /// The request comes to the plain-HTTP listener (default: the HTTPS one when the
    /// rule file has one).
    #[arg(long)]
    plain: bool,
    /// Print the explanation as JSON.
    #[arg(long)]
    json: bool,
    /// Also decide with the candidate rules of `[shadow] rules`.
    #[arg(long)]
    shadow: bool,
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
        let result = self
            .explain(settings, &config, store.clone(), &mut trace)
            .await?;
        let (decision, status, reason) = match &result {
            Ok(()) => ("allow", 200, "allowed".to_owned()),
            Err(deny) => ("deny", deny.status().as_u16(), deny.reason().to_owned()),
        };
        let shadow = if self.shadow {
            let path = config
                .server
                .shadow
                .clone()
                .context("--shadow: the rule file has no [shadow] rules")?;
            let candidate = load_config(&path)?;
            let candidate = crate::rules::Config {
                server: config.server.clone(),
                ..candidate
            };
            let mut shadow_trace: Vec<String> = Vec::new();
            let outcome = self
                .explain(settings, &candidate, store, &mut shadow_trace)
                .await?;
            Some((path, outcome, shadow_trace))
        } else {
            None
        };
        if self.json {
            let shadow = shadow.as_ref().map(|(path, outcome, t)| {
                let (d, st, r) = match outcome {
                    Ok(()) => ("allow", 200, "allowed".to_owned()),
                    Err(deny) => ("deny", deny.status().as_u16(), deny.reason().to_owned()),
                };
                json!({"rules": path.display().to_string(), "decision": d, "status": st, "reason": r, "trace": t})
            });
            println!(
                "{}",
                json!({"decision": decision, "status": status, "reason": reason, "trace": trace, "shadow": shadow})
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
            if let Some((path, outcome, shadow_trace)) = shadow {
                println!("\nshadow rules ({}):", path.display());
                for line in &shadow_trace {
                    println!("{line}");
                }
                match outcome {
                    Ok(()) => println!("shadow result: ALLOW"),
                    Err(deny) => println!(
                        "shadow result: DENY {} ({})",
                        deny.status().as_u16(),
                        deny.reason()
                    ),
                }
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
        let body = match &self.body {
            Some(text) => {
                // JSON unless a header says otherwise (a form: the bytes as given).
                if !headers.contains_key(http::header::CONTENT_TYPE) {
                    headers.insert(
                        http::header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                }
                if pipeline::is_json(headers.get(http::header::CONTENT_TYPE)) {
                    parse_json_strict(text.as_bytes())
                        .map_err(|e| anyhow::anyhow!("--body is not JSON: {e}"))?;
                }
                Some(bytes::Bytes::from(text.clone()))
            }
            None => None,
        };
        if self.session
            && !matches!(
                config.server.identity_source,
                IdentitySource::FlexMeasures { .. }
            )
        {
            bail!(
                "--session: only FlexMeasures mode ([identity] source = \"flexmeasures\") has browser sessions"
            );
        }
        let tls = config.server.https.is_some() && !self.plain;
        // The Host check comes first on the proxy, with the same function; a request
        // described without a Host is not checked (the proxy refuses it).
        let authority = if headers.contains_key(http::header::HOST) {
            let mut parts = http::Request::new(()).into_parts().0;
            parts.headers = headers.clone();
            match host::take_authority(&mut parts, &config.server.allowed_hosts) {
                Ok(authority) => {
                    trace.push(format!(
                        "host: {} (allowed)",
                        authority.to_str().unwrap_or("?")
                    ));
                    Some(authority)
                }
                Err(deny) => {
                    trace.push(format!(
                        "host: refused ({}): see allowed_hosts in [server]",
                        deny.reason()
                    ));
                    return Ok(Err(deny));
                }
            }
        } else {
            trace.push("host: none given, not checked (give --header 'Host: ...')".into());
            None
        };
        let mut probe = Probe::new(method, &self.path, headers, body);
        probe.authority = authority;
        probe.tls = tls;
        probe.reads_login_forms = matches!(
            config.server.identity_source,
            IdentitySource::FlexMeasures { .. }
        );
        if self.session {
            probe.credential = Credential::Session;
        }
        // Who asks matters only on routes that are not public.
        let asks_as_someone = self.email.is_some() || self.token.is_some() || self.session;
        let public = normalize(&probe.path, &rules.paths)
            .ok()
            .and_then(|p| {
                let mut headers = probe.headers.clone();
                pipeline::match_with_override(
                    rules,
                    &probe.method,
                    &mut headers,
                    &p,
                    probe.query.as_deref(),
                )
                .ok()
                // A preflight carries no credentials: explained as one only
                // when none are given.
                .map(|m| m.route.public || (m.preflight && !asks_as_someone))
            })
            .unwrap_or(false);
        let who = if public {
            None
        } else {
            match self.identity(settings, config, store.clone()).await? {
                Ok(identity) => Some(identity),
                Err(deny) => return Ok(Err(deny)),
            }
        };
        let owners = OwnerResolver::new(
            store,
            &config.server.cache,
            crate::metrics::Metrics::new(),
            1,
        );
        Ok(evaluate(rules, &probe, who.as_ref(), &owners, trace).await)
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
