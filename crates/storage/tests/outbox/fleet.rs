//! A fleet on one PostgreSQL database: two outbox instances (two agents) share it. Tenant
//! claims keep one agent per tenant, an agent that dies loses its claim only when it expires,
//! and expiry is judged on the database's clock.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use billsync_domain::{Claim, ClaimOutcome, DeadLetter, ManualClock, Outbox, OutboxError};
use billsync_storage::PostgresOutbox;
use billsync_testkit::{TestResult, events, ids_of, t0, tenant};

use crate::helpers::TestDb;

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

fn claim_of(outcome: ClaimOutcome) -> Result<Claim, String> {
    match outcome {
        ClaimOutcome::Claimed(c) => Ok(c),
        ClaimOutcome::HeldBy(h) => Err(format!("held by {}", h.agent)),
    }
}

/// An agent paused past its claim (SIGSTOP, a long GC, a stalled VM) while another took the
/// tenant over: once it resumes, the database refuses its leases and settles by generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_lost_its_claim_can_neither_lease_nor_settle() -> TestResult {
    let db = TestDb::create().await?;
    let clock = Arc::new(ManualClock::new(t0()));
    let (a, b) = two_agents(&db, &clock).await?;
    let t = tenant("acme");
    let ttl = Duration::from_millis(800);
    let all = events("e", 6);
    a.enqueue(&t, &all).await?;
    let old = claim_of(a.claim_tenant(&t, "agent-a", ttl).await?)?;
    let leased = a.lease_claimed(&old, 3, Duration::from_secs(120)).await?.ok_or("nothing leased")?;
    assert_eq!(leased.generation, Some(old.generation));

    // Agent A stands still past its claim; B takes the tenant over.
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let new = claim_of(b.claim_tenant(&t, "agent-b", ttl).await?)?;
    assert_eq!(new.generation, old.generation + 1);

    // A resumes where it was: every write it tries for the tenant is refused, and changes nothing.
    let lost = |r: Result<(), OutboxError>| matches!(r, Err(OutboxError::ClaimLost { generation, .. }) if generation == old.generation);
    let ids: Vec<_> = leased.events.iter().map(|e| e.event_id().clone()).collect();
    assert!(lost(a.ack(&leased, &ids).await), "a stale ack was taken");
    assert!(lost(a.nack(&leased, t0()).await), "a stale nack was taken");
    let dead = [DeadLetter { event_id: ids[0].clone(), code: "c".into(), message: "m".into() }];
    assert!(lost(a.dead_letter(&leased, &dead).await), "a stale dead letter was taken");
    assert!(
        matches!(a.lease_claimed(&old, 3, Duration::from_secs(120)).await, Err(OutboxError::ClaimLost { .. })),
        "a stale lease was taken"
    );
    let c = a.counts(&t).await?;
    assert_eq!((c.delivered, c.dead_lettered), (0, 0));

    // B, the holder, gets every event at once (A's lease is void) and settles them.
    let mine = b.lease_claimed(&new, 10, Duration::from_secs(120)).await?.ok_or("nothing for the new holder")?;
    assert_eq!(mine.events.len(), 6);
    b.ack(&mine, &mine.events.iter().map(|e| e.event_id().clone()).collect::<Vec<_>>()).await?;
    assert_eq!(b.counts(&t).await?.delivered, 6);
    Ok(())
}

/// One step of the model test.
#[derive(Debug, Clone)]
enum Step {
    /// Agent 0 or 1 claims (or renews).
    Claim(usize),
    /// The agent leases under its last claim.
    Lease(usize),
    /// The agent acks its last lease.
    Ack(usize),
    /// Time passes beyond a claim's lifetime (no renewal meanwhile).
    Expire,
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        3 => (0..2usize).prop_map(Step::Claim),
        3 => (0..2usize).prop_map(Step::Lease),
        3 => (0..2usize).prop_map(Step::Ack),
        2 => Just(Step::Expire),
    ]
}

