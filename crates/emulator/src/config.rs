//! The emulator's configuration: the client registry, token lifetimes, rate limits, the seed of
//! fault randomness, and who may use the admin API (its key and the extra `Host` names it
//! answers to). Built in code ([`EmulatorConfig::builtin`] plus setters) or read from the TOML
//! registry file ([`EmulatorConfig::from_toml_str`], which holds the registry part only).

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::audit::AUDIT_CAPACITY;

/// A client secret held by the emulator. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// Compares in time independent of where the first difference is.
    pub(crate) fn matches(&self, candidate: &str) -> bool {
        self.matches_bytes(candidate.as_bytes())
    }

    /// [`Secret::matches`] on raw bytes (a header value need not be UTF-8). A length mismatch
    /// never matches.
    pub(crate) fn matches_bytes(&self, b: &[u8]) -> bool {
        let a = self.0.as_bytes();
        let mut diff = a.len() ^ b.len();
        for (i, x) in a.iter().enumerate() {
            diff |= usize::from(x ^ b.get(i).copied().unwrap_or(!x));
        }
        diff == 0
    }

    /// The secret itself, for the one place that must show it (the admin key's owner).
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// One OAuth client registered with the emulated platform: its credentials, the tenants it
/// may act for, and whether it is registered for Billing Services.
///
/// `Debug` prints the client id, tenants and billing flag, never the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientRegistration {
    client_id: String,
    client_secret: Secret,
    tenants: Vec<String>,
    billing: bool,
}

impl ClientRegistration {
    /// A client with its secret, the tenants it is authorised for, and whether it is
    /// registered for Billing Services (a client that is not gets device-only tokens).
    pub fn new<T: Into<String>>(
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        tenants: impl IntoIterator<Item = T>,
        billing: bool,
    ) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: Secret::new(client_secret),
            tenants: tenants.into_iter().map(Into::into).collect(),
            billing,
        }
    }

    /// The OAuth client id, which is also the registered application id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The tenants the client is authorised for.
    pub fn tenants(&self) -> &[String] {
        &self.tenants
    }

    /// Whether the client is registered for Billing Services.
    pub fn billing(&self) -> bool {
        self.billing
    }

    pub(crate) fn secret(&self) -> &Secret {
        &self.client_secret
    }
}

impl fmt::Debug for ClientRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientRegistration")
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("tenants", &self.tenants)
            .field("billing", &self.billing)
            .finish()
    }
}

/// Why a registry file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The text is not TOML of the expected shape; the message names the line and, for an
    /// unknown key, the key.
    #[error("invalid emulator registry: {0}")]
    Toml(String),
    /// Two clients share a client id.
    #[error("client `{client_id}` is registered twice")]
    DuplicateClient {
        /// The repeated id.
        client_id: String,
    },
    /// A value is out of its range.
    #[error("`{key}`: {reason}")]
    Invalid {
        /// The key at fault (`clients[2].client_id`).
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// The whole configuration of an emulator.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    pub(crate) clients: Vec<ClientRegistration>,
    pub(crate) billing_token_lifetime: Duration,
    pub(crate) device_token_lifetime: Duration,
    pub(crate) billing_rate_per_min: Option<u32>,
    pub(crate) device_rate_per_min: Option<u32>,
    pub(crate) seed: u64,
    pub(crate) admin_key: Option<Secret>,
    pub(crate) allowed_hosts: Vec<String>,
    pub(crate) audit_capacity: usize,
}

/// The default seed of fault randomness.
pub const DEFAULT_SEED: u64 = 0xB111_5EED;

