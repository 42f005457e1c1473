//! The writer's operations as SQL: each [`Op`] run inside the writer's open transaction, and
//! the multi-row insert that serves a run of enqueues.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use billsync_domain::{DeadLetter, Lease, TenantName};
use sqlx::Row as _;
use sqlx::sqlite::SqliteConnection;

use super::{COMPACT_CHUNK, INSERT_CHUNK, Op, Out, quarantine, reconcile};
use crate::common::{Row, leased};
use crate::error::StoreError;
use crate::reconcile::LedgerFact;

/// Inserts new rows, skipping those already stored, makes them pending (due now), and writes
/// the ledger records of those it stored; returns the (tenant, event_id) pairs it stored.
///
/// Rows go in multi-row `INSERT`s of power-of-two sizes (at most [`INSERT_CHUNK`]), so that a
/// handful of cached statements serve every batch and the bound-parameter limit is never
/// reached. The common case (no duplicates) returns no rows. When some rows were already
/// stored, the new ones are read back by `seq`: inside the writer's IMMEDIATE transaction
/// nobody else inserts, so SQLite numbers this statement's rows consecutively up to
/// `last_insert_rowid`, which is also how their `pending` rows are found.
pub(super) async fn insert_rows(
    conn: &mut SqliteConnection,
    rows: &[Row<'_>],
    now: i64,
) -> Result<HashSet<(String, String)>, StoreError> {
    let mut inserted = HashSet::with_capacity(rows.len());
    let mut rest = rows;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(chunk_size(rest.len()));
        rest = tail;
        let mut query = sqlx::query(insert_sql(chunk.len()));
        for r in chunk {
            query = query.bind(r.tenant).bind(r.event_id).bind(r.body).bind(now);
        }
        let done = query.execute(&mut *conn).await?;
        let affected = usize::try_from(done.rows_affected()).unwrap_or(usize::MAX);
        if affected > 0 {
            let last = done.last_insert_rowid();
            sqlx::query(
                "INSERT INTO pending (seq, tenant, due_at, enqueued_at) \
                 SELECT seq, tenant, enqueued_at, enqueued_at FROM events WHERE seq > ?1 AND seq <= ?2",
            )
            .bind(last.saturating_sub(i64::try_from(affected).unwrap_or(i64::MAX)))
            .bind(last)
            .execute(&mut *conn)
            .await?;
        }
        if affected == chunk.len() {
            insert_ledger(conn, chunk.iter()).await?;
            inserted.extend(chunk.iter().map(|r| (r.tenant.to_owned(), r.event_id.to_owned())));
        } else if affected > 0 {
            let last = done.last_insert_rowid();
            let new = sqlx::query("SELECT tenant, event_id FROM events WHERE seq > ?1 AND seq <= ?2")
                .bind(last.saturating_sub(i64::try_from(affected).unwrap_or(i64::MAX)))
                .bind(last)
                .fetch_all(&mut *conn)
                .await?;
            if new.len() != affected {
                return Err(StoreError::corrupt("seq", format!("{affected} rows inserted, {} found", new.len())));
            }
            let new = new
                .iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                .collect::<Result<HashSet<_>, StoreError>>()?;
            let is_new = |r: &&Row<'_>| new.contains(&(r.tenant.to_owned(), r.event_id.to_owned()));
            insert_ledger(conn, chunk.iter().filter(is_new)).await?;
            inserted.extend(new);
        }
    }
    Ok(inserted)
}

