//! The OAuth client: authentication methods, parameters, errors and retries.

use std::time::Duration;

use billsync_auth::{AuthMethod, RetryPolicy, TokenCache};
use billsync_domain::{TokenError, TokenSource};

use crate::helpers::*;

#[tokio::test]
async fn client_secret_post_sends_id_and_secret_in_the_body() {
    // Arrange
    let stub = Stub::start(Reply::good()).await;
    let cache = TokenCache::new(config(&stub), [auth()]).unwrap();
    // Act
    let h = cache.headers(&tenant()).await.unwrap();
    // Assert
    let r = &stub.recorded()[0];
    assert_eq!(r.authorization, None);
    assert_eq!(r.form.get("grant_type").map(String::as_str), Some("client_credentials"));
    assert_eq!(r.form.get("client_id").map(String::as_str), Some("app-a"));
    assert_eq!(r.form.get("client_secret").map(String::as_str), Some(SECRET));
    assert_eq!(r.form.get("scope").map(String::as_str), Some("urn:oracle:iot:billing:write"));
    assert_eq!(h.tenant_id().as_str(), "tenant-a");
}

#[tokio::test]
async fn client_secret_basic_form_urlencodes_then_base64s_and_keeps_the_secret_out_of_the_body() {
    let stub = Stub::start(Reply::good()).await;
    let a = auth().with_auth_method(AuthMethod::ClientSecretBasic);
    let cache = TokenCache::new(config(&stub), [a]).unwrap();

    cache.headers(&tenant()).await.unwrap();

    let r = &stub.recorded()[0];
    let decoded = basic_decode(r.authorization.as_deref().expect("Authorization header"));
    // RFC 6749 §2.3.1: form-urlencode each part, then join with ':'.
    assert_eq!(decoded, "app-a:s3cr3t%3A+p%40ss%2Bword%2F%C3%A9");
    assert!(!r.form.contains_key("client_secret") && !r.form.contains_key("client_id"), "{:?}", r.form.keys());
}

#[tokio::test]
async fn extra_parameters_are_sent() {
    let stub = Stub::start(Reply::good()).await;
    let a = auth()
        .with_extra_param("audience", "https://iot.oraclecloud.com/billing")
        .unwrap()
        .with_extra_param("tenant_id", "tenant-a")
        .unwrap();
    let cache = TokenCache::new(config(&stub), [a]).unwrap();
    cache.headers(&tenant()).await.unwrap();
    let f = &stub.recorded()[0].form;
    assert_eq!(f.get("audience").map(String::as_str), Some("https://iot.oraclecloud.com/billing"));
    assert_eq!(f.get("tenant_id").map(String::as_str), Some("tenant-a"));
}

#[tokio::test]
async fn error_bodies_surface_error_description_and_invalid_client_is_not_retried() {
    let stub = Stub::start(Reply::status(
        401,
        r#"{"error":"invalid_client","error_description":"Client authentication failed: unknown client app-a"}"#,
    ))
    .await;
    let cache = TokenCache::new(config(&stub), [auth()]).unwrap();

    let e = cache.headers(&tenant()).await.unwrap_err();

    assert_eq!(
        e,
        TokenError::Refused {
            error: "invalid_client".into(),
            description: Some("Client authentication failed: unknown client app-a".into())
        }
    );
    assert!(e.to_string().contains("Client authentication failed"), "{e}");
    assert!(!e.is_transient());
    assert_eq!(stub.token_requests(), 1, "4xx must not be retried");
    assert_eq!(cache.token_requests(tenant().name()), 1);
}

