//! Reconciliation: what the platform holds against what this outbox delivered, tenant by tenant
//! and UTC day by UTC day (`billsync reconcile`).
//!
//! The pure parts live here: the [`Window`] of whole UTC days, exact fixed-point totals
//! ([`Nanos`], `i128` units of 10⁻⁹: the sum of 100,000 quantities of 18.9 digits fits, where
//! a 96-bit decimal would not), the per-day digest of event ids ([`DaySummaries`]: the hex
//! SHA-256 of the day's ids sorted bytewise, each followed by `\n`), the narrow [`Fact`] both
//! sides are compared on, and the [`Comparison`] an outbox answers. Adapters stream rows into
//! the accumulators in (day, event id) order, so memory does not grow with the number of events.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::event::Quantity;
use crate::ids::EventId;

/// How far ahead of its arrival an event's `occurred_at` may be (docs/platform.md §3): the
/// platform is listed from the window's first instant minus this.
pub const MAX_FUTURE_SKEW: Duration = Duration::minutes(5);

/// The most ids of one kind a report lists (the count is always exact).
pub const MAX_LISTED_IDS: usize = 100_000;

/// The default window: the last 7 UTC days, today included.
pub const DEFAULT_DAYS: u32 = 7;

/// Whole UTC days of `occurred_at`, `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// The first day.
    pub from: NaiveDate,
    /// The last day (included).
    pub to: NaiveDate,
}

/// Why a window cannot be reconciled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// `--days 0`.
    #[error("--days must be at least 1")]
    NoDays,
    /// `--since` after today.
    #[error("--since {since} is after today ({today})")]
    SinceInFuture {
        /// The date given.
        since: NaiveDate,
        /// Today (UTC).
        today: NaiveDate,
    },
    /// `--since` before what the outbox can vouch for.
    #[error(
        "--since {since} is before {horizon}, the earliest day this outbox can vouch for (its record of delivered \
         events starts then)"
    )]
    BeforeHorizon {
        /// The date given.
        since: NaiveDate,
        /// The first whole day the outbox vouches for.
        horizon: NaiveDate,
    },
}

impl Window {
    /// The last `days` UTC days up to and including `now`'s.
    ///
    /// # Errors
    /// [`WindowError::NoDays`] for 0.
    pub fn last_days(now: DateTime<Utc>, days: u32) -> Result<Self, WindowError> {
        if days == 0 {
            return Err(WindowError::NoDays);
        }
        let to = now.date_naive();
        let from = to.checked_sub_days(chrono::Days::new(u64::from(days) - 1)).unwrap_or(NaiveDate::MIN);
        Ok(Self { from, to })
    }

    /// From `since` up to and including `now`'s day.
    ///
    /// # Errors
    /// [`WindowError::SinceInFuture`].
    pub fn since(since: NaiveDate, now: DateTime<Utc>) -> Result<Self, WindowError> {
        let today = now.date_naive();
        if since > today {
            return Err(WindowError::SinceInFuture { since, today });
        }
        Ok(Self { from: since, to: today })
    }

    /// Refuses a window that starts before `horizon` (the first instant the outbox vouches
    /// for; `None`: no limit). The first whole day at or after it is the earliest allowed.
    ///
    /// # Errors
    /// [`WindowError::BeforeHorizon`].
    pub fn check_horizon(&self, horizon: Option<DateTime<Utc>>) -> Result<(), WindowError> {
        match horizon {
            Some(h) if self.start() < h => {
                let day = h.date_naive();
                let first = if h == day_start(day) { day } else { day.succ_opt().unwrap_or(day) };
                Err(WindowError::BeforeHorizon { since: self.from, horizon: first })
            }
            _ => Ok(()),
        }
    }

    /// The part of the window the outbox can vouch for, from the first whole day at or after
    /// `horizon` (`None`: the whole window); `None` when no whole day of it is left.
    pub fn clip(&self, horizon: Option<DateTime<Utc>>) -> Option<Self> {
        let Some(h) = horizon else { return Some(*self) };
        let day = h.date_naive();
        let first = if h == day_start(day) { day } else { day.succ_opt()? };
        let from = self.from.max(first);
        (from <= self.to).then_some(Self { from, to: self.to })
    }

    /// The window's first instant (midnight UTC of `from`).
    pub fn start(&self) -> DateTime<Utc> {
        day_start(self.from)
    }

    /// The instant after the window (midnight UTC after `to`).
    pub fn end(&self) -> DateTime<Utc> {
        day_start(self.to.succ_opt().unwrap_or(self.to))
    }

