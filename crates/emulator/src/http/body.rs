//! Reading request bodies by hand, once the request has passed its checks (the gate, the
//! injected faults).
//!
//! Not axum's `Json`, `Form` or `Bytes` extractors: they read the body before the handler
//! runs, so an anonymous or rate-limited request would cost a full read; they stop reading at
//! the limit, so a client still sending may see the connection reset instead of the contract's
//! `413` (or the token endpoint's `400`): with `Form` and a 64 KiB limit, 5 to 10 of 25 forms
//! of 4-7 MiB got a transport error, against none when the body is drained first; `Json`
//! accepts `application/*+json` and `Form` compares the media type case-sensitively, where the
//! contract (and RFC 9110) do not.

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::Response;
use http_body_util::BodyExt;

use super::ctx::{Ctx, bad_request, too_large};
use super::reply::header_str;
use crate::ratelimit::RateStatus;

/// Largest body of the billing and telemetry endpoints.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How much of an oversized body is read (and thrown away) so the client sees the `413`.
const DRAIN_LIMIT: usize = 8 * MAX_BODY_BYTES;

pub(crate) enum BodyError {
    TooLarge,
    Broken(String),
}

/// Reads a body of at most `limit` bytes. A larger body is drained (up to a bound) so that
/// the client is still reading when the `413` arrives.
pub(crate) async fn read_body(headers: &HeaderMap, mut body: Body, limit: usize) -> Result<Vec<u8>, BodyError> {
    let declared = header_str(headers, "content-length").and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT) {
        return Err(BodyError::TooLarge);
    }
    let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(limit));
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            total += data.len();
            if total <= limit {
                buf.extend_from_slice(&data);
            } else if total > DRAIN_LIMIT {
                return Err(BodyError::TooLarge);
            }
        }
    }
    if total > limit { Err(BodyError::TooLarge) } else { Ok(buf) }
}

/// The body of a request that passed the gate, at most [`MAX_BODY_BYTES`]; or its refusal:
/// `413` when larger, `400 invalid_request` when it could not be read.
pub(crate) async fn read_limited(
    ctx: &Ctx<'_>,
    headers: &HeaderMap,
    body: Body,
    rate: RateStatus,
) -> Result<Vec<u8>, Box<Response>> {
    read_body(headers, body, MAX_BODY_BYTES).await.map_err(|e| {
        Box::new(match e {
            BodyError::TooLarge => too_large(ctx, "the body is larger than 1 MiB".into(), rate),
            BodyError::Broken(m) => bad_request(ctx, &format!("could not read the body: {m}"), rate),
        })
    })
}

/// `Content-Type: application/json`, parameters such as `charset` allowed.
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    header_str(headers, "content-type").is_some_and(|ct| {
        let mime = ct.split(';').next().unwrap_or("").trim();
        mime.eq_ignore_ascii_case("application/json")
    })
}
