//! Configuration: the shared [`AuthConfig`] (token endpoint, JWKS, policies, timeouts) and
//! one [`TenantAuth`] per tenant (client credentials, scope, extra token parameters).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use billsync_domain::{BILLING_WRITE_SCOPE, BillingPolicy, ClientSecret, RefreshPolicy, Scope, Tenant};
use billsync_http::HttpSettings;
use reqwest::Url;

use crate::assertion::{AssertionKey, DEFAULT_ASSERTION_LIFETIME, KeyError, MAX_ASSERTION_LIFETIME};

/// What is wrong with an authentication setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A URL that does not parse or is not `http`/`https`.
    #[error("{what} {url:?} is not a usable URL: {reason}")]
    InvalidUrl {
        /// `token_url` or `jwks_url`.
        what: &'static str,
        /// The value given.
        url: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// An extra token parameter that would override one billsync sets itself.
    #[error(
        "extra token parameter {name:?} is set by billsync itself (grant_type, scope, client_id, client_secret, client_assertion_type, client_assertion); remove it from extra_token_params"
    )]
    ReservedParameter {
        /// The parameter's name.
        name: String,
    },
    /// An extra token parameter with an empty name.
    #[error("an extra token parameter has an empty name")]
    EmptyParameterName,
    /// An unknown client authentication method.
    #[error("unknown token endpoint auth method {0:?}: use client_secret_post, client_secret_basic or private_key_jwt")]
    UnknownAuthMethod(String),
    /// The HTTP client could not be built (the CA bundle, TLS initialisation).
    #[error("the HTTP client could not be built")]
    Http(#[from] billsync_http::HttpSetupError),
    /// The same tenant was configured twice.
    #[error("tenant {0} is configured twice")]
    DuplicateTenant(String),
    /// A client assertion lifetime of zero or over 300 seconds.
    #[error("assertion_lifetime {seconds} s is not allowed: a client assertion lives from 1 to 300 seconds")]
    AssertionLifetime {
        /// The lifetime given, in whole seconds.
        seconds: u64,
    },
    /// A tenant set to `private_key_jwt` without a private key.
    #[error("tenant {tenant} authenticates with private_key_jwt but has no private key")]
    MissingPrivateKey {
        /// The tenant's name.
        tenant: String,
    },
    /// A private key that cannot sign client assertions.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// How the client authenticates at the token endpoint (`auth_method` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// `client_id` and `client_secret` in the form body (the thread's way; the default).
    #[default]
    ClientSecretPost,
    /// HTTP Basic with the form-urlencoded id and secret (RFC 6749 §2.3.1).
    ClientSecretBasic,
    /// A JWT client assertion signed with the tenant's private key (RFC 7523 §2.2); no secret.
    PrivateKeyJwt,
}

impl AuthMethod {
    /// The name used in configuration files (`client_secret_post`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientSecretPost => "client_secret_post",
            Self::ClientSecretBasic => "client_secret_basic",
            Self::PrivateKeyJwt => "private_key_jwt",
        }
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AuthMethod {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "client_secret_post" | "post" => Ok(Self::ClientSecretPost),
            "client_secret_basic" | "basic" => Ok(Self::ClientSecretBasic),
            "private_key_jwt" => Ok(Self::PrivateKeyJwt),
            other => Err(ConfigError::UnknownAuthMethod(other.to_owned())),
        }
    }
}

const RESERVED_PARAMS: [&str; 6] =
    ["grant_type", "scope", "client_id", "client_secret", "client_assertion_type", "client_assertion"];

/// One tenant's client credentials and token request settings.
///
/// Not `Clone`: it holds the client secret or private key. Its `Debug` never shows either.
#[derive(Debug)]
pub struct TenantAuth {
    tenant: Tenant,
    secret: ClientSecret,
    auth_method: AuthMethod,
    scopes: Vec<Scope>,
    extra_params: BTreeMap<String, String>,
    verify_jwks: bool,
    private_key: Option<AssertionKey>,
    assertion_file: Option<PathBuf>,
    assertion_lifetime: Duration,
    token_url: Option<Url>,
}

