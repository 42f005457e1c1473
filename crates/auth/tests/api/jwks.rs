//! Signature verification against the JWKS.

use billsync_auth::TokenCache;
use billsync_domain::{TokenError, TokenSource};

use crate::helpers::*;

async fn with_signing(signing: Signing) -> (Stub, Result<billsync_domain::BillingRequestHeaders, TokenError>) {
    let stub = Stub::start(Reply::Token(TokenSpec::good().signing(signing))).await;
    let cache = TokenCache::new(config(&stub), [auth().with_jwks_verification(true)]).unwrap();
    let r = cache.headers(&tenant()).await;
    (stub, r)
}

fn refused_with(r: &Result<billsync_domain::BillingRequestHeaders, TokenError>, code: &str) {
    match r {
        Err(TokenError::Refused { error, description }) => {
            assert_eq!(error, code, "{description:?}");
            assert!(description.is_some());
        }
        other => panic!("expected refusal {code}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_properly_signed_token_verifies_and_the_jwks_is_cached() {
    let stub = Stub::start(Reply::good()).await;
    let cache = TokenCache::new(config(&stub), [auth().with_jwks_verification(true)]).unwrap();
    let h1 = cache.headers(&tenant()).await.unwrap();
    cache.invalidate(&tenant(), &h1).await;
    cache.headers(&tenant()).await.unwrap();
    assert_eq!((stub.token_requests(), stub.jwks_requests()), (2, 1));
}

#[tokio::test]
async fn alg_none_is_refused() {
    let (_, r) = with_signing(Signing::AlgNone).await;
    refused_with(&r, "alg_none");
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_refused() {
    let (_, r) = with_signing(Signing::Hs256WithPublicKey).await;
    refused_with(&r, "symmetric_alg");
}

#[tokio::test]
async fn an_unknown_kid_is_refused_after_one_refetch() {
    let (stub, r) = with_signing(Signing::Rs256 { kid: "rotated-away".into() }).await;
    refused_with(&r, "unknown_kid");
    assert_eq!(stub.jwks_requests(), 1);
}

#[tokio::test]
async fn a_bad_signature_is_refused() {
    let (_, r) = with_signing(Signing::OtherKey { kid: KID.into() }).await;
    refused_with(&r, "bad_signature");
}

#[tokio::test]
async fn a_tampered_payload_is_refused() {
    // A good token whose payload was swapped for one with more rights.
    let good = sign(
        &claims_at(chrono::Utc::now().timestamp(), 900, &serde_json::json!({"scope": "x"})),
        &Signing::Rs256 { kid: KID.into() },
    );
    let forged_payload = b64(&claims_at(chrono::Utc::now().timestamp(), 900, &serde_json::json!({})).to_string());
    let parts: Vec<&str> = good.split('.').collect();
    let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    let stub = Stub::start(Reply::status(
        200,
        &format!(r#"{{"access_token":"{forged}","token_type":"Bearer","expires_in":900}}"#),
    ))
    .await;
    let cache = TokenCache::new(config(&stub), [auth().with_jwks_verification(true)]).unwrap();
    refused_with(&cache.headers(&tenant()).await, "bad_signature");
    // Without verification, the same forged token would have passed the claim checks.
    let cache = TokenCache::new(config(&stub), [auth()]).unwrap();
    assert!(cache.headers(&tenant()).await.is_ok());
}

#[tokio::test]
async fn opaque_tokens_cannot_be_verified() {
    let mut spec = TokenSpec::good();
    spec.opaque = true;
    let stub = Stub::start(Reply::Token(spec)).await;
    let cache = TokenCache::new(config(&stub), [auth().with_jwks_verification(true)]).unwrap();
    refused_with(&cache.headers(&tenant()).await, "unverifiable_token");
}
