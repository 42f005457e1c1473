//! Preflight: everything checked about a freshly issued token before any billing request is
//! sent with it: signature (optional), `iss` and `nbf` (RFC 8725), claims against the billing
//! policy, granted scope.

use billsync_domain::{AccessToken, AccessTokenClaims, BillingPolicy, BillingRequestHeaders, TokenError, Violations};
use chrono::{DateTime, Utc};

use crate::claims::check_claims;
use crate::client::{OAuthClient, TokenGrant, shift};
use crate::config::TenantAuth;
use crate::jwks::SignatureError;
use crate::jwt::{self, DecodedJwt};

/// How the signature fared.
#[derive(Debug, Clone)]
pub(crate) enum SignatureStatus {
    NotRequested,
    Verified { kid: String },
    Failed(SignatureError),
}

/// A token that passed, with its refresh plan in local time.
#[derive(Debug, Clone)]
pub(crate) struct Authorized {
    pub headers: BillingRequestHeaders,
    /// Local time at which to replace it.
    pub refresh_at: DateTime<Utc>,
    /// Local time at which it expires.
    pub expires_at: DateTime<Utc>,
    /// Server time minus local time, as used for this token.
    pub skew: chrono::Duration,
}

impl Authorized {
    /// Whether the token still passes the policy (not expired, not expiring too soon) at
    /// local time `now`.
    pub fn usable(&self, policy: &BillingPolicy, now: DateTime<Utc>) -> bool {
        now < self.expires_at
            && policy
                .check(
                    self.headers.claims(),
                    self.headers.tenant_id(),
                    self.headers.application_id(),
                    shift(now, self.skew),
                )
                .is_ok()
    }
}

/// Everything the preflight found out (the diagnosis prints it).
#[derive(Debug)]
pub(crate) struct Preflight {
    pub opaque: bool,
    pub alg: Option<String>,
    pub kid: Option<String>,
    pub signature: SignatureStatus,
    /// Why `iss` or `nbf` refused the token, if they did.
    pub claim_refusal: Option<SignatureError>,
    /// The JWT's `nbf` claim as sent, if it has one.
    pub nbf: Option<serde_json::Value>,
    pub claims: Option<AccessTokenClaims>,
    pub violations: Option<Violations>,
    pub granted_scope: Option<Vec<String>>,
    pub requested_scope: Vec<String>,
    pub measured_skew: Option<chrono::Duration>,
    pub outcome: Result<Authorized, TokenError>,
}

impl Preflight {
    /// A preflight that has found nothing yet: the grant's scopes and skew, no outcome.
    fn started(grant: &TokenGrant) -> Self {
        Self {
            opaque: false,
            alg: None,
            kid: None,
            signature: SignatureStatus::NotRequested,
            claim_refusal: None,
            nbf: None,
            claims: None,
            violations: None,
            granted_scope: grant.granted_scope.clone(),
            requested_scope: grant.requested_scope.clone(),
            measured_skew: grant.measured_skew,
            outcome: Err(TokenError::Malformed("preflight did not run".into())),
        }
    }

    /// Requested scopes the server did not grant (RFC 6749 §3.3), when it said what it granted.
    pub fn scope_shortfall(&self) -> Vec<String> {
        match &self.granted_scope {
            Some(g) => self.requested_scope.iter().filter(|r| !g.contains(r)).cloned().collect(),
            None => Vec::new(),
        }
    }
}

fn refused(e: &SignatureError) -> TokenError {
    TokenError::Refused { error: e.code().to_owned(), description: Some(e.to_string()) }
}

impl OAuthClient {
    /// Runs the preflight on a grant.
    pub(crate) async fn preflight(&self, auth: &TenantAuth, grant: TokenGrant) -> Preflight {
        self.preflight_with(auth, grant, self.inner.config.policy()).await
    }

    /// Runs the preflight on a grant, checking the claims against `policy` instead of the
    /// configured billing policy (the token cache's read slot: the read scope).
    pub(crate) async fn preflight_with(
        &self,
        auth: &TenantAuth,
        grant: TokenGrant,
        policy: &BillingPolicy,
    ) -> Preflight {
        let mut p = Preflight::started(&grant);
        let decoded = match decode(&grant) {
            Ok(decoded) => decoded,
            Err(e) => {
                p.outcome = Err(e);
                return p;
            }
        };
        if let Some(d) = &decoded {
            p.alg = d.header_str("alg").map(str::to_owned);
            p.kid = d.header_str("kid").map(str::to_owned);
            p.nbf = d.payload.get("nbf").cloned();
        }
        p.opaque = decoded.is_none();
        let signature_error = self.check_signature(auth, &grant, decoded.as_ref(), &mut p).await;
        let claim_error = self.check_rfc8725_claims(auth, &grant, decoded.as_ref(), &mut p);
        let claims = match decoded {
            Some(d) => d.claims,
            None => opaque_claims(&self.inner.config, auth, &grant, grant.server_received_at()),
        };
        p.claims = Some(claims.clone());
        // The signature first, then iss and nbf, then the policy.
        self.authorize(auth, &grant, claims, signature_error.or(claim_error), policy, &mut p);
        p
    }

