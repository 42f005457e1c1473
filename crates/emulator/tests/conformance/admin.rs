//! The admin API: loopback peers naming a loopback (or allowed) `Host`, with the per-run key;
//! and the same operations as the `Emulator` methods.

use billsync_emulator::{Emulator, EmulatorConfig, Reason};
use serde_json::{Value, json};

use crate::helpers::*;

async fn admin(app: &TestApp, method: reqwest::Method, path: &str, body: Option<Value>) -> Reply {
    app.admin(method, path, body).await
}

#[tokio::test]
async fn the_admin_api_answers_loopback_peers_with_the_key() {
    // Non-loopback peers are refused; that rule is unit-tested in `http/admin_gate.rs`,
    // because tests here may only send traffic to loopback addresses.
    let emu = Emulator::start(EmulatorConfig::builtin(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let local = http.get(format!("{}/admin/audit", emu.base_url())).header("X-Admin-Key", emu.admin_key());
    let local = Reply::read(local.send().await.unwrap()).await;
    assert_eq!(local.status, 200, "{local:?}");
    assert_eq!(local.json, json!({"entries": [], "dropped": 0}));
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

// --- the admin key, the Host rule, the audit cap and the header-read timeout ----------------

/// `GET /admin/counters` with the given `X-Admin-Key` and `Host` (None: header absent / reqwest's own).
async fn counters_with(app: &TestApp, key: Option<&str>, host: Option<&str>) -> Reply {
    let mut req = app.http.get(app.url("/admin/counters"));
    if let Some(k) = key {
        req = req.header("x-admin-key", k);
    }
    if let Some(h) = host {
        req = req.header("host", h);
    }
    Reply::read(req.send().await.unwrap()).await
}

#[tokio::test]
async fn an_admin_request_without_the_key_is_refused() {
    // Arrange
    let app = spawn().await;
    // Act
    let r = counters_with(&app, None, None).await;
    // Assert
    assert_eq!((r.status, r.error()), (401, "admin_key_required"), "{r:?}");
    assert!(r.json["error_description"].as_str().is_some_and(|d| d.contains("X-Admin-Key")), "{r:?}");
    assert!(!r.text.contains(app.emu.admin_key()), "the refusal never shows the key");
}

#[tokio::test]
async fn an_admin_request_with_a_wrong_key_is_refused() {
    // Arrange
    let app = spawn().await;
    let key = app.emu.admin_key().to_owned();
    let mut near = key.clone().into_bytes();
    near[31] = if near[31] == b'0' { b'1' } else { b'0' };
    // Act
    let wrong = counters_with(&app, Some("0123456789abcdef0123456789abcdef"), None).await;
    let one_off = counters_with(&app, Some(std::str::from_utf8(&near).unwrap()), None).await;
    let prefix = counters_with(&app, Some(&key[..31]), None).await;
    let longer = counters_with(&app, Some(&format!("{key}0")), None).await;
    let empty = counters_with(&app, Some(""), None).await;
    let right = counters_with(&app, Some(&key), None).await;
    // Assert
    for r in [&wrong, &one_off, &prefix, &longer, &empty] {
        assert_eq!((r.status, r.error()), (401, "admin_key_required"), "{r:?}");
    }
    assert_eq!(right.status, 200, "{right:?}");
    assert_eq!(right.json["tokens_issued"], 0);
}

#[tokio::test]
async fn a_given_admin_key_is_the_one_required() {
    // Arrange
    let app = spawn_with(EmulatorConfig::builtin().admin_key("ci-admin-key-0123456789")).await;
    // Act
    let with_it = counters_with(&app, Some("ci-admin-key-0123456789"), None).await;
    // Assert
    assert_eq!(app.emu.admin_key(), "ci-admin-key-0123456789");
    assert_eq!(with_it.status, 200, "{with_it:?}");
    let short = Emulator::start(EmulatorConfig::builtin().admin_key("short"), "127.0.0.1:0".parse().unwrap()).await;
    assert!(short.unwrap_err().to_string().contains("admin_key"));
}

#[tokio::test]
async fn an_admin_request_naming_a_foreign_host_is_refused_even_with_the_key() {
    // Arrange
    let app = spawn().await;
    let key = app.emu.admin_key().to_owned();
    // Act
    let evil = counters_with(&app, Some(&key), Some("evil.example")).await;
    let evil_port = counters_with(&app, Some(&key), Some("evil.example:8787")).await;
    let rebound = counters_with(&app, Some(&key), Some("localhost.evil.example")).await;
    let localhost = counters_with(&app, Some(&key), Some("localhost:8787")).await;
    let v6 = counters_with(&app, Some(&key), Some("[::1]:8787")).await;
    let v4 = counters_with(&app, Some(&key), Some("127.0.0.1")).await;
    // Assert
    for r in [&evil, &evil_port, &rebound] {
        assert_eq!((r.status, r.error()), (403, "host_not_allowed"), "{r:?}");
        assert!(r.json["error_description"].as_str().is_some_and(|d| d.contains("Host")), "{r:?}");
    }
    assert_eq!((localhost.status, v6.status, v4.status), (200, 200, 200));
}

#[tokio::test]
async fn an_allowed_host_name_reaches_the_admin_api() {
    // Arrange
    let app = spawn_with(EmulatorConfig::builtin().allow_host("billsync-emulator")).await;
    let key = app.emu.admin_key().to_owned();
    // Act
    let allowed = counters_with(&app, Some(&key), Some("BillSync-Emulator:8787")).await;
    let other = counters_with(&app, Some(&key), Some("evil.example")).await;
    let without_key = counters_with(&app, None, Some("billsync-emulator")).await;
    // Assert
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!((other.status, other.error()), (403, "host_not_allowed"));
    assert_eq!((without_key.status, without_key.error()), (401, "admin_key_required"));
    let bad = Emulator::start(EmulatorConfig::builtin().allow_host("a:1"), "127.0.0.1:0".parse().unwrap()).await;
    assert!(bad.unwrap_err().to_string().contains("allowed_hosts[0]"));
}

#[tokio::test]
async fn the_audit_log_is_a_ring_buffer_that_counts_what_it_drops() {
    // Arrange: room for 5 entries.
    let app = spawn_with(EmulatorConfig::builtin().audit_capacity(5)).await;
    // Act: 8 refused requests (no token).
    for _ in 0..8 {
        assert_eq!(app.post_billing(None, Some(ACME.2), Some(ACME.0), &batch(&[&fresh_id("ring")])).await.status, 401);
    }
    let r = app.admin(reqwest::Method::GET, "/admin/audit", None).await;
    // Assert: the last 5 are kept.
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["dropped"], 3, "{r:?}");
    let seqs: Vec<u64> = r.json["entries"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [4, 5, 6, 7, 8]);
    assert_eq!((app.emu.audit().len(), app.emu.audit_dropped()), (5, 3));
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_headers_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Arrange: a request line and one header, then silence.
    let app = spawn().await;
    let mut s = tokio::net::TcpStream::connect(app.emu.local_addr()).await.unwrap();
    s.write_all(b"GET /admin/audit HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
    let started = std::time::Instant::now();
    // Act
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(15), s.read_to_end(&mut rest)).await;
    // Assert: closed (end of stream or reset) after the 10 s header-read timeout, not before.
    assert!(closed.is_ok(), "the connection is still open after 15 s");
    assert!(started.elapsed() >= std::time::Duration::from_millis(9_500), "closed after {:?}", started.elapsed());
    assert_eq!(billsync_emulator::HEADER_READ_TIMEOUT, std::time::Duration::from_secs(10));
}
