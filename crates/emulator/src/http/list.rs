//! `GET /iot/api/v2/billing/events`: the reconciliation read of what the platform holds for a
//! tenant, in order of arrival.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::claims::BILLING_READ;
use super::ctx::{Ctx, bad_request};
use super::gate::{Gate, Metered, Passed, framed, gate};
use super::reply::{St, json_reply, with_rate};
use crate::faults::FaultTarget;
use crate::server::Conn;
use crate::state::{AppState, StoredEvent};

/// Most events one reconciliation page returns.
pub const MAX_LIST_LIMIT: usize = 1000;
/// Events per page when `limit` is absent.
pub const DEFAULT_LIST_LIMIT: usize = 100;
const ENDPOINT: &str = "GET /iot/api/v2/billing/events";

/// `since` (RFC 3339, inclusive, on `received_at`), `after` (a `seq`, exclusive), `limit`
/// (1-1000). Decoded by axum's `Query` as the pairs given, then checked here in that order, so
/// that the first bad parameter is the one named and the message is the contract's
/// `error_description` (it reaches the handler as the rejection's source).
#[derive(Debug, Deserialize)]
#[serde(try_from = "Vec<(String, String)>")]
pub(super) struct ListQuery {
    since: Option<DateTime<Utc>>,
    after: u64,
    limit: usize,
}

impl TryFrom<Vec<(String, String)>> for ListQuery {
    type Error = String;

    fn try_from(pairs: Vec<(String, String)>) -> Result<Self, String> {
        let mut q = ListQuery { since: None, after: 0, limit: DEFAULT_LIST_LIMIT };
        for (k, v) in pairs {
            match k.as_str() {
                "since" => {
                    let t = DateTime::parse_from_rfc3339(&v)
                        .map_err(|_| format!("since must be an RFC 3339 time with an offset, found {v:?}"))?;
                    q.since = Some(t.with_timezone(&Utc));
                }
                "limit" => {
                    q.limit = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
                        .ok_or_else(|| format!("limit must be 1 to {MAX_LIST_LIMIT}, found {v:?}"))?;
                }
                "after" => {
                    q.after = v.parse().map_err(|_| format!("after must be a sequence number, found {v:?}"))?;
                }
                other => return Err(format!("unknown query parameter {other:?}; expected since, limit, after")),
            }
        }
        Ok(q)
    }
}

/// The description of a refused query: the message of [`ListQuery::try_from`], which axum
/// keeps as the rejection's source.
fn query_error(rejection: &QueryRejection) -> String {
    std::error::Error::source(rejection).map_or_else(|| rejection.body_text(), ToString::to_string)
}

pub(super) async fn list_events(
    State(st): State<St>,
    conn: Option<Extension<Conn>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let limit = st.settings().billing_rate_per_min;
    let metered = Metered { target: FaultTarget::Billing, limiter: &st.billing_limiter, limit };
    framed(&st, ENDPOINT, conn.as_deref(), &headers, metered, async |ctx| list_inner(&st, ctx, &headers, query, limit))
        .await
}

/// The gate first (the query of an unauthenticated request is never judged), then the query.
fn list_inner(
    st: &AppState,
    ctx: &mut Ctx<'_>,
    headers: &HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
    limit: Option<u32>,
) -> Response {
    let g = Gate { need: &BILLING_READ, limiter: &st.billing_limiter, limit, require_application: true };
    let Passed { tenant, rate } = match gate(st, ctx, headers, &g) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let q = match query {
        Ok(Query(q)) => q,
        Err(rejection) => return bad_request(ctx, &query_error(&rejection), rate),
    };
    let (events, has_more) = page(st, &tenant, &q);
    ctx.count(200, &[]);
    with_rate(json_reply(StatusCode::OK, &json!({"tenant_id": tenant, "events": events, "has_more": has_more})), rate)
}

/// One page of the tenant's events, and whether more follow.
fn page(st: &AppState, tenant: &str, q: &ListQuery) -> (Vec<Value>, bool) {
    let mut events = Vec::new();
    let Some(store) = st.existing_tenant(tenant) else { return (events, false) };
    let s = store.lock().unwrap_or_else(|p| p.into_inner());
    let start = usize::try_from(q.after).unwrap_or(usize::MAX).min(s.events.len());
    for (i, h) in s.events.iter().enumerate().skip(start) {
        if q.since.is_some_and(|since| h.received_at < since) {
            continue;
        }
        if events.len() == q.limit {
            return (events, true);
        }
        events.push(entry(&h.stored(i as u64 + 1)));
    }
    (events, false)
}

/// One event as the listing shows it: `{"seq", "event_id", "received_at", "event"}`,
/// `received_at` in UTC to the microsecond.
pub(super) fn entry(e: &StoredEvent) -> Value {
    json!({
        "seq": e.seq,
        "event_id": e.event_id,
        "received_at": e.received_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        "event": e.event,
    })
}

#[cfg(test)]
mod tests {
    use axum::http::Uri;

    use super::*;

    fn parse(query: &str) -> Result<ListQuery, String> {
        let uri: Uri = format!("/iot/api/v2/billing/events?{query}").parse().unwrap();
        Query::<ListQuery>::try_from_uri(&uri).map(|Query(q)| q).map_err(|r| query_error(&r))
    }

    #[test]
    fn list_queries_are_checked_in_order_with_the_contracts_messages() {
        let q = parse("since=2026-01-01T00:00:00%2B00:00&limit=5&after=3").unwrap();
        assert_eq!((q.limit, q.after, q.since.map(|t| t.timestamp())), (5, 3, Some(1_767_225_600)));
        assert_eq!(parse("").unwrap().limit, DEFAULT_LIST_LIMIT);
        assert_eq!(parse("limit=0").unwrap_err(), r#"limit must be 1 to 1000, found "0""#);
        assert_eq!(
            parse("since=yesterday").unwrap_err(),
            r#"since must be an RFC 3339 time with an offset, found "yesterday""#
        );
        assert_eq!(
            parse("sinse=x&limit=0").unwrap_err(),
            r#"unknown query parameter "sinse"; expected since, limit, after"#
        );
        assert_eq!(parse("after=-1").unwrap_err(), r#"after must be a sequence number, found "-1""#);
        assert_eq!(parse("limit=5&limit=6").unwrap().limit, 6, "the last value counts");
    }
}
