//! `billsync token inspect`: decode any JWT (no signature check), show its header, claims and
//! times, and say whether it is ready for billing, with the policy's codes and hints.

use std::fmt;

use billsync_domain::{
    AccessTokenClaims, ApplicationId, BillingPolicy, RefreshPolicy, TenantId, Violation, ViolationCode, Violations,
    human_duration,
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::diagnose::{Check, claim_check_list};
use crate::jwt::{DecodedJwt, InspectError, decode_unverified};

/// Times of a token, absolute (UTC) and relative to the moment of inspection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenTimes {
    /// `iat`.
    pub issued_at: Option<DateTime<Utc>>,
    /// `iat` relative to now (`2m 3s ago`).
    pub issued: Option<String>,
    /// `exp`.
    pub expires_at: Option<DateTime<Utc>>,
    /// `exp` relative to now (`expires in 11m 32s`, `expired 3s ago`).
    pub expires: Option<String>,
    /// `exp - iat` (`15m 0s`).
    pub lifetime: Option<String>,
    /// When billsync would refresh it (80% of the lifetime by default).
    pub refresh_at: Option<DateTime<Utc>>,
}

/// What [`inspect`] found. `Display` is the human report; `Serialize` is `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    header: Map<String, Value>,
    claims: Map<String, Value>,
    #[serde(skip)]
    parsed: AccessTokenClaims,
    times: TokenTimes,
    ready: bool,
    violations: Vec<Violation>,
    checks: Vec<Check>,
    not_checked: Vec<String>,
    signature: String,
}

impl Inspection {
    /// The JOSE header, as given.
    pub fn header(&self) -> &Map<String, Value> {
        &self.header
    }
    /// Every claim of the payload, as given.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }
    /// The registered claims, parsed.
    pub fn parsed_claims(&self) -> &AccessTokenClaims {
        &self.parsed
    }
    /// Issue, expiry and refresh times.
    pub fn times(&self) -> &TokenTimes {
        &self.times
    }
    /// Whether the token passes every check that could be run.
    pub fn ready(&self) -> bool {
        self.ready
    }
    /// The broken rules.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }
    /// Just their codes.
    pub fn codes(&self) -> Vec<ViolationCode> {
        self.violations.iter().map(|v| v.code).collect()
    }
    /// Per-claim checks, as in the diagnosis.
    pub fn checks(&self) -> &[Check] {
        &self.checks
    }
    /// What could not be checked, and why.
    pub fn not_checked(&self) -> &[String] {
        &self.not_checked
    }
}

/// Decodes `token` (a JWT, optionally prefixed with `Bearer `) and checks it against `policy`
/// at `now`. Without `tenant_id` / `application_id`, the token's own `tenant_id` / `client_id`
/// are assumed to match the headers and that is listed in [`Inspection::not_checked`].
///
/// # Errors
/// [`InspectError`] naming what is wrong when `token` is not a decodable JWT (empty, too
/// large, not base64url, not three segments, not JSON, ...). Never panics.
pub fn inspect(
    token: &str,
    tenant_id: Option<&TenantId>,
    application_id: Option<&ApplicationId>,
    policy: &BillingPolicy,
    now: DateTime<Utc>,
) -> Result<Inspection, InspectError> {
    let jwt = decode_unverified(token)?;
    let claims = jwt.claims.clone();
    let mut not_checked = Vec::new();
    let ids = HeaderIds::for_token(&claims, tenant_id, application_id, &mut not_checked)?;
    let found = policy.check(&claims, &ids.tenant, &ids.app, now).err();
    let violations = ids.reported(&claims, found.as_ref());
    not_checked.push("signature (inspect decodes without verifying; use doctor with verify_jwks)".to_owned());
    let checks = ids.checks(&claims, found.as_ref(), &violations);
    let times = times(&claims, now, &RefreshPolicy::default());
    let signature = signature_summary(&jwt);
    Ok(Inspection {
        header: jwt.header,
        claims: jwt.payload,
        parsed: claims,
        times,
        ready: violations.is_empty(),
        violations,
        checks,
        not_checked,
        signature,
    })
}

/// The ids a token is checked against (the headers it would be sent with), and whether the
/// caller gave them or they were taken from the token itself.
struct HeaderIds {
    tenant: TenantId,
    tenant_given: bool,
    app: ApplicationId,
    app_given: bool,
}

impl HeaderIds {
    /// The caller's ids; without them, the token's own (so only their absence counts), each
    /// such assumption noted in `not_checked`.
    fn for_token(
        claims: &AccessTokenClaims,
        tenant_id: Option<&TenantId>,
        application_id: Option<&ApplicationId>,
        not_checked: &mut Vec<String>,
    ) -> Result<Self, InspectError> {
        let placeholder_tenant =
            TenantId::parse("unspecified-tenant").map_err(|e| InspectError::InvalidClaims { reason: e.to_string() })?;
        let placeholder_app = ApplicationId::parse("unspecified-application")
            .map_err(|e| InspectError::InvalidClaims { reason: e.to_string() })?;
        let (tenant, tenant_given) = match tenant_id {
            Some(t) => (t.clone(), true),
            None => {
                not_checked.push("X-Tenant-ID = tenant_id claim (no tenant id given)".to_owned());
                (claims.tenant_id.as_deref().and_then(|t| TenantId::parse(t).ok()).unwrap_or(placeholder_tenant), false)
            }
        };
        let (app, app_given) = match application_id {
            Some(a) => (a.clone(), true),
            None => {
                not_checked.push("X-Application-ID = client_id claim (no application id given)".to_owned());
                (
                    claims.client_id.as_deref().and_then(|c| ApplicationId::parse(c).ok()).unwrap_or(placeholder_app),
                    false,
                )
            }
        };
        Ok(Self { tenant, tenant_given, app, app_given })
    }

