//! The transport against a real HTTP server that records what it received.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test, bench and example code: a panic is a failure
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use billsync_domain::{
    AccessToken, AccessTokenClaims, ApplicationId, BatchBody, BillingApi, BillingPolicy, BillingResponse, EncodedEvent,
    EventId, RateLimitStatus, TenantId, TransportError,
};
use billsync_http::HttpSettings;
use billsync_transport::HttpBillingApi;

type Seen = Arc<Mutex<Vec<HeaderMap>>>;

async fn serve(
    status: StatusCode,
    extra: &'static [(&'static str, &'static str)],
    body: &'static str,
) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let app = Router::new().route(
        "/iot/api/v2/billing/events",
        post(move |headers: HeaderMap, _body: String| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push(headers);
                let mut h = axum::http::HeaderMap::new();
                for (k, v) in extra {
                    h.insert(*k, v.parse().unwrap());
                }
                (status, h, body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

fn headers() -> billsync_domain::BillingRequestHeaders {
    let now = chrono::Utc::now();
    let claims = AccessTokenClaims {
        scope: vec![billsync_domain::BILLING_WRITE_SCOPE.into()],
        aud: vec![billsync_domain::BILLING_AUDIENCE.into()],
        tenant_id: Some("tenant-a".into()),
        client_id: Some("app-a".into()),
        iat: Some(now.timestamp()),
        exp: Some(now.timestamp() + 900),
        ..Default::default()
    };
    BillingPolicy::default()
        .authorize(
            AccessToken::new("tok-123"),
            claims,
            &TenantId::parse("tenant-a").unwrap(),
            &ApplicationId::parse("app-a").unwrap(),
            now,
        )
        .unwrap()
}

fn body() -> BatchBody {
    BatchBody::new(&[EncodedEvent::from_stored(EventId::parse("e1").unwrap(), "{\"event_id\":\"e1\"}".into())])
}

#[tokio::test]
async fn sends_all_four_headers_and_the_idempotency_key() {
    let (url, seen) = serve(
        StatusCode::ACCEPTED,
        &[("x-ratelimit-limit", "100"), ("x-ratelimit-remaining", "99"), ("x-ratelimit-reset", "60")],
        r#"{"accepted": 1, "duplicates": [], "rejected": []}"#,
    )
    .await;
    let api = HttpBillingApi::new(&url, &HttpSettings::default()).unwrap();

    let reply = api.post_events(&headers(), &body()).await.unwrap();

    assert!(matches!(reply.response, BillingResponse::Accepted(ref r) if r.accepted == 1));
    assert_eq!(
        reply.rate_limit,
        Some(RateLimitStatus { limit: 100, remaining: 99, reset: std::time::Duration::from_secs(60) })
    );
    let h = &seen.lock().unwrap()[0];
    assert_eq!(h["authorization"], "Bearer tok-123");
    assert_eq!(h["x-tenant-id"], "tenant-a");
    assert_eq!(h["x-application-id"], "app-a");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["idempotency-key"], body().idempotency_key());
}

#[tokio::test]
async fn a_401_challenge_is_classified() {
    let (url, _) = serve(
        StatusCode::UNAUTHORIZED,
        &[(
            "www-authenticate",
            r#"Bearer realm="iot", error="insufficient_claims", error_description="tenant_id claim does not match X-Tenant-ID", scope="urn:oracle:iot:billing:write""#,
        )],
        r#"{"error":"insufficient_claims","error_description":"insufficient claims"}"#,
    )
    .await;
    let api = HttpBillingApi::new(&url, &HttpSettings::default()).unwrap();
    let reply = api.post_events(&headers(), &body()).await.unwrap();
    assert_eq!(
        reply.response,
        BillingResponse::InsufficientClaims {
            description: Some("tenant_id claim does not match X-Tenant-ID".into()),
            scope: Some("urn:oracle:iot:billing:write".into()),
        }
    );
}

#[tokio::test]
async fn no_server_is_a_connection_error_that_does_not_leak_the_token() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let api = HttpBillingApi::new(&url, &HttpSettings::default()).unwrap();
    let err = api.post_events(&headers(), &body()).await.unwrap_err();
    assert!(matches!(err, TransportError::Connection(_)), "{err:?}");
    assert!(!err.to_string().contains("tok-123"));
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_names_its_target() {
    // The target answers a receipt to anything; following the redirect would settle the batch.
    let gets = Arc::new(Mutex::new(0u32));
    let g = gets.clone();
    let app = Router::new()
        .route("/iot/api/v2/billing/events", post(|| async { (StatusCode::FOUND, [("location", "/elsewhere")], "") }))
        .route(
            "/elsewhere",
            axum::routing::any(move || {
                let g = g.clone();
                async move {
                    *g.lock().unwrap() += 1;
                    (StatusCode::ACCEPTED, r#"{"accepted": 1, "duplicates": [], "rejected": []}"#)
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let api = HttpBillingApi::new(&url, &HttpSettings::default()).unwrap();

    let reply = api.post_events(&headers(), &body()).await.unwrap();

    assert_eq!(
        reply.response,
        BillingResponse::Unexpected {
            status: 302,
            detail: "a redirect to /elsewhere; redirects are not followed".into()
        }
    );
    assert_eq!(*gets.lock().unwrap(), 0, "the redirect was followed");
}

#[tokio::test]
async fn a_body_over_one_mebibyte_is_not_read_and_settles_nothing() {
    let padded: &'static str = Box::leak(
        format!(r#"{{"accepted": 1, "duplicates": [], "rejected": [], "pad": "{}"}}"#, "x".repeat(1 << 20))
            .into_boxed_str(),
    );
    let (url, _) = serve(StatusCode::ACCEPTED, &[], padded).await;
    let api = HttpBillingApi::new(&url, &HttpSettings::default()).unwrap();
    let reply = api.post_events(&headers(), &body()).await.unwrap();
    assert!(
        matches!(reply.response, BillingResponse::Unexpected { status: 202, ref detail } if detail.contains("longer than 1048576")),
        "{:?}",
        reply.response
    );
}
