//! PostgreSQL: an agent frozen (SIGSTOP, a stalled VM) in the middle of a lease holds its
//! tenant's claim row shared, inside an open transaction. Another agent taking the tenant over
//! waits for that row; the frozen agent must neither keep it waiting for ever nor keep the
//! tenant once its claim has lapsed meanwhile.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use billsync_domain::{ClaimOutcome, ManualClock, Outbox};
use billsync_storage::PostgresOutbox;
use billsync_testkit::{TestResult, events, t0, tenant};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::TestDb;

/// The lease's statement right after it took the claim row shared (its first use on a
/// connection carries its text).
const AFTER_THE_CLAIM_ROW: &[u8] = b"WITH lapsed AS (DELETE FROM leases WHERE tenant = $1";

/// Whether the process behind the proxy is frozen, and whether its next lease freezes it.
#[derive(Default)]
struct Freezer {
    armed: AtomicBool,
    frozen: AtomicBool,
}

/// Copies one direction of a connection; nothing passes while the agent is frozen. Bytes from
/// the agent that go on with a lease after the claim row freeze it first (when armed).
async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, agent: bool, f: Arc<Freezer>) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        if agent
            && f.armed.load(Ordering::SeqCst)
            && buf[..n].windows(AFTER_THE_CLAIM_ROW.len()).any(|w| w == AFTER_THE_CLAIM_ROW)
        {
            f.frozen.store(true, Ordering::SeqCst);
        }
        while f.frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// A TCP proxy in front of the server that stands for the agent's process: frozen, it passes
/// nothing either way, as a process stopped by SIGSTOP (its sessions stay open on the server).
async fn freezing_proxy(upstream: String, freezer: Arc<Freezer>) -> TestResult<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((agent, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(&upstream).await else { return };
            let (agent_rd, agent_wr) = agent.into_split();
            let (server_rd, server_wr) = server.into_split();
            tokio::spawn(pump(agent_rd, server_wr, true, Arc::clone(&freezer)));
            tokio::spawn(pump(server_rd, agent_wr, false, Arc::clone(&freezer)));
        }
    });
    Ok(port)
}

