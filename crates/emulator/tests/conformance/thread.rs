//! The user story: one token works for telemetry and gets `401 insufficient claims` on billing.

use billsync_emulator::Reason;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn the_threads_token_works_for_telemetry_and_fails_on_billing() {
    // Arrange: the misconfigured client asks for the billing scope and silently gets less.
    let app = spawn().await;
    let granted = app
        .token_request(
            &[
                ("grant_type", "client_credentials"),
                ("client_id", INITECH.0),
                ("client_secret", INITECH.1),
                ("scope", BILLING_WRITE),
            ],
            None,
        )
        .await;
    assert_eq!(granted.status, 200, "{granted:?}");
    assert_eq!(granted.json["scope"], DEVICE_WRITE);
    assert_eq!(granted.json["expires_in"], 3600);
    let token = granted.json["access_token"].as_str().unwrap().to_owned();

    // Act
    let telemetry = app.telemetry(&token, Some(INITECH.2), &json!({"power_w": 1200})).await;
    let billing = app.post_as(&token, INITECH, &batch(&[&fresh_id("thread")])).await;

    // Assert
    assert_eq!(telemetry.status, 202, "{telemetry:?}");
    assert_eq!(billing.status, 401);
    assert_eq!(billing.header("www-authenticate"), Some(r#"Bearer error="insufficient_claims""#));
    assert_eq!(billing.text, r#"{"error":"insufficient_claims","error_description":"insufficient claims"}"#);
    let entry = app.last_audit();
    assert_eq!(entry.reasons, [Reason::MissingScope, Reason::AudienceMissing]);
    assert_eq!(
        (entry.status, entry.client_id.as_deref(), entry.tenant_id.as_deref()),
        (401, Some(INITECH.0), Some(INITECH.2))
    );
    assert!(app.emu.stored_event_ids(INITECH.2).is_empty());
}

#[tokio::test]
async fn granting_billing_access_fixes_the_thread_for_new_tokens() {
    // Arrange
    let app = spawn().await;
    let old = app.billing_token(INITECH).await;
    app.emu.set_billing_access(INITECH.0, true).unwrap();

    // Act
    let new = app.billing_token(INITECH).await;
    let with_old = app.post_as(&old, INITECH, &batch(&[&fresh_id("t")])).await;
    let with_new = app.post_as(&new, INITECH, &batch(&[&fresh_id("t")])).await;

    // Assert
    assert_eq!((with_old.status, with_new.status), (401, 202));
    assert_eq!(jwt_parts(&new).1["exp"].as_i64().unwrap() - jwt_parts(&new).1["iat"].as_i64().unwrap(), 900);
}
