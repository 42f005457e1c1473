//! The admin operations: the state changes behind the methods of [`crate::Emulator`] and the
//! admin API (`crate::http::admin` serves them over HTTP; nothing here knows HTTP).

use serde::Deserialize;

use crate::config::ClientRegistration;
use crate::keys::NewKey;
use crate::state::{AppState, Client, ClientInfo, Settings};

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
