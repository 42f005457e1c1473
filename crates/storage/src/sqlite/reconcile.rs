//! Reconciliation in a SQLite outbox: the scratch set, the repairs, the facts' retention and the
//! last result are writes, so they go through the writer like every other (the repairs fenced by
//! the claim's generation as settles are); the comparison reads on one connection of the read pool,
//! inside one read transaction (one snapshot of the file for all four of its queries), streaming
//! each query's rows.

use std::sync::OnceLock;

use async_trait::async_trait;
use billsync_domain::{Claim, Comparison, EventId, Fact, OutboxError, ReconcileStore, RunId, TenantName, Window};
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnection, SqlitePool};
use sqlx::{Row as _, Sqlite, Transaction};

use super::ops::{LeasesOf, chunk_size, deliver, pending_seqs, sized_sql, trim_leases};
use super::{Op, Out, SqliteOutbox, settle_refused, unexpected};
use crate::common::{from_ms, to_ms};
use crate::error::{During as _, StoreError};
use crate::reconcile::{
    HeldAs, HeldRow, REPAIR_CHUNK, RUN_RETENTION_MS, Run, Tally, new_run_id, next_row, stream_comparison, unknown_run,
    window_ms,
};

/// Most platform events one writer operation adds (a larger call is split).
const HELD_PER_OP: usize = 2_048;

/// Most facts one writer operation of the retention drops (each chunk its own transaction, so
/// that enqueues slip in between).
const TRIM_CHUNK: i64 = 2_000;

#[async_trait]
impl ReconcileStore for SqliteOutbox {
    async fn horizon(&self, tenant: &TenantName) -> Result<Option<DateTime<Utc>>, OutboxError> {
        let ms: Result<Option<i64>, _> = sqlx::query_scalar("SELECT value FROM outbox_meta WHERE key = 'ledger_from'")
            .fetch_optional(&self.reader)
            .await;
        ms.map_err(StoreError::from)
            .and_then(|ms| ms.map(from_ms).transpose())
            .during(format_args!("reading the reconciliation horizon of tenant {tenant}"))
    }

    async fn begin_reconcile(&self, tenant: &TenantName, window: &Window) -> Result<RunId, OutboxError> {
        let run = new_run_id();
        let (start, end) = window_ms(window);
        let op = Op::BeginReconcile { run: run.clone(), tenant: tenant.as_str().to_owned(), start, end };
        match self.call(op).await? {
            Out::Done => Ok(RunId::new(run)),
            other => Err(unexpected(other)),
        }
    }

    async fn add_held(&self, run: &RunId, facts: &[Fact]) -> Result<(), OutboxError> {
        for part in facts.chunks(HELD_PER_OP) {
            let op = Op::AddHeld { run: run.as_str().to_owned(), rows: part.iter().map(HeldRow::of).collect() };
            match self.call(op).await? {
                Out::Done => {}
                other => return Err(unexpected(other)),
            }
        }
        Ok(())
    }

    async fn compare(&self, run: &RunId, max_ids: usize) -> Result<Comparison, OutboxError> {
        compare(&self.reader, run.as_str(), max_ids)
            .await
            .during(format_args!("comparison of reconciliation {}", run.as_str()))
    }

