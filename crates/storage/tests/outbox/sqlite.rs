//! The SQLite adapter: the conformance suite, plus schema versions, a full database and
//! reopening.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use billsync_domain::{ClaimOutcome, ManualClock, Outbox, OutboxError};
use billsync_storage::{SqliteOptions, SqliteOutbox};
use billsync_testkit::{TestResult, event, events, ids_of, t0, tenant};
use sqlx::{Connection, SqliteConnection};

use crate::helpers::sqlite_fixture;

billsync_testkit::outbox_conformance!(sqlite_fixture);

async fn raw(path: &std::path::Path) -> TestResult<SqliteConnection> {
    Ok(SqliteConnection::connect(&format!("sqlite://{}", path.display())).await?)
}

#[tokio::test]
async fn upgrading_to_lease_rows_returns_old_leases_to_pending() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("outbox.db");
    // An outbox as version 2 left it: one event leased the old way (state 1), one pending.
    let mut conn = SqliteConnection::connect_with(
        &sqlx::sqlite::SqliteConnectOptions::new().filename(&path).create_if_missing(true),
    )
    .await?;
    let all = sqlx::migrate!("./migrations/sqlite");
    let old = sqlx::migrate::Migrator {
        migrations: all.migrations.iter().filter(|m| m.version <= 2).cloned().collect::<Vec<_>>().into(),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    old.run(&mut conn).await?;
    let now = t0().timestamp_millis();
    for (i, (event_id, state, lease)) in
        [("old-leased", 1, Some("l-1")), ("old-pending", 0, None)].into_iter().enumerate()
    {
        sqlx::query(
            "INSERT INTO events (tenant, event_id, body, state, enqueued_at, due_at, lease_id, lease_expires_at) \
             VALUES ('acme', ?1, ?2, ?3, ?4, ?4, ?5, ?6)",
        )
        .bind(event_id)
        .bind(event(event_id).json())
        .bind(state)
        .bind(now - 10 + i as i64)
        .bind(lease)
        .bind(lease.map(|_| now + 3_600_000))
        .execute(&mut conn)
        .await?;
    }
    conn.close().await?;

    let clock = Arc::new(ManualClock::new(t0()));
    let outbox = SqliteOutbox::open(&path, clock).await?;
    let counts = outbox.counts(&tenant("acme")).await?;
    assert_eq!((counts.pending, counts.in_flight), (2, 0), "the old lease is void");
    let lease = outbox.lease(&tenant("acme"), 10, Duration::from_secs(30)).await?.ok_or("nothing leasable")?;
    assert_eq!(ids_of(&lease.events), ["old-leased", "old-pending"], "in their old order");
    Ok(())
}

#[tokio::test]
async fn a_newer_schema_is_refused_and_left_untouched() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("outbox.db");
    let clock = Arc::new(ManualClock::new(t0()));
    let outbox = SqliteOutbox::open(&path, clock.clone()).await?;
    outbox.enqueue(&tenant("acme"), &events("e", 3)).await?;
    drop(outbox);

    // A newer billsync applied a migration this build does not know.
    let mut conn = raw(&path).await?;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (20990101000000, 'from the future', true, x'00', 0)",
    )
    .execute(&mut conn)
    .await?;

    let err = SqliteOutbox::open(&path, clock.clone()).await.err();
    assert_eq!(
        err,
        Some(OutboxError::SchemaTooNew { found: 20990101000000, supported: billsync_storage::SQLITE_SCHEMA_VERSION })
    );
    let err = billsync_storage::open(&format!("sqlite://{}", path.display()), clock).await.err();
    assert!(matches!(err, Some(OutboxError::SchemaTooNew { .. })), "{err:?}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&mut conn).await?;
    assert_eq!(rows, 3, "the data is untouched");
    Ok(())
}

#[tokio::test]
async fn events_survive_reopening() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("outbox.db");
    let clock = Arc::new(ManualClock::new(t0()));
    let t = tenant("acme");
    {
        let outbox = SqliteOutbox::open(&path, clock.clone()).await?;
        outbox.enqueue(&t, &events("e", 10)).await?;
        let lease = outbox.lease(&t, 4, Duration::from_secs(30)).await?.ok_or("nothing leased")?;
        outbox.ack(&lease, &[lease.events[0].event_id().clone()]).await?;
    }
    let outbox = SqliteOutbox::open(&path, clock.clone()).await?;
    let counts = outbox.counts(&t).await?;
    assert_eq!((counts.pending, counts.in_flight, counts.delivered), (6, 3, 1));
    assert_eq!(outbox.enqueue(&t, &events("e", 10)).await?.stored, 0);
    Ok(())
}

