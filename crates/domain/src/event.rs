//! Billing events: parsed from JSON with every rule of docs/platform.md section 3, never kept raw.
//!
//! Where the contract is silent this module decides, and `docs/decisions.md` records why:
//! unknown fields are errors (a typo such as `quantiy` must not silently drop a quantity),
//! attribute keys are 1-128 characters without control characters, values at most 1024.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::{EventId, InvalidId};

/// Why a billing event was refused. `Display` gives `field: reason`, e.g.
/// `quantity: expected a decimal string such as "12.5", found a number`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct EventError {
    /// The field at fault (`quantity`, `attributes.site`), or `json` for a syntax error.
    pub field: Cow<'static, str>,
    /// What was wrong, in plain words.
    pub reason: String,
}

impl EventError {
    fn new(field: impl Into<Cow<'static, str>>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

impl From<InvalidId> for EventError {
    fn from(e: InvalidId) -> Self {
        Self::new(e.what, e.reason)
    }
}

/// A non-negative decimal quantity with at most 18 integer and 9 fraction digits. Kept as a
/// decimal, never a float; its scale is preserved (`"12.500"` stays `"12.500"`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity(Decimal);

impl Quantity {
    /// Most digits before the decimal point.
    pub const MAX_INTEGER_DIGITS: usize = 18;
    /// Most digits after the decimal point.
    pub const MAX_FRACTION_DIGITS: usize = 9;

    /// Parses the wire form: digits, optionally a point and more digits.
    ///
    /// # Errors
    /// A reason in plain words when the text is not such a decimal.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix('-') {
            if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                return Err(format!("must not be negative, found \"{s}\""));
            }
        }
        let (int, frac) = match s.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (s, None),
        };
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(int) || frac.is_some_and(|f| !digits(f)) {
            return Err(format!("expected a decimal string such as \"12.5\", found \"{}\"", truncate(s, 40)));
        }
        if int.len() > Self::MAX_INTEGER_DIGITS {
            return Err(format!("has {} digits before the point; at most 18 are allowed", int.len()));
        }
        if let Some(f) = frac {
            if f.len() > Self::MAX_FRACTION_DIGITS {
                return Err(format!("has {} digits after the point; at most 9 are allowed", f.len()));
            }
        }
        Decimal::from_str(s).map(Self).map_err(|e| format!("not a decimal: {e}"))
    }

    /// The decimal value.
    pub fn value(&self) -> Decimal {
        self.0
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Quantity({})", self.0)
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

fn truncate(s: &str, max: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max) {
        Some((i, _)) => Cow::Owned(format!("{}...", &s[..i])),
        None => Cow::Borrowed(s),
    }
}

/// The rules that depend on time, and the limits of docs/platform.md section 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRules {
    /// How far in the future `occurred_at` may be (default 5 minutes).
    pub max_future: Duration,
    /// How old `occurred_at` may be (default 35 days).
    pub max_age: Duration,
}

impl Default for EventRules {
    fn default() -> Self {
        Self { max_future: Duration::from_secs(5 * 60), max_age: Duration::from_secs(35 * 24 * 3600) }
    }
}

/// Most attributes on one event.
pub const MAX_ATTRIBUTES: usize = 16;
/// Longest attribute key, in characters.
pub const MAX_ATTRIBUTE_KEY: usize = 128;
/// Longest attribute value, in characters.
pub const MAX_ATTRIBUTE_VALUE: usize = 1024;

/// A validated billing event. The only ways to get one are [`BillingEvent::parse`] and
/// [`EventRules::parse`], so every event in the program obeys the platform's rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BillingEvent {
    event_id: EventId,
    device_id: String,
    meter: String,
    quantity: Quantity,
    unit: String,
    #[serde(serialize_with = "ser_rfc3339")]
    occurred_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    attributes: BTreeMap<String, String>,
}

fn ser_rfc3339<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

impl BillingEvent {
    /// Parses one event from JSON with the default [`EventRules`].
    ///
    /// # Errors
    /// [`EventError`] naming the first field that breaks a rule.
    pub fn parse(json: &str, now: DateTime<Utc>) -> Result<Self, EventError> {
        EventRules::default().parse(json, now)
    }

