//! Starts a real emulator on port 0 and talks HTTP to it, like any client would.

use std::sync::atomic::{AtomicU64, Ordering};

use billsync_emulator::{AuditEntry, Emulator, EmulatorConfig, Reason};
use chrono::{Duration, SecondsFormat, Utc};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

pub const ACME: (&str, &str, &str) = ("app-acme", "secret-acme", "acme-prod-001");
pub const GLOBEX: (&str, &str, &str) = ("app-globex", "secret-globex", "globex-prod-001");
pub const INITECH: (&str, &str, &str) = ("app-initech", "secret-initech", "initech-prod-001");
pub const BILLING_WRITE: &str = "urn:oracle:iot:billing:write";
pub const BILLING_READ: &str = "urn:oracle:iot:billing:read";
pub const DEVICE_WRITE: &str = "urn:oracle:iot:device:write";
pub const BILLING_AUD: &str = "https://iot.oraclecloud.com/billing";
pub const BASE_AUD: &str = "https://iot.oraclecloud.com";

pub struct TestApp {
    pub emu: Emulator,
    pub http: reqwest::Client,
}

/// The JSON header and payload of a JWT, not verified.
pub fn jwt_parts(token: &str) -> (Value, Value) {
    use base64::Engine;
    let mut parts = token.split('.');
    let mut decode = || {
        let b =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts.next().expect("part")).expect("base64url");
        serde_json::from_slice::<Value>(&b).expect("json")
    };
    (decode(), decode())
}

/// The token with one character of its signature changed.
pub fn tamper(token: &str) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    let i = chars.len() - 10;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

/// A response, read completely.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Reply {
    pub async fn read(r: reqwest::Response) -> Reply {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.expect("body");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, headers, text, json }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn error(&self) -> &str {
        self.json["error"].as_str().unwrap_or("")
    }

    /// The three rate-limit headers, parsed.
    pub fn rate(&self) -> (u32, u32, u64) {
        let get = |n: &str| self.header(n).unwrap_or_else(|| panic!("{n} missing on {self:?}")).to_owned();
        (
            get("x-ratelimit-limit").parse().unwrap(),
            get("x-ratelimit-remaining").parse().unwrap(),
            get("x-ratelimit-reset").parse().unwrap(),
        )
    }
}

pub async fn spawn() -> TestApp {
    spawn_with(EmulatorConfig::builtin()).await
}

pub async fn spawn_with(config: EmulatorConfig) -> TestApp {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    }
    let emu = Emulator::start(config, "127.0.0.1:0".parse().unwrap()).await.expect("emulator starts");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    TestApp { emu, http }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh, valid event id.
