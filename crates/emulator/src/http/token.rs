//! The OAuth2 token endpoint (client credentials, docs/platform.md section 1) and the JWKS.

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use serde_json::{Value, json};

use super::body::{BodyError, read_body};
use super::claims::{
    BASE_AUDIENCE, BILLING_AUDIENCE, BILLING_READ_SCOPE, BILLING_WRITE_SCOPE, DEVICE_WRITE_SCOPE, SHORT_BILLING_READ,
    SHORT_BILLING_WRITE, SHORT_DEVICE_WRITE,
};
use super::ctx::{Ctx, post_faults, pre_faults};
use super::reply::{St, error_body, header_str, json_reply, set_header};
use crate::audit::Reason;
use crate::faults::FaultTarget;
use crate::server::Conn;
use crate::state::AppState;

const ENDPOINT: &str = "POST /oauth2/v1/token";
/// Largest body of the token endpoint.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// The JWKS, with `Cache-Control: public, max-age=N` when the settings give a max-age
/// (`jwks_max_age_s`), none otherwise; counted under `GET /oauth2/v1/keys`.
pub(super) async fn jwks(State(st): State<St>) -> Response {
    Ctx::new(&st, "GET /oauth2/v1/keys").count(200, &[]);
    let mut r = json_reply(StatusCode::OK, &serde_json::to_value(st.keys.jwks()).unwrap_or(Value::Null));
    if let Some(max_age) = st.settings().jwks_max_age_s {
        set_header(&mut r, "cache-control", format!("public, max-age={max_age}"));
    }
    r
}

/// The token request's parameters, in the order sent. Kept as pairs, not one field per
/// parameter: a repeated parameter is refused (RFC 6749 section 3.2), and the extras a tenant
/// may send (`audience`, `resource`, ...) are accepted and ignored.
struct TokenForm(Vec<(String, String)>);

impl TokenForm {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// The form of a token request: `Content-Type` (any case, parameters allowed), at most 64 KiB
/// (a larger body is drained first, so the client sees the `400`), no parameter twice. Read by
/// hand, not with axum's `Form`: see the `body` module.
async fn read_form(headers: &HeaderMap, body: Body) -> Result<TokenForm, TokenError> {
    let content_type = header_str(headers, "content-type").unwrap_or("");
    if !content_type.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded") {
        return Err(TokenError::request("Content-Type must be application/x-www-form-urlencoded"));
    }
    let bytes = read_body(headers, body, MAX_FORM_BYTES).await.map_err(|e| match e {
        BodyError::TooLarge => TokenError::request("the form is larger than 64 KiB"),
        BodyError::Broken(m) => TokenError::request(format!("could not read the body: {m}")),
    })?;
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(&bytes) {
        if pairs.iter().any(|(seen, _)| *seen == k) {
            return Err(TokenError::request(format!("parameter {k} appears more than once")));
        }
        pairs.push((k.into_owned(), v.into_owned()));
    }
    Ok(TokenForm(pairs))
}

/// An RFC 6749 section 5.2 error, with its audit reason.
struct TokenError {
    status: StatusCode,
    error: &'static str,
    reason: Reason,
    description: String,
}

impl TokenError {
    fn request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", Reason::InvalidRequest, description)
    }
    fn client(description: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", Reason::InvalidClient, description)
    }
    fn new(status: StatusCode, error: &'static str, reason: Reason, description: impl Into<String>) -> Self {
        Self { status, error, reason, description: description.into() }
    }
}

pub(super) async fn token(
    State(st): State<St>,
    conn: Option<Extension<Conn>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut ctx = Ctx::new(&st, ENDPOINT);
    let fired = st.faults.roll(FaultTarget::Token);
    if let Some(r) = pre_faults(&ctx, &fired).await {
        return r;
    }
    let issued = read_form(&headers, body).await.and_then(|form| issue_token(&st, &mut ctx, &headers, &form));
    let response = match issued {
        Ok(r) => {
            ctx.count(200, &[]);
            r
        }
        Err(e) => refuse(&ctx, e),
    };
    let mut response = post_faults(&ctx, &fired, conn.as_deref(), response).await;
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn refuse(ctx: &Ctx<'_>, e: TokenError) -> Response {
    ctx.reject(e.status, vec![e.reason], Some(e.description.clone()));
    let mut r = json_reply(e.status, &error_body(e.error, Some(&e.description)));
    if e.status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"billsync-emulator\""));
    }
    r
}

