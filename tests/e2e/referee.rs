//! The emulator is a referee, not a mirror: it holds events to docs/platform.md with its own
//! rules, so a client whose event rules are wrong finds out from the platform, which refuses
//! the event alone (inside a `202`), and the client dead-letters it with the platform's code.

use std::time::Duration;

use billsync_domain::{BillingEvent, EventRules};
use billsync_emulator::EmulatorConfig;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_clients_wrong_rules_let_through_is_refused_by_the_platform() {
    // Arrange: a client whose rules allow events a day ahead (the contract allows five
    // minutes), and an event two hours ahead, between three good ones.
    let app = spawn_app(EmulatorConfig::builtin(), &[ACME], "").await;
    let now = chrono::Utc::now();
    let ahead = serde_json::json!({
        "event_id": "acme-ahead", "device_id": "meter-1", "meter": "energy.active", "quantity": "1.5",
        "unit": "kWh", "occurred_at": (now + chrono::Duration::hours(2)).to_rfc3339(),
    })
    .to_string();
    let wrong = EventRules { max_future: Duration::from_secs(24 * 3600), ..EventRules::default() };
    let event = wrong.parse(&ahead, now).expect("the client's wrong rules let the event through");
    assert!(BillingEvent::parse(&ahead, now).is_err(), "the contract's rules would not have");
    let mut batch = events("acme", 3);
    batch.insert(1, event.encode());
    app.agent.enqueue("acme", &batch).await.unwrap();

    // Act
    let reports = app.agent.sync_once().await;

    // Assert: one request, answered 202; the platform stored the good events and refused that
    // one with the contract's code, which the client dead-lettered.
    let counters = app.platform.counters();
    assert_eq!((counters.status(202), counters.status(400)), (1, 0), "{counters:?}");
    assert_eq!(counters.events_rejected.get("acme-prod-001"), Some(&1), "{counters:?}");
    let (stored, _) = stored(&app, "acme-prod-001");
    assert_eq!(stored, ["acme-000000", "acme-000001", "acme-000002"]);
    assert_eq!((reports[0].accepted, reports[0].dead_lettered), (3, 1), "{reports:?}");
    let dead = app.agent.dead_letters(None).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!((dead[0].event_id.as_str(), dead[0].code.as_str()), ("acme-ahead", "invalid_occurred_at"));
    assert!(dead[0].message.contains("is more than 5 minutes in the future"), "{}", dead[0].message);
}
