//! TLS for every non-loopback URL, and no way around certificate checks: an `https` billing
//! endpoint on 127.0.0.1 with a self-signed certificate is refused with a certificate error
//! unless its CA is given in `ca_file`.

use std::sync::Arc;

use billsync_domain::{
    AccessToken, AccessTokenClaims, ApplicationId, BatchBody, BillingApi, BillingEvent, BillingPolicy, BillingResponse,
    TenantId,
};
use billsync_http::HttpSettings;
use billsync_transport::HttpBillingApi;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

/// A one-route HTTPS server on 127.0.0.1 answering every request with a `202` receipt.
async fn https_server(cert: &rcgen::CertifiedKey) -> (String, tokio::task::JoinHandle<()>) {
    https_server_der(cert.cert.der().to_vec(), cert.key_pair.serialize_der()).await
}

/// [`https_server`] from the certificate's and the key's DER.
async fn https_server_der(cert: Vec<u8>, key: Vec<u8>) -> (String, tokio::task::JoinHandle<()>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.into()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()))
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let task = tokio::spawn(async move {
        // Bounded: the test makes two connections at most.
        for _ in 0..4 {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut req = Vec::new();
                let mut buf = [0u8; 8192];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&req);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if req.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let body = r#"{"accepted":1,"duplicates":[],"rejected":[]}"#;
                let resp = format!(
                    "HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (url, task)
}

fn headers() -> billsync_domain::BillingRequestHeaders {
    let now = chrono::Utc::now();
    let claims = AccessTokenClaims {
        scope: vec![billsync_domain::BILLING_WRITE_SCOPE.into()],
        aud: vec![billsync_domain::BILLING_AUDIENCE.into()],
        tenant_id: Some("acme-prod-001".into()),
        client_id: Some("app-acme".into()),
        iat: Some(now.timestamp()),
        exp: Some(now.timestamp() + 900),
        ..Default::default()
    };
    BillingPolicy::default()
        .authorize(
            AccessToken::new("tls-test-token"),
            claims,
            &TenantId::parse("acme-prod-001").unwrap(),
            &ApplicationId::parse("app-acme").unwrap(),
            now,
        )
        .unwrap()
}

fn body() -> BatchBody {
    let now = chrono::Utc::now();
    let json = serde_json::json!({"event_id": "tls-1", "device_id": "d", "meter": "m", "quantity": "1", "unit": "kWh",
        "occurred_at": (now - chrono::Duration::seconds(5)).to_rfc3339()});
    BatchBody::new(&[BillingEvent::parse(&json.to_string(), now).unwrap().encode()])
}

#[tokio::test]
async fn a_self_signed_server_is_refused_unless_its_ca_is_given() {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let (url, server) = https_server(&cert).await;

    // Without ca_file: a certificate error, and nothing was accepted.
    let api = HttpBillingApi::new(&url, &HttpSettings::default()).unwrap();
    let refused = api.post_events(&headers(), &body()).await;
    let message = format!("{refused:?}").to_lowercase();
    assert!(refused.is_err(), "an untrusted certificate was accepted: {refused:?}");
    assert!(message.contains("certificate") || message.contains("issuer"), "not a TLS error: {message}");

    // With its CA in ca_file: the same server is trusted.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let api = HttpBillingApi::new(&url, &HttpSettings::default().with_ca_file(&ca).unwrap()).unwrap();
    let reply = api.post_events(&headers(), &body()).await.expect("trusted through ca_file");
    assert!(matches!(reply.response, BillingResponse::Accepted(ref r) if r.accepted == 1), "{reply:?}");
    server.abort();
}

/// The files a child process needs: a server's certificate (PEM, DER) and key (DER), and a
/// directory standing for the OS store's directory (empty).
fn server_files(dir: &std::path::Path) -> Vec<(&'static str, std::ffi::OsString)> {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    std::fs::write(dir.join("server.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("server.der"), cert.cert.der()).unwrap();
    std::fs::write(dir.join("server.key"), cert.key_pair.serialize_der()).unwrap();
    std::fs::write(dir.join("empty.pem"), "").unwrap();
    std::fs::create_dir(dir.join("store")).unwrap();
    vec![("SSL_CERT_DIR", dir.join("store").into()), ("BILLSYNC_TEST_FILES", dir.into())]
}

/// The server of [`server_files`], in the child.
async fn child_server() -> (String, tokio::task::JoinHandle<()>, std::path::PathBuf) {
    let dir = std::path::PathBuf::from(std::env::var_os("BILLSYNC_TEST_FILES").unwrap());
    let (cert, key) = (std::fs::read(dir.join("server.der")).unwrap(), std::fs::read(dir.join("server.key")).unwrap());
    let (url, task) = https_server_der(cert, key).await;
    (url, task, dir)
}

/// The OS store is trusted: with the server's CA in `SSL_CERT_FILE` (and no `ca_file`), the
/// billing endpoint is reached.
#[test]
fn a_server_the_os_store_trusts_is_reached_without_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = server_files(dir.path());
    env.push(("SSL_CERT_FILE", dir.path().join("server.pem").into()));
    let env: Vec<(&str, &std::ffi::OsStr)> = env.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
    if !billsync_testkit::in_child_with_env("tls::a_server_the_os_store_trusts_is_reached_without_ca_file", &env) {
        return;
    }
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        assert_eq!(billsync_http::trust_store(), billsync_http::TrustStore::Os { certificates: 1 });
        let (url, server, _) = child_server().await;
        let api = HttpBillingApi::new(&url, &HttpSettings::default()).unwrap();
        let reply = api.post_events(&headers(), &body()).await.expect("trusted through the OS store");
        assert!(matches!(reply.response, BillingResponse::Accepted(ref r) if r.accepted == 1), "{reply:?}");
        server.abort();
    });
}

