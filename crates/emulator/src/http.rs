//! The platform's endpoints: token, JWKS, billing events (post and list) and telemetry.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use billsync_domain::{
    AccessTokenClaims, BASE_AUDIENCE, BILLING_AUDIENCE, BILLING_READ_SCOPE, BILLING_WRITE_SCOPE, DEVICE_WRITE_SCOPE,
    EventRules,
};
use chrono::{DateTime, SecondsFormat, Utc};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::audit::{AuditDraft, Reason};
use crate::faults::{FaultTarget, Fired};
use crate::keys::VerifyError;
use crate::ratelimit::{Limiter, RateStatus};
use crate::server::Conn;
use crate::state::{AppState, Held};

pub(crate) type St = Arc<AppState>;

/// Most events in one batch.
pub const MAX_BATCH_EVENTS: usize = 500;
/// Largest body of the billing and telemetry endpoints.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Largest body of the token endpoint.
const MAX_FORM_BYTES: usize = 64 * 1024;
/// How much of an oversized body is read (and thrown away) so the client sees the `413`.
const DRAIN_LIMIT: usize = 8 * MAX_BODY_BYTES;

pub(crate) const TOKEN_EP: &str = "POST /oauth2/v1/token";
pub(crate) const BILLING_POST_EP: &str = "POST /iot/api/v2/billing/events";
pub(crate) const BILLING_GET_EP: &str = "GET /iot/api/v2/billing/events";
pub(crate) const TELEMETRY_EP: &str = "POST /iot/api/v2/devices/{device_id}/telemetry";

/// The short scope forms that some consoles accept; the emulator grants them verbatim.
const SHORT_BILLING_WRITE: &str = "billing:write";
const SHORT_BILLING_READ: &str = "billing:read";
const SHORT_DEVICE_WRITE: &str = "device:write";

const X_TENANT: &str = "x-tenant-id";
const X_APPLICATION: &str = "x-application-id";

pub(crate) fn router(state: St) -> Router {
    Router::new()
        .route("/oauth2/v1/token", post(token))
        .route("/oauth2/v1/keys", get(jwks))
        .route("/iot/api/v2/billing/events", post(post_events).get(list_events))
        .route("/iot/api/v2/devices/{device_id}/telemetry", post(telemetry))
        .nest("/admin", crate::admin::router(Arc::clone(&state)))
        .fallback(|| async { json_reply(StatusCode::NOT_FOUND, &json!({"error": "not_found"})) })
        .with_state(state)
}

// ---------------------------------------------------------------------------------------------
// Shared pieces

pub(crate) fn json_reply(status: StatusCode, body: &Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error_body(error: &str, description: Option<&str>) -> Value {
    match description {
        Some(d) => json!({"error": error, "error_description": d}),
        None => json!({"error": error}),
    }
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

fn set_header(r: &mut Response, name: &'static str, value: impl ToString) {
    if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
        r.headers_mut().insert(HeaderName::from_static(name), v);
    }
}

fn with_rate(mut r: Response, rate: RateStatus) -> Response {
    set_header(&mut r, "x-ratelimit-limit", rate.limit);
    set_header(&mut r, "x-ratelimit-remaining", rate.remaining);
    set_header(&mut r, "x-ratelimit-reset", rate.reset_s);
    r
}

/// Who and what a request is about, for the audit log and the counters.
struct Ctx<'a> {
    st: &'a AppState,
    endpoint: &'static str,
    client_id: Option<String>,
    tenant_id: Option<String>,
    jti: Option<String>,
}

impl<'a> Ctx<'a> {
    fn new(st: &'a AppState, endpoint: &'static str) -> Self {
        Self { st, endpoint, client_id: None, tenant_id: None, jti: None }
    }

    /// What the headers claim, until a verified token says better.
    fn with_headers(mut self, headers: &HeaderMap) -> Self {
        self.tenant_id = header_str(headers, X_TENANT).map(str::to_owned);
        self.client_id = header_str(headers, X_APPLICATION).map(str::to_owned);
        self
    }

    fn count(&self, status: u16, reasons: &[Reason]) {
        self.st.counters.update(|c| {
            *c.requests_by_status.entry(status).or_default() += 1;
            *c.requests_by_endpoint.entry(self.endpoint.to_owned()).or_default() += 1;
            for r in reasons {
                *c.rejections_by_reason.entry(*r).or_default() += 1;
            }
        });
    }

    fn audit(&self, status: u16, reasons: Vec<Reason>, detail: Option<String>) {
        self.st.audit.record(AuditDraft {
            endpoint: self.endpoint,
            status,
            reasons,
            client_id: self.client_id.clone(),
            tenant_id: self.tenant_id.clone(),
            jti: self.jti.clone(),
            detail,
        });
    }

