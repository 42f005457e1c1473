//! The macro benchmarks of `cargo xtask bench`, each figure beside a baseline measured in the
//! same run, against the in-process platform emulator on loopback.
//!
//! ```text
//! billsync-bench [--quick] [--billsync target/release/billsync] [--out target/bench/macro.tsv] [--only NAME,...]
//! ```
//!
//! Figures (one line each in the output, tab-separated: name, value, unit, baseline name,
//! baseline, ratio, target, note):
//!
//! - `e2e_{sqlite,postgres}_{1,100}_tenant(s)`: events/s of `Agent::sync_once` over a backlog
//!   enqueued beforehand (tokens fetched before the clock starts), batches of 500, the
//!   emulator's rate limit off; baseline `raw_reqwest`, a bare reqwest loop per tenant posting
//!   the same pre-serialised batches with a fixed token (no outbox, no policy, no limiter): the
//!   transport ceiling. Medians of three rounds in which the two take turns.
//! - `enqueue_{sqlite,postgres}_batch_500`: events/s of `Agent::enqueue` in batches of 500;
//!   baseline `raw_sqlx_insert`, a plain sqlx insert loop, one transaction per 500 events, with
//!   the same durability (SQLite: WAL + `synchronous=FULL`).
//! - `ingest_http_batch_500` (group `ingest`): events/s posted to the HTTP ingest of the real
//!   `billsync run` (a child process, `[ingest]` on loopback, no token) as JSON Lines bodies of
//!   500 events, pre-serialised, by 4 concurrent clients, timed until the last `200`; delivery
//!   to the emulator held off by `[sync] requests_per_minute = 1`; baseline
//!   `enqueue_sqlite_batch_500`, measured again in the group: an in-process `Agent::enqueue` of
//!   the same number of events in batches of 500. Fresh SQLite outboxes; medians of three
//!   rounds in which the two take turns.
//! - `ingest_mqtt_qos1` (group `ingest`): events/s committed by the MQTT ingest of the real
//!   `billsync run` (a child process, `[ingest.mqtt]` with a persistent session, delivery held
//!   off as above) while 4 rumqttc publishers publish single-event JSON messages at QoS 1 for a
//!   fixed clock (10 s; `--quick` 3 s) to a private mosquitto started on a free loopback port.
//!   Committed means counted by the agent's `billsync_ingest_events_total{result="stored"}` on
//!   its `/metrics` when the clock ends, not merely acknowledged by the broker. The broker's
//!   limits are raised so that neither is what is measured: `max_inflight_messages 1000` (the
//!   most messages `run` takes in one run; the default is 20) and `max_queued_messages
//!   1000000` (what the publishers get ahead of the agent; the default is 1000), with
//!   `persistence false`, `allow_anonymous true`. The agent's session and subscription are
//!   made before it starts, so that the broker keeps every message from the first. Baseline
//!   `enqueue_sqlite_single_64_producers`, measured in the group for the same clock: the
//!   single-event group commit, in-process `Agent::enqueue` of one event per call from 64
//!   concurrent tasks. Fresh SQLite outboxes; medians of three rounds in which the two take
//!   turns. No target yet: the ratio is reported. Skipped, with a message, without a
//!   `mosquitto` on `PATH` or in `/usr/sbin`.
//! - `drain_rate_limited_2_tenants`: seconds to drain a backlog under an exact sliding-window
//!   limit (client and emulator both at the limit); baseline `rate_limit_minimum`, the least
//!   time the limit allows: for R requests at L per window W, the first L go at once and each
//!   later group of L one window after the group before, so `min = floor((R - 1) / L) * W`.
//!   The ratio is `min / elapsed` (the drain efficiency).
//! - `peak_rss_1000_tenants_1m_pending`: VmHWM of the real `billsync run` (a child process)
//!   while it delivers 1,000,000 pending events of 1,000 tenants to the emulator; baseline
//!   `idle_rss_1000_tenants`, the same process with the same tenants and an empty outbox.
//! - `drain_while_reconciling`: billing requests accepted in the 60 s from the first one, while
//!   `run` (in process) reconciles a large listing of the same tenant under the same limit;
//!   baseline the limit itself (`[reconcile] share` = 0.2 leaves delivery 0.8 of it).
//! - `peak_rss_reconcile_{1m,100k}`: VmHWM of `billsync reconcile` comparing 1,000,000
//!   delivered events with the emulator's same 1,000,000 (rate limit off); baseline
//!   `idle_rss_same_outbox`, `billsync run` idle on the same outbox.
//! - `binary_size`: MiB of the release `billsync`, stripped as shipped, with the default
//!   `emulator` feature (no baseline; target <= 20 MiB); and, in full runs (`--billsync-lean`),
//!   `binary_size_without_emulator`, the agent alone, against it.
//! - `cold_start_status`: median wall time of `billsync status` on an empty outbox; baseline
//!   `billsync --version` (process start without runtime, configuration or database).
//! - `per_event_delivery_1m_pending`: µs per event delivering 10,000 events in steady state
//!   (timed from the first batch stored) over a 1,000,000-event backlog, median of three runs;
//!   baseline the same over a 10,000-event backlog.
//! - The two figures above again on PostgreSQL (`..._postgres`): the same workloads, the
//!   backlog prefilled by SQL into a fresh database.
//! - `fleet_postgres_2_agents` (full runs only): events/s of two `billsync run` processes
//!   started together on one PostgreSQL outbox (100 tenants x 2,000 events prefilled, emulator
//!   rate limit off), from the first event stored to the last; baseline one process on the same
//!   data. Each tenant must get exactly its events; duplicates are reported.
//! - `drain_at_limit_1m_backlog_{sqlite,postgres}` (full runs only): events/s stored over a 60 s
//!   slice (from 30 s after the first) while `run` drains a 1,000,000-event backlog of 10
//!   tenants prefilled by SQL, agent and emulator at the platform's real limit (100 requests a
//!   minute of 500 events); baseline the limit itself, 8,333 events/s.
//!
//! `--quick` scales the workloads down (the drain still takes one 60 s window: the emulator's
//! window is fixed at 60 s).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // bench and example code: a panic is a failure

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use billsync::Agent;
use billsync::config::Config;
use billsync_domain::{BatchBody, BillingEvent, Clock, EncodedEvent, SystemClock};
use billsync_emulator::{ClientRegistration, Emulator, EmulatorConfig};
use billsync_storage::SqliteOutbox;
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, PgConnection, SqliteConnection};

