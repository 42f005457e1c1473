//! The admin operations: the state changes behind the methods of [`crate::Emulator`] and the
//! admin API (`crate::http::admin` serves them over HTTP; nothing here knows HTTP).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::config::ClientRegistration;
use crate::event;
use crate::keys::NewKey;
use crate::state::{AppState, Client, ClientInfo, Held, Inserted, Settings};

/// Why an admin operation was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// No client with this id is registered.
    #[error("no client `{client_id}` is registered")]
    UnknownClient {
        /// The id asked for.
        client_id: String,
    },
    /// A client with this id is already registered.
    #[error("client `{client_id}` is already registered")]
    DuplicateClient {
        /// The id asked for.
        client_id: String,
    },
    /// A new signing key could not be generated.
    #[error("could not generate a signing key: {0}")]
    Key(String),
    /// An event to insert breaks the emulator's event rules, or names a meter the platform
    /// refuses ([`crate::Emulator::reject_meter`]); nothing was inserted.
    #[error("{field}: {reason}")]
    InvalidEvent {
        /// The event's position in the list, from 0.
        index: usize,
        /// What is wrong, as a path: `events[2].quantity`, `events[0].attributes.site`, or
        /// `events[1]` for the event as a whole (not an object, an unknown field).
        field: String,
        /// Why, in words.
        reason: String,
    },
}

/// A partial change of lifetimes and limits: absent fields stay as they are; for the rate
/// limits, `null` (`Some(None)`) switches the limit off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsUpdate {
    /// New lifetime of billing tokens, in seconds.
    #[serde(default)]
    pub billing_token_lifetime_s: Option<u64>,
    /// New lifetime of device tokens, in seconds.
    #[serde(default)]
    pub device_token_lifetime_s: Option<u64>,
    /// New billing limit per minute; `Some(None)` switches it off.
    #[serde(default, deserialize_with = "present")]
    pub billing_rate_per_min: Option<Option<u32>>,
    /// New device limit per minute; `Some(None)` switches it off.
    #[serde(default, deserialize_with = "present")]
    pub device_rate_per_min: Option<Option<u32>>,
    /// New `Cache-Control: max-age` of the JWKS, in seconds; `Some(None)` sends none.
    #[serde(default, deserialize_with = "nullable")]
    pub jwks_max_age_s: Option<Option<u64>>,
}

fn nullable<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(d).map(Some)
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
    Option::<u32>::deserialize(d).map(|v| Some(v.filter(|&l| l > 0)))
}

impl AppState {
    pub(crate) fn apply_settings(&self, u: SettingsUpdate) -> Settings {
        self.update_settings(|s| {
            if let Some(v) = u.billing_token_lifetime_s {
                s.billing_token_lifetime_s = v;
            }
            if let Some(v) = u.device_token_lifetime_s {
                s.device_token_lifetime_s = v;
            }
            if let Some(v) = u.billing_rate_per_min {
                s.billing_rate_per_min = v;
            }
            if let Some(v) = u.device_rate_per_min {
                s.device_rate_per_min = v;
            }
            if let Some(v) = u.jwks_max_age_s {
                s.jwks_max_age_s = v;
            }
        })
    }

    fn change_client(&self, client_id: &str, f: impl FnOnce(&mut Client)) -> Result<ClientInfo, AdminError> {
        self.with_clients_mut(|cs| {
            let c = cs.get_mut(client_id).ok_or_else(|| AdminError::UnknownClient { client_id: client_id.into() })?;
            f(c);
            Ok(ClientInfo {
                client_id: client_id.to_owned(),
                tenants: c.tenants.iter().cloned().collect(),
                billing: c.billing,
            })
        })
    }

    pub(crate) fn set_billing_access(&self, client_id: &str, enabled: bool) -> Result<ClientInfo, AdminError> {
        self.change_client(client_id, |c| c.billing = enabled)
    }

    pub(crate) fn grant_tenant(&self, client_id: &str, tenant_id: &str) -> Result<ClientInfo, AdminError> {
        self.change_client(client_id, |c| {
            c.tenants.insert(tenant_id.to_owned());
        })
    }

    pub(crate) fn withdraw_tenant(&self, client_id: &str, tenant_id: &str) -> Result<ClientInfo, AdminError> {
        self.change_client(client_id, |c| {
            c.tenants.remove(tenant_id);
        })
    }

