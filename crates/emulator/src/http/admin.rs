//! The admin API: the same operations as the methods of [`crate::Emulator`], over HTTP under
//! `/admin`, answered only to loopback peers (anyone else gets `403`).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::reply::{St, json_reply};
use crate::admin::{AdminError, SettingsUpdate, rotate};
use crate::config::ClientSpec;
use crate::faults::Fault;
use crate::server::Conn;
use crate::state::ClientInfo;

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
        .route("/sign", post(sign))
        .layer(middleware::from_fn_with_state(state, loopback_only))
}

async fn loopback_only(State(_): State<St>, req: Request, next: Next) -> Response {
    if admin_allowed(req.extensions().get::<Conn>().map(|c| c.peer.ip())) {
        next.run(req).await
    } else {
        json_reply(
            StatusCode::FORBIDDEN,
            &json!({"error": "forbidden", "error_description": "the admin API answers loopback peers only"}),
        )
    }
}

/// The admin API answers loopback peers only (IPv4-mapped IPv6 loopback included); a request
/// whose peer is unknown is refused.
fn admin_allowed(peer: Option<std::net::IpAddr>) -> bool {
    peer.is_some_and(|ip| ip.to_canonical().is_loopback())
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
    ok(st.audit.entries())
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
    let c = match parse::<ClientSpec>(&body) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if c.client_id.is_empty() || c.client_secret.is_empty() {
        return fail(StatusCode::BAD_REQUEST, "invalid_request", "client_id and client_secret must not be empty");
    }
    admin_result(st.register_client(c.registration()))
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
    ok(json!({"tenant_id": tenant_id, "event_ids": ids}))
}

async fn sign(State(st): State<St>, body: Bytes) -> Response {
    match parse::<Value>(&body) {
        Ok(claims @ Value::Object(_)) => ok(json!({"token": st.keys.sign(&claims)})),
        Ok(_) => fail(StatusCode::BAD_REQUEST, "invalid_request", "the claims must be a JSON object"),
        Err(r) => *r,
    }
}

#[cfg(test)]
mod peer_tests {
    use super::admin_allowed;

    #[test]
    fn only_loopback_peers_reach_the_admin_api() {
        let allowed = |s: &str| admin_allowed(Some(s.parse().unwrap()));
        assert!(allowed("127.0.0.1") && allowed("127.8.9.1") && allowed("::1") && allowed("::ffff:127.0.0.1"));
        assert!(
            !allowed("192.0.2.2") && !allowed("10.0.0.1") && !allowed("::ffff:10.0.0.1") && !allowed("2001:db8::1")
        );
        assert!(!admin_allowed(None));
    }
}
