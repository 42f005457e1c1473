//! The commands behind `billsync`'s subcommands, kept out of `main.rs` so that tests and the
//! demo can call them.

pub mod demo;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use billsync_domain::{ApplicationId, BillingPolicy, EventId, TenantId};

use crate::Agent;
use crate::engine::{TenantReport, TenantState};

/// `billsync sync`: deliver, show progress on a terminal, print a summary table.
///
/// # Errors
/// Only for failures to read the outbox at the end.
pub async fn sync(agent: &Agent, progress: bool) -> anyhow::Result<ExitCode> {
    let total_before = pending_total(agent).await?;
    let bar = progress.then(|| {
        let bar = indicatif::ProgressBar::new(total_before);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} delivering [{bar:40}] {pos}/{len} events {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    });
    let work = agent.sync_once();
    tokio::pin!(work);
    let reports = loop {
        tokio::select! {
            r = &mut work => break r,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                if let Some(bar) = &bar {
                    let left = pending_total(agent).await.unwrap_or(0);
                    bar.set_position(total_before.saturating_sub(left));
                }
            }
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let status = agent.status().await?;
    println!("{}", summary_table(&reports, &status));
    let mut remaining = false;
    for (r, s) in reports.iter().zip(&status) {
        if let Some(b) = &r.blocked {
            println!(
                "\n{} is blocked; its {} event(s) stay pending until this is fixed:",
                r.name,
                s.pending + s.in_flight
            );
            for (code, hint) in b.codes.iter().zip(&b.hints) {
                println!("  - {code}: {hint}");
            }
        } else if r.held_elsewhere && r.holder_alive {
            // Another live agent's work: reported, not a failure of this sync.
            println!(
                "\n{} is {}; its {} pending event(s) are that agent's work",
                r.name,
                r.held_by.as_deref().unwrap_or("held by another agent"),
                s.pending + s.in_flight
            );
            continue;
        } else if s.pending + s.in_flight > 0 {
            println!(
                "\n{}: {} event(s) still pending{}",
                r.name,
                s.pending + s.in_flight,
                r.last_error.as_deref().map(|e| format!(" (last error: {e})")).unwrap_or_default()
            );
        }
        remaining |= s.pending + s.in_flight > 0;
    }
    Ok(if remaining { ExitCode::from(3) } else { ExitCode::SUCCESS })
}

async fn pending_total(agent: &Agent) -> anyhow::Result<u64> {
    let mut total = 0;
    for t in &agent.config().tenants {
        let c = agent.outbox().counts(t.tenant.name()).await?;
        total += c.pending + c.in_flight;
    }
    Ok(total)
}

/// The end-of-sync table.
pub fn summary_table(reports: &[TenantReport], status: &[crate::agent::TenantStatus]) -> String {
    let mut out = format!(
        "{:<16} {:>9} {:>10} {:>13} {:>8} {:>9}  {}\n",
        "tenant", "accepted", "duplicate", "dead-lettered", "pending", "requests", "state"
    );
    for (r, s) in reports.iter().zip(status) {
        let state = match r.state() {
            (TenantState::Blocked | TenantState::Down, Some(why)) => format!("{}: {why}", r.state().0),
            (TenantState::Held, why) => why.unwrap_or_else(|| "held by another agent".to_owned()),
            _ if s.pending + s.in_flight > 0 => "pending (will retry)".to_owned(),
            _ => "ok".to_owned(),
        };
        out.push_str(&format!(
            "{:<16} {:>9} {:>10} {:>13} {:>8} {:>9}  {}\n",
            r.name,
            r.accepted,
            r.duplicates,
            r.dead_lettered,
            s.pending + s.in_flight,
            r.requests,
            state
        ));
    }
    out
}

/// `billsync run`: the agent until SIGTERM or SIGINT, with `/metrics` and `/healthz`.
///
/// # Errors
/// When the listen address cannot be bound.
pub async fn run(agent: Agent, listen: SocketAddr) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    // Port 0 picks a free port: say which.
    let listen = listener.local_addr().with_context(|| format!("cannot listen on {listen}"))?;
    let metrics_agent = agent.clone();
    let health_agent = agent.clone();
    let health = move || {
        let agent = health_agent.clone();
        async move {
            let health = agent.health();
            let status = axum::http::StatusCode::from_u16(health.http_status())
                .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
            (status, axum::Json(health))
        }
    };
    let app = axum::Router::new().route("/healthz", axum::routing::get(health)).route(
        "/metrics",
        axum::routing::get(move || {
            let agent = metrics_agent.clone();
            async move {
                agent.refresh_gauges().await;
                ([("content-type", "text/plain; version=0.0.4")], agent.metrics().render())
            }
        }),
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = server_stop.changed().await;
            })
            .await;
    });
    tracing::info!(%listen, tenants = agent.config().tenants.len(), "billsync agent running");
    eprintln!("billsync run: serving /metrics and /healthz on http://{listen}");
    // Compaction of delivered events, in the background.
    let compact_agent = agent.clone();
    let mut compact_stop = stop_rx.clone();
    let compactor = tokio::spawn(async move {
        loop {
            let before = chrono::Utc::now()
                - chrono::Duration::from_std(compact_agent.config().storage.retention)
                    .unwrap_or(chrono::Duration::days(7));
            if let Err(e) = compact_agent.outbox().compact(before).await {
                tracing::warn!(error = %e, "compaction failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
                _ = compact_stop.changed() => break,
            }
        }
    });
    // What the agent knows of each tenant, saved for `billsync status` every few seconds.
    let state_agent = agent.clone();
    let mut state_stop = stop_rx.clone();
    let saver = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => state_agent.save_state().await,
                _ = state_stop.changed() => break,
            }
        }
    });
    let mut engine_stop = stop_rx.clone();
    let engine = {
        let agent = agent.clone();
        tokio::spawn(async move {
            agent
                .run_until(async move {
                    let _ = engine_stop.changed().await;
                })
                .await;
        })
    };
    shutdown_signal().await;
    eprintln!("billsync run: stopping (finishing requests in flight)");
    let _ = stop_tx.send(true);
    // In-flight requests get until 9 s; whatever is still leased after that is returned to
    // pending by its lease's expiry, and the platform's deduplication absorbs a resend.
    let _ = tokio::time::timeout(Duration::from_secs(9), engine).await;
    let _ = tokio::time::timeout(Duration::from_millis(500), server).await;
    compactor.abort();
    saver.abort();
    agent.save_state().await;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `billsync status`.
