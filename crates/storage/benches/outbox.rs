//! Outbox throughput, each figure beside a baseline measured in the same run: a raw sqlx
//! insert loop against the same file with the same durability (WAL, `synchronous=FULL`).
//!
//! - `enqueue_batch_1000`: 1,000-event durable transactions (target >= 100,000 events/s).
//! - `enqueue_single_64_producers`: single-event enqueues from 64 concurrent producers (group
//!   commit) against one transaction per event (target >= 20x).
//! - `lease_ack_500`: lease 500 + ack 500 from 10,000 pending (target >= 50,000 events/s).
//! - `lease_ack_backlog`: the same from 10,000 and from 1,000,000 pending (target: per-event
//!   cost within 30%).
//! - `lease_ack_claimed`: under a tenant claim (leases and settles fenced by its generation),
//!   from 10,000 pending: lease 500 + ack 500 in one call, and lease 500 + 500 concurrent
//!   one-event acks (the writer groups them; the per-operation cost of a settle).
//! - `postgres_enqueue_batch_1000`: PostgreSQL, against a raw insert loop in one transaction,
//!   each statement writing an event and its `pending` row as the outbox does, without the
//!   ledger (skipped with a message when no server answers at `BILLSYNC_TEST_DATABASE_URL`).
//!
//! Files live under Cargo's target tmp dir (a real disk, so fsyncs cost what they cost).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // bench and example code: a panic is a failure

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use billsync_domain::{
    BillingEvent, Claim, ClaimOutcome, Clock, EncodedEvent, EventId, Outbox, SystemClock, TenantName,
};
use billsync_storage::{PostgresOutbox, SqliteOutbox};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, PgConnection, SqliteConnection};
use tokio::runtime::Runtime;

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a tokio runtime")
}

fn tenant() -> TenantName {
    TenantName::parse("bench").expect("valid tenant")
}

/// A fresh, realistic event with a never-used id.
fn fresh_event() -> EncodedEvent {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let now = SystemClock.now();
    let json = format!(
        r#"{{"event_id": "ev-{n}", "device_id": "meter-{:04}", "meter": "energy.active", "quantity": "12.500",
            "unit": "kWh", "occurred_at": "{}", "attributes": {{"site": "plant-7"}}}}"#,
        n % 10_000,
        now.to_rfc3339()
    );
    BillingEvent::parse(&json, now).expect("valid event").encode()
}

fn fresh_events(n: usize) -> Vec<EncodedEvent> {
    (0..n).map(|_| fresh_event()).collect()
}

fn bench_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a temporary directory")
}

/// A migrated outbox file, and a raw connection to it with the outbox's durability.
async fn outbox_and_raw(path: &Path) -> (SqliteOutbox, SqliteConnection) {
    let outbox = SqliteOutbox::open(path, Arc::new(SystemClock)).await.expect("outbox opens");
    let raw = SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30)),
    )
    .await
    .expect("raw connection");
    (outbox, raw)
}

/// The event's row alone: the outbox also writes its narrow `pending` row.
const RAW_INSERT: &str = "INSERT INTO events (tenant, event_id, body, enqueued_at) VALUES (?1, ?2, ?3, ?4)";

async fn raw_insert(conn: &mut SqliteConnection, e: &EncodedEvent, now: i64) {
    sqlx::query(RAW_INSERT)
        .bind("bench")
        .bind(e.event_id().as_str())
        .bind(e.json())
        .bind(now)
        .execute(&mut *conn)
        .await
        .expect("raw insert");
}

fn enqueue_batch(c: &mut Criterion) {
    let rt = runtime();
    let dir = bench_dir();
    let (outbox, mut raw) = rt.block_on(outbox_and_raw(&dir.path().join("batch.db")));
    let t = tenant();
    let mut g = c.benchmark_group("enqueue_batch_1000");
    g.throughput(Throughput::Elements(1_000));
    g.bench_function("baseline_raw_insert_loop_one_tx", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let batch = fresh_events(1_000);
                    let start = Instant::now();
                    let now = SystemClock.now().timestamp_millis();
                    let mut tx = raw.begin().await.expect("begin");
                    for e in &batch {
                        raw_insert(&mut tx, e, now).await;
                    }
                    tx.commit().await.expect("commit");
                    spent += start.elapsed();
                }
                spent
            })
        })
    });
    g.bench_function("outbox_enqueue", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let batch = fresh_events(1_000);
                    let start = Instant::now();
                    let report = outbox.enqueue(&t, &batch).await.expect("enqueue");
                    spent += start.elapsed();
                    assert_eq!(report.stored, 1_000);
                }
                spent
            })
        })
    });
    g.finish();
}

