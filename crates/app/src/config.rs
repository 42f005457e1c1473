//! The configuration file (`billsync.toml`). Its keys are a contract: other tools generate it.
//! Unknown keys are errors naming the key and line; plain `http://` is refused for anything
//! but loopback; a file readable by others that holds an inline secret gets a warning.

mod credential;
pub use credential::Credential;
mod ingest;
mod mqtt;
pub use ingest::{IngestConfig, IngestTls};
pub use mqtt::{MqttConfig, MqttCredentials, TopicTemplate};
mod secret_file;
mod syntax;

use secrecy::{ExposeSecret as _, SecretString};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use billsync_auth::AuthMethod;
use billsync_domain::{
    ApplicationId, Audience, Batcher, ClientId, ClientSecret, RatePolicy, RefreshPolicy, Scope, Tenant, TenantId,
    TenantName,
};
pub use billsync_storage::Location;
use serde::Deserialize;
use url::Url;

/// A configuration problem, naming the file, key or tenant at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown or mistyped keys (the message names the line and
    /// column, never the text there, which may hold a secret).
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Line, column and toml's message (or, on a line that may hold a secret, the key only).
        message: String,
    },
    /// A value breaks a rule.
    #[error("{path}: {key}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key (`tenants[acme].tenant_id`).
        key: String,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    platform: RawPlatform,
    #[serde(default)]
    storage: RawStorage,
    #[serde(default)]
    sync: RawSync,
    #[serde(default)]
    reconcile: RawReconcile,
    ingest: Option<ingest::RawIngest>,
    #[serde(default)]
    tenants: Vec<RawTenant>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReconcile {
    share: Option<f64>,
    every_seconds: Option<u64>,
    repair: Option<bool>,
    keep_days: Option<u32>,
}

/// Reconciliation (`[reconcile]`): how it reads the platform, how often `run` does it, and
/// how long the outbox keeps what it compares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReconcileConfig {
    /// At most this share of a tenant's rate window goes to reads (`share`, default 0.2).
    pub share: f64,
    /// How often `run` reconciles each tenant it holds (`every_seconds`, default 86400);
    /// `None` for never (`0`).
    pub every: Option<Duration>,
    /// Whether `run` repairs what it finds (`repair`, default false: it reports only).
    pub repair: bool,
    /// How long the narrow record of each event is kept after the event occurred, and so how
    /// far back reconciliation can vouch (`keep_days`, default 35).
    pub keep: Duration,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            share: 0.2,
            every: Some(Duration::from_secs(86_400)),
            repair: false,
            keep: Duration::from_secs(35 * 86_400),
        }
    }
}

