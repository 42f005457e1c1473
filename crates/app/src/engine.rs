//! The delivery engine: takes what is in the outbox and gets it accepted by the platform as
//! fast as the platform allows, one worker per tenant, over the ports only.
//!
//! Per batch: lease from the outbox, take a slot in the tenant's sliding window, get billing
//! headers (a token that passed the policy), post, then do what the domain's settle rule
//! ([`billsync_domain::settle()`]) decides: ack what a consistent `202` accepted or found
//! duplicate, dead-letter what it rejected, split, block the tenant on configuration errors,
//! wait as the platform asks on `429`, back off with full jitter on everything transient or
//! outside the contract. Nothing is ever dropped for being old: a transient failure returns the
//! events to the outbox with a later retry time.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use billsync_domain::{
    Attempt, BatchBody, Batcher, BillingApi, BillingPolicy, BillingResponse, BlockCause, Claim, ClaimOutcome, Clock,
    Decision, EncodedEvent, Lease, Outbox, OutboxError, RatePolicy, RetryCause, Settlement, SlidingWindow, Tenant,
    TenantName, TokenError, TokenSource, settle,
};
use chrono::{DateTime, Utc};
use rand::Rng;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// How the engine paces and retries.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// Batch limits.
    pub batcher: Batcher,
    /// Requests per sliding 60 s window, per tenant.
    pub rate: RatePolicy,
    /// First backoff after a transient failure (default 1 s).
    pub initial_backoff: Duration,
    /// Backoff ceiling (default 300 s).
    pub max_backoff: Duration,
    /// How long a lease holds events (default 120 s): longer than a rate-limit wait plus a
    /// request timeout, so a live worker never loses its lease.
    pub lease_for: Duration,
    /// `sync` leaves a tenant after this many consecutive transient failures (its events stay
    /// pending); `run` never gives up.
    pub give_up_after: u32,
    /// How often an idle `run` worker looks for new events.
    pub poll_interval: Duration,
    /// How long a tenant claim lasts without a heartbeat (fleets sharing one outbox).
    pub claim_ttl: Duration,
    /// How long a blocked tenant waits in `run` before trying again (the console may have been
    /// fixed meanwhile).
    pub blocked_retry: Duration,
    /// Most leases held at once across all tenants (default 16): bounds the events in memory
    /// whatever the number of tenants. A tenant leases only once its window has a slot free,
    /// so a tenant waiting for its rate limit holds neither events nor a place.
    pub max_in_flight: usize,
    /// The longest the engine waits because the platform said so (`Retry-After`,
    /// `X-RateLimit-Reset`); never more than [`billsync_domain::MAX_SERVER_WAIT`] (1 hour).
    pub max_server_wait: Duration,
    /// How long a tenant's worker that ended unexpectedly stays down before it is restarted.
    pub restart_after: Duration,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            batcher: Batcher::default(),
            rate: RatePolicy::per_minute(std::num::NonZeroU32::new(100).unwrap_or(std::num::NonZeroU32::MIN)),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            lease_for: Duration::from_secs(120),
            give_up_after: 8,
            poll_interval: Duration::from_secs(1),
            claim_ttl: Duration::from_secs(30),
            blocked_retry: Duration::from_secs(300),
            max_in_flight: 16,
            max_server_wait: billsync_domain::MAX_SERVER_WAIT,
            restart_after: Duration::from_secs(1),
        }
    }
}

/// Why a tenant is blocked: a configuration problem that retrying cannot fix. Its events stay
/// pending; a configuration problem never dead-letters events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Blocked {
    /// The reason codes (`missing_scope`, `tenant_not_authorized`, `invalid_client`, ...).
    pub codes: Vec<String>,
    /// What to change, one line per code.
    pub hints: Vec<String>,
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (c, h)) in self.codes.iter().zip(&self.hints).enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{c}: {h}")?;
        }
        Ok(())
    }
}

/// What happened to one tenant during a sync.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct TenantReport {
    /// The tenant's local name.
    pub name: String,
    /// Events the platform newly accepted.
    pub accepted: u64,
    /// Events the platform already had (delivered as well).
    pub duplicates: u64,
    /// Events refused for good and dead-lettered.
    pub dead_lettered: u64,
    /// Billing requests sent.
    pub requests: u64,
    /// Set when the tenant is blocked.
    pub blocked: Option<Blocked>,
    /// The last transient error, if any.
    pub last_error: Option<String>,
    /// When the last token used expires.
    pub token_expires_at: Option<DateTime<Utc>>,
    /// Set when another agent holds this tenant.
    pub held_elsewhere: bool,
    /// Who holds it (`held by agent <id> on <host>, alive`), when another agent does.
    #[serde(default)]
    pub held_by: Option<String>,
    /// Whether the holder was seen alive (an OS lock, or a claim it renewed): its pending
    /// events are its work, and `sync` leaves them to it without failing.
    #[serde(default)]
    pub holder_alive: bool,
    /// Why the tenant is waiting before it sends again (`unexpected_response: ...`,
    /// `rate_limited: ...`), while it is; cleared by the next settled batch.
    #[serde(default)]
    pub backing_off: Option<String>,
    /// Why the tenant's worker ended unexpectedly, until it runs again.
    #[serde(default)]
    pub down: Option<String>,
}

