//! docs/platform.md section 1 and 2: the token endpoint, the claims, the JWKS.

use std::collections::BTreeSet;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use billsync_emulator::{ClientRegistration, EmulatorConfig, Reason, SettingsUpdate, SigningAlg};
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::sha2::{Sha256, Sha384};
use rsa::signature::Verifier;
use rsa::{BigUint, RsaPublicKey};

use crate::helpers::*;

/// (name, form, HTTP Basic credentials, status, error, audit reason)
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Option<(&'a str, &'a str)>, u16, &'a str, Reason);

#[tokio::test]
async fn client_secret_post_and_basic_both_issue_billing_tokens() {
    let app = spawn().await;
    for basic in [false, true] {
        // Arrange
        let mut form = vec![("grant_type", "client_credentials"), ("scope", BILLING_WRITE)];
        if !basic {
            form.extend([("client_id", ACME.0), ("client_secret", ACME.1)]);
        }
        // Act
        let r = app.token_request(&form, basic.then_some((ACME.0, ACME.1))).await;
        // Assert
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json["token_type"], "Bearer");
        assert_eq!(r.json["expires_in"], 900);
        assert_eq!(r.json["scope"], format!("{DEVICE_WRITE} {BILLING_WRITE}"));
        assert!(r.header("date").is_some(), "a Date header");
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }
}

#[tokio::test]
async fn billing_token_claims_follow_section_2() {
    // Arrange
    let app = spawn().await;
    // Act
    let token = app.billing_token(ACME).await;
    // Assert
    let (header, claims) = jwt_parts(&token);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], app.emu.current_kid().as_str());
    let scopes: BTreeSet<&str> = claims["scope"].as_str().unwrap().split(' ').collect();
    assert!(scopes.contains(BILLING_WRITE), "{claims}");
    assert_eq!(claims["aud"], serde_json::json!([BASE_AUD, BILLING_AUD]));
    assert_eq!(claims["tenant_id"], ACME.2);
    assert_eq!(claims["client_id"], ACME.0);
    assert_eq!(claims["sub"], ACME.0);
    assert_eq!(claims["iss"], app.emu.base_url().as_str());
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 900);
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
}

#[tokio::test]
async fn the_jwks_verifies_issued_tokens() {
    // Arrange
    let app = spawn().await;
    let token = app.billing_token(ACME).await;
    // Act
    let jwks = Reply::read(app.http.get(app.emu.keys_url()).send().await.unwrap()).await;
    // Assert
    assert_eq!(jwks.status, 200);
    let key = &jwks.json["keys"][0];
    assert_eq!(
        (key["kty"].as_str(), key["alg"].as_str(), key["use"].as_str()),
        (Some("RSA"), Some("RS256"), Some("sig"))
    );
    assert_eq!(key["kid"], jwt_parts(&token).0["kid"]);
    let n = URL_SAFE_NO_PAD.decode(key["n"].as_str().unwrap()).unwrap();
    let e = URL_SAFE_NO_PAD.decode(key["e"].as_str().unwrap()).unwrap();
    assert_eq!(n.len(), 256, "2048-bit modulus");
    let public = RsaPublicKey::new(BigUint::from_bytes_be(&n), BigUint::from_bytes_be(&e)).unwrap();
    let (signed, sig) = token.rsplit_once('.').unwrap();
    let sig = Signature::try_from(URL_SAFE_NO_PAD.decode(sig).unwrap().as_slice()).unwrap();
    VerifyingKey::<Sha256>::new(public).verify(signed.as_bytes(), &sig).expect("signature verifies with the JWKS");
}

