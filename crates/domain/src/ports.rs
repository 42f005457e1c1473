//! The ports: what the engine needs from the outside world, as object-safe async traits.
//! Adapters are chosen at run time from the configuration, so the engine holds them as
//! `Arc<dyn Outbox>` and friends. Each method's contract is in its docs; adapters MUST keep it.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::batch::BatchBody;
use crate::event::EncodedEvent;
use crate::ids::{EventId, Tenant, TenantName};
use crate::policy::{BillingRequestHeaders, Violations};
use crate::reconcile::{Comparison, Fact, HeldPage, Window};
use crate::response::{BillingResponse, RateLimitStatus};

/// The time, injected so that tests control it.
#[cfg_attr(feature = "mock", mockall::automock)]
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now, in UTC.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to (for tests and simulations).
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    /// A clock showing `t`.
    pub fn new(t: DateTime<Utc>) -> Self {
        Self(Mutex::new(t))
    }
    /// Moves the clock forward.
    pub fn advance(&self, d: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t += chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

// ---------------------------------------------------------------- tokens

/// Why no billing headers could be had for a tenant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token endpoint refused the request (RFC 6749 §5.2): a configuration problem.
    #[error("the token endpoint refused the request: {error}{}", .description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        /// `invalid_client`, `invalid_scope`, ...
        error: String,
        /// The server's `error_description`.
        description: Option<String>,
    },
    /// A token was issued but fails the billing policy: the tenant is blocked until its
    /// configuration (or the platform console) is fixed.
    #[error("the token fails the billing policy: {0}")]
    Policy(Violations),
    /// The token endpoint could not be reached or failed transiently (5xx, timeout).
    #[error("the token endpoint is unavailable: {0}")]
    Unavailable(String),
    /// The token endpoint answered something that is not a token response.
    #[error("the token endpoint's answer is malformed: {0}")]
    Malformed(String),
    /// billsync did not ask: the tenant's credential cannot be used as it is (a client
    /// assertion file that expired or was not rotated, a missing key). Nothing was sent, so
    /// nothing was refused; the tenant waits until the credential is fixed or renewed.
    #[error("the tenant's credential cannot be used ({code}): {reason}")]
    Credential {
        /// `assertion_expired`, `assertion_not_rotated`, `missing_private_key`, ...
        code: String,
        /// What is wrong, in words, naming the file or claim.
        reason: String,
    },
}

impl TokenError {
    /// Whether trying again later may help without a configuration change.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Malformed(_))
    }
}

/// Gets billing request headers for a tenant: a token that passed the billing policy.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait TokenSource: Send + Sync {
    /// Headers for the tenant's next billing request.
    ///
    /// - MUST only return headers whose token passed the billing policy for this tenant's
    ///   `tenant_id` and `application_id` (the type guarantees the policy ran).
    /// - SHOULD return a cached token until its refresh point, then a new one.
    /// - MUST cause at most one token request at a time per tenant (single flight).
    ///
    /// # Errors
    /// [`TokenError`]; [`TokenError::is_transient`] tells whether to retry.
    async fn headers(&self, tenant: &Tenant) -> Result<BillingRequestHeaders, TokenError>;

    /// The platform refused `refused` as an invalid token: drop it so that the next call to
    /// [`TokenSource::headers`] fetches a new one. A no-op if a newer token is already cached.
    async fn invalidate(&self, tenant: &Tenant, refused: &BillingRequestHeaders);
}

// ---------------------------------------------------------------- transport

/// What came back from one billing request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingReply {
    /// Its meaning.
    pub response: BillingResponse,
    /// The `X-RateLimit-*` headers, when present.
    pub rate_limit: Option<RateLimitStatus>,
}

/// Why a billing request got no response at all. All are transient.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// No response in time.
    #[error("the billing endpoint did not answer in time")]
    Timeout,
    /// The connection failed or was dropped.
    #[error("could not reach the billing endpoint: {0}")]
    Connection(String),
}

