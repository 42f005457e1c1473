//! The contract of [`TokenSource`] as one suite of checks ([`crate::token_source_conformance!`]), and
//! [`FakeTokens`], a token source that keeps it, for tests that need no token endpoint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use billsync_domain::{
    AccessToken, AccessTokenClaims, ApplicationId, BillingPolicy, BillingRequestHeaders, ClientId, Clock, Tenant,
    TenantId, TenantName, TokenError, TokenSource,
};

use crate::TestResult;

/// A token source under test, with what the suite needs to observe it.
pub struct TokenFixture {
    /// The source under test.
    pub source: Arc<dyn TokenSource>,
    /// Two tenants it serves, with different tenant ids.
    pub tenants: [Tenant; 2],
    /// How many tokens it has requested so far for a tenant (from its token endpoint, or
    /// minted).
    pub issued: Box<dyn Fn(&Tenant) -> u64 + Send + Sync>,
}

/// A tenant for token tests: `name`, tenant id `{name}-prod-001`, application `app-{name}`.
pub fn token_tenant(name: &str) -> Tenant {
    Tenant::new(
        TenantName::parse(name).expect("valid name"),
        TenantId::parse(format!("{name}-prod-001")).expect("valid tenant id"),
        ApplicationId::parse(format!("app-{name}")).expect("valid application id"),
        ClientId::parse(format!("app-{name}")).expect("valid client id"),
    )
}

fn check(ok: bool, what: &str) -> TestResult {
    if ok { Ok(()) } else { Err(what.into()) }
}

/// Headers are for the tenant asked about: its tenant id and application id, a token that
/// passed the billing policy (the type guarantees the policy ran).
pub async fn headers_are_for_the_tenant_asked_about(f: TokenFixture) -> TestResult {
    for t in &f.tenants {
        let h = f.source.headers(t).await?;
        check(h.tenant_id() == t.tenant_id(), "X-Tenant-ID is the tenant's")?;
        check(h.application_id() == t.application_id(), "X-Application-ID is the tenant's")?;
    }
    Ok(())
}

/// A token is reused until its refresh point: two calls in a row cost one token request.
pub async fn a_token_is_reused_until_its_refresh_point(f: TokenFixture) -> TestResult {
    let t = &f.tenants[0];
    let a = f.source.headers(t).await?;
    let b = f.source.headers(t).await?;
    check(a.same_token(&b), "the second call reuses the first token")?;
    check((f.issued)(t) == 1, "one token request for two calls")
}

/// Concurrent callers on an empty cache share one token request (single flight).
pub async fn concurrent_callers_share_one_token_request(f: TokenFixture) -> TestResult {
    let t = f.tenants[0].clone();
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let (source, t) = (Arc::clone(&f.source), t.clone());
            tokio::spawn(async move { source.headers(&t).await })
        })
        .collect();
    for call in calls {
        call.await??;
    }
    check((f.issued)(&t) == 1, "twenty concurrent callers, one token request")
}

/// After `invalidate`, the next call gets a new token.
pub async fn an_invalidated_token_is_replaced(f: TokenFixture) -> TestResult {
    let t = &f.tenants[0];
    let refused = f.source.headers(t).await?;
    f.source.invalidate(t, &refused).await;
    let next = f.source.headers(t).await?;
    check(!next.same_token(&refused), "a new token after the refusal")?;
    check((f.issued)(t) == 2, "exactly one more token request")
}

/// Invalidating a token that is no longer the cached one is a no-op.
pub async fn invalidating_an_older_token_keeps_the_newer_one(f: TokenFixture) -> TestResult {
    let t = &f.tenants[0];
    let old = f.source.headers(t).await?;
    f.source.invalidate(t, &old).await;
    let newer = f.source.headers(t).await?;
    f.source.invalidate(t, &old).await;
    let again = f.source.headers(t).await?;
    check(again.same_token(&newer), "the newer token is kept")?;
    check((f.issued)(t) == 2, "no request for a stale refusal")
}

/// Tenants never share a token, and one tenant's invalidation leaves the other's alone.
pub async fn tenants_never_share_a_token(f: TokenFixture) -> TestResult {
    let [a, b] = &f.tenants;
    let ha = f.source.headers(a).await?;
    let hb = f.source.headers(b).await?;
    check(!ha.same_token(&hb), "each tenant has its own token")?;
    f.source.invalidate(a, &ha).await;
    check(f.source.headers(b).await?.same_token(&hb), "b keeps its token when a's is refused")?;
    check((f.issued)(b) == 1, "b asked for one token")
}

