//! `token inspect`: decoding anything, never panicking.

use billsync_auth::{InspectError, inspect};
use billsync_domain::{ApplicationId, BillingPolicy, TenantId, ViolationCode};
use chrono::{DateTime, Utc};
use proptest::prelude::*;
use serde_json::json;

use crate::helpers::*;

const T0: i64 = 1_800_000_000;

fn at(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(s, 0).unwrap()
}

fn token(extra: serde_json::Value) -> String {
    sign(&claims_at(T0, 900, &extra), &Signing::Rs256 { kid: KID.into() })
}

#[test]
fn a_good_token_is_ready_with_relative_times() {
    let t = token(json!({}));
    let tid = TenantId::parse("tenant-a").unwrap();
    let app = ApplicationId::parse("app-a").unwrap();
    let i = inspect(&t, Some(&tid), Some(&app), &BillingPolicy::default(), at(T0 + 208)).unwrap();
    assert!(i.ready(), "{i}");
    assert_eq!(i.times().expires.as_deref(), Some("expires in 11m 32s"));
    assert_eq!(i.times().issued.as_deref(), Some("3m 28s ago"));
    assert_eq!(i.times().lifetime.as_deref(), Some("15m 0s"));
    assert_eq!(i.times().refresh_at, Some(at(T0 + 720)));
    assert_eq!(i.header()["kid"], KID);
    assert!(i.not_checked().iter().all(|n| !n.contains("X-Tenant-ID")));
    let shown = i.to_string();
    assert!(shown.contains("Billing    READY") && shown.contains("expires in 11m 32s"), "{shown}");
    assert!(!shown.contains(&t), "the report must not repeat the token");
}

#[test]
fn without_ids_the_rest_is_checked_and_that_is_said() {
    let t = token(json!({"scope": "billing:write", "tenant_id": "someone-else"}));
    let i = inspect(&t, None, None, &BillingPolicy::default(), at(T0 + 60)).unwrap();
    assert_eq!(i.codes(), [ViolationCode::ShortScopeForm]);
    assert_eq!(i.not_checked().len(), 3, "{:?}", i.not_checked());
    assert!(i.to_string().contains("not checked: X-Tenant-ID"), "{i}");
}

#[test]
fn with_ids_mismatches_and_expiry_are_named() {
    let t = token(json!({}));
    let tid = TenantId::parse("tenant-b").unwrap();
    let app = ApplicationId::parse("app-b").unwrap();
    let i = inspect(&t, Some(&tid), Some(&app), &BillingPolicy::default(), at(T0 + 1000)).unwrap();
    assert_eq!(
        i.codes(),
        [ViolationCode::TenantMismatch, ViolationCode::ApplicationMismatch, ViolationCode::TokenExpired]
    );
    assert_eq!(i.times().expires.as_deref(), Some("expired 1m 40s ago"));
    let v = serde_json::to_value(&i).unwrap();
    assert_eq!(v["ready"], false);
    assert_eq!(v["violations"][0]["code"], "tenant_mismatch");
    assert_eq!(v["claims"]["tenant_id"], "tenant-a");
}

#[test]
fn unsigned_tokens_are_flagged() {
    let t = sign(&claims_at(T0, 900, &json!({})), &Signing::AlgNone);
    let i = inspect(&t, None, None, &BillingPolicy::default(), at(T0)).unwrap();
    assert!(i.to_string().contains("UNSIGNED"), "{i}");
}

#[test]
fn extreme_times_do_not_panic() {
    for (iat, exp) in [(i64::MIN, i64::MAX), (-8_334_632_851_200, 8_210_298_412_799), (0, -1), (T0, T0)] {
        let c = json!({"iat": iat, "exp": exp, "scope": "x"});
        let t = format!("{}.{}.", b64(r#"{"alg":"RS256"}"#), b64(&c.to_string()));
        let i = inspect(&t, None, None, &BillingPolicy::default(), at(T0)).unwrap();
        let _ = i.to_string();
        assert!(!i.ready());
    }
}

#[test]
fn broken_inputs_get_named_errors() {
    let p = BillingPolicy::default();
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "empty"),
        ("not a token".into(), "position 3"),
        ("a.b".into(), "3 segments separated by '.', this has 2"),
        ("\u{0}\u{7f}binary\u{1b}".into(), "cannot appear in a JWT"),
        ("e30.e30.x".repeat(10_000), "at most 65536 bytes"),
        (
            format!("{}.{}.x", b64("{}"), b64("\"just a string\"")),
            "payload (2nd segment) is not a JSON object: it is a JSON string",
        ),
    ];
    for (input, want) in cases {
        let e: InspectError = inspect(&input, None, None, &p, at(T0)).unwrap_err();
        assert!(e.to_string().contains(want), "{e} (wanted {want:?})");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn inspect_never_panics_and_always_explains_itself(s in any::<String>()) {
        match inspect(&s, None, None, &BillingPolicy::default(), at(T0)) {
            Ok(i) => { let _ = i.to_string(); }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn inspect_never_panics_on_jwt_shaped_input(h in any::<Vec<u8>>(), p in any::<Vec<u8>>(), sig in "[A-Za-z0-9_-]{0,20}") {
        let b = |v: &[u8]| { use base64::Engine; base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v) };
        let t = format!("{}.{}.{sig}", b(&h), b(&p));
        match inspect(&t, None, None, &BillingPolicy::default(), at(T0)) {
            Ok(i) => { let _ = i.to_string(); }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn inspect_never_panics_on_arbitrary_claims(iat in any::<i64>(), exp in any::<i64>(), scope in ".{0,40}", aud in prop::collection::vec(".{0,20}", 0..3)) {
        let c = json!({"iat": iat, "exp": exp, "scope": scope, "aud": aud, "tenant_id": scope});
        let t = format!("{}.{}.sig", b64(r#"{"alg":"RS256","typ":"JWT"}"#), b64(&c.to_string()));
        let i = inspect(&t, None, None, &BillingPolicy::default(), at(T0));
        prop_assert!(i.is_ok());
        let _ = i.map(|i| i.to_string());
    }
}
