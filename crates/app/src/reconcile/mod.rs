//! `billsync reconcile`: what the platform holds against what this outbox delivered, tenant by
//! tenant and UTC day by UTC day, and (`--repair`) what can be set right.
//!
//! Per tenant: a read-scope token from its own cache slot; the platform's listing, paged and
//! paced by its `X-RateLimit-*` headers so that delivery keeps `1 - share` of the window,
//! streamed into the outbox's scratch set; the comparison as SQL joins there
//! ([`ReconcileStore::compare`]); then, with `--repair` and the tenant's claim, missing events
//! requeued (and sent) and events the platform already holds settled. Each tenant's result is
//! recorded in the outbox ([`LastReconcile`]) for `status`.
//!
//! Inside `billsync run` the same runs on a schedule (`schedule.rs`), with two differences:
//! reads take read slots of the engine's own window for the tenant
//! ([`billsync_domain::SharedWindow`]), and only tenants this agent holds are reconciled,
//! repaired under its claim, their requeued events sent by the tenant's worker.

use std::sync::Arc;
use std::time::Duration;

use billsync_auth::TokenCache;
use billsync_domain::{
    BillingReader, BillingResponse, Claim, ClaimOutcome, Clock, Comparison, IdList, ListAnswer, Outbox, ReconcileStore,
    RunId, Tenant, TokenSource, Window, WindowError, read_pause,
};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::engine::{Blocked, Engine};

mod schedule;
pub(crate) use schedule::Schedule;

/// The most events asked for per page (the contract's maximum).
const PAGE: u32 = 1000;
/// Failed reads of one page (5xx, no answer, 429 without a wait) before the tenant is reported
/// unreadable.
const READ_ATTEMPTS: u32 = 5;
/// How long a repair holds the tenant's claim at most.
const REPAIR_CLAIM_TTL: Duration = Duration::from_secs(300);

/// Which days to reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Days {
    /// The last N UTC days, today included.
    Last(u32),
    /// From this UTC day to today.
    Since(NaiveDate),
}

impl Default for Days {
    fn default() -> Self {
        Self::Last(billsync_domain::reconcile::DEFAULT_DAYS)
    }
}

/// What `reconcile` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct ReconcileOptions {
    /// One tenant (its local name), or all.
    pub tenant: Option<String>,
    /// The window.
    pub days: Days,
    /// Requeue what the platform lacks, settle what it already holds (under the claim).
    pub repair: bool,
    /// Count the platform's events this outbox never had as discrepancies (no other sender).
    pub exclusive: bool,
    /// At most this share of the tenant's rate window goes to reads (default 0.2).
    pub share: Option<f64>,
}

/// Called after each page: tenant, pages read, events read.
pub type Progress<'a> = &'a (dyn Fn(&str, u64, u64) + Send + Sync);

/// Why `reconcile` could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// `--tenant` names no configured tenant.
    #[error("{0}")]
    UnknownTenant(String),
    /// A window that cannot be reconciled (exit 2).
    #[error(transparent)]
    Window(#[from] WindowError),
    /// The outbox failed.
    #[error(transparent)]
    Outbox(#[from] billsync_domain::OutboxError),
}

/// What a repair did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repair {
    /// `missing_on_platform` events returned to pending to be sent again (by the repair
    /// itself in `billsync reconcile`, by the tenant's worker in `run`).
    pub requeued: u64,
    /// `held_but_pending` events settled as delivered without sending.
    pub settled: u64,
    /// Of the requeued ones, how many the platform accepted during the repair.
    pub resent: u64,
    /// `held_but_dead_lettered` events, left for a person to decide.
    pub left_dead_lettered: u64,
    /// When another live agent holds the tenant: its id (nothing was repaired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_by: Option<String>,
}

/// The window, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowReport {
    /// The first UTC day.
    pub from: NaiveDate,
    /// The last UTC day (included).
    pub to: NaiveDate,
}

/// One tenant's reconciliation (`--json`: one element of `tenants`).
#[derive(Debug, Clone, Serialize)]
pub struct TenantReconciliation {
    /// The tenant's local name.
    pub name: String,
    /// The window compared.
    pub window: WindowReport,
    /// The first instant this outbox vouches for (`null`: its whole history).
    pub horizon: Option<DateTime<Utc>>,
    /// What was found (empty when the platform could not be read).
    #[serde(flatten)]
    pub comparison: Comparison,
    /// Why the platform could not be read for this tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<Blocked>,
    /// What `--repair` did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair: Option<Repair>,
    /// Pages and events read from the platform.
    pub pages: u64,
    /// Events the platform listed (inside and around the window).
    pub events_read: u64,
    /// Whether nothing remains to be looked at: the sides agree, or all that was found was
    /// repaired.
    pub clean: bool,
}