    /// Records a refused request: one audit entry and the counters.
    fn reject(&self, status: StatusCode, reasons: Vec<Reason>, detail: impl Into<Option<String>>) {
        self.count(status.as_u16(), &reasons);
        self.audit(status.as_u16(), reasons, detail.into());
    }
}

/// Applies the faults that act before a request is processed: latency, then `503` or `429`.
async fn pre_faults(ctx: &Ctx<'_>, fired: &Fired) -> Option<Response> {
    if !fired.latency.is_zero() {
        tokio::time::sleep(fired.latency).await;
    }
    if fired.unavailable {
        ctx.reject(StatusCode::SERVICE_UNAVAILABLE, vec![Reason::InjectedUnavailable], Some("injected fault".into()));
        return Some(json_reply(StatusCode::SERVICE_UNAVAILABLE, &error_body("service_unavailable", None)));
    }
    if let Some(retry) = fired.rate_limited {
        ctx.reject(StatusCode::TOO_MANY_REQUESTS, vec![Reason::InjectedRateLimited], Some("injected fault".into()));
        let mut r = json_reply(StatusCode::TOO_MANY_REQUESTS, &error_body("rate_limited", None));
        set_header(&mut r, "retry-after", retry);
        return Some(r);
    }
    None
}

/// After a request was processed: drops the connection if a fault says so (never returns
/// then), otherwise hands the response back.
async fn post_faults(ctx: &Ctx<'_>, fired: &Fired, conn: Option<&Conn>, response: Response) -> Response {
    match conn {
        Some(conn) if fired.drop_connection => {
            let status = response.status().as_u16();
            ctx.st.counters.update(|c| *c.rejections_by_reason.entry(Reason::InjectedConnectionDrop).or_default() += 1);
            ctx.audit(
                0,
                vec![Reason::InjectedConnectionDrop],
                Some(format!("injected fault: connection dropped instead of answering {status}")),
            );
            drop(response);
            conn.drop_connection();
            std::future::pending::<Response>().await
        }
        _ => response,
    }
}

enum BodyError {
    TooLarge,
    Broken(String),
}

/// Reads a body of at most `limit` bytes. A larger body is drained (up to a bound) so that
/// the client is still reading when the `413` arrives.
async fn read_body(headers: &HeaderMap, mut body: Body, limit: usize) -> Result<Vec<u8>, BodyError> {
    let declared = header_str(headers, "content-length").and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT) {
        return Err(BodyError::TooLarge);
    }
    let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(limit));
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            total += data.len();
            if total <= limit {
                buf.extend_from_slice(&data);
            } else if total > DRAIN_LIMIT {
                return Err(BodyError::TooLarge);
            }
        }
    }
    if total > limit { Err(BodyError::TooLarge) } else { Ok(buf) }
}

// ---------------------------------------------------------------------------------------------
// Token endpoint

async fn jwks(State(st): State<St>) -> Response {
    json_reply(StatusCode::OK, &serde_json::to_value(st.keys.jwks()).unwrap_or(Value::Null))
}

struct TokenError {
    status: StatusCode,
    error: &'static str,
    reason: Reason,
    description: String,
}

impl TokenError {
    fn request(description: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error: "invalid_request",
            reason: Reason::InvalidRequest,
            description: description.into(),
        }
    }
    fn client(description: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
            reason: Reason::InvalidClient,
            description: description.into(),
        }
    }
}

async fn token(State(st): State<St>, req: Request) -> Response {
    let conn = req.extensions().get::<Conn>().cloned();
    let mut ctx = Ctx::new(&st, TOKEN_EP);
    let fired = st.faults.roll(FaultTarget::Token);
    if let Some(r) = pre_faults(&ctx, &fired).await {
        return r;
    }
    let (parts, body) = req.into_parts();
    let response = match issue_token(&st, &mut ctx, &parts.headers, body).await {
        Ok(r) => {
            ctx.count(200, &[]);
            r
        }
        Err(e) => {
            ctx.reject(e.status, vec![e.reason], Some(e.description.clone()));
            let mut r = json_reply(e.status, &error_body(e.error, Some(&e.description)));
            if e.status == StatusCode::UNAUTHORIZED {
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"billsync-emulator\""));
            }
            r
        }
    };
    let mut response = post_faults(&ctx, &fired, conn.as_ref(), response).await;
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn percent_decode_form(s: &str) -> Option<String> {
    let plus = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus).decode_utf8().ok().map(|c| c.into_owned())
}