/// Posts batches of billing events.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait BillingApi: Send + Sync {
    /// Posts one batch with all four required headers and the batch's `Idempotency-Key`.
    ///
    /// - MUST send `Authorization`, `X-Tenant-ID`, `X-Application-ID` and
    ///   `Content-Type: application/json` exactly as `headers` gives them.
    /// - MUST return every HTTP answer as `Ok`, classified; `Err` only when there was none.
    ///
    /// # Errors
    /// [`TransportError`] when no response arrived.
    async fn post_events(
        &self,
        headers: &BillingRequestHeaders,
        body: &BatchBody,
    ) -> Result<BillingReply, TransportError>;
}

/// What came back from one read of the platform's listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListReply {
    /// A page, or why there is none.
    pub answer: ListAnswer,
    /// The `X-RateLimit-*` headers, when present (reads count against the billing limit).
    pub rate_limit: Option<RateLimitStatus>,
}

/// The meaning of a listing answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListAnswer {
    /// `200` with the listing of docs/platform.md §3.
    Page(HeldPage),
    /// Anything else, classified as a billing answer is (`401`, `403`, `429`, `5xx`, ...; a
    /// `200` that is not a listing is [`BillingResponse::Unexpected`]).
    Refused(BillingResponse),
}

/// Reads what the platform holds for a tenant (`GET .../billing/events`), for reconciliation.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait BillingReader: Send + Sync {
    /// One page: events received at or after `since`, after the cursor `after`, at most
    /// `limit` (1 to 1000).
    ///
    /// - MUST send `Authorization`, `X-Tenant-ID` and `X-Application-ID` exactly as `headers`
    ///   gives them (a token with the billing read scope); a GET has no body, so no
    ///   `Content-Type`.
    /// - MUST return every HTTP answer as `Ok`; `Err` only when there was none. A `202`
    ///   receipt is no listing: it comes back as [`BillingResponse::Unexpected`], never as
    ///   `Accepted`.
    ///
    /// # Errors
    /// [`TransportError`] when no response arrived.
    async fn list_events(
        &self,
        headers: &BillingRequestHeaders,
        since: DateTime<Utc>,
        after: u64,
        limit: u32,
    ) -> Result<ListReply, TransportError>;
}

// ---------------------------------------------------------------- outbox

/// Identifies one lease.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct LeaseId(String);

impl LeaseId {
    /// Wraps an adapter-generated id.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }
    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Events leased for delivery: invisible to other leases until acked, nacked, dead-lettered
/// or expired.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The lease.
    pub id: LeaseId,
    /// Whose events.
    pub tenant: TenantName,
    /// The events, in enqueue order.
    pub events: Vec<EncodedEvent>,
    /// When the lease lapses and the events become pending again.
    pub expires_at: DateTime<Utc>,
    /// The claim generation it was taken under ([`Outbox::lease_claimed`]); its ack, nack
    /// and dead letter are refused with [`OutboxError::ClaimLost`] once a later holder has the
    /// tenant. `None`: taken without a claim.
    pub generation: Option<u64>,
}

/// A tenant this agent holds: the right to drain it, one agent at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The tenant.
    pub tenant: TenantName,
    /// Grows with every new holder of the tenant: leases and settles of an earlier generation
    /// belong to a holder that lost the tenant.
    pub generation: u64,
}

/// Another agent that holds a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its id (`<host>-<pid>-<random>`).
    pub agent: String,
    /// `None` when the outbox knows the holder is alive (an OS lock, which its death would
    /// have released). Otherwise a value that changes with each renewal of its claim (a
    /// heartbeat): a holder whose value moves is alive, one whose claim lapses is not.
    pub heartbeat: Option<i64>,
}

impl Holder {
    /// The host part of the agent id, if it has one.
    pub fn host(&self) -> Option<&str> {
        let mut parts = self.agent.rsplitn(3, '-');
        let (_random, _pid, host) = (parts.next()?, parts.next()?, parts.next()?);
        Some(host)
    }
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// This agent holds the tenant now (taken, or renewed).
    Claimed(Claim),
    /// Another agent does.
    HeldBy(Holder),
}

/// The outcome of an enqueue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EnqueueReport {
    /// Newly stored events.
    pub stored: usize,
    /// Events already in the outbox (any state), not stored again.
    pub duplicates: Vec<EventId>,
}

/// An event to dead-letter, with the platform's code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// The event.
    pub event_id: EventId,
    /// The platform's code (`invalid_quantity`).
    pub code: String,
    /// The platform's message.
    pub message: String,
}