impl RawReconcile {
    fn validate(self, at: At<'_>) -> Result<ReconcileConfig, ConfigError> {
        let d = ReconcileConfig::default();
        let share = self.share.unwrap_or(d.share);
        if !(share > 0.0 && share <= 1.0) {
            return Err(at.invalid(
                "reconcile.share",
                format!("{share} is not a share of the rate window: give a number above 0 and at most 1"),
            ));
        }
        let keep = match self.keep_days {
            None => d.keep,
            Some(0) => {
                return Err(at.invalid(
                    "reconcile.keep_days",
                    "must be at least 1: reconciliation compares whole days of what the outbox keeps".into(),
                ));
            }
            Some(days) => Duration::from_secs(u64::from(days) * 86_400),
        };
        let every = match self.every_seconds {
            None => d.every,
            Some(0) => None,
            Some(s) => Some(Duration::from_secs(s)),
        };
        Ok(ReconcileConfig { share, every, repair: self.repair.unwrap_or(d.repair), keep })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlatform {
    base_url: String,
    token_url: Option<String>,
    jwks_url: Option<String>,
    billing_scope: Option<String>,
    billing_read_scope: Option<String>,
    billing_audience: Option<String>,
    ca_file: Option<PathBuf>,
    token_issuer: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    url: Option<String>,
    retention_days: Option<u32>,
    max_pending_events: Option<u64>,
    min_free_disk_mb: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSync {
    max_batch_events: Option<usize>,
    requests_per_minute: Option<u32>,
    refresh_at: Option<f64>,
    max_backoff_seconds: Option<u64>,
    request_timeout_seconds: Option<u64>,
    lease_seconds: Option<u64>,
    claim_ttl_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    name: String,
    tenant_id: String,
    application_id: String,
    client_id: Option<String>,
    /// Zeroized when the raw configuration is dropped.
    client_secret: Option<SecretString>,
    client_secret_env: Option<String>,
    client_secret_file: Option<PathBuf>,
    auth_method: Option<AuthMethod>,
    #[serde(default)]
    extra_token_params: BTreeMap<String, String>,
    #[serde(default)]
    verify_jwks: bool,
    #[serde(default)]
    allow_insecure_key_permissions: bool,
    private_key_file: Option<PathBuf>,
    client_assertion_file: Option<PathBuf>,
    key_id: Option<String>,
    assertion_lifetime_seconds: Option<u64>,
    token_url: Option<String>,
    ingest_token_env: Option<String>,
    ingest_token_file: Option<PathBuf>,
}

/// The platform's endpoints and what billing needs.
#[derive(Debug, Clone)]
pub struct PlatformConfig {
    /// The base URL; the billing endpoint is below it.
    pub base_url: Url,
    /// The token endpoint.
    pub token_url: Url,
    /// The JWKS endpoint (for `verify_jwks`).
    pub jwks_url: Url,
    /// The billing write scope.
    pub billing_scope: Scope,
    /// The billing read scope (`reconcile` lists the platform's events with it).
    pub billing_read_scope: Scope,
    /// The billing audience.
    pub billing_audience: Audience,
    /// Extra CA bundle.
    pub ca_file: Option<PathBuf>,
    /// The `iss` every access token must carry, exactly; `None`: not checked.
    pub token_issuer: Option<String>,
}

/// Where the outbox lives.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// A SQLite file or a PostgreSQL database (`url`, parsed).
    pub location: Location,
    /// How long delivered events are kept before compaction.
    pub retention: Duration,
    /// New events are refused (try again later) while this many are pending, over all tenants
    /// (`max_pending_events`; `None`: no limit, the default).
    pub max_pending_events: Option<u64>,
    /// SQLite: new events are refused while less than this is free on the outbox's disk
    /// (`min_free_disk_mb`, default 256 MiB; 0 turns the check off).
    pub min_free_disk: u64,
}

/// Pace and retries.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Batch limits.
    pub batcher: Batcher,
    /// Requests per sliding minute per tenant.
    pub rate: RatePolicy,
    /// When to refresh tokens.
    pub refresh: RefreshPolicy,
    /// Backoff ceiling.
    pub max_backoff: Duration,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// How long a lease holds events (`sync.lease_seconds`); `None` keeps the engine's default
    /// (120 s). After a crash, leased events return to pending only when their lease expires.
    pub lease: Option<Duration>,
    /// How long a tenant claim lasts without a heartbeat (`sync.claim_ttl_seconds`); `None`
    /// keeps the engine's default (30 s). After a crash, a restarted agent drains the tenant
    /// only once the dead agent's claim has expired.
    pub claim_ttl: Option<Duration>,
}

/// One tenant with its credentials.
#[derive(Debug)]
pub struct TenantConfig {
    /// Identity.
    pub tenant: Tenant,
    /// The client secret or private key (redacted in `Debug`).
    pub credential: Credential,
    /// The tenant's own token endpoint, instead of `[platform] token_url`.
    pub token_url: Option<Url>,
    /// How to authenticate.
    pub auth_method: AuthMethod,
    /// Extra token request parameters.
    pub extra_token_params: BTreeMap<String, String>,
    /// Verify token signatures against the JWKS.
    pub verify_jwks: bool,
    /// What its devices send to the ingest (`ingest_token_env` or `ingest_token_file`); without
    /// one, the tenant takes events on a loopback ingest only.
    pub ingest_token: Option<crate::ingest::IngestToken>,
}

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    /// The platform.
    pub platform: PlatformConfig,
    /// The outbox.
    pub storage: StorageConfig,
    /// Pace and retries.
    pub sync: SyncConfig,
    /// Reconciliation.
    pub reconcile: ReconcileConfig,
    /// The HTTP ingest of `run` (`[ingest] listen`); `None`: off.
    pub ingest: Option<IngestConfig>,
    /// The MQTT ingest of `run` (`[ingest.mqtt]`); `None`: off.
    pub mqtt: Option<MqttConfig>,
    /// The tenants.
    pub tenants: Vec<TenantConfig>,
    /// Non-fatal remarks (an inline secret in a world-readable file).
    pub warnings: Vec<String>,
}