#[tokio::test]
async fn errors_follow_rfc_6749() {
    let app = spawn().await;
    let ok = [("grant_type", "client_credentials"), ("client_id", ACME.0), ("client_secret", ACME.1)];
    let cases: Vec<Case> = vec![
        (
            "wrong secret",
            vec![ok[0], ok[1], ("client_secret", "nope")],
            None,
            401,
            "invalid_client",
            Reason::InvalidClient,
        ),
        (
            "unknown client",
            vec![ok[0], ("client_id", "app-nobody"), ok[2]],
            None,
            401,
            "invalid_client",
            Reason::InvalidClient,
        ),
        ("no credentials", vec![ok[0]], None, 401, "invalid_client", Reason::InvalidClient),
        ("wrong basic secret", vec![ok[0]], Some((ACME.0, "nope")), 401, "invalid_client", Reason::InvalidClient),
        ("no grant_type", vec![ok[1], ok[2]], None, 400, "invalid_request", Reason::InvalidRequest),
        ("repeated parameter", vec![ok[0], ok[1], ok[2], ok[2]], None, 400, "invalid_request", Reason::InvalidRequest),
        (
            "two auth methods",
            vec![ok[0], ok[2]],
            Some((ACME.0, ACME.1)),
            400,
            "invalid_request",
            Reason::InvalidRequest,
        ),
        (
            "foreign tenant",
            vec![ok[0], ok[1], ok[2], ("tenant_id", GLOBEX.2)],
            None,
            400,
            "invalid_request",
            Reason::InvalidRequest,
        ),
        (
            "password grant",
            vec![("grant_type", "password"), ok[1], ok[2]],
            None,
            400,
            "unsupported_grant_type",
            Reason::UnsupportedGrantType,
        ),
        (
            "unknown scope",
            vec![ok[0], ok[1], ok[2], ("scope", "urn:oracle:iot:everything")],
            None,
            400,
            "invalid_scope",
            Reason::InvalidScope,
        ),
    ];
    for (name, form, basic, status, error, reason) in cases {
        // Act
        let r = app.token_request(&form, basic).await;
        // Assert
        assert_eq!((r.status, r.error()), (status, error), "{name}: {r:?}");
        assert!(r.json["error_description"].as_str().is_some_and(|d| !d.is_empty()), "{name}: {r:?}");
        assert!(!r.text.contains(ACME.1), "{name}: the secret is never echoed");
        assert_eq!(app.last_reasons(), [reason], "{name}");
    }
}

#[tokio::test]
async fn a_client_without_billing_gets_less_than_it_asked_for() {
    // Arrange
    let app = spawn().await;
    // Act
    let r = app
        .token_request(
            &[
                ("grant_type", "client_credentials"),
                ("client_id", INITECH.0),
                ("client_secret", INITECH.1),
                ("scope", &format!("{BILLING_WRITE} {BILLING_READ}")),
                ("audience", BILLING_AUD),
            ],
            None,
        )
        .await;
    // Assert
    assert_eq!(r.status, 200);
    assert_eq!((r.json["scope"].as_str(), r.json["expires_in"].as_u64()), (Some(DEVICE_WRITE), Some(3600)));
    let claims = jwt_parts(r.json["access_token"].as_str().unwrap()).1;
    assert_eq!(claims["aud"], serde_json::json!([BASE_AUD]));
    assert!(app.emu.audit().is_empty(), "a downgrade is not an error");
}

#[tokio::test]
async fn the_short_scope_form_is_echoed_and_refused_on_billing() {
    // Arrange
    let app = spawn().await;
    let r = app
        .token_request(
            &[
                ("grant_type", "client_credentials"),
                ("client_id", ACME.0),
                ("client_secret", ACME.1),
                ("scope", "billing:write"),
            ],
            None,
        )
        .await;
    assert_eq!(r.json["scope"], format!("{DEVICE_WRITE} billing:write"));
    // Act
    let post = app.post_as(r.json["access_token"].as_str().unwrap(), ACME, &batch(&[&fresh_id("s")])).await;
    // Assert
    assert_eq!((post.status, post.error()), (401, "insufficient_claims"));
    assert_eq!(app.last_reasons(), [Reason::ShortScopeForm]);
}

#[tokio::test]
async fn tenant_id_selects_among_a_clients_tenants() {
    // Arrange
    let multi = ClientRegistration::new("app-multi", "secret-multi", ["m-1", "m-2"], true);
    let app = spawn_with(EmulatorConfig::builtin().with_client(multi)).await;
    let base = [("grant_type", "client_credentials"), ("client_id", "app-multi"), ("client_secret", "secret-multi")];
    // Act
    let chosen =
        app.token_request(&[base[0], base[1], base[2], ("tenant_id", "m-2"), ("resource", BILLING_AUD)], None).await;
    let unchosen = app.token_request(&base, None).await;
    // Assert
    assert_eq!(jwt_parts(chosen.json["access_token"].as_str().unwrap()).1["tenant_id"], "m-2");
    let token = unchosen.json["access_token"].as_str().unwrap();
    assert!(jwt_parts(token).1.get("tenant_id").is_none(), "no tenant chosen: no tenant_id claim");
    let post = app.post_billing(Some(token), Some("m-1"), Some("app-multi"), &batch(&[&fresh_id("m")])).await;
    assert_eq!(post.status, 401);
    assert_eq!(app.last_reasons(), [Reason::TenantClaimMissing]);
}

/// The JWKS's key as an RSA public key.
fn public_key(jwk: &serde_json::Value) -> RsaPublicKey {
    let part = |name: &str| BigUint::from_bytes_be(&URL_SAFE_NO_PAD.decode(jwk[name].as_str().unwrap()).unwrap());
    RsaPublicKey::new(part("n"), part("e")).unwrap()
}

