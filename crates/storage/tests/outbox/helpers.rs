//! The adapters' fixtures (an outbox in a temporary file, or in a throwaway PostgreSQL
//! database); events, tenants and the clock's start come from `billsync_testkit`.

use std::str::FromStr;
use std::sync::Arc;

use billsync_domain::ManualClock;
use billsync_storage::{PostgresOutbox, SqliteOutbox};
use billsync_testkit::{Fixture, TestResult, t0};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

/// The default test server (PostgreSQL with trust auth on this machine).
pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub async fn sqlite_fixture() -> TestResult<Fixture> {
    let dir = tempfile::tempdir()?;
    let clock = Arc::new(ManualClock::new(t0()));
    let outbox = SqliteOutbox::open(&dir.path().join("outbox.db"), clock.clone()).await?;
    Ok(Fixture::new(Arc::new(outbox), clock).keeping(dir))
}

pub async fn postgres_fixture() -> TestResult<Fixture> {
    let db = TestDb::create().await?;
    let clock = Arc::new(ManualClock::new(t0()));
    let outbox = PostgresOutbox::connect(db.url(), clock.clone()).await?;
    Ok(Fixture::new(Arc::new(outbox), clock).keeping(db))
}

/// The server the PostgreSQL tests use: `BILLSYNC_TEST_DATABASE_URL` or [`DEFAULT_PG_URL`].
pub fn pg_admin_url() -> String {
    std::env::var("BILLSYNC_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned())
}

/// A throwaway PostgreSQL database, dropped (with its connections) when this is dropped.
pub struct TestDb {
    admin: PgConnectOptions,
    name: String,
    url: String,
}

impl TestDb {
    /// Creates `billsync_test_<random>` on the test server.
    ///
    /// Fails, naming the URL, when the server cannot be reached: these tests never skip.
    pub async fn create() -> TestResult<Self> {
        let admin_url = pg_admin_url();
        let admin = PgConnectOptions::from_str(&admin_url)?;
        let mut conn = PgConnection::connect_with(&admin).await.map_err(|e| {
            format!(
                "PostgreSQL is not reachable at {admin_url} (set BILLSYNC_TEST_DATABASE_URL to a server \
                 where the tests may create databases): {e}"
            )
        })?;
        let name = format!("billsync_test_{}", uuid::Uuid::new_v4().simple());
        // A database name cannot be a bound parameter; this one is generated, not input.
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
        conn.close().await?;
        let url = admin.clone().database(&name).to_url_lossy().to_string();
        Ok(Self { admin, name, url })
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        // Drop may run inside a runtime: use a thread with its own.
        let dropped = std::thread::spawn(move || -> TestResult {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let mut conn = PgConnection::connect_with(&admin).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await?;
                conn.close().await?;
                Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

/// The rest of the story of a lease of `e-0..e-7` (of `e-0..e-19`, tenant `acme`) whose first
/// five were acked: `e-5` dead-lettered, the lease nacked 5 s out (`e-6`, `e-7` count an
/// attempt), the next four leased without a claim and acked, `e-0..e-21` enqueued again (two
/// new). Then 12 are pending, 9 delivered and 1 dead, which the counts must say.
pub async fn settle_the_rest(outbox: &dyn billsync_domain::Outbox, lease: &billsync_domain::Lease) -> TestResult {
    let t = billsync_testkit::tenant("acme");
    let dead = billsync_domain::DeadLetter {
        event_id: lease.events[5].event_id().clone(),
        code: "invalid_quantity".into(),
        message: "quantity: must be positive".into(),
    };
    outbox.dead_letter(lease, &[dead]).await?;
    outbox.nack(lease, t0() + chrono::Duration::seconds(5)).await?;
    let second = outbox.lease(&t, 4, std::time::Duration::from_secs(30)).await?.ok_or("nothing leased")?;
    let ids: Vec<_> = second.events.iter().map(|e| e.event_id().clone()).collect();
    outbox.ack(&second, &ids).await?;
    outbox.enqueue(&t, &billsync_testkit::events("e", 22)).await?;
    let counts = outbox.counts(&t).await?;
    assert_eq!((counts.pending, counts.in_flight, counts.delivered, counts.dead_lettered), (12, 0, 9, 1));
    Ok(())
}

/// The events that are pending with one attempt counted, by id in enqueue order (the same SQL
/// on both backends).
pub const RETRIED: &str =
    "SELECT e.event_id FROM events AS e JOIN pending AS p ON p.seq = e.seq WHERE e.attempts = 1 ORDER BY e.seq";
