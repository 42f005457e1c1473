//! `[ingest]` and each tenant's `ingest_token_env` / `ingest_token_file`: where `run` takes
//! devices' events over HTTP, and who may send them.

use std::net::SocketAddr;
use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;

use super::{At, ConfigError, TenantConfig, relative_to, secret_file};
use crate::ingest::IngestToken;

/// The shortest ingest token taken: a token is all that stands between a network and a
/// tenant's bill.
const MIN_TOKEN_CHARS: usize = 16;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIngest {
    listen: Option<String>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    read_timeout_seconds: Option<u64>,
    mqtt: Option<super::mqtt::RawMqtt>,
}

/// The HTTP ingest of `billsync run` (`[ingest]`; off when the section is absent).
#[derive(Debug)]
pub struct IngestConfig {
    /// Where it listens (`listen`).
    pub listen: SocketAddr,
    /// Its certificate and key, when it serves HTTPS (`tls_cert_file`, `tls_key_file`).
    pub tls: Option<IngestTls>,
    /// How long a client may take to send a request's headers, and then its body
    /// (`read_timeout_seconds`, default 30): a slow or stalled client does not hold a
    /// connection for ever.
    pub read_timeout: std::time::Duration,
}

/// The ingest's certificate chain and private key, read when the configuration is loaded.
pub struct IngestTls {
    /// The certificate chain file (PEM).
    pub cert_file: PathBuf,
    /// The private key file (PEM); refused when other users can read it.
    pub key_file: PathBuf,
    /// The private key's PEM text.
    pub key_pem: SecretString,
}

impl std::fmt::Debug for IngestTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestTls")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("key_pem", &"[redacted]")
            .finish()
    }
}

impl RawIngest {
    /// Checks `[ingest]`: the HTTP ingest (`listen`), the MQTT ingest (`[ingest.mqtt]`), or
    /// both.
    pub(super) fn validate(
        self,
        at: At<'_>,
        tenants: &[TenantConfig],
        warnings: &mut Vec<String>,
    ) -> Result<(Option<IngestConfig>, Option<super::MqttConfig>), ConfigError> {
        let mqtt = self.mqtt.map(|m| m.validate(at)).transpose()?;
        let http = match self.listen {
            Some(listen) => Some(Self::http(
                listen,
                self.tls_cert_file,
                self.tls_key_file,
                self.read_timeout_seconds,
                at,
                tenants,
                warnings,
            )?),
            None if mqtt.is_some() => None,
            None => {
                return Err(at.invalid(
                    "ingest.listen",
                    "is missing: set listen for the HTTP ingest, [ingest.mqtt] for MQTT, or both".into(),
                ));
            }
        };
        Ok((http, mqtt))
    }

    /// Checks the HTTP ingest against the tenants: a non-loopback listener needs TLS and a
    /// token on every tenant.
    fn http(
        listen: String,
        tls_cert_file: Option<PathBuf>,
        tls_key_file: Option<PathBuf>,
        read_timeout_seconds: Option<u64>,
        at: At<'_>,
        tenants: &[TenantConfig],
        warnings: &mut Vec<String>,
    ) -> Result<IngestConfig, ConfigError> {
        let listen: SocketAddr = listen.parse().map_err(|_| {
            at.invalid("ingest.listen", format!("\"{listen}\" is not an address and port such as 127.0.0.1:8788"))
        })?;
        let tls = match (tls_cert_file, tls_key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let key_file = relative_to(at.0, &key);
                let read = secret_file::read(&key_file, "ingest.tls_key_file", false)
                    .map_err(|(_, reason)| at.invalid("ingest.tls_key_file", reason))?;
                warnings.extend(read.warning);
                Some(IngestTls {
                    cert_file: relative_to(at.0, &cert),
                    key_file,
                    key_pem: SecretString::from(read.text),
                })
            }
            (Some(_), None) => {
                return Err(at.invalid("ingest.tls_key_file", "is missing; tls_cert_file needs its key".into()));
            }
            (None, Some(_)) => {
                return Err(at.invalid("ingest.tls_cert_file", "is missing; tls_key_file needs its certificate".into()));
            }
        };
        if !listen.ip().is_loopback() {
            if tls.is_none() {
                return Err(at.invalid(
                    "ingest.listen",
                    format!(
                        "{listen} is not a loopback address, so devices' tokens and events would cross the network \
                         in the clear: set tls_cert_file and tls_key_file, or listen on 127.0.0.1"
                    ),
                ));
            }
            if let Some(open) = tenants.iter().find(|t| t.ingest_token.is_none()) {
                return Err(at.invalid(
                    &format!("tenants[{}].ingest_token_env", open.tenant.name()),
                    format!(
                        "[ingest] listen = {listen} is not a loopback address: every tenant needs ingest_token_env \
                         or ingest_token_file, or anyone on the network could bill it"
                    ),
                ));
            }
        }
        let read_timeout = match read_timeout_seconds {
            None => std::time::Duration::from_secs(30),
            Some(0) => {
                return Err(at.invalid("ingest.read_timeout_seconds", "must be at least 1".into()));
            }
            Some(s) => std::time::Duration::from_secs(s),
        };
        Ok(IngestConfig { listen, tls, read_timeout })
    }
}