    /// The `since` to list the platform with: the first instant minus [`MAX_FUTURE_SKEW`]
    /// (`since` filters on arrival, and an event may arrive before its `occurred_at`).
    pub fn listing_since(&self) -> DateTime<Utc> {
        self.start() - MAX_FUTURE_SKEW
    }

    /// Whether `t` falls inside the window.
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.start() <= t && t < self.end()
    }
}

fn day_start(d: NaiveDate) -> DateTime<Utc> {
    d.and_time(NaiveTime::MIN).and_utc()
}

/// An exact quantity or total in units of 10⁻⁹ (the contract's 9 fraction digits), as `i128`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nanos(i128);

/// 10⁹.
const NANOS_PER_UNIT: i128 = 1_000_000_000;

impl Nanos {
    /// Zero.
    pub const ZERO: Self = Self(0);

    /// Parses the contract's decimal string (at most 18 digits before and 9 after the point,
    /// not negative), exactly.
    ///
    /// # Errors
    /// The reason, as [`Quantity::parse`] words it.
    pub fn parse(s: &str) -> Result<Self, String> {
        Quantity::parse(s).map(Self::from)
    }

    /// The sum, or `None` on overflow (past 10²⁹ units: more than 10¹¹ maximal quantities).
    #[must_use]
    pub fn checked_add(self, other: Self) -> Option<Self> {
        self.0.checked_add(other.0).map(Self)
    }

    /// The value in units of 10⁻⁹.
    pub fn units(self) -> i128 {
        self.0
    }
}

impl From<Quantity> for Nanos {
    fn from(q: Quantity) -> Self {
        // A Quantity has at most 9 fraction digits and 18 integer digits: exact.
        let d = q.value();
        let scale = d.scale().min(9);
        Self(d.mantissa() * 10i128.pow(9 - scale))
    }
}

impl fmt::Display for Nanos {
    /// Always 9 fraction digits: `12.500000000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let per = NANOS_PER_UNIT.unsigned_abs();
        write!(f, "{sign}{}.{:09}", abs / per, abs % per)
    }
}

impl Serialize for Nanos {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Nanos {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let (sign, digits) = match s.strip_prefix('-') {
            Some(rest) => (-1, rest),
            None => (1, s.as_str()),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let ok = !int.is_empty() && frac.len() <= 9 && int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit());
        if !ok || int.len() > 29 {
            return Err(serde::de::Error::custom(format!("not a total with 9 fraction digits: {s:?}")));
        }
        let mut units: i128 = 0;
        for b in int.bytes().chain(frac.bytes()).chain(std::iter::repeat_n(b'0', 9 - frac.len())) {
            units = units * 10 + i128::from(b - b'0');
        }
        Ok(Self(sign * units))
    }
}

/// What both sides are compared on: the narrow record of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    /// The event id.
    pub event_id: EventId,
    /// When it occurred (UTC).
    pub occurred_at: DateTime<Utc>,
    /// Its meter.
    pub meter: String,
    /// Its unit.
    pub unit: String,
    /// Its quantity, exactly.
    pub quantity: Nanos,
}

/// Why an event's JSON does not give a [`Fact`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FactError {
    /// The field.
    pub field: &'static str,
    /// Why.
    pub reason: String,
}

impl Fact {
    /// The fact of an event in the wire form (a stored event's canonical JSON, or one listed
    /// by the platform). Only the five fields are read; the event rules are not applied (a
    /// listed event is whatever the platform holds).
    ///
    /// # Errors
    /// [`FactError`] naming the field that is missing or unreadable.
    pub fn from_event_json(value: &serde_json::Value) -> Result<Self, FactError> {
        let text = |field: &'static str| {
            value
                .get(field)
                .and_then(serde_json::Value::as_str)
                .ok_or(FactError { field, reason: "missing or not a string".into() })
        };
        let event_id =
            EventId::parse(text("event_id")?).map_err(|e| FactError { field: "event_id", reason: e.to_string() })?;
        let occurred_at = DateTime::parse_from_rfc3339(text("occurred_at")?)
            .map_err(|e| FactError { field: "occurred_at", reason: e.to_string() })?
            .with_timezone(&Utc);
        let quantity = Nanos::parse(text("quantity")?).map_err(|reason| FactError { field: "quantity", reason })?;
        Ok(Self { event_id, occurred_at, meter: text("meter")?.to_owned(), unit: text("unit")?.to_owned(), quantity })
    }
}

