//! The fault soak, run by `cargo xtask soak [--minutes N]`.
//!
//! The platform emulator runs in this process on a loopback port with every fault on (`503`s,
//! `429`s, connections dropped after the events were stored, latency, token endpoint outages),
//! 5-second billing tokens, tokens revoked and signing keys rotated while the agent works. Two
//! `billsync enqueue` processes and one in-process producer enqueue into the same SQLite outbox
//! that the agent, a `billsync run` child process, delivers from; the agent is killed with
//! SIGKILL at random moments and restarted. When the chaos phase is over, a last agent drains
//! the outbox (faults still on), and the platform's holdings are reconciled through its read
//! endpoint (`GET /iot/api/v2/billing/events` with a billing read token): per tenant, the set of
//! event ids the platform holds must equal the set enqueued. Exits 1 on any loss, any stranger,
//! an outbox not drained, a dead-lettered event or an agent that died by itself.
//!
//! ```text
//! soak --billsync target/debug/billsync [--minutes 5] [--seed 7] [--keep]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // bench and example code: a panic is a failure

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use billsync::Agent;
use billsync::config::Config;
use billsync_domain::{BillingEvent, EncodedEvent};
use billsync_emulator::{ClientRegistration, Emulator, EmulatorConfig, Fault, FaultKind, FaultTarget, Reason};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::process::{Child, Command};

/// (local name, tenant id, client id, client secret, verify_jwks).
const TENANTS: &[(&str, &str, &str, &str, bool)] = &[
    ("acme", "acme-prod-001", "app-acme", "secret-acme", false),
    ("globex", "globex-prod-001", "app-globex", "secret-globex", false),
    ("soak", "soak-prod-001", "app-soak", "secret-soak", true),
];
const READ_SCOPE: &str = "urn:oracle:iot:billing:read";
/// The longest the final drain may take once the chaos is over.
const DRAIN_LIMIT: Duration = Duration::from_secs(180);
/// Retries of one `billsync enqueue` call (same file, same ids: a retry is idempotent).
const ENQUEUE_TRIES: u32 = 5;

struct Args {
    minutes: f64,
    billsync: PathBuf,
    seed: u64,
    keep: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { minutes: 5.0, billsync: PathBuf::new(), seed: 0x50A4, keep: false };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--minutes" => {
                args.minutes = value("--minutes")?.parse().map_err(|e| format!("--minutes: {e}"))?;
                if !(args.minutes > 0.0 && args.minutes <= 600.0) {
                    return Err("--minutes must be above 0 and at most 600".into());
                }
            }
            "--billsync" => args.billsync = PathBuf::from(value("--billsync")?),
            "--seed" => args.seed = value("--seed")?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--keep" => args.keep = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.billsync.as_os_str().is_empty() {
        return Err("--billsync PATH (the billsync binary) is required".into());
    }
    Ok(args)
}

/// What the producers stored, per tenant id, and what went wrong.
#[derive(Default)]
struct Ledger {
    enqueued: BTreeMap<String, BTreeSet<String>>,
    calls: u64,
    retried_calls: u64,
    failed_calls: Vec<String>,
}

