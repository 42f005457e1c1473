//! The audit log (docs/platform.md section 6) and the request counters.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Why a request was refused, as the platform's audit log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    /// The token lacks the scope the endpoint needs (billing write or read, device write).
    MissingScope,
    /// The token carries the short scope form (`billing:write`) instead of the full URN.
    ShortScopeForm,
    /// The token's `aud` lacks the audience the endpoint needs.
    AudienceMissing,
    /// The token has no `tenant_id` claim.
    TenantClaimMissing,
    /// `X-Tenant-ID` differs from the token's `tenant_id`.
    TenantMismatch,
    /// `X-Application-ID` differs from the token's `client_id` (or the token has none).
    ApplicationMismatch,
    /// Token and headers agree, but the client is not (or no longer) authorised for the tenant.
    TenantNotAuthorized,
    /// The token's `exp` has passed (or is absent).
    TokenExpired,
    /// The signature does not verify, or the `kid` is unknown.
    BadSignature,
    /// The token was revoked through the admin API.
    TokenRevoked,
    /// The request carried no `Authorization: Bearer` token.
    MissingToken,
    /// The bearer token is not a JWT at all.
    MalformedToken,
    /// The (tenant, client) pair is over its rate limit.
    RateLimited,
    /// `X-Tenant-ID` or `X-Application-ID` is missing.
    MissingHeader,
    /// The body or a parameter is malformed.
    InvalidRequest,
    /// More than 500 events or more than 1 MiB.
    PayloadTooLarge,
    /// Token endpoint: unknown client or wrong secret.
    InvalidClient,
    /// Token endpoint: a scope that does not exist.
    InvalidScope,
    /// Token endpoint: a grant type other than `client_credentials`.
    UnsupportedGrantType,
    /// Token endpoint: `client_assertion` is not a JWT with the claims an assertion needs
    /// (`iss`, `sub`, `aud`, `jti`, `iat` and `exp`, the times in whole seconds).
    MalformedAssertion,
    /// Token endpoint: the assertion's `sub`, or the `client_id` parameter, is not its `iss`.
    AssertionClientMismatch,
    /// Token endpoint: the assertion's `kid` is not the key id registered for its client.
    UnknownKey,
    /// Token endpoint: the assertion's signature does not verify with the client's key, or its
    /// `alg` is not the key's (RS256 for an RSA key, ES256 for a P-256 key).
    BadAssertionSignature,
    /// Token endpoint: the assertion's `aud` is not the URL of the token endpoint posted to.
    AssertionAudience,
    /// Token endpoint: the assertion lives longer than 300 s (`exp - iat`).
    AssertionLifetime,
    /// Token endpoint: the assertion's `exp` has passed.
    AssertionExpired,
    /// Token endpoint: the assertion's `iat` (or `nbf`) is more than 60 s ahead.
    AssertionNotYetValid,
    /// Token endpoint: the client has used the assertion's `jti` before, within that
    /// assertion's lifetime.
    AssertionReplayed,
    /// Token endpoint: the assertion-only endpoint got a secret, or no credentials.
    AssertionRequired,
    /// Token endpoint: a client registered with a secret presented an assertion.
    AssertionNotAllowed,
    /// Token endpoint: a client registered for assertions presented a secret.
    SecretNotAllowed,
    /// An injected fault answered `503`.
    InjectedUnavailable,
    /// An injected fault answered `429`.
    InjectedRateLimited,
    /// An injected fault dropped the connection after the request was processed.
    InjectedConnectionDrop,
    /// An injected `lose_after_accept` fault made the platform forget events it had just
    /// accepted (the request was answered `202`; the entry's `detail` names the events).
    InjectedLostAfterAccept,
}