impl TenantAuth {
    /// A tenant using `client_secret_post`, scope `urn:oracle:iot:billing:write`, no extra
    /// parameters and no signature verification.
    pub fn new(tenant: Tenant, secret: ClientSecret) -> Self {
        Self {
            tenant,
            secret,
            auth_method: AuthMethod::default(),
            scopes: vec![default_scope()],
            extra_params: BTreeMap::new(),
            verify_jwks: false,
            private_key: None,
            assertion_file: None,
            assertion_lifetime: DEFAULT_ASSERTION_LIFETIME,
            token_url: None,
        }
    }

    /// A tenant using `private_key_jwt` with `key` (no client secret), otherwise as
    /// [`TenantAuth::new`].
    pub fn new_private_key_jwt(tenant: Tenant, key: AssertionKey) -> Self {
        Self::new(tenant, ClientSecret::new("")).with_private_key(key)
    }

    /// Signs client assertions with `key` and switches the method to `private_key_jwt`.
    pub fn with_private_key(mut self, key: AssertionKey) -> Self {
        self.private_key = Some(key);
        self.assertion_file = None;
        self.auth_method = AuthMethod::PrivateKeyJwt;
        self
    }

    /// A tenant using `private_key_jwt` with assertions minted outside billsync (by an HSM, a
    /// KMS or a signing sidecar) and written to `path`, otherwise as [`TenantAuth::new`]. The
    /// file is read afresh for every token request and checked before use
    /// ([`crate::check_assertion`]). Since each assertion serves one token request, the
    /// tenant asks for the billing write and read scopes in one token.
    pub fn new_assertion_file(tenant: Tenant, path: impl Into<PathBuf>) -> Self {
        Self::new(tenant, ClientSecret::new("")).with_assertion_file(path)
    }

