//! The adapters' quarantine ([`QuarantineStore`]) of broker messages the ingest could not store
//! as events. Every check runs against SQLite and PostgreSQL ([`quarantine_conformance!`]),
//! each store opened through [`Location::open_stores`]; the migration of older outboxes to an
//! empty quarantine is checked with the other migration fixtures (`reconcile.rs`).

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use billsync_domain::{
    ManualClock, OutboxError, QUARANTINE_PAYLOAD_MAX, QuarantineSelection, QuarantineStore, Quarantined,
};
use billsync_storage::{Location, Stores};
use billsync_testkit::{TestResult, t0};

use crate::helpers::TestDb;

/// A quarantine under test, its clock, where it lives (to open it again), and what keeps its
/// storage alive (dropped last).
pub struct Store {
    pub quarantine: Arc<dyn QuarantineStore>,
    pub clock: Arc<ManualClock>,
    pub location: Location,
    _keep: Box<dyn Any + Send>,
}

impl Store {
    async fn open(location: Location, keep: Box<dyn Any + Send>) -> TestResult<Self> {
        let clock = Arc::new(ManualClock::new(t0()));
        let Stores { quarantine, .. } = location.open_stores(clock.clone()).await?;
        Ok(Self { quarantine, clock, location, _keep: keep })
    }

    /// The same outbox, opened again (the first handle dropped before).
    async fn reopened(self) -> TestResult<Self> {
        let Self { quarantine, clock, location, _keep } = self;
        drop(quarantine);
        let Stores { quarantine, .. } = location.open_stores(clock.clone()).await?;
        Ok(Self { quarantine, clock, location, _keep })
    }

    async fn all(&self) -> Result<Vec<Quarantined>, OutboxError> {
        self.quarantine.quarantined(&QuarantineSelection::All).await
    }
}

pub async fn sqlite_store() -> TestResult<Store> {
    let dir = tempfile::tempdir()?;
    let location = Location::Sqlite { path: dir.path().join("outbox.db") };
    Store::open(location, Box::new(dir)).await
}

pub async fn postgres_store() -> TestResult<Store> {
    let db = TestDb::create().await?;
    let location = Location::parse(db.url())?;
    Store::open(location, Box::new(db)).await
}

/// Runs each check against the store built by `$fixture`, as its own test.
macro_rules! quarantine_conformance {
    ($fixture:path) => {
        $crate::quarantine::quarantine_conformance!($fixture =>
            entries_are_kept_with_their_time_topic_reason_size_and_payload,
            a_payload_over_64_kib_keeps_its_first_64_kib_and_its_full_size,
            the_same_payload_on_the_same_topic_is_kept_once,
            concurrent_redeliveries_are_kept_once,
            entries_are_listed_all_or_by_id_oldest_first,
            set_reason_replaces_one_entrys_reason,
            purges_by_id_and_of_all_say_how_many,
            ids_are_never_reused_after_a_purge,
            entries_survive_reopening_the_outbox,
        );
    };
    ($fixture:path => $($check:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() -> billsync_testkit::TestResult {
                $crate::quarantine::$check($fixture().await?).await
            }
        )+
    };
}
pub(crate) use quarantine_conformance;

mod sqlite {
    super::quarantine_conformance!(crate::quarantine::sqlite_store);
}

mod postgres {
    super::quarantine_conformance!(crate::quarantine::postgres_store);
}

fn ids(entries: &[Quarantined]) -> Vec<i64> {
    entries.iter().map(|e| e.id).collect()
}

/// Each entry keeps what it was given, at the clock's time (to the millisecond), numbered from 1.
pub async fn entries_are_kept_with_their_time_topic_reason_size_and_payload(s: Store) -> TestResult {
    assert_eq!(s.all().await?, []);
    let payload = b"{\"event_id\": \"e-1\", \"quantity\": 12}\n\xff\x00not utf-8";
    let first = s.quarantine.quarantine("billing/acme/events", payload, "line 1: quantity: not a string").await?;
    s.clock.advance(Duration::from_millis(1_500));
    let second = s.quarantine.quarantine("billing/nobody/events", b"", "unknown tenant `nobody`").await?;
    assert_eq!((first, second), (1, 2));

    let all = s.all().await?;
    assert_eq!(
        all,
        [
            Quarantined {
                id: first,
                received_at: t0(),
                topic: "billing/acme/events".into(),
                reason: "line 1: quantity: not a string".into(),
                payload: payload.to_vec(),
                size: u64::try_from(payload.len())?,
            },
            Quarantined {
                id: second,
                received_at: t0() + chrono::Duration::milliseconds(1_500),
                topic: "billing/nobody/events".into(),
                reason: "unknown tenant `nobody`".into(),
                payload: Vec::new(),
                size: 0,
            },
        ]
    );
    assert!(all.iter().all(|e| !e.truncated()));
    Ok(())
}

