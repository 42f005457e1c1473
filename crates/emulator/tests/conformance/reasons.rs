//! docs/platform.md section 6: every reason code of the audit log, provoked in one run. The
//! reasons of refused client assertions (section 1.1) are provoked one by one in `assertion.rs`.

use std::collections::BTreeSet;

use billsync_emulator::{Fault, FaultKind, FaultTarget, Reason};
use chrono::Utc;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn every_reason_code_is_recorded() {
    // Arrange
    let app = spawn().await;
    let b = || batch(&[&fresh_id("why")]);
    let token = app.billing_token(ACME).await;
    let device = app.token(INITECH, None).await;

    // Act: one request per reason.
    app.token_request(&[("grant_type", "client_credentials"), ("client_id", ACME.0), ("client_secret", "x")], None)
        .await;
    app.token_request(&[("client_id", ACME.0), ("client_secret", ACME.1)], None).await;
    app.token_request(
        &[("grant_type", "client_credentials"), ("client_id", ACME.0), ("client_secret", ACME.1), ("scope", "nope")],
        None,
    )
    .await;
    app.token_request(&[("grant_type", "implicit"), ("client_id", ACME.0), ("client_secret", ACME.1)], None).await;
    app.post_as(&device, INITECH, &b()).await; // missing_scope, audience_missing
    app.post_as(&app.signed(ACME, json!({"scope": "billing:write"})), ACME, &b()).await;
    app.post_as(&app.signed(ACME, json!({"tenant_id": null})), ACME, &b()).await;
    app.post_billing(Some(&token), Some(GLOBEX.2), Some(ACME.0), &b()).await;
    app.post_billing(Some(&token), Some(ACME.2), Some(GLOBEX.0), &b()).await;
    app.post_as(&app.signed(ACME, json!({"exp": Utc::now().timestamp() - 1})), ACME, &b()).await;
    app.post_as(&tamper(&token), ACME, &b()).await;
    app.post_as("garbage", ACME, &b()).await;
    app.post_billing(None, Some(ACME.2), Some(ACME.0), &b()).await;
    app.post_billing(Some(&token), None, None, &b()).await;
    app.post_billing_raw(Some(&token), Some(ACME.2), Some(ACME.0), b"nope".to_vec(), &[]).await;
    app.post_as(&token, ACME, &json!({"events": vec![event("x"); 501]})).await;
    let revoked = app.billing_token(GLOBEX).await;
    assert_eq!(app.emu.revoke_client_tokens(GLOBEX.0), 1);
    app.post_as(&revoked, GLOBEX, &b()).await;
    app.emu.inject(Fault::next(FaultKind::Unavailable, 1));
    app.post_as(&token, ACME, &b()).await;
    app.emu.inject(Fault::next(FaultKind::RateLimited { retry_after_s: 2 }, 1));
    app.post_as(&token, ACME, &b()).await;
    app.emu.inject(Fault::next(FaultKind::DropConnection, 1).on(FaultTarget::All));
    let dropped = app
        .http
        .post(app.emu.billing_url())
        .bearer_auth(&token)
        .header("x-tenant-id", ACME.2)
        .header("x-application-id", ACME.0)
        .json(&b())
        .send()
        .await;
    assert!(dropped.is_err(), "{dropped:?}");
    app.emu.withdraw_tenant(ACME.0, ACME.2).unwrap();
    app.post_as(&token, ACME, &b()).await;
    app.emu.set_billing_rate_per_min(Some(1));
    app.post_as(&token, ACME, &b()).await;

    // Assert
    let seen: BTreeSet<Reason> = app.emu.audit().into_iter().flat_map(|e| e.reasons).collect();
    let all = [
        Reason::MissingScope,
        Reason::ShortScopeForm,
        Reason::AudienceMissing,
        Reason::TenantClaimMissing,
        Reason::TenantMismatch,
        Reason::ApplicationMismatch,
        Reason::TenantNotAuthorized,
        Reason::TokenExpired,
        Reason::BadSignature,
        Reason::TokenRevoked,
        Reason::MissingToken,
        Reason::MalformedToken,
        Reason::RateLimited,
        Reason::MissingHeader,
        Reason::InvalidRequest,
        Reason::PayloadTooLarge,
        Reason::InvalidClient,
        Reason::InvalidScope,
        Reason::UnsupportedGrantType,
        Reason::InjectedUnavailable,
        Reason::InjectedRateLimited,
        Reason::InjectedConnectionDrop,
    ];
    let missing: Vec<_> = all.iter().filter(|r| !seen.contains(r)).collect();
    assert!(missing.is_empty(), "never recorded: {missing:?}");
    for entry in app.emu.audit() {
        assert!(!entry.endpoint.is_empty() && !entry.reasons.is_empty(), "{entry:?}");
        assert!(
            entry.client_id.is_some() || entry.reasons == [Reason::MissingToken] || entry.endpoint.contains("token"),
            "{entry:?}"
        );
    }
    let counters = app.emu.counters();
    assert_eq!(counters.reason(Reason::TokenRevoked), 1);
    assert!(counters.status(401) >= 8, "{counters:?}");
}

#[tokio::test]
async fn the_admin_audit_endpoint_serves_the_same_log() {
    // Arrange
    let app = spawn().await;
    let device = app.token(INITECH, None).await;
    app.post_as(&device, INITECH, &batch(&[&fresh_id("a")])).await;
    // Act
    let r = app.admin(reqwest::Method::GET, "/admin/audit", None).await;
    // Assert
    assert_eq!(r.status, 200);
    let entries: Vec<billsync_emulator::AuditEntry> = serde_json::from_value(r.json["entries"].clone()).unwrap();
    assert_eq!(entries, app.emu.audit());
    assert_eq!(r.json["dropped"], 0);
    assert_eq!(r.json["entries"][0]["reasons"], json!(["missing_scope", "audience_missing"]));
    assert_eq!(r.json["entries"][0]["endpoint"], "POST /iot/api/v2/billing/events");
    assert!(r.json["entries"][0]["time"].as_str().is_some());
}
