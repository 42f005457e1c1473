//! What both adapters share for reconciliation: the ledger's narrow record of an event as
//! enqueue writes it, the scratch set's rows, and the tally that turns the comparison's
//! streamed rows into a [`Comparison`].

use std::borrow::Cow;

use billsync_domain::{Comparison, DaySummaries, EncodedEvent, EventId, Fact, IdList, Nanos, TenantName, Window};

use crate::common::{from_ms, to_ms};
use crate::error::StoreError;

/// One UTC day, in milliseconds: the comparison orders rows by `occurred_at / DAY_MS`.
pub(crate) const DAY_MS: i64 = 86_400_000;

/// Runs older than this (by the injected clock) are dropped when the next one begins.
pub(crate) const RUN_RETENTION_MS: i64 = DAY_MS;

/// Most event ids one repair statement names (each chunk is its own transaction).
pub(crate) const REPAIR_CHUNK: usize = 5_000;

/// The ledger's record of one event, read from its canonical JSON: `occurred_at` in
/// milliseconds (floored, as [`chrono::DateTime::timestamp_millis`]), the rest as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LedgerFact {
    pub occurred_at: i64,
    pub meter: String,
    pub unit: String,
    pub quantity: String,
}

/// The four fields of the wire form the ledger keeps; the others are skipped unread.
#[derive(serde::Deserialize)]
struct Narrow<'a> {
    #[serde(borrow)]
    occurred_at: Cow<'a, str>,
    #[serde(borrow)]
    meter: Cow<'a, str>,
    #[serde(borrow)]
    unit: Cow<'a, str>,
    #[serde(borrow)]
    quantity: Cow<'a, str>,
}

/// The ledger fact of one stored event's JSON, or why there is none.
pub(crate) fn ledger_fact(json: &str) -> Result<LedgerFact, String> {
    let n: Narrow<'_> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let at = chrono::DateTime::parse_from_rfc3339(&n.occurred_at).map_err(|e| format!("occurred_at: {e}"))?;
    Ok(LedgerFact {
        occurred_at: at.timestamp_millis(),
        meter: n.meter.into_owned(),
        unit: n.unit.into_owned(),
        quantity: n.quantity.into_owned(),
    })
}

/// The ledger facts of one enqueue call's events, in order. An event whose JSON gives none
/// (never one made by `BillingEvent::encode`) is still stored, without a fact: delivery does
/// not depend on reconciliation. It is logged.
pub(crate) fn ledger_facts(tenant: &TenantName, events: &[EncodedEvent]) -> Vec<Option<LedgerFact>> {
    events
        .iter()
        .map(|e| match ledger_fact(e.json()) {
            Ok(f) => Some(f),
            Err(reason) => {
                tracing::warn!(
                    tenant = %tenant,
                    event_id = e.event_id().as_str(),
                    %reason,
                    "an enqueued event gives no ledger fact; it is stored without one"
                );
                None
            }
        })
        .collect()
}

/// A platform event as the scratch set stores it.
#[derive(Debug, Clone)]
pub(crate) struct HeldRow {
    pub event_id: String,
    pub occurred_at: i64,
    pub meter: String,
    pub unit: String,
    pub quantity: String,
}

impl HeldRow {
    pub(crate) fn of(fact: &Fact) -> Self {
        Self {
            event_id: fact.event_id.as_str().to_owned(),
            occurred_at: to_ms(fact.occurred_at),
            meter: fact.meter.clone(),
            unit: fact.unit.clone(),
            quantity: fact.quantity.to_string(),
        }
    }
}

/// A window as the runs table keeps it: its first instant and the instant after it, in ms.
pub(crate) fn window_ms(window: &Window) -> (i64, i64) {
    (to_ms(window.start()), to_ms(window.end()))
}

/// A new run id: random, so that concurrent runs never share a scratch set.
pub(crate) fn new_run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A run as stored: whose, and its window in ms.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub tenant: TenantName,
    pub start: i64,
    pub end: i64,
}

impl Run {
    pub(crate) fn new(tenant: String, start: i64, end: i64) -> Result<Self, StoreError> {
        let tenant = TenantName::parse(tenant).map_err(|e| StoreError::corrupt("tenant", e))?;
        Ok(Self { tenant, start, end })
    }
}