/// Enqueue until the database is full: the failing call stores nothing, everything stored
/// before is intact, and the file is consistent.
#[tokio::test]
async fn a_full_database_stores_nothing_of_the_failing_call() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("outbox.db");
    let clock = Arc::new(ManualClock::new(t0()));
    let t = tenant("acme");
    let limited = SqliteOptions::new().max_size_bytes(256 * 1024);
    let outbox = SqliteOutbox::open_with(&path, clock.clone(), limited).await?;

    let mut stored = Vec::new();
    let mut failed = None;
    for batch in 0..1_000 {
        let events = events(&format!("b{batch}"), 50);
        match outbox.enqueue(&t, &events).await {
            Ok(report) => {
                assert_eq!(report.stored, 50);
                stored.extend(events);
            }
            Err(OutboxError::Full) => {
                failed = Some(events);
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let failed = failed.ok_or("the database never filled up")?;
    assert!(!stored.is_empty(), "nothing fit at all");
    // A single-event enqueue racing the full one (group commit) is told the truth too.
    let small = outbox.enqueue(&t, &[event("small")]).await;
    assert!(matches!(small, Ok(_) | Err(OutboxError::Full)), "{small:?}");
    let small_stored = matches!(small, Ok(ref r) if r.stored == 1);

    assert_eq!(outbox.counts(&t).await?.pending as usize, stored.len() + usize::from(small_stored));
    drop(outbox);

    let mut conn = raw(&path).await?;
    let check: String = sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&mut conn).await?;
    assert_eq!(check, "ok");
    let failed_ids = ids_of(&failed);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_id IN (SELECT value FROM json_each(?1))")
        .bind(serde_json::to_string(&failed_ids)?)
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(n, 0, "part of the failing call was stored");

    // Without the limit, every stored event comes back intact, and there is room again.
    let outbox = SqliteOutbox::open(&path, clock.clone()).await?;
    let lease = outbox.lease(&t, 1_000_000, Duration::from_secs(30)).await?.ok_or("nothing leased")?;
    let mut expected: Vec<(String, String)> =
        stored.iter().map(|e| (e.event_id().as_str().to_owned(), e.json().to_owned())).collect();
    if small_stored {
        expected.push(("small".to_owned(), event("small").json().to_owned()));
    }
    let got: Vec<(String, String)> =
        lease.events.iter().map(|e| (e.event_id().as_str().to_owned(), e.json().to_owned())).collect();
    assert_eq!(got.iter().collect::<HashSet<_>>(), expected.iter().collect::<HashSet<_>>());
    assert_eq!(outbox.enqueue(&t, &failed).await?.stored, failed.len());
    Ok(())
}

#[tokio::test]
async fn debug_names_the_file() -> TestResult {
    let f = tempfile::tempdir()?;
    let path = f.path().join("outbox.db");
    let outbox = SqliteOutbox::open(&path, Arc::new(ManualClock::new(t0()))).await?;
    let debug = format!("{outbox:?}");
    assert!(debug.starts_with("SqliteOutbox") && debug.contains("outbox.db"), "{debug}");
    assert_eq!(outbox.path(), path);
    Ok(())
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_an_error() -> TestResult {
    let f = tempfile::tempdir()?;
    let path = f.path().join("junk.db");
    std::fs::write(&path, vec![0x42u8; 8192])?;
    let err = SqliteOutbox::open(&path, Arc::new(ManualClock::new(t0()))).await.err();
    assert!(matches!(err, Some(OutboxError::Storage(_))), "{err:?}");
    Ok(())
}

#[test]
fn several_processes_may_create_the_same_fresh_outbox_at_once() -> TestResult {
    // Each open has its own connections, as separate processes would: their migrations race.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("fresh.db");
    let clock: std::sync::Arc<dyn billsync_domain::Clock> = std::sync::Arc::new(billsync_domain::SystemClock);
    let opens: Vec<_> = (0..6)
        .map(|_| {
            let (path, clock) = (path.clone(), clock.clone());
            std::thread::spawn(move || {
                let rt =
                    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
                rt.block_on(billsync_storage::SqliteOutbox::open(&path, clock)).map(drop).map_err(|e| e.to_string())
            })
        })
        .collect();
    for open in opens {
        open.join().map_err(|_| "an open panicked")?.map_err(|e| format!("a concurrent open failed: {e}"))?;
    }
    Ok(())
}

/// One host, two processes (two handles open the file apart, as two processes would): the
/// tenant's holder is whoever holds its lock file, and the kernel frees it the moment the
/// holder goes, so the next holder takes the tenant, and its events, at once.
#[tokio::test]
async fn the_os_lock_decides_who_holds_a_tenant_and_its_release_is_instant() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("outbox.db");
    let clock = Arc::new(ManualClock::new(t0()));
    let first = SqliteOutbox::open(&path, clock.clone()).await?;
    let second = SqliteOutbox::open(&path, clock.clone()).await?;
    let t = tenant("acme");
    let ttl = Duration::from_secs(30);
    first.enqueue(&t, &events("e", 4)).await?;

    let ClaimOutcome::Claimed(a) = first.claim_tenant(&t, "host-1-agent-a", ttl).await? else {
        return Err("a free tenant could not be claimed".into());
    };
    let held = first.lease(&t, 4, Duration::from_secs(120)).await?.ok_or("nothing leased")?;
    assert_eq!(held.events.len(), 4);
    match second.claim_tenant(&t, "host-1-agent-b", ttl).await? {
        ClaimOutcome::HeldBy(h) => {
            assert_eq!(h.agent, "host-1-agent-a");
            assert_eq!(h.heartbeat, None, "the OS vouches for a live holder");
        }
        ClaimOutcome::Claimed(_) => return Err("two holders at once".into()),
    }
    // No timer: a day later the live holder still holds it.
    clock.advance(Duration::from_secs(86_400));
    assert!(matches!(second.claim_tenant(&t, "host-1-agent-b", ttl).await?, ClaimOutcome::HeldBy(_)));

    // The holder dies without releasing anything: its handle (and so its lock file) is gone.
    drop(first);
    tokio::time::sleep(Duration::from_millis(50)).await;

    let ClaimOutcome::Claimed(b) = second.claim_tenant(&t, "host-1-agent-b", ttl).await? else {
        return Err("the dead holder's lock was not released".into());
    };
    assert_eq!(b.generation, a.generation + 1);
    let all = second.lease(&t, 10, Duration::from_secs(120)).await?.ok_or("the dead holder's lease still holds")?;
    assert_eq!(all.events.len(), 4, "the dead holder's lease is void at once, not after lease_seconds");
    assert!(second.lock_dir().join("acme.lock").exists());
    Ok(())
}

/// Two outboxes on one file (two processes): the first agent leases under its claim and lets
/// the tenant go, the second takes it. The first one's ack, nack, dead letter and lease under
/// its old generation are refused by the file itself, though its writer never saw the claim.
#[tokio::test]
async fn a_holder_that_let_go_cannot_settle_after_another_process_took_the_tenant() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("outbox.db");
    let clock = Arc::new(ManualClock::new(t0()));
    let first = SqliteOutbox::open(&path, clock.clone()).await?;
    let second = SqliteOutbox::open(&path, clock.clone()).await?;
    let (t, ttl, lease_for) = (tenant("acme"), Duration::from_secs(15), Duration::from_secs(120));
    first.enqueue(&t, &events("e", 4)).await?;
    let ClaimOutcome::Claimed(a) = first.claim_tenant(&t, "host-1-agent-a", ttl).await? else {
        return Err("a free tenant could not be claimed".into());
    };
    let stale = first.lease_claimed(&a, 4, lease_for).await?.ok_or("nothing leased")?;
    first.release_tenant(&t, "host-1-agent-a").await?;
    let ClaimOutcome::Claimed(b) = second.claim_tenant(&t, "host-2-agent-b", ttl).await? else {
        return Err("a released tenant could not be claimed".into());
    };
    assert_eq!(b.generation, a.generation + 1);

    let lost = |r: &Result<(), OutboxError>| match r {
        Err(OutboxError::ClaimLost { generation, .. }) => *generation == a.generation,
        _ => false,
    };
    let ids: Vec<_> = stale.events.iter().map(|e| e.event_id().clone()).collect();
    let acked = first.ack(&stale, &ids[..2]).await;
    assert!(lost(&acked), "{acked:?}");
    let dead = [billsync_domain::DeadLetter { event_id: ids[2].clone(), code: "c".into(), message: "m".into() }];
    let buried = first.dead_letter(&stale, &dead).await;
    assert!(lost(&buried), "{buried:?}");
    let nacked = first.nack(&stale, t0()).await;
    assert!(lost(&nacked), "{nacked:?}");
    assert!(matches!(first.lease_claimed(&a, 4, lease_for).await, Err(OutboxError::ClaimLost { .. })));

    let mine = second.lease_claimed(&b, 10, lease_for).await?.ok_or("nothing for the new holder")?;
    assert_eq!(mine.events.len(), 4, "the refused writes changed nothing");
    second.ack(&mine, &ids).await?;
    assert_eq!(second.counts(&t).await?.delivered, 4);
    Ok(())
}

