//! Signature verification against the JWKS (RFC 8725): RS256 only, the JWK's `alg`, `iss` and
//! `nbf`, the JWKS cache's lifetime and the unknown-`kid` refetch throttle.
//!
//! No test waits for time to pass: the stub mints `iat`/`exp` from the [`ManualClock`] the cache
//! reads, and a test moves that clock (see `cache.rs`).

use std::sync::Arc;
use std::time::Duration;

use billsync_auth::{AuthConfig, TokenCache};
use billsync_domain::{BillingRequestHeaders, ManualClock, TokenError, TokenSource};
use chrono::{DateTime, Utc};
use jsonwebtoken::Algorithm;
use serde_json::json;

use crate::helpers::*;

async fn with_signing(signing: Signing) -> (Stub, Result<billsync_domain::BillingRequestHeaders, TokenError>) {
    let stub = Stub::start(Reply::Token(TokenSpec::good().signing(signing))).await;
    let cache = TokenCache::new(config(&stub), [auth().with_jwks_verification(true)]).unwrap();
    let r = cache.headers(&tenant()).await;
    (stub, r)
}

fn refused_with(r: &Result<billsync_domain::BillingRequestHeaders, TokenError>, code: &str) {
    refusal_naming(r, code, "");
}

/// Asserts a refusal with `code` whose description mentions `named` (a claim, header, value).
fn refusal_naming(r: &Result<BillingRequestHeaders, TokenError>, code: &str, named: &str) {
    match r {
        Err(TokenError::Refused { error, description: Some(d) }) => {
            assert_eq!(error, code, "{d}");
            assert!(d.contains(named), "{d:?} should name {named:?}");
        }
        other => panic!("expected refusal {code}, got {other:?}"),
    }
}

/// Where the shared clock starts: a whole second.
fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_900_000_000, 0).unwrap()
}

/// A stub and a verifying cache (built from `config`) reading one manual clock at [`t0`].
async fn on_manual_clock(
    reply: Reply,
    config: impl FnOnce(&Stub) -> AuthConfig,
) -> (Stub, TokenCache, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(t0()));
    let stub = Stub::with_clock(reply, clock.clone()).await;
    let cache = TokenCache::with_clock(config(&stub), [auth().with_jwks_verification(true)], clock.clone()).unwrap();
    (stub, cache, clock)
}

/// A new token from the token endpoint, verified (the cached one is dropped afterwards, so the
/// next call asks for another).
async fn fresh(cache: &TokenCache) -> Result<BillingRequestHeaders, TokenError> {
    let r = cache.headers(&tenant()).await;
    if let Ok(h) = &r {
        cache.invalidate(&tenant(), h).await;
    }
    r
}

