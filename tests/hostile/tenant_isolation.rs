//! Tenant isolation as a property of the engine, over a real SQLite outbox and fake token and
//! billing ports: whatever the mix of tenants, events, batch sizes and failures, and even when
//! the token source is confused and hands out another tenant's token, no request carries a
//! token of one tenant with the `X-Tenant-ID` of another, and no batch holds another
//! tenant's event.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use billsync::engine::{Engine, Ports, SyncSettings};
use billsync::metrics::Metrics;
use billsync_domain::{
    AccessToken, AccessTokenClaims, ApplicationId, BatchBody, Batcher, BillingApi, BillingEvent, BillingPolicy,
    BillingReply, BillingRequestHeaders, BillingResponse, ClientId, EncodedEvent, RatePolicy, Receipt, SystemClock,
    Tenant, TenantId, TenantName, TokenError, TokenSource, TransportError,
};
use proptest::prelude::*;

fn tenant(i: usize) -> Tenant {
    Tenant::new(
        TenantName::parse(format!("t{i}")).unwrap(),
        TenantId::parse(format!("tenant-{i}")).unwrap(),
        ApplicationId::parse(format!("app-{i}")).unwrap(),
        ClientId::parse(format!("app-{i}")).unwrap(),
    )
}

/// Mints a token for the tenant asked for, except on the calls listed in `confused`, where it
/// mints one for the next tenant (a token cache mixing its entries up), with that tenant's
/// client or with the right one.
struct ConfusedTokens {
    tenants: Vec<Tenant>,
    confused: Vec<bool>,
    calls: Mutex<usize>,
}

#[async_trait]
impl TokenSource for ConfusedTokens {
    async fn headers(&self, t: &Tenant) -> Result<BillingRequestHeaders, TokenError> {
        let call = {
            let mut c = self.calls.lock().unwrap();
            *c += 1;
            *c
        };
        let now = chrono::Utc::now();
        let i = self.tenants.iter().position(|x| x.name() == t.name()).unwrap();
        let minted_for =
            if self.confused[call % self.confused.len()] { &self.tenants[(i + 1) % self.tenants.len()] } else { t };
        let claims = AccessTokenClaims {
            scope: vec![billsync_domain::BILLING_WRITE_SCOPE.into()],
            aud: vec![billsync_domain::BILLING_AUDIENCE.into()],
            tenant_id: Some(minted_for.tenant_id().to_string()),
            // Half of the confused tokens keep the right client (a client of several tenants).
            client_id: Some(if call % 2 == 0 { minted_for } else { t }.client_id().to_string()),
            iat: Some(now.timestamp()),
            exp: Some(now.timestamp() + 900),
            ..Default::default()
        };
        // The token's text names its tenant, so the fake platform can tell whose it is.
        let token = AccessToken::new(format!("token-of-{}", minted_for.tenant_id()));
        BillingPolicy::default()
            .authorize(token, claims, t.tenant_id(), t.application_id(), now)
            .map_err(TokenError::Policy)
    }
    async fn invalidate(&self, _: &Tenant, _: &BillingRequestHeaders) {}
}

/// What the fake platform saw of one request.
#[derive(Debug)]
struct Seen {
    header_tenant: String,
    header_app: String,
    claim_tenant: Option<String>,
    claim_client: Option<String>,
    token: String,
    event_ids: Vec<String>,
}

/// Records every request; fails some of them by script (a 503, a lost connection).
struct RecordingApi {
    seen: Mutex<Vec<Seen>>,
    script: Vec<u8>,
}

#[async_trait]
impl BillingApi for RecordingApi {
    async fn post_events(&self, h: &BillingRequestHeaders, body: &BatchBody) -> Result<BillingReply, TransportError> {
        let parsed: serde_json::Value = serde_json::from_str(body.as_str()).unwrap();
        let event_ids: Vec<String> =
            parsed["events"].as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap().to_owned()).collect();
        let n = {
            let mut seen = self.seen.lock().unwrap();
            seen.push(Seen {
                header_tenant: h.tenant_id().to_string(),
                header_app: h.application_id().to_string(),
                claim_tenant: h.claims().tenant_id.clone(),
                claim_client: h.claims().client_id.clone(),
                token: h.bearer_token().to_owned(),
                event_ids: event_ids.clone(),
            });
            seen.len()
        };
        let response = match self.script[n % self.script.len()] {
            0 => return Err(TransportError::Connection("dropped".into())),
            1 => BillingResponse::ServerError { status: 503 },
            _ => BillingResponse::Accepted(Receipt { accepted: event_ids.len() as u64, ..Default::default() }),
        };
        Ok(BillingReply { response, rate_limit: None })
    }
}

fn events(tenant: &Tenant, n: usize) -> Vec<EncodedEvent> {
    let now = chrono::Utc::now();
    (0..n)
        .map(|i| {
            let json = serde_json::json!({
                "event_id": format!("{}.e{i}", tenant.tenant_id()),
                "device_id": "d", "meter": "m", "quantity": "1", "unit": "kWh",
                "occurred_at": (now - chrono::Duration::seconds(5)).to_rfc3339(),
            });
            BillingEvent::parse(&json.to_string(), now).unwrap().encode()
        })
        .collect()
}

async fn run_case(per_tenant: Vec<usize>, batch: usize, confused: Vec<bool>, script: Vec<u8>) -> Vec<Seen> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("outbox.db").display());
    let outbox = billsync_storage::open(&url, Arc::new(SystemClock)).await.unwrap();
    let tenants: Vec<Tenant> = (0..per_tenant.len()).map(tenant).collect();
    for (t, n) in tenants.iter().zip(&per_tenant) {
        outbox.enqueue(t.name(), &events(t, *n)).await.unwrap();
    }
    let api = Arc::new(RecordingApi { seen: Mutex::new(Vec::new()), script });
    let tokens = Arc::new(ConfusedTokens { tenants: tenants.clone(), confused, calls: Mutex::new(0) });
    let settings = SyncSettings {
        batcher: Batcher::new(batch).unwrap(),
        rate: RatePolicy::per_minute(std::num::NonZeroU32::new(100_000).unwrap()),
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
        give_up_after: 3,
        ..SyncSettings::default()
    };
    let engine = Engine::new(
        Ports { outbox, tokens, api: api.clone(), clock: Arc::new(SystemClock) },
        settings,
        tenants,
        Metrics::default(),
    );
    engine.sync_once().await;
    std::mem::take(&mut *api.seen.lock().unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn tenant_header_always_equals_tenant_claim(
        per_tenant in proptest::collection::vec(0usize..40, 2..5),
        batch in 1usize..12,
        confused in proptest::collection::vec(proptest::bool::weighted(0.2), 1..8),
        script in proptest::collection::vec(0u8..6, 1..8),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let honest = !confused.iter().any(|c| *c) && per_tenant.iter().any(|n| *n > 0);
        let seen = rt.block_on(run_case(per_tenant, batch, confused, script));
        prop_assert!(!honest || !seen.is_empty(), "an honest token source sent nothing");
        for s in &seen {
            prop_assert_eq!(Some(&s.header_tenant), s.claim_tenant.as_ref(), "X-Tenant-ID differs from the token's tenant_id");
            prop_assert_eq!(Some(&s.header_app), s.claim_client.as_ref(), "X-Application-ID differs from the token's client_id");
            prop_assert_eq!(&s.token, &format!("token-of-{}", s.header_tenant), "a token of another tenant was sent");
            for id in &s.event_ids {
                prop_assert!(id.starts_with(&format!("{}.", s.header_tenant)), "event {} in a batch for {}", id, s.header_tenant);
            }
        }
    }
}