/// `Authorization: Basic` credentials (RFC 6749 section 2.3.1: each part form-encoded).
fn basic_credentials(headers: &HeaderMap) -> Option<Result<(String, String), TokenError>> {
    let value = headers.get(header::AUTHORIZATION)?;
    let bad = || TokenError::client("malformed HTTP Basic credentials");
    let value = match value.to_str() {
        Ok(v) => v.trim(),
        Err(_) => return Some(Err(bad())),
    };
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Some(Err(TokenError::client(format!("unsupported authentication scheme {scheme:?}; use Basic"))));
    }
    let decoded = STANDARD.decode(rest.trim()).ok().and_then(|b| String::from_utf8(b).ok());
    let Some((id, secret)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
        return Some(Err(bad()));
    };
    match (percent_decode_form(id), percent_decode_form(secret)) {
        (Some(id), Some(secret)) => Some(Ok((id, secret))),
        _ => Some(Err(bad())),
    }
}

async fn issue_token(
    st: &AppState,
    ctx: &mut Ctx<'_>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, TokenError> {
    let content_type = header_str(headers, "content-type").unwrap_or("");
    if !content_type.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded") {
        return Err(TokenError::request("Content-Type must be application/x-www-form-urlencoded"));
    }
    let bytes = read_body(headers, body, MAX_FORM_BYTES).await.map_err(|e| match e {
        BodyError::TooLarge => TokenError::request("the form is larger than 64 KiB"),
        BodyError::Broken(m) => TokenError::request(format!("could not read the body: {m}")),
    })?;
    let mut form: Vec<(String, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(&bytes) {
        if form.iter().any(|(seen, _)| *seen == k) {
            return Err(TokenError::request(format!("parameter {k} appears more than once")));
        }
        form.push((k.into_owned(), v.into_owned()));
    }
    let param = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let requested_tenant = param("tenant_id").filter(|t| !t.is_empty());
    ctx.tenant_id = requested_tenant.map(str::to_owned);

    let Some(grant_type) = param("grant_type") else {
        return Err(TokenError::request("grant_type is required"));
    };

    // Client authentication: exactly one method.
    let basic = basic_credentials(headers).transpose()?;
    let body_id = param("client_id");
    let body_secret = param("client_secret");
    let (client_id, secret) = match (basic, body_id, body_secret) {
        (Some(_), _, Some(_)) => {
            return Err(TokenError::request("use one client authentication method, not HTTP Basic and client_secret"));
        }
        (Some((id, secret)), body_id, None) => {
            if body_id.is_some_and(|b| b != id) {
                return Err(TokenError::request("client_id in the body differs from the HTTP Basic user"));
            }
            (id, secret)
        }
        (None, Some(id), Some(secret)) => (id.to_owned(), secret.to_owned()),
        (None, Some(id), None) => {
            ctx.client_id = Some(id.to_owned());
            return Err(TokenError::client("client authentication failed: no client_secret"));
        }
        (None, None, _) => return Err(TokenError::client("client authentication required")),
    };
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
        return Err(TokenError {
            status: StatusCode::BAD_REQUEST,
            error: "unsupported_grant_type",
            reason: Reason::UnsupportedGrantType,
            description: format!("grant_type {grant_type:?} is not supported; use client_credentials"),
        });
    }

    // Scopes: the device scope is every client's base grant; billing scopes only for clients
    // registered for Billing Services, silently dropped for the others (RFC 6749 section 3.3).
    let requested: Vec<&str> = match param("scope") {
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
                return Err(TokenError {
                    status: StatusCode::BAD_REQUEST,
                    error: "invalid_scope",
                    reason: Reason::InvalidScope,
                    description: format!("unknown scope {other:?}"),
                });
            }
        };
        if allowed && !granted.contains(&scope) {
            granted.push(scope);
        }
    }
    let billing_granted = granted
        .iter()
        .any(|s| matches!(*s, BILLING_WRITE_SCOPE | BILLING_READ_SCOPE | SHORT_BILLING_WRITE | SHORT_BILLING_READ));

    let tenant = match requested_tenant {
        Some(t) if tenants.iter().any(|x| x == t) => Some(t.to_owned()),
        Some(t) => return Err(TokenError::request(format!("tenant_id {t:?} is not one of this client's tenants"))),
        None if tenants.len() == 1 => tenants.first().cloned(),
        None => None,
    };
    ctx.tenant_id.clone_from(&tenant);

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
    if let (Some(t), Some(obj)) = (&tenant, claims.as_object_mut()) {
        obj.insert("tenant_id".into(), Value::from(t.as_str()));
    }
    let access_token = st.keys.sign(&claims);
    {
        let mut tokens = st.tokens();
        tokens.issued.entry(client_id.clone()).or_default().push(jti);
        tokens.remember(&access_token);
    }
    st.counters.update(|c| c.tokens_issued += 1);
    tracing::info!(client_id = %client_id, scope = %scope, expires_in = lifetime, "token issued");
    Ok(json_reply(
        StatusCode::OK,
        &json!({"access_token": access_token, "token_type": "Bearer", "expires_in": lifetime, "scope": scope}),
    ))
}

