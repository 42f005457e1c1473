//! Fault injection: `503`s, `429`s, connections dropped after the events were stored, and
//! added latency, each either with a probability or for the next N requests; and, per tenant,
//! accepted billing events forgotten after the `202` (`lose_after_accept`), each either with a
//! probability or for the next N events. Randomness comes from a seeded generator, so a run is
//! reproducible.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// What an injected fault does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// Answer `503 {"error":"service_unavailable"}` before doing anything.
    Unavailable,
    /// Answer `429 {"error":"rate_limited"}` with this `Retry-After`, before doing anything.
    RateLimited {
        /// Seconds in `Retry-After` (default 1).
        #[serde(default = "one")]
        retry_after_s: u64,
    },
    /// Process the request completely (events are stored), then drop the connection
    /// without a response: the client sees a transport error, not a status.
    DropConnection,
    /// Wait this long before processing the request.
    Latency {
        /// Added delay in milliseconds.
        ms: u64,
    },
    /// Answer the billing `POST` as usual (the events count in `accepted`), then forget the
    /// accepted events of this tenant the trigger picks, as a storage bug on the platform's
    /// side would: they are missing from the reconciliation `GET` and from
    /// [`crate::Emulator::stored_event_ids`], and a later post of the same `event_id` is
    /// accepted anew (not a duplicate). The trigger counts **events**, not requests:
    /// `probability` is drawn for each newly accepted event, `next: N` forgets the tenant's next
    /// N. The `target` is always the billing endpoint.
    LoseAfterAccept {
        /// The tenant whose events are forgotten.
        tenant_id: String,
    },
}

impl FaultKind {
    /// [`FaultKind::LoseAfterAccept`] for a tenant.
    pub fn lose_after_accept(tenant_id: impl Into<String>) -> Self {
        Self::LoseAfterAccept { tenant_id: tenant_id.into() }
    }
}

fn one() -> u64 {
    1
}

/// When an injected fault fires.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultTrigger {
    /// On each request with this probability (0.0 to 1.0), until cleared.
    Probability(f64),
    /// On each of the next N requests, then never again.
    Next(u32),
}

/// Which endpoints a fault applies to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultTarget {
    /// `POST` and `GET /iot/api/v2/billing/events` (the default).
    #[default]
    Billing,
    /// `POST /oauth2/v1/token`.
    Token,
    /// `POST /iot/api/v2/devices/{device_id}/telemetry`.
    Telemetry,
    /// All of the above.
    All,
}

/// A fault to inject. JSON form (admin API):
/// `{"kind": "drop_connection", "trigger": {"next": 1}}`,
/// `{"kind": "latency", "ms": 200, "trigger": {"probability": 0.5}, "target": "all"}`,
/// `{"kind": "lose_after_accept", "tenant_id": "acme-prod-001", "trigger": {"probability": 1.0}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// What it does.
    #[serde(flatten)]
    pub kind: FaultKind,
    /// When it fires.
    pub trigger: FaultTrigger,
    /// Where (default: the billing endpoints).
    #[serde(default)]
    pub target: FaultTarget,
}

impl Fault {
    /// A fault on the billing endpoints for the next `n` requests.
    pub fn next(kind: FaultKind, n: u32) -> Self {
        Self { kind, trigger: FaultTrigger::Next(n), target: FaultTarget::Billing }
    }

    /// A fault on the billing endpoints with probability `p` on every request.
    pub fn probability(kind: FaultKind, p: f64) -> Self {
        Self { kind, trigger: FaultTrigger::Probability(p), target: FaultTarget::Billing }
    }

    /// The same fault on other endpoints.
    pub fn on(mut self, target: FaultTarget) -> Self {
        self.target = target;
        self
    }
}

/// The faults that fire on one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Fired {
    pub latency: Duration,
    /// `Some(retry_after_s)` for an injected 429.
    pub rate_limited: Option<u64>,
    pub unavailable: bool,
    pub drop_connection: bool,
}

/// Whether a trigger fires now, consuming a `Next` count.
fn fires(rng: &mut StdRng, trigger: &mut FaultTrigger) -> bool {
    match trigger {
        FaultTrigger::Probability(p) => rng.gen_bool(if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) }),
        FaultTrigger::Next(n) => {
            let fires = *n > 0;
            *n = n.saturating_sub(1);
            fires
        }
    }
}

/// Whether a fault is a `lose_after_accept` for this tenant.
fn loses(fault: &Fault, tenant: &str) -> bool {
    matches!(&fault.kind, FaultKind::LoseAfterAccept { tenant_id } if tenant_id == tenant)
}

type Faults = (StdRng, Vec<Fault>);

pub(crate) struct Injector {
    inner: Mutex<Faults>,
}

impl Injector {
    pub(crate) fn new(seed: u64) -> Self {
        Self { inner: Mutex::new((StdRng::seed_from_u64(seed), Vec::new())) }
    }

    fn lock(&self) -> MutexGuard<'_, Faults> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a fault; a `lose_after_accept` always targets the billing endpoint.
    pub(crate) fn add(&self, mut fault: Fault) {
        if matches!(fault.kind, FaultKind::LoseAfterAccept { .. }) {
            fault.target = FaultTarget::Billing;
        }
        self.lock().1.push(fault);
    }

    pub(crate) fn clear(&self) {
        self.lock().1.clear();
    }

    pub(crate) fn list(&self) -> Vec<Fault> {
        self.lock().1.clone()
    }