    /// Sends the client assertion found in `path` at each token request and switches the
    /// method to `private_key_jwt`; the scopes become the billing write and read scopes
    /// (replace them with [`TenantAuth::with_scopes`] afterwards if the client needs others).
    pub fn with_assertion_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.assertion_file = Some(path.into());
        self.private_key = None;
        self.auth_method = AuthMethod::PrivateKeyJwt;
        self.scopes = vec![default_scope(), Scope::billing_read()];
        self
    }

    /// How long each client assertion lives (`exp - iat`, whole seconds; default 60 s).
    ///
    /// # Errors
    /// [`ConfigError::AssertionLifetime`] unless it is from 1 to 300 seconds.
    pub fn with_assertion_lifetime(mut self, lifetime: Duration) -> Result<Self, ConfigError> {
        if lifetime < Duration::from_secs(1) || lifetime > MAX_ASSERTION_LIFETIME {
            return Err(ConfigError::AssertionLifetime { seconds: lifetime.as_secs() });
        }
        self.assertion_lifetime = lifetime;
        Ok(self)
    }

    /// Requests this tenant's tokens from `url` instead of the configuration's token URL. With
    /// `private_key_jwt`, the assertion's `aud` is this URL as posted (parsed, without fragment).
    ///
    /// # Errors
    /// [`ConfigError::InvalidUrl`] unless it is an absolute `http`/`https` URL without
    /// credentials.
    pub fn with_token_url(mut self, url: &str) -> Result<Self, ConfigError> {
        let mut url = parse_url("token_url", url)?;
        url.set_fragment(None);
        self.token_url = Some(url);
        Ok(self)
    }

    /// Sets the client authentication method.
    pub fn with_auth_method(mut self, method: AuthMethod) -> Self {
        self.auth_method = method;
        self
    }

    /// Requests exactly this scope (instead of the billing write URN).
    pub fn with_scope(mut self, scope: Scope) -> Self {
        self.scopes = vec![scope];
        self
    }

    /// Requests these scopes (space-separated on the wire); an empty list means the default.
    pub fn with_scopes(mut self, scopes: impl IntoIterator<Item = Scope>) -> Self {
        let mut v: Vec<Scope> = Vec::new();
        for s in scopes {
            if !v.contains(&s) {
                v.push(s);
            }
        }
        self.scopes = if v.is_empty() { vec![default_scope()] } else { v };
        self
    }

    /// Adds an extra token request parameter (`audience`, `resource`, `tenant_id`, ...).
    ///
    /// # Errors
    /// [`ConfigError::ReservedParameter`] for `grant_type`, `scope`, `client_id` and
    /// `client_secret`, which billsync sets itself; [`ConfigError::EmptyParameterName`].
    pub fn with_extra_param(mut self, name: impl Into<String>, value: impl Into<String>) -> Result<Self, ConfigError> {
        let name = name.into();
        if name.is_empty() {
            return Err(ConfigError::EmptyParameterName);
        }
        if RESERVED_PARAMS.contains(&name.as_str()) {
            return Err(ConfigError::ReservedParameter { name });
        }
        self.extra_params.insert(name, value.into());
        Ok(self)
    }

    /// Whether to verify the token's RS256 signature against the JWKS before using it.
    pub fn with_jwks_verification(mut self, verify: bool) -> Self {
        self.verify_jwks = verify;
        self
    }

    /// The tenant.
    pub fn tenant(&self) -> &Tenant {
        &self.tenant
    }
    /// The client authentication method.
    pub fn auth_method(&self) -> AuthMethod {
        self.auth_method
    }
    /// The scopes requested.
    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }
    /// The scopes as sent: space-separated.
    pub fn scope_param(&self) -> String {
        self.scopes.iter().map(Scope::as_str).collect::<Vec<_>>().join(" ")
    }
    /// The extra token parameters.
    pub fn extra_params(&self) -> &BTreeMap<String, String> {
        &self.extra_params
    }
    /// Whether signatures are verified against the JWKS.
    pub fn verify_jwks(&self) -> bool {
        self.verify_jwks
    }
    /// The key that signs client assertions, when one is set.
    pub fn private_key(&self) -> Option<&AssertionKey> {
        self.private_key.as_ref()
    }
    /// The file holding the client assertion minted outside billsync, when one is set.
    pub fn assertion_file(&self) -> Option<&Path> {
        self.assertion_file.as_deref()
    }
    /// Whether a `private_key_jwt` tenant has what it signs or sends with: a key or a file.
    pub(crate) fn has_assertion_source(&self) -> bool {
        self.private_key.is_some() || self.assertion_file.is_some()
    }
    /// How long each client assertion lives.
    pub fn assertion_lifetime(&self) -> Duration {
        self.assertion_lifetime
    }
    /// This tenant's own token URL, when it overrides the configuration's.
    pub fn token_url(&self) -> Option<&str> {
        self.token_url.as_ref().map(Url::as_str)
    }
    pub(crate) fn token_url_parsed(&self) -> Option<&Url> {
        self.token_url.as_ref()
    }
    pub(crate) fn secret(&self) -> &ClientSecret {
        &self.secret
    }
}

fn default_scope() -> Scope {
    // The constant is a valid scope; the fallback is unreachable but avoids a panic path.
    Scope::parse(BILLING_WRITE_SCOPE).unwrap_or_else(|_| BillingPolicy::default().scope().clone())
}

/// How often and how fast to retry the token endpoint on 5xx and network errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 3, initial_backoff: Duration::from_millis(250), max_backoff: Duration::from_secs(4) }
    }
}

impl RetryPolicy {
    /// At most `max_attempts` requests (at least 1, at most 10), waiting `initial_backoff`
    /// doubled after each failure, capped at `max_backoff`, with jitter.
    pub fn new(max_attempts: u32, initial_backoff: Duration, max_backoff: Duration) -> Self {
        Self { max_attempts: max_attempts.clamp(1, 10), initial_backoff, max_backoff: max_backoff.max(initial_backoff) }
    }
    /// Attempts per token request.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }
    /// The wait after the `failures`-th consecutive failure: exponential, capped, and
    /// jittered into `[d/2, d]`.
    pub fn backoff(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(20);
        let d = self.initial_backoff.saturating_mul(1u32 << exp).min(self.max_backoff);
        let half = d / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        let extra = if jitter_ms == 0 { 0 } else { rand::random::<u64>() % (jitter_ms + 1) };
        half + Duration::from_millis(extra)
    }
}

/// The default timeout of a request to the token endpoint or the JWKS.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Settings shared by all tenants: where the token endpoint and the JWKS are, the billing
/// and refresh policies, how to connect (shared with the billing transport) and retries.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    token_url: Url,
    jwks_url: Url,
    policy: BillingPolicy,
    refresh: RefreshPolicy,
    http: HttpSettings,
    retry: RetryPolicy,
    opaque_lifetime: Duration,
    token_issuer: Option<String>,
    read_scope: Scope,
}

