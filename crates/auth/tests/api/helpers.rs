//! A stub token server (axum) that signs RS256 JWTs, counts requests and plays scripted replies.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use billsync_auth::{AuthConfig, RetryPolicy, TenantAuth};
use billsync_domain::{
    BASE_AUDIENCE, BILLING_AUDIENCE, BILLING_WRITE_SCOPE, ClientSecret, Clock, DEVICE_WRITE_SCOPE, SystemClock, Tenant,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};
use tokio::sync::watch;

pub const SECRET: &str = "s3cr3t: p@ss+word/é";
pub const KID: &str = "stub-key-1";

pub struct KeyPair {
    pub encoding: EncodingKey,
    pub n: String,
    pub e: String,
    pub public_pem: String,
}

fn generate() -> KeyPair {
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("rsa key");
    let pem = key.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).expect("pem");
    let public_pem = key.to_public_key().to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).expect("public pem");
    KeyPair {
        encoding: EncodingKey::from_rsa_pem(pem.as_bytes()).expect("encoding key"),
        n: URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
        e: URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
        public_pem,
    }
}

/// The key the stub publishes in its JWKS.
pub fn keys() -> &'static KeyPair {
    static K: OnceLock<KeyPair> = OnceLock::new();
    K.get_or_init(generate)
}

/// Another key, for forged signatures.
pub fn other_keys() -> &'static KeyPair {
    static K: OnceLock<KeyPair> = OnceLock::new();
    K.get_or_init(generate)
}

/// How a token is signed.
#[derive(Clone, Debug)]
pub enum Signing {
    Rs256 {
        kid: String,
    },
    /// The published key (`keys()`), with another RSA algorithm in the header.
    SameKey {
        alg: Algorithm,
        kid: String,
    },
    OtherKey {
        kid: String,
    },
    AlgNone,
    Hs256WithPublicKey,
}

#[derive(Clone, Debug)]
pub struct TokenSpec {
    /// Merged over the good billing claims.
    pub claims: Value,
    pub lifetime: i64,
    /// The response's `scope` field; `None` leaves it out.
    pub response_scope: Option<String>,
    pub opaque: bool,
    pub signing: Signing,
    /// Whether the token says who asked for it: see [`TokenSpec::echo`].
    pub echo: bool,
}

impl TokenSpec {
    pub fn good() -> Self {
        Self {
            claims: json!({}),
            lifetime: 900,
            response_scope: Some(BILLING_WRITE_SCOPE.into()),
            opaque: false,
            signing: Signing::Rs256 { kid: KID.into() },
            echo: false,
        }
    }
    /// A good token for whoever asked: its `scope` claim and the response's `scope` are the
    /// requested scopes, its `tenant_id` the request's `tenant_id` parameter (when sent) and its
    /// `client_id` and `sub` the form's `client_id` (`client_secret_post`, `private_key_jwt`).
    pub fn echo() -> Self {
        Self { echo: true, ..Self::good() }
    }
    pub fn lifetime(mut self, s: i64) -> Self {
        self.lifetime = s;
        self
    }
    pub fn claims(mut self, v: Value) -> Self {
        self.claims = v;
        self
    }
    /// The thread's telemetry-only grant: device scope, base audience.
    pub fn telemetry_only() -> Self {
        let mut t = Self::good().claims(json!({"scope": DEVICE_WRITE_SCOPE, "aud": [BASE_AUDIENCE]}));
        t.response_scope = Some(DEVICE_WRITE_SCOPE.into());
        t
    }
    pub fn signing(mut self, s: Signing) -> Self {
        self.signing = s;
        self
    }
}

#[derive(Clone, Debug)]
pub enum Reply {
    Token(TokenSpec),
    Error { status: u16, body: String },
}

impl Reply {
    pub fn good() -> Self {
        Self::Token(TokenSpec::good())
    }
    pub fn status(status: u16, body: &str) -> Self {
        Self::Error { status, body: body.into() }
    }
}

#[derive(Clone, Debug)]
pub struct Recorded {
    pub authorization: Option<String>,
    pub form: HashMap<String, String>,
}

pub struct StubState {
    pub token_requests: AtomicUsize,
    pub jwks_requests: AtomicUsize,
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Reply>,
    recorded: Mutex<Vec<Recorded>>,
    /// The stub's clock (before `clock_offset_s`): the system clock, or a test's manual clock.
    clock: Arc<dyn Clock>,
    clock_offset_s: AtomicI64,
    delay_ms: AtomicU64,
    issued: AtomicU64,
    /// The keys of the JWKS: the published key under [`KID`] and an HMAC key, unless a test
    /// sets others.
    jwks_keys: Mutex<Vec<Value>>,
    /// The JWKS response's `Cache-Control` header; `None` leaves it out.
    jwks_cache_control: Mutex<Option<String>>,
    /// Token requests that have arrived (the same count as `token_requests`, to wait on).
    arrived: watch::Sender<usize>,
    /// Whether token requests are answered; `false` holds them at the stub.
    open: watch::Sender<bool>,
}