/// How many of each kind one reconciliation found (before any repair).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Found {
    /// Delivered here, absent on the platform.
    pub missing_on_platform: u64,
    /// Held by the platform, never in this outbox.
    pub unknown_to_outbox: u64,
    /// Pending here, already held by the platform.
    pub held_but_pending: u64,
    /// Dead-lettered here, held by the platform.
    pub held_but_dead_lettered: u64,
    /// Missing on the platform, its payload compacted away.
    pub missing_unrecoverable: u64,
}

impl Found {
    fn of(c: &Comparison) -> Self {
        Self {
            missing_on_platform: c.missing_on_platform.count,
            unknown_to_outbox: c.unknown_to_outbox.count,
            held_but_pending: c.held_but_pending.count,
            held_but_dead_lettered: c.held_but_dead_lettered.count,
            missing_unrecoverable: c.missing_unrecoverable.count,
        }
    }

    /// Each kind's name (as in the report and the `kind` label of
    /// `billsync_reconcile_discrepancies`) and count.
    pub fn kinds(&self) -> [(&'static str, u64); 5] {
        [
            ("missing_on_platform", self.missing_on_platform),
            ("unknown_to_outbox", self.unknown_to_outbox),
            ("held_but_pending", self.held_but_pending),
            ("held_but_dead_lettered", self.held_but_dead_lettered),
            ("missing_unrecoverable", self.missing_unrecoverable),
        ]
    }
}

/// A tenant's last reconciliation, as the outbox keeps it for `status` (whichever process
/// ran it: `billsync reconcile` or `run` on its schedule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastReconcile {
    /// When it ended.
    pub at: DateTime<Utc>,
    /// The days compared.
    pub window: WindowReport,
    /// Whether nothing remained to be looked at (see [`TenantReconciliation::clean`]).
    pub clean: bool,
    /// What it found (zero when the platform could not be read).
    pub found: Found,
    /// What its repair did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<Repair>,
    /// Why the platform could not be read: the run failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<Blocked>,
    /// When a reconciliation of this tenant last read and compared both sides (this one, or
    /// an earlier one if this one failed).
    pub last_success_at: Option<DateTime<Utc>>,
}

/// How a reconciliation paces its reads and repairs.
#[derive(Clone, Copy)]
pub(crate) enum Mode {
    /// A process of its own (`billsync reconcile`): reads paced by the platform's
    /// `X-RateLimit-*` headers; a repair takes the tenant's claim and sends what it requeued.
    Alone,
    /// Inside `run`: reads take slots of the engine's own window for the tenant (at most the
    /// reads' share); the tenant is reconciled under this agent's claim, and its worker sends
    /// what a repair requeued.
    InRun,
}

/// The ports reconciliation uses (all shared with the agent).
pub(crate) struct Reconciler<'a> {
    pub tokens: &'a Arc<TokenCache>,
    pub reader: &'a Arc<dyn BillingReader>,
    pub store: &'a Arc<dyn ReconcileStore>,
    pub outbox: &'a Arc<dyn Outbox>,
    pub engine: &'a Engine,
    pub clock: &'a Arc<dyn Clock>,
    pub mode: Mode,
}

