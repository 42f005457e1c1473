//! Interoperability: `private_key_jwt` client authentication (RFC 7523 §2.2) against an
//! authorization server we did not write, the npm package `oidc-provider` (9.x, OpenID
//! Certified). Install it with `scripts/install-npm-test-peers.sh` (or point
//! `OIDC_PROVIDER_DIR` at an installed copy). Without it this test fails.
//!
//! The Node script registers each test's clients with `grant_types: ['client_credentials']`,
//! `token_endpoint_auth_method: 'private_key_jwt'`, the signing algorithm, and the public JWK of
//! an [`AssertionKey`] generated here. It serves the token endpoint at `/token` (the v9 default)
//! twice: on the issuer's listener, and on a second listener that sends no `Date` header, so
//! that billsync cannot learn the server's clock from it (from the issuer's listener, a client
//! whose clock is late has its expired assertion refused, measures the skew from that
//! refusal's `Date`, signs once more on the server's time and gets its token). It prints the
//! server's `grant.success` and `grant.error` events as JSON lines, with the refusal's
//! `error_detail`: on the wire every failed client authentication is the same `401
//! {"error":"invalid_client","error_description":"client authentication failed"}`; the reason
//! (replayed `jti`, expired assertion, wrong `aud`, ...) is only in the server's
//! `error_detail`.
//!
//! What oidc-provider accepts as the assertion's `aud` (`lib/shared/jwt_client_auth.js`,
//! `clientJwtAuthExpectedAudience` in `lib/helpers/oidc_context.js`): a string, or an array with
//! at least one member, exactly equal to one of the issuer identifier, the token endpoint URL,
//! or the URL of the endpoint receiving the assertion. Both URLs are built from the request
//! (`ctx.href`: its scheme, `Host` header and mount path) plus the route's path, without query
//! string. billsync's `aud`, the token URL exactly as posted, therefore matches unless the
//! token URL has a query string, or a TLS-terminating proxy makes the server see `http` (set
//! `provider.proxy = true` there). Besides `aud`: `iss` = `sub` = `client_id`, `exp` and `jti`
//! required, `alg` equal to the client's `token_endpoint_auth_signing_alg`, a 15 s clock
//! tolerance, and each `jti` accepted once until `exp` + tolerance.
//!
//! Access tokens of the client-credentials grant without a resource indicator are opaque, so
//! billsync takes their claims from its configuration and the response (the granted `scope`
//! and `expires_in`, 600 s here); the billing policy then passes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test, bench and example code: a panic is a failure

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use billsync_auth::{AssertionAlgorithm, AssertionKey, AuthConfig, CLIENT_ASSERTION_TYPE, TenantAuth, TokenCache};
use billsync_domain::{BILLING_WRITE_SCOPE, ManualClock, Tenant, TokenError, TokenSource};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

const SCRIPT: &str = r#"
import { createServer } from 'node:http';
import { generateKeyPairSync } from 'node:crypto';
import { pathToFileURL } from 'node:url';
const { default: Provider } = await import(pathToFileURL(process.argv[2]).href);

// [{ client_id, alg, jwk }]: the clients and their public keys, from the test.
const clients = JSON.parse(process.argv[3]);
const SCOPE = 'urn:oracle:iot:billing:write';

const serverKey = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
const listen = (server) =>
  new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server.address().port)));
const main = createServer();
const issuer = `http://127.0.0.1:${await listen(main)}`;

const provider = new Provider(issuer, {
  jwks: { keys: [{ ...serverKey, kid: 'server-rs256', alg: 'RS256', use: 'sig' }] },
  cookies: { keys: ['billsync-interop-test'] },
  features: { clientCredentials: { enabled: true }, devInteractions: { enabled: false } },
  scopes: [SCOPE],
  ttl: { ClientCredentials: 600 },
  clients: clients.map(({ client_id, alg, jwk }) => ({
    client_id,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: SCOPE,
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: alg,
    jwks: { keys: [jwk] },
  })),
});

const log = (o) => console.log(JSON.stringify(o));
provider.on('grant.success', (ctx) => log({ event: 'grant.success', client_id: ctx.oidc.client?.clientId ?? null }));
provider.on('grant.error', (ctx, err) => log({
  event: 'grant.error',
  client_id: ctx.oidc.client?.clientId ?? null,
  error: err.error,
  error_description: err.error_description ?? null,
  error_detail: err.error_detail ?? null,
}));

const callback = provider.callback();
main.on('request', callback);
// The same provider on a listener without a Date header: billsync cannot measure its clock.
const undated = createServer((req, res) => { res.sendDate = false; callback(req, res); });
const undatedPort = await listen(undated);
log({ token_url: `${issuer}/token`, token_url_without_date: `http://127.0.0.1:${undatedPort}/token` });
"#;

fn package_dir() -> PathBuf {
    let dir = std::env::var_os("OIDC_PROVIDER_DIR").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-deps/node_modules/oidc-provider")
    });
    assert!(
        dir.join("package.json").is_file(),
        "oidc-provider is not installed at {}: run scripts/install-npm-test-peers.sh \
         (or set OIDC_PROVIDER_DIR to an installed copy)",
        dir.display()
    );
    dir
}