impl Default for EmulatorConfig {
    /// No clients; the reference platform's lifetimes (900 s / 3600 s) and limits (100 / 500 per
    /// minute); a random admin key at start; no `Host` names beyond loopback; an audit log of
    /// [`AUDIT_CAPACITY`] entries.
    fn default() -> Self {
        Self {
            clients: Vec::new(),
            billing_token_lifetime: Duration::from_secs(900),
            device_token_lifetime: Duration::from_secs(3600),
            billing_rate_per_min: Some(100),
            device_rate_per_min: Some(500),
            seed: DEFAULT_SEED,
            admin_key: None,
            allowed_hosts: Vec::new(),
            audit_capacity: AUDIT_CAPACITY,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    billing_token_lifetime_s: Option<u64>,
    device_token_lifetime_s: Option<u64>,
    billing_rate_per_min: Option<u32>,
    device_rate_per_min: Option<u32>,
    seed: Option<u64>,
    #[serde(default)]
    clients: Vec<ClientSpec>,
}

/// A client as the registry file's `[[clients]]` and the admin API's `POST /admin/clients`
/// give it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientSpec {
    pub(crate) client_id: String,
    pub(crate) client_secret: String,
    #[serde(default)]
    tenants: Vec<String>,
    #[serde(default)]
    billing: bool,
}

impl ClientSpec {
    /// The registration it asks for.
    pub(crate) fn registration(self) -> ClientRegistration {
        ClientRegistration::new(self.client_id, self.client_secret, self.tenants, self.billing)
    }
}

impl EmulatorConfig {
    /// The demo registry used by `billsync demo`: `app-acme` and `app-globex` registered for
    /// billing, `app-initech` not (the thread's misconfigured client); lifetimes 900 s billing
    /// and 3600 s device; limits 100 and 500 requests per minute.
    pub fn builtin() -> Self {
        Self::default()
            .with_client(ClientRegistration::new("app-acme", "secret-acme", ["acme-prod-001"], true))
            .with_client(ClientRegistration::new("app-globex", "secret-globex", ["globex-prod-001"], true))
            .with_client(ClientRegistration::new("app-initech", "secret-initech", ["initech-prod-001"], false))
    }

    /// Reads the registry file format:
    ///
    /// ```toml
    /// billing_token_lifetime_s = 900
    /// device_token_lifetime_s = 3600
    /// billing_rate_per_min = 100   # 0 switches the limit off
    /// device_rate_per_min = 500
    /// seed = 42                    # optional: fault randomness
    ///
    /// [[clients]]
    /// client_id = "app-a"
    /// client_secret = "secret-a"
    /// tenants = ["tenant-a"]
    /// billing = true
    /// ```
    ///
    /// Missing top-level keys take the defaults of [`EmulatorConfig::default`].
    ///
    /// # Errors
    /// [`ConfigError::Toml`] for a syntax error or an unknown key (named in the message),
    /// [`ConfigError::DuplicateClient`] and [`ConfigError::Invalid`] for bad values.
    pub fn from_toml_str(s: &str) -> Result<Self, ConfigError> {
        let file: FileConfig = toml::from_str(s).map_err(|e| ConfigError::Toml(e.to_string().trim_end().to_owned()))?;
        let mut config = Self::default();
        if let Some(v) = file.billing_token_lifetime_s {
            config.billing_token_lifetime = Duration::from_secs(v);
        }
        if let Some(v) = file.device_token_lifetime_s {
            config.device_token_lifetime = Duration::from_secs(v);
        }
        if let Some(v) = file.billing_rate_per_min {
            config.billing_rate_per_min = (v > 0).then_some(v);
        }
        if let Some(v) = file.device_rate_per_min {
            config.device_rate_per_min = (v > 0).then_some(v);
        }
        if let Some(seed) = file.seed {
            config.seed = seed;
        }
        for (i, c) in file.clients.into_iter().enumerate() {
            let invalid = |key: &str, reason: &str| ConfigError::Invalid {
                key: format!("clients[{i}].{key}"),
                reason: reason.to_owned(),
            };
            if c.client_id.is_empty() || !c.client_id.chars().all(|ch| ch.is_ascii_graphic()) {
                return Err(invalid("client_id", "must be 1 or more visible ASCII characters"));
            }
            if c.client_secret.is_empty() {
                return Err(invalid("client_secret", "must not be empty"));
            }
            if let Some(t) = c.tenants.iter().find(|t| t.is_empty() || !t.chars().all(|ch| ch.is_ascii_graphic())) {
                return Err(invalid("tenants", &format!("{t:?} is not 1 or more visible ASCII characters")));
            }
            if config.clients.iter().any(|k| k.client_id == c.client_id) {
                return Err(ConfigError::DuplicateClient { client_id: c.client_id });
            }
            config.clients.push(c.registration());
        }
        Ok(config)
    }

    /// Adds a client, replacing any client with the same id.
    pub fn with_client(mut self, client: ClientRegistration) -> Self {
        self.clients.retain(|c| c.client_id != client.client_id);
        self.clients.push(client);
        self
    }

    /// Lifetime of tokens carrying a billing scope (default 900 s). Zero issues tokens that
    /// are already expired, which is useful in tests.
    pub fn billing_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.billing_token_lifetime = lifetime;
        self
    }

