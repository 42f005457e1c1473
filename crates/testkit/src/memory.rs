//! A complete in-memory [`Outbox`], for tests that need no disk (the engine's, in paused
//! time). It keeps the whole contract of the port, and passes the same conformance suite as
//! the SQLite and PostgreSQL adapters: deduplication on enqueue, leases that lapse by the
//! injected clock, acks after a lapse, nacks counting attempts, dead letters with their
//! records, requeue, counts, compaction, and tenant claims with a lifetime judged by the
//! injected clock, whose generations grow with each new holder and fence the settles of the
//! earlier ones ([`OutboxError::ClaimLost`]), as PostgreSQL does for a fleet.
//!
//! Everything happens under one lock, so each call is atomic to every other. Beyond the port,
//! it lets a test look inside ([`MemoryOutbox::states`], [`MemoryOutbox::rows`],
//! [`MemoryOutbox::generation`]) and play a second agent that takes a tenant over
//! ([`MemoryOutbox::steal`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use billsync_domain::{
    Claim, ClaimOutcome, Clock, DeadLetter, DeadLetterRecord, EncodedEvent, EnqueueReport, EventId, Holder, Lease,
    LeaseId, Outbox, OutboxError, TenantCounts, TenantName,
};
use chrono::{DateTime, Utc};

/// The in-memory outbox. Cheap to share behind an `Arc`.
pub struct MemoryOutbox {
    clock: Arc<dyn Clock>,
    store: Mutex<Store>,
}

/// Everything the outbox holds.
#[derive(Debug, Default)]
struct Store {
    next_seq: u64,
    next_lease: u64,
    /// The events by `seq`: enqueue order.
    rows: BTreeMap<u64, Row>,
    /// Every stored (tenant, event id), to its `seq`.
    ids: HashMap<(TenantName, EventId), u64>,
    claims: HashMap<TenantName, ClaimRow>,
    states: HashMap<TenantName, String>,
}

#[derive(Debug, Clone)]
struct Row {
    tenant: TenantName,
    event: EncodedEvent,
    enqueued_at: DateTime<Utc>,
    /// Not leasable before.
    due_at: DateTime<Utc>,
    attempts: u32,
    state: State,
}

#[derive(Debug, Clone)]
enum State {
    /// Waiting for delivery; a lease may hold it (and lapses without a write).
    Pending {
        held: Option<Hold>,
    },
    Delivered {
        at: DateTime<Utc>,
    },
    Dead {
        code: String,
        message: String,
        at: DateTime<Utc>,
    },
}

/// A lease holding a pending event.
#[derive(Debug, Clone)]
struct Hold {
    lease: String,
    until: DateTime<Utc>,
}

/// A tenant's claim: who holds it, until when, under which generation.
#[derive(Debug, Clone)]
struct ClaimRow {
    /// `None` once released: the next claim, by anyone, is a new holder.
    holder: Option<String>,
    expires_at: DateTime<Utc>,
    generation: u64,
    /// Counts claims and renewals: the holder's heartbeat.
    beats: i64,
}

/// One stored event, as a test sees it ([`MemoryOutbox::rows`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowView {
    /// Whose event.
    pub tenant: TenantName,
    /// The event.
    pub event_id: EventId,
    /// As [`MemoryOutbox::states`] names it: `pending`, `leased`, `delivered` or
    /// `dead:<code>`.
    pub state: String,
    /// Delivery attempts counted (nacks and dead letters).
    pub attempts: u32,
}

impl Row {
    fn is_pending(&self) -> bool {
        matches!(self.state, State::Pending { .. })
    }

    /// Held by a lease that has not lapsed at `now`.
    fn is_held(&self, now: DateTime<Utc>) -> bool {
        matches!(&self.state, State::Pending { held: Some(h) } if h.until > now)
    }

    fn held_by(&self, lease: &str) -> bool {
        matches!(&self.state, State::Pending { held: Some(h) } if h.lease == lease)
    }

    fn name(&self, now: DateTime<Utc>) -> String {
        match &self.state {
            State::Pending { .. } if self.is_held(now) => "leased".to_owned(),
            State::Pending { .. } => "pending".to_owned(),
            State::Delivered { .. } => "delivered".to_owned(),
            State::Dead { code, .. } => format!("dead:{code}"),
        }
    }
}

