//! `spawn_app`: the real emulator on a free loopback port, a fresh SQLite outbox in a
//! temporary directory, and an `Agent` wired exactly as the binary wires it.

use std::time::Duration;

use billsync::Agent;
use billsync::config::Config;
use billsync::engine::SyncSettings;
use billsync_domain::{BillingEvent, EncodedEvent};
use billsync_emulator::{Emulator, EmulatorConfig};

pub struct TestApp {
    pub platform: Emulator,
    pub agent: Agent,
    /// Keeps the outbox's directory alive for the test's duration.
    pub _dir: tempfile::TempDir,
}

/// Logs only when `TEST_LOG` is set.
pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt().with_env_filter("info").with_test_writer().try_init();
    }
}

/// The demo tenants of the emulator's built-in registry: (name, tenant id, client id).
pub const ACME: (&str, &str, &str) = ("acme", "acme-prod-001", "app-acme");
pub const GLOBEX: (&str, &str, &str) = ("globex", "globex-prod-001", "app-globex");
pub const INITECH: (&str, &str, &str) = ("initech", "initech-prod-001", "app-initech");

pub async fn spawn_app(platform: EmulatorConfig, tenants: &[(&str, &str, &str)], sync: &str) -> TestApp {
    init_logs();
    let platform = Emulator::start(platform, "127.0.0.1:0".parse().unwrap()).await.expect("emulator starts");
    let dir = tempfile::tempdir().unwrap();
    let mut text = format!(
        "[platform]\nbase_url = \"{}\"\n\n[storage]\nurl = \"sqlite://{}\"\n\n[sync]\n{sync}\n",
        platform.base_url(),
        dir.path().join("outbox.db").display()
    );
    for (name, tenant_id, client) in tenants {
        let secret = client.replace("app-", "secret-");
        text.push_str(&format!(
            "\n[[tenants]]\nname = \"{name}\"\ntenant_id = \"{tenant_id}\"\napplication_id = \"{client}\"\nclient_secret = \"{secret}\"\n"
        ));
    }
    let config = Config::parse(&text, &dir.path().join("billsync.toml")).expect("valid test configuration");
    let settings =
        SyncSettings { initial_backoff: Duration::from_millis(20), give_up_after: 50, ..SyncSettings::default() };
    let agent = Agent::builder().config(config).settings(settings).build().await.expect("agent builds");
    TestApp { platform, agent, _dir: dir }
}

/// `n` valid events for a tenant, ids `<prefix>-000000`...
pub fn events(prefix: &str, n: usize) -> Vec<EncodedEvent> {
    let now = chrono::Utc::now();
    (0..n)
        .map(|i| {
            let json = serde_json::json!({
                "event_id": format!("{prefix}-{i:06}"),
                "device_id": format!("meter-{}", i % 10),
                "meter": "energy.active",
                "quantity": format!("{}.5", i % 100),
                "unit": "kWh",
                "occurred_at": (now - chrono::Duration::seconds(30)).to_rfc3339(),
            });
            BillingEvent::parse(&json.to_string(), now).unwrap().encode()
        })
        .collect()
}

/// The platform's stored ids for a tenant, sorted, and whether any id is there twice.
pub fn stored(app: &TestApp, tenant_id: &str) -> (Vec<String>, bool) {
    let mut ids = app.platform.stored_event_ids(tenant_id);
    let n = ids.len();
    ids.sort();
    ids.dedup();
    let twice = ids.len() != n;
    (ids, twice)
}