pub struct Stub {
    addr: SocketAddr,
    state: Arc<StubState>,
}

impl Stub {
    /// A stub whose tokens and `Date` headers follow the system clock.
    pub async fn start(default: Reply) -> Stub {
        Self::with_clock(default, Arc::new(SystemClock)).await
    }
    /// A stub whose tokens (`iat`, `exp`) and `Date` headers follow `clock`: give it the clock
    /// the code under test reads, and a test moves both by moving that clock.
    pub async fn with_clock(default: Reply, clock: Arc<dyn Clock>) -> Stub {
        let state = Arc::new(StubState {
            token_requests: AtomicUsize::new(0),
            jwks_requests: AtomicUsize::new(0),
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(default),
            recorded: Mutex::new(Vec::new()),
            clock,
            clock_offset_s: AtomicI64::new(0),
            delay_ms: AtomicU64::new(0),
            issued: AtomicU64::new(0),
            jwks_keys: Mutex::new(vec![jwk(KID, Some("RS256")), json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"})]),
            jwks_cache_control: Mutex::new(None),
            arrived: watch::Sender::new(0),
            open: watch::Sender::new(true),
        });
        let app = Router::new()
            .route("/oauth2/v1/token", post(token))
            .route("/oauth2/v1/keys", get(jwks))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Stub { addr, state }
    }
    pub fn token_url(&self) -> String {
        format!("http://{}/oauth2/v1/token", self.addr)
    }
    /// Replies for the next requests, in order; then the default.
    pub fn push(&self, r: Reply) {
        self.state.script.lock().unwrap().push_back(r);
    }
    pub fn set_default(&self, r: Reply) {
        *self.state.default.lock().unwrap() = r;
    }
    pub fn token_requests(&self) -> usize {
        self.state.token_requests.load(Ordering::SeqCst)
    }
    pub fn jwks_requests(&self) -> usize {
        self.state.jwks_requests.load(Ordering::SeqCst)
    }
    /// Publishes these keys in the JWKS from now on (see [`jwk`]).
    pub fn set_jwks_keys(&self, keys: Vec<Value>) {
        *self.state.jwks_keys.lock().unwrap() = keys;
    }
    /// Sends this `Cache-Control` header with the JWKS from now on (`None`: no header).
    pub fn set_jwks_cache_control(&self, value: Option<&str>) {
        *self.state.jwks_cache_control.lock().unwrap() = value.map(str::to_owned);
    }
    pub fn recorded(&self) -> Vec<Recorded> {
        self.state.recorded.lock().unwrap().clone()
    }
    /// The stub's clock runs this many seconds ahead of ours (negative: behind).
    pub fn set_clock_offset(&self, s: i64) {
        self.state.clock_offset_s.store(s, Ordering::SeqCst);
    }
    pub fn set_delay(&self, d: Duration) {
        self.state.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }
    /// Token requests that arrive from now on wait at the stub, unanswered, until [`Stub::release`].
    pub fn hold(&self) {
        self.state.open.send_replace(false);
    }
    /// Answers the held token requests, and answers the next ones at once.
    pub fn release(&self) {
        self.state.open.send_replace(true);
    }
    /// Waits (without a timer) until `n` token requests in all have arrived at the stub.
    pub async fn arrived(&self, n: usize) {
        let mut rx = self.state.arrived.subscribe();
        rx.wait_for(|&seen| seen >= n).await.expect("the stub's state outlives the stub");
    }
}

pub fn tenant() -> Tenant {
    Tenant::new(
        "acme".parse().unwrap(),
        "tenant-a".parse().unwrap(),
        "app-a".parse().unwrap(),
        "app-a".parse().unwrap(),
    )
}

pub fn auth() -> TenantAuth {
    TenantAuth::new(tenant(), ClientSecret::new(SECRET))
}

pub fn config(stub: &Stub) -> AuthConfig {
    AuthConfig::new(&stub.token_url()).unwrap().with_timeout(Duration::from_secs(3)).with_retry(RetryPolicy::new(
        3,
        Duration::from_millis(20),
        Duration::from_millis(80),
    ))
}

fn server_now(state: &StubState) -> chrono::DateTime<chrono::Utc> {
    state.clock.now() + chrono::Duration::seconds(state.clock_offset_s.load(Ordering::SeqCst))
}

pub fn sign(claims: &Value, signing: &Signing) -> String {
    match signing {
        Signing::Rs256 { kid } => {
            let mut h = Header::new(Algorithm::RS256);
            h.kid = Some(kid.clone());
            jsonwebtoken::encode(&h, claims, &keys().encoding).unwrap()
        }
        Signing::SameKey { alg, kid } => {
            let mut h = Header::new(*alg);
            h.kid = Some(kid.clone());
            jsonwebtoken::encode(&h, claims, &keys().encoding).unwrap()
        }
        Signing::OtherKey { kid } => {
            let mut h = Header::new(Algorithm::RS256);
            h.kid = Some(kid.clone());
            jsonwebtoken::encode(&h, claims, &other_keys().encoding).unwrap()
        }
        Signing::AlgNone => format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT","kid":"stub-key-1"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        ),
        Signing::Hs256WithPublicKey => {
            let mut h = Header::new(Algorithm::HS256);
            h.kid = Some(KID.into());
            jsonwebtoken::encode(&h, claims, &EncodingKey::from_secret(keys().public_pem.as_bytes())).unwrap()
        }
    }
}

/// The good billing claims at `iat`, with `extra` merged over them.
pub fn claims_at(iat: i64, lifetime: i64, extra: &Value) -> Value {
    let mut c = json!({
        "scope": BILLING_WRITE_SCOPE,
        "aud": [BILLING_AUDIENCE, BASE_AUDIENCE],
        "tenant_id": "tenant-a",
        "client_id": "app-a",
        "iss": "https://idcs.example.com",
        "sub": "app-a",
        "iat": iat,
        "exp": iat + lifetime,
    });
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            if v.is_null() {
                c.remove(k);
            } else {
                c.insert(k.clone(), v.clone());
            }
        }
    }
    c
}