pub fn fresh_id(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

/// A valid event, occurred a minute ago.
pub fn event(id: &str) -> Value {
    let at = (Utc::now() - Duration::minutes(1)).to_rfc3339_opts(SecondsFormat::Secs, true);
    json!({"event_id": id, "device_id": "meter-0042", "meter": "energy.active", "quantity": "12.500",
           "unit": "kWh", "occurred_at": at, "attributes": {"site": "plant-7"}})
}

pub fn batch(ids: &[&str]) -> Value {
    json!({"events": ids.iter().map(|id| event(id)).collect::<Vec<_>>()})
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.emu.base_url())
    }

    /// An admin API request with the emulator's `X-Admin-Key`, and a JSON body if given.
    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Reply {
        let mut req = self.http.request(method, self.url(path)).header("x-admin-key", self.emu.admin_key());
        if let Some(b) = body {
            req = req.json(&b);
        }
        Reply::read(req.send().await.expect("admin request")).await
    }

    /// `POST /oauth2/v1/token` with a form, optionally with HTTP Basic credentials.
    pub async fn token_request(&self, form: &[(&str, &str)], basic: Option<(&str, &str)>) -> Reply {
        let mut req = self.http.post(self.emu.token_url()).form(form);
        if let Some((id, secret)) = basic {
            req = req.basic_auth(id, Some(secret));
        }
        Reply::read(req.send().await.expect("token request")).await
    }

    /// A token for a client (client_secret_post), asking for `scope` (none: the client's default).
    pub async fn token(&self, client: (&str, &str, &str), scope: Option<&str>) -> String {
        let mut form = vec![("grant_type", "client_credentials"), ("client_id", client.0), ("client_secret", client.1)];
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        let r = self.token_request(&form, None).await;
        assert_eq!(r.status, 200, "{r:?}");
        r.json["access_token"].as_str().expect("access_token").to_owned()
    }

    pub async fn billing_token(&self, client: (&str, &str, &str)) -> String {
        self.token(client, Some(BILLING_WRITE)).await
    }

    /// Signs claims valid for `client` on billing, with `changes` merged in (`null` removes a claim).
    pub fn signed(&self, client: (&str, &str, &str), changes: Value) -> String {
        let now = Utc::now().timestamp();
        let mut claims = json!({"iss": self.emu.issuer(), "sub": client.0, "client_id": client.0,
            "tenant_id": client.2, "aud": [BASE_AUD, BILLING_AUD], "scope": format!("{BILLING_WRITE} {DEVICE_WRITE}"),
            "iat": now, "exp": now + 900, "jti": fresh_id("jti")});
        if let (Some(obj), Some(ch)) = (claims.as_object_mut(), changes.as_object()) {
            for (k, v) in ch {
                if v.is_null() {
                    obj.remove(k);
                } else {
                    obj.insert(k.clone(), v.clone());
                }
            }
        }
        self.emu.sign_claims(&claims)
    }

    /// `POST /iot/api/v2/billing/events` with the given token and headers (None: header absent).
    pub async fn post_billing(
        &self,
        token: Option<&str>,
        tenant: Option<&str>,
        app: Option<&str>,
        body: &Value,
    ) -> Reply {
        self.post_billing_raw(token, tenant, app, body.to_string().into_bytes(), &[]).await
    }

    pub async fn post_billing_raw(
        &self,
        token: Option<&str>,
        tenant: Option<&str>,
        app: Option<&str>,
        body: Vec<u8>,
        extra: &[(&str, &str)],
    ) -> Reply {
        let mut req = self.http.post(self.emu.billing_url()).header("content-type", "application/json").body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(t) = tenant {
            req = req.header("x-tenant-id", t);
        }
        if let Some(a) = app {
            req = req.header("x-application-id", a);
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        Reply::read(req.send().await.expect("billing request")).await
    }

    /// A well-formed billing post as `client` with its own tenant and application headers.
    pub async fn post_as(&self, token: &str, client: (&str, &str, &str), body: &Value) -> Reply {
        self.post_billing(Some(token), Some(client.2), Some(client.0), body).await
    }

    pub async fn list_billing(&self, token: &str, client: (&str, &str, &str), query: &str) -> Reply {
        let req = self
            .http
            .get(format!("{}?{query}", self.emu.billing_url()))
            .bearer_auth(token)
            .header("x-tenant-id", client.2)
            .header("x-application-id", client.0);
        Reply::read(req.send().await.expect("list request")).await
    }

    pub async fn telemetry(&self, token: &str, tenant: Option<&str>, body: &Value) -> Reply {
        let mut req = self.http.post(self.emu.telemetry_url("meter-0042")).bearer_auth(token).json(body);
        if let Some(t) = tenant {
            req = req.header("x-tenant-id", t);
        }
        Reply::read(req.send().await.expect("telemetry request")).await
    }

    /// The last audit entry.
    pub fn last_audit(&self) -> AuditEntry {
        self.emu.audit().pop().expect("an audit entry")
    }

    /// Reason codes of the last audit entry.
    pub fn last_reasons(&self) -> Vec<Reason> {
        self.last_audit().reasons
    }
}
