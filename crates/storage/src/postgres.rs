//! The PostgreSQL adapter: one database shared by a fleet of agents.
//!
//! An event's row is written once; where it stands is which narrow table holds its seq
//! (`pending`, `delivered`, `dead`), as in the SQLite adapter. A lease is one row of `leases`
//! carrying its events' seqs and ids and the claim generation it was taken under; its events
//! stay pending, and the next lease of the tenant skips those its live leases hold. Leases of
//! one tenant take turns on a transaction-scoped advisory lock, so concurrent leasers never
//! share an event; a tenant is owned through its fenced claim, not through row locks on its
//! events. Enqueues go through a writer task that coalesces concurrent calls into one
//! statement (group commit), like the SQLite adapter; the other operations run directly on
//! the pool, each one statement or one short transaction.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use billsync_domain::{
    Claim, ClaimOutcome, Clock, DeadLetter, DeadLetterRecord, EncodedEvent, EnqueueReport, EventId, Holder, Lease,
    Outbox, OutboxError, StorageFailure, TenantCounts, TenantName,
};
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, Row as _};
use tokio::sync::{mpsc, oneshot};

use crate::common::{EnqueuePlan, Row, count, counts_from, event_id, from_ms, leased, limit, span_ms, to_ms};
use crate::error::{Chain, During as _, StoreError, redact_url};
use crate::reconcile::{LedgerFact, ledger_facts};

mod tls;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Most enqueue calls coalesced into one statement.
const MAX_GROUP_CALLS: usize = 1024;
/// Most events in one coalesced statement.
const MAX_GROUP_EVENTS: usize = 20_000;
/// Most delivered rows deleted in one statement by `compact`.
const COMPACT_CHUNK: i64 = 5_000;
/// Room in the writer's queue before callers wait.
const QUEUE_DEPTH: usize = 4_096;
/// Tries of an enqueue that lost a deadlock against another agent enqueueing the same ids.
const ENQUEUE_TRIES: usize = 3;

/// The durable outbox in a PostgreSQL database, shared by a fleet of agents.
pub struct PostgresOutbox {
    target: String,
    clock: Arc<dyn Clock>,
    pool: PgPool,
    writer: mpsc::Sender<Request>,
}

impl fmt::Debug for PostgresOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOutbox")
            .field("target", &self.target)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl PostgresOutbox {
    /// Connects to the database at `url` (`postgres://user@host:port/db`) and brings its
    /// schema up to date (concurrent agents migrate one at a time).
    ///
    /// # Errors
    /// [`OutboxError::SchemaTooNew`] when a newer billsync wrote the database (nothing is
    /// changed then); [`OutboxError::Storage`] when the URL is invalid or the server cannot
    /// be reached (the message names the server, never the password).
    pub async fn connect(url: &str, clock: Arc<dyn Clock>) -> Result<Self, OutboxError> {
        Ok(Self::try_connect(url, clock).await?)
    }

    async fn try_connect(url: &str, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::UnreadableUrl { url: redact_url(url), source: e })?;
        let (options, warning) = tls::secure(options, url, |key| std::env::var(key).ok())?;
        let target = format!(
            "postgres://{}@{}:{}/{}",
            options.get_username(),
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default()
        );
        if let Some(warning) = warning {
            tracing::warn!("{warning}");
        }
        // One connection first, so that an unreachable server fails at once and clearly
        // rather than after the pool's retries.
        let probe = PgConnection::connect_with(&options)
            .await
            .map_err(|e| StoreError::Connect { target: target.clone(), source: e })?;
        probe.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Connect { target: target.clone(), source: e })?;
        migrate(&pool).await?;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(writer_loop(pool.clone(), rx, Arc::clone(&clock)));
        Ok(Self { target, clock, pool, writer: tx })
    }

    fn now_ms(&self) -> i64 {
        to_ms(self.clock.now())
    }
}

/// The database's clock, in milliseconds since the epoch: claims are dated and judged by it,
/// never by an agent's clock.
/// The fence of a settle, as the first part of a `WITH`: one row when the lease was taken
/// without a claim (the generation parameter is NULL) or under the tenant's current
/// generation; none once a later holder has the tenant. The claim row is held shared until the
/// statement commits, so a takeover waits for a settle in progress and no settle follows it.
macro_rules! fence_at {
    ($generation:literal) => {
        concat!(
            "WITH claim AS (SELECT generation FROM tenant_claims WHERE tenant = $1 FOR SHARE), \
             fence AS (SELECT 1 WHERE ",
            $generation,
            "::bigint IS NULL OR EXISTS (SELECT 1 FROM claim WHERE generation = ",
            $generation,
            "::bigint)), "
        )
    };
}

