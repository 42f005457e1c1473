//! The token-source contract (`billsync_testkit::token_source_conformance!`), run against the
//! real token cache (`billsync_auth::TokenCache`) and the platform emulator's token endpoint.

use std::sync::Arc;

use billsync_auth::{AuthConfig, TenantAuth, TokenCache};
use billsync_domain::ClientSecret;
use billsync_emulator::{Emulator, EmulatorConfig};
use billsync_testkit::tokens::TokenFixture;
use billsync_testkit::{TestResult, token_tenant};

async fn token_cache() -> TestResult<TokenFixture> {
    let platform = Emulator::start(EmulatorConfig::builtin(), "127.0.0.1:0".parse()?).await?;
    let tenants = [token_tenant("acme"), token_tenant("globex")];
    let auths = tenants.clone().map(|t| {
        let secret = ClientSecret::new(format!("secret-{}", t.name()));
        TenantAuth::new(t, secret)
    });
    let cache = Arc::new(TokenCache::new(AuthConfig::new(&platform.token_url())?, auths)?);
    let counter = Arc::clone(&cache);
    // The emulator serves as long as the fixture lives: its handle rides in the counter.
    let platform = Arc::new(platform);
    Ok(TokenFixture {
        source: cache,
        tenants,
        issued: Box::new(move |t| {
            let _serving = &platform;
            counter.token_requests(t.name())
        }),
    })
}

billsync_testkit::token_source_conformance!(token_cache);
