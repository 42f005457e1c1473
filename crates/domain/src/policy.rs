//! The billing policy: which claims and headers a billing request needs, and the named reason
//! when one is wrong. The codes are the ones the platform's audit log uses (docs/platform.md §6).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::claims::AccessTokenClaims;
use crate::ids::{ApplicationId, Audience, Scope, TenantId};
use crate::secret::AccessToken;

/// A stable name for one way a token or its headers can be wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationCode {
    /// The token lacks the billing write scope.
    MissingScope,
    /// The token has the short form (`billing:write`) instead of the full URN.
    ShortScopeForm,
    /// The token's `aud` does not include the billing audience.
    AudienceMissing,
    /// The token has no `tenant_id` claim.
    TenantClaimMissing,
    /// `X-Tenant-ID` differs from the token's `tenant_id`.
    TenantMismatch,
    /// `X-Application-ID` differs from the token's `client_id` (or the token has none).
    ApplicationMismatch,
    /// The token has expired (or carries no `exp`).
    TokenExpired,
    /// The token expires too soon to be worth sending.
    ExpiresTooSoon,
}

impl ViolationCode {
    /// Every code, in the order checks run.
    pub const ALL: [ViolationCode; 8] = [
        Self::MissingScope,
        Self::ShortScopeForm,
        Self::AudienceMissing,
        Self::TenantClaimMissing,
        Self::TenantMismatch,
        Self::ApplicationMismatch,
        Self::TokenExpired,
        Self::ExpiresTooSoon,
    ];

    /// The code as the audit log writes it (`missing_scope`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingScope => "missing_scope",
            Self::ShortScopeForm => "short_scope_form",
            Self::AudienceMissing => "audience_missing",
            Self::TenantClaimMissing => "tenant_claim_missing",
            Self::TenantMismatch => "tenant_mismatch",
            Self::ApplicationMismatch => "application_mismatch",
            Self::TokenExpired => "token_expired",
            Self::ExpiresTooSoon => "expires_too_soon",
        }
    }
}

impl fmt::Display for ViolationCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One broken rule: its code and a hint in plain words saying what to change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The stable code.
    pub code: ViolationCode,
    /// What is wrong and how to fix it.
    pub hint: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.hint)
    }
}

/// A non-empty list of violations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Violations(Vec<Violation>);

impl Violations {
    /// The violations, in check order.
    pub fn as_slice(&self) -> &[Violation] {
        &self.0
    }
    /// Just the codes.
    pub fn codes(&self) -> Vec<ViolationCode> {
        self.0.iter().map(|v| v.code).collect()
    }
    /// Whether a code is among them.
    pub fn contains(&self, code: ViolationCode) -> bool {
        self.0.iter().any(|v| v.code == code)
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Violations {}

/// Which scope and audience billing needs, and how much lifetime a token must have left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingPolicy {
    scope: Scope,
    audience: Audience,
    min_remaining: Duration,
}

impl Default for BillingPolicy {
    fn default() -> Self {
        Self { scope: Scope::billing_write(), audience: Audience::billing(), min_remaining: Duration::from_secs(1) }
    }
}

impl BillingPolicy {
    /// A policy for a platform whose scope and audience differ from the reference defaults.
    pub fn new(scope: Scope, audience: Audience, min_remaining: Duration) -> Self {
        Self { scope, audience, min_remaining }
    }

    /// The same policy for another scope (the billing read scope, for reconciliation).
    pub fn with_scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// The scope billing needs.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The audience billing needs.
    pub fn audience(&self) -> &Audience {
        &self.audience
    }

    /// Checks claims against the headers about to be sent, at time `now`.
    ///
    /// # Errors
    /// Every rule that does not hold, each with its code and a hint.
    pub fn check(
        &self,
        claims: &AccessTokenClaims,
        tenant_id: &TenantId,
        application_id: &ApplicationId,
        now: DateTime<Utc>,
    ) -> Result<(), Violations> {
        let client = claims.client_id.as_deref().unwrap_or(application_id.as_str());
        let out: Vec<Violation> = [
            self.scope_rule(claims, client),
            self.audience_rule(claims, client),
            tenant_rule(claims, tenant_id),
            client_rule(claims, application_id),
            self.expiry_rule(claims, now),
        ]
        .into_iter()
        .flatten()
        .collect();
        if out.is_empty() { Ok(()) } else { Err(Violations(out)) }
    }

