//! `billsync reconcile`: the report, for a person or as JSON, and its exit code.

use std::fmt::Write as _;
use std::process::ExitCode;

use billsync::Agent;
use billsync::reconcile::{ReconcileError, ReconcileOptions, TenantReconciliation};
use billsync_domain::IdList;

/// How many ids of each kind the text report shows.
const SHOWN_IDS: usize = 10;

/// Runs the reconciliation and prints it. Exit 0: every tenant clean; 3: discrepancies remain
/// or a tenant cannot be read; 2: a window before the horizon.
///
/// # Errors
/// An unknown tenant, or the outbox failing.
pub async fn reconcile(agent: &Agent, opts: &ReconcileOptions, json: bool, progress: bool) -> anyhow::Result<ExitCode> {
    let bar = progress.then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} reading {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar
    });
    let on_page = |tenant: &str, pages: u64, events: u64| {
        if let Some(bar) = &bar {
            bar.set_message(format!("{tenant}: {pages} pages, {events} events from the platform"));
        }
    };
    let result = agent.reconcile(opts, &on_page).await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let tenants = match result {
        Ok(t) => t,
        Err(e @ (ReconcileError::Window(_) | ReconcileError::UnknownTenant(_))) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "tenants": tenants }))?);
    } else {
        for t in &tenants {
            print!("{}", text(t, opts.exclusive));
        }
    }
    Ok(if tenants.iter().all(|t| t.clean) { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

/// The text report of one tenant.
fn text(t: &TenantReconciliation, exclusive: bool) -> String {
    let mut s = String::new();
    let verdict = match (&t.unreadable, t.clean) {
        (Some(_), _) => "NOT READ",
        (None, true) => "CLEAN",
        (None, false) => "DISCREPANCIES",
    };
    let _ = writeln!(s, "tenant {}: {verdict} ({} to {}, UTC days of occurred_at)", t.name, t.window.from, t.window.to);
    let horizon = t.horizon.map_or_else(|| "its whole history".to_owned(), |h| format!("events from {h}"));
    let _ = writeln!(s, "  this outbox vouches for {horizon}");
    if let Some(b) = &t.unreadable {
        let _ = writeln!(s, "  the platform could not be read: {b}");
        return s;
    }
    let _ = writeln!(s, "  read {} events in {} pages from the platform", t.events_read, t.pages);
    kinds(&mut s, &t.comparison, exclusive);
    days(&mut s, &t.comparison);
    if let Some(r) = &t.repair {
        repair(&mut s, r);
    }
    s
}

/// Each kind of discrepancy: its count and first ids.
fn kinds(s: &mut String, c: &billsync_domain::Comparison, exclusive: bool) {
    let unknown = if exclusive {
        "held by the platform, never in this outbox"
    } else {
        "held by the platform, never in this outbox (another sender? not counted without --exclusive)"
    };
    let kinds: [(&str, &IdList, &str); 5] = [
        ("missing_on_platform", &c.missing_on_platform, "delivered here, absent on the platform"),
        ("missing_unrecoverable", &c.missing_unrecoverable, "absent on the platform, payload compacted here"),
        ("held_but_pending", &c.held_but_pending, "held by the platform, still pending here"),
        ("held_but_dead_lettered", &c.held_but_dead_lettered, "held by the platform, dead-lettered here"),
        ("unknown_to_outbox", &c.unknown_to_outbox, unknown),
    ];
    for (code, list, what) in kinds {
        if list.is_empty() {
            continue;
        }
        let shown: Vec<&str> = list.ids.iter().take(SHOWN_IDS).map(String::as_str).collect();
        let more =
            if list.count > shown.len() as u64 { format!(", ... ({} in all)", list.count) } else { String::new() };
        let _ = writeln!(s, "  {code}: {} {what}: {}{more}", list.count, shown.join(", "));
    }
}

/// Each day: both sides' counts and digests, and the (meter, unit) totals that differ.
fn days(s: &mut String, c: &billsync_domain::Comparison) {
    for d in &c.days {
        let mark = if d.agrees() { "ok  " } else { "DIFF" };
        let _ = writeln!(
            s,
            "  [{mark}] {}  here {} events {}  platform {} events {}",
            d.date,
            d.local.count,
            short(&d.local.digest),
            d.platform.count,
            short(&d.platform.digest)
        );
        for m in d.meters.iter().filter(|m| m.local_total != m.platform_total || m.local_count != m.platform_count) {
            let _ = writeln!(
                s,
                "         {} ({}): here {} ({} events), platform {} ({} events)",
                m.meter, m.unit, m.local_total, m.local_count, m.platform_total, m.platform_count
            );
        }
    }
}

/// What `--repair` did.
fn repair(s: &mut String, r: &billsync::reconcile::Repair) {
    let _ = match &r.held_by {
        Some(agent) => writeln!(
            s,
            "  repair: not done, agent {agent} holds the tenant; stop it first, or let `run` repair on its schedule"
        ),
        None => writeln!(
            s,
            "  repair: requeued {} (the platform took {} of them again), settled {} as delivered, left {} \
             dead-lettered for a person to decide; nothing deleted",
            r.requeued, r.resent, r.settled, r.left_dead_lettered
        ),
    };
}

/// The first 12 hex digits of a digest.
fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}