    /// Decides which faults fire on a request to `target`, consuming `Next` counts. A
    /// `lose_after_accept` never fires here: it acts on events ([`Injector::losses`]).
    pub(crate) fn roll(&self, target: FaultTarget) -> Fired {
        let mut fired = Fired::default();
        let mut g = self.lock();
        if g.1.is_empty() {
            return fired;
        }
        let (rng, faults) = &mut *g;
        for f in faults.iter_mut() {
            if f.target != target && f.target != FaultTarget::All {
                continue;
            }
            if matches!(f.kind, FaultKind::LoseAfterAccept { .. }) || !fires(rng, &mut f.trigger) {
                continue;
            }
            match f.kind {
                FaultKind::Unavailable => fired.unavailable = true,
                FaultKind::RateLimited { retry_after_s } => fired.rate_limited = Some(retry_after_s),
                FaultKind::DropConnection => fired.drop_connection = true,
                FaultKind::Latency { ms } => fired.latency += Duration::from_millis(ms),
                FaultKind::LoseAfterAccept { .. } => {}
            }
        }
        faults.retain(|f| f.trigger != FaultTrigger::Next(0));
        fired
    }

    /// The `lose_after_accept` faults of `tenant`, to decide event by event which of a batch's
    /// newly accepted events are forgotten; `None` when there is none (the common case). Holds
    /// the injector's lock until dropped: take it with the tenant's store locked, never the
    /// other way round.
    pub(crate) fn losses<'a>(&'a self, tenant: &'a str) -> Option<Losses<'a>> {
        let g = self.lock();
        g.1.iter().any(|f| loses(f, tenant)).then_some(Losses { faults: g, tenant })
    }
}

/// The `lose_after_accept` faults of one tenant, while a batch is stored.
pub(crate) struct Losses<'a> {
    faults: MutexGuard<'a, Faults>,
    tenant: &'a str,
}

impl Losses<'_> {
    /// Whether the next newly accepted event is forgotten (every fault of the tenant is
    /// rolled, consuming `Next` counts).
    pub(crate) fn lose(&mut self) -> bool {
        let (rng, faults) = &mut *self.faults;
        let mut lost = false;
        for f in faults.iter_mut().filter(|f| loses(f, self.tenant)) {
            lost |= fires(rng, &mut f.trigger);
        }
        lost
    }
}

impl Drop for Losses<'_> {
    fn drop(&mut self) {
        self.faults.1.retain(|f| f.trigger != FaultTrigger::Next(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_n_fires_exactly_n_times_on_its_target() {
        let inj = Injector::new(1);
        inj.add(Fault::next(FaultKind::Unavailable, 2));
        assert!(!inj.roll(FaultTarget::Token).unavailable);
        assert!(inj.roll(FaultTarget::Billing).unavailable);
        assert!(inj.roll(FaultTarget::Billing).unavailable);
        assert!(!inj.roll(FaultTarget::Billing).unavailable);
        assert!(inj.list().is_empty());
    }

    #[test]
    fn probabilities_are_reproducible_from_the_seed() {
        let run = |seed| {
            let inj = Injector::new(seed);
            inj.add(Fault::probability(FaultKind::DropConnection, 0.5));
            (0..64).map(|_| inj.roll(FaultTarget::Billing).drop_connection).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let fired = run(7).iter().filter(|&&b| b).count();
        assert!((16..=48).contains(&fired), "{fired}");
    }

    #[test]
    fn json_form() {
        let f: Fault =
            serde_json::from_str(r#"{"kind": "latency", "ms": 20, "trigger": {"probability": 0.5}}"#).unwrap();
        assert_eq!(f, Fault::probability(FaultKind::Latency { ms: 20 }, 0.5));
        let f: Fault =
            serde_json::from_str(r#"{"kind": "rate_limited", "trigger": {"next": 3}, "target": "all"}"#).unwrap();
        assert_eq!(f, Fault::next(FaultKind::RateLimited { retry_after_s: 1 }, 3).on(FaultTarget::All));
        let f: Fault = serde_json::from_str(
            r#"{"kind": "lose_after_accept", "tenant_id": "t-1", "trigger": {"probability": 1.0}}"#,
        )
        .unwrap();
        assert_eq!(f, Fault::probability(FaultKind::lose_after_accept("t-1"), 1.0));
        assert!(serde_json::from_str::<Fault>(r#"{"kind": "lose_after_accept", "trigger": {"next": 1}}"#).is_err());
    }

    #[test]
    fn losses_count_events_per_tenant_and_never_fire_on_requests() {
        let inj = Injector::new(1);
        inj.add(Fault::next(FaultKind::lose_after_accept("t-1"), 2).on(FaultTarget::Token));
        assert_eq!(inj.list()[0].target, FaultTarget::Billing, "always the billing endpoint");
        assert_eq!(inj.roll(FaultTarget::Billing), Fired::default());
        assert!(inj.losses("t-2").is_none());
        let mut losses = inj.losses("t-1").expect("a loss fault for t-1");
        assert_eq!([losses.lose(), losses.lose(), losses.lose()], [true, true, false]);
        drop(losses);
        assert!(inj.list().is_empty(), "an exhausted next: N is removed");
        assert!(inj.losses("t-1").is_none());
    }

    #[test]
    fn loss_probabilities_zero_and_one_are_exact() {
        let inj = Injector::new(3);
        inj.add(Fault::probability(FaultKind::lose_after_accept("never"), 0.0));
        inj.add(Fault::probability(FaultKind::lose_after_accept("always"), 1.0));
        let mut never = inj.losses("never").unwrap();
        assert!((0..200).all(|_| !never.lose()));
        drop(never);
        let mut always = inj.losses("always").unwrap();
        assert!((0..200).all(|_| always.lose()));
    }
}
