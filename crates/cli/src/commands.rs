//! The commands behind `billsync`'s subcommands. Each talks to the library's [`Agent`] only,
//! prints for a person (or JSON with `--json`), and returns the exit code.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use billsync::Agent;
use billsync::jsonl::{ReadError, read_events};
use billsync_domain::{ApplicationId, BillingPolicy, EventId, EventRules, TenantId};

use crate::output::{status_table, summary_table};

/// `billsync enqueue`: store the events of a JSON Lines file (or standard input with `None` or
/// `-`), all or nothing. Every invalid line is named and nothing is stored (exit 2).
///
/// # Errors
/// Unknown tenant, an unreadable file, or the outbox's error.
pub async fn enqueue(agent: &Agent, tenant: &str, file: Option<&Path>) -> anyhow::Result<ExitCode> {
    let name = agent.tenant_name(tenant)?;
    let now = chrono::Utc::now();
    let rules = EventRules::default();
    let read = match file {
        Some(p) if p.as_os_str() != "-" => {
            let f = std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
            read_events(std::io::BufReader::new(f), &rules, now)
        }
        _ => read_events(std::io::stdin().lock(), &rules, now),
    };
    let events = match read {
        Ok(events) => events,
        Err(ReadError::Invalid(lines)) => {
            for l in &lines {
                eprintln!("{l}");
            }
            eprintln!("{} invalid line(s); nothing was stored", lines.len());
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    };
    let report = match agent.enqueue(name.as_str(), &events).await {
        Ok(report) => report,
        Err(e) if e.is_temporary() => {
            eprintln!("billsync enqueue: {e}");
            // EX_TEMPFAIL: try again later.
            return Ok(ExitCode::from(75));
        }
        Err(e) => return Err(e.into()),
    };
    println!("{name}: {} stored, {} duplicate(s) already in the outbox", report.stored, report.duplicates.len());
    Ok(ExitCode::SUCCESS)
}

/// `billsync sync`: deliver, show progress on a terminal, print a summary table. Exit 3 when
/// work remains for a blocked or unreachable tenant.
///
/// # Errors
/// Only for failures to read the outbox at the end.
pub async fn sync(agent: &Agent, progress: bool) -> anyhow::Result<ExitCode> {
    let total_before = agent.pending_total().await?;
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
            () = tokio::time::sleep(Duration::from_millis(250)) => {
                if let Some(bar) = &bar {
                    let left = agent.pending_total().await.unwrap_or(0);
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
        let left = s.pending + s.in_flight;
        if let Some(b) = &r.blocked {
            println!("\n{} is blocked; its {left} event(s) stay pending until this is fixed:", r.name);
            for reason in &b.reasons {
                println!("  - {}: {}", reason.code, reason.hint);
            }
        } else if r.held_elsewhere && r.holder_alive {
            // Another live agent's work: reported, not a failure of this sync.
            println!(
                "\n{} is {}; its {left} pending event(s) are that agent's work",
                r.name,
                r.held_by.as_deref().unwrap_or("held by another agent"),
            );
            continue;
        } else if left > 0 {
            println!(
                "\n{}: {left} event(s) still pending{}",
                r.name,
                r.last_error.as_deref().map(|e| format!(" (last error: {e})")).unwrap_or_default()
            );
        }
        remaining |= left > 0;
    }
    Ok(if remaining { ExitCode::from(3) } else { ExitCode::SUCCESS })
}

/// `billsync status`.
///
/// # Errors
/// The outbox's error.
pub async fn status(agent: &Agent, json: bool) -> anyhow::Result<ExitCode> {
    let status = agent.status().await?;
    // Whether new events are refused now (the ingest's 503, enqueue's exit 75).
    let pressure = agent.backpressure().await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot tell whether the outbox pushes back");
        None
    });
    // Broker messages waiting for a person (the MQTT ingest's quarantine).
    let quarantined = agent.quarantined(&billsync_domain::QuarantineSelection::All).await?.len();
    if json {
        let backpressure =
            pressure.as_ref().map(|p| serde_json::json!({ "reason": p.reason(), "message": p.to_string() }));
        let doc = serde_json::json!({ "tenants": status, "backpressure": backpressure, "quarantined": quarantined });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", status_table(&status, chrono::Utc::now()));
        if let Some(p) = pressure {
            println!("\nthe outbox pushes back ({}): {p}", p.reason());
        }
        if quarantined > 0 {
            println!("\n{quarantined} broker message(s) in the quarantine: billsync quarantine list");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `billsync dead-letter list`.
///
/// # Errors
/// Unknown tenant, or the outbox's error.
pub async fn dead_letter_list(agent: &Agent, tenant: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let list = agent.dead_letters(tenant).await?;
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
        let n = agent.requeue(name.as_str(), ids.clone()).await?;
        println!("{name}: {n} event(s) back to pending");
        total += n;
    }
    if total == 0 {
        println!("nothing was requeued");
    }
    Ok(ExitCode::SUCCESS)
}

/// `billsync doctor`: exit 3 unless every tenant checked is billing-ready.
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
        diagnoses.extend(agent.diagnose(name.as_str()).await?);
    }
    let ready = diagnoses.iter().all(billsync::Diagnosis::ready);
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "tenants": diagnoses }))?);
    } else {
        for d in &diagnoses {
            println!("{d}");
        }
    }
    Ok(if ready { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

/// `billsync token inspect`: decode a token (the argument, or standard input with `None` or
/// `-`) and say whether it is billing-ready. The token is never sent anywhere.
///
/// # Errors
/// A tenant or application id that is not a valid identifier, or unreadable standard input.
pub fn inspect(
    token: Option<&str>,
    tenant_id: Option<String>,
    application_id: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let token = match token {
        None | Some("-") => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("cannot read the token from standard input")?;
            s
        }
        Some(t) => t.to_owned(),
    };
    let tenant_id = tenant_id.map(TenantId::parse).transpose().context("--tenant-id")?;
    let application_id = application_id.map(ApplicationId::parse).transpose().context("--application-id")?;
    let policy = BillingPolicy::default();
    match billsync::inspect_token(
        token.trim(),
        tenant_id.as_ref(),
        application_id.as_ref(),
        &policy,
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
