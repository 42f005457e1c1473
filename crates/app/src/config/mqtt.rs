//! `[ingest.mqtt]`: the MQTT broker `run` subscribes to for devices' events, and how a topic
//! names the tenant.

use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use super::{At, ConfigError, relative_to};

/// The topic's placeholder for the tenant's local name.
const TENANT: &str = "{tenant}";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMqtt {
    url: String,
    ca_file: Option<PathBuf>,
    username: Option<String>,
    password_env: Option<String>,
    topic: Option<String>,
    client_id: Option<String>,
    shared_group: Option<String>,
}

/// The MQTT ingest of `billsync run` (`[ingest.mqtt]`; off when absent).
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// The broker's URL as configured (`url`), for messages and `/healthz`.
    pub url: String,
    /// The broker's host.
    pub host: String,
    /// The broker's port (1883 for `mqtt://`, 8883 for `mqtts://` unless given).
    pub port: u16,
    /// TLS (`mqtts://`): `Some(None)` trusts the system's roots, `Some(Some(path))` the
    /// `ca_file`'s certificates only; `None`: plain TCP.
    pub tls: Option<Option<PathBuf>>,
    /// The user name and password (`username`, `password_env`), if the broker wants them.
    pub credentials: Option<MqttCredentials>,
    /// Where devices publish (`topic`, default `billing/{tenant}/events`).
    pub topic: TopicTemplate,
    /// The client id, stable across restarts so that the broker keeps the session's messages
    /// while the agent is down (`client_id`, default `billsync-<hostname>`).
    pub client_id: String,
    /// The shared subscription group, when several agents share the broker (`shared_group`).
    pub shared_group: Option<String>,
}

impl MqttConfig {
    /// The filter billsync subscribes with: the topic with `+` for the tenant, behind
    /// `$share/<group>/` when a shared group is set.
    pub fn subscription(&self) -> String {
        let filter = self.topic.filter();
        match &self.shared_group {
            Some(group) => format!("$share/{group}/{filter}"),
            None => filter,
        }
    }
}

/// A user name and the password read from the environment (never printed).
#[derive(Clone)]
pub struct MqttCredentials {
    /// The user name.
    pub username: String,
    /// The password (`password_env`'s value), if any.
    pub password: Option<SecretString>,
}

impl std::fmt::Debug for MqttCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttCredentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// A topic with one whole level `{tenant}`, such as `billing/{tenant}/events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    levels: Vec<String>,
    tenant_level: usize,
}

impl TopicTemplate {
    /// Parses a template.
    ///
    /// # Errors
    /// Why it is not one, in plain words.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.contains(['+', '#']) {
            return Err(format!(
                "\"{text}\" holds an MQTT wildcard (+ or #); write {TENANT} where the tenant's name is"
            ));
        }
        if text.starts_with('$') {
            return Err(format!("\"{text}\" starts with $, which brokers keep for themselves"));
        }
        let levels: Vec<String> = text.split('/').map(str::to_owned).collect();
        let tenant_levels: Vec<usize> =
            levels.iter().enumerate().filter(|(_, l)| l.contains(TENANT)).map(|(i, _)| i).collect();
        match tenant_levels.as_slice() {
            [i] if levels[*i] == TENANT => Ok(Self { levels, tenant_level: *i }),
            [i] => Err(format!("\"{text}\": {TENANT} must be a whole topic level, not part of \"{}\"", levels[*i])),
            [] => Err(format!("\"{text}\" does not say where the tenant is: put {TENANT} in one level")),
            _ => Err(format!("\"{text}\" holds {TENANT} more than once")),
        }
    }

    /// The subscription filter: the template with `+` for the tenant.
    pub fn filter(&self) -> String {
        let mut levels = self.levels.clone();
        levels[self.tenant_level] = "+".into();
        levels.join("/")
    }

    /// The topic a tenant's devices publish to.
    pub fn topic_for(&self, tenant: &str) -> String {
        let mut levels = self.levels.clone();
        levels[self.tenant_level] = tenant.into();
        levels.join("/")
    }

    /// The tenant a topic names, or `None` when the topic is not this template's.
    pub fn tenant_of<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let levels: Vec<&str> = topic.split('/').collect();
        if levels.len() != self.levels.len() {
            return None;
        }
        let same = levels.iter().zip(&self.levels).enumerate().all(|(i, (a, b))| i == self.tenant_level || a == b);
        same.then(|| levels[self.tenant_level]).filter(|t| !t.is_empty())
    }
}

