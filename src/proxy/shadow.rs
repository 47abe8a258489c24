//! Shadow rules: a candidate rule file decides every request too, off the response
//! path, and never changes a response. Each decision is counted
//! (`flexgate_shadow_decisions_total` by route, enforced decision and shadow decision)
//! and a disagreement gets an audit line with both decisions and reasons, so an operator
//! sees what an edit would change on live traffic before enforcing it.
//!
//! The cost is bounded: at most [`MAX_IN_FLIGHT`] shadow decisions run at once (the rest
//! are skipped and counted), each in a task of its own, so a slow, failing or wrong
//! candidate never touches the enforced path.

use std::sync::Arc;

use super::Gateway;
use super::evaluate::{Probe, evaluate};
use crate::auth::Identity;
use crate::auth::token::token_from_authorization;
use crate::rules::RuleSet;

/// Shadow decisions running at once, at most.
pub const MAX_IN_FLIGHT: usize = 64;

/// What the enforced rules decided, as the shadow compares it.
#[derive(Debug, Clone)]
pub struct Enforced {
    /// The route that matched (the metrics label), or the no-route label.
    pub route: Arc<str>,
    /// The decision label (`allow`, `forbidden`, ...).
    pub decision: &'static str,
    /// The reason label.
    pub reason: &'static str,
}

/// Decide `probe` with the candidate rules in the background and record how it compares.
pub fn spawn(
    gw: Arc<Gateway>,
    candidate: Arc<RuleSet>,
    probe: Probe,
    who: Option<Arc<Identity>>,
    enforced: Enforced,
) {
    let Ok(permit) = Arc::clone(gw.shadow_permits()).try_acquire_owned() else {
        gw.metrics.shadow_skipped();
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        // Who asks: the enforced path's identity, or (on a route it did not
        // authenticate) the Authorization header's, as the candidate may need it.
        let who = match who {
            Some(w) => Some(w),
            None => match probe
                .headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| token_from_authorization(v.as_bytes()))
            {
                Some(token) => gw.auth.authenticate(token).await.ok(),
                None => None,
            },
        };
        let outcome = evaluate(&candidate, &probe, who.as_ref(), &gw.owners, &mut ()).await;
        let (decision, reason) = match &outcome {
            Ok(()) => ("allow", "allowed"),
            Err(deny) => (deny.decision(), deny.reason()),
        };
        gw.metrics
            .shadow_decision(&enforced.route, enforced.decision, decision);
        if decision != enforced.decision {
            tracing::info!(
                target: "flexgate::audit",
                decision = enforced.decision,
                reason = enforced.reason,
                shadow.decision = decision,
                shadow.reason = reason,
                rule.name = &*enforced.route,
                http.method = %probe.method,
                user.id = who.as_ref().map(|w| w.principal.user_id),
                "shadow rules decide differently"
            );
        }
    });
}
