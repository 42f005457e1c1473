//! A standalone emulator of the IoT cloud platform that billsync delivers billing events to
//! (Oracle IoT Cloud Platform is the reference), following `docs/platform.md` to the letter: a real
//! HTTP server with
//!
//! - the OAuth2 token endpoint `POST /oauth2/v1/token` (client credentials, `client_secret_post`,
//!   `client_secret_basic` and signed client assertions, `private_key_jwt`) issuing RS256 JWTs,
//!   its assertion-only twin `POST /iot/api/v2/oauth2/token`, and the JWKS at
//!   `GET /oauth2/v1/keys`;
//! - the billing endpoint `POST /iot/api/v2/billing/events` with every check of the contract
//!   (the deliberately vague `401 insufficient_claims`, `403`, `413`, `429`, per-event
//!   validation, deduplication per tenant) and its reconciliation twin `GET`;
//! - the telemetry endpoint `POST /iot/api/v2/devices/{device_id}/telemetry`, on which the
//!   thread's device-only token works;
//! - an audit log naming the precise reason of every refusal, counters, and an admin API
//!   (loopback peers naming a loopback `Host`, with the per-run [`Emulator::admin_key`] in
//!   `X-Admin-Key`) to change lifetimes and limits, grant and withdraw access, revoke tokens,
//!   rotate keys, inject faults (among them accepted events forgotten afterwards) and insert
//!   events as another sender would have posted them. Every admin operation is also a method
//!   of [`Emulator`].
//!
//! The claim checks and the event rules are the emulator's own: it is the independent referee
//! that billsync's client (its `BillingPolicy` and `EventRules`) is tested against, so it uses
//! neither and does not depend on `billsync-domain`.
//!
//! # Example
//!
//! The thread in a few lines: the misconfigured client's token is refused on billing with a
//! vague `401`, and only the audit log says why.
//!
//! ```
//! use billsync_emulator::{Emulator, EmulatorConfig, Reason};
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let emulator = Emulator::start(EmulatorConfig::builtin(), "127.0.0.1:0".parse()?).await?;
//! let http = reqwest::Client::new();
//! let token: serde_json::Value = http
//!     .post(emulator.token_url())
//!     .form(&[("grant_type", "client_credentials"), ("client_id", "app-initech"),
//!             ("client_secret", "secret-initech"), ("scope", "urn:oracle:iot:billing:write")])
//!     .send().await?
//!     .json().await?;
//! let refused = http
//!     .post(emulator.billing_url())
//!     .bearer_auth(token["access_token"].as_str().unwrap_or_default())
//!     .header("X-Tenant-ID", "initech-prod-001")
//!     .header("X-Application-ID", "app-initech")
//!     .json(&serde_json::json!({"events": []}))
//!     .send().await?;
//! assert_eq!(refused.status(), 401);
//! assert_eq!(emulator.audit()[0].reasons, [Reason::MissingScope, Reason::AudienceMissing]);
//! emulator.shutdown().await;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod access;
mod admin;
mod assertion;
mod audit;
mod client_key;
mod config;
mod control;
mod event;
mod faults;
mod http;
mod keys;
mod ratelimit;
mod server;
mod state;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use admin::{AdminError, SettingsUpdate};
pub use assertion::CLIENT_ASSERTION_TYPE;
pub use audit::{AUDIT_CAPACITY, AuditEntry, Counters, Reason};
pub use config::{ClientRegistration, ConfigError, DEFAULT_SEED, EmulatorConfig};
pub use faults::{Fault, FaultKind, FaultTarget, FaultTrigger};
pub use http::{DEFAULT_LIST_LIMIT, MAX_BATCH_EVENTS, MAX_BODY_BYTES, MAX_LIST_LIMIT};
pub use keys::{Jwk, Jwks, SigningAlg, UnknownAlg};
pub use ratelimit::WINDOW as RATE_WINDOW;
pub use server::HEADER_READ_TIMEOUT;
pub use state::{ClientInfo, Inserted, Settings, StoredEvent};

/// The path of the token endpoint.
pub const TOKEN_PATH: &str = "/oauth2/v1/token";
/// The path of the token endpoint that takes signed client assertions only
/// (docs/platform.md section 1.1).
pub const TOKEN_V2_PATH: &str = "/iot/api/v2/oauth2/token";
/// The path of the JWKS.
pub const KEYS_PATH: &str = "/oauth2/v1/keys";
/// The path of the billing events endpoint.
pub const BILLING_EVENTS_PATH: &str = "/iot/api/v2/billing/events";

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmulatorError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The first signing key could not be generated.
    #[error("cannot generate the signing key: {0}")]
    Key(String),
    /// A value of the configuration is refused (the admin key, an allowed host name).
    #[error("invalid emulator configuration: {0}")]
    Config(ConfigError),
    /// The random admin key could not be generated.
    #[error("cannot generate the admin key: {0}")]
    AdminKey(String),
    /// Waiting for Ctrl-C failed.
    #[error("cannot wait for Ctrl-C: {0}")]
    Signal(std::io::Error),
}