    /// Lifetime of device-only tokens (default 3600 s).
    pub fn device_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.device_token_lifetime = lifetime;
        self
    }

    /// Requests per (tenant, client) pair in any 60 s window on the billing endpoints;
    /// `None` switches the limit off (default `Some(100)`).
    pub fn billing_rate_per_min(mut self, limit: Option<u32>) -> Self {
        self.billing_rate_per_min = limit.filter(|&l| l > 0);
        self
    }

    /// Requests per (tenant, client) pair in any 60 s window on the device endpoints;
    /// `None` switches the limit off (default `Some(500)`).
    pub fn device_rate_per_min(mut self, limit: Option<u32>) -> Self {
        self.device_rate_per_min = limit.filter(|&l| l > 0);
        self
    }

    /// The seed of fault randomness, so probabilistic faults are reproducible.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The key every admin request must carry in `X-Admin-Key`, instead of a random one
    /// generated at start (32 hex digits, 128 bits). It must be 16 to 256 visible ASCII
    /// characters, else [`crate::Emulator::start`] refuses it. `Debug` never shows it.
    pub fn admin_key(mut self, key: impl Into<String>) -> Self {
        self.admin_key = Some(Secret::new(key));
        self
    }

    /// Also answers admin requests whose `Host` names `name` (any port), beside `localhost`,
    /// `127.0.0.1` and `[::1]`: for a container's or CI service's name. Repeatable. The name
    /// is compared without regard to case; it must be visible ASCII without a port, `/` or `@`,
    /// else [`crate::Emulator::start`] refuses it.
    pub fn allow_host(mut self, name: impl Into<String>) -> Self {
        self.allowed_hosts.push(name.into());
        self
    }

    /// The extra `Host` names the admin API answers to ([`EmulatorConfig::allow_host`]).
    pub fn allowed_hosts(&self) -> &[String] {
        &self.allowed_hosts
    }

    /// How many entries the audit log keeps (default [`AUDIT_CAPACITY`]; at least 1): older
    /// ones are dropped first, and counted ([`crate::Emulator::audit_dropped`]).
    pub fn audit_capacity(mut self, entries: usize) -> Self {
        self.audit_capacity = entries.max(1);
        self
    }

    /// The registered clients.
    pub fn clients(&self) -> &[ClientRegistration] {
        &self.clients
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_registry_file_format() {
        let c = EmulatorConfig::from_toml_str(
            r#"
billing_token_lifetime_s = 60
device_token_lifetime_s = 120
billing_rate_per_min = 0
device_rate_per_min = 7
seed = 9

[[clients]]
client_id = "app-a"
client_secret = "secret-a"
tenants = ["tenant-a"]
billing = true
"#,
        )
        .unwrap();
        assert_eq!(c.billing_token_lifetime, Duration::from_secs(60));
        assert_eq!(c.device_token_lifetime, Duration::from_secs(120));
        assert_eq!((c.billing_rate_per_min, c.device_rate_per_min, c.seed), (None, Some(7), 9));
        assert_eq!(c.clients()[0].client_id(), "app-a");
        assert!(c.clients()[0].secret().matches("secret-a"));
        assert!(!c.clients()[0].secret().matches("secret-b"));
        assert!(!c.clients()[0].secret().matches("secret-a2"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = EmulatorConfig::from_toml_str("billing_rate_per_minute = 3").unwrap_err().to_string();
        assert!(err.contains("billing_rate_per_minute"), "{err}");
        let err = EmulatorConfig::from_toml_str("[[clients]]\nclient_id = \"a\"\nclient_secret = \"s\"\nbiling = true")
            .unwrap_err()
            .to_string();
        assert!(err.contains("biling"), "{err}");
    }

    #[test]
    fn duplicate_clients_and_empty_secrets_are_refused() {
        let two = "[[clients]]\nclient_id = \"a\"\nclient_secret = \"s\"\n[[clients]]\nclient_id = \"a\"\nclient_secret = \"t\"";
        assert!(matches!(EmulatorConfig::from_toml_str(two), Err(ConfigError::DuplicateClient { .. })));
        let empty = "[[clients]]\nclient_id = \"a\"\nclient_secret = \"\"";
        let err = EmulatorConfig::from_toml_str(empty).unwrap_err().to_string();
        assert!(err.contains("clients[0].client_secret"), "{err}");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let shown = format!("{:?}", EmulatorConfig::builtin().admin_key("the-admin-key-0123"));
        assert!(!shown.contains("secret-acme") && shown.contains("app-acme"), "{shown}");
        assert!(!shown.contains("the-admin-key-0123"), "{shown}");
    }
}
