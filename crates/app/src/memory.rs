//! An in-memory outbox for the engine's unit tests (time-paused, no disk). It keeps the port's
//! contract; the real adapters are tested against the same contract in `billsync-storage`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use billsync_domain::{
    Clock, DeadLetter, DeadLetterRecord, EncodedEvent, EnqueueReport, EventId, Lease, LeaseId, Outbox, OutboxError,
    TenantCounts, TenantName,
};
use chrono::{DateTime, Utc};

#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Pending { not_before: DateTime<Utc> },
    Leased { lease: String, until: DateTime<Utc> },
    Delivered,
    Dead { code: String },
}

#[derive(Debug)]
pub struct Row {
    pub tenant: TenantName,
    pub event: EncodedEvent,
    pub state: State,
    pub attempts: u32,
}

#[derive(Debug)]
pub struct MemoryOutbox {
    pub rows: Mutex<Vec<Row>>,
    clock: Arc<dyn Clock>,
    next: Mutex<u64>,
    /// Claims answered so far, and after how many another agent holds every tenant.
    pub claims: Mutex<(u32, Option<u32>)>,
}

impl MemoryOutbox {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self { rows: Mutex::default(), clock, next: Mutex::new(0), claims: Mutex::default() }
    }
    pub fn states(&self, tenant: &str) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for r in self.rows.lock().unwrap().iter().filter(|r| r.tenant.as_str() == tenant) {
            let k = match &r.state {
                State::Pending { .. } => "pending".to_string(),
                State::Leased { .. } => "leased".to_string(),
                State::Delivered => "delivered".to_string(),
                State::Dead { code } => format!("dead:{code}"),
            };
            *out.entry(k).or_default() += 1;
        }
        out
    }
}

#[async_trait]
impl Outbox for MemoryOutbox {
    async fn enqueue(&self, tenant: &TenantName, events: &[EncodedEvent]) -> Result<EnqueueReport, OutboxError> {
        let mut rows = self.rows.lock().unwrap();
        let mut report = EnqueueReport::default();
        let now = self.clock.now();
        for e in events {
            if rows.iter().any(|r| &r.tenant == tenant && r.event.event_id() == e.event_id()) {
                report.duplicates.push(e.event_id().clone());
            } else {
                rows.push(Row {
                    tenant: tenant.clone(),
                    event: e.clone(),
                    state: State::Pending { not_before: now },
                    attempts: 0,
                });
                report.stored += 1;
            }
        }
        Ok(report)
    }

    async fn lease(&self, tenant: &TenantName, max: usize, lease_for: Duration) -> Result<Option<Lease>, OutboxError> {
        let now = self.clock.now();
        let id = {
            let mut n = self.next.lock().unwrap();
            *n += 1;
            format!("lease-{n}")
        };
        let until = now + chrono::Duration::from_std(lease_for).unwrap();
        let mut rows = self.rows.lock().unwrap();
        let mut events = Vec::new();
        for r in rows.iter_mut().filter(|r| &r.tenant == tenant) {
            if events.len() == max {
                break;
            }
            let due = match &r.state {
                State::Pending { not_before } => *not_before <= now,
                State::Leased { until, .. } => *until <= now,
                _ => false,
            };
            if due {
                r.state = State::Leased { lease: id.clone(), until };
                events.push(r.event.clone());
            }
        }
        Ok((!events.is_empty()).then(|| Lease {
            id: LeaseId::new(id),
            tenant: tenant.clone(),
            events,
            expires_at: until,
            generation: None,
        }))
    }

    async fn ack(&self, lease: &Lease, delivered: &[EventId]) -> Result<(), OutboxError> {
        for r in self.rows.lock().unwrap().iter_mut() {
            if r.tenant == lease.tenant && delivered.contains(r.event.event_id()) {
                r.state = State::Delivered;
            }
        }
        Ok(())
    }

    async fn nack(&self, lease: &Lease, retry_at: DateTime<Utc>) -> Result<(), OutboxError> {
        for r in self.rows.lock().unwrap().iter_mut() {
            if matches!(&r.state, State::Leased { lease: l, .. } if l == lease.id.as_str()) {
                r.state = State::Pending { not_before: retry_at };
                r.attempts += 1;
            }
        }
        Ok(())
    }

    async fn dead_letter(&self, lease: &Lease, items: &[DeadLetter]) -> Result<(), OutboxError> {
        for r in self.rows.lock().unwrap().iter_mut() {
            if let Some(d) = items.iter().find(|d| r.tenant == lease.tenant && &d.event_id == r.event.event_id()) {
                r.state = State::Dead { code: d.code.clone() };
            }
        }
        Ok(())
    }

    async fn requeue(&self, tenant: &TenantName, ids: Option<Vec<EventId>>) -> Result<u64, OutboxError> {
        let now = self.clock.now();
        let mut n = 0;
        for r in self.rows.lock().unwrap().iter_mut() {
            if &r.tenant == tenant
                && matches!(r.state, State::Dead { .. })
                && ids.as_ref().is_none_or(|ids| ids.contains(r.event.event_id()))
            {
                r.state = State::Pending { not_before: now };
                n += 1;
            }
        }
        Ok(n)
    }

    async fn counts(&self, tenant: &TenantName) -> Result<TenantCounts, OutboxError> {
        let mut c = TenantCounts::default();
        for r in self.rows.lock().unwrap().iter().filter(|r| &r.tenant == tenant) {
            match &r.state {
                State::Pending { not_before } => {
                    c.pending += 1;
                    c.next_attempt_at =
                        Some(c.next_attempt_at.map_or(*not_before, |t: DateTime<Utc>| t.min(*not_before)));
                }
                State::Leased { .. } => c.in_flight += 1,
                State::Delivered => c.delivered += 1,
                State::Dead { .. } => c.dead_lettered += 1,
            }
        }
        Ok(c)
    }

    async fn dead_letters(&self, _tenant: Option<TenantName>) -> Result<Vec<DeadLetterRecord>, OutboxError> {
        Ok(Vec::new())
    }

    async fn compact(&self, _before: DateTime<Utc>) -> Result<u64, OutboxError> {
        Ok(0)
    }

    async fn claim_tenant(
        &self,
        tenant: &TenantName,
        _agent: &str,
        _ttl: Duration,
    ) -> Result<billsync_domain::ClaimOutcome, OutboxError> {
        let mut claims = self.claims.lock().unwrap();
        claims.0 += 1;
        if claims.1.is_some_and(|after| claims.0 > after) {
            return Ok(billsync_domain::ClaimOutcome::HeldBy(billsync_domain::Holder {
                agent: "thief-1-2".into(),
                heartbeat: Some(i64::from(claims.0)),
            }));
        }
        Ok(billsync_domain::ClaimOutcome::Claimed(billsync_domain::Claim { tenant: tenant.clone(), generation: 1 }))
    }

    async fn save_tenant_state(&self, _tenant: &TenantName, _state: &str) -> Result<(), OutboxError> {
        Ok(())
    }

    async fn tenant_state(&self, _tenant: &TenantName) -> Result<Option<String>, OutboxError> {
        Ok(None)
    }

    async fn release_tenant(&self, _tenant: &TenantName, _agent: &str) -> Result<(), OutboxError> {
        Ok(())
    }
}