struct Shared {
    ledger: Mutex<Ledger>,
    stop_producing: AtomicBool,
    stop_chaos: AtomicBool,
    revocations: AtomicU64,
    rotations: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::from(2);
        }
    };
    match soak(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn soak(args: Args) -> Result<bool, String> {
    let started = Instant::now();
    let chaos_for = Duration::from_secs_f64(args.minutes * 60.0);
    let dir = tempfile::Builder::new().prefix("billsync-soak-").tempdir().map_err(|e| e.to_string())?;
    let dir_path = dir.path().to_owned();

    let mut platform = EmulatorConfig::builtin()
        .billing_token_lifetime(Duration::from_secs(5))
        .billing_rate_per_min(Some(240))
        .seed(args.seed);
    for (_, tenant_id, client, secret, _) in TENANTS.iter().filter(|t| t.0 == "soak") {
        platform = platform.with_client(ClientRegistration::new(*client, *secret, [*tenant_id], true));
    }
    let emulator = Arc::new(
        Emulator::start(platform, "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?)
            .await
            .map_err(|e| e.to_string())?,
    );
    for fault in [
        Fault::probability(FaultKind::Unavailable, 0.05),
        Fault::probability(FaultKind::RateLimited { retry_after_s: 1 }, 0.03),
        Fault::probability(FaultKind::DropConnection, 0.05),
        Fault::probability(FaultKind::Latency { ms: 150 }, 0.1).on(FaultTarget::All),
        Fault::probability(FaultKind::Unavailable, 0.05).on(FaultTarget::Token),
        Fault::probability(FaultKind::DropConnection, 0.03).on(FaultTarget::Token),
    ] {
        emulator.inject(fault);
    }

    let config_path = dir_path.join("billsync.toml");
    write_config(&config_path, &emulator.base_url(), &dir_path.join("outbox.db"))?;
    let log_path = dir_path.join("agent.log");
    println!(
        "soak: {:.1} min of chaos, seed {}, emulator {}, work dir {}",
        args.minutes,
        args.seed,
        emulator.base_url(),
        dir_path.display()
    );

    let shared = Arc::new(Shared {
        ledger: Mutex::new(Ledger::default()),
        stop_producing: AtomicBool::new(false),
        stop_chaos: AtomicBool::new(false),
        revocations: AtomicU64::new(0),
        rotations: AtomicU64::new(0),
    });

    // The in-process producer shares the outbox file with the agent and the CLI producers.
    let local = Agent::builder()
        .config(Config::load(&config_path).map_err(|e| e.to_string())?)
        .build()
        .await
        .map_err(|e| e.to_string())?;

    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..2u64 {
        let (shared, billsync, config, dir) =
            (shared.clone(), args.billsync.clone(), config_path.clone(), dir_path.clone());
        let seed = args.seed.wrapping_add(p + 1);
        tasks.spawn(async move { cli_producer(p, seed, shared, billsync, config, dir).await });
    }
    {
        let (shared, local) = (shared.clone(), local.clone());
        let seed = args.seed.wrapping_add(100);
        tasks.spawn(async move { local_producer(seed, shared, local).await });
    }
    let chaos = {
        let (shared, emulator) = (shared.clone(), emulator.clone());
        let seed = args.seed.wrapping_add(200);
        tokio::spawn(async move { chaos_monkey(seed, shared, emulator).await })
    };

    // The agent: started, SIGKILLed at a random moment, restarted, until the chaos is over.
    let mut rng = StdRng::seed_from_u64(args.seed.wrapping_add(300));
    let mut kills = 0u64;
    let mut self_exits = Vec::new();
    let chaos_end = started + chaos_for;
    while Instant::now() < chaos_end {
        let mut child = spawn_agent(&args.billsync, &config_path, &log_path)?;
        let life =
            Duration::from_millis(rng.gen_range(500..8_000)).min(chaos_end.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(life, child.wait()).await {
            Ok(status) => self_exits.push(format!("agent exited by itself: {status:?}")),
            Err(_) => {
                child.start_kill().map_err(|e| format!("SIGKILL: {e}"))?;
                let _ = child.wait().await;
                kills += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..300))).await;
    }
    shared.stop_producing.store(true, Ordering::SeqCst);
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            return Err(format!("a producer panicked: {e}"));
        }
    }
    let chaos_elapsed = started.elapsed();

    // Drain: one agent, not killed any more, faults still on.
    println!("soak: chaos over after {:.0} s; draining", chaos_elapsed.as_secs_f64());
    let expected = lock(&shared.ledger).enqueued.clone();
    let mut agent = spawn_agent(&args.billsync, &config_path, &log_path)?;
    let drain_started = Instant::now();
    let mut drained = false;
    let mut all_on_platform = false;
    let mut checks = 0u64;
    while drain_started.elapsed() < DRAIN_LIMIT {
        if let Ok(Some(status)) = agent.try_wait() {
            self_exits.push(format!("draining agent exited by itself: {status}"));
            agent = spawn_agent(&args.billsync, &config_path, &log_path)?;
        }
        let all_there = expected.iter().all(|(tenant, ids)| {
            let held: BTreeSet<String> = emulator.stored_event_ids(tenant).into_iter().collect();
            ids.is_subset(&held)
        });
        // Drained: the platform has everything, and the agent has settled everything too (events
        // a killed agent delivered but never acked are sent again and come back as duplicates).
        all_on_platform = all_there;
        if all_there && local.status().await.is_ok_and(|s| s.iter().all(|t| t.pending + t.in_flight == 0)) {
            drained = true;
            break;
        }
        // An outbox with nothing left to deliver while events are missing: they are lost.
        checks += 1;
        if checks.is_multiple_of(8)
            && local.status().await.is_ok_and(|s| s.iter().all(|t| t.pending + t.in_flight == 0))
        {
            println!("soak: the outbox has nothing left to deliver, yet events are missing");
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let drain_elapsed = drain_started.elapsed();
    shared.stop_chaos.store(true, Ordering::SeqCst);
    let _ = chaos.await;
    // Let the agent settle its last acknowledgements, then stop it gracefully.
    tokio::time::sleep(Duration::from_secs(1)).await;
    terminate(&mut agent).await;

    // Reconcile through the platform's read endpoint, with the faults and the limit off.
    emulator.clear_faults();
    emulator.set_billing_rate_per_min(None);
    let counters = emulator.counters();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().map_err(|e| e.to_string())?;
    let mut ok = drained && self_exits.is_empty();
    let mut total = 0usize;
    println!("\nreconciliation (GET {} with a billing read token):", billsync_emulator::BILLING_EVENTS_PATH);
    for (name, tenant_id, client, secret, _) in TENANTS {
        let held = platform_holdings(&http, &emulator.base_url(), tenant_id, client, secret).await?;
        let want = expected.get(*tenant_id).cloned().unwrap_or_default();
        let missing: Vec<&String> = want.difference(&held).collect();
        let strangers: Vec<&String> = held.difference(&want).collect();
        total += want.len();
        println!(
            "  {name:<8} enqueued {:>6}  held {:>6}  missing {:>4}  unexpected {:>4}",
            want.len(),
            held.len(),
            missing.len(),
            strangers.len()
        );
        if !missing.is_empty() || !strangers.is_empty() {
            ok = false;
            println!(
                "    missing e.g. {:?}; unexpected e.g. {:?}",
                &missing[..missing.len().min(5)],
                &strangers[..strangers.len().min(5)]
            );
        }
    }
    // The outbox must be empty of work and free of dead letters.
    let status = local.status().await.map_err(|e| e.to_string())?;
    let (left, dead): (u64, u64) =
        status.iter().fold((0, 0), |(l, d), s| (l + s.pending + s.in_flight, d + s.dead_lettered));
    if left != 0 || dead != 0 {
        ok = false;
    }

    let ledger = lock(&shared.ledger);
    let billing_posts = counters.requests_by_endpoint.get("POST /iot/api/v2/billing/events").copied().unwrap_or(0);
    let all_requests: u64 = counters.requests_by_status.values().sum();
    let duplicates: u64 = counters.events_duplicate.values().sum();
    println!("\nsoak figures:");
    println!(
        "  elapsed                  {:.0} s (chaos {:.0} s, drain {:.1} s)",
        started.elapsed().as_secs_f64(),
        chaos_elapsed.as_secs_f64(),
        drain_elapsed.as_secs_f64()
    );
    println!("  events enqueued          {total} in {} enqueue calls ({} retried)", ledger.calls, ledger.retried_calls);
    println!(
        "  platform requests        {all_requests} ({billing_posts} billing posts, {} tokens issued)",
        counters.tokens_issued
    );
    println!(
        "  faults survived          {} injected 503, {} injected 429, {} real 429, {} dropped connections, {} revoked-token 401, {} expired-token 401",
        counters.reason(Reason::InjectedUnavailable),
        counters.reason(Reason::InjectedRateLimited),
        counters.reason(Reason::RateLimited),
        counters.reason(Reason::InjectedConnectionDrop),
        counters.reason(Reason::TokenRevoked),
        counters.reason(Reason::TokenExpired),
    );
    println!(
        "  chaos actions            {} revocations, {} key rotations",
        shared.revocations.load(Ordering::SeqCst),
        shared.rotations.load(Ordering::SeqCst)
    );
    println!("  agent restarts           {kills} (SIGKILL)");
    println!("  duplicates absorbed      {duplicates}");
    println!("  outbox after drain       {left} pending or in flight, {dead} dead-lettered");
    for e in ledger.failed_calls.iter().chain(&self_exits) {
        println!("  problem: {e}");
    }
    if !ledger.failed_calls.is_empty() {
        ok = false;
    }
    if !drained {
        println!(
            "  problem: {} after the drain ({:.0} s, limit {} s)",
            if all_on_platform { "events left in the outbox" } else { "events missing" },
            drain_elapsed.as_secs_f64(),
            DRAIN_LIMIT.as_secs()
        );
    }
    if args.keep || !ok {
        let kept = dir.keep();
        println!("  work dir kept: {} (agent log: agent.log)", kept.display());
    }
    println!(
        "soak: {}",
        if ok { "OK: every enqueued event is on the platform exactly once, nothing else is" } else { "FAILED" }
    );
    Ok(ok)
}

fn write_config(path: &Path, base_url: &str, db: &Path) -> Result<(), String> {
    let mut text = format!(
        "[platform]\nbase_url = \"{base_url}\"\n\n[storage]\nurl = \"sqlite://{}\"\n\n[sync]\nmax_batch_events = 25\n\
         requests_per_minute = 300\nmax_backoff_seconds = 2\nrequest_timeout_seconds = 3\nlease_seconds = 4\n\
         claim_ttl_seconds = 4\n",
        db.display()
    );
    for (name, tenant_id, client, secret, verify) in TENANTS {
        text.push_str(&format!(
            "\n[[tenants]]\nname = \"{name}\"\ntenant_id = \"{tenant_id}\"\napplication_id = \"{client}\"\n\
             client_secret = \"{secret}\"\nverify_jwks = {verify}\n"
        ));
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn spawn_agent(billsync: &Path, config: &Path, log: &Path) -> Result<Child, String> {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    Command::new(billsync)
        .arg("--config")
        .arg(config)
        .args(["--quiet", "run", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", billsync.display()))
}

/// SIGTERM, then SIGKILL if the agent has not stopped within 15 s.
async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
    }
    if tokio::time::timeout(Duration::from_secs(15), child.wait()).await.is_err() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

fn make_events(prefix: &str, from: u64, n: u64) -> Vec<(String, String)> {
    let now = chrono::Utc::now();
    (from..from + n)
        .map(|i| {
            let id = format!("{prefix}-{i:07}");
            let json = serde_json::json!({
                "event_id": id,
                "device_id": format!("meter-{}", i % 17),
                "meter": "energy.active",
                "quantity": format!("{}.{:03}", i % 1000, i % 997),
                "unit": "kWh",
                "occurred_at": (now - chrono::Duration::seconds(10)).to_rfc3339(),
                "attributes": {"site": "soak"},
            });
            (id, json.to_string())
        })
        .collect()
}

/// Enqueues through `billsync enqueue` processes until told to stop.
async fn cli_producer(p: u64, seed: u64, shared: Arc<Shared>, billsync: PathBuf, config: PathBuf, dir: PathBuf) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut next = 0u64;
    let file = dir.join(format!("producer-{p}.jsonl"));
    while !shared.stop_producing.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..700))).await;
        let (name, tenant_id, ..) = TENANTS[rng.gen_range(0..TENANTS.len())];
        let n = rng.gen_range(1..=40);
        let events = make_events(&format!("p{p}"), next, n);
        next += n;
        let text: String = events.iter().map(|(_, json)| format!("{json}\n")).collect();
        if let Err(e) = std::fs::write(&file, text) {
            lock(&shared.ledger).failed_calls.push(format!("producer {p}: {e}"));
            continue;
        }
        let mut last = String::new();
        let mut stored = false;
        for attempt in 0..ENQUEUE_TRIES {
            let out = Command::new(&billsync)
                .arg("--config")
                .arg(&config)
                .args(["--quiet", "enqueue", "--tenant", name])
                .arg(&file)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output();
            match tokio::time::timeout(Duration::from_secs(30), out).await {
                Ok(Ok(o)) if o.status.success() => {
                    stored = true;
                    let mut l = lock(&shared.ledger);
                    l.calls += 1;
                    l.retried_calls += u64::from(attempt > 0);
                    break;
                }
                Ok(Ok(o)) => last = format!("{}: {}", o.status, String::from_utf8_lossy(&o.stderr).trim()),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timed out after 30 s".into(),
            }
        }
        let mut l = lock(&shared.ledger);
        if stored {
            l.enqueued.entry(tenant_id.to_owned()).or_default().extend(events.into_iter().map(|(id, _)| id));
        } else {
            // Whether those events were stored is unknown: they will show up as "unexpected".
            l.failed_calls.push(format!("producer {p}: billsync enqueue failed {ENQUEUE_TRIES} times: {last}"));
        }
    }
}