// ---------------------------------------------------------------------------------------------
// Bearer tokens and claims

/// A bearer token that verified (signature, expiry, revocation).
struct Authed {
    claims: AccessTokenClaims,
}

struct AuthFailure {
    reasons: Vec<Reason>,
    detail: String,
}

/// Checks the bearer token: present, a JWT, signed by one of our keys, not expired, not
/// revoked. Fills the context's client and jti from a token whose signature verified.
fn authenticate(st: &AppState, ctx: &mut Ctx<'_>, headers: &HeaderMap) -> Result<Authed, AuthFailure> {
    let fail = |reason, detail: &str| AuthFailure { reasons: vec![reason], detail: detail.to_owned() };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(fail(Reason::MissingToken, "no Authorization header"));
    };
    let Ok(value) = value.to_str() else {
        return Err(fail(Reason::MalformedToken, "the Authorization header is not visible ASCII"));
    };
    let (scheme, token) = value.trim().split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(fail(Reason::MissingToken, "the Authorization header holds no Bearer token"));
    }
    let payload = match st.keys.verify(token.trim()) {
        Ok(p) => p,
        Err(VerifyError::Malformed) => return Err(fail(Reason::MalformedToken, "the bearer token is not a JWT")),
        Err(VerifyError::BadSignature) => {
            return Err(fail(Reason::BadSignature, "the signature does not verify with any published key"));
        }
    };
    let Ok(claims) = AccessTokenClaims::deserialize(&payload) else {
        return Err(fail(Reason::MalformedToken, "the token's claims have unexpected types"));
    };
    if claims.client_id.is_some() {
        ctx.client_id.clone_from(&claims.client_id);
    }
    ctx.jti.clone_from(&claims.jti);
    let mut reasons = Vec::new();
    let mut details = Vec::new();
    if claims.exp.is_none_or(|exp| exp <= Utc::now().timestamp()) {
        reasons.push(Reason::TokenExpired);
        details.push("the token has expired");
    }
    if claims.jti.as_ref().is_some_and(|j| st.tokens().revoked.contains(j)) {
        reasons.push(Reason::TokenRevoked);
        details.push("the token was revoked");
    }
    if reasons.is_empty() { Ok(Authed { claims }) } else { Err(AuthFailure { reasons, detail: details.join("; ") }) }
}

/// What an endpoint needs of a token.
struct Need {
    scope: &'static str,
    short_scope: &'static str,
    audience: &'static str,
    tenant_claim_required: bool,
}

const BILLING_WRITE: Need = Need {
    scope: BILLING_WRITE_SCOPE,
    short_scope: SHORT_BILLING_WRITE,
    audience: BILLING_AUDIENCE,
    tenant_claim_required: true,
};
const BILLING_READ: Need = Need {
    scope: BILLING_READ_SCOPE,
    short_scope: SHORT_BILLING_READ,
    audience: BILLING_AUDIENCE,
    tenant_claim_required: true,
};
const DEVICE_WRITE: Need = Need {
    scope: DEVICE_WRITE_SCOPE,
    short_scope: SHORT_DEVICE_WRITE,
    audience: BASE_AUDIENCE,
    tenant_claim_required: false,
};

/// Every claim problem at once, in check order. The emulator's own referee: it does not use
/// the domain's `BillingPolicy`, which the client side is tested against.
fn claim_problems(claims: &AccessTokenClaims, need: &Need, tenant: &str, application: Option<&str>) -> Vec<Reason> {
    let mut problems = Vec::new();
    if !claims.has_scope(need.scope) {
        problems.push(if claims.has_scope(need.short_scope) { Reason::ShortScopeForm } else { Reason::MissingScope });
    }
    if !claims.aud.iter().any(|a| a == need.audience) {
        problems.push(Reason::AudienceMissing);
    }
    match claims.tenant_id.as_deref() {
        None if need.tenant_claim_required => problems.push(Reason::TenantClaimMissing),
        Some(t) if t != tenant => problems.push(Reason::TenantMismatch),
        _ => {}
    }
    if let Some(app) = application {
        if claims.client_id.as_deref() != Some(app) {
            problems.push(Reason::ApplicationMismatch);
        }
    }
    problems
}

