//! `POST /iot/api/v2/devices/{device_id}/telemetry` (docs/platform.md section 4): the endpoint
//! on which the thread's device-only token works.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Value, json};

use super::body::read_limited;
use super::claims::DEVICE_WRITE;
use super::ctx::{Ctx, bad_request};
use super::gate::{Gate, Metered, Passed, framed, gate};
use super::reply::{St, json_reply, with_rate};
use crate::faults::FaultTarget;
use crate::server::Conn;
use crate::state::AppState;

const ENDPOINT: &str = "POST /iot/api/v2/devices/{device_id}/telemetry";

pub(super) async fn telemetry(
    State(st): State<St>,
    conn: Option<Extension<Conn>>,
    path: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let limit = st.settings().device_rate_per_min;
    let metered = Metered { target: FaultTarget::Telemetry, limiter: &st.device_limiter, limit };
    let device_id = device_id(path, &uri);
    framed(&st, ENDPOINT, conn.as_deref(), &headers, metered, async |ctx| {
        telemetry_inner(&st, ctx, &headers, body, limit, &device_id).await
    })
    .await
}

/// The device id, percent-decoded by axum's `Path`; a segment that is not UTF-8 once decoded,
/// which `Path` refuses, is decoded lossily, as the emulator always has.
fn device_id(path: Result<Path<String>, PathRejection>, uri: &Uri) -> String {
    match path {
        Ok(Path(id)) => id,
        Err(_) => {
            let raw = uri.path().trim_start_matches("/iot/api/v2/devices/").trim_end_matches("/telemetry");
            percent_encoding::percent_decode_str(raw).decode_utf8_lossy().into_owned()
        }
    }
}

async fn telemetry_inner(
    st: &AppState,
    ctx: &mut Ctx<'_>,
    headers: &HeaderMap,
    body: Body,
    limit: Option<u32>,
    device_id: &str,
) -> Response {
    let g = Gate { need: &DEVICE_WRITE, limiter: &st.device_limiter, limit, require_application: false };
    let Passed { tenant, rate } = match gate(st, ctx, headers, &g) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let bytes = match read_limited(ctx, headers, body, rate).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(_)) => {}
        Ok(_) => return bad_request(ctx, "telemetry must be a JSON object", rate),
        Err(e) => return bad_request(ctx, &format!("telemetry must be a JSON object: {e}"), rate),
    }
    ctx.count(202, &[]);
    st.counters.update(|c| *c.telemetry_accepted.entry(tenant.clone()).or_default() += 1);
    with_rate(json_reply(StatusCode::ACCEPTED, &json!({"accepted": true, "device_id": device_id})), rate)
}
