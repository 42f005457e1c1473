//! `client_assertion_file`: assertions minted outside billsync, read afresh for every token
//! request, checked before they are sent, and never sent twice.
//!
//! The stub and the cache read one [`ManualClock`]; the file is written by the test as a
//! signing sidecar would, with [`AssertionKey::sign_assertion`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use billsync_auth::{AssertionAlgorithm, AssertionKey, AuthMethod, OAuthClient, TenantAuth, TokenCache};
use billsync_domain::{Clock, ManualClock, TokenError, TokenSource};
use chrono::{DateTime, Utc};

use crate::helpers::*;

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_900_000_000, 0).unwrap()
}

/// A signing sidecar: one key, writing assertions to one file.
struct Sidecar {
    key: AssertionKey,
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Sidecar {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("assertion.jwt");
        Self { key: AssertionKey::generate(AssertionAlgorithm::Es256).unwrap(), _dir: dir, path }
    }
    /// Writes a fresh assertion for `client_id` and `aud`, issued at `iat`, living `lifetime`.
    fn rotate(&self, client_id: &str, aud: &str, iat: DateTime<Utc>, lifetime: Duration) {
        let a = self.key.sign_assertion(client_id, aud, iat, lifetime).unwrap();
        write_atomically(&self.path, a.secret());
    }
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{text}\n")).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

async fn setup(sidecar: &Sidecar) -> (Stub, TokenCache, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(t0()));
    let stub = Stub::with_clock(Reply::good(), clock.clone()).await;
    let auth = TenantAuth::new_assertion_file(tenant(), &sidecar.path);
    let cache = TokenCache::with_clock(config(&stub), [auth], clock.clone()).unwrap();
    (stub, cache, clock)
}

fn credential_code(e: &TokenError) -> &str {
    match e {
        TokenError::Credential { code, .. } => code,
        other => panic!("expected a credential problem, got {other:?}"),
    }
}

#[tokio::test]
async fn the_file_is_sent_as_written_asking_for_write_and_read_in_one_token() {
    // Arrange
    let sidecar = Sidecar::new();
    let (stub, cache, _clock) = setup(&sidecar).await;
    sidecar.rotate("app-a", &stub.token_url(), t0(), Duration::from_secs(60));
    // Act
    cache.headers(&tenant()).await.unwrap();
    // Assert
    let r = &stub.recorded()[0];
    let written = std::fs::read_to_string(&sidecar.path).unwrap();
    assert_eq!(r.form["client_assertion"], written.trim(), "sent exactly as the sidecar wrote it");
    assert_eq!(r.form["client_id"], "app-a");
    assert_eq!(r.form["scope"], "urn:oracle:iot:billing:write urn:oracle:iot:billing:read");
    assert_eq!(r.authorization, None);
}

#[tokio::test]
async fn a_file_not_rotated_since_it_was_sent_is_not_sent_again_until_it_is() {
    // Arrange: one token obtained with the file, then that token refused by the platform.
    let sidecar = Sidecar::new();
    let (stub, cache, clock) = setup(&sidecar).await;
    sidecar.rotate("app-a", &stub.token_url(), t0(), Duration::from_secs(60));
    let h = cache.headers(&tenant()).await.unwrap();
    cache.invalidate(&tenant(), &h).await;
    // Act: the same file again.
    let e = cache.headers(&tenant()).await.unwrap_err();
    // Assert: named locally, nothing sent (a replay would be refused as invalid_client).
    assert_eq!(credential_code(&e), "assertion_not_rotated", "{e}");
    assert!(!e.is_transient(), "blocking until the file is rotated: {e}");
    assert_eq!(stub.token_requests(), 1);
    // Once the sidecar rotates it, the next request goes out.
    clock.advance(Duration::from_secs(5));
    sidecar.rotate("app-a", &stub.token_url(), clock.now(), Duration::from_secs(60));
    cache.headers(&tenant()).await.unwrap();
    assert_eq!(stub.token_requests(), 2);
}

#[tokio::test]
async fn a_stale_or_wrong_file_is_named_before_anything_is_sent() {
    let sidecar = Sidecar::new();
    let (stub, cache, _clock) = setup(&sidecar).await;
    let url = stub.token_url();
    let ago = t0() - chrono::Duration::seconds(120);
    let cases: [(&str, &str, DateTime<Utc>, u64, &str); 5] = [
        ("app-a", url.as_str(), ago, 60, "assertion_expired"),
        ("app-a", "https://iot.example.com/oauth2/v1/token", t0(), 60, "assertion_audience"),
        ("other-app", url.as_str(), t0(), 60, "assertion_issuer"),
        ("app-a", url.as_str(), t0(), 301, "assertion_lifetime"),
        ("app-a", url.as_str(), t0() + chrono::Duration::seconds(90), 60, "assertion_not_yet_valid"),
    ];
    for (client, aud, iat, lifetime, code) in cases {
        sidecar.rotate(client, aud, iat, Duration::from_secs(lifetime));
        let e = cache.headers(&tenant()).await.unwrap_err();
        assert_eq!(credential_code(&e), code, "{e}");
        assert!(!e.to_string().contains(std::fs::read_to_string(&sidecar.path).unwrap().trim()), "no assertion in {e}");
    }
    std::fs::remove_file(&sidecar.path).unwrap();
    let e = cache.headers(&tenant()).await.unwrap_err();
    assert_eq!(credential_code(&e), "assertion_unreadable", "{e}");
    assert!(e.to_string().contains("assertion.jwt"), "names the file: {e}");
    assert_eq!(stub.token_requests(), 0, "nothing was sent");
}

#[tokio::test]
async fn the_token_endpoints_clock_decides_expiry() {
    // Our clock is two minutes behind the token endpoint's: an assertion that is current for
    // us has expired for it once the skew is known.
    let sidecar = Sidecar::new();
    let (stub, cache, _clock) = setup(&sidecar).await;
    stub.set_clock_offset(120);
    sidecar.rotate("app-a", &stub.token_url(), t0(), Duration::from_secs(60));
    let h = cache.headers(&tenant()).await.unwrap(); // the first request measures the skew
    cache.invalidate(&tenant(), &h).await;
    sidecar.rotate("app-a", &stub.token_url(), t0() + chrono::Duration::seconds(1), Duration::from_secs(60));
    let e = cache.headers(&tenant()).await.unwrap_err();
    assert_eq!(credential_code(&e), "assertion_expired", "{e}");
}

#[tokio::test]
async fn doctor_checks_the_file_without_spending_it() {
    // Arrange
    let sidecar = Sidecar::new();
    let stub = Stub::start(Reply::good()).await;
    let client = OAuthClient::new(config(&stub)).unwrap();
    let auth = TenantAuth::new_assertion_file(tenant(), &sidecar.path);
    assert_eq!(auth.auth_method(), AuthMethod::PrivateKeyJwt);
    // An expired file: named, not sent.
    let now = Utc::now();
    sidecar.rotate("app-a", &stub.token_url(), now - chrono::Duration::seconds(400), Duration::from_secs(60));
    let d = client.diagnose(&auth).await;
    assert_eq!(d.failures(), ["assertion_expired"], "{d}");
    assert_eq!(stub.token_requests(), 0);
    // A current file: checked, then used for the diagnosis' own token request.
    sidecar.rotate("app-a", &stub.token_url(), now, Duration::from_secs(60));
    let d = client.diagnose(&auth).await;
    assert!(d.check("client_assertion_file").is_some_and(|c| c.ok()), "{d}");
    assert_eq!(stub.token_requests(), 1);
}