fn entry_point(dir: &std::path::Path) -> PathBuf {
    let pkg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("package.json")).unwrap()).unwrap();
    dir.join(pkg["main"].as_str().unwrap_or("lib/index.js"))
}

/// A running oidc-provider and the events it printed.
struct OidcProvider {
    token_url: String,
    token_url_without_date: String,
    events: Arc<Mutex<Vec<Value>>>,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl OidcProvider {
    /// Starts oidc-provider with these clients (id, key), authenticating with `private_key_jwt`.
    async fn start(clients: &[(&str, &AssertionKey)]) -> Self {
        let entry = entry_point(&package_dir());
        let clients: Vec<Value> = clients
            .iter()
            .map(|(id, key)| json!({"client_id": id, "alg": key.algorithm().as_str(), "jwk": key.public_jwk()}))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("server.mjs");
        std::fs::write(&script, SCRIPT).unwrap();
        let mut child = tokio::process::Command::new("node")
            .arg(&script)
            .arg(&entry)
            .arg(Value::Array(clients).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node must be installed to run the interop test");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // oidc-provider may print notices on stdout too: the first JSON line is ours.
        let urls = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let line = lines.next_line().await.unwrap().expect("oidc-provider exited before listening");
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    break v;
                }
            }
        })
        .await
        .expect("oidc-provider did not start within 30 s");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        Self {
            token_url: urls["token_url"].as_str().unwrap().to_owned(),
            token_url_without_date: urls["token_url_without_date"].as_str().unwrap().to_owned(),
            events,
            _child: child,
            _dir: dir,
        }
    }

    /// The server's events for `client`, once `count` of them arrived (they may trail the
    /// HTTP response a little); panics after 5 s.
    async fn events_of(&self, client: &str, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got: Vec<Value> =
                self.events.lock().unwrap().iter().filter(|e| e["client_id"] == client).cloned().collect();
            if got.len() >= count || Instant::now() > deadline {
                assert_eq!(got.len(), count, "oidc-provider's events for {client}: {got:#?}");
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn tenant(name: &str, client: &str) -> Tenant {
    Tenant::new(name.parse().unwrap(), "tenant-a".parse().unwrap(), client.parse().unwrap(), client.parse().unwrap())
}

/// A configuration whose own token URL answers nothing: each tenant's `with_token_url` is
/// what must be used.
fn config() -> AuthConfig {
    AuthConfig::new("http://127.0.0.1:9/not-this-token-endpoint").unwrap()
}

/// (a), (b): the token cache gets a token with `private_key_jwt`, in one request.
async fn issues_a_token_to_a_private_key_jwt_client(alg: AssertionAlgorithm) {
    // Arrange
    let client = format!("app-{}", alg.as_str().to_ascii_lowercase());
    let key = AssertionKey::generate(alg).unwrap();
    let server = OidcProvider::start(&[(&client, &key)]).await;
    let t = tenant("acme", &client);
    let auth = TenantAuth::new_private_key_jwt(t.clone(), key).with_token_url(&server.token_url).unwrap();
    let cache = TokenCache::new(config(), [auth]).unwrap();

    // Act
    let h = cache.headers(&t).await.unwrap_or_else(|e| panic!("{alg}: oidc-provider refused billsync: {e}"));

    // Assert: one request, one grant, and the token is cached.
    assert_eq!(cache.token_requests(t.name()), 1, "{alg}");
    let events = server.events_of(&client, 1).await;
    assert_eq!(events[0]["event"], "grant.success", "{alg}: {events:#?}");
    assert!(!h.bearer_token().contains('.'), "{alg}: oidc-provider issues opaque client-credentials tokens");
    assert!(h.claims().has_scope(BILLING_WRITE_SCOPE), "{alg}: the granted scope: {:?}", h.claims().scope);
    assert_eq!((h.expires_at() - h.issued_at()).num_seconds(), 600, "{alg}: expires_in");
    assert!(cache.headers(&t).await.unwrap().same_token(&h), "{alg}: cached");
    assert_eq!(cache.token_requests(t.name()), 1, "{alg}");
}

#[tokio::test]
async fn oidc_provider_issues_a_token_for_an_rs256_client_assertion() {
    issues_a_token_to_a_private_key_jwt_client(AssertionAlgorithm::Rs256).await;
}

#[tokio::test]
async fn oidc_provider_issues_a_token_for_an_es256_client_assertion() {
    issues_a_token_to_a_private_key_jwt_client(AssertionAlgorithm::Es256).await;
}

#[tokio::test]
async fn oidc_provider_refuses_a_replayed_client_assertion() {
    // Arrange: one assertion, signed once.
    let key = AssertionKey::generate(AssertionAlgorithm::Es256).unwrap();
    let server = OidcProvider::start(&[("app-replay", &key)]).await;
    let assertion =
        key.sign_assertion("app-replay", &server.token_url, chrono::Utc::now(), Duration::from_secs(60)).unwrap();
    let form = [
        ("grant_type", "client_credentials"),
        ("client_assertion_type", CLIENT_ASSERTION_TYPE),
        ("client_assertion", assertion.secret()),
        ("client_id", "app-replay"),
        ("scope", BILLING_WRITE_SCOPE),
    ];
    let http = reqwest::Client::new();
    let post = || async {
        let r = http.post(&server.token_url).form(&form).send().await.unwrap();
        let status = r.status().as_u16();
        (status, serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap())
    };

    // Act
    let (first_status, first) = post().await;
    let (second_status, second) = post().await;

    // Assert
    assert_eq!(first_status, 200, "the first use is accepted: {first}");
    assert!(first["access_token"].is_string(), "{first}");
    assert!(
        matches!(second_status, 400 | 401) && second["error"] == "invalid_client",
        "the replay must be refused with invalid_client, got HTTP {second_status} {second} \
         (error_description {})",
        second["error_description"]
    );
    let events = server.events_of("app-replay", 2).await;
    assert_eq!(events[0]["event"], "grant.success", "{events:#?}");
    assert_eq!(events[1]["event"], "grant.error", "{events:#?}");
    assert_eq!(events[1]["error_detail"], "client assertion tokens must only be used once", "{events:#?}");
    println!("replay: HTTP {second_status} {second}; server-side detail {}", events[1]["error_detail"]);
}

/// A clock 10 minutes behind the system's: its assertions expired (`exp` = `iat` + 60 s)
/// long before they arrive.
fn ten_minutes_late() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(chrono::Utc::now() - chrono::Duration::minutes(10)))
}

