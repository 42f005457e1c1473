//! The emulator's configuration: the client registry, token lifetimes, rate limits, the seed of
//! fault randomness, and who may use the admin API (its key and the extra `Host` names it
//! answers to). Built in code ([`EmulatorConfig::builtin`] plus setters) or read from the TOML
//! registry file ([`EmulatorConfig::from_toml_str`], [`EmulatorConfig::from_toml_file`], which
//! hold the registry part only).

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::audit::AUDIT_CAPACITY;
use crate::client_key::{ClientKey, KeyProblem};

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

/// How a client proves itself at the token endpoint: one method per client.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Credential {
    /// A shared secret (`client_secret_post` or `client_secret_basic`).
    Secret(Secret),
    /// A public key: signed assertions (`private_key_jwt`, docs/platform.md section 1.1).
    Key(ClientKey),
}

/// One OAuth client registered with the emulated platform: its credential (a secret, or a
/// public key for signed assertions), the tenants it may act for, and whether it is registered
/// for Billing Services.
///
/// `Debug` prints the client id, the key id and algorithm of a public key, tenants and billing
/// flag, never a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientRegistration {
    client_id: String,
    credential: Credential,
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
            credential: Credential::Secret(Secret::new(client_secret)),
            tenants: tenants.into_iter().map(Into::into).collect(),
            billing,
        }
    }

    /// A client that authenticates with assertions signed by its private key
    /// (`private_key_jwt`, docs/platform.md section 1.1) instead of a secret: its public key in
    /// PEM (RSA of at least 2048 bits, SPKI `PUBLIC KEY` or PKCS#1 `RSA PUBLIC KEY`, verifying
    /// RS256; or EC P-256, SPKI, verifying ES256) and the key id its assertions name in `kid`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `public_key` (not such a key, a private key, an RSA key
    /// under 2048 bits, another curve) or `key_id` (empty or not visible ASCII).
    pub fn with_public_key<T: Into<String>>(
        client_id: impl Into<String>,
        public_key_pem: &str,
        key_id: &str,
        tenants: impl IntoIterator<Item = T>,
        billing: bool,
    ) -> Result<Self, ConfigError> {
        let key = ClientKey::from_pem(public_key_pem, key_id).map_err(|p| {
            let (key, reason) = match p {
                KeyProblem::KeyId(r) => ("key_id", r),
                KeyProblem::Key(r) => ("public_key", r),
            };
            ConfigError::Invalid { key: key.to_owned(), reason }
        })?;
        Ok(Self {
            client_id: client_id.into(),
            credential: Credential::Key(key),
            tenants: tenants.into_iter().map(Into::into).collect(),
            billing,
        })
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

    /// The key id of a client registered for signed assertions; `None` for a secret client.
    pub fn key_id(&self) -> Option<&str> {
        self.key().map(ClientKey::kid)
    }

    pub(crate) fn credential(&self) -> &Credential {
        &self.credential
    }

    /// The secret of a secret client.
    #[cfg(test)]
    pub(crate) fn secret(&self) -> Option<&Secret> {
        match &self.credential {
            Credential::Secret(s) => Some(s),
            Credential::Key(_) => None,
        }
    }

    /// The public key of a client registered for signed assertions.
    pub(crate) fn key(&self) -> Option<&ClientKey> {
        match &self.credential {
            Credential::Key(k) => Some(k),
            Credential::Secret(_) => None,
        }
    }
}

impl fmt::Debug for ClientRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ClientRegistration");
        d.field("client_id", &self.client_id);
        match &self.credential {
            Credential::Secret(s) => d.field("client_secret", s),
            Credential::Key(k) => d.field("public_key", k),
        };
        d.field("tenants", &self.tenants).field("billing", &self.billing).finish()
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
    /// The registry file could not be read ([`EmulatorConfig::from_toml_file`]).
    #[error("cannot read the emulator registry {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// The operating system's reason.
        message: String,
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
/// give it: `auth = "client_secret"` (the default) with `client_secret`, or
/// `auth = "private_key_jwt"` with `key_id` and the public key, in `public_key_file` (a PEM
/// file) or `public_key` (the PEM itself).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientSpec {
    client_id: String,
    #[serde(default)]
    auth: ClientAuth,
    client_secret: Option<String>,
    public_key_file: Option<String>,
    public_key: Option<String>,
    key_id: Option<String>,
    #[serde(default)]
    tenants: Vec<String>,
    #[serde(default)]
    billing: bool,
}

