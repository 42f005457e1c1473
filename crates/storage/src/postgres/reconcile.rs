//! Reconciliation in a PostgreSQL outbox: the scratch set is two unlogged tables shared by the
//! pool's connections; the comparison runs in one read-only `REPEATABLE READ` transaction (one
//! snapshot for all four of its queries), streaming each query's rows and ordering ids with
//! `COLLATE "C"` (bytewise, whatever the database's collation); the repairs are fenced by the
//! claim's generation as `ack` is. The facts' retention drops chunk by chunk, each its own
//! statement, as `compact` does.

use async_trait::async_trait;
use billsync_domain::{Claim, Comparison, EventId, Fact, OutboxError, ReconcileStore, RunId, TenantName, Window};
use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnection;
use sqlx::{PgPool, Row as _};

use super::{PostgresOutbox, begin, gen_i64};
use crate::common::{count, from_ms, to_ms};
use crate::error::{During as _, StoreError};
use crate::reconcile::{
    HeldAs, HeldRow, REPAIR_CHUNK, RUN_RETENTION_MS, Run, Tally, new_run_id, next_row, stream_comparison, unknown_run,
    window_ms,
};

/// Most platform events one statement adds (a larger call is split).
const HELD_PER_STATEMENT: usize = 10_000;

/// Most facts one statement of the retention drops (each its own short transaction, so that
/// enqueues never wait long on it).
const TRIM_CHUNK: i64 = 5_000;

#[async_trait]
impl ReconcileStore for PostgresOutbox {
    async fn horizon(&self, tenant: &TenantName) -> Result<Option<DateTime<Utc>>, OutboxError> {
        let ms: Result<Option<i64>, _> = sqlx::query_scalar("SELECT value FROM outbox_meta WHERE key = 'ledger_from'")
            .fetch_optional(&self.pool)
            .await;
        ms.map_err(StoreError::from)
            .and_then(|ms| ms.map(from_ms).transpose())
            .during(format_args!("reading the reconciliation horizon of tenant {tenant}"))
    }

    async fn begin_reconcile(&self, tenant: &TenantName, window: &Window) -> Result<RunId, OutboxError> {
        let run = new_run_id();
        self.try_begin(&run, tenant, window)
            .await
            .during(format_args!("beginning a reconciliation of tenant {tenant}"))?;
        Ok(RunId::new(run))
    }

    async fn add_held(&self, run: &RunId, facts: &[Fact]) -> Result<(), OutboxError> {
        for part in facts.chunks(HELD_PER_STATEMENT) {
            add_held(&self.pool, run.as_str(), part).await.during(format_args!(
                "adding {} platform events to reconciliation {}",
                facts.len(),
                run.as_str()
            ))?;
        }
        Ok(())
    }

    async fn compare(&self, run: &RunId, max_ids: usize) -> Result<Comparison, OutboxError> {
        compare(&self.pool, run.as_str(), max_ids)
            .await
            .during(format_args!("comparison of reconciliation {}", run.as_str()))
    }

    async fn end_reconcile(&self, run: &RunId) -> Result<(), OutboxError> {
        end(&self.pool, run.as_str()).await.during(format_args!("ending reconciliation {}", run.as_str()))
    }

    async fn requeue_delivered(&self, claim: &Claim, ids: &[EventId]) -> Result<u64, OutboxError> {
        self.repair(claim, ids, REQUEUE_DELIVERED).await.during(format_args!(
            "requeue of {} delivered events of tenant {}",
            ids.len(),
            claim.tenant
        ))
    }

    async fn settle_held(&self, claim: &Claim, ids: &[EventId]) -> Result<u64, OutboxError> {
        self.repair(claim, ids, SETTLE_HELD).await.during(format_args!(
            "settling {} events of tenant {}",
            ids.len(),
            claim.tenant
        ))
    }

    async fn trim_facts(&self, before: DateTime<Utc>) -> Result<u64, OutboxError> {
        trim_facts(&self.pool, to_ms(before))
            .await
            .during(format_args!("dropping the facts of events that occurred before {before}"))
    }

