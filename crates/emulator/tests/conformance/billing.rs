//! docs/platform.md section 3: every row of the response table, and the headers on every response.

use billsync_emulator::{Fault, FaultKind, Reason};
use chrono::Utc;
use serde_json::{Value, json};

use crate::helpers::*;

const VAGUE_401: &str = r#"{"error":"insufficient_claims","error_description":"insufficient claims"}"#;

#[tokio::test]
async fn row_202_accepts_reports_duplicates_and_rejects_bad_events() {
    // Arrange
    let app = spawn().await;
    let token = app.billing_token(ACME).await;
    let (a, b, c) = (fresh_id("a"), fresh_id("b"), fresh_id("c"));
    let first = app.post_as(&token, ACME, &batch(&[&a])).await;
    let mut bad = event(&c);
    bad["quantity"] = json!(12.5);
    let body = json!({"events": [event(&a), event(&b), bad, event(&b)]});

    // Act
    let r = app
        .post_billing_raw(
            Some(&token),
            Some(ACME.2),
            Some(ACME.0),
            body.to_string().into_bytes(),
            &[("idempotency-key", "batch-1")],
        )
        .await;

    // Assert
    assert_eq!((first.status, first.json["accepted"].as_u64()), (202, Some(1)));
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.json["accepted"], 1);
    assert_eq!(r.json["duplicates"], json!([a, b]), "stored before, and repeated within the batch");
    assert_eq!(r.json["rejected"][0]["event_id"], c.as_str());
    assert_eq!(r.json["rejected"][0]["code"], "invalid_quantity");
    assert!(r.json["rejected"][0]["message"].as_str().unwrap().contains("decimal string"));
    assert_eq!(r.header("idempotency-key"), Some("batch-1"));
    assert_eq!(app.emu.stored_event_ids(ACME.2), [a, b]);
}

#[tokio::test]
async fn rejection_codes_name_the_field() {
    let app = spawn().await;
    let token = app.billing_token(ACME).await;
    let future = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let cases: Vec<(&str, Value, &str)> = vec![
        ("quantity", json!("-1"), "invalid_quantity"),
        ("unit", json!(""), "invalid_unit"),
        ("occurred_at", json!(future), "invalid_occurred_at"),
        ("device_id", json!(null), "invalid_device_id"),
        ("meter", json!("a\u{7}b"), "invalid_meter"),
        ("attributes", json!({"site": 7}), "invalid_attributes"),
        ("quantiy", json!("1"), "invalid_event"),
    ];
    for (field, value, code) in cases {
        // Arrange
        let id = fresh_id("r");
        let mut e = event(&id);
        e[field] = value;
        // Act
        let r = app.post_as(&token, ACME, &json!({"events": [e]})).await;
        // Assert
        assert_eq!(r.status, 202);
        assert_eq!(
            (r.json["accepted"].as_u64(), r.json["rejected"][0]["code"].as_str()),
            (Some(0), Some(code)),
            "{field}: {r:?}"
        );
        assert_eq!(r.json["rejected"][0]["event_id"], id.as_str());
    }
    // An event without a usable id is reported with an empty id and its position.
    let r = app.post_as(&token, ACME, &json!({"events": [event(&fresh_id("ok")), {"event_id": 7}]})).await;
    assert_eq!(
        (r.json["rejected"][0]["event_id"].as_str(), r.json["rejected"][0]["code"].as_str()),
        (Some(""), Some("invalid_event_id"))
    );
    assert_eq!(r.json["rejected"][0]["index"], 1);
}

