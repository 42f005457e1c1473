//! The outbox's integration tests: the conformance suite of `billsync_testkit` run against each
//! adapter, plus what only one adapter can show (a full disk, crash safety, a fleet on one
//! database).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test, bench and example code: a panic is a failure

mod cancel;
mod crash;
mod fleet;
mod frozen;
mod helpers;
mod postgres;
mod quarantine;
mod reconcile;
mod sqlite;
mod tls;