impl Reconciler<'_> {
    /// Reconciles `tenants` as `opts` says.
    ///
    /// # Errors
    /// [`ReconcileError::Window`] for a window before a tenant's horizon (checked for every
    /// tenant before any is read); [`ReconcileError::Outbox`].
    pub async fn run(
        &self,
        tenants: &[Tenant],
        opts: &ReconcileOptions,
        progress: Progress<'_>,
    ) -> Result<Vec<TenantReconciliation>, ReconcileError> {
        let now = self.clock.now();
        let window = match opts.days {
            Days::Last(n) => Window::last_days(now, n)?,
            Days::Since(d) => Window::since(d, now)?,
        };
        let mut horizons = Vec::with_capacity(tenants.len());
        for t in tenants {
            let horizon = self.store.horizon(t.name()).await?;
            window.check_horizon(horizon)?;
            horizons.push(horizon);
        }
        let mut out = Vec::with_capacity(tenants.len());
        for (t, horizon) in tenants.iter().zip(horizons) {
            let r = self.tenant(t, window, horizon, None, opts, progress).await?;
            self.remember(t, &r).await;
            out.push(r);
        }
        Ok(out)
    }

    /// `run`'s scheduled reconciliation of one tenant: the default window clipped to what the
    /// outbox vouches for, under this agent's claim. `None` when there is nothing to do now:
    /// another agent holds the tenant (it reconciles it), or no whole day is vouched for yet.
    ///
    /// # Errors
    /// [`ReconcileError::Outbox`].
    pub async fn scheduled(
        &self,
        tenant: &Tenant,
        opts: &ReconcileOptions,
        claim_ttl: Duration,
    ) -> Result<Option<(TenantReconciliation, LastReconcile)>, ReconcileError> {
        let horizon = self.store.horizon(tenant.name()).await?;
        let days = match opts.days {
            Days::Last(n) => n,
            Days::Since(_) => billsync_domain::reconcile::DEFAULT_DAYS,
        };
        let Some(window) = Window::last_days(self.clock.now(), days)?.clip(horizon) else {
            tracing::info!(tenant = %tenant.name(), ?horizon, "no whole day to reconcile yet: the outbox vouches from its horizon on");
            return Ok(None);
        };
        let claim = match self.outbox.claim_tenant(tenant.name(), self.engine.agent_id(), claim_ttl).await? {
            ClaimOutcome::Claimed(claim) => claim,
            ClaimOutcome::HeldBy(holder) => {
                tracing::debug!(tenant = %tenant.name(), holder = %holder.agent, "not reconciling: another agent holds the tenant");
                return Ok(None);
            }
        };
        let r = self.tenant(tenant, window, horizon, Some(claim), opts, &|_, _, _| {}).await?;
        let last = self.remember(tenant, &r).await;
        Ok(Some((r, last)))
    }

    /// Records the result for `status`; a failure to record it is logged, not fatal.
    async fn remember(&self, tenant: &Tenant, r: &TenantReconciliation) -> LastReconcile {
        let before = self.load_last(tenant.name()).await;
        let at = self.clock.now();
        let last = LastReconcile {
            at,
            window: r.window,
            clean: r.clean,
            found: Found::of(&r.comparison),
            repair: r.repair.clone(),
            unreadable: r.unreadable.clone(),
            last_success_at: if r.unreadable.is_none() { Some(at) } else { before.and_then(|b| b.last_success_at) },
        };
        let saved = match serde_json::to_string(&last) {
            Ok(json) => self.store.save_last_reconcile(tenant.name(), &json).await.map_err(|e| crate::error_chain(&e)),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = saved {
            tracing::warn!(tenant = %tenant.name(), error = %e, "could not record the reconciliation's result");
        }
        last
    }

    async fn tenant(
        &self,
        tenant: &Tenant,
        window: Window,
        horizon: Option<DateTime<Utc>>,
        claim: Option<Claim>,
        opts: &ReconcileOptions,
        progress: Progress<'_>,
    ) -> Result<TenantReconciliation, ReconcileError> {
        let mut r = TenantReconciliation {
            name: tenant.name().to_string(),
            window: WindowReport { from: window.from, to: window.to },
            horizon,
            comparison: Comparison::default(),
            unreadable: None,
            repair: None,
            pages: 0,
            events_read: 0,
            clean: false,
        };
        let run = self.store.begin_reconcile(tenant.name(), &window).await?;
        let read = self.read_platform(tenant, &window, &run, opts, &mut r, progress).await;
        let compared = match read {
            Ok(()) => Some(self.store.compare(&run, billsync_domain::reconcile::MAX_LISTED_IDS).await),
            Err(blocked) => {
                r.unreadable = Some(blocked);
                None
            }
        };
        // The scratch set goes whatever happened; a failure here is swept at the next begin.
        if let Err(e) = self.store.end_reconcile(&run).await {
            tracing::warn!(tenant = %tenant.name(), error = %crate::error_chain(&e), "dropping the reconciliation scratch set failed");
        }
        let Some(compared) = compared else { return Ok(r) };
        r.comparison = compared?;
        if opts.repair && !r.comparison.agrees(false) {
            r.repair = Some(match claim {
                Some(claim) => self.repair_under(tenant, &claim, &r.comparison).await?,
                None => self.repair(tenant, &r.comparison).await?,
            });
        }
        r.clean = clean(&r.comparison, r.repair.as_ref(), opts.exclusive, self.mode);
        Ok(r)
    }

    /// Waits until the next read may go: in `run`, a read slot of the engine's window; alone,
    /// as the platform's last `X-RateLimit-*` headers allow.
    async fn pace(&self, tenant: &Tenant, last_rate: Option<billsync_domain::RateLimitStatus>, share: f64) {
        match self.mode {
            Mode::Alone => tokio::time::sleep(read_pause(last_rate, share)).await,
            Mode::InRun => {
                // Cancelled only by dropping this future (`run` stopping).
                let _ = self.engine.take_read_slot(tenant.name(), &CancellationToken::new()).await;
            }
        }
    }

    /// Streams the platform's listing into the scratch set; the reason when it cannot be read.
    async fn read_platform(
        &self,
        tenant: &Tenant,
        window: &Window,
        run: &RunId,
        opts: &ReconcileOptions,
        r: &mut TenantReconciliation,
        progress: Progress<'_>,
    ) -> Result<(), Blocked> {
        let share = opts.share.unwrap_or(0.2);
        let (mut after, mut last_rate, mut renewed) = (0u64, None, false);
        let mut retries = Retries::default();
        loop {
            self.pace(tenant, last_rate, share).await;
            let headers = self.tokens.read_headers(tenant).await.map_err(|e| match e {
                e if e.is_transient() => Blocked::one("token_unavailable", e.to_string()),
                e => Blocked::by_token(tenant, &e),
            })?;
            let reply = match self.reader.list_events(&headers, window.listing_since(), after, PAGE).await {
                Ok(reply) => reply,
                Err(e) => {
                    retries.again(None, || Blocked::one("platform_unreachable", e.to_string())).await?;
                    continue;
                }
            };
            last_rate = reply.rate_limit.or(last_rate);
            if let (Mode::InRun, Some(rl)) = (self.mode, reply.rate_limit.filter(|rl| rl.remaining == 0)) {
                self.engine.defer_requests(tenant.name(), rl.reset);
            }
            let page = match reply.answer {
                ListAnswer::Page(page) => page,
                ListAnswer::Refused(BillingResponse::InvalidToken) if !renewed => {
                    self.tokens.invalidate(tenant, &headers).await;
                    renewed = true;
                    continue;
                }
                ListAnswer::Refused(BillingResponse::RateLimited { retry_after }) => {
                    if let (Mode::InRun, Some(wait)) = (self.mode, retry_after) {
                        self.engine.defer_requests(tenant.name(), wait);
                    }
                    let why = || Blocked::one("rate_limited", "the platform kept answering 429 to reads".to_owned());
                    retries.again(retry_after, why).await?;
                    continue;
                }
                ListAnswer::Refused(BillingResponse::ServerError { status }) => {
                    let why = || Blocked::one("platform_unavailable", format!("the platform answered HTTP {status}"));
                    retries.again(None, why).await?;
                    continue;
                }
                ListAnswer::Refused(other) => return Err(refused_read(tenant, &other, &headers)),
            };
            retries = Retries::default();
            r.pages += 1;
            r.events_read += page.events.len() as u64;
            after = page.events.last().map_or(after, |e| e.seq);
            let facts: Vec<_> = page.events.into_iter().map(|e| e.fact).collect();
            self.store.add_held(run, &facts).await.map_err(|e| {
                Blocked::one(
                    "outbox_error",
                    format!("storing the platform's listing failed: {}", crate::error_chain(&e)),
                )
            })?;
            progress(tenant.name().as_str(), r.pages, r.events_read);
            if !page.has_more || facts.is_empty() {
                return Ok(());
            }
        }
    }

    /// Requeues and settles under `claim` (which stays held).
    async fn repair_under(&self, tenant: &Tenant, claim: &Claim, c: &Comparison) -> Result<Repair, ReconcileError> {
        let requeued = self.store.requeue_delivered(claim, &ids(&c.missing_on_platform)).await?;
        let settled = self.store.settle_held(claim, &ids(&c.held_but_pending)).await?;
        if requeued + settled > 0 {
            tracing::info!(tenant = %tenant.name(), requeued, settled, "reconciliation repaired the outbox");
        }
        Ok(Repair { requeued, settled, left_dead_lettered: c.held_but_dead_lettered.count, ..Repair::default() })
    }

    /// Takes the tenant's claim, requeues and settles under it, gives it back, then sends what
    /// was requeued (`billsync reconcile --repair`).
    async fn repair(&self, tenant: &Tenant, c: &Comparison) -> Result<Repair, ReconcileError> {
        let mut repair = Repair { left_dead_lettered: c.held_but_dead_lettered.count, ..Repair::default() };
        let agent = self.engine.agent_id();
        let claim = match self.outbox.claim_tenant(tenant.name(), agent, REPAIR_CLAIM_TTL).await? {
            ClaimOutcome::Claimed(claim) => claim,
            ClaimOutcome::HeldBy(holder) => {
                repair.held_by = Some(holder.agent);
                return Ok(repair);
            }
        };
        let result = self.repair_under(tenant, &claim, c).await;
        if let Err(e) = self.outbox.release_tenant(tenant.name(), agent).await {
            tracing::warn!(tenant = %tenant.name(), error = %crate::error_chain(&e), "releasing the claim after the repair failed; it lapses");
        }
        repair = result?;
        if repair.requeued > 0 {
            let before = self.engine.delivered(tenant.name());
            self.engine.sync_tenants(std::slice::from_ref(tenant)).await;
            repair.resent = self.engine.delivered(tenant.name()).saturating_sub(before).min(repair.requeued);
        }
        Ok(repair)
    }
}

