//! Only the platform's own answer settles an event. A hostile billing peer (a real HTTP server
//! standing where the billing endpoint should be, as a WAF, a captive portal or a misrouted
//! load balancer would) answers outside the contract; the token endpoint is the emulator's.
//! After each kind of answer nothing is acked, nothing is dead-lettered, the tenant is blocked
//! with `unexpected_response` (or waits, for a `429`), and once the peer passes requests
//! through to the emulator every event is delivered exactly once.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use billsync::Agent;
use billsync::config::Config;
use billsync::engine::{SyncSettings, TenantReport, TenantState};
use billsync_domain::{BillingEvent, EncodedEvent};
use billsync_emulator::{Emulator, EmulatorConfig};

/// What the peer answers to a billing POST while it misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hostile {
    /// `302` to an http URL on the same server, which answers `202` to the redirected GET.
    Redirect,
    /// `400` with an HTML page.
    Html400,
    /// `413` with nginx's HTML page, for a batch and for a single event alike.
    Html413,
    /// `200` with a receipt that accounts for the batch.
    Ok200,
    /// `202` whose counts do not add up.
    BadCounts,
    /// `418`.
    Teapot,
    /// `429` with `Retry-After: 18446744073709551615`, twice, then the platform.
    RetryAfterMax,
    /// `202` with a consistent receipt padded past 1 MiB.
    HugeBody,
}

struct Peer {
    hostile: Hostile,
    behave: AtomicBool,
    upstream: String,
    own: Mutex<String>,
    posts: AtomicU32,
    redirected_gets: AtomicU32,
    client: reqwest::Client,
}

const NGINX_413: &str = "<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n<center><h1>413 \
                         Request Entity Too Large</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

fn batch_size(body: &[u8]) -> usize {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["events"].as_array().map(Vec::len))
        .unwrap_or(0)
}

fn receipt(n: usize) -> String {
    serde_json::json!({"accepted": n, "duplicates": [], "rejected": []}).to_string()
}

async fn billing(State(peer): State<Arc<Peer>>, headers: HeaderMap, body: Bytes) -> Response {
    let nth = peer.posts.fetch_add(1, Ordering::SeqCst);
    let passes = peer.behave.load(Ordering::SeqCst) || (peer.hostile == Hostile::RetryAfterMax && nth >= 2);
    if passes {
        return forward(&peer, headers, body).await;
    }
    let n = batch_size(&body);
    match peer.hostile {
        Hostile::Redirect => {
            let to = format!("{}/elsewhere", peer.own.lock().unwrap());
            (StatusCode::FOUND, [("location", to)], "").into_response()
        }
        Hostile::Html400 => (
            StatusCode::BAD_REQUEST,
            [("content-type", "text/html")],
            "<html><body><h1>400 Bad Request</h1></body></html>",
        )
            .into_response(),
        Hostile::Html413 => (StatusCode::PAYLOAD_TOO_LARGE, [("content-type", "text/html")], NGINX_413).into_response(),
        Hostile::Ok200 => (StatusCode::OK, receipt(n)).into_response(),
        Hostile::BadCounts => (StatusCode::ACCEPTED, receipt(n + 3)).into_response(),
        Hostile::Teapot => (StatusCode::IM_A_TEAPOT, "I'm a teapot").into_response(),
        Hostile::RetryAfterMax => {
            (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "18446744073709551615")], r#"{"error":"rate_limited"}"#)
                .into_response()
        }
        Hostile::HugeBody => {
            let padded = format!(
                r#"{{"accepted": {n}, "duplicates": [], "rejected": [], "pad": "{}"}}"#,
                "x".repeat((1 << 20) + 1)
            );
            (StatusCode::ACCEPTED, padded).into_response()
        }
    }
}