/// [`fence_at!`] with the generation as the fourth parameter.
macro_rules! fence {
    () => {
        fence_at!("$4")
    };
}

/// The events a lease (its id the given parameter, of tenant `$1`) holds, as `held(seq, id,
/// ord)` in the lease's order: the first part of a settle after its fence.
macro_rules! held_by {
    ($lease:literal) => {
        concat!(
            "lease AS (SELECT seqs, ids FROM leases WHERE lease_id = ",
            $lease,
            " AND tenant = $1), \
             held AS (SELECT h.seq, h.id, h.ord FROM lease, \
                      unnest(lease.seqs, lease.ids) WITH ORDINALITY AS h(seq, id, ord)), "
        )
    };
}

/// The end of a settle: the lease (see [`held_by!`]) gives up the events `settled` names, and
/// is dropped once it holds none. A dead-lettered event thus leaves its lease at once, so that
/// a requeue makes it leasable while the rest of the lease is still out. An ack of a whole
/// lease, the common case, deletes its one row.
macro_rules! prune {
    ($lease:literal) => {
        concat!(
            "kept AS (SELECT seq, id, ord FROM held WHERE seq NOT IN (SELECT seq FROM settled)), \
             dropped AS (DELETE FROM leases WHERE lease_id = ",
            $lease,
            " AND EXISTS (SELECT 1 FROM fence) AND NOT EXISTS (SELECT 1 FROM kept)), \
             trimmed AS (UPDATE leases SET seqs = ARRAY(SELECT seq FROM kept ORDER BY ord), \
                         ids = ARRAY(SELECT id FROM kept ORDER BY ord) WHERE lease_id = ",
            $lease,
            " AND EXISTS (SELECT 1 FROM fence) AND EXISTS (SELECT 1 FROM kept) \
              AND (SELECT count(*) FROM kept) < cardinality(seqs)) "
        )
    };
}

/// A lease: the tenant's (`$1`) first `$5` pending events due at `$2` that no live lease holds,
/// in queue order, recorded as lease `$3` expiring at `$4` under generation `$6`. Lapsed leases
/// of the tenant are dropped on the way (they hold nothing already). Run under the tenant's
/// advisory lock, so no other lease of the tenant runs between its snapshot and its commit.
///
/// The events are read one primary-key lookup each (`LATERAL ... LIMIT 1`, which the planner
/// cannot turn into a join): with everything cached, a plain join was planned as a hash join
/// over the whole `events` table below a few hundred thousand rows, 10 ms a lease at 50,000
/// instead of 2.
const LEASE: &str = "WITH lapsed AS (DELETE FROM leases WHERE tenant = $1 AND expires_at <= $2), \
     held AS (SELECT unnest(seqs) AS seq FROM leases WHERE tenant = $1 AND expires_at > $2), \
     picked AS (SELECT p.seq, p.due_at FROM pending AS p WHERE p.tenant = $1 AND p.due_at <= $2 \
                AND p.seq NOT IN (SELECT seq FROM held) ORDER BY p.due_at, p.seq LIMIT $5), \
     got AS (SELECT k.seq, k.due_at, e.event_id, e.body FROM picked AS k CROSS JOIN LATERAL \
             (SELECT event_id, body FROM events WHERE events.seq = k.seq LIMIT 1) AS e), \
     lease AS (INSERT INTO leases (lease_id, tenant, generation, expires_at, seqs, ids) \
               SELECT $3, $1, $6, $4, array_agg(seq ORDER BY due_at, seq), array_agg(event_id ORDER BY due_at, seq) \
               FROM got HAVING count(*) > 0) \
     SELECT seq, due_at, event_id, body FROM got";

/// How every transaction of billsync begins: the server ends the session of one left idle
/// inside it for 10 s. A transaction of billsync waits on nothing but the database (never on
/// the platform, nor on another task), so only a frozen or cut-off agent (SIGSTOP, a stalled
/// VM, a lost network) idles that long; its transaction (a lease holding the tenant's claim
/// row shared, say) then no longer keeps the fleet from its rows for as long as it stands
/// still. `SET LOCAL`, in `BEGIN`'s round trip, rather than a startup option: PgBouncer refuses
/// those, and the setting ends with the transaction.
const BEGIN_TRANSACTION: &str = "BEGIN; SET LOCAL idle_in_transaction_session_timeout = '10s'";

