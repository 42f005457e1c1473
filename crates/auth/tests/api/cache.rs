//! The token cache: single flight, proactive refresh, failed refreshes, invalidation, the
//! policy preflight, clock skew, and its keys: one slot per (tenant, client id, scope set, auth
//! method), the read scope in its own slot unless the tenant asks for both in one token.
//!
//! No test here waits for a token to age: the stub mints `iat`/`exp` from the same
//! [`ManualClock`] the cache reads, and a test moves that clock. It starts on a whole second,
//! so the stub's whole-second `iat` and `Date` are exact and every instant below is too.
//! Concurrent callers are lined up with [`Stub::hold`] instead of a slow endpoint. The only
//! timers left are the client's short backoffs between attempts after a 5xx (real time, see
//! `a_failed_early_refresh_keeps_serving_the_still_valid_token_until_it_expires`).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use billsync_auth::{TenantAuth, TokenCache};
use billsync_domain::{
    BILLING_READ_SCOPE, BILLING_WRITE_SCOPE, BillingRequestHeaders, ClientSecret, ManualClock, Scope, Tenant,
    TokenError, TokenSource, ViolationCode,
};
use chrono::{DateTime, Utc};
use proptest::prelude::*;
use serde_json::json;
use tokio::sync::watch;

use crate::helpers::*;

/// Where the shared clock starts: a whole second (2030-03-17T17:46:40Z).
fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_900_000_000, 0).unwrap()
}

fn secs(s: i64) -> chrono::Duration {
    chrono::Duration::seconds(s)
}

fn millis(ms: i64) -> chrono::Duration {
    chrono::Duration::milliseconds(ms)
}

/// A stub token server and a cache over it that read one manual clock, showing [`t0`].
async fn setup(reply: Reply) -> (Stub, Arc<TokenCache>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(t0()));
    let stub = Stub::with_clock(reply, clock.clone()).await;
    let cache = Arc::new(TokenCache::with_clock(config(&stub), [auth()], clock.clone()).unwrap());
    (stub, cache, clock)
}

/// Moves the clock forward to `t`.
fn advance_to(clock: &ManualClock, t: DateTime<Utc>) {
    use billsync_domain::Clock;
    let d = (t - clock.now()).to_std().expect("the clock only moves forward");
    clock.advance(d);
}

