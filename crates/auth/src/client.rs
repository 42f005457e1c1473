//! The OAuth2 client-credentials request (RFC 6749 §4.4) with retries, and the measurement
//! of the token endpoint's clock skew from its `Date` header.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use billsync_domain::{AccessToken, Clock, Scope, SystemClock, TenantName, TokenError};
use chrono::{DateTime, Utc};
use reqwest::Url;
use reqwest::header::{ACCEPT, AUTHORIZATION, DATE};
use serde::Deserialize;
use tracing::Instrument;
use zeroize::Zeroizing;

use crate::assertion::{CLIENT_ASSERTION_TYPE, ClientAssertion};
use crate::config::{AuthConfig, AuthMethod, ConfigError, TenantAuth};
use crate::external::{AssertionProblem, SentJtis, check_assertion, read_assertion_file};
use crate::jwks::JwksCache;

/// The largest token response body read (1 MiB).
const MAX_BODY: usize = 1024 * 1024;
/// Measured skews smaller than this are noise (the `Date` header has 1 s resolution).
pub(crate) const SKEW_TOLERANCE: chrono::Duration = chrono::Duration::seconds(2);

/// A successful token response (RFC 6749 §5.1).
pub(crate) struct TokenGrant {
    pub access_token: AccessToken,
    pub expires_in: Option<i64>,
    /// The `scope` field, split; `None` when absent (= as requested, RFC 6749 §5.1).
    pub granted_scope: Option<Vec<String>>,
    pub requested_scope: Vec<String>,
    /// Local time when the response arrived.
    pub received_at: DateTime<Utc>,
    /// Server time − local time, as measured from `Date` (raw).
    pub measured_skew: Option<chrono::Duration>,
}

impl fmt::Debug for TokenGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenGrant")
            .field("access_token", &self.access_token)
            .field("expires_in", &self.expires_in)
            .field("granted_scope", &self.granted_scope)
            .field("measured_skew", &self.measured_skew)
            .finish()
    }
}

impl TokenGrant {
    /// The skew used for corrections: the measured one unless it is within the noise.
    pub fn skew(&self) -> chrono::Duration {
        effective_skew(self.measured_skew)
    }
    /// Server time at reception.
    pub fn server_received_at(&self) -> DateTime<Utc> {
        shift(self.received_at, self.skew())
    }
}

pub(crate) fn effective_skew(measured: Option<chrono::Duration>) -> chrono::Duration {
    match measured {
        Some(s) if s.abs() > SKEW_TOLERANCE => s,
        _ => chrono::Duration::zero(),
    }
}