/// Runs every check of the token-source suite against the source built by `$fixture` (an
/// `async fn() -> TestResult<TokenFixture>`), each as its own `#[tokio::test]`.
#[macro_export]
macro_rules! token_source_conformance {
    ($fixture:path) => {
        $crate::token_source_conformance!($fixture =>
            headers_are_for_the_tenant_asked_about,
            a_token_is_reused_until_its_refresh_point,
            concurrent_callers_share_one_token_request,
            an_invalidated_token_is_replaced,
            invalidating_an_older_token_keeps_the_newer_one,
            tenants_never_share_a_token,
        );
    };
    ($fixture:path => $($check:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() -> $crate::TestResult {
                let fixture: $crate::tokens::TokenFixture = $fixture().await?;
                $crate::tokens::$check(fixture).await
            }
        )+
    };
}

/// Claims a test can spoil before the policy sees them.
pub type Spoil = fn(&mut AccessTokenClaims);

/// A token source that mints billing tokens itself (15 minutes, the billing scope and
/// audience, the tenant's ids), reuses each until a quarter of its life is left, and keeps the
/// whole [`TokenSource`] contract. `spoil` alters the claims before the policy checks them, to
/// test what a wrong token does.
pub struct FakeTokens {
    clock: Arc<dyn Clock>,
    spoil: Option<Spoil>,
    /// The token each tenant has now; held across a mint, for single flight.
    current: tokio::sync::Mutex<HashMap<TenantName, BillingRequestHeaders>>,
    issued: Mutex<HashMap<TenantName, u64>>,
    invalidated: Mutex<u64>,
}

impl FakeTokens {
    /// Tokens dated by `clock`, spoiled by `spoil` if given.
    pub fn new(clock: Arc<dyn Clock>, spoil: Option<Spoil>) -> Self {
        Self {
            clock,
            spoil,
            current: tokio::sync::Mutex::default(),
            issued: Mutex::default(),
            invalidated: Mutex::new(0),
        }
    }

    /// Tokens minted so far for `tenant`.
    pub fn issued(&self, tenant: &Tenant) -> u64 {
        self.issued.lock().unwrap_or_else(|p| p.into_inner()).get(tenant.name()).copied().unwrap_or(0)
    }

    /// How many times `invalidate` dropped a token.
    pub fn invalidated(&self) -> u64 {
        *self.invalidated.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mint(&self, t: &Tenant, serial: u64) -> Result<BillingRequestHeaders, TokenError> {
        let now = self.clock.now();
        let mut claims = AccessTokenClaims {
            scope: vec![billsync_domain::BILLING_WRITE_SCOPE.into()],
            aud: vec![billsync_domain::BILLING_AUDIENCE.into()],
            tenant_id: Some(t.tenant_id().to_string()),
            client_id: Some(t.client_id().to_string()),
            iat: Some(now.timestamp()),
            exp: Some(now.timestamp() + 900),
            ..Default::default()
        };
        if let Some(spoil) = self.spoil {
            spoil(&mut claims);
        }
        let token = AccessToken::new(format!("tok-{}-{serial}", t.name()));
        BillingPolicy::default()
            .authorize(token, claims, t.tenant_id(), t.application_id(), now)
            .map_err(TokenError::Policy)
    }
}

#[async_trait]
impl TokenSource for FakeTokens {
    async fn headers(&self, t: &Tenant) -> Result<BillingRequestHeaders, TokenError> {
        // One lock across the check and the mint: single flight.
        let mut current = self.current.lock().await;
        if let Some(h) = current.get(t.name()) {
            // Reused until a quarter of its 15 minutes is left (the 80 % refresh point, rounded).
            if h.expires_at() - self.clock.now() > chrono::Duration::seconds(225) {
                return Ok(h.clone());
            }
        }
        let serial = {
            let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
            let n = issued.entry(t.name().clone()).or_default();
            *n += 1;
            *n
        };
        let h = self.mint(t, serial)?;
        current.insert(t.name().clone(), h.clone());
        Ok(h)
    }

    async fn invalidate(&self, t: &Tenant, refused: &BillingRequestHeaders) {
        let mut current = self.current.lock().await;
        if current.get(t.name()).is_some_and(|h| h.same_token(refused)) {
            current.remove(t.name());
            *self.invalidated.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        }
    }
}