/// A dead-lettered event, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetterRecord {
    /// Whose event.
    pub tenant: TenantName,
    /// The event.
    pub event_id: EventId,
    /// The platform's code.
    pub code: String,
    /// The platform's message.
    pub message: String,
    /// Delivery attempts made.
    pub attempts: u32,
    /// When it was dead-lettered.
    pub dead_at: DateTime<Utc>,
}

/// Counts for one tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TenantCounts {
    /// Waiting for delivery (including those backing off).
    pub pending: u64,
    /// Leased right now.
    pub in_flight: u64,
    /// Delivered and not yet compacted.
    pub delivered: u64,
    /// Dead-lettered.
    pub dead_lettered: u64,
    /// Enqueue time of the oldest pending event.
    pub oldest_pending: Option<DateTime<Utc>>,
    /// The earliest time a backing-off pending event may be leased again.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// What went wrong in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboxError {
    /// The database was written by a newer billsync.
    #[error(
        "the outbox was written by a newer billsync (schema version {found}, this one knows up to {supported}); upgrade billsync"
    )]
    SchemaTooNew {
        /// The schema version found.
        found: i64,
        /// The newest this build knows.
        supported: i64,
    },
    /// The disk or database is full: nothing of this call was stored.
    #[error("the outbox is full (disk or database size limit): nothing of this call was stored")]
    Full,
    /// Another agent holds the tenant now (a later claim generation): this agent may no longer
    /// lease or settle its events.
    #[error("the claim on tenant {tenant} (generation {generation}) was lost to another agent")]
    ClaimLost {
        /// The tenant.
        tenant: TenantName,
        /// The generation this agent held.
        generation: u64,
    },
    /// Any other storage failure: what failed (the operation, the file or the server), with
    /// the driver's error as its [`source`](std::error::Error::source). Its `Display` does not
    /// repeat the source's text: print the chain (`{:#}` with `anyhow`, or walk `source()`) to
    /// see why.
    #[error(transparent)]
    Storage(StorageFailure),
}

/// What failed in the outbox's storage, and why: the driver's (or the operating system's)
/// error, kept as the [`source`](std::error::Error::source) so that the chain is not lost.
///
/// `Display` is `outbox storage failed: <what>`, without the source's text, so that a chain
/// printer shows each cause once. Cheap to clone (the source is shared). Two failures are
/// equal when they say the same `what`, whatever their sources.
///
/// ```
/// use std::error::Error as _;
///
/// use billsync_domain::{OutboxError, StorageFailure};
///
/// let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied");
/// let e = OutboxError::Storage(StorageFailure::new("opening /var/lib/billsync/outbox.db").with_source(io));
/// assert_eq!(e.to_string(), "outbox storage failed: opening /var/lib/billsync/outbox.db");
/// assert_eq!(e.source().map(ToString::to_string).as_deref(), Some("permission denied"));
/// ```
#[derive(Debug, Clone)]
pub struct StorageFailure {
    what: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl StorageFailure {
    /// A failure with no underlying error: `what` says it all.
    pub fn new(what: impl Into<String>) -> Self {
        Self { what: what.into(), source: None }
    }

    /// The same failure, caused by `source`.
    #[must_use]
    pub fn with_source(self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.with_shared_source(Arc::new(source))
    }

    /// The same failure, caused by an error already boxed or shared (a
    /// `Box<dyn Error + Send + Sync>` converts with `Arc::from`).
    #[must_use]
    pub fn with_shared_source(self, source: Arc<dyn std::error::Error + Send + Sync + 'static>) -> Self {
        Self { source: Some(source), ..self }
    }

    /// What failed: the operation, the file or the server.
    pub fn what(&self) -> &str {
        &self.what
    }
}

impl fmt::Display for StorageFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "outbox storage failed: {}", self.what)
    }
}

impl std::error::Error for StorageFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl PartialEq for StorageFailure {
    fn eq(&self, other: &Self) -> bool {
        self.what == other.what
    }
}

impl Eq for StorageFailure {}