/// `t + d`, saturating instead of overflowing.
pub(crate) fn shift(t: DateTime<Utc>, d: chrono::Duration) -> DateTime<Utc> {
    t.checked_add_signed(d).unwrap_or(if d < chrono::Duration::zero() {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

/// A failed token request, with whether the endpoint answered at all (for the diagnosis).
#[derive(Debug)]
pub(crate) struct FetchFailure {
    pub reachable: bool,
    pub error: TokenError,
}

enum Attempt {
    Retry { reachable: bool, reason: String },
    Final { reachable: bool, error: TokenError },
}

/// Talks to the token endpoint and the JWKS for any number of tenants. Cheap to clone.
#[derive(Clone)]
pub struct OAuthClient {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub http: reqwest::Client,
    pub config: AuthConfig,
    pub clock: Arc<dyn Clock>,
    pub jwks: JwksCache,
    requests: Mutex<HashMap<TenantName, u64>>,
    last_skew: Mutex<Option<chrono::Duration>>,
    /// The last skew measured per token URL (tenants may have their own endpoint).
    skews: Mutex<HashMap<String, chrono::Duration>>,
    /// The `jti`s of client assertion files already sent, so that one is never sent twice.
    sent_jtis: Mutex<SentJtis>,
}

impl fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthClient")
            .field("token_url", &self.inner.config.token_url())
            .field("jwks_url", &self.inner.config.jwks_url())
            .finish_non_exhaustive()
    }
}

impl OAuthClient {
    /// A client using the system clock.
    ///
    /// # Errors
    /// [`ConfigError::Http`] if the HTTP client cannot be built.
    pub fn new(config: AuthConfig) -> Result<Self, ConfigError> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// A client reading the time from `clock` (for tests and simulations).
    ///
    /// # Errors
    /// [`ConfigError::Http`] if the HTTP client cannot be built.
    pub fn with_clock(config: AuthConfig, clock: Arc<dyn Clock>) -> Result<Self, ConfigError> {
        let http = config.http().client(concat!("billsync-auth/", env!("CARGO_PKG_VERSION")))?;
        let jwks = JwksCache::new(config.jwks_url_parsed().clone());
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                config,
                clock,
                jwks,
                requests: Mutex::new(HashMap::new()),
                last_skew: Mutex::new(None),
                skews: Mutex::new(HashMap::new()),
                sent_jtis: Mutex::new(SentJtis::default()),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AuthConfig {
        &self.inner.config
    }

    /// How many HTTP requests were sent to the token endpoint for a tenant (retries included).
    pub fn token_requests(&self, tenant: &TenantName) -> u64 {
        self.inner.requests.lock().unwrap_or_else(|p| p.into_inner()).get(tenant).copied().unwrap_or(0)
    }

    /// The token endpoint's clock minus ours, as last measured from its `Date` header.
    pub fn last_clock_skew(&self) -> Option<chrono::Duration> {
        *self.inner.last_skew.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count_request(&self, tenant: &TenantName) {
        *self.inner.requests.lock().unwrap_or_else(|p| p.into_inner()).entry(tenant.clone()).or_insert(0) += 1;
    }

    /// Requests a token, retrying 5xx and network errors with backoff.
    pub(crate) async fn request_token(&self, auth: &TenantAuth) -> Result<TokenGrant, FetchFailure> {
        self.request_token_for(auth, auth.scopes()).await
    }

    /// Requests a token for `scopes` instead of the tenant's configured ones, with its
    /// credentials and other settings (the token cache's read slot).
    pub(crate) async fn request_token_for(
        &self,
        auth: &TenantAuth,
        scopes: &[Scope],
    ) -> Result<TokenGrant, FetchFailure> {
        let tenant = auth.tenant();
        let span = tracing::info_span!(
            "token_request",
            tenant = %tenant.name(),
            client_id = %tenant.client_id(),
            auth_method = %auth.auth_method(),
            scope = %scope_param(scopes),
        );
        self.attempts(auth, scopes).instrument(span).await
    }

    /// The attempts of one token request. A refused client assertion is signed and sent once
    /// more when the refusal's `Date` revealed a clock skew the assertion did not account for.
    async fn attempts(&self, auth: &TenantAuth, scopes: &[Scope]) -> Result<TokenGrant, FetchFailure> {
        let retry = *self.inner.config.retry();
        let url = self.endpoint(auth);
        let (mut reachable, mut attempt, mut resigned) = (false, 1, false);
        loop {
            let skew = self.endpoint_skew(&url);
            match self.attempt(auth, scopes, &url).await {
                Ok(grant) => {
                    tracing::debug!(attempt, expires_in = ?grant.expires_in, "token issued");
                    return Ok(grant);
                }
                Err(Attempt::Final { reachable: r, error }) => {
                    reachable |= r;
                    if !resigned && self.skew_revealed(auth, &url, skew, &error) {
                        tracing::info!(attempt, error = %error, "client assertion refused; the token endpoint's clock differs from ours, signing again on its time");
                        resigned = true;
                        continue;
                    }
                    tracing::warn!(attempt, error = %error, "token request refused");
                    return Err(FetchFailure { reachable, error });
                }
                Err(Attempt::Retry { reachable: r, reason }) => {
                    reachable |= r;
                    if attempt >= retry.max_attempts() {
                        tracing::warn!(attempt, %reason, "token endpoint unavailable, giving up");
                        let error = TokenError::Unavailable(format!(
                            "{reason} (after {attempt} attempt{})",
                            if attempt == 1 { "" } else { "s" }
                        ));
                        return Err(FetchFailure { reachable, error });
                    }
                    let wait = retry.backoff(attempt);
                    tracing::info!(attempt, %reason, wait_ms = wait.as_millis() as u64, "token request failed, retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    /// Whether a refused `private_key_jwt` request was signed with another skew than the one
    /// now measured for its endpoint (typically: the first request, before any `Date` was seen).
    fn skew_revealed(&self, auth: &TenantAuth, url: &Url, used: chrono::Duration, error: &TokenError) -> bool {
        auth.private_key().is_some() && matches!(error, TokenError::Refused { .. }) && self.endpoint_skew(url) != used
    }

    /// The token URL a tenant's requests go to, as posted (no fragment).
    pub(crate) fn endpoint(&self, auth: &TenantAuth) -> Url {
        let mut url = auth.token_url_parsed().unwrap_or(self.inner.config.token_url_parsed()).clone();
        url.set_fragment(None);
        url
    }

    /// The skew to correct our clock by for `url`: the last measured there, unless it is noise.
    fn endpoint_skew(&self, url: &Url) -> chrono::Duration {
        effective_skew(self.measured_skew_at(url))
    }

    /// The skew last measured for `url`, raw.
    pub(crate) fn measured_skew_at(&self, url: &Url) -> Option<chrono::Duration> {
        self.inner.skews.lock().unwrap_or_else(|p| p.into_inner()).get(url.as_str()).copied()
    }

    fn record_skew(&self, url: &Url, skew: chrono::Duration) {
        *self.inner.last_skew.lock().unwrap_or_else(|p| p.into_inner()) = Some(skew);
        self.inner.skews.lock().unwrap_or_else(|p| p.into_inner()).insert(url.as_str().to_owned(), skew);
    }

    /// One request to the token endpoint: a grant, a failure worth retrying, or a final one.
    async fn attempt(&self, auth: &TenantAuth, scopes: &[Scope], url: &Url) -> Result<TokenGrant, Attempt> {
        let req = self.token_request(auth, scopes, url).map_err(|error| Attempt::Final { reachable: false, error })?;
        self.count_request(auth.tenant().name());
        let sent_at = self.inner.clock.now();
        let resp = req.send().await.map_err(|e| Attempt::Retry { reachable: false, reason: describe(&e) })?;
        let received_at = self.inner.clock.now();
        let status = resp.status();
        let measured_skew = measure_skew(resp.headers(), sent_at, received_at);
        if let Some(skew) = measured_skew {
            self.record_skew(url, skew);
        }
        let body = read_capped(resp).await.map_err(|reason| Attempt::Retry { reachable: true, reason })?;
        let (access_token, expires_in, granted_scope) = classify_answer(status, &body)?;
        Ok(TokenGrant {
            access_token,
            expires_in,
            granted_scope,
            requested_scope: scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            received_at,
            measured_skew,
        })
    }

    /// Builds the client-credentials request to `url`, authenticated as the tenant's
    /// `auth_method` says.
    fn token_request(
        &self,
        auth: &TenantAuth,
        scopes: &[Scope],
        url: &Url,
    ) -> Result<reqwest::RequestBuilder, TokenError> {
        let tenant = auth.tenant();
        let scope = scope_param(scopes);
        let assertion: ClientAssertion;
        let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials"), ("scope", &scope)];
        let mut req = self.inner.http.post(url.clone()).header(ACCEPT, "application/json");
        match auth.auth_method() {
            AuthMethod::ClientSecretPost => {
                form.push(("client_id", tenant.client_id().as_str()));
                form.push(("client_secret", auth.secret().secret()));
            }
            AuthMethod::ClientSecretBasic => {
                req =
                    req.header(AUTHORIZATION, basic_authorization(tenant.client_id().as_str(), auth.secret().secret()));
            }
            AuthMethod::PrivateKeyJwt => {
                assertion = self.client_assertion(auth, url)?;
                form.push(("client_assertion_type", CLIENT_ASSERTION_TYPE));
                form.push(("client_assertion", assertion.secret()));
                form.push(("client_id", tenant.client_id().as_str()));
            }
        }
        for (k, v) in auth.extra_params() {
            form.push((k, v));
        }
        Ok(req.form(&form))
    }

    /// A client assertion for `url`: signed now on the endpoint's clock (ours corrected by the
    /// skew measured from its `Date` header) with the tenant's key, or read from its file and
    /// checked on that clock.
    fn client_assertion(&self, auth: &TenantAuth, url: &Url) -> Result<ClientAssertion, TokenError> {
        let tenant = auth.tenant();
        if let Some(path) = auth.assertion_file() {
            return self.assertion_from_file(auth, path, url, true).map_err(|p| TokenError::Credential {
                code: p.code().into(),
                reason: format!("tenant {}: {p}", tenant.name()),
            });
        }
        let key = auth.private_key().ok_or_else(|| TokenError::Credential {
            code: "missing_private_key".into(),
            reason: format!(
                "tenant {} authenticates with private_key_jwt but has neither a private key nor a client assertion file",
                tenant.name()
            ),
        })?;
        let issued_at = shift(self.inner.clock.now(), self.endpoint_skew(url));
        key.sign_assertion(tenant.client_id().as_str(), url.as_str(), issued_at, auth.assertion_lifetime())
            .map_err(|e| TokenError::Refused { error: "client_assertion".into(), description: Some(e.to_string()) })
    }
}

impl OAuthClient {
    /// Reads and checks the tenant's client assertion file for a request to `url`; with
    /// `send`, records its `jti` as sent. A file not rotated since it was last sent is refused
    /// before it is sent again.
    fn assertion_from_file(
        &self,
        auth: &TenantAuth,
        path: &std::path::Path,
        url: &Url,
        send: bool,
    ) -> Result<ClientAssertion, AssertionProblem> {
        let text = read_assertion_file(path)?;
        let now = shift(self.inner.clock.now(), self.endpoint_skew(url));
        let checked = check_assertion(&text, auth.tenant().client_id().as_str(), url.as_str(), now)?;
        let tenant = auth.tenant().name().as_str();
        let mut sent = self.inner.sent_jtis.lock().unwrap_or_else(|p| p.into_inner());
        if sent.seen(tenant, checked.jti(), now) {
            return Err(AssertionProblem::NotRotated { jti: checked.jti().to_owned() });
        }
        if send {
            sent.record(tenant, checked.jti(), checked.expires_at());
        }
        Ok(checked.into_assertion())
    }

    /// Checks the tenant's client assertion file as a token request would, without sending it
    /// or recording it as sent (for `billsync doctor`); `None` without a file.
    pub(crate) fn check_assertion_file(&self, auth: &TenantAuth) -> Option<Result<(), AssertionProblem>> {
        let path = auth.assertion_file()?;
        Some(self.assertion_from_file(auth, path, &self.endpoint(auth), false).map(drop))
    }
}

/// Scopes as sent: space-separated.
fn scope_param(scopes: &[Scope]) -> String {
    scopes.iter().map(Scope::as_str).collect::<Vec<_>>().join(" ")
}

/// The token endpoint's clock minus ours, from its `Date` header, when it sent a readable one.
fn measure_skew(
    headers: &reqwest::header::HeaderMap,
    sent_at: DateTime<Utc>,
    received_at: DateTime<Utc>,
) -> Option<chrono::Duration> {
    headers.get(DATE).and_then(|v| v.to_str().ok()).and_then(|s| DateTime::parse_from_rfc2822(s).ok()).map(|d| {
        // The Date header is truncated to the second: its true value is on average
        // half a second later; the request's midpoint is our best local estimate.
        let server = d.with_timezone(&Utc) + chrono::Duration::milliseconds(500);
        let local = sent_at + (received_at - sent_at) / 2;
        server - local
    })
}

/// Sorts a token endpoint's answer by status: a token response, a 5xx worth retrying, or a
/// final failure (429, any other 4xx, anything else).
fn classify_answer(status: reqwest::StatusCode, body: &[u8]) -> Result<TokenResponse, Attempt> {
    if status.is_success() {
        return parse_success(body).map_err(|e| Attempt::Final { reachable: true, error: e });
    }
    if status.is_server_error() {
        return Err(Attempt::Retry { reachable: true, reason: format!("the token endpoint answered HTTP {status}") });
    }
    if status.as_u16() == 429 {
        return Err(Attempt::Final {
            reachable: true,
            error: TokenError::Unavailable("the token endpoint is rate limiting (HTTP 429)".into()),
        });
    }
    if status.is_client_error() {
        return Err(Attempt::Final { reachable: true, error: parse_error(status, body) });
    }
    Err(Attempt::Final {
        reachable: true,
        error: TokenError::Malformed(format!("unexpected HTTP status {status} from the token endpoint")),
    })
}

/// `application/x-www-form-urlencoded` encoding, as RFC 6749 §2.3.1 requires for Basic.
pub(crate) fn form_urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "the token endpoint did not answer in time"
    } else if e.is_connect() {
        "could not connect to the token endpoint"
    } else {
        "the request to the token endpoint failed"
    };
    billsync_http::describe(what, e)
}

async fn read_capped(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(format!("the token endpoint's answer is larger than {MAX_BODY} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(describe(&e)),
        }
    }
}

/// A token endpoint's answer as billsync reads it: the access token (redacted in `Debug`),
/// `expires_in` in seconds (clamped to between -1 and ten years) and the granted scopes.
pub type TokenResponse = (AccessToken, Option<i64>, Option<Vec<String>>);

/// Parses a token endpoint's answer the way the token cache does: a `2xx` body as an RFC 6749
/// §5.1 token response, a `4xx` body as an RFC 6749 §5.2 error. Exposed so that the parser can
/// be fuzzed and tested on its own; it never panics and never echoes the body (which holds the
/// token) in an error.
///
/// # Errors
/// [`TokenError::Malformed`] for a `2xx` body that is not a usable token response, or a status
/// that is neither `2xx` nor `4xx`; [`TokenError::Refused`] for a `4xx`, with the server's
/// `error` and `error_description` (made printable and short).
pub fn parse_token_response(status: u16, body: &[u8]) -> Result<TokenResponse, TokenError> {
    match reqwest::StatusCode::from_u16(status) {
        Ok(s) if s.is_success() => parse_success(body),
        Ok(s) if s.is_client_error() => Err(parse_error(s, body)),
        _ => Err(TokenError::Malformed(format!("unexpected HTTP status {status} from the token endpoint"))),
    }
}

#[derive(Deserialize)]
struct SuccessBody {
    access_token: Option<serde_json::Value>,
    token_type: Option<serde_json::Value>,
    expires_in: Option<serde_json::Value>,
    scope: Option<serde_json::Value>,
}

/// Parses RFC 6749 §5.1. Never echoes the body (it holds the token).
fn parse_success(body: &[u8]) -> Result<TokenResponse, TokenError> {
    let b: SuccessBody = serde_json::from_slice(body).map_err(|e| {
        TokenError::Malformed(format!(
            "HTTP 200 but the body is not a JSON token response (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let token = match b.access_token {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s,
        Some(serde_json::Value::String(_)) => return Err(TokenError::Malformed("access_token is empty".into())),
        Some(_) => return Err(TokenError::Malformed("access_token is not a string".into())),
        None => return Err(TokenError::Malformed("the token response has no access_token".into())),
    };
    if !token.bytes().all(|c| c.is_ascii_graphic()) {
        return Err(TokenError::Malformed(
            "access_token contains characters that cannot be sent in an Authorization header".into(),
        ));
    }
    match b.token_type {
        None => {}
        Some(serde_json::Value::String(t)) if t.eq_ignore_ascii_case("bearer") => {}
        Some(serde_json::Value::String(t)) => {
            return Err(TokenError::Malformed(format!("token_type is {t:?}; billing needs a Bearer token")));
        }
        Some(_) => return Err(TokenError::Malformed("token_type is not a string".into())),
    }
    let expires_in = match b.expires_in {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => {
            n.as_i64().or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
        }
        Some(serde_json::Value::String(s)) => s.trim().parse::<i64>().ok(),
        Some(_) => None,
    }
    .map(|s| s.clamp(-1, 10 * 365 * 24 * 3600));
    let scope = match b.scope {
        Some(serde_json::Value::String(s)) => Some(s.split_whitespace().map(str::to_owned).collect()),
        Some(serde_json::Value::Array(v)) => {
            Some(v.into_iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
        }
        _ => None,
    };
    Ok((AccessToken::new(token), expires_in, scope))
}

#[derive(Deserialize)]
struct ErrorBody {
    error: Option<String>,
    error_description: Option<String>,
}

/// Parses RFC 6749 §5.2.
fn parse_error(status: reqwest::StatusCode, body: &[u8]) -> TokenError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error: Some(error), error_description }) => TokenError::Refused {
            error: printable(&error, 64),
            description: error_description.map(|d| printable(&d, 500)),
        },
        _ => TokenError::Refused {
            error: format!("http_{}", status.as_u16()),
            description: Some(format!(
                "the token endpoint answered HTTP {status} without an RFC 6749 error body; check token_url and the client credentials"
            )),
        },
    }
}

/// Keeps server-provided text printable and short.
fn printable(s: &str, max: usize) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).take(max).collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

/// `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 section 2.3.1), marked sensitive so
/// that HTTP tooling never prints it; the intermediate copies of the secret are zeroized.
fn basic_authorization(client_id: &str, secret: &str) -> reqwest::header::HeaderValue {
    let creds = Zeroizing::new(format!("{}:{}", form_urlencode(client_id), *Zeroizing::new(form_urlencode(secret))));
    let value = Zeroizing::new(format!("Basic {}", STANDARD.encode(creds.as_bytes())));
    // Base64 and "Basic " are visible ASCII, always a valid header value.
    let mut header = reqwest::header::HeaderValue::from_str(&value)
        .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static("Basic"));
    header.set_sensitive(true);
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_basic_authorization_header_is_marked_sensitive() {
        use billsync_domain::{ApplicationId, ClientId, ClientSecret, Tenant, TenantId, TenantName};
        let tenant = Tenant::new(
            TenantName::parse("acme").unwrap(),
            TenantId::parse("acme-prod-001").unwrap(),
            ApplicationId::parse("app-acme").unwrap(),
            ClientId::parse("app-acme").unwrap(),
        );
        let auth = TenantAuth::new(tenant, ClientSecret::new("s3cret")).with_auth_method(AuthMethod::ClientSecretBasic);
        let client = OAuthClient::new(AuthConfig::new("https://idcs.example.com/oauth2/v1/token").unwrap()).unwrap();

        let url = client.endpoint(&auth);
        let request = client.token_request(&auth, auth.scopes(), &url).unwrap().build().unwrap();
        let value = &request.headers()[AUTHORIZATION];
        assert_eq!(value.to_str().unwrap(), format!("Basic {}", STANDARD.encode("app-acme:s3cret")));
        assert!(value.is_sensitive(), "tooling that prints headers would show the client secret");
    }

    #[test]
    fn form_urlencoding_follows_rfc6749_appendix_b() {
        assert_eq!(form_urlencode("abc-._*XYZ09"), "abc-._*XYZ09");
        assert_eq!(form_urlencode("a b:c/é%"), "a+b%3Ac%2F%C3%A9%25");
    }

    #[test]
    fn success_bodies_are_parsed_without_echoing_the_token() {
        let (t, exp, scope) =
            parse_success(br#"{"access_token":"abc.def.ghi","token_type":"bearer","expires_in":"900","scope":"a b"}"#)
                .unwrap();
        assert_eq!((t.secret(), exp, scope), ("abc.def.ghi", Some(900), Some(vec!["a".into(), "b".into()])));
        for body in [
            &br#"{"access_token":"s3cr3t-token","token_type":"mac"}"#[..],
            br#"{"access_token":"s3cr3t token"}"#,
            br#"{"token_type":"Bearer"}"#,
            br#"s3cr3t-token"#,
            br#"{"access_token":""}"#,
        ] {
            let e = parse_success(body).unwrap_err();
            assert!(matches!(e, TokenError::Malformed(_)), "{e:?}");
            assert!(!e.to_string().contains("s3cr3t"), "{e}");
        }
    }

    #[test]
    fn error_bodies_surface_error_and_description() {
        let e = parse_error(
            reqwest::StatusCode::UNAUTHORIZED,
            br#"{"error":"invalid_client","error_description":"Client authentication failed"}"#,
        );
        assert_eq!(
            e,
            TokenError::Refused {
                error: "invalid_client".into(),
                description: Some("Client authentication failed".into())
            }
        );
        let e = parse_error(reqwest::StatusCode::FORBIDDEN, b"<html>nope</html>");
        assert!(matches!(&e, TokenError::Refused { error, .. } if error == "http_403"), "{e:?}");
    }

    #[test]
    fn small_skews_are_noise() {
        assert_eq!(effective_skew(Some(chrono::Duration::milliseconds(1500))), chrono::Duration::zero());
        assert_eq!(effective_skew(Some(chrono::Duration::seconds(-300))), chrono::Duration::seconds(-300));
        assert_eq!(effective_skew(None), chrono::Duration::zero());
    }
}
