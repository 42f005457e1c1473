//! The OAuth2 token endpoints (client credentials, docs/platform.md sections 1 and 1.1) and the
//! JWKS. Client authentication is `client_auth`'s; the form and the errors `token_request`'s.

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use chrono::Utc;
use serde_json::{Value, json};

use super::claims::{
    BASE_AUDIENCE, BILLING_AUDIENCE, BILLING_READ_SCOPE, BILLING_WRITE_SCOPE, DEVICE_WRITE_SCOPE, SHORT_BILLING_READ,
    SHORT_BILLING_WRITE, SHORT_DEVICE_WRITE,
};
use super::client_auth::{Authenticated, authenticate};
use super::ctx::{Ctx, post_faults, pre_faults};
use super::reply::{St, error_body, json_reply, set_header};
use super::token_request::{TokenError, TokenForm, TokenRoute, read_form};
use crate::audit::Reason;
use crate::faults::FaultTarget;
use crate::server::Conn;
use crate::state::AppState;

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

/// `POST /oauth2/v1/token`: a secret or a signed assertion, as the client is registered.
pub(super) async fn token(
    State(st): State<St>,
    conn: Option<Extension<Conn>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    serve(&st, TokenRoute::Classic, conn.as_deref(), &headers, body).await
}

/// `POST /iot/api/v2/oauth2/token`: signed assertions only (docs/platform.md section 1.1).
pub(super) async fn token_v2(
    State(st): State<St>,
    conn: Option<Extension<Conn>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    serve(&st, TokenRoute::AssertionOnly, conn.as_deref(), &headers, body).await
}

async fn serve(st: &AppState, route: TokenRoute, conn: Option<&Conn>, headers: &HeaderMap, body: Body) -> Response {
    let mut ctx = Ctx::new(st, route.endpoint());
    let fired = st.faults.roll(FaultTarget::Token);
    if let Some(r) = pre_faults(&ctx, &fired).await {
        return r;
    }
    let issued = read_form(headers, body).await.and_then(|form| issue_token(st, &mut ctx, headers, &form, route));
    let response = match issued {
        Ok(r) => {
            ctx.count(200, &[]);
            r
        }
        Err(e) => refuse(&ctx, e, route),
    };
    let mut response = post_faults(&ctx, &fired, conn, response).await;
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// The refusal, audited; a `401` of the endpoint that takes secrets challenges for HTTP Basic.
fn refuse(ctx: &Ctx<'_>, e: TokenError, route: TokenRoute) -> Response {
    ctx.reject(e.status, e.reasons, Some(e.detail));
    let mut r = json_reply(e.status, &error_body(e.error, e.description.as_deref()));
    if e.status == StatusCode::UNAUTHORIZED && route.takes_secrets() {
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
    route: TokenRoute,
) -> Result<Response, TokenError> {
    let requested_tenant = form.get("tenant_id").filter(|t| !t.is_empty());
    ctx.tenant_id = requested_tenant.map(str::to_owned);
    let Some(grant_type) = form.get("grant_type") else {
        return Err(TokenError::request("grant_type is required"));
    };
    let Authenticated { client_id, billing, tenants } = authenticate(st, ctx, headers, form, route)?;
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
