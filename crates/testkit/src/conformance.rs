//! The contract of [`billsync_domain::Outbox`], as one suite that every implementation must
//! pass: each check takes the outbox under test and the manual clock that drives it, and fails
//! (an `Err` or a panic) where the outbox breaks the contract.
//!
//! [`outbox_conformance!`](crate::outbox_conformance) runs every check as its own test; a new
//! check is a `pub async fn` here and a name in that macro's list.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use billsync_domain::{Claim, ClaimOutcome, DeadLetter, Holder, ManualClock, Outbox, OutboxError, TenantCounts};
use chrono::Utc;

use crate::fixtures::{TestResult, event, events, id, ids_of, tenant};

const LEASE: Duration = Duration::from_secs(30);

fn lease_ids(lease: &billsync_domain::Lease) -> Vec<String> {
    ids_of(&lease.events)
}

/// An enqueue stores only new events: those already stored, in any state (pending, leased,
/// delivered, dead-lettered), are reported as duplicates.
pub async fn enqueue_deduplicates_against_stored_events(outbox: Arc<dyn Outbox>, _: Arc<ManualClock>) -> TestResult {
    let t = tenant("acme");
    let first = outbox.enqueue(&t, &events("e", 3)).await?;
    assert_eq!((first.stored, first.duplicates.len()), (3, 0));

    // Stored in any state: pending, leased, delivered, dead-lettered.
    let lease = outbox.lease(&t, 2, LEASE).await?.ok_or("nothing leased")?;
    outbox.ack(&lease, &[id("e-0")]).await?;
    outbox.dead_letter(&lease, &[DeadLetter { event_id: id("e-1"), code: "c".into(), message: "m".into() }]).await?;
    let again = outbox.enqueue(&t, &[event("e-0"), event("e-1"), event("e-2"), event("e-3")]).await?;
    assert_eq!(again.stored, 1);
    assert_eq!(again.duplicates, [id("e-0"), id("e-1"), id("e-2")]);
    Ok(())
}

/// An event repeated within one call is stored once and reported as a duplicate once.
pub async fn enqueue_deduplicates_within_one_call(outbox: Arc<dyn Outbox>, _: Arc<ManualClock>) -> TestResult {
    let t = tenant("acme");
    let report = outbox.enqueue(&t, &[event("a"), event("b"), event("a"), event("a")]).await?;
    assert_eq!(report.stored, 2);
    assert_eq!(report.duplicates, [id("a")], "each duplicate is reported once");
    let lease = outbox.lease(&t, 10, LEASE).await?.ok_or("nothing leased")?;
    assert_eq!(lease_ids(&lease), ["a", "b"], "stored once");
    Ok(())
}

/// Enqueueing nothing stores nothing, and a lease of at most 0 events leases nothing.
pub async fn enqueue_of_nothing_stores_nothing(outbox: Arc<dyn Outbox>, _: Arc<ManualClock>) -> TestResult {
    let t = tenant("acme");
    assert_eq!(outbox.enqueue(&t, &[]).await?, Default::default());
    assert!(outbox.lease(&t, 10, LEASE).await?.is_none());
    outbox.enqueue(&t, &events("e", 1)).await?;
    assert!(outbox.lease(&t, 0, LEASE).await?.is_none(), "max 0 leases nothing");
    assert_eq!(outbox.counts(&t).await?.in_flight, 0);
    Ok(())
}

/// Observers see a batch entirely or not at all, never part of it.
pub async fn enqueue_is_all_or_nothing_to_observers(outbox: Arc<dyn Outbox>, _: Arc<ManualClock>) -> TestResult {
    let t = tenant("acme");
    let batch = events("big", 5_000);
    let writer = {
        let (outbox, t) = (outbox.clone(), t.clone());
        tokio::spawn(async move { outbox.enqueue(&t, &batch).await })
    };
    while !writer.is_finished() {
        let pending = outbox.counts(&t).await?.pending;
        assert!(pending == 0 || pending == 5_000, "saw {pending} of a 5000-event batch");
    }
    assert_eq!(writer.await??.stored, 5_000);
    assert_eq!(outbox.counts(&t).await?.pending, 5_000);
    Ok(())
}

