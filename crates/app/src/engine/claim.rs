//! A tenant is drained only under its claim: taking it, watching another holder, renewing it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use billsync_domain::{Claim, ClaimOutcome, Holder, Tenant};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Engine;
use super::drain::Drained;

/// What `sync` has seen of another agent holding a tenant.
struct Watch {
    agent: String,
    heartbeat: i64,
    since: Instant,
    renewed_at: Option<Instant>,
}

impl Watch {
    /// Notes what the outbox says of the holder now; returns (watched since, last renewal seen).
    fn observe(watch: &mut Option<Watch>, holder: &Holder, now: Instant) -> (Instant, Option<Instant>) {
        match (watch.as_mut(), holder.heartbeat) {
            (Some(w), Some(hb)) if w.agent == holder.agent => {
                if w.heartbeat != hb {
                    (w.heartbeat, w.renewed_at) = (hb, Some(now));
                }
            }
            (_, hb) => {
                *watch = Some(Watch {
                    agent: holder.agent.clone(),
                    heartbeat: hb.unwrap_or(0),
                    since: now,
                    renewed_at: None,
                });
            }
        }
        watch.as_ref().map_or((now, None), |w| (w.since, w.renewed_at))
    }
}

impl Engine {
    /// Takes the tenant's claim. Held by another agent: `run` leaves it to that agent and
    /// looks again later. `sync` watches the holder: a holder that renews its claim (or that
    /// the OS vouches for) is alive and keeps the tenant, which is reported, not an error; a
    /// holder that stops renewing loses the tenant when its claim lapses, and this sync takes
    /// over. A live holder is watched for as long as this sync still has other tenants to
    /// drain (`busy` counts them), since it may die meanwhile.
    pub(super) async fn claim(
        &self,
        tenant: &Tenant,
        forever: bool,
        busy: Option<&AtomicUsize>,
    ) -> Result<Claim, Drained> {
        let ttl = self.inner.settings.claim_ttl;
        let mut watching = false;
        let mut watch: Option<Watch> = None;
        let outcome = loop {
            let holder = match self.inner.outbox.claim_tenant(tenant.name(), &self.inner.agent_id, ttl).await {
                Ok(ClaimOutcome::Claimed(claim)) => {
                    self.update(tenant.name(), |r| {
                        (r.held_elsewhere, r.held_by, r.holder_alive) = (false, None, false);
                    });
                    break Ok(claim);
                }
                Ok(ClaimOutcome::HeldBy(holder)) => holder,
                Err(e) => {
                    self.note_error(tenant, &e);
                    break Err(Drained::GaveUp);
                }
            };
            if self.leave_to(tenant, &holder, &mut watch, forever, busy) {
                break Err(Drained::HeldElsewhere);
            }
            if !watching {
                // Watching is not draining: the other tenants' workers need not wait for it.
                watching = true;
                if let Some(b) = busy {
                    b.fetch_sub(1, Ordering::SeqCst);
                }
            }
            tokio::time::sleep((ttl / 6).max(Duration::from_millis(50))).await;
        };
        if watching {
            if let Some(b) = busy {
                b.fetch_add(1, Ordering::SeqCst);
            }
        }
        outcome
    }

    /// Whether to leave the tenant to `holder` now (recording it), rather than watch it more.
    fn leave_to(
        &self,
        tenant: &Tenant,
        holder: &Holder,
        watch: &mut Option<Watch>,
        forever: bool,
        busy: Option<&AtomicUsize>,
    ) -> bool {
        let ttl = self.inner.settings.claim_ttl;
        // When did the holder last show a sign of life (a renewal seen, or the OS's word)?
        let (since, renewed_at) = Watch::observe(watch, holder, Instant::now());
        let alive = holder.heartbeat.is_none() || renewed_at.is_some_and(|t| t.elapsed() < ttl / 2);
        let others_busy = busy.is_some_and(|b| b.load(Ordering::SeqCst) > 0);
        // A claim that neither renews nor lapses in one and a half lifetimes: give up on it.
        let stuck = holder.heartbeat.is_some() && since.elapsed() > ttl + ttl / 2;
        let leave = forever || stuck || (alive && !others_busy);
        if leave {
            self.held_by(tenant, holder, alive);
        }
        leave
    }

    /// Records that `holder` has the tenant.
    fn held_by(&self, tenant: &Tenant, holder: &Holder, alive: bool) {
        let on = holder.host().map(|h| format!(" on {h}")).unwrap_or_default();
        let said = format!("held by agent {}{on}{}", holder.agent, if alive { ", alive" } else { "" });
        self.update(tenant.name(), |r| {
            (r.held_elsewhere, r.held_by, r.holder_alive) = (true, Some(said), alive);
        });
    }

    /// Renews `claim` every third of its lifetime until `worker` is cancelled; when the outbox
    /// says another agent holds the tenant now, cancels `worker` (which stops the worker).
    pub(super) async fn heartbeat(self, tenant: Tenant, claim: Claim, worker: CancellationToken) {
        let ttl = self.inner.settings.claim_ttl;
        loop {
            tokio::select! {
                () = tokio::time::sleep(ttl / 3) => {}
                () = worker.cancelled() => return,
            }
            match self.inner.outbox.claim_tenant(tenant.name(), &self.inner.agent_id, ttl).await {
                Ok(ClaimOutcome::Claimed(now)) if now.generation == claim.generation => {}
                Ok(ClaimOutcome::Claimed(_) | ClaimOutcome::HeldBy(_)) => {
                    let lost = "the tenant's claim was lost to another agent";
                    tracing::error!(tenant = %tenant.name(), "{lost}; stopping its worker");
                    self.update(tenant.name(), |r| r.last_error = Some(lost.into()));
                    worker.cancel();
                    return;
                }
                // A failed renewal is tried again; the claim may still hold.
                Err(e) => {
                    tracing::warn!(tenant = %tenant.name(), error = %crate::error_chain(&e), "renewing the tenant's claim failed")
                }
            }
        }
    }
}
