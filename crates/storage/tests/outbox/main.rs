//! The outbox's integration tests: one conformance suite run against each adapter, plus
//! what only one adapter can show (a full disk, crash safety, a fleet on one database).

#[macro_use]
mod conformance;
mod crash;
mod fleet;
mod helpers;
mod postgres;
mod sqlite;
