//! The settle rule: what a classified billing answer means for the batch that was sent.
//!
//! Only the platform's own word settles an event (acks it as delivered, or dead-letters it):
//! a `202` whose receipt accounts for exactly the batch, or a `400`/`413` carrying the
//! contract's JSON error for a single event. Every other answer settles nothing: it splits the
//! batch, waits, gets a new token, backs off or blocks the tenant, and the events stay pending.
//! `docs/decisions.md` ("The settle rule") states the same rule in prose.
//!
//! # Example
//!
//! ```
//! use billsync_domain::settle::{Attempt, Decision, settle};
//! use billsync_domain::{BillingResponse, EventId, Receipt};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let batch = [EventId::parse("e-1")?, EventId::parse("e-2")?];
//! // A receipt that counts three events for a batch of two settles nothing.
//! let answer = BillingResponse::Accepted(Receipt { accepted: 3, ..Receipt::default() });
//! assert!(matches!(settle(answer, &batch, Attempt::default()), Decision::Retry { .. }));
//! # Ok(())
//! # }
//! ```

use std::collections::HashSet;
use std::time::Duration;

use crate::{BillingResponse, DeadLetter, EncodedEvent, EventId, Receipt};

/// What the engine knows of the attempt that got the answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attempt {
    /// This batch was already re-sent once with a new token after `401 invalid_token`.
    pub token_renewed: bool,
}

/// What settling a batch does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The platform took the batch: ack `delivered`, dead-letter `dead`. Both only name ids of
    /// the batch, and together they name each of its events once.
    Settle(Settlement),
    /// Send each half of the batch on its own (settles nothing).
    Split,
    /// Keep every event pending and try again.
    Retry {
        /// The server's own wait (`Retry-After`), after which the same batch is sent again;
        /// `None`: the engine backs off (exponential, full jitter).
        wait: Option<Duration>,
        /// Why.
        cause: RetryCause,
    },
    /// The token was refused as invalid: get a new one and send the same batch once more.
    RenewTokenAndRetry,
    /// A configuration problem: block the tenant; its events stay pending.
    Block(BlockCause),
}

/// The outcome of a batch the platform took.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settlement {
    /// Delivered: newly accepted or already there.
    pub delivered: Vec<EventId>,
    /// Refused for good, with the platform's code.
    pub dead: Vec<DeadLetter>,
    /// How many of `delivered` the platform newly stored.
    pub accepted: u64,
    /// How many of `delivered` it already had.
    pub duplicates: u64,
}

/// Why a batch is tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryCause {
    /// `429`.
    RateLimited,
    /// `5xx`.
    ServerError {
        /// The status.
        status: u16,
    },
    /// `401 invalid_token` again, with a token fetched after the first one.
    InvalidTokenTwice,
    /// An answer outside the contract (`unexpected_response`).
    Unexpected {
        /// The status.
        status: u16,
        /// What came back (see [`BillingResponse::Unexpected`]).
        detail: String,
    },
}

impl RetryCause {
    /// The reason code shown to the operator (`rate_limited`, `server_error`,
    /// `invalid_token`, `unexpected_response`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::ServerError { .. } => "server_error",
            Self::InvalidTokenTwice => "invalid_token",
            Self::Unexpected { .. } => "unexpected_response",
        }
    }
}

impl std::fmt::Display for RetryCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::RateLimited => f.write_str("the platform answered 429 (rate limited)"),
            Self::ServerError { status } => write!(f, "the platform answered {status}"),
            Self::InvalidTokenTwice => f.write_str("the platform refused two fresh tokens as invalid"),
            Self::Unexpected { status, detail } => {
                write!(
                    f,
                    "unexpected_response: the billing endpoint answered {status}, which is not in the contract: {detail}"
                )
            }
        }
    }
}

/// Why a tenant is blocked by an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockCause {
    /// `400 missing_header`, with the platform's description.
    MissingHeader {
        /// Names the header.
        description: String,
    },
    /// `401 insufficient_claims` (the engine names the claim with the local policy), with
    /// what the platform said, as [`BillingResponse::InsufficientClaims`] carries it.
    InsufficientClaims {
        /// The platform's `error_description`, made safe to show; `None` when it gave none.
        description: Option<String>,
        /// The scope the platform requires (its challenge's `scope`); `None` when it named none.
        scope: Option<String>,
    },
    /// `403 tenant_not_authorized`.
    TenantNotAuthorized,
}