    async fn end_reconcile(&self, run: &RunId) -> Result<(), OutboxError> {
        match self.call(Op::EndReconcile { run: run.as_str().to_owned() }).await? {
            Out::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn requeue_delivered(&self, claim: &Claim, ids: &[EventId]) -> Result<u64, OutboxError> {
        self.repair(claim, ids, |tenant, ids, generation| Op::RequeueDelivered { tenant, ids, generation }).await
    }

    async fn settle_held(&self, claim: &Claim, ids: &[EventId]) -> Result<u64, OutboxError> {
        self.repair(claim, ids, |tenant, ids, generation| Op::SettleHeld { tenant, ids, generation }).await
    }

    async fn trim_facts(&self, before: DateTime<Utc>) -> Result<u64, OutboxError> {
        let before = to_ms(before);
        self.in_chunks(TRIM_CHUNK, || Op::TrimFactsChunk { before }).await
    }

    async fn save_last_reconcile(&self, tenant: &TenantName, result: &str) -> Result<(), OutboxError> {
        let op = Op::SaveLastReconcile { tenant: tenant.as_str().to_owned(), result: result.to_owned() };
        match self.call(op).await? {
            Out::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn last_reconcile(&self, tenant: &TenantName) -> Result<Option<String>, OutboxError> {
        let result: Result<Option<String>, _> =
            sqlx::query_scalar("SELECT result FROM reconcile_last WHERE tenant = ?1")
                .bind(tenant.as_str())
                .fetch_optional(&self.reader)
                .await;
        result.during(format_args!("reading the last reconciliation of tenant {tenant}"))
    }
}

impl SqliteOutbox {
    /// Runs a repair chunk by chunk (each its own writer operation, fenced by the claim): at
    /// least one, so that a stale claim is refused even with no ids.
    async fn repair(
        &self,
        claim: &Claim,
        ids: &[EventId],
        op: impl Fn(String, Vec<String>, u64) -> Op,
    ) -> Result<u64, OutboxError> {
        let mut total = 0;
        let chunks: Vec<&[EventId]> = if ids.is_empty() { vec![&[]] } else { ids.chunks(REPAIR_CHUNK).collect() };
        for chunk in chunks {
            let ids = chunk.iter().map(|id| id.as_str().to_owned()).collect();
            match self.call(op(claim.tenant.as_str().to_owned(), ids, claim.generation)).await? {
                Out::Count(n) => total += n,
                other => return Err(settle_refused(&claim.tenant, other)),
            }
        }
        Ok(total)
    }
}

// ---------------------------------------------------------------- the comparison

/// Delivered events of the window (acked, or compacted: compaction deletes only delivered
/// ones) the platform does not hold, by id; whether the event's row (its payload) is still here.
const MISSING: &str = "SELECT l.event_id, e.seq IS NOT NULL \
     FROM ledger AS l LEFT JOIN events AS e ON e.tenant = l.tenant AND e.event_id = l.event_id \
     WHERE l.tenant = ?1 AND l.occurred_at >= ?2 AND l.occurred_at < ?3 \
     AND (e.seq IS NULL OR e.seq IN (SELECT seq FROM delivered)) \
     AND NOT EXISTS (SELECT 1 FROM reconcile_held AS h WHERE h.run = ?4 AND h.event_id = l.event_id) \
     ORDER BY l.event_id";

/// The platform's events that this outbox never had (no ledger row and no event), or holds
/// pending (0) or dead-lettered (3), by id (the states PostgreSQL's `events.state` numbers).
const HELD: &str = "SELECT event_id, known, state FROM (SELECT h.event_id, \
     l.event_id IS NOT NULL OR e.seq IS NOT NULL AS known, \
     CASE WHEN e.seq IN (SELECT seq FROM pending) THEN 0 WHEN e.seq IN (SELECT seq FROM dead) THEN 3 \
          WHEN e.seq IS NOT NULL THEN 2 END AS state \
     FROM reconcile_held AS h \
     LEFT JOIN ledger AS l ON l.tenant = ?1 AND l.event_id = h.event_id \
     LEFT JOIN events AS e ON e.tenant = ?1 AND e.event_id = h.event_id \
     WHERE h.run = ?2) \
     WHERE NOT known OR state IN (0, 3) \
     ORDER BY event_id";

/// The delivered events of the window, by UTC day (86,400,000 ms) and id.
const LOCAL_DAYS: &str = "SELECT l.event_id, l.occurred_at, l.meter, l.unit, l.quantity \
     FROM ledger AS l LEFT JOIN events AS e ON e.tenant = l.tenant AND e.event_id = l.event_id \
     WHERE l.tenant = ?1 AND l.occurred_at >= ?2 AND l.occurred_at < ?3 \
     AND (e.seq IS NULL OR e.seq IN (SELECT seq FROM delivered)) \
     ORDER BY l.occurred_at / 86400000, l.event_id";

/// The platform's events (all inside the window: `add_held` keeps no others), by day and id.
const PLATFORM_DAYS: &str = "SELECT event_id, occurred_at, meter, unit, quantity FROM reconcile_held \
     WHERE run = ?1 ORDER BY occurred_at / 86400000, event_id";

/// A read transaction on its own task, so that a caller that stops waiting cannot return the
/// connection to the pool inside a transaction (see `postgres::begin`); dropped, it rolls back.
async fn begin_read(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.begin().await }).await.map_err(|e| sqlx::Error::Io(std::io::Error::other(e)))?
}

async fn compare(pool: &SqlitePool, run: &str, max_ids: usize) -> Result<Comparison, StoreError> {
    let mut tx = begin_read(pool).await?;
    let conn: &mut SqliteConnection = &mut tx;
    let tally = stream_comparison!(
        conn,
        run,
        max_ids,
        "SELECT tenant, window_start, window_end FROM reconcile_runs WHERE run = ?1"
    );
    tx.rollback().await?;
    Ok(tally.finish())
}

// ---------------------------------------------------------------- the writer's operations

/// Records a new run, and drops the runs (and their scratch rows) older than a day.
pub(super) async fn exec_begin(
    conn: &mut SqliteConnection,
    run: &str,
    tenant: &str,
    (start, end): (i64, i64),
    now: i64,
) -> Result<Out, StoreError> {
    let expired = now.saturating_sub(RUN_RETENTION_MS);
    sqlx::query("DELETE FROM reconcile_held WHERE run IN (SELECT run FROM reconcile_runs WHERE started_at < ?1)")
        .bind(expired)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM reconcile_runs WHERE started_at < ?1").bind(expired).execute(&mut *conn).await?;
    sqlx::query(
        "INSERT INTO reconcile_runs (run, tenant, window_start, window_end, started_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .bind(run)
    .bind(tenant)
    .bind(start)
    .bind(end)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(Out::Done)
}

/// Adds the rows inside the run's window to its scratch set (an id already there is kept).
pub(super) async fn exec_add_held(conn: &mut SqliteConnection, run: &str, rows: &[HeldRow]) -> Result<Out, StoreError> {
    let window = sqlx::query("SELECT window_start, window_end FROM reconcile_runs WHERE run = ?1")
        .bind(run)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| unknown_run(run))?;
    let (start, end): (i64, i64) = (window.try_get(0)?, window.try_get(1)?);
    let inside: Vec<&HeldRow> = rows.iter().filter(|r| start <= r.occurred_at && r.occurred_at < end).collect();
    let mut rest = &inside[..];
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(chunk_size(rest.len()));
        rest = tail;
        let mut query = sqlx::query(held_sql(chunk.len()));
        for r in chunk {
            query = query
                .bind(run)
                .bind(r.event_id.as_str())
                .bind(r.occurred_at)
                .bind(r.meter.as_str())
                .bind(r.unit.as_str())
                .bind(r.quantity.as_str());
        }
        query.execute(&mut *conn).await?;
    }
    Ok(Out::Done)
}

/// `INSERT ... VALUES` into the scratch set: (run, event_id, occurred_at, meter, unit,
/// quantity) per row.
fn held_sql(rows: usize) -> &'static str {
    static SQL: OnceLock<Vec<String>> = OnceLock::new();
    sized_sql(&SQL, rows, |n| {
        format!(
            "INSERT INTO reconcile_held (run, event_id, occurred_at, meter, unit, quantity) VALUES {} \
             ON CONFLICT (run, event_id) DO NOTHING",
            vec!["(?, ?, ?, ?, ?, ?)"; n].join(", ")
        )
    })
}