///
/// # Errors
/// The outbox's error.
pub async fn status(agent: &Agent, json: bool) -> anyhow::Result<ExitCode> {
    let status = agent.status().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "tenants": status }))?);
    } else {
        print!("{}", status_table(&status, chrono::Utc::now()));
    }
    Ok(ExitCode::SUCCESS)
}

/// The text of `billsync status`: counts and the state of each tenant, with its reason.
pub fn status_table(status: &[crate::agent::TenantStatus], now: chrono::DateTime<chrono::Utc>) -> String {
    let mut out = format!(
        "{:<16} {:>9} {:>9} {:>10} {:>13}  {:<14}  {:<14}  reason\n",
        "tenant", "pending", "in flight", "delivered", "dead-lettered", "oldest pending", "state"
    );
    for s in status {
        let oldest = s
            .oldest_pending
            .map(|t| format!("{} ago", billsync_domain::human_duration(now - t)))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<16} {:>9} {:>9} {:>10} {:>13}  {:<14}  {:<14}  {}\n",
            s.name,
            s.pending,
            s.in_flight,
            s.delivered,
            s.dead_lettered,
            oldest,
            s.state,
            s.reason.as_deref().unwrap_or("-")
        ));
    }
    out
}

/// `billsync dead-letter list`.
///
/// # Errors
/// Unknown tenant, or the outbox's error.
pub async fn dead_letter_list(agent: &Agent, tenant: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let tenant = tenant.map(|t| agent.tenant_name(t)).transpose()?;
    let list = agent.outbox().dead_letters(tenant).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "dead_letters": list }))?);
    } else if list.is_empty() {
        println!("no dead-lettered events");
    } else {
        for d in &list {
            println!(
                "{}  {}  {}  {}  (after {} attempt(s), {})",
                d.tenant,
                d.event_id,
                d.code,
                d.message,
                d.attempts,
                d.dead_at.to_rfc3339()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `billsync dead-letter requeue`.
///
/// # Errors
/// Unknown tenant, bad event id, or the outbox's error.
pub async fn dead_letter_requeue(
    agent: &Agent,
    tenant: Option<&str>,
    all: bool,
    ids: &[String],
) -> anyhow::Result<ExitCode> {
    let names = match tenant {
        Some(t) => vec![agent.tenant_name(t)?],
        None if all => agent.config().tenants.iter().map(|t| t.tenant.name().clone()).collect(),
        None => anyhow::bail!("--tenant is required with event ids"),
    };
    let ids =
        if all { None } else { Some(ids.iter().map(|i| EventId::parse(i.as_str())).collect::<Result<Vec<_>, _>>()?) };
    let mut total = 0;
    for name in names {
        let n = agent.outbox().requeue(&name, ids.clone()).await?;
        println!("{name}: {n} event(s) back to pending");
        total += n;
    }
    if total == 0 {
        println!("nothing was requeued");
    }
    Ok(ExitCode::SUCCESS)
}

/// `billsync doctor`.
///
/// # Errors
/// Unknown tenant.
pub async fn doctor(agent: &Agent, tenant: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let names = match tenant {
        Some(t) => vec![agent.tenant_name(t)?],
        None => agent.config().tenants.iter().map(|t| t.tenant.name().clone()).collect(),
    };
    let mut diagnoses = Vec::new();
    for name in &names {
        if let Some(d) = agent.tokens().diagnose(name).await {
            diagnoses.push(d);
        }
    }
    let ready = diagnoses.iter().all(|d| d.ready());
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "tenants": diagnoses }))?);
    } else {
        for d in &diagnoses {
            print!("{d}");
            println!();
        }
    }
    Ok(if ready { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

/// `billsync token inspect`.
///
/// # Errors
/// A tenant or application id that is not a valid identifier.
pub fn inspect(
    token: &str,
    tenant_id: Option<String>,
    application_id: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let tenant_id = tenant_id.map(TenantId::parse).transpose().context("--tenant-id")?;
    let application_id = application_id.map(ApplicationId::parse).transpose().context("--application-id")?;
    match billsync_auth::inspect(
        token,
        tenant_id.as_ref(),
        application_id.as_ref(),
        &BillingPolicy::default(),
        chrono::Utc::now(),
    ) {
        Ok(i) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&i)?);
            } else {
                print!("{i}");
            }
            Ok(if i.ready() { ExitCode::SUCCESS } else { ExitCode::from(3) })
        }
        Err(e) => {
            eprintln!("error: not a readable token: {e}");
            Ok(ExitCode::from(2))
        }
    }
}

