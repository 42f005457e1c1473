//! The engine over fake ports, in paused tokio time: every answer of the response table, the
//! rate window, and tenant isolation.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use billsync_domain::{
    AccessToken, AccessTokenClaims, ApplicationId, BatchBody, Batcher, BillingApi, BillingEvent, BillingPolicy,
    BillingReply, BillingRequestHeaders, BillingResponse, ClaimOutcome, ClientId, Clock, EncodedEvent, Outbox,
    RatePolicy, Receipt, Rejection, Tenant, TenantId, TenantName, TokenError, TransportError,
};
use billsync_testkit::{FakeTokens, MemoryOutbox};
use chrono::{DateTime, Utc};

use super::*;

/// A clock that follows tokio's (paused) time.
#[derive(Debug)]
struct TokioClock {
    base: DateTime<Utc>,
    origin: tokio::time::Instant,
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        self.base + chrono::Duration::from_std(self.origin.elapsed()).unwrap()
    }
}

fn tenant(name: &str) -> Tenant {
    Tenant::new(
        TenantName::parse(name).unwrap(),
        TenantId::parse(format!("{name}-id")).unwrap(),
        ApplicationId::parse(format!("app-{name}")).unwrap(),
        ClientId::parse(format!("app-{name}")).unwrap(),
    )
}

#[derive(Debug, Clone)]
struct Sent {
    at: Duration,
    tenant_id: String,
    ids: Vec<String>,
}

type Responder = Box<dyn Fn(&[String]) -> Result<BillingReply, TransportError> + Send + Sync>;

/// Answers from a script first, then with the responder; records every request.
struct FakeApi {
    origin: tokio::time::Instant,
    script: Mutex<VecDeque<Result<BillingReply, TransportError>>>,
    responder: Responder,
    sent: Mutex<Vec<Sent>>,
}

fn accept_all() -> Responder {
    Box::new(|ids| Ok(reply(BillingResponse::Accepted(Receipt { accepted: ids.len() as u64, ..Default::default() }))))
}

fn reply(response: BillingResponse) -> BillingReply {
    BillingReply { response, rate_limit: None }
}

