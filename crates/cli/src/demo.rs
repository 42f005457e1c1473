//! `billsync demo`: the whole story in one command, on the embedded defaults. It starts the
//! platform emulator in-process on a free loopback port, makes a temporary SQLite outbox,
//! enqueues sample events for the demo tenants, syncs them and prints what happened,
//! including the thread's misconfigured tenant, which billsync refuses to send for and explains,
//! and a tenant on a private key (`private_key_jwt`) instead of a secret. One tenant's events
//! come from a device posting them over HTTP to the agent's ingest, as devices on a LAN do.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use billsync::Agent;
use billsync::config::Config;
use billsync_domain::{BillingEvent, EncodedEvent};
use billsync_emulator::{ClientRegistration, Emulator, EmulatorConfig};

use crate::output::summary_table;

/// (local name, tenant id, client id, events to enqueue)
const TENANTS: [(&str, &str, &str, usize); 3] = [
    ("acme", "acme-prod-001", "app-acme", 1_200),
    ("globex", "globex-prod-001", "app-globex", 800),
    ("initech", "initech-prod-001", "app-initech", 40),
];

/// The tenant on a key: (local name, tenant id, client id, events to enqueue).
const KEYED: (&str, &str, &str, usize) = ("umbrella", "umbrella-prod-001", "app-umbrella", 300);

/// A fresh ES256 key for [`KEYED`], written to `dir/keys/umbrella.pem` (mode 600), and the
/// emulator's registry: the built-in one plus [`KEYED`]'s client with the public key.
fn keyed_registry(dir: &Path) -> anyhow::Result<(EmulatorConfig, String)> {
    let key = billsync::AssertionKey::generate(billsync::AssertionAlgorithm::Es256)?;
    let (name, tenant_id, client, _) = KEYED;
    let file = dir.join("keys").join(format!("{name}.pem"));
    crate::key::write_private(&file, key.private_pem()?.as_bytes())?;
    let client = ClientRegistration::with_public_key(client, &key.public_pem()?, key.key_id(), [tenant_id], true)?;
    Ok((EmulatorConfig::builtin().with_client(client), key.key_id().to_owned()))
}

/// [`KEYED`]'s section of the configuration, on the emulator's assertion-only endpoint.
fn keyed_config(token_v2_url: &str) -> String {
    let (name, tenant_id, client, _) = KEYED;
    format!(
        "\n[[tenants]]\nname = \"{name}\"\ntenant_id = \"{tenant_id}\"\napplication_id = \"{client}\"\n\
         auth_method = \"private_key_jwt\"\nprivate_key_file = \"keys/{name}.pem\"\ntoken_url = \"{token_v2_url}\"\n"
    )
}

/// The configuration a user would write for the emulator's built-in registry.
pub fn demo_config(base_url: &str, db: &Path) -> String {
    let mut text = format!("[platform]\nbase_url = \"{base_url}\"\n\n[storage]\nurl = \"sqlite://{}\"\n", db.display());
    for (name, tenant_id, client, _) in TENANTS {
        let secret = client.replace("app-", "secret-");
        text.push_str(&format!(
            "\n[[tenants]]\nname = \"{name}\"\ntenant_id = \"{tenant_id}\"\napplication_id = \"{client}\"\nclient_secret = \"{secret}\"\n"
        ));
    }
    text
}

/// Sample events for one tenant, timestamped a little before `now`.
pub fn sample_events(tenant: &str, n: usize, now: chrono::DateTime<chrono::Utc>) -> anyhow::Result<Vec<EncodedEvent>> {
    (0..n)
        .map(|i| {
            let at = now - chrono::Duration::seconds(60 + i as i64);
            let json = serde_json::json!({
                "event_id": format!("{tenant}-{:06}", i),
                "device_id": format!("meter-{:04}", i % 37),
                "meter": if i % 3 == 0 { "energy.reactive" } else { "energy.active" },
                "quantity": format!("{}.{:03}", i % 50, (i * 7) % 1000),
                "unit": "kWh",
                "occurred_at": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "attributes": { "site": format!("plant-{}", i % 5) },
            });
            Ok(BillingEvent::parse(&json.to_string(), now)?.encode())
        })
        .collect()
}

/// The tenant whose events a device posts over HTTP.
const DEVICE_TENANT: &str = "globex";

/// A device posts `events` to the agent's ingest in two requests of JSON Lines, then one bad
/// event, which is refused by name.
async fn device_posts(agent: &Agent, events: &[EncodedEvent]) -> anyhow::Result<()> {
    let config = agent.config().ingest.as_ref().context("the demo configuration has an [ingest] section")?;
    let stop = tokio_util::sync::CancellationToken::new();
    let (at, server) = crate::ingest::serve(agent.clone(), config, stop.clone()).await?;
    let url = format!("http://{at}/v1/tenants/{DEVICE_TENANT}/events");
    let client = reqwest::Client::new();
    let post = |body: String| {
        client.post(&url).header(reqwest::header::CONTENT_TYPE, "application/x-ndjson").body(body).send()
    };
    for half in events.chunks(events.len().div_ceil(2).max(1)) {
        let body = half.iter().map(EncodedEvent::json).collect::<Vec<_>>().join("\n");
        let response = post(body).await.context("the device's request to the ingest")?;
        let status = response.status();
        let answer = response.text().await.unwrap_or_default();
        println!("  device posted      {DEVICE_TENANT}: {} events to {url}: {status} {answer}", half.len());
    }
    let bad = r#"{"event_id":"bad-1","device_id":"meter-9","meter":"energy.active","quantity":1.5,"unit":"kWh","occurred_at":"2026-11-23T10:00:00Z"}"#;
    let response = post(bad.to_owned()).await.context("the device's request to the ingest")?;
    let status = response.status();
    let answer: serde_json::Value = response.json().await.unwrap_or_default();
    let first = &answer["errors"][0];
    println!(
        "  device posted      {DEVICE_TENANT}: 1 bad event: {status}, line {}: {}: {} (nothing of that request stored)",
        first["line"],
        first["field"].as_str().unwrap_or_default(),
        first["reason"].as_str().unwrap_or_default()
    );
    stop.cancel();
    let _ = server.await;
    Ok(())
}