/// Writes the ledger records of newly stored rows (those with a fact), in multi-row inserts as
/// the events' own. A record already there (the event was compacted, and is enqueued again)
/// is kept.
async fn insert_ledger<'r, 'a: 'r>(
    conn: &mut SqliteConnection,
    rows: impl Iterator<Item = &'r Row<'a>>,
) -> Result<(), StoreError> {
    let facts: Vec<(&Row<'_>, &LedgerFact)> = rows.filter_map(|r| r.fact.map(|f| (r, f))).collect();
    let mut rest = &facts[..];
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(chunk_size(rest.len()));
        rest = tail;
        let mut query = sqlx::query(ledger_sql(chunk.len()));
        for (r, f) in chunk {
            query = query
                .bind(r.tenant)
                .bind(r.event_id)
                .bind(f.occurred_at)
                .bind(f.meter.as_str())
                .bind(f.unit.as_str())
                .bind(f.quantity.as_str());
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// The rows of the next multi-row statement out of `len` left: a power of two, at most
/// [`INSERT_CHUNK`], so that a handful of cached statements serve every batch.
pub(super) fn chunk_size(len: usize) -> usize {
    if len >= INSERT_CHUNK { INSERT_CHUNK } else { 1 << len.ilog2() }
}

/// The statement of `build` for `rows` rows (a power of two up to [`INSERT_CHUNK`]), each size
/// built once.
///
/// The placeholders are anonymous (`?`), never numbered (`?N`): sqlx looks up each bound
/// parameter's name, and SQLite finds a numbered parameter's name by walking the list of all
/// of them, so numbered placeholders cost time quadratic in their number (768 of them made
/// `sqlite3_bind_parameter_name` the writer's top symbol in a profile of enqueue).
pub(super) fn sized_sql(
    cache: &'static OnceLock<Vec<String>>,
    rows: usize,
    build: fn(usize) -> String,
) -> &'static str {
    let all = cache.get_or_init(|| (0..=INSERT_CHUNK.ilog2()).map(|p| build(1usize << p)).collect());
    all.get(rows.ilog2() as usize).map_or("", String::as_str)
}

/// `INSERT ... VALUES` of events: (tenant, event_id, body, time) per row.
fn insert_sql(rows: usize) -> &'static str {
    static SQL: OnceLock<Vec<String>> = OnceLock::new();
    sized_sql(&SQL, rows, |n| {
        format!(
            "INSERT INTO events (tenant, event_id, body, enqueued_at) VALUES {} \
             ON CONFLICT (tenant, event_id) DO NOTHING",
            vec!["(?, ?, ?, ?)"; n].join(", ")
        )
    })
}

/// `INSERT ... VALUES` of ledger records: (tenant, event_id, occurred_at, meter, unit,
/// quantity) per row.
fn ledger_sql(rows: usize) -> &'static str {
    static SQL: OnceLock<Vec<String>> = OnceLock::new();
    sized_sql(&SQL, rows, |n| {
        format!(
            "INSERT INTO ledger (tenant, event_id, occurred_at, meter, unit, quantity) VALUES {} \
             ON CONFLICT (tenant, event_id) DO NOTHING",
            vec!["(?, ?, ?, ?, ?, ?)"; n].join(", ")
        )
    })
}

/// Runs one operation other than an enqueue (enqueues run together, in `exec_all`).
///
/// A lease or settle under a claim ([`Op::fence`]) runs only while its generation is the
/// tenant's current one; otherwise it writes nothing and answers [`Out::ClaimLost`].
pub(super) async fn exec_one(
    conn: &mut SqliteConnection,
    fences: &mut Fences,
    op: &Op,
    now: i64,
) -> Result<Out, StoreError> {
    if let Some((tenant, generation)) = op.fence() {
        if !fences.hold(conn, tenant, generation).await? {
            return Ok(Out::ClaimLost(generation));
        }
    }
    if let Op::Claim { tenant, .. } = op {
        fences.forget(tenant);
    }
    match op {
        Op::Enqueue { .. } => Err(StoreError::corrupt("operation", "enqueue outside a run")),
        Op::Lease { tenant, max, lease_ms, .. } => lease(conn, tenant, *max, *lease_ms, now).await.map(Out::Leased),
        Op::Ack { tenant, lease, ids, .. } => exec_ack(conn, tenant, lease, ids, now).await,
        Op::Nack { tenant, lease, retry_at, .. } => exec_nack(conn, tenant, lease, *retry_at).await,
        Op::DeadLetter { tenant, lease, items, .. } => exec_dead_letter(conn, tenant, lease, items, now).await,
        Op::Requeue { tenant, ids } => exec_requeue(conn, tenant, ids.as_deref(), now).await,
        Op::CompactChunk { before } => exec_compact_chunk(conn, *before).await,
        Op::Claim { tenant, agent } => exec_claim(conn, tenant, agent, now).await,
        Op::Release { tenant, agent } => exec_release(conn, tenant, agent).await,
        Op::SaveState { tenant, state } => exec_save_state(conn, tenant, state, now).await,
        Op::BeginReconcile { run, tenant, start, end } => {
            reconcile::exec_begin(conn, run, tenant, (*start, *end), now).await
        }
        Op::AddHeld { run, rows } => reconcile::exec_add_held(conn, run, rows).await,
        Op::EndReconcile { run } => reconcile::exec_end(conn, run).await,
        Op::RequeueDelivered { tenant, ids, .. } => reconcile::exec_requeue_delivered(conn, tenant, ids, now).await,
        Op::SettleHeld { tenant, ids, .. } => reconcile::exec_settle_held(conn, tenant, ids, now).await,
        Op::TrimFactsChunk { before } => reconcile::exec_trim_facts_chunk(conn, *before).await,
        Op::SaveLastReconcile { tenant, result } => reconcile::exec_save_last(conn, tenant, result, now).await,
        Op::Quarantine { entry } => quarantine::exec_quarantine(conn, entry, now).await,
        Op::SetQuarantineReason { id, reason } => quarantine::exec_set_reason(conn, *id, reason).await,
        Op::PurgeQuarantined { ids } => quarantine::exec_purge(conn, ids.as_deref()).await,
    }
}