    /// The full-URN billing scope, with the short form named when that is what was granted.
    fn scope_rule(&self, claims: &AccessTokenClaims, client: &str) -> Option<Violation> {
        let want_scope = self.scope.as_str();
        if claims.has_scope(want_scope) {
            return None;
        }
        let short = claims.scope.iter().find(|s| want_scope.len() > s.len() && want_scope.ends_with(&format!(":{s}")));
        Some(match short {
            Some(s) => Violation {
                code: ViolationCode::ShortScopeForm,
                hint: format!(
                    "the token's scope is the short form \"{s}\"; billing needs the full URN \"{want_scope}\". \
                     Request scope={want_scope} and register the full URN for client {client} (Applications > OAuth Clients)."
                ),
            },
            None => Violation {
                code: ViolationCode::MissingScope,
                hint: format!(
                    "the token's scope is {}; billing needs \"{want_scope}\". Enable Billing Services for client {client} \
                     (Applications > OAuth Clients) and request the full URN.",
                    quoted_or_none(&claims.scope)
                ),
            },
        })
    }

    /// The billing audience in `aud`.
    fn audience_rule(&self, claims: &AccessTokenClaims, client: &str) -> Option<Violation> {
        let want_aud = self.audience.as_str();
        if claims.aud.iter().any(|a| a == want_aud) {
            return None;
        }
        let base_only = claims.aud.iter().any(|a| want_aud.starts_with(a.as_str()));
        let why = if base_only { " (the base platform URL alone is not enough)" } else { "" };
        Some(Violation {
            code: ViolationCode::AudienceMissing,
            hint: format!(
                "the token's audience is {}{why}; billing needs \"{want_aud}\" in aud. Tick 'Billing API Access' for client \
                 {client}, or ask the token endpoint for it (extra_token_params audience = \"{want_aud}\").",
                quoted_or_none(&claims.aud)
            ),
        })
    }

    /// An `exp` far enough ahead for a request.
    fn expiry_rule(&self, claims: &AccessTokenClaims, now: DateTime<Utc>) -> Option<Violation> {
        let (code, hint) = match claims.expires_at() {
            None => (ViolationCode::TokenExpired, "the token has no exp claim; billing tokens must expire.".into()),
            Some(exp) if exp <= now => (
                ViolationCode::TokenExpired,
                format!(
                    "the token expired at {} ({} ago); get a new one.",
                    exp.to_rfc3339(),
                    crate::human_duration(now - exp)
                ),
            ),
            Some(exp) if (exp - now).to_std().unwrap_or_default() < self.min_remaining => (
                ViolationCode::ExpiresTooSoon,
                format!(
                    "the token expires in {}, less than the {} a request needs; get a new one.",
                    crate::human_duration(exp - now),
                    crate::human_duration(chrono::Duration::from_std(self.min_remaining).unwrap_or_default())
                ),
            ),
            Some(_) => return None,
        };
        Some(Violation { code, hint })
    }

