//! Reconciliation's figures: the memory of `billsync reconcile` over a large listing, and how
//! much of the rate limit delivery keeps while `run` reconciles.

use std::path::Path;
use std::time::{Duration, Instant};

use billsync_domain::{Clock, SystemClock};
use sqlx::Connection;

use crate::{
    Figure, Res, agent, config_text, event_json, platform, rss_figure, run_child, start, tenant, tmp_root, vm_hwm_kib,
};

/// Fills a migrated outbox with `n` delivered events of tenant `b0` (payload and fact), and
/// the emulator with the same events: the two sides of a clean reconciliation.
async fn prefill_delivered(path: &Path, emu: &billsync_emulator::Emulator, n: usize) -> Res<()> {
    let mut conn = crate::fill_connection(path).await?;
    let now = SystemClock.now();
    let at = now - chrono::Duration::minutes(1);
    let template = event_json("@@", 42, &at.to_rfc3339());
    let (head, tail) = template.split_once("@@").ok_or("template")?;
    let ms = now.timestamp_millis() - 3_600_000;
    let started = Instant::now();
    sqlx::query(
        "WITH RECURSIVE c(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM c WHERE x + 1 < ?1) \
         INSERT INTO events (tenant, event_id, body, enqueued_at) \
         SELECT 'b0', 'rec-' || x, ?2 || 'rec-' || x || ?3, ?4 FROM c",
    )
    .bind(i64::try_from(n)?)
    .bind(head)
    .bind(tail)
    .bind(ms)
    .execute(&mut conn)
    .await?;
    sqlx::query("INSERT INTO delivered (seq, delivered_at) SELECT seq, enqueued_at FROM events WHERE tenant = 'b0'")
        .execute(&mut conn)
        .await?;
    sqlx::query(
        "INSERT INTO ledger (tenant, event_id, occurred_at, meter, unit, quantity) \
         SELECT tenant, event_id, ?1, 'energy.active', 'kWh', '12.500' FROM events WHERE tenant = 'b0'",
    )
    .bind(at.timestamp_millis())
    .execute(&mut conn)
    .await?;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut conn).await?;
    conn.close().await?;
    std::fs::File::open(path)?.sync_all()?;
    let (_, tenant_id, ..) = tenant(0);
    for first in (0..n).step_by(10_000) {
        let chunk: Vec<serde_json::Value> = (first..(first + 10_000).min(n))
            .map(|i| serde_json::from_str(&event_json(&format!("rec-{i}"), 42, &at.to_rfc3339())))
            .collect::<Result<_, _>>()?;
        emu.insert_events(&tenant_id, &chunk).map_err(|e| format!("{e:?}"))?;
    }
    eprintln!("  prefilled {n} delivered events on both sides in {:.2?}", started.elapsed());
    Ok(())
}

