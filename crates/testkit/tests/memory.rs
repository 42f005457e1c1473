//! The in-memory outbox: the whole conformance suite, plus what only it can show with a manual
//! clock (claims lapse by the injected clock) and its helpers for tests (a second agent taking a
//! tenant over, the states of the events).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is a failure

use std::sync::Arc;
use std::time::Duration;

use billsync_domain::{Claim, ClaimOutcome, DeadLetter, ManualClock, Outbox, OutboxError};
use billsync_testkit::{Fixture, MemoryOutbox, TestResult, events, id, t0, tenant};

async fn memory_fixture() -> TestResult<Fixture> {
    let clock = Arc::new(ManualClock::new(t0()));
    Ok(Fixture::new(Arc::new(MemoryOutbox::new(clock.clone())), clock))
}

billsync_testkit::outbox_conformance!(memory_fixture);

const TTL: Duration = Duration::from_secs(15);
const LEASE: Duration = Duration::from_secs(120);

fn claimed(outcome: ClaimOutcome) -> Result<Claim, String> {
    match outcome {
        ClaimOutcome::Claimed(c) => Ok(c),
        ClaimOutcome::HeldBy(h) => Err(format!("held by {}", h.agent)),
    }
}

fn memory() -> (Arc<ManualClock>, MemoryOutbox) {
    let clock = Arc::new(ManualClock::new(t0()));
    (clock.clone(), MemoryOutbox::new(clock))
}

/// The injected clock judges claims: a holder that stops renewing loses the tenant once its
/// claim lapses, not a millisecond before; its renewals move the heartbeat meanwhile.
#[tokio::test]
async fn a_claim_lapses_by_the_injected_clock_and_passes_to_the_next_agent() -> TestResult {
    let (clock, outbox) = memory();
    let t = tenant("acme");
    let first = claimed(outbox.claim_tenant(&t, "agent-a", TTL).await?)?;
    let ClaimOutcome::HeldBy(seen) = outbox.claim_tenant(&t, "agent-b", TTL).await? else {
        return Err("agent-b took a live claim".into());
    };
    clock.advance(TTL / 3);
    claimed(outbox.claim_tenant(&t, "agent-a", TTL).await?)?;
    let ClaimOutcome::HeldBy(renewed) = outbox.claim_tenant(&t, "agent-b", TTL).await? else {
        return Err("agent-b took a renewed claim".into());
    };
    assert_eq!(renewed.agent, "agent-a");
    assert_ne!(seen.heartbeat, renewed.heartbeat, "a renewal moves the heartbeat");
    assert!(renewed.heartbeat.is_some(), "a claim with a lifetime has a heartbeat");

    clock.advance(TTL - Duration::from_millis(1));
    assert!(matches!(outbox.claim_tenant(&t, "agent-b", TTL).await?, ClaimOutcome::HeldBy(_)), "not yet lapsed");
    clock.advance(Duration::from_millis(1));
    let second = claimed(outbox.claim_tenant(&t, "agent-b", TTL).await?)?;
    assert_eq!(second.generation, first.generation + 1);
    let ClaimOutcome::HeldBy(h) = outbox.claim_tenant(&t, "agent-a", TTL).await? else {
        return Err("the old holder took the tenant back".into());
    };
    assert_eq!(h.agent, "agent-b");
    assert_eq!(outbox.generation(&t), Some(second.generation));
    Ok(())
}

/// A holder whose claim lapsed while nobody took the tenant renews it under the same generation.
#[tokio::test]
async fn a_lapsed_claim_nobody_took_is_renewed_in_the_same_generation() -> TestResult {
    let (clock, outbox) = memory();
    let t = tenant("acme");
    let first = claimed(outbox.claim_tenant(&t, "agent-a", TTL).await?)?;
    clock.advance(TTL * 4);
    assert_eq!(claimed(outbox.claim_tenant(&t, "agent-a", TTL).await?)?, first);
    Ok(())
}

