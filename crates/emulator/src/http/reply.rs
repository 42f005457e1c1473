//! Building blocks of every answer: JSON bodies, the contract's error bodies, and the
//! rate-limit headers.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::ratelimit::RateStatus;
use crate::state::AppState;

/// The state every handler gets.
pub(crate) type St = Arc<AppState>;

/// The header naming the tenant (docs/platform.md section 3).
pub(crate) const X_TENANT: &str = "x-tenant-id";
/// The header naming the application (= the OAuth client).
pub(crate) const X_APPLICATION: &str = "x-application-id";

/// A JSON answer.
pub(crate) fn json_reply(status: StatusCode, body: &Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `{"error": .., "error_description": ..}`, the description only when there is one.
pub(crate) fn error_body(error: &str, description: Option<&str>) -> Value {
    match description {
        Some(d) => json!({"error": error, "error_description": d}),
        None => json!({"error": error}),
    }
}

/// A header's value, trimmed; `None` when absent, empty or not visible ASCII.
pub(crate) fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

/// Sets a header, unless the value cannot be one.
pub(crate) fn set_header(r: &mut Response, name: &'static str, value: impl ToString) {
    if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
        r.headers_mut().insert(HeaderName::from_static(name), v);
    }
}

/// Adds `X-RateLimit-Limit`, `-Remaining` and `-Reset`.
pub(crate) fn with_rate(mut r: Response, rate: RateStatus) -> Response {
    set_header(&mut r, "x-ratelimit-limit", rate.limit);
    set_header(&mut r, "x-ratelimit-remaining", rate.remaining);
    set_header(&mut r, "x-ratelimit-reset", rate.reset_s);
    r
}