/// The same request, passed through to the emulator; its answer passed back.
async fn forward(peer: &Peer, headers: HeaderMap, body: Bytes) -> Response {
    let mut req = peer.client.post(format!("{}/iot/api/v2/billing/events", peer.upstream)).body(body);
    for name in ["authorization", "x-tenant-id", "x-application-id", "content-type", "idempotency-key"] {
        if let Some(v) = headers.get(name) {
            req = req.header(name, v.clone());
        }
    }
    let answer = req.send().await.expect("the emulator answers");
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
    let mut out = HeaderMap::new();
    for (k, v) in answer.headers() {
        if k.as_str().starts_with("x-ratelimit") || k.as_str() == "retry-after" || k.as_str() == "www-authenticate" {
            out.insert(
                axum::http::HeaderName::from_bytes(k.as_str().as_bytes()).unwrap(),
                HeaderValue::from_bytes(v.as_bytes()).unwrap(),
            );
        }
    }
    (status, out, answer.bytes().await.expect("a body")).into_response()
}

async fn elsewhere(State(peer): State<Arc<Peer>>) -> Response {
    peer.redirected_gets.fetch_add(1, Ordering::SeqCst);
    (StatusCode::ACCEPTED, receipt(0)).into_response()
}

struct World {
    peer: Arc<Peer>,
    platform: Emulator,
    agent: Agent,
    _dir: tempfile::TempDir,
}

const EVENTS: usize = 40;

