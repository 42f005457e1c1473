//! `billsync reconcile` against the emulator: lost events found by id and restored by
//! `--repair`, another sender's events reported, a lost response that reconciles clean, a
//! client without the read scope, and exact per-day totals.

use billsync_emulator::{Fault, FaultKind};
use serde_json::Value;

use crate::{Env, billsync, env, text};

/// Writes `n` events for `tenant` (ids `{tenant}-{first + i}`) and enqueues them.
fn enqueue(env: &Env, tenant: &str, first: usize, n: usize) {
    let at = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let lines: Vec<String> = (first..first + n)
        .map(|i| format!(r#"{{"event_id":"{tenant}-{i:04}","device_id":"d","meter":"energy","quantity":"{i}.5","unit":"kWh","occurred_at":"{at}"}}"#))
        .collect();
    let file = env.dir.path().join(format!("{tenant}-{first}.jsonl"));
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = billsync(env, &["enqueue", "--tenant", tenant, file.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out));
}

/// `reconcile --json ARGS`: the exit code and the one tenant's report.
fn reconcile(env: &Env, args: &[&str]) -> (Option<i32>, Value) {
    let mut all = vec!["reconcile", "--json", "--tenant", "acme"];
    all.extend_from_slice(args);
    let out = billsync(env, &all, None);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    (out.status.code(), json["tenants"][0].clone())
}

fn ids(report: &Value, kind: &str) -> Vec<String> {
    report[kind]["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_the_platform_lost_are_found_by_id_and_restored_by_repair() {
    // Arrange: 12 events delivered; the platform forgets 3 of them after its 202.
    let env = env(&[("acme", "acme-prod-001", "app-acme")]).await;
    enqueue(&env, "acme", 0, 12);
    env.platform.inject(Fault::next(FaultKind::lose_after_accept("acme-prod-001"), 3));
    let out = billsync(&env, &["sync"], None);
    assert!(out.status.success(), "{}", text(&out));
    let mut lost = env.platform.lost_event_ids("acme-prod-001");
    lost.sort();
    assert_eq!(lost.len(), 3);

    // Act 1: reconcile.
    let (code, report) = reconcile(&env, &[]);

    // Assert 1: found by id, exit 3, the day differs by exactly them.
    assert_eq!(code, Some(3), "{report:#}");
    assert_eq!(ids(&report, "missing_on_platform"), lost);
    assert_eq!(report["missing_on_platform"]["count"], 3);
    let day = &report["days"][0];
    assert_eq!((day["local"]["count"].as_u64(), day["platform"]["count"].as_u64()), (Some(12), Some(9)), "{day:#}");
    assert_ne!(day["local"]["digest"], day["platform"]["digest"]);

    // Act 2: repair, then reconcile again.
    let (code, report) = reconcile(&env, &["--repair"]);
    assert_eq!(code, Some(0), "everything found was repaired: {report:#}");
    assert_eq!(report["repair"]["requeued"], 3, "{report:#}");
    assert_eq!(report["repair"]["resent"], 3, "{report:#}");
    let (code, report) = reconcile(&env, &[]);

    // Assert 2: the platform holds all 12, and the two sides' digests agree.
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["missing_on_platform"]["count"], 0);
    let day = &report["days"][0];
    assert_eq!(day["local"], day["platform"], "{day:#}");
    let mut held = env.platform.stored_event_ids("acme-prod-001");
    held.sort();
    assert_eq!(held.len(), 12);
    env.platform.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_senders_events_are_reported_and_count_only_with_exclusive() {
    // Arrange
    let env = env(&[("acme", "acme-prod-001", "app-acme")]).await;
    enqueue(&env, "acme", 0, 4);
    assert!(billsync(&env, &["sync"], None).status.success());
    let at = (chrono::Utc::now() - chrono::Duration::minutes(2)).to_rfc3339();
    let other: Vec<Value> = ["other-1", "other-2"]
        .iter()
        .map(|id| serde_json::json!({"event_id": id, "device_id": "d", "meter": "energy", "quantity": "1", "unit": "kWh", "occurred_at": at}))
        .collect();
    env.platform.insert_events("acme-prod-001", &other).unwrap();

    // Act
    let (shared, report) = reconcile(&env, &[]);
    let (exclusive, _) = reconcile(&env, &["--exclusive"]);

    // Assert
    assert_eq!(ids(&report, "unknown_to_outbox"), ["other-1", "other-2"]);
    assert_eq!(shared, Some(0), "other senders may post for the tenant: {report:#}");
    assert_eq!(exclusive, Some(3), "with --exclusive they are discrepancies");
    env.platform.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_acked_after_a_lost_response_whose_batch_was_stored_reconciles_clean() {
    // Arrange: the first answer is lost after the platform stored the batch; billsync sends
    // it again and settles it on the duplicates.
    let env = env(&[("acme", "acme-prod-001", "app-acme")]).await;
    enqueue(&env, "acme", 0, 5);
    env.platform.inject(Fault::next(FaultKind::DropConnection, 1));
    let out = billsync(&env, &["sync"], None);
    assert!(out.status.success(), "{}", text(&out));

    // Act
    let (code, report) = reconcile(&env, &["--exclusive"]);

    // Assert
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["days"][0]["local"]["count"], 5);
    assert_eq!(report["days"][0]["local"], report["days"][0]["platform"]);
    env.platform.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_the_read_scope_gets_its_named_reason() {
    // initech's client is not registered for Billing Services: no read scope either.
    let env = env(&[("initech", "initech-prod-001", "app-initech")]).await;

    let out = billsync(&env, &["reconcile", "--tenant", "initech"], None);

    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("NOT READ") && said.contains("missing_scope"), "{said}");
    assert!(said.contains("urn:oracle:iot:billing:read"), "the hint names the read scope: {said}");
    env.platform.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_since_before_the_horizon_or_a_bad_tenant_is_exit_2() {
    let env = env(&[("acme", "acme-prod-001", "app-acme")]).await;
    let out = billsync(&env, &["reconcile", "--tenant", "nobody"], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1)).date_naive().to_string();
    let out = billsync(&env, &["reconcile", "--since", &tomorrow], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = billsync(&env, &["reconcile", "--days", "0"], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    env.platform.shutdown().await;
}

/// The sum of decimal strings with at most 9 fraction digits, in units of 10⁻⁹, computed here
/// digit by digit (not with the code under test).
fn sum_nanos(quantities: &[String]) -> String {
    let total: u128 = quantities
        .iter()
        .map(|q| {
            let (int, frac) = q.split_once('.').unwrap_or((q, ""));
            int.parse::<u128>().unwrap() * 1_000_000_000 + format!("{frac:0<9}").parse::<u128>().unwrap()
        })
        .sum();
    format!("{}.{:09}", total / 1_000_000_000, total % 1_000_000_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_day_totals_match_to_the_last_digit_on_a_day_of_100000_events() {
    use rand::{Rng, SeedableRng};
    // Arrange: the platform without a rate limit; 100,000 events on one UTC day, each with a
    // random quantity of up to 18 integer and 9 fraction digits.
    let platform = billsync_emulator::Emulator::start(
        billsync_emulator::EmulatorConfig::builtin().billing_rate_per_min(None),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("billsync.toml");
    std::fs::write(
        &config,
        format!(
            "[platform]\nbase_url = \"{}\"\n[storage]\nurl = \"sqlite://{}\"\n[sync]\nrequests_per_minute = 100000\n\
             [[tenants]]\nname = \"acme\"\ntenant_id = \"acme-prod-001\"\napplication_id = \"app-acme\"\nclient_secret = \"secret-acme\"\n",
            platform.base_url(),
            dir.path().join("outbox.db").display()
        ),
    )
    .unwrap();
    let agent = billsync::Agent::from_file(&config).await.unwrap();
    let now = chrono::Utc::now();
    let day = (now - chrono::Duration::days(1)).date_naive();
    let noon = day.and_hms_opt(12, 0, 0).unwrap().and_utc();
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let mut quantities = Vec::with_capacity(100_000);
    for chunk in 0..10 {
        let events: Vec<billsync_domain::EncodedEvent> = (0..10_000)
            .map(|i| {
                let n = chunk * 10_000 + i;
                let int: u64 = rng.gen_range(0..1_000_000_000_000_000_000);
                let frac: u32 = rng.gen_range(0..1_000_000_000);
                let q = format!("{int}.{frac:09}");
                let at = (noon + chrono::Duration::milliseconds(n)).to_rfc3339();
                let json = format!(
                    r#"{{"event_id":"e-{n:06}","device_id":"d","meter":"energy","quantity":"{q}","unit":"kWh","occurred_at":"{at}"}}"#
                );
                quantities.push(q);
                billsync_domain::BillingEvent::parse(&json, now).unwrap().encode()
            })
            .collect();
        agent.enqueue("acme", &events).await.unwrap();
    }
    let reports = agent.sync_once().await;
    assert_eq!(reports[0].accepted, 100_000, "{reports:?}");

    // Act
    let opts = billsync::reconcile::ReconcileOptions { exclusive: true, ..Default::default() };
    let result = agent.reconcile(&opts, &|_, _, _| {}).await.unwrap();

    // Assert
    let r = &result[0];
    assert!(r.clean, "{:?}", r.comparison);
    let d = r.comparison.days.iter().find(|d| d.date == day).unwrap();
    assert_eq!((d.local.count, d.platform.count), (100_000, 100_000));
    assert_eq!(d.local.digest, d.platform.digest);
    let expected = sum_nanos(&quantities);
    assert_eq!(d.meters[0].local_total.to_string(), expected, "exact to the last of 9 fraction digits");
    assert_eq!(d.meters[0].platform_total.to_string(), expected);
    assert!(r.pages >= 100, "read in pages of at most 1000: {}", r.pages);
    platform.shutdown().await;
}

/// Adds `[reconcile]` settings to the configuration (before the `[[tenants]]` tables).
fn reconcile_settings(env: &Env, settings: &str) {
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    let (head, tenants) = cfg.split_once("[[tenants]]").unwrap();
    std::fs::write(&env.config, format!("{head}[reconcile]\n{settings}\n[[tenants]]{tenants}")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reconciles_on_its_schedule_repairs_and_exports_the_result() {
    // Arrange: `run` reconciles every 2 s and repairs; the platform forgets 3 of the 12 events
    // it accepts.
    let env = env(&[("acme", "acme-prod-001", "app-acme")]).await;
    reconcile_settings(&env, "every_seconds = 2\nrepair = true");
    env.platform.inject(Fault::next(FaultKind::lose_after_accept("acme-prod-001"), 3));
    let log = env.dir.path().join("agent.log");
    let mut agent = std::process::Command::new(env!("CARGO_BIN_EXE_billsync"))
        .arg("--config")
        .arg(&env.config)
        .args(["run", "--listen", "127.0.0.1:0"])
        .env("SECRET_ACME", "secret-acme")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();

    // Act: events arrive while it runs.
    enqueue(&env, "acme", 0, 12);

    // Assert: the lost events are found and sent again by `run` alone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let lost = env.platform.lost_event_ids("acme-prod-001").len();
        let held = env.platform.stored_event_ids("acme-prod-001").len();
        if lost == 3 && held == 12 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{held} held, {lost} lost; the agent's log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // The next scheduled run finds the sides agree, and says so on /metrics.
    let port = crate::served_port(&log);
    let clean = "billsync_reconcile_discrepancies{tenant=\"acme\",kind=\"missing_on_platform\"} 0";
    let mut metrics = String::new();
    while !metrics.contains(clean) {
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        metrics = crate::reqwest_get(port, "/metrics").await;
    }
    let success = metrics
        .lines()
        .find_map(|l| l.strip_prefix("billsync_reconcile_last_success_timestamp_seconds{tenant=\"acme\"} "))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or_else(|| panic!("no last success for acme: {metrics}"));
    assert!((chrono::Utc::now().timestamp() - success).abs() < 60, "{success}");
    assert!(metrics.contains("billsync_reconcile_discrepancies{tenant=\"acme\",kind=\"unknown_to_outbox\"} 0"));
    assert!(std::process::Command::new("kill").args(["-TERM", &agent.id().to_string()]).status().unwrap().success());
    assert!(agent.wait().unwrap().success());

    // `status` in another process shows the last result.
    let s = crate::status_json(&env);
    let last = &s["tenants"][0]["last_reconcile"];
    assert_eq!(last["clean"], true, "{s:#}");
    assert_eq!(last["found"]["missing_on_platform"], 0, "{s:#}");
    let out = billsync(&env, &["status"], None);
    let said = text(&out);
    assert!(said.contains("last reconciliation") && said.contains(": clean"), "{said}");
    env.platform.shutdown().await;
}