/// One side's count and digest of one UTC day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaySide {
    /// Events that day.
    pub count: u64,
    /// Hex SHA-256 of the day's event ids sorted bytewise, each followed by `\n`.
    pub digest: String,
}

/// One (meter, unit) of one day: both sides' totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterTotals {
    /// The meter.
    pub meter: String,
    /// The unit.
    pub unit: String,
    /// Events here.
    pub local_count: u64,
    /// Events on the platform.
    pub platform_count: u64,
    /// Sum of the quantities here.
    pub local_total: Nanos,
    /// Sum of the quantities on the platform.
    pub platform_total: Nanos,
}

/// One UTC day, both sides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayReport {
    /// The day.
    pub date: NaiveDate,
    /// Delivered here.
    pub local: DaySide,
    /// Held by the platform.
    pub platform: DaySide,
    /// Per (meter, unit), sorted.
    pub meters: Vec<MeterTotals>,
}

impl DayReport {
    /// Whether both sides agree on this day.
    pub fn agrees(&self) -> bool {
        self.local == self.platform
            && self.meters.iter().all(|m| m.local_count == m.platform_count && m.local_total == m.platform_total)
    }
}

/// Why a stream of facts cannot be summarised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SummaryError {
    /// Rows out of (day, event id) order: the digest would be wrong.
    #[error("facts out of (day, event id) order at {event_id} (an adapter bug)")]
    OutOfOrder {
        /// The first id out of order.
        event_id: String,
    },
    /// A total beyond `i128`.
    #[error("the total of {meter} ({unit}) on {date} overflows")]
    Overflow {
        /// The day.
        date: NaiveDate,
        /// The meter.
        meter: String,
        /// The unit.
        unit: String,
    },
}

/// Count and total per (meter, unit).
type Meters = BTreeMap<(String, String), (u64, Nanos)>;

struct OpenDay {
    date: NaiveDate,
    count: u64,
    hasher: Sha256,
    last_id: Option<String>,
    meters: Meters,
}

/// Per-day counts, digests and (meter, unit) totals of one side, fed one fact at a time in
/// (UTC day, event id bytewise) order. Memory: one day's meters at a time.
pub struct DaySummaries {
    done: BTreeMap<NaiveDate, (DaySide, Meters)>,
    open: Option<OpenDay>,
}

impl fmt::Debug for DaySummaries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DaySummaries").field("days", &self.done.len()).finish_non_exhaustive()
    }
}

impl Default for DaySummaries {
    fn default() -> Self {
        Self::new()
    }
}

impl DaySummaries {
    /// Nothing yet.
    pub fn new() -> Self {
        Self { done: BTreeMap::new(), open: None }
    }

    /// Adds one fact; facts must come in (UTC day, event id bytewise) order.
    ///
    /// # Errors
    /// [`SummaryError`]: out of order, or a total overflows.
    pub fn push(&mut self, fact: &Fact) -> Result<(), SummaryError> {
        let date = fact.occurred_at.date_naive();
        let id = fact.event_id.as_str();
        let out_of_order = || SummaryError::OutOfOrder { event_id: id.to_owned() };
        match &self.open {
            Some(open) if open.date == date => {
                if open.last_id.as_deref().is_some_and(|last| last.as_bytes() >= id.as_bytes()) {
                    return Err(out_of_order());
                }
            }
            Some(open) if open.date > date => return Err(out_of_order()),
            _ => {
                self.close();
                self.open =
                    Some(OpenDay { date, count: 0, hasher: Sha256::new(), last_id: None, meters: BTreeMap::new() });
            }
        }
        let Some(open) = self.open.as_mut() else { return Ok(()) };
        open.count += 1;
        open.hasher.update(id.as_bytes());
        open.hasher.update(b"\n");
        open.last_id = Some(id.to_owned());
        let entry = open.meters.entry((fact.meter.clone(), fact.unit.clone())).or_insert((0, Nanos::ZERO));
        entry.0 += 1;
        entry.1 = entry.1.checked_add(fact.quantity).ok_or_else(|| SummaryError::Overflow {
            date,
            meter: fact.meter.clone(),
            unit: fact.unit.clone(),
        })?;
        Ok(())
    }

    fn close(&mut self) {
        if let Some(open) = self.open.take() {
            let digest = hex(&open.hasher.finalize());
            self.done.insert(open.date, (DaySide { count: open.count, digest }, open.meters));
        }
    }

