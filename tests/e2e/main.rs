//! End-to-end: the real adapters (auth, transport, SQLite outbox) driven by the engine, against
//! the real platform emulator over HTTP on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test, bench and example code: a panic is a failure

mod helpers;
mod messages;
mod migrations;
mod referee;
mod retention;
mod token_source;

use std::time::Duration;

use billsync_emulator::{EmulatorConfig, Fault, FaultKind};
use helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_the_platform_and_the_misconfigured_tenant_is_blocked_before_sending() {
    // Arrange
    let app = spawn_app(EmulatorConfig::builtin(), &[ACME, GLOBEX, INITECH], "").await;
    app.agent.enqueue("acme", &events("acme", 1_100)).await.unwrap();
    app.agent.enqueue("globex", &events("globex", 20)).await.unwrap();
    app.agent.enqueue("initech", &events("initech", 7)).await.unwrap();

    // Act
    let reports = app.agent.sync_once().await;

    // Assert
    let (acme, twice) = stored(&app, "acme-prod-001");
    assert_eq!((acme.len(), twice), (1_100, false));
    assert_eq!(stored(&app, "globex-prod-001").0.len(), 20);
    assert_eq!(reports[0].requests, 3, "a backlog goes in full batches of 500");
    let initech = &reports[2];
    assert_eq!(initech.blocked.as_ref().unwrap().codes(), ["missing_scope", "audience_missing"]);
    assert_eq!(initech.requests, 0);
    let status = app.agent.status().await.unwrap();
    assert_eq!(status[2].pending, 7, "a configuration problem never dead-letters events");
    // The platform never saw a billing request from the misconfigured client.
    assert!(
        app.platform.audit().iter().all(|e| e.client_id.as_deref() != Some("app-initech")),
        "{:?}",
        app.platform.audit()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_never_expire_mid_sync() {
    // 4 s tokens over a 20 s sync: every billing request takes 400 ms, and 50 batches go one by one.
    let platform = EmulatorConfig::builtin().billing_token_lifetime(Duration::from_secs(4));
    let app = spawn_app(platform, &[ACME], "max_batch_events = 10").await;
    app.platform.inject(Fault::probability(FaultKind::Latency { ms: 400 }, 1.0));
    app.agent.enqueue("acme", &events("acme", 500)).await.unwrap();

    let started = std::time::Instant::now();
    app.agent.sync_once().await;
    let elapsed = started.elapsed().as_secs_f64();

    let counters = app.platform.counters();
    assert_eq!(stored(&app, "acme-prod-001").0.len(), 500);
    assert!(elapsed >= 20.0, "the sync spanned {elapsed:.1} s");
    assert_eq!(counters.status(401), 0, "no request ever carried an expired token: {counters:?}");
    let tokens = app.agent.tokens().token_requests(&billsync_domain::TenantName::parse("acme").unwrap()) as f64;
    // One token per 3.2 s (80 % of 4 s), plus the first.
    let expected = elapsed / 3.2;
    assert!(
        (tokens - expected).abs() <= 2.0,
        "{tokens} token requests over {elapsed:.1} s (expected about {expected:.1})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_stored_exactly_once_through_faults() {
    // 3 tenants, 10,000 events, 4 s tokens, 10 % 503, 5 % connections dropped after the events
    // were stored, and tokens revoked under the agent's feet.
    let platform = EmulatorConfig::builtin()
        .billing_token_lifetime(Duration::from_secs(4))
        .with_client(billsync_emulator::ClientRegistration::new(
            "app-umbrella",
            "secret-umbrella",
            ["umbrella-prod-001"],
            true,
        ))
        .seed(7);
    let umbrella = ("umbrella", "umbrella-prod-001", "app-umbrella");
    let app = spawn_app(platform, &[ACME, GLOBEX, umbrella], "max_batch_events = 100").await;
    for (name, n) in [("acme", 3_334), ("globex", 3_333), ("umbrella", 3_333)] {
        app.agent.enqueue(name, &events(name, n)).await.unwrap();
    }
    app.platform.inject(Fault::probability(FaultKind::Unavailable, 0.10));
    app.platform.inject(Fault::probability(FaultKind::DropConnection, 0.05));
    let revoker = {
        let platform = &app.platform;
        async move {
            for i in 0.. {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let client = ["app-acme", "app-globex", "app-umbrella"][i % 3];
                platform.revoke_client_tokens(client);
            }
        }
    };

    let reports = tokio::select! {
        r = app.agent.sync_once() => r,
        _ = revoker => unreachable!(),
    };

    let counters = app.platform.counters();
    for (name, tenant_id, n) in [
        ("acme", "acme-prod-001", 3_334),
        ("globex", "globex-prod-001", 3_333),
        ("umbrella", "umbrella-prod-001", 3_333),
    ] {
        let (ids, twice) = stored(&app, tenant_id);
        assert_eq!((ids.len(), twice), (n, false), "{name}: {reports:?}");
    }
    assert_eq!(counters.status(429), 0, "{counters:?}");
    assert_eq!(counters.reason(billsync_emulator::Reason::TokenExpired), 0, "{counters:?}");
    assert!(counters.status(503) > 0, "faults fired: {counters:?}");
    assert!(counters.reason(billsync_emulator::Reason::InjectedConnectionDrop) > 0, "drops fired: {counters:?}");
    assert!(counters.reason(billsync_emulator::Reason::TokenRevoked) > 0, "revocations bit: {counters:?}");
    for s in app.agent.status().await.unwrap() {
        assert_eq!((s.pending, s.in_flight), (0, 0), "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_the_client_is_no_longer_authorised_for_is_blocked_by_name() {
    // Arrange: acme's token is cached, then the platform withdraws acme from its client.
    let app = spawn_app(EmulatorConfig::builtin(), &[ACME, GLOBEX], "").await;
    app.agent.enqueue("acme", &events("acme-a", 5)).await.unwrap();
    app.agent.sync_once().await;
    app.platform.withdraw_tenant("app-acme", "acme-prod-001").unwrap();
    app.agent.enqueue("acme", &events("acme-b", 5)).await.unwrap();
    app.agent.enqueue("globex", &events("globex", 5)).await.unwrap();

    // Act
    let reports = app.agent.sync_once().await;

    // Assert
    let blocked = reports[0].blocked.as_ref().expect("acme is blocked");
    assert_eq!(blocked.codes(), ["tenant_not_authorized"]);
    assert!(blocked.reasons[0].hint.contains("not authorised for tenant acme-prod-001"), "{blocked:?}");
    assert_eq!(stored(&app, "globex-prod-001").0.len(), 5, "other tenants are unaffected");
    assert_eq!(app.agent.status().await.unwrap()[0].pending, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_dead_lettered_alone_and_delivered_after_the_fix_and_a_requeue() {
    // Arrange: the platform refuses meter water.flow (not registered for the tenant).
    let app = spawn_app(EmulatorConfig::builtin(), &[ACME], "").await;
    app.platform.reject_meter("water.flow", "unknown_meter");
    let now = chrono::Utc::now();
    let mut batch = events("acme", 19);
    let poison = serde_json::json!({
        "event_id": "acme-poison", "device_id": "pump-1", "meter": "water.flow", "quantity": "3.25",
        "unit": "m3", "occurred_at": (now - chrono::Duration::seconds(5)).to_rfc3339(),
    });
    batch.insert(7, billsync_domain::BillingEvent::parse(&poison.to_string(), now).unwrap().encode());
    app.agent.enqueue("acme", &batch).await.unwrap();

    // Act
    app.agent.sync_once().await;

    // Assert: the rest of its batch is delivered, the poison is dead-lettered with its code.
    assert_eq!(stored(&app, "acme-prod-001").0.len(), 19);
    let dead = app.agent.dead_letters(None).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].event_id.as_str(), dead[0].code.as_str()), ("acme-poison", "unknown_meter"));

    // The platform-side fix, then a requeue, delivers it.
    app.platform.accept_meter("water.flow");
    let name = billsync_domain::TenantName::parse("acme").unwrap();
    assert_eq!(app.agent.requeue(name.as_str(), None).await.unwrap(), 1);
    app.agent.sync_once().await;
    assert!(stored(&app, "acme-prod-001").0.contains(&"acme-poison".to_owned()));
    assert!(app.agent.dead_letters(None).await.unwrap().is_empty());
}
