//! The diagnosis of one tenant's token setup, for `billsync doctor`: reachability,
//! credentials, requested versus granted scope, every claim of docs/platform.md §2 with the
//! policy's code and hint, the headers, clock skew and the refresh plan. Never the token or
//! the secret.

use std::fmt;

use billsync_domain::{AccessTokenClaims, TokenError, ViolationCode, Violations, human_duration};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::client::{FetchFailure, OAuthClient, SKEW_TOLERANCE};
use crate::config::{AuthMethod, TenantAuth};
use crate::jwks::SignatureError;
use crate::preflight::{Authorized, Preflight, SignatureStatus};

/// The clock skew from which doctor fails a `private_key_jwt` tenant's `clock_skew` check.
pub const ASSERTION_SKEW_LIMIT: chrono::Duration = chrono::Duration::seconds(60);

/// One line of a diagnosis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    check: String,
    ok: bool,
    reason: Option<String>,
    hint: Option<String>,
}

impl Check {
    pub(crate) fn pass(check: &str, hint: impl Into<Option<String>>) -> Self {
        Self { check: check.to_owned(), ok: true, reason: None, hint: hint.into() }
    }
    pub(crate) fn fail(check: &str, reason: &str, hint: impl Into<String>) -> Self {
        Self { check: check.to_owned(), ok: false, reason: Some(reason.to_owned()), hint: Some(hint.into()) }
    }
    /// A check that passes with a warning: `reason` is set although `ok` is.
    pub(crate) fn warn(check: &str, reason: &str, hint: impl Into<String>) -> Self {
        Self { check: check.to_owned(), ok: true, reason: Some(reason.to_owned()), hint: Some(hint.into()) }
    }
    /// The check's stable name (`token_endpoint_reachable`, `claim.scope`, ...).
    pub fn name(&self) -> &str {
        &self.check
    }
    /// Whether it passed.
    pub fn ok(&self) -> bool {
        self.ok
    }
    /// The stable code of a failure (a [`ViolationCode`], an RFC 6749 error, ...), or of a
    /// warning on a check that passed (`kid_mismatch`).
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }
    /// What was found, or what to change.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }
}

/// The billing headers that will be sent for a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderConfig {
    /// `X-Tenant-ID`.
    pub x_tenant_id: String,
    /// `X-Application-ID`.
    pub x_application_id: String,
}

/// A possible reason for a refusal the server does not explain, with its fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LikelyCause {
    /// `key_not_registered`, `kid_mismatch`, `bad_assertion_signature`, `assertion_replayed`.
    pub code: &'static str,
    /// What to check or change, and where.
    pub fix: String,
}

/// Why a token endpoint may refuse a `private_key_jwt` client with a bare `invalid_client`
/// (docs/platform.md §1.1: the platform names the reason only in its audit log), most likely
/// first, each with its fix. Empty for the secret methods.
pub fn likely_assertion_causes(auth: &TenantAuth) -> Vec<LikelyCause> {
    if auth.auth_method() != AuthMethod::PrivateKeyJwt {
        return Vec::new();
    }
    let client = auth.tenant().client_id();
    let (kid, public) = match auth.private_key() {
        Some(k) => (
            format!("kid {}", k.key_id()),
            "the public key `billsync key generate` printed (or derive it from private_key_file)",
        ),
        None => ("the kid in the assertion's header".to_owned(), "the public key of whatever signs the assertion file"),
    };
    vec![
        LikelyCause {
            code: "key_not_registered",
            fix: format!(
                "register {public} for client {client} in the console (Applications > OAuth Clients > {client} > \
                 Keys), with client authentication private_key_jwt"
            ),
        },
        LikelyCause {
            code: "kid_mismatch",
            fix: format!(
                "the key id the console shows for that key must be the assertion's {kid}: set key_id on the tenant \
                 to the console's, or register the key under this id"
            ),
        },
        LikelyCause {
            code: "bad_assertion_signature",
            fix: format!(
                "the key registered under that id is not the one signing: register {public} again, replacing the \
                 old one"
            ),
        },
        LikelyCause {
            code: "assertion_replayed",
            fix: "the same assertion (jti) reached the platform twice: another agent shares this client's assertion \
                  file, or the signer reuses assertions; give each agent its own and make the signer write a fresh \
                  one for every token request"
                .to_owned(),
        },
    ]
}