/// Drops a run and its scratch set.
pub(super) async fn exec_end(conn: &mut SqliteConnection, run: &str) -> Result<Out, StoreError> {
    sqlx::query("DELETE FROM reconcile_held WHERE run = ?1").bind(run).execute(&mut *conn).await?;
    sqlx::query("DELETE FROM reconcile_runs WHERE run = ?1").bind(run).execute(&mut *conn).await?;
    Ok(Out::Done)
}

/// Returns the tenant's delivered events among `ids` to pending, due now (attempts kept).
pub(super) async fn exec_requeue_delivered(
    conn: &mut SqliteConnection,
    tenant: &str,
    ids: &[String],
    now: i64,
) -> Result<Out, StoreError> {
    let ids = serde_json::to_string(ids).map_err(|e| StoreError::corrupt("event_id", e))?;
    let done = sqlx::query(
        "INSERT INTO pending (seq, tenant, due_at, enqueued_at) \
         SELECT e.seq, e.tenant, ?2, e.enqueued_at FROM events AS e \
         WHERE e.tenant = ?1 AND e.event_id IN (SELECT value FROM json_each(?3)) \
         AND e.seq IN (SELECT seq FROM delivered)",
    )
    .bind(tenant)
    .bind(now)
    .bind(&ids)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() > 0 {
        sqlx::query(
            "DELETE FROM delivered WHERE seq IN (SELECT e.seq FROM events AS e \
             WHERE e.tenant = ?1 AND e.event_id IN (SELECT value FROM json_each(?2))) \
             AND seq IN (SELECT seq FROM pending)",
        )
        .bind(tenant)
        .bind(ids)
        .execute(&mut *conn)
        .await?;
    }
    Ok(Out::Count(done.rows_affected()))
}