/// A running emulator. Dropping it stops the server too; [`Emulator::shutdown`] waits for
/// open requests to finish.
pub struct Emulator {
    state: Arc<state::AppState>,
    addr: SocketAddr,
    base_url: String,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl fmt::Debug for Emulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emulator").field("base_url", &self.base_url).finish_non_exhaustive()
    }
}

fn base_url_for(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip if ip.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    match ip {
        IpAddr::V4(v4) => format!("http://{v4}:{}", addr.port()),
        IpAddr::V6(v6) => format!("http://[{v6}]:{}", addr.port()),
    }
}

impl Emulator {
    /// Checks the admin access of `config` (generating the admin key unless it gives one),
    /// generates a signing key, binds `listen` (port 0 picks a free port) and serves until
    /// [`Emulator::shutdown`] or drop. Must be called within a Tokio runtime.
    ///
    /// # Errors
    /// [`EmulatorError::Config`] for a refused admin key or allowed host name,
    /// [`EmulatorError::AdminKey`] when no random admin key can be had,
    /// [`EmulatorError::Bind`] when the address cannot be bound, [`EmulatorError::Key`] when
    /// signing key generation fails.
    pub async fn start(config: EmulatorConfig, listen: SocketAddr) -> Result<Emulator, EmulatorError> {
        let access = access::AdminAccess::from_config(&config).map_err(|e| match e {
            access::AccessError::Config(e) => EmulatorError::Config(e),
            access::AccessError::Random(e) => EmulatorError::AdminKey(e.to_string()),
        })?;
        let key = tokio::task::spawn_blocking(keys::NewKey::generate)
            .await
            .map_err(|e| EmulatorError::Key(e.to_string()))?
            .map_err(|e| EmulatorError::Key(e.to_string()))?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| EmulatorError::Bind { addr: listen, source })?;
        let addr = listener.local_addr().map_err(|source| EmulatorError::Bind { addr: listen, source })?;
        let base_url = base_url_for(addr);
        let state = Arc::new(state::AppState::new(&config, keys::KeyRing::new(key), access, base_url.clone()));
        let router = http::router(Arc::clone(&state));
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(server::run(listener, router, rx, HEADER_READ_TIMEOUT));
        tracing::info!(%base_url, clients = config.clients.len(), "emulator listening");
        Ok(Emulator { state, addr, base_url, shutdown, task })
    }

    /// `http://127.0.0.1:PORT` (the loopback address when listening on all interfaces).
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// The token endpoint: [`Emulator::base_url`] + `/oauth2/v1/token`.
    pub fn token_url(&self) -> String {
        format!("{}{TOKEN_PATH}", self.base_url)
    }

    /// The assertion-only token endpoint: [`Emulator::base_url`] + `/iot/api/v2/oauth2/token`.
    /// Like [`Emulator::token_url`], it is also the `aud` an assertion posted to it must name.
    pub fn token_v2_url(&self) -> String {
        format!("{}{TOKEN_V2_PATH}", self.base_url)
    }

    /// The JWKS: [`Emulator::base_url`] + `/oauth2/v1/keys`.
    pub fn keys_url(&self) -> String {
        format!("{}{KEYS_PATH}", self.base_url)
    }

    /// The billing events endpoint: [`Emulator::base_url`] + `/iot/api/v2/billing/events`.
    pub fn billing_url(&self) -> String {
        format!("{}{BILLING_EVENTS_PATH}", self.base_url)
    }

    /// The telemetry endpoint of one device.
    pub fn telemetry_url(&self, device_id: &str) -> String {
        let device: String =
            percent_encoding::utf8_percent_encode(device_id, percent_encoding::NON_ALPHANUMERIC).collect();
        format!("{}/iot/api/v2/devices/{device}/telemetry", self.base_url)
    }

    /// The issuer (`iss`) of the tokens: the base URL.
    pub fn issuer(&self) -> String {
        self.base_url.clone()
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The key every admin request must carry in `X-Admin-Key`: the configured one
    /// ([`EmulatorConfig::admin_key`]) or 32 random hex digits generated at start.
    pub fn admin_key(&self) -> &str {
        self.state.admin.key()
    }

    /// Stops accepting, lets open requests finish (at most 5 s), and returns when the server
    /// has stopped.
    pub async fn shutdown(self) {
        // The server task holds the receiver until it ends: a send that finds none means it
        // has stopped already.
        if self.shutdown.send(true).is_err() {
            tracing::debug!("the emulator had stopped already");
        }
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the emulator's server task ended abnormally");
        }
    }

    /// A banner for the command line: the base URL, the endpoints and the registered clients
    /// (never their secrets, nor the admin key).
    pub fn describe(&self) -> String {
        let mut out = format!(
            "billsync emulator listening on {}\n  token endpoint: {}\n  token (v2):     {} (signed assertions only)\n  billing events: {}\n  admin API:      {}/admin (loopback only, with X-Admin-Key)\n  clients:\n",
            self.base_url,
            self.token_url(),
            self.token_v2_url(),
            self.billing_url(),
            self.base_url
        );
        for c in self.clients() {
            out.push_str(&format!(
                "    {:<20} tenants [{}]  billing: {}\n",
                c.client_id,
                c.tenants.join(", "),
                if c.billing { "yes" } else { "no" }
            ));
        }
        out
    }

    // --- reading --------------------------------------------------------------------------

    /// Every refused request so far (at most [`EmulatorConfig::audit_capacity`], by default
    /// [`AUDIT_CAPACITY`]; the oldest are dropped first).
    pub fn audit(&self) -> Vec<AuditEntry> {
        self.state.audit.entries()
    }

    /// How many audit entries the capacity has pushed out of the log since start.
    pub fn audit_dropped(&self) -> u64 {
        self.state.audit.dropped()
    }

    /// Empties the audit log.
    pub fn clear_audit(&self) {
        self.state.audit.clear();
    }

    /// The ids of the events stored for a tenant, in order of arrival (without the events a
    /// `lose_after_accept` fault forgot).
    pub fn stored_event_ids(&self, tenant_id: &str) -> Vec<String> {
        self.state.event_ids(tenant_id)
    }

    /// The events stored for a tenant, in order of arrival.
    pub fn stored_events(&self, tenant_id: &str) -> Vec<StoredEvent> {
        let Some(store) = self.state.existing_tenant(tenant_id) else { return Vec::new() };
        let s = store.lock().unwrap_or_else(|p| p.into_inner());
        s.events.iter().enumerate().map(|(i, h)| h.stored(i as u64 + 1)).collect()
    }

    /// The ids of the accepted events a `lose_after_accept` fault made the platform forget for
    /// a tenant, in order; an id stays listed after the event is posted (and stored) again.
    pub fn lost_event_ids(&self, tenant_id: &str) -> Vec<String> {
        self.state.lost_event_ids(tenant_id)
    }

    /// Request and event counters since start.
    pub fn counters(&self) -> Counters {
        self.state.counters.snapshot()
    }

    /// Current lifetimes and limits.
    pub fn settings(&self) -> Settings {
        self.state.settings()
    }

    /// The registered clients, without secrets.
    pub fn clients(&self) -> Vec<ClientInfo> {
        self.state.client_infos()
    }

    /// The JWKS as served.
    pub fn jwks(&self) -> Jwks {
        self.state.keys.jwks()
    }
}

