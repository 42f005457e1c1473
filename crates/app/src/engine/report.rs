//! What the engine knows of each tenant: counts, state, and why it is blocked.

use billsync_domain::{BillingRequestHeaders, BlockCause, Tenant, TokenError, Violations};
use chrono::{DateTime, Utc};
use serde::Serialize;

/// Why a tenant is blocked: a configuration problem that retrying cannot fix. Its events stay
/// pending; a configuration problem never dead-letters events.
///
/// Every `Blocked` is made here, by one of its constructors, from what said no: the token
/// endpoint or the preflight ([`Blocked::by_token`]), the billing endpoint
/// ([`Blocked::by_platform`]), or a run of answers outside the contract
/// ([`Blocked::unexpected`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Blocked {
    /// Each reason, in the order found.
    pub reasons: Vec<Reason>,
}

/// One reason a tenant is blocked.
///
/// In JSON (`status --json`, the saved state) `platform_description` and `required_scope` are
/// written only when set, and read as `None` when absent, so the shape `{"code", "hint"}` of
/// every other reason is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Reason {
    /// The reason code (`missing_scope`, `tenant_not_authorized`, `invalid_client`, ...).
    pub code: String,
    /// What to change.
    pub hint: String,
    /// What the platform said was wrong (`insufficient_claims`: its `error_description`), made
    /// safe to show; the hint quotes it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_description: Option<String>,
    /// The scope the platform requires (`insufficient_claims`: its challenge's `scope`); the
    /// hint names it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_scope: Option<String>,
}

impl Reason {
    /// A reason with a code and a hint, and nothing the platform said.
    pub fn new(code: impl Into<String>, hint: impl Into<String>) -> Self {
        Self { code: code.into(), hint: hint.into(), platform_description: None, required_scope: None }
    }
}

impl Blocked {
    /// One reason.
    pub fn one(code: impl Into<String>, hint: impl Into<String>) -> Self {
        Self { reasons: vec![Reason::new(code, hint)] }
    }

    /// The reason codes, in order.
    pub fn codes(&self) -> Vec<&str> {
        self.reasons.iter().map(|r| r.code.as_str()).collect()
    }

    /// The token could not be had, for good: the preflight found claims the billing policy
    /// refuses, or the token endpoint refused the client.
    pub fn by_token(tenant: &Tenant, e: &TokenError) -> Self {
        match e {
            TokenError::Policy(v) => Self::from_violations(v),
            TokenError::Refused { error, description } if error == "invalid_client" => Self::one(
                error.clone(),
                format!(
                    "the token endpoint does not accept client {}'s credentials{}; check client_id and its \
                     credential: the client secret, or for private_key_jwt the public key registered with the client \
                     (Applications > OAuth Clients; `billsync doctor` lists the likely causes).",
                    tenant.client_id(),
                    description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default()
                ),
            ),
            TokenError::Refused { error, .. } => Self::one(error.clone(), e.to_string()),
            TokenError::Credential { code, reason } => Self::one(code.clone(), reason.clone()),
            other => Self::one("token_error", other.to_string()),
        }
    }

    /// The billing endpoint refused the tenant's requests for a reason a retry cannot fix.
    /// `headers` are those of the refused request; their token had passed the preflight.
    pub fn by_platform(tenant: &Tenant, cause: &BlockCause, headers: &BillingRequestHeaders) -> Self {
        match cause {
            BlockCause::InsufficientClaims { description, scope } => {
                let said: Vec<String> = [
                    description.as_ref().map(|d| format!("the platform says: \"{d}\"")),
                    scope.as_ref().map(|s| format!("the platform requires scope \"{s}\"")),
                ]
                .into_iter()
                .flatten()
                .collect();
                let said = if said.is_empty() { String::new() } else { format!(" ({})", said.join("; ")) };
                let hint = format!(
                    "the platform refused the token as having insufficient claims{said}, but billsync's own check \
                     finds nothing wrong with them ({}); the platform knows something we do not: check IoT Console \
                     > Monitoring > API Access for the detailed reason.",
                    serde_json::to_string(headers.claims()).unwrap_or_default()
                );
                Self {
                    reasons: vec![Reason {
                        platform_description: description.clone(),
                        required_scope: scope.clone(),
                        ..Reason::new("insufficient_claims", hint)
                    }],
                }
            }
            BlockCause::MissingHeader { description } => {
                Self::one("missing_header", format!("the platform says a required header is missing: {description}"))
            }
            BlockCause::TenantNotAuthorized => Self::one(
                "tenant_not_authorized",
                format!(
                    "token and headers agree, but client {} is not authorised for tenant {}. Authorise it in \
                     Applications > OAuth Clients > {} on the platform console.",
                    tenant.client_id(),
                    tenant.tenant_id(),
                    tenant.client_id()
                ),
            ),
        }
    }