/// A tenant's state, as `status`, `/metrics` and `/healthz` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantState {
    /// Delivering, or nothing to do.
    Ok,
    /// Waiting after a transient failure, an unexpected answer or the platform's rate limit.
    BackingOff,
    /// Stopped by a configuration problem (or, in `sync`, by answers outside the contract).
    Blocked,
    /// Another agent holds the tenant.
    Held,
    /// The tenant's worker ended unexpectedly and has not run again yet.
    Down,
}

impl TenantState {
    /// Every state, in the order `/metrics` lists them.
    pub const ALL: [TenantState; 5] = [Self::Ok, Self::BackingOff, Self::Blocked, Self::Held, Self::Down];

    /// The state's name (`backing_off`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::BackingOff => "backing_off",
            Self::Blocked => "blocked",
            Self::Held => "held",
            Self::Down => "down",
        }
    }
}

impl std::fmt::Display for TenantState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TenantReport {
    /// The tenant's state and, unless it is ok, why.
    pub fn state(&self) -> (TenantState, Option<String>) {
        if let Some(why) = &self.down {
            (TenantState::Down, Some(why.clone()))
        } else if let Some(b) = &self.blocked {
            (TenantState::Blocked, Some(b.codes.join(", ")))
        } else if self.held_elsewhere {
            (TenantState::Held, Some(self.held_by.clone().unwrap_or_else(|| "held by another agent".into())))
        } else if let Some(why) = &self.backing_off {
            (TenantState::BackingOff, Some(why.clone()))
        } else {
            (TenantState::Ok, None)
        }
    }

    /// Whether this engine did anything for the tenant (otherwise another process's saved
    /// report says more).
    pub fn touched(&self) -> bool {
        self.requests > 0 || self.blocked.is_some() || self.last_error.is_some() || self.down.is_some()
    }
}

/// The ports the engine drives: the adapters, as the domain's traits.
#[derive(Clone)]
pub struct Ports {
    /// Where events wait.
    pub outbox: Arc<dyn Outbox>,
    /// Where billing headers come from.
    pub tokens: Arc<dyn TokenSource>,
    /// Where batches go.
    pub api: Arc<dyn BillingApi>,
    /// What time it is.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ports").field("clock", &self.clock).finish_non_exhaustive()
    }
}

/// The sync engine. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    outbox: Arc<dyn Outbox>,
    tokens: Arc<dyn TokenSource>,
    api: Arc<dyn BillingApi>,
    clock: Arc<dyn Clock>,
    policy: BillingPolicy,
    settings: SyncSettings,
    tenants: Vec<Tenant>,
    agent_id: String,
    origin: Instant,
    limiters: HashMap<TenantName, Mutex<SlidingWindow>>,
    in_flight: tokio::sync::Semaphore,
    reports: Mutex<HashMap<TenantName, TenantReport>>,
    metrics: Metrics,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("tenants", &self.inner.tenants.len())
            .field("agent_id", &self.inner.agent_id)
            .field("settings", &self.inner.settings)
            .finish()
    }
}

enum Step {
    /// Delivered (accepted or duplicate) and dead-lettered events of this batch.
    Settled(Settlement),
    /// Split the batch in two and send each half.
    Split,
    /// A configuration problem: stop this tenant.
    Block(Blocked),
    /// A transient failure: return the events and try again after a backoff. `unexpected`:
    /// the answer was outside the contract (`unexpected_response`).
    Retry { why: String, unexpected: bool },
    /// Shutdown was requested before the batch was sent.
    Stopped,
}

enum Drained {
    /// Nothing deliverable is left right now (or, for `run`, shutdown was requested).
    Idle,
    /// Events are backing off until this time.
    BackingOff,
    Blocked,
    HeldElsewhere,
    GaveUp,
}

