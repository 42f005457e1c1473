//! The SQLite adapter: the embedded default, one file per agent.
//!
//! Every write goes through one writer task that owns one connection. It drains whatever
//! callers have queued, runs it all in one `BEGIN IMMEDIATE` transaction and commits once:
//! group commit, so that durable throughput is not bounded by the disk's fsync rate. Each
//! caller gets its own answer, exactly as if the operations had run one after the other; if
//! anything in a group fails, the group is rolled back and each operation is run again on
//! its own, so that a failure (such as a full disk) is reported only to the call it belongs
//! to, and nothing of that call is stored. Reads (`counts`, `dead_letters`) use a small pool
//! of read connections, which WAL lets run beside the writer.
//!
//! A tenant is held through the kernel's lock on its lock file, and each new holder counts a
//! generation in `tenant_claims`. A lease or settle taken under a claim first reads that row
//! in the writer's transaction (once per tenant and group) and is refused
//! ([`OutboxError::ClaimLost`]: nothing written, the rest of its group committed) once the
//! generation has moved on. The lock keeps out a dead holder; the generation keeps out a live
//! one that let the tenant go, or lost it to another agent of its process, and still holds a
//! claim or a lease.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use billsync_domain::{
    Claim, ClaimOutcome, Clock, DeadLetter, DeadLetterRecord, EncodedEvent, EnqueueReport, EventId, Holder, Lease,
    Outbox, OutboxError, StorageFailure, TenantCounts, TenantName,
};
use chrono::{DateTime, Utc};
use fs4::fs_std::FileExt as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::sqlite::{SqliteRow, SqliteSynchronous};
use sqlx::{Connection, Executor as _, Row as _};
use tokio::sync::{mpsc, oneshot};

use crate::common::{EnqueuePlan, count, counts_from, event_id, from_ms, limit, span_ms, to_ms};
use crate::error::{Chain, During as _, StoreError};
use crate::quarantine::NewEntry;
use crate::reconcile::{HeldRow, LedgerFact, ledger_facts};

mod ops;
mod quarantine;
mod reconcile;
mod writer;

use ops::{Fences, exec_one, insert_rows};
use writer::{Op, Out, Request, checkpoint_loop, writer_loop};

/// A boxed `Send` future.
type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Most operations committed in one group.
const MAX_GROUP_OPS: usize = 1024;
/// Most events enqueued in one group (further callers wait for the next commit).
const MAX_GROUP_EVENTS: usize = 20_000;
/// Times the writer yields to let more callers join a group before committing it.
const GATHER_YIELDS: usize = 2;
/// Most rows in one `INSERT` statement (a power of two; at most 6 bound parameters a row, far
/// below SQLite's limit of 32,766).
const INSERT_CHUNK: usize = 256;
/// Most delivered rows deleted in one transaction by `compact`.
const COMPACT_CHUNK: i64 = 2_000;
/// Room in the writer's queue before callers wait.
const QUEUE_DEPTH: usize = 4_096;
/// How long to wait for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// The writer's own automatic checkpoint, in WAL pages: a safety net only.
const WRITER_AUTOCHECKPOINT: u32 = 16_384;
/// Least time between two background checkpoints.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// SQLite's default page size, used to turn a byte limit into pages.
const PAGE_SIZE: u64 = 4_096;

/// Options of a SQLite outbox beyond its path.
#[derive(Debug, Clone, Default)]
pub struct SqliteOptions {
    max_size_bytes: Option<u64>,
}

impl SqliteOptions {
    /// The defaults: no size limit but the disk's.
    pub fn new() -> Self {
        Self::default()
    }

    /// Caps the database file at about `bytes` (SQLite's `max_page_count`): an enqueue that
    /// would grow it further fails with [`OutboxError::Full`] and stores nothing.
    pub fn max_size_bytes(mut self, bytes: u64) -> Self {
        self.max_size_bytes = Some(bytes);
        self
    }
}

