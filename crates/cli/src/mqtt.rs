//! The MQTT ingest of `billsync run` (`[ingest.mqtt]`): a persistent session at QoS 1 on the
//! devices' broker. A message is acknowledged (`PUBACK`) only once its events are committed
//! to the outbox, or it is in the quarantine; while the outbox pushes back nothing is
//! acknowledged, so the broker keeps the messages. The rules of a message are the library's
//! ([`Agent::take_messages`]); this module is the connection.
//!
//! Two tasks: the connection's event loop, which must keep polling for the session to stay up
//! (keep-alive, reconnection with capped exponential backoff, the subscription on each
//! connection), and the worker, which takes the messages the loop hands it, a run at a time,
//! and acknowledges them through the client.
//!
//! A message is acknowledged on the connection it arrived on, never on a later one: a packet id
//! names a message only within its session, and a broker that lost the session (restarted
//! without persistence) reuses the ids for new messages, which a late acknowledgement would
//! settle unread. A message stored after its connection dropped is left unacknowledged; if the
//! session survived, the broker sends it again and that copy (a duplicate in the outbox) is
//! acknowledged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use billsync::Agent;
use billsync::agent::{Message, Taken};
use billsync::config::MqttConfig;
use billsync::health::{Check, HealthStatus};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, SubscribeReasonCode};
use secrecy::ExposeSecret as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The largest message taken off the connection: MQTT's own limit, so that a message too large
/// to store (over 10 MiB) is quarantined rather than dropping the connection and coming back
/// for ever. Set the broker's `message_size_limit` to refuse such messages at publish time.
const MAX_PACKET: usize = 268_435_455;
/// The most messages taken in one run (one commit per tenant).
const MAX_RUN: usize = 1_000;
/// The first wait before reconnecting, doubled on each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait before reconnecting.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long held messages wait before they are taken again (the outbox pushing back).
const HOLD: Duration = Duration::from_secs(1);
/// The name of the `/healthz` check.
const CHECK: &str = "mqtt";

/// Connects to the broker and takes messages until `stop`; returns at once (the connection is
/// made in the background, retried until it succeeds).
///
/// # Errors
/// When the TLS configuration (`ca_file`) cannot be read.
pub fn serve(agent: Agent, config: &MqttConfig, stop: CancellationToken) -> anyhow::Result<JoinHandle<()>> {
    let (client, events) = AsyncClient::new(options(config)?, 64);
    let (tx, rx) = mpsc::unbounded_channel();
    report(&agent, HealthStatus::Degraded, format!("connecting to {}", config.url));
    let worker_stop = CancellationToken::new();
    let live = Arc::new(AtomicU64::new(0));
    let worker = Worker { agent: agent.clone(), client: client.clone(), live: live.clone() };
    let worker = tokio::spawn(worker.take(rx, worker_stop.clone()));
    let connection = Connection { agent, client, subscription: config.subscription(), url: config.url.clone(), live };
    Ok(tokio::spawn(async move {
        let mut events = events;
        tokio::select! {
            () = connection.poll(&mut events, tx) => {}
            () = stop.cancelled() => {}
        }
        // The run being stored finishes and is acknowledged; then the session is closed
        // cleanly (the broker keeps it, and what was not acknowledged, for the next start).
        worker_stop.cancel();
        let flush = async {
            let _ = worker.await;
            let _ = connection.client.disconnect().await;
            while let Ok(event) = events.poll().await {
                if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    break;
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), flush).await.is_err() {
            tracing::warn!("the MQTT ingest did not stop within 5 s; the broker redelivers what was not acknowledged");
        }
    }))
}

/// The client's options: the configured broker, client id and credentials, a persistent
/// session (`clean_session = false`), manual acknowledgements.
fn options(config: &MqttConfig) -> anyhow::Result<MqttOptions> {
    let mut options = MqttOptions::new(config.client_id.clone(), config.host.clone(), config.port);
    options
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(MAX_PACKET, 64 * 1024);
    if let Some(c) = &config.credentials {
        let password = c.password.as_ref().map(|p| p.expose_secret().to_owned()).unwrap_or_default();
        options.set_credentials(c.username.clone(), password);
    }
    if let Some(ca_file) = &config.tls {
        let tls = client_tls(ca_file.as_deref())
            .with_context(|| format!("cannot set up TLS for the MQTT broker {}", config.url))?;
        options.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::new(tls))));
    }
    Ok(options)
}

