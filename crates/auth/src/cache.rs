//! The token cache: one slot per key (tenant, client id, scope set, client authentication
//! method), each slot holding at most one token, refreshed at 80% of its lifetime, with one
//! token request at a time per slot; a failed early refresh never hurts callers while the old
//! token is still valid.
//!
//! Every configured tenant has the slot of its configured scopes (the billing write scope
//! unless configured otherwise), which [`TokenSource::headers`] serves, and one for the billing
//! read scope ([`BILLING_READ_SCOPE`](billsync_domain::BILLING_READ_SCOPE)), which [`TokenCache::read_headers`] serves for
//! reconciliation. A tenant whose configured scopes already include the read scope gets no
//! second slot: its reads are served from its configured slot, the one token carrying both.
//! Scope sets are compared as sets, so `a b` and `b a` are one key. A token is only ever
//! served from the slot it was requested for, and only after passing the policy of the scope
//! it is served for.
//!
//! All slots are made when the cache is built (the scope sets are known then: the configured
//! one and the read scope), so the slot map is never written afterwards and the billing write
//! path looks its slot up without a lock. An unused slot costs an empty state, no request.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use billsync_domain::{
    BillingPolicy, BillingRequestHeaders, ClientId, Clock, Scope, SystemClock, Tenant, TenantName, TokenError,
    TokenSource,
};
use chrono::{DateTime, Utc};
use tracing::Instrument;

use crate::client::{OAuthClient, shift};
use crate::config::{AuthConfig, AuthMethod, ConfigError, TenantAuth};
use crate::diagnose::{Diagnosis, likely_assertion_causes};
use crate::preflight::Authorized;

/// A set of scopes: order and duplicates do not matter (`a b`, `b a` and `a b a` are equal).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ScopeSet(BTreeSet<Scope>);

impl ScopeSet {
    /// Whether every scope of `other` is in this set.
    fn contains_all(&self, other: &ScopeSet) -> bool {
        other.0.is_subset(&self.0)
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl fmt::Display for ScopeSet {
    /// Space-separated, in sorted order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(s.as_str())?;
        }
        Ok(())
    }
}

/// The cache key: which token a slot holds. No secrets in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    tenant: TenantName,
    client: ClientId,
    scopes: ScopeSet,
    method: AuthMethod,
}

impl Key {
    fn new(auth: &TenantAuth, scopes: ScopeSet) -> Self {
        let tenant = auth.tenant();
        Self { tenant: tenant.name().clone(), client: tenant.client_id().clone(), scopes, method: auth.auth_method() }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (client {}, {}, scope \"{}\")", self.tenant, self.client, self.method, self.scopes)
    }
}

/// A scope set served besides the configured one, and the policy its tokens must pass.
#[derive(Debug)]
struct ExtraScope {
    scopes: ScopeSet,
    /// The scopes as requested.
    request: Vec<Scope>,
    policy: BillingPolicy,
}

impl ExtraScope {
    /// The configured read scope, under the configured billing policy otherwise.
    fn billing_read(config: &AuthConfig) -> Self {
        let configured = config.policy();
        let scope = config.read_scope().clone();
        let policy = configured.clone().with_scope(scope.clone());
        Self { scopes: std::iter::once(scope.clone()).collect(), request: vec![scope], policy }
    }
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
    key: Key,
    auth: Arc<TenantAuth>,
    /// The scopes requested, in the order sent: the configured order for the tenant's own slot.
    scopes: Vec<Scope>,
    /// What every token of this slot is checked against, when issued and when reused.
    policy: BillingPolicy,
    state: Mutex<SlotState>,
    fetch: tokio::sync::Mutex<()>,
}

/// A configured tenant: its settings, and the keys of its slots (its configured one first).
struct TenantEntry {
    auth: Arc<TenantAuth>,
    keys: Vec<Key>,
}

