//! The adapters' side of reconciliation ([`ReconcileStore`]): the ledger enqueue writes, the
//! scratch set of the platform's events, the comparison and the repairs under a claim. Every
//! check runs against SQLite and PostgreSQL ([`reconcile_conformance!`]); the migration of
//! outboxes written before the ledger existed is checked per adapter at the end.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use billsync_domain::{
    BillingEvent, Claim, ClaimOutcome, Clock as _, Comparison, DeadLetter, EncodedEvent, EventId, Fact, Lease,
    ManualClock, Outbox, OutboxError, QuarantineSelection, QuarantineStore, ReconcileStore, TenantName, Window,
};
use billsync_storage::{PostgresOutbox, SqliteOutbox};
use billsync_testkit::{TestResult, id, t0, tenant};
use chrono::NaiveDate;
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection, SqliteConnection};

use crate::helpers::TestDb;

const LEASE: Duration = Duration::from_secs(60);

/// An outbox under test as both ports, its clock, where it lives (for raw reads), and what
/// keeps its storage alive (dropped last).
pub struct Store {
    pub outbox: Arc<dyn Outbox>,
    pub store: Arc<dyn ReconcileStore>,
    pub clock: Arc<ManualClock>,
    pub url: String,
    _keep: Box<dyn Any + Send>,
}

pub async fn sqlite_store() -> TestResult<Store> {
    let dir = tempfile::tempdir()?;
    let clock = Arc::new(ManualClock::new(t0()));
    let path = dir.path().join("outbox.db");
    let outbox = Arc::new(SqliteOutbox::open(&path, clock.clone()).await?);
    let url = format!("sqlite://{}", path.display());
    Ok(Store { outbox: outbox.clone(), store: outbox, clock, url, _keep: Box::new(dir) })
}

pub async fn postgres_store() -> TestResult<Store> {
    let db = TestDb::create().await?;
    let clock = Arc::new(ManualClock::new(t0()));
    let outbox = Arc::new(PostgresOutbox::connect(db.url(), clock.clone()).await?);
    let url = db.url().to_owned();
    Ok(Store { outbox: outbox.clone(), store: outbox, clock, url, _keep: Box::new(db) })
}

/// One number read with raw SQL (`$1` in both dialects) from the store's database.
async fn raw_count(url: &str, sql: &str, arg: &str) -> TestResult<i64> {
    if url.starts_with("sqlite:") {
        let mut conn = SqliteConnection::connect(url).await?;
        let n = sqlx::query_scalar(sql).bind(arg).fetch_one(&mut conn).await?;
        conn.close().await?;
        Ok(n)
    } else {
        let mut conn = PgConnection::connect(url).await?;
        let n = sqlx::query_scalar(sql).bind(arg).fetch_one(&mut conn).await?;
        conn.close().await?;
        Ok(n)
    }
}

/// Runs each check against the store built by `$fixture`, as its own test.
macro_rules! reconcile_conformance {
    ($fixture:path) => {
        $crate::reconcile::reconcile_conformance!($fixture =>
            enqueue_records_facts_and_an_empty_platform_lacks_every_delivered_event,
            every_kind_of_discrepancy_is_found_by_id,
            compacted_delivered_events_the_platform_lacks_are_unrecoverable,
            each_days_digest_is_the_sha256_of_its_sorted_ids_and_totals_are_exact,
            requeue_delivered_makes_events_leasable_and_settle_held_settles_without_a_lease,
            repairs_under_a_stale_claim_are_refused_and_change_nothing,
            end_reconcile_drops_the_scratch_set_and_old_runs_go_at_the_next_begin,
            horizon_is_none_for_a_new_outbox,
            an_event_without_a_fact_is_stored_and_a_compacted_one_enqueued_again_keeps_its_fact,
            trim_facts_drops_old_facts_and_moves_the_horizon_forward_only,
            trim_facts_goes_on_chunk_after_chunk_across_tenants,
            the_last_reconcile_is_kept_per_tenant_and_replaced,
        );
    };
    ($fixture:path => $($check:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() -> billsync_testkit::TestResult {
                $crate::reconcile::$check($fixture().await?).await
            }
        )+
    };
}
pub(crate) use reconcile_conformance;

mod sqlite {
    super::reconcile_conformance!(crate::reconcile::sqlite_store);
}

mod postgres {
    super::reconcile_conformance!(crate::reconcile::postgres_store);
}

// ---------------------------------------------------------------- events and facts

/// A valid event at `at` (RFC 3339), valid at [`t0`].
fn ev(event_id: &str, at: &str, meter: &str, quantity: &str) -> EncodedEvent {
    let json = format!(
        r#"{{"event_id": "{event_id}", "device_id": "meter-1", "meter": "{meter}", "quantity": "{quantity}",
            "unit": "kWh", "occurred_at": "{at}"}}"#
    );
    BillingEvent::parse(&json, t0()).expect("a valid event").encode()
}

fn fact(e: &EncodedEvent) -> Fact {
    Fact::from_event_json(&serde_json::from_str(e.json()).expect("JSON")).expect("a fact")
}

fn facts(events: &[&EncodedEvent]) -> Vec<Fact> {
    events.iter().map(|e| fact(e)).collect()
}

fn ids(events: &[&EncodedEvent]) -> Vec<EventId> {
    events.iter().map(|e| e.event_id().clone()).collect()
}

fn day(s: &str) -> NaiveDate {
    s.parse().expect("a date")
}

/// 2026-11-21 to 2026-11-23 (t0's day).
fn window() -> Window {
    Window { from: day("2026-11-21"), to: day("2026-11-23") }
}

fn listed(list: &billsync_domain::IdList) -> (u64, Vec<&str>) {
    (list.count, list.ids.iter().map(String::as_str).collect())
}

