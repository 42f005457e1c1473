//! Preflight: everything checked about a freshly issued token before any billing request is
//! sent with it: signature (optional), claims against the billing policy, granted scope.

use billsync_domain::{AccessToken, AccessTokenClaims, BillingPolicy, BillingRequestHeaders, TokenError, Violations};
use chrono::{DateTime, Utc};

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
    pub claims: Option<AccessTokenClaims>,
    pub violations: Option<Violations>,
    pub granted_scope: Option<Vec<String>>,
    pub requested_scope: Vec<String>,
    pub measured_skew: Option<chrono::Duration>,
    pub outcome: Result<Authorized, TokenError>,
}

impl Preflight {
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
        let cfg = &self.inner.config;
        let tenant = auth.tenant();
        let skew = grant.skew();
        let server_now = grant.server_received_at();
        let mut p = Preflight {
            opaque: false,
            alg: None,
            kid: None,
            signature: SignatureStatus::NotRequested,
            claims: None,
            violations: None,
            granted_scope: grant.granted_scope.clone(),
            requested_scope: grant.requested_scope.clone(),
            measured_skew: grant.measured_skew,
            outcome: Err(TokenError::Malformed("preflight did not run".into())),
        };
        let decoded: Option<DecodedJwt> = match jwt::decode_unverified(grant.access_token.secret()) {
            Ok(d) => Some(d),
            Err(e) if e.is_not_a_jwt() => None,
            Err(e) => {
                p.outcome = Err(TokenError::Malformed(format!("the access token is a broken JWT: {e}")));
                return p;
            }
        };
        if let Some(d) = &decoded {
            p.alg = d.header_str("alg").map(str::to_owned);
            p.kid = d.header_str("kid").map(str::to_owned);
        }
        p.opaque = decoded.is_none();

        let mut signature_error = None;
        if auth.verify_jwks() {
            let verified = match &decoded {
                None => Err(SignatureError::NotAJwt),
                Some(d) => self.inner.jwks.verify(&self.inner.http, grant.access_token.secret(), d).await,
            };
            match verified {
                Ok(kid) => p.signature = SignatureStatus::Verified { kid },
                Err(e) => {
                    tracing::warn!(tenant = %tenant.name(), reason = %e, "token signature refused");
                    signature_error = Some(match &e {
                        SignatureError::JwksUnavailable(m) => TokenError::Unavailable(format!("JWKS: {m}")),
                        other => refused(other),
                    });
                    p.signature = SignatureStatus::Failed(e);
                }
            }
        }

        let claims = match decoded {
            Some(d) => d.claims,
            None => opaque_claims(cfg, auth, &grant, server_now),
        };
        p.claims = Some(claims.clone());
        let token = AccessToken::new(grant.access_token.secret());
        match cfg.policy().authorize(token, claims, tenant.tenant_id(), tenant.application_id(), server_now) {
            Ok(headers) => {
                let refresh_server = cfg.refresh().refresh_at(headers.issued_at(), headers.expires_at());
                let authorized = Authorized {
                    refresh_at: shift(refresh_server, -skew),
                    expires_at: shift(headers.expires_at(), -skew),
                    skew,
                    headers,
                };
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
        p
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
