//! The admin API: loopback only, and the same operations as the `Emulator` methods.

use billsync_emulator::{Emulator, EmulatorConfig, Reason};
use serde_json::{Value, json};

use crate::helpers::*;

async fn admin(app: &TestApp, method: reqwest::Method, path: &str, body: Option<Value>) -> Reply {
    let mut req = app.http.request(method, app.url(path));
    if let Some(b) = body {
        req = req.json(&b);
    }
    Reply::read(req.send().await.unwrap()).await
}

#[tokio::test]
async fn the_admin_api_answers_loopback_peers() {
    // Non-loopback peers are refused; that rule is unit-tested in `admin.rs`, because tests
    // here may only send traffic to loopback addresses.
    let emu = Emulator::start(EmulatorConfig::builtin(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let local = reqwest::get(format!("{}/admin/audit", emu.base_url())).await.unwrap();
    assert_eq!(local.status(), 200);
    emu.shutdown().await;
}

#[tokio::test]
async fn client_access_is_managed_over_http() {
    use reqwest::Method;
    // Arrange
    let app = spawn().await;

    // Act
    let billing = admin(&app, Method::POST, "/admin/clients/app-initech/billing", Some(json!({"enabled": true}))).await;
    let token = app.billing_token(INITECH).await;
    let accepted = app.post_as(&token, INITECH, &batch(&[&fresh_id("adm")])).await;
    let withdrawn = admin(&app, Method::DELETE, "/admin/clients/app-initech/tenants/initech-prod-001", None).await;
    let forbidden = app.post_as(&token, INITECH, &batch(&[&fresh_id("adm")])).await;
    let granted = admin(&app, Method::PUT, "/admin/clients/app-initech/tenants/initech-prod-001", None).await;
    let unknown = admin(&app, Method::POST, "/admin/clients/app-nobody/billing", Some(json!({"enabled": true}))).await;
    let registered = admin(
        &app,
        Method::POST,
        "/admin/clients",
        Some(json!({"client_id": "app-new", "client_secret": "s3cr3t", "tenants": ["new-1"], "billing": true})),
    )
    .await;
    let listed = admin(&app, Method::GET, "/admin/clients", None).await;

    // Assert
    assert_eq!((billing.status, billing.json["billing"].as_bool()), (200, Some(true)));
    assert_eq!(accepted.status, 202);
    assert_eq!((withdrawn.status, withdrawn.json["tenants"].clone()), (200, json!([])));
    assert_eq!(forbidden.status, 403);
    assert_eq!((granted.status, granted.json["tenants"].clone()), (200, json!(["initech-prod-001"])));
    assert_eq!((unknown.status, unknown.error()), (404, "unknown_client"));
    assert_eq!(registered.status, 200);
    assert!(!listed.text.contains("secret"), "no secrets in the listing: {}", listed.text);
    assert_eq!(listed.json.as_array().unwrap().len(), 4);
    assert!(!app.token(("app-new", "s3cr3t", "new-1"), None).await.is_empty());
}

#[tokio::test]
async fn revocation_by_jti_and_by_client_over_http() {
    use reqwest::Method;
    // Arrange
    let app = spawn().await;
    let one = app.billing_token(ACME).await;
    let two = app.billing_token(ACME).await;
    let jti = jwt_parts(&one).1["jti"].as_str().unwrap().to_owned();

    // Act
    let by_jti = admin(&app, Method::POST, "/admin/revoke", Some(json!({"jti": jti}))).await;
    let still = app.post_as(&two, ACME, &batch(&[&fresh_id("rv")])).await;
    let by_client = admin(&app, Method::POST, "/admin/revoke", Some(json!({"client_id": ACME.0}))).await;
    let refused = app.post_as(&two, ACME, &batch(&[&fresh_id("rv")])).await;
    let fresh = app.billing_token(ACME).await;
    let after = app.post_as(&fresh, ACME, &batch(&[&fresh_id("rv")])).await;

    // Assert
    assert_eq!(by_jti.json["revoked"], 1);
    assert_eq!(still.status, 202);
    assert_eq!(by_client.json["revoked"], 1, "the first was already revoked");
    assert_eq!((refused.status, refused.error()), (401, "invalid_token"));
    assert_eq!(app.last_audit().reasons, [Reason::TokenRevoked]);
    assert_eq!(after.status, 202, "tokens issued after the revocation work");
}

#[tokio::test]
async fn key_rotation_keeps_old_tokens_valid() {
    use reqwest::Method;
    // Arrange
    let app = spawn().await;
    let old = app.billing_token(ACME).await;
    let old_kid = jwt_parts(&old).0["kid"].clone();

    // Act
    let rotated = admin(&app, Method::POST, "/admin/keys/rotate", None).await;
    let new = app.billing_token(ACME).await;
    let jwks = admin(&app, Method::GET, "/oauth2/v1/keys", None).await;
    let with_old = app.post_as(&old, ACME, &batch(&[&fresh_id("k")])).await;
    let with_new = app.post_as(&new, ACME, &batch(&[&fresh_id("k")])).await;
    let by_method = app.emu.rotate_keys().await.unwrap();

    // Assert
    assert_eq!(rotated.status, 200);
    assert_eq!(jwt_parts(&new).0["kid"], rotated.json["kid"]);
    assert_ne!(rotated.json["kid"], old_kid);
    let kids: Vec<&Value> = jwks.json["keys"].as_array().unwrap().iter().map(|k| &k["kid"]).collect();
    assert_eq!(kids, [&rotated.json["kid"], &old_kid]);
    assert_eq!((with_old.status, with_new.status), (202, 202));
    assert_eq!(app.emu.current_kid(), by_method);
    assert_eq!(app.emu.jwks().keys.len(), 3);
}

#[tokio::test]
async fn counters_events_and_faults_over_http() {
    use reqwest::Method;
    // Arrange
    let app = spawn().await;
    let token = app.billing_token(ACME).await;
    let ids = [fresh_id("c"), fresh_id("c")];
    app.post_as(&token, ACME, &batch(&[&ids[0], &ids[1]])).await;
    app.post_as(&token, ACME, &batch(&[&ids[0]])).await;

    // Act
    let counters = admin(&app, Method::GET, "/admin/counters", None).await;
    let events = admin(&app, Method::GET, &format!("/admin/events/{}", ACME.2), None).await;
    let injected =
        admin(&app, Method::POST, "/admin/faults", Some(json!({"kind": "unavailable", "trigger": {"next": 1}}))).await;
    let faulted = app.post_as(&token, ACME, &batch(&[&fresh_id("c")])).await;
    let bad_fault = admin(&app, Method::POST, "/admin/faults", Some(json!({"kind": "meteor"}))).await;
    let cleared = admin(&app, Method::DELETE, "/admin/faults", None).await;

    // Assert
    assert_eq!(counters.json["events_stored"][ACME.2], 2);
    assert_eq!(counters.json["events_duplicate"][ACME.2], 1);
    assert_eq!(counters.json["requests_by_status"]["202"], 2);
    assert_eq!(counters.json["tokens_issued"], 1);
    assert_eq!(events.json["event_ids"], json!(ids));
    assert_eq!(injected.status, 200);
    assert_eq!(faulted.status, 503);
    assert_eq!(bad_fault.status, 400);
    assert_eq!(cleared.status, 204);
    assert!(app.emu.faults().is_empty());
}