/// The `auth` of a [`ClientSpec`].
#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum ClientAuth {
    #[default]
    ClientSecret,
    PrivateKeyJwt,
}

/// Where a [`ClientSpec`] may read its `public_key_file` from.
#[derive(Clone, Copy)]
pub(crate) enum KeyFiles<'a> {
    /// Relative to this directory (the registry file's, or the current one).
    Under(&'a Path),
    /// Nowhere: the admin API takes the PEM itself, never a path on the emulator's machine.
    Refused,
}

/// A field of a [`ClientSpec`] and what is wrong with it.
#[derive(Debug)]
pub(crate) struct SpecError {
    pub(crate) field: &'static str,
    pub(crate) reason: String,
}

fn spec_error(field: &'static str, reason: impl Into<String>) -> SpecError {
    SpecError { field, reason: reason.into() }
}

fn visible(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|ch| ch.is_ascii_graphic())
}

impl ClientSpec {
    /// The registration it asks for, or the field at fault.
    pub(crate) fn registration(self, files: KeyFiles<'_>) -> Result<ClientRegistration, SpecError> {
        if !visible(&self.client_id) {
            return Err(spec_error("client_id", "must be 1 or more visible ASCII characters"));
        }
        if let Some(t) = self.tenants.iter().find(|t| !visible(t)) {
            return Err(spec_error("tenants", format!("{t:?} is not 1 or more visible ASCII characters")));
        }
        let credential = match self.auth {
            ClientAuth::ClientSecret => self.secret_credential()?,
            ClientAuth::PrivateKeyJwt => self.key_credential(files)?,
        };
        Ok(ClientRegistration { client_id: self.client_id, credential, tenants: self.tenants, billing: self.billing })
    }

    fn secret_credential(&self) -> Result<Credential, SpecError> {
        let key_fields = [
            ("public_key_file", self.public_key_file.is_some()),
            ("public_key", self.public_key.is_some()),
            ("key_id", self.key_id.is_some()),
        ];
        if let Some((field, _)) = key_fields.into_iter().find(|(_, present)| *present) {
            return Err(spec_error(field, "belongs to auth = \"private_key_jwt\", not to a client with a secret"));
        }
        match self.client_secret.as_deref() {
            Some("") => Err(spec_error("client_secret", "must not be empty")),
            Some(secret) => Ok(Credential::Secret(Secret::new(secret))),
            None => Err(spec_error("client_secret", "is required, unless auth = \"private_key_jwt\"")),
        }
    }

    fn key_credential(&self, files: KeyFiles<'_>) -> Result<Credential, SpecError> {
        if self.client_secret.is_some() {
            return Err(spec_error("client_secret", "a client with auth = \"private_key_jwt\" has no secret"));
        }
        let (pem, field) = match (&self.public_key_file, &self.public_key) {
            (Some(_), Some(_)) => return Err(spec_error("public_key", "give public_key_file or public_key, not both")),
            (Some(path), None) => (read_key_file(path, files)?, "public_key_file"),
            (None, Some(pem)) => (pem.clone(), "public_key"),
            (None, None) => {
                return Err(spec_error(
                    "public_key_file",
                    "is required with auth = \"private_key_jwt\" (or public_key)",
                ));
            }
        };
        let Some(kid) = self.key_id.as_deref() else {
            return Err(spec_error("key_id", "is required with auth = \"private_key_jwt\""));
        };
        ClientKey::from_pem(&pem, kid).map(Credential::Key).map_err(|p| match p {
            KeyProblem::KeyId(reason) => spec_error("key_id", reason),
            KeyProblem::Key(reason) => spec_error(field, reason),
        })
    }
}

