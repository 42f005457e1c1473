//! The steps every protected endpoint shares, in the order of docs/emulator.md: the bearer
//! token, the required headers, the rate limit, the claims, the tenant authorisation. The
//! first failing step answers (and is audited); a request that passes knows its tenant and
//! the rate status to report.

use std::time::Instant;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use chrono::Utc;
use serde::Deserialize;

use super::claims::{Need, TokenClaims, claim_problems, describe};
use super::ctx::{Ctx, post_faults, pre_faults};
use super::reply::{X_APPLICATION, X_TENANT, error_body, header_str, json_reply, set_header, with_rate};
use crate::audit::Reason;
use crate::faults::FaultTarget;
use crate::keys::VerifyError;
use crate::ratelimit::{Limiter, RateStatus};
use crate::server::Conn;
use crate::state::AppState;

/// What an endpoint asks of the gate.
pub(crate) struct Gate<'a> {
    pub need: &'a Need,
    pub limiter: &'a Limiter,
    pub limit: Option<u32>,
    pub require_application: bool,
}

/// A request that passed: its tenant, and the rate status to put on the response.
pub(crate) struct Passed {
    pub tenant: String,
    pub rate: RateStatus,
}

struct AuthFailure {
    reasons: Vec<Reason>,
    detail: String,
}

/// Runs every step; the first that fails gives the response.
pub(crate) fn gate(
    st: &AppState,
    ctx: &mut Ctx<'_>,
    headers: &HeaderMap,
    g: &Gate<'_>,
) -> Result<Passed, Box<Response>> {
    let tenant = header_str(headers, X_TENANT).map(str::to_owned);
    let app = header_str(headers, X_APPLICATION).map(str::to_owned);
    ctx.tenant_id.clone_from(&tenant);
    ctx.client_id.clone_from(&app);

    let claims = authenticate(st, ctx, headers).map_err(|f| {
        ctx.reject(StatusCode::UNAUTHORIZED, f.reasons, f.detail);
        Box::new(with_rate(invalid_token(), peek_rate(g.limiter, headers, g.limit)))
    })?;
    if ctx.tenant_id.is_none() {
        ctx.tenant_id.clone_from(&claims.tenant_id);
    }
    let tenant = required_headers(ctx, headers, g, tenant)?;
    let client = claims.client_id.clone().or_else(|| app.clone()).unwrap_or_default();
    let rate = take_rate_slot(ctx, g, &tenant, &client)?;
    let problems = claim_problems(&claims, g.need, &tenant, app.as_deref());
    if !problems.is_empty() {
        let detail = describe(&problems, &claims, g.need, &tenant, app.as_deref());
        ctx.reject(StatusCode::UNAUTHORIZED, problems, detail);
        return Err(Box::new(with_rate(insufficient_claims(), rate)));
    }
    authorised(st, ctx, &client, &tenant, rate)?;
    Ok(Passed { tenant, rate })
}