/// Caches billing tokens per (tenant, client id, scope set, auth method); implements
/// [`TokenSource`] for the billing write path and serves read tokens with
/// [`TokenCache::read_headers`].
///
/// Construct it once with every tenant's [`TenantAuth`] and share it (`Arc<TokenCache>` or
/// `Arc<dyn TokenSource>`). Its `Debug` lists tenants and slot keys, never secrets or tokens.
pub struct TokenCache {
    client: OAuthClient,
    clock: Arc<dyn Clock>,
    tenants: HashMap<TenantName, TenantEntry>,
    slots: HashMap<Key, Arc<Slot>>,
    /// The read scope's slots' scopes and policy.
    read: ExtraScope,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut tenants: Vec<&str> = self.tenants.keys().map(TenantName::as_str).collect();
        tenants.sort_unstable();
        let mut slots: Vec<String> = self.slots.keys().map(Key::to_string).collect();
        slots.sort_unstable();
        f.debug_struct("TokenCache")
            .field("client", &self.client)
            .field("tenants", &tenants)
            .field("slots", &slots)
            .finish()
    }
}

enum Fast {
    Use(Authorized),
    Fetch { seq: u64, fallback: Option<Authorized> },
}

impl TokenCache {
    /// A cache over `tenants`, using the system clock.
    ///
    /// # Errors
    /// [`ConfigError::DuplicateTenant`] when two entries share a tenant name;
    /// [`ConfigError::MissingPrivateKey`] for a `private_key_jwt` tenant with neither a key nor
    /// a client assertion file;
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
        let read = ExtraScope::billing_read(client.config());
        let mut cache = Self { client, clock, tenants: HashMap::new(), slots: HashMap::new(), read };
        for auth in tenants {
            cache.add(auth)?;
        }
        Ok(cache)
    }

    /// Adds a tenant: its configured slot, and a read slot unless the configured scopes
    /// include the read scope.
    fn add(&mut self, auth: TenantAuth) -> Result<(), ConfigError> {
        let name = auth.tenant().name().clone();
        if self.tenants.contains_key(&name) {
            return Err(ConfigError::DuplicateTenant(name.to_string()));
        }
        if auth.auth_method() == AuthMethod::PrivateKeyJwt && !auth.has_assertion_source() {
            return Err(ConfigError::MissingPrivateKey { tenant: name.to_string() });
        }
        let auth = Arc::new(auth);
        let own = Key::new(&auth, auth.scopes().iter().cloned().collect());
        let policy = self.client.config().policy().clone();
        let mut keys = vec![own.clone()];
        self.insert_slot(own.clone(), &auth, auth.scopes().to_vec(), policy);
        if !own.scopes.contains_all(&self.read.scopes) {
            let key = Key::new(&auth, self.read.scopes.clone());
            let (request, policy) = (self.read.request.clone(), self.read.policy.clone());
            keys.push(key.clone());
            self.insert_slot(key, &auth, request, policy);
        }
        self.tenants.insert(name, TenantEntry { auth, keys });
        Ok(())
    }

    fn insert_slot(&mut self, key: Key, auth: &Arc<TenantAuth>, scopes: Vec<Scope>, policy: BillingPolicy) {
        let slot = Slot {
            key: key.clone(),
            auth: auth.clone(),
            scopes,
            policy,
            state: Mutex::new(SlotState::default()),
            fetch: tokio::sync::Mutex::new(()),
        };
        self.slots.insert(key, Arc::new(slot));
    }

    /// The OAuth client underneath (for diagnosis and counters).
    pub fn client(&self) -> &OAuthClient {
        &self.client
    }

    /// How many HTTP requests were sent to the token endpoint for this tenant, for any of its
    /// scope sets (retries included).
    pub fn token_requests(&self, tenant: &TenantName) -> u64 {
        self.client.token_requests(tenant)
    }

    /// The configured tenants' settings.
    pub fn tenants(&self) -> impl Iterator<Item = &TenantAuth> {
        self.tenants.values().map(|e| e.auth.as_ref())
    }

    /// Diagnoses a configured tenant (see [`OAuthClient::diagnose`]); `None` for an unknown name.
    pub async fn diagnose(&self, tenant: &TenantName) -> Option<Diagnosis> {
        let entry = self.tenants.get(tenant)?;
        Some(self.client.diagnose(&entry.auth).await)
    }

    /// Headers for a billing read request (reconciliation): a token for
    /// [`BILLING_READ_SCOPE`](billsync_domain::BILLING_READ_SCOPE), checked against the billing
    /// policy with that scope.
    ///
    /// The token comes from the tenant's read slot, requested and refreshed apart from its
    /// write token; for a tenant whose configured scopes include the read scope, it is the
    /// tenant's one token, the one [`TokenSource::headers`] serves too (no second request).
    /// Drop a refused read token with [`TokenSource::invalidate`], as a write token.
    ///
    /// # Errors
    /// As [`TokenSource::headers`]; [`TokenError::Policy`] with
    /// [`ViolationCode::MissingScope`](billsync_domain::ViolationCode::MissingScope) when the
    /// token lacks the read scope (a tenant asking for both scopes in one token that was
    /// granted the write scope only).
    pub async fn read_headers(&self, tenant: &Tenant) -> Result<BillingRequestHeaders, TokenError> {
        let read = &self.read;
        let slot = self.slot(tenant, Some(&read.scopes))?;
        self.serve(slot, &read.policy).await
    }

    /// The tenant's configuration, checked against the ids the caller holds.
    fn entry(&self, tenant: &Tenant) -> Result<&TenantEntry, TokenError> {
        let entry = self.tenants.get(tenant.name()).ok_or_else(|| TokenError::Refused {
            error: "unknown_tenant".into(),
            description: Some(format!("tenant {} has no OAuth client configuration", tenant.name())),
        })?;
        if entry.auth.tenant() != tenant {
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
        Ok(entry)
    }

    /// The slot serving `wanted` for `tenant` (its configured scopes when `None`): the slot of
    /// exactly that scope set, else one of the tenant's whose set contains it.
    fn slot(&self, tenant: &Tenant, wanted: Option<&ScopeSet>) -> Result<&Arc<Slot>, TokenError> {
        let entry = self.entry(tenant)?;
        let key = match wanted {
            None => entry.keys.first(),
            Some(w) => entry
                .keys
                .iter()
                .find(|k| k.scopes == *w)
                .or_else(|| entry.keys.iter().find(|k| k.scopes.contains_all(w))),
        };
        key.and_then(|k| self.slots.get(k)).ok_or_else(|| TokenError::Refused {
            error: "no_token_slot".into(),
            description: Some(format!("tenant {} has no token for the scopes asked for", tenant.name())),
        })
    }

    /// A token from `slot`, for a request that needs `policy`: a slot serving a subset of its
    /// scopes checks the token against that subset's policy too.
    async fn serve(&self, slot: &Slot, policy: &BillingPolicy) -> Result<BillingRequestHeaders, TokenError> {
        let k = &slot.key;
        let span = tracing::debug_span!(
            "token_cache",
            tenant = %k.tenant, client_id = %k.client, scope = %k.scopes, auth_method = %k.method
        );
        let a = self.get(slot).instrument(span).await?;
        if *policy != slot.policy {
            let h = &a.headers;
            policy.check(h.claims(), h.tenant_id(), h.application_id(), shift(self.clock.now(), a.skew)).map_err(
                |v| {
                    tracing::warn!(
                        slot = %slot.key, wanted = %policy.scope(), violations = ?v.codes(),
                        "the slot's token does not serve this request"
                    );
                    TokenError::Policy(v)
                },
            )?;
        }
        Ok(a.headers)
    }

    /// What the cache can answer without a request: a fresh token, or the old one while
    /// someone else fetches or while a failed refresh backs off.
    fn fast_path(slot: &Slot, now: DateTime<Utc>) -> Fast {
        let st = slot.state.lock().unwrap_or_else(|p| p.into_inner());
        let (fresh, usable) = match &st.current {
            Some(a) => (now < a.refresh_at, a.usable(&slot.policy, now)),
            None => (false, false),
        };
        match st.current.clone() {
            Some(a) if fresh => Fast::Use(a),
            Some(a) if usable && st.retry_after.is_some_and(|r| now < r) => Fast::Use(a),
            Some(a) if usable => Fast::Fetch { seq: st.fetches, fallback: Some(a) },
            _ => Fast::Fetch { seq: st.fetches, fallback: None },
        }
    }

    async fn get(&self, slot: &Slot) -> Result<Authorized, TokenError> {
        let (seq, fallback) = match Self::fast_path(slot, self.clock.now()) {
            Fast::Use(a) => return Ok(a),
            Fast::Fetch { seq, fallback } => (seq, fallback),
        };
        // Someone else is refreshing while the old token is still valid: don't wait.
        let _guard = match (slot.fetch.try_lock(), fallback) {
            (Ok(g), _) => g,
            (Err(_), Some(a)) => return Ok(a),
            (Err(_), None) => slot.fetch.lock().await,
        };
        // Re-check: the fetch we waited for may have produced what we need.
        {
            let st = slot.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.fetches != seq {
                if let Some(a) = &st.current {
                    if self.clock.now() < a.refresh_at {
                        return Ok(a.clone());
                    }
                }
                if let (None, Some(e)) = (&st.current, &st.last_error) {
                    return Err(e.clone());
                }
            }
        }
        match Self::fast_path(slot, self.clock.now()) {
            Fast::Use(a) => return Ok(a),
            Fast::Fetch { .. } => {}
        }
        self.fetch(slot).await
    }

    /// One token request for the slot's scopes, and its preflight against the slot's policy.
    async fn issue(&self, slot: &Slot) -> Result<Authorized, TokenError> {
        match self.client.request_token_for(&slot.auth, &slot.scopes).await {
            Ok(grant) => self.client.preflight_with(&slot.auth, grant, &slot.policy).await.outcome,
            Err(f) => Err(explain_refusal(&slot.auth, f.error)),
        }
    }

    async fn fetch(&self, slot: &Slot) -> Result<Authorized, TokenError> {
        let result = self.issue(slot).await;
        let now = self.clock.now();
        let mut st = slot.state.lock().unwrap_or_else(|p| p.into_inner());
        st.fetches += 1;
        match result {
            Ok(a) => {
                tracing::debug!(
                    slot = %slot.key, refresh_at = %a.refresh_at, expires_at = %a.expires_at, "token cached"
                );
                st.current = Some(a.clone());
                st.last_error = None;
                st.failures = 0;
                st.retry_after = None;
                Ok(a)
            }
            Err(e) => {
                let still_valid = st.current.as_ref().filter(|a| a.usable(&slot.policy, now)).cloned();
                match still_valid {
                    Some(a) => {
                        st.failures = st.failures.saturating_add(1);
                        let wait = self.client.config().retry().backoff(st.failures);
                        let retry_at = shift(now, chrono::Duration::from_std(wait).unwrap_or_default());
                        // Never back off past the token's usable life.
                        st.retry_after = Some(retry_at.min(a.expires_at));
                        tracing::warn!(
                            slot = %slot.key, error = %e, failures = st.failures,
                            "early token refresh failed; serving the still-valid token"
                        );
                        st.last_error = Some(e);
                        Ok(a)
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
    /// Headers for a billing write request, from the tenant's configured slot.
    async fn headers(&self, tenant: &Tenant) -> Result<BillingRequestHeaders, TokenError> {
        let slot = self.slot(tenant, None)?;
        self.serve(slot, &slot.policy).await
    }

    /// Drops the refused token from whichever of the tenant's slots holds it (write or read).
    async fn invalidate(&self, tenant: &Tenant, refused: &BillingRequestHeaders) {
        let Ok(entry) = self.entry(tenant) else {
            return;
        };
        for slot in entry.keys.iter().filter_map(|k| self.slots.get(k)) {
            let mut st = slot.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.current.as_ref().is_some_and(|a| a.headers.same_token(refused)) {
                tracing::info!(slot = %slot.key, "token invalidated after the platform refused it");
                st.current = None;
                st.retry_after = None;
                st.failures = 0;
            }
        }
    }
}

/// A bare `invalid_client` for a `private_key_jwt` tenant, with the likely causes the platform
/// does not name (most likely first), so that the blocked tenant's reason carries them.
fn explain_refusal(auth: &TenantAuth, error: TokenError) -> TokenError {
    let causes = likely_assertion_causes(auth);
    match error {
        TokenError::Refused { error, description } if error == "invalid_client" && !causes.is_empty() => {
            let listed: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.code, c.fix)).collect();
            let said = description.map(|d| format!("{d}; ")).unwrap_or_default();
            TokenError::Refused {
                error,
                description: Some(format!(
                    "{said}the platform does not say why it refuses a client assertion; likely causes, in order: {}",
                    listed.join("; ")
                )),
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::hash_map::DefaultHasher;

    use billsync_domain::{BILLING_READ_SCOPE, BILLING_WRITE_SCOPE, ClientSecret};

    use super::*;

    fn scopes(s: &[&str]) -> ScopeSet {
        s.iter().map(|s| Scope::parse(*s).unwrap()).collect()
    }

    fn tenant(name: &str, client: &str) -> Tenant {
        Tenant::new(name.parse().unwrap(), "t".parse().unwrap(), client.parse().unwrap(), client.parse().unwrap())
    }

    fn hash(k: &Key) -> u64 {
        use std::hash::Hasher as _;
        let mut h = DefaultHasher::new();
        k.hash(&mut h);
        h.finish()
    }

    #[test]
    fn scope_sets_ignore_order_and_duplicates() {
        let auth = TenantAuth::new(tenant("acme", "app-a"), ClientSecret::new("s"));
        let ab = Key::new(&auth, scopes(&["a", "b"]));
        let ba = Key::new(&auth, scopes(&["b", "a", "b"]));
        assert_eq!(ab, ba);
        assert_eq!(hash(&ab), hash(&ba));
        assert_eq!(ab.scopes.to_string(), "a b");
        assert!(ab.scopes.contains_all(&scopes(&["b"])) && !scopes(&["b"]).contains_all(&ab.scopes));
    }

    #[test]
    fn keys_differ_by_tenant_client_scopes_and_method() {
        let a = TenantAuth::new(tenant("acme", "app-a"), ClientSecret::new("s"));
        let key = Key::new(&a, scopes(&["a"]));
        let others = [
            Key::new(&TenantAuth::new(tenant("globex", "app-a"), ClientSecret::new("s")), scopes(&["a"])),
            Key::new(&TenantAuth::new(tenant("acme", "app-b"), ClientSecret::new("s")), scopes(&["a"])),
            Key::new(&a, scopes(&["a", "b"])),
            Key::new(
                &TenantAuth::new(tenant("acme", "app-a"), ClientSecret::new("s"))
                    .with_auth_method(AuthMethod::ClientSecretBasic),
                scopes(&["a"]),
            ),
        ];
        for other in others {
            assert_ne!(key, other);
        }
    }

    #[test]
    fn tenants_get_a_read_slot_unless_their_configured_scopes_include_the_read_scope() {
        let write = Scope::parse(BILLING_WRITE_SCOPE).unwrap();
        let read = Scope::parse(BILLING_READ_SCOPE).unwrap();
        let split = TenantAuth::new(tenant("acme", "app-a"), ClientSecret::new("s"));
        let both = TenantAuth::new(tenant("globex", "app-a"), ClientSecret::new("s")).with_scopes([read, write]);
        let config = AuthConfig::new("https://idcs.example.com/oauth2/v1/token").unwrap();
        let cache = TokenCache::new(config, [split, both]).unwrap();
        assert_eq!(cache.slots.len(), 3);
        assert_eq!(cache.tenants[&TenantName::parse("acme").unwrap()].keys.len(), 2);
        assert_eq!(cache.tenants[&TenantName::parse("globex").unwrap()].keys.len(), 1);
        let shown = format!("{cache:?}");
        assert!(shown.contains(&format!("scope \\\"{BILLING_READ_SCOPE}\\\"")), "{shown}");
    }
}
