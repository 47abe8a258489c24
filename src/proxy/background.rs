//! Work a serving process does beside requests:
//! - following the identity change feed, so a revocation, deactivation, password or role
//!   change made by any replica (or the CLI) empties the affected cache entries here
//!   within one poll interval;
//! - reloading the rule file on SIGHUP or when its content changes: the new file is
//!   compiled first and swapped in whole; a file with errors keeps the old rules.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Gateway;
use crate::auth::Authenticator;
use crate::rules::{self, Diagnostics, IdentitySource};

/// How often the change feed is polled by default.
pub const CHANGE_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Keep cached identities current until shutdown: poll the native change feed every
/// `interval`, or in FlexMeasures mode compare the cached users with FlexMeasures'
/// tables every `[identity] revalidate_ms`.
pub async fn follow_changes(
    gw: Arc<Gateway>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    if let (Authenticator::FlexMeasures(fm), IdentitySource::FlexMeasures { revalidate }) =
        (&*gw.auth, gw.server().identity_source)
    {
        let mut revoked = 0;
        let mut ticks: u64 = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(revalidate) => {}
                _ = shutdown.changed() => return,
            }
            ticks += 1;
            flush_key_uses(&gw).await;
            if let Err(e) = fm.follow_revocations(&mut revoked).await {
                gw.metrics.change_feed_error();
                tracing::warn!(error = %e, "cannot read the logouts of the other replicas");
            }
            if ticks.is_multiple_of(600)
                && let Some(state) = fm.state()
            {
                let now = crate::auth::unix_now() as i64;
                if let Err(e) = state.prune_state(now, now - 86_400).await {
                    tracing::debug!(error = %e, "cannot prune the shared state");
                }
            }
            match fm.revalidate().await {
                Ok((checked, dropped)) if dropped > 0 => {
                    tracing::debug!(
                        checked,
                        dropped,
                        "FlexMeasures users changed; dropped from the caches"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    gw.metrics.change_feed_error();
                    tracing::warn!(error = %e, "cannot revalidate cached FlexMeasures users; they expire on their own");
                }
            }
        }
    }
    let store = gw.store().clone();
    let mut last = loop {
        match store.latest_change().await {
            Ok(id) => break id,
            Err(e) => {
                gw.metrics.change_feed_error();
                tracing::warn!(error = %e, "cannot read the change feed yet; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        flush_key_uses(&gw).await;
        match store.changes_since(last, 1000).await {
            Ok(changes) => {
                for change in changes {
                    if change.account_id.is_some() {
                        gw.auth.invalidate_all();
                    }
                    if let Some(user) = change.user_id {
                        gw.auth.invalidate_user(user).await;
                    }
                    last = change.id;
                }
            }
            Err(e) => {
                gw.metrics.change_feed_error();
                tracing::warn!(error = %e, "change feed poll failed; cached principals expire on their own");
            }
        }
    }
}

/// Write API keys' last-use times (each at most once a minute), off the request path.
async fn flush_key_uses(gw: &Gateway) {
    if let Err(e) = gw.auth.api_keys().flush_uses().await {
        tracing::debug!(error = %e, "cannot record API key use yet");
    }
}

/// Reload the rule file on SIGHUP, or when its content changes (checked every
/// `interval`; `None` = SIGHUP only), until shutdown.
pub async fn watch_rules(
    gw: Arc<Gateway>,
    path: PathBuf,
    interval: Option<Duration>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut seen = fingerprint(&path);
    let shadow = gw.server().shadow.clone();
    let mut shadow_seen = shadow.as_deref().and_then(fingerprint);
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let hup = async {
            match hangup.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hup = std::future::pending::<Option<()>>();
        let tick = async {
            match interval {
                Some(every) => tokio::time::sleep(every).await,
                None => std::future::pending().await,
            }
        };
        let forced = tokio::select! {
            _ = tick => false,
            _ = hup => true,
            _ = shutdown.changed() => return,
        };
        if let Some(candidate) = &shadow {
            let now = fingerprint(candidate);
            if forced || now != shadow_seen {
                shadow_seen = now;
                reload_shadow(&gw, candidate);
            }
        }
        let now = fingerprint(&path);
        if !forced && now == seen {
            continue;
        }
        seen = now;
        let _ = reload(&gw, &path);
    }
}

/// Compile the shadow rules and swap them in, or keep the current ones: a broken
/// candidate never affects the enforced rules.
fn reload_shadow(gw: &Gateway, path: &Path) {
    match rules::load(path) {
        Ok(config) => {
            let routes = config.rules.routes.len();
            gw.install_shadow(config.rules);
            tracing::info!(file = %path.display(), routes, "shadow rules reloaded");
        }
        Err(diagnostics) => {
            tracing::error!(file = %path.display(), "shadow rule file has errors; keeping the previous shadow rules:\n{diagnostics}");
        }
    }
}

/// Compile `path` and swap it in, or keep the current rules and say why.
pub fn reload(gw: &Gateway, path: &Path) -> Result<(), Diagnostics> {
    match rules::load(path) {
        Ok(config) => {
            if config.server != *gw.server() {
                tracing::warn!(file = %path.display(), "[server], [cache] and [auth.throttle] changes take effect after a restart");
            }
            config.warnings.log_warnings();
            let routes = config.rules.routes.len();
            gw.install(config.rules);
            tracing::info!(file = %path.display(), routes, "rules reloaded");
            Ok(())
        }
        Err(diagnostics) => {
            gw.metrics.reload(false, 0, crate::auth::unix_now());
            tracing::error!(file = %path.display(), "rule file has errors; keeping the previous rules:\n{diagnostics}");
            Err(diagnostics)
        }
    }
}

/// The file's content hash (`None` when unreadable).
fn fingerprint(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    Some(hasher.finish())
}
