//! The fuzzed entry points of billsync, one function per cargo-fuzz target. The targets in
//! `fuzz_targets/` call these, and so does the corpus regression test
//! (`tests/e2e/fuzz_corpus.rs`, which includes this file), so the committed corpus is replayed
//! on stable Rust in every `cargo test`. Each function must return normally for every input:
//! a panic is a bug in billsync.
//!
//! Inputs of the multi-part targets are text with the parts on separate lines, so that the
//! corpus stays readable: `billing_response` is `STATUS\nWWW-Authenticate\nRetry-After\nBODY`,
//! `token_response` is `STATUS\nBODY`, `jwt_inspect` is `TOKEN\nTENANT_ID\nAPPLICATION_ID`.

use std::path::Path;

use billsync_domain::{AccessToken, ApplicationId, BillingEvent, BillingPolicy, ClientSecret, TenantId};
use chrono::{DateTime, TimeZone, Utc};

/// A fuzzed entry point.
pub type Target = fn(&[u8]);

/// Every target: (name = directory under `fuzz/corpus/`, function).
pub const TARGETS: &[(&str, Target)] = &[
    ("billing_event", billing_event),
    ("jwt_inspect", jwt_inspect),
    ("token_response", token_response),
    ("billing_response", billing_response),
    ("config", config),
    ("www_authenticate", www_authenticate),
    ("ingest_body", ingest_body),
];

/// A fixed "now" so that a run is reproducible: 2026-11-23T10:20:00Z.
fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 10, 20, 0).single().unwrap_or_default()
}

/// Splits off the first line (without its `\n`).
fn line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// `BillingEvent::parse`; an accepted event must survive its own encoding unchanged.
pub fn billing_event(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(event) = BillingEvent::parse(text, now()) {
        let encoded = event.encode();
        let again = BillingEvent::parse(encoded.json(), now())
            .unwrap_or_else(|e| panic!("an accepted event's encoding is refused: {e}: {}", encoded.json()));
        assert_eq!(again.encode().json(), encoded.json(), "encoding is not stable");
        assert_eq!(again.event_id(), event.event_id());
    }
}

/// `billsync::ingest::read_body`, the HTTP ingest's reading of a device's body, in both formats,
/// and `read_message`, the MQTT ingest's reading of a message: the first byte chooses JSON Lines
/// (0 mod 3), JSON (1) or a message (2). An accepted body's events must each be accepted again on
/// their own, and their ids must be distinct; a refusal must describe itself.
pub fn ingest_body(data: &[u8]) {
    use billsync::ingest::{BodyFormat, BodyRefusal, MAX_ERRORS, MAX_EVENTS, read_body, read_message};
    let Some((&first, body)) = data.split_first() else { return };
    let rules = billsync_domain::EventRules::default();
    let read = match first % 3 {
        0 => read_body(BodyFormat::JsonLines, body, &rules, now()),
        1 => read_body(BodyFormat::Json, body, &rules, now()),
        _ => read_message(body, &rules, now()),
    };
    if let Err(refusal) = &read {
        assert!(!refusal.describe().is_empty());
    }
    match read {
        Ok(events) => {
            assert!(events.len() <= MAX_EVENTS, "{} events accepted", events.len());
            let mut ids = std::collections::HashSet::new();
            for e in &events {
                BillingEvent::parse(e.json(), now())
                    .unwrap_or_else(|err| panic!("an accepted event is refused alone: {err}: {}", e.json()));
                assert!(ids.insert(e.event_id().clone()), "{} accepted twice", e.event_id());
            }
        }
        Err(BodyRefusal::Invalid { errors, total }) => {
            assert!(!errors.is_empty() && errors.len() <= MAX_ERRORS.min(total), "{} of {total}", errors.len());
        }
        Err(BodyRefusal::TooManyEvents { events }) => assert!(events > MAX_EVENTS),
        Err(BodyRefusal::Malformed { .. }) => {}
    }
}