/// The durable outbox in one SQLite file (WAL; enqueues commit with `synchronous=FULL`, the
/// writes that only settle or hold events with `synchronous=NORMAL`).
///
/// Cheap to share behind an `Arc`; dropping the last handle lets the writer finish what is
/// queued and close the file.
pub struct SqliteOutbox {
    path: PathBuf,
    clock: Arc<dyn Clock>,
    writer: mpsc::Sender<Request>,
    reader: SqlitePool,
    /// The tenants this process holds, each through its lock file.
    claims: tokio::sync::Mutex<HashMap<String, HeldLock>>,
}

/// A tenant held through its lock file: the kernel keeps the lock while the file is open.
struct HeldLock {
    agent: String,
    generation: u64,
    _file: std::fs::File,
}

impl fmt::Debug for SqliteOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteOutbox").field("path", &self.path).field("clock", &self.clock).finish_non_exhaustive()
    }
}

impl SqliteOutbox {
    /// Runs the writer operation `op` makes, each a chunk of at most `chunk` rows in its own
    /// transaction (so that enqueues slip in between), until one does fewer; the rows in all.
    async fn in_chunks(&self, chunk: i64, op: impl Fn() -> Op) -> Result<u64, OutboxError> {
        let mut total = 0;
        loop {
            match self.call(op()).await? {
                Out::Count(n) => {
                    total += n;
                    if n < count(chunk) {
                        return Ok(total);
                    }
                }
                other => return Err(unexpected(other)),
            }
        }
    }

    /// Leases up to `max` events of `tenant`, fenced by `generation` when it is given (a lease
    /// taken under a claim carries it, and is refused once the tenant's generation moved on).
    async fn lease_under(
        &self,
        tenant: &TenantName,
        max: usize,
        lease_for: Duration,
        generation: Option<u64>,
    ) -> Result<Option<Lease>, OutboxError> {
        if max == 0 {
            return Ok(None);
        }
        let op = Op::Lease { tenant: tenant.clone(), max: limit(max), lease_ms: span_ms(lease_for), generation };
        match self.call(op).await? {
            Out::Leased(lease) => Ok(lease.map(|l| Lease { generation, ..l })),
            other => Err(settle_refused(tenant, other)),
        }
    }

    /// Opens the outbox at `path`, creating the file if missing and bringing its schema up
    /// to date.
    ///
    /// # Errors
    /// [`OutboxError::SchemaTooNew`] when a newer billsync wrote the file (nothing is
    /// changed then); [`OutboxError::Full`] when there is no room to create or migrate it;
    /// [`OutboxError::Storage`] when it cannot be opened (not a database, no permission).
    pub async fn open(path: &Path, clock: Arc<dyn Clock>) -> Result<Self, OutboxError> {
        Self::open_with(path, clock, SqliteOptions::default()).await
    }

    /// Opens the outbox at `path` with `options`.
    ///
    /// # Errors
    /// As [`SqliteOutbox::open`].
    pub async fn open_with(path: &Path, clock: Arc<dyn Clock>, options: SqliteOptions) -> Result<Self, OutboxError> {
        Self::try_open(path, clock, options).await.during(format_args!("opening {}", path.display()))
    }

