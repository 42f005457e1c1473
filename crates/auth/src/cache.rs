//! The token cache: one token per (tenant, client, scope), refreshed at 80% of its lifetime,
//! one token request at a time per key, and a failed early refresh never hurts callers while
//! the old token is still valid.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use billsync_domain::{
    BillingRequestHeaders, ClientId, Clock, SystemClock, Tenant, TenantName, TokenError, TokenSource,
};
use chrono::{DateTime, Utc};
use tracing::Instrument;

use crate::client::{OAuthClient, shift};
use crate::config::{AuthConfig, AuthMethod, ConfigError, TenantAuth};
use crate::diagnose::Diagnosis;
use crate::preflight::Authorized;

/// The cache key: tenant, client and requested scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    tenant: TenantName,
    client: ClientId,
    scope: String,
}

#[derive(Default)]
struct SlotState {
    current: Option<Authorized>,
    /// Completed fetches, so that callers who waited for someone else's fetch use its result.
    fetches: u64,
    last_error: Option<TokenError>,
    /// Consecutive failed refreshes while the old token was still valid.
    failures: u32,
    retry_after: Option<DateTime<Utc>>,
}

struct Slot {
    auth: TenantAuth,
    state: Mutex<SlotState>,
    fetch: tokio::sync::Mutex<()>,
}

/// Caches billing tokens per tenant; implements [`TokenSource`].
///
/// Construct it once with every tenant's [`TenantAuth`] and share it (`Arc<TokenCache>` or
/// `Arc<dyn TokenSource>`).
pub struct TokenCache {
    client: OAuthClient,
    clock: Arc<dyn Clock>,
    slots: HashMap<TenantName, Arc<Slot>>,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut tenants: Vec<&str> = self.slots.keys().map(TenantName::as_str).collect();
        tenants.sort_unstable();
        f.debug_struct("TokenCache").field("client", &self.client).field("tenants", &tenants).finish()
    }
}

enum Fast {
    Use(BillingRequestHeaders),
    Fetch { seq: u64, fallback: Option<BillingRequestHeaders> },
}

impl TokenCache {
    /// A cache over `tenants`, using the system clock.
    ///
    /// # Errors
    /// [`ConfigError::DuplicateTenant`] when two entries share a tenant name;
    /// [`ConfigError::MissingPrivateKey`] for a `private_key_jwt` tenant without a key;
    /// [`ConfigError::Http`] if the HTTP client cannot be built.
    pub fn new(config: AuthConfig, tenants: impl IntoIterator<Item = TenantAuth>) -> Result<Self, ConfigError> {
        Self::with_clock(config, tenants, Arc::new(SystemClock))
    }

