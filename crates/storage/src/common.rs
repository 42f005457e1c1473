//! What both adapters share: time in milliseconds, and the deduplication plan of a run of
//! enqueues committed together.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use billsync_domain::{EncodedEvent, EnqueueReport, EventId, Lease, LeaseId, TenantCounts, TenantName};
use chrono::{DateTime, Utc};

use crate::error::StoreError;
use crate::reconcile::LedgerFact;

/// The longest lease, claim or backoff accepted; longer ones are cut to it (a century keeps
/// every sum of times far inside chrono's range).
const MAX_SPAN_MS: i64 = 100 * 366 * 24 * 3600 * 1000;

/// Milliseconds since the epoch.
pub(crate) fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// Back from milliseconds since the epoch.
pub(crate) fn from_ms(ms: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| StoreError::corrupt("time", format!("{ms} ms is out of range")))
}

/// A span in milliseconds, at most a century.
pub(crate) fn span_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).min(MAX_SPAN_MS)
}

/// A `max` argument as an SQL limit.
pub(crate) fn limit(max: usize) -> i64 {
    i64::try_from(max).unwrap_or(i64::MAX)
}

/// Rebuilds a stored event id.
pub(crate) fn event_id(s: String) -> Result<EventId, StoreError> {
    EventId::parse(s).map_err(|e| StoreError::corrupt("event_id", e))
}

/// A stored count as `u64`.
pub(crate) fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// One row to insert.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row<'a> {
    pub tenant: &'a str,
    pub event_id: &'a str,
    pub body: &'a str,
    /// Its ledger record (`None`: its JSON gives none, see `ledger_facts`).
    pub fact: Option<&'a LedgerFact>,
}

/// Where one distinct event of a call ended up.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// This call is the first of the run to carry it: stored unless the database had it.
    Candidate(usize),
    /// An earlier call of the run carried it.
    Duplicate,
}

/// The deduplicated rows of a run of enqueue calls committed together, and how to tell each
/// call what became of its events. Serial semantics: a call sees the calls before it.
#[derive(Debug)]
pub(crate) struct EnqueuePlan<'a> {
    rows: Vec<Row<'a>>,
    /// Per call, its distinct events in order of first occurrence, with whether the call
    /// repeated them.
    calls: Vec<Vec<(&'a EventId, Slot, bool)>>,
}