    /// Checks the token and, when it passes, returns the only thing a billing request can be
    /// built from.
    ///
    /// # Errors
    /// As [`BillingPolicy::check`].
    pub fn authorize(
        &self,
        token: AccessToken,
        claims: AccessTokenClaims,
        tenant_id: &TenantId,
        application_id: &ApplicationId,
        now: DateTime<Utc>,
    ) -> Result<BillingRequestHeaders, Violations> {
        self.check(&claims, tenant_id, application_id, now)?;
        let expires_at = claims.expires_at().unwrap_or(now);
        let issued_at = claims.issued_at().unwrap_or(now).min(expires_at);
        Ok(BillingRequestHeaders {
            token: Arc::new(token),
            tenant_id: tenant_id.clone(),
            application_id: application_id.clone(),
            issued_at,
            expires_at,
            claims,
        })
    }
}

/// A `tenant_id` claim equal to `X-Tenant-ID`.
fn tenant_rule(claims: &AccessTokenClaims, tenant_id: &TenantId) -> Option<Violation> {
    let (code, hint) = match claims.tenant_id.as_deref() {
        None => (
            ViolationCode::TenantClaimMissing,
            format!(
                "the token has no tenant_id claim; X-Tenant-ID is \"{tenant_id}\". Ask the token endpoint for a tenant \
                 token (extra_token_params tenant_id = \"{tenant_id}\")."
            ),
        ),
        Some(t) if t != tenant_id.as_str() => (
            ViolationCode::TenantMismatch,
            format!(
                "X-Tenant-ID is \"{tenant_id}\" but the token's tenant_id is \"{t}\". Set tenant_id to the Tenant ID \
                 shown in IoT Console > Settings > Organization Details, or request a token for that tenant."
            ),
        ),
        Some(_) => return None,
    };
    Some(Violation { code, hint })
}

/// A `client_id` claim equal to `X-Application-ID`.
fn client_rule(claims: &AccessTokenClaims, application_id: &ApplicationId) -> Option<Violation> {
    let hint = match claims.client_id.as_deref() {
        None => format!("the token has no client_id claim to match X-Application-ID \"{application_id}\"."),
        Some(c) if c != application_id.as_str() => format!(
            "X-Application-ID is \"{application_id}\" but the token was issued to client \"{c}\". X-Application-ID \
             must be the OAuth client id registered in Applications > OAuth Clients."
        ),
        Some(_) => return None,
    };
    Some(Violation { code: ViolationCode::ApplicationMismatch, hint })
}

fn quoted_or_none(v: &[String]) -> String {
    if v.is_empty() { "empty".to_owned() } else { v.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ") }
}

/// The headers of one billing request. It can only be built by [`BillingPolicy::authorize`],
/// so `X-Tenant-ID` always equals the token's `tenant_id` and `X-Application-ID` its
/// `client_id`: a request with mismatched headers cannot be expressed.
#[derive(Clone)]
pub struct BillingRequestHeaders {
    token: Arc<AccessToken>,
    tenant_id: TenantId,
    application_id: ApplicationId,
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    claims: AccessTokenClaims,
}

impl BillingRequestHeaders {
    /// The bearer token for `Authorization: Bearer ...`. A secret: never log it.
    pub fn bearer_token(&self) -> &str {
        self.token.secret()
    }
    /// `X-Tenant-ID`.
    pub fn tenant_id(&self) -> &TenantId {
        &self.tenant_id
    }
    /// `X-Application-ID`.
    pub fn application_id(&self) -> &ApplicationId {
        &self.application_id
    }
    /// When the token was issued (its `iat`).
    pub fn issued_at(&self) -> DateTime<Utc> {
        self.issued_at
    }
    /// When the token expires (its `exp`).
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.expires_at
    }
    /// The claims that passed the policy.
    pub fn claims(&self) -> &AccessTokenClaims {
        &self.claims
    }
    /// Whether two headers carry the same token (to drop exactly the token a server refused).
    pub fn same_token(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.token, &other.token) || self.token.secret() == other.token.secret()
    }
}