/// The error for a run that does not exist (ended, dropped after a day, or never begun).
pub(crate) fn unknown_run(run: &str) -> StoreError {
    StoreError::corrupt("reconciliation run", format!("{run} does not exist (it ended, or began more than a day ago)"))
}

/// What a held (platform) row is here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeldAs {
    /// Neither a ledger row nor an event: never in this outbox.
    Unknown,
    /// Pending or leased here.
    Pending,
    /// Dead-lettered here.
    DeadLettered,
    /// Delivered here (or anything else): no discrepancy of its own.
    Settled,
}

impl HeldAs {
    /// From whether the outbox knows the id at all, and its event's state (`None`: compacted).
    pub(crate) fn of(known: bool, state: Option<i64>) -> Self {
        match (known, state) {
            (false, _) => Self::Unknown,
            (true, Some(0 | 1)) => Self::Pending,
            (true, Some(3)) => Self::DeadLettered,
            _ => Self::Settled,
        }
    }
}

/// The comparison being built from the streamed rows: the id lists (each fed in bytewise
/// order, so that the first `max_ids` are the smallest) and both sides' days (fed in
/// (day, id) order).
pub(crate) struct Tally {
    tenant: TenantName,
    max_ids: usize,
    out: Comparison,
    local: DaySummaries,
    platform: DaySummaries,
}

impl Tally {
    pub(crate) fn new(tenant: TenantName, max_ids: usize) -> Self {
        Self { tenant, max_ids, out: Comparison::default(), local: DaySummaries::new(), platform: DaySummaries::new() }
    }

    /// A delivered event of the window that the platform does not hold; `kept`: its payload is
    /// still here.
    pub(crate) fn missing(&mut self, id: String, kept: bool) {
        let list = if kept { &mut self.out.missing_on_platform } else { &mut self.out.missing_unrecoverable };
        list.push(id, self.max_ids);
    }

    /// An event the platform holds, as it is here.
    pub(crate) fn held(&mut self, id: String, held_as: HeldAs) {
        let list: &mut IdList = match held_as {
            HeldAs::Unknown => &mut self.out.unknown_to_outbox,
            HeldAs::Pending => &mut self.out.held_but_pending,
            HeldAs::DeadLettered => &mut self.out.held_but_dead_lettered,
            HeldAs::Settled => return,
        };
        list.push(id, self.max_ids);
    }

    /// One delivered event of the window, from its ledger row.
    pub(crate) fn local_day(&mut self, row: FactRow) -> Result<(), StoreError> {
        let fact = row_fact(row, &self.tenant, "ledger row")?;
        self.local.push(&fact).map_err(|e| StoreError::corrupt("ledger order", e))
    }

    /// One event the platform holds, from its scratch row.
    pub(crate) fn platform_day(&mut self, row: FactRow) -> Result<(), StoreError> {
        let fact = row_fact(row, &self.tenant, "platform row")?;
        self.platform.push(&fact).map_err(|e| StoreError::corrupt("platform row order", e))
    }

    pub(crate) fn finish(self) -> Comparison {
        Comparison { days: DaySummaries::compare(self.local, self.platform), ..self.out }
    }
}

/// A ledger or scratch row's five columns: event_id, occurred_at (ms), meter, unit, quantity.
pub(crate) type FactRow = (String, i64, String, String, String);

/// The fact of a stored row; one that does not parse names its tenant and event id.
fn row_fact(row: FactRow, tenant: &TenantName, what: &'static str) -> Result<Fact, StoreError> {
    let (id, at, meter, unit, quantity) = row;
    let bad = |field: &str, reason: String| {
        StoreError::corrupt(what, format!("event {id:?} of tenant {tenant}: {field}: {reason}"))
    };
    let event_id = EventId::parse(id.clone()).map_err(|e| bad("event_id", e.to_string()))?;
    let occurred_at = from_ms(at).map_err(|e| bad("occurred_at", e.to_string()))?;
    let quantity = Nanos::parse(&quantity).map_err(|reason| bad("quantity", reason))?;
    Ok(Fact { event_id, occurred_at, meter, unit, quantity })
}

/// The next row of a sqlx row stream (`query.fetch(...)`), without the `futures` crates: a
/// boxed stream is a trait object, whose `poll_next` needs no import.
macro_rules! next_row {
    ($rows:ident) => {
        std::future::poll_fn(|cx| $rows.as_mut().poll_next(cx)).await.transpose()
    };
}
pub(crate) use next_row;

