//! docs/platform.md section 1.1: clients that prove themselves with a JWT signed by their own
//! private key (RFC 7523 section 2.2, `private_key_jwt`), on both token endpoints.

use billsync_emulator::{ClientRegistration, EmulatorConfig, Reason};
use chrono::Utc;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::{EncodeRsaPrivateKey, LineEnding};
use rsa::pkcs8::EncodePublicKey;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{Value, json};

use crate::helpers::*;

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// (client id, tenant) of the client registered with an RSA key, and with an EC P-256 key.
const RS_CLIENT: (&str, &str) = ("app-jwt-rs", "jwt-rs-001");
const EC_CLIENT: (&str, &str) = ("app-jwt-ec", "jwt-ec-001");

/// A client's private key, as the client holds it, and the public half the platform registers.
struct ClientKey {
    kid: String,
    alg: Algorithm,
    private: EncodingKey,
    public_pem: String,
}

fn ec_key(kid: &str) -> ClientKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    ClientKey {
        kid: kid.to_owned(),
        alg: Algorithm::ES256,
        private: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
        public_pem: pair.public_key_pem(),
    }
}

fn rsa_key(kid: &str) -> ClientKey {
    let private = RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
    let public_pem = RsaPublicKey::from(&private).to_public_key_pem(LineEnding::LF).unwrap();
    let private_pem = private.to_pkcs1_pem(LineEnding::LF).unwrap();
    ClientKey {
        kid: kid.to_owned(),
        alg: Algorithm::RS256,
        private: EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap(),
        public_pem,
    }
}

fn register(key: &ClientKey, client: (&str, &str)) -> ClientRegistration {
    ClientRegistration::with_public_key(client.0, &key.public_pem, &key.kid, [client.1], true).unwrap()
}

/// The builtin registry plus one RSA and one EC client.
async fn spawn_with_keys() -> (TestApp, ClientKey, ClientKey) {
    let (rs, ec) = (rsa_key("rs-key-1"), ec_key("ec-key-1"));
    let config = EmulatorConfig::builtin().with_client(register(&rs, RS_CLIENT)).with_client(register(&ec, EC_CLIENT));
    (spawn_with(config).await, rs, ec)
}

/// Valid assertion claims for `client_id`, addressed to `aud`, living 120 s from now.
fn claims(client_id: &str, aud: &str) -> Value {
    let now = Utc::now().timestamp();
    json!({"iss": client_id, "sub": client_id, "aud": aud, "jti": fresh_id("jti"), "iat": now, "exp": now + 120})
}

/// `claims` with `changes` merged in (`null` removes a claim).
fn changed(mut claims: Value, changes: &Value) -> Value {
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

fn sign(key: &ClientKey, claims: &Value) -> String {
    sign_as(key, &key.kid, claims)
}

fn sign_as(key: &ClientKey, kid: &str, claims: &Value) -> String {
    let header = Header { kid: Some(kid.to_owned()), ..Header::new(key.alg) };
    jsonwebtoken::encode(&header, claims, &key.private).unwrap()
}

impl TestApp {
    /// The v2 token endpoint, assertions only.
    fn v2_url(&self) -> String {
        self.url("/iot/api/v2/oauth2/token")
    }

    /// A token request to `url` with a client assertion, asking for billing write.
    async fn assert_to(&self, url: &str, assertion: &str, extra: &[(&str, &str)]) -> Reply {
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("scope", BILLING_WRITE),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", assertion),
        ];
        form.extend_from_slice(extra);
        Reply::read(self.http.post(url).form(&form).send().await.unwrap()).await
    }
}

/// The answer to every refused assertion: `401 invalid_client`, nothing more.
fn assert_bare_invalid_client(r: &Reply, name: &str) {
    assert_eq!(r.status, 401, "{name}: {r:?}");
    assert_eq!(r.json, json!({"error": "invalid_client"}), "{name}: no detail in the body");
}