/// `billsync emulator`: serve until Ctrl-C.
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve_emulator(config: billsync_emulator::EmulatorConfig, listen: SocketAddr) -> anyhow::Result<ExitCode> {
    let emulator = billsync_emulator::Emulator::start(config, listen).await?;
    print!("{}", emulator.describe());
    println!("  audit log:      {}/admin/audit\nCtrl-C to stop.", emulator.base_url());
    shutdown_signal().await;
    emulator.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::TenantStatus;
    use crate::engine::Blocked;

    fn status(name: &str, pending: u64, state: TenantState, reason: Option<&str>) -> TenantStatus {
        TenantStatus {
            name: name.into(),
            pending,
            in_flight: 0,
            delivered: 3,
            dead_lettered: 1,
            state,
            reason: reason.map(str::to_owned),
            blocked: None,
            last_error: None,
            token_expires_at: None,
            oldest_pending: None,
        }
    }

    #[test]
    fn the_status_table_shows_each_tenants_state_and_reason() {
        let table = status_table(
            &[
                status("acme", 0, TenantState::Ok, None),
                status("globex", 40, TenantState::Blocked, Some("unexpected_response")),
            ],
            chrono::Utc::now(),
        );
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].contains("state") && lines[0].contains("reason"), "{table}");
        assert!(lines[1].starts_with("acme") && lines[1].contains(" ok "), "{table}");
        assert!(lines[2].contains("blocked") && lines[2].ends_with("unexpected_response"), "{table}");
    }

    #[test]
    fn the_summary_counts_dead_letters_and_names_the_block() {
        let reports = [
            TenantReport { name: "acme".into(), accepted: 39, dead_lettered: 1, requests: 7, ..Default::default() },
            TenantReport {
                name: "globex".into(),
                requests: 3,
                blocked: Some(Blocked { codes: vec!["unexpected_response".into()], hints: vec!["418".into()] }),
                ..Default::default()
            },
        ];
        let table = summary_table(
            &reports,
            &[status("acme", 0, TenantState::Ok, None), status("globex", 40, TenantState::Blocked, None)],
        );
        let acme: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(acme, ["acme", "39", "0", "1", "0", "7", "ok"]);
        assert!(table.lines().nth(2).unwrap().ends_with("blocked: unexpected_response"), "{table}");
    }
}
