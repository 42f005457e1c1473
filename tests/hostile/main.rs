//! Hostile conditions (docs/hostile.md): the fuzz corpus replayed on stable, TLS refusals,
//! forged tokens through the emulator, SQL only through bound parameters, a full disk, and a
//! billing peer that answers outside the contract.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test, bench and example code: a panic is a failure

mod billing_peer;
mod fuzz_corpus;
mod sql_tidy;
mod tenant_isolation;
mod tls;