/// Runs the demo.
///
/// # Errors
/// When the emulator cannot start or the outbox cannot be created.
pub async fn run() -> anyhow::Result<ExitCode> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let (registry, kid) = keyed_registry(dir.path())?;
    let emulator = Emulator::start(registry, "127.0.0.1:0".parse()?).await?;
    let db = dir.path().join("billsync.db");
    let text = demo_config(&emulator.base_url(), &db)
        + &keyed_config(&emulator.token_v2_url())
        + "\n[ingest]\nlisten = \"127.0.0.1:0\"\n";
    let config = Config::parse(&text, &dir.path().join("billsync.toml"))?;
    println!("billsync demo");
    println!(
        "  platform emulator  {} (built-in registry; app-initech is registered without Billing Services, as in the thread)",
        emulator.base_url()
    );
    println!("  outbox             {}", db.display());
    println!(
        "  {:<18} signs its token requests with its own key (private_key_jwt, ES256, key id {kid}) at {}",
        KEYED.0,
        emulator.token_v2_url()
    );
    let agent = Agent::builder().config(config).build().await?;
    let now = chrono::Utc::now();
    for (name, _, _, n) in TENANTS.into_iter().chain([KEYED]) {
        if name == DEVICE_TENANT {
            device_posts(&agent, &sample_events(name, n, now)?).await?;
            continue;
        }
        let report = agent.enqueue(name, &sample_events(name, n, now)?).await?;
        println!("  enqueued           {name}: {} events", report.stored);
    }
    println!("\nsyncing ...\n");
    let started = std::time::Instant::now();
    let reports = agent.sync_once().await;
    let status = agent.status().await?;
    print!("{}", summary_table(&reports, &status));
    println!("(in {:.2} s)", started.elapsed().as_secs_f64());
    for r in reports.iter().filter(|r| r.blocked.is_some()) {
        if let Some(b) = &r.blocked {
            println!(
                "\n{} is blocked: billsync checked the token the platform granted and sent nothing. It found:",
                r.name
            );
            for reason in &b.reasons {
                println!("  - {}: {}", reason.code, reason.hint);
            }
            println!("  Its events stay in the outbox until this is fixed; `billsync doctor` shows every check.");
        }
    }
    println!("\nthe platform now holds:");
    let mut ok = true;
    for (name, tenant_id, _, n) in TENANTS.into_iter().chain([KEYED]) {
        let held = emulator.stored_event_ids(tenant_id).len();
        println!("  {tenant_id:<18} {held:>5} events");
        if name != "initech" {
            ok &= held == n;
        }
    }
    emulator.shutdown().await;
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// What `billsync emulator` was asked for.
#[derive(Debug)]
pub struct EmulatorOptions {
    /// The registry file (without it: the built-in demo registry).
    pub registry: Option<PathBuf>,
    /// Where to listen.
    pub listen: SocketAddr,
    /// Where to write the admin key too.
    pub admin_key_file: Option<PathBuf>,
    /// Host names the admin API answers to beside the loopback names.
    pub allow_hosts: Vec<String>,
}

/// `billsync emulator`: serve the platform emulator (the registry file, or the built-in demo
/// registry) until Ctrl-C. Prints the banner and a line `admin key: KEY`, after writing the
/// key to the key file if one is asked for.
///
/// # Errors
/// An unreadable or invalid registry, a refused `--allow-host`, an address that cannot be
/// bound, or a key file that cannot be written.
pub async fn serve_emulator(options: EmulatorOptions) -> anyhow::Result<ExitCode> {
    let config = options.allow_hosts.into_iter().fold(registry(options.registry.as_deref())?, |c, h| c.allow_host(h));
    let emulator = Emulator::start(config, options.listen).await?;
    if let Some(path) = &options.admin_key_file {
        crate::key::write_private(path, format!("{}\n", emulator.admin_key()).as_bytes())
            .with_context(|| format!("cannot write the admin key to {}", path.display()))?;
    }
    print!("{}", emulator.describe());
    println!("  audit log:      {}/admin/audit", emulator.base_url());
    println!("admin key: {}\nCtrl-C to stop.", emulator.admin_key());
    crate::serve::shutdown_signal().await;
    emulator.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// The registry file's configuration, or the built-in demo registry.
fn registry(path: Option<&Path>) -> anyhow::Result<EmulatorConfig> {
    let Some(path) = path else { return Ok(EmulatorConfig::builtin()) };
    // Relative `public_key_file`s are read beside the registry file.
    EmulatorConfig::from_toml_file(path).with_context(|| format!("{}", path.display()))
}