/// Runs an emulator on `listen` until Ctrl-C, printing [`Emulator::describe`] and then a line
/// `admin key: KEY` to stdout first: what `billsync emulator --config emulator.toml --listen
/// 127.0.0.1:8787` does.
///
/// # Errors
/// As [`Emulator::start`], or [`EmulatorError::Signal`] when Ctrl-C cannot be awaited.
pub async fn serve_forever(config: EmulatorConfig, listen: SocketAddr) -> Result<(), EmulatorError> {
    let emulator = Emulator::start(config, listen).await?;
    print!("{}", emulator.describe());
    println!("admin key: {}", emulator.admin_key());
    let waited = tokio::signal::ctrl_c().await;
    println!("shutting down");
    emulator.shutdown().await;
    waited.map_err(EmulatorError::Signal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(base_url_for("0.0.0.0:8787".parse().unwrap()), "http://127.0.0.1:8787");
        assert_eq!(base_url_for("127.0.0.1:1".parse().unwrap()), "http://127.0.0.1:1");
        assert_eq!(base_url_for("[::]:2".parse().unwrap()), "http://[::1]:2");
    }

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn public_types_are_send_and_sync() {
        assert_send_sync::<Emulator>();
        assert_send_sync::<EmulatorConfig>();
        assert_send_sync::<AuditEntry>();
    }
}