/// Enqueues `events` and leases exactly them (nothing else may be pending).
async fn lease_just(s: &Store, t: &TenantName, events: &[&EncodedEvent]) -> TestResult<Lease> {
    let owned: Vec<EncodedEvent> = events.iter().map(|e| (*e).clone()).collect();
    assert_eq!(s.outbox.enqueue(t, &owned).await?.stored, events.len());
    let lease = s.outbox.lease(t, events.len(), LEASE).await?.ok_or("nothing leased")?;
    assert_eq!(lease.events.len(), events.len());
    Ok(lease)
}

async fn deliver(s: &Store, t: &TenantName, events: &[&EncodedEvent]) -> TestResult {
    let lease = lease_just(s, t, events).await?;
    s.outbox.ack(&lease, &ids(events)).await?;
    Ok(())
}

async fn bury(s: &Store, t: &TenantName, events: &[&EncodedEvent]) -> TestResult {
    let lease = lease_just(s, t, events).await?;
    let items: Vec<DeadLetter> = ids(events)
        .into_iter()
        .map(|event_id| DeadLetter { event_id, code: "invalid_quantity".into(), message: "m".into() })
        .collect();
    s.outbox.dead_letter(&lease, &items).await?;
    Ok(())
}

fn claimed(outcome: ClaimOutcome) -> TestResult<Claim> {
    match outcome {
        ClaimOutcome::Claimed(c) => Ok(c),
        ClaimOutcome::HeldBy(h) => Err(format!("held by {}", h.agent).into()),
    }
}

async fn compare_with(s: &Store, t: &TenantName, held: &[Fact], max_ids: usize) -> TestResult<Comparison> {
    let run = s.store.begin_reconcile(t, &window()).await?;
    s.store.add_held(&run, held).await?;
    let c = s.store.compare(&run, max_ids).await?;
    s.store.end_reconcile(&run).await?;
    Ok(c)
}