/// Concurrent single-event enqueues (committed together by group commit) each get their own
/// report, duplicates included.
pub async fn concurrent_enqueues_each_get_their_own_report(outbox: Arc<dyn Outbox>, _: Arc<ManualClock>) -> TestResult {
    let t = tenant("acme");
    outbox.enqueue(&t, &[event("old-1")]).await?;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let (outbox, t) = (outbox.clone(), t.clone());
        // Every 8th task repeats an id another task enqueues too, or one stored before.
        let ev = match i % 8 {
            0 => event("old-1"),
            1 => event("shared"),
            _ => event(&format!("own-{i}")),
        };
        tasks.push(tokio::spawn(async move { (i, outbox.enqueue(&t, &[ev]).await) }));
    }
    let (mut stored, mut shared_stored) = (0, 0);
    for task in tasks {
        let (i, report) = task.await?;
        let report = report?;
        match i % 8 {
            0 => assert_eq!((report.stored, report.duplicates), (0, vec![id("old-1")])),
            1 => {
                shared_stored += report.stored;
                assert_eq!(report.stored + report.duplicates.len(), 1);
            }
            _ => assert_eq!((report.stored, report.duplicates.len()), (1, 0), "task {i}"),
        }
        stored += report.stored;
    }
    assert_eq!(shared_stored, 1, "exactly one of the tasks stored the shared id");
    assert_eq!(stored, 48 + 1);
    assert_eq!(outbox.counts(&t).await?.pending, 50);
    Ok(())
}

/// A lease takes at most `max` events, oldest first, for `lease_for` from now, with their
/// bodies exactly as stored.
pub async fn lease_returns_oldest_first_up_to_max(outbox: Arc<dyn Outbox>, clock: Arc<ManualClock>) -> TestResult {
    let t = tenant("acme");
    for i in 0..5 {
        outbox.enqueue(&t, &[event(&format!("e-{i}"))]).await?;
        clock.advance(Duration::from_millis(10));
    }
    outbox.enqueue(&t, &[event("e-5"), event("e-6"), event("e-7")]).await?;
    let first = outbox.lease(&t, 3, LEASE).await?.ok_or("nothing leased")?;
    assert_eq!(lease_ids(&first), ["e-0", "e-1", "e-2"]);
    assert_eq!(first.tenant, t);
    assert_eq!(first.expires_at, clock.now_utc() + chrono::Duration::seconds(30));
    let second = outbox.lease(&t, 100, LEASE).await?.ok_or("nothing leased")?;
    assert_eq!(lease_ids(&second), ["e-3", "e-4", "e-5", "e-6", "e-7"]);
    assert_ne!(first.id, second.id);
    // The bodies come back exactly as stored.
    assert_eq!(second.events[2].json(), event("e-5").json());
    Ok(())
}

/// Events in an unexpired lease are in no other lease, up to its last millisecond.
pub async fn leased_events_are_invisible_to_other_leases(
    outbox: Arc<dyn Outbox>,
    clock: Arc<ManualClock>,
) -> TestResult {
    let t = tenant("acme");
    outbox.enqueue(&t, &events("e", 4)).await?;
    let held = outbox.lease(&t, 4, LEASE).await?.ok_or("nothing leased")?;
    assert_eq!(held.events.len(), 4);
    assert!(outbox.lease(&t, 10, LEASE).await?.is_none(), "all four are held");
    clock.advance(LEASE - Duration::from_millis(1));
    assert!(outbox.lease(&t, 10, LEASE).await?.is_none(), "still held a millisecond before expiry");
    Ok(())
}