    pub(crate) fn register_client(&self, reg: ClientRegistration) -> Result<ClientInfo, AdminError> {
        self.with_clients_mut(|cs| {
            if cs.contains_key(reg.client_id()) {
                return Err(AdminError::DuplicateClient { client_id: reg.client_id().to_owned() });
            }
            let info = ClientInfo {
                client_id: reg.client_id().to_owned(),
                tenants: reg.tenants().to_vec(),
                billing: reg.billing(),
            };
            let client = Client { tenants: reg.tenants().iter().cloned().collect(), billing: reg.billing(), reg };
            cs.insert(info.client_id.clone(), client);
            Ok(info)
        })
    }

    /// Revokes one token; whether it was live (issued here and not yet revoked).
    pub(crate) fn revoke_token(&self, jti: &str) -> bool {
        let mut t = self.tokens();
        let issued = t.issued.values().any(|v| v.iter().any(|j| j == jti));
        t.revoked.insert(jti.to_owned()) && issued
    }

    /// Revokes every token issued to a client so far; how many were newly revoked.
    pub(crate) fn revoke_client(&self, client_id: &str) -> usize {
        let mut t = self.tokens();
        let jtis = t.issued.get(client_id).cloned().unwrap_or_default();
        jtis.into_iter().filter(|j| t.revoked.insert(j.clone())).count()
    }

    pub(crate) fn lost_event_ids(&self, tenant_id: &str) -> Vec<String> {
        self.existing_tenant(tenant_id)
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).lost.iter().map(ToString::to_string).collect())
            .unwrap_or_default()
    }

    /// Stores events for a tenant without the billing endpoint, as if another sender had posted
    /// them: each checked by the emulator's own rules at `now` (and against the refused
    /// meters), all or nothing; then stored unless already held, with the next `seq` and
    /// `received_at = now`. No fault applies.
    pub(crate) fn insert_events(
        &self,
        tenant_id: &str,
        events: &[Value],
        now: DateTime<Utc>,
    ) -> Result<Inserted, AdminError> {
        let refused_meters: HashMap<String, String> =
            self.rejected_meters.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut good = Vec::with_capacity(events.len());
        for (index, value) in events.iter().enumerate() {
            let valid = event::validate(value, now).map_err(|r| {
                let field = match r.path() {
                    path if path.is_empty() => format!("events[{index}]"),
                    path => format!("events[{index}].{path}"),
                };
                AdminError::InvalidEvent { index, field, reason: r.reason().to_owned() }
            })?;
            if let Some(code) = refused_meters.get(&valid.meter) {
                return Err(AdminError::InvalidEvent {
                    index,
                    field: format!("events[{index}].meter"),
                    reason: format!("meter {} is not registered for this tenant ({code})", valid.meter),
                });
            }
            good.push(valid);
        }
        let mut inserted = Inserted::default();
        {
            let store = self.tenant(tenant_id);
            let mut s = store.lock().unwrap_or_else(|p| p.into_inner());
            for valid in good {
                let id: Arc<str> = Arc::from(valid.event_id);
                if s.ids.insert(Arc::clone(&id)) {
                    let held = Held { event_id: id, received_at: now, json: valid.json };
                    inserted.stored.push(held.stored(s.events.len() as u64 + 1));
                    s.events.push(held);
                } else {
                    inserted.duplicates.push(id.to_string());
                }
            }
        }
        let n = inserted.stored.len() as u64;
        if n > 0 {
            self.counters.update(|c| *c.events_inserted.entry(tenant_id.to_owned()).or_default() += n);
        }
        Ok(inserted)
    }

    pub(crate) fn event_ids(&self, tenant_id: &str) -> Vec<String> {
        self.existing_tenant(tenant_id)
            .map(|s| {
                s.lock().unwrap_or_else(|p| p.into_inner()).events.iter().map(|h| h.event_id.to_string()).collect()
            })
            .unwrap_or_default()
    }
}

/// Generates a key off the async runtime and makes it the signing key; returns its kid.
pub(crate) async fn rotate(st: &AppState) -> Result<String, AdminError> {
    let key = tokio::task::spawn_blocking(NewKey::generate)
        .await
        .map_err(|e| AdminError::Key(e.to_string()))?
        .map_err(|e| AdminError::Key(e.to_string()))?;
    let kid = st.keys.rotate(key);
    tracing::info!(kid = %kid, "signing key rotated");
    Ok(kid)
}