/// The outcome of [`OAuthClient::diagnose`]: serialises as
/// `{"name", "ready", "checks": [{"check", "ok", "reason", "hint"}], ...}`.
#[derive(Debug, Clone, Serialize)]
pub struct Diagnosis {
    name: String,
    ready: bool,
    checks: Vec<Check>,
    token_url: String,
    auth_method: AuthMethod,
    headers: HeaderConfig,
    requested_scope: Vec<String>,
    granted_scope: Option<Vec<String>>,
    clock_skew_seconds: Option<i64>,
    claims_checked: bool,
    expires_at: Option<DateTime<Utc>>,
    refresh_at: Option<DateTime<Utc>>,
    /// After a refusal the server does not explain: what may be wrong, most likely first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    likely_causes: Vec<LikelyCause>,
}

impl Diagnosis {
    /// The tenant's local name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Whether billing requests can be sent for this tenant now.
    pub fn ready(&self) -> bool {
        self.ready
    }
    /// Every check, in order.
    pub fn checks(&self) -> &[Check] {
        &self.checks
    }
    /// A check by name.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.check == name)
    }
    /// The codes of the failed checks.
    pub fn failures(&self) -> Vec<&str> {
        self.checks.iter().filter(|c| !c.ok).filter_map(|c| c.reason.as_deref()).collect()
    }
    /// The codes of the checks that passed with a warning.
    pub fn warnings(&self) -> Vec<&str> {
        self.checks.iter().filter(|c| c.ok).filter_map(|c| c.reason.as_deref()).collect()
    }
    /// After a refusal the server does not explain, what may be wrong, most likely first.
    pub fn likely_causes(&self) -> &[LikelyCause] {
        &self.likely_causes
    }
    /// The headers configured for billing requests.
    pub fn headers(&self) -> &HeaderConfig {
        &self.headers
    }
    /// The scope the server granted, when it said.
    pub fn granted_scope(&self) -> Option<&[String]> {
        self.granted_scope.as_deref()
    }
    /// The token endpoint's clock minus ours, in seconds, when it sent a `Date` header.
    pub fn clock_skew_seconds(&self) -> Option<i64> {
        self.clock_skew_seconds
    }
    /// Whether the token's claims could be read (false for opaque tokens).
    pub fn claims_checked(&self) -> bool {
        self.claims_checked
    }
    /// When the token expires (local time).
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }
    /// When the cache would replace the token (local time).
    pub fn refresh_at(&self) -> Option<DateTime<Utc>> {
        self.refresh_at
    }
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "tenant {}: {}", self.name, if self.ready { "READY" } else { "NOT READY" })?;
        writeln!(f, "  token endpoint {} ({})", self.token_url, self.auth_method)?;
        writeln!(
            f,
            "  headers X-Tenant-ID: {}  X-Application-ID: {}",
            self.headers.x_tenant_id, self.headers.x_application_id
        )?;
        for c in &self.checks {
            let mark = match (c.ok, &c.reason) {
                (false, _) => "FAIL",
                (true, Some(_)) => "warn",
                (true, None) => "ok  ",
            };
            write!(f, "  [{mark}] {}", c.check)?;
            if let Some(r) = &c.reason {
                write!(f, " ({r})")?;
            }
            if let Some(h) = &c.hint {
                write!(f, ": {h}")?;
            }
            writeln!(f)?;
        }
        if !self.likely_causes.is_empty() {
            writeln!(f, "  the server does not say why; likely causes, in order:")?;
            for (i, c) in self.likely_causes.iter().enumerate() {
                writeln!(f, "    {}. {}: {}", i + 1, c.code, c.fix)?;
            }
        }
        Ok(())
    }
}

fn token_error_code(e: &TokenError) -> String {
    match e {
        TokenError::Refused { error, .. } => error.clone(),
        TokenError::Policy(_) => "policy".into(),
        TokenError::Unavailable(_) => "unavailable".into(),
        TokenError::Malformed(_) => "malformed_response".into(),
        TokenError::Credential { code, .. } => code.clone(),
    }
}

