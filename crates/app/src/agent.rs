//! The composition root: builds the adapters named by the configuration and hands them to the
//! engine as ports. Another Rust service embeds billsync through [`Agent`].

use std::path::Path;
use std::sync::Arc;

use billsync_auth::{AuthConfig, TenantAuth, TokenCache};
use std::time::Duration;

use billsync_auth::Diagnosis;
use billsync_domain::{
    BillingPolicy, BillingReader, Clock, DeadLetterRecord, EncodedEvent, EnqueueReport, EventId, Outbox, OutboxError,
    QuarantineStore, ReconcileStore, SystemClock, Tenant, TenantCounts, TenantName,
};
use billsync_http::HttpSettings;
use billsync_transport::HttpBillingApi;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::backpressure::{PendingCount, Pressure};
use crate::config::{Config, ConfigError, Credential};
use crate::engine::{Blocked, Engine, Ports, SyncSettings, TenantReport, TenantState};
use crate::health::{Check, Health};

mod messages;
use crate::metrics::Metrics;
use crate::reconcile::{
    LastReconcile, Mode, Progress, ReconcileError, ReconcileOptions, Reconciler, Schedule, TenantReconciliation,
};
pub use messages::{Message, Requeued, Taken};

/// Why the agent could not be built or could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No configuration was given to the builder.
    #[error("no configuration given: call AgentBuilder::config")]
    NoConfig,
    /// The tenant is not in the configuration.
    #[error("unknown tenant \"{name}\"; configured tenants: {known}")]
    UnknownTenant {
        /// The name asked for.
        name: String,
        /// The names configured.
        known: String,
    },
    /// The configuration file could not be read or is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The outbox failed.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The token adapter could not be configured.
    #[error("token configuration")]
    Auth(#[from] billsync_auth::ConfigError),
    /// The HTTP client could not be set up (the CA bundle, TLS).
    #[error("HTTP client configuration")]
    Http(#[from] billsync_http::HttpSetupError),
    /// The outbox takes no new events now; nothing was stored (try again later).
    #[error(transparent)]
    Backpressure(#[from] Pressure),
}

impl AgentError {
    /// Whether trying again later may succeed with nothing changed: the outbox pushed back,
    /// or its disk is full (`EX_TEMPFAIL`, 75, for the command line).
    pub fn is_temporary(&self) -> bool {
        matches!(self, Self::Backpressure(_) | Self::Outbox(OutboxError::Full))
    }
}

/// One tenant as `billsync status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TenantStatus {
    /// Local name.
    pub name: String,
    /// Waiting for delivery.
    pub pending: u64,
    /// Leased right now.
    pub in_flight: u64,
    /// Delivered (until compaction).
    pub delivered: u64,
    /// Dead-lettered.
    pub dead_lettered: u64,
    /// ok, backing_off, blocked, held or down.
    pub state: TenantState,
    /// Why, unless the state is ok.
    pub reason: Option<String>,
    /// Why the tenant is blocked, if it is.
    pub blocked: Option<Blocked>,
    /// The last transient error.
    pub last_error: Option<String>,
    /// When the current token expires.
    pub token_expires_at: Option<DateTime<Utc>>,
    /// Enqueue time of the oldest pending event.
    pub oldest_pending: Option<DateTime<Utc>>,
    /// The tenant's last reconciliation, by `billsync reconcile` or `run`'s schedule.
    pub last_reconcile: Option<LastReconcile>,
}

/// Builds an [`Agent`].
#[derive(Debug, Default)]
pub struct AgentBuilder {
    config: Option<Config>,
    clock: Option<Arc<dyn Clock>>,
    settings: Option<SyncSettings>,
}

impl AgentBuilder {
    /// The configuration (from [`Config::load`] or [`Config::parse`]).
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// Replaces the system clock (tests, simulations).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Overrides engine settings not in the configuration file (backoff start, lease time).
    /// Batch size, rate and backoff ceiling still come from the configuration.
    pub fn settings(mut self, settings: SyncSettings) -> Self {
        self.settings = Some(settings);
        self
    }

    /// Opens the outbox and builds the adapters.
    ///
    /// # Errors
    /// [`AgentError`] when the outbox cannot be opened or an adapter cannot be configured.
    pub async fn build(self) -> Result<Agent, AgentError> {
        let config = self.config.ok_or(AgentError::NoConfig)?;
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let stores = config.storage.location.open_stores(clock.clone()).await?;
        let (outbox, store, quarantine) = (stores.outbox, stores.reconcile, stores.quarantine);
        // One set of connection settings, the CA bundle read once, for both HTTP adapters.
        let mut http = HttpSettings::default().with_timeout(config.sync.request_timeout);
        if let Some(path) = &config.platform.ca_file {
            http = http.with_ca_file(path)?;
        }
        let tokens = Arc::new(token_cache(&config, &http, clock.clone())?);
        let api = Arc::new(HttpBillingApi::new(config.platform.base_url.as_str(), &http)?);
        let settings = engine_settings(self.settings.unwrap_or_default(), &config);
        let metrics = Metrics::default();
        let engine = Engine::new(
            Ports { outbox: outbox.clone(), tokens: tokens.clone(), api: api.clone(), clock: clock.clone() },
            settings,
            config.tenants.iter().map(|t| t.tenant.clone()).collect(),
            metrics.clone(),
        );
        Ok(Agent {
            config: Arc::new(config),
            outbox,
            store,
            quarantine,
            reader: api,
            tokens,
            engine,
            metrics,
            clock,
            pending: Arc::default(),
            checks: Arc::default(),
        })
    }
}

/// The token cache for the configured platform and tenants.
fn token_cache(config: &Config, http: &HttpSettings, clock: Arc<dyn Clock>) -> Result<TokenCache, AgentError> {
    let platform = &config.platform;
    let policy = BillingPolicy::new(
        platform.billing_scope.clone(),
        platform.billing_audience.clone(),
        std::time::Duration::from_secs(1),
    );
    let mut auth_config = AuthConfig::new(platform.token_url.as_str())?
        .with_jwks_url(platform.jwks_url.as_str())?
        .with_policy(policy)
        .with_read_scope(platform.billing_read_scope.clone())
        .with_refresh(config.sync.refresh)
        .with_http(http.clone());
    if let Some(issuer) = &platform.token_issuer {
        auth_config = auth_config.with_token_issuer(issuer.as_str());
    }
    let mut auths = Vec::new();
    for t in &config.tenants {
        let mut a = match &t.credential {
            Credential::Secret(secret) => {
                TenantAuth::new(t.tenant.clone(), billsync_domain::ClientSecret::new(secret.secret()))
                    .with_auth_method(t.auth_method)
            }
            Credential::PrivateKey { key, lifetime } => {
                TenantAuth::new_private_key_jwt(t.tenant.clone(), key.clone()).with_assertion_lifetime(*lifetime)?
            }
            Credential::AssertionFile { path } => TenantAuth::new_assertion_file(t.tenant.clone(), path),
        };
        // One assertion serves one token request: a tenant on an assertion file asks for the
        // write and read scopes in one token.
        a = match &t.credential {
            Credential::AssertionFile { .. } => {
                a.with_scopes([platform.billing_scope.clone(), platform.billing_read_scope.clone()])
            }
            _ => a.with_scope(platform.billing_scope.clone()),
        }
        .with_jwks_verification(t.verify_jwks);
        if let Some(url) = &t.token_url {
            a = a.with_token_url(url.as_str())?;
        }
        for (k, v) in &t.extra_token_params {
            a = a.with_extra_param(k, v)?;
        }
        auths.push(a);
    }
    Ok(TokenCache::with_clock(auth_config, auths, clock)?)
}

/// The engine's settings: `base` (the builder's, or the defaults) with what the configuration
/// sets.
fn engine_settings(mut settings: SyncSettings, config: &Config) -> SyncSettings {
    settings.batcher = config.sync.batcher;
    settings.rate = config.sync.rate;
    settings.read_share = config.reconcile.share;
    settings.max_backoff = config.sync.max_backoff;
    if let Some(lease) = config.sync.lease {
        settings.lease_for = lease;
    }
    if let Some(ttl) = config.sync.claim_ttl {
        settings.claim_ttl = ttl;
    }
    settings
}

/// billsync in-process: enqueue events, deliver them, read their status.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use billsync::{Agent, config::Config};
/// let config = Config::load(std::path::Path::new("billsync.toml"))?;
/// let agent = Agent::builder().config(config).build().await?;
/// let reports = agent.sync_once().await;
/// # let _ = reports;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Agent {
    config: Arc<Config>,
    outbox: Arc<dyn Outbox>,
    store: Arc<dyn ReconcileStore>,
    quarantine: Arc<dyn QuarantineStore>,
    reader: Arc<dyn BillingReader>,
    tokens: Arc<TokenCache>,
    engine: Engine,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
    pending: Arc<PendingCount>,
    /// Checks the parts around the engine report ([`Agent::report_check`]), by name.
    checks: Arc<std::sync::Mutex<std::collections::BTreeMap<String, Check>>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("tenants", &self.config.tenants.len()).field("engine", &self.engine).finish()
    }
}

