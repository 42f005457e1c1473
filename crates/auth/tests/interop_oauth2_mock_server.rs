//! Interoperability: the OAuth client against an authorization server we did not write, the
//! npm package `oauth2-mock-server`. Install it with `scripts/install-npm-test-peers.sh`
//! (or point `OAUTH2_MOCK_SERVER_DIR` at an installed copy). Without it this test fails.
//!
//! The server signs real RS256 JWTs with its own keys and serves them at `/jwks`; its
//! `beforeTokenSigning` hook shapes the claims per client: `app-a` gets a billing token,
//! `telemetry-app` the thread's telemetry-only token (and `beforeResponse` reports the
//! narrower grant, as a server granting less than asked would, RFC 6749 §3.3).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test, bench and example code: a panic is a failure

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use billsync_auth::{AuthConfig, AuthMethod, OAuthClient, TenantAuth, TokenCache};
use billsync_domain::{BILLING_WRITE_SCOPE, ClientSecret, Tenant, TokenError, TokenSource, ViolationCode};
use tokio::io::{AsyncBufReadExt, BufReader};

const SCRIPT: &str = r#"
import { pathToFileURL } from 'node:url';
const { OAuth2Server } = await import(pathToFileURL(process.argv[2]).href);

const BILLING = {
  scope: 'urn:oracle:iot:billing:write',
  aud: ['https://iot.oraclecloud.com/billing', 'https://iot.oraclecloud.com'],
};
const TELEMETRY = { scope: 'urn:oracle:iot:device:write', aud: ['https://iot.oraclecloud.com'] };
const BY_CLIENT = { 'app-a': BILLING, 'telemetry-app': TELEMETRY };

function clientOf(req) {
  const h = req.headers['authorization'];
  if (h && h.startsWith('Basic ')) {
    const decoded = Buffer.from(h.slice(6), 'base64').toString('utf8');
    return decodeURIComponent(decoded.split(':')[0].replace(/\+/g, ' '));
  }
  return req.body.client_id;
}

const server = new OAuth2Server();
await server.issuer.keys.generate('RS256');
server.service.on('beforeTokenSigning', (token, req) => {
  const client = clientOf(req);
  Object.assign(token.payload, BY_CLIENT[client] ?? {}, {
    client_id: client,
    sub: client,
    tenant_id: req.body.tenant_id,
  });
});
server.service.on('beforeResponse', (response, req) => {
  const granted = BY_CLIENT[clientOf(req)];
  if (granted && response.body.access_token) response.body.scope = granted.scope;
});
await server.start(0, '127.0.0.1');
console.log(JSON.stringify({ issuer: server.issuer.url }));
"#;

fn package_dir() -> PathBuf {
    let dir = std::env::var_os("OAUTH2_MOCK_SERVER_DIR").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-deps/node_modules/oauth2-mock-server")
    });
    assert!(
        dir.join("package.json").is_file(),
        "oauth2-mock-server is not installed at {}: run scripts/install-npm-test-peers.sh \
         (or set OAUTH2_MOCK_SERVER_DIR to an installed copy)",
        dir.display()
    );
    dir
}

fn entry_point(dir: &std::path::Path) -> PathBuf {
    let pkg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("package.json")).unwrap()).unwrap();
    dir.join(pkg["main"].as_str().unwrap_or("dist/index.mjs"))
}

struct MockServer {
    issuer: String,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

async fn start_mock_server() -> MockServer {
    let entry = entry_point(&package_dir());
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("server.mjs");
    std::fs::write(&script, SCRIPT).unwrap();
    let mut child = tokio::process::Command::new("node")
        .arg(&script)
        .arg(&entry)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node must be installed to run the interop test");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(30), BufReader::new(stdout).read_line(&mut line))
        .await
        .expect("oauth2-mock-server did not start within 30 s")
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("unexpected output {line:?}: {e}"));
    let issuer = v["issuer"].as_str().unwrap().trim_end_matches('/').to_owned();
    MockServer { issuer, _child: child, _dir: dir }
}

fn tenant(name: &str, client: &str) -> Tenant {
    Tenant::new(name.parse().unwrap(), "tenant-a".parse().unwrap(), client.parse().unwrap(), client.parse().unwrap())
}

fn auth(t: Tenant, method: AuthMethod) -> TenantAuth {
    TenantAuth::new(t, ClientSecret::new("interop secret"))
        .with_auth_method(method)
        .with_extra_param("tenant_id", "tenant-a")
        .unwrap()
        .with_jwks_verification(true)
}

#[tokio::test]
async fn oauth2_mock_server_tokens_pass_or_fail_the_billing_policy_as_customised() {
    // Arrange
    let server = start_mock_server().await;
    let config = AuthConfig::new(&format!("{}/token", server.issuer))
        .unwrap()
        .with_jwks_url(&format!("{}/jwks", server.issuer))
        .unwrap();
    let billing = tenant("billing", "app-a");
    let telemetry = tenant("telemetry", "telemetry-app");
    let cache = TokenCache::new(
        config.clone(),
        [auth(billing.clone(), AuthMethod::ClientSecretBasic), auth(telemetry.clone(), AuthMethod::ClientSecretPost)],
    )
    .unwrap();

    // Act + Assert: the billing client gets a verified token that passes the policy.
    let h = cache.headers(&billing).await.unwrap_or_else(|e| panic!("billing token refused: {e}"));
    assert!(h.claims().has_scope(BILLING_WRITE_SCOPE));
    assert_eq!(h.claims().tenant_id.as_deref(), Some("tenant-a"));
    assert_eq!(h.claims().client_id.as_deref(), Some("app-a"));
    assert_eq!((h.expires_at() - h.issued_at()).num_seconds(), 3600);
    assert!(cache.headers(&billing).await.unwrap().same_token(&h), "cached");
    assert_eq!(cache.token_requests(billing.name()), 1);

    // Act + Assert: the telemetry-only client is blocked before sending anything.
    match cache.headers(&telemetry).await {
        Err(TokenError::Policy(v)) => {
            assert_eq!(v.codes(), [ViolationCode::MissingScope, ViolationCode::AudienceMissing], "{v}")
        }
        other => panic!("expected missing_scope and audience_missing, got {other:?}"),
    }

    // And the diagnosis names the narrower grant.
    let d = OAuthClient::new(config).unwrap().diagnose(&auth(telemetry, AuthMethod::ClientSecretPost)).await;
    assert!(!d.ready());
    assert_eq!(d.failures(), ["scope_not_granted", "missing_scope", "audience_missing"], "{d}");
    assert!(d.check("signature").is_some_and(|c| c.ok()), "{d}");
}
