//! Integration tests of billsync-auth against a stub token server (see `helpers.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test, bench and example code: a panic is a failure

mod assertion;
mod cache;
mod diagnose;
mod external_assertion;
mod helpers;
mod inspect;
mod jwks;
mod oauth;
mod secrets;
