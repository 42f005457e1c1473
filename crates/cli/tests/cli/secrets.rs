//! No secret in any output channel. A marker secret sits in each secret-bearing field (an
//! inline `client_secret`, one from `client_secret_env`, one in a `client_secret_file`, the
//! password of the PostgreSQL URL, and a secret the platform refuses), and a tenant signs with a
//! private key (`private_key_file`) whose PEM body must never show either, and two tenants take
//! events on the ingest with tokens (`ingest_token_env`, `ingest_token_file`) that devices send
//! right and wrong, and the MQTT ingest logs in to a broker with a password (`password_env`;
//! nothing listens there, so it keeps retrying); every channel a user or
//! a log collector sees is searched for each marker: stdout and stderr of `sync` at `-vvv` with
//! trace logs, `status --json`, `doctor --json`, `/metrics` and `/healthz` of `run`, and the
//! errors for a malformed configuration (a syntax error on a secret's line, a URL with a
//! password, a secret file others can read).

use std::path::Path;
use std::process::{Command, Output, Stdio};

use billsync_emulator::{ClientRegistration, Emulator, EmulatorConfig};

use crate::fleet::Database;
use crate::{http_get, served_port, text};

const INLINE: &str = "MARK-inline-5f1d";
const FROM_ENV: &str = "MARK-env-90ab";
const IN_FILE: &str = "MARK-file-33c7";
const DB_PASSWORD: &str = "MARK-pg-71e0";
const REFUSED: &str = "MARK-refused-c4d2";
const INGEST_ENV: &str = "MARK-ingest-env-7a21b4c9";
const INGEST_FILE: &str = "MARK-ingest-file-3e9d0f12";
const MQTT_PASSWORD: &str = "MARK-mqtt-password-5b8e0d47";
const MARKERS: [&str; 8] = [INLINE, FROM_ENV, IN_FILE, DB_PASSWORD, REFUSED, INGEST_ENV, INGEST_FILE, MQTT_PASSWORD];

fn tenant(name: &str, secret_line: &str) -> String {
    format!(
        "[[tenants]]\nname = \"{name}\"\ntenant_id = \"t-{name}\"\napplication_id = \"app-{name}\"\n{secret_line}\n"
    )
}