    /// Both sides, day by day (a day with no events on either side is left out).
    pub fn compare(mut local: Self, mut platform: Self) -> Vec<DayReport> {
        local.close();
        platform.close();
        let empty = || (DaySide { count: 0, digest: empty_digest() }, BTreeMap::new());
        let dates: std::collections::BTreeSet<NaiveDate> =
            local.done.keys().chain(platform.done.keys()).copied().collect();
        dates
            .into_iter()
            .map(|date| {
                let (l, lm) = local.done.remove(&date).unwrap_or_else(empty);
                let (p, pm) = platform.done.remove(&date).unwrap_or_else(empty);
                let keys: std::collections::BTreeSet<&(String, String)> = lm.keys().chain(pm.keys()).collect();
                let meters = keys
                    .into_iter()
                    .map(|k| {
                        let (lc, lt) = lm.get(k).copied().unwrap_or((0, Nanos::ZERO));
                        let (pc, pt) = pm.get(k).copied().unwrap_or((0, Nanos::ZERO));
                        MeterTotals {
                            meter: k.0.clone(),
                            unit: k.1.clone(),
                            local_count: lc,
                            platform_count: pc,
                            local_total: lt,
                            platform_total: pt,
                        }
                    })
                    .collect();
                DayReport { date, local: l, platform: p, meters }
            })
            .collect()
    }
}

/// The digest of a day without events.
fn empty_digest() -> String {
    hex(&Sha256::digest(b""))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The ids of one kind of discrepancy: the exact count and the first [`MAX_LISTED_IDS`] ids,
/// sorted bytewise.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdList {
    /// How many there are.
    pub count: u64,
    /// The first of them.
    pub ids: Vec<String>,
}

impl IdList {
    /// Adds one id (counted always, listed while there is room for `max`).
    pub fn push(&mut self, id: String, max: usize) {
        self.count += 1;
        if self.ids.len() < max {
            self.ids.push(id);
        }
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// What an outbox found comparing its records with the platform's listing over a window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comparison {
    /// Delivered here, absent on the platform, payload still kept (repair can resend it).
    pub missing_on_platform: IdList,
    /// Delivered here, absent on the platform, payload compacted away.
    pub missing_unrecoverable: IdList,
    /// Held by the platform, never in this outbox.
    pub unknown_to_outbox: IdList,
    /// Pending or leased here, already held by the platform.
    pub held_but_pending: IdList,
    /// Dead-lettered here, held by the platform.
    pub held_but_dead_lettered: IdList,
    /// Per day, both sides: local = delivered here.
    pub days: Vec<DayReport>,
}

impl Comparison {
    /// Whether the sides agree: nothing missing either way (other senders' events count only
    /// when `exclusive`), nothing held but pending or dead-lettered, and every day agrees
    /// (with other senders' events, days may differ when not `exclusive`).
    pub fn agrees(&self, exclusive: bool) -> bool {
        let kinds = self.missing_on_platform.is_empty()
            && self.missing_unrecoverable.is_empty()
            && self.held_but_pending.is_empty()
            && self.held_but_dead_lettered.is_empty();
        if exclusive {
            kinds && self.unknown_to_outbox.is_empty() && self.days.iter().all(DayReport::agrees)
        } else {
            kinds
        }
    }
}

/// How long a reconciliation waits before its next read of the platform, from the last
/// answer's `X-RateLimit-*` headers: reads go while at least `(1 - share) × limit` requests
/// would remain for delivery after them; otherwise it waits for the window to refill. A
/// separate process cannot see the delivering agent's own window; the platform's count is the
/// one both share. `share` is clamped to `0.0..=1.0`.
pub fn read_pause(last: Option<crate::response::RateLimitStatus>, share: f64) -> std::time::Duration {
    let Some(rl) = last else { return std::time::Duration::ZERO };
    let keep = (1.0 - share.clamp(0.0, 1.0)) * f64::from(rl.limit);
    if f64::from(rl.remaining) - 1.0 >= keep { std::time::Duration::ZERO } else { rl.reset }
}

/// One page of the platform's listing (`GET .../billing/events`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldPage {
    /// The events, in `seq` order, as facts.
    pub events: Vec<HeldEvent>,
    /// Whether more follow (ask again with `after` = the last `seq`).
    pub has_more: bool,
}