/// Peak RSS of `billsync reconcile` over `n` events held on both sides, against the same
/// outbox under an idle `billsync run`.
pub(crate) async fn memory(bin: &Path, quick: bool) -> Res<Figure> {
    let n = if quick { 100_000 } else { 1_000_000 };
    let emu = start(platform(1, None)).await?;
    let dir = tempfile::tempdir_in(tmp_root())?;
    let db = dir.path().join("outbox.db");
    prefill_delivered(&db, &emu, n).await?;
    let text = config_text(&emu.base_url(), &format!("sqlite://{}", db.display()), 1, "");
    let cfg = dir.path().join("billsync.toml");
    std::fs::write(&cfg, text)?;

    let started = Instant::now();
    let mut child = tokio::process::Command::new(bin)
        .arg("--config")
        .arg(&cfg)
        .args(["-q", "reconcile", "--tenant", "b0", "--days", "2", "--json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or("child has no pid")?;
    let mut peak = 0;
    let status = loop {
        if let Some(h) = vm_hwm_kib(pid) {
            peak = peak.max(h);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = started.elapsed();
    if !status.success() {
        return Err(format!("billsync reconcile over {n} events exited with {status}").into());
    }
    let read = answered(&emu, LIST);
    eprintln!("  billsync reconcile: {n} events, {read} pages, {took:.2?}, VmHWM {peak} KiB");

    // The same outbox, an idle agent.
    let (idle, _, _) = run_child(bin, dir.path(), &emu, u64::MAX, Duration::from_secs(5)).await?;
    emu.shutdown().await;
    Ok(rss_figure(
        format!("peak_rss_reconcile_{}", if quick { "100k" } else { "1m" }),
        (peak, idle),
        "idle_rss_same_outbox",
        "value < 100 MiB",
        format!(
            "VmHWM of `billsync reconcile` (release, exit 0: clean) comparing {n} delivered events with the \
             emulator's {n} ({read} listing pages, rate limit off) in {took:.1?}; baseline: `billsync run` idle on \
             the same outbox, 5 s"
        ),
    ))
}

const POST: &str = "POST /iot/api/v2/billing/events";
const LIST: &str = "GET /iot/api/v2/billing/events";

/// Requests the emulator answered on `endpoint` so far.
fn answered(emu: &billsync_emulator::Emulator, endpoint: &str) -> u64 {
    emu.counters().requests_by_endpoint.get(endpoint).copied().unwrap_or(0)
}

/// A backlog drained by `run` while it reconciles a large listing of the same tenant, both
/// under the emulator's rate limit: the share of the limit delivery keeps.
pub(crate) async fn drain_while_reconciling(quick: bool) -> Res<Figure> {
    const LIMIT: u32 = 60;
    const BATCH: usize = 10;
    let held = if quick { 50_000 } else { 100_000 };
    let emu = start(platform(1, Some(LIMIT))).await?;
    let dir = tempfile::tempdir_in(tmp_root())?;
    let db = dir.path().join("outbox.db");
    prefill_delivered(&db, &emu, held).await?;
    let sync = format!(
        "max_batch_events = {BATCH}\nrequests_per_minute = {LIMIT}\n\n[reconcile]\nevery_seconds = 1\nshare = 0.2"
    );
    let agent =
        agent(&config_text(&emu.base_url(), &format!("sqlite://{}", db.display()), 1, &sync), dir.path()).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.run_until(async { drop(stopped.await) }).await })
    };
    // The reconciliation starts (1 s after the agent), then the backlog arrives.
    let deadline = Instant::now() + Duration::from_secs(30);
    while answered(&emu, LIST) == 0 {
        if runner.is_finished() || Instant::now() > deadline {
            return Err("run never started reconciling".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // From here on, 59.5 s: no slot taken in it frees before it ends, so the posts counted are
    // what delivery got of one window while the reads went on.
    let t0 = Instant::now();
    let reads_before = answered(&emu, LIST);
    let backlog = LIMIT as usize * BATCH * 2;
    for chunk in crate::events("drain-rec", backlog)?.chunks(500) {
        agent.enqueue("b0", chunk).await?;
    }
    tokio::time::sleep(Duration::from_millis(59_500).saturating_sub(t0.elapsed())).await;
    let (posts, reads) = (answered(&emu, POST), answered(&emu, LIST) - reads_before);
    let refused = emu.counters().status(429);
    let _ = stop.send(());
    runner.await?;
    emu.shutdown().await;
    Ok(Figure {
        name: "drain_while_reconciling".into(),
        value: posts as f64,
        unit: "requests/window",
        baseline_name: "rate_limit".into(),
        baseline: Some(f64::from(LIMIT)),
        ratio: Some(posts as f64 / f64::from(LIMIT)),
        target: "ratio >= 0.75".into(),
        note: format!(
            "billing posts answered in 59.5 s from the backlog's arrival (a window: no slot frees in it), while `run` \
             reconciles {held} held events of the same tenant ([reconcile] share = 0.2, the first reads before the \
             backlog), limit {LIMIT}/60 s on both sides; {reads} more listing reads in that time; the emulator \
             answered 429 {refused} time(s)"
        ),
    })
}