impl Config {
    /// Loads and validates a configuration file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, key or tenant at fault.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut cfg = Self::parse(&text, path)?;
        if cfg.tenants.iter().any(|_| true) && text_has_inline_secret(&text) {
            if let Some(mode) = secret_file::permissions(path) {
                if mode & 0o077 != 0 {
                    cfg.warnings.push(format!(
                        "{} holds an inline client_secret and is readable by others (mode {:o}); run chmod 600 on it \
                         or use client_secret_env / client_secret_file",
                        path.display(),
                        mode & 0o777
                    ));
                }
            }
        }
        Ok(cfg)
    }

    /// Parses and validates configuration text; `path` is only used in messages and to
    /// resolve relative paths.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key or tenant at fault.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Syntax { path: path.into(), message: syntax::describe(text, &e) })?;
        let at = At(path);
        let platform = raw.platform.validate(at)?;
        let storage = raw.storage.validate(at)?;
        let sync = raw.sync.validate(at)?;
        let reconcile = raw.reconcile.validate(at)?;
        let mut tenants = Vec::new();
        let mut names = HashSet::new();
        let mut warnings = Vec::new();
        for (i, t) in raw.tenants.into_iter().enumerate() {
            let tenant = t.validate(i, at, &mut warnings)?;
            if !names.insert(tenant.tenant.name().clone()) {
                let key = format!("tenants[{}].name", tenant.tenant.name());
                return Err(at.invalid(&key, "appears twice; tenant names must be unique".into()));
            }
            tenants.push(tenant);
        }
        ingest::check_tokens_distinct(&tenants, at)?;
        let (ingest, mqtt) = match raw.ingest {
            Some(i) => i.validate(at, &tenants, &mut warnings)?,
            None => (None, None),
        };
        Ok(Self { platform, storage, sync, reconcile, ingest, mqtt, tenants, warnings })
    }

    /// The tenant with this local name.
    pub fn tenant(&self, name: &str) -> Option<&TenantConfig> {
        self.tenants.iter().find(|t| t.tenant.name().as_str() == name)
    }
}

/// The file being read, for messages and relative paths.
#[derive(Clone, Copy)]
struct At<'a>(&'a Path);

impl At<'_> {
    fn invalid(self, key: &str, reason: String) -> ConfigError {
        ConfigError::Invalid { path: self.0.into(), key: key.into(), reason }
    }

    fn url(self, key: &str, u: &str) -> Result<Url, ConfigError> {
        check_url(u).map_err(|r| self.invalid(key, r))
    }
}

