//! A fleet on one PostgreSQL database: two outbox instances (two agents) share it. Tenant
//! claims keep one agent per tenant, and an agent that dies loses its claim only when it
//! expires.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use billsync_domain::{ManualClock, Outbox};
use billsync_storage::PostgresOutbox;

use crate::helpers::{TestDb, TestResult, events, ids_of, t0, tenant};

const TTL: Duration = Duration::from_secs(15);

async fn two_agents(db: &TestDb, clock: &Arc<ManualClock>) -> TestResult<(Arc<dyn Outbox>, Arc<dyn Outbox>)> {
    let a = PostgresOutbox::connect(db.url(), clock.clone()).await?;
    let b = PostgresOutbox::connect(db.url(), clock.clone()).await?;
    Ok((Arc::new(a), Arc::new(b)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_agents_claim_passes_on_only_after_it_expires() -> TestResult {
    let db = TestDb::create().await?;
    let clock = Arc::new(ManualClock::new(t0()));
    let (a, b) = two_agents(&db, &clock).await?;
    let t = tenant("acme");

    // Agent A claims the tenant and keeps renewing it.
    let (claimed_tx, mut claimed_rx) = tokio::sync::mpsc::channel(1);
    let heartbeat = {
        let (a, t) = (a.clone(), t.clone());
        tokio::spawn(async move {
            loop {
                let held = a.claim_tenant(&t, "agent-a", TTL).await;
                if claimed_tx.send(held).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    assert!(claimed_rx.recv().await.ok_or("agent-a never claimed")??);
    for _ in 0..4 {
        clock.advance(TTL / 2);
        // Wait for a renewal at the new time, then B must still be refused.
        assert!(claimed_rx.recv().await.ok_or("agent-a stopped")??);
        assert!(claimed_rx.recv().await.ok_or("agent-a stopped")??);
        assert!(!b.claim_tenant(&t, "agent-b", TTL).await?, "agent-b took a claim agent-a keeps renewing");
    }

    // Agent A dies: its task and its connections go away without a release.
    heartbeat.abort();
    let _ = heartbeat.await;
    drop(a);
    assert!(!b.claim_tenant(&t, "agent-b", TTL).await?, "the dead agent's claim has not expired yet");
    clock.advance(TTL - Duration::from_millis(1));
    assert!(!b.claim_tenant(&t, "agent-b", TTL).await?, "taken a millisecond before expiry");
    clock.advance(Duration::from_millis(1));
    assert!(b.claim_tenant(&t, "agent-b", TTL).await?, "the expired claim could not be taken");
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
                if outbox.claim_tenant(&t, &name, TTL).await? {
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
