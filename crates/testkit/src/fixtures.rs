//! What every outbox test needs: events, tenants, ids, the test clock's start, and a fixture
//! that holds an outbox under test with its clock.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use billsync_domain::{BillingEvent, EncodedEvent, EventId, ManualClock, Outbox, TenantName};
use chrono::{DateTime, Utc};

/// What a test returns: `Err` fails it with the error's message.
pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// An error and each of its sources, outermost first: the messages a chain printer (`{:#}`
/// with `anyhow`) joins with `: `. A test that checks the driver's words looks here, since an
/// error's own message does not repeat its source's.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
    std::iter::successors(Some(e), |e| e.source()).map(ToString::to_string).collect()
}

/// The test clock's start: 2026-11-23T10:00:00Z.
pub fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_428_000, 0).unwrap_or_default()
}

/// A tenant name.
///
/// # Panics
/// When `name` is not a valid tenant name.
pub fn tenant(name: &str) -> TenantName {
    TenantName::parse(name).expect("valid tenant name")
}

/// An event id.
///
/// # Panics
/// When `s` is not a valid event id.
pub fn id(s: &str) -> EventId {
    EventId::parse(s).expect("valid event id")
}

/// A valid billing event occurring at [`t0`].
///
/// # Panics
/// When `event_id` is not a valid event id.
pub fn event(event_id: &str) -> EncodedEvent {
    let json = format!(
        r#"{{"event_id": "{event_id}", "device_id": "meter-0042", "meter": "energy.active",
            "quantity": "12.500", "unit": "kWh", "occurred_at": "{}"}}"#,
        t0().to_rfc3339()
    );
    BillingEvent::parse(&json, t0()).expect("valid event").encode()
}

/// Events `{prefix}-0` .. `{prefix}-{n-1}`.
pub fn events(prefix: &str, n: usize) -> Vec<EncodedEvent> {
    (0..n).map(|i| event(&format!("{prefix}-{i}"))).collect()
}

/// The ids of `events`, in order.
pub fn ids_of(events: &[EncodedEvent]) -> Vec<String> {
    events.iter().map(|e| e.event_id().as_str().to_owned()).collect()
}

/// An outbox under test, the manual clock that drives it, and whatever keeps its storage
/// alive (a temporary directory, a throwaway database), dropped after the outbox.
pub struct Fixture {
    /// The outbox under test.
    pub outbox: Arc<dyn Outbox>,
    /// The clock the outbox was built with.
    pub clock: Arc<ManualClock>,
    _keep: Box<dyn Any + Send>,
}

impl Fixture {
    /// A fixture of `outbox`, driven by `clock`.
    pub fn new(outbox: Arc<dyn Outbox>, clock: Arc<ManualClock>) -> Self {
        Self { outbox, clock, _keep: Box::new(()) }
    }

    /// Keeps `keep` alive for as long as the fixture, and drops it after the outbox.
    #[must_use]
    pub fn keeping(self, keep: impl Any + Send) -> Self {
        Self { _keep: Box::new(keep), ..self }
    }
}

impl fmt::Debug for Fixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fixture").field("clock", &self.clock).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use billsync_domain::Clock as _;

    use super::*;

    #[test]
    fn the_test_clock_starts_at_t0() {
        assert_eq!(ManualClock::new(t0()).now(), t0());
    }

    #[test]
    fn events_are_numbered_from_zero() {
        assert_eq!(ids_of(&events("e", 3)), ["e-0", "e-1", "e-2"]);
        assert_eq!(event("x").event_id(), &id("x"));
    }
}