/// The ids of a list, parsed back (they came from the outbox, so they parse).
fn ids(list: &IdList) -> Vec<billsync_domain::EventId> {
    list.ids.iter().filter_map(|id| billsync_domain::EventId::parse(id).ok()).collect()
}

/// Whether nothing remains for a person to look at.
/// In `run`, the tenant's worker sends what was requeued: requeued is repaired there.
fn clean(c: &Comparison, repair: Option<&Repair>, exclusive: bool, mode: Mode) -> bool {
    if c.agrees(exclusive) {
        return true;
    }
    let Some(r) = repair.filter(|r| r.held_by.is_none()) else { return false };
    let all = |list: &IdList, done: u64| list.count == list.ids.len() as u64 && done == list.count;
    let sent = match mode {
        Mode::Alone => r.resent,
        Mode::InRun => r.requeued,
    };
    all(&c.missing_on_platform, sent)
        && all(&c.held_but_pending, r.settled)
        && c.missing_unrecoverable.is_empty()
        && c.held_but_dead_lettered.is_empty()
        && (!exclusive || c.unknown_to_outbox.is_empty())
}

/// Consecutive failed reads of one page.
#[derive(Default)]
struct Retries {
    failures: u32,
}

impl Retries {
    /// Waits before reading again (`wait`, or a growing backoff); after [`READ_ATTEMPTS`]
    /// failures in a row, the reason `why` gives, with the count.
    async fn again(&mut self, wait: Option<Duration>, why: impl FnOnce() -> Blocked) -> Result<(), Blocked> {
        self.failures += 1;
        if self.failures >= READ_ATTEMPTS {
            let mut blocked = why();
            for r in &mut blocked.reasons {
                r.hint = format!("{} ({} reads in a row)", r.hint, self.failures);
            }
            return Err(blocked);
        }
        let backoff = Duration::from_millis(250).saturating_mul(1 << self.failures.min(6)).min(Duration::from_secs(10));
        tokio::time::sleep(wait.unwrap_or(backoff)).await;
        Ok(())
    }
}

/// A read refused for a reason a retry cannot fix.
fn refused_read(
    tenant: &Tenant,
    answer: &BillingResponse,
    headers: &billsync_domain::BillingRequestHeaders,
) -> Blocked {
    match answer {
        BillingResponse::InsufficientClaims { .. } | BillingResponse::InvalidToken => Blocked::one(
            "read_not_authorized",
            format!(
                "the platform refused client {}'s read token ({}): grant the client the billing read scope \
                 (urn:oracle:iot:billing:read, or [platform] billing_read_scope) under Applications > OAuth Clients > \
                 {} > Scopes",
                tenant.client_id(),
                if matches!(answer, BillingResponse::InvalidToken) { "invalid_token" } else { "insufficient_claims" },
                tenant.client_id()
            ),
        ),
        BillingResponse::TenantNotAuthorized => {
            Blocked::by_platform(tenant, &billsync_domain::BlockCause::TenantNotAuthorized, headers)
        }
        BillingResponse::MissingHeader { description } => Blocked::by_platform(
            tenant,
            &billsync_domain::BlockCause::MissingHeader { description: description.clone() },
            headers,
        ),
        other => Blocked::one("unexpected_response", format!("the platform's listing answered {other:?}")),
    }
}