    /// `sync` gave up after `failures` answers in a row outside the contract, the last one
    /// described by `why`.
    pub fn unexpected(why: &str, failures: u32) -> Self {
        Self::one(
            "unexpected_response",
            format!(
                "{why}. Nothing was settled; {failures} answers in a row were like this. A proxy, WAF or captive \
                 portal may stand in front of platform.base_url."
            ),
        )
    }

    fn from_violations(v: &Violations) -> Self {
        Self { reasons: v.as_slice().iter().map(|v| Reason::new(v.code.to_string(), v.hint.clone())).collect() }
    }
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, r) in self.reasons.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", r.code, r.hint)?;
        }
        Ok(())
    }
}

/// What happened to one tenant during a sync.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct TenantReport {
    /// The tenant's local name.
    pub name: String,
    /// Events the platform newly accepted.
    pub accepted: u64,
    /// Events the platform already had (delivered as well).
    pub duplicates: u64,
    /// Events refused for good and dead-lettered.
    pub dead_lettered: u64,
    /// Billing requests sent.
    pub requests: u64,
    /// Set when the tenant is blocked.
    pub blocked: Option<Blocked>,
    /// The last transient error, if any.
    pub last_error: Option<String>,
    /// When the last token used expires.
    pub token_expires_at: Option<DateTime<Utc>>,
    /// Set when another agent holds this tenant.
    pub held_elsewhere: bool,
    /// Who holds it (`held by agent <id> on <host>, alive`), when another agent does.
    #[serde(default)]
    pub held_by: Option<String>,
    /// Whether the holder was seen alive (an OS lock, or a claim it renewed): its pending
    /// events are its work, and `sync` leaves them to it without failing.
    #[serde(default)]
    pub holder_alive: bool,
    /// Why the tenant is waiting before it sends again (`unexpected_response: ...`,
    /// `rate_limited: ...`), while it is; cleared by the next settled batch.
    #[serde(default)]
    pub backing_off: Option<String>,
    /// Why the tenant's worker ended unexpectedly, until it runs again.
    #[serde(default)]
    pub down: Option<String>,
}

/// A tenant's state, as `status`, `/metrics` and `/healthz` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantState {
    /// Delivering, or nothing to do.
    Ok,
    /// Waiting after a transient failure, an unexpected answer or the platform's rate limit.
    BackingOff,
    /// Stopped by a configuration problem (or, in `sync`, by answers outside the contract).
    Blocked,
    /// Another agent holds the tenant.
    Held,
    /// The tenant's worker ended unexpectedly and has not run again yet.
    Down,
}

impl TenantState {
    /// Every state, in the order `/metrics` lists them.
    pub const ALL: [TenantState; 5] = [Self::Ok, Self::BackingOff, Self::Blocked, Self::Held, Self::Down];

    /// The state's name (`backing_off`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::BackingOff => "backing_off",
            Self::Blocked => "blocked",
            Self::Held => "held",
            Self::Down => "down",
        }
    }
}

impl std::fmt::Display for TenantState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TenantReport {
    /// The tenant's state and, unless it is ok, why.
    pub fn state(&self) -> (TenantState, Option<String>) {
        if let Some(why) = &self.down {
            (TenantState::Down, Some(why.clone()))
        } else if let Some(b) = &self.blocked {
            (TenantState::Blocked, Some(b.codes().join(", ")))
        } else if self.held_elsewhere {
            (TenantState::Held, Some(self.held_by.clone().unwrap_or_else(|| "held by another agent".into())))
        } else if let Some(why) = &self.backing_off {
            (TenantState::BackingOff, Some(why.clone()))
        } else {
            (TenantState::Ok, None)
        }
    }

    /// Whether this engine did anything for the tenant (otherwise another process's saved
    /// report says more).
    pub fn touched(&self) -> bool {
        self.requests > 0 || self.blocked.is_some() || self.last_error.is_some() || self.down.is_some()
    }
}