/// Opens a transaction on the pool (see [`BEGIN_TRANSACTION`]), even when the caller stops
/// waiting (a `select!`, a timeout, an aborted task) while the `BEGIN` is on the wire.
///
/// sqlx 0.8 (and 0.9.0) counts a connection as inside a transaction only once `BEGIN` has
/// answered; a future dropped before then returns the connection to the pool with the
/// transaction open (transact-rs/sqlx#4393), and the next borrower's writes run inside it,
/// uncommitted, holding their locks. On its own task, the `BEGIN` always finishes: a caller
/// that gave up drops the finished transaction, which rolls it back.
async fn begin(pool: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let pool = pool.clone();
    // The task ends only by finishing, or with the runtime (then nothing waits for it).
    tokio::spawn(async move { pool.begin_with(BEGIN_TRANSACTION).await })
        .await
        .map_err(|e| sqlx::Error::Io(std::io::Error::other(e)))?
}

/// A generation as PostgreSQL stores it.
fn gen_i64(generation: u64) -> i64 {
    i64::try_from(generation).unwrap_or(i64::MAX)
}

/// `Ok` when the settle's fence held; [`OutboxError::ClaimLost`] when a later holder has the
/// tenant (and then the settle changed nothing).
fn fence_held(lease: &Lease, held: bool) -> Result<(), OutboxError> {
    match (held, lease.generation) {
        (false, Some(generation)) => Err(OutboxError::ClaimLost { tenant: lease.tenant.clone(), generation }),
        _ => Ok(()),
    }
}

/// (A macro, so that the statements stay literals.)
macro_rules! db_now_ms {
    () => {
        "(extract(epoch from clock_timestamp()) * 1000)::bigint"
    };
}

// After the macros above, which it uses.
mod quarantine;
mod reconcile;

async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    let supported = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    match MIGRATOR.run(pool).await {
        Ok(()) => Ok(()),
        Err(sqlx::migrate::MigrateError::VersionMissing(v)) => {
            let found: Option<i64> =
                sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations").fetch_one(pool).await?;
            Err(StoreError::SchemaTooNew { found: found.unwrap_or(v).max(v), supported })
        }
        Err(e) => Err(e.into()),
    }
}

// ---------------------------------------------------------------- enqueue writer

struct Request {
    tenant: TenantName,
    events: Vec<EncodedEvent>,
    /// The events' ledger records, by position (read by the caller, off the writer).
    facts: Vec<Option<LedgerFact>>,
    reply: oneshot::Sender<Result<EnqueueReport, OutboxError>>,
}