/// `n` concurrent callers, all started (each polled once by the cache) while the stub holds the
/// first token request they cause; the stub answers once every caller has started (no timer
/// involved).
async fn burst(stub: &Stub, cache: &Arc<TokenCache>, n: usize) -> Vec<Result<BillingRequestHeaders, TokenError>> {
    let before = stub.token_requests();
    stub.hold();
    let (started, mut all_started) = watch::channel(0usize);
    let (finished, mut all_finished) = watch::channel(0usize);
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (c, started, finished) = (cache.clone(), started.clone(), finished.clone());
            tokio::spawn(async move {
                // Started means in the cache's hands: polled once (then waiting on the flight
                // or on the held request), not merely spawned. A caller counted as started
                // before its first poll could join after the flight ended, and ask again.
                let who = tenant();
                let mut call = c.headers(&who);
                let first = std::future::poll_fn(|cx| std::task::Poll::Ready(call.as_mut().poll(cx))).await;
                started.send_modify(|s| *s += 1);
                let h = match first {
                    std::task::Poll::Ready(h) => h,
                    std::task::Poll::Pending => call.await,
                };
                finished.send_modify(|f| *f += 1);
                h
            })
        })
        .collect();
    all_started.wait_for(|&s| s == n).await.unwrap();
    // Were the callers all answered without a request, don't wait for one: the count tells.
    tokio::select! {
        () = stub.arrived(before + 1) => {}
        r = all_finished.wait_for(|&f| f == n) => { r.unwrap(); }
    }
    stub.release();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_callers_on_an_empty_then_expired_cache_cause_one_request_each_time() {
    let (stub, cache, clock) = setup(Reply::good()).await;

    // Act + Assert: empty cache.
    let first: Vec<_> = burst(&stub, &cache, 50).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(stub.token_requests(), 1);
    assert!(first.iter().all(|h| h.same_token(&first[0])));

    // Act + Assert: at the instant the token expires.
    advance_to(&clock, first[0].expires_at());
    let second: Vec<_> = burst(&stub, &cache, 50).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(stub.token_requests(), 2);
    assert!(second.iter().all(|h| h.same_token(&second[0])));
    assert!(!second[0].same_token(&first[0]));
    assert_eq!(second[0].issued_at(), first[0].expires_at());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_one_failure_instead_of_each_retrying() {
    let (stub, cache, _clock) = setup(Reply::status(401, r#"{"error":"invalid_client"}"#)).await;
    for r in burst(&stub, &cache, 20).await {
        assert!(matches!(r, Err(TokenError::Refused { .. })), "{r:?}");
    }
    assert_eq!(stub.token_requests(), 1);
}

#[tokio::test]
async fn tokens_are_refreshed_at_eighty_percent_and_never_served_past_their_refresh_point() {
    // Arrange: 10-minute tokens, so refreshed after 8 minutes (80 %, computed here rather than
    // by the RefreshPolicy under test).
    let lifetime = 600;
    let refresh_after = secs(480);
    let (stub, cache, clock) = setup(Reply::Token(TokenSpec::good().lifetime(lifetime))).await;
    let run_for = secs(3600);

    // Act: a caller every second for an hour.
    let mut distinct = 0;
    let mut last: Option<BillingRequestHeaders> = None;
    let mut now = t0();
    while now < t0() + run_for {
        advance_to(&clock, now);
        let h = cache.headers(&tenant()).await.unwrap();
        assert_eq!(h.expires_at() - h.issued_at(), secs(lifetime));
        // Assert: never served at or past its refresh point.
        let refresh_at = h.issued_at() + refresh_after;
        assert!(now < refresh_at, "served at {now}, refresh was due at {refresh_at}");
        match &last {
            Some(l) if l.same_token(&h) => {}
            Some(l) => {
                // Assert: replaced exactly at the old token's refresh point, not earlier.
                assert_eq!(now, l.issued_at() + refresh_after, "refreshed early");
                assert_eq!(h.issued_at(), now);
                distinct += 1;
            }
            None => distinct += 1,
        }
        last = Some(h);
        now += secs(1);
    }

    // Assert: one request per 8 minutes begun: at 0, 8, ..., 56 minutes.
    assert_eq!(stub.token_requests(), 8);
    assert_eq!(distinct, 8);
}

// The client's backoff between attempts (`tokio::time::sleep`, 10–60 ms per failed refresh
// with this test's RetryPolicy) stays on real time: paused time would auto-advance whenever
// the runtime waits on the loopback socket, firing reqwest's timeout during a pending request,
// and billsync-auth's tokio has no `test-util` to pause it anyway.
#[tokio::test]
async fn a_failed_early_refresh_keeps_serving_the_still_valid_token_until_it_expires() {
    // Arrange: one good 15-minute token (refresh at 12 minutes; usable while at least 1 s of
    // it is left, the policy's `expires_too_soon` margin), then the endpoint fails.
    let (stub, cache, clock) = setup(Reply::good()).await;
    let first = cache.headers(&tenant()).await.unwrap();
    stub.set_default(Reply::status(503, ""));

    // Act: at the refresh point.
    advance_to(&clock, t0() + secs(12 * 60));
    let during = cache.headers(&tenant()).await;

    // Assert: the old token, and the failed refresh (3 attempts) is not an error.
    assert!(during.as_ref().is_ok_and(|h| h.same_token(&first)), "{during:?}");
    assert_eq!(stub.token_requests(), 1 + 3);
    // Backing off: the next call does not hammer the endpoint.
    let again = cache.headers(&tenant()).await.unwrap();
    assert!(again.same_token(&first));
    assert_eq!(stub.token_requests(), 4);

    // The last instant it is usable: a refresh is tried again, fails, and the old token serves.
    advance_to(&clock, first.expires_at() - secs(1));
    let last = cache.headers(&tenant()).await;
    assert!(last.as_ref().is_ok_and(|h| h.same_token(&first)), "{last:?}");
    assert_eq!(stub.token_requests(), 4 + 3);

    // One millisecond later it is no longer usable, and the failure is the caller's.
    advance_to(&clock, first.expires_at() - secs(1) + millis(1));
    let after = cache.headers(&tenant()).await;
    assert!(matches!(&after, Err(TokenError::Unavailable(_))), "{after:?}");
    assert_eq!(stub.token_requests(), 7 + 3);

    // And the endpoint coming back heals it.
    stub.set_default(Reply::good());
    let healed = cache.headers(&tenant()).await.unwrap();
    assert!(!healed.same_token(&first));
    assert_eq!(stub.token_requests(), 11);
}

#[tokio::test]
async fn invalidate_drops_exactly_the_refused_token() {
    let (stub, cache, _clock) = setup(Reply::good()).await;
    let h1 = cache.headers(&tenant()).await.unwrap();
    assert!(cache.headers(&tenant()).await.unwrap().same_token(&h1));
    assert_eq!(stub.token_requests(), 1);

    cache.invalidate(&tenant(), &h1).await;
    let h2 = cache.headers(&tenant()).await.unwrap();
    assert_eq!(stub.token_requests(), 2);
    assert!(!h2.same_token(&h1));

    // A stale refusal of h1 does not drop h2.
    cache.invalidate(&tenant(), &h1).await;
    assert!(cache.headers(&tenant()).await.unwrap().same_token(&h2));
    assert_eq!(stub.token_requests(), 2);
}

#[tokio::test]
async fn the_threads_telemetry_only_token_is_refused_before_anything_is_sent() {
    let (_stub, cache, _clock) = setup(Reply::Token(TokenSpec::telemetry_only())).await;
    let e = cache.headers(&tenant()).await.unwrap_err();
    match &e {
        TokenError::Policy(v) => assert_eq!(v.codes(), [ViolationCode::MissingScope, ViolationCode::AudienceMissing]),
        other => panic!("expected a policy error, got {other:?}"),
    }
    assert!(!e.is_transient());
}

#[tokio::test]
async fn tenant_and_application_mismatches_are_policy_errors() {
    let (_stub, cache, _clock) =
        setup(Reply::Token(TokenSpec::good().claims(json!({"tenant_id": "tenant-b", "client_id": "app-b"})))).await;
    match cache.headers(&tenant()).await {
        Err(TokenError::Policy(v)) => {
            assert_eq!(v.codes(), [ViolationCode::TenantMismatch, ViolationCode::ApplicationMismatch])
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn opaque_tokens_are_checked_on_the_response_scope_and_expires_in() {
    let mut spec = TokenSpec::good();
    spec.opaque = true;
    let (_stub, cache, _clock) = setup(Reply::Token(spec)).await;
    let h = cache.headers(&tenant()).await.unwrap();
    assert_eq!((h.issued_at(), h.expires_at()), (t0(), t0() + secs(900)));
    assert_eq!(h.claims().tenant_id.as_deref(), Some("tenant-a"));

    let mut telemetry = TokenSpec::telemetry_only();
    telemetry.opaque = true;
    let (_stub, cache, _clock) = setup(Reply::Token(telemetry)).await;
    match cache.headers(&tenant()).await {
        Err(TokenError::Policy(v)) => assert_eq!(v.codes(), [ViolationCode::MissingScope]),
        other => panic!("{other:?}"),
    }
}

/// A server clock `offset_s` seconds off ours, and 4-minute tokens: shorter than the offset,
/// so that a cache judging them by its own clock would refuse every token (server behind)
/// or serve expired ones (server ahead).
async fn skewed(offset_s: i64) {
    // Arrange
    let lifetime = 240;
    let refresh_after = secs(192); // 80 %
    let (stub, cache, clock) = setup(Reply::Token(TokenSpec::good().lifetime(lifetime))).await;
    stub.set_clock_offset(offset_s);
    let run_for = secs(20 * 60);

    // Act: a caller every second for 20 minutes.
    let mut last: Option<BillingRequestHeaders> = None;
    let mut now = t0();
    while now < t0() + run_for {
        advance_to(&clock, now);
        let h = cache.headers(&tenant()).await.unwrap_or_else(|e| panic!("offset {offset_s}, at {now}: {e}"));
        // Assert: on the server's clock, every token served is before its refresh point...
        let server_now = now + secs(offset_s);
        assert!(server_now < h.issued_at() + refresh_after, "offset {offset_s}: served past the refresh point");
        // ... and was replaced at the first call at or after it (the clocks step whole seconds,
        // the `Date` header's resolution).
        if let Some(l) = last.as_ref().filter(|l| !l.same_token(&h)) {
            assert_eq!(server_now, l.issued_at() + refresh_after, "offset {offset_s}: refreshed early");
        }
        last = Some(h);
        now += secs(1);
    }

    // Assert: one request per 192 s started (0, 192, ..., 1152 s); the measured skew is the
    // offset within the `Date` header's half-second rounding.
    assert_eq!(stub.token_requests(), 7, "offset {offset_s}");
    let skew = cache.client().last_clock_skew().unwrap();
    assert!((skew - secs(offset_s)).abs() <= millis(500), "offset {offset_s}: measured {skew}");
}

#[tokio::test]
async fn a_server_clock_five_minutes_ahead_still_refreshes_before_expiry() {
    skewed(300).await;
}

#[tokio::test]
async fn a_server_clock_five_minutes_behind_does_not_refuse_valid_tokens() {
    skewed(-300).await;
}

#[tokio::test]
async fn the_clock_drives_the_refresh_of_a_fifteen_minute_token_at_twelve_minutes() {
    let (stub, cache, clock) = setup(Reply::good()).await;

    // Act + Assert
    let h1 = cache.headers(&tenant()).await.unwrap();
    assert_eq!((h1.issued_at(), h1.expires_at()), (t0(), t0() + secs(15 * 60)));
    advance_to(&clock, t0() + secs(12 * 60) - millis(1));
    assert!(cache.headers(&tenant()).await.unwrap().same_token(&h1), "1 ms before 12 min: not yet refreshed");
    assert_eq!(stub.token_requests(), 1);
    advance_to(&clock, t0() + secs(12 * 60));
    let h2 = cache.headers(&tenant()).await.unwrap();
    assert!(!h2.same_token(&h1), "12 min: refreshed");
    assert_eq!(h2.issued_at(), t0() + secs(12 * 60));
    assert_eq!(stub.token_requests(), 2);
}

// --- Keys: tenant, client id, scope set, auth method ---

/// Tenant `name` with platform tenant id `tenant_id`, on OAuth client `client` (also its
/// application id).
fn tenant_on(name: &str, tenant_id: &str, client: &str) -> Tenant {
    Tenant::new(name.parse().unwrap(), tenant_id.parse().unwrap(), client.parse().unwrap(), client.parse().unwrap())
}

/// `client_secret_post`, sending the tenant id so that the token endpoint knows which tenant a
/// shared client asks for (an echoing stub writes it into the token).
fn auth_on(t: &Tenant) -> TenantAuth {
    TenantAuth::new(t.clone(), ClientSecret::new(SECRET)).with_extra_param("tenant_id", t.tenant_id().as_str()).unwrap()
}

fn scope(s: &str) -> Scope {
    Scope::parse(s).unwrap()
}

/// Asks for the billing write and read scopes in one token, in this order.
fn both_scopes(a: TenantAuth) -> TenantAuth {
    a.with_scopes([scope(BILLING_WRITE_SCOPE), scope(BILLING_READ_SCOPE)])
}

async fn setup_with(
    reply: Reply,
    auths: impl IntoIterator<Item = TenantAuth>,
) -> (Stub, Arc<TokenCache>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(t0()));
    let stub = Stub::with_clock(reply, clock.clone()).await;
    let cache = Arc::new(TokenCache::with_clock(config(&stub), auths, clock.clone()).unwrap());
    (stub, cache, clock)
}

/// The token's scopes, as a set.
fn scopes_of(h: &BillingRequestHeaders) -> BTreeSet<String> {
    h.claims().scope.iter().cloned().collect()
}

fn set(scopes: &[&str]) -> BTreeSet<String> {
    scopes.iter().map(|s| (*s).to_owned()).collect()
}

/// The `scope` parameter of each token request, in order.
fn requested_scopes(stub: &Stub) -> Vec<String> {
    stub.recorded().iter().map(|r| r.form["scope"].clone()).collect()
}

#[tokio::test]
async fn two_tenants_sharing_a_client_id_get_separate_tokens_each_reused() {
    // Arrange
    let acme = tenant_on("acme", "tenant-a", "app-shared");
    let globex = tenant_on("globex", "tenant-g", "app-shared");
    let (stub, cache, _clock) = setup_with(Reply::Token(TokenSpec::echo()), [auth_on(&acme), auth_on(&globex)]).await;

    // Act
    let a = cache.headers(&acme).await.unwrap();
    let g = cache.headers(&globex).await.unwrap();

    // Assert: one request per tenant, each token the tenant's own, and each reused.
    assert!(!a.same_token(&g));
    assert_eq!((a.claims().tenant_id.as_deref(), a.tenant_id().as_str()), (Some("tenant-a"), "tenant-a"));
    assert_eq!((g.claims().tenant_id.as_deref(), g.tenant_id().as_str()), (Some("tenant-g"), "tenant-g"));
    assert_eq!(a.claims().client_id, g.claims().client_id);
    assert!(cache.headers(&acme).await.unwrap().same_token(&a));
    assert!(cache.headers(&globex).await.unwrap().same_token(&g));
    assert_eq!(stub.token_requests(), 2);
    let asked_for: Vec<_> = stub.recorded().iter().map(|r| r.form["tenant_id"].clone()).collect();
    assert_eq!(asked_for, ["tenant-a", "tenant-g"]);
}

#[tokio::test]
async fn a_tenants_write_and_read_tokens_are_separate_slots_each_reused() {
    // Arrange
    let acme = tenant_on("acme", "tenant-a", "app-a");
    let (stub, cache, _clock) = setup_with(Reply::Token(TokenSpec::echo()), [auth_on(&acme)]).await;

    // Act
    let w = cache.headers(&acme).await.unwrap();
    let r = cache.read_headers(&acme).await.unwrap();

    // Assert: two requests, one per scope, two tokens, each reused.
    assert_eq!(requested_scopes(&stub), [BILLING_WRITE_SCOPE, BILLING_READ_SCOPE]);
    assert!(!w.same_token(&r));
    assert_eq!(scopes_of(&w), set(&[BILLING_WRITE_SCOPE]));
    assert_eq!(scopes_of(&r), set(&[BILLING_READ_SCOPE]));
    assert!(cache.headers(&acme).await.unwrap().same_token(&w));
    assert!(cache.read_headers(&acme).await.unwrap().same_token(&r));
    assert_eq!(stub.token_requests(), 2);
    // The other credentials are the tenant's own, for both scopes.
    for rec in stub.recorded() {
        assert_eq!((rec.form["client_id"].as_str(), rec.form["client_secret"].as_str()), ("app-a", SECRET));
        assert_eq!(rec.form["tenant_id"], "tenant-a");
    }
}

#[tokio::test]
async fn the_read_slot_refreshes_and_is_invalidated_on_its_own() {
    let acme = tenant_on("acme", "tenant-a", "app-a");
    let (stub, cache, clock) = setup_with(Reply::Token(TokenSpec::echo()), [auth_on(&acme)]).await;
    let w = cache.headers(&acme).await.unwrap();
    let r = cache.read_headers(&acme).await.unwrap();

    // Invalidating the read token leaves the write token alone, and the other way round.
    cache.invalidate(&acme, &r).await;
    assert!(cache.headers(&acme).await.unwrap().same_token(&w));
    let r2 = cache.read_headers(&acme).await.unwrap();
    assert!(!r2.same_token(&r));
    assert_eq!(requested_scopes(&stub), [BILLING_WRITE_SCOPE, BILLING_READ_SCOPE, BILLING_READ_SCOPE]);
    cache.invalidate(&acme, &w).await;
    assert!(cache.read_headers(&acme).await.unwrap().same_token(&r2));
    assert_eq!(stub.token_requests(), 3);

    // A read token is refreshed at 80% of its own life (12 of 15 minutes after r2, issued at t0).
    advance_to(&clock, t0() + secs(12 * 60));
    let r3 = cache.read_headers(&acme).await.unwrap();
    assert!(!r3.same_token(&r2));
    assert_eq!(scopes_of(&r3), set(&[BILLING_READ_SCOPE]));
    assert_eq!(stub.token_requests(), 4);
}

#[tokio::test]
async fn a_tenant_asking_for_both_scopes_serves_writes_and_reads_from_one_token() {
    // Arrange: the scopes in the other order than the read lookup's: a set, not a list.
    let acme = tenant_on("acme", "tenant-a", "app-a");
    let auth = auth_on(&acme).with_scopes([scope(BILLING_READ_SCOPE), scope(BILLING_WRITE_SCOPE)]);
    let (stub, cache, _clock) = setup_with(Reply::Token(TokenSpec::echo()), [auth]).await;

    // Act: a read first, then a write.
    let r = cache.read_headers(&acme).await.unwrap();
    let w = cache.headers(&acme).await.unwrap();

    // Assert: one request for both scopes, one token serving both.
    assert!(r.same_token(&w));
    assert_eq!(requested_scopes(&stub), [format!("{BILLING_READ_SCOPE} {BILLING_WRITE_SCOPE}")]);
    assert_eq!(scopes_of(&w), set(&[BILLING_WRITE_SCOPE, BILLING_READ_SCOPE]));
    assert!(cache.read_headers(&acme).await.unwrap().same_token(&w));
    assert_eq!(stub.token_requests(), 1);
    assert_eq!(cache.token_requests(acme.name()), 1);
}

#[tokio::test]
async fn a_combined_token_granted_only_the_write_scope_serves_writes_but_not_reads() {
    // Arrange: the tenant asks for both scopes; the endpoint grants the write scope only.
    let acme = tenant_on("acme", "tenant-a", "app-a");
    let (stub, cache, _clock) = setup_with(Reply::good(), [both_scopes(auth_on(&acme))]).await;

    // Act + Assert: writes are served; reads are refused by the read policy, not re-requested.
    let w = cache.headers(&acme).await.unwrap();
    match cache.read_headers(&acme).await {
        Err(TokenError::Policy(v)) => assert_eq!(v.codes(), [ViolationCode::MissingScope]),
        other => panic!("expected a read-scope policy error, got {other:?}"),
    }
    assert!(cache.headers(&acme).await.unwrap().same_token(&w));
    assert_eq!(stub.token_requests(), 1);
}

#[tokio::test]
async fn a_read_token_without_the_read_scope_is_refused_and_unknown_tenants_are_refused() {
    // The endpoint grants the write scope whatever is asked for.
    let acme = tenant_on("acme", "tenant-a", "app-a");
    let (stub, cache, _clock) = setup_with(Reply::good(), [auth_on(&acme)]).await;
    match cache.read_headers(&acme).await {
        Err(TokenError::Policy(v)) => assert_eq!(v.codes(), [ViolationCode::MissingScope]),
        other => panic!("expected a read-scope policy error, got {other:?}"),
    }
    assert_eq!(requested_scopes(&stub), [BILLING_READ_SCOPE]);

    let other = tenant_on("other", "tenant-o", "app-o");
    let e = cache.read_headers(&other).await.unwrap_err();
    assert!(matches!(&e, TokenError::Refused { error, .. } if error == "unknown_tenant"), "{e:?}");
    let renamed = tenant_on("acme", "tenant-b", "app-a");
    let e = cache.read_headers(&renamed).await.unwrap_err();
    assert!(matches!(&e, TokenError::Refused { error, .. } if error == "tenant_config_mismatch"), "{e:?}");
    assert_eq!(stub.token_requests(), 1);
}

// --- The property: a token is only ever handed out for the key it was issued for ---

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Write,
    Read,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Get(usize, Kind),
    /// Moves the clock this many seconds.
    Advance(i64),
    /// The platform refuses the last token handed to this tenant.
    Invalidate(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..3usize, prop_oneof![Just(Kind::Write), Just(Kind::Read)]).prop_map(|(t, k)| Op::Get(t, k)),
        2 => (1..400i64).prop_map(Op::Advance),
        1 => (0..3usize).prop_map(Op::Invalidate),
    ]
}

/// acme and globex share a client and ask for the write scope; initech asks for both scopes.
fn property_tenants() -> [(Tenant, bool); 3] {
    [
        (tenant_on("acme", "tenant-a", "app-shared"), false),
        (tenant_on("globex", "tenant-g", "app-shared"), false),
        (tenant_on("initech", "tenant-i", "app-i"), true),
    ]
}

/// The scope set of the token that must serve `kind` for a tenant (`combined`: both scopes).
fn expected_scopes(combined: bool, kind: Kind) -> BTreeSet<String> {
    match (combined, kind) {
        (true, _) => set(&[BILLING_WRITE_SCOPE, BILLING_READ_SCOPE]),
        (false, Kind::Write) => set(&[BILLING_WRITE_SCOPE]),
        (false, Kind::Read) => set(&[BILLING_READ_SCOPE]),
    }
}

/// What the model knows of one slot: the token it holds and when it was issued.
struct Held {
    token: String,
    issued_at: DateTime<Utc>,
}

/// Runs `ops` against a fresh cache and an echoing stub; checks every header handed out.
async fn run_ops(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let tenants = property_tenants();
    let auths = tenants.iter().map(|(t, combined)| if *combined { both_scopes(auth_on(t)) } else { auth_on(t) });
    let (stub, cache, clock) = setup_with(Reply::Token(TokenSpec::echo()), auths.collect::<Vec<_>>()).await;
    // Slot (tenant, scope set) -> the token it holds; token -> the slot it was handed out for.
    let mut slots: HashMap<(usize, BTreeSet<String>), Held> = HashMap::new();
    let mut issued_for: HashMap<String, (usize, BTreeSet<String>)> = HashMap::new();
    let mut last: HashMap<usize, BillingRequestHeaders> = HashMap::new();
    let mut fetches = 0;
    for op in ops {
        let now = {
            use billsync_domain::Clock;
            clock.now()
        };
        match op {
            Op::Advance(s) => advance_to(&clock, now + secs(s)),
            Op::Invalidate(i) => {
                if let Some(h) = last.get(&i) {
                    cache.invalidate(&tenants[i].0, h).await;
                    slots.retain(|_, held| held.token != h.bearer_token());
                }
            }
            Op::Get(i, kind) => {
                let (t, combined) = &tenants[i];
                let h = match kind {
                    Kind::Write => cache.headers(t).await,
                    Kind::Read => cache.read_headers(t).await,
                };
                let h = h.map_err(|e| TestCaseError::fail(format!("{op:?}: {e}")))?;
                // Issued for this tenant, on its client, for exactly its slot's scope set.
                let want = expected_scopes(*combined, kind);
                prop_assert_eq!(h.tenant_id(), t.tenant_id());
                prop_assert_eq!(h.claims().tenant_id.as_deref(), Some(t.tenant_id().as_str()));
                prop_assert_eq!(h.claims().client_id.as_deref(), Some(t.client_id().as_str()));
                prop_assert_eq!(scopes_of(&h), want.clone(), "{:?}", op);
                // Never handed out for another slot than the one it was first handed out for.
                let slot = (i, want);
                let token = h.bearer_token().to_owned();
                let first = issued_for.entry(token.clone()).or_insert_with(|| slot.clone());
                prop_assert_eq!(&*first, &slot, "{:?}: a token moved between slots", op);
                // Reused until its refresh point (12 of 15 minutes) or its invalidation, then replaced.
                match slots.get(&slot) {
                    Some(held) if now < held.issued_at + secs(12 * 60) => prop_assert_eq!(&token, &held.token),
                    held => {
                        prop_assert!(held.is_none_or(|held| held.token != token), "{:?}: a stale token", op);
                        prop_assert_eq!(h.issued_at(), now);
                        fetches += 1;
                        slots.insert(slot, Held { token, issued_at: now });
                    }
                }
                last.insert(i, h);
            }
        }
    }
    prop_assert_eq!(stub.token_requests(), fetches);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn a_token_is_only_ever_handed_out_for_the_key_it_was_issued_for(ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run_ops(ops))?;
    }
}