impl OAuthClient {
    /// For `private_key_jwt`: which key signs the assertions and for which audience, whether
    /// the client assertion file can be sent now, or that there is neither. `None` for the
    /// other methods.
    fn assertion_check(&self, auth: &TenantAuth, token_url: &str) -> Option<Check> {
        if auth.auth_method() != AuthMethod::PrivateKeyJwt {
            return None;
        }
        Some(match (auth.private_key(), auth.assertion_file(), self.check_assertion_file(auth)) {
            (Some(key), _, _) if key.key_id() != key.thumbprint() => Check::warn(
                "private_key",
                "kid_mismatch",
                format!(
                    "{} key, kid {}; assertions for {token_url} live {} s. The kid is not the key's RFC 7638 \
                     thumbprint ({}): right if the console assigned it, otherwise the console will not find the key",
                    key.algorithm(),
                    key.key_id(),
                    auth.assertion_lifetime().as_secs(),
                    key.thumbprint()
                ),
            ),
            (Some(key), _, _) => Check::pass(
                "private_key",
                Some(format!(
                    "{} key, kid {}; assertions for {token_url} live {} s",
                    key.algorithm(),
                    key.key_id(),
                    auth.assertion_lifetime().as_secs()
                )),
            ),
            (None, Some(path), Some(Ok(()))) => Check::pass(
                "client_assertion_file",
                Some(format!("{}: a current assertion for {token_url}, not sent before", path.display())),
            ),
            (None, Some(_), Some(Err(problem))) => {
                Check::fail("client_assertion_file", problem.code(), problem.to_string())
            }
            _ => Check::fail(
                "private_key",
                "missing_private_key",
                format!(
                    "client {} authenticates with private_key_jwt but has neither a private key nor a client \
                     assertion file",
                    auth.tenant().client_id()
                ),
            ),
        })
    }
}

fn refused_advice(error: &str, auth: &TenantAuth, token_url: &str) -> String {
    let client = auth.tenant().client_id();
    match error {
        "invalid_client" => client_advice(auth, token_url),
        "invalid_scope" => format!(
            "client {client} may not request {}; enable Billing Services for it and use the full URN",
            auth.scope_param()
        ),
        "unauthorized_client" => format!("client {client} may not use the client_credentials grant"),
        _ => "check token_url and the client registration".into(),
    }
}

/// What to check when the server refuses the client's authentication (`invalid_client`).
fn client_advice(auth: &TenantAuth, token_url: &str) -> String {
    let client = auth.tenant().client_id();
    let other = match auth.auth_method() {
        AuthMethod::ClientSecretPost => AuthMethod::ClientSecretBasic,
        AuthMethod::ClientSecretBasic => AuthMethod::ClientSecretPost,
        // The server says no more than `invalid_client` about a client assertion.
        AuthMethod::PrivateKeyJwt => {
            let key = auth.private_key().map(|k| format!(" whose kid is {} ({})", k.key_id(), k.algorithm()));
            return format!(
                "the server does not say why it refused the client assertion: check that client {client} is registered \
                 for private_key_jwt with the public key{}, that its token URL is exactly {token_url} (the assertion's \
                 aud), and that the clock skew is small",
                key.unwrap_or_default()
            );
        }
    };
    format!(
        "check client_id {client} and its secret (Applications > OAuth Clients); the client authenticates with {}, \
         try {other} if the server expects the other",
        auth.auth_method()
    )
}

impl OAuthClient {
    /// Requests a token for `auth` (outside any cache) and reports everything about it.
    /// Never fails: every problem is a failed [`Check`]. Never includes the token or secret.
    pub async fn diagnose(&self, auth: &TenantAuth) -> Diagnosis {
        let tenant = auth.tenant();
        let mut d = Diagnosis {
            name: tenant.name().to_string(),
            ready: false,
            checks: Vec::new(),
            token_url: self.endpoint(auth).to_string(),
            auth_method: auth.auth_method(),
            headers: HeaderConfig {
                x_tenant_id: tenant.tenant_id().to_string(),
                x_application_id: tenant.application_id().to_string(),
            },
            requested_scope: auth.scopes().iter().map(|s| s.as_str().to_owned()).collect(),
            granted_scope: None,
            clock_skew_seconds: None,
            claims_checked: false,
            expires_at: None,
            refresh_at: None,
            likely_causes: Vec::new(),
        };
        if let Some(check) = self.assertion_check(auth, &d.token_url) {
            let ok = check.ok;
            d.checks.push(check);
            if !ok {
                return d;
            }
        }
        let grant = match self.request_token(auth).await {
            Ok(g) => g,
            Err(f) => {
                self.record_failure(&mut d, auth, &f);
                return d;
            }
        };
        d.checks.push(Check::pass("token_endpoint_reachable", Some(d.token_url.clone())));
        d.checks.push(Check::pass(
            "credentials_accepted",
            Some(format!("a token was issued to client {}", tenant.client_id())),
        ));
        let p = self.preflight(auth, grant).await;
        self.fill(&mut d, auth, &p);
        d.ready = p.outcome.is_ok() && d.checks.iter().all(|c| c.ok);
        d
    }