fn enqueue_single(c: &mut Criterion) {
    const PRODUCERS: usize = 64;
    const PER_PRODUCER: usize = 10;
    let rt = runtime();
    let dir = bench_dir();
    let (outbox, mut raw) = rt.block_on(outbox_and_raw(&dir.path().join("single.db")));
    let outbox: Arc<dyn Outbox> = Arc::new(outbox);
    let t = tenant();
    let mut g = c.benchmark_group("enqueue_single_64_producers");
    g.throughput(Throughput::Elements(1));
    g.bench_function("baseline_raw_one_tx_per_event", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let e = fresh_event();
                    let start = Instant::now();
                    raw_insert(&mut raw, &e, SystemClock.now().timestamp_millis()).await;
                    spent += start.elapsed();
                }
                spent
            })
        })
    });
    g.throughput(Throughput::Elements((PRODUCERS * PER_PRODUCER) as u64));
    g.bench_function("outbox_group_commit", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let work: Vec<Vec<EncodedEvent>> = (0..PRODUCERS).map(|_| fresh_events(PER_PRODUCER)).collect();
                    let start = Instant::now();
                    let tasks: Vec<_> = work
                        .into_iter()
                        .map(|events| {
                            let (outbox, t) = (outbox.clone(), t.clone());
                            tokio::spawn(async move {
                                for e in events {
                                    let report = outbox.enqueue(&t, std::slice::from_ref(&e)).await.expect("enqueue");
                                    assert_eq!(report.stored, 1);
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.expect("producer");
                    }
                    spent += start.elapsed();
                }
                spent
            })
        })
    });
    g.finish();
}

/// Fills a migrated outbox file with `n` pending events in big multi-row inserts (without
/// fsyncs: this is setup, not measurement).
async fn prefill(path: &Path, n: u64) {
    let mut conn = SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Off),
    )
    .await
    .expect("fill connection");
    let due = SystemClock.now().timestamp_millis() - 3_600_000;
    let body = fresh_event().json().replace("\"ev-", "\"pre-");
    sqlx::query(
        "WITH RECURSIVE c(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM c WHERE x + 1 < ?1) \
         INSERT INTO events (tenant, event_id, body, enqueued_at) \
         SELECT 'bench', 'pre-' || x, ?2, ?3 + x / 1000 FROM c",
    )
    .bind(i64::try_from(n).expect("small n"))
    .bind(body)
    .bind(due)
    .execute(&mut conn)
    .await
    .expect("prefill");
    sqlx::query("INSERT INTO pending (seq, tenant, due_at, enqueued_at) SELECT seq, tenant, enqueued_at, enqueued_at FROM events")
        .execute(&mut conn)
        .await
        .expect("prefill pending");
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut conn).await.expect("checkpoint");
    conn.close().await.expect("close");
}

/// Time for `iters` rounds of lease 500 + ack 500; each round then enqueues 500 fresh
/// events (unmeasured) so that the backlog keeps its size.
async fn lease_ack_rounds(outbox: &SqliteOutbox, iters: u64) -> Duration {
    let t = tenant();
    let mut spent = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        let lease = outbox.lease(&t, 500, Duration::from_secs(60)).await.expect("lease").expect("a backlog");
        let ids: Vec<EventId> = lease.events.iter().map(|e| e.event_id().clone()).collect();
        outbox.ack(&lease, &ids).await.expect("ack");
        spent += start.elapsed();
        assert_eq!(ids.len(), 500);
        outbox.enqueue(&t, &fresh_events(500)).await.expect("refill");
    }
    spent
}

fn lease_ack(c: &mut Criterion) {
    let rt = runtime();
    let dir = bench_dir();
    let mut g = c.benchmark_group("lease_ack_backlog");
    g.throughput(Throughput::Elements(500));
    for backlog in [10_000u64, 1_000_000] {
        let path = dir.path().join(format!("backlog-{backlog}.db"));
        let outbox = rt.block_on(async {
            drop(SqliteOutbox::open(&path, Arc::new(SystemClock)).await.expect("migrate"));
            let start = Instant::now();
            prefill(&path, backlog).await;
            eprintln!("prefilled {backlog} pending events in {:?}", start.elapsed());
            SqliteOutbox::open(&path, Arc::new(SystemClock)).await.expect("outbox opens")
        });
        g.bench_with_input(BenchmarkId::new("lease_500_ack_500", backlog), &backlog, |b, _| {
            b.iter_custom(|iters| rt.block_on(lease_ack_rounds(&outbox, iters)))
        });
        drop(outbox);
    }
    g.finish();
}