#[tokio::test]
async fn row_400_invalid_request_for_a_malformed_batch() {
    let app = spawn().await;
    let token = app.billing_token(ACME).await;
    for (name, body) in [
        ("not json", b"{\"events\": [".to_vec()),
        ("empty list", br#"{"events": []}"#.to_vec()),
        ("not a list", br#"{"events": {}}"#.to_vec()),
        ("no events key", br#"{"evnts": []}"#.to_vec()),
    ] {
        // Act
        let r = app.post_billing_raw(Some(&token), Some(ACME.2), Some(ACME.0), body, &[]).await;
        // Assert
        assert_eq!((r.status, r.error()), (400, "invalid_request"), "{name}: {r:?}");
        assert!(r.json["error_description"].as_str().is_some_and(|d| !d.is_empty()));
        assert_eq!(app.last_reasons(), [Reason::InvalidRequest]);
    }
}

#[tokio::test]
async fn row_400_missing_header_names_the_header() {
    let app = spawn().await;
    let token = app.billing_token(ACME).await;
    for (tenant, application, named) in [(None, Some(ACME.0), "X-Tenant-ID"), (Some(ACME.2), None, "X-Application-ID")]
    {
        // Act
        let r = app.post_billing(Some(&token), tenant, application, &batch(&[&fresh_id("h")])).await;
        // Assert
        assert_eq!((r.status, r.error()), (400, "missing_header"), "{r:?}");
        assert!(r.json["error_description"].as_str().unwrap().contains(named), "{r:?}");
        assert_eq!(app.last_reasons(), [Reason::MissingHeader]);
    }
}

#[tokio::test]
async fn row_401_invalid_token_for_expired_revoked_and_forged_tokens() {
    // Arrange
    let app = spawn().await;
    let good = app.billing_token(ACME).await;
    let revoked = app.billing_token(ACME).await;
    assert!(app.emu.revoke_token(jwt_parts(&revoked).1["jti"].as_str().unwrap()));
    let expired = app.signed(ACME, json!({"exp": Utc::now().timestamp() - 5}));
    let (signed_part, _) = good.rsplit_once('.').unwrap();
    let (_, other_sig) =
        app.billing_token(GLOBEX).await.rsplit_once('.').map(|(a, b)| (a.to_owned(), b.to_owned())).unwrap();
    let forged = format!("{signed_part}.{other_sig}");
    let cases: Vec<(&str, Option<&str>, Reason)> = vec![
        ("expired", Some(&expired), Reason::TokenExpired),
        ("revoked", Some(&revoked), Reason::TokenRevoked),
        ("forged", Some(&forged), Reason::BadSignature),
        ("not a jwt", Some("not-a-jwt"), Reason::MalformedToken),
        ("no token", None, Reason::MissingToken),
    ];
    for (name, token, reason) in cases {
        // Act
        let r = app.post_billing(token, Some(ACME.2), Some(ACME.0), &batch(&[&fresh_id("x")])).await;
        // Assert
        assert_eq!(r.status, 401, "{name}");
        assert_eq!(r.text, r#"{"error":"invalid_token"}"#, "{name}");
        assert_eq!(r.header("www-authenticate"), Some(r#"Bearer error="invalid_token""#), "{name}");
        assert_eq!(app.last_reasons(), [reason], "{name}");
    }
    assert!(app.emu.stored_event_ids(ACME.2).is_empty());
}

#[tokio::test]
async fn a_token_issued_with_a_zero_lifetime_is_expired() {
    // Arrange
    let app = spawn().await;
    app.emu.set_billing_token_lifetime(std::time::Duration::ZERO);
    let token = app.billing_token(ACME).await;
    // Act
    let r = app.post_as(&token, ACME, &batch(&[&fresh_id("z")])).await;
    // Assert
    assert_eq!((r.status, r.error()), (401, "invalid_token"));
    assert_eq!(app.last_reasons(), [Reason::TokenExpired]);
}

#[tokio::test]
async fn row_401_insufficient_claims_is_vague_and_the_audit_is_precise() {
    use Reason::*;
    let app = spawn().await;
    let cases: Vec<(&str, Value, &str, &str, Vec<Reason>)> = vec![
        (
            "device token",
            json!({"scope": DEVICE_WRITE, "aud": [BASE_AUD]}),
            ACME.2,
            ACME.0,
            vec![MissingScope, AudienceMissing],
        ),
        ("read scope only", json!({"scope": BILLING_READ}), ACME.2, ACME.0, vec![MissingScope]),
        ("short scope", json!({"scope": "billing:write"}), ACME.2, ACME.0, vec![ShortScopeForm]),
        ("base audience only", json!({"aud": BASE_AUD}), ACME.2, ACME.0, vec![AudienceMissing]),
        ("no tenant claim", json!({"tenant_id": null}), ACME.2, ACME.0, vec![TenantClaimMissing]),
        ("other tenant header", json!({}), GLOBEX.2, ACME.0, vec![TenantMismatch]),
        ("other application header", json!({}), ACME.2, GLOBEX.0, vec![ApplicationMismatch]),
        ("no client_id claim", json!({"client_id": null}), ACME.2, ACME.0, vec![ApplicationMismatch]),
        (
            "everything wrong",
            json!({"scope": "openid", "aud": ["https://elsewhere"], "tenant_id": "someone"}),
            ACME.2,
            GLOBEX.0,
            vec![MissingScope, AudienceMissing, TenantMismatch, ApplicationMismatch],
        ),
    ];
    for (name, changes, tenant, application, reasons) in cases {
        // Arrange
        let token = app.signed(ACME, changes);
        // Act
        let r = app.post_billing(Some(&token), Some(tenant), Some(application), &batch(&[&fresh_id("c")])).await;
        // Assert
        assert_eq!(r.status, 401, "{name}");
        assert_eq!(r.text, VAGUE_401, "{name}: the body never names the claim");
        assert_eq!(r.header("www-authenticate"), Some(r#"Bearer error="insufficient_claims""#), "{name}");
        assert_eq!(app.last_reasons(), reasons, "{name}");
    }
}

#[tokio::test]
async fn row_403_when_the_tenant_was_withdrawn_from_the_client() {
    // Arrange
    let app = spawn().await;
    let token = app.billing_token(ACME).await;
    app.emu.withdraw_tenant(ACME.0, ACME.2).unwrap();
    // Act
    let r = app.post_as(&token, ACME, &batch(&[&fresh_id("w")])).await;
    // Assert
    assert_eq!((r.status, r.text.as_str()), (403, r#"{"error":"tenant_not_authorized"}"#));
    assert_eq!(app.last_reasons(), [Reason::TenantNotAuthorized]);
    app.emu.grant_tenant(ACME.0, ACME.2).unwrap();
    assert_eq!(app.post_as(&token, ACME, &batch(&[&fresh_id("w")])).await.status, 202);
}

#[tokio::test]
async fn row_413_for_more_than_500_events_or_more_than_1_mib() {
    // Arrange
    let app = spawn().await;
    app.emu.set_billing_rate_per_min(None);
    let token = app.billing_token(ACME).await;
    let ids: Vec<String> = (0..501).map(|_| fresh_id("big")).collect();
    let many = batch(&ids.iter().map(String::as_str).collect::<Vec<_>>());
    let mut heavy = batch(&[&fresh_id("heavy")]).to_string().into_bytes();
    heavy.extend(std::iter::repeat_n(b' ', 1024 * 1024));
    let exactly_500 = batch(&ids[..500].iter().map(String::as_str).collect::<Vec<_>>());

    // Act
    let too_many = app.post_as(&token, ACME, &many).await;
    let too_big = app.post_billing_raw(Some(&token), Some(ACME.2), Some(ACME.0), heavy, &[]).await;
    let at_the_limit = app.post_as(&token, ACME, &exactly_500).await;

    // Assert
    for r in [&too_many, &too_big] {
        assert_eq!((r.status, r.text.as_str()), (413, r#"{"error":"payload_too_large"}"#));
    }
    assert_eq!(app.last_reasons(), [Reason::PayloadTooLarge]);
    assert_eq!((at_the_limit.status, at_the_limit.json["accepted"].as_u64()), (202, Some(500)));
}

#[tokio::test]
async fn row_429_with_retry_after() {
    // Arrange
    let app = spawn().await;
    app.emu.set_billing_rate_per_min(Some(1));
    let token = app.billing_token(ACME).await;
    assert_eq!(app.post_as(&token, ACME, &batch(&[&fresh_id("q")])).await.status, 202);
    // Act
    let r = app.post_as(&token, ACME, &batch(&[&fresh_id("q")])).await;
    // Assert
    assert_eq!((r.status, r.text.as_str()), (429, r#"{"error":"rate_limited"}"#));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(app.last_reasons(), [Reason::RateLimited]);
}

#[tokio::test]
async fn row_5xx_is_transient() {
    // Arrange
    let app = spawn().await;
    let token = app.billing_token(ACME).await;
    app.emu.inject(Fault::next(FaultKind::Unavailable, 1));
    let id = fresh_id("u");
    // Act
    let first = app.post_as(&token, ACME, &batch(&[&id])).await;
    let retry = app.post_as(&token, ACME, &batch(&[&id])).await;
    // Assert
    assert_eq!(first.status, 503);
    assert_eq!((retry.status, retry.json["accepted"].as_u64()), (202, Some(1)));
}

#[tokio::test]
async fn every_response_carries_the_rate_limit_headers() {
    // Arrange: one request for each row.
    let app = spawn().await;
    let token = app.billing_token(ACME).await;
    let device = app.token(INITECH, None).await;
    let b = batch(&[&fresh_id("h")]);
    let mut replies = vec![
        app.post_as(&token, ACME, &b).await,
        app.post_billing_raw(Some(&token), Some(ACME.2), Some(ACME.0), b"[".to_vec(), &[]).await,
        app.post_billing(Some(&token), None, Some(ACME.0), &b).await,
        app.post_billing(None, None, None, &b).await,
        app.post_as(&device, INITECH, &b).await,
        app.post_as(&token, ACME, &json!({"events": vec![event("x"); 501]})).await,
    ];
    app.emu.inject(Fault::next(FaultKind::Unavailable, 1));
    replies.push(app.post_as(&token, ACME, &b).await);
    app.emu.withdraw_tenant(ACME.0, ACME.2).unwrap();
    replies.push(app.post_as(&token, ACME, &b).await);
    app.emu.set_billing_rate_per_min(Some(1));
    replies.push(app.post_as(&token, ACME, &b).await);

    // Assert
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [202, 400, 400, 401, 401, 413, 503, 403, 429]);
    for r in &replies {
        let (limit, remaining, _reset) = r.rate();
        assert!(remaining <= limit, "{r:?}");
    }
    assert_eq!(replies[0].rate(), (100, 99, 60));
    assert_eq!(replies[8].rate().1, 0);
}