    /// Checks a JWT's `iss` and `nbf` (see [`crate::claims`]), recording how they fared;
    /// returns the error that refuses the token if they fail.
    fn check_rfc8725_claims(
        &self,
        auth: &TenantAuth,
        grant: &TokenGrant,
        decoded: Option<&DecodedJwt>,
        p: &mut Preflight,
    ) -> Option<TokenError> {
        let issuer = self.inner.config.token_issuer();
        let e = check_claims(decoded?, issuer, grant.server_received_at()).err()?;
        tracing::warn!(tenant = %auth.tenant().name(), reason = %e, "token claims refused");
        let error = refused(&e);
        p.claim_refusal = Some(e);
        Some(error)
    }

    /// Verifies the signature against the JWKS when the tenant asks for it, recording how it
    /// fared; returns the error that refuses the token if it failed.
    async fn check_signature(
        &self,
        auth: &TenantAuth,
        grant: &TokenGrant,
        decoded: Option<&DecodedJwt>,
        p: &mut Preflight,
    ) -> Option<TokenError> {
        if !auth.verify_jwks() {
            return None;
        }
        let verified = match decoded {
            None => Err(SignatureError::NotAJwt),
            Some(d) => {
                let now = self.inner.clock.now();
                self.inner.jwks.verify(&self.inner.http, grant.access_token.secret(), d, now).await
            }
        };
        match verified {
            Ok(kid) => {
                p.signature = SignatureStatus::Verified { kid };
                None
            }
            Err(e) => {
                tracing::warn!(tenant = %auth.tenant().name(), reason = %e, "token signature refused");
                let error = match &e {
                    SignatureError::JwksUnavailable(m) => TokenError::Unavailable(format!("JWKS: {m}")),
                    // Not looked for (the JWKS was fetched less than a minute ago): retrying
                    // later helps, so transient rather than a refusal that blocks the tenant.
                    SignatureError::UnknownKid { fetched: false, .. } => {
                        TokenError::Unavailable(format!("{}: {e}", e.code()))
                    }
                    other => refused(other),
                };
                p.signature = SignatureStatus::Failed(e);
                Some(error)
            }
        }
    }

    /// Checks the claims against the billing policy at the server's time and records the
    /// outcome: a signature failure refuses the token whatever its claims say.
    fn authorize(
        &self,
        auth: &TenantAuth,
        grant: &TokenGrant,
        claims: AccessTokenClaims,
        signature_error: Option<TokenError>,
        policy: &BillingPolicy,
        p: &mut Preflight,
    ) {
        let tenant = auth.tenant();
        let token = AccessToken::new(grant.access_token.secret());
        let server_now = grant.server_received_at();
        match policy.authorize(token, claims, tenant.tenant_id(), tenant.application_id(), server_now) {
            Ok(headers) => {
                let authorized = self.plan(headers, grant.skew());
                if !p.scope_shortfall().is_empty() {
                    tracing::warn!(tenant = %tenant.name(), missing = ?p.scope_shortfall(), "granted scope is narrower than requested");
                }
                p.outcome = match signature_error {
                    Some(e) => Err(e),
                    None => Ok(authorized),
                };
            }
            Err(v) => {
                tracing::warn!(tenant = %tenant.name(), violations = ?v.codes(), "token fails the billing policy");
                p.violations = Some(v.clone());
                // A forged token is refused for its signature first, whatever its claims say.
                p.outcome = Err(signature_error.unwrap_or(TokenError::Policy(v)));
            }
        }
    }

    /// The refresh plan of an authorized token, in local time (corrected for `skew`).
    fn plan(&self, headers: BillingRequestHeaders, skew: chrono::Duration) -> Authorized {
        let refresh_server = self.inner.config.refresh().refresh_at(headers.issued_at(), headers.expires_at());
        Authorized {
            refresh_at: shift(refresh_server, -skew),
            expires_at: shift(headers.expires_at(), -skew),
            skew,
            headers,
        }
    }
}

/// Decodes the access token: `None` for an opaque token, an error for a broken JWT.
fn decode(grant: &TokenGrant) -> Result<Option<DecodedJwt>, TokenError> {
    match jwt::decode_unverified(grant.access_token.secret()) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.is_not_a_jwt() => Ok(None),
        Err(e) => Err(TokenError::Malformed(format!("the access token is a broken JWT: {e}"))),
    }
}

/// The claims an opaque token is known to have: the granted scope (or the requested one when
/// the response does not say, RFC 6749 §5.1), the configured ids, and `expires_in`. The
/// audience cannot be known and is assumed to be the billing audience.
fn opaque_claims(
    cfg: &crate::config::AuthConfig,
    auth: &TenantAuth,
    grant: &TokenGrant,
    server_now: DateTime<Utc>,
) -> AccessTokenClaims {
    let tenant = auth.tenant();
    let iat = server_now.timestamp();
    let lifetime = grant.expires_in.unwrap_or_else(|| i64::try_from(cfg.opaque_lifetime().as_secs()).unwrap_or(900));
    AccessTokenClaims {
        scope: grant.granted_scope.clone().unwrap_or_else(|| grant.requested_scope.clone()),
        aud: vec![cfg.policy().audience().as_str().to_owned()],
        tenant_id: Some(tenant.tenant_id().as_str().to_owned()),
        client_id: Some(tenant.client_id().as_str().to_owned()),
        exp: Some(iat.saturating_add(lifetime)),
        iat: Some(iat),
        ..Default::default()
    }
}
