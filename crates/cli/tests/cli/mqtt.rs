//! The MQTT ingest of `billsync run` (`[ingest.mqtt]`) against a Mosquitto broker of its own
//! per test: a message is acknowledged only once its events are committed or it is
//! quarantined, so whatever happens to the agent (stopped, crashed, pushed back) or to the
//! broker, every event reaches the platform exactly once.
//!
//! Mosquitto must be installed: `cargo xtask ci` installs it (scripts/ensure-mosquitto.sh) and
//! names it in `BILLSYNC_MOSQUITTO`; without that variable the tests look for `mosquitto` on
//! the `PATH` and at /usr/sbin/mosquitto, and fail when there is none.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

use crate::ingest::configure;
use crate::{Env, billsync, env, line, status_json, text};

/// The tenant the tests publish for, and its id on the platform.
const TOPIC: &str = "billing/acme/events";
const ACME: &str = "acme-prod-001";

/// The Mosquitto binary: `BILLSYNC_MOSQUITTO`, else `mosquitto` on the `PATH`, else
/// /usr/sbin/mosquitto (Debian's package puts it there, outside a user's `PATH`).
fn mosquitto_binary() -> PathBuf {
    const HOW: &str = "run the tests as the README says (`cargo xtask ci`, which installs Mosquitto with \
                       scripts/ensure-mosquitto.sh), or install the `mosquitto` package";
    if let Some(p) = std::env::var_os("BILLSYNC_MOSQUITTO").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "BILLSYNC_MOSQUITTO={} is not a file: {HOW}", p.display());
        return p;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("mosquitto"))
        .chain([PathBuf::from("/usr/sbin/mosquitto")])
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("the MQTT tests need the Mosquitto broker, and none was found: {HOW}"))
}

