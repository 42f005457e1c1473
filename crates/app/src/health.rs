//! What `/healthz` answers: the agent's overall status and one check per part (a tenant's
//! worker today; ingest endpoints as they come).
//!
//! ```
//! use billsync::engine::TenantReport;
//! use billsync::health::{Health, HealthStatus};
//! let blocked = TenantReport {
//!     name: "acme".into(),
//!     blocked: Some(billsync::engine::Blocked::one("missing_scope", "...")),
//!     ..TenantReport::default()
//! };
//! let health = Health::of(&[blocked]);
//! assert_eq!(health.status, HealthStatus::Degraded);
//! assert_eq!(health.http_status(), 200);
//! assert_eq!(health.checks[0].name, "tenant:acme");
//! ```

use serde::Serialize;

use crate::engine::{TenantReport, TenantState};

/// ok, degraded (working, but something needs a look) or down (something is not running).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Everything works.
    Ok,
    /// The agent runs, but a tenant is blocked or backing off.
    Degraded,
    /// A part of the agent is not running.
    Down,
}

/// One part of the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `tenant:acme`.
    pub name: String,
    /// Its status.
    pub status: HealthStatus,
    /// Its state and why (`blocked: missing_scope`), or `ok`.
    pub detail: String,
}

/// The `/healthz` document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    /// The worst status of the checks.
    pub status: HealthStatus,
    /// One per part.
    pub checks: Vec<Check>,
}

impl Health {
    /// The health of an agent whose tenants are in these states.
    pub fn of(reports: &[TenantReport]) -> Self {
        let checks: Vec<Check> = reports
            .iter()
            .map(|r| {
                let (state, why) = r.state();
                let status = match state {
                    TenantState::Ok | TenantState::Held => HealthStatus::Ok,
                    TenantState::BackingOff | TenantState::Blocked => HealthStatus::Degraded,
                    TenantState::Down => HealthStatus::Down,
                };
                let detail = why.map_or_else(|| state.to_string(), |w| format!("{state}: {w}"));
                Check { name: format!("tenant:{}", r.name), status, detail }
            })
            .collect();
        let status = checks.iter().map(|c| c.status).max().unwrap_or(HealthStatus::Ok);
        Self { status, checks }
    }

    /// Adds the outbox's check: degraded while it pushes back (the ingest answers `503`,
    /// `enqueue` exits 75), naming the limit.
    pub fn with_outbox(mut self, pressure: Option<&crate::backpressure::Pressure>) -> Self {
        let (status, detail) = match pressure {
            None => (HealthStatus::Ok, "ok".to_owned()),
            Some(p) => (HealthStatus::Degraded, format!("pushing back: {}", p.reason())),
        };
        self.status = self.status.max(status);
        self.checks.push(Check { name: "outbox".into(), status, detail });
        self
    }

    /// Adds a check of another part (the MQTT ingest's broker connection).
    #[must_use]
    pub fn with(mut self, check: Check) -> Self {
        self.status = self.status.max(check.status);
        self.checks.push(check);
        self
    }

    /// `200` for ok or degraded, `503` for down.
    pub fn http_status(&self) -> u16 {
        if self.status == HealthStatus::Down { 503 } else { 200 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, f: impl FnOnce(&mut TenantReport)) -> TenantReport {
        let mut r = TenantReport { name: name.into(), ..TenantReport::default() };
        f(&mut r);
        r
    }

    #[test]
    fn the_worst_check_decides_and_only_down_is_503() {
        let ok = report("a", |_| {});
        let held = report("b", |r| r.held_elsewhere = true);
        let backing = report("c", |r| r.backing_off = Some("unexpected_response: 418".into()));
        let down = report("d", |r| r.down = Some("the worker panicked".into()));

        let h = Health::of(&[ok.clone(), held.clone()]);
        assert_eq!((h.status, h.http_status()), (HealthStatus::Ok, 200));
        assert_eq!(h.checks[1].detail, "held: held by another agent");

        let h = Health::of(&[ok.clone(), backing]);
        assert_eq!((h.status, h.http_status()), (HealthStatus::Degraded, 200));
        assert_eq!(h.checks[1].detail, "backing_off: unexpected_response: 418");

        let h = Health::of(&[ok.clone(), down]);
        assert_eq!((h.status, h.http_status()), (HealthStatus::Down, 503));
        assert_eq!(
            h.checks[1],
            Check { name: "tenant:d".into(), status: HealthStatus::Down, detail: "down: the worker panicked".into() }
        );
        let h = Health::of(std::slice::from_ref(&ok))
            .with_outbox(Some(&crate::backpressure::Pressure::TooManyPending { pending: 10, max: 10 }));
        assert_eq!((h.status, h.http_status()), (HealthStatus::Degraded, 200));
        assert_eq!(h.checks[1].detail, "pushing back: max_pending_events");
        let h = Health::of(&[ok]).with_outbox(None);
        assert_eq!((h.status, h.checks[1].name.as_str()), (HealthStatus::Ok, "outbox"));
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(json["status"], "ok");
        assert_eq!(json["checks"][0]["status"], "ok");
    }
}