async fn world(hostile: Hostile) -> World {
    let platform = Emulator::start(EmulatorConfig::builtin(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let peer = Arc::new(Peer {
        hostile,
        behave: AtomicBool::new(false),
        upstream: platform.base_url(),
        own: Mutex::default(),
        posts: AtomicU32::new(0),
        redirected_gets: AtomicU32::new(0),
        client: reqwest::Client::new(),
    });
    let app = Router::new()
        .route("/iot/api/v2/billing/events", post(billing))
        .route("/elsewhere", any(elsewhere))
        .with_state(peer.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    *peer.own.lock().unwrap() = url.clone();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[platform]\nbase_url = \"{url}\"\ntoken_url = \"{}\"\n\n[storage]\nurl = \"sqlite://{}\"\n\n\
         [[tenants]]\nname = \"acme\"\ntenant_id = \"acme-prod-001\"\napplication_id = \"app-acme\"\n\
         client_secret = \"secret-acme\"\n",
        platform.token_url(),
        dir.path().join("outbox.db").display()
    );
    let config = Config::parse(&text, &dir.path().join("billsync.toml")).expect("valid configuration");
    let settings = SyncSettings {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        give_up_after: 3,
        // The one-hour cap is the domain's (and tested there); one second keeps this test short.
        max_server_wait: Duration::from_secs(1),
        ..SyncSettings::default()
    };
    let agent = Agent::builder().config(config).settings(settings).build().await.expect("agent builds");
    let now = chrono::Utc::now();
    let events: Vec<EncodedEvent> = (0..EVENTS)
        .map(|i| {
            let json = serde_json::json!({
                "event_id": format!("peer-{i:04}"), "device_id": "meter-1", "meter": "energy.active",
                "quantity": "1.5", "unit": "kWh", "occurred_at": (now - chrono::Duration::seconds(30)).to_rfc3339(),
            });
            BillingEvent::parse(&json.to_string(), now).unwrap().encode()
        })
        .collect();
    agent.enqueue("acme", &events).await.unwrap();
    World { peer, platform, agent, _dir: dir }
}

impl World {
    /// (pending or leased, delivered, dead-lettered) in the outbox.
    async fn counts(&self) -> (u64, u64, u64) {
        let s = self.agent.status().await.unwrap().into_iter().find(|s| s.name == "acme").unwrap();
        (s.pending + s.in_flight, s.delivered, s.dead_lettered)
    }

    /// The peer starts passing requests to the platform; a second sync delivers everything once.
    async fn behaves_and_delivers(&self) {
        self.peer.behave.store(true, Ordering::SeqCst);
        let r = self.agent.sync_once().await;
        assert_eq!(r[0].state(), (TenantState::Ok, None), "{r:?}");
        assert_eq!(self.counts().await, (0, EVENTS as u64, 0));
        let mut stored = self.platform.stored_event_ids("acme-prod-001");
        stored.sort();
        stored.dedup();
        assert_eq!(stored.len(), EVENTS);
    }
}

/// A sync against the misbehaving peer: nothing settled, the tenant blocked by name.
async fn settles_nothing_and_blocks(hostile: Hostile, status: u16) -> World {
    let w = world(hostile).await;
    let r: Vec<TenantReport> = w.agent.sync_once().await;
    assert_eq!(w.counts().await, (EVENTS as u64, 0, 0), "{hostile:?}: acked or dead-lettered events");
    assert!(w.platform.stored_event_ids("acme-prod-001").is_empty());
    let blocked = r[0].blocked.clone().unwrap_or_else(|| panic!("{hostile:?}: not blocked: {:?}", r[0]));
    assert_eq!(blocked.codes(), ["unexpected_response"], "{hostile:?}");
    assert!(
        blocked.reasons[0].hint.contains(&format!("answered {status}")),
        "{hostile:?}: {}",
        blocked.reasons[0].hint
    );
    assert!(!blocked.reasons[0].hint.contains("secret-acme"), "{}", blocked.reasons[0].hint);
    w
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_settles_nothing() {
    let w = settles_nothing_and_blocks(Hostile::Redirect, 302).await;
    assert_eq!(w.peer.redirected_gets.load(Ordering::SeqCst), 0, "the redirect was followed");
    w.behaves_and_delivers().await;
}

#[tokio::test]
async fn an_html_400_dead_letters_nothing() {
    let w = settles_nothing_and_blocks(Hostile::Html400, 400).await;
    w.behaves_and_delivers().await;
}

#[tokio::test]
async fn an_html_413_splits_but_never_dead_letters_a_single_event() {
    let w = settles_nothing_and_blocks(Hostile::Html413, 413).await;
    // It split (40, 20, 10, 5, 2, 1 per round) before a single event met the same page.
    assert!(w.peer.posts.load(Ordering::SeqCst) >= 6 * 3, "{}", w.peer.posts.load(Ordering::SeqCst));
    w.behaves_and_delivers().await;
}

#[tokio::test]
async fn a_200_is_not_the_contracts_202() {
    let w = settles_nothing_and_blocks(Hostile::Ok200, 200).await;
    w.behaves_and_delivers().await;
}

#[tokio::test]
async fn a_202_whose_counts_do_not_add_up_settles_nothing() {
    let w = settles_nothing_and_blocks(Hostile::BadCounts, 202).await;
    w.behaves_and_delivers().await;
}

#[tokio::test]
async fn an_unlisted_status_settles_nothing() {
    let w = settles_nothing_and_blocks(Hostile::Teapot, 418).await;
    w.behaves_and_delivers().await;
}

#[tokio::test]
async fn a_body_over_one_mebibyte_settles_nothing() {
    let w = settles_nothing_and_blocks(Hostile::HugeBody, 202).await;
    w.behaves_and_delivers().await;
}

#[tokio::test]
async fn a_retry_after_near_u64_max_is_capped_and_the_worker_survives() {
    let w = world(Hostile::RetryAfterMax).await;
    let started = Instant::now();
    let r = w.agent.sync_once().await;
    // Two 429s, each capped at this test's one-second ceiling, then the platform.
    assert!(started.elapsed() >= Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(r[0].down, None);
    assert_eq!(r[0].state(), (TenantState::Ok, None), "{r:?}");
    assert_eq!(w.counts().await, (0, EVENTS as u64, 0));
    assert_eq!(w.platform.stored_event_ids("acme-prod-001").len(), EVENTS);
}