/// `steal` is a second agent taking the tenant over: the holder's renewal finds it held, and
/// its leases are void.
#[tokio::test]
async fn steal_takes_the_tenant_over_as_a_second_agent_would() -> TestResult {
    let (_, outbox) = memory();
    let t = tenant("acme");
    outbox.enqueue(&t, &events("e", 4)).await?;
    let mine = claimed(outbox.claim_tenant(&t, "host-1-a", TTL).await?)?;
    outbox.lease_claimed(&mine, 4, LEASE).await?.ok_or("nothing leased")?;
    assert_eq!(outbox.states("acme").get("leased"), Some(&4));

    let theirs = outbox.steal(&t, "thief-1-2", TTL);

    assert_eq!(theirs.generation, mine.generation + 1);
    let ClaimOutcome::HeldBy(h) = outbox.claim_tenant(&t, "host-1-a", TTL).await? else {
        return Err("the old holder renewed a stolen claim".into());
    };
    assert_eq!((h.agent.as_str(), h.host()), ("thief-1-2", Some("thief")));
    assert_eq!(outbox.states("acme").get("pending"), Some(&4), "the old holder's lease is void");
    assert!(matches!(outbox.lease_claimed(&mine, 4, LEASE).await, Err(OutboxError::ClaimLost { .. })));
    // Stealing from oneself is a renewal.
    assert_eq!(outbox.steal(&t, "thief-1-2", TTL), theirs);
    Ok(())
}

/// A release ends the holding: the next claim, even by the same agent, is a new holder.
#[tokio::test]
async fn after_a_release_every_claim_is_a_new_holder() -> TestResult {
    let (_, outbox) = memory();
    let t = tenant("acme");
    let first = claimed(outbox.claim_tenant(&t, "agent-a", TTL).await?)?;
    outbox.release_tenant(&t, "agent-a").await?;
    let again = claimed(outbox.claim_tenant(&t, "agent-a", TTL).await?)?;
    assert!(again.generation > first.generation);
    Ok(())
}

/// The helpers the engine's tests read: states by name, and every row with its attempts.
#[tokio::test]
async fn states_and_rows_show_every_event() -> TestResult {
    let (clock, outbox) = memory();
    let t = tenant("acme");
    outbox.enqueue(&t, &events("e", 5)).await?;
    let lease = outbox.lease(&t, 4, LEASE).await?.ok_or("nothing leased")?;
    outbox.ack(&lease, &[id("e-0")]).await?;
    let dead = DeadLetter { event_id: id("e-1"), code: "invalid_unit".into(), message: "m".into() };
    outbox.dead_letter(&lease, &[dead]).await?;
    let states = outbox.states("acme");
    assert_eq!(states.len(), 4, "{states:?}");
    assert_eq!((states["delivered"], states["dead:invalid_unit"], states["leased"], states["pending"]), (1, 1, 2, 1));
    outbox.nack(&lease, clock.now_plus(Duration::from_secs(5))).await?;
    let attempts: Vec<(String, u32)> =
        outbox.rows().into_iter().map(|r| (r.event_id.as_str().to_owned(), r.attempts)).collect();
    assert_eq!(
        attempts,
        [("e-0".into(), 0), ("e-1".into(), 1), ("e-2".into(), 1), ("e-3".into(), 1), ("e-4".into(), 0)]
    );
    // A lapsed lease shows as pending, without any write.
    let held = outbox.lease(&t, 1, Duration::from_secs(1)).await?.ok_or("nothing leased")?;
    assert_eq!(outbox.states("acme").get("leased"), Some(&1), "{:?}", held.id);
    clock.advance(Duration::from_secs(1));
    assert_eq!(outbox.states("acme").get("leased"), None);
    Ok(())
}

trait NowPlus {
    fn now_plus(&self, d: Duration) -> chrono::DateTime<chrono::Utc>;
}

impl NowPlus for ManualClock {
    fn now_plus(&self, d: Duration) -> chrono::DateTime<chrono::Utc> {
        billsync_domain::Clock::now(self) + chrono::Duration::from_std(d).unwrap()
    }
}
