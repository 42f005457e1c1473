//! The billing transport: a [`BillingApi`] and a [`BillingReader`] over reqwest (rustls). It
//! sends exactly the headers docs/platform.md section 3 requires, taken from a
//! [`BillingRequestHeaders`] (which only exists for a token that passed the billing policy), and
//! classifies every HTTP answer with the domain's [`classify`]. Only a missing answer is an error.
//!
//! - [`BillingApi::post_events`] posts a batch to `POST {base_url}/iot/api/v2/billing/events`.
//! - [`BillingReader::list_events`] reads a page of what the platform holds, for reconciliation,
//!   from `GET {base_url}/iot/api/v2/billing/events?since=..&after=..&limit=..` (a token with the
//!   billing read scope). A `200` whose body is the listing becomes a [`HeldPage`]; a `200` that
//!   is not one (not JSON, another tenant, an event without a [`Fact`], out of `seq` order) is
//!   [`BillingResponse::Unexpected`] naming what is wrong.
//!
//! It never follows a redirect (a redirect is no answer from the billing API, and following it
//! would turn the POST into a GET somewhere else), and it reads at most [`MAX_RESPONSE_BODY`] of
//! a body, or [`MAX_LISTING_BODY`] of a listing: past that, the answer is unexpected.
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
    BatchBody, BillingApi, BillingReader, BillingReply, BillingRequestHeaders, BillingResponse, Fact, HeldEvent,
    HeldPage, HttpAnswer, ListAnswer, ListReply, MAX_RESPONSE_BODY, RateLimitStatus, TenantId, TransportError,
    classify, excerpt,
};
use billsync_http::{HttpSettings, HttpSetupError};
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::header::{CONTENT_TYPE, HeaderMap, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE};
use serde_json::Value;

/// The path of the billing events endpoint below the platform's base URL.
pub const BILLING_EVENTS_PATH: &str = "/iot/api/v2/billing/events";

/// The most of a `200` listing body read: 16 MiB. A page holds up to 1000 events, so it may be
/// far longer than a POST's answer ([`MAX_RESPONSE_BODY`]); a typical event is listed in about
/// 300 bytes (a full page: about 300 KiB), so 16 MiB leaves room for events averaging 16 KiB
/// (long attributes) while bounding what a hostile or broken peer can make billsync hold. A
/// longer listing is [`BillingResponse::Unexpected`] (ask for a smaller `limit`). Other answers
/// are read up to [`MAX_RESPONSE_BODY`], as the POST's are.
pub const MAX_LISTING_BODY: usize = 16 << 20;

/// Posts billing batches, and reads back what the platform holds, over HTTPS (or HTTP on
/// loopback, which the configuration enforces).
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

    /// The full URL batches are posted to and listed from.
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

/// An HTTP answer as read off the wire: its status, headers and body, capped.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
    body_truncated: bool,
}

impl Answer {
    /// Sends `request` and reads the answer's body up to `cap(status)` bytes. A body that breaks
    /// off (a POST's connection dropped after the platform stored the events) is no answer at
    /// all: retry, and let the platform's deduplication absorb it.
    async fn read(request: reqwest::RequestBuilder, cap: impl Fn(u16) -> usize) -> Result<Self, TransportError> {
        let mut response = request.send().await.map_err(|e| describe(&e))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let cap = cap(status);
        let mut body = Vec::new();
        let mut body_truncated = false;
        while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
            if body.len() + chunk.len() > cap {
                body_truncated = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Self { status, headers, body, body_truncated })
    }

    /// What [`classify`] reads.
    fn http(&self) -> HttpAnswer<'_> {
        HttpAnswer {
            status: self.status,
            www_authenticate: header(&self.headers, WWW_AUTHENTICATE),
            retry_after: header(&self.headers, RETRY_AFTER),
            location: header(&self.headers, LOCATION),
            body: &self.body,
            body_truncated: self.body_truncated,
        }
    }

    /// The `X-RateLimit-*` headers.
    fn rate_limit(&self) -> Option<RateLimitStatus> {
        RateLimitStatus::from_headers(
            header(&self.headers, "x-ratelimit-limit"),
            header(&self.headers, "x-ratelimit-remaining"),
            header(&self.headers, "x-ratelimit-reset"),
        )
    }
}

