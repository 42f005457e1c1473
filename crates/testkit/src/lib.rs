//! The test kit of billsync: what makes the ports' contracts hold for every implementation.
//!
//! - [`conformance`]: the contract of [`billsync_domain::Outbox`] as one suite of checks, and
//!   [`outbox_conformance!`], which runs every check as its own `#[tokio::test]` against an
//!   outbox built by a fixture function. Each implementation's tests instantiate it in one
//!   line: the SQLite and PostgreSQL adapters in `billsync-storage`, [`MemoryOutbox`] here.
//! - [`tokens`]: the contract of [`billsync_domain::TokenSource`], run by
//!   [`token_source_conformance!`], and [`FakeTokens`], a token source that keeps it without a
//!   token endpoint.
//! - [`MemoryOutbox`]: a complete in-memory outbox (the whole contract, claims and
//!   generations included), for tests that need no disk, such as the engine's in paused time.
//! - The fixtures the suite and the adapters' own tests share: [`event`], [`events`],
//!   [`tenant`], [`id`], [`ids_of`], [`t0`], [`TestResult`], [`Fixture`], and [`error_chain`] (an
//!   error's messages with its sources', for tests that look for a driver's words).
//! - [`in_child_with_env`]: runs a test again in a child process with variables set (the
//!   operating system's trust store, say), as a test process cannot change its own environment.
//!
//! It depends on the domain only, never on an adapter or on the library, so that both can
//! use it in their tests.
//!
//! # Example
//!
//! The in-memory outbox, driven by a manual clock:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> billsync_testkit::TestResult {
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use billsync_domain::{ClaimOutcome, ManualClock, Outbox};
//! use billsync_testkit::{MemoryOutbox, events, t0, tenant};
//!
//! let clock = Arc::new(ManualClock::new(t0()));
//! let outbox = MemoryOutbox::new(clock.clone());
//! let acme = tenant("acme");
//! outbox.enqueue(&acme, &events("e", 3)).await?;
//!
//! let ClaimOutcome::Claimed(claim) = outbox.claim_tenant(&acme, "host-1-a", Duration::from_secs(30)).await? else {
//!     panic!("a free tenant is claimed");
//! };
//! let lease = outbox.lease_claimed(&claim, 10, Duration::from_secs(60)).await?.expect("three events");
//! assert_eq!(outbox.states("acme").get("leased"), Some(&3));
//!
//! // Another agent takes the tenant over: the first holder's settles are refused.
//! outbox.steal(&acme, "host-2-b", Duration::from_secs(30));
//! let ids: Vec<_> = lease.events.iter().map(|e| e.event_id().clone()).collect();
//! assert!(outbox.ack(&lease, &ids).await.is_err());
//! assert_eq!(outbox.states("acme").get("pending"), Some(&3));
//! # Ok(())
//! # }
//! ```
//!
//! Running the conformance suite against an outbox (the test crate needs `tokio` with the
//! `macros` and `rt-multi-thread` features):
//!
//! ```
//! use std::sync::Arc;
//!
//! use billsync_domain::ManualClock;
//! use billsync_testkit::{Fixture, MemoryOutbox, TestResult, t0};
//!
//! async fn memory() -> TestResult<Fixture> {
//!     let clock = Arc::new(ManualClock::new(t0()));
//!     Ok(Fixture::new(Arc::new(MemoryOutbox::new(clock.clone())), clock))
//! }
//!
//! billsync_testkit::outbox_conformance!(memory);
//! # fn main() {}
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is a failure
#![warn(missing_docs)]

pub mod conformance;
mod fixtures;
mod memory;
mod rerun;
pub mod tokens;

pub use fixtures::{Fixture, TestResult, error_chain, event, events, id, ids_of, t0, tenant};
pub use memory::{MemoryOutbox, RowView};
pub use rerun::in_child_with_env;
pub use tokens::{FakeTokens, TokenFixture, token_tenant};

/// Runs every check of the [`conformance`] suite against the outbox built by `$fixture` (an
/// `async fn() -> TestResult<Fixture>`), each as its own `#[tokio::test]` named after the
/// check, in the module where it is invoked.
///
/// `outbox_conformance!(fixture => check, ...)` runs only the named checks.
#[macro_export]
macro_rules! outbox_conformance {
    ($fixture:path) => {
        $crate::outbox_conformance!($fixture =>
            enqueue_deduplicates_against_stored_events,
            enqueue_deduplicates_within_one_call,
            enqueue_of_nothing_stores_nothing,
            enqueue_is_all_or_nothing_to_observers,
            concurrent_enqueues_each_get_their_own_report,
            lease_returns_oldest_first_up_to_max,
            leased_events_are_invisible_to_other_leases,
            a_partly_settled_lease_still_holds_the_rest,
            expired_lease_makes_events_leasable_again_in_place,
            concurrent_leasers_never_share_an_event,
            ack_marks_delivered_even_after_the_lease_lapsed,
            nack_counts_attempts_and_waits_for_retry_at,
            nack_of_a_lapsed_lease_leaves_the_new_lease_alone,
            dead_letter_lists_and_requeue_returns_to_pending,
            counts_report_every_state,
            compact_deletes_only_delivered_before_the_cutoff,
            claim_is_exclusive_while_its_holder_holds_it,
            a_new_holder_gets_a_new_generation_and_the_leases_of_the_old_one,
            an_agent_that_lost_its_claim_can_neither_lease_nor_settle,
            a_lease_without_a_claim_settles_whoever_holds_the_tenant,
            tenants_are_isolated,
            tenant_state_is_saved_per_tenant_and_the_last_writer_wins,
        );
    };
    ($fixture:path => $($check:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() -> $crate::TestResult {
                let fixture: $crate::Fixture = $fixture().await?;
                $crate::conformance::$check(fixture.outbox.clone(), fixture.clock.clone()).await
            }
        )+
    };
}
