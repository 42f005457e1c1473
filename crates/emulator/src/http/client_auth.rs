//! Client authentication at the token endpoints (docs/platform.md sections 1 and 1.1): a
//! secret (HTTP Basic, or `client_secret` in the body) or a signed assertion
//! (`client_assertion`), exactly one of them, each client with the method it is registered
//! for; the assertion-only endpoint takes assertions alone. The assertion's checks are
//! `crate::assertion`'s.

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;

use super::ctx::Ctx;
use super::token_request::{TokenError, TokenForm, TokenRoute};
use crate::assertion::{self, CLIENT_ASSERTION_TYPE, Issuer, Presented};
use crate::audit::Reason;
use crate::config::Credential;
use crate::state::{AppState, Client};

/// An authenticated client, as the grant needs it.
pub(super) struct Authenticated {
    pub client_id: String,
    pub billing: bool,
    pub tenants: Vec<String>,
}

fn authenticated(client_id: &str, c: &Client) -> Authenticated {
    Authenticated { client_id: client_id.to_owned(), billing: c.billing, tenants: c.tenants.iter().cloned().collect() }
}

/// Who the request's credentials prove, or why not. Fills the context's client (and, for an
/// assertion whose signature verified, its `jti`).
pub(super) fn authenticate(
    st: &AppState,
    ctx: &mut Ctx<'_>,
    headers: &HeaderMap,
    form: &TokenForm,
    route: TokenRoute,
) -> Result<Authenticated, TokenError> {
    let basic = basic_credentials(headers);
    if form.get("client_assertion").is_some() || form.get("client_assertion_type").is_some() {
        if basic.is_some() || form.get("client_secret").is_some() {
            return Err(TokenError::request(
                "use one client authentication method, not a secret (client_secret or HTTP Basic) and a client_assertion",
            ));
        }
        return by_assertion(st, ctx, form, route);
    }
    if !route.takes_secrets() {
        let named = basic.and_then(Result::ok).map(|(id, _)| id).or_else(|| form.get("client_id").map(str::to_owned));
        ctx.client_id = named;
        return Err(TokenError::bare_client(
            vec![Reason::AssertionRequired],
            "this endpoint takes signed client assertions only",
        ));
    }
    let (client_id, secret) = client_credentials(ctx, basic.transpose()?, form)?;
    by_secret(st, ctx, client_id, &secret)
}

/// A secret: `401 invalid_client` alike for an unknown client, a wrong secret and a client
/// registered for assertions; only the audit tells them apart.
fn by_secret(st: &AppState, ctx: &mut Ctx<'_>, client_id: String, secret: &str) -> Result<Authenticated, TokenError> {
    let failed = || TokenError::client("client authentication failed");
    let found = st.with_clients(|cs| {
        let c = cs.get(&client_id).ok_or_else(failed)?;
        match c.reg.credential() {
            Credential::Secret(s) if s.matches(secret) => Ok(authenticated(&client_id, c)),
            Credential::Secret(_) => Err(failed()),
            Credential::Key(_) => Err(failed().audited_as(
                Reason::SecretNotAllowed,
                "the client is registered for private_key_jwt and presented a secret",
            )),
        }
    });
    ctx.client_id = Some(client_id);
    found
}

/// A signed assertion: `client_assertion_type` must be the JWT bearer type; every refusal of
/// the assertion itself is a bare `401 invalid_client`.
fn by_assertion(
    st: &AppState,
    ctx: &mut Ctx<'_>,
    form: &TokenForm,
    route: TokenRoute,
) -> Result<Authenticated, TokenError> {
    match form.get("client_assertion_type") {
        Some(CLIENT_ASSERTION_TYPE) => {}
        Some(other) => {
            let d = format!("client_assertion_type {other:?} is not supported: use {CLIENT_ASSERTION_TYPE}");
            return Err(TokenError::request(d));
        }
        None => {
            let d = format!("client_assertion_type ({CLIENT_ASSERTION_TYPE}) is required with a client_assertion");
            return Err(TokenError::request(d));
        }
    }
    let Some(assertion) = form.get("client_assertion") else {
        return Err(TokenError::request("client_assertion is required with client_assertion_type"));
    };
    let audience = format!("{}{}", st.issuer, route.path());
    let presented =
        Presented { assertion, client_id: form.get("client_id"), audience: &audience, now: Utc::now().timestamp() };
    match assertion::verify(&presented, |iss| issuer(st, iss), &st.assertions) {
        Ok(accepted) => {
            ctx.client_id = Some(accepted.client_id.clone());
            ctx.jti = Some(accepted.jti);
            let found =
                st.with_clients(|cs| cs.get(&accepted.client_id).map(|c| authenticated(&accepted.client_id, c)));
            found.ok_or_else(|| TokenError::bare_client(vec![Reason::InvalidClient], "the client is gone"))
        }
        Err(refused) => {
            ctx.client_id = refused.client_id;
            ctx.jti = refused.jti;
            Err(TokenError::bare_client(refused.reasons, refused.detail))
        }
    }
}

fn issuer(st: &AppState, client_id: &str) -> Issuer {
    st.with_clients(|cs| match cs.get(client_id).map(|c| c.reg.credential()) {
        None => Issuer::Unknown,
        Some(Credential::Secret(_)) => Issuer::Secret,
        Some(Credential::Key(key)) => Issuer::Key(key.clone()),
    })
}

/// Secret authentication: exactly one method, HTTP Basic or `client_secret` in the body.
fn client_credentials(
    ctx: &mut Ctx<'_>,
    basic: Option<(String, String)>,
    form: &TokenForm,
) -> Result<(String, String), TokenError> {
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