/// The checks in the order of docs/emulator.md: `grant_type` present, client authentication,
/// grant type, scopes, tenant; then a token.
fn issue_token(
    st: &AppState,
    ctx: &mut Ctx<'_>,
    headers: &HeaderMap,
    form: &TokenForm,
) -> Result<Response, TokenError> {
    let requested_tenant = form.get("tenant_id").filter(|t| !t.is_empty());
    ctx.tenant_id = requested_tenant.map(str::to_owned);
    let Some(grant_type) = form.get("grant_type") else {
        return Err(TokenError::request("grant_type is required"));
    };
    let (client_id, secret) = client_credentials(ctx, headers, form)?;
    ctx.client_id = Some(client_id.clone());
    let known = st.with_clients(|cs| {
        cs.get(&client_id)
            .filter(|c| c.reg.secret().matches(&secret))
            .map(|c| (c.billing, c.tenants.iter().cloned().collect::<Vec<_>>()))
    });
    let Some((billing, tenants)) = known else {
        return Err(TokenError::client("client authentication failed"));
    };
    if grant_type != "client_credentials" {
        return Err(TokenError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            Reason::UnsupportedGrantType,
            format!("grant_type {grant_type:?} is not supported; use client_credentials"),
        ));
    }
    let granted = grant_scopes(form.get("scope"), billing)?;
    let tenant = match requested_tenant {
        Some(t) if tenants.iter().any(|x| x == t) => Some(t.to_owned()),
        Some(t) => return Err(TokenError::request(format!("tenant_id {t:?} is not one of this client's tenants"))),
        None if tenants.len() == 1 => tenants.first().cloned(),
        None => None,
    };
    ctx.tenant_id.clone_from(&tenant);
    Ok(mint(st, &client_id, &granted, tenant))
}

/// Client authentication: exactly one method, HTTP Basic or `client_secret` in the body.
fn client_credentials(
    ctx: &mut Ctx<'_>,
    headers: &HeaderMap,
    form: &TokenForm,
) -> Result<(String, String), TokenError> {
    let basic = basic_credentials(headers).transpose()?;
    match (basic, form.get("client_id"), form.get("client_secret")) {
        (Some(_), _, Some(_)) => {
            Err(TokenError::request("use one client authentication method, not HTTP Basic and client_secret"))
        }
        (Some((id, _)), Some(body_id), None) if body_id != id => {
            Err(TokenError::request("client_id in the body differs from the HTTP Basic user"))
        }
        (Some(credentials), _, None) => Ok(credentials),
        (None, Some(id), Some(secret)) => Ok((id.to_owned(), secret.to_owned())),
        (None, Some(id), None) => {
            ctx.client_id = Some(id.to_owned());
            Err(TokenError::client("client authentication failed: no client_secret"))
        }
        (None, None, _) => Err(TokenError::client("client authentication required")),
    }
}

/// `Authorization: Basic` credentials. Parsed by hand: RFC 6749 section 2.3.1 has the client
/// form-url-encode its id and secret before the Basic encoding, so `%3A` in an id is a colon
/// and `+` a space, which a generic Basic decoder (such as a typed `Authorization<Basic>`
/// header) would leave encoded.
fn basic_credentials(headers: &HeaderMap) -> Option<Result<(String, String), TokenError>> {
    let value = headers.get(header::AUTHORIZATION)?;
    let bad = || TokenError::client("malformed HTTP Basic credentials");
    let Ok(value) = value.to_str().map(str::trim) else {
        return Some(Err(bad()));
    };
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Some(Err(TokenError::client(format!("unsupported authentication scheme {scheme:?}; use Basic"))));
    }
    let decoded = STANDARD.decode(rest.trim()).ok().and_then(|b| String::from_utf8(b).ok());
    let Some((id, secret)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
        return Some(Err(bad()));
    };
    match (form_decode(id), form_decode(secret)) {
        (Some(id), Some(secret)) => Some(Ok((id, secret))),
        _ => Some(Err(bad())),
    }
}