impl Agent {
    /// Starts building an agent.
    pub fn builder() -> AgentBuilder {
        AgentBuilder::default()
    }

    /// Loads `path` and builds an agent from it.
    ///
    /// # Errors
    /// [`AgentError::Config`] from [`Config::load`], or as [`AgentBuilder::build`].
    pub async fn from_file(path: &Path) -> Result<Self, AgentError> {
        let config = Config::load(path)?;
        for w in &config.warnings {
            tracing::warn!("{w}");
        }
        Self::builder().config(config).build().await
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The token cache (token request counts, recent tokens).
    pub fn tokens(&self) -> &TokenCache {
        &self.tokens
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The tenant's local name, checked against the configuration.
    ///
    /// # Errors
    /// [`AgentError::UnknownTenant`] naming the configured tenants.
    pub fn tenant_name(&self, name: &str) -> Result<TenantName, AgentError> {
        match self.config.tenant(name) {
            Some(t) => Ok(t.tenant.name().clone()),
            None => Err(AgentError::UnknownTenant {
                name: name.to_owned(),
                known: self.config.tenants.iter().map(|t| t.tenant.name().to_string()).collect::<Vec<_>>().join(", "),
            }),
        }
    }

    /// Stores events durably for a tenant; duplicates are reported, not errors.
    ///
    /// # Errors
    /// [`AgentError::UnknownTenant`]; [`AgentError::Backpressure`] when the outbox is at its
    /// limits ([`Agent::backpressure`]); or the outbox's error. In each case nothing was stored.
    pub async fn enqueue(&self, tenant: &str, events: &[EncodedEvent]) -> Result<EnqueueReport, AgentError> {
        let name = self.tenant_name(tenant)?;
        self.store(&name, events, None).await
    }

    /// The one way events enter the outbox: refused while it pushes back, else committed and
    /// counted. `failpoint` names the test-only failpoint just before the commit.
    async fn store(
        &self,
        name: &TenantName,
        events: &[EncodedEvent],
        failpoint: Option<&str>,
    ) -> Result<EnqueueReport, AgentError> {
        if let Some(pressure) = self.backpressure().await? {
            return Err(pressure.into());
        }
        if let Some(point) = failpoint {
            crate::ingest::failpoint(point);
        }
        let report = self.outbox.enqueue(name, events).await?;
        self.pending.add(report.stored as u64);
        self.metrics.enqueued(name.as_str(), report.stored as u64);
        Ok(report)
    }

    /// Why the outbox takes no new events now (`[storage] max_pending_events`, and for SQLite
    /// `min_free_disk_mb`), or `None` when it does. The count of pending events is read at
    /// most once a second.
    ///
    /// # Errors
    /// The outbox's error counting pending events; [`AgentError::Outbox`] when the free space
    /// of the outbox's disk cannot be read.
    pub async fn backpressure(&self) -> Result<Option<Pressure>, AgentError> {
        let pressure = self.check_pressure().await?;
        self.metrics.backpressure(pressure.as_ref());
        self.pending.pushing_back(pressure.clone());
        Ok(pressure)
    }

    async fn check_pressure(&self) -> Result<Option<Pressure>, AgentError> {
        let storage = &self.config.storage;
        if storage.min_free_disk > 0 {
            if let Some(free) = storage.location.disk_available() {
                let free = free.map_err(|e| {
                    OutboxError::Storage(
                        billsync_domain::StorageFailure::new(format!(
                            "reading the free space of the disk of {}",
                            storage.location
                        ))
                        .with_source(e),
                    )
                })?;
                if free < storage.min_free_disk {
                    return Ok(Some(Pressure::DiskLow {
                        location: storage.location.to_string(),
                        free_mib: free / (1024 * 1024),
                        floor_mib: storage.min_free_disk / (1024 * 1024),
                    }));
                }
            }
        }
        let Some(max) = storage.max_pending_events else { return Ok(None) };
        let pending = match self.pending.fresh() {
            Some(n) => n,
            None => {
                let n = self.pending_total().await?;
                self.pending.set(n);
                n
            }
        };
        Ok((pending >= max).then_some(Pressure::TooManyPending { pending, max }))
    }

    /// Which tenant a request to the ingest may write to: the tenant named in its path, when
    /// `bearer` is that tenant's ingest token, or when the tenant has none (the configuration
    /// allows that on a loopback ingest only). `None` for an unknown tenant, a missing token
    /// or another's: the ingest answers all three alike, so names cannot be probed.
    pub fn authorize_ingest(&self, tenant: &str, bearer: Option<&str>) -> Option<TenantName> {
        let Some(t) = self.config.tenant(tenant) else {
            // Spend the comparison an existing tenant would, so a miss is not faster.
            let _ = crate::ingest::IngestToken::new("").matches(bearer.unwrap_or_default());
            return None;
        };
        let allowed = match (&t.ingest_token, bearer) {
            (None, _) => true,
            (Some(token), Some(presented)) => token.matches(presented),
            (Some(_), None) => false,
        };
        allowed.then(|| t.tenant.name().clone())
    }

    /// Stores events that the ingest received for a tenant, as [`Agent::enqueue`] does, and
    /// counts them by result in `billsync_ingest_events_total`. The answer comes once they
    /// are committed; with the outbox's other writers, they share its group commit.
    ///
    /// # Errors
    /// As [`Agent::enqueue`].
    pub async fn ingest(&self, tenant: &TenantName, events: &[EncodedEvent]) -> Result<EnqueueReport, AgentError> {
        let stored = self.store(tenant, events, Some("ingest_before_commit")).await;
        let (name, n) = (tenant.as_str(), events.len() as u64);
        match &stored {
            Ok(report) => {
                self.metrics.ingested(name, "stored", report.stored as u64);
                self.metrics.ingested(name, "duplicate", report.duplicates.len() as u64);
            }
            Err(AgentError::Backpressure(_)) => self.metrics.ingested(name, "backpressure", n),
            Err(_) => self.metrics.ingested(name, "failed", n),
        }
        stored
    }

    /// Delivers everything deliverable now, then returns what happened per tenant.
    pub async fn sync_once(&self) -> Vec<TenantReport> {
        let reports = self.engine.sync_once().await;
        self.refresh_gauges().await;
        self.save_state().await;
        reports
    }

    /// Saves what this agent knows of each tenant it worked on (blocked reason, last error,
    /// token expiry) in the outbox, so that `billsync status` in another process shows it.
    pub async fn save_state(&self) {
        for r in self.engine.reports().into_iter().filter(TenantReport::touched) {
            let (Ok(name), Ok(json)) = (TenantName::parse(r.name.clone()), serde_json::to_string(&r)) else { continue };
            if let Err(e) = self.outbox.save_tenant_state(&name, &json).await {
                tracing::warn!(tenant = %name, error = %crate::error_chain(&e), "could not save the tenant's state");
            }
        }
    }

    /// Runs the agent until `shutdown` resolves: the engine delivers, and beside it the
    /// outbox's delivered events older than `[storage] retention` (and facts older than
    /// `[reconcile] keep_days`) are compacted every hour, each tenant this agent holds is
    /// reconciled every `[reconcile] every_seconds`, and what the agent knows of each tenant is
    /// saved every 5 seconds (for `status` in another process), and once more at the end.
    pub async fn run_until(&self, shutdown: impl std::future::Future<Output = ()>) {
        let stop = tokio_util::sync::CancellationToken::new();
        // Housekeeping stops between its steps, never in the middle of one.
        let housekeeping = async {
            let mut compact = tokio::time::interval(Duration::from_secs(3600));
            let mut save = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = compact.tick() => {
                        if let Err(e) = self.compact().await {
                            tracing::warn!(error = %crate::error_chain(&e), "compaction failed");
                        }
                    }
                    _ = save.tick() => self.save_state().await,
                }
            }
        };
        let engine = async {
            self.engine.run_until(shutdown).await;
            stop.cancel();
        };
        let reconcile = async {
            let Some(every) = self.config.reconcile.every else { return };
            let schedule = Schedule {
                every,
                opts: ReconcileOptions {
                    repair: self.config.reconcile.repair,
                    share: Some(self.config.reconcile.share),
                    ..ReconcileOptions::default()
                },
                claim_ttl: self.engine.claim_ttl(),
                metrics: &self.metrics,
            };
            let tenants: Vec<Tenant> = self.config.tenants.iter().map(|t| t.tenant.clone()).collect();
            let reconciler = self.reconciler(Mode::InRun);
            // Stopped between pages or steps: a scratch set left behind is swept at the next begin.
            tokio::select! {
                () = stop.cancelled() => {}
                () = reconciler.on_schedule(&tenants, &schedule) => {}
            }
        };
        tokio::join!(engine, housekeeping, reconcile);
        self.save_state().await;
    }