/// The rate status to report before the (tenant, client) pair is known: the pair the headers
/// name, without taking a slot, or the full limit.
pub(crate) fn peek_rate(limiter: &Limiter, headers: &HeaderMap, limit: Option<u32>) -> RateStatus {
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

/// Checks the bearer token: present, a JWT, signed by one of our keys, not expired, not
/// revoked. Fills the context's client and jti from a token whose signature verified.
fn authenticate(st: &AppState, ctx: &mut Ctx<'_>, headers: &HeaderMap) -> Result<TokenClaims, AuthFailure> {
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
    let Ok(claims) = TokenClaims::deserialize(&payload) else {
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
    if reasons.is_empty() { Ok(claims) } else { Err(AuthFailure { reasons, detail: details.join("; ") }) }
}

/// `X-Tenant-ID` (and `X-Application-ID` where required) are present: the tenant, or
/// `400 missing_header` naming the missing ones.
fn required_headers(
    ctx: &Ctx<'_>,
    headers: &HeaderMap,
    g: &Gate<'_>,
    tenant: Option<String>,
) -> Result<String, Box<Response>> {
    let mut wanted = vec![(X_TENANT, "X-Tenant-ID")];
    if g.require_application {
        wanted.push((X_APPLICATION, "X-Application-ID"));
    }
    let missing: Vec<&str> =
        wanted.iter().filter(|(lower, _)| header_str(headers, lower).is_none()).map(|(_, shown)| *shown).collect();
    match tenant {
        Some(tenant) if missing.is_empty() => Ok(tenant),
        _ => {
            let description = format!("missing header: {}", missing.join(", "));
            ctx.reject(StatusCode::BAD_REQUEST, vec![Reason::MissingHeader], description.clone());
            let r = json_reply(StatusCode::BAD_REQUEST, &error_body("missing_header", Some(&description)));
            Err(Box::new(with_rate(r, peek_rate(g.limiter, headers, g.limit))))
        }
    }
}

/// Takes a slot of the pair's window, or answers `429` with `Retry-After`.
fn take_rate_slot(ctx: &Ctx<'_>, g: &Gate<'_>, tenant: &str, client: &str) -> Result<RateStatus, Box<Response>> {
    let rate = g.limiter.check(tenant, client, g.limit, Instant::now(), true);
    let Some(retry) = rate.retry_after_s else { return Ok(rate) };
    ctx.reject(
        StatusCode::TOO_MANY_REQUESTS,
        vec![Reason::RateLimited],
        format!("more than {} requests in 60 s for ({tenant}, {client}); retry after {retry} s", rate.limit),
    );
    let mut r = json_reply(StatusCode::TOO_MANY_REQUESTS, &error_body("rate_limited", None));
    set_header(&mut r, "retry-after", retry);
    Err(Box::new(with_rate(r, rate)))
}

/// The client is still authorised for the tenant (checked live), or `403`.
fn authorised(st: &AppState, ctx: &Ctx<'_>, client: &str, tenant: &str, rate: RateStatus) -> Result<(), Box<Response>> {
    if st.authorised(client, tenant) {
        return Ok(());
    }
    ctx.reject(
        StatusCode::FORBIDDEN,
        vec![Reason::TenantNotAuthorized],
        format!("client {client:?} is not authorised for tenant {tenant:?}"),
    );
    let r = json_reply(StatusCode::FORBIDDEN, &error_body("tenant_not_authorized", None));
    Err(Box::new(with_rate(r, rate)))
}

/// `401`, exactly `{"error":"invalid_token"}`: the reason is only in the audit.
fn invalid_token() -> Response {
    let mut r = json_reply(StatusCode::UNAUTHORIZED, &error_body("invalid_token", None));
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""));
    r
}

/// `401`, deliberately vague whichever claim is wrong (the thread's answer).
fn insufficient_claims() -> Response {
    let mut r = json_reply(StatusCode::UNAUTHORIZED, &error_body("insufficient_claims", Some("insufficient claims")));
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"insufficient_claims\""));
    r
}

/// Which limit a request counts against.
pub(crate) struct Metered<'a> {
    pub(crate) target: FaultTarget,
    pub(crate) limiter: &'a Limiter,
    pub(crate) limit: Option<u32>,
}

/// One request to a platform endpoint, inside its fault frame: the faults are rolled; a fault
/// that answers before the request is answered at once (with the rate headers); otherwise
/// `handle` answers, and then the faults that act on the answer (a dropped connection, latency)
/// do.
pub(crate) async fn framed(
    st: &AppState,
    endpoint: &'static str,
    conn: Option<&Conn>,
    headers: &HeaderMap,
    metered: Metered<'_>,
    handle: impl AsyncFnOnce(&mut Ctx<'_>) -> Response,
) -> Response {
    let mut ctx = Ctx::new(st, endpoint).with_headers(headers);
    let fired = st.faults.roll(metered.target);
    if let Some(r) = pre_faults(&ctx, &fired).await {
        return with_rate(r, peek_rate(metered.limiter, headers, metered.limit));
    }
    let response = handle(&mut ctx).await;
    post_faults(&ctx, &fired, conn, response).await
}