/// A port nothing listens on now (bound to port 0, then released).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A Mosquitto broker of the test's own on loopback: anonymous, no persistence, queue limits
/// raised; its log in its directory. Killed when dropped.
pub(crate) struct Broker {
    binary: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Broker {
    /// Starts a broker on a free port (another one if that port was taken meanwhile).
    pub(crate) async fn start() -> Self {
        let mut broker = Self { binary: mosquitto_binary(), dir: tempfile::tempdir().unwrap(), port: 0, child: None };
        let mut failures = Vec::new();
        for _ in 0..5 {
            broker.port = free_port();
            match broker.launch().await {
                Ok(()) => return broker,
                Err(why) => failures.push(why),
            }
        }
        panic!("mosquitto did not start:\n{}", failures.join("\n"));
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Everything the broker logged.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Kills the broker (SIGKILL: its sessions are gone, it has no persistence); its port is
    /// kept for [`Broker::restart`].
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port.
    pub(crate) async fn restart(&mut self) {
        self.stop();
        let mut failures = Vec::new();
        for _ in 0..5 {
            match self.launch().await {
                Ok(()) => return,
                Err(why) => failures.push(why),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("mosquitto did not start again on port {}:\n{}", self.port, failures.join("\n"));
    }

    /// Starts mosquitto on `self.port` and waits until it says it runs and the port answers.
    async fn launch(&mut self) -> Result<(), String> {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_queued_messages 100000\nmax_inflight_messages 100\nlog_dest stderr\nlog_type all\n",
                self.port
            ),
        )
        .unwrap();
        let log_path = self.dir.path().join("mosquitto.log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
        let logged_before = self.log().len();
        let mut child = Command::new(&self.binary)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let said = self.log().get(logged_before..).unwrap_or_default().to_owned();
            if let Some(status) = child.try_wait().unwrap() {
                return Err(format!("mosquitto on port {} exited ({status}):\n{said}", self.port));
            }
            // "mosquitto version 2.0.11 running" comes once its listener is open.
            if said.contains(" running")
                && tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok()
                && child.try_wait().unwrap().is_none()
            {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("mosquitto did not listen on port {} within 10 s:\n{said}", self.port));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Publishes each (topic, payload) at QoS 1 and waits for the broker's `PUBACK` of each.
pub(crate) async fn publish(broker: &Broker, messages: Vec<(String, Vec<u8>)>) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let mut options = MqttOptions::new(format!("test-publisher-{}-{n}", std::process::id()), "127.0.0.1", broker.port);
    options.set_keep_alive(Duration::from_secs(10)).set_inflight(100).set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(options, 100);
    let total = messages.len();
    let sender = tokio::spawn(async move {
        for (topic, payload) in messages {
            client.publish(topic, QoS::AtLeastOnce, false, payload).await.unwrap();
        }
        client
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut acked = 0;
    while acked < total {
        match tokio::time::timeout_at(deadline, events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                panic!("publishing to {}: {e} ({acked} of {total} acknowledged)\n{}", broker.url(), broker.log())
            }
            Err(_) => panic!("{acked} of {total} messages acknowledged by the broker within 20 s"),
        }
    }
    let client = sender.await.unwrap();
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(e) = events.poll().await {
            if matches!(e, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
}

/// One message per event, `PREFIX-0` to `PREFIX-(n-1)`, to acme's topic.
fn one_event_each(prefix: &str, range: std::ops::Range<usize>) -> Vec<(String, Vec<u8>)> {
    range.map(|i| (TOPIC.to_owned(), line(&format!("{prefix}-{i}"), "\"1\"").into_bytes())).collect()
}

fn ids(prefix: &str, range: std::ops::Range<usize>) -> HashSet<String> {
    range.map(|i| format!("{prefix}-{i}")).collect()
}

/// A running `billsync -v run` with the MQTT ingest (and no HTTP ingest).
struct Agent {
    child: Child,
    /// `http://127.0.0.1:PORT` of /metrics and /healthz.
    ops: String,
    /// Everything it wrote to stderr so far (drained by a thread).
    stderr: Arc<Mutex<String>>,
}

impl Agent {
    /// Starts `billsync run` on `config` and waits until it serves /healthz and has started
    /// its MQTT ingest.
    fn start(config: &Path, vars: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_billsync"))
            .arg("--config")
            .arg(config)
            .args(["-v", "run", "--listen", "127.0.0.1:0"])
            .env("SECRET_ACME", "secret-acme")
            .env("SECRET_INITECH", "secret-initech")
            .env("NO_COLOR", "1")
            .envs(vars.iter().copied())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (stderr, rx) = crate::stderr_lines(&mut child);
        let (mut ops, mut mqtt) = (None, false);
        let deadline = Instant::now() + Duration::from_secs(30);
        while ops.is_none() || !mqtt {
            let Ok(l) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
                let _ = child.kill();
                panic!("billsync run did not start: {}", stderr.lock().unwrap());
            };
            if let Some(rest) = l.strip_prefix("billsync run: serving /metrics and /healthz on ") {
                ops = Some(rest.trim().to_owned());
            }
            mqtt |= l.starts_with("billsync run: taking events from mqtt://");
        }
        Self { child, ops: ops.unwrap(), stderr }
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until the agent has subscribed `n` times (once per connection to a broker).
    async fn subscribed(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.log().lines().filter(|l| l.contains(" subscribed")).count() < n {
            assert!(Instant::now() < deadline, "the agent did not subscribe ({n}) within 20 s:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, and waits (at most 20 s) for a clean exit.
    fn terminate(&mut self) {
        assert!(Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the agent did not stop within 20 s of SIGTERM:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "{status:?}:\n{}", self.log());
    }

    /// The `/healthz` document.
    async fn health(&self) -> Value {
        reqwest::get(format!("{}/healthz", self.ops)).await.unwrap().json().await.unwrap()
    }

    /// The `/healthz` check named "mqtt".
    async fn mqtt_check(&self) -> Value {
        let health = self.health().await;
        let check = health["checks"].as_array().unwrap().iter().find(|c| c["name"] == "mqtt").cloned();
        check.unwrap_or_else(|| panic!("no mqtt check in /healthz: {health}"))
    }

    /// A series of `/metrics`, e.g. `billsync_ingest_events_total{tenant="acme",result="stored"}`.
    async fn metric(&self, series: &str) -> Option<f64> {
        let text = reqwest::get(format!("{}/metrics", self.ops)).await.unwrap().text().await.unwrap();
        text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `probe` every 100 ms until it gives `Ok`, for at most `secs`; the last `Err` says
/// what was seen when it fails.
async fn until<T>(secs: u64, what: &str, mut probe: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match probe().await {
            Ok(t) => return t,
            Err(seen) if Instant::now() > deadline => panic!("{what}: not within {secs} s; last seen: {seen}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Waits until the platform holds each of `want` for acme; then checks it holds nothing else,
/// each once, and that the platform never saw one of them twice (no resend).
async fn delivered_exactly_once(env: &Env, want: &HashSet<String>, secs: u64) {
    let held = until(secs, "every event on the platform", async || {
        let held = env.platform.stored_event_ids(ACME);
        let set: HashSet<&String> = held.iter().collect();
        let missing = want.iter().filter(|id| !set.contains(id)).count();
        if missing == 0 { Ok(held) } else { Err(format!("{missing} of {} missing", want.len())) }
    })
    .await;
    let unique: HashSet<String> = held.iter().cloned().collect();
    assert_eq!(unique.len(), held.len(), "an event is held twice");
    assert_eq!(&unique, want, "the platform holds exactly the events published");
    let duplicates = env.platform.counters().events_duplicate.get(ACME).copied().unwrap_or(0);
    assert_eq!(duplicates, 0, "the platform was sent an event twice");
}

/// The outbox's pending plus in-flight events of the first tenant, and its delivered ones.
fn outbox(env: &Env) -> (u64, u64) {
    let s = status_json(env);
    let t = &s["tenants"][0];
    (t["pending"].as_u64().unwrap() + t["in_flight"].as_u64().unwrap(), t["delivered"].as_u64().unwrap())
}

/// `billsync quarantine list --json`: the entries.
fn quarantine(env: &Env) -> Vec<Value> {
    let out = billsync(env, &["quarantine", "list", "--json"], None);
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    v["quarantine"].as_array().unwrap_or_else(|| panic!("{v}")).clone()
}

/// Acme on the emulator, fast delivery (no rate limits, a 1 s backoff ceiling), `[ingest.mqtt]`
/// on `broker` with `client_id` and `mqtt_extra`.
async fn setup(broker: &Broker, client_id: &str, mqtt_extra: &str) -> Env {
    let env = env(&[("acme", "acme-prod-001", "app-acme")]).await;
    env.platform.set_billing_rate_per_min(None);
    let id = format!("billsync-test-{}-{client_id}", std::process::id());
    configure(
        &env,
        &format!(
            "[sync]\nrequests_per_minute = 100000\nmax_backoff_seconds = 1\n\
             [ingest.mqtt]\nurl = \"{}\"\nclient_id = \"{id}\"\n{mqtt_extra}",
            broker.url()
        ),
        &[],
    );
    env
}

/// Holds delivery: every billing request is answered 503 until the faults are cleared.
fn hold_delivery(env: &Env) {
    env.platform.inject(billsync_emulator::Fault::probability(billsync_emulator::FaultKind::Unavailable, 1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_while_the_agent_is_down_are_delivered_after_it_starts() {
    // Arrange: the agent's persistent session exists on the broker; the agent is stopped.
    let broker = Broker::start().await;
    let env = setup(&broker, "down", "").await;
    let mut first = Agent::start(&env.config, &[]);
    first.subscribed(1).await;
    first.terminate();

    // Act: 200 messages while no agent runs, then the agent starts again.
    publish(&broker, one_event_each("down", 0..200)).await;
    let agent = Agent::start(&env.config, &[]);

    // Assert: every event once; the agent took each message once.
    delivered_exactly_once(&env, &ids("down", 0..200), 30).await;
    let stored = agent.metric("billsync_ingest_events_total{tenant=\"acme\",result=\"stored\"}").await;
    assert_eq!(stored, Some(200.0), "{}", agent.log());
    let duplicate = agent.metric("billsync_ingest_events_total{tenant=\"acme\",result=\"duplicate\"}").await;
    assert!(duplicate.unwrap_or(0.0) == 0.0, "a message was taken twice: {duplicate:?}");
    until(10, "the outbox says all 200 delivered", async || match outbox(&env) {
        (0, 200) => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
    assert!(quarantine(&env).is_empty());
    env.platform.shutdown().await;
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_receipt_and_commit_loses_nothing_the_broker_redelivers() {
    use std::os::unix::process::ExitStatusExt as _;
    // Arrange: the agent aborts just before it would commit what it received.
    let broker = Broker::start().await;
    let env = setup(&broker, "crash", "").await;
    let mut crashing = Agent::start(&env.config, &[("BILLSYNC_FAILPOINT", "ingest_before_commit")]);
    crashing.subscribed(1).await;

    // Act: one message of five events.
    let payload = crate::ingest::events("fp", 5).into_bytes();
    publish(&broker, vec![(TOPIC.to_owned(), payload)]).await;

    // Assert: the process died there, nothing stored; a restart gets the message again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let died = loop {
        if let Some(status) = crashing.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the failpoint did not fire within 20 s:\n{}", crashing.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(died.signal(), Some(6), "SIGABRT from the failpoint: {died:?}\n{}", crashing.log());
    // The stderr thread may still hold the last lines.
    until(5, "the failpoint named in the log", async || {
        let log = crashing.log();
        if log.contains("failpoint ingest_before_commit") { Ok(()) } else { Err(log) }
    })
    .await;
    assert_eq!(outbox(&env), (0, 0), "nothing stored");
    assert!(env.platform.stored_event_ids(ACME).is_empty());
    let agent = Agent::start(&env.config, &[]);
    delivered_exactly_once(&env, &ids("fp", 0..5), 30).await;
    let stored = agent.metric("billsync_ingest_events_total{tenant=\"acme\",result=\"stored\"}").await;
    assert_eq!(stored, Some(5.0), "{}", agent.log());
    assert!(quarantine(&env).is_empty());
    env.platform.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_message_lands_in_the_quarantine_exactly_once() {
    // Arrange
    let broker = Broker::start().await;
    let env = setup(&broker, "garbage", "").await;
    let mut agent = Agent::start(&env.config, &[]);
    agent.subscribed(1).await;

    // Act: garbage, an unknown tenant, a message holding one invalid event, a good message.
    let bad_event = [line("bad-1", "1.5"), line("beside-bad-1", "\"1\"")].join("\n");
    publish(
        &broker,
        vec![
            (TOPIC.to_owned(), b"this is not json {".to_vec()),
            ("billing/nobody/events".to_owned(), line("nobody-1", "\"1\"").into_bytes()),
            (TOPIC.to_owned(), bad_event.into_bytes()),
            (TOPIC.to_owned(), crate::ingest::events("good", 3).into_bytes()),
        ],
    )
    .await;

    // Assert: the good one delivered; each bad one quarantined once, by reason.
    delivered_exactly_once(&env, &ids("good", 0..3), 30).await;
    let entries = until(10, "three entries in the quarantine", async || {
        let q = quarantine(&env);
        if q.len() >= 3 { Ok(q) } else { Err(format!("{q:?}")) }
    })
    .await;
    assert_eq!(entries.len(), 3, "{entries:?}");
    let find = |payload_start: &str| -> Value {
        let found: Vec<&Value> =
            entries.iter().filter(|e| e["payload"].as_str().unwrap().starts_with(payload_start)).collect();
        assert_eq!(found.len(), 1, "{payload_start}: {entries:?}");
        found[0].clone()
    };
    let garbage = find("this is not json");
    let nobody = find(r#"{"event_id":"nobody-1""#);
    let invalid = find(r#"{"event_id":"bad-1""#);
    let reason = |e: &Value| e["reason"].as_str().unwrap().to_owned();
    assert_eq!(garbage["topic"], TOPIC);
    assert!(reason(&garbage).contains("line 1: json"), "{garbage}");
    assert_eq!(nobody["topic"], "billing/nobody/events");
    assert!(reason(&nobody).contains("unknown tenant") && reason(&nobody).contains("nobody"), "{nobody}");
    assert!(reason(&invalid).contains("line 1: quantity"), "{invalid}");
    assert!(!reason(&invalid).contains("line 2"), "only the bad event is named: {invalid}");
    assert_eq!(agent.metric("billsync_quarantined_messages_total").await, Some(3.0));

    // A restart: nothing is taken again (each message was acknowledged once settled). A
    // message published after the restart comes after any redelivery, so once it is on the
    // platform, a redelivery would have shown.
    agent.terminate();
    let agent = Agent::start(&env.config, &[]);
    agent.subscribed(1).await;
    publish(&broker, one_event_each("after", 0..1)).await;
    let mut want = ids("good", 0..3);
    want.extend(ids("after", 0..1));
    delivered_exactly_once(&env, &want, 30).await;
    assert_eq!(quarantine(&env).len(), 3, "not quarantined again");
    let quarantined = agent.metric("billsync_quarantined_messages_total").await;
    assert!(quarantined.unwrap_or(0.0) == 0.0, "quarantined again after the restart: {quarantined:?}");
    let stored = agent.metric("billsync_ingest_events_total{tenant=\"acme\",result=\"stored\"}").await;
    assert_eq!(stored, Some(1.0), "only the new message is taken after the restart:\n{}", agent.log());
    drop(agent);

    // Purge one by number; the tenant added to the configuration, requeue stores its entry
    // and exits 3 for the invalid one, still refused; purge --all empties the quarantine.
    let out = billsync(&env, &["quarantine", "purge", &garbage["id"].to_string()], None);
    assert!(out.status.success() && text(&out).contains("1 entry removed"), "{}", text(&out));
    assert_eq!(quarantine(&env).len(), 2);
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    let nobody_tenant = "[[tenants]]\nname = \"nobody\"\ntenant_id = \"nobody-prod-001\"\n\
                         application_id = \"app-acme\"\nclient_secret_env = \"SECRET_ACME\"\n";
    std::fs::write(&env.config, format!("{cfg}{nobody_tenant}")).unwrap();
    let out = billsync(&env, &["quarantine", "requeue", "--all"], None);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains(&format!("#{}: stored 1 event(s)", nobody["id"])), "{said}");
    assert!(
        said.contains(&format!("#{}: still refused", invalid["id"])) && said.contains("line 1: quantity"),
        "{said}"
    );
    let left = quarantine(&env);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["id"], invalid["id"]);
    let status = status_json(&env);
    let nobody_status = status["tenants"].as_array().unwrap().iter().find(|t| t["name"] == "nobody").cloned();
    assert_eq!(nobody_status.as_ref().map(|t| &t["pending"]), Some(&Value::from(1)), "{status}");
    let out = billsync(&env, &["quarantine", "purge", "--all"], None);
    assert!(out.status.success() && text(&out).contains("1 entry removed"), "{}", text(&out));
    assert!(quarantine(&env).is_empty());
    let said = text(&billsync(&env, &["quarantine", "list"], None));
    assert!(said.contains("the quarantine is empty"), "{said}");
    assert!(!env.platform.stored_event_ids(ACME).contains(&"beside-bad-1".to_owned()), "a refused message is all out");
    env.platform.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_in_a_shared_group_deliver_each_event_once() {
    // Arrange: two agents in one shared group, each with its own SQLite outbox, one platform.
    let broker = Broker::start().await;
    let env = setup(&broker, "group-a", "shared_group = \"billsync\"\n").await;
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    let other = env.dir.path().join("b.toml");
    std::fs::write(&other, cfg.replace("outbox.db", "outbox-b.db").replace("-group-a\"", "-group-b\"")).unwrap();
    assert_ne!(std::fs::read_to_string(&other).unwrap(), cfg);
    let a = Agent::start(&env.config, &[]);
    let b = Agent::start(&other, &[]);
    a.subscribed(1).await;
    b.subscribed(1).await;
    assert!(a.log().contains("$share/billsync/billing/+/events"), "{}", a.log());

    // Act
    publish(&broker, one_event_each("sg", 0..1000)).await;

    // Assert: the platform holds each event once, and was never sent one twice: each message
    // went to one agent.
    delivered_exactly_once(&env, &ids("sg", 0..1000), 30).await;
    let series = "billsync_ingest_events_total{tenant=\"acme\",result=\"stored\"}";
    let (by_a, by_b) = (a.metric(series).await.unwrap_or(0.0), b.metric(series).await.unwrap_or(0.0));
    eprintln!("agent a took {by_a} events, agent b {by_b}");
    assert_eq!(by_a + by_b, 1000.0, "each message taken by one agent");
    // Mosquitto hands a shared subscription's messages round robin.
    assert!(by_a > 0.0 && by_b > 0.0, "both agents took some: {by_a} and {by_b}");
    env.platform.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_broker_is_down_healthz_names_it_and_the_agent_reconnects() {
    // Arrange: 20 events in the outbox, not delivered yet.
    let mut broker = Broker::start().await;
    let env = setup(&broker, "reconnect", "").await;
    hold_delivery(&env);
    let agent = Agent::start(&env.config, &[]);
    agent.subscribed(1).await;
    publish(&broker, one_event_each("bd", 0..20)).await;
    until(10, "20 events in the outbox", async || match outbox(&env) {
        (20, 0) => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
    let check = agent.mqtt_check().await;
    assert_eq!(
        (check["status"].as_str(), check["detail"].as_str()),
        (Some("ok"), Some(&*format!("connected to {}", broker.url())))
    );

    // Act: the broker goes away.
    broker.stop();

    // Assert: /healthz names it; what is stored is delivered meanwhile.
    let check = until(5, "the mqtt check degraded", async || {
        let check = agent.mqtt_check().await;
        if check["status"] == "degraded" { Ok(check) } else { Err(check.to_string()) }
    })
    .await;
    let detail = check["detail"].as_str().unwrap();
    assert!(detail.starts_with(&format!("cannot reach the broker {}: ", broker.url())), "{check}");
    assert!(detail.contains("; retrying in "), "{check}");
    assert_eq!(agent.health().await["status"], "degraded");
    env.platform.clear_faults();
    delivered_exactly_once(&env, &ids("bd", 0..20), 20).await;
    assert_eq!(agent.mqtt_check().await["status"], "degraded", "the broker is still down");

    // The broker comes back (without the session: no persistence): the agent reconnects,
    // subscribes again, and takes what is published next.
    broker.restart().await;
    until(40, "the mqtt check ok again", async || {
        let check = agent.mqtt_check().await;
        if check["status"] == "ok" { Ok(()) } else { Err(check.to_string()) }
    })
    .await;
    agent.subscribed(2).await;
    publish(&broker, one_event_each("back", 0..1)).await;
    let mut want = ids("bd", 0..20);
    want.extend(ids("back", 0..1));
    delivered_exactly_once(&env, &want, 20).await;
    env.platform.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_backpressure_nothing_is_acknowledged_and_the_broker_keeps_the_messages() {
    // Arrange: at most 5 pending events; delivery held; the outbox full.
    let broker = Broker::start().await;
    let env = setup(&broker, "backpressure", "").await;
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, cfg.replacen("[storage]\n", "[storage]\nmax_pending_events = 5\n", 1)).unwrap();
    hold_delivery(&env);
    let mut agent = Agent::start(&env.config, &[]);
    agent.subscribed(1).await;
    publish(&broker, one_event_each("bp", 0..5)).await;
    until(10, "5 events in the outbox", async || match outbox(&env) {
        (5, 0) => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;

    // Act: 25 more messages than fit.
    publish(&broker, one_event_each("bp", 5..30)).await;

    // Assert: held, not taken: the outbox stays at its limit and pushes back.
    until(10, "the agent holds the messages", async || {
        let log = agent.log();
        if log.contains("messages held") { Ok(()) } else { Err(log) }
    })
    .await;
    let series = "billsync_ingest_events_total{tenant=\"acme\",result=\"backpressure\"}";
    assert!(agent.metric(series).await.unwrap_or(0.0) > 0.0, "{}", agent.log());
    for _ in 0..6 {
        assert_eq!(outbox(&env), (5, 0), "the agent took events past max_pending_events");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let health = agent.health().await;
    let outbox_check = health["checks"].as_array().unwrap().iter().find(|c| c["name"] == "outbox").cloned();
    assert_eq!(outbox_check.map(|c| c["detail"].clone()), Some("pushing back: max_pending_events".into()), "{health}");
    assert!(quarantine(&env).is_empty());

    // The agent dies holding them: nothing was acknowledged, so the broker gives them to the
    // next start; once delivery resumes, every message is delivered, once.
    let _ = agent.child.kill();
    let _ = agent.child.wait();
    let agent = Agent::start(&env.config, &[]);
    agent.subscribed(1).await;
    env.platform.clear_faults();
    delivered_exactly_once(&env, &ids("bp", 0..30), 30).await;
    until(10, "the outbox says all 30 delivered", async || match outbox(&env) {
        (0, 30) => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
    let stored = agent.metric("billsync_ingest_events_total{tenant=\"acme\",result=\"stored\"}").await;
    assert_eq!(stored, Some(25.0), "the restarted agent took the 25 held messages:\n{}", agent.log());
    assert!(quarantine(&env).is_empty());
    env.platform.shutdown().await;
}

/// A message held (the outbox pushing back) when the broker loses the session keeps the packet
/// id of that session. Acknowledging it once stored, on the next session, acknowledges
/// whichever message of the new session has that packet id: if that one is still held, the
/// broker drops it, and it is lost with the agent's next stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_held_over_a_lost_session_are_not_acknowledged_in_the_next_one() {
    // Arrange: at most 5 pending events. Acme's delivery is held for now; initech's never
    // happens (the emulator's initech lacks the billing scope), so its events stay pending.
    let mut broker = Broker::start().await;
    let env = env(&[("acme", "acme-prod-001", "app-acme"), ("initech", "initech-prod-001", "app-initech")]).await;
    env.platform.set_billing_rate_per_min(None);
    let id = format!("billsync-test-{}-lost-session", std::process::id());
    configure(
        &env,
        &format!(
            "[sync]\nrequests_per_minute = 100000\nmax_backoff_seconds = 1\n\
             [ingest.mqtt]\nurl = \"{}\"\nclient_id = \"{id}\"\n",
            broker.url()
        ),
        &[],
    );
    let limited = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, limited.replacen("[storage]\n", "[storage]\nmax_pending_events = 5\n", 1)).unwrap();
    hold_delivery(&env);
    let mut agent = Agent::start(&env.config, &[]);
    agent.subscribed(1).await;
    // The outbox full with acme's 5 events (packet ids 1 to 5), then one message of 5 events
    // for initech, held (packet id 6).
    publish(&broker, one_event_each("a", 0..5)).await;
    until(10, "acme's 5 events in the outbox", async || match outbox(&env) {
        (5, 0) => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
    let initech_topic = "billing/initech/events".to_owned();
    publish(&broker, vec![(initech_topic.clone(), crate::ingest::events("b", 5).into_bytes())]).await;
    until(10, "the agent holds initech's message", async || {
        let log = agent.log();
        if log.contains("messages held") { Ok(()) } else { Err(log) }
    })
    .await;

    // Act: the broker restarts without the session (no persistence); 10 messages come on the
    // new session (packet ids 1 to 10). Then acme's events are delivered: the outbox takes the
    // held message (5 events, full again) and holds the 10 new ones.
    broker.restart().await;
    agent.subscribed(2).await;
    let new_session: Vec<(String, Vec<u8>)> =
        (0..10).map(|i| (initech_topic.clone(), line(&format!("c-{i}"), "\"1\"").into_bytes())).collect();
    publish(&broker, new_session).await;
    // The broker hands them to the agent before the held message is taken again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.platform.clear_faults();
    let pending_initech = || status_json(&env)["tenants"][1]["pending"].as_u64().unwrap();
    until(20, "the held message's 5 events stored", async || match pending_initech() {
        5 => Ok(()),
        n => Err(format!("{n} pending for initech\n{}", agent.log())),
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pending_initech(), 5, "the new session's messages are held: the outbox is full");
    agent.terminate();

    // Assert: none of the new session's 10 messages was settled, so the broker gives all 10 to
    // the next start (here without the limit).
    let unlimited = std::fs::read_to_string(&env.config).unwrap().replace("max_pending_events = 5\n", "");
    std::fs::write(&env.config, unlimited).unwrap();
    let agent = Agent::start(&env.config, &[]);
    agent.subscribed(1).await;
    let mut last = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && last < 15 {
        last = pending_initech();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        last,
        15,
        "initech should hold 5 + the 10 messages of the new session; {} of those 10 were lost:\n{}\nbroker:\n{}",
        15u64.saturating_sub(last),
        agent.log(),
        broker.log()
    );
    env.platform.shutdown().await;
}