/// One event the platform holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldEvent {
    /// The platform's cursor.
    pub seq: u64,
    /// When the platform received it.
    pub received_at: DateTime<Utc>,
    /// What it holds.
    pub fact: Fact,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code: a panic is the failure
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    #[test]
    fn a_window_clipped_to_the_horizon_starts_at_its_first_whole_day() {
        let now = Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0).unwrap();
        let w = Window::last_days(now, 7).unwrap();
        assert_eq!(w.clip(None), Some(w));
        let d = |day| NaiveDate::from_ymd_opt(2026, 3, day).unwrap();
        let mid = Utc.with_ymd_and_hms(2026, 3, 6, 8, 0, 0).unwrap();
        assert_eq!(w.clip(Some(mid)), Some(Window { from: d(7), to: d(10) }));
        let midnight = Utc.with_ymd_and_hms(2026, 3, 6, 0, 0, 0).unwrap();
        assert_eq!(w.clip(Some(midnight)), Some(Window { from: d(6), to: d(10) }));
        let long_ago = Utc.with_ymd_and_hms(2025, 1, 1, 8, 0, 0).unwrap();
        assert_eq!(w.clip(Some(long_ago)), Some(w));
        assert_eq!(w.clip(Some(now)), None, "no whole day after the horizon");
        assert!(w.clip(Some(mid)).unwrap().check_horizon(Some(mid)).is_ok());
    }

    use super::*;

    fn fact(id: &str, at: &str, meter: &str, q: &str) -> Fact {
        Fact {
            event_id: EventId::parse(id).unwrap(),
            occurred_at: DateTime::parse_from_rfc3339(at).unwrap().with_timezone(&Utc),
            meter: meter.into(),
            unit: "kWh".into(),
            quantity: Nanos::parse(q).unwrap(),
        }
    }

    #[test]
    fn the_window_is_whole_utc_days_today_included() {
        let now = Utc.with_ymd_and_hms(2026, 11, 29, 13, 5, 0).unwrap();
        let w = Window::last_days(now, 7).unwrap();
        assert_eq!((w.from.to_string(), w.to.to_string()), ("2026-11-23".into(), "2026-11-29".into()));
        assert_eq!(w.start().to_rfc3339(), "2026-11-23T00:00:00+00:00");
        assert_eq!(w.end().to_rfc3339(), "2026-11-30T00:00:00+00:00");
        assert_eq!(w.listing_since().to_rfc3339(), "2026-11-22T23:55:00+00:00");
        assert!(w.contains(w.start()) && !w.contains(w.end()));
        assert_eq!(Window::last_days(now, 0), Err(WindowError::NoDays));
        let since = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        assert!(matches!(Window::since(since, now), Err(WindowError::SinceInFuture { .. })));
    }

    #[test]
    fn a_window_before_the_horizon_names_the_first_day_allowed() {
        let now = Utc.with_ymd_and_hms(2026, 11, 29, 13, 5, 0).unwrap();
        let w = Window::last_days(now, 7).unwrap();
        let horizon = Utc.with_ymd_and_hms(2026, 11, 25, 8, 0, 0).unwrap();
        let e = w.check_horizon(Some(horizon)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--since 2026-11-23 is before 2026-11-26, the earliest day this outbox can vouch for (its record of delivered events starts then)"
        );
        assert_eq!(w.check_horizon(Some(w.start())), Ok(()));
        assert_eq!(w.check_horizon(None), Ok(()));
    }

    #[test]
    fn quantities_are_exact_nanos() {
        assert_eq!(Nanos::parse("12.5").unwrap().units(), 12_500_000_000);
        assert_eq!(Nanos::parse("0.000000001").unwrap().units(), 1);
        let max = Nanos::parse("999999999999999999.999999999").unwrap();
        assert_eq!(max.to_string(), "999999999999999999.999999999");
        assert!(Nanos::parse("-1").is_err() && Nanos::parse("1.0000000001").is_err() && Nanos::parse("1e3").is_err());
        let sum = (0..100_000).try_fold(Nanos::ZERO, |acc, _| acc.checked_add(max)).unwrap();
        assert_eq!(sum.to_string(), "99999999999999999999999.999900000");
        assert_eq!(Nanos::from(Quantity::parse("12.500").unwrap()), Nanos::parse("12.5").unwrap());
        let back: Nanos = serde_json::from_str(&serde_json::to_string(&sum).unwrap()).unwrap();
        assert_eq!(back, sum);
    }

    #[test]
    fn the_digest_is_sha256_of_sorted_ids_each_with_a_newline() {
        let mut s = DaySummaries::new();
        s.push(&fact("a-1", "2026-11-23T10:00:00Z", "m", "1.5")).unwrap();
        s.push(&fact("a-2", "2026-11-24T01:00:00+02:00", "m", "2")).unwrap(); // still the 23rd in UTC
        let e = s.push(&fact("a-0", "2026-11-23T11:00:00Z", "m", "1")).unwrap_err();
        assert!(matches!(e, SummaryError::OutOfOrder { .. }), "{e}");
        let e = s.push(&fact("z", "2026-11-22T11:00:00Z", "m", "1")).unwrap_err();
        assert!(matches!(e, SummaryError::OutOfOrder { .. }), "an earlier day: {e}");
        let days = DaySummaries::compare(s, DaySummaries::new());
        assert_eq!(days[0].local.digest, hex(&Sha256::digest(b"a-1\na-2\n")));
        assert_eq!(days[0].platform.digest, hex(&Sha256::digest(b"")));
        assert_eq!(days[0].meters[0].local_total.to_string(), "3.500000000");
    }

    #[test]
    fn two_sides_compare_day_by_day_and_meter_by_meter() {
        let mut local = DaySummaries::new();
        for f in [fact("a", "2026-11-23T10:00:00Z", "m", "1.5"), fact("b", "2026-11-23T11:00:00Z", "n", "2")] {
            local.push(&f).unwrap();
        }
        let mut platform = DaySummaries::new();
        platform.push(&fact("a", "2026-11-23T10:00:00Z", "m", "1.5")).unwrap();
        let days = DaySummaries::compare(local, platform);
        assert_eq!(days.len(), 1);
        let d = &days[0];
        assert_eq!(d.local.digest, hex(&Sha256::digest(b"a\nb\n")));
        assert_eq!(d.platform.digest, hex(&Sha256::digest(b"a\n")));
        assert_eq!((d.local.count, d.platform.count), (2, 1));
        assert!(!d.agrees());
        assert_eq!(d.meters[1].meter, "n");
        assert_eq!(
            (d.meters[1].local_total.to_string(), d.meters[1].platform_total),
            ("2.000000000".into(), Nanos::ZERO)
        );
    }

    #[test]
    fn a_fact_is_read_from_the_wire_form_naming_the_bad_field() {
        let v = serde_json::json!({"event_id": "e1", "device_id": "d", "meter": "m", "quantity": "0.5", "unit": "kWh", "occurred_at": "2026-11-23T10:15:00+01:00"});
        let f = Fact::from_event_json(&v).unwrap();
        assert_eq!(f.occurred_at.to_rfc3339(), "2026-11-23T09:15:00+00:00");
        let mut bad = v.clone();
        bad["quantity"] = serde_json::json!(0.5);
        assert_eq!(Fact::from_event_json(&bad).unwrap_err().field, "quantity");
    }

    #[test]
    fn reads_leave_the_rest_of_the_window_to_delivery() {
        use std::time::Duration as Std;
        let rl = |remaining| crate::response::RateLimitStatus { limit: 100, remaining, reset: Std::from_secs(42) };
        assert_eq!(read_pause(None, 0.2), Std::ZERO, "nothing known yet: read");
        assert_eq!(read_pause(Some(rl(81)), 0.2), Std::ZERO, "80 remain after this read");
        assert_eq!(read_pause(Some(rl(80)), 0.2), Std::from_secs(42), "79 would remain: wait for the refill");
        assert_eq!(read_pause(Some(rl(1)), 1.0), Std::ZERO, "the whole window");
        assert_eq!(read_pause(Some(rl(0)), 1.0), Std::from_secs(42));
        assert_eq!(read_pause(Some(rl(100)), 0.0), Std::from_secs(42), "no share: never");
    }

    proptest! {
        #[test]
        fn nanos_parse_agrees_with_the_decimal(int in "[0-9]{1,18}", frac in "[0-9]{0,9}") {
            let s = if frac.is_empty() { int.clone() } else { format!("{int}.{frac}") };
            let n = Nanos::parse(&s).unwrap();
            let expected = int.parse::<i128>().unwrap() * NANOS_PER_UNIT + format!("{frac:0<9}").parse::<i128>().unwrap();
            prop_assert_eq!(n.units(), expected, "digit by digit");
            let shown = n.to_string();
            let (i, f) = shown.split_once('.').unwrap();
            prop_assert_eq!(i.parse::<u128>().unwrap(), int.parse::<u128>().unwrap());
            prop_assert_eq!(f.trim_end_matches('0'), frac.trim_end_matches('0'));
        }
    }
}