/// Settles the tenant's pending (or leased) events among `ids` as delivered now, and takes
/// them out of the tenant's leases.
pub(super) async fn exec_settle_held(
    conn: &mut SqliteConnection,
    tenant: &str,
    ids: &[String],
    now: i64,
) -> Result<Out, StoreError> {
    let ids = serde_json::to_string(ids).map_err(|e| StoreError::corrupt("event_id", e))?;
    let seqs = pending_seqs(conn, tenant, &ids).await?;
    let settled = deliver(conn, &seqs, now).await?;
    if settled > 0 {
        trim_leases(conn, LeasesOf::Tenant, tenant).await?;
    }
    Ok(Out::Count(settled))
}

/// Moves the horizon to `before` (never back), in the same transaction as the chunk it
/// precedes, so that the horizon is never behind a dropped fact.
const MOVE_HORIZON: &str = "INSERT INTO outbox_meta (key, value) VALUES ('ledger_from', ?1) \
     ON CONFLICT (key) DO UPDATE SET value = max(outbox_meta.value, excluded.value)";

/// Drops up to ?2 facts that occurred before ?1, of any tenant. The tenants are walked one
/// seek each on `ledger_time` (a loose index scan: the next tenant after the last), and each
/// tenant's old facts are a range of that index, so a chunk reads what it drops and one entry
/// per tenant; a plain `occurred_at < ?1` would scan the whole index at every chunk (no index
/// leads with `occurred_at`, and one would cost every enqueue a write).
const TRIM_FACTS: &str = "WITH RECURSIVE tenants(tenant) AS ( \
         SELECT min(tenant) FROM ledger \
         UNION ALL \
         SELECT (SELECT min(l.tenant) FROM ledger AS l WHERE l.tenant > t.tenant) \
         FROM tenants AS t WHERE t.tenant IS NOT NULL) \
     DELETE FROM ledger WHERE (tenant, event_id) IN \
         (SELECT l.tenant, l.event_id FROM tenants AS t JOIN ledger AS l \
          ON l.tenant = t.tenant AND l.occurred_at < ?1 LIMIT ?2)";

/// Moves the horizon to `before`, then drops up to [`TRIM_CHUNK`] facts that occurred before it.
pub(super) async fn exec_trim_facts_chunk(conn: &mut SqliteConnection, before: i64) -> Result<Out, StoreError> {
    sqlx::query(MOVE_HORIZON).bind(before).execute(&mut *conn).await?;
    let done = sqlx::query(TRIM_FACTS).bind(before).bind(TRIM_CHUNK).execute(&mut *conn).await?;
    Ok(Out::Count(done.rows_affected()))
}

/// Stores (replacing) the tenant's last reconciliation.
pub(super) async fn exec_save_last(
    conn: &mut SqliteConnection,
    tenant: &str,
    result: &str,
    now: i64,
) -> Result<Out, StoreError> {
    sqlx::query(
        "INSERT INTO reconcile_last (tenant, result, saved_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (tenant) DO UPDATE SET result = excluded.result, saved_at = excluded.saved_at",
    )
    .bind(tenant)
    .bind(result)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(Out::Done)
}

#[cfg(test)]
mod tests {
    /// The retention's chunk seeks each tenant's old facts on `ledger_time` and never scans
    /// the ledger (a scan would read every fact at every chunk).
    #[tokio::test]
    async fn a_trim_chunk_seeks_each_tenants_old_facts() -> Result<(), Box<dyn std::error::Error>> {
        use sqlx::Row as _;

        let dir = tempfile::tempdir()?;
        let clock = std::sync::Arc::new(billsync_domain::ManualClock::new(chrono::Utc::now()));
        let outbox = super::SqliteOutbox::open(&dir.path().join("o.db"), clock).await?;
        let sql = ["EXPLAIN QUERY PLAN ", super::TRIM_FACTS].concat();
        let rows = sqlx::query(&sql).bind(0_i64).bind(super::TRIM_CHUNK).fetch_all(&outbox.reader).await?;
        let plan: Vec<String> = rows.iter().map(|r| r.try_get::<String, _>(3)).collect::<Result<_, _>>()?;
        let seek = "SEARCH l USING COVERING INDEX ledger_time (tenant=? AND occurred_at<?)";
        assert!(plan.iter().any(|d| d == seek), "{plan:?}");
        assert!(plan.iter().all(|d| !d.starts_with("SCAN l") && !d.starts_with("SCAN ledger")), "{plan:?}");
        Ok(())
    }

    #[test]
    fn the_day_in_the_queries_is_a_day() {
        assert_eq!(crate::reconcile::DAY_MS, 86_400_000);
        assert!(super::LOCAL_DAYS.contains("/ 86400000") && super::PLATFORM_DAYS.contains("/ 86400000"));
    }
}