/// The durable outbox. Every event whose enqueue returned `Ok` is kept until the platform
/// has it (acked) or refused it for good (dead-lettered).
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Outbox: Send + Sync {
    /// Stores events atomically and durably: all or none, on disk when it returns.
    ///
    /// - MUST deduplicate on (tenant, event_id), against stored events and within `events`,
    ///   reporting each duplicate once.
    ///
    /// # Errors
    /// [`OutboxError::Full`] when the disk is full (and then nothing was stored).
    async fn enqueue(&self, tenant: &TenantName, events: &[EncodedEvent]) -> Result<EnqueueReport, OutboxError>;

    /// Leases up to `max` deliverable events of a tenant, oldest first: pending ones whose
    /// next attempt is due, and leased ones whose lease has expired.
    ///
    /// - MUST NOT return an event that is in another unexpired lease.
    /// - Returns `None` when nothing is deliverable now.
    ///
    /// # Errors
    /// [`OutboxError::Storage`].
    async fn lease(&self, tenant: &TenantName, max: usize, lease_for: Duration) -> Result<Option<Lease>, OutboxError>;

    /// Leases as [`Outbox::lease`], under a claim: the lease carries the claim's generation,
    /// and it is refused ([`OutboxError::ClaimLost`]) when the tenant's generation is no
    /// longer the claim's. Every adapter here fences it (SQLite, PostgreSQL and the test kit's
    /// in-memory outbox). The default only stamps the generation on a plain lease: an outbox
    /// that keeps no generations cannot fence, and must not be shared.
    ///
    /// # Errors
    /// [`OutboxError::ClaimLost`], [`OutboxError::Storage`].
    async fn lease_claimed(
        &self,
        claim: &Claim,
        max: usize,
        lease_for: Duration,
    ) -> Result<Option<Lease>, OutboxError> {
        let lease = self.lease(&claim.tenant, max, lease_for).await?;
        Ok(lease.map(|l| Lease { generation: Some(claim.generation), ..l }))
    }

    /// Marks events of the lease's tenant delivered (even if the lease lapsed: the platform
    /// has them either way), unless the lease's generation is stale.
    ///
    /// # Errors
    /// [`OutboxError::ClaimLost`] when the lease's generation is no longer the tenant's;
    /// [`OutboxError::Storage`].
    async fn ack(&self, lease: &Lease, delivered: &[EventId]) -> Result<(), OutboxError>;

    /// Returns the events still held by this lease to pending, with one more attempt counted
    /// and no new attempt before `retry_at`.
    ///
    /// # Errors
    /// [`OutboxError::ClaimLost`] when the lease's generation is no longer the tenant's;
    /// [`OutboxError::Storage`].
    async fn nack(&self, lease: &Lease, retry_at: DateTime<Utc>) -> Result<(), OutboxError>;

    /// Dead-letters events of the lease's tenant with the platform's code and message.
    ///
    /// # Errors
    /// [`OutboxError::ClaimLost`] when the lease's generation is no longer the tenant's;
    /// [`OutboxError::Storage`].
    async fn dead_letter(&self, lease: &Lease, items: &[DeadLetter]) -> Result<(), OutboxError>;

    /// Returns dead-lettered events to pending (all of the tenant's when `ids` is `None`);
    /// says how many.
    ///
    /// # Errors
    /// [`OutboxError::Storage`].
    async fn requeue(&self, tenant: &TenantName, ids: Option<Vec<EventId>>) -> Result<u64, OutboxError>;

    /// Counts for `status`.
    ///
    /// # Errors
    /// [`OutboxError::Storage`].
    async fn counts(&self, tenant: &TenantName) -> Result<TenantCounts, OutboxError>;

    /// Dead-lettered events, of one tenant or all, oldest first.
    ///
    /// # Errors
    /// [`OutboxError::Storage`].
    async fn dead_letters(&self, tenant: Option<TenantName>) -> Result<Vec<DeadLetterRecord>, OutboxError>;

    /// Deletes delivered events delivered before `before`; says how many.
    ///
    /// # Errors
    /// [`OutboxError::Storage`].
    async fn compact(&self, before: DateTime<Utc>) -> Result<u64, OutboxError>;

    /// Claims the right to drain a tenant for `ttl`, or renews it (a heartbeat) when `agent`
    /// already holds it. Agents sharing one outbox drain each tenant one at a time, which
    /// keeps the per-tenant rate limit right across a fleet.
    ///
    /// - MUST answer [`ClaimOutcome::HeldBy`] while another live agent holds the tenant.
    /// - MUST let any agent take a tenant whose holder died (SQLite: at once, through an OS
    ///   lock; PostgreSQL: once its claim expired).
    /// - A new holder gets a higher [`Claim::generation`] and voids the leases of every
    ///   earlier holder: their events are deliverable at once.
    ///
    /// # Errors
    /// [`OutboxError::Storage`].
    async fn claim_tenant(&self, tenant: &TenantName, agent: &str, ttl: Duration) -> Result<ClaimOutcome, OutboxError>;

    /// Records what an agent last knew of a tenant (a small JSON document: why it is blocked,
    /// the last error, when its token expires), so that `status` in another process can show
    /// it. The last writer wins.
    ///
    /// # Errors
    /// [`OutboxError::Storage`].
    async fn save_tenant_state(&self, tenant: &TenantName, state: &str) -> Result<(), OutboxError>;

    /// The document last saved for a tenant, if any.
    ///
    /// # Errors
    /// [`OutboxError::Storage`].
    async fn tenant_state(&self, tenant: &TenantName) -> Result<Option<String>, OutboxError>;

    /// Gives up a claim held by `agent` (a no-op otherwise).
    ///
    /// # Errors
    /// [`OutboxError::Storage`].
    async fn release_tenant(&self, tenant: &TenantName, agent: &str) -> Result<(), OutboxError>;
}

