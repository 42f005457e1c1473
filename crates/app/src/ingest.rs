//! The local ingest: what a device's request to `POST /v1/tenants/{name}/events` must be, and
//! how it is read. `billsync run` serves it (when `[ingest] listen` is set); this module holds
//! the rules, so that an embedding program can serve them its own way.
//!
//! - A body is JSON Lines (`application/x-ndjson`) or JSON (`application/json`: an array of
//!   events, or `{"events": [...]}`); anything else is refused ([`BodyFormat::of`]).
//! - At most [`MAX_EVENTS`] events and [`MAX_BODY_BYTES`] bytes per request.
//! - All or nothing: every event is checked by the rules of `billsync enqueue`, and any bad one
//!   refuses the whole request, naming each (by line or index, field and reason, the first
//!   [`MAX_ERRORS`]).
//! - A tenant's devices prove themselves with its [`IngestToken`], compared in constant time.
//!
//! ```
//! use billsync::ingest::{BodyFormat, read_body};
//! use billsync_domain::EventRules;
//! let body = br#"{"events": [{"event_id": "e-1", "device_id": "meter-7", "meter": "energy",
//!     "quantity": "1.5", "unit": "kWh", "occurred_at": "2026-11-23T10:00:00Z"}]}"#;
//! let format = BodyFormat::of(Some("application/json; charset=utf-8")).unwrap();
//! let now = "2026-11-23T12:00:00Z".parse().unwrap();
//! let events = read_body(format, body, &EventRules::default(), now).unwrap();
//! assert_eq!(events[0].event_id().as_str(), "e-1");
//! ```

use std::fmt;

use billsync_domain::{EncodedEvent, EventError, EventRules};
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::jsonl::Gather;

/// The most events one request may carry.
pub const MAX_EVENTS: usize = 10_000;
/// The largest body one request may carry (10 MiB).
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
/// The most errors a refusal lists.
pub const MAX_ERRORS: usize = 100;

/// The token a tenant's devices send as `Authorization: Bearer <token>`. Its `Debug` is
/// redacted; it is only ever compared, in constant time.
pub struct IngestToken {
    token: SecretString,
    digest: [u8; 32],
}

impl IngestToken {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        let token = SecretString::from(token.into());
        let digest = Sha256::digest(token.expose_secret().as_bytes()).into();
        Self { token, digest }
    }

    /// Whether `presented` is this token. Both sides are hashed first, so the comparison
    /// takes the same time whatever the presented token's length or its first difference.
    pub fn matches(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(self.digest.ct_eq(&presented))
    }

    /// Whether two tenants were given the same token (then one's devices could write as the
    /// other: the configuration refuses it).
    pub fn same_as(&self, other: &Self) -> bool {
        self.matches(other.token.expose_secret())
    }
}

impl fmt::Debug for IngestToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IngestToken([redacted])")
    }
}

/// How a request's body is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// `application/x-ndjson`: one event per line (blank lines are skipped).
    JsonLines,
    /// `application/json`: an array of events, or `{"events": [...]}`.
    Json,
}

impl BodyFormat {
    /// The format a `Content-Type` names (its parameters ignored), or `None`: `415`.
    pub fn of(content_type: Option<&str>) -> Option<Self> {
        let essence = content_type?.split(';').next()?.trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/x-ndjson" | "application/jsonl" | "application/jsonlines" => Some(Self::JsonLines),
            "application/json" => Some(Self::Json),
            _ => None,
        }
    }
}

/// Where a bad event is in the body: its line (JSON Lines, from 1) or its index (JSON, from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    /// 1-based line of a JSON Lines body.
    Line(usize),
    /// 0-based index in a JSON array.
    Index(usize),
}

/// One bad event of a refused body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BodyError {
    /// Where it is (serialized as `"line": N` or `"index": N`).
    #[serde(flatten)]
    pub at: Position,
    /// The field at fault (`quantity`), or `json` for a syntax error.
    pub field: String,
    /// What is wrong, in plain words.
    pub reason: String,
}

