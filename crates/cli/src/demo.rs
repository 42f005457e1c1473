//! `billsync demo`: the whole story in one command, on the embedded defaults. It starts the
//! platform emulator in-process on a free loopback port, makes a temporary SQLite outbox,
//! enqueues sample events for the demo tenants, syncs them and prints what happened,
//! including the thread's misconfigured tenant, which billsync refuses to send for and explains,
//! and a tenant on a private key (`private_key_jwt`) instead of a secret. One tenant's events
//! come from a device posting them over HTTP to the agent's ingest, as devices on a LAN do.
//! When an MQTT broker answers at 127.0.0.1:1883 (or at `BILLSYNC_DEMO_MQTT`), a device also
//! publishes some of another tenant's events at QoS 1, which the agent takes through its MQTT
//! ingest, as `billsync run` does; without one, the demo says so and goes on.

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
    let broker = mqtt_device::find_broker().await;
    let mut text = demo_config(&emulator.base_url(), &db)
        + &keyed_config(&emulator.token_v2_url())
        + "\n[ingest]\nlisten = \"127.0.0.1:0\"\n";
    if let Ok(broker) = &broker {
        text.push_str(&broker.config());
    }
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
    let over_mqtt = feed(&agent, &broker).await?;
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
    let ok = holdings(&emulator, &over_mqtt);
    emulator.shutdown().await;
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Each tenant's sample events: enqueued, posted over HTTP by a device ([`DEVICE_TENANT`]),
/// or, for [`mqtt_device::MQTT_TENANT`] when a broker answers, partly published over
/// MQTT by another. Returns the ids of the events taken over MQTT.
async fn feed(agent: &Agent, broker: &Result<mqtt_device::DemoBroker, String>) -> anyhow::Result<Vec<String>> {
    use mqtt_device::{MQTT_EVENTS, MQTT_TENANT};
    let now = chrono::Utc::now();
    let mut over_mqtt = Vec::new();
    for (name, _, _, n) in TENANTS.into_iter().chain([KEYED]) {
        let mut events = sample_events(name, n, now)?;
        if name == DEVICE_TENANT {
            device_posts(agent, &events).await?;
            continue;
        }
        let published = match broker {
            Ok(broker) if name == MQTT_TENANT => events.split_off(n.saturating_sub(MQTT_EVENTS)),
            Err(skipped) if name == MQTT_TENANT => {
                println!("{skipped}");
                Vec::new()
            }
            _ => Vec::new(),
        };
        let report = agent.enqueue(name, &events).await?;
        println!("  enqueued           {name}: {} events", report.stored);
        if let (Ok(broker), false) = (broker, published.is_empty()) {
            over_mqtt = mqtt_device::device_publishes(agent, broker, &published).await?;
        }
    }
    Ok(over_mqtt)
}