/// The tenants' claim generations as read in the writer's open transaction: each tenant's
/// claim row is read once per transaction (one lookup by its primary key), however many leases
/// and settles of the group it fences.
///
/// The transaction (`BEGIN IMMEDIATE`) holds the database's write lock, so no other process
/// can claim a tenant until it commits, and no claim slips in between a check and the write
/// it guards; a claim in the same group is forgotten here, so that what follows it reads the
/// new generation.
#[derive(Debug, Default)]
pub(super) struct Fences(HashMap<String, Option<i64>>);

impl Fences {
    /// Whether `generation` is the tenant's claim generation.
    async fn hold(&mut self, conn: &mut SqliteConnection, tenant: &str, generation: u64) -> Result<bool, StoreError> {
        let current = match self.0.get(tenant) {
            Some(current) => *current,
            None => {
                let current: Option<i64> = sqlx::query_scalar("SELECT generation FROM tenant_claims WHERE tenant = ?1")
                    .bind(tenant)
                    .fetch_optional(&mut *conn)
                    .await?;
                self.0.insert(tenant.to_owned(), current);
                current
            }
        };
        Ok(current.is_some_and(|g| u64::try_from(g).is_ok_and(|g| g == generation)))
    }

    /// The tenant is being claimed: its generation is read again when next needed.
    fn forget(&mut self, tenant: &str) {
        self.0.remove(tenant);
    }
}

/// Marks the acked events delivered and shrinks (or drops) their lease.
///
/// The lease's own row lists its events' seqs and ids in the same order, so the acked seqs are
/// found there, without reading a single event row; an id the lease does not hold (it lapsed
/// and another took its events) is found by its id.
async fn exec_ack(
    conn: &mut SqliteConnection,
    tenant: &str,
    lease: &str,
    ids: &[String],
    now: i64,
) -> Result<Out, StoreError> {
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT seqs, ids FROM leases WHERE lease_id = ?1 AND tenant = ?2")
            .bind(lease)
            .bind(tenant)
            .fetch_optional(&mut *conn)
            .await?;
    let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut acked = Vec::with_capacity(ids.len());
    if let Some((seqs, held)) = row {
        let seqs: Vec<i64> = serde_json::from_str(&seqs).map_err(|e| StoreError::corrupt("leases.seqs", e))?;
        let held: Vec<&str> = serde_json::from_str(&held).map_err(|e| StoreError::corrupt("leases.ids", e))?;
        if seqs.len() != held.len() {
            return Err(StoreError::corrupt("leases.ids", format!("{} ids for {} seqs", held.len(), seqs.len())));
        }
        acked.extend(seqs.iter().zip(held).filter(|(_, id)| wanted.contains(id)).map(|(seq, _)| *seq));
    }
    let seqs = serde_json::to_string(&acked).map_err(|e| StoreError::corrupt("seq", e))?;
    let settled = deliver(conn, &seqs, now).await?;
    if acked.len() < wanted.len() {
        let ids = serde_json::to_string(ids).map_err(|e| StoreError::corrupt("event_id", e))?;
        let seqs = pending_seqs(conn, tenant, &ids).await?;
        deliver(conn, &seqs, now).await?;
    }
    prune_lease(conn, lease, settled).await?;
    Ok(Out::Done)
}

/// Moves the pending events among `seqs` (a JSON array) to `delivered`, delivered at `now`;
/// how many it moved.
pub(super) async fn deliver(conn: &mut SqliteConnection, seqs: &str, now: i64) -> Result<u64, StoreError> {
    let moved = sqlx::query(
        "INSERT INTO delivered (seq, delivered_at) \
         SELECT value, ?2 FROM json_each(?1) WHERE value IN (SELECT seq FROM pending)",
    )
    .bind(seqs)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if moved > 0 {
        sqlx::query("DELETE FROM pending WHERE seq IN (SELECT value FROM json_each(?1))")
            .bind(seqs)
            .execute(&mut *conn)
            .await?;
    }
    Ok(moved)
}