/// Why a body was refused; nothing of it is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyRefusal {
    /// More than [`MAX_EVENTS`] events (`413`).
    #[error("{events} events in one request; at most {MAX_EVENTS} are taken")]
    TooManyEvents {
        /// How many the body holds (at least; counting stops past the limit for JSON Lines).
        events: usize,
    },
    /// The body as a whole is not what its format promises (`400`).
    #[error("the body is not {expected}: {reason}")]
    Malformed {
        /// What it should be.
        expected: &'static str,
        /// Why it is not.
        reason: String,
    },
    /// Some events are invalid (`400`): the first [`MAX_ERRORS`] of them, and how many in all.
    #[error("{total} invalid event(s); nothing was stored")]
    Invalid {
        /// The first errors, in body order.
        errors: Vec<BodyError>,
        /// How many there are in all.
        total: usize,
    },
}

/// A JSON body's object form, `{"events": [...]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wrapped<'a> {
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
}

/// Reads a body's events, all or nothing, by the rules of `billsync enqueue`.
///
/// # Errors
/// [`BodyRefusal`]: too many events, a body that is not its format, or invalid events.
pub fn read_body(
    format: BodyFormat,
    body: &[u8],
    rules: &EventRules,
    now: DateTime<Utc>,
) -> Result<Vec<EncodedEvent>, BodyRefusal> {
    match format {
        BodyFormat::JsonLines => read_lines(body, rules, now),
        BodyFormat::Json => read_json(body, rules, now),
    }
}

/// Reads one broker message's events, all or nothing: one event as JSON (on one line or
/// several), or several as JSON Lines; at most [`MAX_EVENTS`] events and [`MAX_BODY_BYTES`]
/// bytes. A message of blank lines holds no events.
///
/// # Errors
/// [`BodyRefusal`], as [`read_body`]'s.
pub fn read_message(payload: &[u8], rules: &EventRules, now: DateTime<Utc>) -> Result<Vec<EncodedEvent>, BodyRefusal> {
    if payload.len() > MAX_BODY_BYTES {
        return Err(BodyRefusal::Malformed {
            expected: "at most 10 MiB",
            reason: format!("the message has {} bytes", payload.len()),
        });
    }
    let lines = read_lines(payload, rules, now);
    if lines.is_err() && payload.trim_ascii_start().first() == Some(&b'{') {
        // One event written over several lines: the same event on one line.
        if let Ok(value @ serde_json::Value::Object(_)) = serde_json::from_slice::<serde_json::Value>(payload) {
            if let Ok(line) = serde_json::to_vec(&value) {
                return read_lines(&line, rules, now);
            }
        }
    }
    lines
}

impl BodyRefusal {
    /// The refusal in one line, naming each bad event's line or index, field and reason (the
    /// first three): what the quarantine keeps as an entry's reason.
    pub fn describe(&self) -> String {
        match self {
            Self::Invalid { errors, total } => {
                let named: Vec<String> = errors
                    .iter()
                    .take(3)
                    .map(|e| match e.at {
                        Position::Line(n) => format!("line {n}: {}: {}", e.field, e.reason),
                        Position::Index(i) => format!("index {i}: {}: {}", e.field, e.reason),
                    })
                    .collect();
                let more =
                    if *total > named.len() { format!(" (and {} more)", total - named.len()) } else { String::new() };
                format!("{total} invalid event(s): {}{more}", named.join("; "))
            }
            other => other.to_string(),
        }
    }
}

fn read_lines(body: &[u8], rules: &EventRules, now: DateTime<Utc>) -> Result<Vec<EncodedEvent>, BodyRefusal> {
    let lines = body.split(|b| *b == b'\n').enumerate().filter(|(_, l)| !l.trim_ascii().is_empty());
    let count = lines.clone().take(MAX_EVENTS + 1).count();
    if count > MAX_EVENTS {
        return Err(BodyRefusal::TooManyEvents { events: count });
    }
    let mut gather = Gather::new(rules, now, "on line");
    for (i, line) in lines {
        match std::str::from_utf8(line) {
            Ok(text) => gather.take(i + 1, text.trim()),
            Err(e) => gather.refuse(i + 1, EventError { field: "json".into(), reason: format!("not UTF-8 ({e})") }),
        }
    }
    gather.finish().map_err(|errors| invalid(errors, Position::Line))
}

fn read_json(body: &[u8], rules: &EventRules, now: DateTime<Utc>) -> Result<Vec<EncodedEvent>, BodyRefusal> {
    let expected = "a JSON array of events or {\"events\": [...]}";
    // The first character decides the form (each event stays raw text until it is parsed).
    let items = match body.trim_ascii_start().first() {
        Some(b'{') => serde_json::from_slice::<Wrapped<'_>>(body).map(|w| w.events),
        _ => serde_json::from_slice::<Vec<&RawValue>>(body),
    };
    let items = items.map_err(|e| BodyRefusal::Malformed { expected, reason: e.to_string() })?;
    if items.len() > MAX_EVENTS {
        return Err(BodyRefusal::TooManyEvents { events: items.len() });
    }
    let mut gather = Gather::new(rules, now, "at index");
    for (i, item) in items.iter().enumerate() {
        gather.take(i, item.get());
    }
    gather.finish().map_err(|errors| invalid(errors, Position::Index))
}