    async fn save_last_reconcile(&self, tenant: &TenantName, result: &str) -> Result<(), OutboxError> {
        sqlx::query(
            "INSERT INTO reconcile_last (tenant, result, saved_at) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant) DO UPDATE SET result = EXCLUDED.result, saved_at = EXCLUDED.saved_at",
        )
        .bind(tenant.as_str())
        .bind(result)
        .bind(self.now_ms())
        .execute(&self.pool)
        .await
        .during(format_args!("saving the last reconciliation of tenant {tenant}"))?;
        Ok(())
    }

    async fn last_reconcile(&self, tenant: &TenantName) -> Result<Option<String>, OutboxError> {
        let result: Result<Option<String>, _> =
            sqlx::query_scalar("SELECT result FROM reconcile_last WHERE tenant = $1")
                .bind(tenant.as_str())
                .fetch_optional(&self.pool)
                .await;
        result.during(format_args!("reading the last reconciliation of tenant {tenant}"))
    }
}

impl PostgresOutbox {
    /// Records a new run, after dropping the runs (and their scratch rows) older than a day.
    /// The runs go first, each locked as it is deleted: an `add_held` to one of them finishes
    /// first (it holds its run shared), and the next statement's snapshot sees its rows.
    async fn try_begin(&self, run: &str, tenant: &TenantName, window: &Window) -> Result<(), StoreError> {
        let now = self.now_ms();
        let (start, end) = window_ms(window);
        let mut tx = begin(&self.pool).await?;
        let expired: Vec<String> = sqlx::query_scalar("DELETE FROM reconcile_runs WHERE started_at < $1 RETURNING run")
            .bind(now.saturating_sub(RUN_RETENTION_MS))
            .fetch_all(&mut *tx)
            .await?;
        if !expired.is_empty() {
            sqlx::query("DELETE FROM reconcile_held WHERE run = ANY($1)").bind(expired).execute(&mut *tx).await?;
        }
        sqlx::query(
            "INSERT INTO reconcile_runs (run, tenant, window_start, window_end, started_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(run)
        .bind(tenant.as_str())
        .bind(start)
        .bind(end)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Runs a repair statement chunk by chunk, each fenced by the claim: at least once, so that
    /// a stale claim is refused even with no ids.
    async fn repair(&self, claim: &Claim, ids: &[EventId], sql: &'static str) -> Result<u64, StoreError> {
        let mut total = 0;
        let chunks: Vec<&[EventId]> = if ids.is_empty() { vec![&[]] } else { ids.chunks(REPAIR_CHUNK).collect() };
        for chunk in chunks {
            let ids: Vec<&str> = chunk.iter().map(EventId::as_str).collect();
            let row = sqlx::query(sql)
                .bind(claim.tenant.as_str())
                .bind(self.now_ms())
                .bind(ids)
                .bind(gen_i64(claim.generation))
                .fetch_one(&self.pool)
                .await?;
            let (held, n): (bool, i64) = (row.try_get(0)?, row.try_get(1)?);
            if !held {
                return Err(StoreError::ClaimLost { tenant: claim.tenant.clone(), generation: claim.generation });
            }
            total += count(n);
        }
        Ok(total)
    }
}

/// Delivered events back to pending, due now ($2), attempts kept; under the claim ($4).
const REQUEUE_DELIVERED: &str = concat!(
    fence!(),
    "moved AS (DELETE FROM delivered WHERE seq IN (SELECT seq FROM events WHERE tenant = $1 AND event_id = ANY($3)) \
     AND EXISTS (SELECT 1 FROM fence) RETURNING seq), \
     done AS (INSERT INTO pending (seq, tenant, due_at, enqueued_at) \
     SELECT m.seq, $1, $2, e.enqueued_at FROM moved AS m JOIN events AS e ON e.seq = m.seq RETURNING 1) \
     SELECT EXISTS (SELECT 1 FROM fence), (SELECT count(*) FROM done)"
);

/// Pending (leased or not) events settled as delivered now ($2); under the claim ($4). A live
/// lease may still list them: it holds only what is pending, and its ack finds them settled.
const SETTLE_HELD: &str = concat!(
    fence!(),
    "gone AS (DELETE FROM pending WHERE seq IN (SELECT seq FROM events WHERE tenant = $1 AND event_id = ANY($3)) \
     AND EXISTS (SELECT 1 FROM fence) RETURNING seq), \
     done AS (INSERT INTO delivered (seq, delivered_at) SELECT seq, $2 FROM gone RETURNING 1) \
     SELECT EXISTS (SELECT 1 FROM fence), (SELECT count(*) FROM done)"
);

/// Adds the facts inside the run's window to its scratch set (an id already there is kept),
/// in one statement that holds the run shared: an end or expiry waits for it.
async fn add_held(pool: &PgPool, run: &str, facts: &[Fact]) -> Result<(), StoreError> {
    let rows: Vec<HeldRow> = facts.iter().map(HeldRow::of).collect();
    let ids: Vec<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
    let occurred: Vec<i64> = rows.iter().map(|r| r.occurred_at).collect();
    let meters: Vec<&str> = rows.iter().map(|r| r.meter.as_str()).collect();
    let units: Vec<&str> = rows.iter().map(|r| r.unit.as_str()).collect();
    let quantities: Vec<&str> = rows.iter().map(|r| r.quantity.as_str()).collect();
    let known: bool = sqlx::query_scalar(
        "WITH r AS (SELECT run, window_start, window_end FROM reconcile_runs WHERE run = $1 FOR SHARE), \
         ins AS (INSERT INTO reconcile_held (run, event_id, occurred_at, meter, unit, quantity) \
             SELECT r.run, f.event_id, f.occurred_at, f.meter, f.unit, f.quantity \
             FROM r, UNNEST($2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[]) \
                  AS f(event_id, occurred_at, meter, unit, quantity) \
             WHERE f.occurred_at >= r.window_start AND f.occurred_at < r.window_end \
             ON CONFLICT (run, event_id) DO NOTHING) \
         SELECT EXISTS (SELECT 1 FROM r)",
    )
    .bind(run)
    .bind(ids)
    .bind(occurred)
    .bind(meters)
    .bind(units)
    .bind(quantities)
    .fetch_one(pool)
    .await?;
    if known { Ok(()) } else { Err(unknown_run(run)) }
}

/// Drops a run, then (a fresh snapshot, once an `add_held` in flight has committed) its rows.
async fn end(pool: &PgPool, run: &str) -> Result<(), StoreError> {
    let mut tx = begin(pool).await?;
    sqlx::query("DELETE FROM reconcile_runs WHERE run = $1").bind(run).execute(&mut *tx).await?;
    sqlx::query("DELETE FROM reconcile_held WHERE run = $1").bind(run).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

// ---------------------------------------------------------------- the facts' retention

/// Drops up to $2 facts that occurred before $1, of any tenant, skipping those another
/// agent's retention holds. The tenants are walked one seek each on the primary key (a loose
/// index scan: the next tenant after the last), and each tenant's old facts are a range of
/// `ledger_time`, deleted by `ctid` (a TID scan), so a chunk reads what it drops and one entry
/// per tenant; a plain `occurred_at < $1` would scan the whole table at every chunk (no index
/// leads with `occurred_at`, and one would cost every enqueue a write).
const TRIM_FACTS: &str = "WITH RECURSIVE tenants(tenant) AS ( \
         (SELECT tenant FROM ledger ORDER BY tenant LIMIT 1) \
         UNION ALL \
         SELECT (SELECT l.tenant FROM ledger AS l WHERE l.tenant > t.tenant \
                 ORDER BY l.tenant LIMIT 1) \
         FROM tenants AS t WHERE t.tenant IS NOT NULL) \
     DELETE FROM ledger WHERE ctid = ANY (ARRAY( \
         SELECT o.ctid FROM tenants AS t, LATERAL ( \
             SELECT l.ctid FROM ledger AS l WHERE l.tenant = t.tenant AND l.occurred_at < $1 \
             LIMIT $2 FOR UPDATE SKIP LOCKED) AS o \
         LIMIT $2))";

/// Moves the horizon to `before` (never back), then drops the facts that occurred before it,
/// chunk by chunk; the horizon goes first, so that it is never behind a dropped fact.
async fn trim_facts(pool: &PgPool, before: i64) -> Result<u64, StoreError> {
    sqlx::query(
        "INSERT INTO outbox_meta (key, value) VALUES ('ledger_from', $1) \
         ON CONFLICT (key) DO UPDATE SET value = GREATEST(outbox_meta.value, EXCLUDED.value)",
    )
    .bind(before)
    .execute(pool)
    .await?;
    let mut total = 0;
    loop {
        let n = sqlx::query(TRIM_FACTS).bind(before).bind(TRIM_CHUNK).execute(pool).await?.rows_affected();
        total += n;
        if n < count(TRIM_CHUNK) {
            return Ok(total);
        }
    }
}

// ---------------------------------------------------------------- the comparison

/// Delivered events of the window (acked, or compacted: compaction deletes only delivered
/// ones) the platform does not hold, by id; whether the event's row (its payload) is still here.
const MISSING: &str = "SELECT l.event_id, e.seq IS NOT NULL \
     FROM ledger AS l LEFT JOIN events AS e ON e.tenant = l.tenant AND e.event_id = l.event_id \
     WHERE l.tenant = $1 AND l.occurred_at >= $2 AND l.occurred_at < $3 \
     AND (e.seq IS NULL OR EXISTS (SELECT 1 FROM delivered AS d WHERE d.seq = e.seq)) \
     AND NOT EXISTS (SELECT 1 FROM reconcile_held AS h WHERE h.run = $4 AND h.event_id = l.event_id) \
     ORDER BY l.event_id COLLATE \"C\"";

/// The platform's events that this outbox never had (no ledger row and no event), or holds
/// pending (0) or dead-lettered (3), by id (the states version 6 numbered in `events.state`).
const HELD: &str = "SELECT event_id, known, state FROM (SELECT h.event_id, \
     l.event_id IS NOT NULL OR e.seq IS NOT NULL AS known, \
     CASE WHEN EXISTS (SELECT 1 FROM pending AS p WHERE p.seq = e.seq) THEN 0::bigint \
          WHEN EXISTS (SELECT 1 FROM dead AS d WHERE d.seq = e.seq) THEN 3::bigint \
          WHEN e.seq IS NOT NULL THEN 2::bigint END AS state \
     FROM reconcile_held AS h \
     LEFT JOIN ledger AS l ON l.tenant = $1 AND l.event_id = h.event_id \
     LEFT JOIN events AS e ON e.tenant = $1 AND e.event_id = h.event_id \
     WHERE h.run = $2) AS s \
     WHERE NOT known OR state IN (0, 3) \
     ORDER BY event_id COLLATE \"C\"";

/// The delivered events of the window, by UTC day (86,400,000 ms) and id.
const LOCAL_DAYS: &str = "SELECT l.event_id, l.occurred_at, l.meter, l.unit, l.quantity \
     FROM ledger AS l LEFT JOIN events AS e ON e.tenant = l.tenant AND e.event_id = l.event_id \
     WHERE l.tenant = $1 AND l.occurred_at >= $2 AND l.occurred_at < $3 \
     AND (e.seq IS NULL OR EXISTS (SELECT 1 FROM delivered AS d WHERE d.seq = e.seq)) \
     ORDER BY l.occurred_at / 86400000, l.event_id COLLATE \"C\"";

/// The platform's events (all inside the window: `add_held` keeps no others), by day and id.
const PLATFORM_DAYS: &str = "SELECT event_id, occurred_at, meter, unit, quantity FROM reconcile_held \
     WHERE run = $1 ORDER BY occurred_at / 86400000, event_id COLLATE \"C\"";

async fn compare(pool: &PgPool, run: &str, max_ids: usize) -> Result<Comparison, StoreError> {
    let mut tx = begin(pool).await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    let conn: &mut PgConnection = &mut tx;
    let tally = stream_comparison!(
        conn,
        run,
        max_ids,
        "SELECT tenant, window_start, window_end FROM reconcile_runs WHERE run = $1"
    );
    tx.rollback().await?;
    Ok(tally.finish())
}