#[tokio::test]
async fn oidc_provider_refuses_an_expired_client_assertion_as_invalid_client() {
    // Arrange: the listener without a Date header, so billsync cannot correct its clock.
    let key = AssertionKey::generate(AssertionAlgorithm::Es256).unwrap();
    let server = OidcProvider::start(&[("app-late", &key)]).await;
    let t = tenant("acme", "app-late");
    let auth = TenantAuth::new_private_key_jwt(t.clone(), key).with_token_url(&server.token_url_without_date).unwrap();
    let cache = TokenCache::with_clock(config(), [auth], ten_minutes_late()).unwrap();

    // Act
    let result = cache.headers(&t).await;

    // Assert
    match &result {
        Err(TokenError::Refused { error, description }) if error == "invalid_client" => {
            println!("expired: invalid_client, error_description {description:?}");
        }
        other => panic!("expected the token endpoint's invalid_client refusal, got {other:?}"),
    }
    assert_eq!(cache.token_requests(t.name()), 1, "no skew was measured, so no second signature");
    let events = server.events_of("app-late", 1).await;
    assert_eq!(events[0]["event"], "grant.error", "{events:#?}");
    assert_eq!(events[0]["error"], "invalid_client", "{events:#?}");
    assert_eq!(events[0]["error_detail"], "jwt expired", "refused for its exp: {events:#?}");
    println!("expired: server-side detail {}", events[0]["error_detail"]);
    let Err(TokenError::Refused { description: Some(said), .. }) = &result else { unreachable!() };
    assert!(said.contains("likely causes, in order: key_not_registered"), "the blocked reason lists them: {said}");

    // doctor: the server said no more than invalid_client, so it lists the likely causes.
    let d = cache.diagnose(t.name()).await.unwrap();
    let causes: Vec<&str> = d.likely_causes().iter().map(|c| c.code).collect();
    assert_eq!(causes, ["key_not_registered", "kid_mismatch", "bad_assertion_signature", "assertion_replayed"], "{d}");
    assert_eq!(d.failures(), ["invalid_client"], "{d}");
}

#[tokio::test]
async fn a_client_ten_minutes_late_signs_again_on_the_date_oidc_provider_sent() {
    // Arrange: the issuer's listener, which sends a Date header.
    let key = AssertionKey::generate(AssertionAlgorithm::Es256).unwrap();
    let server = OidcProvider::start(&[("app-late", &key)]).await;
    let t = tenant("acme", "app-late");
    let auth = TenantAuth::new_private_key_jwt(t.clone(), key).with_token_url(&server.token_url).unwrap();
    let cache = TokenCache::with_clock(config(), [auth], ten_minutes_late()).unwrap();

    // Act
    let h = cache.headers(&t).await;

    // Assert: refused once for the expired assertion, then issued on the server's time.
    if let Err(e) = h {
        let events = server.events.lock().unwrap().clone();
        panic!("the second assertion, on the server's clock, should be accepted: {e}; server events {events:#?}");
    }
    assert_eq!(cache.token_requests(t.name()), 2);
    let events = server.events_of("app-late", 2).await;
    assert_eq!(events[0]["event"], "grant.error", "{events:#?}");
    assert_eq!(events[0]["error_detail"], "jwt expired", "{events:#?}");
    assert_eq!(events[1]["event"], "grant.success", "{events:#?}");
    let skew = cache.client().last_clock_skew().expect("oidc-provider sends a Date header").num_seconds();
    assert!((595..=605).contains(&skew), "the measured skew is about +600 s: {skew}");
}
