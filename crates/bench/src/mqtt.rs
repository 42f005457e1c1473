//! The MQTT ingest's figure: events/s committed by the real `billsync run` from single-event
//! QoS 1 messages published to a private mosquitto, against the single-event group commit of
//! `Agent::enqueue` (one event per call from many concurrent tasks) in the same run.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use billsync_domain::{Clock, EncodedEvent, SystemClock};
use billsync_emulator::Emulator;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

use crate::ingest::{announced, stop};
use crate::{
    Figure, ROUNDS, Res, agent, config_text, event_json, events, median, platform, start, throughput, tmp_root,
};

/// Concurrent MQTT publishers, each its own connection publishing one event per message.
const PUBLISHERS: usize = 4;
/// Messages a publisher may have waiting for the broker's `PUBACK`.
const PUBLISHER_INFLIGHT: u16 = 1_000;
/// Concurrent callers of `Agent::enqueue` in the baseline, one event per call.
const PRODUCERS: usize = 64;
/// Where the publishers publish (the agent's default topic, tenant `b0`), and what the agent
/// subscribes to.
const TOPIC: &str = "billing/b0/events";
const FILTER: &str = "billing/+/events";
/// The private broker's configuration beside its port: the broker's defaults (1,000 queued, 20
/// in flight per client) raised so that neither limit is what is measured: the agent's session
/// may have 1,000 messages in flight (the most `billsync run` takes in one run) and the broker
/// queues whatever the publishers get ahead of it.
const MOSQUITTO_CONF: &str =
    "allow_anonymous true\npersistence false\nmax_queued_messages 1000000\nmax_inflight_messages 1000\n";

/// What `billsync run` says when its `/metrics` listener is up.
const METRICS_LINE: &str = "billsync run: serving /metrics and /healthz on ";

/// `ingest_mqtt_qos1`: [`ROUNDS`] alternating rounds of the in-process single-event group
/// commit and of a fresh `billsync run` taking single-event QoS 1 messages from a private
/// mosquitto, each for the same clock on a fresh SQLite outbox. `None` (with a message) when
/// no mosquitto is installed.
pub(crate) async fn ingest_mqtt(bin: &Path, quick: bool) -> Res<Option<Figure>> {
    let Some(exe) = mosquitto() else {
        eprintln!("ingest_mqtt_qos1 skipped: no mosquitto on PATH or in /usr/sbin (apt-get install mosquitto)");
        return Ok(None);
    };
    let clock = if quick { Duration::from_secs(3) } else { Duration::from_secs(10) };
    let emu = start(platform(1, None)).await?;
    let broker = Broker::start(&exe).await?;
    // Room for 60,000 events/s, about twice what the baseline does on two cores.
    let pool = Arc::new(events("single", 60_000 * usize::try_from(clock.as_secs())?)?);
    let (mut mqtt, mut base, mut notes) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        base.push(group_commit_round(&emu, &pool, broker.port, clock).await?);
        let r = mqtt_round(bin, &emu, broker.port, round, clock).await?;
        mqtt.push(r.per_s);
        notes.push(r.note());
    }
    broker.stop().await;
    emu.shutdown().await;
    let whole = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
    let note = format!(
        "{PUBLISHERS} rumqttc publishers publish single-event JSON messages at QoS 1 for {clock:?} to a private \
         mosquitto 2 on loopback (persistence false, max_queued_messages 1000000, max_inflight_messages 1000), \
         which `billsync run` (release, [ingest.mqtt], persistent session) takes; the figure is the events the \
         agent committed (billsync_ingest_events_total{{result=\"stored\"}} on its /metrics) while the clock ran, \
         over that clock; delivery held off with [sync] requests_per_minute = 1; publishers, broker and agent \
         share the machine's cores; baseline: in-process Agent::enqueue of one event per call from {PRODUCERS} \
         concurrent tasks for the same clock (the outbox's group commit); fresh SQLite outbox (WAL + \
         synchronous=FULL) each round; median of {ROUNDS} alternating rounds: mqtt [{}], enqueue [{}]; rounds: {}",
        whole(&mqtt),
        whole(&base),
        notes.join("; ")
    );
    Ok(Some(throughput(
        "ingest_mqtt_qos1",
        median(&mqtt),
        "enqueue_sqlite_single_64_producers",
        median(&base),
        "",
        &note,
    )))
}

/// The `mosquitto` executable: on `PATH`, else in the sbin directories.
fn mosquitto() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    path.into_iter()
        .chain(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("mosquitto"))
        .find(|p| p.is_file())
}

