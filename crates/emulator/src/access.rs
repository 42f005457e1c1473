//! Who may use the admin API besides a loopback peer: the per-run admin key, and the `Host`
//! names it answers to (loopback names plus an allow list), so that a web page in a browser on
//! the same machine (CSRF, DNS rebinding) cannot drive it. `crate::http::admin_gate` applies
//! these rules to requests; nothing here knows HTTP.

use rand::RngCore;

use crate::config::{ConfigError, EmulatorConfig, Secret};

/// The `Host` names that always reach the admin API (with any port).
const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// Random bytes in a generated admin key (128 bits, 32 hex digits).
const KEY_BYTES: usize = 16;

/// The admin key and the allowed `Host` names of one run.
pub(crate) struct AdminAccess {
    key: Secret,
    /// Lower-cased host names, without ports.
    allowed_hosts: Vec<String>,
}

/// Why the admin access of a configuration could not be set up.
#[derive(Debug)]
pub(crate) enum AccessError {
    /// A configured value is refused.
    Config(ConfigError),
    /// The operating system's random generator failed.
    Random(rand::Error),
}

impl AdminAccess {
    /// The configuration's key (checked) or a new random one, and its allow list (checked).
    pub(crate) fn from_config(config: &EmulatorConfig) -> Result<Self, AccessError> {
        let allowed_hosts = allowed_hosts(&config.allowed_hosts).map_err(AccessError::Config)?;
        let key = match &config.admin_key {
            Some(key) => {
                check_key(key.expose()).map_err(AccessError::Config)?;
                key.clone()
            }
            None => Secret::new(generate_key().map_err(AccessError::Random)?),
        };
        Ok(Self { key, allowed_hosts })
    }

    /// The key itself.
    pub(crate) fn key(&self) -> &str {
        self.key.expose()
    }

    /// Whether `candidate` is the key, compared in constant time.
    pub(crate) fn key_matches(&self, candidate: &[u8]) -> bool {
        self.key.matches_bytes(candidate)
    }

    /// Whether a `Host` value (`name` or `name:port`) names loopback or an allowed name.
    pub(crate) fn host_allowed(&self, host: &str) -> bool {
        host_name(host).is_some_and(|name| {
            let name = name.to_ascii_lowercase();
            LOOPBACK_HOSTS.contains(&name.as_str()) || self.allowed_hosts.contains(&name)
        })
    }
}

/// 128 random bits from the operating system, as 32 lower-case hex digits.
fn generate_key() -> Result<String, rand::Error> {
    let mut bytes = [0u8; KEY_BYTES];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn check_key(key: &str) -> Result<(), ConfigError> {
    if (16..=256).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            key: "admin_key".into(),
            reason: "must be 16 to 256 visible ASCII characters".into(),
        })
    }
}

/// The allow list, lower-cased; each entry a host name without a port.
fn allowed_hosts(names: &[String]) -> Result<Vec<String>, ConfigError> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let plain = name.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b'@');
            if plain && host_name(name) == Some(name.as_str()) {
                Ok(name.to_ascii_lowercase())
            } else {
                Err(ConfigError::Invalid {
                    key: format!("allowed_hosts[{i}]"),
                    reason: format!("{name:?} is not a host name without a port"),
                })
            }
        })
        .collect()
}

/// The name part of a `Host` value: `name`, `name:port`, `[v6]` or `[v6]:port`, the port
/// (possibly empty) made of digits. `None` when the value is not of that form.
fn host_name(host: &str) -> Option<&str> {
    let (name, rest) = if host.starts_with('[') {
        let end = host.find(']')? + 1;
        host.split_at(end)
    } else {
        host.find(':').map_or((host, ""), |i| host.split_at(i))
    };
    let port_ok = rest.is_empty() || rest.strip_prefix(':').is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
    (!name.is_empty() && port_ok).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(hosts: &[&str]) -> AdminAccess {
        let config = hosts.iter().fold(EmulatorConfig::default(), |c, h| c.allow_host(*h));
        AdminAccess::from_config(&config).unwrap()
    }

    #[test]
    fn a_generated_key_has_128_random_bits_in_hex() {
        let (a, b) = (access(&[]), access(&[]));
        assert_eq!(a.key().len(), 32);
        assert!(a.key().bytes().all(|c| c.is_ascii_hexdigit()), "{}", a.key());
        assert_ne!(a.key(), b.key());
        assert!(a.key_matches(a.key().as_bytes()) && !a.key_matches(b.key().as_bytes()));
        assert!(!a.key_matches(&a.key().as_bytes()[..31]) && !a.key_matches(b""));
    }

    #[test]
    fn a_given_key_is_kept_when_it_is_long_enough() {
        let given = EmulatorConfig::default().admin_key("0123456789abcdef");
        assert_eq!(AdminAccess::from_config(&given).unwrap().key(), "0123456789abcdef");
        for bad in ["short", "with a space in it", &"x".repeat(257)] {
            let err = AdminAccess::from_config(&EmulatorConfig::default().admin_key(bad));
            assert!(
                matches!(err, Err(AccessError::Config(ConfigError::Invalid { ref key, .. })) if key == "admin_key")
            );
        }
    }

    #[test]
    fn loopback_hosts_with_any_port_and_allowed_names_pass() {
        let a = access(&["Emulator"]);
        for ok in ["localhost", "LOCALHOST:8787", "127.0.0.1", "127.0.0.1:1", "[::1]", "[::1]:8787", "emulator:80"] {
            assert!(a.host_allowed(ok), "{ok}");
        }
        for refused in ["evil.example", "localhost.evil.example", "127.0.0.2", "localhost:80x", "", ":80", "[::2]"] {
            assert!(!a.host_allowed(refused), "{refused}");
        }
        assert!(!access(&[]).host_allowed("emulator"));
    }

    #[test]
    fn allowed_names_must_be_plain_host_names() {
        for bad in ["", "emulator:8787", "a/b", "user@host", "two words"] {
            let err = AdminAccess::from_config(&EmulatorConfig::default().allow_host("ok").allow_host(bad));
            assert!(
                matches!(err, Err(AccessError::Config(ConfigError::Invalid { ref key, .. })) if key == "allowed_hosts[1]"),
                "{bad:?}"
            );
        }
    }
}