/// Enqueues in-process (the embedding API) into the same outbox until told to stop.
async fn local_producer(seed: u64, shared: Arc<Shared>, agent: Agent) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut next = 0u64;
    while !shared.stop_producing.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(50..400))).await;
        let (name, tenant_id, ..) = TENANTS[rng.gen_range(0..TENANTS.len())];
        let n = rng.gen_range(1..=25);
        let raw = make_events("local", next, n);
        next += n;
        let now = chrono::Utc::now();
        let events: Vec<EncodedEvent> =
            match raw.iter().map(|(_, j)| BillingEvent::parse(j, now).map(|e| e.encode())).collect() {
                Ok(e) => e,
                Err(e) => {
                    lock(&shared.ledger).failed_calls.push(format!("local producer: bad event: {e}"));
                    continue;
                }
            };
        let mut result = Err(String::new());
        for _ in 0..ENQUEUE_TRIES {
            result = agent.enqueue(name, &events).await.map(|_| ()).map_err(|e| e.to_string());
            if result.is_ok() {
                break;
            }
        }
        let mut l = lock(&shared.ledger);
        match result {
            Ok(()) => {
                l.calls += 1;
                l.enqueued.entry(tenant_id.to_owned()).or_default().extend(raw.into_iter().map(|(id, _)| id));
            }
            Err(e) => l.failed_calls.push(format!("local producer: enqueue failed {ENQUEUE_TRIES} times: {e}")),
        }
    }
}