    /// The idempotency key.
    pub fn event_id(&self) -> &EventId {
        &self.event_id
    }
    /// The device that produced the usage.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }
    /// What was metered (`energy.active`).
    pub fn meter(&self) -> &str {
        &self.meter
    }
    /// How much.
    pub fn quantity(&self) -> Quantity {
        self.quantity
    }
    /// In which unit.
    pub fn unit(&self) -> &str {
        &self.unit
    }
    /// When, in UTC.
    pub fn occurred_at(&self) -> DateTime<Utc> {
        self.occurred_at
    }
    /// Free-form string attributes (at most 16).
    pub fn attributes(&self) -> &BTreeMap<String, String> {
        &self.attributes
    }

    /// The canonical wire form, ready to be stored and batched.
    pub fn encode(&self) -> EncodedEvent {
        // Serialising a struct of strings into a String cannot fail.
        let json = serde_json::to_string(self).unwrap_or_default();
        EncodedEvent { event_id: self.event_id.clone(), json }
    }
}

/// A validated event in its canonical JSON wire form, as the outbox stores it and a batch
/// carries it.
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedEvent {
    event_id: EventId,
    json: String,
}

impl EncodedEvent {
    /// Rebuilds an encoded event that an outbox adapter stored from [`BillingEvent::encode`].
    /// Only storage adapters should call this: the JSON is trusted, not parsed again.
    pub fn from_stored(event_id: EventId, json: String) -> Self {
        Self { event_id, json }
    }
    /// The idempotency key.
    pub fn event_id(&self) -> &EventId {
        &self.event_id
    }
    /// The canonical JSON object.
    pub fn json(&self) -> &str {
        &self.json
    }
    /// Gives up the JSON.
    pub fn into_json(self) -> String {
        self.json
    }
}

impl fmt::Debug for EncodedEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodedEvent").field("event_id", &self.event_id).field("bytes", &self.json.len()).finish()
    }
}

impl EventRules {
    /// Parses one event from JSON, checking `occurred_at` against `now`.
    ///
    /// # Errors
    /// [`EventError`] naming the first field that breaks a rule, or `json` when the text is
    /// not JSON at all.
    pub fn parse(&self, json: &str, now: DateTime<Utc>) -> Result<BillingEvent, EventError> {
        let raw = match serde_json::from_str::<Top>(json) {
            Ok(Top::Object(raw)) => raw,
            Ok(Top::Other(kind)) => {
                return Err(EventError::new("event", format!("expected a JSON object, found {kind}")));
            }
            Err(e) => return Err(json_error(&e)),
        };
        self.validate(*raw, now)
    }

    /// Validates an event given as a `serde_json::Value` (one element of a batch body).
    ///
    /// # Errors
    /// As [`EventRules::parse`].
    pub fn from_value(&self, value: &serde_json::Value, now: DateTime<Utc>) -> Result<BillingEvent, EventError> {
        match Top::deserialize(value) {
            Ok(Top::Object(raw)) => self.validate(*raw, now),
            Ok(Top::Other(kind)) => Err(EventError::new("event", format!("expected a JSON object, found {kind}"))),
            Err(e) => Err(json_error(&e)),
        }
    }

    fn validate(&self, raw: Raw, now: DateTime<Utc>) -> Result<BillingEvent, EventError> {
        if let Some(dup) = raw.duplicate {
            return Err(EventError::new(dup, "appears more than once"));
        }
        if let Some(unknown) = raw.unknown {
            return Err(EventError::new(
                "event",
                format!(
                    "unknown field \"{}\"; expected event_id, device_id, meter, quantity, unit, occurred_at, attributes",
                    truncate(&unknown, 40)
                ),
            ));
        }
        let event_id = EventId::parse(required("event_id", raw.event_id)?)?;
        let device_id = text("device_id", required("device_id", raw.device_id)?, 128)?;
        let meter = text("meter", required("meter", raw.meter)?, 128)?;
        let quantity = match raw.quantity {
            None => return Err(EventError::new("quantity", "is required")),
            Some(Scalar::Str(s)) => Quantity::parse(&s).map_err(|r| EventError::new("quantity", r))?,
            Some(Scalar::Other(kind)) => {
                return Err(EventError::new(
                    "quantity",
                    format!("expected a decimal string such as \"12.5\", found {kind}"),
                ));
            }
        };
        let unit = text("unit", required("unit", raw.unit)?, 32)?;
        let occurred_at = self.timestamp(&required("occurred_at", raw.occurred_at)?, now)?;
        let attributes = attributes(raw.attributes)?;
        Ok(BillingEvent { event_id, device_id, meter, quantity, unit, occurred_at, attributes })
    }