fn describe(problems: &[Reason], claims: &AccessTokenClaims, need: &Need, tenant: &str, app: Option<&str>) -> String {
    problems
        .iter()
        .map(|p| match p {
            Reason::MissingScope => format!("scope {:?} lacks {}", claims.scope.join(" "), need.scope),
            Reason::ShortScopeForm => {
                format!("scope has the short form {}; {} is required", need.short_scope, need.scope)
            }
            Reason::AudienceMissing => format!("aud {:?} lacks {}", claims.aud, need.audience),
            Reason::TenantClaimMissing => "the token has no tenant_id claim".to_owned(),
            Reason::TenantMismatch => {
                format!("X-Tenant-ID {tenant:?} differs from tenant_id claim {:?}", claims.tenant_id.as_deref())
            }
            Reason::ApplicationMismatch => {
                format!("X-Application-ID {app:?} differs from client_id claim {:?}", claims.client_id.as_deref())
            }
            other => other.as_str().to_owned(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn invalid_token() -> Response {
    let mut r = json_reply(StatusCode::UNAUTHORIZED, &error_body("invalid_token", None));
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""));
    r
}

fn insufficient_claims() -> Response {
    let mut r = json_reply(StatusCode::UNAUTHORIZED, &error_body("insufficient_claims", Some("insufficient claims")));
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"insufficient_claims\""));
    r
}

fn missing_headers(headers: &HeaderMap, names: &[(&str, &str)]) -> Vec<String> {
    names
        .iter()
        .filter(|(lower, _)| header_str(headers, lower).is_none())
        .map(|(_, shown)| (*shown).to_owned())
        .collect()
}

/// The steps every protected endpoint shares, up to and including the tenant authorisation.
/// On success, the verified claims and the rate status to put on the response.
struct Gate<'a> {
    need: &'a Need,
    limiter: &'a Limiter,
    limit: Option<u32>,
    require_application: bool,
}

struct Passed {
    tenant: String,
    rate: RateStatus,
}

fn peek_rate(limiter: &Limiter, headers: &HeaderMap, limit: Option<u32>) -> RateStatus {
    match (header_str(headers, X_TENANT), header_str(headers, X_APPLICATION)) {
        (Some(t), Some(a)) => limiter.check(t, a, limit, Instant::now(), false),
        _ => limit.map_or_else(RateStatus::unlimited, |l| RateStatus {
            limit: l,
            remaining: l,
            reset_s: 0,
            retry_after_s: None,
        }),
    }
}

fn gate(st: &AppState, ctx: &mut Ctx<'_>, headers: &HeaderMap, g: &Gate<'_>) -> Result<Passed, Box<Response>> {
    let tenant = header_str(headers, X_TENANT).map(str::to_owned);
    let app = header_str(headers, X_APPLICATION).map(str::to_owned);
    ctx.tenant_id.clone_from(&tenant);
    ctx.client_id.clone_from(&app);

    let authed = match authenticate(st, ctx, headers) {
        Ok(a) => a,
        Err(f) => {
            ctx.reject(StatusCode::UNAUTHORIZED, f.reasons, f.detail);
            return Err(Box::new(with_rate(invalid_token(), peek_rate(g.limiter, headers, g.limit))));
        }
    };
    let claims = authed.claims;
    if ctx.tenant_id.is_none() {
        ctx.tenant_id.clone_from(&claims.tenant_id);
    }

    let mut wanted = vec![(X_TENANT, "X-Tenant-ID")];
    if g.require_application {
        wanted.push((X_APPLICATION, "X-Application-ID"));
    }
    let missing = missing_headers(headers, &wanted);
    let Some(tenant) = tenant.filter(|_| missing.is_empty()) else {
        let description = format!("missing header: {}", missing.join(", "));
        ctx.reject(StatusCode::BAD_REQUEST, vec![Reason::MissingHeader], description.clone());
        let r = json_reply(StatusCode::BAD_REQUEST, &error_body("missing_header", Some(&description)));
        return Err(Box::new(with_rate(r, peek_rate(g.limiter, headers, g.limit))));
    };

    let client = claims.client_id.clone().or_else(|| app.clone()).unwrap_or_default();
    let rate = g.limiter.check(&tenant, &client, g.limit, Instant::now(), true);
    if let Some(retry) = rate.retry_after_s {
        ctx.reject(
            StatusCode::TOO_MANY_REQUESTS,
            vec![Reason::RateLimited],
            format!("more than {} requests in 60 s for ({tenant}, {client}); retry after {retry} s", rate.limit),
        );
        let mut r = json_reply(StatusCode::TOO_MANY_REQUESTS, &error_body("rate_limited", None));
        set_header(&mut r, "retry-after", retry);
        return Err(Box::new(with_rate(r, rate)));
    }

    let problems = claim_problems(&claims, g.need, &tenant, app.as_deref());
    if !problems.is_empty() {
        let detail = describe(&problems, &claims, g.need, &tenant, app.as_deref());
        ctx.reject(StatusCode::UNAUTHORIZED, problems, detail);
        return Err(Box::new(with_rate(insufficient_claims(), rate)));
    }

    if !st.authorised(&client, &tenant) {
        ctx.reject(
            StatusCode::FORBIDDEN,
            vec![Reason::TenantNotAuthorized],
            format!("client {client:?} is not authorised for tenant {tenant:?}"),
        );
        return Err(Box::new(with_rate(
            json_reply(StatusCode::FORBIDDEN, &error_body("tenant_not_authorized", None)),
            rate,
        )));
    }
    Ok(Passed { tenant, rate })
}

