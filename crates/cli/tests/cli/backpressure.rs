//! Backpressure: `enqueue` refuses with exit 75 (`EX_TEMPFAIL`) while the outbox is at its
//! limits, names the limit, and keeps everything already stored.

use crate::{billsync, env, line, status_json, text, write};

/// Adds `[storage]` settings to the configuration (its `[storage]` table holds the URL).
fn storage_settings(env: &crate::Env, settings: &str) {
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, cfg.replacen("[storage]\n", &format!("[storage]\n{settings}\n"), 1)).unwrap();
}

fn enqueue(env: &crate::Env, name: &str, ids: std::ops::Range<usize>) -> std::process::Output {
    let lines: Vec<String> = ids.map(|i| line(&format!("bp-{i}"), "\"1\"")).collect();
    let file = write(env.dir.path(), name, &lines);
    billsync(env, &["enqueue", "--tenant", "acme", file.to_str().unwrap()], None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_past_max_pending_events_is_exit_75_and_keeps_what_was_stored() {
    // Arrange: at most 5 pending.
    let env = env(&[("acme", "acme-prod-001", "app-acme")]).await;
    storage_settings(&env, "max_pending_events = 5");
    let first = enqueue(&env, "a.jsonl", 0..5);
    assert!(first.status.success(), "{}", text(&first));

    // Act
    let refused = enqueue(&env, "b.jsonl", 5..7);

    // Assert: refused by name, nothing of it stored, nothing before it lost.
    assert_eq!(refused.status.code(), Some(75), "{}", text(&refused));
    let said = text(&refused);
    assert!(said.contains("5 pending events") && said.contains("max_pending_events is 5"), "{said}");
    assert!(said.contains("nothing was stored"), "{said}");
    let status = status_json(&env);
    assert_eq!(status["tenants"][0]["pending"], 5);
    assert_eq!(status["backpressure"]["reason"], "max_pending_events", "{status}");
    let table = text(&billsync(&env, &["status"], None));
    assert!(table.contains("the outbox pushes back (max_pending_events)"), "{table}");
    // Once delivered, events are taken again.
    assert!(billsync(&env, &["sync"], None).status.success());
    let again = enqueue(&env, "b.jsonl", 5..7);
    assert!(again.status.success(), "{}", text(&again));
    assert!(status_json(&env)["backpressure"].is_null());
    assert_eq!(env.platform.stored_event_ids("acme-prod-001").len(), 5);
    env.platform.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_below_the_free_disk_floor_is_exit_75() {
    // A floor no disk here has free: 2^40 MiB.
    let env = env(&[("acme", "acme-prod-001", "app-acme")]).await;
    storage_settings(&env, "min_free_disk_mb = 1099511627776");

    let refused = enqueue(&env, "a.jsonl", 0..3);

    assert_eq!(refused.status.code(), Some(75), "{}", text(&refused));
    let said = text(&refused);
    assert!(said.contains("below [storage] min_free_disk_mb = 1099511627776"), "{said}");
    assert!(said.contains("outbox.db"), "names the outbox: {said}");
    assert_eq!(status_json(&env)["tenants"][0]["pending"], 0);
    env.platform.shutdown().await;
}