/// `billing/{tenant}/events`.
impl Default for TopicTemplate {
    fn default() -> Self {
        Self { levels: vec!["billing".into(), TENANT.into(), "events".into()], tenant_level: 1 }
    }
}

impl std::fmt::Display for TopicTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.levels.join("/"))
    }
}

impl RawMqtt {
    pub(super) fn validate(self, at: At<'_>) -> Result<MqttConfig, ConfigError> {
        let key = |k: &str| format!("ingest.mqtt.{k}");
        // Quoted without its password: a URL that does not parse may still hold one.
        let shown = super::syntax::without_password(&self.url);
        let url = Url::parse(&self.url).map_err(|e| at.invalid(&key("url"), format!("\"{shown}\": {e}")))?;
        let (tls, default_port) = match url.scheme() {
            "mqtt" => (None, 1883),
            "mqtts" => (Some(self.ca_file.as_ref().map(|p| relative_to(at.0, p))), 8883),
            other => {
                return Err(at.invalid(
                    &key("url"),
                    format!("the scheme is {other}; use mqtt://host:1883, or mqtts://host:8883 for TLS"),
                ));
            }
        };
        if tls.is_none() && self.ca_file.is_some() {
            return Err(at.invalid(&key("ca_file"), "is set but the url is mqtt://; use mqtts:// for TLS".into()));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| at.invalid(&key("url"), format!("\"{shown}\" names no host")))?
            .trim_matches(['[', ']'])
            .to_owned();
        if !url.username().is_empty() || url.password().is_some() {
            return Err(at.invalid(&key("url"), "holds credentials; use username and password_env".into()));
        }
        let credentials = self.credentials(at, tls.is_some(), &host)?;
        let topic = match &self.topic {
            Some(t) => TopicTemplate::parse(t).map_err(|reason| at.invalid(&key("topic"), reason))?,
            None => TopicTemplate::default(),
        };
        let client_id = match self.client_id {
            Some(id) if id.trim().is_empty() => return Err(at.invalid(&key("client_id"), "is empty".into())),
            Some(id) => id,
            None => format!("billsync-{}", crate::engine::hostname()),
        };
        if let Some(group) = &self.shared_group {
            if group.is_empty() || group.contains(['/', '+', '#']) {
                return Err(
                    at.invalid(&key("shared_group"), format!("\"{group}\" must be one topic level, without / + #"))
                );
            }
        }
        Ok(MqttConfig {
            port: url.port().unwrap_or(default_port),
            url: self.url,
            host,
            tls,
            credentials,
            topic,
            client_id,
            shared_group: self.shared_group,
        })
    }

