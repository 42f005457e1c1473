//! The pure core of billsync: billing events (parsed, never raw), tenants and their
//! identifiers, access-token claims, the billing policy that names what is wrong with a token
//! before anything is sent, the refresh and rate policies, batching, the meaning of each
//! billing response, and the ports the adapters implement.
//!
//! Nothing here does I/O: no tokio, no HTTP, no SQL (`cargo xtask ci` checks the dependency
//! tree).
//!
//! # Example
//!
//! Check the thread's telemetry-only token before sending it:
//!
//! ```
//! use billsync_domain::{AccessTokenClaims, ApplicationId, BillingPolicy, TenantId, ViolationCode};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let claims: AccessTokenClaims = serde_json::from_str(
//!     r#"{"scope": "urn:oracle:iot:device:write", "aud": ["https://iot.oraclecloud.com"],
//!         "tenant_id": "tenant-a", "client_id": "app-a", "iat": 1800000000, "exp": 1800000900}"#,
//! )?;
//! let now = chrono::DateTime::from_timestamp(1_800_000_060, 0).ok_or("bad time")?;
//! let tenant = TenantId::parse("tenant-a")?;
//! let app = ApplicationId::parse("app-a")?;
//! let violations = BillingPolicy::default().check(&claims, &tenant, &app, now).unwrap_err();
//! assert_eq!(violations.codes(), [ViolationCode::MissingScope, ViolationCode::AudienceMissing]);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod batch;
pub mod challenge;
pub mod claims;
pub mod event;
pub mod ids;
pub mod policy;
pub mod ports;
pub mod rate;
pub mod reconcile;
pub mod refresh;
pub mod response;
pub mod secret;
pub mod settle;

pub use batch::{BatchBody, Batcher, InvalidBatchSize, MAX_BATCH_BYTES, MAX_BATCH_EVENTS};
pub use challenge::{Challenge, ChallengeError, parse_challenges};
pub use claims::AccessTokenClaims;
pub use event::{BillingEvent, EncodedEvent, EventError, EventRules, Quantity};
pub use ids::{
    ApplicationId, Audience, BASE_AUDIENCE, BILLING_AUDIENCE, BILLING_READ_SCOPE, BILLING_WRITE_SCOPE, ClientId,
    DEVICE_WRITE_SCOPE, EventId, InvalidId, Scope, Tenant, TenantId, TenantName,
};
pub use policy::{BillingPolicy, BillingRequestHeaders, Violation, ViolationCode, Violations};
pub use ports::{
    BillingApi, BillingReader, BillingReply, Claim, ClaimOutcome, Clock, DeadLetter, DeadLetterRecord, EnqueueReport,
    Holder, Lease, LeaseId, ListAnswer, ListReply, ManualClock, Outbox, OutboxError, QUARANTINE_PAYLOAD_MAX,
    QuarantineSelection, QuarantineStore, Quarantined, ReconcileStore, RunId, StorageFailure, SystemClock,
    TenantCounts, TokenError, TokenSource, TransportError,
};
pub use rate::{RatePolicy, SharedWindow, SlidingWindow};
pub use reconcile::{
    Comparison, DayReport, DaySide, DaySummaries, Fact, FactError, HeldEvent, HeldPage, IdList, MeterTotals, Nanos,
    SummaryError, Window, WindowError, read_pause,
};
pub use refresh::{InvalidRefreshFraction, RefreshPolicy};
pub use response::{
    BillingResponse, EXCERPT_CHARS, HttpAnswer, MAX_RESPONSE_BODY, MAX_SERVER_WAIT, RateLimitStatus, Receipt,
    Rejection, classify, excerpt, parse_retry_after,
};
pub use secret::{AccessToken, ClientSecret};
pub use settle::{Attempt, BlockCause, Decision, RetryCause, Settlement, settle};

/// A duration the way people read it: `11m 32s`, `2h 5m`, `3s`, `-4s` for the past.
pub fn human_duration(d: chrono::Duration) -> String {
    let neg = d < chrono::Duration::zero();
    let s = d.num_seconds().unsigned_abs();
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    let body = match (h, m) {
        (0, 0) => format!("{sec}s"),
        (0, _) => format!("{m}m {sec}s"),
        _ => format!("{h}h {m}m"),
    };
    if neg { format!("-{body}") } else { body }
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_durations() {
        let d = chrono::Duration::seconds;
        assert_eq!(super::human_duration(d(692)), "11m 32s");
        assert_eq!(super::human_duration(d(3)), "3s");
        assert_eq!(super::human_duration(d(7500)), "2h 5m");
        assert_eq!(super::human_duration(d(-4)), "-4s");
    }
}
