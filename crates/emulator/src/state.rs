//! The emulator's shared state. Locks are short and fine-grained: one mutex per tenant's
//! event store and per rate-limit pair, never held while parsing JSON or signing.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::access::AdminAccess;
use crate::assertion::SeenAssertions;
use crate::audit::{AuditLog, CounterCell};
use crate::config::{ClientRegistration, EmulatorConfig};
use crate::faults::Injector;
use crate::keys::KeyRing;
use crate::ratelimit::Limiter;

/// Lifetimes and limits that the admin API may change at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Lifetime of tokens carrying a billing scope, in seconds.
    pub billing_token_lifetime_s: u64,
    /// Lifetime of device-only tokens, in seconds.
    pub device_token_lifetime_s: u64,
    /// Billing requests per (tenant, client) pair per 60 s; `None` = off.
    pub billing_rate_per_min: Option<u32>,
    /// Device requests per (tenant, client) pair per 60 s; `None` = off.
    pub device_rate_per_min: Option<u32>,
    /// `Cache-Control: max-age` of the JWKS, in seconds; `None` (the default) sends no
    /// `Cache-Control`.
    #[serde(default)]
    pub jwks_max_age_s: Option<u64>,
}

/// A registered client as the admin API shows it (never with its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// The OAuth client id (= application id).
    pub client_id: String,
    /// Tenants the client is authorised for now.
    pub tenants: Vec<String>,
    /// Whether the client is registered for Billing Services now.
    pub billing: bool,
}

pub(crate) struct Client {
    pub reg: ClientRegistration,
    pub tenants: BTreeSet<String>,
    pub billing: bool,
}

/// One billing event the platform holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Order of arrival within the tenant, from 1.
    pub seq: u64,
    /// The event's id.
    pub event_id: String,
    /// When the platform stored it.
    pub received_at: DateTime<Utc>,
    /// The event in canonical JSON.
    pub event: serde_json::Value,
}

pub(crate) struct Held {
    pub event_id: Arc<str>,
    pub received_at: DateTime<Utc>,
    pub json: String,
}