fn billsync(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_billsync"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("MARK_SECRET", FROM_ENV)
        .env("REFUSED_SECRET", REFUSED)
        .env("MARK_INGEST", INGEST_ENV)
        .env("MARK_MQTT", MQTT_PASSWORD)
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The base64 lines of the tenant's private key, set once the key is made.
static KEY_LINES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

fn assert_no_marker(channel: &str, shown: &str) {
    for m in MARKERS {
        assert!(!shown.contains(m), "{channel} shows the secret {m}:\n{shown}");
    }
    for line in KEY_LINES.get().into_iter().flatten() {
        assert!(!shown.contains(line.as_str()), "{channel} shows the private key:\n{shown}");
    }
}

/// A P-256 key for tenant `keyed`, written to `keys/keyed.pem` (mode 600), and its client.
fn keyed_client(dir: &Path) -> ClientRegistration {
    let key = billsync::AssertionKey::generate(billsync::AssertionAlgorithm::Es256).unwrap();
    let pem = key.private_pem().unwrap();
    let lines = pem.lines().filter(|l| !l.starts_with("-----") && l.len() > 16).map(str::to_owned).collect();
    KEY_LINES.set(lines).unwrap();
    std::fs::create_dir(dir.join("keys")).unwrap();
    std::fs::write(dir.join("keys/keyed.pem"), pem.as_bytes()).unwrap();
    set_mode(&dir.join("keys/keyed.pem"), 0o600);
    ClientRegistration::with_public_key("app-keyed", &key.public_pem().unwrap(), key.key_id(), ["t-keyed"], true)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_any_output_channel() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = EmulatorConfig::builtin().with_client(keyed_client(dir.path()));
    for (name, secret) in [("inline", INLINE), ("env", FROM_ENV), ("file", IN_FILE)] {
        registry =
            registry.with_client(ClientRegistration::new(format!("app-{name}"), secret, [format!("t-{name}")], true));
    }
    let platform = Emulator::start(registry, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let db = Database::create().await;
    let secret_file = dir.path().join("secret.txt");
    std::fs::write(&secret_file, format!("{IN_FILE}\n")).unwrap();
    set_mode(&secret_file, 0o600);
    let ingest_file = dir.path().join("ingest.token");
    std::fs::write(&ingest_file, format!("{INGEST_FILE}\n")).unwrap();
    set_mode(&ingest_file, 0o600);
    let url = db.url.replacen("postgres://postgres@", &format!("postgres://postgres:{DB_PASSWORD}@"), 1);
    assert!(url.contains(DB_PASSWORD), "{url}");
    // The MQTT ingest logs in with a password to a port where nothing listens.
    let mqtt = format!(
        "[ingest.mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nusername = \"u\"\npassword_env = \"MARK_MQTT\"\n\
         client_id = \"billsync-secrets-{}\"\n",
        crate::mqtt::free_port(),
        std::process::id()
    );
    let good = format!(
        "[platform]\nbase_url = \"{}\"\n[storage]\nurl = \"{url}\"\n[ingest]\nlisten = \"127.0.0.1:0\"\n{mqtt}{}{}{}{}{}",
        platform.base_url(),
        tenant(
            "keyed",
            &format!(
                "auth_method = \"private_key_jwt\"\nprivate_key_file = \"keys/keyed.pem\"\ntoken_url = \"{}\"",
                platform.token_v2_url()
            )
        ),
        tenant("inline", &format!("client_secret = \"{INLINE}\"\ningest_token_env = \"MARK_INGEST\"")),
        tenant("env", "client_secret_env = \"MARK_SECRET\""),
        tenant("file", "client_secret_file = \"secret.txt\"\ningest_token_file = \"ingest.token\""),
        tenant("refused", "client_secret_env = \"REFUSED_SECRET\""),
    );
    let config = dir.path().join("billsync.toml");
    std::fs::write(&config, &good).unwrap();
    set_mode(&config, 0o600);
    let events = dir.path().join("e.jsonl");
    let at = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    std::fs::write(
        &events,
        format!(r#"{{"event_id":"s1","device_id":"d","meter":"m","quantity":"1","unit":"kWh","occurred_at":"{at}"}}"#),
    )
    .unwrap();
    for name in ["keyed", "inline", "env", "file", "refused"] {
        let out = billsync(&config, &["enqueue", "--tenant", name, events.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
    }

    // Working runs: sync at -vvv (the refused tenant fails), status, doctor.
    let sync = billsync(&config, &["-vvv", "sync"]);
    assert_eq!(platform.stored_event_ids("t-inline").len(), 1, "{}", text(&sync));
    assert_eq!(platform.stored_event_ids("t-keyed").len(), 1, "{}", text(&sync));
    assert!(text(&sync).contains("refused"), "the refused tenant is reported: {}", text(&sync));
    for (channel, out) in [
        ("sync -vvv", sync),
        ("status --json", billsync(&config, &["status", "--json"])),
        ("doctor --json", billsync(&config, &["doctor", "--json"])),
    ] {
        assert!(out.stdout.len() + out.stderr.len() > 100, "{channel} says something");
        assert_no_marker(channel, &text(&out));
    }
    let (metrics, health, log) = served(&config, dir.path()).await;
    assert!(metrics.contains("billsync_"), "{metrics}");
    for (channel, shown) in [("/metrics", metrics), ("/healthz", health), ("run's log", log)] {
        assert_no_marker(channel, &shown);
    }

    // Broken configurations: each error names the line, key or file, never the secret.
    for (broken, says) in [
        (
            good.replace(&format!("client_secret = \"{INLINE}\""), &format!("client_secret = \"{INLINE}")),
            "client_secret",
        ),
        (good.replace(&format!("client_secret = \"{INLINE}\""), &format!("client_secret = {INLINE}")), "client_secret"),
        (good.replace(&format!("url = \"{url}\""), &format!("url = \"{url}\" trailing")), "url"),
        (
            good.replace(
                &format!("base_url = \"{}\"", platform.base_url()),
                &format!("base_url = \"ftp://u:{INLINE}@h\""),
            ),
            "base_url",
        ),
    ] {
        std::fs::write(&config, &broken).unwrap();
        let out = billsync(&config, &["doctor", "--json"]);
        assert!(!out.status.success() && text(&out).contains(says), "{}", text(&out));
        assert_no_marker("a configuration error", &text(&out));
    }
    std::fs::write(&config, &good).unwrap();
    set_mode(&secret_file, 0o644);
    let out = billsync(&config, &["status"]);
    assert!(!out.status.success() && text(&out).contains("chmod 600"), "{}", text(&out));
    assert_no_marker("a refused secret file", &text(&out));

    platform.shutdown().await;
    db.drop_it().await;
}

/// `/metrics` and `/healthz` of a running agent, and its log.
async fn served(config: &Path, dir: &Path) -> (String, String, String) {
    let log = dir.join("run.log");
    let mut run = Command::new(env!("CARGO_BIN_EXE_billsync"))
        .arg("--config")
        .arg(config)
        .args(["-vvv", "run", "--listen", "127.0.0.1:0"])
        .env("MARK_SECRET", FROM_ENV)
        .env("REFUSED_SECRET", REFUSED)
        .env("MARK_INGEST", INGEST_ENV)
        .env("MARK_MQTT", MQTT_PASSWORD)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("serving /metrics") {
        assert!(
            std::time::Instant::now() < deadline,
            "run did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let port = served_port(&log);
    // The MQTT ingest has tried to log in to its broker.
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("cannot reach the broker mqtt://") {
        assert!(
            std::time::Instant::now() < deadline,
            "run did not try the MQTT broker: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Devices post with the right token, and with one tenant's token to another.
    let shown = std::fs::read_to_string(&log).unwrap_or_default();
    let ingest = shown.split("taking events on ").nth(1).and_then(|s| s.split("/v1/").next()).unwrap().to_owned();
    let client = reqwest::Client::new();
    let at = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let event =
        format!(r#"{{"event_id":"i1","device_id":"d","meter":"m","quantity":"1","unit":"kWh","occurred_at":"{at}"}}"#);
    for (tenant, token, status) in
        [("inline", INGEST_ENV, 200), ("inline", INGEST_FILE, 401), ("file", INGEST_FILE, 200)]
    {
        let response = client
            .post(format!("{ingest}/v1/tenants/{tenant}/events"))
            .bearer_auth(token)
            .header("content-type", "application/x-ndjson")
            .body(event.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{tenant}");
        assert_no_marker("the ingest's answer", &response.text().await.unwrap());
    }
    let metrics = http_get(port, "/metrics").await.1;
    let health = http_get(port, "/healthz").await.1;
    assert!(health.contains("cannot reach the broker mqtt://"), "/healthz names the MQTT broker: {health}");
    let _ = Command::new("kill").args(["-TERM", &run.id().to_string()]).status();
    let _ = run.wait();
    (metrics, health, std::fs::read_to_string(&log).unwrap_or_default())
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A password written in `[ingest.mqtt] url` is refused (use `password_env`), and never shown:
/// not even when the URL does not parse.
#[test]
fn an_mqtt_url_with_a_password_is_refused_without_showing_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("billsync.toml");
    for (url, says) in [
        (format!("mqtt://u:{MQTT_PASSWORD}@127.0.0.1:1883"), "holds credentials"),
        // An invalid port: the URL does not parse.
        (format!("mqtt://u:{MQTT_PASSWORD}@127.0.0.1:99999"), "invalid port"),
    ] {
        std::fs::write(
            &config,
            format!(
                "[platform]\nbase_url = \"https://iot.example.com\"\n[storage]\nurl = \"sqlite://{}\"\n\
                 [ingest.mqtt]\nurl = \"{url}\"\n{}",
                dir.path().join("outbox.db").display(),
                tenant("acme", "client_secret_env = \"MARK_SECRET\"")
            ),
        )
        .unwrap();
        let out = billsync(&config, &["doctor", "--json"]);
        let shown = text(&out);
        assert!(!out.status.success() && shown.contains("ingest.mqtt.url") && shown.contains(says), "{url}: {shown}");
        assert_no_marker(&format!("the error for url = {url:?}"), &shown);
    }
}
