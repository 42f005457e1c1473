//! Conformance of the emulator to docs/platform.md: a real server on port 0, real HTTP.

mod admin;
mod billing;
mod faults;
mod helpers;
mod rate;
mod reasons;
mod reconcile;
mod telemetry;
mod thread;
mod token;