/// A rustls client (ring) trusting `ca_file`'s certificates, or the system's roots.
fn client_tls(ca_file: Option<&std::path::Path>) -> anyhow::Result<rustls::ClientConfig> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in
                CertificateDer::pem_file_iter(path).with_context(|| format!("cannot read {}", path.display()))?
            {
                let cert =
                    cert.with_context(|| format!("{} holds a certificate that cannot be read", path.display()))?;
                roots.add(cert).with_context(|| format!("{} holds a certificate rustls refuses", path.display()))?;
            }
            anyhow::ensure!(!roots.is_empty(), "{} holds no certificate", path.display());
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            anyhow::ensure!(added > 0, "no system root certificates found; set ca_file");
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn report(agent: &Agent, status: HealthStatus, detail: String) {
    agent.report_check(Check { name: CHECK.into(), status, detail });
}

/// The connection's side: polls the event loop, subscribes on each connection, hands
/// messages to the worker, and reconnects after a failure.
struct Connection {
    agent: Agent,
    client: AsyncClient,
    subscription: String,
    url: String,
    /// The number of the connection up now (from 1), 0 while there is none.
    live: Arc<AtomicU64>,
}

/// A message and the number of the connection it arrived on.
type Arrived = (u64, Publish);

impl Connection {
    async fn poll(&self, events: &mut EventLoop, tx: mpsc::UnboundedSender<Arrived>) {
        let mut backoff = FIRST_BACKOFF;
        let mut connection = 0;
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send((connection, p)).is_err() {
                        return;
                    }
                }
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    connection += 1;
                    self.live.store(connection, Ordering::SeqCst);
                    backoff = FIRST_BACKOFF;
                    tracing::info!(broker = %self.url, session_present = ack.session_present, "connected to the MQTT broker");
                    report(&self.agent, HealthStatus::Ok, format!("connected to {}", self.url));
                    let (client, filter) = (self.client.clone(), self.subscription.clone());
                    // Not awaited here: the request goes through the loop this task polls.
                    tokio::spawn(async move { client.subscribe(filter, QoS::AtLeastOnce).await });
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack.return_codes.iter().any(|c| matches!(c, SubscribeReasonCode::Failure)) {
                        let why = format!(
                            "{} refused the subscription to {} (see its acl_file)",
                            self.url, self.subscription
                        );
                        tracing::error!("{why}");
                        report(&self.agent, HealthStatus::Degraded, why);
                    } else {
                        tracing::info!(filter = %self.subscription, "subscribed");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    self.live.store(0, Ordering::SeqCst);
                    let why = format!("cannot reach the broker {}: {e}; retrying in {}", self.url, human(backoff));
                    tracing::warn!("{why}");
                    report(&self.agent, HealthStatus::Degraded, why);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) { format!("{} ms", d.as_millis()) } else { format!("{} s", d.as_secs()) }
}

/// The worker: takes the messages that arrived, a run at a time, and acknowledges each one
/// stored or quarantined; holds the rest (the outbox pushing back or failing) and takes them
/// again, acknowledging nothing meanwhile.
struct Worker {
    agent: Agent,
    client: AsyncClient,
    /// The connection up now (see [`Connection::live`]).
    live: Arc<AtomicU64>,
}

impl Worker {
    async fn take(self, mut rx: mpsc::UnboundedReceiver<Arrived>, stop: CancellationToken) {
        loop {
            let first = tokio::select! {
                p = rx.recv() => match p { Some(p) => p, None => return },
                () = stop.cancelled() => return,
            };
            let mut run = vec![first];
            while run.len() < MAX_RUN {
                match rx.try_recv() {
                    Ok(p) => run.push(p),
                    Err(_) => break,
                }
            }
            let mut warned = false;
            while !run.is_empty() {
                let messages: Vec<Message<'_>> =
                    run.iter().map(|(_, p)| Message { topic: p.topic.as_str(), payload: p.payload.as_ref() }).collect();
                let taken = self.agent.take_messages(&messages).await;
                let mut held = Vec::new();
                for ((on, p), t) in run.into_iter().zip(taken) {
                    match t {
                        Taken::Held { reason, .. } => {
                            if !warned {
                                tracing::warn!(%reason, "messages held: not acknowledged until the outbox takes them");
                                warned = true;
                            }
                            held.push((on, p));
                        }
                        _ => self.acknowledge(on, &p).await,
                    }
                }
                run = held;
                if !run.is_empty() {
                    tokio::select! {
                        () = tokio::time::sleep(HOLD) => {}
                        // Unacknowledged: the broker redelivers them to the next session.
                        () = stop.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Acknowledges a settled message, on the connection it arrived on only.
    async fn acknowledge(&self, on: u64, p: &Publish) {
        if self.live.load(Ordering::SeqCst) != on {
            tracing::debug!(
                pkid = p.pkid,
                "stored after its connection dropped: not acknowledged (a resent copy will be)"
            );
            return;
        }
        if let Err(e) = self.client.ack(p).await {
            tracing::warn!(error = %e, "cannot acknowledge a message; the broker redelivers it");
        }
    }
}