#[tokio::test]
async fn rs256_and_es256_assertions_get_billing_tokens_on_both_endpoints() {
    // Arrange
    let (app, rs, ec) = spawn_with_keys().await;
    for (key, client) in [(&rs, RS_CLIENT), (&ec, EC_CLIENT)] {
        for url in [app.emu.token_url(), app.v2_url()] {
            // Act: client_id in the body too, equal to iss, on the classic endpoint.
            let extra: &[(&str, &str)] = if url == app.emu.token_url() { &[("client_id", client.0)] } else { &[] };
            let r = app.assert_to(&url, &sign(key, &claims(client.0, &url)), extra).await;
            // Assert: section 2's claims, as for a secret client.
            assert_eq!(r.status, 200, "{client:?} at {url}: {r:?}");
            assert_eq!((r.json["token_type"].as_str(), r.json["expires_in"].as_u64()), (Some("Bearer"), Some(900)));
            let token = r.json["access_token"].as_str().unwrap();
            let (header, c) = jwt_parts(token);
            assert_eq!(header["alg"], "RS256");
            assert!(c["scope"].as_str().unwrap().split(' ').any(|s| s == BILLING_WRITE), "{c}");
            assert_eq!(c["aud"], json!([BASE_AUD, BILLING_AUD]));
            assert_eq!((c["tenant_id"].as_str(), c["client_id"].as_str()), (Some(client.1), Some(client.0)));
            assert_eq!((c["sub"].as_str(), c["iss"].as_str()), (Some(client.0), Some(app.emu.base_url().as_str())));
            assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 900);
            let post = app.post_billing(Some(token), Some(client.1), Some(client.0), &batch(&[&fresh_id("a")])).await;
            assert_eq!(post.status, 202, "{post:?}");
        }
    }
    assert!(app.emu.audit().is_empty(), "{:?}", app.emu.audit());
}

/// (name, the assertion, extra form fields, the audit's reason code)
type Refusal = (&'static str, String, Vec<(&'static str, String)>, &'static str);

fn refusals(app: &TestApp, rs: &ClientKey, ec: &ClientKey) -> Vec<Refusal> {
    let url = app.v2_url();
    let now = Utc::now().timestamp();
    let ok = || claims(EC_CLIENT.0, &url);
    let ec_with = |changes: Value| sign(ec, &changed(ok(), &changes));
    let stranger = ec_key(&ec.kid);
    vec![
        ("expired", ec_with(json!({"iat": now - 200, "exp": now - 10})), vec![], "assertion_expired"),
        ("too long-lived", ec_with(json!({"exp": now + 301})), vec![], "assertion_lifetime"),
        ("iat too far ahead", ec_with(json!({"iat": now + 120, "exp": now + 300})), vec![], "assertion_not_yet_valid"),
        ("audience: the base URL", ec_with(json!({"aud": app.emu.base_url()})), vec![], "assertion_audience"),
        ("audience: the other endpoint", ec_with(json!({"aud": app.emu.token_url()})), vec![], "assertion_audience"),
        ("unknown kid", sign_as(ec, "ec-key-2", &ok()), vec![], "unknown_key"),
        ("tampered signature", tamper(&sign(ec, &ok())), vec![], "bad_assertion_signature"),
        ("another key, the right kid", sign(&stranger, &ok()), vec![], "bad_assertion_signature"),
        ("RS256 for an EC client", sign_as(rs, &ec.kid, &ok()), vec![], "bad_assertion_signature"),
        ("HS256", hs256(&ec.kid, &ok()), vec![], "bad_assertion_signature"),
        (
            "client_id is not iss",
            sign(ec, &ok()),
            vec![("client_id", RS_CLIENT.0.to_owned())],
            "assertion_client_mismatch",
        ),
        ("sub is not iss", ec_with(json!({"sub": RS_CLIENT.0})), vec![], "assertion_client_mismatch"),
        ("unknown iss", ec_with(json!({"iss": "app-nobody", "sub": "app-nobody"})), vec![], "invalid_client"),
        ("no jti", ec_with(json!({"jti": null})), vec![], "malformed_assertion"),
        ("no exp", ec_with(json!({"exp": null})), vec![], "malformed_assertion"),
        ("not a JWT", "not-a-jwt".to_owned(), vec![], "malformed_assertion"),
        ("not base64", "#.#.#".to_owned(), vec![], "malformed_assertion"),
    ]
}

fn hs256(kid: &str, claims: &Value) -> String {
    let header = Header { kid: Some(kid.to_owned()), ..Header::new(Algorithm::HS256) };
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(b"a shared secret")).unwrap()
}

