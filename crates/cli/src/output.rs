//! What the commands print: plain tables for a terminal, built from the library's reports.

use billsync::TenantStatus;
use billsync::engine::{TenantReport, TenantState};

/// The end-of-sync table.
pub fn summary_table(reports: &[TenantReport], status: &[TenantStatus]) -> String {
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

/// The text of `billsync status`: counts and the state of each tenant, with its reason.
pub fn status_table(status: &[TenantStatus], now: chrono::DateTime<chrono::Utc>) -> String {
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
    if status.iter().any(|s| s.last_reconcile.is_some()) {
        out.push_str("\nlast reconciliation\n");
        for s in status {
            out.push_str(&format!("{:<16} {}\n", s.name, reconciled(s.last_reconcile.as_ref(), now)));
        }
    }
    out
}

/// One tenant's last reconciliation in a line: when, which days, and what it found or why it
/// could not read the platform.
fn reconciled(last: Option<&billsync::reconcile::LastReconcile>, now: chrono::DateTime<chrono::Utc>) -> String {
    let Some(l) = last else { return "never".into() };
    let when = format!("{} ago, {}..{}", billsync_domain::human_duration(now - l.at), l.window.from, l.window.to);
    if let Some(why) = &l.unreadable {
        let since = l
            .last_success_at
            .map(|t| format!("last success {} ago", billsync_domain::human_duration(now - t)))
            .unwrap_or_else(|| "never succeeded".into());
        return format!("{when}: could not read the platform ({}); {since}", why.codes().join(", "));
    }
    let found: Vec<String> =
        l.found.kinds().iter().filter(|(_, n)| *n > 0).map(|(kind, n)| format!("{n} {kind}")).collect();
    let repaired = l
        .repair
        .as_ref()
        .map(|r| format!("; repaired: {} requeued, {} settled", r.requeued, r.settled))
        .unwrap_or_default();
    match (found.is_empty(), l.clean) {
        (true, _) => format!("{when}: clean"),
        (false, true) => format!("{when}: clean after repair ({}){repaired}", found.join(", ")),
        (false, false) => format!("{when}: DISCREPANCIES {}{repaired}", found.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use billsync::engine::Blocked;

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
            last_reconcile: None,
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
    fn the_status_table_shows_each_tenants_last_reconciliation() {
        use billsync::reconcile::{Found, LastReconcile, Repair, WindowReport};
        let now = chrono::Utc::now();
        let day = now.date_naive();
        let last = |found: Found, clean, repair, unreadable| LastReconcile {
            at: now - chrono::Duration::hours(3),
            window: WindowReport { from: day, to: day },
            clean,
            found,
            repair,
            unreadable,
            last_success_at: Some(now - chrono::Duration::days(2)),
        };
        let mut a = status("acme", 0, TenantState::Ok, None);
        a.last_reconcile = Some(last(Found::default(), true, None, None));
        let mut g = status("globex", 0, TenantState::Ok, None);
        let lost = Found { missing_on_platform: 4, unknown_to_outbox: 1, ..Found::default() };
        g.last_reconcile = Some(last(lost, false, None, None));
        let mut i = status("initech", 0, TenantState::Ok, None);
        let repair = Repair { requeued: 4, ..Repair::default() };
        i.last_reconcile = Some(last(lost, true, Some(repair), None));
        let mut u = status("umbrella", 0, TenantState::Ok, None);
        u.last_reconcile = Some(last(Found::default(), false, None, Some(Blocked::one("read_not_authorized", "x"))));
        let n = status("nobody", 0, TenantState::Ok, None);
        let table = status_table(&[a, g, i, u, n], now);
        let line = |name: &str| table.lines().filter(|l| l.starts_with(name)).nth(1).unwrap_or_default().to_owned();
        assert!(
            line("acme").ends_with("ago, {day}..{day}: clean".replace("{day}", &day.to_string()).as_str()),
            "{table}"
        );
        assert!(line("globex").contains("DISCREPANCIES 4 missing_on_platform, 1 unknown_to_outbox"), "{table}");
        assert!(line("initech").contains("clean after repair") && line("initech").contains("4 requeued"), "{table}");
        assert!(
            line("umbrella").contains("could not read the platform (read_not_authorized); last success 48h 0m ago"),
            "{table}"
        );
        assert!(line("nobody").ends_with("never"), "{table}");
    }

    #[test]
    fn the_summary_counts_dead_letters_and_names_the_block() {
        let reports = [
            TenantReport { name: "acme".into(), accepted: 39, dead_lettered: 1, requests: 7, ..Default::default() },
            TenantReport {
                name: "globex".into(),
                requests: 3,
                blocked: Some(Blocked::one("unexpected_response", "418")),
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