/// Interleavings of claim, renew, lease, ack and expiry for two agents on the real server:
/// never two holders of one generation, generations only grow with new holders, and nothing
/// is leased or settled under a generation a later holder replaced.
#[test]
fn no_interleaving_yields_two_holders_or_a_stale_settle() -> TestResult {
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    let rt = tokio::runtime::Runtime::new()?;
    let db = rt.block_on(TestDb::create())?;
    let clock = Arc::new(ManualClock::new(t0()));
    let agents = rt.block_on(two_agents(&db, &clock))?;
    let agents = [agents.0, agents.1];
    let ttl = Duration::from_millis(60);
    let case = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config { cases: 64, failure_persistence: None, ..Config::default() });
    let result = runner.run(&proptest::collection::vec(step(), 4..16), |steps| {
        rt.block_on(async {
            let t = tenant(&format!("t{}", case.fetch_add(1, Ordering::SeqCst)));
            agents[0].enqueue(&t, &events("e", 40)).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut claims: [Option<Claim>; 2] = [None, None];
            let mut leases: [Option<billsync_domain::Lease>; 2] = [None, None];
            // The latest generation granted, and to whom.
            let mut latest: Option<(usize, u64)> = None;
            for s in steps {
                match s {
                    Step::Claim(i) => {
                        let name = format!("agent-{i}");
                        match agents[i]
                            .claim_tenant(&t, &name, ttl)
                            .await
                            .map_err(|e| TestCaseError::fail(e.to_string()))?
                        {
                            ClaimOutcome::Claimed(c) => {
                                if let Some((who, g)) = latest {
                                    let ok = if who == i { c.generation >= g } else { c.generation > g };
                                    proptest::prop_assert!(
                                        ok,
                                        "agent-{} got generation {} after agent-{} had {}",
                                        i,
                                        c.generation,
                                        who,
                                        g
                                    );
                                }
                                latest = Some((i, c.generation));
                                claims[i] = Some(c);
                            }
                            ClaimOutcome::HeldBy(h) => {
                                proptest::prop_assert_eq!(
                                    Some(h.agent.as_str()),
                                    latest.map(|(w, _)| if w == 0 { "agent-0" } else { "agent-1" })
                                );
                            }
                        }
                    }
                    Step::Lease(i) => {
                        let Some(c) = claims[i].clone() else { continue };
                        let stale = latest.is_some_and(|(_, g)| g != c.generation);
                        match agents[i].lease_claimed(&c, 5, Duration::from_secs(120)).await {
                            Ok(l) => {
                                proptest::prop_assert!(
                                    !stale,
                                    "agent-{} leased under stale generation {}",
                                    i,
                                    c.generation
                                );
                                leases[i] = l;
                            }
                            Err(OutboxError::ClaimLost { .. }) => {
                                proptest::prop_assert!(stale, "a current holder was refused")
                            }
                            Err(e) => return Err(TestCaseError::fail(e.to_string())),
                        }
                    }
                    Step::Ack(i) => {
                        let Some(l) = leases[i].take() else { continue };
                        let g = l.generation.unwrap_or_default();
                        let stale = latest.is_some_and(|(_, latest)| latest != g);
                        let ids: Vec<_> = l.events.iter().map(|e| e.event_id().clone()).collect();
                        match agents[i].ack(&l, &ids).await {
                            Ok(()) => {
                                proptest::prop_assert!(!stale, "agent-{} settled under stale generation {}", i, g)
                            }
                            Err(OutboxError::ClaimLost { .. }) => {
                                proptest::prop_assert!(stale, "a current holder's ack was refused")
                            }
                            Err(e) => return Err(TestCaseError::fail(e.to_string())),
                        }
                    }
                    Step::Expire => tokio::time::sleep(ttl + Duration::from_millis(20)).await,
                }
            }
            Ok(())
        })
    });
    result.map_err(|e| format!("{e}"))?;
    Ok(())
}
