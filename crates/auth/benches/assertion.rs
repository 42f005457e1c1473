//! `private_key_jwt`: the signature of one client assertion (RS256 with RSA-2048, ES256 with
//! P-256), and, to set it beside, one whole token request through the token cache (invalidate,
//! then fetch: form, HTTP/1.1 over loopback to an axum stub answering a fixed billing token,
//! parse, policy preflight) with `client_secret_post` and with each assertion algorithm.
//!
//! `cargo bench -p billsync-auth --bench assertion`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // bench and example code: a panic is a failure
use std::hint::black_box;
use std::time::Duration;

use billsync_auth::{AssertionAlgorithm, AssertionKey, AuthConfig, TenantAuth, TokenCache};
use billsync_domain::{BASE_AUDIENCE, BILLING_AUDIENCE, BILLING_WRITE_SCOPE, ClientSecret, Tenant, TokenSource};
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;

fn signatures(c: &mut Criterion) {
    let rs = AssertionKey::generate(AssertionAlgorithm::Rs256).expect("an RSA key");
    let es = AssertionKey::generate(AssertionAlgorithm::Es256).expect("a P-256 key");
    let aud = "https://idcs.example.com/oauth2/v1/token";
    let now = chrono::Utc::now();
    let mut g = c.benchmark_group("assertion");
    for (name, key) in [("sign_rs256", &rs), ("sign_es256", &es)] {
        g.bench_function(name, |b| {
            b.iter(|| key.sign_assertion(black_box("app-a"), aud, now, Duration::from_secs(60)).expect("signed"))
        });
    }
    g.finish();
}

/// A billing token the stub hands out every time (valid for an hour from the bench's start).
fn billing_token() -> String {
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("an RSA key");
    let der = key.to_pkcs1_der().expect("DER");
    let now = chrono::Utc::now().timestamp();
    let claims = serde_json::json!({
        "iss": "https://idcs.example", "sub": "app-a", "scope": BILLING_WRITE_SCOPE,
        "aud": [BILLING_AUDIENCE, BASE_AUDIENCE], "tenant_id": "tenant-a", "client_id": "app-a",
        "iat": now, "exp": now + 3600, "jti": "bench-1"
    });
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &EncodingKey::from_rsa_der(der.as_bytes()))
        .expect("a JWT")
}

/// A token endpoint on loopback answering `token` to every request; its URL.
async fn stub(token: String) -> String {
    let body = serde_json::json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600});
    let app = axum::Router::new()
        .route("/oauth2/v1/token", axum::routing::post(move || std::future::ready(axum::Json(body.clone()))));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/oauth2/v1/token")
}

fn token_requests(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let url = rt.block_on(stub(billing_token()));
    let tenant = Tenant::new(
        "acme".parse().unwrap(),
        "tenant-a".parse().unwrap(),
        "app-a".parse().unwrap(),
        "app-a".parse().unwrap(),
    );
    let secret = || TenantAuth::new(tenant.clone(), ClientSecret::new("s3cret"));
    let key = |alg| TenantAuth::new_private_key_jwt(tenant.clone(), AssertionKey::generate(alg).expect("a key"));
    let mut g = c.benchmark_group("token_request");
    for (name, auth) in [
        ("client_secret_post", secret()),
        ("private_key_jwt_rs256", key(AssertionAlgorithm::Rs256)),
        ("private_key_jwt_es256", key(AssertionAlgorithm::Es256)),
    ] {
        let cache = TokenCache::new(AuthConfig::new(&url).expect("config"), [auth]).expect("cache");
        g.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let h = cache.headers(&tenant).await.expect("a token");
                    cache.invalidate(&tenant, &h).await;
                    black_box(h)
                })
            })
        });
    }
    g.finish();
}

criterion_group!(assertion, signatures, token_requests);
criterion_main!(assertion);