#[tokio::test]
async fn the_admin_sign_endpoint_signs_with_the_alg_asked_for() {
    // Arrange: claims a test wants verbatim, iss and nbf included.
    let app = spawn().await;
    let claims = serde_json::json!({"iss": "https://elsewhere.example", "nbf": 4_102_444_800_i64, "sub": ACME.0});
    // Act
    let sign = |query: &'static str| {
        let req = app.http.post(app.url(&format!("/admin/sign{query}"))).header("x-admin-key", app.emu.admin_key());
        async { Reply::read(req.json(&claims).send().await.unwrap()).await }
    };
    let rs384 = sign("?alg=RS384").await;
    let default = sign("").await;
    let hs256 = sign("?alg=HS256").await;
    // Assert
    assert_eq!(rs384.status, 200, "{rs384:?}");
    let token = rs384.json["token"].as_str().unwrap();
    let (header, payload) = jwt_parts(token);
    assert_eq!((header["alg"].as_str(), header["kid"].as_str()), (Some("RS384"), Some(app.emu.current_kid().as_str())));
    assert_eq!(payload, claims);
    let (signed, sig) = token.rsplit_once('.').unwrap();
    let sig = Signature::try_from(URL_SAFE_NO_PAD.decode(sig).unwrap().as_slice()).unwrap();
    let key = public_key(&serde_json::to_value(&app.emu.jwks().keys[0]).unwrap());
    VerifyingKey::<Sha384>::new(key).verify(signed.as_bytes(), &sig).expect("RS384 with the published key");
    assert_eq!(jwt_parts(default.json["token"].as_str().unwrap()).0["alg"], "RS256");
    assert_eq!((hs256.status, hs256.error()), (400, "invalid_request"), "{hs256:?}");
    assert!(hs256.json["error_description"].as_str().unwrap().contains("alg"), "{hs256:?}");
    // The platform itself takes RS256 only.
    let good_claims = jwt_parts(&app.signed(ACME, serde_json::json!({}))).1;
    let rs512 = app.emu.sign_claims_with(&good_claims, SigningAlg::Rs512);
    assert_eq!(jwt_parts(&rs512).0["alg"], "RS512");
    assert_eq!(app.post_as(&rs512, ACME, &batch(&[&fresh_id("a")])).await.status, 401);
    assert_eq!(app.last_reasons(), [Reason::BadSignature]);
}

#[tokio::test]
async fn the_jwks_carries_the_max_age_the_settings_give() {
    // Arrange
    let app = spawn().await;
    let jwks = || async { Reply::read(app.http.get(app.emu.keys_url()).send().await.unwrap()).await };
    let unset = jwks().await;
    // Act
    let set = app.http.post(app.url("/admin/settings")).header("x-admin-key", app.emu.admin_key());
    let set = Reply::read(set.json(&serde_json::json!({"jwks_max_age_s": 300})).send().await.unwrap()).await;
    let with_max_age = jwks().await;
    app.emu.update_settings(SettingsUpdate { jwks_max_age_s: Some(None), ..SettingsUpdate::default() });
    let switched_off = jwks().await;
    app.emu.set_jwks_max_age(Some(std::time::Duration::from_secs(60)));
    let by_method = jwks().await;
    // Assert
    assert_eq!(unset.header("cache-control"), None);
    assert_eq!(set.json["jwks_max_age_s"], 300, "{set:?}");
    assert_eq!(with_max_age.header("cache-control"), Some("public, max-age=300"));
    assert_eq!(switched_off.header("cache-control"), None);
    assert_eq!(by_method.header("cache-control"), Some("public, max-age=60"));
    assert_eq!(app.emu.settings().jwks_max_age_s, Some(60));
    assert_eq!(app.emu.counters().requests_by_endpoint.get("GET /oauth2/v1/keys"), Some(&4));
}

#[tokio::test]
async fn a_withdrawn_key_leaves_the_jwks_and_stops_verifying() {
    // Arrange: a token signed with the first key, then a rotation.
    let app = spawn().await;
    let old_kid = app.emu.current_kid();
    let old_token = app.billing_token(ACME).await;
    let new_kid = app.emu.rotate_keys().await.unwrap();
    // Act
    let current_refused = app.emu.withdraw_key(&new_kid);
    let withdrawn = app.emu.withdraw_key(&old_kid);
    let again = app.emu.withdraw_key(&old_kid);
    // Assert
    assert!(!current_refused, "the signing key stays");
    assert!(withdrawn && !again);
    let kids: Vec<String> = app.emu.jwks().keys.into_iter().map(|k| k.kid).collect();
    assert_eq!(kids, [new_kid]);
    assert_eq!(app.post_as(&old_token, ACME, &batch(&[&fresh_id("w")])).await.status, 401);
    assert_eq!(app.last_reasons(), [Reason::BadSignature]);
    let new_token = app.billing_token(ACME).await;
    assert_eq!(app.post_as(&new_token, ACME, &batch(&[&fresh_id("w")])).await.status, 202);
}