/// A settle refused for its stale generation writes nothing, and the operations the writer
/// groups with it are committed all the same.
#[tokio::test]
async fn a_refused_settle_leaves_the_rest_of_its_group_alone() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = Arc::new(ManualClock::new(t0()));
    let outbox = Arc::new(SqliteOutbox::open(&dir.path().join("outbox.db"), clock).await?);
    let (acme, bolt, ttl) = (tenant("acme"), tenant("bolt"), Duration::from_secs(15));
    outbox.enqueue(&acme, &events("a", 3)).await?;
    outbox.enqueue(&bolt, &events("b", 64)).await?;
    let ClaimOutcome::Claimed(old) = outbox.claim_tenant(&acme, "agent-a", ttl).await? else {
        return Err("a free tenant could not be claimed".into());
    };
    let stale = Arc::new(outbox.lease_claimed(&old, 3, Duration::from_secs(120)).await?.ok_or("nothing leased")?);
    outbox.release_tenant(&acme, "agent-a").await?;
    assert!(matches!(outbox.claim_tenant(&acme, "agent-b", ttl).await?, ClaimOutcome::Claimed(_)));
    let theirs = Arc::new(outbox.lease(&bolt, 64, Duration::from_secs(120)).await?.ok_or("nothing leased")?);

    // The stale ack amid 64 one-event acks of another tenant, all in flight at once.
    let mut tasks = Vec::new();
    for (i, e) in theirs.events.iter().enumerate() {
        let (acker, lease, id) = (outbox.clone(), theirs.clone(), e.event_id().clone());
        tasks.push(tokio::spawn(async move { acker.ack(&lease, &[id]).await }));
        if i == 32 {
            let (acker, lease) = (outbox.clone(), stale.clone());
            let ids: Vec<_> = stale.events.iter().map(|e| e.event_id().clone()).collect();
            tasks.push(tokio::spawn(async move { acker.ack(&lease, &ids).await }));
        }
    }
    let mut refused = 0;
    for task in tasks {
        match task.await? {
            Ok(()) => {}
            Err(OutboxError::ClaimLost { tenant, .. }) if tenant == acme => refused += 1,
            Err(e) => return Err(e.into()),
        }
    }
    assert_eq!(refused, 1);
    assert_eq!(outbox.counts(&bolt).await?.delivered, 64);
    let c = outbox.counts(&acme).await?;
    assert_eq!((c.pending, c.delivered), (3, 0));
    Ok(())
}