impl Held {
    /// The event as [`StoredEvent`], with its `seq`.
    pub(crate) fn stored(&self, seq: u64) -> StoredEvent {
        StoredEvent {
            seq,
            event_id: self.event_id.to_string(),
            received_at: self.received_at,
            event: serde_json::from_str(&self.json).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// What an admin insert ([`crate::Emulator::insert_events`]) did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Inserted {
    /// The events newly stored, with their `seq` and `received_at`, in the order given.
    pub stored: Vec<StoredEvent>,
    /// The ids already held for the tenant (or repeated in the same call), not stored again.
    pub duplicates: Vec<String>,
}

/// A fast, non-cryptographic hasher (the Fx hash of rustc) for the event-id sets: the ids
/// come from authenticated clients, and SipHash was a visible share of the accept path.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FastHash;

pub(crate) struct Fx(u64);

impl Fx {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl BuildHasher for FastHash {
    type Hasher = Fx;
    fn build_hasher(&self) -> Fx {
        Fx(0)
    }
}

#[derive(Default)]
pub(crate) struct TenantStore {
    /// The ids held: those of `events`, nothing else (a forgotten event's id is not held).
    pub ids: HashSet<Arc<str>, FastHash>,
    /// What the platform holds, in order of arrival: the `seq` of `events[i]` is `i + 1`.
    pub events: Vec<Held>,
    /// The ids of the accepted events a `lose_after_accept` fault made the platform forget,
    /// in order (kept when the event is posted again).
    pub lost: Vec<Arc<str>>,
}

#[derive(Default)]
pub(crate) struct Tokens {
    /// jti of every token issued, by client.
    pub issued: HashMap<String, Vec<String>>,
    pub revoked: HashSet<String>,
    /// The most recent access tokens, for leak tests ([`Tokens::RECENT`] at most).
    pub recent: std::collections::VecDeque<String>,
}

impl Tokens {
    /// How many recent access tokens are kept.
    pub const RECENT: usize = 1024;

    pub(crate) fn remember(&mut self, token: &str) {
        if self.recent.len() == Self::RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(token.to_owned());
    }
}

pub(crate) struct AppState {
    pub issuer: String,
    pub clients: RwLock<BTreeMap<String, Client>>,
    pub settings: RwLock<Settings>,
    pub keys: KeyRing,
    pub tokens: Mutex<Tokens>,
    /// The `jti`s of the client assertions used, until they expire.
    pub assertions: SeenAssertions,
    /// Meters the platform refuses (meter -> rejection code), as if not registered.
    pub rejected_meters: RwLock<HashMap<String, String>>,
    pub tenants: RwLock<HashMap<String, Arc<Mutex<TenantStore>>>>,
    /// Billing endpoints' windows.
    pub billing_limiter: Limiter,
    /// Device endpoints' windows.
    pub device_limiter: Limiter,
    pub audit: AuditLog,
    pub counters: CounterCell,
    pub faults: Injector,
    /// The admin key and the `Host` names the admin API answers to.
    pub admin: AdminAccess,
}

fn secs(d: Duration) -> u64 {
    d.as_secs()
}

impl AppState {
    pub(crate) fn new(config: &EmulatorConfig, keys: KeyRing, admin: AdminAccess, issuer: String) -> Self {
        let clients = config
            .clients
            .iter()
            .map(|c| {
                let client =
                    Client { reg: c.clone(), tenants: c.tenants().iter().cloned().collect(), billing: c.billing() };
                (c.client_id().to_owned(), client)
            })
            .collect();
        Self {
            issuer,
            clients: RwLock::new(clients),
            settings: RwLock::new(Settings {
                billing_token_lifetime_s: secs(config.billing_token_lifetime),
                device_token_lifetime_s: secs(config.device_token_lifetime),
                billing_rate_per_min: config.billing_rate_per_min,
                device_rate_per_min: config.device_rate_per_min,
                jwks_max_age_s: None,
            }),
            keys,
            tokens: Mutex::new(Tokens::default()),
            assertions: SeenAssertions::default(),
            rejected_meters: RwLock::default(),
            tenants: RwLock::new(HashMap::new()),
            billing_limiter: Limiter::default(),
            device_limiter: Limiter::default(),
            audit: AuditLog::new(config.audit_capacity),
            counters: CounterCell::default(),
            faults: Injector::new(config.seed),
            admin,
        }
    }

    pub(crate) fn settings(&self) -> Settings {
        *self.settings.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn update_settings(&self, f: impl FnOnce(&mut Settings)) -> Settings {
        let mut s = self.settings.write().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
        *s
    }

    pub(crate) fn with_clients<R>(&self, f: impl FnOnce(&BTreeMap<String, Client>) -> R) -> R {
        f(&self.clients.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub(crate) fn with_clients_mut<R>(&self, f: impl FnOnce(&mut BTreeMap<String, Client>) -> R) -> R {
        f(&mut self.clients.write().unwrap_or_else(|p| p.into_inner()))
    }

    pub(crate) fn client_infos(&self) -> Vec<ClientInfo> {
        self.with_clients(|cs| {
            cs.values()
                .map(|c| ClientInfo {
                    client_id: c.reg.client_id().to_owned(),
                    tenants: c.tenants.iter().cloned().collect(),
                    billing: c.billing,
                })
                .collect()
        })
    }

    /// Whether `client` is registered and authorised for `tenant` right now.
    pub(crate) fn authorised(&self, client: &str, tenant: &str) -> bool {
        self.with_clients(|cs| cs.get(client).is_some_and(|c| c.tenants.contains(tenant)))
    }

    pub(crate) fn tenant(&self, tenant: &str) -> Arc<Mutex<TenantStore>> {
        if let Some(t) = self.tenants.read().unwrap_or_else(|p| p.into_inner()).get(tenant) {
            return Arc::clone(t);
        }
        Arc::clone(self.tenants.write().unwrap_or_else(|p| p.into_inner()).entry(tenant.to_owned()).or_default())
    }

    pub(crate) fn existing_tenant(&self, tenant: &str) -> Option<Arc<Mutex<TenantStore>>> {
        self.tenants.read().unwrap_or_else(|p| p.into_inner()).get(tenant).cloned()
    }

    pub(crate) fn tokens(&self) -> std::sync::MutexGuard<'_, Tokens> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }
}