/// `now + d`, at most the end of time.
fn after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d).ok().and_then(|d| now.checked_add_signed(d)).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl Store {
    fn seq(&self, tenant: &TenantName, id: &EventId) -> Option<u64> {
        self.ids.get(&(tenant.clone(), id.clone())).copied()
    }

    fn tenant_rows<'a>(&'a mut self, tenant: &'a TenantName) -> impl Iterator<Item = &'a mut Row> + 'a {
        self.rows.values_mut().filter(move |r| &r.tenant == tenant)
    }

    /// `Ok` when a settle of `lease` may go ahead: taken without a claim, or under the
    /// tenant's current generation.
    fn fence(&self, lease: &Lease) -> Result<(), OutboxError> {
        match lease.generation {
            Some(generation) if self.generation(&lease.tenant) != Some(generation) => {
                Err(OutboxError::ClaimLost { tenant: lease.tenant.clone(), generation })
            }
            _ => Ok(()),
        }
    }

    fn generation(&self, tenant: &TenantName) -> Option<u64> {
        self.claims.get(tenant).map(|c| c.generation)
    }

    fn lease(
        &mut self,
        tenant: &TenantName,
        max: usize,
        lease_for: Duration,
        now: DateTime<Utc>,
    ) -> Option<(String, Vec<EncodedEvent>, DateTime<Utc>)> {
        if max == 0 {
            return None;
        }
        // Lapsed leases hold nothing any more; their events keep their place.
        for r in self.tenant_rows(tenant) {
            if let State::Pending { held } = &mut r.state {
                if held.as_ref().is_some_and(|h| h.until <= now) {
                    *held = None;
                }
            }
        }
        let mut due: Vec<(DateTime<Utc>, u64)> = self
            .rows
            .iter()
            .filter(|(_, r)| &r.tenant == tenant && matches!(r.state, State::Pending { held: None }) && r.due_at <= now)
            .map(|(seq, r)| (r.due_at, *seq))
            .collect();
        if due.is_empty() {
            return None;
        }
        due.sort_unstable();
        due.truncate(max);
        self.next_lease += 1;
        let id = format!("lease-{}", self.next_lease);
        let until = after(now, lease_for);
        let mut events = Vec::with_capacity(due.len());
        for (_, seq) in due {
            if let Some(r) = self.rows.get_mut(&seq) {
                r.state = State::Pending { held: Some(Hold { lease: id.clone(), until }) };
                events.push(r.event.clone());
            }
        }
        Some((id, events, until))
    }

    /// Gives the tenant to `agent` (taken or renewed), unless another agent's claim is live.
    fn claim(&mut self, tenant: &TenantName, agent: &str, ttl: Duration, now: DateTime<Utc>) -> ClaimOutcome {
        if let Some(c) = self.claims.get(tenant) {
            match &c.holder {
                Some(h) if h != agent && c.expires_at > now => {
                    return ClaimOutcome::HeldBy(Holder { agent: h.clone(), heartbeat: Some(c.beats) });
                }
                _ => {}
            }
        }
        ClaimOutcome::Claimed(self.take(tenant, agent, ttl, now))
    }

    /// Gives the tenant to `agent`: a renewal when it holds it already, else a new holder with
    /// the next generation, which voids every lease of the tenant.
    fn take(&mut self, tenant: &TenantName, agent: &str, ttl: Duration, now: DateTime<Utc>) -> Claim {
        let c = self.claims.entry(tenant.clone()).or_insert_with(|| ClaimRow {
            holder: None,
            expires_at: DateTime::<Utc>::MIN_UTC,
            generation: 0,
            beats: 0,
        });
        let renewal = c.holder.as_deref() == Some(agent);
        if !renewal {
            c.generation += 1;
        }
        c.holder = Some(agent.to_owned());
        c.expires_at = after(now, ttl);
        c.beats += 1;
        let generation = c.generation;
        if !renewal {
            // Whoever held the tenant before is gone: its leases hold nothing any more.
            for r in self.tenant_rows(tenant) {
                if let State::Pending { held } = &mut r.state {
                    *held = None;
                }
            }
        }
        Claim { tenant: tenant.clone(), generation }
    }
}

impl MemoryOutbox {
    /// An empty outbox on `clock`: leases and claims lapse, and settles are dated, by it.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self { clock, store: Mutex::default() }
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many of a tenant's events are in each state, by name: `pending` (including those
    /// backing off, or whose lease lapsed), `leased`, `delivered`, `dead:<code>`.
    pub fn states(&self, tenant: &str) -> HashMap<String, usize> {
        let now = self.clock.now();
        let mut out = HashMap::new();
        for r in self.lock().rows.values().filter(|r| r.tenant.as_str() == tenant) {
            *out.entry(r.name(now)).or_default() += 1;
        }
        out
    }

