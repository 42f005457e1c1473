//! temporary profiling probe (not committed)
use billsync_domain::{BillingEvent, Clock, EventId, Outbox, SystemClock, TenantName};
use billsync_storage::SqliteOutbox;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir_in("/work/main/target").unwrap();
    let ob = SqliteOutbox::open(&dir.path().join("o.db"), Arc::new(SystemClock)).await.unwrap();
    let t = TenantName::parse("bench").unwrap();
    if let Ok(drops) = std::env::var("DROP") {
        use sqlx::Connection;
        let mut c =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}", dir.path().join("o.db").display())).await.unwrap();
        for d in drops.split(',') {
            sqlx::query(&format!("DROP INDEX {d}")).execute(&mut c).await.unwrap();
        }
        c.close().await.unwrap();
    }
    let n: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(100_000);
    let now = SystemClock.now();
    let evs: Vec<_> = (0..n).map(|i| {
        let json = format!(r#"{{"event_id": "ev-{i}", "device_id": "meter-{:04}", "meter": "energy.active", "quantity": "12.500", "unit": "kWh", "occurred_at": "{}", "attributes": {{"site": "plant-7"}}}}"#, i % 10_000, now.to_rfc3339());
        BillingEvent::parse(&json, now).unwrap().encode()
    }).collect();
    if std::env::var("SMALL").is_ok() {
        use sqlx::Connection;
        let mut c =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}", dir.path().join("o.db").display())).await.unwrap();
        sqlx::query(r#"WITH RECURSIVE c(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM c WHERE x + 1 < ?1) INSERT INTO events (tenant, event_id, body, state, enqueued_at, due_at) SELECT 'bench', 'ev-' || x, '{"event_id":"ev-' || x || '","device_id":"meter-0001","meter":"energy.active","quantity":"12.500","unit":"kWh","occurred_at":"2026-11-25T00:00:00Z","attributes":{"site":"plant-7"}}', 0, 1, 1 FROM c"#).bind(n as i64).execute(&mut c).await.unwrap();
        c.close().await.unwrap();
        std::fs::File::open(dir.path().join("o.db")).unwrap().sync_all().unwrap();
    } else {
        for c in evs.chunks(5000) {
            ob.enqueue(&t, c).await.unwrap();
        }
    }
    let c0 = Instant::now();
    let c = ob.counts(&t).await.unwrap();
    eprintln!("counts {:?}: {:?}", c0.elapsed(), c.pending);
    let (mut l, mut a) = (Duration::ZERO, Duration::ZERO);
    let rounds: usize = std::env::var("R").map(|s| s.parse().unwrap()).unwrap_or(20);
    let start = Instant::now();
    for _ in 0..rounds {
        let s = Instant::now();
        let lease = ob.lease(&t, 500, Duration::from_secs(60)).await.unwrap().unwrap();
        let m = Instant::now();
        let ids: Vec<EventId> = lease.events.iter().map(|e| e.event_id().clone()).collect();
        ob.ack(&lease, &ids).await.unwrap();
        l += m - s;
        a += m.elapsed();
    }
    eprintln!(
        "rounds {rounds}: lease {:?} ack {:?} per round; total {:?}",
        l / rounds as u32,
        a / rounds as u32,
        start.elapsed()
    );
}