    /// Removes delivered events older than `[storage] retention` from the outbox; returns how
    /// many were removed. Pending and dead-lettered events are never compacted. The narrow
    /// record reconciliation compares (each event's id, day, meter and quantity) is kept
    /// longer: those of events that occurred more than `[reconcile] keep_days` ago are dropped,
    /// and reconciliation vouches from then on.
    ///
    /// # Errors
    /// The outbox's error.
    pub async fn compact(&self) -> Result<u64, AgentError> {
        let now = self.clock.now();
        let retention = chrono::Duration::from_std(self.config.storage.retention).unwrap_or(chrono::Duration::days(7));
        let removed = self.outbox.compact(now - retention).await?;
        let keep = chrono::Duration::from_std(self.config.reconcile.keep).unwrap_or(chrono::Duration::days(35));
        let trimmed = self.store.trim_facts(now - keep).await?;
        if trimmed > 0 {
            tracing::info!(facts = trimmed, "dropped the record of events older than [reconcile] keep_days");
        }
        Ok(removed)
    }

    /// Events not yet delivered (pending or leased), over every tenant.
    ///
    /// # Errors
    /// The outbox's error.
    pub async fn pending_total(&self) -> Result<u64, AgentError> {
        let mut total = 0;
        for t in &self.config.tenants {
            let c = self.outbox.counts(t.tenant.name()).await?;
            total += c.pending + c.in_flight;
        }
        Ok(total)
    }