mod fleet;
mod ingest;
mod mqtt;
mod reconcile;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// One figure of the report.
struct Figure {
    name: String,
    value: f64,
    unit: &'static str,
    baseline_name: String,
    baseline: Option<f64>,
    ratio: Option<f64>,
    target: String,
    note: String,
}

impl Figure {
    fn line(&self) -> String {
        let num = |v: Option<f64>| v.map(|v| format!("{v}")).unwrap_or_default();
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            self.name,
            self.value,
            self.unit,
            self.baseline_name,
            num(self.baseline),
            num(self.ratio),
            self.target,
            self.note.replace(['\t', '\n'], " ")
        )
    }
}

struct Args {
    quick: bool,
    billsync: PathBuf,
    /// The same binary built without the `emulator` feature, when given (full runs).
    billsync_lean: Option<PathBuf>,
    out: PathBuf,
    only: Option<Vec<String>>,
}

impl Args {
    fn parse() -> Res<Self> {
        let mut args = Args {
            quick: false,
            billsync: PathBuf::from("target/release/billsync"),
            billsync_lean: None,
            out: PathBuf::from("target/bench/macro.tsv"),
            only: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            match a.as_str() {
                "--quick" => args.quick = true,
                "--billsync-lean" => args.billsync_lean = it.next().map(PathBuf::from),
                "--billsync" => args.billsync = it.next().ok_or("--billsync needs a path")?.into(),
                "--out" => args.out = it.next().ok_or("--out needs a path")?.into(),
                "--only" => {
                    args.only = Some(it.next().ok_or("--only needs names")?.split(',').map(str::to_owned).collect())
                }
                other => return Err(format!("unknown argument {other}").into()),
            }
        }
        Ok(args)
    }

    fn wants(&self, group: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.iter().any(|g| g == group))
    }
}

