//! The ingest under load and under crashes: what got a `200` is delivered exactly once in
//! effect, whatever happens to the agent after it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::ingest::{configure, events, start};
use crate::{env, line};

/// Waits (up to `secs`) until the platform holds every id of `want` for acme.
async fn wait_for(env: &crate::Env, want: &HashSet<String>, secs: u64) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let held = env.platform.stored_event_ids("acme-prod-001");
        let set: HashSet<&String> = held.iter().collect();
        if want.iter().all(|id| set.contains(id)) || Instant::now() > deadline {
            return held;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Fast delivery: the agent's and the platform's rate limits out of the way.
async fn fast() -> crate::Env {
    let env = env(&[("acme", "acme-prod-001", "app-acme")]).await;
    env.platform.set_billing_rate_per_min(None);
    configure(&env, "[sync]\nrequests_per_minute = 100000\n[ingest]\nlisten = \"127.0.0.1:0\"\n", &[]);
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_producers_of_ten_thousand_events_each_are_delivered_exactly_once() {
    // Arrange
    let env = fast().await;
    let running = start(&env.config, &[]);
    let client = reqwest::Client::new();
    let url = running.url("acme");

    // Act: 16 producers, 20 requests of 500 each, all at once.
    let producers: Vec<_> = (0..16)
        .map(|p| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let mut stored = 0;
                for b in 0..20 {
                    let body = events(&format!("p{p}-b{b}"), 500);
                    let response = client
                        .post(&url)
                        .header("content-type", "application/x-ndjson")
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status().as_u16(), 200, "producer {p} batch {b}");
                    let answer: serde_json::Value = response.json().await.unwrap();
                    stored += answer["stored"].as_u64().unwrap();
                }
                stored
            })
        })
        .collect();
    let mut stored = 0;
    for p in producers {
        stored += p.await.unwrap();
    }

    // Assert: every event stored once, then on the platform once.
    assert_eq!(stored, 160_000);
    let want: HashSet<String> =
        (0..16).flat_map(|p| (0..20).flat_map(move |b| (0..500).map(move |i| format!("p{p}-b{b}-{i}")))).collect();
    let held = wait_for(&env, &want, 240).await;
    assert_eq!(held.len(), 160_000, "the platform holds each event once");
    let held: HashSet<String> = held.into_iter().collect();
    assert_eq!(held, want, "every event reached the platform");
    env.platform.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_mid_ingest_loses_nothing_that_got_a_200() {
    // Arrange: four producers post batches of 100 until the agent dies.
    let env = fast().await;
    let mut running = start(&env.config, &[]);
    let client = reqwest::Client::new();
    let url = running.url("acme");
    let acked = std::sync::Arc::new(std::sync::Mutex::new(HashSet::new()));
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let (client, url, acked) = (client.clone(), url.clone(), acked.clone());
            tokio::spawn(async move {
                for b in 0.. {
                    let ids: Vec<String> = (0..100).map(|i| format!("k{p}-{b}-{i}")).collect();
                    let body = ids.iter().map(|id| line(id, "\"1\"")).collect::<Vec<_>>().join("\n");
                    let sent = client.post(&url).header("content-type", "application/x-ndjson").body(body).send().await;
                    match sent {
                        Ok(r) if r.status().as_u16() == 200 => acked.lock().unwrap().extend(ids),
                        _ => return b,
                    }
                }
                unreachable!()
            })
        })
        .collect();

    // Act: SIGKILL once some batches are in, while the producers keep posting.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 2_000 {
        assert!(Instant::now() < deadline, "the producers got no 200s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.kill();
    for p in producers {
        p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let _restarted = start(&env.config, &[]);

    // Assert: each event that got a 200 is delivered after the restart, once.
    let held = wait_for(&env, &acked, 120).await;
    let unique: HashSet<&String> = held.iter().collect();
    let missing = acked.iter().filter(|id| !unique.contains(id)).count();
    assert_eq!(missing, 0, "{missing} of {} acknowledged events were lost", acked.len());
    assert_eq!(unique.len(), held.len(), "no event is held twice");
    env.platform.shutdown().await;
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_receipt_and_commit_acknowledges_nothing_and_stores_nothing() {
    use std::os::unix::process::ExitStatusExt as _;

    use crate::status_json;
    // Arrange: the agent aborts just before it would commit what it received.
    let env = fast().await;
    let mut crashing = start(&env.config, &[("BILLSYNC_FAILPOINT", "ingest_before_commit")]);
    let client = reqwest::Client::new();

    // Act
    let sent = client
        .post(crashing.url("acme"))
        .header("content-type", "application/x-ndjson")
        .body(events("fp", 5))
        .send()
        .await;

    // Assert: no 200; the process died there; nothing half-stored; a retry is stored and sent.
    assert!(sent.is_err(), "the request got an answer: {:?}", sent.map(|r| r.status()));
    let died = crashing.child.wait().unwrap();
    assert_eq!(died.signal(), Some(6), "SIGABRT from the failpoint: {died:?}");
    assert!(crashing.stderr.lock().unwrap().contains("failpoint ingest_before_commit"));
    assert_eq!(status_json(&env)["tenants"][0]["pending"], 0);
    let running = start(&env.config, &[]);
    let response = client
        .post(running.url("acme"))
        .header("content-type", "application/x-ndjson")
        .body(events("fp", 5))
        .send()
        .await
        .unwrap();
    assert_eq!(response.json::<serde_json::Value>().await.unwrap()["stored"], 5);
    let want: HashSet<String> = (0..5).map(|i| format!("fp-{i}")).collect();
    assert_eq!(wait_for(&env, &want, 60).await.len(), 5);
    env.platform.shutdown().await;
}