/// Waits (up to 20 s) until `sql` (a count over the database's sessions; `$1` is its name)
/// finds one.
async fn until_a_session(admin: &mut PgConnection, db: &str, sql: &str, what: &str) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(20);
    while sqlx::query_scalar::<_, i64>(sql).bind(db).fetch_one(&mut *admin).await? == 0 {
        if Instant::now() > deadline {
            return Err(format!("no session {what} within 20 s").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Waits until the tenant's claim has lapsed on the database's clock.
async fn until_lapsed(admin: &mut PgConnection, tenant: &str) -> TestResult {
    let lapsed = "SELECT expires_at < (extract(epoch from clock_timestamp()) * 1000)::bigint \
                  FROM tenant_claims WHERE tenant = $1";
    while !sqlx::query_scalar::<_, bool>(lapsed).bind(tenant).fetch_one(&mut *admin).await? {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn generation(outcome: &ClaimOutcome) -> Option<u64> {
    match outcome {
        ClaimOutcome::Claimed(c) => Some(c.generation),
        ClaimOutcome::HeldBy(_) => None,
    }
}

/// A takeover that asked while the holder's claim was live, and waited for the claim row behind
/// a lease in progress (the holder frozen in it) until the claim lapsed, judges the claim as it
/// is once it has the row: lapsed. It takes the tenant; the holder, resumed, finds it gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_that_waited_behind_a_frozen_lease_judges_the_claim_once_it_has_the_row() -> TestResult {
    let db = TestDb::create().await?;
    let clock = Arc::new(ManualClock::new(t0()));
    let a = PostgresOutbox::connect(db.url(), clock.clone()).await?;
    let b = Arc::new(PostgresOutbox::connect(db.url(), clock).await?);
    let name = PgConnectOptions::from_str(db.url())?.get_database().unwrap_or_default().to_owned();
    let acme = tenant("acme");
    let ttl = Duration::from_secs(3);
    assert_eq!(generation(&a.claim_tenant(&acme, "agent-a", ttl).await?), Some(1));
    // Agent A, frozen in a lease: the claim row held shared, inside an open transaction.
    let mut frozen = PgConnection::connect(db.url()).await?;
    sqlx::query("BEGIN").execute(&mut frozen).await?;
    sqlx::query("SELECT generation FROM tenant_claims WHERE tenant = 'acme' FOR SHARE").execute(&mut frozen).await?;

    // Act: B asks for the tenant now, and waits for the row until A's claim has lapsed.
    let taking = tokio::spawn({
        let (b, acme) = (Arc::clone(&b), acme.clone());
        async move { b.claim_tenant(&acme, "agent-b", ttl).await }
    });
    let mut admin = PgConnection::connect(db.url()).await?;
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'";
    until_a_session(&mut admin, &name, waiting, "waiting for the claim row").await?;
    let asked_while_live: bool = sqlx::query_scalar(
        "SELECT bool_and((extract(epoch from a.query_start) * 1000)::bigint < c.expires_at) \
         FROM pg_stat_activity a, tenant_claims c WHERE a.datname = $1 AND a.wait_event_type = 'Lock' \
         AND c.tenant = 'acme'",
    )
    .bind(&name)
    .fetch_one(&mut admin)
    .await?;
    assert!(asked_while_live, "B asked after A's claim had lapsed: the test proved nothing");
    until_lapsed(&mut admin, "acme").await?;
    sqlx::query("COMMIT").execute(&mut frozen).await?;

    // Assert: B has the tenant, under the next generation; A, resumed, is refused it.
    let taken = tokio::time::timeout(Duration::from_secs(20), taking).await???;
    assert_eq!(generation(&taken), Some(2), "B judged A's claim as it was when B asked: {taken:?}");
    let renewal = a.claim_tenant(&acme, "agent-a", ttl).await?;
    assert!(matches!(&renewal, ClaimOutcome::HeldBy(h) if h.agent == "agent-b"), "{renewal:?}");
    frozen.close().await?;
    admin.close().await?;
    Ok(())
}

/// An agent frozen in a lease, for good: its session stays inside the lease's transaction,
/// holding the claim row shared. The server ends that session (billsync's transactions never
/// wait on anything but the database), so another agent takes the tenant over once the claim
/// has lapsed, rather than waiting on the row for as long as the frozen agent stands still;
/// and the frozen agent's lease, once it resumes, fails rather than being granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_frozen_inside_a_lease_does_not_keep_its_tenant_from_the_fleet() -> TestResult {
    let db = TestDb::create().await?;
    let direct = PgConnectOptions::from_str(db.url())?;
    let name = direct.get_database().unwrap_or_default().to_owned();
    let freezer = Arc::new(Freezer::default());
    let proxy = freezing_proxy(format!("{}:{}", direct.get_host(), direct.get_port()), Arc::clone(&freezer)).await?;
    // In clear text, so that the proxy can see the statements (loopback only).
    let proxied = direct.clone().port(proxy).ssl_mode(PgSslMode::Disable).to_url_lossy();
    let clock = Arc::new(ManualClock::new(t0()));
    let a = Arc::new(PostgresOutbox::connect(proxied.as_str(), clock.clone()).await?);
    let b = PostgresOutbox::connect(db.url(), clock).await?;
    let acme = tenant("acme");
    let ttl = Duration::from_secs(3);
    a.enqueue(&acme, &events("e", 5)).await?;
    let ClaimOutcome::Claimed(claim) = a.claim_tenant(&acme, "agent-a", ttl).await? else {
        return Err("agent-a could not claim a free tenant".into());
    };

    // Act: A freezes inside its lease, holding the claim row; B asks once A's claim has lapsed.
    freezer.armed.store(true, Ordering::SeqCst);
    let leasing = tokio::spawn({
        let a = Arc::clone(&a);
        async move { a.lease_claimed(&claim, 10, Duration::from_secs(60)).await }
    });
    let mut admin = PgConnection::connect(db.url()).await?;
    let inside = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
                  AND state = 'idle in transaction' AND query LIKE '%FROM tenant_claims%FOR SHARE%'";
    until_a_session(&mut admin, &name, inside, "frozen inside the lease").await?;
    assert!(freezer.frozen.load(Ordering::SeqCst), "A is not frozen: the test proves nothing");
    until_lapsed(&mut admin, "acme").await?;
    let started = Instant::now();
    let taken = tokio::time::timeout(Duration::from_secs(30), b.claim_tenant(&acme, "agent-b", ttl)).await;

    // Assert: B has the tenant, without waiting for A to resume...
    let Ok(taken) = taken else {
        return Err("B waited 30 s for the claim row a frozen agent holds".into());
    };
    assert_eq!(generation(&taken?), Some(2));
    assert!(started.elapsed() < Duration::from_secs(20), "B waited {:?}", started.elapsed());
    // ...and A, resumed, is granted nothing, and finds the tenant gone.
    freezer.frozen.store(false, Ordering::SeqCst);
    freezer.armed.store(false, Ordering::SeqCst);
    let leased = tokio::time::timeout(Duration::from_secs(20), leasing).await??;
    assert!(leased.is_err(), "the frozen agent's lease was granted: {leased:?}");
    let renewal = a.claim_tenant(&acme, "agent-a", ttl).await?;
    assert!(matches!(&renewal, ClaimOutcome::HeldBy(h) if h.agent == "agent-b"), "{renewal:?}");
    admin.close().await?;
    Ok(())
}