#[async_trait]
impl BillingApi for FakeApi {
    async fn post_events(&self, h: &BillingRequestHeaders, body: &BatchBody) -> Result<BillingReply, TransportError> {
        let v: serde_json::Value = serde_json::from_str(body.as_str()).unwrap();
        let ids: Vec<String> =
            v["events"].as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap().to_owned()).collect();
        self.sent.lock().unwrap().push(Sent {
            at: self.origin.elapsed(),
            tenant_id: h.tenant_id().to_string(),
            ids: ids.clone(),
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let scripted = self.script.lock().unwrap().pop_front();
        scripted.unwrap_or_else(|| (self.responder)(&ids))
    }
}

struct World {
    engine: Engine,
    outbox: Arc<MemoryOutbox>,
    api: Arc<FakeApi>,
    tokens: Arc<FakeTokens>,
}

fn settings(batch: usize, rpm: u32) -> SyncSettings {
    SyncSettings {
        batcher: Batcher::new(batch).unwrap(),
        rate: RatePolicy::per_minute(NonZeroU32::new(rpm).unwrap()),
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(5),
        ..SyncSettings::default()
    }
}

async fn world(
    tenants: &[&str],
    events_per_tenant: usize,
    settings: SyncSettings,
    script: Vec<Result<BillingReply, TransportError>>,
    responder: Responder,
    spoil: Option<fn(&mut AccessTokenClaims)>,
) -> World {
    let origin = tokio::time::Instant::now();
    let clock: Arc<dyn Clock> =
        Arc::new(TokioClock { base: DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z").unwrap().to_utc(), origin });
    let outbox = Arc::new(MemoryOutbox::new(clock.clone()));
    for t in tenants {
        let events: Vec<EncodedEvent> = (0..events_per_tenant).map(|i| event(&format!("{t}-{i:05}"))).collect();
        outbox.enqueue(&TenantName::parse(*t).unwrap(), &events).await.unwrap();
    }
    let api = Arc::new(FakeApi { origin, script: Mutex::new(script.into()), responder, sent: Mutex::default() });
    let tokens = Arc::new(FakeTokens::new(clock.clone(), spoil));
    let engine = Engine::new(
        Ports { outbox: outbox.clone(), tokens: tokens.clone(), api: api.clone(), clock },
        settings,
        tenants.iter().map(|t| tenant(t)).collect(),
        Metrics::default(),
    );
    World { engine, outbox, api, tokens }
}

fn event(id: &str) -> EncodedEvent {
    let json = format!(
        r#"{{"event_id":"{id}","device_id":"d","meter":"m","quantity":"1","unit":"kWh","occurred_at":"2026-11-23T11:00:00Z"}}"#
    );
    BillingEvent::parse(&json, DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z").unwrap().to_utc()).unwrap().encode()
}

#[tokio::test(start_paused = true)]
async fn a_backlog_goes_in_full_batches_and_never_over_the_sliding_window() {
    let w = world(&["acme"], 1_250, settings(100, 5), vec![], accept_all(), None).await;

    let reports = w.engine.sync_once().await;

    let sent = w.api.sent.lock().unwrap().clone();
    let sizes: Vec<usize> = sent.iter().map(|s| s.ids.len()).collect();
    assert_eq!(sizes, [100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 50]);
    for (i, s) in sent.iter().enumerate() {
        let in_window = sent[i..].iter().take_while(|o| o.at < s.at + Duration::from_secs(60)).count();
        assert!(in_window <= 5, "{in_window} requests in the minute after {:?}", s.at);
    }
    // 13 requests at 5 a minute: the last leaves in the third window, at 120 s, not later.
    let last = sent.last().unwrap().at;
    assert!(last >= Duration::from_secs(120) && last < Duration::from_secs(121), "{last:?}");
    assert_eq!(reports[0].accepted, 1_250);
    assert_eq!(w.outbox.states("acme").get("delivered"), Some(&1_250));
}

#[tokio::test(start_paused = true)]
async fn rejected_events_are_dead_lettered_with_their_code_and_the_rest_delivered() {
    let responder: Responder = Box::new(|ids| {
        Ok(reply(BillingResponse::Accepted(Receipt {
            accepted: ids.len() as u64 - 2,
            duplicates: vec![ids[0].clone()],
            rejected: vec![Rejection {
                event_id: ids[1].clone(),
                code: "invalid_quantity".into(),
                message: "m".into(),
            }],
        })))
    });
    let w = world(&["acme"], 10, settings(500, 100), vec![], responder, None).await;

    let r = w.engine.sync_once().await;

    let states = w.outbox.states("acme");
    assert_eq!(states.get("delivered"), Some(&9));
    assert_eq!(states.get("dead:invalid_quantity"), Some(&1));
    assert_eq!((r[0].accepted, r[0].duplicates, r[0].dead_lettered), (8, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_poison_event_is_isolated_by_splitting_and_dead_lettered_alone() {
    let responder: Responder = Box::new(|ids| {
        if ids.iter().any(|i| i == "acme-00006") {
            Ok(reply(BillingResponse::InvalidRequest { description: "bad".into() }))
        } else {
            Ok(reply(BillingResponse::Accepted(Receipt { accepted: ids.len() as u64, ..Default::default() })))
        }
    });
    let w = world(&["acme"], 20, settings(500, 100), vec![], responder, None).await;

    let r = w.engine.sync_once().await;

    let states = w.outbox.states("acme");
    assert_eq!(states.get("delivered"), Some(&19));
    assert_eq!(states.get("dead:invalid_request"), Some(&1));
    assert_eq!((r[0].accepted, r[0].dead_lettered), (19, 1), "the summary counts what happened");
    let dead = w.outbox.dead_letters(None).await.unwrap();
    let dead: Vec<(&str, &str)> = dead.iter().map(|d| (d.event_id.as_str(), d.code.as_str())).collect();
    assert_eq!(dead, [("acme-00006", "invalid_request")]);
}

#[tokio::test(start_paused = true)]
async fn payload_too_large_splits_and_retries() {
    let responder: Responder = Box::new(|ids| {
        if ids.len() > 4 {
            Ok(reply(BillingResponse::PayloadTooLarge))
        } else {
            Ok(reply(BillingResponse::Accepted(Receipt { accepted: ids.len() as u64, ..Default::default() })))
        }
    });
    let w = world(&["acme"], 16, settings(500, 100), vec![], responder, None).await;
    w.engine.sync_once().await;
    assert_eq!(w.outbox.states("acme").get("delivered"), Some(&16));
}

#[tokio::test(start_paused = true)]
async fn an_invalid_token_gets_one_new_token_and_the_same_batch_again() {
    let w = world(&["acme"], 3, settings(500, 100), vec![Ok(reply(BillingResponse::InvalidToken))], accept_all(), None)
        .await;

    w.engine.sync_once().await;

    assert_eq!(w.tokens.invalidated(), 1);
    let sent = w.api.sent.lock().unwrap();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].ids, sent[1].ids);
    assert_eq!(w.outbox.states("acme").get("delivered"), Some(&3));
}

#[tokio::test(start_paused = true)]
async fn insufficient_claims_blocks_the_tenant_and_names_the_claim_locally() {
    // The platform knows the tenant is wrong; our policy, given the same claims, agrees.
    let w = world(
        &["acme"],
        3,
        settings(500, 100),
        vec![Ok(reply(BillingResponse::InsufficientClaims { description: None, scope: None }))],
        accept_all(),
        None,
    )
    .await;

    let r = w.engine.sync_once().await;

    let blocked = r[0].blocked.clone().unwrap();
    assert_eq!(blocked.codes(), ["insufficient_claims"], "local policy found nothing, and says so");
    assert!(blocked.reasons[0].hint.contains("billsync's own check finds nothing wrong"));
    assert!(!blocked.reasons[0].hint.contains("the platform says"), "it said nothing: {blocked}");
    let json = serde_json::to_value(&blocked).unwrap();
    assert_eq!(json["reasons"][0].as_object().unwrap().len(), 2, "only code and hint, as before: {json}");
    assert_eq!(w.outbox.states("acme").get("pending"), Some(&3), "a configuration problem never dead-letters");
}

#[tokio::test(start_paused = true)]
async fn insufficient_claims_shows_what_the_platform_said_and_the_scope_it_requires() {
    let said = BillingResponse::InsufficientClaims {
        description: Some("tenant_id claim does not match X-Tenant-ID".into()),
        scope: Some("urn:oracle:iot:billing:write".into()),
    };
    let w = world(&["acme"], 3, settings(500, 100), vec![Ok(reply(said))], accept_all(), None).await;

    let r = w.engine.sync_once().await;

    let blocked = r[0].blocked.clone().unwrap();
    assert_eq!(blocked.codes(), ["insufficient_claims"]);
    let reason = &blocked.reasons[0];
    assert!(reason.hint.contains("billsync's own check finds nothing wrong"), "the explanation stays: {blocked}");
    assert!(reason.hint.contains(r#"the platform says: "tenant_id claim does not match X-Tenant-ID""#), "{blocked}");
    assert!(reason.hint.contains(r#"the platform requires scope "urn:oracle:iot:billing:write""#), "{blocked}");
    assert_eq!(reason.platform_description.as_deref(), Some("tenant_id claim does not match X-Tenant-ID"));
    assert_eq!(reason.required_scope.as_deref(), Some("urn:oracle:iot:billing:write"));
    let json = serde_json::to_value(&blocked).unwrap();
    assert_eq!(json["reasons"][0]["platform_description"], "tenant_id claim does not match X-Tenant-ID", "{json}");
    assert_eq!(json["reasons"][0]["required_scope"], "urn:oracle:iot:billing:write", "{json}");
    let old: Blocked = serde_json::from_str(r#"{"reasons": [{"code": "missing_scope", "hint": "h"}]}"#).unwrap();
    assert_eq!(old, Blocked::one("missing_scope", "h"), "a state saved without the fields still reads");
    assert_eq!(w.tokens.invalidated(), 1, "the refused token is never sent again");
    assert_eq!(w.outbox.states("acme").get("pending"), Some(&3));
}

#[tokio::test(start_paused = true)]
async fn a_token_that_fails_the_policy_sends_nothing_and_blocks_only_its_tenant() {
    let origin = tokio::time::Instant::now();
    let clock: Arc<dyn Clock> = Arc::new(TokioClock { base: Utc::now(), origin });
    let outbox = Arc::new(MemoryOutbox::new(clock.clone()));
    for t in ["acme", "initech"] {
        let events: Vec<_> = (0..5).map(|i| event(&format!("{t}-{i}"))).collect();
        outbox.enqueue(&TenantName::parse(t).unwrap(), &events).await.unwrap();
    }
    // mockall: initech's token source refuses by policy; the API must never see initech.
    let mut tokens = billsync_domain::ports::MockTokenSource::new();
    let c = clock.clone();
    tokens.expect_headers().returning(move |t| {
        let now = c.now();
        let telemetry_only = t.name().as_str() == "initech";
        let claims = AccessTokenClaims {
            scope: vec![
                if telemetry_only { billsync_domain::DEVICE_WRITE_SCOPE } else { billsync_domain::BILLING_WRITE_SCOPE }
                    .into(),
            ],
            aud: vec![
                if telemetry_only { billsync_domain::BASE_AUDIENCE } else { billsync_domain::BILLING_AUDIENCE }.into(),
            ],
            tenant_id: Some(t.tenant_id().to_string()),
            client_id: Some(t.client_id().to_string()),
            iat: Some(now.timestamp()),
            exp: Some(now.timestamp() + 900),
            ..Default::default()
        };
        BillingPolicy::default()
            .authorize(AccessToken::new("t"), claims, t.tenant_id(), t.application_id(), now)
            .map_err(TokenError::Policy)
    });
    let mut api = billsync_domain::ports::MockBillingApi::new();
    api.expect_post_events().withf(|h, _| h.tenant_id().as_str() == "acme-id").times(1).returning(|_, b| {
        Ok(reply(BillingResponse::Accepted(Receipt { accepted: b.events() as u64, ..Default::default() })))
    });
    let engine = Engine::new(
        Ports { outbox: outbox.clone(), tokens: Arc::new(tokens), api: Arc::new(api), clock },
        settings(500, 100),
        vec![tenant("acme"), tenant("initech")],
        Metrics::default(),
    );

    let r = engine.sync_once().await;

    assert_eq!(r[0].accepted, 5);
    assert_eq!(r[1].blocked.as_ref().unwrap().codes(), ["missing_scope", "audience_missing"]);
    assert_eq!(r[1].requests, 0);
    assert_eq!(outbox.states("initech").get("pending"), Some(&5));
}

#[tokio::test(start_paused = true)]
async fn server_errors_and_dropped_connections_back_off_and_deliver_in_the_end() {
    let script = vec![
        Ok(reply(BillingResponse::ServerError { status: 503 })),
        Err(TransportError::Connection("reset".into())),
        Err(TransportError::Timeout),
    ];
    let w = world(&["acme"], 7, settings(500, 100), script, accept_all(), None).await;

    let r = w.engine.sync_once().await;

    assert_eq!(w.outbox.states("acme").get("delivered"), Some(&7));
    assert_eq!(w.api.sent.lock().unwrap().len(), 4);
    assert!(r[0].last_error.as_deref().unwrap().contains("did not answer in time"));
    let attempts: Vec<u32> = w.outbox.rows().iter().map(|r| r.attempts).collect();
    assert!(attempts.iter().all(|&a| a == 3), "{attempts:?}");
}

#[tokio::test(start_paused = true)]
async fn sync_gives_up_after_repeated_failures_and_keeps_the_events() {
    let responder: Responder = Box::new(|_| Ok(reply(BillingResponse::ServerError { status: 502 })));
    let mut s = settings(500, 100);
    s.give_up_after = 3;
    let w = world(&["acme"], 4, s, vec![], responder, None).await;
    w.engine.sync_once().await;
    assert_eq!(w.api.sent.lock().unwrap().len(), 3);
    assert_eq!(w.outbox.states("acme").get("pending"), Some(&4));
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_obeyed() {
    let script = vec![Ok(reply(BillingResponse::RateLimited { retry_after: Some(Duration::from_secs(7)) }))];
    let w = world(&["acme"], 2, settings(500, 100), script, accept_all(), None).await;
    w.engine.sync_once().await;
    let sent = w.api.sent.lock().unwrap();
    assert_eq!(sent.len(), 2);
    assert!(sent[1].at - sent[0].at >= Duration::from_secs(7), "{:?}", sent[1].at - sent[0].at);
}

#[tokio::test(start_paused = true)]
async fn tenants_are_drained_in_parallel_and_never_mixed() {
    let w = world(&["a", "b", "c"], 600, settings(100, 100), vec![], accept_all(), None).await;
    w.engine.sync_once().await;
    for s in w.api.sent.lock().unwrap().iter() {
        let t = s.tenant_id.trim_end_matches("-id");
        assert!(s.ids.iter().all(|id| id.starts_with(&format!("{t}-"))), "tenant {t} got {:?}", s.ids);
    }
    for t in ["a", "b", "c"] {
        assert_eq!(w.outbox.states(t).get("delivered"), Some(&600));
    }
}

#[tokio::test(start_paused = true)]
async fn run_stops_on_shutdown_and_returns_its_leases() {
    let responder: Responder = Box::new(|_| Ok(reply(BillingResponse::ServerError { status: 503 })));
    let w = world(&["acme"], 3, settings(500, 100), vec![], responder, None).await;
    let engine = w.engine.clone();
    engine.run_until(tokio::time::sleep(Duration::from_secs(30))).await;
    let states = w.outbox.states("acme");
    assert_eq!(states.get("pending"), Some(&3), "{states:?}");
}

#[tokio::test(start_paused = true)]
async fn a_failed_batch_pauses_its_tenant_and_the_lease_taken_ahead_waits_too() {
    // Three batches; the first post fails. Neither the batch leased ahead while the first
    // travelled nor any other may go out before the backoff (at least 10 ms here) is over.
    let script = vec![Ok(reply(BillingResponse::ServerError { status: 503 }))];
    let w = world(&["acme"], 30, settings(10, 100), script, accept_all(), None).await;

    w.engine.sync_once().await;

    let sent = w.api.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 4, "one failure, then three batches");
    let answered = sent[0].at + Duration::from_millis(5);
    assert!(sent[1].at >= answered + Duration::from_millis(10), "sent {:?} after the 503", sent[1].at - answered);
    let mut later: Vec<&str> = sent[1..].iter().flat_map(|s| s.ids.iter().map(String::as_str)).collect();
    later.sort_unstable();
    later.dedup();
    assert_eq!(later.len(), 30, "every event is sent after the backoff");
    assert_eq!(w.outbox.states("acme").get("delivered"), Some(&30));
}

#[tokio::test(start_paused = true)]
async fn the_next_lease_is_taken_while_a_batch_travels() {
    let w = world(&["acme"], 30, settings(10, 100), vec![], accept_all(), None).await;
    let outbox = w.outbox.clone();
    let api = w.api.clone();
    let watcher = tokio::spawn(async move {
        // While the first batch is in flight (the fake takes 5 ms), the second is leased.
        loop {
            if api.sent.lock().unwrap().len() == 1 {
                tokio::time::sleep(Duration::from_millis(2)).await;
                return outbox.states("acme").get("leased").copied();
            }
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
    });
    w.engine.sync_once().await;
    assert_eq!(watcher.await.unwrap(), Some(20), "the travelling batch and the one leased ahead");
    assert_eq!(w.outbox.states("acme").get("delivered"), Some(&30));
}

#[tokio::test(start_paused = true)]
async fn sync_reports_answers_outside_the_contract_as_blocked_and_settles_nothing() {
    let responder: Responder =
        Box::new(|_| Ok(reply(BillingResponse::Unexpected { status: 418, detail: "I'm a teapot".into() })));
    let mut s = settings(500, 100);
    s.give_up_after = 3;
    let w = world(&["acme"], 4, s, vec![], responder, None).await;

    let r = w.engine.sync_once().await;

    assert_eq!(w.api.sent.lock().unwrap().len(), 3);
    assert_eq!(w.outbox.states("acme").get("pending"), Some(&4));
    let blocked = r[0].blocked.clone().expect("blocked");
    assert_eq!(blocked.codes(), ["unexpected_response"]);
    assert!(blocked.reasons[0].hint.contains("418") && blocked.reasons[0].hint.contains("I'm a teapot"), "{blocked:?}");
    assert_eq!(r[0].state().0, TenantState::Blocked);
}

#[tokio::test(start_paused = true)]
async fn run_never_gives_up_on_unexpected_answers_and_says_why_meanwhile() {
    // Ten unexpected answers (more than give_up_after), then the platform.
    let script = (0..10)
        .map(|_| Ok(reply(BillingResponse::Unexpected { status: 302, detail: "a redirect to /login".into() })))
        .collect();
    let mut s = settings(500, 100);
    s.give_up_after = 3;
    let w = world(&["acme"], 4, s, script, accept_all(), None).await;
    let engine = w.engine.clone();
    let watcher = tokio::spawn(async move {
        loop {
            let r = engine.reports().remove(0);
            if r.requests >= 5 {
                return r.state();
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });

    w.engine.run_until(tokio::time::sleep(Duration::from_secs(600))).await;

    let (state, why) = watcher.await.unwrap();
    assert_eq!(state, TenantState::BackingOff);
    assert!(why.unwrap().starts_with("unexpected_response: the billing endpoint answered 302"));
    assert_eq!(w.outbox.states("acme").get("delivered"), Some(&4));
    assert_eq!(w.outbox.states("acme").get("dead:invalid_request"), None);
    assert_eq!(w.engine.reports()[0].state(), (TenantState::Ok, None));
}

#[tokio::test(start_paused = true)]
async fn server_waits_near_u64_max_are_capped_at_an_hour_and_the_worker_survives() {
    let huge = Duration::from_secs(u64::MAX);
    let script = vec![
        Ok(reply(BillingResponse::RateLimited { retry_after: Some(huge) })),
        Ok(BillingReply {
            response: BillingResponse::ServerError { status: 503 },
            rate_limit: Some(billsync_domain::RateLimitStatus { limit: 100, remaining: 0, reset: huge }),
        }),
    ];
    let w = world(&["acme"], 2, settings(500, 100), script, accept_all(), None).await;

    let r = w.engine.sync_once().await;

    assert_eq!(r[0].down, None, "the worker ended");
    assert_eq!(w.outbox.states("acme").get("delivered"), Some(&2));
    let sent = w.api.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 3);
    for pair in sent.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_secs(3600) && gap < Duration::from_secs(3602), "{gap:?}");
    }
}

/// Panics on its first request, then accepts everything.
struct PanicsOnce {
    calls: Mutex<u32>,
}

#[async_trait]
impl BillingApi for PanicsOnce {
    async fn post_events(&self, _: &BillingRequestHeaders, body: &BatchBody) -> Result<BillingReply, TransportError> {
        let first = {
            let mut c = self.calls.lock().unwrap();
            *c += 1;
            *c == 1
        };
        assert!(!first, "a bug in an adapter");
        Ok(reply(BillingResponse::Accepted(Receipt { accepted: body.events() as u64, ..Default::default() })))
    }
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_panics_is_down_until_it_is_restarted() {
    let w = world(&["acme"], 3, settings(500, 100), vec![], accept_all(), None).await;
    let mut s = settings(500, 100);
    s.restart_after = Duration::from_secs(10);
    s.lease_for = Duration::from_secs(5);
    let engine = Engine::new(
        Ports {
            outbox: w.outbox.clone(),
            tokens: w.tokens.clone(),
            api: Arc::new(PanicsOnce { calls: Mutex::new(0) }),
            clock: Arc::new(TokioClock { base: Utc::now(), origin: tokio::time::Instant::now() }),
        },
        s,
        vec![tenant("acme")],
        Metrics::default(),
    );
    let e = engine.clone();
    let watcher = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        e.reports().remove(0).state()
    });

    engine.run_until(tokio::time::sleep(Duration::from_secs(60))).await;

    let (state, why) = watcher.await.unwrap();
    assert_eq!(state, TenantState::Down);
    assert!(why.unwrap().contains("a bug in an adapter"));
    assert_eq!(w.outbox.states("acme").get("delivered"), Some(&3), "restarted, it delivered");
    assert_eq!(engine.reports()[0].state().0, TenantState::Ok);
}

#[tokio::test(start_paused = true)]
async fn a_worker_whose_claim_is_lost_stops_at_once_and_says_so() {
    // One request every 60 s; the heartbeat renews every 10 s (claim_ttl 30 s). At 15 s another
    // agent takes the tenant over, as one would once this agent stalled past its claim; the
    // renewal at 20 s finds the tenant taken, long before the backlog is done.
    let mut s = settings(10, 1);
    s.claim_ttl = Duration::from_secs(30);
    let w = world(&["acme"], 100, s, vec![], accept_all(), None).await;
    let acme = TenantName::parse("acme").unwrap();
    let (outbox, t) = (w.outbox.clone(), acme.clone());
    let thief = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(15)).await;
        outbox.steal(&t, "thief-1-2", Duration::from_secs(30))
    });

    let r = w.engine.sync_once().await;

    let stolen = thief.await.unwrap();
    let sent = w.api.sent.lock().unwrap().len();
    assert_eq!(sent, 1, "a request after the claim was lost at 20 s");
    assert!(r[0].last_error.as_deref().unwrap_or_default().contains("claim was lost"), "{:?}", r[0]);
    assert!(w.outbox.states("acme").get("pending").copied().unwrap_or(0) >= 80);
    // The worker neither took the tenant back nor released the other agent's claim.
    assert_eq!(w.outbox.generation(&acme), Some(stolen.generation));
    let now = w.outbox.claim_tenant(&acme, "someone-1-3", Duration::from_secs(30)).await.unwrap();
    assert!(matches!(&now, ClaimOutcome::HeldBy(h) if h.agent == "thief-1-2"), "{now:?}");
}

#[tokio::test(start_paused = true)]
async fn sync_leaves_a_tenant_held_by_a_live_agent_and_says_who() {
    let w = world(&["acme"], 5, settings(10, 100), vec![], accept_all(), None).await;
    // Another agent holds the tenant from the start and keeps renewing (its heartbeat moves).
    let ttl = SyncSettings::default().claim_ttl;
    let acme = TenantName::parse("acme").unwrap();
    let first = w.outbox.claim_tenant(&acme, "thief-1-2", ttl).await.unwrap();
    assert!(matches!(first, ClaimOutcome::Claimed(_)), "{first:?}");
    let outbox = w.outbox.clone();
    let other = tokio::spawn(async move {
        loop {
            tokio::time::sleep(ttl / 3).await;
            let renewed = outbox.claim_tenant(&acme, "thief-1-2", ttl).await.unwrap();
            assert!(matches!(renewed, ClaimOutcome::Claimed(_)), "the live agent lost its claim: {renewed:?}");
        }
    });

    let r = w.engine.sync_once().await;

    other.abort();
    assert!(other.await.unwrap_err().is_cancelled(), "the other agent kept its claim throughout");
    assert_eq!(w.api.sent.lock().unwrap().len(), 0);
    assert_eq!(r[0].state(), (TenantState::Held, Some("held by agent thief-1-2 on thief, alive".into())));
    assert!(r[0].holder_alive);
}