    /// The dead-lettered events of one tenant, or of all.
    ///
    /// # Errors
    /// [`AgentError::UnknownTenant`], or the outbox's error.
    pub async fn dead_letters(&self, tenant: Option<&str>) -> Result<Vec<DeadLetterRecord>, AgentError> {
        let tenant = tenant.map(|t| self.tenant_name(t)).transpose()?;
        Ok(self.outbox.dead_letters(tenant).await?)
    }

    /// Returns a tenant's dead-lettered events to pending: those named, or all with `None`.
    /// Returns how many were requeued.
    ///
    /// # Errors
    /// [`AgentError::UnknownTenant`], or the outbox's error.
    pub async fn requeue(&self, tenant: &str, ids: Option<Vec<EventId>>) -> Result<u64, AgentError> {
        let name = self.tenant_name(tenant)?;
        Ok(self.outbox.requeue(&name, ids).await?)
    }

    /// Compares what the platform holds with what this outbox delivered, tenant by tenant and
    /// day by day, and with `repair` sets right what it can (`billsync reconcile`).
    /// `progress` is called after each page read.
    ///
    /// # Errors
    /// [`ReconcileError::UnknownTenant`], [`ReconcileError::Window`] (a window before a
    /// tenant's horizon), [`ReconcileError::Outbox`].
    pub async fn reconcile(
        &self,
        opts: &ReconcileOptions,
        progress: Progress<'_>,
    ) -> Result<Vec<TenantReconciliation>, ReconcileError> {
        let tenants: Vec<Tenant> = match &opts.tenant {
            Some(name) => {
                let name = self.tenant_name(name).map_err(|e| ReconcileError::UnknownTenant(e.to_string()))?;
                self.config.tenants.iter().filter(|t| t.tenant.name() == &name).map(|t| t.tenant.clone()).collect()
            }
            None => self.config.tenants.iter().map(|t| t.tenant.clone()).collect(),
        };
        let reconciler = self.reconciler(Mode::Alone);
        let opts = ReconcileOptions { share: opts.share.or(Some(self.config.reconcile.share)), ..opts.clone() };
        let reports = reconciler.run(&tenants, &opts, progress).await;
        if opts.repair {
            self.refresh_gauges().await;
            self.save_state().await;
        }
        reports
    }