    /// Records why no token was issued: unreachable, or refused (with what to check).
    fn record_failure(&self, d: &mut Diagnosis, auth: &TenantAuth, f: &FetchFailure) {
        if f.reachable {
            d.checks.push(Check::pass("token_endpoint_reachable", Some(d.token_url.clone())));
            let code = token_error_code(&f.error);
            let hint = match &f.error {
                TokenError::Refused { error, description } => format!(
                    "{}{}",
                    description.as_deref().map(|s| format!("{s}; ")).unwrap_or_default(),
                    refused_advice(error, auth, &d.token_url)
                ),
                other => other.to_string(),
            };
            d.checks.push(Check::fail("credentials_accepted", &code, hint));
            if matches!(&f.error, TokenError::Refused { error, .. } if error == "invalid_client") {
                d.likely_causes = likely_assertion_causes(auth);
            }
        } else {
            d.checks.push(Check::fail("token_endpoint_reachable", "unreachable", f.error.to_string()));
        }
        let measured = self.measured_skew_at(&self.endpoint(auth));
        if let Some(s) = measured {
            d.clock_skew_seconds = Some(round_seconds(s));
        }
        if f.reachable {
            d.checks.push(clock_skew_check(auth, measured));
        }
    }

    /// Records what the preflight found in `d`: scope, token format, signature, claims, clock
    /// skew and the refresh plan (or why the token cannot be used).
    fn fill(&self, d: &mut Diagnosis, auth: &TenantAuth, p: &Preflight) {
        d.granted_scope = p.granted_scope.clone();
        d.clock_skew_seconds = p.measured_skew.map(round_seconds);
        d.claims_checked = !p.opaque && p.claims.is_some();
        d.checks.push(granted_scope_check(auth, p));
        d.checks.push(token_format_check(p));
        d.checks.push(self.signature_check(&p.signature));
        if let Some(claims) = &p.claims {
            claim_checks(d, claims, p.violations.as_ref(), p.opaque);
            self.rfc8725_checks(d, p);
        }
        d.checks.push(clock_skew_check(auth, p.measured_skew));
        self.record_outcome(d, &p.outcome);
    }

    /// The expiry and refresh plan of a usable token; for one that is not, a failed check
    /// unless an earlier check already failed for it.
    fn record_outcome(&self, d: &mut Diagnosis, outcome: &Result<Authorized, TokenError>) {
        match outcome {
            Ok(a) => {
                d.expires_at = Some(a.expires_at);
                d.refresh_at = Some(a.refresh_at);
                d.checks.push(self.refresh_plan_check(a));
            }
            Err(e) => {
                let covered = d.checks.iter().any(|c| !c.ok);
                if !covered {
                    d.checks.push(Check::fail("token_usable", &token_error_code(e), e.to_string()));
                }
            }
        }
    }

    /// Whether the token was verified against the JWKS, and with which key.
    fn signature_check(&self, signature: &SignatureStatus) -> Check {
        match signature {
            SignatureStatus::NotRequested => {
                Check::pass("signature", Some("not verified (verify_jwks is off for this tenant)".to_owned()))
            }
            SignatureStatus::Verified { kid } => {
                Check::pass("signature", Some(format!("verified against {} with key {kid}", self.config().jwks_url())))
            }
            SignatureStatus::Failed(e) => Check::fail("signature", e.code(), e.to_string()),
        }
    }

    /// `claim.iss` against the configured token issuer, and `claim.nbf` (after `claim.iat`),
    /// failing as the preflight found; nothing for an opaque token.
    fn rfc8725_checks(&self, d: &mut Diagnosis, p: &Preflight) {
        if p.opaque {
            return;
        }
        let issuer = self.config().token_issuer();
        let iss = match (&p.claim_refusal, issuer) {
            (Some(e @ SignatureError::WrongIssuer { .. }), _) => {
                Some(Check::fail("claim.iss", e.code(), e.to_string()))
            }
            (_, Some(i)) => Some(Check::pass("claim.iss", Some(format!("{i} (= the configured token_issuer)")))),
            (_, None) => None,
        };
        let nbf = match &p.claim_refusal {
            Some(e @ SignatureError::NotYetValid(_)) => Check::fail("claim.nbf", e.code(), e.to_string()),
            _ => Check::pass("claim.nbf", Some(nbf_found(p.nbf.as_ref()))),
        };
        if let (Some(iss), Some(slot)) = (iss, d.checks.iter_mut().find(|c| c.check == "claim.iss")) {
            *slot = iss;
        }
        let at = d.checks.iter().position(|c| c.check == "claim.iat").map_or(d.checks.len(), |i| i + 1);
        d.checks.insert(at, nbf);
    }

