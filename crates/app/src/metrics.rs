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
    ingest_events: Family<Labels, Counter>,
    backpressure: Family<Labels, Gauge>,
    quarantined: Counter,
    /// Each tenant's `state="blocked"` series, whose `reason` label changes with the reason.
    blocked_series: Mutex<HashMap<String, Labels>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics { .. }")
    }
}

/// Registers a new family of `M` under `name` (prefixed `billsync_`).
fn family<M>(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, M>
where
    M: prometheus_client::metrics::TypedMetric
        + prometheus_client::encoding::EncodeMetric
        + Default
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let family = Family::<Labels, M>::default();
    registry.register(name, help, family.clone());
    family
}

/// A counter without labels, registered.
fn counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    let counter = Counter::default();
    registry.register(name, help, counter.clone());
    counter
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("billsync");
        let r = &mut registry;
        let enqueued = family(r, "events_enqueued", "Events stored in the outbox");
        let delivered = family(r, "events_delivered", "Events newly accepted by the platform");
        let duplicate = family(r, "events_duplicate", "Events the platform already had");
        let dead_lettered = family(r, "events_dead_lettered", "Events refused for good");
        let pending = family(r, "events_pending", "Events waiting for delivery");
        let requests = family(r, "requests", "Billing requests by answer");
        let token_refreshes = family(r, "token_requests", "Token requests made");
        let rate_limit_waits = family(r, "rate_limit_waits", "Times a worker waited for its rate window");
        let latency =
            Family::<Labels, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16)));
        r.register("request_duration_seconds", "Billing request latency", latency.clone());
        let tenant_state = family(
            r,
            "tenant_state",
            "1 for the tenant's current state (ok, backing_off, blocked, held, down), else 0; blocked carries its reason",
        );
        let reconcile_discrepancies = family(
            r,
            "reconcile_discrepancies",
            "What the tenant's last reconciliation that read the platform found, by kind (before any repair)",
        );
        let reconcile_last_success = family(
            r,
            "reconcile_last_success_timestamp_seconds",
            "When a reconciliation of the tenant last read and compared both sides (Unix time)",
        );
        let ingest_events = family(
            r,
            "ingest_events",
            "Events received by the HTTP and MQTT ingest, by result (stored, duplicate, invalid, backpressure, failed)",
        );
        let backpressure = family(
            r,
            "backpressure",
            "1 while the outbox refuses new events, by reason (max_pending_events, min_free_disk_mb), else 0",
        );
        let quarantined = counter(r, "quarantined_messages", "Broker messages put in the quarantine");
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
                ingest_events,
                backpressure,
                quarantined,
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
    /// Events of a tenant that the ingest received, and what became of them.
    pub fn ingested(&self, t: &str, result: &str, n: u64) {
        let labels = vec![("tenant", t.to_owned()), ("result", result.to_owned())];
        self.inner.ingest_events.get_or_create(&labels).inc_by(n);
    }
    /// Events of a tenant the ingest received with this result so far.
    pub fn ingested_with(&self, t: &str, result: &str) -> u64 {
        self.inner.ingest_events.get_or_create(&vec![("tenant", t.to_owned()), ("result", result.to_owned())]).get()
    }
    /// One broker message put in the quarantine.
    pub fn quarantined(&self) {
        self.inner.quarantined.inc();
    }
    /// Whether the outbox pushes back now, and why (`pressure`: `None` when it takes events).
    pub fn backpressure(&self, pressure: Option<&crate::backpressure::Pressure>) {
        for reason in crate::backpressure::Pressure::REASONS {
            let on = pressure.is_some_and(|p| p.reason() == reason);
            self.inner.backpressure.get_or_create(&vec![("reason", reason.to_owned())]).set(i64::from(on));
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