impl Reason {
    /// The code as the audit log writes it (`missing_scope`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingScope => "missing_scope",
            Self::ShortScopeForm => "short_scope_form",
            Self::AudienceMissing => "audience_missing",
            Self::TenantClaimMissing => "tenant_claim_missing",
            Self::TenantMismatch => "tenant_mismatch",
            Self::ApplicationMismatch => "application_mismatch",
            Self::TenantNotAuthorized => "tenant_not_authorized",
            Self::TokenExpired => "token_expired",
            Self::BadSignature => "bad_signature",
            Self::TokenRevoked => "token_revoked",
            Self::MissingToken => "missing_token",
            Self::MalformedToken => "malformed_token",
            Self::RateLimited => "rate_limited",
            Self::MissingHeader => "missing_header",
            Self::InvalidRequest => "invalid_request",
            Self::PayloadTooLarge => "payload_too_large",
            Self::InvalidClient => "invalid_client",
            Self::InvalidScope => "invalid_scope",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::MalformedAssertion => "malformed_assertion",
            Self::AssertionClientMismatch => "assertion_client_mismatch",
            Self::UnknownKey => "unknown_key",
            Self::BadAssertionSignature => "bad_assertion_signature",
            Self::AssertionAudience => "assertion_audience",
            Self::AssertionLifetime => "assertion_lifetime",
            Self::AssertionExpired => "assertion_expired",
            Self::AssertionNotYetValid => "assertion_not_yet_valid",
            Self::AssertionReplayed => "assertion_replayed",
            Self::AssertionRequired => "assertion_required",
            Self::AssertionNotAllowed => "assertion_not_allowed",
            Self::SecretNotAllowed => "secret_not_allowed",
            Self::InjectedUnavailable => "injected_unavailable",
            Self::InjectedRateLimited => "injected_rate_limited",
            Self::InjectedConnectionDrop => "injected_connection_drop",
            Self::InjectedLostAfterAccept => "injected_lost_after_accept",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rejected request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AuditEntry {
    /// Position in the log, from 1.
    pub seq: u64,
    /// When the request was refused.
    pub time: DateTime<Utc>,
    /// Method and path template (`POST /iot/api/v2/billing/events`).
    pub endpoint: String,
    /// The status answered (`0` when the connection was dropped without one).
    pub status: u16,
    /// Every problem found, in check order (all claim problems at once).
    pub reasons: Vec<Reason>,
    /// The client, when known (token claim, `X-Application-ID` or token request).
    pub client_id: Option<String>,
    /// The tenant, when known (`X-Tenant-ID` or the token's claim).
    pub tenant_id: Option<String>,
    /// The token's id, when a token was decoded.
    pub jti: Option<String>,
    /// Details in plain words (never a secret or a token).
    pub detail: Option<String>,
}

impl AuditEntry {
    /// Whether the entry lists this reason.
    pub fn has(&self, reason: Reason) -> bool {
        self.reasons.contains(&reason)
    }
}

/// What the audit log keeps at most by default ([`crate::EmulatorConfig::audit_capacity`]);
/// older entries are dropped first, and counted.
pub const AUDIT_CAPACITY: usize = 100_000;

/// The audit log: a ring buffer of `capacity` entries that counts what it drops.
#[derive(Debug)]
pub(crate) struct AuditLog {
    capacity: usize,
    inner: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    /// The last `seq` given.
    seq: u64,
    /// Entries pushed out by the capacity since start (clearing the log is not dropping).
    dropped: u64,
    entries: VecDeque<AuditEntry>,
}

/// What an audit entry is made of before it gets its number and time.
#[derive(Debug, Default, Clone)]
pub(crate) struct AuditDraft {
    pub endpoint: &'static str,
    pub status: u16,
    pub reasons: Vec<Reason>,
    pub client_id: Option<String>,
    pub tenant_id: Option<String>,
    pub jti: Option<String>,
    pub detail: Option<String>,
}

impl AuditLog {
    /// An empty log keeping at most `capacity` entries (at least 1).
    pub(crate) fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), inner: Mutex::default() }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many entries the capacity has pushed out since start.
    pub(crate) fn dropped(&self) -> u64 {
        self.ring().dropped
    }

    /// The entries and the dropped count, read together.
    pub(crate) fn snapshot(&self) -> (Vec<AuditEntry>, u64) {
        let g = self.ring();
        (g.entries.iter().cloned().collect(), g.dropped)
    }

    pub(crate) fn record(&self, d: AuditDraft) {
        tracing::info!(
            endpoint = d.endpoint,
            status = d.status,
            reasons = ?d.reasons.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
            client_id = d.client_id.as_deref().unwrap_or("-"),
            tenant_id = d.tenant_id.as_deref().unwrap_or("-"),
            "request rejected"
        );
        let mut g = self.ring();
        g.seq += 1;
        let entry = AuditEntry {
            seq: g.seq,
            time: Utc::now(),
            endpoint: d.endpoint.to_owned(),
            status: d.status,
            reasons: d.reasons,
            client_id: d.client_id,
            tenant_id: d.tenant_id,
            jti: d.jti,
            detail: d.detail,
        };
        while g.entries.len() >= self.capacity {
            g.entries.pop_front();
            g.dropped += 1;
        }
        g.entries.push_back(entry);
    }

    pub(crate) fn entries(&self) -> Vec<AuditEntry> {
        self.ring().entries.iter().cloned().collect()
    }

    pub(crate) fn clear(&self) {
        self.ring().entries.clear();
    }
}