/// The seqs (a JSON array) of the tenant's pending events among `ids` (a JSON array).
pub(super) async fn pending_seqs(conn: &mut SqliteConnection, tenant: &str, ids: &str) -> Result<String, StoreError> {
    let seqs: Option<String> = sqlx::query_scalar(
        "SELECT json_group_array(e.seq) FROM events AS e \
         WHERE e.tenant = ?1 AND e.event_id IN (SELECT value FROM json_each(?2)) \
         AND e.seq IN (SELECT seq FROM pending)",
    )
    .bind(tenant)
    .bind(ids)
    .fetch_one(&mut *conn)
    .await?;
    Ok(seqs.unwrap_or_else(|| "[]".to_owned()))
}

/// Counts an attempt and sets the retry time of the lease's pending events, then drops the lease.
async fn exec_nack(conn: &mut SqliteConnection, tenant: &str, lease: &str, retry_at: i64) -> Result<Out, StoreError> {
    // Only while the lease still exists: once it lapsed and another lease took its
    // events, that one (not this nack) decides their fate.
    const HELD: &str =
        "SELECT j.value FROM leases AS l, json_each(l.seqs) AS j WHERE l.lease_id = ?2 AND l.tenant = ?1";
    sqlx::query(&format!("UPDATE pending SET due_at = ?3 WHERE seq IN ({HELD})"))
        .bind(tenant)
        .bind(lease)
        .bind(retry_at)
        .execute(&mut *conn)
        .await?;
    sqlx::query(&format!(
        "UPDATE events SET attempts = attempts + 1 WHERE seq IN ({HELD}) AND seq IN (SELECT seq FROM pending)"
    ))
    .bind(tenant)
    .bind(lease)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM leases WHERE lease_id = ?1").bind(lease).execute(&mut *conn).await?;
    Ok(Out::Done)
}

/// Moves each item's pending event to the dead letters, with its code and message.
async fn exec_dead_letter(
    conn: &mut SqliteConnection,
    tenant: &str,
    lease: &str,
    items: &[DeadLetter],
    now: i64,
) -> Result<Out, StoreError> {
    for item in items {
        let seq: Option<i64> = sqlx::query_scalar(
            "SELECT e.seq FROM events AS e WHERE e.tenant = ?1 AND e.event_id = ?2 \
             AND e.seq IN (SELECT seq FROM pending)",
        )
        .bind(tenant)
        .bind(item.event_id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
        let Some(seq) = seq else { continue };
        sqlx::query("INSERT INTO dead (seq, tenant, dead_at, code, message) VALUES (?1, ?2, ?3, ?4, ?5)")
            .bind(seq)
            .bind(tenant)
            .bind(now)
            .bind(&item.code)
            .bind(&item.message)
            .execute(&mut *conn)
            .await?;
        sqlx::query("DELETE FROM pending WHERE seq = ?1").bind(seq).execute(&mut *conn).await?;
        sqlx::query("UPDATE events SET attempts = attempts + 1 WHERE seq = ?1").bind(seq).execute(&mut *conn).await?;
    }
    // The items were found by id, not through the lease: how many it held is unknown.
    prune_lease(conn, lease, 0).await?;
    Ok(Out::Done)
}

/// Makes a tenant's dead letters (all, or those with the given ids) pending again, due now.
async fn exec_requeue(
    conn: &mut SqliteConnection,
    tenant: &str,
    ids: Option<&[String]>,
    now: i64,
) -> Result<Out, StoreError> {
    const MOVE: &str = "INSERT INTO pending (seq, tenant, due_at, enqueued_at) \
         SELECT d.seq, d.tenant, ?2, e.enqueued_at FROM dead AS d JOIN events AS e ON e.seq = d.seq \
         WHERE d.tenant = ?1";
    let done = match ids {
        None => sqlx::query(MOVE).bind(tenant).bind(now).execute(&mut *conn).await?,
        Some(ids) => {
            let ids = serde_json::to_string(ids).map_err(|e| StoreError::corrupt("event_id", e))?;
            sqlx::query(&format!("{MOVE} AND e.event_id IN (SELECT value FROM json_each(?3))"))
                .bind(tenant)
                .bind(now)
                .bind(ids)
                .execute(&mut *conn)
                .await?
        }
    };
    if done.rows_affected() > 0 {
        sqlx::query("DELETE FROM dead WHERE tenant = ?1 AND seq IN (SELECT seq FROM pending)")
            .bind(tenant)
            .execute(&mut *conn)
            .await?;
    }
    Ok(Out::Count(done.rows_affected()))
}

/// Deletes up to [`COMPACT_CHUNK`] events delivered before `before`, oldest deliveries first.
async fn exec_compact_chunk(conn: &mut SqliteConnection, before: i64) -> Result<Out, StoreError> {
    // The same rows twice: the first statement does not change `delivered`.
    const CHUNK: &str = "SELECT seq FROM delivered WHERE delivered_at < ?1 ORDER BY delivered_at, seq LIMIT ?2";
    sqlx::query(&format!("DELETE FROM events WHERE seq IN ({CHUNK})"))
        .bind(before)
        .bind(COMPACT_CHUNK)
        .execute(&mut *conn)
        .await?;
    let done = sqlx::query(&format!("DELETE FROM delivered WHERE seq IN ({CHUNK})"))
        .bind(before)
        .bind(COMPACT_CHUNK)
        .execute(&mut *conn)
        .await?;
    Ok(Out::Count(done.rows_affected()))
}

/// Records `agent` as the tenant's holder in a new generation, voiding earlier holders' leases.
async fn exec_claim(conn: &mut SqliteConnection, tenant: &str, agent: &str, now: i64) -> Result<Out, StoreError> {
    // The lock was free: whoever leased before is gone, and its leases with it.
    sqlx::query("DELETE FROM leases WHERE tenant = ?1").bind(tenant).execute(&mut *conn).await?;
    let generation: i64 = sqlx::query_scalar(
        "INSERT INTO tenant_claims (tenant, holder, expires_at, generation) VALUES (?1, ?2, ?3, 1) \
         ON CONFLICT (tenant) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at, \
         generation = tenant_claims.generation + 1 \
         RETURNING generation",
    )
    .bind(tenant)
    .bind(agent)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Out::Claimed(u64::try_from(generation).unwrap_or(0)))
}

