//! `private_key_jwt` client authentication (RFC 7523 §2.2): the assertion the stub receives,
//! verified with `jsonwebtoken` and the public key; key parsing of every PEM form (made by the
//! `openssl` CLI), the keys refused and why; the RFC 7638 thumbprint.
//!
//! The stub and the cache read one [`ManualClock`] standing on a whole second, so `iat` is exact.

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use billsync_auth::{
    AssertionAlgorithm, AssertionKey, AuthMethod, ConfigError, KeyError, OAuthClient, TenantAuth, TokenCache,
    jwk_thumbprint,
};
use billsync_domain::{ManualClock, TokenError, TokenSource};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use crate::helpers::*;

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_900_000_000, 0).unwrap()
}

/// Runs `openssl args`, feeding `stdin`; its stdout.
fn openssl(args: &[&str], stdin: &str) -> String {
    let mut child = Command::new("/usr/bin/openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl runs");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The PEM forms of one RSA-2048 and one P-256 key, made once.
struct Pems {
    rsa_pkcs8: String,
    rsa_pkcs1: String,
    ec_sec1: String,
    ec_pkcs8: String,
}

fn pems() -> &'static Pems {
    static P: OnceLock<Pems> = OnceLock::new();
    P.get_or_init(|| {
        let rsa_pkcs8 = openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"], "");
        let rsa_pkcs1 = openssl(&["rsa", "-traditional"], &rsa_pkcs8);
        let ec_sec1 = openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout"], "");
        let ec_pkcs8 = openssl(&["pkcs8", "-topk8", "-nocrypt"], &ec_sec1);
        Pems { rsa_pkcs8, rsa_pkcs1, ec_sec1, ec_pkcs8 }
    })
}

fn key(alg: AssertionAlgorithm) -> AssertionKey {
    match alg {
        AssertionAlgorithm::Rs256 => AssertionKey::from_pem(&pems().rsa_pkcs1).unwrap(),
        AssertionAlgorithm::Es256 => AssertionKey::from_pem(&pems().ec_sec1).unwrap(),
    }
}

fn pkjwt(alg: AssertionAlgorithm) -> TenantAuth {
    TenantAuth::new_private_key_jwt(tenant(), key(alg))
}

/// A stub and a cache over it (tenant `auths`), both on one manual clock showing [`t0`].
async fn setup(auths: Vec<TenantAuth>) -> (Stub, TokenCache, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(t0()));
    let stub = Stub::with_clock(Reply::good(), clock.clone()).await;
    let cache = TokenCache::with_clock(config(&stub), auths, clock.clone()).unwrap();
    (stub, cache, clock)
}

/// Verifies `assertion` with `key`'s public key (jsonwebtoken, not our code): its header and
/// claims. Time checks are left to the caller (the manual clock is not the system's).
fn verify(assertion: &str, key: &AssertionKey, audience: &str) -> (jsonwebtoken::Header, Value) {
    let public = key.public_pem().unwrap();
    let (alg, decoding) = match key.algorithm() {
        AssertionAlgorithm::Rs256 => (Algorithm::RS256, DecodingKey::from_rsa_pem(public.as_bytes()).unwrap()),
        AssertionAlgorithm::Es256 => (Algorithm::ES256, DecodingKey::from_ec_pem(public.as_bytes()).unwrap()),
    };
    let mut v = Validation::new(alg);
    v.validate_exp = false;
    v.set_audience(&[audience]);
    v.set_issuer(&["app-a"]);
    v.set_required_spec_claims(&["iss", "sub", "aud", "exp", "iat", "jti"]);
    let data = jsonwebtoken::decode::<Value>(assertion, &decoding, &v).expect("the assertion verifies");
    (data.header, data.claims)
}

fn assertion_of(r: &Recorded) -> &str {
    r.form.get("client_assertion").map(String::as_str).expect("a client_assertion")
}

