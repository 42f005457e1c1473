//! The listing read (`GET .../billing/events`, docs/platform.md section 3) against a local stub
//! that records each request and answers as each test scripts it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test, bench and example code: a panic is a failure
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::RawQuery;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use billsync_domain::{
    AccessToken, AccessTokenClaims, ApplicationId, BillingPolicy, BillingReader, BillingRequestHeaders,
    BillingResponse, HeldPage, ListAnswer, ListReply, RateLimitStatus, Scope, TenantId, TransportError,
};
use billsync_http::HttpSettings;
use billsync_transport::{HttpBillingApi, MAX_LISTING_BODY};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// Each request: its raw query and its headers.
type Seen = Arc<Mutex<Vec<(String, HeaderMap)>>>;
/// Headers an answer adds to the rate-limit headers.
type Extra = Vec<(&'static str, String)>;

/// Serves `GET /iot/api/v2/billing/events` with `answer(query)` (status, extra headers, body);
/// every answer carries `X-RateLimit-*` headers, `remaining` counting down from 99.
async fn stub<F>(answer: F) -> (HttpBillingApi, Seen)
where
    F: Fn(&str) -> (StatusCode, Extra, String) + Clone + Send + Sync + 'static,
{
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let handler = move |RawQuery(q): RawQuery, headers: HeaderMap| {
        let (s, answer) = (s.clone(), answer.clone());
        async move {
            let q = q.unwrap_or_default();
            let remaining = {
                let mut s = s.lock().unwrap();
                s.push((q.clone(), headers));
                100 - s.len()
            };
            let (status, extra, body) = answer(&q);
            let mut h = HeaderMap::new();
            h.insert("x-ratelimit-limit", "100".parse().unwrap());
            h.insert("x-ratelimit-remaining", remaining.to_string().parse().unwrap());
            h.insert("x-ratelimit-reset", "42".parse().unwrap());
            for (k, v) in extra {
                h.insert(k, v.parse().unwrap());
            }
            (status, h, body).into_response()
        }
    };
    let app: Router = Router::new().route("/iot/api/v2/billing/events", get(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (HttpBillingApi::new(&url, &HttpSettings::default()).unwrap(), seen)
}

/// Headers for a token with the billing read scope.
fn read_headers() -> BillingRequestHeaders {
    let now = Utc::now();
    let claims = AccessTokenClaims {
        scope: vec![billsync_domain::BILLING_READ_SCOPE.into()],
        aud: vec![billsync_domain::BILLING_AUDIENCE.into()],
        tenant_id: Some("tenant-a".into()),
        client_id: Some("app-a".into()),
        iat: Some(now.timestamp()),
        exp: Some(now.timestamp() + 900),
        ..Default::default()
    };
    BillingPolicy::default()
        .with_scope(Scope::billing_read())
        .authorize(
            AccessToken::new("read-tok-456"),
            claims,
            &TenantId::parse("tenant-a").unwrap(),
            &ApplicationId::parse("app-a").unwrap(),
            now,
        )
        .unwrap()
}

fn at(t: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(t).unwrap().to_utc()
}

/// One listed event, as the platform shows it.
fn entry(seq: u64, id: &str, quantity: &str) -> Value {
    json!({"seq": seq, "event_id": id, "received_at": format!("2026-11-23T10:00:0{seq}.123456Z"),
        "event": {"event_id": id, "device_id": "meter-1", "meter": "energy", "quantity": quantity,
            "unit": "kWh", "occurred_at": "2026-11-23T10:15:00+01:00", "attributes": {"site": "north"}}})
}

fn ok(listing: &Value) -> (StatusCode, Extra, String) {
    (StatusCode::OK, vec![], listing.to_string())
}

fn since() -> DateTime<Utc> {
    at("2026-11-22T23:55:00Z")
}

fn unexpected(reply: &ListReply) -> &str {
    match &reply.answer {
        ListAnswer::Refused(BillingResponse::Unexpected { status: 200, detail }) => detail,
        other => panic!("expected an unexpected 200, got {other:?}"),
    }
}

#[tokio::test]
async fn a_listing_sends_the_billing_headers_and_the_query() {
    let (api, seen) = stub(|_| ok(&json!({"tenant_id": "tenant-a", "events": [], "has_more": false}))).await;

    // `since` is sent in UTC with `Z`, keeping a fraction of a second when it has one.
    api.list_events(&read_headers(), at("2026-11-23T10:15:00.25+01:00"), 17, 1000).await.unwrap();
    let reply = api.list_events(&read_headers(), since(), 0, 100).await.unwrap();

    assert_eq!(reply.answer, ListAnswer::Page(HeldPage { events: vec![], has_more: false }));
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].0, "since=2026-11-23T09%3A15%3A00.250Z&after=17&limit=1000");
    assert_eq!(seen[1].0, "since=2026-11-22T23%3A55%3A00Z&after=0&limit=100");
    let h = &seen[0].1;
    assert_eq!(h["authorization"], "Bearer read-tok-456");
    assert_eq!(h["x-tenant-id"], "tenant-a");
    assert_eq!(h["x-application-id"], "app-a");
    assert!(h.get("content-type").is_none() && h.get("idempotency-key").is_none(), "a GET has no body: {h:?}");
}

#[tokio::test]
async fn a_two_page_listing_is_read_with_seq_received_at_facts_and_the_rate_limit() {
    let (api, seen) = stub(|q| {
        if q.contains("after=0&") {
            ok(&json!({"tenant_id": "tenant-a", "events": [entry(1, "e-1", "1.5"), entry(2, "e-2", "0.000000001")], "has_more": true}))
        } else {
            ok(&json!({"tenant_id": "tenant-a", "events": [entry(3, "e-3", "12")], "has_more": false}))
        }
    })
    .await;

    let (mut after, mut pages) = (0, Vec::new());
    loop {
        let reply = api.list_events(&read_headers(), since(), after, 2).await.unwrap();
        let ListAnswer::Page(page) = reply.answer else { panic!("{:?}", reply.answer) };
        assert_eq!(
            reply.rate_limit,
            Some(RateLimitStatus { limit: 100, remaining: 99 - pages.len() as u32, reset: Duration::from_secs(42) })
        );
        after = page.events.last().map_or(after, |e| e.seq);
        let more = page.has_more;
        pages.push(page);
        if !more {
            break;
        }
    }

    assert_eq!(pages.len(), 2);
    assert!(pages[0].has_more && !pages[1].has_more);
    let events: Vec<_> = pages.iter().flat_map(|p| &p.events).collect();
    let got: Vec<_> = events.iter().map(|e| (e.seq, e.fact.event_id.as_str(), e.fact.quantity.to_string())).collect();
    assert_eq!(
        got,
        [(1, "e-1", "1.500000000".into()), (2, "e-2", "0.000000001".into()), (3, "e-3", "12.000000000".to_owned())]
    );
    assert_eq!(events[1].received_at, at("2026-11-23T10:00:02.123456Z"));
    let fact = &events[2].fact;
    assert_eq!(
        (fact.occurred_at, fact.meter.as_str(), fact.unit.as_str()),
        (at("2026-11-23T09:15:00Z"), "energy", "kWh")
    );
    let queries: Vec<_> = seen.lock().unwrap().iter().map(|(q, _)| q.clone()).collect();
    assert!(queries[0].contains("after=0&limit=2") && queries[1].contains("after=2&limit=2"), "{queries:?}");
}

#[tokio::test]
async fn a_broken_event_in_a_200_is_unexpected_and_names_its_seq_id_and_field() {
    let mut broken = entry(8, "e-8", "0.5");
    broken["event"]["quantity"] = json!(0.5); // a float: the contract's quantities are strings
    let listing = json!({"tenant_id": "tenant-a", "events": [entry(7, "e-7", "1"), broken], "has_more": false});
    let (api, _) = stub(move |_| ok(&listing)).await;

    let reply = api.list_events(&read_headers(), since(), 0, 100).await.unwrap();

    assert_eq!(unexpected(&reply), "events[1] (seq 8, event e-8): event.quantity: missing or not a string");
    assert_eq!(reply.rate_limit.map(|r| r.remaining), Some(99), "the rate limit is read from any answer");
}

#[tokio::test]
async fn a_200_that_is_not_the_listing_says_what_is_wrong_without_echoing_secrets() {
    let good =
        || json!({"tenant_id": "tenant-a", "events": [entry(1, "e-1", "1"), entry(2, "e-2", "2")], "has_more": false});
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = good();
        f(&mut v);
        v.to_string()
    };
    let cases: Vec<(String, &str)> = vec![
        (
            "<html>proxy login, Authorization: Bearer read-tok-456</html>".into(),
            "not a JSON listing: <html>proxy login, Authorization: [redacted] [redacted]</html>",
        ),
        (with(&|v| v["tenant_id"] = json!("tenant-b")), "the listing is for tenant tenant-b, not tenant-a"),
        (with(&|v| v["has_more"] = json!("yes")), "the listing's has_more is missing or not a boolean"),
        (
            with(&|v| {
                v["events"] = json!([]);
                v["has_more"] = json!(true)
            }),
            "the listing has no events but has_more: paging would not advance",
        ),
        (
            with(&|v| v["events"][1]["seq"] = json!(1)),
            "events[1] (seq 1, event e-2): seq does not follow 1: the listing is not in seq order after the cursor",
        ),
        (with(&|v| v["events"][0]["seq"] = json!(-3)), "events[0]: seq is missing or not a whole number"),
        (
            with(&|v| v["events"][0]["received_at"] = json!("yesterday")),
            "events[0] (seq 1, event e-1): received_at is not RFC 3339: premature end of input",
        ),
        (
            with(&|v| v["events"][1]["event"]["event_id"] = json!("e-9")),
            "events[1] (seq 2, event e-2): event.event_id is e-9, not the listed event_id",
        ),
        (
            with(&|v| v["events"][1]["event"]["unit"] = json!(null)),
            "events[1] (seq 2, event e-2): event.unit: missing or not a string",
        ),
    ];
    for (body, want) in cases {
        let b = body.clone();
        let (api, _) = stub(move |_| (StatusCode::OK, vec![], b.clone())).await;
        let reply = api.list_events(&read_headers(), since(), 0, 100).await.unwrap();
        assert_eq!(unexpected(&reply), want, "for {body}");
        assert!(!unexpected(&reply).contains("read-tok-456"));
    }
}