    /// Every stored event, of every tenant, in enqueue order.
    pub fn rows(&self) -> Vec<RowView> {
        let now = self.clock.now();
        self.lock()
            .rows
            .values()
            .map(|r| RowView {
                tenant: r.tenant.clone(),
                event_id: r.event.event_id().clone(),
                state: r.name(now),
                attempts: r.attempts,
            })
            .collect()
    }

    /// The tenant's current claim generation (`None` before its first claim).
    pub fn generation(&self, tenant: &TenantName) -> Option<u64> {
        self.lock().generation(tenant)
    }

    /// Another agent takes the tenant over, as a real one would once the holder stalled past
    /// its claim's lifetime (SIGSTOP, a long pause): the holder's claim lapses now, and `agent`
    /// claims the tenant for `ttl`. `agent` gets the next generation, every earlier lease is
    /// void, and the earlier holder's renewals answer [`ClaimOutcome::HeldBy`] while its
    /// leases and settles are refused with [`OutboxError::ClaimLost`].
    pub fn steal(&self, tenant: &TenantName, agent: &str, ttl: Duration) -> Claim {
        let now = self.clock.now();
        let mut store = self.lock();
        if let Some(c) = store.claims.get_mut(tenant) {
            if c.holder.as_deref() != Some(agent) {
                c.expires_at = c.expires_at.min(now);
            }
        }
        store.take(tenant, agent, ttl, now)
    }
}

