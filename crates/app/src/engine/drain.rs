//! Draining one tenant: the loop lease → deliver → settle, under the tenant's claim.
//!
//! A batch's ack is not waited for before the next lease and post: it commits while the next
//! batch travels (at most one ack in flight per tenant, in order), so the outbox's commit and
//! the platform's answer overlap. Every way out of the loop, and every nack, dead letter and
//! count, first waits for the ack in flight.
//!
//! Likewise the next lease is taken while a batch travels (when the tenant's window and the
//! global bound have room for it), so the outbox's lease overlaps the post too; a lease taken
//! ahead that is not sent is given back on the way out, with the batch before it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use billsync_domain::{Claim, EncodedEvent, Lease, OutboxError, Settlement, StorageFailure, Tenant};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::send::{Halt, Step};
use super::{Blocked, Engine, lock, sleep_or_stop};

/// How a drain ended.
pub(super) enum Drained {
    /// Nothing deliverable is left right now (or, for `run`, shutdown was requested).
    Idle,
    /// Events are backing off until a later time.
    BackingOff,
    /// A configuration problem stopped the tenant.
    Blocked,
    /// Another agent holds the tenant.
    HeldElsewhere,
    /// `sync` gave up for now (outbox errors, or too many transient failures in a row).
    GaveUp,
}

/// An ack committing in the background.
type AckTask = tokio::task::JoinHandle<Result<(), OutboxError>>;

/// A lease, with its place in the global bound on leases held.
type Held<'a> = (Lease, tokio::sync::SemaphorePermit<'a>);

/// What the next turn of the loop works on.
enum Next<'a> {
    Lease(Held<'a>),
    /// Look again (after a wait).
    Again,
    Done(Drained),
}

/// One drain of one tenant: what the loop carries from turn to turn.
struct Worker<'a> {
    tenant: &'a Tenant,
    claim: &'a Claim,
    /// `run` (drain until stopped) rather than `sync` (drain what is deliverable now).
    forever: bool,
    stop: CancellationToken,
    acking: Option<AckTask>,
    ahead: Option<Held<'a>>,
    /// Transient failures in a row.
    failures: u32,
}

impl Engine {
    /// Drains one tenant until nothing is deliverable (or, for `forever`, until stopped),
    /// holding its claim throughout. The heartbeat renews the claim on its own task, whatever
    /// the worker is waiting for (a rate slot, a slow POST); if the claim is lost, the worker
    /// stops at once.
    pub(super) async fn drain(
        &self,
        tenant: &Tenant,
        forever: bool,
        stop: &CancellationToken,
        busy: Option<&AtomicUsize>,
    ) -> Drained {
        let claim = match self.claim(tenant, forever, busy).await {
            Ok(claim) => claim,
            Err(drained) => return drained,
        };
        let stop = stop.child_token();
        let heartbeat = tokio::spawn(self.clone().heartbeat(tenant.clone(), claim.clone(), stop.clone()));
        let mut w = Worker { tenant, claim: &claim, forever, stop, acking: None, ahead: None, failures: 0 };
        let drained = self.drain_loop(&mut w).await;
        if let Err(e) = finish_ack(&mut w.acking).await {
            self.note_error(tenant, &e);
        }
        self.give_back(&mut w.ahead, self.now()).await;
        // Stopped, not aborted: a renewal in flight finishes rather than being cut mid-call.
        w.stop.cancel();
        if let Err(e) = heartbeat.await {
            tracing::error!(tenant = %tenant.name(), error = %e, "the claim's heartbeat ended unexpectedly");
        }
        drained
    }

