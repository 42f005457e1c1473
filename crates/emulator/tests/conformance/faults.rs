//! Fault injection: 503, 429, dropped connections after storing, latency; seeded.

use std::time::{Duration, Instant};

use billsync_emulator::{EmulatorConfig, Fault, FaultKind, FaultTarget, Reason};

use crate::helpers::*;

#[tokio::test]
async fn a_dropped_connection_is_a_transport_error_after_the_events_were_stored() {
    // Arrange
    let app = spawn().await;
    let token = app.billing_token(ACME).await;
    let id = fresh_id("drop");
    app.emu.inject(Fault::next(FaultKind::DropConnection, 1));

    // Act
    let sent = app
        .http
        .post(app.emu.billing_url())
        .bearer_auth(&token)
        .header("x-tenant-id", ACME.2)
        .header("x-application-id", ACME.0)
        .json(&batch(&[&id]))
        .send()
        .await;
    let retried = app.post_as(&token, ACME, &batch(&[&id])).await;

    // Assert
    let err = sent.expect_err("a transport error, not a status");
    assert!(err.status().is_none(), "{err:?}");
    assert_eq!(app.emu.stored_event_ids(ACME.2), std::slice::from_ref(&id));
    assert_eq!(retried.json["duplicates"], serde_json::json!([id]));
    assert!(app.emu.audit().iter().any(|e| e.has(Reason::InjectedConnectionDrop)));
}

#[tokio::test]
async fn injected_429_and_latency() {
    // Arrange
    let app = spawn().await;
    let token = app.billing_token(ACME).await;
    app.emu.inject(Fault::next(FaultKind::RateLimited { retry_after_s: 7 }, 1));
    app.emu.inject(Fault::next(FaultKind::Latency { ms: 300 }, 2));

    // Act
    let limited = app.post_as(&token, ACME, &batch(&[&fresh_id("l")])).await;
    let started = Instant::now();
    let slow = app.post_as(&token, ACME, &batch(&[&fresh_id("l")])).await;
    let elapsed = started.elapsed();
    let fast = app.post_as(&token, ACME, &batch(&[&fresh_id("l")])).await;

    // Assert
    assert_eq!((limited.status, limited.header("retry-after")), (429, Some("7")));
    assert_eq!(limited.error(), "rate_limited");
    assert!(limited.header("x-ratelimit-remaining").is_some());
    assert_eq!(slow.status, 202);
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert_eq!(fast.status, 202);
}

#[tokio::test]
async fn faults_can_target_the_token_endpoint() {
    // Arrange
    let app = spawn().await;
    app.emu.inject(Fault::next(FaultKind::Unavailable, 1).on(FaultTarget::Token));
    let form = [("grant_type", "client_credentials"), ("client_id", ACME.0), ("client_secret", ACME.1)];
    // Act
    let first = app.token_request(&form, None).await;
    let second = app.token_request(&form, None).await;
    // Assert
    assert_eq!((first.status, second.status), (503, 200));
}

async fn pattern(seed: u64) -> Vec<u16> {
    let app = spawn_with(EmulatorConfig::builtin().seed(seed).billing_rate_per_min(None)).await;
    let token = app.billing_token(ACME).await;
    app.emu.inject(Fault::probability(FaultKind::Unavailable, 0.5));
    let mut statuses = Vec::new();
    for _ in 0..24 {
        statuses.push(app.post_as(&token, ACME, &batch(&[&fresh_id("p")])).await.status);
    }
    statuses
}

#[tokio::test]
async fn probabilistic_faults_are_reproducible_from_the_seed() {
    // Act
    let (a, b, c) = (pattern(42).await, pattern(42).await, pattern(43).await);
    // Assert
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(a.contains(&503) && a.contains(&202), "{a:?}");
}