/// Counters since the emulator started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Counters {
    /// Requests answered, by status (`0` for dropped connections), all endpoints.
    pub requests_by_status: BTreeMap<u16, u64>,
    /// Requests answered, by endpoint (`POST /iot/api/v2/billing/events`).
    pub requests_by_endpoint: BTreeMap<String, u64>,
    /// Rejected requests, by reason (a request with two claim problems counts for both).
    pub rejections_by_reason: BTreeMap<Reason, u64>,
    /// Billing events newly stored, by tenant: the sum of the `accepted` of the `202`s, so it
    /// includes the events a `lose_after_accept` fault forgot afterwards.
    pub events_stored: BTreeMap<String, u64>,
    /// Accepted billing events forgotten by a `lose_after_accept` fault, by tenant.
    #[serde(default)]
    pub events_lost_after_accept: BTreeMap<String, u64>,
    /// Events stored through the admin API (`POST /admin/tenants/{tenant_id}/events`,
    /// [`crate::Emulator::insert_events`]), not through the billing endpoint, by tenant.
    #[serde(default)]
    pub events_inserted: BTreeMap<String, u64>,
    /// Billing events answered as duplicates, by tenant.
    pub events_duplicate: BTreeMap<String, u64>,
    /// Billing events refused inside a `202`, by tenant.
    pub events_rejected: BTreeMap<String, u64>,
    /// Telemetry messages accepted, by tenant.
    pub telemetry_accepted: BTreeMap<String, u64>,
    /// Tokens issued.
    pub tokens_issued: u64,
}

impl Counters {
    /// Requests answered with this status.
    pub fn status(&self, status: u16) -> u64 {
        self.requests_by_status.get(&status).copied().unwrap_or(0)
    }
    /// Rejections with this reason.
    pub fn reason(&self, reason: Reason) -> u64 {
        self.rejections_by_reason.get(&reason).copied().unwrap_or(0)
    }
    /// Events stored for this tenant.
    pub fn stored(&self, tenant_id: &str) -> u64 {
        self.events_stored.get(tenant_id).copied().unwrap_or(0)
    }
    /// Accepted events forgotten by a `lose_after_accept` fault for this tenant.
    pub fn lost_after_accept(&self, tenant_id: &str) -> u64 {
        self.events_lost_after_accept.get(tenant_id).copied().unwrap_or(0)
    }
    /// Events inserted through the admin API for this tenant.
    pub fn inserted(&self, tenant_id: &str) -> u64 {
        self.events_inserted.get(tenant_id).copied().unwrap_or(0)
    }
}

#[derive(Debug, Default)]
pub(crate) struct CounterCell(Mutex<Counters>);

impl CounterCell {
    pub(crate) fn update(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }
    pub(crate) fn snapshot(&self) -> Counters {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_serialise_as_their_codes() {
        for r in [
            Reason::MissingScope,
            Reason::ShortScopeForm,
            Reason::InjectedConnectionDrop,
            Reason::BadSignature,
            Reason::AssertionClientMismatch,
            Reason::AssertionNotYetValid,
            Reason::BadAssertionSignature,
            Reason::InjectedLostAfterAccept,
        ] {
            assert_eq!(serde_json::to_value(r).unwrap(), serde_json::Value::from(r.as_str()));
        }
    }

    #[test]
    fn the_log_numbers_entries_and_is_bounded() {
        let log = AuditLog::new(AUDIT_CAPACITY);
        log.record(AuditDraft {
            endpoint: "x",
            status: 401,
            reasons: vec![Reason::MissingScope],
            ..Default::default()
        });
        log.record(AuditDraft { endpoint: "y", status: 400, ..Default::default() });
        let e = log.entries();
        assert_eq!((e[0].seq, e[1].seq, e[1].endpoint.as_str()), (1, 2, "y"));
        log.clear();
        assert!(log.entries().is_empty());
    }

    #[test]
    fn a_full_log_drops_its_oldest_entries_and_counts_them() {
        let log = AuditLog::new(2);
        for endpoint in ["a", "b", "c", "d"] {
            log.record(AuditDraft { endpoint, status: 401, ..Default::default() });
        }
        let (entries, dropped) = log.snapshot();
        let kept: Vec<(u64, &str)> = entries.iter().map(|e| (e.seq, e.endpoint.as_str())).collect();
        assert_eq!((kept, dropped), (vec![(3, "c"), (4, "d")], 2));
        log.clear();
        log.record(AuditDraft { endpoint: "e", status: 401, ..Default::default() });
        assert_eq!((log.entries()[0].seq, log.dropped()), (5, 2), "clearing is not dropping");
        assert_eq!(AuditLog::new(0).capacity, 1);
    }
}