/// A tenant's ingest token, from at most one of its two sources; at least 16 characters.
pub(super) fn token(
    env: Option<&str>,
    file: Option<&PathBuf>,
    allow_insecure: bool,
    at: At<'_>,
    key: &dyn Fn(&str) -> String,
    warnings: &mut Vec<String>,
) -> Result<Option<IngestToken>, ConfigError> {
    let (text, field) = match (env, file) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(
                at.invalid(&key("ingest_token_env"), "set only one of ingest_token_env, ingest_token_file".into())
            );
        }
        (Some(var), None) => {
            let text = std::env::var(var).map_err(|_| {
                at.invalid(&key("ingest_token_env"), format!("the environment variable {var} is not set"))
            })?;
            (zeroize::Zeroizing::new(text), "ingest_token_env")
        }
        (None, Some(file)) => {
            let field = "ingest_token_file";
            let read = secret_file::read(&relative_to(at.0, file), &key(field), allow_insecure)
                .map_err(|(_, reason)| at.invalid(&key(field), reason))?;
            warnings.extend(read.warning);
            (zeroize::Zeroizing::new(read.text), field)
        }
    };
    let chars = text.trim().chars().count();
    if chars < MIN_TOKEN_CHARS {
        return Err(at.invalid(
            &key(field),
            format!(
                "the token has {chars} characters; at least {MIN_TOKEN_CHARS} are needed (try: openssl rand -hex 32)"
            ),
        ));
    }
    Ok(Some(IngestToken::new(text.trim())))
}