/// Acking or dead-lettering some of a lease's events leaves the rest held by it until it
/// lapses, and only those come back.
pub async fn a_partly_settled_lease_still_holds_the_rest(
    outbox: Arc<dyn Outbox>,
    clock: Arc<ManualClock>,
) -> TestResult {
    let t = tenant("acme");
    outbox.enqueue(&t, &events("e", 4)).await?;
    let held = outbox.lease(&t, 4, LEASE).await?.ok_or("nothing leased")?;
    outbox.ack(&held, &[id("e-0")]).await?;
    let dead = DeadLetter { event_id: id("e-1"), code: "invalid_unit".into(), message: "no".into() };
    outbox.dead_letter(&held, &[dead]).await?;
    assert!(outbox.lease(&t, 10, LEASE).await?.is_none(), "e-2 and e-3 are still held");
    let counts = outbox.counts(&t).await?;
    assert_eq!((counts.pending, counts.in_flight, counts.delivered, counts.dead_lettered), (0, 2, 1, 1));
    clock.advance(LEASE);
    let again = outbox.lease(&t, 10, LEASE).await?.ok_or("lapsed events not leasable")?;
    assert_eq!(lease_ids(&again), ["e-2", "e-3"], "only the unsettled ones come back");
    Ok(())
}

/// A lapsed lease's events count as pending again and are leased again ahead of newer events.
pub async fn expired_lease_makes_events_leasable_again_in_place(
    outbox: Arc<dyn Outbox>,
    clock: Arc<ManualClock>,
) -> TestResult {
    let t = tenant("acme");
    outbox.enqueue(&t, &events("e", 2)).await?;
    clock.advance(Duration::from_secs(1));
    let lapsed = outbox.lease(&t, 2, LEASE).await?.ok_or("nothing leased")?;
    outbox.enqueue(&t, &[event("later")]).await?;
    clock.advance(LEASE);
    let counts = outbox.counts(&t).await?;
    assert_eq!((counts.pending, counts.in_flight), (3, 0), "an expired lease counts as pending");
    // The lapsed events keep their place ahead of the newer one.
    let again = outbox.lease(&t, 2, LEASE).await?.ok_or("expired events not leasable")?;
    assert_eq!(lease_ids(&again), lease_ids(&lapsed));
    assert_ne!(again.id, lapsed.id);
    let rest = outbox.lease(&t, 2, LEASE).await?.ok_or("nothing leased")?;
    assert_eq!(lease_ids(&rest), ["later"]);
    Ok(())
}

/// Several tasks lease in a loop: every event is leased exactly once.
pub async fn concurrent_leasers_never_share_an_event(outbox: Arc<dyn Outbox>, _: Arc<ManualClock>) -> TestResult {
    let t = tenant("acme");
    let all = events("e", 2_000);
    outbox.enqueue(&t, &all).await?;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (outbox, t) = (outbox.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(lease) = outbox.lease(&t, 37, Duration::from_secs(600)).await? {
                got.extend(lease_ids(&lease));
                tokio::task::yield_now().await;
            }
            Ok::<_, OutboxError>(got)
        }));
    }
    let mut leased = Vec::new();
    for task in tasks {
        leased.extend(task.await??);
    }
    let distinct: HashSet<&String> = leased.iter().collect();
    assert_eq!(distinct.len(), leased.len(), "an event was leased twice");
    assert_eq!(distinct.len(), all.len(), "an event was never leased");
    assert_eq!(outbox.counts(&t).await?.in_flight, 2_000);
    Ok(())
}