fn read_key_file(path: &str, files: KeyFiles<'_>) -> Result<String, SpecError> {
    let KeyFiles::Under(dir) = files else {
        return Err(spec_error("public_key_file", "is not read over the admin API: give the PEM itself in public_key"));
    };
    let full = dir.join(path);
    std::fs::read_to_string(&full)
        .map_err(|e| spec_error("public_key_file", format!("cannot read {}: {e}", full.display())))
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
    /// client_secret = "secret-a"   # auth = "client_secret", the default
    /// tenants = ["tenant-a"]
    /// billing = true
    ///
    /// [[clients]]
    /// client_id = "app-b"
    /// auth = "private_key_jwt"     # signed assertions, docs/platform.md section 1.1
    /// public_key_file = "app-b.pem" # or public_key = "-----BEGIN PUBLIC KEY-----..."
    /// key_id = "app-b-2025"
    /// tenants = ["tenant-b"]
    /// ```
    ///
    /// Missing top-level keys take the defaults of [`EmulatorConfig::default`]. A relative
    /// `public_key_file` is read from the current directory; [`EmulatorConfig::from_toml_file`]
    /// reads it beside the registry file. The keys are those of
    /// [`ClientRegistration::with_public_key`].
    ///
    /// # Errors
    /// [`ConfigError::Toml`] for a syntax error or an unknown key (named in the message),
    /// [`ConfigError::DuplicateClient`] and [`ConfigError::Invalid`] for bad values (a client
    /// with both a secret and a key, or neither, names the field).
    pub fn from_toml_str(s: &str) -> Result<Self, ConfigError> {
        Self::from_toml_in(s, Path::new(""))
    }

    /// Reads the registry file at `path` ([`EmulatorConfig::from_toml_str`]), with relative
    /// `public_key_file`s read from the file's own directory.
    ///
    /// # Errors
    /// [`ConfigError::Read`] when the file cannot be read, else as
    /// [`EmulatorConfig::from_toml_str`].
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: path.display().to_string(), message: e.to_string() })?;
        Self::from_toml_in(&text, path.parent().unwrap_or(Path::new("")))
    }

    fn from_toml_in(s: &str, dir: &Path) -> Result<Self, ConfigError> {
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
            let reg = c
                .registration(KeyFiles::Under(dir))
                .map_err(|e| ConfigError::Invalid { key: format!("clients[{i}].{}", e.field), reason: e.reason })?;
            if config.clients.iter().any(|k| k.client_id == reg.client_id) {
                return Err(ConfigError::DuplicateClient { client_id: reg.client_id });
            }
            config.clients.push(reg);
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
        let secret = c.clients()[0].secret().unwrap();
        assert!(secret.matches("secret-a"));
        assert!(!secret.matches("secret-b"));
        assert!(!secret.matches("secret-a2"));
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

    /// A fresh directory for registry files.
    fn scratch_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("billsync-emu-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn ec_pem(alg: &'static rcgen::SignatureAlgorithm) -> (String, String) {
        let pair = rcgen::KeyPair::generate_for(alg).unwrap();
        (pair.public_key_pem(), pair.serialize_pem())
    }

    fn rsa_public_pkcs1_pem(bits: usize) -> String {
        use rsa::pkcs1::EncodeRsaPublicKey;
        let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, bits).unwrap();
        rsa::RsaPublicKey::from(&private).to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).unwrap()
    }

    #[test]
    fn reads_private_key_jwt_clients_with_key_files_beside_the_registry() {
        let dir = scratch_dir("keys");
        std::fs::write(dir.join("ec.pem"), ec_pem(&rcgen::PKCS_ECDSA_P256_SHA256).0).unwrap();
        std::fs::write(dir.join("rsa.pem"), rsa_public_pkcs1_pem(2048)).unwrap();
        let registry = dir.join("emulator.toml");
        std::fs::write(
            &registry,
            r#"
[[clients]]
client_id = "app-ec"
auth = "private_key_jwt"
public_key_file = "ec.pem"
key_id = "ec-1"
tenants = ["t-ec"]
billing = true

[[clients]]
client_id = "app-rs"
auth = "private_key_jwt"
public_key_file = "rsa.pem"
key_id = "rs-1"

[[clients]]
client_id = "app-secret"
auth = "client_secret"
client_secret = "s"
"#,
        )
        .unwrap();
        let c = EmulatorConfig::from_toml_file(&registry).unwrap();
        let ids: Vec<_> = c.clients().iter().map(|c| (c.client_id(), c.key_id())).collect();
        assert_eq!(ids, [("app-ec", Some("ec-1")), ("app-rs", Some("rs-1")), ("app-secret", None)]);
        assert!(c.clients()[0].secret().is_none() && c.clients()[2].secret().is_some_and(|s| s.matches("s")));
        let absolute = format!(
            "[[clients]]\nclient_id = \"a\"\nauth = \"private_key_jwt\"\npublic_key_file = {:?}\nkey_id = \"k\"",
            dir.join("ec.pem").display().to_string()
        );
        assert_eq!(EmulatorConfig::from_toml_str(&absolute).unwrap().clients()[0].key_id(), Some("k"));
        let missing = EmulatorConfig::from_toml_file(dir.join("nope.toml")).unwrap_err().to_string();
        assert!(missing.contains("nope.toml"), "{missing}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_registration_that_mixes_or_lacks_credentials_is_refused_naming_the_field() {
        let ec = ec_pem(&rcgen::PKCS_ECDSA_P256_SHA256);
        let p384 = ec_pem(&rcgen::PKCS_ECDSA_P384_SHA384).0;
        let jwt = |rest: &str| format!("[[clients]]\nclient_id = \"a\"\nauth = \"private_key_jwt\"\n{rest}");
        let key = |pem: &str| format!("public_key = {pem:?}\n");
        let cases = [
            (jwt(&format!("{}key_id = \"k\"\nclient_secret = \"s\"", key(&ec.0))), "clients[0].client_secret"),
            (jwt("key_id = \"k\""), "clients[0].public_key_file"),
            (jwt(&key(&ec.0)), "clients[0].key_id"),
            (jwt(&format!("{}key_id = \"\"", key(&ec.0))), "clients[0].key_id"),
            (jwt(&format!("{}public_key_file = \"x.pem\"\nkey_id = \"k\"", key(&ec.0))), "clients[0].public_key"),
            (jwt(&format!("{}key_id = \"k\"", key(&ec.1))), "private key"),
            (jwt(&format!("{}key_id = \"k\"", key(&p384))), "P-256"),
            (
                jwt(&format!("{}key_id = \"k\"", key("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"))),
                "clients[0].public_key",
            ),
            (jwt("public_key_file = \"/nonexistent/k.pem\"\nkey_id = \"k\""), "/nonexistent/k.pem"),
            (format!("[[clients]]\nclient_id = \"a\"\nclient_secret = \"s\"\n{}", key(&ec.0)), "clients[0].public_key"),
            ("[[clients]]\nclient_id = \"a\"\nclient_secret = \"s\"\nkey_id = \"k\"".to_owned(), "clients[0].key_id"),
            ("[[clients]]\nclient_id = \"a\"".to_owned(), "clients[0].client_secret"),
            ("[[clients]]\nclient_id = \"a\"\nauth = \"tls\"".to_owned(), "private_key_jwt"),
        ];
        for (text, named) in cases {
            let err = EmulatorConfig::from_toml_str(&text).unwrap_err().to_string();
            assert!(err.contains(named), "{text}\n=> {err}");
            assert!(!err.contains("PRIVATE KEY-----"), "no key material in errors: {err}");
        }
    }

    #[test]
    fn with_public_key_takes_rsa_and_p256_keys_only() {
        let ec = ec_pem(&rcgen::PKCS_ECDSA_P256_SHA256).0;
        let reg = ClientRegistration::with_public_key("app-k", &ec, "kid-1", ["t"], true).unwrap();
        assert_eq!(
            (reg.client_id(), reg.key_id(), reg.tenants(), reg.billing()),
            ("app-k", Some("kid-1"), &["t".to_owned()][..], true)
        );
        assert!(reg.secret().is_none());
        let rsa = rsa_public_pkcs1_pem(2048);
        assert!(ClientRegistration::with_public_key("app-r", &rsa, "kid-2", ["t"], false).is_ok());
        let small = ClientRegistration::with_public_key("app-s", &rsa_public_pkcs1_pem(1024), "k", ["t"], false);
        assert!(small.unwrap_err().to_string().contains("2048"));
        let no_kid = ClientRegistration::with_public_key("app-n", &ec, "", ["t"], false);
        assert!(no_kid.unwrap_err().to_string().contains("key_id"));
        let shown = format!("{reg:?}");
        assert!(shown.contains("kid-1") && shown.contains("ES256") && !shown.contains("client_secret"), "{shown}");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let shown = format!("{:?}", EmulatorConfig::builtin().admin_key("the-admin-key-0123"));
        assert!(!shown.contains("secret-acme") && shown.contains("app-acme"), "{shown}");
        assert!(!shown.contains("the-admin-key-0123"), "{shown}");
    }
}
