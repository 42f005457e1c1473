//! The scopes and audiences of docs/platform.md section 2, the claims of a bearer token as the
//! platform reads them, and what each endpoint needs of them.
//!
//! The emulator's own referee: it uses neither the domain's claims type nor its
//! `BillingPolicy`, which the client side is tested against.

use serde::{Deserialize, Deserializer};

use crate::audit::Reason;

pub(crate) const BILLING_WRITE_SCOPE: &str = "urn:oracle:iot:billing:write";
pub(crate) const BILLING_READ_SCOPE: &str = "urn:oracle:iot:billing:read";
pub(crate) const DEVICE_WRITE_SCOPE: &str = "urn:oracle:iot:device:write";
/// The short scope forms that some consoles accept; the emulator grants them verbatim.
pub(crate) const SHORT_BILLING_WRITE: &str = "billing:write";
pub(crate) const SHORT_BILLING_READ: &str = "billing:read";
pub(crate) const SHORT_DEVICE_WRITE: &str = "device:write";
pub(crate) const BASE_AUDIENCE: &str = "https://iot.oraclecloud.com";
pub(crate) const BILLING_AUDIENCE: &str = "https://iot.oraclecloud.com/billing";

/// The claims of a bearer token whose signature verified. Lenient where issuers differ
/// (`scope` a space-separated string or a list, `aud` a string or a list, times integer or
/// fractional seconds; unknown claims ignored), strict on types: a registered claim of the
/// wrong type makes the token malformed.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct TokenClaims {
    #[serde(default, deserialize_with = "words")]
    pub scope: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default, deserialize_with = "seconds")]
    pub exp: Option<i64>,
    #[serde(default)]
    pub jti: Option<String>,
    // Read only for their types.
    #[serde(default, rename = "iat", deserialize_with = "seconds")]
    _iat: Option<i64>,
    #[serde(default, rename = "iss")]
    _iss: Option<String>,
    #[serde(default, rename = "sub")]
    _sub: Option<String>,
}

impl TokenClaims {
    /// Whether the scope list holds exactly this scope.
    pub(crate) fn has_scope(&self, scope: &str) -> bool {
        self.scope.iter().any(|s| s == scope)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    })
}

fn words<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(OneOrMany::Many(v)) => v,
    })
}

/// Seconds since the epoch, integer or fractional (truncated); out of range counts as absent.
fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let n = Option::<serde_json::Number>::deserialize(d)?;
    Ok(n.and_then(|n| n.as_i64().or_else(|| n.as_f64().filter(|f| f.is_finite() && f.abs() < 1e15).map(|f| f as i64))))
}

/// What an endpoint needs of a token.
pub(crate) struct Need {
    pub scope: &'static str,
    pub short_scope: &'static str,
    pub audience: &'static str,
    pub tenant_claim_required: bool,
}

pub(crate) const BILLING_WRITE: Need = Need {
    scope: BILLING_WRITE_SCOPE,
    short_scope: SHORT_BILLING_WRITE,
    audience: BILLING_AUDIENCE,
    tenant_claim_required: true,
};
pub(crate) const BILLING_READ: Need = Need {
    scope: BILLING_READ_SCOPE,
    short_scope: SHORT_BILLING_READ,
    audience: BILLING_AUDIENCE,
    tenant_claim_required: true,
};
pub(crate) const DEVICE_WRITE: Need = Need {
    scope: DEVICE_WRITE_SCOPE,
    short_scope: SHORT_DEVICE_WRITE,
    audience: BASE_AUDIENCE,
    tenant_claim_required: false,
};

/// Every claim problem at once, in check order.
pub(crate) fn claim_problems(
    claims: &TokenClaims,
    need: &Need,
    tenant: &str,
    application: Option<&str>,
) -> Vec<Reason> {
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

/// The audit detail of claim problems, in words.
pub(crate) fn describe(
    problems: &[Reason],
    claims: &TokenClaims,
    need: &Need,
    tenant: &str,
    app: Option<&str>,
) -> String {
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

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn claims(json: Value) -> TokenClaims {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn claims_are_read_in_the_shapes_issuers_send() {
        let c = claims(json!({"scope": "a  b", "aud": "x", "exp": 1_700_000_900.5, "extra": {"y": 1}}));
        assert_eq!(
            (c.scope, c.aud, c.exp),
            (vec!["a".to_owned(), "b".to_owned()], vec!["x".to_owned()], Some(1_700_000_900))
        );
        let c = claims(json!({"scope": ["a"], "aud": ["x", "y"], "exp": null}));
        assert_eq!((c.scope.len(), c.aud.len(), c.exp), (1, 2, None));
        for wrong in [json!({"tenant_id": 5}), json!({"iss": 1}), json!({"iat": "x"}), json!({"scope": 1})] {
            assert!(serde_json::from_value::<TokenClaims>(wrong.clone()).is_err(), "{wrong}");
        }
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
}