/// An ack marks events delivered even after its lease lapsed, even once another lease holds
/// them: the platform has them either way.
pub async fn ack_marks_delivered_even_after_the_lease_lapsed(
    outbox: Arc<dyn Outbox>,
    clock: Arc<ManualClock>,
) -> TestResult {
    let t = tenant("acme");
    outbox.enqueue(&t, &events("e", 3)).await?;
    let lease = outbox.lease(&t, 3, LEASE).await?.ok_or("nothing leased")?;
    outbox.ack(&lease, &[id("e-0")]).await?;
    let counts = outbox.counts(&t).await?;
    assert_eq!((counts.delivered, counts.in_flight, counts.pending), (1, 2, 0));

    clock.advance(LEASE * 2);
    outbox.ack(&lease, &[id("e-1")]).await?;
    let counts = outbox.counts(&t).await?;
    assert_eq!((counts.delivered, counts.pending), (2, 1));
    let again = outbox.lease(&t, 10, LEASE).await?.ok_or("nothing leased")?;
    assert_eq!(lease_ids(&again), ["e-2"], "acked events are never leased again");
    // The first lease is gone now that another holds e-2; its late ack still counts.
    outbox.ack(&lease, &[id("e-2")]).await?;
    assert_eq!(outbox.counts(&t).await?.delivered, 3);
    Ok(())
}

/// A nack returns the lease's events to pending with one more attempt counted, not leasable
/// before `retry_at`; the count survives to the dead letter.
pub async fn nack_counts_attempts_and_waits_for_retry_at(
    outbox: Arc<dyn Outbox>,
    clock: Arc<ManualClock>,
) -> TestResult {
    let t = tenant("acme");
    outbox.enqueue(&t, &events("e", 2)).await?;
    let retry_at = clock.now_utc() + chrono::Duration::seconds(60);
    for _ in 0..2 {
        let lease = outbox.lease(&t, 1, LEASE).await?.ok_or("nothing leased")?;
        assert_eq!(lease_ids(&lease), ["e-0"]);
        outbox.nack(&lease, clock.now_utc()).await?;
    }
    let lease = outbox.lease(&t, 1, LEASE).await?.ok_or("nothing leased")?;
    outbox.nack(&lease, retry_at).await?;
    let counts = outbox.counts(&t).await?;
    assert_eq!((counts.pending, counts.in_flight), (2, 0));
    assert_eq!(counts.next_attempt_at, Some(retry_at));

    // Not before retry_at: only the other event is leasable.
    let other = outbox.lease(&t, 10, LEASE).await?.ok_or("nothing leased")?;
    assert_eq!(lease_ids(&other), ["e-1"]);
    outbox.ack(&other, &[id("e-1")]).await?;
    clock.advance(Duration::from_secs(59));
    assert!(outbox.lease(&t, 10, LEASE).await?.is_none(), "leased before retry_at");
    clock.advance(Duration::from_secs(1));
    let retried = outbox.lease(&t, 10, LEASE).await?.ok_or("not leasable at retry_at")?;
    assert_eq!(lease_ids(&retried), ["e-0"]);
    // The attempt count persisted: three nacks, then the final refusal.
    outbox.dead_letter(&retried, &[DeadLetter { event_id: id("e-0"), code: "c".into(), message: "m".into() }]).await?;
    assert_eq!(outbox.dead_letters(Some(t)).await?[0].attempts, 4);
    Ok(())
}

/// A nack of a lapsed lease whose events another lease holds now changes nothing.
pub async fn nack_of_a_lapsed_lease_leaves_the_new_lease_alone(
    outbox: Arc<dyn Outbox>,
    clock: Arc<ManualClock>,
) -> TestResult {
    let t = tenant("acme");
    outbox.enqueue(&t, &events("e", 1)).await?;
    let old = outbox.lease(&t, 1, LEASE).await?.ok_or("nothing leased")?;
    clock.advance(LEASE);
    let new = outbox.lease(&t, 1, LEASE).await?.ok_or("expired lease not re-leasable")?;
    outbox.nack(&old, clock.now_utc()).await?;
    assert_eq!(outbox.counts(&t).await?.in_flight, 1, "the old lease no longer holds the event");
    assert!(outbox.lease(&t, 1, LEASE).await?.is_none());
    outbox.nack(&new, clock.now_utc()).await?;
    assert_eq!(outbox.counts(&t).await?.pending, 1);
    Ok(())
}