fn bad_request(ctx: &Ctx<'_>, description: &str, rate: RateStatus) -> Response {
    ctx.reject(StatusCode::BAD_REQUEST, vec![Reason::InvalidRequest], description.to_owned());
    with_rate(json_reply(StatusCode::BAD_REQUEST, &error_body("invalid_request", Some(description))), rate)
}

fn too_large(ctx: &Ctx<'_>, detail: String, rate: RateStatus) -> Response {
    ctx.reject(StatusCode::PAYLOAD_TOO_LARGE, vec![Reason::PayloadTooLarge], detail);
    with_rate(json_reply(StatusCode::PAYLOAD_TOO_LARGE, &error_body("payload_too_large", None)), rate)
}

fn is_json(headers: &HeaderMap) -> bool {
    header_str(headers, "content-type").is_some_and(|ct| {
        let mime = ct.split(';').next().unwrap_or("").trim();
        mime.eq_ignore_ascii_case("application/json")
    })
}

// ---------------------------------------------------------------------------------------------
// Billing events

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    events: Vec<Value>,
}

/// `invalid_<field>` from the domain's field name: `attributes.site` → `invalid_attributes`,
/// `json` and `event` → `invalid_event`.
fn rejection_code(field: &str) -> String {
    let head = field.split('.').next().unwrap_or("");
    let head: String = head.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
    match head.as_str() {
        "" | "json" | "event" => "invalid_event".to_owned(),
        h => format!("invalid_{h}"),
    }
}

async fn post_events(State(st): State<St>, req: Request) -> Response {
    let conn = req.extensions().get::<Conn>().cloned();
    let (parts, body) = req.into_parts();
    let mut ctx = Ctx::new(&st, BILLING_POST_EP).with_headers(&parts.headers);
    let fired = st.faults.roll(FaultTarget::Billing);
    let limit = st.settings().billing_rate_per_min;
    if let Some(r) = pre_faults(&ctx, &fired).await {
        return with_rate(r, peek_rate(&st.billing_limiter, &parts.headers, limit));
    }
    let response = accept_events(&st, &mut ctx, &parts.headers, body, limit).await;
    post_faults(&ctx, &fired, conn.as_ref(), response).await
}

async fn accept_events(
    st: &AppState,
    ctx: &mut Ctx<'_>,
    headers: &HeaderMap,
    body: Body,
    limit: Option<u32>,
) -> Response {
    let g = Gate { need: &BILLING_WRITE, limiter: &st.billing_limiter, limit, require_application: true };
    let Passed { tenant, rate } = match gate(st, ctx, headers, &g) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let idempotency_key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) if (1..=255).contains(&k.len()) => Some(k.to_owned()),
        Some(_) => return bad_request(ctx, "Idempotency-Key must be 1 to 255 visible ASCII characters", rate),
    };
    if !is_json(headers) {
        return bad_request(ctx, "Content-Type must be application/json", rate);
    }
    let bytes = match read_body(headers, body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => return too_large(ctx, "the body is larger than 1 MiB".into(), rate),
        Err(BodyError::Broken(m)) => return bad_request(ctx, &format!("could not read the body: {m}"), rate),
    };
    let batch: Batch = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => {
            return bad_request(ctx, &format!("the body must be {{\"events\": [EVENT, ...]}}: {e}"), rate);
        }
    };
    drop(bytes);
    if batch.events.is_empty() {
        return bad_request(ctx, "the batch holds no events; send 1 to 500", rate);
    }
    if batch.events.len() > MAX_BATCH_EVENTS {
        return too_large(ctx, format!("the batch holds {} events; at most 500 are allowed", batch.events.len()), rate);
    }

    let now = Utc::now();
    let rules = EventRules::default();
    let mut rejected = Vec::new();
    let mut good: Vec<(Arc<str>, String)> = Vec::with_capacity(batch.events.len());
    let refused_meters = st.rejected_meters.read().unwrap_or_else(|p| p.into_inner()).clone();
    for (index, value) in batch.events.iter().enumerate() {
        match rules.from_value(value, now) {
            Ok(event) if refused_meters.contains_key(event.meter()) => rejected.push(json!({
                "event_id": event.event_id().as_str(),
                "code": refused_meters.get(event.meter()).map(String::as_str).unwrap_or("unknown_meter"),
                "message": format!("meter {} is not registered for this tenant", event.meter()),
                "index": index,
            })),
            Ok(event) => good.push((Arc::from(event.event_id().as_str()), event.encode().into_json())),
            Err(e) => {
                let event_id = value.get("event_id").and_then(Value::as_str).unwrap_or("");
                rejected.push(json!({
                    "event_id": event_id,
                    "code": rejection_code(&e.field),
                    "message": e.to_string(),
                    "index": index,
                }));
            }
        }
    }
    drop(batch);

    let mut duplicates = Vec::new();
    let mut accepted = 0u64;
    {
        let store = st.tenant(&tenant);
        let mut s = store.lock().unwrap_or_else(|p| p.into_inner());
        s.events.reserve(good.len());
        for (id, json) in good {
            if s.ids.insert(Arc::clone(&id)) {
                s.events.push(Held { event_id: id, received_at: now, json });
                accepted += 1;
            } else {
                duplicates.push(Value::from(&*id));
            }
        }
    }
    let (n_dup, n_rej) = (duplicates.len() as u64, rejected.len() as u64);
    st.counters.update(|c| {
        *c.requests_by_status.entry(202).or_default() += 1;
        *c.requests_by_endpoint.entry(BILLING_POST_EP.to_owned()).or_default() += 1;
        *c.events_stored.entry(tenant.clone()).or_default() += accepted;
        if n_dup > 0 {
            *c.events_duplicate.entry(tenant.clone()).or_default() += n_dup;
        }
        if n_rej > 0 {
            *c.events_rejected.entry(tenant.clone()).or_default() += n_rej;
        }
    });
    let mut r = json_reply(
        StatusCode::ACCEPTED,
        &json!({"accepted": accepted, "duplicates": duplicates, "rejected": rejected}),
    );
    if let Some(key) = idempotency_key {
        set_header(&mut r, "idempotency-key", key);
    }
    with_rate(r, rate)
}