// ---------------------------------------------------------------- reconciliation store

/// Identifies one reconciliation's scratch set of platform events in an outbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunId(String);

impl RunId {
    /// Wraps an adapter-generated id.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }
    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The outbox's side of reconciliation: its narrow record of every event ([`Fact`]: kept
/// after compaction drops a delivered event's payload), a scratch set for the platform's
/// listing in the same database, the comparison as SQL joins, and the two repairs. Memory stays
/// bounded at any size: the listing is streamed in, the comparison streamed out through the
/// domain's accumulators.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait ReconcileStore: Send + Sync {
    /// The first instant from which the outbox holds a [`Fact`] of every event it ever stored
    /// for `tenant` (`None`: from the beginning).
    ///
    /// # Errors
    /// [`OutboxError::Storage`].
    async fn horizon(&self, tenant: &TenantName) -> Result<Option<DateTime<Utc>>, OutboxError>;

    /// Starts a comparison of `tenant` over `window`: an empty scratch set.
    ///
    /// # Errors
    /// [`OutboxError::Storage`].
    async fn begin_reconcile(&self, tenant: &TenantName, window: &Window) -> Result<RunId, OutboxError>;

    /// Adds platform events to the scratch set. Facts outside the window are ignored; an event
    /// id already in the set is kept once.
    ///
    /// # Errors
    /// [`OutboxError::Storage`].
    async fn add_held(&self, run: &RunId, facts: &[Fact]) -> Result<(), OutboxError>;

    /// Compares the outbox's facts inside the window with the scratch set: each kind of
    /// discrepancy (the first `max_ids` ids of each, sorted bytewise, and the exact count) and
    /// both sides' days. The local side of the days is what was delivered (acked) here.
    ///
    /// # Errors
    /// [`OutboxError::Storage`].
    async fn compare(&self, run: &RunId, max_ids: usize) -> Result<Comparison, OutboxError>;

    /// Drops the scratch set (also done for runs older than a day at the next begin).
    ///
    /// # Errors
    /// [`OutboxError::Storage`].
    async fn end_reconcile(&self, run: &RunId) -> Result<(), OutboxError>;

    /// Returns delivered events the platform does not hold to pending, due now, so that they
    /// are sent again (the platform deduplicates); only those whose payload is still kept.
    /// Says how many.
    ///
    /// # Errors
    /// [`OutboxError::ClaimLost`] when `claim` is no longer the tenant's; [`OutboxError::Storage`].
    async fn requeue_delivered(&self, claim: &Claim, ids: &[EventId]) -> Result<u64, OutboxError>;