    /// The policy's violations, less the header mismatches that only an assumed id produced.
    fn reported(&self, claims: &AccessTokenClaims, found: Option<&Violations>) -> Vec<Violation> {
        let Some(v) = found else { return Vec::new() };
        v.as_slice()
            .iter()
            .filter(|x| match x.code {
                ViolationCode::TenantMismatch => self.tenant_given,
                ViolationCode::ApplicationMismatch => self.app_given || claims.client_id.is_none(),
                _ => true,
            })
            .cloned()
            .collect()
    }

    /// The per-claim checks, agreeing with the `reported` violations, plus a check of each
    /// header whose id the caller gave.
    fn checks(&self, claims: &AccessTokenClaims, found: Option<&Violations>, reported: &[Violation]) -> Vec<Check> {
        let mut checks = claim_check_list(claims, found, false, None);
        // Keep checks consistent with the filtered violations.
        for c in &mut checks {
            if let Some(r) = c.reason() {
                if !reported.iter().any(|v| v.code.as_str() == r) {
                    *c = Check::pass(c.name(), c.hint().map(str::to_owned));
                }
            }
        }
        if self.tenant_given || self.app_given {
            checks.extend(
                claim_check_list(claims, found, false, Some((self.tenant.as_str(), self.app.as_str())))
                    .into_iter()
                    .filter(|c| {
                        (c.name() == "header.x_tenant_id" && self.tenant_given)
                            || (c.name() == "header.x_application_id" && self.app_given)
                    }),
            );
        }
        checks
    }
}

/// The signature as inspect reports it: its algorithm and size, never verified, or unsigned.
fn signature_summary(jwt: &DecodedJwt) -> String {
    let alg = jwt.header_str("alg").unwrap_or("(missing)").to_owned();
    if alg.eq_ignore_ascii_case("none") || jwt.signature_len == 0 {
        format!("UNSIGNED (alg {alg}): the platform refuses unsigned tokens")
    } else {
        format!("{alg}, {} bytes, not verified", jwt.signature_len)
    }
}

/// Whether a time is in a range where arithmetic on it cannot overflow.
fn sane(t: DateTime<Utc>) -> bool {
    (0..=253_402_300_799).contains(&t.timestamp()) // 1970 ..= 9999-12-31
}

fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let d = t - now;
    if d >= chrono::Duration::zero() {
        format!("in {}", human_duration(d))
    } else {
        format!("{} ago", human_duration(-d))
    }
}

fn times(claims: &AccessTokenClaims, now: DateTime<Utc>, refresh: &RefreshPolicy) -> TokenTimes {
    let iat = claims.issued_at().filter(|t| sane(*t));
    let exp = claims.expires_at().filter(|t| sane(*t));
    let ok_now = sane(now);
    TokenTimes {
        issued_at: claims.issued_at(),
        issued: iat.filter(|_| ok_now).map(|t| relative(t, now)),
        expires_at: claims.expires_at(),
        expires: exp.filter(|_| ok_now).map(|t| {
            if t > now {
                format!("expires in {}", human_duration(t - now))
            } else {
                format!("expired {} ago", human_duration(now - t))
            }
        }),
        lifetime: iat.zip(exp).map(|(i, e)| human_duration(e - i)),
        refresh_at: iat.zip(exp).map(|(i, e)| refresh.refresh_at(i, e)),
    }
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hs = |k: &str| self.header.get(k).map(compact).unwrap_or_else(|| "(absent)".to_owned());
        writeln!(f, "Header     alg {}  typ {}  kid {}", hs("alg"), hs("typ"), hs("kid"))?;
        writeln!(f, "Signature  {}", self.signature)?;
        writeln!(f, "Claims")?;
        let order = ["scope", "aud", "tenant_id", "client_id", "iss", "sub", "jti"];
        for k in order {
            writeln!(f, "  {k:<10} {}", self.claims.get(k).map(compact).unwrap_or_else(|| "(absent)".to_owned()))?;
        }
        let t = &self.times;
        let when = |abs: Option<DateTime<Utc>>, rel: &Option<String>| match (abs, rel) {
            (Some(a), Some(r)) => format!("{} ({r})", a.to_rfc3339()),
            (Some(a), None) => a.to_rfc3339(),
            (None, _) => "(absent)".to_owned(),
        };
        writeln!(f, "  {:<10} {}", "iat", when(t.issued_at, &t.issued))?;
        writeln!(f, "  {:<10} {}", "exp", when(t.expires_at, &t.expires))?;
        if let Some(l) = &t.lifetime {
            write!(f, "  {:<10} {l}", "lifetime")?;
            if let Some(r) = t.refresh_at {
                write!(f, "; billsync refreshes at {}", r.to_rfc3339())?;
            }
            writeln!(f)?;
        }
        for (k, v) in &self.claims {
            if !order.contains(&k.as_str()) && k != "iat" && k != "exp" {
                writeln!(f, "  {k:<10} {}", compact(v))?;
            }
        }
        if self.ready {
            writeln!(f, "Billing    READY")?;
        } else {
            writeln!(f, "Billing    NOT READY")?;
            for v in &self.violations {
                writeln!(f, "  [{}] {}", v.code, v.hint)?;
            }
        }
        for n in &self.not_checked {
            writeln!(f, "  not checked: {n}")?;
        }
        Ok(())
    }
}

fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.chars().filter(|c| !c.is_control()).collect(),
        Value::Array(a) => a.iter().map(compact).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}