/// Revokes a client's tokens every few seconds and rotates the signing key every 20 s or so.
async fn chaos_monkey(seed: u64, shared: Arc<Shared>, emulator: Arc<Emulator>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut last_rotation = Instant::now();
    while !shared.stop_chaos.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1_000..4_000))).await;
        let (_, _, client, ..) = TENANTS[rng.gen_range(0..TENANTS.len())];
        emulator.revoke_client_tokens(client);
        shared.revocations.fetch_add(1, Ordering::SeqCst);
        if last_rotation.elapsed() > Duration::from_secs(rng.gen_range(15..30)) {
            if emulator.rotate_keys().await.is_ok() {
                shared.rotations.fetch_add(1, Ordering::SeqCst);
            }
            last_rotation = Instant::now();
        }
    }
}

/// Every event id the platform holds for the tenant, through the reconciliation endpoint.
async fn platform_holdings(
    http: &reqwest::Client,
    base_url: &str,
    tenant_id: &str,
    client: &str,
    secret: &str,
) -> Result<BTreeSet<String>, String> {
    let token: serde_json::Value = http
        .post(format!("{base_url}{}", billsync_emulator::TOKEN_PATH))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client),
            ("client_secret", secret),
            ("scope", READ_SCOPE),
        ])
        .send()
        .await
        .map_err(|e| format!("read token: {e}"))?
        .json()
        .await
        .map_err(|e| format!("read token: {e}"))?;
    let bearer = token["access_token"].as_str().ok_or("the token endpoint gave no read token")?.to_owned();
    let mut held = BTreeSet::new();
    let mut after: Option<u64> = None;
    for _ in 0..10_000 {
        let mut query = vec![("since", "1970-01-01T00:00:00Z".to_owned()), ("limit", "1000".to_owned())];
        if let Some(a) = after {
            query.push(("after", a.to_string()));
        }
        let resp = http
            .get(format!("{base_url}{}", billsync_emulator::BILLING_EVENTS_PATH))
            .bearer_auth(&bearer)
            .header("X-Tenant-ID", tenant_id)
            .header("X-Application-ID", client)
            .query(&query)
            .send()
            .await
            .map_err(|e| format!("reconciliation of {tenant_id}: {e}"))?;
        let status = resp.status();
        let page: serde_json::Value = resp.json().await.map_err(|e| format!("reconciliation of {tenant_id}: {e}"))?;
        if !status.is_success() {
            return Err(format!("reconciliation of {tenant_id}: {status} {page}"));
        }
        let events = page["events"].as_array().cloned().unwrap_or_default();
        for e in &events {
            let id = e["event_id"].as_str().ok_or("an event without event_id")?;
            if !held.insert(id.to_owned()) {
                return Err(format!("the platform lists {id} twice for {tenant_id}"));
            }
            after = e["seq"].as_u64().or(after);
        }
        if !page["has_more"].as_bool().unwrap_or(false) || events.is_empty() {
            return Ok(held);
        }
    }
    Err(format!("reconciliation of {tenant_id} did not end"))
}