fn invalid(errors: Vec<(usize, EventError)>, at: fn(usize) -> Position) -> BodyRefusal {
    let total = errors.len();
    let errors = errors
        .into_iter()
        .take(MAX_ERRORS)
        .map(|(pos, e)| BodyError { at: at(pos), field: e.field.into_owned(), reason: e.reason })
        .collect();
    BodyRefusal::Invalid { errors, total }
}

/// Aborts the process when `BILLSYNC_FAILPOINT` names `point`, in builds with the `failpoints`
/// feature only (tests use it to crash between receipt and commit).
#[cfg(feature = "failpoints")]
pub(crate) fn failpoint(point: &str) {
    if std::env::var("BILLSYNC_FAILPOINT").is_ok_and(|p| p == point) {
        eprintln!("billsync: failpoint {point}: aborting");
        std::process::abort();
    }
}

/// Without the `failpoints` feature, failpoints are nothing.
#[cfg(not(feature = "failpoints"))]
pub(crate) fn failpoint(_point: &str) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-11-23T12:00:00Z".parse().unwrap()
    }

    fn event(id: &str, quantity: &str) -> String {
        format!(
            r#"{{"event_id":"{id}","device_id":"d","meter":"m","quantity":{quantity},"unit":"kWh","occurred_at":"2026-11-23T10:00:00Z"}}"#
        )
    }

    fn read(format: BodyFormat, body: &str) -> Result<Vec<String>, BodyRefusal> {
        read_body(format, body.as_bytes(), &EventRules::default(), now())
            .map(|events| events.iter().map(|e| e.event_id().to_string()).collect())
    }

    #[test]
    fn content_types_choose_the_format_and_others_are_refused() {
        assert_eq!(BodyFormat::of(Some("application/x-ndjson")), Some(BodyFormat::JsonLines));
        assert_eq!(BodyFormat::of(Some("Application/JSON; charset=utf-8")), Some(BodyFormat::Json));
        assert_eq!(BodyFormat::of(Some("text/plain")), None);
        assert_eq!(BodyFormat::of(Some("application/jsonx")), None);
        assert_eq!(BodyFormat::of(None), None);
    }

    #[test]
    fn the_three_shapes_give_the_same_events() {
        let lines = format!("{}\n\n{}\n", event("a", "\"1\""), event("b", "\"2\""));
        let array = format!("[{}, {}]", event("a", "\"1\""), event("b", "\"2\""));
        let object = format!("{{\"events\": {array}}}");
        assert_eq!(read(BodyFormat::JsonLines, &lines).unwrap(), ["a", "b"]);
        assert_eq!(read(BodyFormat::Json, &array).unwrap(), ["a", "b"]);
        assert_eq!(read(BodyFormat::Json, &object).unwrap(), ["a", "b"]);
    }

    #[test]
    fn every_bad_event_is_named_by_line_or_index_and_nothing_is_taken() {
        let lines = format!("{}\n{}\n{{oops\n{}", event("a", "\"1\""), event("b", "1.5"), event("a", "\"2\""));
        let BodyRefusal::Invalid { errors, total } = read(BodyFormat::JsonLines, &lines).unwrap_err() else {
            panic!("expected invalid events")
        };
        assert_eq!(total, 3);
        assert_eq!((errors[0].at, errors[0].field.as_str()), (Position::Line(2), "quantity"));
        assert_eq!((errors[1].at, errors[1].field.as_str()), (Position::Line(3), "json"));
        assert_eq!(errors[2].reason, r#""a" already appears on line 1"#);
        let json = serde_json::to_value(&errors[0]).unwrap();
        assert_eq!(json["line"], 2);
        assert!(json.get("index").is_none(), "{json}");

        let array = format!("[{}, {}]", event("a", "\"1\""), event("b", "\"-1\""));
        let BodyRefusal::Invalid { errors, .. } = read(BodyFormat::Json, &array).unwrap_err() else {
            panic!("expected invalid events")
        };
        assert_eq!((errors[0].at, errors[0].field.as_str()), (Position::Index(1), "quantity"));
        assert_eq!(serde_json::to_value(&errors[0]).unwrap()["index"], 1);
    }

    #[test]
    fn a_refusal_lists_the_first_hundred_errors_and_counts_them_all() {
        let body: Vec<String> = (0..150).map(|i| event(&format!("e{i}"), "2")).collect();
        let BodyRefusal::Invalid { errors, total } = read(BodyFormat::JsonLines, &body.join("\n")).unwrap_err() else {
            panic!("expected invalid events")
        };
        assert_eq!((errors.len(), total), (MAX_ERRORS, 150));
        assert_eq!(errors[99].at, Position::Line(100));
    }

    #[test]
    fn more_than_the_most_events_is_refused_before_reading_them() {
        let one = event("x", "\"1\"");
        let lines = vec![one.as_str(); MAX_EVENTS + 1].join("\n");
        assert_eq!(
            read(BodyFormat::JsonLines, &lines).unwrap_err(),
            BodyRefusal::TooManyEvents { events: MAX_EVENTS + 1 }
        );
        let array = format!("[{}]", vec!["{}"; MAX_EVENTS + 2].join(","));
        assert_eq!(read(BodyFormat::Json, &array).unwrap_err(), BodyRefusal::TooManyEvents { events: MAX_EVENTS + 2 });
    }

    #[test]
    fn a_body_that_is_not_its_format_says_where() {
        let BodyRefusal::Malformed { reason, .. } = read(BodyFormat::Json, "[{\"a\": 1},").unwrap_err() else {
            panic!("expected malformed")
        };
        assert!(reason.contains("line 1 column"), "{reason}");
        assert!(matches!(read(BodyFormat::Json, "{\"evnts\": []}"), Err(BodyRefusal::Malformed { .. })));
        let not_utf8 = read_body(BodyFormat::JsonLines, b"\xff\xfe\n", &EventRules::default(), now()).unwrap_err();
        let BodyRefusal::Invalid { errors, .. } = not_utf8 else { panic!("expected invalid") };
        assert_eq!((errors[0].at, errors[0].field.as_str()), (Position::Line(1), "json"));
    }

    #[test]
    fn a_message_is_one_event_or_json_lines_and_its_refusal_names_the_field() {
        let pretty = "{\n  \"event_id\": \"p\", \"device_id\": \"d\", \"meter\": \"m\",\n  \"quantity\": \"1\", \"unit\": \"kWh\", \"occurred_at\": \"2026-11-23T10:00:00Z\"\n}\n";
        let ids = |r: Result<Vec<EncodedEvent>, BodyRefusal>| -> Vec<String> {
            r.unwrap().iter().map(|e| e.event_id().to_string()).collect()
        };
        let rules = EventRules::default();
        assert_eq!(ids(read_message(pretty.as_bytes(), &rules, now())), ["p"]);
        assert_eq!(ids(read_message(event("a", "\"1\"").as_bytes(), &rules, now())), ["a"]);
        let lines = format!("{}\n{}", event("a", "\"1\""), event("b", "\"2\""));
        assert_eq!(ids(read_message(lines.as_bytes(), &rules, now())), ["a", "b"]);
        assert!(ids(read_message(b"\n \n", &rules, now())).is_empty());

        let bad = format!("{}\n{}", event("a", "\"1\""), event("b", "2"));
        let refusal = read_message(bad.as_bytes(), &rules, now()).unwrap_err();
        assert!(refusal.describe().starts_with("1 invalid event(s): line 2: quantity: "), "{}", refusal.describe());
        let garbage = read_message(b"not json at all", &rules, now()).unwrap_err();
        assert!(garbage.describe().contains("line 1: json"), "{}", garbage.describe());
        let huge = vec![b' '; MAX_BODY_BYTES + 1];
        assert!(read_message(&huge, &rules, now()).unwrap_err().describe().contains("10485761 bytes"));
    }

    #[test]
    fn a_token_matches_itself_only_and_never_shows() {
        let token = IngestToken::new("s3cret-token-for-acme");
        assert!(token.matches("s3cret-token-for-acme"));
        assert!(!token.matches("s3cret-token-for-acm"));
        assert!(!token.matches(""));
        assert!(token.same_as(&IngestToken::new("s3cret-token-for-acme")));
        assert!(!format!("{token:?}").contains("s3cret"));
    }
}
