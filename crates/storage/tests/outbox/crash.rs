//! Crash safety: a child process works an outbox file (enqueue, lease, ack) and is killed
//! with SIGKILL at random points; after each kill the file opens cleanly, every event whose
//! enqueue returned is there, every acked event stays delivered, and every leased-but-unacked
//! event is pending again once its lease expires.
//!
//! The child is this very test binary, run again with [`CHILD_DB`] set and the filter
//! `--exact crash::crash_workload`. Without [`CHILD_DB`], `crash_workload` runs a short,
//! bounded version of the same workload and checks its own results.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use billsync_domain::{Clock, EventId, ManualClock, Outbox, SystemClock};
use billsync_storage::SqliteOutbox;
use billsync_testkit::{TestResult, event, tenant};
use rand::Rng;
use sqlx::{Connection, SqliteConnection};

/// Where the child works; its presence selects child mode.
const CHILD_DB: &str = "BILLSYNC_CRASH_CHILD_DB";
/// A prefix for the child's event ids, unique per run.
const CHILD_RUN: &str = "BILLSYNC_CRASH_CHILD_RUN";
/// The child's leases; short, so that later children re-lease what earlier ones dropped.
const CHILD_LEASE: Duration = Duration::from_millis(300);
const KILLS: usize = 20;

/// What the workload has been told: events whose enqueue returned, and acks that returned.
#[derive(Default)]
struct Log {
    enqueued: Vec<String>,
    acked: Vec<String>,
}

/// Two tasks enqueue batches while a third leases, acks half of each lease and drops the
/// other half. Each returned call is reported through `report` ("E ids" / "A ids") before the
/// task goes on. Runs `rounds` rounds per enqueuer, or for ever.
async fn workload(
    outbox: Arc<dyn Outbox>,
    run: String,
    rounds: Option<usize>,
    report: Arc<dyn Fn(String) + Send + Sync>,
) -> TestResult {
    let t = tenant("crash");
    let mut enqueuers = Vec::new();
    for task in 0..2 {
        let (outbox, t, run, report) = (outbox.clone(), t.clone(), run.clone(), report.clone());
        enqueuers.push(tokio::spawn(async move {
            let mut n = 0usize;
            for round in 0.. {
                if rounds.is_some_and(|r| round >= r) {
                    break;
                }
                let size = rand::thread_rng().gen_range(1..=20);
                let batch: Vec<_> = (0..size).map(|i| event(&format!("{run}-{task}-{}", n + i))).collect();
                n += size;
                outbox.enqueue(&t, &batch).await?;
                let ids: Vec<&str> = batch.iter().map(|e| e.event_id().as_str()).collect();
                report(format!("E {}", ids.join(" ")));
            }
            Ok::<_, billsync_domain::OutboxError>(())
        }));
    }
    // Stopped by a flag, not aborted: a lease already handed to the writer would still run
    // after an abort and hold events while the caller checks the outbox.
    let stop = Arc::new(AtomicBool::new(false));
    let leaser = {
        let (outbox, t, report, stop) = (outbox.clone(), t.clone(), report.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match outbox.lease(&t, 16, CHILD_LEASE).await? {
                    Some(lease) => {
                        let half: Vec<EventId> = lease.events.iter().step_by(2).map(|e| e.event_id().clone()).collect();
                        outbox.ack(&lease, &half).await?;
                        let ids: Vec<&str> = half.iter().map(EventId::as_str).collect();
                        report(format!("A {}", ids.join(" ")));
                    }
                    None => tokio::time::sleep(Duration::from_millis(2)).await,
                }
            }
            Ok::<_, billsync_domain::OutboxError>(())
        })
    };
    for e in enqueuers {
        e.await??;
    }
    stop.store(true, Ordering::SeqCst);
    leaser.await??;
    Ok(())
}

/// In child mode, the workload for ever against `$BILLSYNC_CRASH_CHILD_DB`, reporting on
/// stdout; otherwise a bounded run that checks what it was told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_workload() -> TestResult {
    if let Ok(db) = std::env::var(CHILD_DB) {
        let run = std::env::var(CHILD_RUN)?;
        let outbox = SqliteOutbox::open(Path::new(&db), Arc::new(SystemClock)).await?;
        let report = Arc::new(|line: String| {
            // Straight to the file descriptor, past the test harness's capture, flushed
            // before the workload goes on.
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(format!("{line}\n").as_bytes());
            let _ = out.flush();
        });
        return workload(Arc::new(outbox), run, None, report).await;
    }

    let dir = tempfile::tempdir()?;
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let outbox: Arc<dyn Outbox> = Arc::new(SqliteOutbox::open(&dir.path().join("o.db"), clock.clone()).await?);
    let log = Arc::new(Mutex::new(Log::default()));
    let sink = log.clone();
    let report = Arc::new(move |line: String| record(&mut sink.lock().unwrap_or_else(|p| p.into_inner()), &line));
    workload(outbox.clone(), "smoke".into(), Some(30), report).await?;
    let log = std::mem::take(&mut *log.lock().unwrap_or_else(|p| p.into_inner()));
    clock.advance(Duration::from_secs(3600));
    check(&outbox, &log).await
}

