//! The billing transport: a [`BillingApi`] over reqwest (rustls). It sends exactly the headers
//! docs/platform.md section 3 requires, taken from a [`BillingRequestHeaders`] (which only exists
//! for a token that passed the billing policy), and classifies every HTTP answer with the
//! domain's [`classify`]. Only a missing answer is an error.
//!
//! It never follows a redirect (a redirect is no answer from the billing API, and following it
//! would turn the POST into a GET somewhere else), and it reads at most
//! [`MAX_RESPONSE_BODY`] of a body: past that, the answer is classified as unexpected.
//!
//! # Example
//!
//! ```
//! use billsync_http::HttpSettings;
//! use billsync_transport::HttpBillingApi;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let api = HttpBillingApi::new("https://iot.example.com", &HttpSettings::default())?;
//! assert_eq!(api.endpoint(), "https://iot.example.com/iot/api/v2/billing/events");
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

use async_trait::async_trait;
use billsync_domain::{
    BatchBody, BillingApi, BillingReply, BillingRequestHeaders, HttpAnswer, MAX_RESPONSE_BODY, RateLimitStatus,
    TransportError, classify,
};
use billsync_http::{HttpSettings, HttpSetupError};
use reqwest::header::{CONTENT_TYPE, HeaderMap, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE};

/// The path of the billing events endpoint below the platform's base URL.
pub const BILLING_EVENTS_PATH: &str = "/iot/api/v2/billing/events";

/// Posts billing batches over HTTPS (or HTTP on loopback, which the configuration enforces).
#[derive(Debug, Clone)]
pub struct HttpBillingApi {
    client: reqwest::Client,
    endpoint: String,
}

impl HttpBillingApi {
    /// A transport for the platform at `base_url`, connecting as `http` says (shared with the
    /// token client).
    ///
    /// # Errors
    /// [`HttpSetupError`] when the client cannot be built.
    pub fn new(base_url: &str, http: &HttpSettings) -> Result<Self, HttpSetupError> {
        let client = http.client(concat!("billsync/", env!("CARGO_PKG_VERSION")))?;
        Ok(Self { client, endpoint: format!("{}{BILLING_EVENTS_PATH}", base_url.trim_end_matches('/')) })
    }

    /// The full URL batches are posted to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

fn header(h: &HeaderMap, name: impl reqwest::header::AsHeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn describe(e: &reqwest::Error) -> TransportError {
    if e.is_timeout() {
        return TransportError::Timeout;
    }
    TransportError::Connection(billsync_http::describe(&e.to_string(), e))
}

impl HttpBillingApi {
    /// The POST of one batch with its four headers; the `Authorization` value is marked
    /// sensitive (`bearer_auth` does), so HTTP tooling never prints it and HTTP/2 never indexes it.
    fn request(&self, headers: &BillingRequestHeaders, body: &BatchBody) -> reqwest::RequestBuilder {
        self.client
            .post(&self.endpoint)
            .bearer_auth(headers.bearer_token())
            .header("X-Tenant-ID", headers.tenant_id().as_str())
            .header("X-Application-ID", headers.application_id().as_str())
            .header(CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", body.idempotency_key())
            .body(body.as_str().to_owned())
    }
}

#[async_trait]
impl BillingApi for HttpBillingApi {
    async fn post_events(
        &self,
        headers: &BillingRequestHeaders,
        body: &BatchBody,
    ) -> Result<BillingReply, TransportError> {
        let mut response = self.request(headers, body).send().await.map_err(|e| describe(&e))?;
        let status = response.status().as_u16();
        let h = response.headers().clone();
        // A body that breaks off (connection dropped after the platform stored the events)
        // is no answer at all: retry, and let the platform's deduplication absorb it.
        let mut bytes = Vec::new();
        let mut body_truncated = false;
        while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BODY {
                body_truncated = true;
                break;
            }
            bytes.extend_from_slice(&chunk);
        }
        let answer = HttpAnswer {
            status,
            www_authenticate: header(&h, WWW_AUTHENTICATE),
            retry_after: header(&h, RETRY_AFTER),
            location: header(&h, LOCATION),
            body: &bytes,
            body_truncated,
        };
        let reply = BillingReply {
            response: classify(&answer, chrono::Utc::now()),
            rate_limit: RateLimitStatus::from_headers(
                header(&h, "x-ratelimit-limit"),
                header(&h, "x-ratelimit-remaining"),
                header(&h, "x-ratelimit-reset"),
            ),
        };
        tracing::debug!(status, events = body.events(), tenant = %headers.tenant_id(), "billing request answered");
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use billsync_domain::{AccessToken, AccessTokenClaims, ApplicationId, BillingEvent, BillingPolicy, TenantId};
    use billsync_http::HttpSettings;
    use reqwest::header::AUTHORIZATION;

    use super::*;

    #[test]
    fn the_authorization_header_is_marked_sensitive() {
        let now = chrono::Utc::now();
        let claims = AccessTokenClaims {
            scope: vec![billsync_domain::BILLING_WRITE_SCOPE.into()],
            aud: vec![billsync_domain::BILLING_AUDIENCE.into()],
            tenant_id: Some("acme-prod-001".into()),
            client_id: Some("app-acme".into()),
            iat: Some(now.timestamp()),
            exp: Some(now.timestamp() + 900),
            ..Default::default()
        };
        let (tenant, app) = (TenantId::parse("acme-prod-001").unwrap(), ApplicationId::parse("app-acme").unwrap());
        let headers =
            BillingPolicy::default().authorize(AccessToken::new("t0ken"), claims, &tenant, &app, now).unwrap();
        let json = serde_json::json!({"event_id": "e1", "device_id": "d", "meter": "m", "quantity": "1",
            "unit": "kWh", "occurred_at": now.to_rfc3339()});
        let body = BatchBody::new(&[BillingEvent::parse(&json.to_string(), now).unwrap().encode()]);
        let api = HttpBillingApi::new("https://iot.example.com", &HttpSettings::default()).unwrap();

        let request = api.request(&headers, &body).build().unwrap();
        let value = &request.headers()[AUTHORIZATION];
        assert_eq!(value.to_str().unwrap(), "Bearer t0ken");
        assert!(value.is_sensitive(), "tooling that prints headers would show the token");
    }
}