/// The comparison's four streamed queries, the same for both backends but for their SQL (the
/// constants `MISSING`, `HELD`, `LOCAL_DAYS`, `PLATFORM_DAYS` in scope where it is used):
/// reads the run, streams each query into a [`Tally`] on `$conn` (inside the caller's read
/// transaction) and gives the tally. A macro because sqlx's connection and row types differ
/// per backend, and the bounds to write it generically would hide what it does.
macro_rules! stream_comparison {
    ($conn:expr, $run:expr, $max_ids:expr, $run_query:expr) => {{
        let row =
            sqlx::query($run_query).bind($run).fetch_optional(&mut *$conn).await?.ok_or_else(|| unknown_run($run))?;
        let r = Run::new(row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)?;
        let mut tally = Tally::new(r.tenant.clone(), $max_ids);
        {
            let mut rows =
                sqlx::query(MISSING).bind(r.tenant.as_str()).bind(r.start).bind(r.end).bind($run).fetch(&mut *$conn);
            while let Some(row) = next_row!(rows)? {
                tally.missing(row.try_get(0)?, row.try_get(1)?);
            }
        }
        {
            let mut rows = sqlx::query(HELD).bind(r.tenant.as_str()).bind($run).fetch(&mut *$conn);
            while let Some(row) = next_row!(rows)? {
                tally.held(row.try_get(0)?, HeldAs::of(row.try_get(1)?, row.try_get(2)?));
            }
        }
        {
            let mut rows =
                sqlx::query_as(LOCAL_DAYS).bind(r.tenant.as_str()).bind(r.start).bind(r.end).fetch(&mut *$conn);
            while let Some(row) = next_row!(rows)? {
                tally.local_day(row)?;
            }
        }
        {
            let mut rows = sqlx::query_as(PLATFORM_DAYS).bind($run).fetch(&mut *$conn);
            while let Some(row) = next_row!(rows)? {
                tally.platform_day(row)?;
            }
        }
        tally
    }};
}
pub(crate) use stream_comparison;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_fact_is_read_as_the_domain_reads_it() {
        let cases = [
            r#"{"event_id":"a","occurred_at":"2026-11-29T20:00:30.515982883Z","meter":"m","unit":"kWh","quantity":"1.250"}"#,
            r#"{"occurred_at":"2026-11-30T01:00:30.9999+02:00","meter":"m\"x","unit":"u","quantity":"0","attributes":{"a":"b"}}"#,
            r#"{"occurred_at":"1969-12-31T23:59:59.9995Z","meter":"m","unit":"u","quantity":"7"}"#,
        ];
        for json in cases {
            let got = ledger_fact(json).unwrap();
            let value: serde_json::Value = serde_json::from_str(json).unwrap();
            let at = chrono::DateTime::parse_from_rfc3339(value["occurred_at"].as_str().unwrap()).unwrap();
            assert_eq!(got.occurred_at, at.timestamp_millis(), "{json}");
            assert_eq!(got.meter, value["meter"].as_str().unwrap());
            assert_eq!(got.quantity, value["quantity"].as_str().unwrap());
        }
        assert_eq!(
            ledger_fact(r#"{"occurred_at":"1969-12-31T23:59:59.9995Z","meter":"m","unit":"u","quantity":"7"}"#)
                .unwrap()
                .occurred_at,
            -1
        );
        assert!(ledger_fact(r#"{"event_id":"e-0"}"#).is_err());
        assert!(ledger_fact(r#"{"occurred_at":"2026-11-29T20:00:30","meter":"m","unit":"u","quantity":"1"}"#).is_err());
        assert!(ledger_fact(r#"{"occurred_at":"2026-11-29T20:00:30Z","meter":"m","unit":"u","quantity":1}"#).is_err());
    }

    #[test]
    fn a_row_that_does_not_parse_names_its_tenant_and_event() {
        let tenant = TenantName::parse("acme").unwrap();
        let row: FactRow = ("e-1".into(), 0, "m".into(), "u".into(), "1,5".into());
        let e = row_fact(row, &tenant, "ledger row").unwrap_err().to_string();
        assert!(e.contains("\"e-1\"") && e.contains("acme") && e.contains("quantity"), "{e}");
    }
}