    fn credentials(&self, at: At<'_>, tls: bool, host: &str) -> Result<Option<MqttCredentials>, ConfigError> {
        let key = |k: &str| format!("ingest.mqtt.{k}");
        let password = match &self.password_env {
            None => None,
            Some(var) => Some(SecretString::from(std::env::var(var).map_err(|_| {
                at.invalid(&key("password_env"), format!("the environment variable {var} is not set"))
            })?)),
        };
        let Some(username) = self.username.clone() else {
            return match password {
                Some(_) => Err(at.invalid(&key("username"), "is missing; password_env needs a user name".into())),
                None => Ok(None),
            };
        };
        let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if password.is_some() && !tls && !loopback {
            return Err(at.invalid(
                &key("url"),
                format!("{host} is not a loopback address, so the password would cross the network in the clear: use mqtts://"),
            ));
        }
        Ok(Some(MqttCredentials { username, password }))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::TopicTemplate;
    use crate::config::Config;

    fn parse(mqtt: &str) -> Result<Config, String> {
        let text = format!(
            "[platform]\nbase_url = \"https://iot.example.com\"\n[ingest.mqtt]\n{mqtt}\n\
             [[tenants]]\nname = \"acme\"\ntenant_id = \"acme-001\"\napplication_id = \"app-acme\"\nclient_secret = \"s\"\n"
        );
        Config::parse(&text, Path::new("/etc/billsync/billsync.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_topic_names_the_tenant_in_one_whole_level() {
        let t = TopicTemplate::parse("billing/{tenant}/events").unwrap();
        assert_eq!(t, TopicTemplate::default());
        assert_eq!(t.filter(), "billing/+/events");
        assert_eq!(t.topic_for("acme"), "billing/acme/events");
        assert_eq!(t.tenant_of("billing/acme/events"), Some("acme"));
        assert_eq!(t.tenant_of("billing/acme/other"), None);
        assert_eq!(t.tenant_of("billing//events"), None);
        assert_eq!(t.tenant_of("billing/acme/events/x"), None);
        for (bad, says) in [
            ("billing/+/events", "wildcard"),
            ("billing/events", "does not say where"),
            ("billing/x{tenant}/events", "whole topic level"),
            ("{tenant}/{tenant}", "more than once"),
            ("$SYS/{tenant}", "starts with $"),
        ] {
            let err = TopicTemplate::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn defaults_give_a_stable_client_id_and_the_plain_filter() {
        let cfg = parse("url = \"mqtt://127.0.0.1\"").unwrap();
        let m = cfg.mqtt.unwrap();
        assert_eq!((m.host.as_str(), m.port, m.tls.is_none()), ("127.0.0.1", 1883, true));
        assert!(m.client_id.starts_with("billsync-"), "{}", m.client_id);
        assert_eq!(m.subscription(), "billing/+/events");
        assert!(cfg.ingest.is_none(), "no listen: no HTTP ingest");
    }

    #[test]
    fn a_shared_group_subscribes_through_share_and_mqtts_reads_its_ca_file() {
        let cfg = parse("url = \"mqtts://broker.local\"\nca_file = \"ca.pem\"\nshared_group = \"billsync\"\ntopic = \"site/{tenant}\"")
            .unwrap();
        let m = cfg.mqtt.unwrap();
        assert_eq!(m.port, 8883);
        assert_eq!(m.tls, Some(Some("/etc/billsync/ca.pem".into())));
        assert_eq!(m.subscription(), "$share/billsync/site/+");
    }

    #[test]
    fn bad_settings_are_refused_by_key() {
        // A variable every test process has stands in for the password (setting one is unsafe).
        let secret = std::env::var("PATH").unwrap();
        for (mqtt, key) in [
            ("url = \"http://127.0.0.1\"", "ingest.mqtt.url"),
            ("url = \"mqtt://u:p@127.0.0.1\"", "ingest.mqtt.url"),
            ("url = \"mqtt://127.0.0.1\"\nca_file = \"ca.pem\"", "ingest.mqtt.ca_file"),
            ("url = \"mqtt://127.0.0.1\"\npassword_env = \"PATH\"", "ingest.mqtt.username"),
            (
                "url = \"mqtt://127.0.0.1\"\nusername = \"u\"\npassword_env = \"BILLSYNC_TEST_MQTT_UNSET\"",
                "ingest.mqtt.password_env",
            ),
            ("url = \"mqtt://broker.example.com\"\nusername = \"u\"\npassword_env = \"PATH\"", "ingest.mqtt.url"),
            ("url = \"mqtt://127.0.0.1\"\ntopic = \"a/#\"", "ingest.mqtt.topic"),
            ("url = \"mqtt://127.0.0.1\"\nshared_group = \"a/b\"", "ingest.mqtt.shared_group"),
            ("url = \"mqtt://127.0.0.1\"\nclient_id = \" \"", "ingest.mqtt.client_id"),
        ] {
            let err = parse(mqtt).unwrap_err();
            assert!(err.contains(key), "{mqtt}: {err}");
            assert!(!err.contains(&secret), "{err}");
        }
        let unparsable = parse("url = \"mqtt://u:pw-in-url-1f3a@127.0.0.1:99999\"").unwrap_err();
        assert!(unparsable.contains("invalid port") && !unparsable.contains("pw-in-url-1f3a"), "{unparsable}");
        let ok = parse("url = \"mqtts://broker.example.com\"\nusername = \"u\"\npassword_env = \"PATH\"").unwrap();
        let debug = format!("{:?}", ok.mqtt);
        assert!(!debug.contains(&secret) && debug.contains("redacted"), "{debug}");
    }
}
