//! The HTTP ingest's figure: events/s posted to the real `billsync run` in batches of 500,
//! against `Agent::enqueue` of the same events in the same run.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use billsync_domain::{Clock, EncodedEvent, SystemClock};
use billsync_emulator::Emulator;
use tokio::io::AsyncBufReadExt;

use crate::{
    Figure, ROUNDS, Res, agent, config_text, event_json, events, median, platform, start, throughput, tmp_root,
};

/// Concurrent HTTP clients, each posting its share of the batches one after the other.
const CLIENTS: usize = 4;

/// Events per request, as in `enqueue_sqlite_batch_500`.
const BATCH: usize = 500;

/// `ingest_http_batch_500`: [`ROUNDS`] alternating rounds of the in-process enqueue baseline
/// and of the HTTP ingest of a fresh `billsync run`, each on a fresh SQLite outbox.
pub(crate) async fn ingest_http(bin: &Path, quick: bool) -> Res<Figure> {
    let n = if quick { 50_000 } else { 200_000 };
    let emu = start(platform(1, None)).await?;
    let bodies = ndjson_bodies(n);
    let evs = events("ingest", n)?;
    let (mut http, mut base) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        base.push(enqueue_round(&emu, &evs).await?);
        http.push(http_round(bin, &emu, &bodies).await?);
    }
    emu.shutdown().await;
    let whole = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
    let note = format!(
        "{n} events, {CLIENTS} concurrent clients posting pre-serialised JSON Lines bodies of {BATCH} to \
         `billsync run` (release, loopback, no token), timed until the last 200; delivery held off with [sync] \
         requests_per_minute = 1 (at most one batch of {BATCH} leaves for the emulator while the clock runs); \
         baseline: in-process Agent::enqueue of the same events, one caller, batches of {BATCH}; fresh SQLite \
         outbox (WAL + synchronous=FULL) each round; median of {ROUNDS} alternating rounds: ingest [{}], \
         enqueue [{}]",
        whole(&http),
        whole(&base)
    );
    Ok(throughput(
        "ingest_http_batch_500",
        median(&http),
        "enqueue_sqlite_batch_500",
        median(&base),
        "ratio >= 0.7",
        &note,
    ))
}

/// One tenant (`b0`) on a fresh SQLite outbox in `dir`, the ingest on a free loopback port, and
/// delivery to `emu` limited to one request a minute: what is measured is the ingest's.
fn config(emu: &Emulator, dir: &Path) -> String {
    let storage = format!("sqlite://{}", dir.join("outbox.db").display());
    let sync = format!("max_batch_events = {BATCH}\nrequests_per_minute = 1");
    config_text(&emu.base_url(), &storage, 1, &sync) + "\n[ingest]\nlisten = \"127.0.0.1:0\"\n"
}

/// `n` distinct events as JSON Lines bodies of [`BATCH`] events each.
fn ndjson_bodies(n: usize) -> Vec<String> {
    let at = (SystemClock.now() - chrono::Duration::minutes(1)).to_rfc3339();
    let lines: Vec<String> = (0..n).map(|i| event_json(&format!("ingest-{i}"), i, &at)).collect();
    lines.chunks(BATCH).map(|c| c.join("\n")).collect()
}

/// The baseline: `Agent::enqueue` in batches of [`BATCH`] into a fresh outbox; events/s.
async fn enqueue_round(emu: &Emulator, evs: &[EncodedEvent]) -> Res<f64> {
    let dir = tempfile::tempdir_in(tmp_root())?;
    let agent = agent(&config(emu, dir.path()), dir.path()).await?;
    let start = Instant::now();
    for chunk in evs.chunks(BATCH) {
        agent.enqueue("b0", chunk).await?;
    }
    let elapsed = start.elapsed();
    drop(agent);
    eprintln!("  enqueue (in process): {} events in {elapsed:.2?}", evs.len());
    Ok(evs.len() as f64 / elapsed.as_secs_f64())
}

