//! Fault injection: `503`s, `429`s, connections dropped after the events were stored, and
//! added latency, each either with a probability or for the next N requests. Randomness comes
//! from a seeded generator, so a run is reproducible.

use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// What an injected fault does.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
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
/// `{"kind": "latency", "ms": 200, "trigger": {"probability": 0.5}, "target": "all"}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
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

pub(crate) struct Injector {
    inner: Mutex<(StdRng, Vec<Fault>)>,
}

impl Injector {
    pub(crate) fn new(seed: u64) -> Self {
        Self { inner: Mutex::new((StdRng::seed_from_u64(seed), Vec::new())) }
    }

    pub(crate) fn add(&self, fault: Fault) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).1.push(fault);
    }

    pub(crate) fn clear(&self) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).1.clear();
    }

    pub(crate) fn list(&self) -> Vec<Fault> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).1.clone()
    }

    /// Decides which faults fire on a request to `target`, consuming `Next` counts.
    pub(crate) fn roll(&self, target: FaultTarget) -> Fired {
        let mut fired = Fired::default();
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.1.is_empty() {
            return fired;
        }
        let (rng, faults) = &mut *g;
        for f in faults.iter_mut() {
            if f.target != target && f.target != FaultTarget::All {
                continue;
            }
            let fires = match &mut f.trigger {
                FaultTrigger::Probability(p) => rng.gen_bool(if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) }),
                FaultTrigger::Next(n) => {
                    let fires = *n > 0;
                    *n = n.saturating_sub(1);
                    fires
                }
            };
            if !fires {
                continue;
            }
            match f.kind {
                FaultKind::Unavailable => fired.unavailable = true,
                FaultKind::RateLimited { retry_after_s } => fired.rate_limited = Some(retry_after_s),
                FaultKind::DropConnection => fired.drop_connection = true,
                FaultKind::Latency { ms } => fired.latency += Duration::from_millis(ms),
            }
        }
        faults.retain(|f| f.trigger != FaultTrigger::Next(0));
        fired
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
    }
}