#[tokio::test]
async fn private_key_jwt_sends_a_verifiable_assertion_and_no_secret() {
    for alg in [AssertionAlgorithm::Rs256, AssertionAlgorithm::Es256] {
        // Arrange
        let (stub, cache, _clock) = setup(vec![pkjwt(alg)]).await;
        // Act
        cache.headers(&tenant()).await.unwrap();
        // Assert
        let r = &stub.recorded()[0];
        assert_eq!(r.authorization, None, "{alg}: no Authorization header");
        let mut fields: Vec<&str> = r.form.keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(fields, ["client_assertion", "client_assertion_type", "client_id", "grant_type", "scope"], "{alg}");
        assert_eq!(r.form["client_assertion_type"], ASSERTION_TYPE);
        assert_eq!(r.form["client_id"], "app-a");
        assert_eq!(r.form["grant_type"], "client_credentials");
        assert_eq!(r.form["scope"], "urn:oracle:iot:billing:write");
        let k = key(alg);
        let (header, claims) = verify(assertion_of(r), &k, &stub.token_url());
        let expected_alg = if alg == AssertionAlgorithm::Rs256 { Algorithm::RS256 } else { Algorithm::ES256 };
        assert_eq!(header.alg, expected_alg);
        assert_eq!(header.kid.as_deref(), Some(k.thumbprint().as_str()), "{alg}: kid defaults to the thumbprint");
        assert_eq!((&claims["iss"], &claims["sub"]), (&json!("app-a"), &json!("app-a")));
        assert_eq!(claims["aud"], json!(stub.token_url()));
        assert_eq!(claims["iat"], json!(t0().timestamp()), "{alg}: iat is the injected clock's");
        assert_eq!(claims["exp"], json!(t0().timestamp() + 60), "{alg}: the default lifetime is 60 s");
        let jti = URL_SAFE_NO_PAD.decode(claims["jti"].as_str().unwrap()).unwrap();
        assert_eq!(jti.len(), 16, "{alg}: jti is 128 random bits");
    }
}

#[tokio::test]
async fn every_assertion_is_new_and_its_iat_follows_the_measured_server_clock() {
    // Arrange: the server's clock is two minutes ahead of ours.
    let (stub, cache, clock) = setup(vec![pkjwt(AssertionAlgorithm::Es256)]).await;
    stub.set_clock_offset(120);
    // Act: a first token (no skew known yet), then two more after invalidations.
    let h = cache.headers(&tenant()).await.unwrap();
    cache.invalidate(&tenant(), &h).await;
    let h = cache.headers(&tenant()).await.unwrap();
    cache.invalidate(&tenant(), &h).await;
    clock.advance(Duration::from_secs(7));
    cache.headers(&tenant()).await.unwrap();
    // Assert
    let k = key(AssertionAlgorithm::Es256);
    let claims: Vec<Value> = stub.recorded().iter().map(|r| verify(assertion_of(r), &k, &stub.token_url()).1).collect();
    let iats: Vec<i64> = claims.iter().map(|c| c["iat"].as_i64().unwrap()).collect();
    let t = t0().timestamp();
    assert_eq!(iats, [t, t + 120, t + 127], "iat = our clock + the skew measured from the Date header");
    for c in &claims {
        assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 60);
    }
    let jtis: HashSet<&str> = claims.iter().map(|c| c["jti"].as_str().unwrap()).collect();
    assert_eq!(jtis.len(), 3, "a fresh jti per assertion: {jtis:?}");
}