    /// The token's lifetime, expiry and planned refresh, from now.
    fn refresh_plan_check(&self, a: &Authorized) -> Check {
        let now = self.inner.clock.now();
        Check::pass(
            "refresh_plan",
            Some(format!(
                "lifetime {}; expires at {} (in {}); refresh planned at {} (in {}, {:.0}% of the lifetime)",
                human_duration(a.headers.expires_at() - a.headers.issued_at()),
                a.expires_at.to_rfc3339(),
                human_duration(a.expires_at - now),
                a.refresh_at.to_rfc3339(),
                human_duration(a.refresh_at - now),
                policy_fraction(self) * 100.0
            )),
        )
    }
}

/// Requested versus granted scope.
fn granted_scope_check(auth: &TenantAuth, p: &Preflight) -> Check {
    let shortfall = p.scope_shortfall();
    match (&p.granted_scope, shortfall.is_empty()) {
        (None, _) => Check::pass(
            "granted_scope",
            Some("the response does not list the granted scope (RFC 6749 §5.1: as requested)".to_owned()),
        ),
        (Some(g), true) => Check::pass("granted_scope", Some(format!("granted \"{}\"", g.join(" ")))),
        (Some(g), false) => Check::fail(
            "granted_scope",
            "scope_not_granted",
            format!(
                "requested \"{}\" but the server granted \"{}\" (RFC 6749 §3.3: a server may grant less); \
                 client {} is not registered for {}: enable Billing Services in Applications > OAuth Clients",
                auth.scope_param(),
                g.join(" "),
                auth.tenant().client_id(),
                shortfall.join(" ")
            ),
        ),
    }
}

/// Whether the token is a JWT (with its `alg` and `kid`), opaque, or a broken JWT.
fn token_format_check(p: &Preflight) -> Check {
    if p.opaque {
        Check::pass(
            "token_format",
            Some(
                "opaque (not a JWT): its claims could not be checked; scope taken from the token response, expiry from \
                 expires_in, tenant and client from the configuration, audience assumed"
                    .to_owned(),
            ),
        )
    } else if let Err(TokenError::Malformed(m)) = &p.outcome {
        Check::fail("token_format", "malformed_token", m.clone())
    } else {
        Check::pass(
            "token_format",
            Some(format!(
                "JWT, alg {}, kid {}",
                p.alg.as_deref().unwrap_or("(none)"),
                p.kid.as_deref().unwrap_or("(none)")
            )),
        )
    }
}

/// How far the token endpoint's clock is from ours. Informational for client secrets (the
/// skew is corrected for); for client assertions a skew of [`ASSERTION_SKEW_LIMIT`] or more
/// fails: the first assertion, signed before any `Date` was seen, and any minted outside
/// billsync are on this machine's clock, and the platform refuses them.
fn clock_skew_check(auth: &TenantAuth, measured: Option<chrono::Duration>) -> Check {
    if let Some(s) = measured.filter(|s| s.abs() >= ASSERTION_SKEW_LIMIT) {
        if auth.auth_method() == AuthMethod::PrivateKeyJwt {
            return Check::fail(
                "clock_skew",
                "clock_skew",
                format!(
                    "the token endpoint's clock is {} {} ours; client assertions are refused when their iat is more \
                     than 60 s off. billsync signs on the endpoint's time once it has seen it, but an assertion \
                     minted elsewhere or before that is not: synchronise this machine's clock (NTP)",
                    human_duration(chrono::Duration::seconds(round_seconds(s).abs())),
                    if s > chrono::Duration::zero() { "ahead of" } else { "behind" }
                ),
            );
        }
    }
    Check::pass(
        "clock_skew",
        Some(match measured {
            None => "the token endpoint sent no Date header; skew unknown, none assumed".to_owned(),
            Some(s) if s.abs() <= SKEW_TOLERANCE => "the token endpoint's clock agrees with ours".to_owned(),
            Some(s) => format!(
                "the token endpoint's clock is {} {} ours; refresh and expiry are corrected for it",
                human_duration(chrono::Duration::seconds(round_seconds(s).abs())),
                if s > chrono::Duration::zero() { "ahead of" } else { "behind" }
            ),
        }),
    )
}

