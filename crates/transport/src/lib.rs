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
//! use std::time::Duration;
//! use billsync_transport::{HttpBillingApi, TransportOptions};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let api = HttpBillingApi::new("https://iot.example.com", TransportOptions::default())?;
//! assert_eq!(api.endpoint(), "https://iot.example.com/iot/api/v2/billing/events");
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use billsync_domain::{
    BatchBody, BillingApi, BillingReply, BillingRequestHeaders, HttpAnswer, MAX_RESPONSE_BODY, RateLimitStatus,
    TransportError, classify,
};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE};

/// The path of the billing events endpoint below the platform's base URL.
pub const BILLING_EVENTS_PATH: &str = "/iot/api/v2/billing/events";

/// How to reach the platform.
#[derive(Debug, Clone)]
pub struct TransportOptions {
    /// Per-request timeout (default 30 s).
    pub timeout: Duration,
    /// Connect timeout (default 10 s).
    pub connect_timeout: Duration,
    /// An extra PEM CA bundle to trust besides the system roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for TransportOptions {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(30), connect_timeout: Duration::from_secs(10), ca_file: None }
    }
}

/// Why the transport could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TransportSetupError {
    /// The CA file could not be read or parsed.
    #[error("ca_file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// reqwest could not build a client.
    #[error("could not build the HTTP client: {0}")]
    Client(String),
}

/// Posts billing batches over HTTPS (or HTTP on loopback, which the configuration enforces).
#[derive(Debug, Clone)]
pub struct HttpBillingApi {
    client: reqwest::Client,
    endpoint: String,
}

impl HttpBillingApi {
    /// A transport for the platform at `base_url`.
    ///
    /// # Errors
    /// [`TransportSetupError`] when the CA file is unreadable or the client cannot be built.
    pub fn new(base_url: &str, options: TransportOptions) -> Result<Self, TransportSetupError> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(options.timeout)
            .connect_timeout(options.connect_timeout)
            .pool_max_idle_per_host(16)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("billsync/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &options.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| TransportSetupError::CaFile { path: path.clone(), reason: e.to_string() })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| TransportSetupError::CaFile { path: path.clone(), reason: e.to_string() })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(|e| TransportSetupError::Client(e.to_string()))?;
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
    // The error chain names the cause (refused, reset, TLS) and never the request headers.
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    TransportError::Connection(msg)
}

#[async_trait]
impl BillingApi for HttpBillingApi {
    async fn post_events(
        &self,
        headers: &BillingRequestHeaders,
        body: &BatchBody,
    ) -> Result<BillingReply, TransportError> {
        let mut response = self
            .client
            .post(&self.endpoint)
            .header(AUTHORIZATION, format!("Bearer {}", headers.bearer_token()))
            .header("X-Tenant-ID", headers.tenant_id().as_str())
            .header("X-Application-ID", headers.application_id().as_str())
            .header(CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", body.idempotency_key())
            .body(body.as_str().to_owned())
            .send()
            .await
            .map_err(|e| describe(&e))?;
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