impl AuthConfig {
    /// A configuration for this token endpoint, with the JWKS at the endpoint's origin +
    /// `/oauth2/v1/keys`, the default policies, a 10 s timeout and 3 attempts.
    ///
    /// # Errors
    /// [`ConfigError::InvalidUrl`] unless `token_url` is an absolute `http`/`https` URL.
    pub fn new(token_url: &str) -> Result<Self, ConfigError> {
        let token_url = parse_url("token_url", token_url)?;
        let mut jwks_url = token_url.clone();
        jwks_url.set_path("/oauth2/v1/keys");
        jwks_url.set_query(None);
        jwks_url.set_fragment(None);
        Ok(Self {
            token_url,
            jwks_url,
            policy: BillingPolicy::default(),
            refresh: RefreshPolicy::default(),
            http: HttpSettings::default().with_timeout(TIMEOUT).with_connect_timeout(TIMEOUT),
            retry: RetryPolicy::default(),
            opaque_lifetime: Duration::from_secs(900),
            token_issuer: None,
            read_scope: Scope::billing_read(),
        })
    }

    /// Connects as `http` says: the settings the billing transport uses too (timeouts, and the
    /// CA bundle of a token endpoint and JWKS behind a private CA, `platform.ca_file`).
    pub fn with_http(mut self, http: HttpSettings) -> Self {
        self.http = http;
        self
    }

    /// Sets the JWKS URL.
    ///
    /// # Errors
    /// [`ConfigError::InvalidUrl`] unless it is an absolute `http`/`https` URL.
    pub fn with_jwks_url(mut self, url: &str) -> Result<Self, ConfigError> {
        self.jwks_url = parse_url("jwks_url", url)?;
        Ok(self)
    }
    /// Sets the billing policy tokens are checked against.
    pub fn with_policy(mut self, policy: BillingPolicy) -> Self {
        self.policy = policy;
        self
    }
    /// Sets when tokens are refreshed.
    pub fn with_refresh(mut self, refresh: RefreshPolicy) -> Self {
        self.refresh = refresh;
        self
    }
    /// Sets the timeout of one HTTP request to the token endpoint or the JWKS (and of its
    /// connect).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.http = self.http.with_timeout(timeout).with_connect_timeout(timeout);
        self
    }
    /// Sets the retry policy for 5xx and network errors.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
    /// Sets the lifetime assumed for an opaque token whose response has no `expires_in`
    /// (default 15 minutes).
    pub fn with_opaque_lifetime(mut self, lifetime: Duration) -> Self {
        self.opaque_lifetime = lifetime;
        self
    }

    /// Requires every access token's `iss` claim to be exactly `issuer` (RFC 8725 §3.8); a
    /// token with another or no `iss` is refused with `wrong_issuer`. Unset (the default), `iss`
    /// is not checked. An empty `issuer` unsets it.
    pub fn with_token_issuer(mut self, issuer: impl Into<String>) -> Self {
        let issuer = issuer.into();
        self.token_issuer = (!issuer.is_empty()).then_some(issuer);
        self
    }

    /// Sets the scope of read tokens ([`crate::TokenCache::read_headers`], for
    /// reconciliation); default `urn:oracle:iot:billing:read`.
    pub fn with_read_scope(mut self, scope: Scope) -> Self {
        self.read_scope = scope;
        self
    }

    /// The scope of read tokens.
    pub fn read_scope(&self) -> &Scope {
        &self.read_scope
    }

    /// The token endpoint.
    pub fn token_url(&self) -> &str {
        self.token_url.as_str()
    }
    /// The JWKS endpoint.
    pub fn jwks_url(&self) -> &str {
        self.jwks_url.as_str()
    }
    /// The billing policy.
    pub fn policy(&self) -> &BillingPolicy {
        &self.policy
    }
    /// The refresh policy.
    pub fn refresh(&self) -> &RefreshPolicy {
        &self.refresh
    }
    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.http.timeout()
    }
    /// The retry policy.
    pub fn retry(&self) -> &RetryPolicy {
        &self.retry
    }
    /// The lifetime assumed for opaque tokens without `expires_in`.
    pub fn opaque_lifetime(&self) -> Duration {
        self.opaque_lifetime
    }
    /// The issuer every token's `iss` must equal, when one is configured.
    pub fn token_issuer(&self) -> Option<&str> {
        self.token_issuer.as_deref()
    }
    pub(crate) fn http(&self) -> &HttpSettings {
        &self.http
    }
    pub(crate) fn token_url_parsed(&self) -> &Url {
        &self.token_url
    }
    pub(crate) fn jwks_url_parsed(&self) -> &Url {
        &self.jwks_url
    }
}