/// What the token's `nbf` says, for a passing `claim.nbf`.
fn nbf_found(nbf: Option<&serde_json::Value>) -> String {
    match nbf {
        None => "(absent)".to_owned(),
        Some(v) => match v.as_i64().and_then(|s| DateTime::from_timestamp(s, 0)) {
            Some(t) => t.to_rfc3339(),
            None => v.to_string(),
        },
    }
}

fn round_seconds(d: chrono::Duration) -> i64 {
    (d.num_milliseconds() as f64 / 1000.0).round() as i64
}

fn policy_fraction(c: &OAuthClient) -> f64 {
    c.config().refresh().fraction()
}

/// One check per claim of docs/platform.md §2 (plus the two headers), failing with the policy's
/// codes and hints. Shared with [`crate::inspect`].
pub(crate) fn claim_checks(d: &mut Diagnosis, claims: &AccessTokenClaims, v: Option<&Violations>, opaque: bool) {
    d.checks.extend(claim_check_list(claims, v, opaque, Some((&d.headers.x_tenant_id, &d.headers.x_application_id))));
}

pub(crate) fn claim_check_list(
    claims: &AccessTokenClaims,
    v: Option<&Violations>,
    opaque: bool,
    headers: Option<(&str, &str)>,
) -> Vec<Check> {
    let of = |codes: &[ViolationCode]| -> Option<(&'static str, String)> {
        v.and_then(|v| v.as_slice().iter().find(|x| codes.contains(&x.code)).map(|x| (x.code.as_str(), x.hint.clone())))
    };
    let shown = |xs: &[String]| if xs.is_empty() { "(empty)".to_owned() } else { xs.join(" ") };
    let opt = |x: &Option<String>| x.clone().unwrap_or_else(|| "(absent)".to_owned());
    let from_config = if opaque { " (from the configuration: opaque token, not checked)" } else { "" };
    let mut out = Vec::new();
    let mut push = |name: &str, codes: &[ViolationCode], found: String| {
        out.push(match of(codes) {
            Some((code, hint)) => Check::fail(name, code, hint),
            None => Check::pass(name, Some(found)),
        })
    };
    push("claim.scope", &[ViolationCode::MissingScope, ViolationCode::ShortScopeForm], shown(&claims.scope));
    push(
        "claim.aud",
        &[ViolationCode::AudienceMissing],
        if opaque { "not checkable for an opaque token".to_owned() } else { shown(&claims.aud) },
    );
    push("claim.tenant_id", &[ViolationCode::TenantClaimMissing], format!("{}{from_config}", opt(&claims.tenant_id)));
    let app_codes: &[ViolationCode] =
        if claims.client_id.is_none() { &[ViolationCode::ApplicationMismatch] } else { &[] };
    push("claim.client_id", app_codes, format!("{}{from_config}", opt(&claims.client_id)));
    let exp_found = match claims.expires_at() {
        Some(t) => t.to_rfc3339(),
        None => "(absent)".to_owned(),
    };
    push("claim.exp", &[ViolationCode::TokenExpired, ViolationCode::ExpiresTooSoon], exp_found);
    push(
        "claim.iat",
        &[],
        match (claims.issued_at(), claims.iat.zip(claims.exp)) {
            (Some(t), Some((i, e))) => {
                // `exp` and `iat` are whatever the token says: a lifetime beyond chrono's range
                // (about 292 million years) is shown as such, never computed into a panic.
                let lifetime = chrono::Duration::try_seconds(e.saturating_sub(i))
                    .map_or_else(|| "beyond any representable time".to_owned(), human_duration);
                format!("{} (lifetime {lifetime})", t.to_rfc3339())
            }
            (Some(t), None) => t.to_rfc3339(),
            (None, _) => "(absent): the refresh is planned from the time the token was received".to_owned(),
        },
    );
    push("claim.iss", &[], opt(&claims.iss));
    push("claim.sub", &[], opt(&claims.sub));
    push("claim.jti", &[], opt(&claims.jti));
    if let Some((tenant_header, app_header)) = headers {
        push(
            "header.x_tenant_id",
            &[ViolationCode::TenantMismatch],
            format!("\"{tenant_header}\" = the token's tenant_id"),
        );
        let app_codes: &[ViolationCode] =
            if claims.client_id.is_some() { &[ViolationCode::ApplicationMismatch] } else { &[] };
        push("header.x_application_id", app_codes, format!("\"{app_header}\" = the token's client_id"));
    }
    out
}