/// Time for `iters` rounds of a lease of 500 under `claim`, then its acks: one ack of 500
/// (`singles == false`) or 500 concurrent acks of one event each. Each round then enqueues 500
/// fresh events (unmeasured) so that the backlog keeps its size.
async fn claimed_rounds(outbox: &Arc<SqliteOutbox>, claim: &Claim, iters: u64, singles: bool) -> Duration {
    let mut spent = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        let lease = outbox.lease_claimed(claim, 500, Duration::from_secs(60)).await.expect("lease").expect("a backlog");
        let ids: Vec<EventId> = lease.events.iter().map(|e| e.event_id().clone()).collect();
        if singles {
            let lease = Arc::new(lease);
            let tasks: Vec<_> = ids
                .iter()
                .map(|id| {
                    let (outbox, lease, id) = (Arc::clone(outbox), Arc::clone(&lease), id.clone());
                    tokio::spawn(async move { outbox.ack(&lease, &[id]).await.expect("ack") })
                })
                .collect();
            for task in tasks {
                task.await.expect("acker");
            }
        } else {
            outbox.ack(&lease, &ids).await.expect("ack");
        }
        spent += start.elapsed();
        assert_eq!(ids.len(), 500);
        outbox.enqueue(&claim.tenant, &fresh_events(500)).await.expect("refill");
    }
    spent
}

fn lease_ack_claimed(c: &mut Criterion) {
    let rt = runtime();
    let dir = bench_dir();
    let path = dir.path().join("claimed.db");
    let (outbox, claim) = rt.block_on(async {
        drop(SqliteOutbox::open(&path, Arc::new(SystemClock)).await.expect("migrate"));
        prefill(&path, 10_000).await;
        let outbox = Arc::new(SqliteOutbox::open(&path, Arc::new(SystemClock)).await.expect("outbox opens"));
        let ClaimOutcome::Claimed(claim) =
            outbox.claim_tenant(&tenant(), "bench-1-a", Duration::from_secs(30)).await.expect("claim")
        else {
            panic!("a fresh outbox's tenant is free");
        };
        (outbox, claim)
    });
    let mut g = c.benchmark_group("lease_ack_claimed");
    g.throughput(Throughput::Elements(500));
    g.bench_function("lease_500_ack_500/10000", |b| {
        b.iter_custom(|iters| rt.block_on(claimed_rounds(&outbox, &claim, iters, false)))
    });
    g.bench_function("lease_500_ack_1x500_concurrent/10000", |b| {
        b.iter_custom(|iters| rt.block_on(claimed_rounds(&outbox, &claim, iters, true)))
    });
    g.finish();
}

fn postgres_enqueue(c: &mut Criterion) {
    let rt = runtime();
    let admin_url = std::env::var("BILLSYNC_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let name = format!("billsync_bench_{}", uuid::Uuid::new_v4().simple());
    let Ok(admin) = PgConnectOptions::from_str(&admin_url) else {
        eprintln!("postgres_enqueue_batch_1000 skipped: invalid BILLSYNC_TEST_DATABASE_URL");
        return;
    };
    let created = rt.block_on(async {
        let mut conn = PgConnection::connect_with(&admin).await?;
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
        conn.close().await
    });
    if let Err(e) = created {
        eprintln!("postgres_enqueue_batch_1000 skipped: no PostgreSQL at {admin_url}: {e}");
        return;
    }
    let db = admin.clone().database(&name);
    let (outbox, mut raw) = rt.block_on(async {
        let url = sqlx::ConnectOptions::to_url_lossy(&db).to_string();
        let outbox = PostgresOutbox::connect(&url, Arc::new(SystemClock)).await.expect("outbox connects");
        (outbox, PgConnection::connect_with(&db).await.expect("raw connection"))
    });
    let t = tenant();
    let mut g = c.benchmark_group("postgres_enqueue_batch_1000");
    g.throughput(Throughput::Elements(1_000));
    g.bench_function("baseline_raw_insert_loop_one_tx", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let batch = fresh_events(1_000);
                    let start = Instant::now();
                    let now = SystemClock.now().timestamp_millis();
                    let mut tx = raw.begin().await.expect("begin");
                    for e in &batch {
                        sqlx::query(
                            "WITH ins AS (INSERT INTO events (tenant, event_id, body, enqueued_at) \
                             VALUES ($1, $2, $3, $4) RETURNING seq, tenant) \
                             INSERT INTO pending (seq, tenant, due_at, enqueued_at) SELECT seq, tenant, $4, $4 FROM ins",
                        )
                        .bind("bench")
                        .bind(e.event_id().as_str())
                        .bind(e.json())
                        .bind(now)
                        .execute(&mut *tx)
                        .await
                        .expect("raw insert");
                    }
                    tx.commit().await.expect("commit");
                    spent += start.elapsed();
                }
                spent
            })
        })
    });
    g.bench_function("outbox_enqueue", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let batch = fresh_events(1_000);
                    let start = Instant::now();
                    outbox.enqueue(&t, &batch).await.expect("enqueue");
                    spent += start.elapsed();
                }
                spent
            })
        })
    });
    g.finish();
    rt.block_on(async {
        drop(outbox);
        let _ = raw.close().await;
        if let Ok(mut conn) = PgConnection::connect_with(&admin).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await;
        }
    });
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = enqueue_batch, enqueue_single, lease_ack, lease_ack_claimed, postgres_enqueue
}
criterion_main!(benches);