fn hex_sha256(ids: &[&str]) -> String {
    let mut sorted: Vec<&str> = ids.to_vec();
    sorted.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let mut h = Sha256::new();
    for id in sorted {
        h.update(id.as_bytes());
        h.update(b"\n");
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------- the checks

/// Enqueue writes each event's fact: with nothing held by the platform, every delivered event
/// of the window is missing on it (sorted bytewise), pending ones and those outside the
/// window are not, and the local side of the days is what was delivered.
pub async fn enqueue_records_facts_and_an_empty_platform_lacks_every_delivered_event(s: Store) -> TestResult {
    let t = tenant("acme");
    let (a, b, c) = (
        ev("a-1", "2026-11-21T08:00:00Z", "energy", "1.5"),
        ev("B-1", "2026-11-22T23:59:59.999Z", "energy", "2"),
        ev("c-1", "2026-11-23T00:00:00Z", "water", "0.25"),
    );
    let before = ev("old-1", "2026-11-20T23:59:59.999999999Z", "energy", "7");
    deliver(&s, &t, &[&a, &b, &c, &before]).await?;
    let pending = [ev("p-1", "2026-11-22T10:00:00Z", "energy", "3")];
    s.outbox.enqueue(&t, &pending).await?;
    s.outbox.enqueue(&tenant("other"), &[ev("z-1", "2026-11-22T10:00:00Z", "energy", "3")]).await?;

    let cmp = compare_with(&s, &t, &[], 100).await?;
    assert_eq!(listed(&cmp.missing_on_platform), (3, vec!["B-1", "a-1", "c-1"]), "bytewise: 'B' < 'a'");
    for list in [&cmp.missing_unrecoverable, &cmp.unknown_to_outbox, &cmp.held_but_pending, &cmp.held_but_dead_lettered]
    {
        assert!(list.is_empty(), "{cmp:?}");
    }
    let days: Vec<(String, u64, u64)> =
        cmp.days.iter().map(|d| (d.date.to_string(), d.local.count, d.platform.count)).collect();
    assert_eq!(days, [("2026-11-21".into(), 1, 0), ("2026-11-22".into(), 1, 0), ("2026-11-23".into(), 1, 0)]);
    assert_eq!(cmp.days[1].local.digest, hex_sha256(&["B-1"]));
    assert_eq!(cmp.days[2].meters[0].meter, "water");
    assert_eq!(cmp.days[2].meters[0].local_total.to_string(), "0.250000000");
    assert!(!cmp.agrees(false));
    Ok(())
}

/// Each kind is found by id: delivered but not held (missing), held but never here
/// (unknown), held but pending or leased, held but dead-lettered. Held facts outside the
/// window are ignored, a fact added twice counts once, and `max_ids` cuts the lists but not
/// the counts.
pub async fn every_kind_of_discrepancy_is_found_by_id(s: Store) -> TestResult {
    let t = tenant("acme");
    let at = |h: u32| format!("2026-11-22T{h:02}:00:00Z");
    let (d1, d2, d3) = (ev("d-1", &at(1), "m", "1"), ev("d-2", &at(2), "m", "1"), ev("d-3", &at(3), "m", "1"));
    let x1 = ev("x-1", &at(4), "m", "1");
    let l1 = ev("l-1", &at(5), "m", "1");
    let p1 = ev("p-1", &at(6), "m", "1");
    deliver(&s, &t, &[&d1, &d2, &d3]).await?;
    bury(&s, &t, &[&x1]).await?;
    let _held = lease_just(&s, &t, &[&l1]).await?;
    s.outbox.enqueue(&t, std::slice::from_ref(&p1)).await?;
    let u1 = ev("u-1", &at(7), "m", "1");
    let u0 = ev("U-0", &at(8), "m", "1");
    let outside = ev("o-1", "2026-11-20T12:00:00Z", "m", "1");
    let held = facts(&[&d1, &x1, &l1, &p1, &u1, &u0, &outside, &d1]);

    let cmp = compare_with(&s, &t, &held, 100).await?;
    assert_eq!(listed(&cmp.missing_on_platform), (2, vec!["d-2", "d-3"]));
    assert_eq!(listed(&cmp.missing_unrecoverable), (0, vec![]));
    assert_eq!(listed(&cmp.unknown_to_outbox), (2, vec!["U-0", "u-1"]), "the fact outside the window is ignored");
    assert_eq!(listed(&cmp.held_but_pending), (2, vec!["l-1", "p-1"]));
    assert_eq!(listed(&cmp.held_but_dead_lettered), (1, vec!["x-1"]));
    let d = &cmp.days[0];
    assert_eq!((d.date, d.local.count, d.platform.count), (day("2026-11-22"), 3, 6), "d-1 once, no o-1");

    let cut = compare_with(&s, &t, &held, 1).await?;
    assert_eq!(listed(&cut.missing_on_platform), (2, vec!["d-2"]));
    assert_eq!(listed(&cut.unknown_to_outbox), (2, vec!["U-0"]));
    assert_eq!(listed(&cut.held_but_pending), (2, vec!["l-1"]));
    Ok(())
}

/// A delivered event compacted away is still in the ledger: missing on the platform, it is
/// unrecoverable (its payload is gone); held, it is neither missing nor unknown; it still
/// counts on the local side of its day.
pub async fn compacted_delivered_events_the_platform_lacks_are_unrecoverable(s: Store) -> TestResult {
    let t = tenant("acme");
    let all: Vec<EncodedEvent> =
        (0..4).map(|i| ev(&format!("e-{i}"), &format!("2026-11-21T1{i}:00:00Z"), "m", "1.5")).collect();
    deliver(&s, &t, &all.iter().take(3).collect::<Vec<_>>()).await?;
    s.clock.advance(Duration::from_secs(60));
    assert_eq!(s.outbox.compact(s.clock.now()).await?, 3);
    deliver(&s, &t, &[&all[3]]).await?;

    let cmp = compare_with(&s, &t, &facts(&[&all[0]]), 100).await?;
    assert_eq!(listed(&cmp.missing_unrecoverable), (2, vec!["e-1", "e-2"]));
    assert_eq!(listed(&cmp.missing_on_platform), (1, vec!["e-3"]), "its payload is kept");
    assert!(cmp.unknown_to_outbox.is_empty(), "{cmp:?}");
    assert_eq!((cmp.days[0].local.count, cmp.days[0].platform.count), (4, 1));
    assert_eq!(cmp.days[0].meters[0].local_total.to_string(), "6.000000000");
    Ok(())
}

/// Each day's digest is the SHA-256 of its ids sorted bytewise, each followed by a newline
/// (computed here on its own), on both sides; totals per (meter, unit) are exact to 10⁻⁹,
/// beyond what an `f64` or a 96-bit decimal holds, and a time 100 ns before midnight stays on
/// its day (milliseconds are floored).
pub async fn each_days_digest_is_the_sha256_of_its_sorted_ids_and_totals_are_exact(s: Store) -> TestResult {
    let t = tenant("acme");
    let first = [
        ev("k-2", "2026-11-21T00:00:00Z", "energy", "999999999999999999.999999999"),
        ev("K-9", "2026-11-21T12:00:00.5Z", "energy", "0.000000001"),
        ev("k-10", "2026-11-21T23:59:59.9999999Z", "energy", "12.5"),
        ev("k-1", "2026-11-21T23:59:59.123456789Z", "gas", "3"),
    ];
    let second =
        [ev("n-1", "2026-11-22T00:00:00Z", "energy", "0.1"), ev("n-0", "2026-11-22T05:00:00Z", "energy", "0.2")];
    let delivered: Vec<&EncodedEvent> = first.iter().chain(&second).collect();
    deliver(&s, &t, &delivered).await?;
    // The platform lacks k-1 and holds one of another sender.
    let other = ev("zz-other", "2026-11-22T06:00:00Z", "energy", "5");
    let held: Vec<&EncodedEvent> = [&first[0], &first[1], &first[2], &second[0], &second[1], &other].into();

    let cmp = compare_with(&s, &t, &facts(&held), 100).await?;
    assert_eq!(cmp.days.len(), 2, "{:?}", cmp.days);
    let (d1, d2) = (&cmp.days[0], &cmp.days[1]);
    assert_eq!(d1.date, day("2026-11-21"));
    assert_eq!((d1.local.count, d1.local.digest.clone()), (4, hex_sha256(&["k-2", "K-9", "k-10", "k-1"])));
    assert_eq!((d1.platform.count, d1.platform.digest.clone()), (3, hex_sha256(&["k-2", "K-9", "k-10"])));
    assert_eq!(d2.local.digest, hex_sha256(&["n-1", "n-0"]));
    assert_eq!(d2.platform.digest, hex_sha256(&["n-0", "n-1", "zz-other"]));
    let energy = &d1.meters[0];
    assert_eq!((energy.meter.as_str(), energy.unit.as_str()), ("energy", "kWh"));
    assert_eq!((energy.local_count, energy.platform_count), (3, 3));
    assert_eq!(energy.local_total.to_string(), "1000000000000000012.500000000");
    assert_eq!(energy.platform_total, energy.local_total);
    let gas = &d1.meters[1];
    assert_eq!((gas.local_count, gas.platform_count, gas.local_total.to_string()), (1, 0, "3.000000000".into()));
    assert_eq!(d2.meters[0].local_total.to_string(), "0.300000000");
    assert_eq!(d2.meters[0].platform_total.to_string(), "5.300000000");
    assert!(!d1.agrees() && !d2.agrees());
    assert_eq!(listed(&cmp.missing_on_platform), (1, vec!["k-1"]));
    assert_eq!(listed(&cmp.unknown_to_outbox), (1, vec!["zz-other"]));
    Ok(())
}

/// Under the tenant's claim, `requeue_delivered` returns delivered events (only those) to
/// pending, due now, with their attempts, and `settle_held` settles pending and leased events
/// (only those) as delivered without any lease, taking them out of their lease.
pub async fn requeue_delivered_makes_events_leasable_and_settle_held_settles_without_a_lease(s: Store) -> TestResult {
    let t = tenant("acme");
    let e: Vec<EncodedEvent> = (0..6).map(|i| ev(&format!("e-{i}"), "2026-11-22T10:00:00Z", "m", "1")).collect();
    deliver(&s, &t, &[&e[0], &e[1]]).await?;
    let claim = claimed(s.outbox.claim_tenant(&t, "reconciler-1-1", Duration::from_secs(30)).await?)?;
    let leased = {
        let owned = [e[2].clone()];
        s.outbox.enqueue(&t, &owned).await?;
        s.outbox.lease_claimed(&claim, 1, LEASE).await?.ok_or("nothing leased")?
    };
    s.outbox.enqueue(&t, &e[3..]).await?;
    s.clock.advance(Duration::from_secs(10));

    assert_eq!(s.store.requeue_delivered(&claim, &[id("e-0"), id("e-3"), id("nope")]).await?, 1, "e-3 is pending");
    let c = s.outbox.counts(&t).await?;
    assert_eq!((c.pending, c.in_flight, c.delivered), (4, 1, 1));
    let again = s.outbox.lease_claimed(&claim, 10, LEASE).await?.ok_or("the requeued event is not leasable")?;
    let mut got: Vec<&str> = again.events.iter().map(|e| e.event_id().as_str()).collect();
    got.sort_unstable();
    assert_eq!(got, ["e-0", "e-3", "e-4", "e-5"]);
    s.outbox.nack(&again, s.clock.now()).await?;

    assert_eq!(s.store.settle_held(&claim, &[id("e-2"), id("e-4"), id("e-1"), id("nope")]).await?, 2);
    let c = s.outbox.counts(&t).await?;
    assert_eq!((c.pending, c.in_flight, c.delivered), (3, 0, 3), "e-2 left its lease");
    let rest = s.outbox.lease_claimed(&claim, 10, LEASE).await?.ok_or("nothing left")?;
    let mut got: Vec<&str> = rest.events.iter().map(|e| e.event_id().as_str()).collect();
    got.sort_unstable();
    assert_eq!(got, ["e-0", "e-3", "e-5"]);
    // e-0 kept its attempts through the requeue: the nack counted one, this dead letter another.
    let dead = [DeadLetter { event_id: id("e-0"), code: "c".into(), message: "m".into() }];
    s.outbox.dead_letter(&rest, &dead).await?;
    assert_eq!(s.outbox.dead_letters(Some(t.clone())).await?[0].attempts, 2);
    // The old lease's ack of the settled event changes nothing.
    s.outbox.ack(&leased, &[id("e-2")]).await?;
    assert_eq!(s.outbox.counts(&t).await?.delivered, 3);

    let many: Vec<EventId> = (0..12_000).map(|i| id(&format!("many-{i}"))).collect();
    assert_eq!(s.store.settle_held(&claim, &many).await?, 0, "chunked");
    Ok(())
}

/// A repair under a claim another holder replaced is refused with `ClaimLost`, even with no
/// ids, and changes nothing.
pub async fn repairs_under_a_stale_claim_are_refused_and_change_nothing(s: Store) -> TestResult {
    let t = tenant("acme");
    let (d, p) = (ev("d-1", "2026-11-22T10:00:00Z", "m", "1"), ev("p-1", "2026-11-22T10:00:00Z", "m", "1"));
    deliver(&s, &t, &[&d]).await?;
    s.outbox.enqueue(&t, std::slice::from_ref(&p)).await?;
    let ttl = Duration::from_secs(15);
    let old = claimed(s.outbox.claim_tenant(&t, "agent-a", ttl).await?)?;
    s.outbox.release_tenant(&t, "agent-a").await?;
    let new = claimed(s.outbox.claim_tenant(&t, "agent-b", ttl).await?)?;
    assert!(new.generation > old.generation);

    let lost = |r: Result<u64, OutboxError>| match r {
        Err(OutboxError::ClaimLost { tenant, generation }) => tenant == t && generation == old.generation,
        _ => false,
    };
    assert!(lost(s.store.requeue_delivered(&old, &[id("d-1")]).await));
    assert!(lost(s.store.settle_held(&old, &[id("p-1")]).await));
    assert!(lost(s.store.requeue_delivered(&old, &[]).await));
    assert!(lost(s.store.settle_held(&old, &[]).await));
    let c = s.outbox.counts(&t).await?;
    assert_eq!((c.pending, c.delivered), (1, 1));
    assert_eq!(s.store.settle_held(&new, &[id("p-1")]).await?, 1, "the holder's own repair goes through");
    Ok(())
}

/// `end_reconcile` drops the run and its scratch rows (comparing it is then an error); a run
/// older than a day is dropped, rows and all, when the next one begins, and a newer one is not.
pub async fn end_reconcile_drops_the_scratch_set_and_old_runs_go_at_the_next_begin(s: Store) -> TestResult {
    let t = tenant("acme");
    let held = facts(&[&ev("h-1", "2026-11-22T10:00:00Z", "m", "1"), &ev("h-2", "2026-11-22T11:00:00Z", "m", "1")]);
    let rows = |run: String| {
        let url = s.url.clone();
        async move { raw_count(&url, "SELECT count(*) FROM reconcile_held WHERE run = $1", &run).await }
    };

    let ended = s.store.begin_reconcile(&t, &window()).await?;
    s.store.add_held(&ended, &held).await?;
    assert_eq!(rows(ended.as_str().to_owned()).await?, 2);
    s.store.end_reconcile(&ended).await?;
    assert_eq!(rows(ended.as_str().to_owned()).await?, 0);
    assert!(matches!(s.store.compare(&ended, 10).await, Err(OutboxError::Storage(_))));
    assert!(matches!(s.store.add_held(&ended, &held).await, Err(OutboxError::Storage(_))));

    let old = s.store.begin_reconcile(&t, &window()).await?;
    s.store.add_held(&old, &held).await?;
    s.clock.advance(Duration::from_secs(23 * 3_600));
    let recent = s.store.begin_reconcile(&tenant("other"), &window()).await?;
    s.store.add_held(&recent, &held[..1]).await?;
    s.clock.advance(Duration::from_secs(2 * 3_600));
    let next = s.store.begin_reconcile(&t, &window()).await?;
    assert_eq!(rows(old.as_str().to_owned()).await?, 0, "a run of 25 hours ago is gone");
    assert!(matches!(s.store.compare(&old, 10).await, Err(OutboxError::Storage(_))));
    assert_eq!(rows(recent.as_str().to_owned()).await?, 1, "a run of 2 hours ago stays");
    assert_eq!(s.store.compare(&recent, 10).await?.unknown_to_outbox.count, 1);
    assert_ne!(next, recent);
    Ok(())
}

/// An outbox created with the ledger has held every event's fact from the start.
pub async fn horizon_is_none_for_a_new_outbox(s: Store) -> TestResult {
    assert_eq!(s.store.horizon(&tenant("acme")).await?, None);
    s.outbox.enqueue(&tenant("acme"), &[ev("e-1", "2026-11-22T10:00:00Z", "m", "1")]).await?;
    assert_eq!(s.store.horizon(&tenant("acme")).await?, None);
    Ok(())
}

/// An event whose JSON gives no fact is stored all the same (delivery does not depend on the
/// ledger); an event compacted and then enqueued again (stored again: its row was gone) keeps
/// the fact it was first delivered with.
pub async fn an_event_without_a_fact_is_stored_and_a_compacted_one_enqueued_again_keeps_its_fact(
    s: Store,
) -> TestResult {
    let t = tenant("acme");
    let bare = EncodedEvent::from_stored(id("bare"), r#"{"event_id":"bare"}"#.into());
    assert_eq!(s.outbox.enqueue(&t, &[bare]).await?.stored, 1);
    let lease = s.outbox.lease(&t, 10, LEASE).await?.ok_or("the bare event was not stored")?;
    s.outbox.ack(&lease, &[id("bare")]).await?;

    deliver(&s, &t, &[&ev("e-1", "2026-11-22T10:00:00Z", "m", "1")]).await?;
    s.clock.advance(Duration::from_secs(60));
    s.outbox.compact(s.clock.now()).await?;
    let again = ev("e-1", "2026-11-22T10:00:00Z", "m", "9");
    assert_eq!(s.outbox.enqueue(&t, std::slice::from_ref(&again)).await?.stored, 1, "its row was compacted");
    let held = compare_with(&s, &t, &[fact(&again)], 10).await?;
    assert_eq!(listed(&held.held_but_pending), (1, vec!["e-1"]));
    assert!(held.missing_on_platform.is_empty() && held.unknown_to_outbox.is_empty(), "{held:?}");
    assert!(held.days.iter().all(|d| d.local.count == 0), "e-1 is pending again: {held:?}");

    let lease = s.outbox.lease(&t, 10, LEASE).await?.ok_or("e-1 is not pending")?;
    s.outbox.ack(&lease, &[id("e-1")]).await?;
    let cmp = compare_with(&s, &t, &[], 10).await?;
    assert_eq!(listed(&cmp.missing_on_platform), (1, vec!["e-1"]));
    assert_eq!(cmp.days[0].meters[0].local_total.to_string(), "1.000000000", "the first fact");
    Ok(())
}

/// The facts' retention drops the facts of every event (of every tenant, whatever its state)
/// that occurred before `before`, and only those: the dropped ones no longer count in a
/// comparison, an event at `before` itself does. The horizon of every tenant moves to `before`,
/// and a later retention with an earlier instant drops nothing and leaves the horizon where it is.
pub async fn trim_facts_drops_old_facts_and_moves_the_horizon_forward_only(s: Store) -> TestResult {
    let (t, u) = (tenant("acme"), tenant("other"));
    let old = [ev("o-1", "2026-11-21T10:00:00Z", "m", "1"), ev("o-2", "2026-11-21T23:59:59.999Z", "m", "2")];
    let new = [ev("n-1", "2026-11-22T00:00:00Z", "m", "3"), ev("n-2", "2026-11-22T10:00:00Z", "m", "4")];
    deliver(&s, &t, &[&old[0], &old[1], &new[0], &new[1]]).await?;
    let pending_old = ev("p-1", "2026-11-21T12:00:00Z", "m", "5");
    s.outbox.enqueue(&t, std::slice::from_ref(&pending_old)).await?;
    s.outbox
        .enqueue(&u, &[ev("u-1", "2026-11-20T12:00:00Z", "m", "5"), ev("u-2", "2026-11-23T07:00:00Z", "m", "5")])
        .await?;
    let facts_of = |tenant: &'static str| {
        let url = s.url.clone();
        async move { raw_count(&url, "SELECT count(*) FROM ledger WHERE tenant = $1", tenant).await }
    };
    let before_cmp = compare_with(&s, &t, &[], 100).await?;
    assert_eq!(listed(&before_cmp.missing_on_platform).0, 4, "{before_cmp:?}");
    assert_eq!(s.store.horizon(&t).await?, None);

    let before: chrono::DateTime<chrono::Utc> = "2026-11-22T00:00:00Z".parse()?;
    assert_eq!(s.store.trim_facts(before).await?, 4, "o-1, o-2, p-1 and u-1");
    assert_eq!(s.store.horizon(&t).await?, Some(before));
    assert_eq!(s.store.horizon(&u).await?, Some(before));
    let cmp = compare_with(&s, &t, &[], 100).await?;
    assert_eq!(listed(&cmp.missing_on_platform), (2, vec!["n-1", "n-2"]), "n-1, at `before`, is kept");
    let days: Vec<(String, u64)> = cmp.days.iter().map(|d| (d.date.to_string(), d.local.count)).collect();
    assert_eq!(days, [("2026-11-22".to_owned(), 2)], "nothing left of 2026-11-21: {cmp:?}");
    assert_eq!((facts_of("acme").await?, facts_of("other").await?), (2, 1));
    assert_eq!(s.outbox.counts(&t).await?.pending, 1, "the events themselves stay");

    let earlier = before - chrono::Duration::days(1);
    assert_eq!(s.store.trim_facts(earlier).await?, 0);
    assert_eq!(s.store.horizon(&t).await?, Some(before), "never back");
    assert_eq!(s.store.trim_facts(before).await?, 0, "nothing left to drop");
    let later = before + chrono::Duration::hours(12);
    assert_eq!(s.store.trim_facts(later).await?, 2, "n-1 and n-2");
    assert_eq!(s.store.horizon(&u).await?, Some(later));
    assert_eq!((facts_of("acme").await?, facts_of("other").await?), (0, 1));
    Ok(())
}

/// The retention goes on until nothing before `before` is left, however many chunks that takes
/// (more facts than one chunk of either adapter, spread over tenants, interleaved with facts
/// it keeps), and says how many it dropped in all.
pub async fn trim_facts_goes_on_chunk_after_chunk_across_tenants(s: Store) -> TestResult {
    const PER_TENANT: usize = 3_000;
    let base: chrono::DateTime<chrono::Utc> = "2026-11-01T00:00:00Z".parse()?;
    let before = base + chrono::Duration::days(10);
    for (k, name) in ["t-a", "t-b", "t-c", "t-d"].into_iter().enumerate() {
        // Each tenant's facts alternate, by id, between 9 days before `before` and a day after.
        let events: Vec<EncodedEvent> = (0..PER_TENANT)
            .map(|i| {
                let at = if i % 2 == 0 { base + chrono::Duration::days(1) } else { before + chrono::Duration::days(1) };
                let at = at + chrono::Duration::seconds(i64::try_from(i * 4 + k)?);
                Ok(ev(&format!("{name}-{i:05}"), &at.to_rfc3339(), "m", "1"))
            })
            .collect::<TestResult<_>>()?;
        assert_eq!(s.outbox.enqueue(&tenant(name), &events).await?.stored, PER_TENANT);
    }
    let old = 4 * PER_TENANT / 2;
    assert!(old > 5_000, "more than one chunk of either adapter");
    assert_eq!(s.store.trim_facts(before).await?, u64::try_from(old)?);
    let url = s.url.clone();
    for name in ["t-a", "t-b", "t-c", "t-d"] {
        let left = raw_count(&url, "SELECT count(*) FROM ledger WHERE tenant = $1", name).await?;
        assert_eq!(left, i64::try_from(PER_TENANT / 2)?, "{name}");
    }
    let before_ms = before.timestamp_millis().to_string();
    let early =
        raw_count(&url, "SELECT count(*) FROM ledger WHERE occurred_at < CAST($1 AS BIGINT)", &before_ms).await?;
    assert_eq!(early, 0);
    Ok(())
}

/// The last reconciliation is one document per tenant: none at first, read back as saved,
/// replaced (not added to) by the next, and each tenant's is its own.
pub async fn the_last_reconcile_is_kept_per_tenant_and_replaced(s: Store) -> TestResult {
    let (t, u) = (tenant("acme"), tenant("other"));
    let (first, second) = (r#"{"agrees":false,"missing_on_platform":3}"#, r#"{"agrees":true,"note":"é\n"}"#);
    assert_eq!(s.store.last_reconcile(&t).await?, None);
    s.store.save_last_reconcile(&t, first).await?;
    assert_eq!(s.store.last_reconcile(&t).await?.as_deref(), Some(first));
    assert_eq!(s.store.last_reconcile(&u).await?, None, "another tenant has none");

    s.store.save_last_reconcile(&u, "{}").await?;
    s.clock.advance(Duration::from_secs(3_600));
    s.store.save_last_reconcile(&t, second).await?;
    assert_eq!(s.store.last_reconcile(&t).await?.as_deref(), Some(second));
    assert_eq!(s.store.last_reconcile(&u).await?.as_deref(), Some("{}"));
    assert_eq!(raw_count(&s.url, "SELECT count(*) FROM reconcile_last WHERE tenant = $1", "acme").await?, 1);
    Ok(())
}

// ---------------------------------------------------------------- migration

/// A ledger row: tenant, event_id, occurred_at (ms), meter, unit, quantity.
type LedgerRow = (String, String, i64, String, String, String);

/// What the ledger must hold for stored events (tenant, event_id, body), read the way enqueue
/// reads them (chrono's RFC 3339 parse, milliseconds floored; the three strings as they are):
/// one row per event whose body gives all four fields, none for the others.
fn expected_ledger(events: &[(String, String, String)]) -> Vec<LedgerRow> {
    let mut rows: Vec<LedgerRow> = events
        .iter()
        .filter_map(|(tenant, event_id, body)| {
            let v: serde_json::Value = serde_json::from_str(body).ok()?;
            let text = |k: &str| v.get(k).and_then(serde_json::Value::as_str).map(str::to_owned);
            let at = chrono::DateTime::parse_from_rfc3339(&text("occurred_at")?).ok()?;
            Some((
                tenant.clone(),
                event_id.clone(),
                at.timestamp_millis(),
                text("meter")?,
                text("unit")?,
                text("quantity")?,
            ))
        })
        .collect();
    rows.sort();
    rows
}

const EVENTS: &str = "SELECT tenant, event_id, body FROM events";
const LEDGER: &str =
    "SELECT tenant, event_id, occurred_at, meter, unit, quantity FROM ledger ORDER BY tenant, event_id";

fn fixture(name: &str) -> std::path::PathBuf {
    // The migration fixtures live with the end-to-end tests (tests/e2e/migrations.rs).
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

/// The fixture's acme: delivered fx-d*, dead-lettered fx-x*, leased fx-l*, pending fx-p*, all
/// occurring on 2026-11-29. Its backfilled ledger serves a comparison at once.
async fn check_fixture_comparison(store: &dyn ReconcileStore) -> TestResult {
    let t = tenant("acme");
    let horizon = store.horizon(&t).await?.ok_or("an upgraded outbox vouches for nothing before the upgrade")?;
    let now = chrono::Utc::now();
    assert!(
        horizon > now - chrono::Duration::minutes(10) && horizon <= now + chrono::Duration::minutes(5),
        "{horizon}"
    );
    let run = store.begin_reconcile(&t, &Window { from: day("2026-11-29"), to: day("2026-11-29") }).await?;
    let held = |event_id: &str| Fact {
        event_id: id(event_id),
        occurred_at: "2026-11-29T20:00:27Z".parse().expect("a time"),
        meter: "energy.active".into(),
        unit: "kWh".into(),
        quantity: billsync_domain::Nanos::parse("1.25").expect("a quantity"),
    };
    store.add_held(&run, &[held("fx-d1"), held("fx-x0"), held("fx-l2"), held("fx-p0")]).await?;
    let cmp = store.compare(&run, 100).await?;
    assert_eq!(listed(&cmp.missing_on_platform), (2, vec!["fx-d0", "fx-d2"]));
    assert_eq!(listed(&cmp.held_but_dead_lettered), (1, vec!["fx-x0"]));
    assert_eq!(listed(&cmp.held_but_pending), (2, vec!["fx-l2", "fx-p0"]));
    assert!(cmp.unknown_to_outbox.is_empty(), "{cmp:?}");
    assert_eq!((cmp.days[0].local.count, cmp.days[0].meters[0].local_total.to_string()), (3, "3.750000000".into()));
    store.end_reconcile(&run).await?;
    Ok(())
}

/// The newest migration a database has applied.
const NEWEST_MIGRATION: &str = "SELECT max(version) FROM _sqlx_migrations";

/// A migrated fixture has an empty quarantine, which then keeps messages from number 1.
async fn check_fixture_quarantine(store: &dyn QuarantineStore) -> TestResult {
    assert_eq!(store.quarantined(&QuarantineSelection::All).await?, []);
    assert_eq!(store.quarantine("billing/acme/events", b"{", "unreadable").await?, 1);
    assert_eq!(store.quarantine("billing/acme/events", b"{", "unreadable").await?, 1);
    let kept = store.quarantined(&QuarantineSelection::All).await?;
    assert_eq!((kept.len(), kept[0].received_at, kept[0].size), (1, t0(), 1));
    Ok(())
}

/// The SQLite fixture at schema 3 migrates (to the newest schema): its ledger holds exactly what
/// enqueue would have written for each of its 14 events, its horizon is the upgrade, and its
/// quarantine is empty.
#[tokio::test]
async fn a_sqlite_outbox_at_schema_3_gets_its_ledger_backfilled() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("outbox.db");
    std::fs::copy(fixture("sqlite-v3.db"), &path)?;
    let outbox = SqliteOutbox::open(&path, Arc::new(ManualClock::new(t0()))).await?;
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}", path.display())).await?;
    let events: Vec<(String, String, String)> = sqlx::query_as(EVENTS).fetch_all(&mut conn).await?;
    let ledger: Vec<LedgerRow> = sqlx::query_as(LEDGER).fetch_all(&mut conn).await?;
    let version: i64 = sqlx::query_scalar(NEWEST_MIGRATION).fetch_one(&mut conn).await?;
    conn.close().await?;
    assert_eq!(events.len(), 14);
    assert_eq!(ledger, expected_ledger(&events));
    assert_eq!(version, billsync_storage::SQLITE_SCHEMA_VERSION);
    check_fixture_comparison(&outbox).await?;
    check_fixture_quarantine(&outbox).await
}

/// The PostgreSQL fixture at schema 2 migrates (through 3, to the newest schema): its ledger
/// holds exactly what enqueue would have written for each of its 14 events, its horizon is the
/// upgrade, and its quarantine is empty.
#[tokio::test]
async fn a_postgres_outbox_at_schema_2_gets_its_ledger_backfilled() -> TestResult {
    let db = TestDb::create().await?;
    let mut conn = PgConnection::connect(db.url()).await?;
    sqlx::raw_sql(&std::fs::read_to_string(fixture("postgres-v2.sql"))?).execute(&mut conn).await?;
    conn.close().await?;
    let outbox = PostgresOutbox::connect(db.url(), Arc::new(ManualClock::new(t0()))).await?;
    let mut conn = PgConnection::connect(db.url()).await?;
    let events: Vec<(String, String, String)> = sqlx::query_as(EVENTS).fetch_all(&mut conn).await?;
    let ledger: Vec<LedgerRow> = sqlx::query_as(LEDGER).fetch_all(&mut conn).await?;
    let version: i64 = sqlx::query_scalar(NEWEST_MIGRATION).fetch_one(&mut conn).await?;
    conn.close().await?;
    assert_eq!(events.len(), 14);
    assert_eq!(ledger, expected_ledger(&events));
    assert_eq!(version, billsync_storage::POSTGRES_SCHEMA_VERSION);
    check_fixture_comparison(&outbox).await?;
    check_fixture_quarantine(&outbox).await
}

/// Bodies as an earlier billsync (or a hand) may have stored them: `occurred_at` with 0 to 9
/// fraction digits, offsets that move the UTC day, times a rounding would move to the next
/// millisecond or day, a lowercase `z`; and bodies that give no fact.
fn tricky_bodies() -> Vec<(String, String, String)> {
    let times = [
        "2026-11-29T20:00:30Z",
        "2026-11-29T20:00:30.1Z",
        "2026-11-29T20:00:30.12Z",
        "2026-11-29T20:00:30.999999999Z",
        "2026-11-29T23:59:59.9996Z",
        "2026-11-29T23:59:59.999500001Z",
        "2026-11-30T01:30:00.5+02:00",
        "2026-11-29T22:30:00.25-01:45",
        "2026-11-29T20:00:30.5z",
        "2026-11-29T20:00:30.000000001+00:00",
        "1970-01-01T00:00:00.001Z",
    ];
    let mut bodies: Vec<(String, String, String)> = times
        .iter()
        .enumerate()
        .map(|(i, at)| {
            let body = format!(
                r#"{{"event_id":"t-{i}","device_id":"d","meter":"m\"é","quantity":"0.{i}","unit":"kWh","occurred_at":"{at}"}}"#
            );
            ("acme".to_owned(), format!("t-{i}"), body)
        })
        .collect();
    for (i, body) in [
        r#"{"event_id":"bad-0"}"#,
        r#"{"event_id":"bad-1","meter":"m","quantity":1.5,"unit":"u","occurred_at":"2026-11-29T20:00:30Z"}"#,
        r#"{"event_id":"bad-2","meter":"m","quantity":"1","unit":"u","occurred_at":"2026-11-29T20:00:30"}"#,
        r#"{"event_id":"bad-3","meter":"m","quantity":"1","unit":"u","occurred_at":"2026-11-29T20:00:30.Z"}"#,
        r#"{"event_id":"bad-4","meter":"m","quantity":"1","unit":"u","occurred_at":"yesterday"}"#,
    ]
    .into_iter()
    .enumerate()
    {
        bodies.push(("acme".to_owned(), format!("bad-{i}"), body.to_owned()));
    }
    bodies
}

/// The SQLite backfill reads every `occurred_at` exactly as chrono does (to the floored
/// millisecond), and leaves out the bodies enqueue would leave out.
#[tokio::test]
async fn the_sqlite_backfill_reads_times_as_chrono_does() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("outbox.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&path).create_if_missing(true);
    let mut conn = SqliteConnection::connect_with(&options).await?;
    let all = sqlx::migrate!("./migrations/sqlite");
    let old = sqlx::migrate::Migrator {
        migrations: all.migrations.iter().filter(|m| m.version <= 4).cloned().collect::<Vec<_>>().into(),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    old.run(&mut conn).await?;
    let bodies = tricky_bodies();
    for (tenant, event_id, body) in &bodies {
        sqlx::query(
            "INSERT INTO events (tenant, event_id, body, state, enqueued_at, due_at) VALUES (?1, ?2, ?3, 2, 0, 0)",
        )
        .bind(tenant)
        .bind(event_id)
        .bind(body)
        .execute(&mut conn)
        .await?;
    }
    conn.close().await?;
    let outbox = SqliteOutbox::open(&path, Arc::new(ManualClock::new(t0()))).await?;
    let mut conn = SqliteConnection::connect_with(&options).await?;
    let ledger: Vec<LedgerRow> = sqlx::query_as(LEDGER).fetch_all(&mut conn).await?;
    let expected = expected_ledger(&bodies);
    assert_eq!(expected.len(), 11, "the reference reads every good body");
    assert_eq!(ledger, expected);
    assert!(outbox.horizon(&tenant("acme")).await?.is_some());
    Ok(())
}

/// The PostgreSQL backfill reads every `occurred_at` exactly as chrono does (to the floored
/// millisecond, though `timestamptz` keeps rounded microseconds), and leaves out the bodies
/// enqueue would leave out.
#[tokio::test]
async fn the_postgres_backfill_reads_times_as_chrono_does() -> TestResult {
    let db = TestDb::create().await?;
    let mut conn = PgConnection::connect(db.url()).await?;
    let all = sqlx::migrate!("./migrations/postgres");
    let old = sqlx::migrate::Migrator {
        migrations: all.migrations.iter().filter(|m| m.version <= 3).cloned().collect::<Vec<_>>().into(),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    old.run(&mut conn).await?;
    let bodies = tricky_bodies();
    for (tenant, event_id, body) in &bodies {
        sqlx::query(
            "INSERT INTO events (tenant, event_id, body, state, enqueued_at, due_at) VALUES ($1, $2, $3, 2, 0, 0)",
        )
        .bind(tenant)
        .bind(event_id)
        .bind(body)
        .execute(&mut conn)
        .await?;
    }
    conn.close().await?;
    let outbox = PostgresOutbox::connect(db.url(), Arc::new(ManualClock::new(t0()))).await?;
    let mut conn = PgConnection::connect(db.url()).await?;
    let ledger: Vec<LedgerRow> = sqlx::query_as(LEDGER).fetch_all(&mut conn).await?;
    conn.close().await?;
    let expected = expected_ledger(&bodies);
    assert_eq!(expected.len(), 11, "the reference reads every good body");
    assert_eq!(ledger, expected);
    assert!(outbox.horizon(&tenant("acme")).await?.is_some());
    Ok(())
}
