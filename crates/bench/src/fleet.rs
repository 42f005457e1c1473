//! Full-run figures of a fleet's scale (issue 20): two agents on one PostgreSQL outbox, and a
//! large backlog drained at the platform's real limit, on both backends.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::{
    Figure, NO_LIMIT_RPM, Postgres, Res, agent, config_text, median, platform, prefill, prefill_postgres, start,
    stored, tmp_root, warm_tokens,
};

// ---------------------------------------------------------------------------------------------
// fleet_postgres_2_agents

/// Tenants of the fleet figure, and events each.
const FLEET_TENANTS: usize = 100;
const FLEET_PER_TENANT: usize = 2_000;

/// One fleet run: `agents` processes of `billsync run` started together on one prefilled
/// PostgreSQL outbox, until the emulator holds every event. Returns the events/s from the
/// first event stored to the last (so that process start and token fetching are not counted)
/// and how many events the emulator answered as duplicates (a tenant drained twice shows there).
async fn fleet_run(bin: &Path, pg: &Postgres, agents: usize) -> Res<(f64, u64)> {
    let total = (FLEET_TENANTS * FLEET_PER_TENANT) as u64;
    let url = pg.fresh().await?;
    prefill_postgres(&url, FLEET_TENANTS, FLEET_PER_TENANT).await?;
    let emu = start(platform(FLEET_TENANTS, None)).await?;
    let dir = tempfile::tempdir_in(tmp_root())?;
    let sync = format!("max_batch_events = 500\nrequests_per_minute = {NO_LIMIT_RPM}");
    std::fs::write(dir.path().join("billsync.toml"), config_text(&emu.base_url(), &url, FLEET_TENANTS, &sync))?;
    let mut children = Vec::new();
    for _ in 0..agents {
        children.push(crate::spawn_run(bin, dir.path())?);
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while stored(&emu) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (from, first) = (stored(&emu), Instant::now());
    while stored(&emu) < total && Instant::now() < deadline {
        for child in &mut children {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("billsync run exited early: {status}").into());
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = first.elapsed();
    for mut child in children {
        child.start_kill()?;
        let _ = child.wait().await;
    }
    let counters = emu.counters();
    emu.shutdown().await;
    let got: u64 = counters.events_stored.values().sum();
    if got < total {
        return Err(format!("fleet of {agents}: only {got} of {total} events delivered in time").into());
    }
    let short: Vec<&String> =
        counters.events_stored.iter().filter(|(_, n)| **n != FLEET_PER_TENANT as u64).map(|(t, _)| t).collect();
    if !short.is_empty() {
        return Err(format!("fleet of {agents}: tenants {short:?} did not get exactly {FLEET_PER_TENANT}").into());
    }
    let duplicates: u64 = counters.events_duplicate.values().sum();
    let rate = (total - from) as f64 / took.as_secs_f64();
    eprintln!("  fleet of {agents}: {total} events, {rate:.0} events/s after the first, {duplicates} duplicates");
    Ok((rate, duplicates))
}

/// `fleet_postgres_2_agents`: two agents against one on the same data, in alternating rounds.
pub(crate) async fn fleet_postgres_2_agents(bin: &Path, pg: &Postgres) -> Res<Figure> {
    let (mut one, mut two, mut duplicates) = (Vec::new(), Vec::new(), 0);
    for _ in 0..crate::ROUNDS {
        let (rate, dup) = fleet_run(bin, pg, 1).await?;
        one.push(rate);
        duplicates += dup;
        let (rate, dup) = fleet_run(bin, pg, 2).await?;
        two.push(rate);
        duplicates += dup;
    }
    let (a, b) = (median(&one), median(&two));
    let whole = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
    Ok(Figure {
        name: "fleet_postgres_2_agents".into(),
        value: b,
        unit: "events/s",
        baseline_name: "fleet_postgres_1_agent".into(),
        baseline: Some(a),
        ratio: Some(b / a),
        target: "ratio >= 1.0, no tenant drained twice".into(),
        note: format!(
            "two `billsync run` processes (release) started together on one PostgreSQL outbox prefilled with \
             {FLEET_TENANTS} tenants x {FLEET_PER_TENANT} events, emulator rate limit off, timed from the first event \
             stored to the last, vs one process on the same data; median of {} alternating rounds: two [{}], one \
             [{}]; every tenant got exactly its events; {duplicates} duplicates in all rounds",
            crate::ROUNDS,
            whole(&two),
            whole(&one)
        ),
    })
}

// ---------------------------------------------------------------------------------------------
// drain_at_limit_1m_backlog

const LIMIT_TENANTS: usize = 10;
const LIMIT_BACKLOG: usize = 1_000_000;
/// Requests a minute per tenant, and events per request: the platform's real limit.
const LIMIT_RPM: u32 = 100;
const LIMIT_BATCH: usize = 500;
/// Where the steady slice begins (after the first window's burst has been sent), and its length.
const SLICE_FROM: Duration = Duration::from_secs(30);
const SLICE: Duration = Duration::from_secs(60);

/// Events/s stored over a 60 s slice of `run` (in process, token warmed) draining the
/// prefilled outbox at `storage` at the real limit.
async fn limited_slice(storage: &str, dir: &Path) -> Res<(f64, u64)> {
    let emu = start(platform(LIMIT_TENANTS, Some(LIMIT_RPM))).await?;
    let sync = format!("max_batch_events = {LIMIT_BATCH}\nrequests_per_minute = {LIMIT_RPM}");
    let agent = agent(&config_text(&emu.base_url(), storage, LIMIT_TENANTS, &sync), dir).await?;
    warm_tokens(&agent).await?;
    let mut slice = (0, Duration::ZERO);
    agent
        .run_until(async {
            let deadline = Instant::now() + Duration::from_secs(120);
            while stored(&emu) == 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(SLICE_FROM).await;
            let (from, started) = (stored(&emu), Instant::now());
            tokio::time::sleep(SLICE).await;
            slice = (stored(&emu) - from, started.elapsed());
        })
        .await;
    let refused = emu.counters().status(429);
    drop(agent);
    emu.shutdown().await;
    let (events, took) = slice;
    Ok((events as f64 / took.as_secs_f64(), refused))
}

/// `drain_at_limit_1m_backlog_{sqlite,postgres}`: what the limit allows against what a
/// 1,000,000-event backlog of 10 tenants drains at, over a steady 60 s slice.
pub(crate) async fn drain_at_limit(pg: Option<&Postgres>) -> Res<Vec<Figure>> {
    let allowed = (LIMIT_TENANTS as f64) * f64::from(LIMIT_RPM) * LIMIT_BATCH as f64 / 60.0;
    let per_tenant = LIMIT_BACKLOG / LIMIT_TENANTS;
    let mut figures = Vec::new();
    let dir = tempfile::tempdir_in(tmp_root())?;
    let db = dir.path().join("outbox.db");
    prefill(&db, LIMIT_TENANTS, per_tenant).await?;
    let mut backends = vec![("sqlite", format!("sqlite://{}", db.display()))];
    if let Some(pg) = pg {
        let url = pg.fresh().await?;
        prefill_postgres(&url, LIMIT_TENANTS, per_tenant).await?;
        backends.push(("postgres", url));
    }
    for (name, storage) in backends {
        let (rate, refused) = limited_slice(&storage, dir.path()).await?;
        figures.push(Figure {
            name: format!("drain_at_limit_1m_backlog_{name}"),
            value: rate,
            unit: "events/s",
            baseline_name: "platform_limit".into(),
            baseline: Some(allowed),
            ratio: Some(rate / allowed),
            target: "ratio >= 0.95".into(),
            note: format!(
                "{LIMIT_BACKLOG} events of {LIMIT_TENANTS} tenants prefilled by SQL; emulator and agent at {LIMIT_RPM} \
                 requests/min per tenant, {LIMIT_BATCH} events each; events stored in the 60 s from {}s after the \
                 first; the emulator answered 429 {refused} time(s)",
                SLICE_FROM.as_secs()
            ),
        });
        crate::print_last(&figures);
    }
    Ok(figures)
}