    fn reconciler(&self, mode: Mode) -> Reconciler<'_> {
        Reconciler {
            tokens: &self.tokens,
            reader: &self.reader,
            store: &self.store,
            outbox: &self.outbox,
            engine: &self.engine,
            clock: &self.clock,
            mode,
        }
    }

    /// Gets a token for the tenant and says whether it is billing-ready, and what to change if
    /// not (`billsync doctor`). Nothing is sent to the billing endpoint.
    ///
    /// # Errors
    /// [`AgentError::UnknownTenant`].
    pub async fn diagnose(&self, tenant: &str) -> Result<Option<Diagnosis>, AgentError> {
        let name = self.tenant_name(tenant)?;
        Ok(self.tokens.diagnose(&name).await)
    }

    /// The agent's health (`/healthz`), from what its engine knows of each tenant, and whether
    /// the outbox pushed back when last asked ([`Agent::backpressure`]).
    pub fn health(&self) -> Health {
        let health = Health::of(&self.engine.reports()).with_outbox(self.pending.pressure().as_ref());
        let checks = self.checks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        checks.values().cloned().fold(health, Health::with)
    }

    /// Reports the state of a part the embedding program runs around the agent (the MQTT
    /// ingest's broker connection: `mqtt`), shown by [`Agent::health`] until replaced.
    pub fn report_check(&self, check: Check) {
        let mut checks = self.checks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        checks.insert(check.name.clone(), check);
    }

    /// Updates the pending, token and state gauges of the metrics.
    pub async fn refresh_gauges(&self) {
        for r in self.engine.reports() {
            let (state, _) = r.state();
            let reason = r.blocked.as_ref().map(|b| b.codes().join(","));
            self.metrics.tenant_state(&r.name, state, reason.as_deref());
        }
        for t in &self.config.tenants {
            let name = t.tenant.name();
            if let Ok(c) = self.outbox.counts(name).await {
                self.metrics.pending(name.as_str(), c.pending + c.in_flight);
            }
            self.metrics.token_requests(name.as_str(), self.tokens.token_requests(name));
        }
    }

    /// Counts and state per tenant, in configuration order.
    ///
    /// # Errors
    /// The outbox's error.
    pub async fn status(&self) -> Result<Vec<TenantStatus>, AgentError> {
        let reports = self.engine.reports();
        let mut out = Vec::new();
        for t in &self.config.tenants {
            let name = t.tenant.name();
            let c: TenantCounts = self.outbox.counts(name).await?;
            let here = reports.iter().find(|r| r.name == name.as_str() && r.touched()).cloned();
            let r = match here {
                Some(r) => Some(r),
                // Another process (a `sync`, or the `run` agent) may have saved what it knows.
                None => self
                    .outbox
                    .tenant_state(name)
                    .await?
                    .and_then(|json| serde_json::from_str::<TenantReport>(&json).ok()),
            };
            let r = r.as_ref();
            let (state, reason) = r.map_or((TenantState::Ok, None), TenantReport::state);
            out.push(TenantStatus {
                state,
                reason,
                name: name.to_string(),
                pending: c.pending,
                in_flight: c.in_flight,
                delivered: c.delivered,
                dead_lettered: c.dead_lettered,
                blocked: r.and_then(|r| r.blocked.clone()),
                last_error: r.and_then(|r| r.last_error.clone()),
                token_expires_at: r.and_then(|r| r.token_expires_at),
                oldest_pending: c.oldest_pending,
                last_reconcile: self.reconciler(Mode::Alone).load_last(name).await,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod token_issuer_tests {
    use super::*;

    #[test]
    fn platform_token_issuer_reaches_the_token_cache() {
        let text = "[platform]\nbase_url = \"https://iot.example.com\"\ntoken_issuer = \"https://idcs.example.com\"\n";
        let config = Config::parse(text, Path::new("billsync.toml")).unwrap();
        let clock: Arc<dyn Clock> = Arc::new(billsync_domain::SystemClock);
        let cache = token_cache(&config, &HttpSettings::default(), clock).unwrap();
        assert_eq!(cache.client().config().token_issuer(), Some("https://idcs.example.com"));
    }
}