/// Marks the tenant's claim by `agent` expired.
async fn exec_release(conn: &mut SqliteConnection, tenant: &str, agent: &str) -> Result<Out, StoreError> {
    // The row stays (it counts the generations); the lock file is what is released.
    sqlx::query("UPDATE tenant_claims SET expires_at = 0 WHERE tenant = ?1 AND holder = ?2")
        .bind(tenant)
        .bind(agent)
        .execute(&mut *conn)
        .await?;
    Ok(Out::Done)
}

/// Stores (replacing) the tenant's saved state.
async fn exec_save_state(conn: &mut SqliteConnection, tenant: &str, state: &str, now: i64) -> Result<Out, StoreError> {
    sqlx::query(
        "INSERT INTO tenant_state (tenant, state, updated_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (tenant) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
    )
    .bind(tenant)
    .bind(state)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(Out::Done)
}

/// Shrinks a lease to the events it still holds (those still pending), and drops it once it
/// holds none. A dead-lettered event thus leaves its lease at once, so that a requeue makes it
/// leasable again while the rest of its lease is still out.
///
/// `settled` is how many of the lease's own events the caller has just taken out of pending
/// (found through the lease, so never more than it holds). When that is all of them, which is
/// what an ack of a whole batch does, the lease is deleted in one statement without looking at
/// its events.
async fn prune_lease(conn: &mut SqliteConnection, lease: &str, settled: u64) -> Result<(), StoreError> {
    let whole = sqlx::query("DELETE FROM leases WHERE lease_id = ?1 AND json_array_length(seqs) = ?2")
        .bind(lease)
        .bind(i64::try_from(settled).unwrap_or(i64::MAX))
        .execute(&mut *conn)
        .await?;
    if whole.rows_affected() > 0 {
        return Ok(());
    }
    trim_leases(conn, LeasesOf::Lease, lease).await
}

/// Which leases [`trim_leases`] looks at.
#[derive(Clone, Copy)]
pub(super) enum LeasesOf {
    /// The one with this `lease_id`.
    Lease,
    /// Every lease of this tenant.
    Tenant,
}

