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

mod claim;
mod drain;
mod report;
mod send;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use billsync_domain::{Batcher, BillingApi, Clock, Outbox, RatePolicy, SharedWindow, Tenant, TenantName, TokenSource};
use chrono::{DateTime, Utc};
use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use drain::Drained;
pub use report::{Blocked, Reason, TenantReport, TenantState};

/// How the engine paces and retries.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// Batch limits.
    pub batcher: Batcher,
    /// Requests per sliding 60 s window, per tenant.
    pub rate: RatePolicy,
    /// The most of a tenant's window reconciliation's reads take inside `run` (default 0.2);
    /// delivery keeps the rest (`[reconcile] share`).
    pub read_share: f64,
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
            read_share: 0.2,
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
    settings: SyncSettings,
    tenants: Vec<Tenant>,
    agent_id: String,
    origin: Instant,
    limiters: HashMap<TenantName, Mutex<SharedWindow>>,
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

impl Engine {
    /// An engine over the given ports.
    pub fn new(ports: Ports, settings: SyncSettings, tenants: Vec<Tenant>, metrics: Metrics) -> Self {
        let limiters = tenants
            .iter()
            .map(|t| (t.name().clone(), Mutex::new(SharedWindow::new(settings.rate, settings.read_share))))
            .collect();
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

    /// This engine's agent id (`<host>-<pid>-<random>`), under which it claims tenants.
    pub fn agent_id(&self) -> &str {
        &self.inner.agent_id
    }

    /// How long a tenant claim lasts without a heartbeat.
    pub fn claim_ttl(&self) -> Duration {
        self.inner.settings.claim_ttl
    }

    /// Events of a tenant the platform has taken so far (accepted or already held).
    pub fn delivered(&self, tenant: &TenantName) -> u64 {
        lock(&self.inner.reports).get(tenant).map_or(0, |r| r.accepted + r.duplicates)
    }

    /// Delivers everything deliverable now, all tenants in parallel, then returns. Transient
    /// failures are retried with backoff up to `give_up_after` times in a row per tenant.
    pub async fn sync_once(&self) -> Vec<TenantReport> {
        let tenants = self.inner.tenants.clone();
        self.sync_tenants(&tenants).await;
        self.reports()
    }

    /// As [`Engine::sync_once`], for these tenants only (of those this engine serves).
    pub async fn sync_tenants(&self, tenants: &[Tenant]) {
        let never = CancellationToken::new();
        let mut set = tokio::task::JoinSet::new();
        let mut names = HashMap::new();
        let tenants: Vec<Tenant> = tenants.iter().filter(|t| self.inner.tenants.contains(t)).cloned().collect();
        let busy = Arc::new(AtomicUsize::new(tenants.len()));
        for tenant in tenants {
            // Counts add up over syncs; a state is what this sync finds.
            self.update(tenant.name(), |r| {
                (r.blocked, r.backing_off, r.down) = (None, None, None);
                (r.held_elsewhere, r.held_by, r.holder_alive) = (false, None, false);
            });
            let (engine, never, busy) = (self.clone(), never.clone(), Arc::clone(&busy));
            let name = tenant.name().clone();
            let handle = set.spawn(async move {
                let drained = engine.drain(&tenant, false, &never, Some(&busy)).await;
                busy.fetch_sub(1, Ordering::SeqCst);
                // Done with the tenant: let the next `sync` (or another agent) have it now, not
                // when the claim expires.
                engine.release(&tenant).await;
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
    }

    /// Runs until `shutdown` resolves: workers keep draining and polling for new events. On
    /// shutdown no new batch is started, requests in flight finish, and leases are returned.
    ///
    /// A worker that ends unexpectedly (a panic) marks its tenant `down` with the reason and
    /// is started again after `restart_after`; its leased events lapse back to pending.
    pub async fn run_until(&self, shutdown: impl std::future::Future<Output = ()>) {
        let stop = CancellationToken::new();
        let mut set = tokio::task::JoinSet::new();
        for tenant in self.inner.tenants.clone() {
            let (engine, stop) = (self.clone(), stop.clone());
            set.spawn(async move { engine.supervise(tenant, stop).await });
        }
        shutdown.await;
        stop.cancel();
        while set.join_next().await.is_some() {}
    }

    /// Keeps one tenant's worker running until `stop`.
    async fn supervise(&self, tenant: Tenant, stop: CancellationToken) {
        let mut restarts = 0u32;
        loop {
            let (engine, t, s) = (self.clone(), tenant.clone(), stop.clone());
            let ended = tokio::spawn(async move { engine.run_tenant(&t, &s).await }).await;
            if stop.is_cancelled() {
                return;
            }
            match &ended.err() {
                Some(e) => self.worker_ended(tenant.name(), e),
                None => self.update(tenant.name(), |r| r.down = Some("the worker returned before shutdown".into())),
            }
            let pause = self.inner.settings.restart_after.saturating_mul(1 << restarts.min(6));
            restarts = restarts.saturating_add(1);
            if !sleep_or_stop(pause, &stop).await {
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

    /// `run`'s worker for one tenant: drain, pause, drain again, until `stop`.
    async fn run_tenant(&self, tenant: &Tenant, stop: &CancellationToken) {
        loop {
            let pause = match self.drain(tenant, true, stop, None).await {
                // Try again later: the platform console may have been fixed.
                Drained::Blocked => self.inner.settings.blocked_retry,
                _ => self.inner.settings.poll_interval,
            };
            if !sleep_or_stop(pause, stop).await {
                break;
            }
            if lock(&self.inner.reports).get(tenant.name()).is_some_and(|r| r.blocked.is_some()) {
                self.update(tenant.name(), |r| r.blocked = None);
            }
        }
        self.release(tenant).await;
    }

    /// Gives the tenant's claim up, so that another agent may have it at once. If the outbox
    /// fails, the claim lapses at its expiry instead.
    async fn release(&self, tenant: &Tenant) {
        if let Err(e) = self.inner.outbox.release_tenant(tenant.name(), &self.inner.agent_id).await {
            tracing::warn!(tenant = %tenant.name(), error = %crate::error_chain(&e), "releasing the tenant's claim failed; it lapses");
        }
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
}

/// Sleeps, or returns `false` at once when shutdown is requested.
async fn sleep_or_stop(d: Duration, stop: &CancellationToken) -> bool {
    if stop.is_cancelled() {
        return false;
    }
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        () = stop.cancelled() => false,
    }
}

fn human(d: Duration) -> String {
    billsync_domain::human_duration(chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// This host's name (`/etc/hostname`), or `agent`.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_owned()).unwrap_or_else(|_| "agent".into())
}