impl HttpBillingApi {
    /// `Authorization`, `X-Tenant-ID` and `X-Application-ID` from `headers`; the `Authorization`
    /// value is marked sensitive (`bearer_auth` does), so HTTP tooling never prints it and
    /// HTTP/2 never indexes it.
    fn billing(request: reqwest::RequestBuilder, headers: &BillingRequestHeaders) -> reqwest::RequestBuilder {
        request
            .bearer_auth(headers.bearer_token())
            .header("X-Tenant-ID", headers.tenant_id().as_str())
            .header("X-Application-ID", headers.application_id().as_str())
    }

    /// The POST of one batch with its four headers and its `Idempotency-Key`.
    fn request(&self, headers: &BillingRequestHeaders, body: &BatchBody) -> reqwest::RequestBuilder {
        Self::billing(self.client.post(&self.endpoint), headers)
            .header(CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", body.idempotency_key())
            .body(body.as_str().to_owned())
    }

    /// The GET of one page of the listing: the billing headers (no body, so no `Content-Type`)
    /// and `since` in RFC 3339 UTC (`Z`, with its fraction of a second when it has one).
    fn list_request(
        &self,
        headers: &BillingRequestHeaders,
        since: DateTime<Utc>,
        after: u64,
        limit: u32,
    ) -> reqwest::RequestBuilder {
        let since = since.to_rfc3339_opts(SecondsFormat::AutoSi, true);
        Self::billing(self.client.get(&self.endpoint), headers).query(&[
            ("since", since),
            ("after", after.to_string()),
            ("limit", limit.to_string()),
        ])
    }
}

#[async_trait]
impl BillingApi for HttpBillingApi {
    async fn post_events(
        &self,
        headers: &BillingRequestHeaders,
        body: &BatchBody,
    ) -> Result<BillingReply, TransportError> {
        let answer = Answer::read(self.request(headers, body), |_| MAX_RESPONSE_BODY).await?;
        let reply = BillingReply { response: classify(&answer.http(), Utc::now()), rate_limit: answer.rate_limit() };
        tracing::debug!(status = answer.status, events = body.events(), tenant = %headers.tenant_id(), "billing request answered");
        Ok(reply)
    }
}

#[async_trait]
impl BillingReader for HttpBillingApi {
    /// A `200` is read up to [`MAX_LISTING_BODY`] and must be the listing of the requested
    /// tenant, in `seq` order after `after`, every event giving a [`Fact`]; any other answer
    /// is read up to [`MAX_RESPONSE_BODY`] and classified as a POST's answer is (a `202`
    /// receipt, which no listing should get, is unexpected).
    async fn list_events(
        &self,
        headers: &BillingRequestHeaders,
        since: DateTime<Utc>,
        after: u64,
        limit: u32,
    ) -> Result<ListReply, TransportError> {
        let request = self.list_request(headers, since, after, limit);
        let answer = Answer::read(request, |s| if s == 200 { MAX_LISTING_BODY } else { MAX_RESPONSE_BODY }).await?;
        let meaning = if answer.status == 200 { page(&answer, headers.tenant_id(), after) } else { refused(&answer) };
        tracing::debug!(status = answer.status, after, limit, tenant = %headers.tenant_id(), "billing listing answered");
        Ok(ListReply { answer: meaning, rate_limit: answer.rate_limit() })
    }
}

/// A `200`: the page, or [`BillingResponse::Unexpected`] naming what keeps it from being one.
fn page(answer: &Answer, tenant: &TenantId, after: u64) -> ListAnswer {
    let page = if answer.body_truncated {
        Err(format!(
            "the listing is longer than {MAX_LISTING_BODY} bytes; it was not read (ask for fewer events per page)"
        ))
    } else {
        listing(&answer.body, tenant, after)
    };
    page.map_or_else(
        |detail| ListAnswer::Refused(BillingResponse::Unexpected { status: 200, detail }),
        ListAnswer::Page,
    )
}

/// Any other answer, classified as a POST's answer is; a `202` receipt, which no listing
/// should get, is unexpected.
fn refused(answer: &Answer) -> ListAnswer {
    ListAnswer::Refused(match classify(&answer.http(), Utc::now()) {
        BillingResponse::Accepted(_) => BillingResponse::Unexpected {
            status: answer.status,
            detail: format!("a receipt, not a listing: {}", excerpt(&answer.body)),
        },
        refused => refused,
    })
}

/// A `200` body as a page, or what is wrong with it (safe to show: body text goes through
/// [`excerpt`]).
fn listing(body: &[u8], tenant: &TenantId, after: u64) -> Result<HeldPage, String> {
    let v: Value = serde_json::from_slice(body).map_err(|_| format!("not a JSON listing: {}", excerpt(body)))?;
    let field = |name: &str, kind: &str| format!("the listing's {name} is missing or not {kind}");
    let listed = v.get("tenant_id").and_then(Value::as_str).ok_or_else(|| field("tenant_id", "a string"))?;
    if listed != tenant.as_str() {
        return Err(format!("the listing is for tenant {}, not {tenant}", excerpt(listed.as_bytes())));
    }
    let entries = v.get("events").and_then(Value::as_array).ok_or_else(|| field("events", "an array"))?;
    let has_more = v.get("has_more").and_then(Value::as_bool).ok_or_else(|| field("has_more", "a boolean"))?;
    if has_more && entries.is_empty() {
        return Err("the listing has no events but has_more: paging would not advance".into());
    }
    let mut events = Vec::with_capacity(entries.len());
    let mut previous = after;
    for (i, entry) in entries.iter().enumerate() {
        let held = held(entry, previous).map_err(|what| format!("events[{i}]{what}"))?;
        previous = held.seq;
        events.push(held);
    }
    Ok(HeldPage { events, has_more })
}

/// One listed event; its `seq` must follow `previous`. The error starts with the event's
/// `seq` and id when it has them, then names the field.
fn held(entry: &Value, previous: u64) -> Result<HeldEvent, String> {
    let seq = entry.get("seq").and_then(Value::as_u64).ok_or(": seq is missing or not a whole number")?;
    let id = entry.get("event_id").and_then(Value::as_str);
    let who =
        id.map_or_else(|| format!(" (seq {seq})"), |id| format!(" (seq {seq}, event {})", excerpt(id.as_bytes())));
    let wrong = |what: String| format!("{who}: {what}");
    if seq <= previous {
        return Err(wrong(format!("seq does not follow {previous}: the listing is not in seq order after the cursor")));
    }
    let id = id.ok_or_else(|| wrong("event_id is missing or not a string".into()))?;
    let received_at = entry
        .get("received_at")
        .and_then(Value::as_str)
        .ok_or_else(|| wrong("received_at is missing or not a string".into()))
        .and_then(|t| DateTime::parse_from_rfc3339(t).map_err(|e| wrong(format!("received_at is not RFC 3339: {e}"))))?
        .with_timezone(&Utc);
    let event = entry
        .get("event")
        .filter(|e| e.is_object())
        .ok_or_else(|| wrong("event is missing or not an object".into()))?;
    let fact = Fact::from_event_json(event)
        .map_err(|e| wrong(format!("event.{}: {}", e.field, excerpt(e.reason.as_bytes()))))?;
    if fact.event_id.as_str() != id {
        return Err(wrong(format!(
            "event.event_id is {}, not the listed event_id",
            excerpt(fact.event_id.as_str().as_bytes())
        )));
    }
    Ok(HeldEvent { seq, received_at, fact })
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

        let post = api.request(&headers, &body).build().unwrap();
        let since = chrono::DateTime::parse_from_rfc3339("2026-11-23T10:15:00+01:00").unwrap().to_utc();
        let get = api.list_request(&headers, since, 0, 100).build().unwrap();
        for request in [post, get] {
            let value = &request.headers()[AUTHORIZATION];
            assert_eq!(value.to_str().unwrap(), "Bearer t0ken");
            assert!(value.is_sensitive(), "tooling that prints headers would show the token: {}", request.method());
        }
    }
}