    /// A cache reading the time from `clock`.
    ///
    /// # Errors
    /// As [`TokenCache::new`].
    pub fn with_clock(
        config: AuthConfig,
        tenants: impl IntoIterator<Item = TenantAuth>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ConfigError> {
        let client = OAuthClient::with_clock(config, clock.clone())?;
        let mut slots = HashMap::new();
        for auth in tenants {
            let name = auth.tenant().name().clone();
            if slots.contains_key(&name) {
                return Err(ConfigError::DuplicateTenant(name.to_string()));
            }
            if auth.auth_method() == AuthMethod::PrivateKeyJwt && auth.private_key().is_none() {
                return Err(ConfigError::MissingPrivateKey { tenant: name.to_string() });
            }
            slots.insert(
                name,
                Arc::new(Slot { auth, state: Mutex::new(SlotState::default()), fetch: tokio::sync::Mutex::new(()) }),
            );
        }
        Ok(Self { client, clock, slots })
    }

    /// The OAuth client underneath (for diagnosis and counters).
    pub fn client(&self) -> &OAuthClient {
        &self.client
    }

    /// How many HTTP requests were sent to the token endpoint for this tenant.
    pub fn token_requests(&self, tenant: &TenantName) -> u64 {
        self.client.token_requests(tenant)
    }

    /// The configured tenants' settings.
    pub fn tenants(&self) -> impl Iterator<Item = &TenantAuth> {
        self.slots.values().map(|s| &s.auth)
    }

    /// Diagnoses a configured tenant (see [`OAuthClient::diagnose`]); `None` for an unknown name.
    pub async fn diagnose(&self, tenant: &TenantName) -> Option<Diagnosis> {
        let slot = self.slots.get(tenant)?;
        Some(self.client.diagnose(&slot.auth).await)
    }

    fn slot(&self, tenant: &Tenant) -> Result<&Arc<Slot>, TokenError> {
        let slot = self.slots.get(tenant.name()).ok_or_else(|| TokenError::Refused {
            error: "unknown_tenant".into(),
            description: Some(format!("tenant {} has no OAuth client configuration", tenant.name())),
        })?;
        if slot.auth.tenant() != tenant {
            return Err(TokenError::Refused {
                error: "tenant_config_mismatch".into(),
                description: Some(format!(
                    "tenant {} was asked for with ids that differ from its configuration (tenant_id {}, application_id {}, client_id {})",
                    tenant.name(),
                    tenant.tenant_id(),
                    tenant.application_id(),
                    tenant.client_id()
                )),
            });
        }
        Ok(slot)
    }

    fn key(auth: &TenantAuth) -> Key {
        Key {
            tenant: auth.tenant().name().clone(),
            client: auth.tenant().client_id().clone(),
            scope: auth.scope_param(),
        }
    }

    /// What the cache can answer without a request: a fresh token, or the old one while
    /// someone else fetches or while a failed refresh backs off.
    fn fast_path(&self, slot: &Slot, now: DateTime<Utc>) -> Fast {
        let st = slot.state.lock().unwrap_or_else(|p| p.into_inner());
        let policy = self.client.config().policy();
        let (fresh, usable) = match &st.current {
            Some(a) => (now < a.refresh_at, a.usable(policy, now)),
            None => (false, false),
        };
        let current = st.current.as_ref().map(|a| a.headers.clone());
        match current {
            Some(h) if fresh => Fast::Use(h),
            Some(h) if usable && st.retry_after.is_some_and(|r| now < r) => Fast::Use(h),
            Some(h) if usable => Fast::Fetch { seq: st.fetches, fallback: Some(h) },
            _ => Fast::Fetch { seq: st.fetches, fallback: None },
        }
    }

    async fn get(&self, slot: &Slot) -> Result<BillingRequestHeaders, TokenError> {
        let (seq, fallback) = match self.fast_path(slot, self.clock.now()) {
            Fast::Use(h) => return Ok(h),
            Fast::Fetch { seq, fallback } => (seq, fallback),
        };
        // Someone else is refreshing while the old token is still valid: don't wait.
        let _guard = match (slot.fetch.try_lock(), fallback) {
            (Ok(g), _) => g,
            (Err(_), Some(h)) => return Ok(h),
            (Err(_), None) => slot.fetch.lock().await,
        };
        // Re-check: the fetch we waited for may have produced what we need.
        {
            let st = slot.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.fetches != seq {
                if let Some(a) = &st.current {
                    if self.clock.now() < a.refresh_at {
                        return Ok(a.headers.clone());
                    }
                }
                if let (None, Some(e)) = (&st.current, &st.last_error) {
                    return Err(e.clone());
                }
            }
        }
        match self.fast_path(slot, self.clock.now()) {
            Fast::Use(h) => return Ok(h),
            Fast::Fetch { .. } => {}
        }
        self.fetch(slot).await
    }

    async fn fetch(&self, slot: &Slot) -> Result<BillingRequestHeaders, TokenError> {
        let result = match self.client.request_token(&slot.auth).await {
            Ok(grant) => self.client.preflight(&slot.auth, grant).await.outcome,
            Err(f) => Err(f.error),
        };
        let now = self.clock.now();
        let mut st = slot.state.lock().unwrap_or_else(|p| p.into_inner());
        st.fetches += 1;
        match result {
            Ok(a) => {
                tracing::debug!(tenant = %slot.auth.tenant().name(), refresh_at = %a.refresh_at, expires_at = %a.expires_at, "token cached");
                let h = a.headers.clone();
                st.current = Some(a);
                st.last_error = None;
                st.failures = 0;
                st.retry_after = None;
                Ok(h)
            }
            Err(e) => {
                let policy = self.client.config().policy();
                let still_valid = st.current.as_ref().filter(|a| a.usable(policy, now));
                match still_valid.map(|a| (a.headers.clone(), a.expires_at)) {
                    Some((h, expires_at)) => {
                        st.failures = st.failures.saturating_add(1);
                        let wait = self.client.config().retry().backoff(st.failures);
                        let retry_at = shift(now, chrono::Duration::from_std(wait).unwrap_or_default());
                        // Never back off past the token's usable life.
                        st.retry_after = Some(retry_at.min(expires_at));
                        tracing::warn!(
                            tenant = %slot.auth.tenant().name(), error = %e, failures = st.failures,
                            "early token refresh failed; serving the still-valid token"
                        );
                        st.last_error = Some(e);
                        Ok(h)
                    }
                    None => {
                        st.current = None;
                        st.last_error = Some(e.clone());
                        Err(e)
                    }
                }
            }
        }
    }
}

#[async_trait]
impl TokenSource for TokenCache {
    async fn headers(&self, tenant: &Tenant) -> Result<BillingRequestHeaders, TokenError> {
        let slot = self.slot(tenant)?;
        let key = Self::key(&slot.auth);
        let span =
            tracing::debug_span!("token_cache", tenant = %key.tenant, client_id = %key.client, scope = %key.scope);
        self.get(slot).instrument(span).await
    }

    async fn invalidate(&self, tenant: &Tenant, refused: &BillingRequestHeaders) {
        let Ok(slot) = self.slot(tenant) else { return };
        let mut st = slot.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.current.as_ref().is_some_and(|a| a.headers.same_token(refused)) {
            tracing::info!(tenant = %tenant.name(), "token invalidated after the platform refused it");
            st.current = None;
            st.retry_after = None;
            st.failures = 0;
        }
    }
}