#[tokio::test]
async fn each_refused_assertion_is_a_bare_invalid_client_and_the_audit_names_why() {
    // Arrange
    let (app, rs, ec) = spawn_with_keys().await;
    for (name, assertion, extra, code) in refusals(&app, &rs, &ec) {
        // Act
        let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = app.assert_to(&app.v2_url(), &assertion, &extra).await;
        // Assert
        assert_bare_invalid_client(&r, name);
        let entry = app.last_audit();
        assert_eq!(serde_json::to_value(&entry.reasons).unwrap(), json!([code]), "{name}: {entry:?}");
        assert_eq!((entry.status, entry.endpoint.as_str()), (401, "POST /iot/api/v2/oauth2/token"), "{name}");
        assert!(!entry.detail.as_deref().unwrap_or_default().contains(&assertion), "{name}: no assertion in the audit");
    }
    assert_eq!(app.emu.counters().status(401), 17);
}

#[tokio::test]
async fn a_replayed_jti_is_refused_and_the_audit_says_so() {
    // Arrange
    let (app, rs, ec) = spawn_with_keys().await;
    let url = app.v2_url();
    let first = claims(EC_CLIENT.0, &url);
    let assertion = sign(&ec, &first);
    assert_eq!(app.assert_to(&url, &assertion, &[]).await.status, 200);
    // Act
    let again = app.assert_to(&url, &assertion, &[]).await;
    let same_jti = app
        .assert_to(&url, &sign(&ec, &changed(first.clone(), &json!({"exp": 1 + first["exp"].as_i64().unwrap()}))), &[])
        .await;
    let other_client =
        app.assert_to(&url, &sign(&rs, &changed(claims(RS_CLIENT.0, &url), &json!({"jti": first["jti"]}))), &[]).await;
    // Assert
    assert_bare_invalid_client(&again, "replayed");
    assert_bare_invalid_client(&same_jti, "same jti, new assertion");
    assert_eq!(other_client.status, 200, "jtis are per client: {other_client:?}");
    let audit = app.admin(reqwest::Method::GET, "/admin/audit", None).await;
    let entries = audit.json["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{audit:?}");
    for e in entries {
        assert_eq!(e["reasons"], json!(["assertion_replayed"]));
        assert_eq!((e["client_id"].as_str(), e["jti"].as_str()), (Some(EC_CLIENT.0), first["jti"].as_str()));
    }
    assert_eq!(app.emu.counters().reason(Reason::AssertionReplayed), 2);
}

#[tokio::test]
async fn a_secret_client_cannot_use_the_assertion_only_endpoint() {
    // Arrange
    let (app, _rs, ec) = spawn_with_keys().await;
    let secret_post = [("grant_type", "client_credentials"), ("client_id", ACME.0), ("client_secret", ACME.1)];
    // Act
    let posted = Reply::read(app.http.post(app.v2_url()).form(&secret_post).send().await.unwrap()).await;
    let basic = app.http.post(app.v2_url()).basic_auth(ACME.0, Some(ACME.1)).form(&secret_post[..1]);
    let basic = Reply::read(basic.send().await.unwrap()).await;
    let nothing = Reply::read(app.http.post(app.v2_url()).form(&secret_post[..1]).send().await.unwrap()).await;
    let acme_asserting = app.assert_to(&app.v2_url(), &sign(&ec, &claims(ACME.0, &app.v2_url())), &[]).await;
    // Assert
    for (name, r) in [("client_secret_post", &posted), ("client_secret_basic", &basic), ("no credentials", &nothing)] {
        assert_bare_invalid_client(r, name);
        assert!(!r.text.contains(ACME.1), "{name}: the secret is never echoed");
        assert_eq!(r.header("www-authenticate"), None, "{name}: no Basic challenge where Basic is not taken");
    }
    let reasons: Vec<Vec<Reason>> = app.emu.audit().into_iter().map(|e| e.reasons).collect();
    assert_eq!(
        reasons,
        [
            vec![Reason::AssertionRequired],
            vec![Reason::AssertionRequired],
            vec![Reason::AssertionRequired],
            vec![Reason::AssertionNotAllowed]
        ]
    );
    assert_bare_invalid_client(&acme_asserting, "a secret client's assertion");
    assert_eq!(app.emu.audit()[0].client_id.as_deref(), Some(ACME.0));
    assert_eq!(serde_json::to_value(Reason::AssertionRequired).unwrap(), "assertion_required");
}

