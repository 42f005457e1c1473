//! The diagnosis for `billsync doctor`.

use billsync_auth::{OAuthClient, TokenCache};
use serde_json::Value;

use crate::helpers::*;

fn check<'a>(d: &'a billsync_auth::Diagnosis, name: &str) -> &'a billsync_auth::Check {
    d.check(name).unwrap_or_else(|| panic!("no check {name} in {d}"))
}

#[tokio::test]
async fn a_good_tenant_is_ready_with_every_claim_listed() {
    let stub = Stub::start(Reply::good()).await;
    let client = OAuthClient::new(config(&stub)).unwrap();

    let d = client.diagnose(&auth().with_jwks_verification(true)).await;

    assert!(d.ready(), "{d}");
    for name in [
        "token_endpoint_reachable",
        "credentials_accepted",
        "granted_scope",
        "token_format",
        "signature",
        "claim.scope",
        "claim.aud",
        "claim.tenant_id",
        "claim.client_id",
        "claim.exp",
        "claim.iat",
        "claim.iss",
        "claim.sub",
        "claim.jti",
        "header.x_tenant_id",
        "header.x_application_id",
        "clock_skew",
        "refresh_plan",
    ] {
        assert!(check(&d, name).ok(), "{name}: {d}");
    }
    assert!(check(&d, "refresh_plan").hint().unwrap().contains("refresh planned at"), "{d}");
    assert_eq!(d.headers().x_tenant_id, "tenant-a");
    assert!(d.claims_checked());
    let refresh = d.refresh_at().unwrap() - chrono::Utc::now();
    assert!((715..=720).contains(&refresh.num_seconds()), "{refresh}");
}

#[tokio::test]
async fn the_threads_token_names_scope_audience_and_the_downgraded_grant() {
    let stub = Stub::start(Reply::Token(TokenSpec::telemetry_only())).await;
    let cache = TokenCache::new(config(&stub), [auth()]).unwrap();

    let d = cache.diagnose(tenant().name()).await.unwrap();

    assert!(!d.ready());
    assert_eq!(d.failures(), ["scope_not_granted", "missing_scope", "audience_missing"], "{d}");
    assert_eq!(check(&d, "claim.scope").reason(), Some("missing_scope"));
    assert!(check(&d, "claim.scope").hint().unwrap().contains("Enable Billing Services"));
    assert!(check(&d, "granted_scope").hint().unwrap().contains("granted \"urn:oracle:iot:device:write\""), "{d}");
    // The JSON shape `doctor --json` prints.
    let v: Value = serde_json::to_value(&d).unwrap();
    assert_eq!(v["name"], "acme");
    assert_eq!(v["ready"], false);
    let scope = v["checks"].as_array().unwrap().iter().find(|c| c["check"] == "claim.scope").unwrap();
    assert_eq!(scope["ok"], false);
    assert_eq!(scope["reason"], "missing_scope");
    assert!(scope["hint"].is_string());
}

#[tokio::test]
async fn bad_credentials_show_the_rfc6749_error_and_what_to_try() {
    let stub = Stub::start(Reply::status(401, r#"{"error":"invalid_client","error_description":"bad secret"}"#)).await;
    let client = OAuthClient::new(config(&stub)).unwrap();
    let d = client.diagnose(&auth()).await;
    assert!(!d.ready());
    assert!(check(&d, "token_endpoint_reachable").ok());
    let c = check(&d, "credentials_accepted");
    assert_eq!(c.reason(), Some("invalid_client"));
    assert!(c.hint().unwrap().starts_with("bad secret; check client_id app-a"), "{d}");
    assert!(c.hint().unwrap().contains("client_secret_basic"), "{d}");
}

#[tokio::test]
async fn an_unreachable_endpoint_is_said_so() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/oauth2/v1/token", l.local_addr().unwrap());
    drop(l);
    let cfg = billsync_auth::AuthConfig::new(&url).unwrap().with_retry(billsync_auth::RetryPolicy::new(
        1,
        std::time::Duration::ZERO,
        std::time::Duration::ZERO,
    ));
    let d = OAuthClient::new(cfg).unwrap().diagnose(&auth()).await;
    assert!(!d.ready());
    assert_eq!(d.failures(), ["unreachable"]);
}

#[tokio::test]
async fn skew_and_opaque_tokens_are_reported() {
    let mut spec = TokenSpec::good();
    spec.opaque = true;
    let stub = Stub::start(Reply::Token(spec)).await;
    stub.set_clock_offset(-300);
    let d = OAuthClient::new(config(&stub)).unwrap().diagnose(&auth()).await;
    assert!(d.ready(), "{d}");
    assert!(!d.claims_checked());
    assert!(check(&d, "token_format").hint().unwrap().contains("could not be checked"), "{d}");
    assert!((d.clock_skew_seconds().unwrap() + 300).abs() <= 1, "{d}");
    assert!(check(&d, "clock_skew").hint().unwrap().contains("5m 0s behind"), "{d}");
}

#[tokio::test]
async fn a_signature_failure_makes_the_tenant_not_ready() {
    let stub = Stub::start(Reply::Token(TokenSpec::good().signing(Signing::AlgNone))).await;
    let d = OAuthClient::new(config(&stub)).unwrap().diagnose(&auth().with_jwks_verification(true)).await;
    assert!(!d.ready());
    assert_eq!(d.failures(), ["alg_none"], "{d}");
}

#[tokio::test]
async fn a_wrong_issuer_and_a_future_nbf_are_named_in_their_claim_checks() {
    let stub = Stub::start(Reply::good()).await;
    let strict = OAuthClient::new(config(&stub).with_token_issuer("https://idcs.example.com/other")).unwrap();
    let d = strict.diagnose(&auth()).await;
    assert!(!d.ready());
    assert_eq!(d.failures(), ["wrong_issuer"], "{d}");
    assert!(check(&d, "claim.iss").hint().unwrap().contains("https://idcs.example.com/other"), "{d}");
    assert_eq!(check(&d, "claim.nbf").hint(), Some("(absent)"), "{d}");

    let later = chrono::Utc::now().timestamp() + 600;
    stub.set_default(Reply::Token(TokenSpec::good().claims(serde_json::json!({"nbf": later}))));
    let d =
        OAuthClient::new(config(&stub).with_token_issuer("https://idcs.example.com")).unwrap().diagnose(&auth()).await;
    assert!(!d.ready());
    assert_eq!(d.failures(), ["not_yet_valid"], "{d}");
    assert!(check(&d, "claim.iss").hint().unwrap().contains("configured token_issuer"), "{d}");
}
