//! The `billsync` binary as a user runs it, against the emulator on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test, bench and example code: a panic is a failure

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

mod backpressure;
mod fleet;
mod ingest;
mod ingest_crash;
mod keys;
mod mqtt;
mod reconcile;
mod secrets;

use billsync_emulator::{Emulator, EmulatorConfig};

struct Env {
    platform: Emulator,
    dir: tempfile::TempDir,
    config: PathBuf,
}

async fn env(tenants: &[(&str, &str, &str)]) -> Env {
    let platform = Emulator::start(EmulatorConfig::builtin(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut text = format!(
        "[platform]\nbase_url = \"{}\"\n[storage]\nurl = \"sqlite://{}\"\n",
        platform.base_url(),
        dir.path().join("outbox.db").display()
    );
    for (name, tenant_id, client) in tenants {
        text.push_str(&format!(
            "[[tenants]]\nname = \"{name}\"\ntenant_id = \"{tenant_id}\"\napplication_id = \"{client}\"\nclient_secret_env = \"SECRET_{}\"\n",
            name.to_uppercase()
        ));
    }
    let config = dir.path().join("billsync.toml");
    std::fs::write(&config, text).unwrap();
    Env { platform, dir, config }
}

fn billsync(env: &Env, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_billsync"));
    cmd.arg("--config")
        .arg(&env.config)
        .args(args)
        .env("SECRET_ACME", "secret-acme")
        .env("SECRET_INITECH", "secret-initech")
        .env("INGEST_ACME", ingest::ACME_TOKEN)
        .env_remove("RUST_LOG")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// Collects a child's stderr as it comes: the whole text so far, and each line as it arrives.
fn stderr_lines(
    child: &mut std::process::Child,
) -> (std::sync::Arc<std::sync::Mutex<String>>, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead as _;
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let pipe = child.stderr.take().unwrap();
    let seen = stderr.clone();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(pipe).lines() {
            let Ok(l) = l else { break };
            seen.lock().unwrap().push_str(&format!("{l}\n"));
            let _ = tx.send(l);
        }
    });
    (stderr, rx)
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn line(id: &str, quantity: &str) -> String {
    let at = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    format!(
        r#"{{"event_id":"{id}","device_id":"d-1","meter":"energy.active","quantity":{quantity},"unit":"kWh","occurred_at":"{at}"}}"#
    )
}

fn write(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, lines.join("\n")).unwrap();
    p
}

/// Batches of 10 events: a `[sync]` table, placed before the `[[tenants]]` tables.
fn small_batches(env: &Env) {
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    let (head, tenants) = cfg.split_once("[[tenants]]").unwrap();
    std::fs::write(&env.config, format!("{head}[sync]\nmax_batch_events = 10\n[[tenants]]{tenants}")).unwrap();
}

fn status_json(env: &Env) -> serde_json::Value {
    let out = billsync(env, &["status", "--json"], None);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_is_all_or_nothing_and_names_every_bad_line() {
    let env = env(&[("acme", "acme-prod-001", "app-acme")]).await;
    let bad = write(env.dir.path(), "bad.jsonl", &[line("a", "\"1\""), line("b", "1.5"), line("c", "\"-2\"")]);

    let out = billsync(&env, &["enqueue", "--tenant", "acme", bad.to_str().unwrap()], None);

    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(r#"line 2: quantity: expected a decimal string such as "12.5", found a number"#), "{err}");
    assert!(err.contains(r#"line 3: quantity: must not be negative, found "-2""#), "{err}");
    assert_eq!(status_json(&env)["tenants"][0]["pending"], 0, "nothing was stored");

    // Good input from standard input; the second time every event is a duplicate.
    let good = [line("a", "\"1\""), line("b", "\"2.5\"")].join("\n");
    let out = billsync(&env, &["enqueue", "--tenant", "acme", "-"], Some(&good));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("2 stored, 0 duplicate"), "{}", text(&out));
    let out = billsync(&env, &["enqueue", "--tenant", "acme"], Some(&good));
    assert!(text(&out).contains("0 stored, 2 duplicate"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_delivers_reports_and_exits_3_when_a_tenant_is_blocked() {
    let env = env(&[("acme", "acme-prod-001", "app-acme"), ("initech", "initech-prod-001", "app-initech")]).await;
    let file = write(env.dir.path(), "e.jsonl", &(0..30).map(|i| line(&format!("e{i}"), "\"1\"")).collect::<Vec<_>>());
    for t in ["acme", "initech"] {
        assert!(billsync(&env, &["enqueue", "--tenant", t, file.to_str().unwrap()], None).status.success());
    }

    let out = billsync(&env, &["sync"], None);

    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let shown = text(&out);
    assert!(shown.contains("initech is blocked"), "{shown}");
    assert!(shown.contains("missing_scope") && shown.contains("audience_missing"), "{shown}");
    assert_eq!(env.platform.stored_event_ids("acme-prod-001").len(), 30);
    let status = status_json(&env);
    assert_eq!(status["tenants"][0]["delivered"], 30);
    assert_eq!(status["tenants"][1]["pending"], 30);
    // `status` is another process: it reads what `sync` saved.
    let codes: Vec<&serde_json::Value> =
        status["tenants"][1]["blocked"]["reasons"].as_array().unwrap().iter().map(|r| &r["code"]).collect();
    assert_eq!(codes, [&serde_json::json!("missing_scope"), &serde_json::json!("audience_missing")]);
    assert!(status["tenants"][0]["token_expires_at"].is_string(), "{status}");
    assert!(status["tenants"][0]["blocked"].is_null(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_tells_a_first_time_user_what_to_change() {
    let env = env(&[("acme", "acme-prod-001", "app-acme"), ("initech", "initech-prod-001", "app-initech")]).await;

    let out = billsync(&env, &["doctor", "--json"], None);

    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tenants"][0]["ready"], true);
    assert_eq!(v["tenants"][1]["ready"], false);
    let reasons: Vec<&str> =
        v["tenants"][1]["checks"].as_array().unwrap().iter().filter_map(|c| c["reason"].as_str()).collect();
    assert!(reasons.contains(&"missing_scope") && reasons.contains(&"audience_missing"), "{reasons:?}");
    let human = text(&billsync(&env, &["doctor", "--tenant", "initech"], None));
    assert!(human.contains("Enable Billing Services for client app-initech"), "{human}");
    assert!(billsync(&env, &["doctor", "--tenant", "acme"], None).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_inspect_never_panics_and_never_needs_the_network() {
    let env = env(&[]).await;
    for garbage in ["", "abc", "a.b", "a.b.c", "....", "eyJ.eyJ.x", "\u{1F600}.\u{0}.x"] {
        let out = billsync(&env, &["token", "inspect", "-"], Some(garbage));
        assert_eq!(out.status.code(), Some(2), "{garbage:?}: {}", text(&out));
        assert!(text(&out).contains("error: not a readable token"), "{}", text(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_token_appears_in_trace_logs_or_doctor_json() {
    let env = env(&[("acme", "acme-prod-001", "app-acme")]).await;
    let file = write(env.dir.path(), "e.jsonl", &[line("x1", "\"1\"")]);
    billsync(&env, &["enqueue", "--tenant", "acme", file.to_str().unwrap()], None);

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_billsync"));
    let out = cmd
        .arg("--config")
        .arg(&env.config)
        .args(["-vvv", "sync"])
        .env("SECRET_ACME", "secret-acme")
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    let doctor = billsync(&env, &["doctor", "--json"], None);

    assert!(out.status.success(), "{}", text(&out));
    // Every token the platform issued during the run.
    let tokens: Vec<String> = env.platform.recent_tokens();
    assert!(!tokens.is_empty());
    for shown in [text(&out), text(&doctor)] {
        assert!(shown.len() > 100, "the logs say something");
        assert!(!shown.contains("secret-acme"), "client secret leaked");
        for t in &tokens {
            assert!(!shown.contains(t.as_str()), "an access token leaked");
            let signature = t.rsplit('.').next().unwrap();
            assert!(!shown.contains(signature), "a token signature leaked");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_delivers_what_arrives_and_sigterm_loses_nothing() {
    let env = env(&[("acme", "acme-prod-001", "app-acme")]).await;
    // A slow platform so that SIGTERM lands mid-backlog.
    env.platform.inject(billsync_emulator::Fault::probability(billsync_emulator::FaultKind::Latency { ms: 300 }, 1.0));
    small_batches(&env);

    let mut agent = Command::new(env!("CARGO_BIN_EXE_billsync"))
        .arg("--config")
        .arg(&env.config)
        .args(["run", "--listen", "127.0.0.1:0"])
        .env("SECRET_ACME", "secret-acme")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(env.dir.path().join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    // 600 events in batches of 10 at 300 ms a request: 18 s of work, so that SIGTERM lands
    // mid-backlog even on a loaded machine.
    let file = write(env.dir.path(), "e.jsonl", &(0..600).map(|i| line(&format!("r{i}"), "\"1\"")).collect::<Vec<_>>());
    let out = billsync(&env, &["enqueue", "--tenant", "acme", file.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out));
    // Wait until some, not all, are delivered; check /metrics and /healthz meanwhile.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while env.platform.stored_event_ids("acme-prod-001").len() < 30 {
        assert!(
            std::time::Instant::now() < deadline,
            "run delivered nothing; its log:\n{}",
            std::fs::read_to_string(env.dir.path().join("agent.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let port = served_port(&env.dir.path().join("agent.log"));
    let health: serde_json::Value = serde_json::from_str(&reqwest_get(port, "/healthz").await).unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["checks"][0]["name"], "tenant:acme", "{health}");
    let (head, metrics) = http_get(port, "/metrics").await;
    // The text prometheus-client writes is OpenMetrics, and is labelled so.
    assert!(
        head.to_ascii_lowercase().contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{head}"
    );
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");
    assert!(metrics.contains("billsync_events_delivered_total{tenant=\"acme\"}"), "{metrics}");
    assert!(metrics.contains("billsync_tenant_state{tenant=\"acme\",state=\"ok\"} 1"), "{metrics}");
    assert!(metrics.contains("billsync_tenant_state{tenant=\"acme\",state=\"blocked\",reason=\"\"} 0"), "{metrics}");

    let started = std::time::Instant::now();
    // SIGTERM.
    assert!(Command::new("kill").args(["-TERM", &agent.id().to_string()]).status().unwrap().success());
    let status = agent.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "exited in {:?}", started.elapsed());
    let delivered = env.platform.stored_event_ids("acme-prod-001").len();
    assert!(delivered < 600, "SIGTERM landed mid-backlog ({delivered} delivered)");

    // Nothing is lost: what is not delivered is pending, and a sync finishes it.
    let s = status_json(&env);
    let pending = s["tenants"][0]["pending"].as_u64().unwrap() + s["tenants"][0]["in_flight"].as_u64().unwrap();
    assert_eq!(pending + s["tenants"][0]["delivered"].as_u64().unwrap(), 600, "{s}");
    env.platform.clear_faults();
    let out = billsync(&env, &["sync"], None);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(env.platform.stored_event_ids("acme-prod-001").len(), 600);
}

/// The port `billsync run --listen 127.0.0.1:0` chose, from its log.
fn served_port(log: &Path) -> u16 {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let line = text
        .lines()
        .find(|l| l.contains("serving /metrics and /healthz on http://"))
        .expect("run says where it listens");
    line.rsplit(':').next().and_then(|p| p.trim().parse().ok()).expect("a port")
}

async fn reqwest_get(port: u16, path: &str) -> String {
    http_get(port, path).await.1
}

/// (status line and headers, body)
async fn http_get(port: u16, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    buf.split_once("\r\n\r\n").map(|(h, b)| (h.to_owned(), b.to_owned())).unwrap_or_default()
}

/// Sends `request` as is on a new connection; the whole answer.
async fn raw_http(port: u16, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    answer
}

/// The port of the banner's first line and the key of its `admin key: ` line, read from the
/// emulator's standard output.
fn read_banner(out: std::process::ChildStdout) -> (u16, String) {
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(out).lines().map(Result::unwrap);
    let first = lines.next().expect("a banner");
    let port = first.trim().rsplit(':').next().and_then(|p| p.parse().ok()).expect("the banner names the port");
    let key = lines.take(30).find_map(|l| l.strip_prefix("admin key: ").map(str::to_owned));
    (port, key.expect("a line `admin key: KEY`"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_runs_standalone_with_and_without_a_registry() {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("emulator.toml");
    std::fs::write(
        &registry,
        "billing_token_lifetime_s = 900\ndevice_token_lifetime_s = 3600\nbilling_rate_per_min = 100\ndevice_rate_per_min = 500\n\n[[clients]]\nclient_id = \"app-a\"\nclient_secret = \"secret-a\"\ntenants = [\"tenant-a\"]\nbilling = true\n",
    )
    .unwrap();
    let key_file = dir.path().join("admin.key");
    let with_registry = ["--config", registry.to_str().unwrap(), "--allow-host", "ci-emulator"];
    for args in [&[][..], &with_registry[..]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_billsync"))
            .arg("emulator")
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--admin-key-file", key_file.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (port, key) = read_banner(child.stdout.take().unwrap());
        let (client, secret) = if args.is_empty() { ("app-acme", "secret-acme") } else { ("app-a", "secret-a") };
        let body = format!(
            "grant_type=client_credentials&client_id={client}&client_secret={secret}&scope=urn:oracle:iot:billing:write"
        );
        let token = raw_http(port, &format!(
            "POST /oauth2/v1/token HTTP/1.0\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
        .await;
        let admin = |host: &str, key: Option<&str>| {
            let key = key.map(|k| format!("X-Admin-Key: {k}\r\n")).unwrap_or_default();
            format!("GET /admin/counters HTTP/1.0\r\nHost: {host}\r\n{key}\r\n")
        };
        let without_key = raw_http(port, &admin("127.0.0.1", None)).await;
        let with_key = raw_http(port, &admin(&format!("localhost:{port}"), Some(&key))).await;
        let service_name = raw_http(port, &admin("ci-emulator", Some(&key))).await;
        let _ = child.kill();
        let _ = child.wait();
        assert!(token.starts_with("HTTP/1.0 200") || token.starts_with("HTTP/1.1 200"), "{token}");
        assert!(token.contains("urn:oracle:iot:billing:write"), "{token}");
        assert_eq!(key.len(), 32, "{key}");
        assert_eq!(std::fs::read_to_string(&key_file).unwrap().trim_end(), key);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
            // The next run finds the file readable by all: it must make it private again.
            std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        assert!(without_key.contains(" 401 ") && without_key.contains("admin_key_required"), "{without_key}");
        assert!(with_key.contains(" 200 ") && with_key.contains("tokens_issued"), "{with_key}");
        let allowed = if args.is_empty() { " 403 " } else { " 200 " };
        assert!(service_name.contains(allowed), "--allow-host {args:?}: {service_name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_with_their_code_and_requeued_after_the_fix() {
    // Arrange: the platform refuses meter water.flow (not registered).
    let env = env(&[("acme", "acme-prod-001", "app-acme")]).await;
    env.platform.reject_meter("water.flow", "unknown_meter");
    let at = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let poison = format!(
        r#"{{"event_id":"p1","device_id":"pump","meter":"water.flow","quantity":"2","unit":"m3","occurred_at":"{at}"}}"#
    );
    let file = write(env.dir.path(), "e.jsonl", &[line("a1", "\"1\""), poison, line("a2", "\"1\"")]);
    assert!(billsync(&env, &["enqueue", "--tenant", "acme", file.to_str().unwrap()], None).status.success());

    // Act: the refused event is dead-lettered; nothing is pending, so sync exits 0.
    let out = billsync(&env, &["sync"], None);
    assert!(out.status.success(), "{}", text(&out));
    let listed = billsync(&env, &["dead-letter", "list", "--tenant", "acme", "--json"], None);

    // Assert
    let v: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let dead = v["dead_letters"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{v}");
    assert_eq!((dead[0]["event_id"].as_str(), dead[0]["code"].as_str()), (Some("p1"), Some("unknown_meter")));
    assert_eq!(env.platform.stored_event_ids("acme-prod-001").len(), 2);

    // The platform-side fix, a requeue, a sync: delivered.
    env.platform.accept_meter("water.flow");
    let out = billsync(&env, &["dead-letter", "requeue", "--tenant", "acme", "p1"], None);
    assert!(text(&out).contains("acme: 1 event(s) back to pending"), "{}", text(&out));
    let out = billsync(&env, &["sync"], None);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(env.platform.stored_event_ids("acme-prod-001").len(), 3);
    let listed = billsync(&env, &["dead-letter", "list"], None);
    assert!(text(&listed).contains("no dead-lettered events"), "{}", text(&listed));
}

/// `billsync sync` in the background, its output to `out` (`Stdio::piped()` to read it).
fn spawn_sync(env: &Env, out: fn() -> Stdio) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_billsync"))
        .arg("--config")
        .arg(&env.config)
        .arg("sync")
        .env("SECRET_ACME", "secret-acme")
        .stdout(out())
        .stderr(out())
        .spawn()
        .unwrap()
}

/// A `sync` killed with SIGKILL anywhere, then started again at once, delivers everything: the
/// dead process's tenant lock went with it (no claim to wait out) and its leases are void (no
/// `lease_seconds` to wait out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_killed_anywhere_is_taken_over_by_an_immediate_restart() {
    use rand::Rng;
    let env = env(&[("acme", "acme-prod-001", "app-acme")]).await;
    small_batches(&env);
    // Slow answers, so that a kill lands mid-run.
    env.platform.inject(billsync_emulator::Fault::probability(billsync_emulator::FaultKind::Latency { ms: 40 }, 1.0));
    let mut enqueued = 0;
    let mut waits = Vec::new();
    for round in 0..10 {
        let lines: Vec<String> = (0..40).map(|i| line(&format!("k{round}-{i}"), "\"1\"")).collect();
        let file = write(env.dir.path(), &format!("r{round}.jsonl"), &lines);
        let out = billsync(&env, &["enqueue", "--tenant", "acme", file.to_str().unwrap()], None);
        assert!(out.status.success(), "{}", text(&out));
        enqueued += 40;

        let mut doomed = spawn_sync(&env, Stdio::null);
        tokio::time::sleep(Duration::from_millis(rand::thread_rng().gen_range(20..400))).await;
        doomed.kill().unwrap(); // SIGKILL
        doomed.wait().unwrap();

        let before = env.platform.stored_event_ids("acme-prod-001").len();
        let started = std::time::Instant::now();
        let restart = spawn_sync(&env, Stdio::piped);
        let mut first_request = None;
        while first_request.is_none() && started.elapsed() < Duration::from_secs(60) {
            if env.platform.stored_event_ids("acme-prod-001").len() > before || before == enqueued {
                first_request = Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let out = restart.wait_with_output().unwrap();
        assert!(out.status.success(), "round {round}: the restart did not finish the work:\n{}", text(&out));
        let mut stored = env.platform.stored_event_ids("acme-prod-001");
        assert_eq!(stored.len(), enqueued, "round {round}: every event once");
        stored.sort();
        stored.dedup();
        assert_eq!(stored.len(), enqueued, "round {round}: an event stored twice");
        waits.push(first_request.unwrap_or_default());
    }
    let s = status_json(&env);
    assert_eq!(s["tenants"][0]["pending"], 0, "{s}");
    assert_eq!(s["tenants"][0]["in_flight"], 0, "{s}");
    eprintln!("restart to its first delivered batch, per kill: {waits:?}");
}

/// `billsync demo`'s output, with `BILLSYNC_DEMO_MQTT` set to `mqtt` if given; it succeeded.
fn demo(mqtt: Option<&str>) -> String {
    let mut demo = Command::new(env!("CARGO_BIN_EXE_billsync"));
    demo.arg("demo").env_remove("RUST_LOG").env_remove("BILLSYNC_DEMO_MQTT").stdin(Stdio::null());
    if let Some(url) = mqtt {
        demo.env("BILLSYNC_DEMO_MQTT", url);
    }
    let out = demo.output().unwrap();
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert_eq!(shown.matches("device posted      globex: 400 events").count(), 2, "{shown}");
    assert!(shown.contains(r#"200 OK {"duplicates":0,"stored":400}"#), "{shown}");
    assert!(shown.contains("1 bad event: 400 Bad Request, line 1: quantity"), "{shown}");
    assert!(shown.contains("initech is blocked") && shown.contains("missing_scope"), "{shown}");
    assert!(shown.contains("globex-prod-001      800 events"), "{shown}");
    assert!(shown.contains("acme-prod-001       1200 events"), "{shown}");
    shown
}

#[test]
fn the_demo_tells_the_whole_story_with_a_device_posting_over_http() {
    let shown = demo(None);
    // A device publishing over MQTT when a broker answers at 127.0.0.1:1883, else a line
    // saying there is none.
    let published = shown.contains("mqtt device        acme: 200 events published at QoS 1 to mqtt://127.0.0.1:1883")
        && shown.contains("200 committed by the agent's MQTT ingest")
        && shown.contains("acme-prod-001       1200 events (200 of them from the MQTT device)")
        && shown.contains("enqueued           acme: 1000 events");
    let skipped = shown.contains("no MQTT broker is reachable at mqtt://127.0.0.1:1883 (")
        && shown.contains("the MQTT part is skipped")
        && shown.contains("enqueued           acme: 1200 events");
    assert!(published ^ skipped, "{shown}");
}

#[test]
fn the_demo_goes_on_without_an_mqtt_broker() {
    let shown = demo(Some("mqtt://127.0.0.1:1"));
    let line = shown.lines().find(|l| l.contains("no MQTT broker is reachable at mqtt://127.0.0.1:1 ("));
    assert!(line.is_some_and(|l| l.ends_with("the MQTT part is skipped")), "{shown}");
    assert!(shown.contains("enqueued           acme: 1200 events"), "{shown}");
    assert!(!shown.contains("from the MQTT device"), "{shown}");
}