/// `billsync_auth::inspect` (JWT decoding + the billing policy), with and without the ids, and
/// `billsync_auth::check_assertion`.
pub fn jwt_inspect(data: &[u8]) {
    let (token, rest) = line(data);
    let (tenant, rest) = line(rest);
    let (app, _) = line(rest);
    let token = String::from_utf8_lossy(token);
    let (client_id, audience) = (String::from_utf8_lossy(tenant), String::from_utf8_lossy(app));
    let tenant = TenantId::parse(String::from_utf8_lossy(tenant).into_owned()).ok();
    let app = ApplicationId::parse(String::from_utf8_lossy(app).into_owned()).ok();
    let policy = BillingPolicy::default();
    let _ = billsync_auth::inspect(&token, tenant.as_ref(), app.as_ref(), &policy, now());
    let _ = billsync_auth::inspect(&token, None, None, &policy, now());
    // The same text as a client assertion file (the second line as the client id, the third as
    // the token URL): a problem never shows the assertion.
    if let Err(problem) = billsync_auth::check_assertion(&token, &client_id, &audience, now()) {
        let shown = problem.to_string();
        // The configured client id and token URL are shown as given; the assertion never is.
        let t = token.trim();
        let echoed = client_id.contains(t) || audience.contains(t);
        assert!(t.len() < 16 || echoed || !shown.contains(t), "a problem shows the assertion");
    }
}

/// `billsync_auth::parse_token_response`; an error never carries the body's token.
pub fn token_response(data: &[u8]) {
    let (status, body) = line(data);
    let status = std::str::from_utf8(status).ok().and_then(|s| s.trim().parse::<u16>().ok()).unwrap_or(200);
    match billsync_auth::parse_token_response(status, body) {
        Ok((token, _, _)) => {
            assert!(!token.secret().is_empty());
            let redacted = format!("{:?}", AccessToken::new(String::from("x")));
            assert_eq!(format!("{token:?}"), redacted, "an access token's Debug depends on its value");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// `billsync_domain::classify` of a billing response.
pub fn billing_response(data: &[u8]) {
    let (status, rest) = line(data);
    let (www, rest) = line(rest);
    let (retry, body) = line(rest);
    let status = std::str::from_utf8(status).ok().and_then(|s| s.trim().parse::<u16>().ok()).unwrap_or(202);
    let www = std::str::from_utf8(www).ok().filter(|s| !s.is_empty());
    let retry = std::str::from_utf8(retry).ok().filter(|s| !s.is_empty());
    let answer = billsync_domain::HttpAnswer {
        status,
        www_authenticate: www,
        retry_after: retry,
        location: www,
        body,
        body_truncated: false,
    };
    let r = billsync_domain::classify(&answer, chrono::Utc::now());
    if let billsync_domain::BillingResponse::Unexpected { detail, .. } = &r {
        assert!(detail.chars().count() <= 200 + 60, "an excerpt longer than its cap");
    }
    let _ = format!("{r:?}");
}

/// `billsync_domain::parse_challenges` of a `WWW-Authenticate` value; what parses re-parses
/// from its canonical form (`Display`, joined with `, `) to the same challenges.
pub fn www_authenticate(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match billsync_domain::parse_challenges(&text) {
        Ok(challenges) => {
            let canonical = challenges.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            let again = billsync_domain::parse_challenges(&canonical)
                .unwrap_or_else(|e| panic!("a canonical header is refused: {e}: {canonical}"));
            assert_eq!(again, challenges, "the canonical form does not round-trip: {canonical}");
        }
        Err(e) => {
            assert!(text.is_char_boundary(e.position), "an error position off the text: {e:?}");
            let _ = e.to_string();
        }
    }
}

/// `billsync::config::Config::parse`; a valid configuration never shows its secrets in `Debug`.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(c) = billsync::config::Config::parse(text, Path::new("fuzz/billsync.toml")) {
        let redacted = format!("{:?}", ClientSecret::new(String::from("x")));
        for t in &c.tenants {
            if let billsync::config::Credential::Secret(secret) = &t.credential {
                assert_eq!(format!("{secret:?}"), redacted, "a client secret's Debug depends on its value");
            }
        }
        let _ = format!("{c:?}");
    }
}
