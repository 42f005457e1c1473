//! `POST /iot/api/v2/billing/events` (docs/platform.md section 3): the gate, then the batch,
//! then each event by the emulator's own rules (`crate::event`), then the store.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::{is_json, read_limited};
use super::claims::BILLING_WRITE;
use super::ctx::{Ctx, bad_request, record_losses, too_large};
use super::gate::{Gate, Metered, Passed, framed, gate};
use super::reply::{St, json_reply, set_header, with_rate};
use crate::event;
use crate::faults::FaultTarget;
use crate::ratelimit::RateStatus;
use crate::server::Conn;
use crate::state::{AppState, Held};

/// Most events in one batch.
pub const MAX_BATCH_EVENTS: usize = 500;
const ENDPOINT: &str = "POST /iot/api/v2/billing/events";

/// The body: exactly `{"events": [...]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    events: Vec<Value>,
}

/// A batch that may be judged event by event.
struct Accepted {
    events: Vec<Value>,
    idempotency_key: Option<String>,
}

/// The outcome of validation: the good events (id, canonical JSON) and the `rejected` entries.
struct Judged {
    good: Vec<(Arc<str>, String)>,
    rejected: Vec<Value>,
}

pub(super) async fn post_events(
    State(st): State<St>,
    conn: Option<Extension<Conn>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let limit = st.settings().billing_rate_per_min;
    let metered = Metered { target: FaultTarget::Billing, limiter: &st.billing_limiter, limit };
    framed(&st, ENDPOINT, conn.as_deref(), &headers, metered, async |ctx| {
        accept_events(&st, ctx, &headers, body, limit).await
    })
    .await
}

async fn accept_events(
    st: &AppState,
    ctx: &mut Ctx<'_>,
    headers: &HeaderMap,
    body: Body,
    limit: Option<u32>,
) -> Response {
    let g = Gate { need: &BILLING_WRITE, limiter: &st.billing_limiter, limit, require_application: true };
    let Passed { tenant, rate } = match gate(st, ctx, headers, &g) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let batch = match read_batch(ctx, headers, body, rate).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let now = Utc::now();
    let Judged { good, rejected } = judge(st, &batch.events, now);
    drop(batch.events);
    let Stored { accepted, duplicates, lost } = store(st, &tenant, good, now);
    count(st, &tenant, accepted, duplicates.len(), rejected.len(), lost.len());
    if !lost.is_empty() {
        record_losses(ctx, &lost, accepted);
    }
    let mut r = json_reply(
        StatusCode::ACCEPTED,
        &json!({"accepted": accepted, "duplicates": duplicates, "rejected": rejected}),
    );
    if let Some(key) = batch.idempotency_key {
        set_header(&mut r, "idempotency-key", key);
    }
    with_rate(r, rate)
}

/// The request's `Idempotency-Key`, `Content-Type` and body, checked in that order:
/// `400 invalid_request` or `413` for a malformed or oversized batch.
async fn read_batch(
    ctx: &Ctx<'_>,
    headers: &HeaderMap,
    body: Body,
    rate: RateStatus,
) -> Result<Accepted, Box<Response>> {
    let idempotency_key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) if (1..=255).contains(&k.len()) => Some(k.to_owned()),
        Some(_) => {
            let description = "Idempotency-Key must be 1 to 255 visible ASCII characters";
            return Err(Box::new(bad_request(ctx, description, rate)));
        }
    };
    if !is_json(headers) {
        return Err(Box::new(bad_request(ctx, "Content-Type must be application/json", rate)));
    }
    let bytes = read_limited(ctx, headers, body, rate).await?;
    let batch: Batch = serde_json::from_slice(&bytes).map_err(|e| {
        Box::new(bad_request(ctx, &format!("the body must be {{\"events\": [EVENT, ...]}}: {e}"), rate))
    })?;
    drop(bytes);
    let n = batch.events.len();
    if n == 0 {
        return Err(Box::new(bad_request(ctx, "the batch holds no events; send 1 to 500", rate)));
    }
    if n > MAX_BATCH_EVENTS {
        let detail = format!("the batch holds {n} events; at most {MAX_BATCH_EVENTS} are allowed");
        return Err(Box::new(too_large(ctx, detail, rate)));
    }
    Ok(Accepted { events: batch.events, idempotency_key })
}