fn main() -> std::process::ExitCode {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("billsync-bench: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // Two workers: the machine the targets are set for has two cores.
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("billsync-bench: no runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("billsync-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Res<()> {
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut figures: Vec<Figure> = Vec::new();
    let q = args.quick;
    // Workload sizes: (events per tenant with 1 tenant, events per tenant with 100 tenants).
    let (one, hundred) = if q { (50_000, 500) } else { (200_000, 2_000) };

    if args.wants("e2e") {
        let sqlite = |dir: &Path| format!("sqlite://{}", dir.join("outbox.db").display());
        for (tenants, per_tenant) in [(1usize, one), (100, hundred)] {
            let (raw, run, note) = rounds(&Storage::Sqlite, &sqlite, tenants, per_tenant).await?;
            let label = if tenants == 1 { "1_tenant".to_owned() } else { format!("{tenants}_tenants") };
            let events = tenants * per_tenant;
            figures.push(throughput(
                &format!("e2e_sqlite_{label}"),
                run.delivered_per_s,
                "raw_reqwest",
                raw,
                "ratio >= 0.6",
                &format!("{events} events, batches of 500, emulator rate limit off; {note}"),
            ));
            print_last(&figures);
            if tenants == 1 {
                let base = raw_sqlite_insert(one).await?;
                figures.push(throughput(
                    "enqueue_sqlite_batch_500",
                    run.enqueued_per_s,
                    "raw_sqlx_insert",
                    base,
                    "ratio >= 0.5",
                    "Agent::enqueue in batches of 500 vs a raw sqlx insert loop, one transaction per 500, WAL + \
                     synchronous=FULL",
                ));
                print_last(&figures);
            }
        }
        match Postgres::create().await {
            Ok(pg) => {
                let result = postgres_figures(&pg, one, hundred, &mut figures).await;
                pg.drop_all().await;
                result?;
            }
            Err(e) => eprintln!("postgres figures skipped: {e}"),
        }
    }

    if args.wants("ingest") {
        let bin = &args.billsync;
        if !bin.exists() {
            return Err(
                format!("{} not found: build it with cargo build --release -p billsync-cli", bin.display()).into()
            );
        }
        figures.push(ingest::ingest_http(bin, q).await?);
        print_last(&figures);
        if let Some(figure) = mqtt::ingest_mqtt(bin, q).await? {
            figures.push(figure);
            print_last(&figures);
        }
    }

    if args.only.as_ref().is_some_and(|o| o.iter().any(|g| g == "probe")) {
        let dir = tempfile::tempdir_in(tmp_root())?;
        probe(&format!("sqlite://{}", dir.path().join("outbox.db").display())).await?;
        match Postgres::create().await {
            Ok(pg) => {
                let result = probe(&pg.fresh().await?).await;
                pg.drop_all().await;
                result?;
            }
            Err(e) => eprintln!("postgres probe skipped: {e}"),
        }
    }

    if args.wants("drain") {
        figures.push(drain(q).await?);
        print_last(&figures);
    }

    if args.wants("reconcile") {
        figures.push(reconcile::drain_while_reconciling(q).await?);
        print_last(&figures);
        let bin = &args.billsync;
        if !bin.exists() {
            return Err(
                format!("{} not found: build it with cargo build --release -p billsync-cli", bin.display()).into()
            );
        }
        figures.push(reconcile::memory(bin, q).await?);
        print_last(&figures);
    }

    if args.wants("footprint") {
        let bin = &args.billsync;
        if !bin.exists() {
            return Err(
                format!("{} not found: build it with cargo build --release -p billsync-cli", bin.display()).into()
            );
        }
        let pg = Postgres::create().await;
        for backend in &backends(&pg, "footprint") {
            figures.push(footprint(bin, q, backend).await?);
            print_last(&figures);
        }
        if let Ok(pg) = &pg {
            pg.drop_all().await;
        }
        let size = std::fs::metadata(bin)?.len() as f64;
        figures.push(Figure {
            name: "binary_size".into(),
            value: size / (1024.0 * 1024.0),
            unit: "MiB",
            baseline_name: "none".into(),
            baseline: None,
            ratio: None,
            target: "value <= 20 MiB".into(),
            note: format!("{} (release profile: stripped, no debug information, one codegen unit)", bin.display()),
        });
        print_last(&figures);
        if let Some(lean) = &args.billsync_lean {
            let lean_size = std::fs::metadata(lean)?.len() as f64;
            figures.push(Figure {
                name: "binary_size_without_emulator".into(),
                value: lean_size / (1024.0 * 1024.0),
                unit: "MiB",
                baseline_name: "binary_size".into(),
                baseline: Some(size / (1024.0 * 1024.0)),
                ratio: Some(lean_size / size),
                target: String::new(),
                note: format!("{} (--no-default-features: the agent alone; stripped)", lean.display()),
            });
            print_last(&figures);
        }
        figures.push(cold_start(bin, if q { 5 } else { 21 }).await?);
        print_last(&figures);
    }

    if args.wants("scaling") {
        let pg = Postgres::create().await;
        for backend in &backends(&pg, "scaling") {
            figures.push(scaling(q, backend).await?);
            print_last(&figures);
        }
        if let Ok(pg) = &pg {
            pg.drop_all().await;
        }
    }

    // Full runs only: minutes each, and their targets are about a fleet's scale.
    if !q && args.wants("fleet") {
        let bin = &args.billsync;
        if !bin.exists() {
            return Err(
                format!("{} not found: build it with cargo build --release -p billsync-cli", bin.display()).into()
            );
        }
        let pg = Postgres::create().await;
        match &pg {
            Ok(pg) => {
                let result = fleet::fleet_postgres_2_agents(bin, pg).await;
                pg.drop_all().await;
                figures.push(result?);
                print_last(&figures);
            }
            Err(e) => eprintln!("fleet_postgres_2_agents skipped: {e}"),
        }
        let result = fleet::drain_at_limit(pg.as_ref().ok()).await;
        if let Ok(pg) = &pg {
            pg.drop_all().await;
        }
        figures.extend(result?);
    }

    let text: String = figures.iter().map(|f| f.line() + "\n").collect();
    std::fs::write(&args.out, text)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

fn print_last(figures: &[Figure]) {
    if let Some(f) = figures.last() {
        eprintln!(
            "{:<40} {:>14.2} {:<9} vs {} {:>12.2}  ratio {:.3}",
            f.name,
            f.value,
            f.unit,
            f.baseline_name,
            f.baseline.unwrap_or(f64::NAN),
            f.ratio.unwrap_or(f64::NAN)
        );
    }
}

fn throughput(name: &str, value: f64, baseline_name: &str, baseline: f64, target: &str, note: &str) -> Figure {
    Figure {
        name: name.into(),
        value,
        unit: "events/s",
        baseline_name: baseline_name.into(),
        baseline: Some(baseline),
        ratio: Some(value / baseline),
        target: target.into(),
        note: note.into(),
    }
}

async fn postgres_figures(pg: &Postgres, one: usize, hundred: usize, figures: &mut Vec<Figure>) -> Res<()> {
    for (tenants, per_tenant) in [(1usize, one), (100, hundred)] {
        let mut urls = Vec::new();
        for _ in 0..ROUNDS {
            urls.push(pg.fresh().await?);
        }
        let next = std::sync::Mutex::new(urls.into_iter());
        let url = |_: &Path| next.lock().ok().and_then(|mut n| n.next()).unwrap_or_default();
        let (raw, run, note) = rounds(&Storage::Postgres, &url, tenants, per_tenant).await?;
        let label = if tenants == 1 { "1_tenant".to_owned() } else { format!("{tenants}_tenants") };
        figures.push(throughput(
            &format!("e2e_postgres_{label}"),
            run.delivered_per_s,
            "raw_reqwest",
            raw,
            "ratio >= 0.4",
            &format!("{} events, batches of 500, emulator rate limit off; {note}", tenants * per_tenant),
        ));
        print_last(figures);
        if tenants == 1 {
            let url = pg.fresh().await?;
            let base = multirow_postgres_insert(&url, one).await?;
            figures.push(throughput(
                "enqueue_postgres_batch_500",
                run.enqueued_per_s,
                "multirow_values_insert",
                base,
                "ratio >= 1.5",
                "Agent::enqueue in batches of 500 (one UNNEST statement for events, pending rows and ledger) vs the multi-row \
                 INSERT ... VALUES it replaced (events writing their pending rows, then their ledger records), one \
                 transaction per 500",
            ));
            print_last(figures);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Workload pieces

fn tenant(i: usize) -> (String, String, String, String) {
    (format!("b{i}"), format!("b{i}-prod"), format!("app-b{i}"), format!("secret-b{i}"))
}

fn platform(tenants: usize, rate_per_min: Option<u32>) -> EmulatorConfig {
    let mut c = EmulatorConfig::builtin().billing_rate_per_min(rate_per_min);
    for i in 0..tenants {
        let (_, tenant_id, client, secret) = tenant(i);
        c = c.with_client(ClientRegistration::new(client, secret, [tenant_id], true));
    }
    c
}

async fn start(config: EmulatorConfig) -> Res<Emulator> {
    Ok(Emulator::start(config, "127.0.0.1:0".parse()?).await?)
}

fn config_text(base_url: &str, storage_url: &str, tenants: usize, sync: &str) -> String {
    let mut text =
        format!("[platform]\nbase_url = \"{base_url}\"\n\n[storage]\nurl = \"{storage_url}\"\n\n[sync]\n{sync}\n");
    for i in 0..tenants {
        let (name, tenant_id, client, secret) = tenant(i);
        text.push_str(&format!(
            "\n[[tenants]]\nname = \"{name}\"\ntenant_id = \"{tenant_id}\"\napplication_id = \"{client}\"\n\
             client_secret = \"{secret}\"\n"
        ));
    }
    text
}

fn event_json(id: &str, i: usize, occurred_at: &str) -> String {
    format!(
        r#"{{"event_id": "{id}", "device_id": "meter-{:04}", "meter": "energy.active", "quantity": "12.500", "unit": "kWh", "occurred_at": "{occurred_at}", "attributes": {{"site": "plant-7"}}}}"#,
        i % 10_000
    )
}

/// `n` valid, distinct events.
fn events(prefix: &str, n: usize) -> Res<Vec<EncodedEvent>> {
    let now = SystemClock.now();
    let at = (now - chrono::Duration::minutes(1)).to_rfc3339();
    (0..n).map(|i| Ok(BillingEvent::parse(&event_json(&format!("{prefix}-{i}"), i, &at), now)?.encode())).collect()
}

async fn agent(text: &str, dir: &Path) -> Res<Agent> {
    let config = Config::parse(text, &dir.join("billsync.toml"))?;
    Ok(Agent::builder().config(config).build().await?)
}

/// A rate limit high enough never to bind, and small enough that the sliding window's
/// timestamps stay small.
const NO_LIMIT_RPM: u32 = 30_000;

enum Storage {
    Sqlite,
    Postgres,
}

struct E2e {
    delivered_per_s: f64,
    enqueued_per_s: f64,
}

/// Rounds of each end-to-end comparison. The baseline and billsync take turns, and each
/// figure is the median of its rounds, so that a slow moment of this shared machine does not
/// fall on one side of a ratio only.
const ROUNDS: usize = 3;

/// [`ROUNDS`] turns of the raw reqwest baseline and of [`e2e`] (each on a fresh outbox from
/// `url`); returns the medians and a note with every round's figures.
async fn rounds(
    storage: &Storage,
    url: &dyn Fn(&Path) -> String,
    tenants: usize,
    per_tenant: usize,
) -> Res<(f64, E2e, String)> {
    let (mut raws, mut delivered, mut enqueued) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        raws.push(raw_reqwest(tenants, per_tenant).await?);
        let run = e2e(storage, url, tenants, per_tenant).await?;
        delivered.push(run.delivered_per_s);
        enqueued.push(run.enqueued_per_s);
    }
    let whole = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
    let note =
        format!("median of {ROUNDS} alternating rounds: billsync [{}], raw [{}]", whole(&delivered), whole(&raws));
    let run = E2e { delivered_per_s: median(&delivered), enqueued_per_s: median(&enqueued) };
    Ok((median(&raws), run, note))
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Enqueue `per_tenant` events for each tenant (timed), then `sync_once` (timed).
async fn e2e(storage: &Storage, url: &dyn Fn(&Path) -> String, tenants: usize, per_tenant: usize) -> Res<E2e> {
    let emu = start(platform(tenants, None)).await?;
    let dir = tempfile::tempdir_in(tmp_root())?;
    let sync = format!("max_batch_events = 500\nrequests_per_minute = {NO_LIMIT_RPM}");
    let agent = agent(&config_text(&emu.base_url(), &url(dir.path()), tenants, &sync), dir.path()).await?;
    let mut enqueue_time = Duration::ZERO;
    for i in 0..tenants {
        let (name, ..) = tenant(i);
        let evs = events(&format!("e2e-{i}"), per_tenant)?;
        let start = Instant::now();
        for chunk in evs.chunks(500) {
            agent.enqueue(&name, chunk).await?;
        }
        enqueue_time += start.elapsed();
    }
    let total = (tenants * per_tenant) as u64;
    // Like the baseline, which fetches its tokens before its clock starts: a billing token
    // lives 15 minutes, so in steady state its fetch is one request in tens of thousands, but
    // in a run of a second 100 fetches (each an RSA signature in the emulator, on the same two
    // cores) would weigh as much as the delivery. Token fetching is measured by the auth
    // crate's benches and tests, not here.
    warm_tokens(&agent).await?;
    let start = Instant::now();
    let reports = agent.sync_once().await;
    let elapsed = start.elapsed();
    let accepted: u64 = reports.iter().map(|r| r.accepted + r.duplicates).sum();
    if accepted != total {
        return Err(
            format!("e2e {storage_name}: {accepted} of {total} delivered", storage_name = storage.name()).into()
        );
    }
    drop(agent);
    emu.shutdown().await;
    eprintln!(
        "  e2e {} {tenants} tenant(s): {total} events in {elapsed:.2?}, enqueue {enqueue_time:.2?}",
        storage.name()
    );
    Ok(E2e {
        delivered_per_s: total as f64 / elapsed.as_secs_f64(),
        enqueued_per_s: total as f64 / enqueue_time.as_secs_f64(),
    })
}

/// Gets and caches every tenant's billing token (checked by the policy), as the first sync
/// would.
async fn warm_tokens(agent: &Agent) -> Res<()> {
    use billsync_domain::TokenSource;
    for t in agent.engine().tenants() {
        agent.tokens().headers(t).await?;
    }
    Ok(())
}

impl Storage {
    fn name(&self) -> &'static str {
        match self {
            Storage::Sqlite => "sqlite",
            Storage::Postgres => "postgres",
        }
    }
}

fn tmp_root() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench/tmp");
    let _ = std::fs::create_dir_all(&root);
    root
}

/// The transport ceiling: per tenant, one task posting pre-serialised batches of 500 one after
/// the other with a token fetched beforehand; no outbox, no policy, no limiter.
async fn raw_reqwest(tenants: usize, per_tenant: usize) -> Res<f64> {
    let emu = start(platform(tenants, None)).await?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    let mut work = Vec::new();
    for i in 0..tenants {
        let (_, tenant_id, client, secret) = tenant(i);
        let token: serde_json::Value = http
            .post(emu.token_url())
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client.as_str()),
                ("client_secret", secret.as_str()),
                ("scope", billsync_domain::BILLING_WRITE_SCOPE),
            ])
            .send()
            .await?
            .json()
            .await?;
        let token = token["access_token"].as_str().ok_or("no access token")?.to_owned();
        let bodies: Vec<(String, String)> = events(&format!("raw-{i}"), per_tenant)?
            .chunks(500)
            .map(|c| {
                let b = BatchBody::new(c);
                (b.idempotency_key().to_owned(), b.into_string())
            })
            .collect();
        work.push((tenant_id, client, token, bodies));
    }
    let url = emu.billing_url();
    let start = Instant::now();
    let tasks: Vec<_> = work
        .into_iter()
        .map(|(tenant_id, client, token, bodies)| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move {
                for (key, body) in bodies {
                    let r = http
                        .post(&url)
                        .bearer_auth(&token)
                        .header("X-Tenant-ID", &tenant_id)
                        .header("X-Application-ID", &client)
                        .header("Content-Type", "application/json")
                        .header("Idempotency-Key", key)
                        .body(body)
                        .send()
                        .await
                        .map_err(|e| e.to_string())?;
                    let status = r.status();
                    let _ = r.bytes().await;
                    if status != 202 {
                        return Err(format!("raw post answered {status}"));
                    }
                }
                Ok::<_, String>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let elapsed = start.elapsed();
    emu.shutdown().await;
    let total = tenants * per_tenant;
    eprintln!("  raw reqwest {tenants} tenant(s): {total} events in {elapsed:.2?}");
    Ok(total as f64 / elapsed.as_secs_f64())
}

/// Makes every event of a freshly prefilled outbox pending, due when it was enqueued, as the
/// outbox's enqueue does.
const PENDING_FROM_PREFILL: &str = "INSERT INTO pending (seq, tenant, due_at, enqueued_at) \
     SELECT seq, tenant, enqueued_at, enqueued_at FROM events";

/// The event's row alone: the outbox also writes its narrow `pending` row.
const RAW_SQLITE_INSERT: &str = "INSERT INTO events (tenant, event_id, body, enqueued_at) VALUES (?1, ?2, ?3, ?4)";

/// A raw sqlx insert loop into the outbox's schema with the outbox's durability.
async fn raw_sqlite_insert(n: usize) -> Res<f64> {
    let dir = tempfile::tempdir_in(tmp_root())?;
    let path = dir.path().join("raw.db");
    drop(SqliteOutbox::open(&path, Arc::new(SystemClock)).await?);
    let mut conn = SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(&path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full),
    )
    .await?;
    let evs = events("rawsql", n)?;
    let start = Instant::now();
    for chunk in evs.chunks(500) {
        let now = SystemClock.now().timestamp_millis();
        let mut tx = conn.begin().await?;
        for e in chunk {
            sqlx::query(RAW_SQLITE_INSERT)
                .bind("b0")
                .bind(e.event_id().as_str())
                .bind(e.json())
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// What the PostgreSQL enqueue did before `UNNEST`: per 500 events, one transaction of one
/// multi-row `INSERT ... VALUES` of the events (`RETURNING` what it stored, and writing their
/// `pending` rows from that, as schema 7 needs) and one of their ledger records, into the
/// outbox's own schema. The ledger facts are read before the clock starts (the outbox reads
/// them inside its figure), so the baseline is if anything flattered.
async fn multirow_postgres_insert(url: &str, n: usize) -> Res<f64> {
    // Migrate through the outbox, then insert around it.
    drop(billsync_storage::open(url, Arc::new(SystemClock)).await?);
    let mut conn = PgConnection::connect(url).await?;
    let evs = events("rawpg", n)?;
    let facts: Vec<(i64, String, String, String)> = evs
        .iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_str(e.json())?;
            let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            let at = chrono::DateTime::parse_from_rfc3339(&text("occurred_at"))?.timestamp_millis();
            Ok((at, text("meter"), text("unit"), text("quantity")))
        })
        .collect::<Res<_>>()?;
    let start = Instant::now();
    for (chunk, facts) in evs.chunks(500).zip(facts.chunks(500)) {
        let now = SystemClock.now().timestamp_millis();
        let mut tx = conn.begin().await?;
        let rows = (0..chunk.len()).map(|i| format!("(${}, ${}, ${}, $1)", 3 * i + 2, 3 * i + 3, 3 * i + 4));
        let sql = format!(
            "WITH ins AS (INSERT INTO events (tenant, event_id, body, enqueued_at) VALUES {} \
             ON CONFLICT (tenant, event_id) DO NOTHING RETURNING seq, tenant, event_id), \
             pend AS (INSERT INTO pending (seq, tenant, due_at, enqueued_at) SELECT seq, tenant, $1, $1 FROM ins) \
             SELECT tenant, event_id FROM ins",
            rows.collect::<Vec<_>>().join(", ")
        );
        let mut q = sqlx::query(&sql).bind(now);
        for e in chunk {
            q = q.bind("b0").bind(e.event_id().as_str()).bind(e.json());
        }
        let stored = q.fetch_all(&mut *tx).await?;
        let rows = (0..chunk.len()).map(|i| {
            let p = 6 * i;
            format!("(${}, ${}, ${}, ${}, ${}, ${})", p + 1, p + 2, p + 3, p + 4, p + 5, p + 6)
        });
        let sql = format!(
            "INSERT INTO ledger (tenant, event_id, occurred_at, meter, unit, quantity) VALUES {} \
             ON CONFLICT (tenant, event_id) DO NOTHING",
            rows.collect::<Vec<_>>().join(", ")
        );
        let mut q = sqlx::query(&sql);
        for (e, (at, meter, unit, quantity)) in chunk.iter().zip(facts) {
            q = q.bind("b0").bind(e.event_id().as_str()).bind(at).bind(meter).bind(unit).bind(quantity);
        }
        q.execute(&mut *tx).await?;
        tx.commit().await?;
        if stored.len() != chunk.len() {
            return Err(format!("{} of {} rows stored", stored.len(), chunk.len()).into());
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    conn.close().await?;
    Ok(rate)
}

/// Throwaway PostgreSQL databases, dropped at the end.
struct Postgres {
    admin: PgConnectOptions,
    created: std::sync::Mutex<Vec<String>>,
}

impl Postgres {
    async fn create() -> Res<Self> {
        let url = std::env::var("BILLSYNC_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let admin = PgConnectOptions::from_str(&url)?;
        PgConnection::connect_with(&admin).await.map_err(|e| format!("no PostgreSQL at {url}: {e}"))?.close().await?;
        Ok(Self { admin, created: std::sync::Mutex::new(Vec::new()) })
    }

    async fn fresh(&self) -> Res<String> {
        let name = format!("billsync_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect_with(&self.admin).await?;
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
        conn.close().await?;
        self.created.lock().unwrap_or_else(|p| p.into_inner()).push(name.clone());
        Ok(sqlx::ConnectOptions::to_url_lossy(&self.admin.clone().database(&name)).to_string())
    }

    async fn drop_all(&self) {
        let names = std::mem::take(&mut *self.created.lock().unwrap_or_else(|p| p.into_inner()));
        if let Ok(mut conn) = PgConnection::connect_with(&self.admin).await {
            for name in names {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await;
            }
            let _ = conn.close().await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rate-limited drain

async fn drain(quick: bool) -> Res<Figure> {
    const TENANTS: usize = 2;
    const WINDOW_S: f64 = 60.0;
    let (per_tenant, batch, limit) = if quick { (600usize, 10usize, 30u32) } else { (6_000, 50, 60) };
    let emu = start(platform(TENANTS, Some(limit))).await?;
    let dir = tempfile::tempdir_in(tmp_root())?;
    let storage = format!("sqlite://{}", dir.path().join("outbox.db").display());
    let sync = format!("max_batch_events = {batch}\nrequests_per_minute = {limit}");
    let agent = agent(&config_text(&emu.base_url(), &storage, TENANTS, &sync), dir.path()).await?;
    for i in 0..TENANTS {
        let (name, ..) = tenant(i);
        for chunk in events(&format!("drain-{i}"), per_tenant)?.chunks(500) {
            agent.enqueue(&name, chunk).await?;
        }
    }
    let start = Instant::now();
    let reports = agent.sync_once().await;
    let elapsed = start.elapsed().as_secs_f64();
    let delivered: u64 = reports.iter().map(|r| r.accepted + r.duplicates).sum();
    if delivered != (TENANTS * per_tenant) as u64 {
        return Err(format!("drain: {delivered} of {} delivered", TENANTS * per_tenant).into());
    }
    let refused = emu.counters().status(429);
    if std::env::var_os("BENCH_DRAIN_TRACE").is_some() {
        let audit = emu.audit();
        let first = audit.iter().map(|a| a.time).min();
        for a in audit.iter().filter(|a| a.endpoint.contains("billing")) {
            let t = first.map(|f| (a.time - f).num_milliseconds()).unwrap_or_default();
            eprintln!("  {t:>7} ms {} {:?}", a.status, a.tenant_id);
        }
    }
    drop(agent);
    emu.shutdown().await;
    let requests = per_tenant.div_ceil(batch);
    let min = ((requests - 1) / limit as usize) as f64 * WINDOW_S;
    Ok(Figure {
        name: "drain_rate_limited_2_tenants".into(),
        value: elapsed,
        unit: "s",
        baseline_name: "rate_limit_minimum".into(),
        baseline: Some(min),
        ratio: Some(min / elapsed),
        target: "ratio (min/elapsed) >= 0.95".into(),
        note: format!(
            "{per_tenant} events per tenant at batch {batch} = {requests} requests per tenant, limit {limit}/60 s per \
             tenant on both sides; min = floor((R-1)/L)*W = {min} s; the emulator answered 429 {refused} time(s)"
        ),
    })
}

// ---------------------------------------------------------------------------------------------
// Footprint

/// Creates (and migrates) the outbox at `path` and opens a connection to fill it without
/// fsyncs (setup, not measurement).
async fn fill_connection(path: &Path) -> Res<SqliteConnection> {
    drop(SqliteOutbox::open(path, Arc::new(SystemClock)).await?);
    Ok(SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Off),
    )
    .await?)
}

/// Fills a fresh, migrated outbox with `per_tenant` pending events for each of `tenants` tenants, in
/// a few big statements without fsyncs (setup, not measurement).
async fn prefill(path: &Path, tenants: usize, per_tenant: usize) -> Res<()> {
    let mut conn = fill_connection(path).await?;
    let now = SystemClock.now();
    let due = now.timestamp_millis() - 3_600_000;
    let at = (now - chrono::Duration::minutes(1)).to_rfc3339();
    let template = event_json("@@", 42, &at);
    let (head, tail) = template.split_once("@@").ok_or("template")?;
    let start = Instant::now();
    // One statement per chunk of tenants keeps each transaction moderate.
    for first in (0..tenants).step_by(100) {
        let last = (first + 100).min(tenants);
        sqlx::query(
            "WITH RECURSIVE c(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM c WHERE x + 1 < ?1) \
             INSERT INTO events (tenant, event_id, body, enqueued_at) \
             SELECT 'b' || (?5 + x % ?6), 'pre-' || x, ?2 || 'pre-' || x || ?3, ?4 + x / 1000 FROM c",
        )
        .bind(i64::try_from((last - first) * per_tenant)?)
        .bind(head)
        .bind(tail)
        .bind(due)
        .bind(i64::try_from(first)?)
        .bind(i64::try_from(last - first)?)
        .execute(&mut conn)
        .await?;
    }
    sqlx::query(PENDING_FROM_PREFILL).execute(&mut conn).await?;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut conn).await?;
    conn.close().await?;
    // The fill ran without fsyncs; write it out now, or the agent's first checkpoint (which
    // fsyncs the file) would pay for the whole fill inside the measurement.
    std::fs::File::open(path)?.sync_all()?;
    eprintln!("  prefilled {} events for {tenants} tenant(s) in {:.2?}", tenants * per_tenant, start.elapsed());
    Ok(())
}

/// Fills a fresh PostgreSQL outbox (migrated through billsync) with `per_tenant` pending events
/// for each of `tenants` tenants, in a few set-based statements (setup, not measurement), then
/// vacuums and analyses it, as autovacuum would have by then.
async fn prefill_postgres(url: &str, tenants: usize, per_tenant: usize) -> Res<()> {
    drop(billsync_storage::open(url, Arc::new(SystemClock)).await?);
    let mut conn = PgConnection::connect(url).await?;
    let now = SystemClock.now();
    let due = now.timestamp_millis() - 3_600_000;
    let template = event_json("@@", 42, &(now - chrono::Duration::minutes(1)).to_rfc3339());
    let (head, tail) = template.split_once("@@").ok_or("template")?;
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO events (tenant, event_id, body, enqueued_at) \
         SELECT 'b' || (x % $1), 'pre-' || x, $2 || 'pre-' || x || $3, $4 + x / 1000 \
         FROM generate_series(0, $5 - 1) AS x",
    )
    .bind(i64::try_from(tenants)?)
    .bind(head)
    .bind(tail)
    .bind(due)
    .bind(i64::try_from(tenants * per_tenant)?)
    .execute(&mut conn)
    .await?;
    sqlx::query(
        "INSERT INTO pending (seq, tenant, due_at, enqueued_at) SELECT seq, tenant, enqueued_at, enqueued_at FROM events",
    )
    .execute(&mut conn)
    .await?;
    sqlx::query("VACUUM ANALYZE events, pending").execute(&mut conn).await?;
    conn.close().await?;
    eprintln!("  prefilled {} events for {tenants} tenant(s) in {:.2?}", tenants * per_tenant, started.elapsed());
    Ok(())
}

/// Events the emulator has stored so far, all tenants.
fn stored(emu: &Emulator) -> u64 {
    emu.counters().events_stored.values().sum()
}

/// Starts `billsync run` (quiet, its servers on a free port) on `dir/billsync.toml`; killed
/// when dropped.
fn spawn_run(bin: &Path, dir: &Path) -> Res<tokio::process::Child> {
    Ok(tokio::process::Command::new(bin)
        .arg("--config")
        .arg(dir.join("billsync.toml"))
        .arg("-q")
        .args(["run", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

/// The backends a figure runs on: SQLite, and PostgreSQL when a server answers (otherwise
/// its figure is skipped, saying so).
fn backends<'a>(pg: &'a Res<Postgres>, figure: &str) -> Vec<Backend<'a>> {
    if let Err(e) = pg {
        eprintln!("postgres {figure} skipped: {e}");
    }
    std::iter::once(Backend::Sqlite).chain(pg.as_ref().ok().map(Backend::Postgres)).collect()
}

/// Where a footprint or scaling figure keeps its outbox.
enum Backend<'a> {
    Sqlite,
    Postgres(&'a Postgres),
}

impl Backend<'_> {
    fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// A fresh outbox (its URL) prefilled by SQL with `per_tenant` pending events for each of
    /// `tenants` tenants; a SQLite one lives in `dir`.
    async fn prefilled(&self, dir: &Path, tenants: usize, per_tenant: usize) -> Res<String> {
        match self {
            Backend::Sqlite => {
                let db = dir.join("outbox.db");
                prefill(&db, tenants, per_tenant).await?;
                Ok(format!("sqlite://{}", db.display()))
            }
            Backend::Postgres(pg) => {
                let url = pg.fresh().await?;
                prefill_postgres(&url, tenants, per_tenant).await?;
                Ok(url)
            }
        }
    }

    /// A fresh, empty outbox (its URL).
    async fn empty(&self, dir: &Path) -> Res<String> {
        match self {
            Backend::Sqlite => Ok(format!("sqlite://{}", dir.join("outbox.db").display())),
            Backend::Postgres(pg) => pg.fresh().await,
        }
    }

    /// The figure's name with this backend's suffix (SQLite keeps the name it always had).
    fn named(&self, name: String) -> String {
        match self {
            Backend::Sqlite => name,
            Backend::Postgres(_) => format!("{name}_postgres"),
        }
    }
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `billsync run` over the outbox until the emulator has `expect` events (or `limit`
/// passes); returns the peak RSS in KiB and the events delivered.
async fn run_child(bin: &Path, dir: &Path, emu: &Emulator, expect: u64, limit: Duration) -> Res<(u64, u64, Duration)> {
    let mut child = spawn_run(bin, dir)?;
    let pid = child.id().ok_or("child has no pid")?;
    let start = Instant::now();
    let mut peak = 0;
    loop {
        if let Some(h) = vm_hwm_kib(pid) {
            peak = peak.max(h);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("billsync run exited early: {status}").into());
        }
        if stored(emu) >= expect || start.elapsed() >= limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = start.elapsed();
    if let Some(h) = vm_hwm_kib(pid) {
        peak = peak.max(h);
    }
    child.start_kill()?;
    let _ = child.wait().await;
    Ok((peak, stored(emu), took))
}

async fn footprint(bin: &Path, quick: bool, backend: &Backend<'_>) -> Res<Figure> {
    const TENANTS: usize = 1_000;
    let per_tenant = if quick { 100 } else { 1_000 };
    let total = (TENANTS * per_tenant) as u64;
    let limit = if quick { Duration::from_secs(60) } else { Duration::from_secs(240) };
    let sync = "max_batch_events = 500\nrequests_per_minute = 100";

    // Busy: the whole backlog delivered to the emulator, rate limit off (the agent's own limit
    // of 100 requests/min per tenant does not bind: 2 requests per tenant).
    let emu = start(platform(TENANTS, None)).await?;
    let dir = tempfile::tempdir_in(tmp_root())?;
    let url = backend.prefilled(dir.path(), TENANTS, per_tenant).await?;
    let text = config_text(&emu.base_url(), &url, TENANTS, sync);
    std::fs::write(dir.path().join("billsync.toml"), text)?;
    let (busy, delivered, took) = run_child(bin, dir.path(), &emu, total, limit).await?;
    emu.shutdown().await;
    eprintln!("  billsync run: {delivered} of {total} events delivered in {took:.2?}, VmHWM {busy} KiB");

    // Idle: the same tenants, an empty outbox, for a few seconds.
    let emu = start(platform(TENANTS, None)).await?;
    let idle_dir = tempfile::tempdir_in(tmp_root())?;
    let url = backend.empty(idle_dir.path()).await?;
    let text = config_text(&emu.base_url(), &url, TENANTS, sync);
    std::fs::write(idle_dir.path().join("billsync.toml"), text)?;
    let (idle, _, _) = run_child(bin, idle_dir.path(), &emu, u64::MAX, Duration::from_secs(5)).await?;
    emu.shutdown().await;
    Ok(rss_figure(
        backend.named(format!("peak_rss_1000_tenants_{}_pending", if quick { "100k" } else { "1m" })),
        (busy, idle),
        &backend.named("idle_rss_1000_tenants".into()),
        "value < 50 MiB",
        format!(
            "VmHWM of `billsync run` (release) delivering {delivered} of {total} pending events of {TENANTS} tenants \
             to the emulator (rate limit off) in {took:.1?}, {} outbox; baseline: the same process, same tenants, \
             empty outbox, 5 s",
            backend.name()
        ),
    ))
}

/// A peak RSS figure in MiB from `(peak, baseline)` VmHWM readings in KiB.
fn rss_figure(name: String, (peak, idle): (u64, u64), baseline_name: &str, target: &str, note: String) -> Figure {
    let mib = |kib: u64| kib as f64 / 1024.0;
    Figure {
        name,
        value: mib(peak),
        unit: "MiB",
        baseline_name: baseline_name.into(),
        baseline: Some(mib(idle)),
        ratio: Some(peak as f64 / idle as f64),
        target: target.into(),
        note,
    }
}

async fn cold_start(bin: &Path, runs: usize) -> Res<Figure> {
    let dir = tempfile::tempdir_in(tmp_root())?;
    let db = dir.path().join("outbox.db");
    let text = config_text("http://127.0.0.1:9", &format!("sqlite://{}", db.display()), 1, "");
    let cfg = dir.path().join("billsync.toml");
    std::fs::write(&cfg, text)?;
    let time = |args: Vec<std::ffi::OsString>| -> Res<Duration> {
        let start = Instant::now();
        let out = std::process::Command::new(bin).args(&args).output()?;
        let took = start.elapsed();
        if !out.status.success() {
            return Err(format!("{} {:?} failed: {}", bin.display(), args, String::from_utf8_lossy(&out.stderr)).into());
        }
        Ok(took)
    };
    let status_args = || vec!["--config".into(), cfg.clone().into_os_string(), "status".into()];
    // The first run creates the (empty) outbox; it is not counted.
    time(status_args())?;
    let mut status = Vec::new();
    let mut version = Vec::new();
    for _ in 0..runs {
        status.push(time(status_args())?);
        version.push(time(vec!["--version".into()])?);
    }
    let ms = |v: Vec<Duration>| median(&v.iter().map(|d| d.as_secs_f64() * 1000.0).collect::<Vec<_>>());
    let (s, v) = (ms(status), ms(version));
    Ok(Figure {
        name: "cold_start_status".into(),
        value: s,
        unit: "ms",
        baseline_name: "billsync_version".into(),
        baseline: Some(v),
        ratio: Some(s / v),
        target: String::new(),
        note: format!(
            "median of {runs} runs of `billsync status` (1 tenant, empty SQLite outbox) vs `billsync --version`"
        ),
    })
}

// ---------------------------------------------------------------------------------------------
// Scaling

/// Per-event cost of delivery in steady state, over a backlog of `backlog` pending events:
/// for each of `reps` runs, a fresh emulator and agent (token warmed) on the same outbox, timed
/// from the first batch the emulator stored to the moment it has `window` more events (so
/// neither the agent's start nor its first lease of a cold file is counted as a per-event
/// cost). The backlog shrinks by about `window` per run; it is sized so that it stays at
/// `backlog` within a few per cent. Returns the median µs per event and each run's figure.
async fn per_event_cost(backend: &Backend<'_>, backlog: usize, window: u64, reps: usize) -> Res<(f64, Vec<f64>)> {
    let dir = tempfile::tempdir_in(tmp_root())?;
    let extra = usize::try_from(window)? * reps + 500 * reps;
    let url = backend.prefilled(dir.path(), 1, backlog + extra).await?;
    let mut runs = Vec::with_capacity(reps);
    for _ in 0..reps {
        let emu = start(platform(1, None)).await?;
        let sync = format!("max_batch_events = 500\nrequests_per_minute = {NO_LIMIT_RPM}");
        let agent = agent(&config_text(&emu.base_url(), &url, 1, &sync), dir.path()).await?;
        warm_tokens(&agent).await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut timed = (0, Duration::ZERO);
        agent
            .run_until(async {
                while stored(&emu) == 0 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                let (from, started) = (stored(&emu), Instant::now());
                while stored(&emu) < from + window && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                timed = (stored(&emu) - from, started.elapsed());
            })
            .await;
        drop(agent);
        emu.shutdown().await;
        let (got, took) = timed;
        if got < window {
            return Err(format!("scaling: only {got} of {window} delivered in time").into());
        }
        runs.push(took.as_secs_f64() * 1e6 / got as f64);
    }
    eprintln!("  {backlog} pending: µs per event {runs:.2?}");
    Ok((median(&runs), runs))
}

async fn scaling(quick: bool, backend: &Backend<'_>) -> Res<Figure> {
    const WINDOW: u64 = 10_000;
    const REPS: usize = 3;
    let big = if quick { 200_000 } else { 1_000_000 };
    let (small, small_runs) = per_event_cost(backend, 10_000, WINDOW, REPS).await?;
    let (large, large_runs) = per_event_cost(backend, big, WINDOW, REPS).await?;
    Ok(Figure {
        name: backend.named(format!("per_event_delivery_{}_pending", if quick { "200k" } else { "1m" })),
        value: large,
        unit: "us/event",
        baseline_name: backend.named("per_event_delivery_10k_pending".into()),
        baseline: Some(small),
        ratio: Some(large / small),
        target: "ratio <= 1.3".into(),
        note: format!(
            "median of {REPS} runs, each {WINDOW} events delivered in steady state (from the first batch stored), \
             backlog {big} vs 10000 (+ what the runs take), 1 tenant, {} outbox; runs: {large_runs:.2?} vs \
             {small_runs:.2?}",
            backend.name()
        ),
    })
}

/// Where a batch's time goes (diagnosis only: `--only probe`).
async fn probe(storage: &str) -> Res<()> {
    use billsync_domain::TokenSource;
    let emu = start(platform(1, None)).await?;
    let dir = tempfile::tempdir_in(tmp_root())?;
    let sync = format!("max_batch_events = 500\nrequests_per_minute = {NO_LIMIT_RPM}");
    let agent = agent(&config_text(&emu.base_url(), storage, 1, &sync), dir.path()).await?;
    let (name, ..) = tenant(0);
    for chunk in events("probe", 20_000)?.chunks(500) {
        agent.enqueue(&name, chunk).await?;
    }
    let t = agent.engine().tenants()[0].clone();
    let api = billsync_transport_probe(&emu)?;
    // The outbox itself, beside the agent's own connection to it: the probe times its calls.
    let outbox = billsync_storage::open(storage, std::sync::Arc::new(billsync_domain::SystemClock)).await?;
    let mut sums = [Duration::ZERO; 5];
    for _ in 0..40 {
        let a = Instant::now();
        let lease = outbox.lease(t.name(), 500, Duration::from_secs(60)).await?.ok_or("empty")?;
        let b = Instant::now();
        let body = BatchBody::new(&lease.events);
        let headers = agent.tokens().headers(&t).await?;
        let c = Instant::now();
        let _ = billsync_domain::BillingApi::post_events(&api, &headers, &body).await?;
        let d = Instant::now();
        let ids: Vec<_> = lease.events.iter().map(|e| e.event_id().clone()).collect();
        outbox.ack(&lease, &ids).await?;
        let e = Instant::now();
        for (i, x) in [b - a, c - b, d - c, e - d, e - a].into_iter().enumerate() {
            sums[i] += x;
        }
    }
    eprintln!(
        "probe per batch ({}): lease {:?} body+headers {:?} post {:?} ack {:?} total {:?}",
        storage.split(':').next().unwrap_or_default(),
        sums[0] / 40,
        sums[1] / 40,
        sums[2] / 40,
        sums[3] / 40,
        sums[4] / 40
    );
    Ok(())
}

fn billsync_transport_probe(emu: &Emulator) -> Res<billsync_transport::HttpBillingApi> {
    Ok(billsync_transport::HttpBillingApi::new(&emu.base_url(), &billsync_http::HttpSettings::default())?)
}