/// Dead letters are listed with their code, message, attempts and time, oldest first, per
/// tenant or all; a requeue returns them (and only them) to pending.
pub async fn dead_letter_lists_and_requeue_returns_to_pending(
    outbox: Arc<dyn Outbox>,
    clock: Arc<ManualClock>,
) -> TestResult {
    let (a, b) = (tenant("acme"), tenant("bolt"));
    outbox.enqueue(&a, &events("a", 4)).await?;
    outbox.enqueue(&b, &events("b", 1)).await?;
    let la = outbox.lease(&a, 4, LEASE).await?.ok_or("nothing leased")?;
    let lb = outbox.lease(&b, 1, LEASE).await?.ok_or("nothing leased")?;
    let dl = |i: &str, code: &str| DeadLetter { event_id: id(i), code: code.into(), message: format!("{code} msg") };
    outbox.dead_letter(&la, &[dl("a-0", "invalid_quantity"), dl("a-2", "invalid_unit")]).await?;
    let dead_at_a = clock.now_utc();
    clock.advance(Duration::from_secs(1));
    outbox.dead_letter(&lb, &[dl("b-0", "too_old")]).await?;

    let mine = outbox.dead_letters(Some(a.clone())).await?;
    assert_eq!(mine.len(), 2);
    assert_eq!((mine[0].event_id.as_str(), mine[0].code.as_str()), ("a-0", "invalid_quantity"));
    assert_eq!((mine[0].message.as_str(), mine[0].tenant.clone()), ("invalid_quantity msg", a.clone()));
    assert_eq!((mine[0].attempts, mine[0].dead_at), (1, dead_at_a));
    let all = outbox.dead_letters(None).await?;
    let listed: Vec<&str> = all.iter().map(|d| d.event_id.as_str()).collect();
    assert_eq!(listed, ["a-0", "a-2", "b-0"], "oldest first, all tenants");
    assert_eq!(outbox.counts(&a).await?.dead_lettered, 2);

    assert_eq!(outbox.requeue(&a, Some(vec![id("a-2"), id("a-1")])).await?, 1, "a-1 is not dead");
    assert_eq!(outbox.requeue(&b, None).await?, 1);
    assert_eq!(outbox.requeue(&b, None).await?, 0);
    let remaining: Vec<String> =
        outbox.dead_letters(None).await?.iter().map(|d| d.event_id.as_str().to_owned()).collect();
    assert_eq!(remaining, ["a-0"]);
    outbox.ack(&la, &[id("a-1"), id("a-3")]).await?;
    let again = outbox.lease(&a, 10, LEASE).await?.ok_or("requeued event not leasable")?;
    assert_eq!(lease_ids(&again), ["a-2"]);
    Ok(())
}

/// Counts report pending, in flight, delivered and dead-lettered events, the oldest pending
/// enqueue time and the next retry time.
pub async fn counts_report_every_state(outbox: Arc<dyn Outbox>, clock: Arc<ManualClock>) -> TestResult {
    let t = tenant("acme");
    assert_eq!(outbox.counts(&t).await?, TenantCounts::default());
    let enqueued_at = clock.now_utc();
    outbox.enqueue(&t, &events("e", 6)).await?;
    clock.advance(Duration::from_secs(5));
    outbox.enqueue(&t, &events("f", 1)).await?;
    let lease = outbox.lease(&t, 4, LEASE).await?.ok_or("nothing leased")?;
    outbox.ack(&lease, &[id("e-0")]).await?;
    outbox.dead_letter(&lease, &[DeadLetter { event_id: id("e-1"), code: "c".into(), message: "m".into() }]).await?;
    let retry_at = clock.now_utc() + chrono::Duration::seconds(90);
    let second = outbox.lease(&t, 1, LEASE).await?.ok_or("nothing leased")?;
    outbox.nack(&second, retry_at).await?;
    let counts = outbox.counts(&t).await?;
    assert_eq!(
        counts,
        TenantCounts {
            pending: 3,
            in_flight: 2,
            delivered: 1,
            dead_lettered: 1,
            oldest_pending: Some(enqueued_at),
            next_attempt_at: Some(retry_at),
        }
    );
    assert_eq!(outbox.counts(&tenant("other")).await?, TenantCounts::default());
    Ok(())
}