/// Each event by the platform's rules, then against the meters the platform refuses.
fn judge(st: &AppState, events: &[Value], now: DateTime<Utc>) -> Judged {
    let refused_meters: HashMap<String, String> = st.rejected_meters.read().unwrap_or_else(|p| p.into_inner()).clone();
    let mut judged = Judged { good: Vec::with_capacity(events.len()), rejected: Vec::new() };
    for (index, value) in events.iter().enumerate() {
        match event::validate(value, now) {
            Ok(e) => match refused_meters.get(&e.meter) {
                Some(code) => judged.rejected.push(json!({
                    "event_id": e.event_id,
                    "code": code,
                    "message": format!("meter {} is not registered for this tenant", e.meter),
                    "index": index,
                })),
                None => judged.good.push((Arc::from(e.event_id), e.json)),
            },
            Err(refusal) => judged.rejected.push(json!({
                "event_id": value.get("event_id").and_then(Value::as_str).unwrap_or(""),
                "code": refusal.code(),
                "message": refusal.message(),
                "index": index,
            })),
        }
    }
    judged
}

/// What became of a batch's good events.
struct Stored {
    /// How many were accepted (new ids), forgotten ones included.
    accepted: u64,
    /// The ids of the duplicates.
    duplicates: Vec<Value>,
    /// The ids of the accepted events a `lose_after_accept` fault forgot at once.
    lost: Vec<Arc<str>>,
}

/// Stores the good events unless already held (or repeated within the batch), except those a
/// `lose_after_accept` fault of the tenant forgets: they are accepted, then dropped, and their
/// ids are no longer held (a later post of one is accepted anew).
fn store(st: &AppState, tenant: &str, good: Vec<(Arc<str>, String)>, now: DateTime<Utc>) -> Stored {
    let mut out = Stored { accepted: 0, duplicates: Vec::new(), lost: Vec::new() };
    let store = st.tenant(tenant);
    let mut s = store.lock().unwrap_or_else(|p| p.into_inner());
    let mut losses = st.faults.losses(tenant);
    s.events.reserve(good.len());
    for (id, json) in good {
        if s.ids.insert(Arc::clone(&id)) {
            out.accepted += 1;
            if losses.as_mut().is_some_and(|l| l.lose()) {
                out.lost.push(id);
            } else {
                s.events.push(Held { event_id: id, received_at: now, json });
            }
        } else {
            out.duplicates.push(Value::from(&*id));
        }
    }
    drop(losses);
    for id in &out.lost {
        s.ids.remove(id);
    }
    s.lost.extend(out.lost.iter().cloned());
    out
}

fn count(st: &AppState, tenant: &str, accepted: u64, duplicates: usize, rejected: usize, lost: usize) {
    let (n_dup, n_rej, n_lost) = (duplicates as u64, rejected as u64, lost as u64);
    st.counters.update(|c| {
        *c.requests_by_status.entry(202).or_default() += 1;
        *c.requests_by_endpoint.entry(ENDPOINT.to_owned()).or_default() += 1;
        *c.events_stored.entry(tenant.to_owned()).or_default() += accepted;
        if n_dup > 0 {
            *c.events_duplicate.entry(tenant.to_owned()).or_default() += n_dup;
        }
        if n_rej > 0 {
            *c.events_rejected.entry(tenant.to_owned()).or_default() += n_rej;
        }
        if n_lost > 0 {
            *c.events_lost_after_accept.entry(tenant.to_owned()).or_default() += n_lost;
        }
    });
}