async fn token(
    State(state): State<Arc<StubState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    state.recorded.lock().unwrap().push(Recorded {
        authorization: headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned),
        form: form.clone(),
    });
    state.arrived.send_modify(|n| *n += 1);
    let _ = state.open.subscribe().wait_for(|&open| open).await;
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let reply = state.script.lock().unwrap().pop_front().unwrap_or_else(|| state.default.lock().unwrap().clone());
    let now = server_now(&state);
    let date = HeaderValue::from_str(&now.format("%a, %d %b %Y %H:%M:%S GMT").to_string()).unwrap();
    let mut resp = match reply {
        Reply::Error { status, body } => {
            (StatusCode::from_u16(status).unwrap(), [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Reply::Token(spec) => {
            let n = state.issued.fetch_add(1, Ordering::SeqCst);
            let mut claims = claims_at(now.timestamp(), spec.lifetime, &spec.claims);
            claims["jti"] = json!(format!("jti-{n}"));
            let mut response_scope = spec.response_scope;
            if spec.echo {
                response_scope = echo(&mut claims, &form);
            }
            let token =
                if spec.opaque { format!("opaque-{n}-2YotnFZFEjr1zCsicMWpAA") } else { sign(&claims, &spec.signing) };
            let mut body = json!({"access_token": token, "token_type": "Bearer", "expires_in": spec.lifetime});
            if let Some(s) = response_scope {
                body["scope"] = json!(s);
            }
            axum::Json(body).into_response()
        }
    };
    resp.headers_mut().insert(header::DATE, date);
    resp
}

/// Writes who asked into the claims (see [`TokenSpec::echo`]); the requested scope, for the
/// response's `scope`.
fn echo(claims: &mut Value, form: &HashMap<String, String>) -> Option<String> {
    if let Some(t) = form.get("tenant_id") {
        claims["tenant_id"] = json!(t);
    }
    if let Some(c) = form.get("client_id") {
        claims["client_id"] = json!(c);
        claims["sub"] = json!(c);
    }
    let scope = form.get("scope")?;
    claims["scope"] = json!(scope);
    Some(scope.clone())
}

async fn jwks(State(state): State<Arc<StubState>>) -> Response {
    state.jwks_requests.fetch_add(1, Ordering::SeqCst);
    let keys = state.jwks_keys.lock().unwrap().clone();
    let mut resp = axum::Json(json!({ "keys": keys })).into_response();
    if let Some(cc) = state.jwks_cache_control.lock().unwrap().as_deref() {
        resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_str(cc).unwrap());
    }
    resp
}

/// The published key (`keys()`) as a JWK under `kid`, with `alg` when given.
pub fn jwk(kid: &str, alg: Option<&str>) -> Value {
    let k = keys();
    let mut v = json!({"kty": "RSA", "kid": kid, "use": "sig", "n": k.n, "e": k.e});
    if let Some(a) = alg {
        v["alg"] = json!(a);
    }
    v
}

pub fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

pub fn basic_decode(h: &str) -> String {
    let raw = h.strip_prefix("Basic ").expect("Basic scheme");
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(raw).unwrap()).unwrap()
}