/// A payload longer than [`QUARANTINE_PAYLOAD_MAX`] keeps its first bytes and its full size;
/// one of exactly that size is whole.
pub async fn a_payload_over_64_kib_keeps_its_first_64_kib_and_its_full_size(s: Store) -> TestResult {
    let long: Vec<u8> = (0..QUARANTINE_PAYLOAD_MAX + 4_321).map(|i| (i % 251) as u8).collect();
    let exact = &long[..QUARANTINE_PAYLOAD_MAX];
    let cut = s.quarantine.quarantine("t/long", &long, "too long").await?;
    let whole = s.quarantine.quarantine("t/exact", exact, "exactly 64 KiB").await?;

    let all = s.all().await?;
    let cut = all.iter().find(|e| e.id == cut).ok_or("the long entry")?;
    assert_eq!(cut.payload.len(), QUARANTINE_PAYLOAD_MAX);
    assert_eq!(cut.payload, exact, "its first bytes");
    assert_eq!(cut.size, u64::try_from(long.len())?);
    assert!(cut.truncated());
    let whole = all.iter().find(|e| e.id == whole).ok_or("the exact entry")?;
    assert_eq!((whole.payload.as_slice(), whole.size), (exact, u64::try_from(QUARANTINE_PAYLOAD_MAX)?));
    assert!(!whole.truncated());
    Ok(())
}

/// A redelivered message (same topic, same payload) is kept once: the second call gives the
/// first entry's number and changes nothing (not its time, not its reason). The digest is of
/// the whole payload: long payloads that differ only past 64 KiB are two entries; the same
/// payload on another topic is another entry.
pub async fn the_same_payload_on_the_same_topic_is_kept_once(s: Store) -> TestResult {
    let first = s.quarantine.quarantine("billing/acme/events", b"{oops", "unreadable JSON").await?;
    s.clock.advance(Duration::from_secs(60));
    let again = s.quarantine.quarantine("billing/acme/events", b"{oops", "another reason").await?;
    assert_eq!(again, first);
    let all = s.all().await?;
    assert_eq!(all.len(), 1);
    assert_eq!((all[0].received_at, all[0].reason.as_str()), (t0(), "unreadable JSON"), "unchanged");

    let other_topic = s.quarantine.quarantine("billing/other/events", b"{oops", "unreadable JSON").await?;
    assert_ne!(other_topic, first);
    // The topic and payload are kept apart: "ab" + "c" is not "a" + "bc".
    let (ab, a) = (s.quarantine.quarantine("ab", b"c", "r").await?, s.quarantine.quarantine("a", b"bc", "r").await?);
    assert_ne!(ab, a);

    let mut long = vec![b'x'; QUARANTINE_PAYLOAD_MAX + 2];
    let one = s.quarantine.quarantine("t/long", &long, "too long").await?;
    *long.last_mut().ok_or("a byte")? = b'y';
    let two = s.quarantine.quarantine("t/long", &long, "too long").await?;
    assert_ne!(one, two, "the payloads differ past what is kept");
    assert_eq!(s.quarantine.quarantine("t/long", &long, "too long").await?, two);
    assert_eq!(s.all().await?.len(), 6);
    Ok(())
}

/// The same message quarantined by concurrent callers (in one SQLite group commit, or racing
/// on PostgreSQL's unique digest) is one entry, and every caller gets its number.
pub async fn concurrent_redeliveries_are_kept_once(s: Store) -> TestResult {
    let calls = (0..16).map(|i| {
        let q = s.quarantine.clone();
        let topic = if i % 2 == 0 { "t/even" } else { "t/odd" };
        tokio::spawn(async move { q.quarantine(topic, b"same", "bad").await })
    });
    let mut got = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        got.push(call.await??);
    }
    let all = s.all().await?;
    assert_eq!(all.len(), 2, "{all:?}");
    let by_topic = |topic: &str| all.iter().find(|e| e.topic == topic).map(|e| e.id);
    for (i, id) in got.iter().enumerate() {
        assert_eq!(Some(*id), by_topic(if i % 2 == 0 { "t/even" } else { "t/odd" }), "call {i}");
    }
    Ok(())
}

/// `All` lists every entry, `Ids` the named ones (unknown ones skipped, the order asked
/// ignored), both oldest first.
pub async fn entries_are_listed_all_or_by_id_oldest_first(s: Store) -> TestResult {
    let mut kept = Vec::new();
    for i in 0..5 {
        kept.push(s.quarantine.quarantine("t", format!("message {i}").as_bytes(), "bad").await?);
        s.clock.advance(Duration::from_secs(1));
    }
    let all = s.all().await?;
    assert_eq!(ids(&all), kept);
    assert!(all.windows(2).all(|w| w[0].received_at < w[1].received_at), "oldest first");
    assert_eq!(all[3].payload, b"message 3");

    let some = s.quarantine.quarantined(&QuarantineSelection::Ids(vec![kept[4], 999_999, kept[1], -1])).await?;
    assert_eq!(ids(&some), [kept[1], kept[4]]);
    assert_eq!(some[1], all[4]);
    assert_eq!(s.quarantine.quarantined(&QuarantineSelection::Ids(vec![])).await?, []);
    assert_eq!(s.quarantine.quarantined(&QuarantineSelection::Ids(vec![999_999])).await?, []);
    Ok(())
}

