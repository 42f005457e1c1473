//! `billsync quarantine list | requeue | purge`: the broker messages the MQTT ingest could not
//! store as events.

use std::process::ExitCode;

use billsync::Agent;
use billsync_domain::{QuarantineSelection, Quarantined};

/// How much of a payload `list` shows.
const PREVIEW_CHARS: usize = 80;

/// `--all` or the entry numbers.
pub fn selection(all: bool, ids: &[i64]) -> QuarantineSelection {
    if all { QuarantineSelection::All } else { QuarantineSelection::Ids(ids.to_vec()) }
}

/// The start of a payload, on one line: its text (control characters escaped) or, when it is
/// not UTF-8, its first bytes in hex.
pub fn preview(q: &Quarantined) -> String {
    let text = match std::str::from_utf8(&q.payload) {
        Ok(t) => t
            .chars()
            .take(PREVIEW_CHARS)
            .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
            .collect::<String>(),
        Err(_) => {
            let hex: String = q.payload.iter().take(PREVIEW_CHARS / 2).map(|b| format!("{b:02x}")).collect();
            format!("(not UTF-8) {hex}")
        }
    };
    let more = q.payload.len() > PREVIEW_CHARS || q.truncated();
    if more { format!("{text}...") } else { text }
}

/// `billsync quarantine list`.
///
/// # Errors
/// The outbox's error.
pub async fn list(agent: &Agent, json: bool) -> anyhow::Result<ExitCode> {
    let list = agent.quarantined(&QuarantineSelection::All).await?;
    if json {
        let entries: Vec<serde_json::Value> = list
            .iter()
            .map(|q| {
                let mut v = serde_json::to_value(q).unwrap_or_default();
                v["truncated"] = q.truncated().into();
                v["payload"] = String::from_utf8_lossy(&q.payload).into_owned().into();
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "quarantine": entries }))?);
    } else if list.is_empty() {
        println!("the quarantine is empty");
    } else {
        for q in &list {
            println!("#{}  {}  {}  {} bytes", q.id, q.received_at.to_rfc3339(), q.topic, q.size);
            println!("    reason:  {}", q.reason);
            println!("    payload: {}", preview(q));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `billsync quarantine requeue`: exit 3 when an entry is still refused.
///
/// # Errors
/// The outbox's error, or backpressure.
pub async fn requeue(agent: &Agent, which: &QuarantineSelection) -> anyhow::Result<ExitCode> {
    let done = agent.requeue_quarantined(which).await?;
    if done.is_empty() {
        println!("nothing to requeue");
    }
    let mut still = 0;
    for r in &done {
        match &r.reason {
            None => println!("#{}: stored {} event(s); removed from the quarantine", r.id, r.events),
            Some(reason) => {
                still += 1;
                println!("#{}: still refused: {reason}", r.id);
            }
        }
    }
    Ok(if still == 0 { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

/// `billsync quarantine purge`.
///
/// # Errors
/// The outbox's error.
pub async fn purge(agent: &Agent, which: &QuarantineSelection) -> anyhow::Result<ExitCode> {
    let n = agent.purge_quarantined(which).await?;
    println!("{n} entr{} removed from the quarantine", if n == 1 { "y" } else { "ies" });
    Ok(ExitCode::SUCCESS)
}