impl RawPlatform {
    fn validate(self, at: At<'_>) -> Result<PlatformConfig, ConfigError> {
        let base_url = at.url("platform.base_url", self.base_url.trim_end_matches('/'))?;
        let token_url = match self.token_url {
            Some(u) => at.url("platform.token_url", &u)?,
            // Below the base URL's path, whatever it is.
            None => {
                at.url("platform.base_url", &format!("{}/oauth2/v1/token", base_url.as_str().trim_end_matches('/')))?
            }
        };
        let jwks_url = match self.jwks_url {
            Some(u) => at.url("platform.jwks_url", &u)?,
            // The token endpoint's origin.
            None => token_url.join("/oauth2/v1/keys").map_err(|e| at.invalid("platform.token_url", e.to_string()))?,
        };
        Ok(PlatformConfig {
            base_url,
            token_url,
            jwks_url,
            billing_scope: match self.billing_scope {
                Some(s) => Scope::parse(s).map_err(|e| at.invalid("platform.billing_scope", e.reason))?,
                None => Scope::billing_write(),
            },
            billing_read_scope: match self.billing_read_scope {
                Some(s) => Scope::parse(s).map_err(|e| at.invalid("platform.billing_read_scope", e.reason))?,
                None => Scope::billing_read(),
            },
            billing_audience: match self.billing_audience {
                Some(a) => Audience::parse(a).map_err(|e| at.invalid("platform.billing_audience", e.reason))?,
                None => Audience::billing(),
            },
            ca_file: self.ca_file.map(|p| relative_to(at.0, &p)),
            token_issuer: match self.token_issuer {
                Some(i) if i.trim().is_empty() => {
                    return Err(
                        at.invalid("platform.token_issuer", "must not be empty; leave it out to not check iss".into())
                    );
                }
                other => other,
            },
        })
    }
}

impl RawStorage {
    fn validate(self, at: At<'_>) -> Result<StorageConfig, ConfigError> {
        let url = self.url.unwrap_or_else(|| "sqlite://billsync.db".into());
        if self.max_pending_events == Some(0) {
            return Err(
                at.invalid("storage.max_pending_events", "must be at least 1; leave it out for no limit".into())
            );
        }
        Ok(StorageConfig {
            location: Location::parse(&url).map_err(|e| at.invalid("storage.url", e.to_string()))?,
            retention: Duration::from_secs(u64::from(self.retention_days.unwrap_or(7)) * 86_400),
            max_pending_events: self.max_pending_events,
            min_free_disk: self.min_free_disk_mb.unwrap_or(256).saturating_mul(1024 * 1024),
        })
    }
}

impl RawSync {
    fn validate(self, at: At<'_>) -> Result<SyncConfig, ConfigError> {
        let rpm = std::num::NonZeroU32::new(self.requests_per_minute.unwrap_or(100))
            .ok_or_else(|| at.invalid("sync.requests_per_minute", "must be at least 1".into()))?;
        let request_timeout = Duration::from_secs(self.request_timeout_seconds.unwrap_or(30).max(1));
        let lease = match self.lease_seconds {
            Some(secs) if secs < request_timeout.as_secs() => {
                return Err(at.invalid(
                    "sync.lease_seconds",
                    format!(
                        "{secs} is shorter than request_timeout_seconds ({}); a lease must outlive a request",
                        request_timeout.as_secs()
                    ),
                ));
            }
            secs => secs.map(Duration::from_secs),
        };
        let claim_ttl = match self.claim_ttl_seconds {
            Some(secs) if secs < 3 => {
                return Err(at.invalid("sync.claim_ttl_seconds", format!("{secs} is below the minimum of 3")));
            }
            secs => secs.map(Duration::from_secs),
        };
        Ok(SyncConfig {
            batcher: Batcher::new(self.max_batch_events.unwrap_or(500))
                .map_err(|e| at.invalid("sync.max_batch_events", e.to_string()))?,
            rate: RatePolicy::per_minute(rpm),
            refresh: RefreshPolicy::new(self.refresh_at.unwrap_or(0.8), Duration::from_secs(30))
                .map_err(|e| at.invalid("sync.refresh_at", e.to_string()))?,
            max_backoff: Duration::from_secs(self.max_backoff_seconds.unwrap_or(300).max(1)),
            request_timeout,
            lease,
            claim_ttl,
        })
    }
}

