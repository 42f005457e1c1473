//! `billsync run` reconciles on a schedule (`[reconcile] every_seconds`): each tenant this
//! agent holds, over the default window clipped to the outbox's horizon, its reads inside the
//! tenant's own rate window, repairing when `[reconcile] repair` says so. Each result is kept
//! in the outbox (for `status`) and exported as metrics.

use std::collections::HashMap;
use std::time::Duration;

use billsync_domain::{Tenant, TenantName};
use chrono::{DateTime, Utc};

use super::{LastReconcile, ReconcileOptions, Reconciler};
use crate::metrics::Metrics;

/// How soon a tenant is looked at again after a reconciliation that could not be done (the
/// platform unreadable, the outbox failing, the tenant held elsewhere, no whole day vouched
/// for yet), unless the schedule comes sooner.
const RETRY: Duration = Duration::from_secs(600);

/// The longest the schedule sleeps at once (a clock that jumps is noticed this soon).
const TICK: Duration = Duration::from_secs(60);

/// What the schedule needs besides the ports.
pub(crate) struct Schedule<'a> {
    /// How often each tenant is reconciled.
    pub every: Duration,
    /// What each reconciliation does (the window, repair).
    pub opts: ReconcileOptions,
    /// The claim's lifetime, as the engine's.
    pub claim_ttl: Duration,
    /// Where results are exported.
    pub metrics: &'a Metrics,
}

impl Reconciler<'_> {
    /// Reconciles `tenants` on `schedule`, forever (stopped by dropping the future). A tenant
    /// is due `every` after its last recorded reconciliation (by any process), so a restart
    /// neither repeats nor skips one; one never reconciled is due [`RETRY`] (or `every`, if
    /// shorter) after the start.
    pub(crate) async fn on_schedule(&self, tenants: &[Tenant], schedule: &Schedule<'_>) {
        let mut due: HashMap<TenantName, DateTime<Utc>> = HashMap::new();
        let now = self.clock.now();
        for t in tenants {
            let last = self.load_last(t.name()).await;
            if let Some(last) = &last {
                schedule.metrics.reconciled(t.name().as_str(), last);
            }
            // Never reconciled: soon, once the agent has had a moment to deliver its backlog.
            let first = later(now, schedule.every.min(RETRY));
            due.insert(t.name().clone(), last.map_or(first, |l| later(l.at, schedule.every)));
        }
        loop {
            let now = self.clock.now();
            for t in tenants {
                if due.get(t.name()).is_some_and(|d| *d > now) {
                    continue;
                }
                let next = match self.scheduled(t, &schedule.opts, schedule.claim_ttl).await {
                    Ok(Some((_, last))) => {
                        schedule.metrics.reconciled(t.name().as_str(), &last);
                        log(t, &last);
                        let wait = if last.unreadable.is_some() { schedule.every.min(RETRY) } else { schedule.every };
                        later(self.clock.now(), wait)
                    }
                    Ok(None) => later(self.clock.now(), schedule.every.min(RETRY)),
                    Err(e) => {
                        tracing::warn!(tenant = %t.name(), error = %crate::error_chain(&e), "scheduled reconciliation failed");
                        later(self.clock.now(), schedule.every.min(RETRY))
                    }
                };
                due.insert(t.name().clone(), next);
            }
            let next = due.values().min().copied().unwrap_or_else(|| later(now, schedule.every));
            let wait = (next - self.clock.now()).to_std().unwrap_or(Duration::ZERO);
            tokio::time::sleep(wait.clamp(Duration::from_millis(100), TICK)).await;
        }
    }

    /// The tenant's last recorded reconciliation, if any can be read.
    pub(crate) async fn load_last(&self, tenant: &TenantName) -> Option<LastReconcile> {
        match self.store.last_reconcile(tenant).await {
            Ok(json) => json.and_then(|j| serde_json::from_str(&j).ok()),
            Err(e) => {
                tracing::warn!(tenant = %tenant, error = %crate::error_chain(&e), "could not read the last reconciliation");
                None
            }
        }
    }
}

fn later(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn log(t: &Tenant, last: &LastReconcile) {
    if let Some(why) = &last.unreadable {
        tracing::warn!(tenant = %t.name(), reason = %why, "scheduled reconciliation could not read the platform");
    } else if last.clean {
        tracing::info!(tenant = %t.name(), from = %last.window.from, to = %last.window.to, "scheduled reconciliation: the platform holds what was delivered");
    } else {
        let found: Vec<String> =
            last.found.kinds().iter().filter(|(_, n)| *n > 0).map(|(k, n)| format!("{n} {k}")).collect();
        tracing::warn!(tenant = %t.name(), found = %found.join(", "), repair = ?last.repair, "scheduled reconciliation found discrepancies");
    }
}