    /// Opens, trying again while another process is creating the same fresh outbox: sqlx takes
    /// no migration lock on SQLite, and switching a new file to WAL answers `SQLITE_BUSY`
    /// without waiting, so `billsync enqueue` starting while `billsync run` starts would fail.
    /// A schema that is too new is final at once.
    async fn try_open(path: &Path, clock: Arc<dyn Clock>, options: SqliteOptions) -> Result<Self, StoreError> {
        let mut tries = 1;
        loop {
            match Self::try_open_once(path, Arc::clone(&clock), options.clone()).await {
                Ok(outbox) => return Ok(outbox),
                Err(e @ StoreError::SchemaTooNew { .. }) => return Err(e),
                Err(e) if tries < OPEN_TRIES => {
                    tracing::debug!(
                        error = %Chain(&e),
                        tries,
                        "opening the outbox raced with another process; trying again"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(50 * tries)).await;
                    tries += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_open_once(path: &Path, clock: Arc<dyn Clock>, options: SqliteOptions) -> Result<Self, StoreError> {
        let mut connect = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .statement_cache_capacity(256);
        if let Some(bytes) = options.max_size_bytes {
            connect = connect.pragma("max_page_count", (bytes / PAGE_SIZE).max(1).to_string());
        }
        // The writer leaves checkpoints to a connection of their own, off its commit path
        // (its own automatic checkpoint is only a safety net for a stalled checkpointer).
        let writer_options = connect.clone().pragma("wal_autocheckpoint", WRITER_AUTOCHECKPOINT.to_string());
        let mut conn = SqliteConnection::connect_with(&writer_options).await?;
        if let Err(e) = migrate(&mut conn).await {
            if let Err(close) = conn.close().await {
                // The migration's failure is the one to report; the connection goes either way.
                tracing::debug!(error = %close, "closing the outbox after a failed migration failed");
            }
            return Err(e);
        }
        let reader =
            SqlitePoolOptions::new().max_connections(4).min_connections(0).connect_with(connect.clone()).await?;
        let checkpointer = SqliteConnection::connect_with(&connect).await?;
        let (wal_grew, wal_grown) = mpsc::channel(1);
        tokio::spawn(checkpoint_loop(checkpointer, wal_grown));
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(writer_loop(conn, rx, Arc::clone(&clock), wal_grew));
        Ok(Self { path: path.to_owned(), clock, writer: tx, reader, claims: tokio::sync::Mutex::default() })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The folder of the tenants' lock files: `<outbox file>.locks`, beside the outbox.
    pub fn lock_dir(&self) -> PathBuf {
        let mut name = self.path.file_name().map(std::ffi::OsStr::to_owned).unwrap_or_default();
        name.push(".locks");
        self.path.with_file_name(name)
    }

    /// Opens (creating) a tenant's lock file. Tenant names are letters, digits and `-_.`, so
    /// they are safe file names.
    fn lock_file(&self, tenant: &TenantName) -> Result<std::fs::File, StoreError> {
        let dir = self.lock_dir();
        std::fs::create_dir_all(&dir).map_err(|e| self.lock_error(tenant, e))?;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(format!("{tenant}.lock")))
            .map_err(|e| self.lock_error(tenant, e))
    }

    fn lock_error(&self, tenant: &TenantName, e: std::io::Error) -> StoreError {
        StoreError::Lock { path: self.lock_dir().join(format!("{tenant}.lock")), source: e }
    }

    fn now_ms(&self) -> i64 {
        to_ms(self.clock.now())
    }

    async fn call(&self, op: Op) -> Result<Out, OutboxError> {
        let (reply, answer) = oneshot::channel();
        self.writer.send(Request { op, reply }).await.map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }
}

/// Tries of an open while another process creates the same fresh outbox (about 2 s in all).
const OPEN_TRIES: u64 = 9;

/// Applies the embedded migrations, refusing a database written by a newer schema.
async fn migrate(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    let supported = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    match MIGRATOR.run(&mut *conn).await {
        Ok(()) => Ok(()),
        Err(sqlx::migrate::MigrateError::VersionMissing(v)) => {
            let found: Option<i64> =
                sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations").fetch_one(&mut *conn).await?;
            Err(StoreError::SchemaTooNew { found: found.unwrap_or(v).max(v), supported })
        }
        Err(e) => Err(e.into()),
    }
}

fn unexpected(out: Out) -> OutboxError {
    OutboxError::Storage(StorageFailure::new(format!("the outbox writer gave an unexpected answer: {out:?}")))
}

/// The answer to a settle: done, or refused because a later holder has the lease's tenant.
fn settled(lease: &Lease, out: Out) -> Result<(), OutboxError> {
    match out {
        Out::Done => Ok(()),
        other => Err(settle_refused(&lease.tenant, other)),
    }
}

/// [`OutboxError::ClaimLost`] for a refused lease or settle; any other answer is unexpected.
fn settle_refused(tenant: &TenantName, out: Out) -> OutboxError {
    match out {
        Out::ClaimLost(generation) => OutboxError::ClaimLost { tenant: tenant.clone(), generation },
        other => unexpected(other),
    }
}

fn dead_letter_record(row: &SqliteRow) -> Result<DeadLetterRecord, StoreError> {
    let tenant: String = row.try_get(0)?;
    let attempts: i64 = row.try_get(4)?;
    Ok(DeadLetterRecord {
        tenant: TenantName::parse(tenant).map_err(|e| StoreError::corrupt("tenant", e))?,
        event_id: event_id(row.try_get(1)?)?,
        code: row.try_get::<Option<String>, _>(2)?.unwrap_or_default(),
        message: row.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        dead_at: from_ms(row.try_get::<Option<i64>, _>(5)?.unwrap_or(0))?,
    })
}

#[async_trait]
impl Outbox for SqliteOutbox {
    async fn enqueue(&self, tenant: &TenantName, events: &[EncodedEvent]) -> Result<EnqueueReport, OutboxError> {
        if events.is_empty() {
            return Ok(EnqueueReport::default());
        }
        // The ledger facts are read here, on the caller's task, not on the writer's.
        let facts = ledger_facts(tenant, events);
        match self.call(Op::Enqueue { tenant: tenant.clone(), events: events.to_vec(), facts }).await? {
            Out::Enqueued(report) => Ok(report),
            other => Err(unexpected(other)),
        }
    }

    async fn lease(&self, tenant: &TenantName, max: usize, lease_for: Duration) -> Result<Option<Lease>, OutboxError> {
        self.lease_under(tenant, max, lease_for, None).await
    }

    /// Refused with [`OutboxError::ClaimLost`] once another holder has the tenant (a later
    /// generation), as every settle of the lease then is: the kernel lock keeps out a dead
    /// holder, the generation a live one that let the tenant go and still holds its claim.
    async fn lease_claimed(
        &self,
        claim: &Claim,
        max: usize,
        lease_for: Duration,
    ) -> Result<Option<Lease>, OutboxError> {
        self.lease_under(&claim.tenant, max, lease_for, Some(claim.generation)).await
    }

    async fn ack(&self, lease: &Lease, delivered: &[EventId]) -> Result<(), OutboxError> {
        if delivered.is_empty() {
            return Ok(());
        }
        let ids = delivered.iter().map(|id| id.as_str().to_owned()).collect();
        let op = Op::Ack {
            tenant: lease.tenant.as_str().to_owned(),
            lease: lease.id.as_str().to_owned(),
            ids,
            generation: lease.generation,
        };
        settled(lease, self.call(op).await?)
    }

    async fn nack(&self, lease: &Lease, retry_at: DateTime<Utc>) -> Result<(), OutboxError> {
        let op = Op::Nack {
            tenant: lease.tenant.as_str().to_owned(),
            lease: lease.id.as_str().to_owned(),
            retry_at: to_ms(retry_at),
            generation: lease.generation,
        };
        settled(lease, self.call(op).await?)
    }

    async fn dead_letter(&self, lease: &Lease, items: &[DeadLetter]) -> Result<(), OutboxError> {
        if items.is_empty() {
            return Ok(());
        }
        let op = Op::DeadLetter {
            tenant: lease.tenant.as_str().to_owned(),
            lease: lease.id.as_str().to_owned(),
            items: items.to_vec(),
            generation: lease.generation,
        };
        settled(lease, self.call(op).await?)
    }

    async fn requeue(&self, tenant: &TenantName, ids: Option<Vec<EventId>>) -> Result<u64, OutboxError> {
        let ids = ids.map(|ids| ids.into_iter().map(String::from).collect());
        match self.call(Op::Requeue { tenant: tenant.as_str().to_owned(), ids }).await? {
            Out::Count(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    async fn counts(&self, tenant: &TenantName) -> Result<TenantCounts, OutboxError> {
        let now = self.now_ms();
        let row = sqlx::query(
            "WITH held(seq) AS (SELECT j.value FROM leases AS l, json_each(l.seqs) AS j \
                                WHERE l.tenant = ?1 AND l.expires_at > ?2) \
             , n(pending, dead, stored) AS (SELECT \
                 (SELECT count(*) FROM pending WHERE tenant = ?1), \
                 (SELECT count(*) FROM dead WHERE tenant = ?1), \
                 (SELECT count(*) FROM events WHERE tenant = ?1)) \
             SELECT \
             (SELECT count(*) FROM pending WHERE tenant = ?1 AND seq NOT IN held), \
             (SELECT count(*) FROM held WHERE seq IN (SELECT seq FROM pending)), \
             0, \
             (SELECT stored - pending - dead FROM n), \
             (SELECT dead FROM n), \
             (SELECT min(enqueued_at) FROM pending WHERE tenant = ?1 AND seq NOT IN held), \
             NULL, \
             (SELECT min(due_at) FROM pending WHERE tenant = ?1 AND due_at > ?2)",
        )
        .bind(tenant.as_str())
        .bind(now)
        .fetch_one(&self.reader)
        .await
        .during(format_args!("counts of tenant {tenant}"))?;
        counts_from(|i| row.try_get::<Option<i64>, _>(i)).during(format_args!("counts of tenant {tenant}"))
    }

    async fn dead_letters(&self, tenant: Option<TenantName>) -> Result<Vec<DeadLetterRecord>, OutboxError> {
        const COLUMNS: &str = "SELECT e.tenant, e.event_id, d.code, d.message, e.attempts, d.dead_at \
                               FROM dead AS d JOIN events AS e ON e.seq = d.seq";
        let rows = match &tenant {
            Some(t) => {
                sqlx::query(&format!("{COLUMNS} WHERE d.tenant = ?1 ORDER BY d.dead_at, d.seq"))
                    .bind(t.as_str())
                    .fetch_all(&self.reader)
                    .await
            }
            None => sqlx::query(&format!("{COLUMNS} ORDER BY d.dead_at, d.seq")).fetch_all(&self.reader).await,
        }
        .during("listing dead letters")?;
        rows.iter().map(dead_letter_record).collect::<Result<_, _>>().during("listing dead letters")
    }

    async fn compact(&self, before: DateTime<Utc>) -> Result<u64, OutboxError> {
        let before = to_ms(before);
        self.in_chunks(COMPACT_CHUNK, || Op::CompactChunk { before }).await
    }

    async fn claim_tenant(
        &self,
        tenant: &TenantName,
        agent: &str,
        _ttl: Duration,
    ) -> Result<ClaimOutcome, OutboxError> {
        let mut held = self.claims.lock().await;
        if let Some(mine) = held.get(tenant.as_str()) {
            return Ok(if mine.agent == agent {
                ClaimOutcome::Claimed(Claim { tenant: tenant.clone(), generation: mine.generation })
            } else {
                // Another engine of this process: it holds the lock.
                ClaimOutcome::HeldBy(Holder { agent: mine.agent.clone(), heartbeat: None })
            });
        }
        let lock = self.lock_file(tenant).during(format_args!("claim of tenant {tenant}"))?;
        let locked = lock.try_lock_exclusive().map_err(|e| self.lock_error(tenant, e));
        if !locked.during(format_args!("claim of tenant {tenant}"))? {
            let holder: Option<String> = sqlx::query_scalar("SELECT holder FROM tenant_claims WHERE tenant = ?1")
                .bind(tenant.as_str())
                .fetch_optional(&self.reader)
                .await
                .during(format_args!("reading the holder of tenant {tenant}"))?;
            return Ok(ClaimOutcome::HeldBy(Holder {
                agent: holder.unwrap_or_else(|| "another process".into()),
                heartbeat: None,
            }));
        }
        let op = Op::Claim { tenant: tenant.as_str().to_owned(), agent: agent.to_owned() };
        let generation = match self.call(op).await? {
            Out::Claimed(generation) => generation,
            other => return Err(unexpected(other)),
        };
        held.insert(tenant.as_str().to_owned(), HeldLock { agent: agent.to_owned(), generation, _file: lock });
        Ok(ClaimOutcome::Claimed(Claim { tenant: tenant.clone(), generation }))
    }

    async fn save_tenant_state(&self, tenant: &TenantName, state: &str) -> Result<(), OutboxError> {
        self.call(Op::SaveState { tenant: tenant.as_str().to_owned(), state: state.to_owned() }).await.map(drop)
    }

    async fn tenant_state(&self, tenant: &TenantName) -> Result<Option<String>, OutboxError> {
        let row = sqlx::query("SELECT state FROM tenant_state WHERE tenant = ?1")
            .bind(tenant.as_str())
            .fetch_optional(&self.reader)
            .await
            .during(format_args!("reading the state of tenant {tenant}"))?;
        row.map(|r| r.try_get::<String, _>(0)).transpose().during(format_args!("reading the state of tenant {tenant}"))
    }

    async fn release_tenant(&self, tenant: &TenantName, agent: &str) -> Result<(), OutboxError> {
        let mut held = self.claims.lock().await;
        if held.get(tenant.as_str()).is_none_or(|h| h.agent != agent) {
            return Ok(());
        }
        let done = self.call(Op::Release { tenant: tenant.as_str().to_owned(), agent: agent.to_owned() }).await;
        // Closing the file releases the lock, whatever the row says.
        held.remove(tenant.as_str());
        done.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use billsync_domain::ManualClock;

    use super::writer::run_group;
    use super::*;

    #[tokio::test]
    async fn connections_are_durable_wal() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let outbox = SqliteOutbox::open(&dir.path().join("o.db"), Arc::new(ManualClock::new(Utc::now()))).await?;
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&outbox.reader).await?;
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(&outbox.reader).await?;
        assert_eq!((mode.as_str(), sync), ("wal", 2), "WAL with synchronous=FULL");
        Ok(())
    }

    /// In one group, a claim moves the generation for the operations after it: the fence is
    /// read once per tenant and group, and read again after a claim.
    #[tokio::test]
    async fn a_claim_in_a_group_fences_the_settles_after_it() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("o.db");
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let outbox = SqliteOutbox::open(&path, clock.clone()).await?;
        let t = TenantName::parse("acme")?;
        let events: Vec<_> = ["e-0", "e-1", "e-2"]
            .iter()
            .map(|id| Ok(EncodedEvent::from_stored(EventId::parse(*id)?, format!(r#"{{"event_id":"{id}"}}"#))))
            .collect::<Result<_, billsync_domain::InvalidId>>()?;
        outbox.enqueue(&t, &events).await?;
        let ClaimOutcome::Claimed(claim) = outbox.claim_tenant(&t, "agent-a", Duration::from_secs(15)).await? else {
            return Err("a free tenant could not be claimed".into());
        };
        let lease = outbox.lease_claimed(&claim, 3, Duration::from_secs(60)).await?.ok_or("nothing leased")?;
        let ack = |id: &str, generation: u64| Op::Ack {
            tenant: "acme".into(),
            lease: lease.id.as_str().to_owned(),
            ids: vec![id.to_owned()],
            generation: Some(generation),
        };
        let g = claim.generation;
        let ops = [
            ack("e-0", g),
            Op::Claim { tenant: "acme".into(), agent: "agent-b".into() },
            ack("e-1", g),
            ack("e-2", g + 1),
        ];
        let mut conn = SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(&path)).await?;
        let refs: Vec<&Op> = ops.iter().collect();
        let outs = run_group(&mut conn, &refs, to_ms(clock.now())).await;
        let outs: Vec<String> = outs.into_iter().map(|o| format!("{:?}", o.map_err(|e| e.to_string()))).collect();
        assert_eq!(
            outs,
            [
                "Ok(Done)".to_owned(),
                format!("Ok(Claimed({}))", g + 1),
                format!("Ok(ClaimLost({g}))"),
                "Ok(Done)".to_owned()
            ]
        );
        let counts = outbox.counts(&t).await?;
        assert_eq!((counts.delivered, counts.pending), (2, 1), "e-1's stale ack wrote nothing");
        conn.close().await?;
        Ok(())
    }
}

#[cfg(test)]
mod schema_version {
    #[test]
    fn the_newest_migration_is_the_published_schema_version() {
        assert_eq!(super::MIGRATOR.iter().map(|m| m.version).max(), Some(crate::SQLITE_SCHEMA_VERSION));
    }
}