#[tokio::test]
async fn a_refused_assertion_is_signed_again_once_when_the_refusal_revealed_the_skew() {
    // Arrange: a server ten minutes ahead refuses the first assertion (too old for it).
    let (stub, cache, _clock) = setup(vec![pkjwt(AssertionAlgorithm::Es256)]).await;
    stub.set_clock_offset(600);
    stub.push(Reply::status(401, r#"{"error":"invalid_client"}"#));
    // Act
    let h = cache.headers(&tenant()).await;
    // Assert
    assert!(h.is_ok(), "{h:?}");
    let k = key(AssertionAlgorithm::Es256);
    let iats: Vec<i64> = stub
        .recorded()
        .iter()
        .map(|r| verify(assertion_of(r), &k, &stub.token_url()).1["iat"].as_i64().unwrap())
        .collect();
    assert_eq!(iats, [t0().timestamp(), t0().timestamp() + 600]);
}

#[tokio::test]
async fn a_refused_assertion_without_a_new_skew_is_not_sent_again() {
    let (stub, cache, _clock) = setup(vec![pkjwt(AssertionAlgorithm::Rs256)]).await;
    stub.set_default(Reply::status(401, r#"{"error":"invalid_client"}"#));
    let e = cache.headers(&tenant()).await.unwrap_err();
    let TokenError::Refused { error, description: Some(said) } = &e else { panic!("{e:?}") };
    assert_eq!(error, "invalid_client");
    assert!(said.starts_with("the platform does not say why it refuses a client assertion; likely causes"), "{said}");
    assert_eq!(stub.token_requests(), 1);
}

#[tokio::test]
async fn the_assertion_lifetime_is_settable_up_to_five_minutes() {
    let a = pkjwt(AssertionAlgorithm::Es256).with_assertion_lifetime(Duration::from_secs(300)).unwrap();
    assert_eq!(a.assertion_lifetime(), Duration::from_secs(300));
    let (stub, cache, _clock) = setup(vec![a]).await;
    cache.headers(&tenant()).await.unwrap();
    let (_, c) = verify(assertion_of(&stub.recorded()[0]), &key(AssertionAlgorithm::Es256), &stub.token_url());
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 300);

    for bad in [Duration::from_secs(301), Duration::from_secs(3600), Duration::ZERO] {
        let e = pkjwt(AssertionAlgorithm::Es256).with_assertion_lifetime(bad).unwrap_err();
        assert!(matches!(e, ConfigError::AssertionLifetime { .. }), "{bad:?}: {e:?}");
        assert!(e.to_string().contains("300"), "{e}");
    }
}

#[tokio::test]
async fn a_tenant_token_url_overrides_the_configured_one_and_is_the_audience_exactly() {
    // Arrange: the configuration names stub A; the tenant, stub B with a query string.
    let clock = Arc::new(ManualClock::new(t0()));
    let a = Stub::with_clock(Reply::good(), clock.clone()).await;
    let b = Stub::with_clock(Reply::good(), clock.clone()).await;
    let url = format!("{}?tenant=acme", b.token_url());
    let auth = pkjwt(AssertionAlgorithm::Rs256).with_token_url(&url).unwrap();
    assert_eq!(auth.token_url(), Some(url.as_str()));
    let cache = TokenCache::with_clock(config(&a), [auth], clock).unwrap();
    // Act
    cache.headers(&tenant()).await.unwrap();
    // Assert
    assert_eq!((a.token_requests(), b.token_requests()), (0, 1));
    let (_, c) = verify(assertion_of(&b.recorded()[0]), &key(AssertionAlgorithm::Rs256), &url);
    assert_eq!(c["aud"], json!(url));
}

#[tokio::test]
async fn a_tenant_token_url_is_validated_and_applies_to_secrets_too() {
    let e = auth().with_token_url("ftp://x/token").unwrap_err();
    assert!(matches!(&e, ConfigError::InvalidUrl { what, .. } if *what == "token_url"), "{e:?}");
    let e = auth().with_token_url("https://id:hunter2@x/token").unwrap_err();
    assert!(!e.to_string().contains("hunter2"), "{e}");

    let a = Stub::start(Reply::good()).await;
    let b = Stub::start(Reply::good()).await;
    let cache = TokenCache::new(config(&a), [auth().with_token_url(&b.token_url()).unwrap()]).unwrap();
    cache.headers(&tenant()).await.unwrap();
    assert_eq!((a.token_requests(), b.token_requests()), (0, 1));
    assert_eq!(b.recorded()[0].form.get("client_secret").map(String::as_str), Some(SECRET));
}

#[tokio::test]
async fn private_key_jwt_without_a_key_is_refused_before_any_request() {
    let stub = Stub::start(Reply::good()).await;
    let keyless = || auth().with_auth_method(AuthMethod::PrivateKeyJwt);
    let e = TokenCache::new(config(&stub), [keyless()]).unwrap_err();
    assert!(matches!(&e, ConfigError::MissingPrivateKey { tenant } if tenant == "acme"), "{e:?}");
    assert!(e.to_string().contains("private_key_jwt"), "{e}");
    // Outside the cache (diagnosis), the request is not sent either.
    let d = OAuthClient::new(config(&stub)).unwrap().diagnose(&keyless()).await;
    assert!(!d.ready());
    assert_eq!(d.failures(), ["missing_private_key"]);
    assert_eq!(stub.token_requests(), 0);
}

#[tokio::test]
async fn the_diagnosis_of_a_refused_assertion_names_the_kid_and_the_audience_to_check() {
    // Arrange: a tenant with its own token URL, refused with no detail (the platform's way).
    let (config_stub, tenant_stub) = (Stub::start(Reply::good()).await, Stub::start(Reply::good()).await);
    tenant_stub.set_default(Reply::status(401, r#"{"error":"invalid_client"}"#));
    let k = key(AssertionAlgorithm::Es256).with_key_id("console-7").unwrap();
    let auth = TenantAuth::new_private_key_jwt(tenant(), k).with_token_url(&tenant_stub.token_url()).unwrap();
    // Act
    let d = OAuthClient::new(config(&config_stub)).unwrap().diagnose(&auth).await;
    // Assert
    let key_check = d.check("private_key").expect("a private_key check");
    assert!(key_check.ok(), "{key_check:?}");
    assert!(key_check.hint().unwrap().contains("ES256 key, kid console-7"), "{key_check:?}");
    let c = d.check("credentials_accepted").unwrap();
    assert_eq!(c.reason(), Some("invalid_client"));
    let hint = c.hint().unwrap();
    assert!(hint.contains("kid is console-7") && hint.contains(&tenant_stub.token_url()), "{hint}");
    assert!(d.to_string().contains(&tenant_stub.token_url()), "the diagnosis names the tenant's endpoint: {d}");
    let causes: Vec<&str> = d.likely_causes().iter().map(|c| c.code).collect();
    assert_eq!(causes, ["key_not_registered", "kid_mismatch", "bad_assertion_signature", "assertion_replayed"]);
    assert!(d.likely_causes()[1].fix.contains("kid console-7"), "{:?}", d.likely_causes());
    assert!(d.to_string().contains("likely causes, in order:\n    1. key_not_registered: "), "{d}");
    assert_eq!(d.warnings(), ["kid_mismatch"], "console-7 is not the key's thumbprint: a warning only");
}

#[tokio::test]
async fn doctor_warns_only_for_a_foreign_kid_and_fails_a_skew_of_a_minute_for_assertions_only() {
    // Arrange: the token endpoint's clock is 90 s ahead of ours; it issues tokens.
    let stub = Stub::start(Reply::good()).await;
    stub.set_clock_offset(90);
    let client = OAuthClient::new(config(&stub)).unwrap();
    // Act
    let keyed = client.diagnose(&pkjwt(AssertionAlgorithm::Es256)).await;
    let secret = client.diagnose(&auth()).await;
    stub.set_clock_offset(30);
    let close = client.diagnose(&pkjwt(AssertionAlgorithm::Es256)).await;
    // Assert
    assert_eq!(keyed.warnings(), Vec::<&str>::new(), "the default kid is the thumbprint: {keyed}");
    assert_eq!(keyed.failures(), ["clock_skew"], "{keyed}");
    assert!(keyed.check("clock_skew").unwrap().hint().unwrap().contains("ahead of ours"), "{keyed}");
    assert!(secret.check("clock_skew").unwrap().ok(), "a secret does not care: {secret}");
    assert!(close.check("clock_skew").unwrap().ok(), "30 s is within the minute: {close}");
    assert!(keyed.likely_causes().is_empty(), "nothing was refused");
}

#[test]
fn auth_method_private_key_jwt_parses_and_displays_like_the_others() {
    assert_eq!("private_key_jwt".parse::<AuthMethod>().unwrap(), AuthMethod::PrivateKeyJwt);
    assert_eq!(AuthMethod::PrivateKeyJwt.to_string(), "private_key_jwt");
    assert_eq!(serde_json::to_value(AuthMethod::PrivateKeyJwt).unwrap(), json!("private_key_jwt"));
    assert_eq!(serde_json::from_value::<AuthMethod>(json!("private_key_jwt")).unwrap(), AuthMethod::PrivateKeyJwt);
}

#[test]
fn every_pem_form_of_rsa_and_p256_keys_parses_to_the_same_key() {
    let p = pems();
    let ec_with_params = openssl(&["ecparam", "-name", "prime256v1", "-genkey"], "");
    for (forms, alg) in [
        (vec![&p.rsa_pkcs8, &p.rsa_pkcs1], AssertionAlgorithm::Rs256),
        (vec![&p.ec_sec1, &p.ec_pkcs8], AssertionAlgorithm::Es256),
    ] {
        let keys: Vec<AssertionKey> = forms.iter().map(|pem| AssertionKey::from_pem(pem).unwrap()).collect();
        assert!(keys.iter().all(|k| k.algorithm() == alg), "{alg}");
        assert_eq!(keys[0].thumbprint(), keys[1].thumbprint(), "{alg}: both forms are one key");
        assert_eq!(keys[0].key_id(), keys[0].thumbprint(), "{alg}: kid defaults to the thumbprint");
        // The public key is what openssl derives, byte for byte.
        assert_eq!(keys[0].public_pem().unwrap(), openssl(&["pkey", "-pubout"], forms[0]), "{alg}");
    }
    // `openssl ecparam -genkey` without -noout writes an EC PARAMETERS block first.
    assert_eq!(AssertionKey::from_pem(&ec_with_params).unwrap().algorithm(), AssertionAlgorithm::Es256);
}

/// The PEM's base64 lines, none of which may appear in an error.
fn body_lines(pem: &str) -> Vec<&str> {
    pem.lines().filter(|l| !l.starts_with("-----") && l.len() > 8).collect()
}

fn refused(pem: &str) -> KeyError {
    let e = AssertionKey::from_pem(pem).unwrap_err();
    let shown = format!("{e} {e:?}");
    for line in body_lines(pem) {
        assert!(!shown.contains(line), "the error shows key material: {shown}");
    }
    e
}

#[test]
fn unusable_keys_are_refused_naming_what_is_wrong() {
    let rsa1024 = openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"], "");
    let e = refused(&rsa1024);
    assert!(matches!(e, KeyError::RsaTooSmall { bits: 1024 }), "{e:?}");
    assert!(e.to_string().contains("1024") && e.to_string().contains("2048"), "{e}");
    let e = refused(&openssl(&["rsa", "-traditional"], &rsa1024));
    assert!(matches!(e, KeyError::RsaTooSmall { bits: 1024 }), "PKCS#1: {e:?}");

    let p384 = openssl(&["ecparam", "-name", "secp384r1", "-genkey", "-noout"], "");
    for pem in [p384.clone(), openssl(&["pkcs8", "-topk8", "-nocrypt"], &p384)] {
        let e = refused(&pem);
        assert!(matches!(e, KeyError::UnsupportedCurve(_)), "{e:?}");
        assert!(e.to_string().contains("P-384") && e.to_string().contains("P-256"), "{e}");
    }

    let ed = openssl(&["genpkey", "-algorithm", "ed25519"], "");
    let e = refused(&ed);
    assert!(matches!(e, KeyError::UnsupportedKeyType(_)), "{e:?}");
    assert!(e.to_string().contains("Ed25519"), "{e}");

    for garbage in ["", "hello", "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n"] {
        let e = refused(garbage);
        assert!(matches!(e, KeyError::NotPem), "{garbage:?}: {e:?}");
        assert!(e.to_string().contains("PEM"), "{e}");
    }
    let e = refused("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
    assert!(matches!(e, KeyError::Malformed { .. }), "{e:?}");

    let public = openssl(&["pkey", "-pubout"], &pems().ec_pkcs8);
    let e = refused(&public);
    assert!(matches!(e, KeyError::NoPrivateKey { .. }), "{e:?}");
    assert!(e.to_string().contains("PUBLIC KEY"), "{e}");

    let encrypted = openssl(&["pkcs8", "-topk8", "-passout", "pass:x"], &pems().ec_pkcs8);
    let e = refused(&encrypted);
    assert!(matches!(e, KeyError::Encrypted), "{e:?}");
    assert!(e.to_string().contains("encrypted"), "{e}");
}

#[test]
fn the_thumbprint_is_rfc7638s() {
    // RFC 7638 §3.1.
    let jwk = json!({
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29"
    });
    assert_eq!(jwk_thumbprint(&jwk).unwrap(), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    assert!(matches!(jwk_thumbprint(&json!({"kty": "RSA", "e": "AQAB"})), Err(KeyError::Jwk(_))));
    assert!(matches!(jwk_thumbprint(&json!({"kty": "oct", "k": "c2VjcmV0"})), Err(KeyError::Jwk(_))));
    // A key's own thumbprint is that of its public JWK.
    for alg in [AssertionAlgorithm::Rs256, AssertionAlgorithm::Es256] {
        let k = key(alg);
        assert_eq!(jwk_thumbprint(&k.public_jwk()).unwrap(), k.thumbprint(), "{alg}");
    }
}

#[test]
fn the_public_jwk_verifies_the_assertions_and_a_set_key_id_is_used() {
    for alg in [AssertionAlgorithm::Rs256, AssertionAlgorithm::Es256] {
        let k = key(alg).with_key_id("console-key-7").unwrap();
        let jwk = k.public_jwk();
        assert_eq!(
            (&jwk["kid"], &jwk["alg"], &jwk["use"]),
            (&json!("console-key-7"), &json!(alg.to_string()), &json!("sig"))
        );
        assert_eq!(jwk["kty"], json!(if alg == AssertionAlgorithm::Rs256 { "RSA" } else { "EC" }));
        assert!(jwk.get("d").is_none() && jwk.get("p").is_none(), "{alg}: no private member: {jwk}");
        let decoding = DecodingKey::from_jwk(&serde_json::from_value(jwk).unwrap()).unwrap();
        let assertion =
            k.sign_assertion("app-a", "https://idcs.example/token", Utc::now(), Duration::from_secs(60)).unwrap();
        let mut v = Validation::new(if alg == AssertionAlgorithm::Rs256 { Algorithm::RS256 } else { Algorithm::ES256 });
        v.set_audience(&["https://idcs.example/token"]);
        let data = jsonwebtoken::decode::<Value>(assertion.secret(), &decoding, &v).unwrap();
        assert_eq!(data.header.kid.as_deref(), Some("console-key-7"));
    }
    assert!(matches!(key(AssertionAlgorithm::Es256).with_key_id(""), Err(KeyError::EmptyKeyId)));
}

#[test]
fn generated_keys_round_trip_through_pkcs8_and_openssl() {
    for alg in [AssertionAlgorithm::Rs256, AssertionAlgorithm::Es256] {
        let k = AssertionKey::generate(alg).unwrap();
        assert_eq!(k.algorithm(), alg);
        let pem = k.private_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{alg}: PKCS#8");
        assert_eq!(AssertionKey::from_pem(&pem).unwrap().thumbprint(), k.thumbprint(), "{alg}");
        assert_eq!(openssl(&["pkey", "-pubout"], &pem), k.public_pem().unwrap(), "{alg}");
        let text = openssl(&["pkey", "-noout", "-text"], &pem);
        let expected = if alg == AssertionAlgorithm::Rs256 { "2048 bit" } else { "prime256v1" };
        assert!(text.contains(expected), "{alg}: {text}");
    }
}

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn keys_and_assertions_never_show_in_debug_errors_or_logs() {
    // Arrange: capture everything at TRACE.
    let buf = Buffer::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _guard = tracing::subscriber::set_default(subscriber);
    // Act: a token, a refusal, a diagnosis.
    let stub = rt.block_on(async {
        let (stub, cache, _clock) = setup(vec![pkjwt(AssertionAlgorithm::Rs256)]).await;
        cache.headers(&tenant()).await.unwrap();
        stub.set_default(Reply::status(401, r#"{"error":"invalid_client"}"#));
        let _ = OAuthClient::new(config(&stub)).unwrap().diagnose(&pkjwt(AssertionAlgorithm::Rs256)).await;
        stub
    });
    // Assert
    let k = key(AssertionAlgorithm::Rs256);
    let signed = k.sign_assertion("app-a", "https://x/token", t0(), Duration::from_secs(60)).unwrap();
    let shown = format!(
        "{k:?} {:?} {:#?} {signed:?} {}",
        pkjwt(AssertionAlgorithm::Es256),
        pkjwt(AssertionAlgorithm::Rs256),
        {
            let logs = buf.0.lock().unwrap().clone();
            String::from_utf8(logs).unwrap()
        }
    );
    assert!(shown.contains("RS256") && shown.contains(&k.thumbprint()), "Debug shows the algorithm and kid: {shown}");
    let private = k.private_pem().unwrap();
    for pem in [pems().rsa_pkcs1.as_str(), pems().ec_sec1.as_str(), private.as_str()] {
        for line in body_lines(pem) {
            assert!(!shown.contains(line), "a private key shows: {shown}");
        }
    }
    for r in stub.recorded() {
        let assertion = assertion_of(&r);
        assert!(!shown.contains(assertion.rsplit('.').next().unwrap()), "an assertion shows: {shown}");
    }
    assert!(!shown.contains(signed.secret().rsplit('.').next().unwrap()), "an assertion shows: {shown}");
}
