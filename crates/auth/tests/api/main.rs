//! Integration tests of billsync-auth against a stub token server (see `helpers.rs`).

mod cache;
mod diagnose;
mod helpers;
mod inspect;
mod jwks;
mod oauth;
mod secrets;