/// A compaction deletes delivered events delivered before the cutoff, and nothing else.
pub async fn compact_deletes_only_delivered_before_the_cutoff(
    outbox: Arc<dyn Outbox>,
    clock: Arc<ManualClock>,
) -> TestResult {
    let t = tenant("acme");
    outbox.enqueue(&t, &events("e", 5_000)).await?;
    let lease = outbox.lease(&t, 4_500, LEASE).await?.ok_or("nothing leased")?;
    let (early, late) = lease.events.split_at(4_200);
    outbox.ack(&lease, &early.iter().map(|e| e.event_id().clone()).collect::<Vec<_>>()).await?;
    clock.advance(Duration::from_secs(10));
    let cutoff = clock.now_utc();
    outbox.ack(&lease, &late[..100].iter().map(|e| e.event_id().clone()).collect::<Vec<_>>()).await?;
    outbox
        .dead_letter(
            &lease,
            &[DeadLetter { event_id: late[100].event_id().clone(), code: "c".into(), message: "m".into() }],
        )
        .await?;

    assert_eq!(outbox.compact(cutoff).await?, 4_200, "more than one chunk, only before the cutoff");
    assert_eq!(outbox.compact(cutoff).await?, 0);
    let counts = outbox.counts(&t).await?;
    assert_eq!((counts.delivered, counts.dead_lettered, counts.pending + counts.in_flight), (100, 1, 699));
    assert_eq!(outbox.compact(cutoff + chrono::Duration::milliseconds(1)).await?, 100);
    Ok(())
}

fn claimed(outcome: ClaimOutcome) -> Result<Claim, String> {
    match outcome {
        ClaimOutcome::Claimed(c) => Ok(c),
        ClaimOutcome::HeldBy(h) => Err(format!("held by {}", h.agent)),
    }
}

fn holder(outcome: ClaimOutcome) -> Result<Holder, String> {
    match outcome {
        ClaimOutcome::HeldBy(h) => Ok(h),
        ClaimOutcome::Claimed(c) => Err(format!("claimed, generation {}", c.generation)),
    }
}

/// A claimed tenant is held by its holder alone; claims are per tenant, and a renewal keeps
/// the generation.
pub async fn claim_is_exclusive_while_its_holder_holds_it(outbox: Arc<dyn Outbox>, _: Arc<ManualClock>) -> TestResult {
    let t = tenant("acme");
    let ttl = Duration::from_secs(15);
    let first = claimed(outbox.claim_tenant(&t, "agent-a", ttl).await?)?;
    assert_eq!(holder(outbox.claim_tenant(&t, "agent-b", ttl).await?)?.agent, "agent-a");
    claimed(outbox.claim_tenant(&tenant("other"), "agent-b", ttl).await?)
        .map_err(|e| format!("claims are per tenant: {e}"))?;
    let renewed = claimed(outbox.claim_tenant(&t, "agent-a", ttl).await?)?;
    assert_eq!(renewed.generation, first.generation, "a renewal is the same holder");
    Ok(())
}