#[tokio::test]
async fn refusals_are_classified_as_for_a_post() {
    let challenge = r#"Bearer realm="iot", error="insufficient_claims", error_description="scope missing", scope="urn:oracle:iot:billing:read""#;
    let cases: Vec<(StatusCode, Extra, &str, BillingResponse)> = vec![
        (
            StatusCode::UNAUTHORIZED,
            vec![("www-authenticate", challenge.into())],
            r#"{"error":"insufficient_claims"}"#,
            BillingResponse::InsufficientClaims {
                description: Some("scope missing".into()),
                scope: Some("urn:oracle:iot:billing:read".into()),
            },
        ),
        (
            StatusCode::UNAUTHORIZED,
            vec![("www-authenticate", r#"Bearer error="invalid_token""#.into())],
            "",
            BillingResponse::InvalidToken,
        ),
        (StatusCode::FORBIDDEN, vec![], r#"{"error":"tenant_not_authorized"}"#, BillingResponse::TenantNotAuthorized),
        (
            StatusCode::TOO_MANY_REQUESTS,
            vec![("retry-after", "7".into())],
            r#"{"error":"rate_limited"}"#,
            BillingResponse::RateLimited { retry_after: Some(Duration::from_secs(7)) },
        ),
        (StatusCode::SERVICE_UNAVAILABLE, vec![], "down", BillingResponse::ServerError { status: 503 }),
        (
            StatusCode::BAD_REQUEST,
            vec![],
            r#"{"error":"invalid_request","error_description":"limit must be 1 to 1000"}"#,
            BillingResponse::InvalidRequest { description: "limit must be 1 to 1000".into() },
        ),
        (
            StatusCode::ACCEPTED,
            vec![],
            r#"{"accepted": 0, "duplicates": [], "rejected": []}"#,
            BillingResponse::Unexpected {
                status: 202,
                detail: r#"a receipt, not a listing: {"accepted": 0, "duplicates": [], "rejected": []}"#.into(),
            },
        ),
    ];
    for (status, extra, body, want) in cases {
        let (api, _) = stub(move |_| (status, extra.clone(), body.to_owned())).await;
        let reply = api.list_events(&read_headers(), since(), 0, 100).await.unwrap();
        assert_eq!(reply.answer, ListAnswer::Refused(want), "for {status}");
        assert_eq!(
            reply.rate_limit,
            Some(RateLimitStatus { limit: 100, remaining: 99, reset: Duration::from_secs(42) }),
            "for {status}"
        );
    }
}

#[tokio::test]
async fn an_oversized_answer_is_unexpected_not_a_panic() {
    // A listing may be far longer than a POST's answer, but not without bound.
    let pad = "x".repeat(MAX_LISTING_BODY);
    let listing = json!({"tenant_id": "tenant-a", "events": [], "has_more": false, "pad": pad}).to_string();
    let (api, _) = stub(move |_| (StatusCode::OK, vec![], listing.clone())).await;
    let reply = api.list_events(&read_headers(), since(), 0, 1000).await.unwrap();
    assert_eq!(
        unexpected(&reply),
        "the listing is longer than 16777216 bytes; it was not read (ask for fewer events per page)"
    );

    // Within the listing's cap, a long listing is read.
    let pad = "x".repeat(2 << 20);
    let listing = json!({"tenant_id": "tenant-a", "events": [entry(1, "e-1", "1")], "has_more": false, "pad": pad});
    let (api, _) = stub(move |_| ok(&listing)).await;
    let reply = api.list_events(&read_headers(), since(), 0, 1000).await.unwrap();
    assert!(matches!(reply.answer, ListAnswer::Page(ref p) if p.events.len() == 1), "{:?}", reply.rate_limit);

    // Any other answer is capped as a POST's is.
    let error = format!(r#"{{"error": "x", "pad": "{}"}}"#, "x".repeat(1 << 20));
    let (api, _) = stub(move |_| (StatusCode::BAD_GATEWAY, vec![], error.clone())).await;
    let reply = api.list_events(&read_headers(), since(), 0, 1000).await.unwrap();
    assert!(
        matches!(reply.answer, ListAnswer::Refused(BillingResponse::Unexpected { status: 502, ref detail }) if detail.contains("longer than 1048576")),
        "{:?}",
        reply.answer
    );
}

#[tokio::test]
async fn no_server_is_a_transport_error_that_does_not_leak_the_token() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let api = HttpBillingApi::new(&url, &HttpSettings::default()).unwrap();
    let err = api.list_events(&read_headers(), since(), 0, 100).await.unwrap_err();
    assert!(matches!(err, TransportError::Connection(_)), "{err:?}");
    assert!(!err.to_string().contains("read-tok-456"));
}