    fn timestamp(&self, s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, EventError> {
        let field = "occurred_at";
        let t = DateTime::parse_from_rfc3339(s)
            .map_err(|_| {
                EventError::new(
                    field,
                    format!(
                        "expected an RFC 3339 time with an offset such as \"2026-11-23T10:15:00Z\", found \"{}\"",
                        truncate(s, 40)
                    ),
                )
            })?
            .with_timezone(&Utc);
        let future = chrono::Duration::from_std(self.max_future).unwrap_or(chrono::Duration::MAX);
        let age = chrono::Duration::from_std(self.max_age).unwrap_or(chrono::Duration::MAX);
        if t > now + future {
            return Err(EventError::new(field, format!("{s} is more than {} in the future", human(self.max_future))));
        }
        if t < now - age {
            return Err(EventError::new(field, format!("{s} is older than {}", human(self.max_age))));
        }
        Ok(t)
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s % 86_400 == 0 && s > 0 {
        format!("{} days", s / 86_400)
    } else if s % 60 == 0 && s > 0 {
        format!("{} minutes", s / 60)
    } else {
        format!("{s} seconds")
    }
}

fn json_error(e: &serde_json::Error) -> EventError {
    EventError::new("json", e.to_string())
}

fn required(field: &'static str, v: Option<Scalar>) -> Result<String, EventError> {
    match v {
        None => Err(EventError::new(field, "is required")),
        Some(Scalar::Str(s)) => Ok(s),
        Some(Scalar::Other(kind)) => Err(EventError::new(field, format!("expected a string, found {kind}"))),
    }
}

fn text(field: &'static str, s: String, max: usize) -> Result<String, EventError> {
    let n = s.chars().count();
    if n == 0 {
        return Err(EventError::new(field, "must not be empty"));
    }
    if n > max {
        return Err(EventError::new(field, format!("is {n} characters long; at most {max} are allowed")));
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(EventError::new(field, format!("contains the control character {c:?}")));
    }
    Ok(s)
}

fn attributes(raw: Option<Attrs>) -> Result<BTreeMap<String, String>, EventError> {
    let pairs = match raw {
        None | Some(Attrs::Null) => return Ok(BTreeMap::new()),
        Some(Attrs::Other(kind)) => {
            return Err(EventError::new("attributes", format!("expected an object of strings, found {kind}")));
        }
        Some(Attrs::Map(pairs)) => pairs,
    };
    if pairs.len() > MAX_ATTRIBUTES {
        return Err(EventError::new(
            "attributes",
            format!("has {} pairs; at most {MAX_ATTRIBUTES} are allowed", pairs.len()),
        ));
    }
    let mut out = BTreeMap::new();
    for (k, v) in pairs {
        let field = || format!("attributes.{}", truncate(&k, 40));
        let n = k.chars().count();
        if n == 0 || n > MAX_ATTRIBUTE_KEY || k.chars().any(char::is_control) {
            return Err(EventError::new(
                field(),
                format!("a key must be 1-{MAX_ATTRIBUTE_KEY} characters without control characters"),
            ));
        }
        let v = match v {
            Scalar::Str(v) => v,
            Scalar::Other(kind) => return Err(EventError::new(field(), format!("expected a string, found {kind}"))),
        };
        if v.chars().count() > MAX_ATTRIBUTE_VALUE {
            return Err(EventError::new(field(), format!("is longer than {MAX_ATTRIBUTE_VALUE} characters")));
        }
        if out.insert(k.clone(), v).is_some() {
            return Err(EventError::new(field(), "appears more than once"));
        }
    }
    Ok(out)
}

// ---- The raw shape, read by hand so that every error can name its field. ----

/// A JSON value that should be a string, or the kind of value found instead.
enum Scalar {
    Str(String),
    Other(&'static str),
}

struct KindVisitor<T>(fn(String) -> T, fn(&'static str) -> T);

macro_rules! other_kinds {
    () => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok((self.1)("a boolean"))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok((self.1)("a number"))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok((self.1)("a number"))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok((self.1)("a number"))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok((self.1)("null"))
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok((self.1)("null"))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok((self.1)("an array"))
        }
    };
}

impl<'de, T> Visitor<'de> for KindVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        Ok((self.0)(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<T, E> {
        Ok((self.0)(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok((self.1)("an object"))
    }
    other_kinds!();
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KindVisitor(Scalar::Str, Scalar::Other))
    }
}

enum Attrs {
    Map(Vec<(String, Scalar)>),
    Null,
    Other(&'static str),
}

impl<'de> Deserialize<'de> for Attrs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Attrs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Attrs, A::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(4).min(MAX_ATTRIBUTES + 1));
                while let Some((k, v)) = map.next_entry::<String, Scalar>()? {
                    pairs.push((k, v));
                }
                Ok(Attrs::Map(pairs))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Attrs, E> {
                Ok(Attrs::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Attrs, E> {
                Ok(Attrs::Null)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Attrs, E> {
                Ok(Attrs::Other("a string"))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Attrs, E> {
                Ok(Attrs::Other("a boolean"))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Attrs, E> {
                Ok(Attrs::Other("a number"))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Attrs, E> {
                Ok(Attrs::Other("a number"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Attrs, E> {
                Ok(Attrs::Other("a number"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Attrs, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Attrs::Other("an array"))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Default)]
struct Raw {
    event_id: Option<Scalar>,
    device_id: Option<Scalar>,
    meter: Option<Scalar>,
    quantity: Option<Scalar>,
    unit: Option<Scalar>,
    occurred_at: Option<Scalar>,
    attributes: Option<Attrs>,
    duplicate: Option<&'static str>,
    unknown: Option<String>,
}

enum Top {
    Object(Box<Raw>),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for Top {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Top;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a billing event object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top, A::Error> {
                let mut raw = Raw::default();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    macro_rules! slot {
                        ($f:ident, $t:ty) => {{
                            let v = map.next_value::<$t>()?;
                            if raw.$f.replace(v).is_some() && raw.duplicate.is_none() {
                                raw.duplicate = Some(stringify!($f));
                            }
                        }};
                    }
                    match key.as_ref() {
                        "event_id" => slot!(event_id, Scalar),
                        "device_id" => slot!(device_id, Scalar),
                        "meter" => slot!(meter, Scalar),
                        "quantity" => slot!(quantity, Scalar),
                        "unit" => slot!(unit, Scalar),
                        "occurred_at" => slot!(occurred_at, Scalar),
                        "attributes" => slot!(attributes, Attrs),
                        other => {
                            map.next_value::<IgnoredAny>()?;
                            if raw.unknown.is_none() {
                                raw.unknown = Some(other.to_owned());
                            }
                        }
                    }
                }
                Ok(Top::Object(Box::new(raw)))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Top, E> {
                Ok(Top::Other("a string"))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Top, E> {
                Ok(Top::Other("a boolean"))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Top, E> {
                Ok(Top::Other("a number"))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Top, E> {
                Ok(Top::Other("a number"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Top, E> {
                Ok(Top::Other("a number"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Top, E> {
                Ok(Top::Other("null"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Top, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Top::Other("an array"))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z").unwrap().with_timezone(&Utc)
    }

    const GOOD: &str = r#"{"event_id": "0193f6c2-7d1e-7c3a-9a4e-2b1f0c9d8e71", "device_id": "meter-0042",
        "meter": "energy.active", "quantity": "12.500", "unit": "kWh",
        "occurred_at": "2026-11-23T10:15:00Z", "attributes": {"site": "plant-7"}}"#;

    /// Replaces one field of the good event with raw JSON (or removes it with `None`).
    fn with(field: &str, value: Option<&str>) -> String {
        let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(GOOD).unwrap();
        match value {
            Some(raw) => v.insert(field.into(), serde_json::from_str(raw).unwrap()),
            None => v.remove(field),
        };
        serde_json::to_string(&v).unwrap()
    }

    fn check(json: &str, expected: Result<(), &str>) {
        let got = BillingEvent::parse(json, now()).map(|_| ()).map_err(|e| e.to_string());
        assert_eq!(got, expected.map_err(str::to_string), "input {json}");
    }

    #[test]
    fn the_platform_example_parses_and_keeps_its_scale() {
        let e = BillingEvent::parse(GOOD, now()).unwrap();
        assert_eq!(e.quantity().to_string(), "12.500");
        assert_eq!(e.attributes()["site"], "plant-7");
        let wire = e.encode();
        assert!(wire.json().contains(r#""quantity":"12.500""#), "{}", wire.json());
        assert!(wire.json().contains(r#""occurred_at":"2026-11-23T10:15:00Z""#), "{}", wire.json());
        // The canonical form parses back to the same event.
        assert_eq!(BillingEvent::parse(wire.json(), now()).unwrap(), e);
    }

    #[test]
    #[allow(clippy::too_many_lines)] // a table: one row per rule
    fn each_rule_names_its_field() {
        check(
            &with("quantity", Some("12.5")),
            Err(r#"quantity: expected a decimal string such as "12.5", found a number"#),
        );
        check(&with("quantity", Some(r#""-1""#)), Err(r#"quantity: must not be negative, found "-1""#));
        check(
            &with("quantity", Some(r#""1e5""#)),
            Err(r#"quantity: expected a decimal string such as "12.5", found "1e5""#),
        );
        check(
            &with("quantity", Some(r#"".5""#)),
            Err(r#"quantity: expected a decimal string such as "12.5", found ".5""#),
        );
        check(
            &with("quantity", Some(r#""1234567890123456789""#)),
            Err("quantity: has 19 digits before the point; at most 18 are allowed"),
        );
        check(
            &with("quantity", Some(r#""1.1234567890""#)),
            Err("quantity: has 10 digits after the point; at most 9 are allowed"),
        );
        check(&with("quantity", Some(r#""999999999999999999.999999999""#)), Ok(()));
        check(&with("quantity", Some(r#""0""#)), Ok(()));
        check(&with("quantity", None), Err("quantity: is required"));
        check(
            &with("event_id", Some(r#""a/b""#)),
            Err("event_id: contains '/'; only letters, digits and . _ : - are allowed"),
        );
        check(&with("event_id", Some("7")), Err("event_id: expected a string, found a number"));
        check(&with("device_id", Some(r#""""#)), Err("device_id: must not be empty"));
        check(&with("device_id", Some(r#""a\nb""#)), Err(r"device_id: contains the control character '\n'"));
        check(
            &with("meter", Some(&format!("\"{}\"", "m".repeat(129)))),
            Err("meter: is 129 characters long; at most 128 are allowed"),
        );
        check(
            &with("unit", Some(&format!("\"{}\"", "u".repeat(33)))),
            Err("unit: is 33 characters long; at most 32 are allowed"),
        );
        check(&with("unit", Some("null")), Err("unit: expected a string, found null"));
        check(
            &with("occurred_at", Some(r#""2026-11-23 10:15""#)),
            Err(
                r#"occurred_at: expected an RFC 3339 time with an offset such as "2026-11-23T10:15:00Z", found "2026-11-23 10:15""#,
            ),
        );
        check(
            &with("occurred_at", Some(r#""2026-11-23T10:15:00""#)),
            Err(
                r#"occurred_at: expected an RFC 3339 time with an offset such as "2026-11-23T10:15:00Z", found "2026-11-23T10:15:00""#,
            ),
        );
        check(&with("occurred_at", Some(r#""2026-11-23T12:05:00Z""#)), Ok(()));
        check(
            &with("occurred_at", Some(r#""2026-11-23T12:05:01Z""#)),
            Err("occurred_at: 2026-11-23T12:05:01Z is more than 5 minutes in the future"),
        );
        check(
            &with("occurred_at", Some(r#""2026-10-19T11:59:59Z""#)),
            Err("occurred_at: 2026-10-19T11:59:59Z is older than 35 days"),
        );
        check(&with("occurred_at", Some(r#""2026-11-23T13:00:00+02:00""#)), Ok(()));
        check(&with("attributes", Some(r#"{"site": 7}"#)), Err("attributes.site: expected a string, found a number"));
        check(&with("attributes", Some("[]")), Err("attributes: expected an object of strings, found an array"));
        check(&with("attributes", None), Ok(()));
        let many: serde_json::Map<_, _> = (0..17).map(|i| (format!("k{i}"), serde_json::Value::from("v"))).collect();
        check(
            &with("attributes", Some(&serde_json::to_string(&many).unwrap())),
            Err("attributes: has 17 pairs; at most 16 are allowed"),
        );
        check(
            &with("quantiy", Some(r#""1""#)),
            Err(
                r#"event: unknown field "quantiy"; expected event_id, device_id, meter, quantity, unit, occurred_at, attributes"#,
            ),
        );
        check("[1]", Err("event: expected a JSON object, found an array"));
        check(r#"{"event_id": "a", "event_id": "b"}"#, Err("event_id: appears more than once"));
        assert!(BillingEvent::parse("{\"event_id\": ", now()).unwrap_err().to_string().starts_with("json: EOF"));
    }
}