impl Engine {
    /// An engine over the given ports.
    pub fn new(
        ports: Ports,
        policy: BillingPolicy,
        settings: SyncSettings,
        tenants: Vec<Tenant>,
        metrics: Metrics,
    ) -> Self {
        let limiters =
            tenants.iter().map(|t| (t.name().clone(), Mutex::new(SlidingWindow::new(settings.rate)))).collect();
        let reports = tenants
            .iter()
            .map(|t| (t.name().clone(), TenantReport { name: t.name().to_string(), ..Default::default() }))
            .collect();
        let in_flight = tokio::sync::Semaphore::new(settings.max_in_flight.max(1));
        let agent_id = format!("{}-{}-{:08x}", hostname(), std::process::id(), rand::thread_rng().r#gen::<u32>());
        Self {
            inner: Arc::new(Inner {
                outbox: ports.outbox,
                tokens: ports.tokens,
                api: ports.api,
                clock: ports.clock,
                policy,
                settings,
                tenants,
                agent_id,
                origin: Instant::now(),
                limiters,
                in_flight,
                reports: Mutex::new(reports),
                metrics,
            }),
        }
    }

    /// The tenants this engine serves.
    pub fn tenants(&self) -> &[Tenant] {
        &self.inner.tenants
    }

    /// The metrics this engine updates.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// What has happened to each tenant so far, in configuration order.
    pub fn reports(&self) -> Vec<TenantReport> {
        let reports = lock(&self.inner.reports);
        self.inner.tenants.iter().filter_map(|t| reports.get(t.name()).cloned()).collect()
    }

    /// Delivers everything deliverable now, all tenants in parallel, then returns. Transient
    /// failures are retried with backoff up to `give_up_after` times in a row per tenant.
    pub async fn sync_once(&self) -> Vec<TenantReport> {
        let (_tx, rx) = watch::channel(false);
        let mut set = tokio::task::JoinSet::new();
        let mut names = HashMap::new();
        let busy = Arc::new(AtomicUsize::new(self.inner.tenants.len()));
        for tenant in self.inner.tenants.clone() {
            // Counts add up over syncs; a state is what this sync finds.
            self.update(tenant.name(), |r| {
                r.blocked = None;
                r.backing_off = None;
                r.held_elsewhere = false;
                r.held_by = None;
                r.holder_alive = false;
                r.down = None;
            });
            let engine = self.clone();
            let rx = rx.clone();
            let name = tenant.name().clone();
            let busy = Arc::clone(&busy);
            let handle = set.spawn(async move {
                let drained = engine.drain(&tenant, false, rx, Some(&busy)).await;
                busy.fetch_sub(1, Ordering::SeqCst);
                // Done with the tenant: let the next `sync` (or another agent) have it now, not
                // when the claim expires.
                let _ = engine.inner.outbox.release_tenant(tenant.name(), &engine.inner.agent_id).await;
                drained
            });
            names.insert(handle.id(), name);
        }
        while let Some(done) = set.join_next_with_id().await {
            if let Err(e) = done {
                if let Some(name) = names.get(&e.id()) {
                    self.worker_ended(name, &e);
                }
            }
        }
        self.reports()
    }

    /// Runs until `shutdown` resolves: workers keep draining and polling for new events. On
    /// shutdown no new batch is started, requests in flight finish, and leases are returned.
    ///
    /// A worker that ends unexpectedly (a panic) marks its tenant `down` with the reason and
    /// is started again after `restart_after`; its leased events lapse back to pending.
    pub async fn run_until(&self, shutdown: impl std::future::Future<Output = ()>) {
        let (tx, rx) = watch::channel(false);
        let mut set = tokio::task::JoinSet::new();
        for tenant in self.inner.tenants.clone() {
            let engine = self.clone();
            let rx = rx.clone();
            set.spawn(async move { engine.supervise(tenant, rx).await });
        }
        shutdown.await;
        let _ = tx.send(true);
        while set.join_next().await.is_some() {}
    }

    /// Keeps one tenant's worker running until `stop`.
    async fn supervise(&self, tenant: Tenant, stop: watch::Receiver<bool>) {
        let mut restarts = 0u32;
        loop {
            let engine = self.clone();
            let (t, rx) = (tenant.clone(), stop.clone());
            let ended = tokio::spawn(async move { engine.run_tenant(&t, rx).await }).await;
            if *stop.borrow() {
                return;
            }
            match &ended.err() {
                Some(e) => self.worker_ended(tenant.name(), e),
                None => self.update(tenant.name(), |r| r.down = Some("the worker returned before shutdown".into())),
            }
            let pause = self.inner.settings.restart_after.saturating_mul(1 << restarts.min(6));
            restarts = restarts.saturating_add(1);
            if !sleep_or_stop(pause, stop.clone()).await {
                return;
            }
            tracing::warn!(tenant = %tenant.name(), "restarting the tenant's worker");
            self.update(tenant.name(), |r| r.down = None);
        }
    }

    /// Records that a tenant's worker ended with `e`.
    fn worker_ended(&self, name: &TenantName, e: &tokio::task::JoinError) {
        // tokio says "task 7 panicked with message \"...\"".
        let why = format!("the worker ended unexpectedly: {e}");
        tracing::error!(tenant = %name, reason = %why, "tenant worker ended unexpectedly");
        self.update(name, |r| r.down = Some(why));
    }

    async fn run_tenant(&self, tenant: &Tenant, mut stop: watch::Receiver<bool>) {
        loop {
            let pause = match self.drain(tenant, true, stop.clone(), None).await {
                Drained::Blocked => {
                    // Try again later: the platform console may have been fixed.
                    self.inner.settings.blocked_retry
                }
                _ => self.inner.settings.poll_interval,
            };
            if *stop.borrow() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => break,
            }
            if lock(&self.inner.reports).get(tenant.name()).is_some_and(|r| r.blocked.is_some()) {
                self.update(tenant.name(), |r| r.blocked = None);
            }
        }
        let _ = self.inner.outbox.release_tenant(tenant.name(), &self.inner.agent_id).await;
    }

