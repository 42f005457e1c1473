//! Token handling per request: decoding a JWT without verification (through the public
//! `inspect`, which also runs the billing policy on it) and RS256 verification against a JWKS
//! (`verify_with_jwks`, the token cache's own check), each beside the closest bare equivalent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // bench and example code: a panic is a failure
use std::hint::black_box;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use billsync_domain::BillingPolicy;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;

fn benches(c: &mut Criterion) {
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("an RSA key");
    let der = key.to_pkcs1_der().expect("DER");
    let now = chrono::Utc::now();
    let claims = serde_json::json!({
        "iss": "https://idcs.example", "sub": "app-a", "scope": "urn:oracle:iot:billing:write",
        "aud": ["https://iot.oraclecloud.com/billing"], "tenant_id": "tenant-a", "client_id": "app-a",
        "iat": now.timestamp(), "exp": now.timestamp() + 3600, "jti": "bench-1"
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());
    let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_der(der.as_bytes())).expect("a JWT");
    let (n, e) = (URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()), URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()));
    let jwks = serde_json::to_vec(&serde_json::json!({
        "keys": [{"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256", "n": n, "e": e}]
    }))
    .expect("JWKS");
    let policy = BillingPolicy::default();

    let mut g = c.benchmark_group("jwt");
    g.bench_function("inspect_decode_unverified", |b| {
        b.iter(|| billsync_auth::inspect(black_box(&token), None, None, &policy, now).expect("decodes"))
    });
    // The baseline: base64url-decode the three parts and parse header and payload untyped.
    g.bench_function("baseline_base64_value_decode", |b| {
        b.iter(|| {
            let mut parts = black_box(&token).split('.');
            let mut next = || URL_SAFE_NO_PAD.decode(parts.next().unwrap_or_default()).expect("base64");
            let (h, p, s) = (next(), next(), next());
            let h: serde_json::Value = serde_json::from_slice(&h).expect("header");
            let p: serde_json::Value = serde_json::from_slice(&p).expect("payload");
            black_box((h, p, s.len()))
        })
    });
    g.bench_function("verify_rs256_jwks", |b| {
        b.iter(|| billsync_auth::verify_with_jwks(black_box(&token), &jwks).expect("verifies"))
    });
    // The baseline: jsonwebtoken alone on the same JWKS: parse it, build the key, verify.
    g.bench_function("baseline_jsonwebtoken_rs256", |b| {
        b.iter(|| {
            let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&jwks).expect("JWKS");
            let key = DecodingKey::from_jwk(&set.keys[0]).expect("key");
            let mut v = Validation::new(Algorithm::RS256);
            v.validate_aud = false;
            v.required_spec_claims.clear();
            black_box(jsonwebtoken::decode::<serde_json::Value>(black_box(&token), &key, &v).expect("verifies"))
        })
    });
    g.finish();
}

criterion_group!(jwt, benches);
criterion_main!(jwt);