#[tokio::test]
async fn invalid_scope_is_refused_without_retry() {
    let stub = Stub::start(Reply::status(400, r#"{"error":"invalid_scope"}"#)).await;
    let cache = TokenCache::new(config(&stub), [auth()]).unwrap();
    let e = cache.headers(&tenant()).await.unwrap_err();
    assert_eq!(e, TokenError::Refused { error: "invalid_scope".into(), description: None });
    assert_eq!(stub.token_requests(), 1);
}

#[tokio::test]
async fn a_503_is_retried_and_then_succeeds() {
    let stub = Stub::start(Reply::good()).await;
    stub.push(Reply::status(503, ""));
    stub.push(Reply::status(503, "<html>busy</html>"));
    let cache = TokenCache::new(config(&stub), [auth()]).unwrap();

    let h = cache.headers(&tenant()).await;

    assert!(h.is_ok(), "{h:?}");
    assert_eq!(stub.token_requests(), 3);
}

#[tokio::test]
async fn persistent_5xx_gives_up_after_the_configured_attempts_as_transient() {
    let stub = Stub::start(Reply::status(502, "")).await;
    let cfg = config(&stub).with_retry(RetryPolicy::new(4, Duration::from_millis(5), Duration::from_millis(10)));
    let cache = TokenCache::new(cfg, [auth()]).unwrap();
    let e = cache.headers(&tenant()).await.unwrap_err();
    assert!(matches!(&e, TokenError::Unavailable(m) if m.contains("502") && m.contains("4 attempts")), "{e:?}");
    assert!(e.is_transient());
    assert_eq!(stub.token_requests(), 4);
}

#[tokio::test]
async fn a_slow_endpoint_times_out_and_is_retried() {
    let stub = Stub::start(Reply::good()).await;
    stub.set_delay(Duration::from_millis(700));
    let cfg = config(&stub).with_timeout(Duration::from_millis(200)).with_retry(RetryPolicy::new(
        2,
        Duration::from_millis(5),
        Duration::from_millis(10),
    ));
    let cache = TokenCache::new(cfg, [auth()]).unwrap();
    let e = cache.headers(&tenant()).await.unwrap_err();
    assert!(matches!(&e, TokenError::Unavailable(m) if m.contains("did not answer in time")), "{e:?}");
    assert_eq!(stub.token_requests(), 2);
}

#[tokio::test]
async fn an_unreachable_endpoint_is_unavailable() {
    // A port that was just free: nothing listens there.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/oauth2/v1/token", l.local_addr().unwrap());
    drop(l);
    let cfg = billsync_auth::AuthConfig::new(&url).unwrap().with_retry(RetryPolicy::new(
        2,
        Duration::from_millis(5),
        Duration::from_millis(10),
    ));
    let cache = TokenCache::new(cfg, [auth()]).unwrap();
    let e = cache.headers(&tenant()).await.unwrap_err();
    assert!(matches!(&e, TokenError::Unavailable(m) if m.contains("could not connect")), "{e:?}");
    assert_eq!(cache.token_requests(tenant().name()), 2);
}

#[tokio::test]
async fn non_bearer_and_garbage_success_bodies_are_malformed() {
    let stub = Stub::start(Reply::status(200, r#"{"access_token":"x.y.z","token_type":"N_A"}"#)).await;
    let cache = TokenCache::new(config(&stub), [auth()]).unwrap();
    let e = cache.headers(&tenant()).await.unwrap_err();
    assert!(matches!(&e, TokenError::Malformed(m) if m.contains("Bearer")), "{e:?}");
    stub.set_default(Reply::status(200, "<html>login page</html>"));
    let e = cache.headers(&tenant()).await.unwrap_err();
    assert!(matches!(&e, TokenError::Malformed(m) if m.contains("not a JSON token response")), "{e:?}");
}

#[tokio::test]
async fn unknown_tenants_and_mismatched_ids_are_refused() {
    let stub = Stub::start(Reply::good()).await;
    let cache = TokenCache::new(config(&stub), [auth()]).unwrap();
    let other = billsync_domain::Tenant::new(
        "other".parse().unwrap(),
        "t".parse().unwrap(),
        "a".parse().unwrap(),
        "a".parse().unwrap(),
    );
    let e = cache.headers(&other).await.unwrap_err();
    assert!(matches!(&e, TokenError::Refused { error, .. } if error == "unknown_tenant"), "{e:?}");
    let renamed = billsync_domain::Tenant::new(
        "acme".parse().unwrap(),
        "tenant-b".parse().unwrap(),
        "app-a".parse().unwrap(),
        "app-a".parse().unwrap(),
    );
    let e = cache.headers(&renamed).await.unwrap_err();
    assert!(matches!(&e, TokenError::Refused { error, .. } if error == "tenant_config_mismatch"), "{e:?}");
    assert_eq!(stub.token_requests(), 0);
}