fn parse_url(what: &'static str, s: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(s).map_err(|e| ConfigError::InvalidUrl { what, url: s.to_owned(), reason: e.to_string() })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::InvalidUrl {
            what,
            url: s.to_owned(),
            reason: format!("scheme {:?} is not http or https", url.scheme()),
        });
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::InvalidUrl {
            what,
            url: "[redacted: contains credentials]".to_owned(),
            reason: "credentials belong in client_secret, not in the URL".to_owned(),
        });
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_url_defaults_to_the_token_urls_origin() {
        let c = AuthConfig::new("https://idcs.example.com:8443/oauth2/v1/token?x=1").unwrap();
        assert_eq!(c.jwks_url(), "https://idcs.example.com:8443/oauth2/v1/keys");
        assert_eq!(c.timeout(), Duration::from_secs(10));
    }

    #[test]
    fn bad_urls_are_named() {
        let e = AuthConfig::new("ftp://x/y").unwrap_err();
        assert!(e.to_string().contains("token_url") && e.to_string().contains("ftp"), "{e}");
        assert!(AuthConfig::new("not a url").is_err());
        let e = AuthConfig::new("https://id:hunter2@x/token").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn reserved_parameters_are_refused() {
        let t = Tenant::new("acme".parse().unwrap(), "t".parse().unwrap(), "a".parse().unwrap(), "a".parse().unwrap());
        let ta = TenantAuth::new(t, ClientSecret::new("s"));
        let e = ta.with_extra_param("scope", "x").unwrap_err();
        assert!(matches!(&e, ConfigError::ReservedParameter { name } if name == "scope"), "{e:?}");
        let t = Tenant::new("acme".parse().unwrap(), "t".parse().unwrap(), "a".parse().unwrap(), "a".parse().unwrap());
        for name in ["client_assertion", "client_assertion_type"] {
            let e = TenantAuth::new(t.clone(), ClientSecret::new("s")).with_extra_param(name, "x").unwrap_err();
            assert!(matches!(&e, ConfigError::ReservedParameter { .. }), "{name}: {e:?}");
        }
    }

    #[test]
    fn a_tenant_token_url_is_kept_as_posted_without_its_fragment() {
        let t = Tenant::new("acme".parse().unwrap(), "t".parse().unwrap(), "a".parse().unwrap(), "a".parse().unwrap());
        let ta =
            TenantAuth::new(t, ClientSecret::new("s")).with_token_url("https://IdCs.example.com/t?x=1#frag").unwrap();
        assert_eq!(ta.token_url(), Some("https://idcs.example.com/t?x=1"));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let r = RetryPolicy::new(5, Duration::from_millis(100), Duration::from_millis(400));
        for _ in 0..50 {
            let b1 = r.backoff(1);
            assert!(b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100), "{b1:?}");
            let b9 = r.backoff(9);
            assert!(b9 >= Duration::from_millis(200) && b9 <= Duration::from_millis(400), "{b9:?}");
        }
        assert_eq!(RetryPolicy::new(0, Duration::ZERO, Duration::ZERO).max_attempts(), 1);
    }

    #[test]
    fn auth_methods_parse() {
        assert_eq!("client_secret_basic".parse::<AuthMethod>().unwrap(), AuthMethod::ClientSecretBasic);
        assert_eq!("private_key_jwt".parse::<AuthMethod>().unwrap(), AuthMethod::PrivateKeyJwt);
        let e = "private_key".parse::<AuthMethod>().unwrap_err();
        assert!(e.to_string().contains("private_key_jwt"), "{e}");
    }
}