    /// Settles pending or leased events the platform already holds as delivered, without
    /// sending them (the platform's listing is its word). Says how many.
    ///
    /// # Errors
    /// [`OutboxError::ClaimLost`] when `claim` is no longer the tenant's; [`OutboxError::Storage`].
    async fn settle_held(&self, claim: &Claim, ids: &[EventId]) -> Result<u64, OutboxError>;

    /// Retention of the facts (`[reconcile] keep_days`): drops the facts of every event that
    /// occurred before `before`, in chunks so that writers slip in between, and moves the
    /// horizon of every tenant to `before` (never back). Says how many facts were dropped.
    ///
    /// # Errors
    /// [`OutboxError::Storage`].
    async fn trim_facts(&self, before: DateTime<Utc>) -> Result<u64, OutboxError>;

    /// Records `tenant`'s last reconciliation (a JSON document the caller writes and reads
    /// back; one per tenant, replaced each time), so that `status` in another process shows it.
    ///
    /// # Errors
    /// [`OutboxError::Storage`].
    async fn save_last_reconcile(&self, tenant: &TenantName, result: &str) -> Result<(), OutboxError>;

    /// What [`ReconcileStore::save_last_reconcile`] recorded last for `tenant`.
    ///
    /// # Errors
    /// [`OutboxError::Storage`].
    async fn last_reconcile(&self, tenant: &TenantName) -> Result<Option<String>, OutboxError>;
}

// ---------------------------------------------------------------- quarantine

/// The most bytes of a message's payload a quarantine entry keeps (64 KiB); a longer message
/// keeps its first bytes and its full size.
pub const QUARANTINE_PAYLOAD_MAX: usize = 64 * 1024;

/// A message the ingest took from a broker but could not store as events (unreadable, for an
/// unknown tenant, or holding an invalid event), kept so that it can be looked at, retried
/// after a fix, or purged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quarantined {
    /// The entry's number, given by the outbox (from 1, never reused).
    pub id: i64,
    /// When it was quarantined (the outbox's clock).
    pub received_at: DateTime<Utc>,
    /// Where it came from: the MQTT topic.
    pub topic: String,
    /// Why it was not stored, in plain words (names the line and field of a bad event).
    pub reason: String,
    /// The payload's first [`QUARANTINE_PAYLOAD_MAX`] bytes.
    #[serde(skip)]
    pub payload: Vec<u8>,
    /// The whole payload's size in bytes (more than `payload.len()` when it was cut).
    pub size: u64,
}

impl Quarantined {
    /// Whether the payload was cut to [`QUARANTINE_PAYLOAD_MAX`] bytes.
    pub fn truncated(&self) -> bool {
        self.size > self.payload.len() as u64
    }
}

/// Which quarantine entries a command acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuarantineSelection {
    /// Every entry.
    All,
    /// These entries (unknown numbers are skipped).
    Ids(Vec<i64>),
}

/// The outbox's quarantine of broker messages that could not be stored as events: written by
/// the MQTT ingest just before it acknowledges such a message (so that the broker does not
/// redeliver it forever), read and emptied by `billsync quarantine`.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait QuarantineStore: Send + Sync {
    /// Keeps a message: its topic, its payload (the first [`QUARANTINE_PAYLOAD_MAX`] bytes and
    /// the full size) and the reason, at the clock's time. The same payload on the same topic
    /// is kept once (a broker redelivers a message whose acknowledgement was lost): the second
    /// call returns the first entry's number and changes nothing. Returns the entry's number.
    ///
    /// # Errors
    /// [`OutboxError::Storage`].
    async fn quarantine(&self, topic: &str, payload: &[u8], reason: &str) -> Result<i64, OutboxError>;

    /// The selected entries, oldest first.
    ///
    /// # Errors
    /// [`OutboxError::Storage`].
    async fn quarantined(&self, which: &QuarantineSelection) -> Result<Vec<Quarantined>, OutboxError>;

    /// Replaces an entry's reason (a retry that failed again, for a new reason).
    ///
    /// # Errors
    /// [`OutboxError::Storage`].
    async fn set_quarantine_reason(&self, id: i64, reason: &str) -> Result<(), OutboxError>;

    /// Removes the selected entries; says how many were removed.
    ///
    /// # Errors
    /// [`OutboxError::Storage`].
    async fn purge_quarantined(&self, which: &QuarantineSelection) -> Result<u64, OutboxError>;
}