impl fmt::Debug for MemoryOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let store = self.lock();
        f.debug_struct("MemoryOutbox")
            .field("clock", &self.clock)
            .field("events", &store.rows.len())
            .field("claims", &store.claims.len())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Outbox for MemoryOutbox {
    async fn enqueue(&self, tenant: &TenantName, events: &[EncodedEvent]) -> Result<EnqueueReport, OutboxError> {
        let now = self.clock.now();
        let mut store = self.lock();
        let mut report = EnqueueReport::default();
        let mut reported = HashSet::new();
        for e in events {
            let key = (tenant.clone(), e.event_id().clone());
            if store.ids.contains_key(&key) {
                if reported.insert(e.event_id()) {
                    report.duplicates.push(e.event_id().clone());
                }
                continue;
            }
            let seq = store.next_seq;
            store.next_seq += 1;
            store.ids.insert(key, seq);
            let row = Row {
                tenant: tenant.clone(),
                event: e.clone(),
                enqueued_at: now,
                due_at: now,
                attempts: 0,
                state: State::Pending { held: None },
            };
            store.rows.insert(seq, row);
            report.stored += 1;
        }
        Ok(report)
    }

    async fn lease(&self, tenant: &TenantName, max: usize, lease_for: Duration) -> Result<Option<Lease>, OutboxError> {
        let now = self.clock.now();
        let leased = self.lock().lease(tenant, max, lease_for, now);
        Ok(leased.map(|(id, events, expires_at)| Lease {
            id: LeaseId::new(id),
            tenant: tenant.clone(),
            events,
            expires_at,
            generation: None,
        }))
    }

    async fn lease_claimed(
        &self,
        claim: &Claim,
        max: usize,
        lease_for: Duration,
    ) -> Result<Option<Lease>, OutboxError> {
        let now = self.clock.now();
        let mut store = self.lock();
        if store.generation(&claim.tenant) != Some(claim.generation) {
            return Err(OutboxError::ClaimLost { tenant: claim.tenant.clone(), generation: claim.generation });
        }
        let leased = store.lease(&claim.tenant, max, lease_for, now);
        Ok(leased.map(|(id, events, expires_at)| Lease {
            id: LeaseId::new(id),
            tenant: claim.tenant.clone(),
            events,
            expires_at,
            generation: Some(claim.generation),
        }))
    }

    async fn ack(&self, lease: &Lease, delivered: &[EventId]) -> Result<(), OutboxError> {
        let now = self.clock.now();
        let mut store = self.lock();
        store.fence(lease)?;
        for id in delivered {
            let Some(seq) = store.seq(&lease.tenant, id) else { continue };
            if let Some(r) = store.rows.get_mut(&seq).filter(|r| r.is_pending()) {
                r.state = State::Delivered { at: now };
            }
        }
        Ok(())
    }

    async fn nack(&self, lease: &Lease, retry_at: DateTime<Utc>) -> Result<(), OutboxError> {
        let mut store = self.lock();
        store.fence(lease)?;
        for r in store.tenant_rows(&lease.tenant).filter(|r| r.held_by(lease.id.as_str())) {
            r.state = State::Pending { held: None };
            r.attempts = r.attempts.saturating_add(1);
            r.due_at = retry_at;
        }
        Ok(())
    }

    async fn dead_letter(&self, lease: &Lease, items: &[DeadLetter]) -> Result<(), OutboxError> {
        let now = self.clock.now();
        let mut store = self.lock();
        store.fence(lease)?;
        for d in items {
            let Some(seq) = store.seq(&lease.tenant, &d.event_id) else { continue };
            if let Some(r) = store.rows.get_mut(&seq).filter(|r| r.is_pending()) {
                r.state = State::Dead { code: d.code.clone(), message: d.message.clone(), at: now };
                r.attempts = r.attempts.saturating_add(1);
            }
        }
        Ok(())
    }

    async fn requeue(&self, tenant: &TenantName, ids: Option<Vec<EventId>>) -> Result<u64, OutboxError> {
        let now = self.clock.now();
        let mut store = self.lock();
        let wanted: Option<HashSet<EventId>> = ids.map(|ids| ids.into_iter().collect());
        let mut n = 0;
        for r in store.tenant_rows(tenant) {
            if matches!(r.state, State::Dead { .. }) && wanted.as_ref().is_none_or(|w| w.contains(r.event.event_id())) {
                r.state = State::Pending { held: None };
                r.due_at = now;
                n += 1;
            }
        }
        Ok(n)
    }

    async fn counts(&self, tenant: &TenantName) -> Result<TenantCounts, OutboxError> {
        let now = self.clock.now();
        let store = self.lock();
        let mut c = TenantCounts::default();
        for r in store.rows.values().filter(|r| &r.tenant == tenant) {
            match &r.state {
                State::Pending { .. } if r.is_held(now) => c.in_flight += 1,
                State::Pending { .. } => {
                    c.pending += 1;
                    c.oldest_pending = Some(c.oldest_pending.map_or(r.enqueued_at, |t| t.min(r.enqueued_at)));
                }
                State::Delivered { .. } => c.delivered += 1,
                State::Dead { .. } => c.dead_lettered += 1,
            }
            if r.is_pending() && r.due_at > now {
                c.next_attempt_at = Some(c.next_attempt_at.map_or(r.due_at, |t| t.min(r.due_at)));
            }
        }
        Ok(c)
    }

    async fn dead_letters(&self, tenant: Option<TenantName>) -> Result<Vec<DeadLetterRecord>, OutboxError> {
        let store = self.lock();
        let mut dead: Vec<(DateTime<Utc>, u64, DeadLetterRecord)> = store
            .rows
            .iter()
            .filter(|(_, r)| tenant.as_ref().is_none_or(|t| &r.tenant == t))
            .filter_map(|(seq, r)| match &r.state {
                State::Dead { code, message, at } => Some((
                    *at,
                    *seq,
                    DeadLetterRecord {
                        tenant: r.tenant.clone(),
                        event_id: r.event.event_id().clone(),
                        code: code.clone(),
                        message: message.clone(),
                        attempts: r.attempts,
                        dead_at: *at,
                    },
                )),
                _ => None,
            })
            .collect();
        dead.sort_unstable_by_key(|(at, seq, _)| (*at, *seq));
        Ok(dead.into_iter().map(|(_, _, d)| d).collect())
    }

    async fn compact(&self, before: DateTime<Utc>) -> Result<u64, OutboxError> {
        let mut store = self.lock();
        let gone: Vec<u64> = store
            .rows
            .iter()
            .filter(|(_, r)| matches!(r.state, State::Delivered { at } if at < before))
            .map(|(seq, _)| *seq)
            .collect();
        for seq in &gone {
            if let Some(r) = store.rows.remove(seq) {
                store.ids.remove(&(r.tenant, r.event.event_id().clone()));
            }
        }
        Ok(gone.len() as u64)
    }

    async fn claim_tenant(&self, tenant: &TenantName, agent: &str, ttl: Duration) -> Result<ClaimOutcome, OutboxError> {
        let now = self.clock.now();
        Ok(self.lock().claim(tenant, agent, ttl, now))
    }

    async fn save_tenant_state(&self, tenant: &TenantName, state: &str) -> Result<(), OutboxError> {
        self.lock().states.insert(tenant.clone(), state.to_owned());
        Ok(())
    }

    async fn tenant_state(&self, tenant: &TenantName) -> Result<Option<String>, OutboxError> {
        Ok(self.lock().states.get(tenant).cloned())
    }

    async fn release_tenant(&self, tenant: &TenantName, agent: &str) -> Result<(), OutboxError> {
        if let Some(c) = self.lock().claims.get_mut(tenant) {
            if c.holder.as_deref() == Some(agent) {
                // The generation stays, so that the next holder's is higher.
                c.holder = None;
                c.expires_at = DateTime::<Utc>::MIN_UTC;
            }
        }
        Ok(())
    }
}
