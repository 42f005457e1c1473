//! `[reconcile] keep_days`: compaction drops the narrow record of events that occurred before
//! it, and reconciliation then vouches only from there.

use billsync::reconcile::{Days, ReconcileError, ReconcileOptions};
use billsync_domain::{BillingEvent, WindowError};
use billsync_emulator::EmulatorConfig;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_drops_facts_older_than_keep_days_and_moves_the_horizon() {
    // Arrange: keep one day; 3 events occurred 3 days ago, 4 just now; all delivered.
    let app = spawn_app(EmulatorConfig::builtin(), &[ACME], "[reconcile]\nkeep_days = 1").await;
    let now = chrono::Utc::now();
    let old: Vec<_> = (0..3)
        .map(|i| {
            let json = serde_json::json!({
                "event_id": format!("old-{i}"), "device_id": "d", "meter": "energy.active", "quantity": "1",
                "unit": "kWh", "occurred_at": (now - chrono::Duration::days(3)).to_rfc3339(),
            });
            BillingEvent::parse(&json.to_string(), now).unwrap().encode()
        })
        .collect();
    app.agent.enqueue("acme", &old).await.unwrap();
    app.agent.enqueue("acme", &events("new", 4)).await.unwrap();
    app.agent.sync_once().await;
    let week = ReconcileOptions { days: Days::Last(7), ..ReconcileOptions::default() };
    let before = app.agent.reconcile(&week, &|_, _, _| {}).await.unwrap();
    assert_eq!(before[0].horizon, None, "a new outbox vouches for its whole history");

    // Act
    app.agent.compact().await.unwrap();

    // Assert: a week now reaches before the horizon; the last day is still vouched for.
    let refused = app.agent.reconcile(&week, &|_, _, _| {}).await;
    assert!(matches!(refused, Err(ReconcileError::Window(WindowError::BeforeHorizon { .. }))), "{refused:?}");
    let today = ReconcileOptions { days: Days::Last(1), exclusive: true, ..ReconcileOptions::default() };
    let r = app.agent.reconcile(&today, &|_, _, _| {}).await.unwrap();
    let horizon = r[0].horizon.expect("the horizon moved");
    assert!((horizon - (now - chrono::Duration::days(1))).num_seconds().abs() < 60, "{horizon}");
    assert!(r[0].clean, "{:?}", r[0].comparison);
    assert_eq!(r[0].comparison.days.iter().map(|d| d.local.count).sum::<u64>(), 4);
}