/// `set_quarantine_reason` replaces one entry's reason and nothing else; an unknown id
/// changes nothing.
pub async fn set_reason_replaces_one_entrys_reason(s: Store) -> TestResult {
    let a = s.quarantine.quarantine("t", b"a", "first reason").await?;
    let b = s.quarantine.quarantine("t", b"b", "b's reason").await?;
    let before = s.all().await?;
    s.clock.advance(Duration::from_secs(5));
    s.quarantine.set_quarantine_reason(a, "retried: unknown tenant `acme` — still é").await?;
    s.quarantine.set_quarantine_reason(999_999, "nobody").await?;

    let after = s.all().await?;
    assert_eq!(
        after[0],
        Quarantined { reason: "retried: unknown tenant `acme` — still é".into(), ..before[0].clone() }
    );
    assert_eq!(after[1], before[1], "the other entry is untouched");
    assert_eq!(ids(&after), [a, b]);
    Ok(())
}

/// Purges remove the selected entries and say how many (unknown ids count nothing).
pub async fn purges_by_id_and_of_all_say_how_many(s: Store) -> TestResult {
    let mut kept = Vec::new();
    for i in 0..4 {
        kept.push(s.quarantine.quarantine("t", &[i], "bad").await?);
    }
    assert_eq!(s.quarantine.purge_quarantined(&QuarantineSelection::Ids(vec![kept[0], kept[2], 999_999])).await?, 2);
    assert_eq!(ids(&s.all().await?), [kept[1], kept[3]]);
    assert_eq!(s.quarantine.purge_quarantined(&QuarantineSelection::Ids(vec![kept[0]])).await?, 0, "already gone");
    assert_eq!(s.quarantine.purge_quarantined(&QuarantineSelection::Ids(vec![])).await?, 0);
    assert_eq!(s.all().await?.len(), 2);
    assert_eq!(s.quarantine.purge_quarantined(&QuarantineSelection::All).await?, 2);
    assert_eq!(s.all().await?, []);
    assert_eq!(s.quarantine.purge_quarantined(&QuarantineSelection::All).await?, 0);
    // A purged message quarantined again is a new entry.
    let again = s.quarantine.quarantine("t", &[0], "bad").await?;
    assert!(!kept.contains(&again), "{again} in {kept:?}");
    Ok(())
}

/// A purged entry's number is never given again, even the last one's, even after a purge of
/// all, even across a reopen.
pub async fn ids_are_never_reused_after_a_purge(s: Store) -> TestResult {
    let a = s.quarantine.quarantine("t", b"a", "bad").await?;
    let b = s.quarantine.quarantine("t", b"b", "bad").await?;
    assert_eq!(s.quarantine.purge_quarantined(&QuarantineSelection::Ids(vec![b])).await?, 1);
    let c = s.quarantine.quarantine("t", b"c", "bad").await?;
    assert!(c > b, "{c} after {b}");
    assert_eq!(s.quarantine.purge_quarantined(&QuarantineSelection::All).await?, 2);
    let s = s.reopened().await?;
    let d = s.quarantine.quarantine("t", b"d", "bad").await?;
    assert!(d > c, "{d} after {c}");
    let e = s.quarantine.quarantine("t", b"a", "bad").await?;
    assert!(e > d && e != a, "{e}");
    assert_eq!(ids(&s.all().await?), [d, e]);
    Ok(())
}

/// Entries are in the database: an outbox opened again lists them as they were, and
/// still knows their digests.
pub async fn entries_survive_reopening_the_outbox(s: Store) -> TestResult {
    let long = vec![b'z'; QUARANTINE_PAYLOAD_MAX + 1];
    let a = s.quarantine.quarantine("billing/acme/events", b"{", "unreadable").await?;
    s.clock.advance(Duration::from_millis(250));
    let b = s.quarantine.quarantine("billing/acme/events", &long, "too long").await?;
    let before = s.all().await?;
    let s = s.reopened().await?;
    s.clock.advance(Duration::from_secs(1));
    let after = s.all().await?;
    assert_eq!(after, before);
    assert_eq!(after[1].received_at, t0() + chrono::Duration::milliseconds(250));
    assert!(after[1].truncated());
    assert_eq!(s.quarantine.quarantine("billing/acme/events", &long, "again").await?, b);
    assert_eq!(s.quarantine.quarantine("billing/acme/events", b"{", "again").await?, a);
    assert_eq!(s.all().await?, before);
    Ok(())
}
