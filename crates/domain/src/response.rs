//! What a billing response means for a client (PLATFORM.md section 3), decided from the
//! status, two headers and the body. Pure, so every row of the table is tested here.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One event the platform refused inside a `202`: permanently bad, dead-letter it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// The refused event.
    pub event_id: String,
    /// The platform's code (`invalid_quantity`).
    pub code: String,
    /// The platform's message.
    #[serde(default)]
    pub message: String,
}

/// The body of a `202`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// How many events were newly stored.
    pub accepted: u64,
    /// Events the platform already had: delivered too.
    #[serde(default)]
    pub duplicates: Vec<String>,
    /// Events refused for good.
    #[serde(default)]
    pub rejected: Vec<Rejection>,
}

/// The meaning of a billing response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BillingResponse {
    /// `202`: accepted, duplicates and per-event rejections.
    Accepted(Receipt),
    /// `400 missing_header`: a configuration bug; block the tenant.
    MissingHeader {
        /// The server's description, naming the header.
        description: String,
    },
    /// `400 invalid_request`: the batch is malformed; split it to find the poison event.
    InvalidRequest {
        /// The server's description.
        description: String,
    },
    /// `401 invalid_token`: get a new token and retry once.
    InvalidToken,
    /// `401 insufficient_claims`: scope, audience, tenant or application do not line up.
    InsufficientClaims,
    /// `403 tenant_not_authorized`: block the tenant.
    TenantNotAuthorized,
    /// `413`: split and retry.
    PayloadTooLarge,
    /// `429`: wait at least `retry_after`.
    RateLimited {
        /// From `Retry-After`, when present and valid.
        retry_after: Option<Duration>,
    },
    /// `5xx`: transient; back off.
    ServerError {
        /// The status.
        status: u16,
    },
    /// Anything the contract does not list: treated as transient, reported verbatim.
    Unexpected {
        /// The status.
        status: u16,
        /// The first bytes of the body.
        body: String,
    },
}

/// The `X-RateLimit-*` headers of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitStatus {
    /// `X-RateLimit-Limit`.
    pub limit: u32,
    /// `X-RateLimit-Remaining`.
    pub remaining: u32,
    /// `X-RateLimit-Reset`: until the window refills.
    pub reset: Duration,
}

impl RateLimitStatus {
    /// Reads the three headers; `None` unless all parse.
    pub fn from_headers(limit: Option<&str>, remaining: Option<&str>, reset: Option<&str>) -> Option<Self> {
        Some(Self {
            limit: limit?.trim().parse().ok()?,
            remaining: remaining?.trim().parse().ok()?,
            reset: Duration::from_secs(reset?.trim().parse().ok()?),
        })
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// Classifies a response. `www_authenticate` and `retry_after` are the raw header values.
pub fn classify(
    status: u16,
    www_authenticate: Option<&str>,
    retry_after: Option<&str>,
    body: &[u8],
) -> BillingResponse {
    let err: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let code = err.as_ref().map(|e| e.error.as_str()).unwrap_or("");
    let description = || err.as_ref().and_then(|e| e.error_description.clone()).unwrap_or_default();
    match status {
        202 | 200 => match serde_json::from_slice::<Receipt>(body) {
            Ok(r) => BillingResponse::Accepted(r),
            Err(_) => unexpected(status, body),
        },
        400 if code == "missing_header" => BillingResponse::MissingHeader { description: description() },
        400 => BillingResponse::InvalidRequest { description: description() },
        401 => {
            let challenge = www_authenticate.unwrap_or("");
            if challenge.contains("insufficient_claims") || code == "insufficient_claims" {
                BillingResponse::InsufficientClaims
            } else {
                BillingResponse::InvalidToken
            }
        }
        403 => BillingResponse::TenantNotAuthorized,
        413 => BillingResponse::PayloadTooLarge,
        429 => BillingResponse::RateLimited {
            retry_after: retry_after.and_then(|v| v.trim().parse().ok()).map(Duration::from_secs),
        },
        500..=599 => BillingResponse::ServerError { status },
        _ => unexpected(status, body),
    }
}

fn unexpected(status: u16, body: &[u8]) -> BillingResponse {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    BillingResponse::Unexpected { status, body: text }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(status: u16, www: Option<&str>, retry: Option<&str>, body: &str, expected: BillingResponse) {
        assert_eq!(classify(status, www, retry, body.as_bytes()), expected, "{status} {body}");
    }

    #[test]
    fn every_row_of_the_response_table() {
        check(
            202,
            None,
            None,
            r#"{"accepted": 2, "duplicates": ["a"], "rejected": [{"event_id": "b", "code": "invalid_quantity", "message": "m"}]}"#,
            BillingResponse::Accepted(Receipt {
                accepted: 2,
                duplicates: vec!["a".into()],
                rejected: vec![Rejection {
                    event_id: "b".into(),
                    code: "invalid_quantity".into(),
                    message: "m".into(),
                }],
            }),
        );
        check(
            400,
            None,
            None,
            r#"{"error": "missing_header", "error_description": "X-Application-ID"}"#,
            BillingResponse::MissingHeader { description: "X-Application-ID".into() },
        );
        check(
            400,
            None,
            None,
            r#"{"error": "invalid_request", "error_description": "bad"}"#,
            BillingResponse::InvalidRequest { description: "bad".into() },
        );
        check(
            401,
            Some(r#"Bearer error="invalid_token""#),
            None,
            r#"{"error": "invalid_token"}"#,
            BillingResponse::InvalidToken,
        );
        check(
            401,
            Some(r#"Bearer error="insufficient_claims""#),
            None,
            r#"{"error": "insufficient_claims"}"#,
            BillingResponse::InsufficientClaims,
        );
        check(403, None, None, r#"{"error": "tenant_not_authorized"}"#, BillingResponse::TenantNotAuthorized);
        check(413, None, None, "", BillingResponse::PayloadTooLarge);
        check(429, None, Some("7"), "", BillingResponse::RateLimited { retry_after: Some(Duration::from_secs(7)) });
        check(429, None, Some("soon"), "", BillingResponse::RateLimited { retry_after: None });
        check(503, None, None, "", BillingResponse::ServerError { status: 503 });
        check(202, None, None, "not json", BillingResponse::Unexpected { status: 202, body: "not json".into() });
        check(302, None, None, "", BillingResponse::Unexpected { status: 302, body: String::new() });
    }

    #[test]
    fn rate_limit_headers_need_all_three() {
        assert_eq!(
            RateLimitStatus::from_headers(Some("100"), Some("0"), Some("12")),
            Some(RateLimitStatus { limit: 100, remaining: 0, reset: Duration::from_secs(12) })
        );
        assert_eq!(RateLimitStatus::from_headers(Some("100"), None, Some("12")), None);
    }
}