impl<'a> EnqueuePlan<'a> {
    /// Plans the calls, in order: each call's events with their ledger facts (by position).
    pub(crate) fn new(
        calls: impl IntoIterator<Item = (&'a TenantName, &'a [EncodedEvent], &'a [Option<LedgerFact>])>,
    ) -> Self {
        let mut rows = Vec::new();
        let mut seen: HashSet<(&str, &str)> = HashSet::new();
        let mut plans = Vec::new();
        for (tenant, events, facts) in calls {
            let mut in_call: HashMap<&str, usize> = HashMap::with_capacity(events.len());
            let mut plan: Vec<(&EventId, Slot, bool)> = Vec::with_capacity(events.len());
            for (i, e) in events.iter().enumerate() {
                let id = e.event_id();
                if let Some(&at) = in_call.get(id.as_str()) {
                    plan[at].2 = true;
                    continue;
                }
                in_call.insert(id.as_str(), plan.len());
                if seen.insert((tenant.as_str(), id.as_str())) {
                    plan.push((id, Slot::Candidate(rows.len()), false));
                    let fact = facts.get(i).and_then(Option::as_ref);
                    rows.push(Row { tenant: tenant.as_str(), event_id: id.as_str(), body: e.json(), fact });
                } else {
                    plan.push((id, Slot::Duplicate, false));
                }
            }
            plans.push(plan);
        }
        Self { rows, calls: plans }
    }

    /// The distinct rows to insert, in order.
    pub(crate) fn rows(&self) -> &[Row<'a>] {
        &self.rows
    }

    /// One report per call, given the (tenant, event_id) pairs the database newly stored.
    pub(crate) fn reports(&self, inserted: &HashSet<(String, String)>) -> Vec<EnqueueReport> {
        let mut lookup: HashMap<(&str, &str), bool> = HashMap::with_capacity(self.rows.len());
        for r in &self.rows {
            let key = (r.tenant.to_owned(), r.event_id.to_owned());
            lookup.insert((r.tenant, r.event_id), inserted.contains(&key));
        }
        self.calls
            .iter()
            .map(|plan| {
                let mut report = EnqueueReport::default();
                for (id, slot, repeated) in plan {
                    let stored = match slot {
                        Slot::Candidate(i) => {
                            let r = &self.rows[*i];
                            lookup.get(&(r.tenant, r.event_id)).copied().unwrap_or(false)
                        }
                        Slot::Duplicate => false,
                    };
                    if stored {
                        report.stored += 1;
                        if *repeated {
                            report.duplicates.push((*id).clone());
                        }
                    } else {
                        report.duplicates.push((*id).clone());
                    }
                }
                report
            })
            .collect()
    }
}

/// Builds a lease from its rows (seq, due_at, event_id, body), in queue order.
pub(crate) fn leased<R>(
    tenant: &TenantName,
    id: String,
    expires_at: i64,
    rows: Vec<R>,
    read: impl Fn(&R) -> Result<(i64, i64, String, String), sqlx::Error>,
) -> Result<Option<Lease>, StoreError> {
    if rows.is_empty() {
        return Ok(None);
    }
    let mut picked = rows.iter().map(&read).collect::<Result<Vec<_>, _>>()?;
    picked.sort_unstable_by_key(|(seq, due, _, _)| (*due, *seq));
    let events = picked
        .into_iter()
        .map(|(_, _, id, body)| Ok(EncodedEvent::from_stored(event_id(id)?, body)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Some(Lease {
        id: LeaseId::new(id),
        tenant: tenant.clone(),
        events,
        expires_at: from_ms(expires_at)?,
        generation: None,
    }))
}

/// Builds counts from the eight columns of the counts query: pending, in flight, expired
/// leases, delivered, dead, oldest pending, oldest expired lease, next attempt.
pub(crate) fn counts_from(get: impl Fn(usize) -> Result<Option<i64>, sqlx::Error>) -> Result<TenantCounts, StoreError> {
    let n = |i| get(i).map(|v| count(v.unwrap_or(0)));
    let oldest = [get(5)?, get(6)?].into_iter().flatten().min();
    Ok(TenantCounts {
        pending: n(0)? + n(2)?,
        in_flight: n(1)?,
        delivered: n(3)?,
        dead_lettered: n(4)?,
        oldest_pending: oldest.map(from_ms).transpose()?,
        next_attempt_at: get(7)?.map(from_ms).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str) -> EncodedEvent {
        EncodedEvent::from_stored(EventId::parse(id).unwrap(), format!("{{\"event_id\":\"{id}\"}}"))
    }

    #[test]
    fn plan_deduplicates_within_and_across_calls() {
        let a = TenantName::parse("a").unwrap();
        let b = TenantName::parse("b").unwrap();
        let c1 = [ev("1"), ev("2"), ev("1"), ev("1")];
        let c2 = [ev("2"), ev("3")];
        let c3 = [ev("2")];
        let plan = EnqueuePlan::new([(&a, &c1[..], &[][..]), (&a, &c2[..], &[][..]), (&b, &c3[..], &[][..])]);
        let keys: Vec<_> = plan.rows().iter().map(|r| (r.tenant, r.event_id)).collect();
        assert_eq!(keys, [("a", "1"), ("a", "2"), ("a", "3"), ("b", "2")]);
        // The database already had a/3.
        let inserted: HashSet<(String, String)> =
            [("a", "1"), ("a", "2"), ("b", "2")].iter().map(|(t, i)| (t.to_string(), i.to_string())).collect();
        let reports = plan.reports(&inserted);
        let dups = |r: &EnqueueReport| r.duplicates.iter().map(|d| d.as_str().to_owned()).collect::<Vec<_>>();
        assert_eq!((reports[0].stored, dups(&reports[0])), (2, vec!["1".to_owned()]));
        assert_eq!((reports[1].stored, dups(&reports[1])), (0, vec!["2".to_owned(), "3".to_owned()]));
        assert_eq!((reports[2].stored, dups(&reports[2])), (1, vec![]));
        // A repeat of an event the database already had is reported once.
        let c4 = [ev("9"), ev("9")];
        let plan = EnqueuePlan::new([(&a, &c4[..], &[][..])]);
        let reports = plan.reports(&HashSet::new());
        assert_eq!((reports[0].stored, dups(&reports[0])), (0, vec!["9".to_owned()]));
    }

    #[test]
    fn spans_are_capped() {
        assert_eq!(span_ms(Duration::from_millis(1500)), 1500);
        assert_eq!(span_ms(Duration::MAX), MAX_SPAN_MS);
        assert!(from_ms(to_ms(Utc::now()) + MAX_SPAN_MS).is_ok());
    }
}