    fn update(&self, tenant: &TenantName, f: impl FnOnce(&mut TenantReport)) {
        if let Some(r) = lock(&self.inner.reports).get_mut(tenant) {
            f(r);
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let s = &self.inner.settings;
        let ceiling = s.initial_backoff.saturating_mul(1u32 << attempt.min(20)).min(s.max_backoff);
        // Full jitter: uniformly anywhere up to the exponential ceiling.
        let ms = ceiling.as_millis().max(1) as u64;
        Duration::from_millis(rand::thread_rng().gen_range(ms / 10..=ms))
    }

    fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    fn later(&self, d: Duration) -> DateTime<Utc> {
        self.now() + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
    }

    /// Drains one tenant until nothing is deliverable (or, for `forever`, until stopped).
    ///
    /// A batch's ack is not waited for before the next lease and post: it commits while the
    /// next batch travels (at most one ack in flight per tenant, in order), so the outbox's
    /// commit and the platform's answer overlap. Every way out of the loop, and every nack,
    /// dead letter and count, first waits for the ack in flight.
    ///
    /// Likewise the next lease is taken while a batch travels (when the tenant's window and the
    /// global bound have room for it), so the outbox's lease overlaps the post too; a lease
    /// taken ahead that is not sent is given back on the way out, with the batch before it.
    async fn drain(
        &self,
        tenant: &Tenant,
        forever: bool,
        stop: watch::Receiver<bool>,
        busy: Option<&AtomicUsize>,
    ) -> Drained {
        // Fleet: drain a tenant only while holding its claim.
        let claim = match self.claim(tenant, forever, busy).await {
            Ok(claim) => claim,
            Err(drained) => return drained,
        };
        // The heartbeat renews the claim on its own task, whatever the worker is waiting for
        // (a rate slot, a slow POST). If the claim is lost, the worker stops at once.
        let (lost_tx, worker_stop) = watch::channel(*stop.borrow());
        let heartbeat = tokio::spawn(self.clone().heartbeat(tenant.clone(), claim.clone(), stop, lost_tx));
        let mut acking = None;
        let mut ahead = None;
        let drained = self.drain_inner(tenant, &claim, forever, worker_stop, &mut acking, &mut ahead).await;
        if let Err(e) = finish_ack(&mut acking).await {
            self.note_error(tenant, &e);
        }
        self.give_back(&mut ahead, self.now()).await;
        heartbeat.abort();
        drained
    }

    /// Takes the tenant's claim. Held by another agent: `run` leaves it to that agent and
    /// looks again later. `sync` watches the holder: a holder that renews its claim (or that
    /// the OS vouches for) is alive and keeps the tenant, which is reported, not an error; a
    /// holder that stops renewing loses the tenant when its claim lapses, and this sync takes
    /// over. A live holder is watched for as long as this sync still has other tenants to
    /// drain (`busy` counts them), since it may die meanwhile.
    async fn claim(&self, tenant: &Tenant, forever: bool, busy: Option<&AtomicUsize>) -> Result<Claim, Drained> {
        let ttl = self.inner.settings.claim_ttl;
        let mut watching = false;
        let mut watch: Option<Watch> = None;
        let outcome = loop {
            let holder = match self.inner.outbox.claim_tenant(tenant.name(), &self.inner.agent_id, ttl).await {
                Ok(ClaimOutcome::Claimed(claim)) => {
                    self.update(tenant.name(), |r| {
                        r.held_elsewhere = false;
                        r.held_by = None;
                        r.holder_alive = false;
                    });
                    break Ok(claim);
                }
                Ok(ClaimOutcome::HeldBy(holder)) => holder,
                Err(e) => {
                    self.note_error(tenant, &e);
                    break Err(Drained::GaveUp);
                }
            };
            // When did the holder last show a sign of life (a renewal seen, or the OS's word)?
            let now = Instant::now();
            match (&mut watch, holder.heartbeat) {
                (Some(w), Some(hb)) if w.agent == holder.agent => {
                    if w.heartbeat != hb {
                        (w.heartbeat, w.renewed_at) = (hb, Some(now));
                    }
                }
                (w, hb) => {
                    *w = Some(Watch {
                        agent: holder.agent.clone(),
                        heartbeat: hb.unwrap_or(0),
                        since: now,
                        renewed_at: None,
                    });
                }
            }
            let w = watch.as_ref().map(|w| (w.since, w.renewed_at));
            let (since, renewed_at) = w.unwrap_or((now, None));
            let alive = holder.heartbeat.is_none() || renewed_at.is_some_and(|t| t.elapsed() < ttl / 2);
            let others_busy = busy.is_some_and(|b| b.load(Ordering::SeqCst) > 0);
            // A claim that neither renews nor lapses in one and a half lifetimes: give up on it.
            let stuck = holder.heartbeat.is_some() && since.elapsed() > ttl + ttl / 2;
            if forever || stuck || (alive && !others_busy) {
                let on = holder.host().map(|h| format!(" on {h}")).unwrap_or_default();
                let said = format!("held by agent {}{on}{}", holder.agent, if alive { ", alive" } else { "" });
                self.update(tenant.name(), |r| {
                    r.held_elsewhere = true;
                    r.held_by = Some(said);
                    r.holder_alive = alive;
                });
                break Err(Drained::HeldElsewhere);
            }
            if !watching {
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

    /// Renews `claim` every third of its lifetime until `stop`; when the outbox says another
    /// agent holds the tenant now, marks it lost (which stops the worker).
    async fn heartbeat(self, tenant: Tenant, claim: Claim, mut stop: watch::Receiver<bool>, lost: watch::Sender<bool>) {
        let ttl = self.inner.settings.claim_ttl;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(ttl / 3) => {}
                _ = stop.changed() => {
                    let _ = lost.send(true);
                    return;
                }
            }
            match self.inner.outbox.claim_tenant(tenant.name(), &self.inner.agent_id, ttl).await {
                Ok(ClaimOutcome::Claimed(now)) if now.generation == claim.generation => {}
                Ok(ClaimOutcome::Claimed(_)) | Ok(ClaimOutcome::HeldBy(_)) => {
                    tracing::error!(tenant = %tenant.name(), "the tenant's claim was lost to another agent; stopping its worker");
                    self.update(tenant.name(), |r| {
                        r.last_error = Some("the tenant's claim was lost to another agent".into())
                    });
                    let _ = lost.send(true);
                    return;
                }
                // A failed renewal is tried again; the claim may still hold.
                Err(e) => tracing::warn!(tenant = %tenant.name(), error = %e, "renewing the tenant's claim failed"),
            }
        }
    }

    /// Takes the tenant's next lease ahead of time, if a request for it could go right after
    /// the one now travelling (two free slots in the tenant's window) and the global bound on
    /// leases held has room. Anything else (nothing pending, an outbox error) leaves it to the
    /// next turn of the loop, which leases the usual way and reports what it finds.
    async fn lease_ahead(&self, tenant: &Tenant, claim: &Claim) -> Option<Ahead<'_>> {
        if let Some(w) = self.inner.limiters.get(tenant.name()) {
            let mut probe = lock(w).clone();
            let now = self.inner.origin.elapsed();
            if probe.try_acquire(now).is_err() || probe.try_acquire(now).is_err() {
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
    async fn give_back(&self, ahead: &mut Option<Ahead<'_>>, at: DateTime<Utc>) {
        if let Some((lease, _permit)) = ahead.take() {
            if let Err(e) = self.inner.outbox.nack(&lease, at).await {
                tracing::warn!(tenant = %lease.tenant, error = %e, "giving back a lease taken ahead failed; it lapses");
            }
        }
    }

    async fn drain_inner<'a>(
        &'a self,
        tenant: &Tenant,
        claim: &Claim,
        forever: bool,
        stop: watch::Receiver<bool>,
        acking: &mut Option<AckTask>,
        ahead: &mut Option<Ahead<'a>>,
    ) -> Drained {
        let name = tenant.name();
        let mut failures = 0u32;
        loop {
            if *stop.borrow() {
                return Drained::Idle;
            }
            let (lease, permit) = if let Some(taken) = ahead.take() {
                taken
            } else {
                // Lease only when a request could go at once, and within the global bound.
                if !self.wait_for_slot(tenant, &stop).await {
                    return Drained::Idle;
                }
                let Ok(permit) = self.inner.in_flight.acquire().await else { return Drained::Idle };
                match self
                    .inner
                    .outbox
                    .lease_claimed(claim, self.inner.settings.batcher.max_events(), self.inner.settings.lease_for)
                    .await
                {
                    Ok(Some(lease)) => (lease, permit),
                    Ok(None) => {
                        drop(permit);
                        if forever {
                            return Drained::Idle;
                        }
                        if let Err(e) = finish_ack(acking).await {
                            self.note_error(tenant, &e);
                            return Drained::GaveUp;
                        }
                        // Anything backing off? `sync` waits for it while it has retries left.
                        match self.inner.outbox.counts(name).await {
                            Ok(c) if c.pending > 0 => match c.next_attempt_at {
                                Some(at) if failures < self.inner.settings.give_up_after => {
                                    let wait = (at - self.now()).to_std().unwrap_or_default();
                                    if !sleep_or_stop(wait, stop.clone()).await {
                                        return Drained::Idle;
                                    }
                                    continue;
                                }
                                _ => return Drained::BackingOff,
                            },
                            Ok(_) => return Drained::Idle,
                            Err(e) => {
                                self.note_error(tenant, &e);
                                return Drained::GaveUp;
                            }
                        }
                    }
                    Err(e) => {
                        drop(permit);
                        self.note_error(tenant, &e);
                        if forever && sleep_or_stop(self.backoff(failures), stop.clone()).await {
                            failures = failures.saturating_add(1);
                            continue;
                        }
                        return Drained::GaveUp;
                    }
                }
            };
            let (delivered, next) =
                tokio::join!(self.deliver_lease(tenant, &lease, stop.clone(), acking), self.lease_ahead(tenant, claim));
            *ahead = next;
            drop(permit);
            // When this lease's events go back, so do those taken ahead, due at the same time
            // (so they stay behind them in the queue).
            let retry_wait = matches!(delivered, Ok(Some(Step::Retry { .. }))).then(|| self.backoff(failures));
            let back_at = retry_wait.map_or_else(|| self.now(), |wait| self.later(wait));
            if !matches!(delivered, Ok(None)) {
                self.give_back(ahead, back_at).await;
                if let Err(e) = finish_ack(acking).await {
                    self.note_error(tenant, &e);
                    let _ = self.inner.outbox.nack(&lease, self.now()).await;
                    return Drained::GaveUp;
                }
            }
            match delivered {
                Ok(None) => failures = 0,
                Ok(Some(Step::Block(blocked))) => {
                    let _ = self.inner.outbox.nack(&lease, back_at).await;
                    tracing::warn!(tenant = %name, reason = %blocked, "tenant blocked; its events stay pending");
                    self.update(tenant.name(), |r| {
                        r.blocked = Some(blocked);
                        r.backing_off = None;
                    });
                    return Drained::Blocked;
                }
                Ok(Some(Step::Stopped)) => {
                    let _ = self.inner.outbox.nack(&lease, back_at).await;
                    return Drained::Idle;
                }
                Ok(Some(Step::Retry { why, unexpected })) => {
                    let wait = retry_wait.unwrap_or_default();
                    failures = failures.saturating_add(1);
                    tracing::info!(tenant = %name, error = %why, retry_in_ms = wait.as_millis() as u64, "transient failure; backing off");
                    let _ = self.inner.outbox.nack(&lease, back_at).await;
                    let give_up = !forever && failures >= self.inner.settings.give_up_after;
                    self.update(tenant.name(), |r| {
                        r.backing_off = Some(why.clone());
                        if give_up && unexpected {
                            // `sync` stops here: say plainly that the endpoint is not the
                            // platform's billing API as specified.
                            r.blocked = Some(Blocked {
                                codes: vec!["unexpected_response".into()],
                                hints: vec![format!(
                                    "{why}. Nothing was settled; {failures} answers in a row were like this. A proxy, \
                                     WAF or captive portal may stand in front of platform.base_url."
                                )],
                            });
                            r.backing_off = None;
                        }
                        r.last_error = Some(why);
                    });
                    if give_up {
                        return if unexpected { Drained::Blocked } else { Drained::GaveUp };
                    }
                    // The whole tenant backs off, not only this batch: the next one would most
                    // likely meet the same outage.
                    if !sleep_or_stop(wait, stop.clone()).await {
                        return Drained::Idle;
                    }
                }
                Ok(Some(_)) => {}
                Err(e) => {
                    self.note_error(tenant, &e);
                    return Drained::GaveUp;
                }
            }
        }
    }

    fn note_error(&self, tenant: &Tenant, e: &OutboxError) {
        tracing::error!(tenant = %tenant.name(), error = %e, "outbox error");
        self.update(tenant.name(), |r| {
            if let OutboxError::ClaimLost { .. } = e {
                // Another agent took the tenant over: its events are that agent's work now.
                r.held_elsewhere = true;
                r.held_by = Some(e.to_string());
                r.holder_alive = true;
            }
            r.last_error = Some(e.to_string());
        });
    }

    /// Sends a lease's events in batches. Returns the step that stopped it early, if any.
    async fn deliver_lease(
        &self,
        tenant: &Tenant,
        lease: &Lease,
        stop: watch::Receiver<bool>,
        acking: &mut Option<AckTask>,
    ) -> Result<Option<Step>, OutboxError> {
        let mut queue: VecDeque<Vec<EncodedEvent>> =
            self.inner.settings.batcher.split(&lease.events).into_iter().map(<[_]>::to_vec).collect();
        while let Some(batch) = queue.pop_front() {
            if *stop.borrow() {
                return Ok(Some(Step::Stopped));
            }
            match self.send(tenant, &batch, stop.clone()).await {
                Step::Settled(Settlement { delivered, dead, accepted, duplicates }) => {
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
                        // Commits while the next batch is leased and sent.
                        let outbox = Arc::clone(&self.inner.outbox);
                        let receipt = Lease {
                            id: lease.id.clone(),
                            tenant: lease.tenant.clone(),
                            events: Vec::new(),
                            expires_at: lease.expires_at,
                            generation: lease.generation,
                        };
                        *acking = Some(tokio::spawn(async move { outbox.ack(&receipt, &delivered).await }));
                    } else {
                        if !delivered.is_empty() {
                            self.inner.outbox.ack(lease, &delivered).await?;
                        }
                        if !dead.is_empty() {
                            self.inner.outbox.dead_letter(lease, &dead).await?;
                        }
                    }
                }
                Step::Split => {
                    let (a, b) = batch.split_at(batch.len() / 2);
                    queue.push_front(b.to_vec());
                    queue.push_front(a.to_vec());
                }
                other => return Ok(Some(other)),
            }
        }
        Ok(None)
    }

    /// Waits until the tenant's window has a slot free, without taking it; does not wait when
    /// nothing is pending (the lease that follows then finds the tenant idle at once).
    async fn wait_for_slot(&self, tenant: &Tenant, stop: &watch::Receiver<bool>) -> bool {
        let mut looked = false;
        loop {
            let wait = match self.inner.limiters.get(tenant.name()) {
                Some(w) => {
                    let mut probe = lock(w).clone();
                    match probe.try_acquire(self.inner.origin.elapsed()) {
                        Ok(()) => return true,
                        Err(wait) => wait,
                    }
                }
                None => return true,
            };
            if !looked {
                looked = true;
                if self.inner.outbox.counts(tenant.name()).await.is_ok_and(|c| c.pending == 0) {
                    return true;
                }
            }
            self.inner.metrics.rate_limit_wait(tenant.name().as_str());
            if !sleep_or_stop(wait, stop.clone()).await {
                return false;
            }
        }
    }

    async fn take_slot(&self, tenant: &Tenant, stop: &watch::Receiver<bool>) -> bool {
        loop {
            let now = self.inner.origin.elapsed();
            let wait = match self.inner.limiters.get(tenant.name()) {
                Some(w) => match lock(w).try_acquire(now) {
                    Ok(()) => return true,
                    Err(wait) => wait,
                },
                None => return true,
            };
            self.inner.metrics.rate_limit_wait(tenant.name().as_str());
            if !sleep_or_stop(wait, stop.clone()).await {
                return false;
            }
        }
    }

    fn defer(&self, tenant: &Tenant, wait: Duration) {
        if let Some(w) = self.inner.limiters.get(tenant.name()) {
            lock(w).defer(self.inner.origin.elapsed(), wait);
        }
    }

    /// Sends one batch and decides what its answer means.
    async fn send(&self, tenant: &Tenant, batch: &[EncodedEvent], stop: watch::Receiver<bool>) -> Step {
        let body = BatchBody::new(batch);
        let mut renewed_token = false;
        loop {
            if !self.take_slot(tenant, &stop).await {
                return Step::Stopped;
            }
            let headers = match self.inner.tokens.headers(tenant).await {
                Ok(h) => h,
                Err(e) if e.is_transient() => return Step::Retry { why: e.to_string(), unexpected: false },
                Err(e) => return Step::Block(blocked_by_token(tenant, &e)),
            };
            self.update(tenant.name(), |r| {
                r.requests += 1;
                r.token_expires_at = Some(headers.expires_at());
            });
            let started = Instant::now();
            let reply = self.inner.api.post_events(&headers, &body).await;
            let elapsed = started.elapsed();
            let reply = match reply {
                Ok(r) => r,
                Err(e) => {
                    self.inner.metrics.request(tenant.name().as_str(), "error", elapsed);
                    return Step::Retry { why: e.to_string(), unexpected: false };
                }
            };
            self.inner.metrics.request(tenant.name().as_str(), status_label(&reply.response), elapsed);
            let cap = self.inner.settings.max_server_wait;
            if let Some(rl) = reply.rate_limit {
                if rl.remaining == 0 {
                    self.defer(tenant, rl.reset.min(cap));
                }
            }
            match settle(reply.response, batch, Attempt { token_renewed: renewed_token }) {
                Decision::Settle(settlement) => return Step::Settled(settlement),
                Decision::Split => return Step::Split,
                Decision::RenewTokenAndRetry => {
                    // Expired or revoked under us: a new token, the same batch, once.
                    self.inner.tokens.invalidate(tenant, &headers).await;
                    renewed_token = true;
                }
                Decision::Retry { wait: Some(wait), cause } => {
                    // The server's own wait: the same batch goes again once it is over.
                    let wait = wait.min(cap);
                    self.update(tenant.name(), |r| {
                        r.backing_off =
                            Some(format!("{}: waiting {} as the platform asked", cause.code(), human(wait)));
                    });
                    self.defer(tenant, wait);
                }
                Decision::Retry { wait: None, cause } => {
                    let unexpected = matches!(cause, RetryCause::Unexpected { .. });
                    return Step::Retry { why: cause.to_string(), unexpected };
                }
                Decision::Block(BlockCause::InsufficientClaims) => {
                    self.inner.tokens.invalidate(tenant, &headers).await;
                    return Step::Block(self.explain_insufficient_claims(tenant, &headers));
                }
                Decision::Block(BlockCause::MissingHeader { description }) => {
                    return Step::Block(Blocked {
                        codes: vec!["missing_header".into()],
                        hints: vec![format!("the platform says a required header is missing: {description}")],
                    });
                }
                Decision::Block(BlockCause::TenantNotAuthorized) => {
                    return Step::Block(Blocked {
                        codes: vec!["tenant_not_authorized".into()],
                        hints: vec![format!(
                            "token and headers agree, but client {} is not authorised for tenant {}. Authorise it in \
                             Applications > OAuth Clients > {} on the platform console.",
                            tenant.client_id(),
                            tenant.tenant_id(),
                            tenant.client_id()
                        )],
                    });
                }
            }
        }
    }

    /// The platform said "insufficient claims" and nothing more: decode the token we sent and
    /// name the claim ourselves.
    fn explain_insufficient_claims(
        &self,
        tenant: &Tenant,
        headers: &billsync_domain::BillingRequestHeaders,
    ) -> Blocked {
        match self.inner.policy.check(headers.claims(), tenant.tenant_id(), tenant.application_id(), self.now()) {
            Err(v) => Blocked {
                codes: v.as_slice().iter().map(|v| v.code.to_string()).collect(),
                hints: v.as_slice().iter().map(|v| v.hint.clone()).collect(),
            },
            Ok(()) => Blocked {
                codes: vec!["insufficient_claims".into()],
                hints: vec![format!(
                    "the platform refused the token as having insufficient claims, but billsync's own check finds \
                     nothing wrong with them ({}); the platform knows something we do not: check IoT Console > \
                     Monitoring > API Access for the detailed reason.",
                    serde_json::to_string(headers.claims()).unwrap_or_default()
                )],
            },
        }
    }
}

fn blocked_by_token(tenant: &Tenant, e: &TokenError) -> Blocked {
    match e {
        TokenError::Policy(v) => Blocked {
            codes: v.as_slice().iter().map(|v| v.code.to_string()).collect(),
            hints: v.as_slice().iter().map(|v| v.hint.clone()).collect(),
        },
        TokenError::Refused { error, description } => Blocked {
            codes: vec![error.clone()],
            hints: vec![match error.as_str() {
                "invalid_client" => format!(
                    "the token endpoint does not accept client {}'s credentials{}; check client_id and the client \
                     secret (Applications > OAuth Clients).",
                    tenant.client_id(),
                    description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default()
                ),
                _ => e.to_string(),
            }],
        },
        other => Blocked { codes: vec!["token_error".into()], hints: vec![other.to_string()] },
    }
}

fn status_label(r: &BillingResponse) -> &'static str {
    match r {
        BillingResponse::Accepted(_) => "202",
        BillingResponse::MissingHeader { .. } | BillingResponse::InvalidRequest { .. } => "400",
        BillingResponse::InvalidToken | BillingResponse::InsufficientClaims => "401",
        BillingResponse::TenantNotAuthorized => "403",
        BillingResponse::PayloadTooLarge => "413",
        BillingResponse::RateLimited { .. } => "429",
        BillingResponse::ServerError { .. } => "5xx",
        BillingResponse::Unexpected { .. } => "other",
    }
}

/// What `sync` has seen of another agent holding a tenant.
struct Watch {
    agent: String,
    heartbeat: i64,
    since: Instant,
    renewed_at: Option<Instant>,
}

/// An ack committing in the background.
type AckTask = tokio::task::JoinHandle<Result<(), OutboxError>>;

/// A lease taken ahead, with its place in the global bound on leases held.
type Ahead<'a> = (Lease, tokio::sync::SemaphorePermit<'a>);

/// Waits for the ack in flight, if any.
async fn finish_ack(acking: &mut Option<AckTask>) -> Result<(), OutboxError> {
    match acking.take() {
        None => Ok(()),
        Some(task) => task.await.unwrap_or_else(|e| Err(OutboxError::Storage(format!("the ack task failed: {e}")))),
    }
}

/// Sleeps, or returns `false` at once when shutdown is requested.
async fn sleep_or_stop(d: Duration, mut stop: watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.changed() => false,
    }
}

fn human(d: Duration) -> String {
    billsync_domain::human_duration(chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_owned()).unwrap_or_else(|_| "agent".into())
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