/// Shrinks the chosen leases to the events they still hold (still pending) and drops those
/// left empty.
pub(super) async fn trim_leases(conn: &mut SqliteConnection, of: LeasesOf, key: &str) -> Result<(), StoreError> {
    // The seqs and ids still pending, in the lease's order (both read the row as it was).
    const SHRINK: &str = "UPDATE leases SET \
         seqs = (SELECT json_group_array(j.value ORDER BY j.key) FROM json_each(leases.seqs) AS j \
                 WHERE j.value IN (SELECT seq FROM pending)), \
         ids = (SELECT json_group_array(e.event_id ORDER BY j.key) FROM json_each(leases.seqs) AS j \
                JOIN events AS e ON e.seq = j.value WHERE j.value IN (SELECT seq FROM pending))";
    const EMPTY: &str = "DELETE FROM leases WHERE json_array_length(seqs) = 0";
    let (shrink, drop) = match of {
        LeasesOf::Lease => (format!("{SHRINK} WHERE lease_id = ?1"), format!("{EMPTY} AND lease_id = ?1")),
        LeasesOf::Tenant => (format!("{SHRINK} WHERE tenant = ?1"), format!("{EMPTY} AND tenant = ?1")),
    };
    sqlx::query(&shrink).bind(key).execute(&mut *conn).await?;
    sqlx::query(&drop).bind(key).execute(&mut *conn).await?;
    Ok(())
}

/// Field and record separators of the lease query's one-row answer: ASCII control characters,
/// which JSON text (the bodies) never holds unescaped and event ids never hold at all.
const FIELD_SEP: char = '\u{1f}';
const RECORD_SEP: char = '\u{1e}';

async fn lease(
    conn: &mut SqliteConnection,
    tenant: &TenantName,
    max: i64,
    lease_ms: i64,
    now: i64,
) -> Result<Option<Lease>, StoreError> {
    // Lapsed leases hold nothing any more; their events are pending in their old place.
    sqlx::query("DELETE FROM leases WHERE tenant = ?1 AND expires_at <= ?2")
        .bind(tenant.as_str())
        .bind(now)
        .execute(&mut *conn)
        .await?;
    // The first `max` due pending events no live lease holds, as one row: sqlx moves rows
    // from its SQLite thread one message at a time, and 500 messages cost more than the query.
    let all: Option<String> = sqlx::query_scalar(
        "SELECT group_concat(seq || char(31) || due_at || char(31) || event_id || char(31) || body, char(30)) \
         FROM (SELECT p.seq, p.due_at, e.event_id, e.body FROM pending AS p CROSS JOIN events AS e ON e.seq = p.seq \
               WHERE p.tenant = ?1 AND p.due_at <= ?2 \
               AND p.seq NOT IN (SELECT j.value FROM leases AS l, json_each(l.seqs) AS j WHERE l.tenant = ?1) \
               ORDER BY p.due_at, p.seq LIMIT ?3)",
    )
    .bind(tenant.as_str())
    .bind(now)
    .bind(max)
    .fetch_one(&mut *conn)
    .await?;
    let Some(all) = all else { return Ok(None) };
    let rows = all.split(RECORD_SEP).map(split_leased).collect::<Result<Vec<_>, _>>()?;
    let seqs = serde_json::to_string(&rows.iter().map(|r| r.0).collect::<Vec<_>>())
        .map_err(|e| StoreError::corrupt("seq", e))?;
    let ids = serde_json::to_string(&rows.iter().map(|r| r.2.as_str()).collect::<Vec<_>>())
        .map_err(|e| StoreError::corrupt("event_id", e))?;
    let id = uuid::Uuid::now_v7().to_string();
    let expires_at = now.saturating_add(lease_ms);
    sqlx::query("INSERT INTO leases (lease_id, tenant, expires_at, seqs, ids) VALUES (?1, ?2, ?3, ?4, ?5)")
        .bind(&id)
        .bind(tenant.as_str())
        .bind(expires_at)
        .bind(seqs)
        .bind(ids)
        .execute(&mut *conn)
        .await?;
    leased(tenant, id, expires_at, rows, |r| Ok(r.clone()))
}

/// One leased event out of the lease query's answer: `seq`, `due_at`, `event_id`, `body`.
fn split_leased(record: &str) -> Result<(i64, i64, String, String), StoreError> {
    let mut fields = record.splitn(4, FIELD_SEP);
    let mut next =
        |name: &'static str| fields.next().ok_or_else(|| StoreError::corrupt(name, "missing in a lease row"));
    let seq = next("seq")?.parse().map_err(|e| StoreError::corrupt("seq", e))?;
    let due = next("due_at")?.parse().map_err(|e| StoreError::corrupt("due_at", e))?;
    let event_id = next("event_id")?.to_owned();
    let body = next("body")?.to_owned();
    Ok((seq, due, event_id, body))
}
