//! The token-source contract, run against the test kit's own [`FakeTokens`].
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::sync::Arc;

use billsync_domain::ManualClock;
use billsync_testkit::tokens::TokenFixture;
use billsync_testkit::{FakeTokens, TestResult, t0, token_tenant};

async fn fake() -> TestResult<TokenFixture> {
    let tokens = Arc::new(FakeTokens::new(Arc::new(ManualClock::new(t0())), None));
    let counter = Arc::clone(&tokens);
    Ok(TokenFixture {
        source: tokens,
        tenants: [token_tenant("acme"), token_tenant("globex")],
        issued: Box::new(move |t| counter.issued(t)),
    })
}

billsync_testkit::token_source_conformance!(fake);