/// Only the holder can release a claim; the next holder gets a higher generation, and the
/// earlier holder's leases are void at once.
pub async fn a_new_holder_gets_a_new_generation_and_the_leases_of_the_old_one(
    outbox: Arc<dyn Outbox>,
    _: Arc<ManualClock>,
) -> TestResult {
    let t = tenant("acme");
    let ttl = Duration::from_secs(15);
    outbox.enqueue(&t, &events("e", 3)).await?;
    let first = claimed(outbox.claim_tenant(&t, "agent-a", ttl).await?)?;
    let held = outbox.lease(&t, 2, Duration::from_secs(120)).await?.ok_or("nothing leased")?;
    assert_eq!(held.events.len(), 2);
    outbox.release_tenant(&t, "agent-b").await?;
    holder(outbox.claim_tenant(&t, "agent-b", ttl).await?).map_err(|e| format!("only the holder can release: {e}"))?;
    outbox.release_tenant(&t, "agent-a").await?;

    let second = claimed(outbox.claim_tenant(&t, "agent-b", ttl).await?)?;

    assert!(second.generation > first.generation, "{} then {}", first.generation, second.generation);
    let all = outbox.lease(&t, 10, Duration::from_secs(120)).await?.ok_or("the old holder's lease still holds")?;
    assert_eq!(all.events.len(), 3, "the earlier holder's lease is void at once, without waiting for it to lapse");
    Ok(())
}

/// A holder that lost the tenant (it let go, and another agent took it in a later generation)
/// can neither lease nor settle under its old generation: each is refused with
/// [`OutboxError::ClaimLost`] and changes nothing. The new holder gets every event at once.
pub async fn an_agent_that_lost_its_claim_can_neither_lease_nor_settle(
    outbox: Arc<dyn Outbox>,
    _: Arc<ManualClock>,
) -> TestResult {
    let t = tenant("acme");
    let (ttl, lease_for) = (Duration::from_secs(15), Duration::from_secs(120));
    outbox.enqueue(&t, &events("e", 6)).await?;
    let old = claimed(outbox.claim_tenant(&t, "agent-a", ttl).await?)?;
    let leased = outbox.lease_claimed(&old, 3, lease_for).await?.ok_or("nothing leased")?;
    assert_eq!(leased.generation, Some(old.generation));

    // agent-a lets go (its lock or its claim), and agent-b takes the tenant over.
    outbox.release_tenant(&t, "agent-a").await?;
    let new = claimed(outbox.claim_tenant(&t, "agent-b", ttl).await?)?;
    assert!(new.generation > old.generation, "{} then {}", old.generation, new.generation);

    let lost = |r: Result<(), OutboxError>| match r {
        Err(OutboxError::ClaimLost { tenant, generation }) => tenant == t && generation == old.generation,
        _ => false,
    };
    let ids: Vec<_> = leased.events.iter().map(|e| e.event_id().clone()).collect();
    let acked = outbox.ack(&leased, &ids).await;
    assert!(lost(acked.clone()), "a stale ack was taken: {acked:?}");
    let nacked = outbox.nack(&leased, Utc::now()).await;
    assert!(lost(nacked.clone()), "a stale nack was taken: {nacked:?}");
    let dead = [DeadLetter { event_id: ids[0].clone(), code: "c".into(), message: "m".into() }];
    let buried = outbox.dead_letter(&leased, &dead).await;
    assert!(lost(buried.clone()), "a stale dead letter was taken: {buried:?}");
    let again = outbox.lease_claimed(&old, 3, lease_for).await;
    assert!(matches!(again, Err(OutboxError::ClaimLost { .. })), "a stale lease was taken: {again:?}");
    let c = outbox.counts(&t).await?;
    assert_eq!((c.pending, c.in_flight, c.delivered, c.dead_lettered), (6, 0, 0, 0), "a refused write changed {c:?}");

    let mine = outbox.lease_claimed(&new, 10, lease_for).await?.ok_or("nothing for the new holder")?;
    assert_eq!(mine.events.len(), 6, "the old holder's lease is void");
    let mut ids: Vec<_> = mine.events.iter().map(|e| e.event_id().clone()).collect();
    let first = ids.remove(0);
    outbox.dead_letter(&mine, &[DeadLetter { event_id: first, code: "c".into(), message: "m".into() }]).await?;
    outbox.ack(&mine, &ids).await?;
    let c = outbox.counts(&t).await?;
    assert_eq!((c.pending, c.delivered, c.dead_lettered), (0, 5, 1));
    assert_eq!(outbox.dead_letters(Some(t)).await?[0].attempts, 1, "a refused nack counted an attempt");
    Ok(())
}

