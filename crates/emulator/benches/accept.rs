//! Events accepted per second: batches of 500 unique events, rate limit off, an in-process
//! emulator and a reqwest client posting pre-serialised bodies, 4 requests in flight.
//!
//! `cargo bench -p billsync-emulator -- --quick`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // bench and example code: a panic is a failure

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use billsync_emulator::{Emulator, EmulatorConfig};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;

const BATCH: usize = 500;
const IN_FLIGHT: usize = 4;

static NEXT: AtomicU64 = AtomicU64::new(0);

fn body(occurred_at: &str) -> Vec<u8> {
    let events: Vec<_> = (0..BATCH)
        .map(|_| {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            json!({"event_id": format!("bench-{n}"), "device_id": "meter-0042", "meter": "energy.active",
                   "quantity": "12.500", "unit": "kWh", "occurred_at": occurred_at, "attributes": {"site": "plant-7"}})
        })
        .collect();
    serde_json::to_vec(&json!({ "events": events })).unwrap_or_default()
}

fn accept(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let (emu, token) = rt.block_on(async {
        let emu = Emulator::start(EmulatorConfig::builtin().billing_rate_per_min(None), "127.0.0.1:0".parse().unwrap())
            .await
            .expect("emulator");
        let http = reqwest::Client::new();
        let r: serde_json::Value = http
            .post(emu.token_url())
            .form(&[("grant_type", "client_credentials"), ("client_id", "app-acme"), ("client_secret", "secret-acme")])
            .send()
            .await
            .expect("token")
            .json()
            .await
            .expect("token json");
        let token = r["access_token"].as_str().unwrap_or_default().to_owned();
        (emu, token)
    });
    let url = emu.billing_url();
    let http = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(IN_FLIGHT).build().expect("client");
    let occurred_at = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();

    let mut group = c.benchmark_group("emulator");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("accept_batches_of_500", |b| {
        b.iter_custom(|iters| {
            let bodies: Vec<Vec<u8>> = (0..iters).map(|_| body(&occurred_at)).collect();
            let queue = Arc::new(std::sync::Mutex::new(bodies));
            rt.block_on(async {
                let started = Instant::now();
                let mut tasks = Vec::new();
                for _ in 0..IN_FLIGHT {
                    let (queue, http, url, token) = (Arc::clone(&queue), http.clone(), url.clone(), token.clone());
                    tasks.push(tokio::spawn(async move {
                        loop {
                            let next = queue.lock().map(|mut q| q.pop()).unwrap_or(None);
                            let Some(body) = next else { break };
                            let r = http
                                .post(&url)
                                .bearer_auth(&token)
                                .header("x-tenant-id", "acme-prod-001")
                                .header("x-application-id", "app-acme")
                                .header("content-type", "application/json")
                                .body(body)
                                .send()
                                .await
                                .expect("post");
                            assert_eq!(r.status().as_u16(), 202);
                            let _ = r.bytes().await;
                        }
                    }));
                }
                for t in tasks {
                    t.await.expect("task");
                }
                started.elapsed()
            })
        });
    });
    group.finish();
    let stored = emu.counters().stored("acme-prod-001");
    eprintln!("events stored during the benchmark: {stored}");
    rt.block_on(emu.shutdown());
}

criterion_group!(benches, accept);
criterion_main!(benches);