/// Most events one reconciliation page returns.
pub const MAX_LIST_LIMIT: usize = 1000;
/// Events per page when `limit` is absent.
pub const DEFAULT_LIST_LIMIT: usize = 100;

struct ListQuery {
    since: Option<DateTime<Utc>>,
    after: u64,
    limit: usize,
}

fn parse_list_query(query: Option<&str>) -> Result<ListQuery, String> {
    let mut q = ListQuery { since: None, after: 0, limit: DEFAULT_LIST_LIMIT };
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "since" => {
                let t = DateTime::parse_from_rfc3339(&v)
                    .map_err(|_| format!("since must be an RFC 3339 time with an offset, found {v:?}"))?;
                q.since = Some(t.with_timezone(&Utc));
            }
            "limit" => {
                q.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
                    .ok_or_else(|| format!("limit must be 1 to {MAX_LIST_LIMIT}, found {v:?}"))?;
            }
            "after" => {
                q.after = v.parse().map_err(|_| format!("after must be a sequence number, found {v:?}"))?;
            }
            other => return Err(format!("unknown query parameter {other:?}; expected since, limit, after")),
        }
    }
    Ok(q)
}

async fn list_events(State(st): State<St>, req: Request) -> Response {
    let conn = req.extensions().get::<Conn>().cloned();
    let mut ctx = Ctx::new(&st, BILLING_GET_EP).with_headers(req.headers());
    let fired = st.faults.roll(FaultTarget::Billing);
    let limit = st.settings().billing_rate_per_min;
    if let Some(r) = pre_faults(&ctx, &fired).await {
        return with_rate(r, peek_rate(&st.billing_limiter, req.headers(), limit));
    }
    let response = list_inner(&st, &mut ctx, &req, limit);
    post_faults(&ctx, &fired, conn.as_ref(), response).await
}

fn list_inner(st: &AppState, ctx: &mut Ctx<'_>, req: &Request, limit: Option<u32>) -> Response {
    let g = Gate { need: &BILLING_READ, limiter: &st.billing_limiter, limit, require_application: true };
    let Passed { tenant, rate } = match gate(st, ctx, req.headers(), &g) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let q = match parse_list_query(req.uri().query()) {
        Ok(q) => q,
        Err(m) => return bad_request(ctx, &m, rate),
    };
    let mut events = Vec::new();
    let mut has_more = false;
    if let Some(store) = st.existing_tenant(&tenant) {
        let s = store.lock().unwrap_or_else(|p| p.into_inner());
        let start = usize::try_from(q.after).unwrap_or(usize::MAX).min(s.events.len());
        for (i, h) in s.events.iter().enumerate().skip(start) {
            if q.since.is_some_and(|since| h.received_at < since) {
                continue;
            }
            if events.len() == q.limit {
                has_more = true;
                break;
            }
            let event: Value = serde_json::from_str(&h.json).unwrap_or(Value::Null);
            events.push(json!({
                "seq": i + 1,
                "event_id": &*h.event_id,
                "received_at": h.received_at.to_rfc3339_opts(SecondsFormat::Micros, true),
                "event": event,
            }));
        }
    }
    ctx.count(200, &[]);
    with_rate(json_reply(StatusCode::OK, &json!({"tenant_id": tenant, "events": events, "has_more": has_more})), rate)
}