/// The settle rule. `batch` is what was sent, in order.
pub fn settle<E: AsRef<EventId>>(answer: BillingResponse, batch: &[E], attempt: Attempt) -> Decision {
    let single = batch.len() == 1;
    match answer {
        BillingResponse::Accepted(receipt) => match reconcile(&receipt, batch) {
            Ok(settlement) => Decision::Settle(settlement),
            Err(why) => unexpected(202, format!("a receipt that does not match the batch of {}: {why}", batch.len())),
        },
        BillingResponse::MissingHeader { description } => Decision::Block(BlockCause::MissingHeader { description }),
        BillingResponse::InvalidRequest { description } if single => {
            dead_alone(&batch[0], "invalid_request", description)
        }
        BillingResponse::PayloadTooLarge if single => {
            dead_alone(&batch[0], "payload_too_large", "the platform refused this event alone as too large".into())
        }
        BillingResponse::InvalidRequest { .. } | BillingResponse::PayloadTooLarge if batch.len() > 1 => Decision::Split,
        // A proxy's body limit answers 413 in its own words; halving settles nothing.
        BillingResponse::Unexpected { status: 413, .. } if batch.len() > 1 => Decision::Split,
        BillingResponse::InvalidRequest { .. } | BillingResponse::PayloadTooLarge => {
            unexpected(0, "an error for an empty batch".into())
        }
        BillingResponse::InvalidToken if !attempt.token_renewed => Decision::RenewTokenAndRetry,
        BillingResponse::InvalidToken => Decision::Retry { wait: None, cause: RetryCause::InvalidTokenTwice },
        BillingResponse::InsufficientClaims { description, scope } => {
            Decision::Block(BlockCause::InsufficientClaims { description, scope })
        }
        BillingResponse::TenantNotAuthorized => Decision::Block(BlockCause::TenantNotAuthorized),
        BillingResponse::RateLimited { retry_after } => Decision::Retry {
            wait: Some(retry_after.unwrap_or(Duration::from_secs(1))),
            cause: RetryCause::RateLimited,
        },
        BillingResponse::ServerError { status } => {
            Decision::Retry { wait: None, cause: RetryCause::ServerError { status } }
        }
        BillingResponse::Unexpected { status, detail } => unexpected(status, detail),
    }
}

fn unexpected(status: u16, detail: String) -> Decision {
    Decision::Retry { wait: None, cause: RetryCause::Unexpected { status, detail } }
}

fn dead_alone<E: AsRef<EventId>>(event: &E, code: &str, message: String) -> Decision {
    Decision::Settle(Settlement {
        dead: vec![DeadLetter { event_id: event.as_ref().clone(), code: code.into(), message }],
        ..Settlement::default()
    })
}

/// Checks a receipt against the batch: every listed id is in it and listed once, and
/// `accepted + duplicates + rejected` is its size.
fn reconcile<E: AsRef<EventId>>(receipt: &Receipt, batch: &[E]) -> Result<Settlement, String> {
    let in_batch: HashSet<&str> = batch.iter().map(|e| e.as_ref().as_str()).collect();
    let mut listed: HashSet<&str> = HashSet::new();
    let listed_ids =
        receipt.duplicates.iter().map(String::as_str).chain(receipt.rejected.iter().map(|r| r.event_id.as_str()));
    for id in listed_ids {
        if !in_batch.contains(id) {
            return Err(format!("it lists {id:?}, which was not sent"));
        }
        if !listed.insert(id) {
            return Err(format!("it lists {id:?} twice"));
        }
    }
    let total = receipt.accepted.checked_add(listed.len() as u64);
    if total != Some(batch.len() as u64) {
        return Err(format!(
            "accepted {} + duplicates {} + rejected {} is not {}",
            receipt.accepted,
            receipt.duplicates.len(),
            receipt.rejected.len(),
            batch.len()
        ));
    }
    let rejected: HashSet<&str> = receipt.rejected.iter().map(|r| r.event_id.as_str()).collect();
    let mut dead = Vec::with_capacity(receipt.rejected.len());
    let mut delivered = Vec::with_capacity(batch.len() - rejected.len());
    for e in batch {
        let id = e.as_ref();
        if !rejected.contains(id.as_str()) {
            delivered.push(id.clone());
        }
    }
    for r in &receipt.rejected {
        if let Some(e) = batch.iter().find(|e| e.as_ref().as_str() == r.event_id) {
            dead.push(DeadLetter { event_id: e.as_ref().clone(), code: r.code.clone(), message: r.message.clone() });
        }
    }
    Ok(Settlement { delivered, dead, accepted: receipt.accepted, duplicates: receipt.duplicates.len() as u64 })
}

