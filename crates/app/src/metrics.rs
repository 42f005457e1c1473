//! Prometheus metrics of the agent, served by `billsync run` on `/metrics`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// The agent's metrics. Cheap to clone; clones share the values.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    enqueued: Family<Labels, Counter>,
    delivered: Family<Labels, Counter>,
    duplicate: Family<Labels, Counter>,
    dead_lettered: Family<Labels, Counter>,
    pending: Family<Labels, Gauge>,
    requests: Family<Labels, Counter>,
    token_refreshes: Family<Labels, Gauge>,
    rate_limit_waits: Family<Labels, Counter>,
    latency: Family<Labels, Histogram>,
    tenant_state: Family<Labels, Gauge>,
    reconcile_discrepancies: Family<Labels, Gauge>,
    reconcile_last_success: Family<Labels, Gauge>,
    /// Each tenant's `state="blocked"` series, whose `reason` label changes with the reason.
    blocked_series: Mutex<HashMap<String, Labels>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics { .. }")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("billsync");
        let enqueued = Family::<Labels, Counter>::default();
        let delivered = Family::<Labels, Counter>::default();
        let duplicate = Family::<Labels, Counter>::default();
        let dead_lettered = Family::<Labels, Counter>::default();
        let pending = Family::<Labels, Gauge>::default();
        let requests = Family::<Labels, Counter>::default();
        let token_refreshes = Family::<Labels, Gauge>::default();
        let rate_limit_waits = Family::<Labels, Counter>::default();
        let latency =
            Family::<Labels, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16)));
        registry.register("events_enqueued", "Events stored in the outbox", enqueued.clone());
        registry.register("events_delivered", "Events newly accepted by the platform", delivered.clone());
        registry.register("events_duplicate", "Events the platform already had", duplicate.clone());
        registry.register("events_dead_lettered", "Events refused for good", dead_lettered.clone());
        registry.register("events_pending", "Events waiting for delivery", pending.clone());
        registry.register("requests", "Billing requests by answer", requests.clone());
        registry.register("token_requests", "Token requests made", token_refreshes.clone());
        registry.register("rate_limit_waits", "Times a worker waited for its rate window", rate_limit_waits.clone());
        registry.register("request_duration_seconds", "Billing request latency", latency.clone());
        let tenant_state = Family::<Labels, Gauge>::default();
        registry.register(
            "tenant_state",
            "1 for the tenant's current state (ok, backing_off, blocked, held, down), else 0; blocked carries its reason",
            tenant_state.clone(),
        );
        let reconcile_discrepancies = Family::<Labels, Gauge>::default();
        registry.register(
            "reconcile_discrepancies",
            "What the tenant's last reconciliation that read the platform found, by kind (before any repair)",
            reconcile_discrepancies.clone(),
        );
        let reconcile_last_success = Family::<Labels, Gauge>::default();
        registry.register(
            "reconcile_last_success_timestamp_seconds",
            "When a reconciliation of the tenant last read and compared both sides (Unix time)",
            reconcile_last_success.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry,
                enqueued,
                delivered,
                duplicate,
                dead_lettered,
                pending,
                requests,
                token_refreshes,
                rate_limit_waits,
                latency,
                tenant_state,
                reconcile_discrepancies,
                reconcile_last_success,
                blocked_series: Mutex::default(),
            }),
        }
    }
}

fn tenant(t: &str) -> Labels {
    vec![("tenant", t.to_owned())]
}

impl Metrics {
    /// Events stored for a tenant.
    pub fn enqueued(&self, t: &str, n: u64) {
        self.inner.enqueued.get_or_create(&tenant(t)).inc_by(n);
    }
    /// The outcome of one accepted batch.
    pub fn delivered(&self, t: &str, accepted: u64, duplicates: u64, dead: u64) {
        self.inner.delivered.get_or_create(&tenant(t)).inc_by(accepted);
        self.inner.duplicate.get_or_create(&tenant(t)).inc_by(duplicates);
        self.inner.dead_lettered.get_or_create(&tenant(t)).inc_by(dead);
    }
    /// Pending events of a tenant right now.
    pub fn pending(&self, t: &str, n: u64) {
        self.inner.pending.get_or_create(&tenant(t)).set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    /// Token requests made for a tenant so far.
    pub fn token_requests(&self, t: &str, n: u64) {
        self.inner.token_refreshes.get_or_create(&tenant(t)).set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    /// One billing request and its answer.
    pub fn request(&self, t: &str, status: &str, elapsed: Duration) {
        let labels = vec![("tenant", t.to_owned()), ("status", status.to_owned())];
        self.inner.requests.get_or_create(&labels).inc();
        self.inner.latency.get_or_create(&tenant(t)).observe(elapsed.as_secs_f64());
    }
    /// A worker waited for its rate window.
    pub fn rate_limit_wait(&self, t: &str) {
        self.inner.rate_limit_waits.get_or_create(&tenant(t)).inc();
    }
    /// Billing requests sent for a tenant with a given answer label (`202`, `429`, `error`).
    pub fn requests_with(&self, t: &str, status: &str) -> u64 {
        self.inner.requests.get_or_create(&vec![("tenant", t.to_owned()), ("status", status.to_owned())]).get()
    }
    /// A tenant's state: its series for `state` is 1, the others 0. The `blocked` series
    /// carries the reason codes as `reason` (empty when not blocked).
    pub fn tenant_state(&self, t: &str, state: crate::engine::TenantState, blocked_reason: Option<&str>) {
        use crate::engine::TenantState;
        for s in TenantState::ALL {
            let mut labels = vec![("tenant", t.to_owned()), ("state", s.as_str().to_owned())];
            if s == TenantState::Blocked {
                labels.push(("reason", blocked_reason.unwrap_or_default().to_owned()));
                let mut series = self.inner.blocked_series.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(old) = series.insert(t.to_owned(), labels.clone()) {
                    if old != labels {
                        self.inner.tenant_state.remove(&old);
                    }
                }
            }
            self.inner.tenant_state.get_or_create(&labels).set(i64::from(s == state));
        }
    }
    /// A tenant's last reconciliation: what it found per kind, when it last succeeded. A run
    /// that could not read the platform leaves the counts of the last one that could.
    pub fn reconciled(&self, t: &str, last: &crate::reconcile::LastReconcile) {
        if last.unreadable.is_none() {
            for (kind, n) in last.found.kinds() {
                let labels = vec![("tenant", t.to_owned()), ("kind", kind.to_owned())];
                self.inner.reconcile_discrepancies.get_or_create(&labels).set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        if let Some(at) = last.last_success_at {
            self.inner.reconcile_last_success.get_or_create(&tenant(t)).set(at.timestamp());
        }
    }
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.inner.registry) {
            // Writing into a String fails only if a metric's own encoding does.
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        out
    }
}