/// A private mosquitto on a free loopback port.
struct Broker {
    port: u16,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Broker {
    async fn start(exe: &Path) -> Res<Self> {
        let dir = tempfile::tempdir_in(tmp_root())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(&conf, format!("listener {port} 127.0.0.1\n{MOSQUITTO_CONF}"))?;
        let log = dir.path().join("mosquitto.log");
        let mut child = tokio::process::Command::new(exe)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            let said = || std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(status) = child.try_wait()? {
                return Err(format!("mosquitto exited with {status}: {}", said()).into());
            }
            if Instant::now() > deadline {
                return Err(format!("mosquitto did not listen on {port} within 10 s: {}", said()).into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self { port, child, _dir: dir })
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// One tenant (`b0`) on a fresh SQLite outbox in `dir`, the MQTT ingest on the broker at
/// `port` with `client_id`, and delivery to `emu` limited to one request a minute.
fn config(emu: &Emulator, dir: &Path, port: u16, client_id: &str) -> String {
    let storage = format!("sqlite://{}", dir.join("outbox.db").display());
    let sync = "max_batch_events = 500\nrequests_per_minute = 1";
    config_text(&emu.base_url(), &storage, 1, sync)
        + &format!("\n[ingest.mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"{client_id}\"\n")
}

/// The baseline: [`PRODUCERS`] tasks each calling `Agent::enqueue` with one event of `pool` at
/// a time until the clock runs out (or the pool does), on a fresh outbox; events/s.
async fn group_commit_round(emu: &Emulator, pool: &Arc<Vec<EncodedEvent>>, port: u16, clock: Duration) -> Res<f64> {
    let dir = tempfile::tempdir_in(tmp_root())?;
    let agent = agent(&config(emu, dir.path(), port, "billsync-bench-baseline"), dir.path()).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + clock;
    let tasks: Vec<_> = (0..PRODUCERS)
        .map(|_| {
            let (agent, pool, next) = (agent.clone(), pool.clone(), next.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let Some(event) = pool.get(next.fetch_add(1, Ordering::Relaxed)) else { break };
                    agent.enqueue("b0", std::slice::from_ref(event)).await.map_err(|e| e.to_string())?;
                    n += 1;
                }
                Ok::<_, String>(n)
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    let elapsed = start.elapsed();
    drop(agent);
    if total as usize >= pool.len() {
        eprintln!("  (the single-event pool ran out before the clock: {total} events)");
    }
    eprintln!("  enqueue single (in process, {PRODUCERS} tasks): {total} events in {elapsed:.2?}");
    Ok(total as f64 / elapsed.as_secs_f64())
}

/// One round of the figure.
struct Round {
    per_s: f64,
    published: u64,
    in_clock: u64,
    drained: Option<Duration>,
    committed: u64,
    delivered: u64,
}

impl Round {
    fn note(&self) -> String {
        let drained = match self.drained {
            Some(d) => format!("all committed {:.1} s after the clock", d.as_secs_f64()),
            None => format!("{} committed when the round gave up waiting", self.committed),
        };
        format!(
            "{} published, {} committed in the clock, {drained}, {} delivered meanwhile",
            self.published, self.in_clock, self.delivered
        )
    }
}

/// The figure's round: the agent's session made, a fresh `billsync run` on it, the publishers
/// for `clock`; events/s committed in the clock.
async fn mqtt_round(bin: &Path, emu: &Emulator, port: u16, round: usize, clock: Duration) -> Res<Round> {
    let dir = tempfile::tempdir_in(tmp_root())?;
    let client_id = format!("billsync-bench-{}", uuid::Uuid::new_v4().simple());
    let cfg = dir.path().join("billsync.toml");
    std::fs::write(&cfg, config(emu, dir.path(), port, &client_id))?;
    make_session(port, &client_id).await?;
    let mut child = tokio::process::Command::new(bin)
        .arg("--config")
        .arg(&cfg)
        .args(["-q", "run", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let result = match announced(&mut child, METRICS_LINE).await {
        Ok(url) => measure(emu, &url, port, round, clock).await,
        Err(e) => Err(e),
    };
    stop(&mut child).await?;
    result
}

/// Makes the agent's persistent session and its subscription before the agent starts, so that
/// the broker keeps every message published from the first one, however long the agent's
/// connection takes.
async fn make_session(port: u16, client_id: &str) -> Res<()> {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_clean_session(false);
    let (client, mut events) = AsyncClient::new(options, 10);
    client.subscribe(FILTER, QoS::AtLeastOnce).await?;
    let session = async {
        loop {
            match events.poll().await.map_err(|e| e.to_string())? {
                Event::Incoming(Packet::SubAck(_)) => client.disconnect().await.map_err(|e| e.to_string())?,
                Event::Outgoing(Outgoing::Disconnect) => return Ok::<_, String>(()),
                _ => {}
            }
        }
    };
    Ok(tokio::time::timeout(Duration::from_secs(10), session).await.map_err(|_| "no SUBACK within 10 s")??)
}

/// Waits for the agent at `url` to be connected, runs the publishers for `clock`, reads what
/// the agent committed meanwhile, then waits (a while) for it to commit the rest.
async fn measure(emu: &Emulator, url: &str, port: u16, round: usize, clock: Duration) -> Res<Round> {
    let http = reqwest::Client::builder().no_proxy().build()?;
    wait_connected(&http, url).await?;
    let delivered = || emu.counters().events_stored.values().sum::<u64>();
    let before = delivered();
    let at: Arc<str> = (SystemClock.now() - chrono::Duration::minutes(1)).to_rfc3339().into();
    let start = Instant::now();
    let deadline = start + clock;
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| tokio::spawn(publish_until(port, format!("bench-pub-{round}-{p}"), deadline, at.clone())))
        .collect();
    tokio::time::sleep_until(deadline.into()).await;
    let (in_clock, _) = committed(&http, url).await?;
    let per_s = in_clock as f64 / start.elapsed().as_secs_f64();
    let mut published = 0;
    for p in publishers {
        published += p.await??;
    }
    // The rest: the broker holds what the agent has not taken yet.
    let give_up = Instant::now() + clock * 2;
    let taken = async || committed(&http, url).await.map(|(stored, duplicates)| stored + duplicates);
    let mut committed_now = taken().await?;
    while committed_now < published && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(100)).await;
        committed_now = taken().await?;
    }
    let drained = (committed_now >= published).then(|| deadline.elapsed());
    let round =
        Round { per_s, published, in_clock, drained, committed: committed_now, delivered: delivered() - before };
    eprintln!(
        "  ingest over MQTT ({PUBLISHERS} publishers, QoS 1, {clock:?}): {in_clock} events committed in the clock \
         ({per_s:.0}/s); {}",
        round.note()
    );
    Ok(round)
}

/// Polls `/healthz` until its `mqtt` check says the agent is connected (10 s at most).
async fn wait_connected(http: &reqwest::Client, url: &str) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health: serde_json::Value = http.get(format!("{url}/healthz")).send().await?.json().await?;
        let checks = health["checks"].as_array().cloned().unwrap_or_default();
        if checks.iter().any(|c| c["name"] == "mqtt" && c["status"] == "ok") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("billsync run did not connect to the broker within 10 s: {health}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The events the agent at `url` has committed from its ingest, from
/// `billsync_ingest_events_total` on its `/metrics`: `(stored, duplicates)`.
async fn committed(http: &reqwest::Client, url: &str) -> Res<(u64, u64)> {
    let text = http.get(format!("{url}/metrics")).send().await?.text().await?;
    let (mut stored, mut duplicates) = (0, 0);
    for line in text.lines().filter(|l| l.starts_with("billsync_ingest_events_total{")) {
        let value = || -> Res<u64> {
            let value = line.rsplit(' ').next().unwrap_or_default();
            Ok(value.parse::<f64>().map_err(|e| format!("{line}: {e}"))? as u64)
        };
        if line.contains("result=\"stored\"") {
            stored += value()?;
        } else if line.contains("result=\"duplicate\"") {
            duplicates += value()?;
        }
    }
    Ok((stored, duplicates))
}

/// One publisher: its own connection, one event per message at QoS 1 until `deadline`; then
/// waits for the broker's `PUBACK`s and disconnects. Returns the messages the broker
/// acknowledged.
async fn publish_until(port: u16, name: String, deadline: Instant, at: Arc<str>) -> Result<u64, String> {
    let mut options = MqttOptions::new(name.clone(), "127.0.0.1", port);
    options.set_inflight(PUBLISHER_INFLIGHT).set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(options, 1_000);
    let acked = Arc::new(AtomicU64::new(0));
    let poller = {
        let acked = acked.clone();
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(format!("publisher: {e}")),
                }
            }
        })
    };
    let mut sent = 0u64;
    while Instant::now() < deadline {
        let json = event_json(&format!("{name}-{sent}"), sent as usize, &at);
        client.publish(TOPIC, QoS::AtLeastOnce, false, json).await.map_err(|e| format!("publisher: {e}"))?;
        sent += 1;
    }
    let wait = Instant::now() + Duration::from_secs(10);
    while acked.load(Ordering::Relaxed) < sent && Instant::now() < wait {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    client.disconnect().await.map_err(|e| format!("publisher: {e}"))?;
    poller.await.map_err(|e| e.to_string())??;
    Ok(acked.load(Ordering::Relaxed))
}