impl RawTenant {
    fn validate(self, i: usize, at: At<'_>, warnings: &mut Vec<String>) -> Result<TenantConfig, ConfigError> {
        let key = |field: &str| {
            format!("tenants[{}].{field}", if self.name.is_empty() { i.to_string() } else { self.name.clone() })
        };
        let name = TenantName::parse(self.name.clone()).map_err(|e| at.invalid(&key("name"), e.reason))?;
        let tenant_id = TenantId::parse(self.tenant_id.clone()).map_err(|e| at.invalid(&key("tenant_id"), e.reason))?;
        let application_id = ApplicationId::parse(self.application_id.clone())
            .map_err(|e| at.invalid(&key("application_id"), e.reason))?;
        let client_id = ClientId::parse(self.client_id.clone().unwrap_or_else(|| self.application_id.clone()))
            .map_err(|e| at.invalid(&key("client_id"), e.reason))?;
        let credential = self.credential(at, &key, warnings)?;
        let token_url = match &self.token_url {
            Some(u) => Some(at.url(&key("token_url"), u)?),
            None => None,
        };
        let ingest_token = ingest::token(
            self.ingest_token_env.as_deref(),
            self.ingest_token_file.as_ref(),
            self.allow_insecure_key_permissions,
            at,
            &key,
            warnings,
        )?;
        Ok(TenantConfig {
            tenant: Tenant::new(name, tenant_id, application_id, client_id),
            credential,
            token_url,
            auth_method: self.auth_method.unwrap_or_default(),
            extra_token_params: self.extra_token_params,
            verify_jwks: self.verify_jwks,
            ingest_token,
        })
    }

    /// The client secret, from exactly one of its three sources.
    fn secret(
        &self,
        at: At<'_>,
        key: &dyn Fn(&str) -> String,
        warnings: &mut Vec<String>,
    ) -> Result<ClientSecret, ConfigError> {
        match (&self.client_secret, &self.client_secret_env, &self.client_secret_file) {
            (Some(s), None, None) => Ok(ClientSecret::new(s.expose_secret())),
            (None, Some(var), None) => std::env::var(var).map(ClientSecret::new).map_err(|_| {
                at.invalid(&key("client_secret_env"), format!("the environment variable {var} is not set"))
            }),
            (None, None, Some(file)) => {
                let key = key("client_secret_file");
                let read = secret_file::read(&relative_to(at.0, file), &key, self.allow_insecure_key_permissions)
                    .map_err(|(_, reason)| at.invalid(&key, reason))?;
                warnings.extend(read.warning);
                Ok(ClientSecret::new(read.text))
            }
            (None, None, None) => Err(at.invalid(
                &key("client_secret"),
                "is missing; set one of client_secret, client_secret_env, client_secret_file".into(),
            )),
            _ => Err(at.invalid(
                &key("client_secret"),
                "set only one of client_secret, client_secret_env, client_secret_file".into(),
            )),
        }
    }
}

fn text_has_inline_secret(text: &str) -> bool {
    text.lines().any(|l| l.trim_start().starts_with("client_secret ") || l.trim_start().starts_with("client_secret="))
}

fn relative_to(config: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() { p.to_owned() } else { config.parent().unwrap_or(Path::new(".")).join(p) }
}

