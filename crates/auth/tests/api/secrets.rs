//! Secrets never show: not in Debug or Display of public types, errors, or tracing logs.

use std::io::Write;
use std::sync::{Arc, Mutex};

use billsync_auth::{AuthMethod, OAuthClient, TokenCache, inspect};
use billsync_domain::{BillingPolicy, TokenSource};

use crate::helpers::*;

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

fn assert_clean(what: &str, text: &str, token: &str) {
    assert!(!text.contains(SECRET), "{what} shows the client secret: {text}");
    assert!(!text.contains("s3cr3t"), "{what} shows part of the client secret: {text}");
    assert!(token.is_empty() || !text.contains(token), "{what} shows the access token: {text}");
    // A JWT's signature part alone is enough to reuse nothing, but the whole token must never be there.
    if let Some(sig) = token.rsplit('.').next().filter(|s| s.len() > 20) {
        assert!(!text.contains(sig), "{what} shows the token's signature: {text}");
    }
}

#[tokio::test]
async fn debug_and_display_of_public_types_and_errors_never_show_secrets() {
    let stub = Stub::start(Reply::good()).await;
    let cache = TokenCache::new(
        config(&stub),
        [auth(), {
            let t = billsync_domain::Tenant::new(
                "basic".parse().unwrap(),
                "tenant-a".parse().unwrap(),
                "app-a".parse().unwrap(),
                "app-a".parse().unwrap(),
            );
            billsync_auth::TenantAuth::new(t, billsync_domain::ClientSecret::new(SECRET))
                .with_auth_method(AuthMethod::ClientSecretBasic)
        }],
    )
    .unwrap();
    let h = cache.headers(&tenant()).await.unwrap();
    let token = h.bearer_token().to_owned();
    let client = OAuthClient::new(config(&stub)).unwrap();
    let diagnosis = client.diagnose(&auth()).await;
    let inspection = inspect(&token, None, None, &BillingPolicy::default(), chrono::Utc::now()).unwrap();

    let shown = [
        ("TenantAuth", format!("{:?} {:#?}", auth(), auth().with_auth_method(AuthMethod::ClientSecretBasic))),
        ("AuthConfig", format!("{:?}", config(&stub))),
        ("TokenCache", format!("{cache:?}")),
        ("OAuthClient", format!("{client:?}")),
        ("headers", format!("{h:?}")),
        ("Diagnosis", format!("{diagnosis:?} {diagnosis} {}", serde_json::to_string(&diagnosis).unwrap())),
        ("Inspection", format!("{inspection:?} {inspection} {}", serde_json::to_string(&inspection).unwrap())),
    ];
    for (what, text) in shown {
        assert_clean(what, &text, &token);
    }

    // Errors: refused, policy, malformed.
    for reply in [
        Reply::status(401, r#"{"error":"invalid_client"}"#),
        Reply::Token(TokenSpec::telemetry_only()),
        Reply::status(200, r#"{"access_token":"abc.def.ghi-s3cr3t-token","token_type":"MAC"}"#),
    ] {
        let stub = Stub::start(reply).await;
        let cache = TokenCache::new(config(&stub), [auth()]).unwrap();
        let e = cache.headers(&tenant()).await.unwrap_err();
        assert_clean("error", &format!("{e} {e:?}"), &token);
        assert!(!format!("{e} {e:?}").contains("ghi-s3cr3t-token"));
    }
}

#[test]
fn tracing_logs_never_show_secrets() {
    // Arrange: capture everything at TRACE, from every crate.
    let buf = Buffer::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _guard = tracing::subscriber::set_default(subscriber);

    // Act: post and basic, success, refusal, retry, policy failure, diagnosis.
    let token = rt.block_on(async {
        let stub = Stub::start(Reply::good()).await;
        stub.push(Reply::status(503, ""));
        let cache = TokenCache::new(config(&stub), [auth()]).unwrap();
        let h = cache.headers(&tenant()).await.unwrap();
        let basic = TokenCache::new(config(&stub), [auth().with_auth_method(AuthMethod::ClientSecretBasic)]).unwrap();
        basic.headers(&tenant()).await.unwrap();
        cache.invalidate(&tenant(), &h).await;
        stub.set_default(Reply::Token(TokenSpec::telemetry_only()));
        let _ = cache.headers(&tenant()).await;
        stub.set_default(Reply::status(401, r#"{"error":"invalid_client"}"#));
        let _ = cache.headers(&tenant()).await;
        let _ = OAuthClient::new(config(&stub)).unwrap().diagnose(&auth()).await;
        h.bearer_token().to_owned()
    });

    // Assert
    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("token_request"), "the spans were not captured: {logs}");
    assert!(logs.contains("tenant=acme"), "{logs}");
    assert_clean("logs", &logs, &token);
    assert!(!logs.contains("Basic "), "the Authorization header was logged: {logs}");
}