// ---------------------------------------------------------------------------------------------
// Telemetry

async fn telemetry(State(st): State<St>, req: Request) -> Response {
    let conn = req.extensions().get::<Conn>().cloned();
    let (parts, body) = req.into_parts();
    let mut ctx = Ctx::new(&st, TELEMETRY_EP).with_headers(&parts.headers);
    let fired = st.faults.roll(FaultTarget::Telemetry);
    let limit = st.settings().device_rate_per_min;
    if let Some(r) = pre_faults(&ctx, &fired).await {
        return with_rate(r, peek_rate(&st.device_limiter, &parts.headers, limit));
    }
    let device_id = parts.uri.path().trim_start_matches("/iot/api/v2/devices/").trim_end_matches("/telemetry");
    let device_id = percent_encoding::percent_decode_str(device_id).decode_utf8_lossy().into_owned();
    let response = telemetry_inner(&st, &mut ctx, &parts.headers, body, limit, &device_id).await;
    post_faults(&ctx, &fired, conn.as_ref(), response).await
}

async fn telemetry_inner(
    st: &AppState,
    ctx: &mut Ctx<'_>,
    headers: &HeaderMap,
    body: Body,
    limit: Option<u32>,
    device_id: &str,
) -> Response {
    let g = Gate { need: &DEVICE_WRITE, limiter: &st.device_limiter, limit, require_application: false };
    let Passed { tenant, rate } = match gate(st, ctx, headers, &g) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let bytes = match read_body(headers, body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => return too_large(ctx, "the body is larger than 1 MiB".into(), rate),
        Err(BodyError::Broken(m)) => return bad_request(ctx, &format!("could not read the body: {m}"), rate),
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(_)) => {}
        Ok(_) => return bad_request(ctx, "telemetry must be a JSON object", rate),
        Err(e) => return bad_request(ctx, &format!("telemetry must be a JSON object: {e}"), rate),
    }
    ctx.count(202, &[]);
    st.counters.update(|c| *c.telemetry_accepted.entry(tenant.clone()).or_default() += 1);
    with_rate(json_reply(StatusCode::ACCEPTED, &json!({"accepted": true, "device_id": device_id})), rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejection_codes_follow_the_field() {
        for (field, code) in [
            ("quantity", "invalid_quantity"),
            ("attributes.site", "invalid_attributes"),
            ("json", "invalid_event"),
            ("event", "invalid_event"),
            ("occurred_at", "invalid_occurred_at"),
            ("", "invalid_event"),
        ] {
            assert_eq!(rejection_code(field), code, "{field}");
        }
    }

    fn claims(json: Value) -> AccessTokenClaims {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn every_claim_problem_is_reported_at_once() {
        let thread = claims(json!({"scope": "urn:oracle:iot:device:write", "aud": ["https://iot.oraclecloud.com"],
            "tenant_id": "t", "client_id": "a"}));
        assert_eq!(
            claim_problems(&thread, &BILLING_WRITE, "t", Some("a")),
            [Reason::MissingScope, Reason::AudienceMissing]
        );
        assert_eq!(claim_problems(&thread, &DEVICE_WRITE, "t", None), []);
        let short = claims(json!({"scope": "billing:write", "aud": ["https://iot.oraclecloud.com/billing"],
            "client_id": "a"}));
        assert_eq!(
            claim_problems(&short, &BILLING_WRITE, "t", Some("b")),
            [Reason::ShortScopeForm, Reason::TenantClaimMissing, Reason::ApplicationMismatch]
        );
        let other =
            claims(json!({"scope": "urn:oracle:iot:billing:write", "aud": "https://iot.oraclecloud.com/billing",
            "tenant_id": "u", "client_id": "a"}));
        assert_eq!(claim_problems(&other, &BILLING_WRITE, "t", Some("a")), [Reason::TenantMismatch]);
        assert_eq!(claim_problems(&other, &BILLING_READ, "u", Some("a")), [Reason::MissingScope]);
    }

    #[test]
    fn list_queries() {
        let q = parse_list_query(Some("since=2026-01-01T00:00:00Z&limit=5&after=3")).unwrap();
        assert_eq!((q.limit, q.after, q.since.map(|t| t.timestamp())), (5, 3, Some(1_767_225_600)));
        assert!(parse_list_query(Some("limit=0")).is_err());
        assert!(parse_list_query(Some("since=yesterday")).is_err());
        assert!(parse_list_query(Some("sinse=x")).is_err());
        assert_eq!(parse_list_query(None).unwrap().limit, DEFAULT_LIST_LIMIT);
    }
}
