//! The MQTT ingest's rules without a broker: `Agent::take_messages` on a real SQLite outbox,
//! and the quarantine's retry after a fix.

use std::path::Path;

use billsync::Agent;
use billsync::agent::{Message, Taken};
use billsync::config::Config;
use billsync_domain::QuarantineSelection;
use billsync_emulator::{Emulator, EmulatorConfig};

fn event(id: &str, quantity: &str) -> String {
    let at = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    format!(
        r#"{{"event_id":"{id}","device_id":"d-1","meter":"energy.active","quantity":{quantity},"unit":"kWh","occurred_at":"{at}"}}"#
    )
}

/// An agent on the outbox in `dir` with these tenants (and `storage`'s extra lines).
async fn agent(platform: &Emulator, dir: &Path, tenants: &[&str], storage: &str) -> Agent {
    let mut text = format!(
        "[platform]\nbase_url = \"{}\"\n[storage]\nurl = \"sqlite://{}\"\n{storage}\n[ingest.mqtt]\nurl = \"mqtt://127.0.0.1:1\"\n",
        platform.base_url(),
        dir.join("outbox.db").display()
    );
    for name in tenants {
        text.push_str(&format!(
            "[[tenants]]\nname = \"{name}\"\ntenant_id = \"{name}-prod-001\"\napplication_id = \"app-{name}\"\nclient_secret = \"secret-{name}\"\n"
        ));
    }
    let config = Config::parse(&text, &dir.join("billsync.toml")).unwrap();
    Agent::builder().config(config).build().await.unwrap()
}

async fn platform() -> Emulator {
    Emulator::start(EmulatorConfig::builtin(), "127.0.0.1:0".parse().unwrap()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_message_is_stored_or_quarantined_alone_and_a_redelivery_changes_nothing() {
    // Arrange
    let platform = platform().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(&platform, dir.path(), &["acme"], "").await;
    let two = format!("{}\n{}\n", event("m-1", "\"1\""), event("m-2", "\"2\""));
    let bad_event = format!("{}\n{}", event("m-3", "\"1\""), event("m-4", "4"));
    let pretty =
        serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(&event("m-5", "\"5\"")).unwrap())
            .unwrap();
    let unknown = event("m-6", "\"6\"");
    let messages = [
        Message { topic: "billing/acme/events", payload: two.as_bytes() },
        Message { topic: "billing/acme/events", payload: b"garbage" },
        Message { topic: "billing/nobody/events", payload: unknown.as_bytes() },
        Message { topic: "billing/acme/events", payload: bad_event.as_bytes() },
        Message { topic: "billing/acme/events", payload: pretty.as_bytes() },
        Message { topic: "billing/acme/events", payload: b"" },
    ];

    // Act
    let taken = agent.take_messages(&messages).await;

    // Assert: three stored (one commit for acme), three quarantined by name.
    let stored = |n| Taken::Stored { tenant: agent.tenant_name("acme").unwrap(), events: n };
    assert_eq!(taken[0], stored(2));
    assert_eq!(taken[4], stored(1));
    assert_eq!(taken[5], stored(0));
    let reasons: Vec<String> = [1, 2, 3]
        .iter()
        .map(|&i| match &taken[i] {
            Taken::Quarantined { reason, .. } => reason.clone(),
            other => panic!("message {i}: {other:?}"),
        })
        .collect();
    assert!(reasons[0].contains("line 1: json"), "{}", reasons[0]);
    assert!(reasons[1].contains("unknown tenant \"nobody\""), "{}", reasons[1]);
    assert!(reasons[2].contains("line 2: quantity"), "{}", reasons[2]);
    assert!(taken.iter().all(Taken::settled));
    let status = agent.status().await.unwrap();
    assert_eq!(status[0].pending, 3, "m-1, m-2 and m-5; nothing of the refused message");
    let entries = agent.quarantined(&QuarantineSelection::All).await.unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!((entries[0].topic.as_str(), entries[0].payload.as_slice()), ("billing/acme/events", &b"garbage"[..]));

    // Act again: the broker redelivers the same run (its acknowledgements were lost).
    let again = agent.take_messages(&messages).await;

    // Assert: the same entries, nothing stored twice.
    assert_eq!(again[1], taken[1], "the same entry for the same garbage");
    assert_eq!(agent.quarantined(&QuarantineSelection::All).await.unwrap().len(), 3);
    assert_eq!(agent.status().await.unwrap()[0].pending, 3);
    platform.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_outbox_pushes_back_messages_are_held_not_quarantined() {
    // Arrange: room for one event.
    let platform = platform().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(&platform, dir.path(), &["acme"], "max_pending_events = 1").await;
    let first = event("h-1", "\"1\"");
    let second = event("h-2", "\"2\"");
    assert!(
        agent.take_messages(&[Message { topic: "billing/acme/events", payload: first.as_bytes() }]).await[0].settled()
    );
    agent.backpressure().await.unwrap();

    // Act: a good message and a bad one.
    let taken = agent
        .take_messages(&[
            Message { topic: "billing/acme/events", payload: second.as_bytes() },
            Message { topic: "billing/acme/events", payload: b"{oops" },
        ])
        .await;

    // Assert: the good one is held (not acknowledged), the bad one still quarantined.
    assert!(matches!(&taken[0], Taken::Held { backpressure: true, .. }), "{:?}", taken[0]);
    assert!(!taken[0].settled());
    assert!(matches!(&taken[1], Taken::Quarantined { .. }), "{:?}", taken[1]);
    assert_eq!(agent.status().await.unwrap()[0].pending, 1);
    platform.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_message_is_stored_by_requeue_once_its_tenant_is_configured() {
    // Arrange: globex is not configured yet.
    let platform = platform().await;
    let dir = tempfile::tempdir().unwrap();
    let before = agent(&platform, dir.path(), &["acme"], "").await;
    let lines = format!("{}\n{}", event("g-1", "\"1\""), event("g-2", "\"2\""));
    let taken = before.take_messages(&[Message { topic: "billing/globex/events", payload: lines.as_bytes() }]).await;
    let Taken::Quarantined { id, .. } = taken[0] else { panic!("{taken:?}") };
    let still = before.requeue_quarantined(&QuarantineSelection::All).await.unwrap();
    assert_eq!((still[0].id, still[0].result), (id, "quarantined"));

    // Act: the fix, then the retry.
    let after = agent(&platform, dir.path(), &["acme", "globex"], "").await;
    let done = after.requeue_quarantined(&QuarantineSelection::Ids(vec![id, 9_999])).await.unwrap();

    // Assert
    assert_eq!(done.len(), 1, "an unknown number is skipped");
    assert_eq!((done[0].result, done[0].events), ("stored", 2));
    assert!(after.quarantined(&QuarantineSelection::All).await.unwrap().is_empty());
    let globex = after.status().await.unwrap().into_iter().find(|s| s.name == "globex").unwrap();
    assert_eq!(globex.pending, 2);
    assert_eq!(after.purge_quarantined(&QuarantineSelection::All).await.unwrap(), 0);
    platform.shutdown().await;
}
