//! PostgreSQL: an operation whose caller stops waiting (a `select!`, a timeout, an aborted
//! task) while its transaction's `BEGIN` is on the wire must not leave that transaction open
//! on a pooled connection. sqlx 0.8 does (transact-rs/sqlx#4393): the next borrower's writes
//! then run inside the stale transaction, are never committed, and hold their row locks, so
//! the agent deadlocks against itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use billsync_domain::{ManualClock, Outbox};
use billsync_storage::PostgresOutbox;
use billsync_testkit::{TestResult, t0, tenant};
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::TestDb;

/// A TCP proxy in front of the server that holds back, while `slow` is set, each answer that
/// completes a `BEGIN`: a caller's `BEGIN` round trip then outlasts its patience, every time.
async fn slow_begin_proxy(upstream: String, slow: Arc<AtomicBool>) -> TestResult<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(&upstream).await else { return };
            let slow = Arc::clone(&slow);
            tokio::spawn(async move {
                let (mut client_rd, mut client_wr) = client.into_split();
                let (mut server_rd, mut server_wr) = server.into_split();
                tokio::spawn(async move { tokio::io::copy(&mut client_rd, &mut server_wr).await });
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = server_rd.read(&mut buf).await {
                    // CommandComplete carries the tag "BEGIN" and a NUL.
                    if slow.load(Ordering::SeqCst) && buf[..n].windows(6).any(|w| w == b"BEGIN\0") {
                        tokio::time::sleep(Duration::from_millis(800)).await;
                    }
                    if client_wr.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(port)
}

/// The sessions of the database left inside a transaction with nothing running.
async fn idle_in_transaction(admin: &mut PgConnection, db: &str) -> TestResult<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state LIKE 'idle in transaction%'",
    )
    .bind(db)
    .fetch_one(admin)
    .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_abandoned_while_its_transaction_begins_leaves_no_transaction_open() -> TestResult {
    let db = TestDb::create().await?;
    let direct = PgConnectOptions::from_str(db.url())?;
    let slow = Arc::new(AtomicBool::new(false));
    let proxy = slow_begin_proxy(format!("{}:{}", direct.get_host(), direct.get_port()), Arc::clone(&slow)).await?;
    // In clear text, so that the proxy can see the answers (loopback only).
    let proxied = direct.clone().port(proxy).ssl_mode(PgSslMode::Disable).to_url_lossy();
    let outbox = PostgresOutbox::connect(proxied.as_str(), Arc::new(ManualClock::new(t0()))).await?;
    let acme = tenant("acme");
    outbox.claim_tenant(&acme, "agent-a", Duration::from_secs(30)).await?;

    // Act: the caller gives up while the claim's BEGIN is on the wire.
    slow.store(true, Ordering::SeqCst);
    let gave_up = tokio::time::timeout(
        Duration::from_millis(200),
        outbox.claim_tenant(&acme, "agent-a", Duration::from_secs(30)),
    )
    .await;
    assert!(gave_up.is_err(), "the claim finished before the caller gave up: the test proved nothing");
    slow.store(false, Ordering::SeqCst);

    // Assert: once the held-back answer arrives, no session stays inside a transaction...
    let mut admin = PgConnection::connect(db.url()).await?;
    let name = direct.get_database().unwrap_or_default().to_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut open = idle_in_transaction(&mut admin, &name).await?;
    while open > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        open = idle_in_transaction(&mut admin, &name).await?;
    }
    assert_eq!(open, 0, "a pooled session was left inside the abandoned claim's transaction");
    // ...and what the outbox writes next is committed, seen by another connection.
    for i in 0..4 {
        outbox.save_tenant_state(&acme, &format!("{{\"n\":{i}}}")).await?;
    }
    let saved: Option<String> =
        sqlx::query_scalar("SELECT state FROM tenant_state WHERE tenant = 'acme'").fetch_optional(&mut admin).await?;
    assert_eq!(saved.as_deref(), Some("{\"n\":3}"));
    admin.close().await?;
    Ok(())
}
