//! Conformance of the emulator to docs/platform.md: a real server on port 0, real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test, bench and example code: a panic is a failure

mod admin;
mod assertion;
mod billing;
mod faults;
mod helpers;
mod rate;
mod reasons;
mod reconcile;
mod reconcile_aids;
mod telemetry;
mod thread;
mod token;