/// Prints what the platform holds per tenant (and how many of them came over MQTT); whether
/// every tenant but the misconfigured one has all its events.
fn holdings(emulator: &Emulator, over_mqtt: &[String]) -> bool {
    println!("\nthe platform now holds:");
    let mut ok = true;
    for (name, tenant_id, _, n) in TENANTS.into_iter().chain([KEYED]) {
        let held = emulator.stored_event_ids(tenant_id);
        let mqtt = held.iter().filter(|id| over_mqtt.contains(id)).count();
        if name == mqtt_device::MQTT_TENANT && !over_mqtt.is_empty() {
            println!("  {tenant_id:<18} {:>5} events ({mqtt} of them from the MQTT device)", held.len());
            ok &= mqtt == over_mqtt.len();
        } else {
            println!("  {tenant_id:<18} {:>5} events", held.len());
        }
        if name != "initech" {
            ok &= held.len() == n;
        }
    }
    ok
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

/// The demo's MQTT device: a broker found at 127.0.0.1:1883 (or `BILLSYNC_DEMO_MQTT`), a device
/// publishing some of one tenant's events to it at QoS 1, and the agent taking them through
/// its MQTT ingest ([`crate::mqtt::serve`], as `billsync run` does). Client ids and the topic
/// are this run's own; the agent's session is removed from the broker afterwards.
mod mqtt_device {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use anyhow::Context as _;
    use billsync::Agent;
    use billsync::config::TopicTemplate;
    use billsync_domain::EncodedEvent;
    use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS, SubscribeReasonCode};
    use tokio_util::sync::CancellationToken;

    /// The tenant some of whose events the MQTT device publishes.
    pub(super) const MQTT_TENANT: &str = "acme";
    /// How many of its events go over MQTT (the rest are enqueued).
    pub(super) const MQTT_EVENTS: usize = 200;
    /// Where the demo looks for a broker without `BILLSYNC_DEMO_MQTT`.
    const DEFAULT_BROKER: &str = "mqtt://127.0.0.1:1883";
    /// How long a broker has to answer before the MQTT part is skipped.
    const CONNECT_WITHIN: Duration = Duration::from_secs(1);
    /// How long the device and the ingest have for their part.
    const TAKE_WITHIN: Duration = Duration::from_secs(10);

    /// A broker that answered, and this run's suffix for client ids and the topic.
    pub(super) struct DemoBroker {
        host: String,
        port: u16,
        suffix: String,
    }

    /// The broker at `BILLSYNC_DEMO_MQTT` (default [`DEFAULT_BROKER`]) once it has answered
    /// within [`CONNECT_WITHIN`] and holds the agent's session; else the line that says the MQTT
    /// part is skipped.
    pub(super) async fn find_broker() -> Result<DemoBroker, String> {
        let url = std::env::var("BILLSYNC_DEMO_MQTT")
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_BROKER.to_owned());
        let skipped = |why: String| {
            format!("  mqtt device        no MQTT broker is reachable at {url} ({why}); the MQTT part is skipped")
        };
        let Some((host, port)) = address(&url) else {
            return Err(skipped("not an mqtt://host:port address".into()));
        };
        let broker = DemoBroker { host, port, suffix: run_suffix() };
        broker.make_session().await.map_err(skipped)?;
        Ok(broker)
    }

    /// `mqtt://host:port`, `host:port` or `host` (port 1883).
    fn address(url: &str) -> Option<(String, u16)> {
        let url = url.trim();
        let rest = url.strip_prefix("mqtt://").unwrap_or(url).trim_end_matches('/');
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6.split_once(']')?;
                (host, after.strip_prefix(':'))
            }
            None => match rest.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            },
        };
        let port = match port {
            Some(p) => p.parse().ok()?,
            None => 1883,
        };
        let plain = !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c));
        plain.then(|| (host.to_owned(), port))
    }

    /// Tells this run's client ids and topic from any other's.
    fn run_suffix() -> String {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
        format!("{:x}-{:x}", std::process::id(), nanos % (1 << 40))
    }

    impl DemoBroker {
        fn url(&self) -> String {
            if self.host.contains(':') {
                format!("mqtt://[{}]:{}", self.host, self.port)
            } else {
                format!("mqtt://{}:{}", self.host, self.port)
            }
        }

        fn agent_id(&self) -> String {
            format!("billsync-demo-{}", self.suffix)
        }

        fn topic(&self) -> String {
            format!("billsync-demo/{}/{{tenant}}/events", self.suffix)
        }

        /// The `[ingest.mqtt]` section of the demo's configuration.
        pub(super) fn config(&self) -> String {
            format!(
                "\n[ingest.mqtt]\nurl = \"{}\"\ntopic = \"{}\"\nclient_id = \"{}\"\n",
                self.url(),
                self.topic(),
                self.agent_id()
            )
        }

        fn client(&self, client_id: String, clean_session: bool) -> (AsyncClient, rumqttc::EventLoop) {
            let mut options = MqttOptions::new(client_id, self.host.clone(), self.port);
            options.set_clean_session(clean_session).set_keep_alive(Duration::from_secs(10));
            AsyncClient::new(options, 16)
        }

        /// Connects under the agent's client id (the broker must answer within
        /// [`CONNECT_WITHIN`]) and makes its persistent session with the subscription, so that
        /// the broker keeps the device's messages for the agent from the first one, however soon
        /// the agent's own connection comes up.
        async fn make_session(&self) -> Result<(), String> {
            let filter = TopicTemplate::parse(&self.topic())?.filter();
            let (client, mut events) = self.client(self.agent_id(), false);
            let connected = async {
                loop {
                    if let Event::Incoming(Packet::ConnAck(_)) = events.poll().await.map_err(|e| e.to_string())? {
                        return Ok::<_, String>(());
                    }
                }
            };
            tokio::time::timeout(CONNECT_WITHIN, connected).await.map_err(|_| "no answer within 1 s".to_owned())??;
            client.subscribe(filter, QoS::AtLeastOnce).await.map_err(|e| e.to_string())?;
            let subscribed = async {
                loop {
                    match events.poll().await.map_err(|e| e.to_string())? {
                        Event::Incoming(Packet::SubAck(ack)) => {
                            if ack.return_codes.iter().any(|c| matches!(c, SubscribeReasonCode::Failure)) {
                                return Err("it refused the subscription".to_owned());
                            }
                            client.disconnect().await.map_err(|e| e.to_string())?;
                        }
                        Event::Outgoing(Outgoing::Disconnect) => return Ok(()),
                        _ => {}
                    }
                }
            };
            tokio::time::timeout(TAKE_WITHIN, subscribed).await.map_err(|_| "no answer to a subscription".to_owned())?
        }

        /// Removes the agent's session from the broker (a clean session under its client id).
        async fn forget_session(&self) {
            let (client, mut events) = self.client(self.agent_id(), true);
            let forget = async {
                while let Ok(event) = events.poll().await {
                    match event {
                        Event::Incoming(Packet::ConnAck(_)) => {
                            let _ = client.disconnect().await;
                        }
                        Event::Outgoing(Outgoing::Disconnect) => return,
                        _ => {}
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), forget).await;
        }

        /// The device: one message per event at QoS 1 to `topic`, until the broker has
        /// acknowledged them all.
        async fn publish(&self, topic: &str, events: &[EncodedEvent]) -> anyhow::Result<()> {
            let (client, mut connection) = self.client(format!("billsync-demo-device-{}", self.suffix), true);
            let payloads: Vec<String> = events.iter().map(|e| e.json().to_owned()).collect();
            let sender = {
                let (client, topic) = (client.clone(), topic.to_owned());
                tokio::spawn(async move {
                    for payload in payloads {
                        client.publish(topic.as_str(), QoS::AtLeastOnce, false, payload).await?;
                    }
                    Ok::<_, rumqttc::ClientError>(())
                })
            };
            let acknowledged = async {
                let mut acked = 0;
                while acked < events.len() {
                    if let Event::Incoming(Packet::PubAck(_)) = connection.poll().await? {
                        acked += 1;
                    }
                }
                client.disconnect().await?;
                while let Ok(event) = connection.poll().await {
                    if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                        break;
                    }
                }
                Ok::<_, anyhow::Error>(())
            };
            tokio::time::timeout(TAKE_WITHIN, acknowledged)
                .await
                .context("the broker did not acknowledge the device's messages in time")??;
            sender.await??;
            Ok(())
        }
    }

    /// The device publishes `events` of [`MQTT_TENANT`] and the agent takes them through its
    /// MQTT ingest; prints one line saying so and returns their ids. Should the MQTT part fail
    /// midway, the events are enqueued directly instead (the line says so): the demo goes on.
    ///
    /// # Errors
    /// When that enqueue fails.
    pub(super) async fn device_publishes(
        agent: &Agent,
        broker: &DemoBroker,
        events: &[EncodedEvent],
    ) -> anyhow::Result<Vec<String>> {
        match take_over_mqtt(agent, broker, events).await {
            Ok(line) => {
                println!("{line}");
                Ok(events.iter().map(|e| e.event_id().as_str().to_owned()).collect())
            }
            Err(e) => {
                let report = agent.enqueue(MQTT_TENANT, events).await?;
                println!(
                    "  mqtt device        {MQTT_TENANT}: the MQTT part failed ({e:#}); its {} events were enqueued \
                     directly instead",
                    report.stored
                );
                Ok(Vec::new())
            }
        }
    }

    /// Serves the MQTT ingest while the device publishes, until the ingest has committed every
    /// event; then stops it and removes its session. The line to print.
    async fn take_over_mqtt(agent: &Agent, broker: &DemoBroker, events: &[EncodedEvent]) -> anyhow::Result<String> {
        let config = agent.config().mqtt.as_ref().context("the demo configuration has an [ingest.mqtt] section")?;
        let topic = config.topic.topic_for(MQTT_TENANT);
        let taken = || {
            agent.metrics().ingested_with(MQTT_TENANT, "stored")
                + agent.metrics().ingested_with(MQTT_TENANT, "duplicate")
        };
        let before = taken();
        let stop = CancellationToken::new();
        let ingest = crate::mqtt::serve(agent.clone(), config, stop.clone())?;
        let committed = async {
            broker.publish(&topic, events).await?;
            let deadline = tokio::time::Instant::now() + TAKE_WITHIN;
            while taken() - before < events.len() as u64 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let committed = taken() - before;
            anyhow::ensure!(
                committed >= events.len() as u64,
                "the MQTT ingest committed {committed} of {} events in time",
                events.len()
            );
            Ok(committed)
        }
        .await;
        stop.cancel();
        let _ = ingest.await;
        broker.forget_session().await;
        Ok(format!(
            "  mqtt device        {MQTT_TENANT}: {} events published at QoS 1 to {} on {topic}: {} committed by the \
             agent's MQTT ingest (each message acknowledged once committed)",
            events.len(),
            broker.url(),
            committed?
        ))
    }
}
