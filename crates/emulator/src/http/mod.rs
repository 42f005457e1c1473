//! The platform's HTTP layer: one module per endpoint, behind one router.
//!
//! Dependencies run one way. This module (the router) uses the endpoint modules (`token`,
//! `billing`, `list`, `telemetry`, `admin`); they use the shared steps: `gate` (token,
//! headers, rate limit, claims, tenant), `client_auth` and `token_request` (the token
//! endpoints' client authentication, form and errors), `claims`, `ctx` (audit, counters,
//! faults, shared refusals), `body` and `reply`. Nothing outside `http` depends on it but [`crate::Emulator`]
//! starting the router; `crate::admin` holds the admin operations and knows no HTTP.

mod admin;
mod admin_gate;
mod billing;
mod body;
mod claims;
mod client_auth;
mod ctx;
mod gate;
mod list;
mod reply;
mod telemetry;
mod token;
mod token_request;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::json;

pub use billing::MAX_BATCH_EVENTS;
pub use body::MAX_BODY_BYTES;
pub use list::{DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT};
use reply::{St, json_reply};

pub(crate) fn router(state: St) -> Router {
    Router::new()
        .route("/oauth2/v1/token", post(token::token))
        .route("/iot/api/v2/oauth2/token", post(token::token_v2))
        .route("/oauth2/v1/keys", get(token::jwks))
        .route("/iot/api/v2/billing/events", post(billing::post_events).get(list::list_events))
        .route("/iot/api/v2/devices/{device_id}/telemetry", post(telemetry::telemetry))
        .nest("/admin", admin::router(Arc::clone(&state)))
        .fallback(|| async { json_reply(StatusCode::NOT_FOUND, &json!({"error": "not_found"})) })
        .with_state(state)
}
