//! The PostgreSQL adapter: the conformance suite, plus schema versions, URLs and secrets.

use std::sync::Arc;
use std::time::Duration;

use billsync_domain::{ManualClock, Outbox, OutboxError};
use billsync_storage::PostgresOutbox;
use billsync_testkit::{TestResult, error_chain, events, t0, tenant};
use sqlx::{Connection, PgConnection};

use crate::helpers::{TestDb, postgres_fixture};

billsync_testkit::outbox_conformance!(postgres_fixture);

#[tokio::test]
async fn a_newer_schema_is_refused_and_left_untouched() -> TestResult {
    let db = TestDb::create().await?;
    let clock = Arc::new(ManualClock::new(t0()));
    let outbox = PostgresOutbox::connect(db.url(), clock.clone()).await?;
    outbox.enqueue(&tenant("acme"), &events("e", 3)).await?;
    drop(outbox);

    let mut conn = PgConnection::connect(db.url()).await?;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (20990101000000, 'from the future', true, '\\x00', 0)",
    )
    .execute(&mut conn)
    .await?;

    let err = PostgresOutbox::connect(db.url(), clock.clone()).await.err();
    assert_eq!(
        err,
        Some(OutboxError::SchemaTooNew { found: 20990101000000, supported: billsync_storage::POSTGRES_SCHEMA_VERSION })
    );
    let err = billsync_storage::open(db.url(), clock).await.err();
    assert!(matches!(err, Some(OutboxError::SchemaTooNew { .. })), "{err:?}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&mut conn).await?;
    assert_eq!(rows, 3, "the data is untouched");
    conn.close().await?;
    Ok(())
}

/// With trust auth any password is accepted: good for checking that none is ever shown.
fn with_password(url: &str) -> String {
    url.replacen("postgres://postgres@", "postgres://postgres:hunter2@", 1)
}

#[tokio::test]
async fn debug_and_errors_never_show_the_password() -> TestResult {
    let db = TestDb::create().await?;
    let url = with_password(db.url());
    assert!(url.contains("hunter2"), "the test URL has no password to hide: {url}");
    let clock = Arc::new(ManualClock::new(t0()));
    let outbox = billsync_storage::open(&url.replacen("postgres://", "postgresql://", 1), clock.clone()).await?;
    drop(outbox);
    let outbox = PostgresOutbox::connect(&url, clock.clone()).await?;
    let debug = format!("{outbox:?}");
    assert!(debug.starts_with("PostgresOutbox") && debug.contains("127.0.0.1"), "{debug}");
    assert!(!debug.contains("hunter2"), "{debug}");

    let unreachable = "postgres://postgres:hunter2@127.0.0.1:1/nowhere";
    let Some(err @ OutboxError::Storage(_)) = PostgresOutbox::connect(unreachable, clock).await.err() else {
        return Err("connecting to a closed port succeeded".into());
    };
    // The top names the server; the refusal itself is its source, and no message of the
    // chain shows the password.
    let chain = error_chain(&err);
    assert!(chain[0].contains("127.0.0.1:1"), "{chain:?}");
    assert!(chain.len() > 1 && chain[1].to_lowercase().contains("refused"), "{chain:?}");
    assert!(chain.iter().all(|m| !m.contains("hunter2")), "{chain:?}");
    Ok(())
}

/// Schema 7: every stored event is in exactly one of `pending`, `delivered` and `dead`,
/// whatever happened to it; a lease is one row carrying its generation, and neither a lease
/// nor an ack rewrites an event's row (its `xmin`, the transaction that wrote it, stays that
/// of the enqueue).
#[tokio::test]
async fn every_event_stands_in_exactly_one_state_table_and_a_lease_is_one_row() -> TestResult {
    let db = TestDb::create().await?;
    let clock = Arc::new(ManualClock::new(t0()));
    let outbox = PostgresOutbox::connect(db.url(), clock.clone()).await?;
    let t = tenant("acme");
    outbox.enqueue(&t, &events("e", 20)).await?;
    let mut conn = PgConnection::connect(db.url()).await?;
    let written: Vec<String> =
        sqlx::query_scalar("SELECT xmin::text FROM events ORDER BY seq").fetch_all(&mut conn).await?;

    let claim = match outbox.claim_tenant(&t, "agent-a", Duration::from_secs(30)).await? {
        billsync_domain::ClaimOutcome::Claimed(c) => c,
        other => return Err(format!("not claimed: {other:?}").into()),
    };
    let lease = outbox.lease_claimed(&claim, 8, Duration::from_secs(30)).await?.ok_or("nothing leased")?;
    let (leases, generation, held): (i64, Option<i64>, i64) =
        sqlx::query_as("SELECT count(*), max(generation), max(cardinality(seqs))::bigint FROM leases")
            .fetch_one(&mut conn)
            .await?;
    assert_eq!((leases, generation, held), (1, Some(i64::try_from(claim.generation)?), 8));
    let first: Vec<_> = lease.events[..5].iter().map(|e| e.event_id().clone()).collect();
    outbox.ack(&lease, &first).await?;
    let kept: Vec<String> = sqlx::query_scalar("SELECT unnest(ids) FROM leases WHERE lease_id = $1")
        .bind(lease.id.as_str())
        .fetch_all(&mut conn)
        .await?;
    assert_eq!(kept, ["e-5", "e-6", "e-7"], "the lease gave up what it acked, in order");
    let after_ack: Vec<String> =
        sqlx::query_scalar("SELECT xmin::text FROM events ORDER BY seq").fetch_all(&mut conn).await?;
    assert_eq!(after_ack, written, "a lease and an ack rewrote event rows");

    crate::helpers::settle_the_rest(&outbox, &lease).await?;

    let (stored, pending, delivered, dead, twice, leases): (i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM pending), (SELECT count(*) FROM delivered), \
         (SELECT count(*) FROM dead), \
         (SELECT count(*) FROM events AS e WHERE (SELECT count(*) FROM pending AS p WHERE p.seq = e.seq) \
             + (SELECT count(*) FROM delivered AS d WHERE d.seq = e.seq) \
             + (SELECT count(*) FROM dead AS d WHERE d.seq = e.seq) <> 1), \
         (SELECT count(*) FROM leases)",
    )
    .fetch_one(&mut conn)
    .await?;
    assert_eq!((stored, pending, delivered, dead, twice, leases), (22, 12, 9, 1, 0, 0));
    let retried: Vec<String> = sqlx::query_scalar(crate::helpers::RETRIED).fetch_all(&mut conn).await?;
    assert_eq!(retried, ["e-6", "e-7"], "the nack counted an attempt for the two it still held");
    conn.close().await?;
    Ok(())
}