/// `application/x-www-form-urlencoded` decoding of one value: `+` is a space, `%XX` a byte;
/// the result must be UTF-8.
fn form_decode(s: &str) -> Option<String> {
    let plus = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus).decode_utf8().ok().map(|c| c.into_owned())
}

/// The scopes granted: the device scope is every client's base grant; billing scopes only for
/// clients registered for Billing Services, silently dropped for the others (RFC 6749 section
/// 3.3). No `scope` asks for the client's registered scopes; an unknown scope is `invalid_scope`.
fn grant_scopes(requested: Option<&str>, billing: bool) -> Result<Vec<&str>, TokenError> {
    let requested: Vec<&str> = match requested {
        Some(s) if !s.trim().is_empty() => s.split_whitespace().collect(),
        _ if billing => vec![BILLING_WRITE_SCOPE, BILLING_READ_SCOPE],
        _ => Vec::new(),
    };
    let mut granted: Vec<&str> = vec![DEVICE_WRITE_SCOPE];
    for scope in requested {
        let allowed = match scope {
            BILLING_WRITE_SCOPE | BILLING_READ_SCOPE | SHORT_BILLING_WRITE | SHORT_BILLING_READ => billing,
            DEVICE_WRITE_SCOPE | SHORT_DEVICE_WRITE => true,
            other => {
                let description = format!("unknown scope {other:?}");
                return Err(TokenError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    Reason::InvalidScope,
                    description,
                ));
            }
        };
        if allowed && !granted.contains(&scope) {
            granted.push(scope);
        }
    }
    Ok(granted)
}

/// Signs a token for the granted scopes (the billing lifetime and audience when a billing
/// scope is among them), remembers it, and answers RFC 6749 section 5.1.
fn mint(st: &AppState, client_id: &str, granted: &[&str], tenant: Option<String>) -> Response {
    let billing_granted = granted
        .iter()
        .any(|s| matches!(*s, BILLING_WRITE_SCOPE | BILLING_READ_SCOPE | SHORT_BILLING_WRITE | SHORT_BILLING_READ));
    let settings = st.settings();
    let lifetime = if billing_granted { settings.billing_token_lifetime_s } else { settings.device_token_lifetime_s };
    let mut aud = vec![BASE_AUDIENCE];
    if billing_granted {
        aud.push(BILLING_AUDIENCE);
    }
    let now = Utc::now().timestamp();
    let jti = uuid::Uuid::new_v4().to_string();
    let scope = granted.join(" ");
    let mut claims = json!({
        "iss": st.issuer,
        "sub": client_id,
        "client_id": client_id,
        "aud": aud,
        "scope": scope,
        "iat": now,
        "exp": now.saturating_add(i64::try_from(lifetime).unwrap_or(i64::MAX / 2)),
        "jti": jti,
    });
    if let (Some(t), Some(obj)) = (tenant, claims.as_object_mut()) {
        obj.insert("tenant_id".into(), Value::from(t));
    }
    let access_token = st.keys.sign(&claims);
    {
        let mut tokens = st.tokens();
        tokens.issued.entry(client_id.to_owned()).or_default().push(jti);
        tokens.remember(&access_token);
    }
    st.counters.update(|c| c.tokens_issued += 1);
    tracing::info!(client_id = %client_id, scope = %scope, expires_in = lifetime, "token issued");
    json_reply(
        StatusCode::OK,
        &json!({"access_token": access_token, "token_type": "Bearer", "expires_in": lifetime, "scope": scope}),
    )
}
