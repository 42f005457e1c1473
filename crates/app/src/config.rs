//! The configuration file (`billsync.toml`). Its keys are a contract: other tools generate it.
//! Unknown keys are errors naming the key and line; plain `http://` is refused for anything
//! but loopback; a file readable by others that holds an inline secret gets a warning.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use billsync_domain::{
    ApplicationId, Audience, BILLING_AUDIENCE, BILLING_WRITE_SCOPE, Batcher, ClientId, ClientSecret, RatePolicy,
    RefreshPolicy, Scope, Tenant, TenantId, TenantName,
};
use serde::Deserialize;

/// A configuration problem, naming the file, key or tenant at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown or mistyped keys (the message names line and key).
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// toml's message, with line, column and key.
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
    tenants: Vec<RawTenant>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlatform {
    base_url: String,
    token_url: Option<String>,
    jwks_url: Option<String>,
    billing_scope: Option<String>,
    billing_audience: Option<String>,
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    url: Option<String>,
    retention_days: Option<u32>,
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
    client_secret: Option<String>,
    client_secret_env: Option<String>,
    client_secret_file: Option<PathBuf>,
    auth_method: Option<AuthMethod>,
    #[serde(default)]
    extra_token_params: BTreeMap<String, String>,
    #[serde(default)]
    verify_jwks: bool,
}

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// `client_id` and `client_secret` in the form body (default).
    #[default]
    ClientSecretPost,
    /// HTTP Basic (RFC 6749 §2.3.1).
    ClientSecretBasic,
}

/// The platform's endpoints and what billing needs.
#[derive(Debug, Clone)]
pub struct PlatformConfig {
    /// The base URL; the billing endpoint is below it.
    pub base_url: String,
    /// The token endpoint.
    pub token_url: String,
    /// The JWKS endpoint (for `verify_jwks`).
    pub jwks_url: String,
    /// The billing write scope.
    pub billing_scope: Scope,
    /// The billing audience.
    pub billing_audience: Audience,
    /// Extra CA bundle.
    pub ca_file: Option<PathBuf>,
}

/// Where the outbox lives.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// `sqlite://path` or `postgres://...`.
    pub url: String,
    /// How long delivered events are kept before compaction.
    pub retention: Duration,
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
    /// The client secret (redacted in `Debug`).
    pub secret: ClientSecret,
    /// How to authenticate.
    pub auth_method: AuthMethod,
    /// Extra token request parameters.
    pub extra_token_params: BTreeMap<String, String>,
    /// Verify token signatures against the JWKS.
    pub verify_jwks: bool,
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
            if let Some(mode) = file_mode(path) {
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
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Syntax { path: path.into(), message: e.to_string() })?;
        let invalid = |key: &str, reason: String| ConfigError::Invalid { path: path.into(), key: key.into(), reason };
        let base = raw.platform.base_url.trim_end_matches('/').to_owned();
        check_url(&base).map_err(|r| invalid("platform.base_url", r))?;
        let token_url = raw.platform.token_url.unwrap_or_else(|| format!("{base}/oauth2/v1/token"));
        check_url(&token_url).map_err(|r| invalid("platform.token_url", r))?;
        let jwks_url = match raw.platform.jwks_url {
            Some(u) => u,
            None => origin_of(&token_url).map(|o| format!("{o}/oauth2/v1/keys")).unwrap_or_default(),
        };
        check_url(&jwks_url).map_err(|r| invalid("platform.jwks_url", r))?;
        let platform = PlatformConfig {
            base_url: base,
            token_url,
            jwks_url,
            billing_scope: Scope::parse(raw.platform.billing_scope.unwrap_or_else(|| BILLING_WRITE_SCOPE.into()))
                .map_err(|e| invalid("platform.billing_scope", e.reason))?,
            billing_audience: Audience::parse(raw.platform.billing_audience.unwrap_or_else(|| BILLING_AUDIENCE.into()))
                .map_err(|e| invalid("platform.billing_audience", e.reason))?,
            ca_file: raw.platform.ca_file.map(|p| relative_to(path, &p)),
        };
        let storage = StorageConfig {
            url: raw.storage.url.unwrap_or_else(|| "sqlite://billsync.db".into()),
            retention: Duration::from_secs(u64::from(raw.storage.retention_days.unwrap_or(7)) * 86_400),
        };
        let rpm = raw.sync.requests_per_minute.unwrap_or(100);
        let mut sync = SyncConfig {
            batcher: Batcher::new(raw.sync.max_batch_events.unwrap_or(500))
                .map_err(|e| invalid("sync.max_batch_events", e.to_string()))?,
            rate: RatePolicy::per_minute(
                std::num::NonZeroU32::new(rpm)
                    .ok_or_else(|| invalid("sync.requests_per_minute", "must be at least 1".into()))?,
            ),
            refresh: RefreshPolicy::new(raw.sync.refresh_at.unwrap_or(0.8), Duration::from_secs(30))
                .map_err(|e| invalid("sync.refresh_at", e.to_string()))?,
            max_backoff: Duration::from_secs(raw.sync.max_backoff_seconds.unwrap_or(300).max(1)),
            request_timeout: Duration::from_secs(raw.sync.request_timeout_seconds.unwrap_or(30).max(1)),
            lease: None,
            claim_ttl: None,
        };
        if let Some(secs) = raw.sync.lease_seconds {
            let timeout = sync.request_timeout.as_secs();
            if secs < timeout.max(1) {
                return Err(invalid(
                    "sync.lease_seconds",
                    format!(
                        "{secs} is shorter than request_timeout_seconds ({timeout}); a lease must outlive a request"
                    ),
                ));
            }
            sync.lease = Some(Duration::from_secs(secs));
        }
        if let Some(secs) = raw.sync.claim_ttl_seconds {
            if secs < 3 {
                return Err(invalid("sync.claim_ttl_seconds", format!("{secs} is below the minimum of 3")));
            }
            sync.claim_ttl = Some(Duration::from_secs(secs));
        }
        let mut tenants = Vec::new();
        let mut names = HashSet::new();
        for (i, t) in raw.tenants.into_iter().enumerate() {
            let key = |field: &str| {
                format!("tenants[{}].{field}", if t.name.is_empty() { i.to_string() } else { t.name.clone() })
            };
            let name = TenantName::parse(t.name.clone()).map_err(|e| invalid(&key("name"), e.reason))?;
            if !names.insert(name.clone()) {
                return Err(invalid(&key("name"), "appears twice; tenant names must be unique".into()));
            }
            let tenant_id = TenantId::parse(t.tenant_id.clone()).map_err(|e| invalid(&key("tenant_id"), e.reason))?;
            let application_id = ApplicationId::parse(t.application_id.clone())
                .map_err(|e| invalid(&key("application_id"), e.reason))?;
            let client_id = ClientId::parse(t.client_id.clone().unwrap_or_else(|| t.application_id.clone()))
                .map_err(|e| invalid(&key("client_id"), e.reason))?;
            let secret = match (&t.client_secret, &t.client_secret_env, &t.client_secret_file) {
                (Some(s), None, None) => ClientSecret::new(s.clone()),
                (None, Some(var), None) => ClientSecret::new(std::env::var(var).map_err(|_| {
                    invalid(&key("client_secret_env"), format!("the environment variable {var} is not set"))
                })?),
                (None, None, Some(file)) => {
                    let file = relative_to(path, file);
                    let s = std::fs::read_to_string(&file)
                        .map_err(|e| invalid(&key("client_secret_file"), format!("{}: {e}", file.display())))?;
                    ClientSecret::new(s.trim_end_matches(['\n', '\r']).to_owned())
                }
                (None, None, None) => {
                    return Err(invalid(
                        &key("client_secret"),
                        "is missing; set one of client_secret, client_secret_env, client_secret_file".into(),
                    ));
                }
                _ => {
                    return Err(invalid(
                        &key("client_secret"),
                        "set only one of client_secret, client_secret_env, client_secret_file".into(),
                    ));
                }
            };
            tenants.push(TenantConfig {
                tenant: Tenant::new(name, tenant_id, application_id, client_id),
                secret,
                auth_method: t.auth_method.unwrap_or_default(),
                extra_token_params: t.extra_token_params,
                verify_jwks: t.verify_jwks,
            });
        }
        Ok(Self { platform, storage, sync, tenants, warnings: Vec::new() })
    }

    /// The tenant with this local name.
    pub fn tenant(&self, name: &str) -> Option<&TenantConfig> {
        self.tenants.iter().find(|t| t.tenant.name().as_str() == name)
    }
}