    async fn drain_loop<'a>(&'a self, w: &mut Worker<'a>) -> Drained {
        loop {
            if w.stop.is_cancelled() {
                return Drained::Idle;
            }
            let (lease, permit) = match w.ahead.take() {
                Some(held) => held,
                None => match self.next_lease(w).await {
                    Next::Lease(held) => held,
                    Next::Again => continue,
                    Next::Done(drained) => return drained,
                },
            };
            let (delivered, next) = tokio::join!(
                self.deliver_lease(w.tenant, &lease, &w.stop, &mut w.acking),
                self.lease_ahead(w.tenant, w.claim)
            );
            w.ahead = next;
            drop(permit);
            if let Some(drained) = self.after_lease(w, &lease, delivered).await {
                return drained;
            }
        }
    }

    /// Leases the next events, once a request could go at once and within the global bound.
    async fn next_lease<'a>(&'a self, w: &mut Worker<'a>) -> Next<'a> {
        if !self.wait_for_slot(w.tenant, &w.stop).await {
            return Next::Done(Drained::Idle);
        }
        let Ok(permit) = self.inner.in_flight.acquire().await else { return Next::Done(Drained::Idle) };
        let s = &self.inner.settings;
        match self.inner.outbox.lease_claimed(w.claim, s.batcher.max_events(), s.lease_for).await {
            Ok(Some(lease)) => Next::Lease((lease, permit)),
            Ok(None) => {
                drop(permit);
                self.when_empty(w).await
            }
            Err(e) => {
                drop(permit);
                self.note_error(w.tenant, &e);
                if w.forever && sleep_or_stop(self.backoff(w.failures), &w.stop).await {
                    w.failures = w.failures.saturating_add(1);
                    return Next::Again;
                }
                Next::Done(Drained::GaveUp)
            }
        }
    }

    /// Nothing to lease: `run` is idle; `sync` waits for events backing off while it has
    /// retries left.
    async fn when_empty<'a>(&self, w: &mut Worker<'a>) -> Next<'a> {
        if w.forever {
            return Next::Done(Drained::Idle);
        }
        if let Err(e) = finish_ack(&mut w.acking).await {
            self.note_error(w.tenant, &e);
            return Next::Done(Drained::GaveUp);
        }
        match self.inner.outbox.counts(w.tenant.name()).await {
            Ok(c) if c.pending > 0 => match c.next_attempt_at {
                Some(at) if w.failures < self.inner.settings.give_up_after => {
                    let wait = (at - self.now()).to_std().unwrap_or_default();
                    if sleep_or_stop(wait, &w.stop).await { Next::Again } else { Next::Done(Drained::Idle) }
                }
                _ => Next::Done(Drained::BackingOff),
            },
            Ok(_) => Next::Done(Drained::Idle),
            Err(e) => {
                self.note_error(w.tenant, &e);
                Next::Done(Drained::GaveUp)
            }
        }
    }

    /// Carries out how a lease's delivery ended; `Some` ends the drain.
    async fn after_lease(
        &self,
        w: &mut Worker<'_>,
        lease: &Lease,
        delivered: Result<Option<Halt>, OutboxError>,
    ) -> Option<Drained> {
        // When this lease's events go back, so do those taken ahead, due at the same time (so
        // they stay behind them in the queue).
        let retry_wait = matches!(delivered, Ok(Some(Halt::Retry { .. }))).then(|| self.backoff(w.failures));
        let back_at = retry_wait.map_or_else(|| self.now(), |wait| self.later(wait));
        let halt = match delivered {
            Ok(None) => {
                w.failures = 0;
                return None;
            }
            Ok(Some(halt)) => halt,
            Err(e) => {
                self.note_error(w.tenant, &e);
                self.give_back(&mut w.ahead, back_at).await;
                return Some(Drained::GaveUp);
            }
        };
        self.give_back(&mut w.ahead, back_at).await;
        if let Err(e) = finish_ack(&mut w.acking).await {
            self.note_error(w.tenant, &e);
            self.nack(lease, self.now()).await;
            return Some(Drained::GaveUp);
        }
        self.nack(lease, back_at).await;
        match halt {
            Halt::Block(blocked) => {
                self.block(w.tenant, blocked);
                Some(Drained::Blocked)
            }
            Halt::Stopped => Some(Drained::Idle),
            Halt::Retry { why, unexpected } => self.back_off(w, why, unexpected, retry_wait.unwrap_or_default()).await,
        }
    }

    /// A transient failure: the whole tenant backs off, not only this batch (the next one
    /// would most likely meet the same outage). `sync` gives up after `give_up_after` in a
    /// row; answers outside the contract then block the tenant with the reason.
    async fn back_off(
        &self,
        w: &mut Worker<'_>,
        why: String,
        unexpected: bool,
        wait: std::time::Duration,
    ) -> Option<Drained> {
        w.failures = w.failures.saturating_add(1);
        let retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        tracing::info!(tenant = %w.tenant.name(), error = %why, retry_in_ms, "transient failure; backing off");
        let give_up = !w.forever && w.failures >= self.inner.settings.give_up_after;
        let blocked = (give_up && unexpected).then(|| Blocked::unexpected(&why, w.failures));
        self.update(w.tenant.name(), |r| {
            r.backing_off = if blocked.is_some() { None } else { Some(why.clone()) };
            r.blocked = blocked.or(r.blocked.take());
            r.last_error = Some(why);
        });
        if give_up {
            return Some(if unexpected { Drained::Blocked } else { Drained::GaveUp });
        }
        if sleep_or_stop(wait, &w.stop).await { None } else { Some(Drained::Idle) }
    }

    /// Stops the tenant for a configuration problem; its events stay pending.
    fn block(&self, tenant: &Tenant, blocked: Blocked) {
        tracing::warn!(tenant = %tenant.name(), reason = %blocked, "tenant blocked; its events stay pending");
        self.update(tenant.name(), |r| {
            r.blocked = Some(blocked);
            r.backing_off = None;
        });
    }

    pub(super) fn note_error(&self, tenant: &Tenant, e: &OutboxError) {
        let said = crate::error_chain(e);
        tracing::error!(tenant = %tenant.name(), error = %said, "outbox error");
        self.update(tenant.name(), |r| {
            if let OutboxError::ClaimLost { .. } = e {
                // Another agent took the tenant over: its events are that agent's work now.
                r.held_elsewhere = true;
                r.held_by = Some(e.to_string());
                r.holder_alive = true;
            }
            r.last_error = Some(said);
        });
    }

    /// Sends a lease's events in batches. Returns why it stopped early, if it did.
    async fn deliver_lease(
        &self,
        tenant: &Tenant,
        lease: &Lease,
        stop: &CancellationToken,
        acking: &mut Option<AckTask>,
    ) -> Result<Option<Halt>, OutboxError> {
        let mut queue: VecDeque<Vec<EncodedEvent>> =
            self.inner.settings.batcher.split(&lease.events).into_iter().map(<[_]>::to_vec).collect();
        while let Some(batch) = queue.pop_front() {
            if stop.is_cancelled() {
                return Ok(Some(Halt::Stopped));
            }
            match self.send(tenant, &batch, stop).await {
                Step::Settled(settlement) => self.settle_batch(tenant, lease, settlement, acking).await?,
                Step::Split => {
                    let (a, b) = batch.split_at(batch.len() / 2);
                    queue.push_front(b.to_vec());
                    queue.push_front(a.to_vec());
                }
                Step::Halt(halt) => return Ok(Some(halt)),
            }
        }
        Ok(None)
    }

    /// Acks what the platform delivered and dead-letters what it refused, and counts both. A
    /// plain ack commits in the background while the next batch is leased and sent.
    async fn settle_batch(
        &self,
        tenant: &Tenant,
        lease: &Lease,
        settlement: Settlement,
        acking: &mut Option<AckTask>,
    ) -> Result<(), OutboxError> {
        let Settlement { delivered, dead, accepted, duplicates } = settlement;
        finish_ack(acking).await?;
        let dead_count = dead.len() as u64;
        self.inner.metrics.delivered(tenant.name().as_str(), accepted, duplicates, dead_count);
        self.update(tenant.name(), |r| {
            r.accepted += accepted;
            r.duplicates += duplicates;
            r.dead_lettered += dead_count;
            r.backing_off = None;
        });
        if dead.is_empty() && !delivered.is_empty() {
            let outbox = Arc::clone(&self.inner.outbox);
            // The ack needs the lease's identity, not its events.
            let receipt = Lease {
                id: lease.id.clone(),
                tenant: lease.tenant.clone(),
                events: Vec::new(),
                expires_at: lease.expires_at,
                generation: lease.generation,
            };
            *acking = Some(tokio::spawn(async move { outbox.ack(&receipt, &delivered).await }));
            return Ok(());
        }
        if !delivered.is_empty() {
            self.inner.outbox.ack(lease, &delivered).await?;
        }
        if !dead.is_empty() {
            self.inner.outbox.dead_letter(lease, &dead).await?;
        }
        Ok(())
    }

    /// Waits until the tenant's window has a slot free, without taking it; does not wait when
    /// nothing is pending (the lease that follows then finds the tenant idle at once).
    async fn wait_for_slot(&self, tenant: &Tenant, stop: &CancellationToken) -> bool {
        let mut looked = false;
        loop {
            let Some(window) = self.inner.limiters.get(tenant.name()) else { return true };
            let probe = lock(window).probe_send(self.inner.origin.elapsed());
            let Err(wait) = probe else { return true };
            if !looked {
                looked = true;
                if self.inner.outbox.counts(tenant.name()).await.is_ok_and(|c| c.pending == 0) {
                    return true;
                }
            }
            self.inner.metrics.rate_limit_wait(tenant.name().as_str());
            if !sleep_or_stop(wait, stop).await {
                return false;
            }
        }
    }

    /// Takes the tenant's next lease ahead of time, if a request for it could go right after
    /// the one now travelling (two free slots in the tenant's window) and the global bound on
    /// leases held has room. Anything else (nothing pending, an outbox error) leaves it to the
    /// next turn of the loop, which leases the usual way and reports what it finds.
    async fn lease_ahead(&self, tenant: &Tenant, claim: &Claim) -> Option<Held<'_>> {
        if let Some(w) = self.inner.limiters.get(tenant.name()) {
            if !lock(w).has_two_free(self.inner.origin.elapsed()) {
                return None;
            }
        }
        let permit = self.inner.in_flight.try_acquire().ok()?;
        let max = self.inner.settings.batcher.max_events();
        match self.inner.outbox.lease_claimed(claim, max, self.inner.settings.lease_for).await {
            Ok(Some(lease)) => Some((lease, permit)),
            _ => None,
        }
    }

    /// Returns a lease taken ahead and not sent to the outbox, due again at `at`.
    async fn give_back(&self, ahead: &mut Option<Held<'_>>, at: DateTime<Utc>) {
        if let Some((lease, _permit)) = ahead.take() {
            self.nack(&lease, at).await;
        }
    }

    /// Returns a lease's events to pending, due at `at`. If the outbox fails, the lease lapses
    /// at its expiry and its events are pending again then: nothing is lost, only delayed.
    async fn nack(&self, lease: &Lease, at: DateTime<Utc>) {
        if let Err(e) = self.inner.outbox.nack(lease, at).await {
            tracing::warn!(tenant = %lease.tenant, error = %crate::error_chain(&e), "returning a lease failed; its events come back when it lapses");
        }
    }
}

/// Waits for the ack in flight, if any.
async fn finish_ack(acking: &mut Option<AckTask>) -> Result<(), OutboxError> {
    match acking.take() {
        None => Ok(()),
        Some(task) => task
            .await
            .unwrap_or_else(|e| Err(OutboxError::Storage(StorageFailure::new("the ack task failed").with_source(e)))),
    }
}