fn record(log: &mut Log, line: &str) {
    let mut words = line.split_whitespace();
    let target = match words.next() {
        Some("E") => &mut log.enqueued,
        Some("A") => &mut log.acked,
        _ => return,
    };
    target.extend(words.map(str::to_owned));
}

/// The outbox holds every enqueued event, acked ones delivered, and nothing in flight (the
/// clock is past every lease).
async fn check(outbox: &Arc<dyn Outbox>, log: &Log) -> TestResult {
    let t = tenant("crash");
    let acked: HashSet<&str> = log.acked.iter().map(String::as_str).collect();
    let counts = outbox.counts(&t).await?;
    assert_eq!(counts.in_flight, 0, "a lease survived its expiry");
    assert!(counts.delivered as usize >= acked.len(), "an acked event is not delivered");
    // Re-enqueueing every reported event must find all of them stored.
    for chunk in log.enqueued.chunks(500) {
        let again: Vec<_> = chunk.iter().map(|i| event(i)).collect();
        let report = outbox.enqueue(&t, &again).await?;
        assert_eq!(report.stored, 0, "events whose enqueue returned were lost");
    }
    // Every pending event can be leased, and none of them was acked.
    let mut pending = 0;
    if let Some(lease) = outbox.lease(&t, 10_000_000, Duration::from_secs(1)).await? {
        pending = lease.events.len();
        let back: Vec<&str> =
            lease.events.iter().map(|e| e.event_id().as_str()).filter(|i| acked.contains(i)).collect();
        assert!(back.is_empty(), "acked events came back: {back:?}");
        outbox.nack(&lease, billsync_domain::SystemClock.now() - chrono::Duration::days(1)).await?;
    }
    assert_eq!(pending as u64, counts.pending);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("crash.db");
    let exe = std::env::current_exe()?;
    let mut log = Log::default();
    let started = Instant::now();
    for run in 0..KILLS {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash::crash_workload", "--nocapture", "--test-threads", "1"])
            .env(CHILD_DB, &db)
            .env(CHILD_RUN, format!("r{run}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no child stdout")?;
        // Read the child's reports on a thread; kill it at a random point after it has
        // started working.
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout);
            let mut line = String::new();
            while lines.read_line(&mut line).unwrap_or(0) > 0 {
                // A line cut by the kill has no newline: it was never fully reported.
                if line.ends_with('\n') && tx.send(line.clone()).is_err() {
                    break;
                }
                line.clear();
            }
        });
        let first = rx.recv_timeout(Duration::from_secs(20)).map_err(|_| "the child never reported")?;
        let delay = rand::thread_rng().gen_range(5..250);
        std::thread::sleep(Duration::from_millis(delay));
        child.kill()?; // SIGKILL
        child.wait()?;
        reader.join().map_err(|_| "reader panicked")?;
        record(&mut log, &first);
        for line in rx.try_iter() {
            record(&mut log, &line);
        }

        // Opens cleanly, with every reported event, once every lease has expired.
        let mut conn = SqliteConnection::connect(&format!("sqlite://{}", db.display())).await?;
        let integrity: String = sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&mut conn).await?;
        assert_eq!(integrity, "ok", "after kill {run}");
        conn.close().await?;
        let clock = Arc::new(ManualClock::new(SystemClock.now() + chrono::Duration::hours(1)));
        let outbox: Arc<dyn Outbox> = Arc::new(SqliteOutbox::open(&db, clock).await?);
        check(&outbox, &log).await.map_err(|e| format!("after kill {run}: {e}"))?;
    }
    assert!(log.enqueued.len() > KILLS, "the children did too little to test anything: {}", log.enqueued.len());
    assert!(!log.acked.is_empty(), "the children never acked");
    eprintln!(
        "{KILLS} kills, {} events enqueued, {} acked, in {:?}",
        log.enqueued.len(),
        log.acked.len(),
        started.elapsed()
    );
    Ok(())
}