/// Where the OS store is empty, the bundled roots stand in (and still trust no self-signed
/// server), and `ca_file` adds to them.
#[test]
fn with_an_empty_os_store_the_bundled_roots_stand_in() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = server_files(dir.path());
    env.push(("SSL_CERT_FILE", dir.path().join("empty.pem").into()));
    let env: Vec<(&str, &std::ffi::OsStr)> = env.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
    if !billsync_testkit::in_child_with_env("tls::with_an_empty_os_store_the_bundled_roots_stand_in", &env) {
        return;
    }
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        assert_eq!(billsync_http::trust_store(), billsync_http::TrustStore::Bundled);
        let (url, server, dir) = child_server().await;
        let api = HttpBillingApi::new(&url, &HttpSettings::default()).unwrap();
        let refused = api.post_events(&headers(), &body()).await;
        assert!(format!("{refused:?}").contains("UnknownIssuer"), "{refused:?}");
        let settings = HttpSettings::default().with_ca_file(&dir.join("server.pem")).unwrap();
        let api = HttpBillingApi::new(&url, &settings).unwrap();
        api.post_events(&headers(), &body()).await.expect("trusted through ca_file");
        server.abort();
    });
}

#[test]
fn no_source_disables_certificate_checks() {
    // The switches that would turn verification off, in any crate that talks to the network.
    let forbidden = ["danger_accept_invalid_certs", "danger_accept_invalid_hostnames", "dangerous()", "NoVerifier"];
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates");
    let mut stack = vec![root];
    let mut scanned = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                scanned += 1;
                let src = std::fs::read_to_string(&path).unwrap();
                for f in forbidden {
                    assert!(!src.contains(f), "{} uses {f}", path.display());
                }
            }
        }
    }
    assert!(scanned > 20, "scanned only {scanned} files");
}

#[tokio::test]
async fn the_token_endpoint_honours_ca_file_too() {
    use billsync_auth::{AuthConfig, TenantAuth, TokenCache};
    use billsync_domain::{ClientId, ClientSecret, Tenant, TenantName, TokenError, TokenSource};
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (url, server) = https_server(&cert).await;
    let tenant = Tenant::new(
        TenantName::parse("acme").unwrap(),
        TenantId::parse("acme-prod-001").unwrap(),
        ApplicationId::parse("app-acme").unwrap(),
        ClientId::parse("app-acme").unwrap(),
    );
    let cache = |config: AuthConfig| {
        TokenCache::new(config, [TenantAuth::new(tenant.clone(), ClientSecret::new("secret-acme"))]).unwrap()
    };
    let token_url = format!("{url}/oauth2/v1/token");

    // Without the CA: the handshake fails on the certificate.
    let refused = cache(AuthConfig::new(&token_url).unwrap()).headers(&tenant).await.unwrap_err();
    let message = refused.to_string().to_lowercase();
    assert!(matches!(refused, TokenError::Unavailable(_)), "{refused:?}");
    assert!(message.contains("certificate") || message.contains("issuer"), "not a TLS error: {message}");

    // With it: the server is reached (it answers a 202 receipt, which is no token response).
    let trusted = cache(
        AuthConfig::new(&token_url)
            .unwrap()
            .with_http(HttpSettings::default().with_ca_pem(cert.cert.pem().as_bytes(), "the test CA").unwrap()),
    )
    .headers(&tenant)
    .await
    .unwrap_err();
    let message = trusted.to_string().to_lowercase();
    assert!(!message.contains("certificate") && !message.contains("issuer"), "still a TLS error: {message}");
    server.abort();
}