/// A lease taken without a claim is not fenced: its settles are taken whoever holds the
/// tenant, in whatever generation.
pub async fn a_lease_without_a_claim_settles_whoever_holds_the_tenant(
    outbox: Arc<dyn Outbox>,
    _: Arc<ManualClock>,
) -> TestResult {
    let t = tenant("acme");
    let ttl = Duration::from_secs(15);
    outbox.enqueue(&t, &events("e", 2)).await?;
    let plain = outbox.lease(&t, 2, LEASE).await?.ok_or("nothing leased")?;
    assert_eq!(plain.generation, None);
    claimed(outbox.claim_tenant(&t, "agent-a", ttl).await?)?;
    outbox.release_tenant(&t, "agent-a").await?;
    claimed(outbox.claim_tenant(&t, "agent-b", ttl).await?)?;
    outbox.ack(&plain, &[id("e-0")]).await?;
    outbox.dead_letter(&plain, &[DeadLetter { event_id: id("e-1"), code: "c".into(), message: "m".into() }]).await?;
    let c = outbox.counts(&t).await?;
    assert_eq!((c.delivered, c.dead_lettered), (1, 1));
    Ok(())
}

/// The same event ids are distinct events for two tenants, and an ack never touches another
/// tenant's events.
pub async fn tenants_are_isolated(outbox: Arc<dyn Outbox>, _: Arc<ManualClock>) -> TestResult {
    let (a, b) = (tenant("acme"), tenant("bolt"));
    outbox.enqueue(&a, &events("e", 2)).await?;
    let report = outbox.enqueue(&b, &events("e", 3)).await?;
    assert_eq!(report.stored, 3, "the same ids are new for another tenant");
    let la = outbox.lease(&a, 10, LEASE).await?.ok_or("nothing leased")?;
    assert_eq!(la.events.len(), 2);
    // An ack names the lease's tenant: it cannot touch another tenant's events.
    outbox.ack(&la, &[id("e-0"), id("e-1"), id("e-2")]).await?;
    assert_eq!(outbox.counts(&a).await?.delivered, 2);
    let cb = outbox.counts(&b).await?;
    assert_eq!((cb.pending, cb.delivered), (3, 0));
    Ok(())
}

/// A tenant's state document is kept per tenant, and the last save wins.
pub async fn tenant_state_is_saved_per_tenant_and_the_last_writer_wins(
    outbox: Arc<dyn Outbox>,
    _: Arc<ManualClock>,
) -> TestResult {
    let (a, b) = (tenant("acme"), tenant("bolt"));
    assert_eq!(outbox.tenant_state(&a).await?, None);
    outbox.save_tenant_state(&a, r#"{"blocked":{"codes":["missing_scope"]}}"#).await?;
    outbox.save_tenant_state(&b, r#"{"last_error":"503"}"#).await?;
    outbox.save_tenant_state(&a, r#"{"blocked":null}"#).await?;
    assert_eq!(outbox.tenant_state(&a).await?.as_deref(), Some(r#"{"blocked":null}"#));
    assert_eq!(outbox.tenant_state(&b).await?.as_deref(), Some(r#"{"last_error":"503"}"#));
    Ok(())
}

/// The clock as the outbox sees it.
trait NowUtc {
    fn now_utc(&self) -> chrono::DateTime<Utc>;
}

impl NowUtc for ManualClock {
    fn now_utc(&self) -> chrono::DateTime<Utc> {
        billsync_domain::Clock::now(self)
    }
}
