//! docs/platform.md section 5: sliding-window limits per (tenant, client) pair.

use billsync_emulator::{EmulatorConfig, Reason};
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn a_small_limit_is_exact_per_pair_and_can_be_switched_off() {
    // Arrange
    let app = spawn_with(EmulatorConfig::builtin().billing_rate_per_min(Some(3))).await;
    let acme = app.billing_token(ACME).await;
    let globex = app.billing_token(GLOBEX).await;

    // Act
    let mut replies = Vec::new();
    for _ in 0..4 {
        replies.push(app.post_as(&acme, ACME, &batch(&[&fresh_id("r")])).await);
    }
    let other_pair = app.post_as(&globex, GLOBEX, &batch(&[&fresh_id("r")])).await;
    app.emu.set_billing_rate_per_min(None);
    let unlimited = app.post_as(&acme, ACME, &batch(&[&fresh_id("r")])).await;

    // Assert
    let seen: Vec<(u16, u32)> = replies.iter().map(|r| (r.status, r.rate().1)).collect();
    assert_eq!(seen, [(202, 2), (202, 1), (202, 0), (429, 0)]);
    assert!(replies[3].header("retry-after").is_some_and(|s| s.parse::<u64>().is_ok_and(|s| (59..=60).contains(&s))));
    assert_eq!(app.last_audit().reasons, [Reason::RateLimited]);
    assert_eq!((other_pair.status, other_pair.rate()), (202, (3, 2, 60)));
    assert_eq!(unlimited.status, 202);
    assert_eq!(unlimited.rate().0, u32::MAX);
}

#[tokio::test]
async fn billing_and_device_limits_are_separate() {
    // Arrange
    let app = spawn_with(EmulatorConfig::builtin().device_rate_per_min(Some(2)).billing_rate_per_min(Some(5))).await;
    let token = app.billing_token(ACME).await;
    // Act
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(app.telemetry(&token, Some(ACME.2), &json!({"v": 1})).await.status);
    }
    let billing = app.post_as(&token, ACME, &batch(&[&fresh_id("s")])).await;
    // Assert
    assert_eq!(statuses, [202, 202, 429]);
    assert_eq!((billing.status, billing.rate()), (202, (5, 4, 60)));
}

#[tokio::test]
async fn limits_change_at_run_time_through_the_admin_api() {
    // Arrange
    let app = spawn().await;
    // Act
    let body = json!({"billing_rate_per_min": 2, "device_rate_per_min": null});
    let r = app.admin(reqwest::Method::POST, "/admin/settings", Some(body)).await;
    // Assert
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["billing_rate_per_min"], 2);
    assert_eq!(r.json["device_rate_per_min"], serde_json::Value::Null);
    assert_eq!(r.json["billing_token_lifetime_s"], 900);
    assert_eq!(app.emu.settings().billing_rate_per_min, Some(2));
}
