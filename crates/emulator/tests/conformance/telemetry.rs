//! docs/platform.md section 4: the telemetry endpoint, for contrast.

use billsync_emulator::Reason;
use serde_json::json;

use crate::helpers::*;

/// (name, token, X-Tenant-ID, body, status, audit reasons)
type Case<'a> = (&'a str, String, Option<&'a str>, serde_json::Value, u16, Vec<Reason>);

#[tokio::test]
async fn billing_tokens_work_for_telemetry_too() {
    // Arrange
    let app = spawn().await;
    let token = app.billing_token(ACME).await;
    // Act
    let r = app.telemetry(&token, Some(ACME.2), &json!({"power_w": 3})).await;
    // Assert
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.rate().0, 500);
    assert_eq!(app.emu.counters().telemetry_accepted.get(ACME.2), Some(&1));
}

#[tokio::test]
async fn telemetry_checks_its_own_claims_and_headers() {
    let app = spawn().await;
    let device = app.token(INITECH, None).await;
    let cases: Vec<Case> = vec![
        ("no tenant header", device.clone(), None, json!({}), 400, vec![Reason::MissingHeader]),
        ("not an object", device.clone(), Some(INITECH.2), json!([1]), 400, vec![Reason::InvalidRequest]),
        ("other tenant", device.clone(), Some(ACME.2), json!({}), 401, vec![Reason::TenantMismatch]),
        (
            "no device scope",
            app.signed(ACME, json!({"scope": BILLING_WRITE, "aud": [BILLING_AUD]})),
            Some(ACME.2),
            json!({}),
            401,
            vec![Reason::MissingScope, Reason::AudienceMissing],
        ),
        (
            "tenantless token, foreign tenant",
            app.signed(ACME, json!({"tenant_id": null})),
            Some(GLOBEX.2),
            json!({}),
            403,
            vec![Reason::TenantNotAuthorized],
        ),
        ("forged", tamper(&device), Some(INITECH.2), json!({}), 401, vec![Reason::BadSignature]),
    ];
    for (name, token, tenant, body, status, reasons) in cases {
        // Act
        let r = app.telemetry(&token, tenant, &body).await;
        // Assert
        assert_eq!(r.status, status, "{name}: {r:?}");
        assert_eq!(app.last_reasons(), reasons, "{name}");
    }
}
