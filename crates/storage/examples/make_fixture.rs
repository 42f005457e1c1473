//! Writes a fixture outbox with this build's schema, for the migration tests
//! (`tests/e2e/migrations.rs`): run it once per schema version, before the schema changes, and
//! commit what it wrote.
//!
//! ```sh
//! cargo run -p billsync-storage --example make_fixture -- sqlite tests/fixtures/sqlite-v3.db
//! cargo run -p billsync-storage --example make_fixture -- postgres postgres://postgres@127.0.0.1/fixture
//! pg_dump --inserts --no-owner --no-privileges postgres://postgres@127.0.0.1/fixture \
//!     | grep -v '^\\' > tests/fixtures/postgres-v2.sql
//! ```
//!
//! Each fixture holds, for tenant `acme`: 3 delivered events (`fx-d0`..`fx-d2`), 2
//! dead-lettered (`fx-x0`, `fx-x1`, code `invalid_quantity`), 3 held by a lease that was never
//! returned, as if its agent had been killed (`fx-l0`..`fx-l2`), and 4 pending (`fx-p0`..`fx-p3`),
//! plus a claim on `acme` by an agent that is gone and a saved tenant state; for `globex`, 2
//! pending (`fx-g0`, `fx-g1`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // bench and example code: a panic is a failure

use std::sync::Arc;
use std::time::Duration;

use billsync_domain::{BillingEvent, DeadLetter, EncodedEvent, EventId, SystemClock, TenantName};

fn event(id: &str) -> EncodedEvent {
    let now = chrono::Utc::now();
    let json = format!(
        r#"{{"event_id": "{id}", "device_id": "meter-0042", "meter": "energy.active", "quantity": "1.250",
            "unit": "kWh", "occurred_at": "{}", "attributes": {{"site": "plant-7"}}}}"#,
        (now - chrono::Duration::minutes(1)).to_rfc3339()
    );
    BillingEvent::parse(&json, now).expect("a valid event").encode()
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (kind, target) = match args.as_slice() {
        [kind, target] => (kind.as_str(), target.as_str()),
        _ => return Err("usage: make_fixture sqlite PATH | postgres URL".into()),
    };
    let url = match kind {
        "sqlite" => format!("sqlite://{target}"),
        "postgres" => target.to_owned(),
        other => return Err(format!("unknown kind {other}").into()),
    };
    let work = format!("{target}.work");
    let url = if kind == "sqlite" { format!("sqlite://{work}") } else { url };
    let outbox = billsync_storage::open(&url, Arc::new(SystemClock)).await?;
    let acme = TenantName::parse("acme")?;
    let globex = TenantName::parse("globex")?;

    // In the order they will be leased: delivered, dead, leased, then pending.
    let groups = [ids("fx-d", 3), ids("fx-x", 2), ids("fx-l", 3), ids("fx-p", 4)];
    for group in &groups {
        let events: Vec<EncodedEvent> = group.iter().map(|i| event(i)).collect();
        outbox.enqueue(&acme, &events).await?;
        // Distinct enqueue times keep the lease order.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let g: Vec<EncodedEvent> = ids("fx-g", 2).iter().map(|i| event(i)).collect();
    outbox.enqueue(&globex, &g).await?;

    let claimed = outbox.claim_tenant(&acme, "gone-agent-1", Duration::from_secs(30)).await?;
    assert!(matches!(claimed, billsync_domain::ClaimOutcome::Claimed(_)), "{claimed:?}");
    let lease = outbox.lease(&acme, 3, Duration::from_secs(120)).await?.ok_or("nothing to lease")?;
    let delivered: Vec<EventId> = lease.events.iter().map(|e| e.event_id().clone()).collect();
    outbox.ack(&lease, &delivered).await?;
    let lease = outbox.lease(&acme, 2, Duration::from_secs(120)).await?.ok_or("nothing to lease")?;
    let dead: Vec<DeadLetter> = lease
        .events
        .iter()
        .map(|e| DeadLetter {
            event_id: e.event_id().clone(),
            code: "invalid_quantity".into(),
            message: "fixture".into(),
        })
        .collect();
    outbox.dead_letter(&lease, &dead).await?;
    // Held, never returned: the agent holding it is gone.
    let held = outbox.lease(&acme, 3, Duration::from_secs(120)).await?.ok_or("nothing to lease")?;
    assert_eq!(held.events.len(), 3);
    outbox.save_tenant_state(&acme, r#"{"name":"acme","accepted":3,"dead_lettered":2}"#).await?;
    let c = outbox.counts(&acme).await?;
    println!(
        "{kind} fixture at {target}: acme pending {} in flight {} delivered {} dead {}",
        c.pending, c.in_flight, c.delivered, c.dead_lettered
    );
    drop(outbox);
    if kind == "sqlite" {
        // One self-contained file, whatever is still in the working copy's WAL.
        use sqlx::Connection as _;
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{work}")).await?;
        sqlx::query("VACUUM INTO ?1").bind(target).execute(&mut conn).await?;
        conn.close().await?;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{work}{suffix}"));
        }
    }
    Ok(())
}