/// The figure: `bodies` posted by [`CLIENTS`] clients to a fresh `billsync run`; events/s.
async fn http_round(bin: &Path, emu: &Emulator, bodies: &[String]) -> Res<f64> {
    let dir = tempfile::tempdir_in(tmp_root())?;
    let cfg = dir.path().join("billsync.toml");
    std::fs::write(&cfg, config(emu, dir.path()))?;
    let mut child = tokio::process::Command::new(bin)
        .arg("--config")
        .arg(&cfg)
        .args(["-q", "run", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let url = ingest_url(&mut child).await?.replace("{name}", "b0");
    let delivered = || emu.counters().events_stored.values().sum::<u64>();
    let before = delivered();
    let posted = post_all(&url, bodies.to_vec()).await;
    let delivered = delivered() - before;
    stop(&mut child).await?;
    let (stored, elapsed) = posted?;
    let total: usize = bodies.iter().map(|b| b.lines().count()).sum();
    if stored != total as u64 {
        return Err(format!("ingest stored {stored} of {total} events").into());
    }
    eprintln!(
        "  ingest over HTTP ({CLIENTS} clients): {total} events in {elapsed:.2?}, {delivered} delivered meanwhile"
    );
    Ok(total as f64 / elapsed.as_secs_f64())
}

/// Reads the child's stderr until it says where it takes events, and keeps draining it after
/// (so that the child never blocks on a full pipe); returns that URL.
async fn ingest_url(child: &mut tokio::process::Child) -> Res<String> {
    announced(child, "billsync run: taking events on ").await
}

/// Reads the child's stderr until a line starts with `prefix`, and keeps draining it after
/// (so that the child never blocks on a full pipe); returns the rest of that line.
pub(crate) async fn announced(child: &mut tokio::process::Child, prefix: &'static str) -> Res<String> {
    let pipe = child.stderr.take().ok_or("child has no stderr")?;
    let (tx, rx) = tokio::sync::oneshot::channel::<Result<String, String>>();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(pipe).lines();
        let (mut tx, mut seen) = (Some(tx), String::new());
        while let Ok(Some(l)) = lines.next_line().await {
            if let Some(url) = l.strip_prefix(prefix)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(Ok(url.trim().to_owned()));
            } else if tx.is_some() {
                seen.push_str(&l);
                seen.push('\n');
            }
        }
        if let Some(tx) = tx {
            let _ = tx.send(Err(seen));
        }
    });
    match tokio::time::timeout(Duration::from_secs(30), rx).await {
        Ok(Ok(Ok(url))) => Ok(url),
        Ok(Ok(Err(said))) => Err(format!("billsync run exited before saying \"{prefix}\": {said}").into()),
        Ok(Err(_)) => Err("billsync run: stderr reader gone".into()),
        Err(_) => Err(format!("billsync run did not say \"{prefix}\" within 30 s").into()),
    }
}

/// Posts `bodies` to `url` from [`CLIENTS`] concurrent clients (round robin shares); returns
/// the events stored and the time from the first request to the last answer.
async fn post_all(url: &str, bodies: Vec<String>) -> Res<(u64, Duration)> {
    let http = reqwest::Client::builder().no_proxy().build()?;
    let mut shares: Vec<Vec<String>> = (0..CLIENTS).map(|_| Vec::new()).collect();
    for (i, body) in bodies.into_iter().enumerate() {
        shares[i % CLIENTS].push(body);
    }
    let start = Instant::now();
    let tasks: Vec<_> =
        shares.into_iter().map(|share| tokio::spawn(post_share(http.clone(), url.to_owned(), share))).collect();
    let mut stored = 0;
    for t in tasks {
        stored += t.await??;
    }
    Ok((stored, start.elapsed()))
}

/// One client: its bodies one after the other, each to be answered `200`; the events stored.
async fn post_share(http: reqwest::Client, url: String, bodies: Vec<String>) -> Result<u64, String> {
    let mut stored = 0;
    for body in bodies {
        let r = http
            .post(&url)
            .header("Content-Type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status();
        let text = r.text().await.map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("ingest answered {status}: {text}"));
        }
        let answer: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        stored += answer["stored"].as_u64().ok_or_else(|| format!("ingest answered {text}"))?;
    }
    Ok(stored)
}

/// SIGTERM, then waits for the child to finish (killed if it takes more than 20 s).
pub(crate) async fn stop(child: &mut tokio::process::Child) -> Res<()> {
    if let Some(pid) = child.id() {
        tokio::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().await?;
    }
    match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
        Ok(status) => {
            let status = status?;
            if !status.success() {
                eprintln!("  billsync run exited with {status}");
            }
        }
        Err(_) => {
            eprintln!("  billsync run did not stop within 20 s of SIGTERM; killing it");
            child.start_kill()?;
            child.wait().await?;
        }
    }
    Ok(())
}