/// Refuses two tenants with the same ingest token: the token names the tenant it writes to.
pub(super) fn check_tokens_distinct(tenants: &[TenantConfig], at: At<'_>) -> Result<(), ConfigError> {
    for (i, a) in tenants.iter().enumerate() {
        let Some(token) = &a.ingest_token else { continue };
        if let Some(b) = tenants[..i].iter().find(|b| b.ingest_token.as_ref().is_some_and(|t| t.same_as(token))) {
            return Err(at.invalid(
                &format!("tenants[{}].ingest_token_env", a.tenant.name()),
                format!("is the same token as tenant {}'s; each tenant needs its own", b.tenant.name()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;

    fn tenant(name: &str, extra: &str) -> String {
        format!(
            "[[tenants]]\nname = \"{name}\"\ntenant_id = \"{name}-001\"\napplication_id = \"app-{name}\"\n\
             client_secret = \"s3cret\"\n{extra}\n"
        )
    }

    fn parse(ingest: &str, tenants: &str, dir: &Path) -> Result<Config, String> {
        let text = format!("[platform]\nbase_url = \"https://iot.example.com\"\n{ingest}\n{tenants}");
        Config::parse(&text, &dir.join("billsync.toml")).map_err(|e| e.to_string())
    }

    fn private_file(dir: &Path, name: &str, text: &str) {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        #[cfg(unix)]
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }

    #[test]
    fn ingest_is_off_unless_configured_and_open_on_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = parse("", &tenant("acme", ""), dir.path()).unwrap();
        assert!(cfg.ingest.is_none() && cfg.tenants[0].ingest_token.is_none());
        let cfg = parse("[ingest]\nlisten = \"127.0.0.1:8788\"", &tenant("acme", ""), dir.path()).unwrap();
        let ingest = cfg.ingest.unwrap();
        assert_eq!((ingest.listen.port(), ingest.tls.is_none()), (8788, true));
        assert_eq!(ingest.read_timeout, std::time::Duration::from_secs(30));
        let err =
            parse("[ingest]\nlisten = \"127.0.0.1:1\"\nread_timeout_seconds = 0", &tenant("acme", ""), dir.path())
                .unwrap_err();
        assert!(err.contains("ingest.read_timeout_seconds: must be at least 1"), "{err}");
        let err = parse("[ingest]\nlisten = \"localhost\"", &tenant("acme", ""), dir.path()).unwrap_err();
        assert!(err.contains("ingest.listen: \"localhost\" is not an address and port"), "{err}");
    }

    #[test]
    fn a_non_loopback_ingest_needs_tls_and_a_token_on_every_tenant() {
        let dir = tempfile::tempdir().unwrap();
        private_file(dir.path(), "acme.token", "acme-ingest-token-0123456789\n");
        private_file(dir.path(), "key.pem", "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n");
        let open = "[ingest]\nlisten = \"0.0.0.0:8788\"";
        let tls = "[ingest]\nlisten = \"0.0.0.0:8788\"\ntls_cert_file = \"cert.pem\"\ntls_key_file = \"key.pem\"";
        let tokened = tenant("acme", "ingest_token_file = \"acme.token\"");

        let err = parse(open, &tokened, dir.path()).unwrap_err();
        assert!(err.contains("ingest.listen: 0.0.0.0:8788 is not a loopback address"), "{err}");
        assert!(err.contains("set tls_cert_file and tls_key_file"), "{err}");

        let both = format!("{tokened}{}", tenant("open", ""));
        let err = parse(tls, &both, dir.path()).unwrap_err();
        assert!(err.contains("tenants[open].ingest_token_env: [ingest] listen = 0.0.0.0:8788"), "{err}");

        let cfg = parse(tls, &tokened, dir.path()).unwrap();
        let ingest = cfg.ingest.unwrap();
        assert_eq!(ingest.tls.unwrap().cert_file, dir.path().join("cert.pem"));
        assert!(cfg.tenants[0].ingest_token.as_ref().unwrap().matches("acme-ingest-token-0123456789"));

        let half = "[ingest]\nlisten = \"127.0.0.1:8788\"\ntls_cert_file = \"cert.pem\"";
        let err = parse(half, &tokened, dir.path()).unwrap_err();
        assert!(err.contains("ingest.tls_key_file: is missing"), "{err}");
    }

    #[test]
    fn ingest_tokens_are_long_single_sourced_set_and_distinct() {
        let dir = tempfile::tempdir().unwrap();
        private_file(dir.path(), "short.token", "short\n");
        private_file(dir.path(), "same.token", "the-same-token-for-two-tenants\n");
        let err = parse("", &tenant("acme", "ingest_token_file = \"short.token\""), dir.path()).unwrap_err();
        assert!(err.contains("tenants[acme].ingest_token_file: the token has 5 characters; at least 16"), "{err}");
        let err = parse("", &tenant("acme", "ingest_token_env = \"BILLSYNC_TEST_NO_SUCH_VARIABLE\""), dir.path())
            .unwrap_err();
        assert!(
            err.contains("tenants[acme].ingest_token_env: the environment variable BILLSYNC_TEST_NO_SUCH"),
            "{err}"
        );
        let two = "ingest_token_env = \"X\"\ningest_token_file = \"same.token\"";
        let err = parse("", &tenant("acme", two), dir.path()).unwrap_err();
        assert!(err.contains("set only one of ingest_token_env, ingest_token_file"), "{err}");
        let same = format!(
            "{}{}",
            tenant("acme", "ingest_token_file = \"same.token\""),
            tenant("beta", "ingest_token_file = \"same.token\"")
        );
        let err = parse("", &same, dir.path()).unwrap_err();
        assert!(err.contains("tenants[beta].ingest_token_env: is the same token as tenant acme's"), "{err}");
        let shown = format!("{:?}", parse("", &tenant("acme", "ingest_token_file = \"same.token\""), dir.path()));
        assert!(!shown.contains("the-same-token"), "{shown}");
    }
}