impl fmt::Debug for BillingRequestHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BillingRequestHeaders")
            .field("token", &self.token)
            .field("tenant_id", &self.tenant_id)
            .field("application_id", &self.application_id)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{BILLING_AUDIENCE, BILLING_WRITE_SCOPE, DEVICE_WRITE_SCOPE};

    const NOW: i64 = 1_800_000_000;

    fn good() -> AccessTokenClaims {
        AccessTokenClaims {
            scope: vec![BILLING_WRITE_SCOPE.into()],
            aud: vec![BILLING_AUDIENCE.into(), "https://iot.oraclecloud.com".into()],
            tenant_id: Some("tenant-a".into()),
            client_id: Some("app-a".into()),
            exp: Some(NOW + 900),
            iat: Some(NOW),
            ..Default::default()
        }
    }

    /// Data-driven: mutate the good claims, expect exactly these codes.
    fn check(mutate: impl FnOnce(&mut AccessTokenClaims), expected: &[&str]) {
        let mut c = good();
        mutate(&mut c);
        let now = DateTime::from_timestamp(NOW, 0).unwrap();
        let got = BillingPolicy::default()
            .check(&c, &TenantId::parse("tenant-a").unwrap(), &ApplicationId::parse("app-a").unwrap(), now)
            .map_err(|v| v.codes().iter().map(|c| c.as_str()).collect::<Vec<_>>());
        let want = if expected.is_empty() { Ok(()) } else { Err(expected.to_vec()) };
        assert_eq!(got, want);
    }

    #[test]
    fn table_of_claims_and_expected_codes() {
        check(|_| {}, &[]);
        check(|c| c.scope = vec![DEVICE_WRITE_SCOPE.into()], &["missing_scope"]);
        check(|c| c.scope = vec!["billing:write".into()], &["short_scope_form"]);
        check(|c| c.scope = vec![], &["missing_scope"]);
        check(|c| c.aud = vec!["https://iot.oraclecloud.com".into()], &["audience_missing"]);
        check(|c| c.tenant_id = None, &["tenant_claim_missing"]);
        check(|c| c.tenant_id = Some("tenant-b".into()), &["tenant_mismatch"]);
        check(|c| c.client_id = Some("app-b".into()), &["application_mismatch"]);
        check(|c| c.client_id = None, &["application_mismatch"]);
        check(|c| c.exp = Some(NOW), &["token_expired"]);
        check(|c| c.exp = None, &["token_expired"]);
        check(|c| c.exp = Some(NOW + 1), &[]);
        // The thread's telemetry-only token: wrong scope and base audience only.
        check(
            |c| {
                c.scope = vec![DEVICE_WRITE_SCOPE.into()];
                c.aud = vec!["https://iot.oraclecloud.com".into()];
            },
            &["missing_scope", "audience_missing"],
        );
    }

    #[test]
    fn expires_too_soon_uses_the_configured_margin() {
        let policy = BillingPolicy::new(
            Scope::parse(BILLING_WRITE_SCOPE).unwrap(),
            Audience::parse(BILLING_AUDIENCE).unwrap(),
            Duration::from_secs(30),
        );
        let mut c = good();
        c.exp = Some(NOW + 10);
        let now = DateTime::from_timestamp(NOW, 0).unwrap();
        let v = policy.check(&c, &TenantId::parse("tenant-a").unwrap(), &ApplicationId::parse("app-a").unwrap(), now);
        assert_eq!(v.unwrap_err().codes(), [ViolationCode::ExpiresTooSoon]);
    }

    #[test]
    fn hints_say_what_to_change() {
        let mut c = good();
        c.scope = vec![DEVICE_WRITE_SCOPE.into()];
        let now = DateTime::from_timestamp(NOW, 0).unwrap();
        let v = BillingPolicy::default()
            .check(&c, &TenantId::parse("tenant-a").unwrap(), &ApplicationId::parse("app-a").unwrap(), now)
            .unwrap_err();
        assert_eq!(
            v.as_slice()[0].hint,
            "the token's scope is \"urn:oracle:iot:device:write\"; billing needs \"urn:oracle:iot:billing:write\". \
             Enable Billing Services for client app-a (Applications > OAuth Clients) and request the full URN."
        );
    }

    #[test]
    fn headers_debug_hides_the_token() {
        let now = DateTime::from_timestamp(NOW, 0).unwrap();
        let h = BillingPolicy::default()
            .authorize(
                AccessToken::new("very-secret-token"),
                good(),
                &TenantId::parse("tenant-a").unwrap(),
                &ApplicationId::parse("app-a").unwrap(),
                now,
            )
            .unwrap();
        assert!(!format!("{h:?}").contains("very-secret-token"));
        assert_eq!(h.bearer_token(), "very-secret-token");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        // Weighted towards the good value, so that most cases break one rule or none: a bug in
        // a single rule cannot hide behind another rule failing.
        fn scopes() -> impl Strategy<Value = Vec<String>> {
            prop_oneof![
                6 => Just(vec![BILLING_WRITE_SCOPE.to_owned()]),
                2 => Just(vec!["openid".to_owned(), BILLING_WRITE_SCOPE.to_owned()]),
                1 => Just(vec!["billing:write".to_owned()]),
                1 => Just(vec!["write".to_owned()]),
                1 => Just(vec![DEVICE_WRITE_SCOPE.to_owned()]),
                1 => Just(vec!["urn:oracle:iot:billing:read".to_owned()]),
                1 => Just(vec![]),
                1 => proptest::collection::vec("[a-z:]{1,12}", 0..3),
            ]
        }

        fn audiences() -> impl Strategy<Value = Vec<String>> {
            prop_oneof![
                6 => Just(vec![BILLING_AUDIENCE.to_owned()]),
                2 => Just(vec!["https://iot.oraclecloud.com".to_owned(), BILLING_AUDIENCE.to_owned()]),
                1 => Just(vec!["https://iot.oraclecloud.com".to_owned()]),
                1 => Just(vec!["https://iot.oraclecloud.com/billing/".to_owned()]),
                1 => Just(vec![]),
            ]
        }

        fn id(good: &'static str) -> impl Strategy<Value = Option<String>> {
            prop_oneof![
                8 => Just(Some(good.to_owned())),
                1 => Just(None),
                1 => Just(Some("tenant-b".to_owned())),
                1 => Just(Some(format!("{good}x"))),
            ]
        }

        fn claims() -> impl Strategy<Value = AccessTokenClaims> {
            let exp = prop_oneof![6 => (0i64..2000).prop_map(Some), 3 => (-2i64..=2).prop_map(Some), 1 => Just(None)];
            (scopes(), audiences(), id("tenant-a"), id("app-a"), exp).prop_map(
                |(scope, aud, tenant_id, client_id, exp)| AccessTokenClaims {
                    scope,
                    aud,
                    tenant_id,
                    client_id,
                    exp: exp.map(|e| NOW + e),
                    iat: Some(NOW - 60),
                    ..Default::default()
                },
            )
        }

        proptest! {
            /// Computed independently of the implementation, rule by rule.
            #[test]
            fn the_policy_accepts_exactly_when_every_rule_holds(
                c in claims(),
                tenant in prop_oneof![4 => Just("tenant-a"), 1 => Just("tenant-b")],
                app in prop_oneof![4 => Just("app-a"), 1 => Just("tenant-a")],
            ) {
                let now = DateTime::from_timestamp(NOW, 0).unwrap();
                let expected = c.scope.iter().any(|s| s == BILLING_WRITE_SCOPE)
                    && c.aud.iter().any(|a| a == BILLING_AUDIENCE)
                    && c.tenant_id.as_deref() == Some(tenant)
                    && c.client_id.as_deref() == Some(app)
                    && c.exp.is_some_and(|e| e - NOW >= 1);
                let got = BillingPolicy::default()
                    .check(&c, &TenantId::parse(tenant).unwrap(), &ApplicationId::parse(app).unwrap(), now);
                prop_assert_eq!(got.is_ok(), expected, "{:?}", got);
                if let Err(v) = got {
                    prop_assert!(!v.as_slice().is_empty());
                }
            }

            #[test]
            fn tenant_header_always_equals_tenant_claim(
                c in claims(),
                tenant in prop_oneof![Just("tenant-a"), Just("tenant-b")],
            ) {
                let now = DateTime::from_timestamp(NOW, 0).unwrap();
                let app = ApplicationId::parse("app-a").unwrap();
                if let Ok(h) = BillingPolicy::default().authorize(
                    AccessToken::new("t"), c.clone(), &TenantId::parse(tenant).unwrap(), &app, now,
                ) {
                    prop_assert_eq!(Some(h.tenant_id().as_str()), c.tenant_id.as_deref());
                    prop_assert_eq!(Some(h.application_id().as_str()), c.client_id.as_deref());
                }
            }
        }
    }
}