impl AsRef<EventId> for EventId {
    fn as_ref(&self) -> &EventId {
        self
    }
}

impl AsRef<EventId> for EncodedEvent {
    fn as_ref(&self) -> &EventId {
        self.event_id()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::Rejection;
    use crate::response::{HttpAnswer, classify};

    fn ids(n: usize) -> Vec<EventId> {
        (0..n).map(|i| EventId::parse(format!("e-{i}")).unwrap()).collect()
    }

    fn receipt(accepted: u64, duplicates: &[&str], rejected: &[&str]) -> BillingResponse {
        BillingResponse::Accepted(Receipt {
            accepted,
            duplicates: duplicates.iter().map(|d| (*d).to_owned()).collect(),
            rejected: rejected
                .iter()
                .map(|r| Rejection { event_id: (*r).to_owned(), code: "invalid_quantity".into(), message: "m".into() })
                .collect(),
        })
    }

    fn unexpected_with(status: u16) -> impl Fn(&Decision) -> bool {
        move |d| matches!(d, Decision::Retry { wait: None, cause: RetryCause::Unexpected { status: s, .. } } if *s == status)
    }

    /// (name, what came back, the batch, token renewed, what the decision must be).
    type Row<'a> = (&'a str, BillingResponse, &'a [EventId], bool, Box<dyn Fn(&Decision) -> bool + 'a>);