/// Parses a URL and checks it: `https://` anywhere; `http://` only for loopback hosts.
///
/// # Errors
/// A reason in plain words.
pub fn check_url(u: &str) -> Result<Url, String> {
    // Quoted in messages without its password, if it has one.
    let shown = syntax::without_password(u);
    let url = Url::parse(u).map_err(|e| format!("\"{shown}\" is not a URL: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        // Nor could they leak through a Debug of the configuration.
        return Err(format!(
            "\"{shown}\" holds credentials (user:password@); billsync authenticates with each tenant's client \
             credentials, so the URL must carry none"
        ));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" => {
            let loopback = match url.host() {
                Some(url::Host::Domain(d)) => d == "localhost",
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            if loopback {
                Ok(url)
            } else {
                Err(format!(
                    "\"{shown}\" uses plain http to a non-loopback host; use https (tokens and secrets travel on it)"
                ))
            }
        }
        other => Err(format!("\"{shown}\" has scheme {other}; use https")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use billsync_domain::BILLING_WRITE_SCOPE;

    const GOOD: &str = r#"
[platform]
base_url = "https://iot.example.com"

[[tenants]]
name = "acme"
tenant_id = "acme-prod-001"
application_id = "app-acme"
client_secret = "s3cret"
extra_token_params = { audience = "https://iot.oraclecloud.com/billing" }
"#;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("billsync.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn reconcile_settings_have_defaults_and_refuse_what_cannot_work() {
        let with = |extra: &str| GOOD.replace("[[tenants]]", &format!("[reconcile]\n{extra}\n[[tenants]]"));
        let d = parse(GOOD).unwrap().reconcile;
        assert_eq!(d, ReconcileConfig::default());
        assert_eq!(
            (d.every, d.repair, d.keep),
            (Some(Duration::from_secs(86_400)), false, Duration::from_secs(35 * 86_400))
        );
        let c = parse(&with("every_seconds = 0\nrepair = true\nkeep_days = 40\nshare = 0.5")).unwrap().reconcile;
        assert_eq!((c.every, c.repair, c.keep, c.share), (None, true, Duration::from_secs(40 * 86_400), 0.5));
        let e = parse(&with("keep_days = 0")).unwrap_err();
        assert!(e.contains("reconcile.keep_days") && e.contains("at least 1"), "{e}");
        let e = parse(&with("share = 0")).unwrap_err();
        assert!(e.contains("reconcile.share"), "{e}");
        let e = parse(&with("every_seconds = -5")).unwrap_err();
        assert!(e.contains("line 6") && e.contains("expected u64"), "{e}");
    }

    #[test]
    fn urls_and_the_storage_location_are_parsed_once_and_never_show_a_password() {
        let with = |extra: &str| GOOD.replace("[[tenants]]", &format!("{extra}\n[[tenants]]"));
        let text = with("[storage]\nurl = \"postgres://bob:pg-s3cret@db:5432/billing\"")
            .replace("https://iot.example.com\"", "https://iot.example.com/tenant-x/\"");
        let c = parse(&text).unwrap();
        assert_eq!(c.platform.token_url.as_str(), "https://iot.example.com/tenant-x/oauth2/v1/token");
        assert_eq!(c.platform.jwks_url.as_str(), "https://iot.example.com/oauth2/v1/keys");
        assert!(matches!(c.storage.location, Location::Postgres { .. }));
        let debug = format!("{c:?}");
        assert!(!debug.contains("pg-s3cret") && !debug.contains("s3cret\""), "{debug}");
        let e = parse(&with("[storage]\nurl = \"mysql://db/x\"")).unwrap_err();
        assert!(e.contains("storage.url") && e.contains("mysql"), "{e}");
    }

    #[test]
    fn token_issuer_is_optional_and_never_empty() {
        // Still inside [platform]: the line before [[tenants]].
        let with = |line: &str| GOOD.replace("[[tenants]]", &format!("{line}\n[[tenants]]"));
        assert_eq!(parse(GOOD).unwrap().platform.token_issuer, None);
        let c = parse(&with("token_issuer = \"https://idcs.example.com\"")).unwrap();
        assert_eq!(c.platform.token_issuer.as_deref(), Some("https://idcs.example.com"));
        let e = parse(&with("token_issuer = \" \"")).unwrap_err();
        assert!(e.contains("platform.token_issuer"), "{e}");
    }

    #[test]
    fn defaults_follow_the_platform() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.platform.token_url.as_str(), "https://iot.example.com/oauth2/v1/token");
        assert_eq!(c.platform.jwks_url.as_str(), "https://iot.example.com/oauth2/v1/keys");
        assert_eq!(c.platform.billing_scope.as_str(), BILLING_WRITE_SCOPE);
        assert_eq!(c.storage.location, Location::Sqlite { path: "billsync.db".into() });
        assert_eq!(c.sync.batcher.max_events(), 500);
        assert_eq!(c.sync.rate.limit(), 100);
        assert_eq!(c.tenants[0].tenant.client_id().as_str(), "app-acme");
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let e = parse(&GOOD.replace("tenant_id =", "tenant_idd =")).unwrap_err();
        assert!(e.contains("unknown field `tenant_idd`") && e.contains("line 7"), "{e}");
        let e = parse(&GOOD.replace("https://iot.example.com\"", "http://iot.example.com\"")).unwrap_err();
        assert!(e.contains("platform.base_url") && e.contains("plain http"), "{e}");
        assert!(parse(&GOOD.replace("https://iot.example.com\"", "http://127.0.0.1:8787\"")).is_ok());
        let e = parse(&GOOD.replace("client_secret = \"s3cret\"", "")).unwrap_err();
        assert!(e.contains("tenants[acme].client_secret: is missing"), "{e}");
        let e = parse(&format!("{GOOD}\n[sync]\nmax_batch_events = 501\n")).unwrap_err();
        assert!(e.contains("sync.max_batch_events: max_batch_events: 501 is not between 1 and 500"), "{e}");
        let e = parse(&format!("{GOOD}\n[sync]\nrefresh_at = 1.2\n")).unwrap_err();
        assert!(e.contains("sync.refresh_at"), "{e}");
        let e = parse(&GOOD.replace("acme-prod-001", "acme prod")).unwrap_err();
        assert!(e.contains("tenants[acme].tenant_id"), "{e}");
    }

    #[test]
    fn lease_and_claim_ttl_are_optional_and_checked() {
        let c = parse(GOOD).unwrap();
        assert_eq!((c.sync.lease, c.sync.claim_ttl), (None, None));
        let c =
            parse(&format!("{GOOD}\n[sync]\nrequest_timeout_seconds = 5\nlease_seconds = 10\nclaim_ttl_seconds = 6\n"))
                .unwrap();
        assert_eq!(c.sync.lease, Some(Duration::from_secs(10)));
        assert_eq!(c.sync.claim_ttl, Some(Duration::from_secs(6)));
        let e = parse(&format!("{GOOD}\n[sync]\nlease_seconds = 10\n")).unwrap_err();
        assert!(e.contains("sync.lease_seconds: 10 is shorter than request_timeout_seconds (30)"), "{e}");
        let e = parse(&format!("{GOOD}\n[sync]\nclaim_ttl_seconds = 1\n")).unwrap_err();
        assert!(e.contains("sync.claim_ttl_seconds"), "{e}");
    }

    #[test]
    fn a_world_readable_inline_secret_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("billsync.toml");
        std::fs::write(&p, GOOD).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(Config::load(&p).unwrap().warnings.len(), 1);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Config::load(&p).unwrap().warnings.is_empty());
    }

    #[test]
    fn secrets_from_env_and_file() {
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        let file = dir.path().join("secret.txt");
        std::fs::write(&file, "from-file\n").unwrap();
        let text = GOOD.replace("client_secret = \"s3cret\"", "client_secret_file = \"secret.txt\"");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = Config::parse(&text, &dir.path().join("billsync.toml")).unwrap_err().to_string();
        assert!(refused.contains("tenants[acme].client_secret_file") && refused.contains("chmod 600"), "{refused}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Config::parse(&text, &dir.path().join("billsync.toml")).unwrap();
        assert!(matches!(&c.tenants[0].credential, Credential::Secret(s) if s.secret() == "from-file"));
        let e = parse(&GOOD.replace("client_secret = \"s3cret\"", "client_secret_env = \"BILLSYNC_TEST_UNSET_VAR\""))
            .unwrap_err();
        assert!(e.contains("BILLSYNC_TEST_UNSET_VAR is not set"), "{e}");
    }
}