/// The stub signs its next tokens with the published key under `kid`.
fn sign_as(stub: &Stub, kid: &str) {
    stub.set_default(Reply::Token(TokenSpec::good().signing(Signing::Rs256 { kid: kid.into() })));
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

#[tokio::test]
async fn rs384_rs512_and_ps256_with_the_published_key_are_refused_as_not_rs256() {
    for alg in [Algorithm::RS384, Algorithm::RS512, Algorithm::PS256] {
        let (_, r) = with_signing(Signing::SameKey { alg, kid: KID.into() }).await;
        refusal_naming(&r, "unsupported_alg", &format!("{alg:?}"));
    }
}

#[tokio::test]
async fn a_key_published_for_another_alg_does_not_verify_an_rs256_token() {
    let stub = Stub::start(Reply::good()).await;
    let verifying = || TokenCache::new(config(&stub), [auth().with_jwks_verification(true)]).unwrap();
    stub.set_jwks_keys(vec![jwk(KID, None)]);
    assert!(verifying().headers(&tenant()).await.is_ok(), "a JWK without alg verifies RS256");

    stub.set_jwks_keys(vec![jwk(KID, Some("RS512"))]);
    refusal_naming(&verifying().headers(&tenant()).await, "alg_mismatch", "RS512");
}

#[tokio::test]
async fn a_wrong_iss_is_refused_when_an_issuer_is_configured_and_accepted_otherwise() {
    // The stub's tokens say iss = https://idcs.example.com.
    let stub = Stub::start(Reply::good()).await;
    let with_issuer = |issuer: Option<&str>, verify: bool| {
        let c = config(&stub);
        let c = match issuer {
            Some(i) => c.with_token_issuer(i),
            None => c,
        };
        TokenCache::new(c, [auth().with_jwks_verification(verify)]).unwrap()
    };

    let wrong = with_issuer(Some("https://idcs.example.com/other"), true).headers(&tenant()).await;
    refusal_naming(&wrong, "wrong_issuer", "iss");
    let unverified = with_issuer(Some("https://idcs.example.com/other"), false).headers(&tenant()).await;
    refusal_naming(&unverified, "wrong_issuer", "https://idcs.example.com/other");
    assert!(with_issuer(Some("https://idcs.example.com"), true).headers(&tenant()).await.is_ok());
    assert!(with_issuer(None, true).headers(&tenant()).await.is_ok(), "no issuer configured: iss is not checked");

    stub.set_default(Reply::Token(TokenSpec::good().claims(json!({"iss": null}))));
    let missing = with_issuer(Some("https://idcs.example.com"), true).headers(&tenant()).await;
    refusal_naming(&missing, "wrong_issuer", "no iss");
}

#[tokio::test]
async fn an_nbf_beyond_the_leeway_is_refused_and_within_it_accepted() {
    let (stub, cache, _clock) = on_manual_clock(Reply::good(), config).await;
    let now = t0().timestamp();

    stub.set_default(Reply::Token(TokenSpec::good().claims(json!({"nbf": now + 3}))));
    refusal_naming(&fresh(&cache).await, "not_yet_valid", "nbf");

    stub.set_default(Reply::Token(TokenSpec::good().claims(json!({"nbf": now + 2}))));
    assert!(fresh(&cache).await.is_ok(), "2 s ahead is within the leeway");
}

#[tokio::test]
async fn the_jwks_is_cached_for_its_max_age_and_fetched_again_after() {
    let (stub, cache, clock) = on_manual_clock(Reply::good(), config).await;
    stub.set_jwks_cache_control(Some("public, max-age=120"));

    fresh(&cache).await.unwrap();
    clock.advance(Duration::from_secs(119));
    fresh(&cache).await.unwrap();
    assert_eq!(stub.jwks_requests(), 1, "not fetched again before max-age");

    clock.advance(Duration::from_secs(1));
    fresh(&cache).await.unwrap();
    assert_eq!(stub.jwks_requests(), 2, "fetched again once max-age has passed");
}

#[tokio::test]
async fn a_key_withdrawn_from_the_jwks_stops_verifying_once_the_cache_expires() {
    let old = Reply::Token(TokenSpec::good().signing(Signing::Rs256 { kid: "old-key".into() }));
    let (stub, cache, clock) = on_manual_clock(old, config).await;
    stub.set_jwks_keys(vec![jwk(KID, Some("RS256")), jwk("old-key", Some("RS256"))]);
    fresh(&cache).await.unwrap();

    // Withdrawn; the JWKS sends no Cache-Control, so the keys are kept for an hour.
    stub.set_jwks_keys(vec![jwk(KID, Some("RS256"))]);
    clock.advance(Duration::from_secs(3599));
    assert!(fresh(&cache).await.is_ok(), "still cached");
    assert_eq!(stub.jwks_requests(), 1);

    clock.advance(Duration::from_secs(1));
    refusal_naming(&fresh(&cache).await, "unknown_kid", "old-key");
    assert_eq!(stub.jwks_requests(), 2);
}

#[tokio::test]
async fn unknown_kids_refetch_the_jwks_at_most_once_a_minute() {
    let (stub, cache, clock) = on_manual_clock(Reply::good(), config).await;
    fresh(&cache).await.unwrap();
    clock.advance(Duration::from_secs(120));

    sign_as(&stub, "new-key-1");
    refusal_naming(&fresh(&cache).await, "unknown_kid", "kid");
    assert_eq!(stub.jwks_requests(), 2, "an unknown kid fetches the JWKS again");

    clock.advance(Duration::from_secs(59));
    sign_as(&stub, "new-key-2");
    stub.set_jwks_keys(vec![jwk(KID, Some("RS256")), jwk("new-key-2", Some("RS256"))]);
    // Refused without a fetch; transient (it may be published by the next fetch), so the
    // engine backs off instead of blocking the tenant.
    match fresh(&cache).await {
        Err(e @ TokenError::Unavailable(_)) => {
            assert!(e.is_transient());
            assert!(e.to_string().contains("unknown_kid") && e.to_string().contains("new-key-2"), "{e}");
        }
        other => panic!("expected a transient unknown_kid, got {other:?}"),
    }
    assert_eq!(stub.jwks_requests(), 2, "a second unknown kid within the minute: refused without a fetch");

    clock.advance(Duration::from_secs(1));
    assert!(fresh(&cache).await.is_ok(), "a minute later, the refetch finds the new key");
    assert_eq!(stub.jwks_requests(), 3);
}
