//! The methods of [`Emulator`] that act on the platform at run time, with the readers that go
//! with them: settings, clients and tenants, refused meters, tokens and revocation, keys,
//! faults and signing. Most are also operations of the admin API (`crate::http::admin`).

use std::time::Duration;

use crate::{
    AdminError, ClientInfo, ClientRegistration, Emulator, Fault, FaultKind, Inserted, Settings, SettingsUpdate, admin,
};

impl Emulator {
    /// Applies a partial change of lifetimes and limits; returns the new settings.
    pub fn update_settings(&self, update: SettingsUpdate) -> Settings {
        self.state.apply_settings(update)
    }

    /// Lifetime of tokens issued from now on that carry a billing scope.
    pub fn set_billing_token_lifetime(&self, lifetime: Duration) {
        self.state.update_settings(|s| s.billing_token_lifetime_s = lifetime.as_secs());
    }

    /// Lifetime of device-only tokens issued from now on.
    pub fn set_device_token_lifetime(&self, lifetime: Duration) {
        self.state.update_settings(|s| s.device_token_lifetime_s = lifetime.as_secs());
    }

    /// Billing requests per (tenant, client) pair per 60 s; `None` switches the limit off.
    pub fn set_billing_rate_per_min(&self, limit: Option<u32>) {
        self.state.update_settings(|s| s.billing_rate_per_min = limit.filter(|&l| l > 0));
    }

    /// Device requests per (tenant, client) pair per 60 s; `None` switches the limit off.
    pub fn set_device_rate_per_min(&self, limit: Option<u32>) {
        self.state.update_settings(|s| s.device_rate_per_min = limit.filter(|&l| l > 0));
    }

    /// Grants or withdraws Billing Services for a client. Affects tokens issued from now on;
    /// combine with [`Emulator::revoke_client_tokens`] to cut live tokens off.
    ///
    /// # Errors
    /// [`AdminError::UnknownClient`].
    pub fn set_billing_access(&self, client_id: &str, enabled: bool) -> Result<ClientInfo, AdminError> {
        self.state.set_billing_access(client_id, enabled)
    }

    /// Authorises a client for a tenant.
    ///
    /// # Errors
    /// [`AdminError::UnknownClient`].
    pub fn grant_tenant(&self, client_id: &str, tenant_id: &str) -> Result<ClientInfo, AdminError> {
        self.state.grant_tenant(client_id, tenant_id)
    }

    /// Withdraws a tenant from a client: its otherwise valid tokens for that tenant get
    /// `403 tenant_not_authorized` from now on.
    ///
    /// # Errors
    /// [`AdminError::UnknownClient`].
    pub fn withdraw_tenant(&self, client_id: &str, tenant_id: &str) -> Result<ClientInfo, AdminError> {
        self.state.withdraw_tenant(client_id, tenant_id)
    }

    /// Registers another client.
    ///
    /// # Errors
    /// [`AdminError::DuplicateClient`] when the id is taken.
    pub fn register_client(&self, client: ClientRegistration) -> Result<ClientInfo, AdminError> {
        self.state.register_client(client)
    }

    /// The most recent access tokens issued (at most 1,024), so that a test can check that a
    /// client never shows one in its logs or output.
    pub fn recent_tokens(&self) -> Vec<String> {
        self.state.tokens().recent.iter().cloned().collect()
    }

    /// From now on, refuse every billing event of `meter` inside the `202` with `code`, as a
    /// platform does for a meter that is not registered. Such events are permanently bad for
    /// the client (dead-lettered) until [`Emulator::accept_meter`] and a requeue.
    pub fn reject_meter(&self, meter: &str, code: &str) {
        self.state.rejected_meters.write().unwrap_or_else(|p| p.into_inner()).insert(meter.to_owned(), code.to_owned());
    }

    /// Accepts `meter` again (the platform-side fix).
    pub fn accept_meter(&self, meter: &str) {
        self.state.rejected_meters.write().unwrap_or_else(|p| p.into_inner()).remove(meter);
    }

    /// Revokes one token by its `jti`; whether it was a live token issued here.
    pub fn revoke_token(&self, jti: &str) -> bool {
        self.state.revoke_token(jti)
    }

    /// Revokes every token issued to a client so far; how many were newly revoked.
    pub fn revoke_client_tokens(&self, client_id: &str) -> usize {
        self.state.revoke_client(client_id)
    }

    /// Generates a new signing key (2048-bit RSA) and signs with it from now on; tokens
    /// signed with older keys stay valid until they expire. Returns the new `kid`.
    ///
    /// # Errors
    /// [`AdminError::Key`] if generation fails.
    pub async fn rotate_keys(&self) -> Result<String, AdminError> {
        admin::rotate(&self.state).await
    }

    /// The `kid` that signs new tokens.
    pub fn current_kid(&self) -> String {
        self.state.keys.current_kid()
    }

    /// Injects a fault (see [`Fault`]).
    pub fn inject(&self, fault: Fault) {
        self.state.faults.add(fault);
    }

    /// From now on, forget each billing event newly accepted for `tenant_id` with probability
    /// `probability` (1.0: every one) right after the `202` that counts it as accepted: the
    /// same as [`Emulator::inject`] with [`FaultKind::LoseAfterAccept`]. Forgotten events are
    /// missing from the reconciliation `GET` and from [`Emulator::stored_event_ids`], are
    /// listed by [`Emulator::lost_event_ids`], and are accepted anew when posted again.
    /// [`Emulator::clear_faults`] ends it.
    pub fn lose_after_accept(&self, tenant_id: &str, probability: f64) {
        self.inject(Fault::probability(FaultKind::lose_after_accept(tenant_id), probability));
    }

    /// Stores events for a tenant without the billing endpoint, as if another sender had posted
    /// them: each is a billing event as in the body of `POST /iot/api/v2/billing/events`,
    /// checked by the emulator's own rules (and against the meters refused by
    /// [`Emulator::reject_meter`]), then stored unless its id is already held, with the next
    /// `seq` and `received_at` now. Faults do not apply.
    ///
    /// # Errors
    /// [`AdminError::InvalidEvent`] naming the first bad event's field; nothing is stored then.
    pub fn insert_events(&self, tenant_id: &str, events: &[serde_json::Value]) -> Result<Inserted, AdminError> {
        self.state.insert_events(tenant_id, events, chrono::Utc::now())
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        self.state.faults.clear();
    }

    /// The faults still active.
    pub fn faults(&self) -> Vec<Fault> {
        self.state.faults.list()
    }

    /// Signs arbitrary claims with the current key: a test aid for tokens the token endpoint
    /// would never issue (no `tenant_id`, foreign audiences, a past `exp`, ...).
    pub fn sign_claims(&self, claims: &serde_json::Value) -> String {
        self.state.keys.sign(claims)
    }
}
