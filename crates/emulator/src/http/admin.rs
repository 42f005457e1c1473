//! The admin API: the same operations as the methods of [`crate::Emulator`], over HTTP under
//! `/admin`, behind the gate of `admin_gate` (loopback peer, loopback or allowed `Host`, the
//! per-run key in `X-Admin-Key`).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::Response;
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::admin_gate::admin_gate;
use super::reply::{St, json_reply};
use crate::admin::{AdminError, SettingsUpdate, rotate};
use crate::config::{ClientSpec, KeyFiles};
use crate::faults::Fault;
use crate::state::{ClientInfo, Inserted};

pub(crate) fn router(state: St) -> Router<St> {
    Router::new()
        .route("/audit", get(audit).delete(clear_audit))
        .route("/counters", get(counters))
        .route("/settings", get(settings).post(update_settings))
        .route("/clients", get(clients).post(register))
        .route("/clients/{client_id}/billing", post(billing_access))
        .route("/clients/{client_id}/tenants/{tenant_id}", put(grant).delete(withdraw))
        .route("/revoke", post(revoke))
        .route("/keys/rotate", post(rotate_keys))
        .route("/faults", get(faults).post(inject).delete(clear_faults))
        .route("/events/{tenant_id}", get(event_ids))
        .route("/tenants/{tenant_id}/events", post(insert_events))
        .route("/sign", post(sign))
        .layer(middleware::from_fn_with_state(state, admin_gate))
}

fn ok(value: impl serde::Serialize) -> Response {
    json_reply(StatusCode::OK, &serde_json::to_value(value).unwrap_or(Value::Null))
}

fn fail(status: StatusCode, error: &str, description: impl ToString) -> Response {
    json_reply(status, &json!({"error": error, "error_description": description.to_string()}))
}

fn admin_result(r: Result<ClientInfo, AdminError>) -> Response {
    match r {
        Ok(info) => ok(info),
        Err(e @ AdminError::UnknownClient { .. }) => fail(StatusCode::NOT_FOUND, "unknown_client", e),
        Err(e @ AdminError::DuplicateClient { .. }) => fail(StatusCode::CONFLICT, "duplicate_client", e),
        Err(e) => fail(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
    }
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| Box::new(fail(StatusCode::BAD_REQUEST, "invalid_request", e)))
}

async fn audit(State(st): State<St>) -> Response {
    let (entries, dropped) = st.audit.snapshot();
    ok(json!({"entries": entries, "dropped": dropped}))
}

async fn clear_audit(State(st): State<St>) -> StatusCode {
    st.audit.clear();
    StatusCode::NO_CONTENT
}

async fn counters(State(st): State<St>) -> Response {
    ok(st.counters.snapshot())
}

async fn settings(State(st): State<St>) -> Response {
    ok(st.settings())
}

async fn update_settings(State(st): State<St>, body: Bytes) -> Response {
    match parse::<SettingsUpdate>(&body) {
        Ok(u) => ok(st.apply_settings(u)),
        Err(r) => *r,
    }
}

async fn clients(State(st): State<St>) -> Response {
    ok(st.client_infos())
}