    /// One row per kind of answer.
    #[test]
    #[allow(clippy::too_many_lines)] // a table: one row per kind of answer
    fn the_settle_table() {
        let three = ids(3);
        let one = ids(1);
        let dead = |code: &str, message: &str| {
            Decision::Settle(Settlement {
                dead: vec![DeadLetter { event_id: one[0].clone(), code: code.into(), message: message.into() }],
                ..Settlement::default()
            })
        };
        let rows: Vec<Row<'_>> = vec![
            (
                "202 consistent",
                receipt(1, &["e-0"], &["e-2"]),
                &three,
                false,
                Box::new(|d| {
                    *d == Decision::Settle(Settlement {
                        delivered: ids(2),
                        dead: vec![DeadLetter {
                            event_id: EventId::parse("e-2").unwrap(),
                            code: "invalid_quantity".into(),
                            message: "m".into(),
                        }],
                        accepted: 1,
                        duplicates: 1,
                    })
                }),
            ),
            ("202 counting too few", receipt(0, &[], &[]), &three, false, Box::new(unexpected_with(202))),
            ("202 counting too many", receipt(4, &[], &[]), &three, false, Box::new(unexpected_with(202))),
            ("202 naming an id not sent", receipt(2, &["x"], &[]), &three, false, Box::new(unexpected_with(202))),
            ("202 naming an id twice", receipt(1, &["e-0"], &["e-0"]), &three, false, Box::new(unexpected_with(202))),
            (
                "202 with u64::MAX accepted",
                receipt(u64::MAX, &["e-0"], &[]),
                &three,
                false,
                Box::new(unexpected_with(202)),
            ),
            (
                "400 missing_header",
                BillingResponse::MissingHeader { description: "X-Application-ID".into() },
                &one,
                false,
                Box::new(|d| {
                    *d == Decision::Block(BlockCause::MissingHeader { description: "X-Application-ID".into() })
                }),
            ),
            (
                "400 invalid_request, batch",
                BillingResponse::InvalidRequest { description: "bad".into() },
                &three,
                false,
                Box::new(|d| *d == Decision::Split),
            ),
            (
                "400 invalid_request, single",
                BillingResponse::InvalidRequest { description: "bad".into() },
                &one,
                false,
                Box::new(move |d| *d == dead("invalid_request", "bad")),
            ),
            (
                "413 contract, batch",
                BillingResponse::PayloadTooLarge,
                &three,
                false,
                Box::new(|d| *d == Decision::Split),
            ),
            (
                "413 contract, single",
                BillingResponse::PayloadTooLarge,
                &one,
                false,
                Box::new(move |d| {
                    *d == dead("payload_too_large", "the platform refused this event alone as too large")
                }),
            ),
            (
                "413 html, batch",
                BillingResponse::Unexpected { status: 413, detail: "<html>".into() },
                &three,
                false,
                Box::new(|d| *d == Decision::Split),
            ),
            (
                "413 html, single",
                BillingResponse::Unexpected { status: 413, detail: "<html>".into() },
                &one,
                false,
                Box::new(unexpected_with(413)),
            ),
            (
                "400 html",
                BillingResponse::Unexpected { status: 400, detail: "<html>".into() },
                &one,
                false,
                Box::new(unexpected_with(400)),
            ),
            (
                "401 invalid_token",
                BillingResponse::InvalidToken,
                &three,
                false,
                Box::new(|d| *d == Decision::RenewTokenAndRetry),
            ),
            (
                "401 invalid_token again",
                BillingResponse::InvalidToken,
                &three,
                true,
                Box::new(|d| *d == Decision::Retry { wait: None, cause: RetryCause::InvalidTokenTwice }),
            ),
            (
                "401 insufficient_claims",
                BillingResponse::InsufficientClaims { description: None, scope: None },
                &three,
                false,
                Box::new(|d| *d == Decision::Block(BlockCause::InsufficientClaims { description: None, scope: None })),
            ),
            (
                "401 insufficient_claims, saying why",
                BillingResponse::InsufficientClaims { description: Some("tenant".into()), scope: Some("s".into()) },
                &three,
                true,
                Box::new(|d| {
                    *d == Decision::Block(BlockCause::InsufficientClaims {
                        description: Some("tenant".into()),
                        scope: Some("s".into()),
                    })
                }),
            ),
            (
                "403",
                BillingResponse::TenantNotAuthorized,
                &three,
                false,
                Box::new(|d| *d == Decision::Block(BlockCause::TenantNotAuthorized)),
            ),
            (
                "429 with Retry-After",
                BillingResponse::RateLimited { retry_after: Some(Duration::from_secs(7)) },
                &three,
                false,
                Box::new(|d| {
                    *d == Decision::Retry { wait: Some(Duration::from_secs(7)), cause: RetryCause::RateLimited }
                }),
            ),
            (
                "429 without",
                BillingResponse::RateLimited { retry_after: None },
                &three,
                false,
                Box::new(|d| {
                    *d == Decision::Retry { wait: Some(Duration::from_secs(1)), cause: RetryCause::RateLimited }
                }),
            ),
            (
                "503",
                BillingResponse::ServerError { status: 503 },
                &three,
                false,
                Box::new(|d| *d == Decision::Retry { wait: None, cause: RetryCause::ServerError { status: 503 } }),
            ),
            (
                "302",
                BillingResponse::Unexpected { status: 302, detail: "a redirect".into() },
                &three,
                false,
                Box::new(unexpected_with(302)),
            ),
        ];
        for (name, answer, batch, token_renewed, expected) in rows {
            let d = settle(answer, batch, Attempt { token_renewed });
            assert!(expected(&d), "{name}: {d:?}");
        }
    }

    /// Raw answers as a hostile peer might send them: statuses across the range, bodies that
    /// are receipts (sound or not), contract errors, HTML, or noise.
    fn raw_answer(n: usize) -> impl Strategy<Value = (u16, String)> {
        // A receipt that accounts for the batch exactly: each event accepted (0), duplicate
        // (1) or rejected (2).
        let sound = proptest::collection::vec(0u8..3, n).prop_map(|fates| {
            let named = |f: u8| fates.iter().enumerate().filter(move |(_, x)| **x == f).map(|(i, _)| format!("e-{i}"));
            serde_json::json!({
                "accepted": fates.iter().filter(|f| **f == 0).count(),
                "duplicates": named(1).collect::<Vec<_>>(),
                "rejected": named(2).map(|r| serde_json::json!({"event_id": r, "code": "c", "message": "m"})).collect::<Vec<_>>(),
            })
            .to_string()
        });
        let id = prop_oneof![(0usize..12).prop_map(|i| format!("e-{i}")), "[a-z]{1,3}"];
        let receipt = (0u64..15, proptest::collection::vec(id.clone(), 0..6), proptest::collection::vec(id, 0..6))
            .prop_map(|(accepted, dups, rejected)| {
                serde_json::json!({
                    "accepted": accepted,
                    "duplicates": dups,
                    "rejected": rejected.iter().map(|r| serde_json::json!({"event_id": r, "code": "c", "message": "m"})).collect::<Vec<_>>(),
                })
                .to_string()
            });
        let error = prop_oneof![
            Just("invalid_request"),
            Just("missing_header"),
            Just("payload_too_large"),
            Just("tenant_not_authorized"),
            Just("invalid_token"),
            Just("other")
        ]
        .prop_map(|e| serde_json::json!({"error": e, "error_description": "d"}).to_string());
        let body = prop_oneof![sound, receipt, error, Just("<html>Bad Request</html>".to_owned()), ".{0,40}"];
        let status = prop_oneof![
            Just(200u16),
            Just(202),
            Just(302),
            Just(400),
            Just(401),
            Just(403),
            Just(413),
            Just(429),
            100u16..600
        ];
        (status, body)
    }

    /// Whether an answer is the platform's word that may dead-letter: a `202` receipt, or a
    /// `400`/`413` with the contract's JSON error.
    fn may_dead_letter(status: u16, body: &str) -> bool {
        let error =
            serde_json::from_str::<serde_json::Value>(body).ok().and_then(|v| v["error"].as_str().map(str::to_owned));
        match status {
            202 => serde_json::from_str::<Receipt>(body).is_ok(),
            400 => error.as_deref() == Some("invalid_request"),
            413 => error.as_deref() == Some("payload_too_large"),
            _ => false,
        }
    }

    proptest! {
        /// Whatever comes back, a settlement names only ids of the batch, each at most once,
        /// and a batch is settled whole or not at all.
        #[test]
        fn never_settles_an_id_that_is_not_in_the_batch(
            (n, (status, body)) in (1usize..10).prop_flat_map(|n| (Just(n), raw_answer(n))),
            renewed: bool,
        ) {
            let batch = ids(n);
            let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
            let answer = classify(&HttpAnswer { status, body: body.as_bytes(), ..HttpAnswer::default() }, now);
            if let Decision::Settle(s) = settle(answer, &batch, Attempt { token_renewed: renewed }) {
                let mut named: Vec<&EventId> = s.delivered.iter().chain(s.dead.iter().map(|d| &d.event_id)).collect();
                prop_assert!(named.iter().all(|id| batch.contains(id)), "{:?}", named);
                named.sort();
                named.dedup();
                prop_assert_eq!(named.len(), s.delivered.len() + s.dead.len(), "an id settled twice");
                prop_assert_eq!(named.len(), n, "part of the batch left unsettled");
            }
        }

        /// Nothing outside the contract dead-letters: no HTML page, no unknown JSON, no
        /// `200`, no redirect, no status the table does not list.
        #[test]
        fn never_dead_letters_on_an_answer_outside_the_contract(
            (n, (status, body)) in (1usize..4).prop_flat_map(|n| (Just(n), raw_answer(n))),
        ) {
            let batch = ids(n);
            let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
            let answer = classify(&HttpAnswer { status, body: body.as_bytes(), ..HttpAnswer::default() }, now);
            if let Decision::Settle(s) = settle(answer, &batch, Attempt::default()) {
                prop_assert!(s.dead.is_empty() || may_dead_letter(status, &body), "{} {} dead-lettered {:?}", status, body, s.dead);
                prop_assert!(status == 202 || s.delivered.is_empty(), "{} {} acked", status, body);
            }
        }
    }
}