#[tokio::test]
async fn an_assertion_client_cannot_use_a_secret() {
    // Arrange
    let (app, _rs, _ec) = spawn_with_keys().await;
    let with_secret =
        |id: &'static str| [("grant_type", "client_credentials"), ("client_id", id), ("client_secret", "guess")];
    // Act
    let key_client = app.token_request(&with_secret(EC_CLIENT.0), None).await;
    let key_reason = app.last_reasons();
    let key_client_basic = app.token_request(&with_secret(EC_CLIENT.0)[..1], Some((EC_CLIENT.0, ""))).await;
    let basic_reason = app.last_reasons();
    let wrong_secret = app.token_request(&with_secret(ACME.0), None).await;
    // Assert: the same answer as a wrong secret; only the audit tells them apart.
    assert_eq!((key_client.status, key_client.error()), (401, "invalid_client"), "{key_client:?}");
    assert_eq!(key_client.json, wrong_secret.json);
    assert_eq!((key_client_basic.status, &key_client_basic.json), (401, &wrong_secret.json));
    assert_eq!(key_reason, [Reason::SecretNotAllowed]);
    assert_eq!(basic_reason, [Reason::SecretNotAllowed]);
    assert_eq!(app.last_reasons(), [Reason::InvalidClient]);
}

#[tokio::test]
async fn an_assertion_with_a_secret_or_of_another_type_is_a_bad_request() {
    // Arrange
    let (app, _rs, ec) = spawn_with_keys().await;
    let url = app.emu.token_url();
    let assertion = sign(&ec, &claims(EC_CLIENT.0, &url));
    let post = |form: Vec<(&'static str, String)>| {
        let req = app.http.post(&url).form(&form);
        async { Reply::read(req.send().await.unwrap()).await }
    };
    let base = || vec![("grant_type", "client_credentials".to_owned()), ("client_assertion", assertion.clone())];
    // Act
    let mut with_secret = base();
    with_secret.extend([("client_assertion_type", ASSERTION_TYPE.to_owned()), ("client_secret", "x".to_owned())]);
    let mut saml = base();
    saml.push(("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:saml2-bearer".to_owned()));
    let untyped = base();
    let rs = [post(with_secret).await, post(saml).await, post(untyped).await];
    // Assert
    for r in &rs {
        assert_eq!((r.status, r.error()), (400, "invalid_request"), "{r:?}");
        assert!(r.json["error_description"].as_str().is_some_and(|d| d.contains("client_assertion")), "{r:?}");
    }
    assert_eq!(app.assert_to(&url, &assertion, &[]).await.status, 200, "the assertion was not used up");
}

#[tokio::test]
async fn assertion_clients_register_through_the_library_and_the_admin_api() {
    // Arrange
    let app = spawn().await;
    let (ec, rs) = (ec_key("k-ec"), rsa_key("k-rs"));
    // Act
    let by_method = app.emu.register_client(register(&ec, ("app-lib", "lib-1")));
    let body = json!({"client_id": "app-adm", "auth": "private_key_jwt", "public_key": rs.public_pem,
                      "key_id": "k-rs", "tenants": ["adm-1"], "billing": true});
    let by_admin = app.admin(reqwest::Method::POST, "/admin/clients", Some(body)).await;
    let file = json!({"client_id": "app-file", "auth": "private_key_jwt", "public_key_file": "/etc/hostname",
                      "key_id": "k", "tenants": []});
    let by_file = app.admin(reqwest::Method::POST, "/admin/clients", Some(file)).await;
    let mixed = json!({"client_id": "app-mix", "auth": "private_key_jwt", "client_secret": "s",
                       "public_key": rs.public_pem, "key_id": "k"});
    let mixed = app.admin(reqwest::Method::POST, "/admin/clients", Some(mixed)).await;
    // Assert
    assert_eq!(by_method.unwrap().client_id, "app-lib");
    assert_eq!(by_admin.status, 200, "{by_admin:?}");
    assert_eq!((by_file.status, by_file.error()), (400, "invalid_request"));
    assert!(by_file.json["error_description"].as_str().unwrap().contains("public_key_file"), "{by_file:?}");
    assert_eq!((mixed.status, mixed.error()), (400, "invalid_request"));
    assert!(mixed.json["error_description"].as_str().unwrap().contains("client_secret"), "{mixed:?}");
    for (key, client) in [(&ec, ("app-lib", "lib-1")), (&rs, ("app-adm", "adm-1"))] {
        let r = app.assert_to(&app.v2_url(), &sign(key, &claims(client.0, &app.v2_url())), &[]).await;
        assert_eq!(r.status, 200, "{client:?}: {r:?}");
    }
    let shown = format!("{:?}", register(&ec, ("app-lib", "lib-1")));
    assert!(shown.contains("k-ec") && shown.contains("ES256"), "{shown}");
}