async fn writer_loop(pool: PgPool, mut rx: mpsc::Receiver<Request>, clock: Arc<dyn Clock>) {
    while let Some(first) = rx.recv().await {
        let mut weight = first.events.len();
        let mut group = vec![first];
        while group.len() < MAX_GROUP_CALLS && weight < MAX_GROUP_EVENTS {
            match rx.try_recv() {
                Ok(next) => {
                    weight += next.events.len();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        let now = to_ms(clock.now());
        let calls: Vec<Call<'_>> = group.iter().map(|r| (&r.tenant, &r.events[..], &r.facts[..])).collect();
        let results = match enqueue_calls(&pool, &calls, now).await {
            Ok(reports) => reports.into_iter().map(Ok).collect(),
            Err(e) if group.len() == 1 => {
                vec![Err(e.during(format_args!("enqueue of {} events for tenant {}", weight, group[0].tenant)))]
            }
            Err(e) => {
                tracing::debug!(
                    error = %Chain(&e),
                    calls = group.len(),
                    "coalesced enqueue failed; running calls one by one"
                );
                let mut results = Vec::with_capacity(calls.len());
                for call in &calls {
                    let what = || format!("enqueue of {} events for tenant {}", call.1.len(), call.0);
                    results.push(enqueue_calls(&pool, std::slice::from_ref(call), now).await.during(what()).and_then(
                        |mut r| {
                            r.pop().ok_or_else(|| {
                                OutboxError::Storage(StorageFailure::new(format!("{}: no answer", what())))
                            })
                        },
                    ));
                }
                results
            }
        };
        drop(calls);
        for (request, result) in group.into_iter().zip(results) {
            // A caller that stopped waiting no longer needs the answer.
            let _ = request.reply.send(result);
        }
    }
}

/// One enqueue call: its tenant, events and their ledger facts.
type Call<'a> = (&'a TenantName, &'a [EncodedEvent], &'a [Option<LedgerFact>]);

/// Stores the calls' events and their ledger records in one statement (atomic by itself),
/// retrying deadlocks.
async fn enqueue_calls(pool: &PgPool, calls: &[Call<'_>], now: i64) -> Result<Vec<EnqueueReport>, StoreError> {
    let plan = EnqueuePlan::new(calls.iter().copied());
    let mut tries = 0;
    loop {
        tries += 1;
        match insert_rows(pool, plan.rows(), now).await {
            Ok(inserted) => return Ok(plan.reports(&inserted)),
            Err(e) if tries < ENQUEUE_TRIES && is_retryable(&e) => {
                tracing::debug!(error = %Chain(&e), "enqueue lost a deadlock; trying again");
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_retryable(e: &StoreError) -> bool {
    match e {
        StoreError::Driver(sqlx::Error::Database(db)) => matches!(db.code().as_deref(), Some("40P01" | "40001")),
        _ => false,
    }
}

async fn insert_rows(pool: &PgPool, rows: &[Row<'_>], now: i64) -> Result<HashSet<(String, String)>, StoreError> {
    if rows.is_empty() {
        return Ok(HashSet::new());
    }
    let tenants: Vec<&str> = rows.iter().map(|r| r.tenant).collect();
    let ids: Vec<&str> = rows.iter().map(|r| r.event_id).collect();
    let bodies: Vec<&str> = rows.iter().map(|r| r.body).collect();
    // The ledger's columns, NULL for an event without a fact (then it gets no record).
    let occurred: Vec<Option<i64>> = rows.iter().map(|r| r.fact.map(|f| f.occurred_at)).collect();
    let meters: Vec<Option<&str>> = rows.iter().map(|r| r.fact.map(|f| f.meter.as_str())).collect();
    let units: Vec<Option<&str>> = rows.iter().map(|r| r.fact.map(|f| f.unit.as_str())).collect();
    let quantities: Vec<Option<&str>> = rows.iter().map(|r| r.fact.map(|f| f.quantity.as_str())).collect();
    // The pending rows and ledger records of exactly the events this statement stored (`ins`),
    // in the same statement. A ledger record already there (the event was compacted, and is
    // enqueued again) is kept.
    let returned = sqlx::query(
        "WITH ins AS (INSERT INTO events (tenant, event_id, body, enqueued_at) \
             SELECT u.tenant, u.event_id, u.body, $4 \
             FROM UNNEST($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS u(tenant, event_id, body, ord) \
             ORDER BY u.ord \
             ON CONFLICT (tenant, event_id) DO NOTHING \
             RETURNING seq, tenant, event_id), \
         pend AS (INSERT INTO pending (seq, tenant, due_at, enqueued_at) SELECT seq, tenant, $4, $4 FROM ins), \
         led AS (INSERT INTO ledger (tenant, event_id, occurred_at, meter, unit, quantity) \
             SELECT f.tenant, f.event_id, f.occurred_at, f.meter, f.unit, f.quantity \
             FROM UNNEST($1::text[], $2::text[], $5::bigint[], $6::text[], $7::text[], $8::text[]) \
                  AS f(tenant, event_id, occurred_at, meter, unit, quantity) \
             JOIN ins ON ins.tenant = f.tenant AND ins.event_id = f.event_id \
             WHERE f.occurred_at IS NOT NULL \
             ON CONFLICT (tenant, event_id) DO NOTHING) \
         SELECT tenant, event_id FROM ins",
    )
    .bind(tenants)
    .bind(ids)
    .bind(bodies)
    .bind(now)
    .bind(occurred)
    .bind(meters)
    .bind(units)
    .bind(quantities)
    .fetch_all(pool)
    .await?;
    returned.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
}

fn dead_letter_record(row: &PgRow) -> Result<DeadLetterRecord, StoreError> {
    let tenant: String = row.try_get(0)?;
    let attempts: i32 = row.try_get(4)?;
    Ok(DeadLetterRecord {
        tenant: TenantName::parse(tenant).map_err(|e| StoreError::corrupt("tenant", e))?,
        event_id: event_id(row.try_get(1)?)?,
        code: row.try_get::<Option<String>, _>(2)?.unwrap_or_default(),
        message: row.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
        attempts: u32::try_from(attempts).unwrap_or(0),
        dead_at: from_ms(row.try_get::<Option<i64>, _>(5)?.unwrap_or(0))?,
    })
}

impl PostgresOutbox {
    async fn try_lease(
        &self,
        tenant: &TenantName,
        max: usize,
        lease_for: Duration,
        generation: Option<u64>,
    ) -> Result<Option<Lease>, StoreError> {
        let now = self.now_ms();
        let mut tx = begin(&self.pool).await?;
        // Leases of the tenant take turns, and the claim row is held shared until commit: a
        // takeover (FOR UPDATE) waits for this lease, and a lease after a takeover sees the
        // new generation. Both locks are held before the lease's statement takes its snapshot.
        let current: Option<i64> = sqlx::query_scalar(
            "SELECT (SELECT generation FROM tenant_claims WHERE tenant = $1 FOR SHARE) \
             FROM (SELECT pg_advisory_xact_lock(hashtextextended($1, 0))) AS turn",
        )
        .bind(tenant.as_str())
        .fetch_one(&mut *tx)
        .await?;
        if let Some(generation) = generation {
            if current != Some(gen_i64(generation)) {
                tx.rollback().await?;
                return Err(StoreError::ClaimLost { tenant: tenant.clone(), generation });
            }
        }
        let id = uuid::Uuid::now_v7().to_string();
        let expires_at = now.saturating_add(span_ms(lease_for));
        let rows = sqlx::query(LEASE)
            .bind(tenant.as_str())
            .bind(now)
            .bind(&id)
            .bind(expires_at)
            .bind(limit(max))
            .bind(generation.map(gen_i64))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let lease =
            leased(tenant, id, expires_at, rows, |r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))?;
        Ok(lease.map(|l| Lease { generation, ..l }))
    }

    /// Takes, renews or is refused a tenant's claim, judged on the database's clock. A new
    /// holder gets the next generation and returns every lease of the tenant to pending.
    async fn try_claim(&self, tenant: &TenantName, agent: &str, ttl: Duration) -> Result<ClaimOutcome, StoreError> {
        let mut tx = begin(&self.pool).await?;
        // The row exists before it is locked, so that two first claims queue on it.
        sqlx::query(
            "INSERT INTO tenant_claims (tenant, holder, expires_at, generation) VALUES ($1, '', 0, 0) \
             ON CONFLICT (tenant) DO NOTHING",
        )
        .bind(tenant.as_str())
        .execute(&mut *tx)
        .await?;
        // The claim is judged once the row is locked, by the outer query. With `FOR UPDATE` on
        // the query that judges it, PostgreSQL computes the select list before waiting for the
        // lock (and again only if the row was updated meanwhile): a takeover that waited behind
        // a lease or settle holding the row shared (its agent frozen mid-transaction) would see
        // the holder live as of before the wait, and leave it a claim that lapsed meanwhile.
        let row = sqlx::query(concat!(
            "SELECT holder, generation, expires_at, expires_at > ",
            db_now_ms!(),
            " FROM (SELECT holder, generation, expires_at FROM tenant_claims WHERE tenant = $1 FOR UPDATE) AS locked"
        ))
        .bind(tenant.as_str())
        .fetch_one(&mut *tx)
        .await?;
        let (holder, held, expires_at, live): (String, i64, i64, bool) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
        if holder != agent && live {
            tx.rollback().await?;
            return Ok(ClaimOutcome::HeldBy(Holder { agent: holder, heartbeat: Some(expires_at) }));
        }
        let new_holder = holder != agent;
        let generation = if new_holder { held.saturating_add(1) } else { held };
        if new_holder {
            // Whoever held the tenant before is gone: its leases hold nothing any more.
            sqlx::query("DELETE FROM leases WHERE tenant = $1").bind(tenant.as_str()).execute(&mut *tx).await?;
        }
        sqlx::query(concat!(
            "UPDATE tenant_claims SET holder = $2, expires_at = ",
            db_now_ms!(),
            " + $3, generation = $4 WHERE tenant = $1"
        ))
        .bind(tenant.as_str())
        .bind(agent)
        .bind(span_ms(ttl))
        .bind(generation)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ClaimOutcome::Claimed(Claim { tenant: tenant.clone(), generation: u64::try_from(generation).unwrap_or(0) }))
    }

    async fn try_counts(&self, tenant: &TenantName) -> Result<TenantCounts, StoreError> {
        // Delivered events are those stored, neither pending nor dead: no index of its own.
        let row = sqlx::query(
            "WITH held AS (SELECT DISTINCT unnest(seqs) AS seq FROM leases WHERE tenant = $1 AND expires_at > $2), \
             n AS (SELECT (SELECT count(*) FROM pending WHERE tenant = $1) AS pending, \
                          (SELECT count(*) FROM dead WHERE tenant = $1) AS dead, \
                          (SELECT count(*) FROM events WHERE tenant = $1) AS stored) \
             SELECT \
             (SELECT count(*) FROM pending WHERE tenant = $1 AND seq NOT IN (SELECT seq FROM held)), \
             (SELECT count(*) FROM pending WHERE tenant = $1 AND seq IN (SELECT seq FROM held)), \
             0::bigint, \
             (SELECT stored - pending - dead FROM n), \
             (SELECT dead FROM n), \
             (SELECT min(enqueued_at) FROM pending WHERE tenant = $1 AND seq NOT IN (SELECT seq FROM held)), \
             NULL::bigint, \
             (SELECT min(due_at) FROM pending WHERE tenant = $1 AND due_at > $2)",
        )
        .bind(tenant.as_str())
        .bind(self.now_ms())
        .fetch_one(&self.pool)
        .await?;
        counts_from(|i| row.try_get::<Option<i64>, _>(i))
    }

    async fn try_dead_letters(&self, tenant: Option<TenantName>) -> Result<Vec<DeadLetterRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.tenant, e.event_id, d.code, d.message, e.attempts, d.dead_at \
             FROM dead AS d JOIN events AS e ON e.seq = d.seq \
             WHERE $1::text IS NULL OR d.tenant = $1 ORDER BY d.dead_at, d.seq",
        )
        .bind(tenant.as_ref().map(TenantName::as_str))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(dead_letter_record).collect()
    }

    async fn try_compact(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            // Each chunk is its own short transaction, oldest deliveries first; inserts never
            // wait on it, and a requeue of a delivered event in flight is skipped, not waited for.
            let n = sqlx::query(
                "WITH chunk AS (SELECT seq FROM delivered WHERE delivered_at < $1 \
                                ORDER BY delivered_at, seq LIMIT $2 FOR UPDATE SKIP LOCKED), \
                 gone AS (DELETE FROM delivered WHERE seq IN (SELECT seq FROM chunk)) \
                 DELETE FROM events WHERE seq IN (SELECT seq FROM chunk)",
            )
            .bind(to_ms(before))
            .bind(COMPACT_CHUNK)
            .execute(&self.pool)
            .await?
            .rows_affected();
            total += n;
            if n < count(COMPACT_CHUNK) {
                return Ok(total);
            }
        }
    }
}

#[async_trait]
impl Outbox for PostgresOutbox {
    async fn enqueue(&self, tenant: &TenantName, events: &[EncodedEvent]) -> Result<EnqueueReport, OutboxError> {
        if events.is_empty() {
            return Ok(EnqueueReport::default());
        }
        let (reply, answer) = oneshot::channel();
        // The ledger facts are read here, on the caller's task, not on the writer's.
        let facts = ledger_facts(tenant, events);
        let request = Request { tenant: tenant.clone(), events: events.to_vec(), facts, reply };
        self.writer.send(request).await.map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    async fn lease(&self, tenant: &TenantName, max: usize, lease_for: Duration) -> Result<Option<Lease>, OutboxError> {
        if max == 0 {
            return Ok(None);
        }
        self.try_lease(tenant, max, lease_for, None)
            .await
            .during(format_args!("lease of up to {max} events of tenant {tenant}"))
    }

    async fn lease_claimed(
        &self,
        claim: &Claim,
        max: usize,
        lease_for: Duration,
    ) -> Result<Option<Lease>, OutboxError> {
        if max == 0 {
            return Ok(None);
        }
        self.try_lease(&claim.tenant, max, lease_for, Some(claim.generation))
            .await
            .during(format_args!("lease of up to {max} events of tenant {}", claim.tenant))
    }

    async fn ack(&self, lease: &Lease, delivered: &[EventId]) -> Result<(), OutboxError> {
        if delivered.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = delivered.iter().map(EventId::as_str).collect();
        let fenced = sqlx::query_scalar::<_, bool>(concat!(
            fence!(),
            held_by!("$5"),
            // The acked events the lease holds, and (when it lapsed and another lease took
            // them) those it no longer holds, found by id.
            // (`IN (SELECT unnest(..))`, a hash: `= ANY($3)` compares every pair in a generic
            // plan, 3.5 ms for 500.)
            "settled AS (SELECT seq FROM held WHERE id IN (SELECT unnest($3::text[])) \
                         UNION SELECT e.seq FROM unnest($3::text[]) AS a(id) \
                         JOIN events AS e ON e.tenant = $1 AND e.event_id = a.id \
                         WHERE a.id NOT IN (SELECT id FROM held)), \
             gone AS (DELETE FROM pending AS p USING settled AS s WHERE p.seq = s.seq \
                      AND EXISTS (SELECT 1 FROM fence) RETURNING p.seq), \
             done AS (INSERT INTO delivered (seq, delivered_at) SELECT seq, $2 FROM gone), ",
            prune!("$5"),
            "SELECT EXISTS (SELECT 1 FROM fence)"
        ))
        .bind(lease.tenant.as_str())
        .bind(self.now_ms())
        .bind(ids)
        .bind(lease.generation.map(gen_i64))
        .bind(lease.id.as_str())
        .fetch_one(&self.pool)
        .await
        .during(format_args!("ack of {} events of tenant {}", delivered.len(), lease.tenant))?;
        fence_held(lease, fenced)
    }

    async fn nack(&self, lease: &Lease, retry_at: DateTime<Utc>) -> Result<(), OutboxError> {
        // Only while the lease still exists: once it lapsed and another lease took its events,
        // that one (not this nack) decides their fate.
        let fenced = sqlx::query_scalar::<_, bool>(concat!(
            fence!(),
            "lease AS (SELECT seqs FROM leases WHERE lease_id = $2 AND tenant = $1), \
             retried AS (UPDATE pending SET due_at = $3 WHERE seq IN (SELECT unnest(seqs) FROM lease) \
                         AND EXISTS (SELECT 1 FROM fence) RETURNING seq), \
             counted AS (UPDATE events SET attempts = attempts + 1 WHERE seq IN (SELECT seq FROM retried)), \
             dropped AS (DELETE FROM leases WHERE lease_id = $2 AND EXISTS (SELECT 1 FROM fence)) \
             SELECT EXISTS (SELECT 1 FROM fence)"
        ))
        .bind(lease.tenant.as_str())
        .bind(lease.id.as_str())
        .bind(to_ms(retry_at))
        .bind(lease.generation.map(gen_i64))
        .fetch_one(&self.pool)
        .await
        .during(format_args!("nack of lease {} of tenant {}", lease.id.as_str(), lease.tenant))?;
        fence_held(lease, fenced)
    }

    async fn dead_letter(&self, lease: &Lease, items: &[DeadLetter]) -> Result<(), OutboxError> {
        if items.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = items.iter().map(|d| d.event_id.as_str()).collect();
        let codes: Vec<&str> = items.iter().map(|d| d.code.as_str()).collect();
        let messages: Vec<&str> = items.iter().map(|d| d.message.as_str()).collect();
        let fenced = sqlx::query_scalar::<_, bool>(concat!(
            fence_at!("$6"),
            held_by!("$7"),
            // Found by id, whether or not the lease still holds them (as an ack does).
            "items AS (SELECT DISTINCT ON (e.seq) e.seq, d.code, d.message \
                       FROM UNNEST($2::text[], $3::text[], $4::text[]) AS d(event_id, code, message) \
                       JOIN events AS e ON e.tenant = $1 AND e.event_id = d.event_id), \
             settled AS (SELECT seq FROM items), \
             gone AS (DELETE FROM pending AS p USING items AS i WHERE p.seq = i.seq \
                      AND EXISTS (SELECT 1 FROM fence) RETURNING p.seq), \
             buried AS (INSERT INTO dead (seq, tenant, dead_at, code, message) \
                        SELECT i.seq, $1, $5, i.code, i.message FROM items AS i JOIN gone AS g ON g.seq = i.seq), \
             counted AS (UPDATE events SET attempts = attempts + 1 WHERE seq IN (SELECT seq FROM gone)), ",
            prune!("$7"),
            "SELECT EXISTS (SELECT 1 FROM fence)"
        ))
        .bind(lease.tenant.as_str())
        .bind(ids)
        .bind(codes)
        .bind(messages)
        .bind(self.now_ms())
        .bind(lease.generation.map(gen_i64))
        .bind(lease.id.as_str())
        .fetch_one(&self.pool)
        .await
        .during(format_args!("dead letter of {} events of tenant {}", items.len(), lease.tenant))?;
        fence_held(lease, fenced)
    }

    async fn requeue(&self, tenant: &TenantName, ids: Option<Vec<EventId>>) -> Result<u64, OutboxError> {
        let ids: Option<Vec<String>> = ids.map(|ids| ids.into_iter().map(String::from).collect());
        let done: i64 = sqlx::query_scalar(
            "WITH moved AS (DELETE FROM dead WHERE tenant = $1 AND ($3::text[] IS NULL OR seq IN \
                            (SELECT seq FROM events WHERE tenant = $1 AND event_id = ANY($3))) RETURNING seq), \
             back AS (INSERT INTO pending (seq, tenant, due_at, enqueued_at) \
                      SELECT m.seq, $1, $2, e.enqueued_at FROM moved AS m JOIN events AS e ON e.seq = m.seq \
                      RETURNING 1) \
             SELECT count(*) FROM back",
        )
        .bind(tenant.as_str())
        .bind(self.now_ms())
        .bind(ids)
        .fetch_one(&self.pool)
        .await
        .during(format_args!("requeue of dead letters of tenant {tenant}"))?;
        Ok(count(done))
    }

    async fn counts(&self, tenant: &TenantName) -> Result<TenantCounts, OutboxError> {
        self.try_counts(tenant).await.during(format_args!("counts of tenant {tenant}"))
    }

    async fn dead_letters(&self, tenant: Option<TenantName>) -> Result<Vec<DeadLetterRecord>, OutboxError> {
        self.try_dead_letters(tenant).await.during("listing dead letters")
    }

    async fn compact(&self, before: DateTime<Utc>) -> Result<u64, OutboxError> {
        self.try_compact(before).await.during("compaction of delivered events")
    }

    async fn claim_tenant(&self, tenant: &TenantName, agent: &str, ttl: Duration) -> Result<ClaimOutcome, OutboxError> {
        self.try_claim(tenant, agent, ttl).await.during(format_args!("claim of tenant {tenant}"))
    }

    async fn save_tenant_state(&self, tenant: &TenantName, state: &str) -> Result<(), OutboxError> {
        sqlx::query(
            "INSERT INTO tenant_state (tenant, state, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant) DO UPDATE SET state = EXCLUDED.state, updated_at = EXCLUDED.updated_at",
        )
        .bind(tenant.as_str())
        .bind(state)
        .bind(self.now_ms())
        .execute(&self.pool)
        .await
        .during(format_args!("saving the state of tenant {tenant}"))?;
        Ok(())
    }

    async fn tenant_state(&self, tenant: &TenantName) -> Result<Option<String>, OutboxError> {
        let row = sqlx::query("SELECT state FROM tenant_state WHERE tenant = $1")
            .bind(tenant.as_str())
            .fetch_optional(&self.pool)
            .await
            .during(format_args!("reading the state of tenant {tenant}"))?;
        row.map(|r| r.try_get::<String, _>(0)).transpose().during(format_args!("reading the state of tenant {tenant}"))
    }

    async fn release_tenant(&self, tenant: &TenantName, agent: &str) -> Result<(), OutboxError> {
        // The row stays, expired, so that the next holder's generation is higher.
        sqlx::query("UPDATE tenant_claims SET expires_at = 0 WHERE tenant = $1 AND holder = $2")
            .bind(tenant.as_str())
            .bind(agent)
            .execute(&self.pool)
            .await
            .during(format_args!("release of tenant {tenant}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod schema_version {
    #[test]
    fn the_newest_migration_is_the_published_schema_version() {
        assert_eq!(super::MIGRATOR.iter().map(|m| m.version).max(), Some(crate::POSTGRES_SCHEMA_VERSION));
    }
}
