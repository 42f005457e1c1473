//! The token cache: single flight, proactive refresh, failed refreshes, invalidation, the
//! policy preflight and clock skew.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use billsync_auth::TokenCache;
use billsync_domain::ports::MockClock;
use billsync_domain::{RefreshPolicy, TokenError, TokenSource, ViolationCode};
use serde_json::json;

use crate::helpers::*;

async fn sleep_until(t: chrono::DateTime<chrono::Utc>) {
    let d = (t - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_callers_on_an_empty_then_expired_cache_cause_one_request_each_time() {
    // Arrange: a slow endpoint, so that all callers arrive while the first fetch is in flight.
    // 3 s tokens: `iat` has whole seconds, so a token can arrive with up to 1 s less than its
    // lifetime, and a token with under 1 s left is refused as `expires_too_soon`.
    let stub = Stub::start(Reply::Token(TokenSpec::good().lifetime(3))).await;
    stub.set_delay(Duration::from_millis(200));
    let cache = Arc::new(TokenCache::new(config(&stub), [auth()]).unwrap());
    let burst = |cache: Arc<TokenCache>| async move {
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let c = cache.clone();
                tokio::spawn(async move { c.headers(&tenant()).await })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap().unwrap());
        }
        out
    };

    // Act + Assert: empty cache.
    let first = burst(cache.clone()).await;
    assert_eq!(stub.token_requests(), 1);
    assert!(first.iter().all(|h| h.same_token(&first[0])));

    // Act + Assert: after the token expired.
    sleep_until(first[0].expires_at() + chrono::Duration::milliseconds(100)).await;
    let second = burst(cache.clone()).await;
    assert_eq!(stub.token_requests(), 2);
    assert!(second.iter().all(|h| h.same_token(&second[0])));
    assert!(!second[0].same_token(&first[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_one_failure_instead_of_each_retrying() {
    let stub = Stub::start(Reply::status(401, r#"{"error":"invalid_client"}"#)).await;
    stub.set_delay(Duration::from_millis(200));
    let cache = Arc::new(TokenCache::new(config(&stub), [auth()]).unwrap());
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let c = cache.clone();
            tokio::spawn(async move { c.headers(&tenant()).await })
        })
        .collect();
    for t in tasks {
        assert!(matches!(t.await.unwrap(), Err(TokenError::Refused { .. })));
    }
    assert_eq!(stub.token_requests(), 1);
}

#[tokio::test]
async fn tokens_are_refreshed_at_eighty_percent_and_never_served_past_their_refresh_point() {
    // Arrange: 4 s tokens, refreshed after 3.2 s.
    let lifetime = 4;
    let run_for = Duration::from_secs(9);
    let stub = Stub::start(Reply::Token(TokenSpec::good().lifetime(lifetime))).await;
    let cache = TokenCache::new(config(&stub), [auth()]).unwrap();
    let refresh = RefreshPolicy::default();

    // Act: a caller every 50 ms.
    let start = Instant::now();
    let mut distinct = 0;
    let mut last: Option<billsync_domain::BillingRequestHeaders> = None;
    while start.elapsed() < run_for {
        let h = cache.headers(&tenant()).await.unwrap();
        let now = chrono::Utc::now();
        // Assert: never past the refresh point (50 ms for the time between check and return).
        let refresh_at = refresh.refresh_at(h.issued_at(), h.expires_at());
        assert!(
            now <= refresh_at + chrono::Duration::milliseconds(50),
            "served at {now}, refresh was due at {refresh_at}"
        );
        if !last.as_ref().is_some_and(|l| l.same_token(&h)) {
            distinct += 1;
        }
        last = Some(h);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Assert: about run_for / (0.8 × lifetime) requests.
    let expected = (run_for.as_secs_f64() / (0.8 * lifetime as f64)).ceil() as usize;
    let got = stub.token_requests();
    assert!(got.abs_diff(expected) <= 1, "{got} token requests, expected {expected} ± 1");
    assert_eq!(distinct, got);
}

#[tokio::test]
async fn a_failed_early_refresh_keeps_serving_the_still_valid_token_until_it_expires() {
    // Arrange: one good 8 s token (refresh after 6.4 s, usable until 1 s before expiry), then
    // the endpoint fails.
    let stub = Stub::start(Reply::Token(TokenSpec::good().lifetime(8))).await;
    let cache = TokenCache::new(config(&stub), [auth()]).unwrap();
    let first = cache.headers(&tenant()).await.unwrap();
    stub.set_default(Reply::status(503, ""));

    // Act: past the refresh point, before expiry.
    sleep_until(
        RefreshPolicy::default().refresh_at(first.issued_at(), first.expires_at())
            + chrono::Duration::milliseconds(100),
    )
    .await;
    let during = cache.headers(&tenant()).await;

    // Assert: the old token, and the failed refresh (3 attempts) is not an error.
    assert!(during.as_ref().is_ok_and(|h| h.same_token(&first)), "{during:?}");
    assert_eq!(stub.token_requests(), 1 + 3);
    // Backing off: the next call does not hammer the endpoint.
    let again = cache.headers(&tenant()).await.unwrap();
    assert!(again.same_token(&first));
    assert_eq!(stub.token_requests(), 4);

    // Once it has expired, the failure is the caller's.
    sleep_until(first.expires_at() + chrono::Duration::milliseconds(50)).await;
    let after = cache.headers(&tenant()).await;
    assert!(matches!(&after, Err(TokenError::Unavailable(_))), "{after:?}");

    // And the endpoint coming back heals it.
    stub.set_default(Reply::good());
    let healed = cache.headers(&tenant()).await.unwrap();
    assert!(!healed.same_token(&first));
}

#[tokio::test]
async fn invalidate_drops_exactly_the_refused_token() {
    let stub = Stub::start(Reply::good()).await;
    let cache = TokenCache::new(config(&stub), [auth()]).unwrap();
    let h1 = cache.headers(&tenant()).await.unwrap();
    assert!(cache.headers(&tenant()).await.unwrap().same_token(&h1));
    assert_eq!(stub.token_requests(), 1);

    cache.invalidate(&tenant(), &h1).await;
    let h2 = cache.headers(&tenant()).await.unwrap();
    assert_eq!(stub.token_requests(), 2);
    assert!(!h2.same_token(&h1));

    // A stale refusal of h1 does not drop h2.
    cache.invalidate(&tenant(), &h1).await;
    assert!(cache.headers(&tenant()).await.unwrap().same_token(&h2));
    assert_eq!(stub.token_requests(), 2);
}

#[tokio::test]
async fn the_threads_telemetry_only_token_is_refused_before_anything_is_sent() {
    let stub = Stub::start(Reply::Token(TokenSpec::telemetry_only())).await;
    let cache = TokenCache::new(config(&stub), [auth()]).unwrap();
    let e = cache.headers(&tenant()).await.unwrap_err();
    match &e {
        TokenError::Policy(v) => assert_eq!(v.codes(), [ViolationCode::MissingScope, ViolationCode::AudienceMissing]),
        other => panic!("expected a policy error, got {other:?}"),
    }
    assert!(!e.is_transient());
}

#[tokio::test]
async fn tenant_and_application_mismatches_are_policy_errors() {
    let stub =
        Stub::start(Reply::Token(TokenSpec::good().claims(json!({"tenant_id": "tenant-b", "client_id": "app-b"}))))
            .await;
    let cache = TokenCache::new(config(&stub), [auth()]).unwrap();
    match cache.headers(&tenant()).await {
        Err(TokenError::Policy(v)) => {
            assert_eq!(v.codes(), [ViolationCode::TenantMismatch, ViolationCode::ApplicationMismatch])
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn opaque_tokens_are_checked_on_the_response_scope_and_expires_in() {
    let mut spec = TokenSpec::good();
    spec.opaque = true;
    let stub = Stub::start(Reply::Token(spec.clone())).await;
    let cache = TokenCache::new(config(&stub), [auth()]).unwrap();
    let h = cache.headers(&tenant()).await.unwrap();
    assert_eq!((h.expires_at() - h.issued_at()).num_seconds(), 900);
    assert_eq!(h.claims().tenant_id.as_deref(), Some("tenant-a"));

    let mut telemetry = TokenSpec::telemetry_only();
    telemetry.opaque = true;
    let stub = Stub::start(Reply::Token(telemetry)).await;
    let cache = TokenCache::new(config(&stub), [auth()]).unwrap();
    match cache.headers(&tenant()).await {
        Err(TokenError::Policy(v)) => assert_eq!(v.codes(), [ViolationCode::MissingScope]),
        other => panic!("{other:?}"),
    }
}

async fn skewed(offset_s: i64) {
    // Arrange: a server clock far off ours, 4 s tokens.
    let stub = Stub::start(Reply::Token(TokenSpec::good().lifetime(4))).await;
    stub.set_clock_offset(offset_s);
    let cache = TokenCache::new(config(&stub), [auth()]).unwrap();

    // Act: a caller every 50 ms for 6 s.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        let h = cache.headers(&tenant()).await;
        // Assert: every call gets a token that is valid on the server's clock.
        let h = h.unwrap_or_else(|e| panic!("offset {offset_s}: {e}"));
        let server_now = chrono::Utc::now() + chrono::Duration::seconds(offset_s);
        assert!(server_now < h.expires_at(), "offset {offset_s}: served a token expired on the server's clock");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!((2..=3).contains(&stub.token_requests()), "offset {offset_s}: {} requests", stub.token_requests());
    let skew = cache.client().last_clock_skew().unwrap();
    assert!((skew.num_seconds() - offset_s).abs() <= 1, "measured {skew}");
}

#[tokio::test]
async fn a_server_clock_five_minutes_ahead_still_refreshes_before_expiry() {
    skewed(300).await;
}

#[tokio::test]
async fn a_server_clock_five_minutes_behind_does_not_refuse_valid_tokens() {
    skewed(-300).await;
}

#[tokio::test]
async fn a_mocked_clock_drives_the_refresh_of_a_fifteen_minute_token() {
    // Arrange: our clock = real time + a settable offset.
    let offset = Arc::new(AtomicI64::new(0));
    let mut clock = MockClock::new();
    let o = offset.clone();
    clock.expect_now().returning(move || chrono::Utc::now() + chrono::Duration::seconds(o.load(Ordering::SeqCst)));
    let stub = Stub::start(Reply::good()).await;
    let cache = TokenCache::with_clock(config(&stub), [auth()], Arc::new(clock)).unwrap();

    // Act + Assert
    let h1 = cache.headers(&tenant()).await.unwrap();
    offset.store(11 * 60, Ordering::SeqCst);
    assert!(cache.headers(&tenant()).await.unwrap().same_token(&h1), "11 min: still before the 12 min refresh");
    assert_eq!(stub.token_requests(), 1);
    offset.store(12 * 60 + 5, Ordering::SeqCst);
    let h2 = cache.headers(&tenant()).await.unwrap();
    assert!(!h2.same_token(&h1), "12 min: refreshed");
    assert_eq!(stub.token_requests(), 2);
}