fn text_has_inline_secret(text: &str) -> bool {
    text.lines().any(|l| l.trim_start().starts_with("client_secret ") || l.trim_start().starts_with("client_secret="))
}

#[cfg(unix)]
fn file_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).ok().map(|m| m.permissions().mode())
}

#[cfg(not(unix))]
fn file_mode(_: &Path) -> Option<u32> {
    None
}

fn relative_to(config: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() { p.to_owned() } else { config.parent().unwrap_or(Path::new(".")).join(p) }
}

fn origin_of(u: &str) -> Option<String> {
    let url = url::Url::parse(u).ok()?;
    Some(url.origin().ascii_serialization())
}

/// `https://` anywhere; `http://` only for loopback hosts.
///
/// # Errors
/// A reason in plain words.
pub fn check_url(u: &str) -> Result<(), String> {
    let url = url::Url::parse(u).map_err(|e| format!("\"{u}\" is not a URL: {e}"))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = match url.host() {
                Some(url::Host::Domain(d)) => d == "localhost",
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            if loopback {
                Ok(())
            } else {
                Err(format!(
                    "\"{u}\" uses plain http to a non-loopback host; use https (tokens and secrets travel on it)"
                ))
            }
        }
        other => Err(format!("\"{u}\" has scheme {other}; use https")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn defaults_follow_the_platform() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.platform.token_url, "https://iot.example.com/oauth2/v1/token");
        assert_eq!(c.platform.jwks_url, "https://iot.example.com/oauth2/v1/keys");
        assert_eq!(c.platform.billing_scope.as_str(), BILLING_WRITE_SCOPE);
        assert_eq!(c.storage.url, "sqlite://billsync.db");
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
        std::fs::write(dir.path().join("secret.txt"), "from-file\n").unwrap();
        let text = GOOD.replace("client_secret = \"s3cret\"", "client_secret_file = \"secret.txt\"");
        let c = Config::parse(&text, &dir.path().join("billsync.toml")).unwrap();
        assert_eq!(c.tenants[0].secret.secret(), "from-file");
        let e = parse(&GOOD.replace("client_secret = \"s3cret\"", "client_secret_env = \"BILLSYNC_TEST_UNSET_VAR\""))
            .unwrap_err();
        assert!(e.contains("BILLSYNC_TEST_UNSET_VAR is not set"), "{e}");
    }
}