/// Schema 8: every stored event is in exactly one of `pending`, `delivered` and `dead`, whatever
/// happened to it, and an ack, a nack or a dead letter never rewrites its row's body.
#[tokio::test]
async fn every_event_stands_in_exactly_one_state_table() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("outbox.db");
    let clock = Arc::new(ManualClock::new(t0()));
    let outbox = SqliteOutbox::open(&path, clock.clone()).await?;
    let t = tenant("acme");
    outbox.enqueue(&t, &events("e", 20)).await?;
    let lease = outbox.lease(&t, 8, Duration::from_secs(30)).await?.ok_or("nothing leased")?;
    let first: Vec<_> = lease.events[..5].iter().map(|e| e.event_id().clone()).collect();
    outbox.ack(&lease, &first).await?;
    crate::helpers::settle_the_rest(&outbox, &lease).await?;

    let mut conn = raw(&path).await?;
    let (stored, pending, delivered, dead, twice): (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM pending), (SELECT count(*) FROM delivered), \
         (SELECT count(*) FROM dead), \
         (SELECT count(*) FROM events WHERE (seq IN (SELECT seq FROM pending)) + (seq IN (SELECT seq FROM delivered)) \
                                          + (seq IN (SELECT seq FROM dead)) <> 1)",
    )
    .fetch_one(&mut conn)
    .await?;
    assert_eq!((stored, pending, delivered, dead, twice), (22, 12, 9, 1, 0));
    let retried: Vec<String> = sqlx::query_scalar(crate::helpers::RETRIED).fetch_all(&mut conn).await?;
    assert_eq!(retried, ["e-6", "e-7"], "the nack counted an attempt for the two it still held");
    Ok(())
}
