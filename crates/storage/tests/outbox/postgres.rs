//! The PostgreSQL adapter: the conformance suite, plus schema versions, URLs and secrets.

use std::sync::Arc;

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
