//! Micro benchmarks of the pure core.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // bench and example code: a panic is a failure
use billsync_domain::{
    AccessToken, AccessTokenClaims, ApplicationId, BatchBody, Batcher, BillingEvent, BillingPolicy, TenantId,
};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

const EVENT: &str = r#"{"event_id": "0193f6c2-7d1e-7c3a-9a4e-2b1f0c9d8e71", "device_id": "meter-0042", "meter": "energy.active", "quantity": "12.500", "unit": "kWh", "occurred_at": "2026-11-23T10:15:00Z", "attributes": {"site": "plant-7"}}"#;

fn benches(c: &mut Criterion) {
    let now = chrono::DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z").unwrap().to_utc();
    c.bench_function("event_parse_validate", |b| b.iter(|| BillingEvent::parse(black_box(EVENT), now).unwrap()));
    // The baseline: parsing the same text into an untyped serde_json::Value, no rules.
    c.bench_function("baseline_serde_value_parse", |b| {
        b.iter(|| serde_json::from_str::<serde_json::Value>(black_box(EVENT)).unwrap())
    });

    let events: Vec<_> = (0..500)
        .map(|i| {
            BillingEvent::parse(&EVENT.replace("0193f6c2-7d1e-7c3a-9a4e-2b1f0c9d8e71", &format!("ev-{i}")), now)
                .unwrap()
                .encode()
        })
        .collect();
    c.bench_function("batch_500_split_and_serialize", |b| {
        b.iter(|| {
            for batch in Batcher::default().split(black_box(&events)) {
                black_box(BatchBody::new(batch));
            }
        })
    });

    // The baseline: the same 500 events as untyped values, serialised as one body.
    let values = serde_json::Value::Array(
        events.iter().map(|e| serde_json::from_str::<serde_json::Value>(e.json()).unwrap()).collect(),
    );
    let body = serde_json::json!({ "events": values });
    c.bench_function("baseline_serde_value_serialize_500", |b| {
        b.iter(|| black_box(serde_json::to_string(black_box(&body)).unwrap()))
    });

    const CLAIMS: &str = r#"{"scope": "urn:oracle:iot:billing:write", "aud": ["https://iot.oraclecloud.com/billing"],
            "tenant_id": "tenant-a", "client_id": "app-a", "iat": 1795000000, "exp": 1895000900}"#;
    let claims: AccessTokenClaims = serde_json::from_str(CLAIMS).unwrap();
    let (t, a) = (TenantId::parse("tenant-a").unwrap(), ApplicationId::parse("app-a").unwrap());
    let policy = BillingPolicy::default();
    c.bench_function("policy_check", |b| b.iter(|| policy.check(black_box(&claims), &t, &a, now).unwrap()));
    // The baseline: the same rules as bare lookups in an untyped claims object, no reasons.
    let untyped: serde_json::Value = serde_json::from_str(CLAIMS).unwrap();
    let now_s = now.timestamp();
    c.bench_function("baseline_claims_value_lookup", |b| {
        b.iter(|| {
            let v = black_box(&untyped);
            let ok = v["scope"].as_str().is_some_and(|s| s.split(' ').any(|s| s == "urn:oracle:iot:billing:write"))
                && v["aud"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|a| a.as_str() == Some("https://iot.oraclecloud.com/billing")))
                && v["tenant_id"].as_str() == Some("tenant-a")
                && v["client_id"].as_str() == Some("app-a")
                && v["exp"].as_i64().is_some_and(|e| e > now_s);
            assert!(ok);
        })
    });
    // Building the request headers: the check plus the headers (token, ids, times).
    let token = "eyJhbGciOiJSUzI1NiJ9.eyJzY29wZSI6InVybjpvcmFjbGU6aW90OmJpbGxpbmc6d3JpdGUifQ.c2lnbmF0dXJl";
    c.bench_function("policy_authorize_headers", |b| {
        b.iter(|| black_box(policy.authorize(AccessToken::new(token), black_box(claims.clone()), &t, &a, now).unwrap()))
    });
}

criterion_group!(domain, benches);
criterion_main!(domain);
