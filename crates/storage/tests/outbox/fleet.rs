//! A fleet on one PostgreSQL database: two outbox instances (two agents) share it. Tenant
//! claims keep one agent per tenant, an agent that dies loses its claim only when it expires,
//! and expiry is judged on the database's clock.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use billsync_domain::{ClaimOutcome, ManualClock, Outbox};
use billsync_storage::PostgresOutbox;

use crate::helpers::{TestDb, TestResult, events, ids_of, t0, tenant};

const TTL: Duration = Duration::from_secs(15);

async fn two_agents(db: &TestDb, clock: &Arc<ManualClock>) -> TestResult<(Arc<dyn Outbox>, Arc<dyn Outbox>)> {
    let a = PostgresOutbox::connect(db.url(), clock.clone()).await?;
    let b = PostgresOutbox::connect(db.url(), clock.clone()).await?;
    Ok((Arc::new(a), Arc::new(b)))
}

fn holds(outcome: ClaimOutcome) -> bool {
    matches!(outcome, ClaimOutcome::Claimed(_))
}

/// Claims are dated and judged by the database's clock: with a short lifetime and real time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_agents_claim_passes_on_only_after_it_expires() -> TestResult {
    let db = TestDb::create().await?;
    let clock = Arc::new(ManualClock::new(t0()));
    let (a, b) = two_agents(&db, &clock).await?;
    let t = tenant("acme");
    let ttl = Duration::from_millis(1_500);

    let ClaimOutcome::Claimed(first) = a.claim_tenant(&t, "agent-a", ttl).await? else {
        return Err("agent-a could not claim a free tenant".into());
    };
    // Agent A renews for twice the lifetime; B is refused throughout, and sees it renew.
    let mut beats = HashSet::new();
    for _ in 0..6 {
        tokio::time::sleep(ttl / 3).await;
        assert!(holds(a.claim_tenant(&t, "agent-a", ttl).await?), "the holder renews");
        match b.claim_tenant(&t, "agent-b", ttl).await? {
            ClaimOutcome::HeldBy(h) => {
                assert_eq!(h.agent, "agent-a");
                beats.insert(h.heartbeat.ok_or("a claim on the database's clock has a heartbeat")?);
            }
            ClaimOutcome::Claimed(_) => return Err("agent-b took a claim agent-a keeps renewing".into()),
        }
    }
    assert!(beats.len() > 1, "renewals move the heartbeat: {beats:?}");

    // Agent A dies without a release; its claim holds until it lapses, then B takes it.
    drop(a);
    assert!(!holds(b.claim_tenant(&t, "agent-b", ttl).await?), "the dead agent's claim has not expired yet");
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let ClaimOutcome::Claimed(second) = b.claim_tenant(&t, "agent-b", ttl).await? else {
        return Err("the expired claim could not be taken".into());
    };
    assert_eq!(second.generation, first.generation + 1);
    Ok(())
}

/// The agents' own clocks do not date claims: one running two minutes ahead does not see the
/// other's live claim as expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_whose_clocks_differ_never_hold_a_tenant_together() -> TestResult {
    let db = TestDb::create().await?;
    let slow = Arc::new(ManualClock::new(t0()));
    let fast = Arc::new(ManualClock::new(t0() + chrono::Duration::minutes(2)));
    let a: Arc<dyn Outbox> = Arc::new(PostgresOutbox::connect(db.url(), slow.clone()).await?);
    let b: Arc<dyn Outbox> = Arc::new(PostgresOutbox::connect(db.url(), fast.clone()).await?);
    let t = tenant("acme");
    let ttl = Duration::from_secs(30);
    assert!(holds(a.claim_tenant(&t, "agent-slow", ttl).await?));
    assert!(!holds(b.claim_tenant(&t, "agent-fast", ttl).await?), "the fast clock took a live claim");
    fast.advance(Duration::from_secs(600));
    assert!(!holds(b.claim_tenant(&t, "agent-fast", ttl).await?), "agent clocks decide nothing");
    a.release_tenant(&t, "agent-slow").await?;
    assert!(holds(b.claim_tenant(&t, "agent-fast", ttl).await?));
    assert!(!holds(a.claim_tenant(&t, "agent-slow", ttl).await?), "the slow clock took a live claim");
    Ok(())
}

/// Agents on both instances race for one tenant: never two holders at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_agents_never_hold_a_tenant_together() -> TestResult {
    let db = TestDb::create().await?;
    let clock = Arc::new(ManualClock::new(t0()));
    let (a, b) = two_agents(&db, &clock).await?;
    let t = tenant("acme");
    let holders = Arc::new(AtomicUsize::new(0));
    let wins = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for agent in 0..6 {
        let outbox = if agent % 2 == 0 { a.clone() } else { b.clone() };
        let (t, holders, wins) = (t.clone(), holders.clone(), wins.clone());
        tasks.push(tokio::spawn(async move {
            let name = format!("agent-{agent}");
            for _ in 0..40 {
                if holds(outbox.claim_tenant(&t, &name, TTL).await?) {
                    let before = holders.fetch_add(1, Ordering::SeqCst);
                    assert_eq!(before, 0, "{name} holds the tenant together with another agent");
                    wins.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    holders.fetch_sub(1, Ordering::SeqCst);
                    outbox.release_tenant(&t, &name).await?;
                }
                tokio::task::yield_now().await;
            }
            Ok::<_, billsync_domain::OutboxError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    assert!(wins.load(Ordering::SeqCst) >= 6, "too few claims to show anything: {}", wins.load(Ordering::SeqCst));
    Ok(())
}

/// Both agents lease the same tenant at once: every event goes to exactly one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_never_lease_the_same_event() -> TestResult {
    let db = TestDb::create().await?;
    let clock = Arc::new(ManualClock::new(t0()));
    let (a, b) = two_agents(&db, &clock).await?;
    let t = tenant("acme");
    let all = events("e", 3_000);
    a.enqueue(&t, &all).await?;
    let mut tasks = Vec::new();
    for worker in 0..6 {
        let outbox = if worker % 2 == 0 { a.clone() } else { b.clone() };
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(lease) = outbox.lease(&t, 50, Duration::from_secs(600)).await? {
                got.extend(ids_of(&lease.events));
            }
            Ok::<_, billsync_domain::OutboxError>(got)
        }));
    }
    let mut leased = Vec::new();
    for task in tasks {
        leased.extend(task.await??);
    }
    let distinct: HashSet<&String> = leased.iter().collect();
    assert_eq!((distinct.len(), leased.len()), (all.len(), all.len()));
    Ok(())
}