async fn register(State(st): State<St>, body: Bytes) -> Response {
    let spec = match parse::<ClientSpec>(&body) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match spec.registration(KeyFiles::Refused) {
        Ok(reg) => admin_result(st.register_client(reg)),
        Err(e) => fail(StatusCode::BAD_REQUEST, "invalid_request", format!("{}: {}", e.field, e.reason)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Enabled {
    enabled: bool,
}

async fn billing_access(State(st): State<St>, Path(client_id): Path<String>, body: Bytes) -> Response {
    match parse::<Enabled>(&body) {
        Ok(e) => admin_result(st.set_billing_access(&client_id, e.enabled)),
        Err(r) => *r,
    }
}

async fn grant(State(st): State<St>, Path((client_id, tenant_id)): Path<(String, String)>) -> Response {
    admin_result(st.grant_tenant(&client_id, &tenant_id))
}

async fn withdraw(State(st): State<St>, Path((client_id, tenant_id)): Path<(String, String)>) -> Response {
    admin_result(st.withdraw_tenant(&client_id, &tenant_id))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Revoke {
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
}

async fn revoke(State(st): State<St>, body: Bytes) -> Response {
    match parse::<Revoke>(&body) {
        Ok(Revoke { jti: Some(jti), client_id: None }) => ok(json!({"revoked": usize::from(st.revoke_token(&jti))})),
        Ok(Revoke { jti: None, client_id: Some(c) }) => {
            if st.with_clients(|cs| cs.contains_key(&c)) {
                ok(json!({"revoked": st.revoke_client(&c)}))
            } else {
                fail(StatusCode::NOT_FOUND, "unknown_client", format!("no client `{c}` is registered"))
            }
        }
        Ok(_) => fail(StatusCode::BAD_REQUEST, "invalid_request", "give exactly one of jti and client_id"),
        Err(r) => *r,
    }
}

async fn rotate_keys(State(st): State<St>) -> Response {
    match rotate(&st).await {
        Ok(kid) => ok(json!({"kid": kid})),
        Err(e) => fail(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
    }
}

async fn faults(State(st): State<St>) -> Response {
    ok(st.faults.list())
}

async fn inject(State(st): State<St>, body: Bytes) -> Response {
    match parse::<Fault>(&body) {
        Ok(f) => {
            st.faults.add(f);
            ok(st.faults.list())
        }
        Err(r) => *r,
    }
}

async fn clear_faults(State(st): State<St>) -> StatusCode {
    st.faults.clear();
    StatusCode::NO_CONTENT
}

async fn event_ids(State(st): State<St>, Path(tenant_id): Path<String>) -> Response {
    let ids = st.event_ids(&tenant_id);
    let lost = st.lost_event_ids(&tenant_id);
    ok(json!({"tenant_id": tenant_id, "event_ids": ids, "lost_event_ids": lost}))
}

/// The body of an admin insert: exactly `{"events": [...]}`, as on the billing endpoint.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Events {
    events: Vec<Value>,
}

/// `POST /admin/tenants/{tenant_id}/events`: stores events as if another sender had posted
/// them; answers the events stored (as the reconciliation listing shows them) and the ids
/// already held.
async fn insert_events(State(st): State<St>, Path(tenant_id): Path<String>, body: Bytes) -> Response {
    let events = match parse::<Events>(&body) {
        Ok(e) => e.events,
        Err(r) => return *r,
    };
    match st.insert_events(&tenant_id, &events, chrono::Utc::now()) {
        Ok(Inserted { stored, duplicates }) => ok(json!({
            "tenant_id": tenant_id,
            "stored": stored.iter().map(super::list::entry).collect::<Vec<_>>(),
            "duplicates": duplicates,
        })),
        Err(e @ AdminError::InvalidEvent { .. }) => fail(StatusCode::BAD_REQUEST, "invalid_request", e),
        Err(e) => fail(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
    }
}

/// `POST /admin/sign[?alg=RS384]`, the claims as the body: signs them as given (`iss`, `nbf`,
/// `exp`, ... included) with the current key and `alg` in the header (RS256 by default; RS384,
/// RS512, PS256, PS384 and PS512 make tokens the platform refuses).
async fn sign(State(st): State<St>, query: axum::extract::RawQuery, body: Bytes) -> Response {
    let alg = match sign_alg(query.0.as_deref()) {
        Ok(alg) => alg,
        Err(description) => return fail(StatusCode::BAD_REQUEST, "invalid_request", description),
    };
    match parse::<Value>(&body) {
        Ok(claims @ Value::Object(_)) => ok(json!({"token": st.keys.sign_as(&claims, alg)})),
        Ok(_) => fail(StatusCode::BAD_REQUEST, "invalid_request", "the claims must be a JSON object"),
        Err(r) => *r,
    }
}

/// The `alg` of `POST /admin/sign`'s query (the only parameter), RS256 when absent.
fn sign_alg(query: Option<&str>) -> Result<crate::SigningAlg, String> {
    let mut alg = crate::SigningAlg::default();
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*name {
            "alg" => alg = value.parse().map_err(|e: crate::UnknownAlg| e.to_string())?,
            other => return Err(format!("unknown parameter {other:?}; the only one is alg")),
        }
    }
    Ok(alg)
}
