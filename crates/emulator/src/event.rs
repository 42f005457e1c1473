//! The emulator's own validation of one billing event (docs/platform.md section 3), written
//! independently of `billsync-domain`: the emulator is the referee that billsync's client is
//! tested against, so a rule the client gets wrong must not be mirrored here.
//!
//! Where platform.md is silent, the emulator holds events to the limits docs/decisions.md
//! records for the client (unknown fields are errors; attribute keys are 1-128 characters
//! without control characters, values at most 1024), so that client and platform agree on
//! every event a correct client builds. A refusal names its field and says what was wrong;
//! the billing endpoint turns it into a `rejected` entry of the `202`.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

/// How far ahead of the platform's clock `occurred_at` may be, in minutes.
pub(crate) const MAX_FUTURE_MINUTES: i64 = 5;
/// How old `occurred_at` may be, in days.
pub(crate) const MAX_AGE_DAYS: i64 = 35;
/// Longest `event_id`, `device_id` and `meter`, in characters.
const MAX_NAME: usize = 128;
/// Longest `unit`, in characters.
const MAX_UNIT: usize = 32;
/// Most digits of a quantity before and after the point.
const MAX_INTEGER_DIGITS: usize = 18;
const MAX_FRACTION_DIGITS: usize = 9;
/// Most attributes, longest key and longest value (characters).
const MAX_ATTRIBUTES: usize = 16;
const MAX_ATTRIBUTE_KEY: usize = 128;
const MAX_ATTRIBUTE_VALUE: usize = 1024;
/// Longest piece of a refused value quoted back in a message, in characters.
const QUOTE: usize = 40;

/// The fields of an event, in the order they are checked.
const FIELDS: [&str; 7] = ["event_id", "device_id", "meter", "quantity", "unit", "occurred_at", "attributes"];

/// What a refusal is about: one of [`FIELDS`], or the event as a whole (not an object, an
/// unknown field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    Event,
    EventId,
    DeviceId,
    Meter,
    Quantity,
    Unit,
    OccurredAt,
    Attributes,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Self::Event => "event",
            Self::EventId => "event_id",
            Self::DeviceId => "device_id",
            Self::Meter => "meter",
            Self::Quantity => "quantity",
            Self::Unit => "unit",
            Self::OccurredAt => "occurred_at",
            Self::Attributes => "attributes",
        }
    }
}

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    field: Field,
    /// The attribute at fault (shortened), for [`Field::Attributes`].
    key: Option<String>,
    reason: String,
}

impl Refusal {
    fn new(field: Field, reason: impl Into<String>) -> Self {
        Self { field, key: None, reason: reason.into() }
    }

    fn attribute(key: &str, reason: impl Into<String>) -> Self {
        Self { field: Field::Attributes, key: Some(quote(key)), reason: reason.into() }
    }

    /// The `code` of the rejected entry: `invalid_` and the field (`invalid_attributes` for any
    /// attribute, `invalid_event` for the shape).
    pub(crate) fn code(&self) -> String {
        format!("invalid_{}", self.field.name())
    }

    /// What the refusal is about, as a path below the event: `quantity`, `attributes.site`;
    /// empty for the event as a whole (not an object, an unknown field).
    pub(crate) fn path(&self) -> String {
        match (&self.key, self.field) {
            (_, Field::Event) => String::new(),
            (Some(key), field) => format!("{}.{key}", field.name()),
            (None, field) => field.name().to_owned(),
        }
    }

    /// Why, in words (the `message` without the field).
    pub(crate) fn reason(&self) -> &str {
        &self.reason
    }

    /// The `message` of the rejected entry: `field: reason`, e.g. `attributes.site: expected a
    /// string, found a number`.
    pub(crate) fn message(&self) -> String {
        match &self.key {
            Some(key) => format!("{}.{key}: {}", self.field.name(), self.reason),
            None => format!("{}: {}", self.field.name(), self.reason),
        }
    }
}

/// An event that passed: its id and meter, and its canonical JSON as the platform stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Valid {
    pub event_id: String,
    pub meter: String,
    pub json: String,
}

/// The stored form: times in UTC, the quantity's scale kept (leading zeros dropped),
/// attributes sorted and left out when there are none.
#[derive(Serialize)]
struct Canonical<'a> {
    event_id: &'a str,
    device_id: &'a str,
    meter: &'a str,
    quantity: String,
    unit: &'a str,
    occurred_at: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    attributes: BTreeMap<&'a str, &'a str>,
}

/// Checks one element of a batch against every rule, at `now` (the platform's clock); the
/// first field that breaks a rule is named.
pub(crate) fn validate(value: &Value, now: DateTime<Utc>) -> Result<Valid, Refusal> {
    let Value::Object(event) = value else {
        return Err(Refusal::new(Field::Event, format!("expected a JSON object, found {}", kind(value))));
    };
    if let Some(unknown) = event.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        let reason = format!("unknown field \"{}\"; expected {}", quote(unknown), FIELDS.join(", "));
        return Err(Refusal::new(Field::Event, reason));
    }
    let event_id = event_id(string(event, Field::EventId)?)?;
    let device_id = name(Field::DeviceId, string(event, Field::DeviceId)?, MAX_NAME)?;
    let meter = name(Field::Meter, string(event, Field::Meter)?, MAX_NAME)?;
    let quantity = quantity(event.get("quantity"))?;
    let unit = name(Field::Unit, string(event, Field::Unit)?, MAX_UNIT)?;
    let occurred_at = occurred_at(string(event, Field::OccurredAt)?, now)?;
    let attributes = attributes(event.get("attributes"))?;
    let canonical = Canonical {
        event_id,
        device_id,
        meter,
        quantity,
        unit,
        occurred_at: occurred_at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        attributes,
    };
    // Serialising strings and a map of strings into a String cannot fail.
    let json = serde_json::to_string(&canonical).unwrap_or_default();
    Ok(Valid { event_id: event_id.to_owned(), meter: meter.to_owned(), json })
}

/// How a JSON value is named in a message.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// At most [`QUOTE`] characters of a value, `...` marking a cut.
fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

/// A required string field.
fn string(event: &Map<String, Value>, field: Field) -> Result<&str, Refusal> {
    match event.get(field.name()) {
        None => Err(Refusal::new(field, "is required")),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(Refusal::new(field, format!("expected a string, found {}", kind(other)))),
    }
}

/// Checks a length in characters: not empty, at most `max`.
fn length(field: Field, s: &str, max: usize) -> Result<(), Refusal> {
    let n = s.chars().count();
    if n == 0 {
        return Err(Refusal::new(field, "must not be empty"));
    }
    if n > max {
        return Err(Refusal::new(field, format!("is {n} characters long; at most {max} are allowed")));
    }
    Ok(())
}

/// 1-128 of `[A-Za-z0-9._:-]`: the platform's idempotency key.
fn event_id(s: &str) -> Result<&str, Refusal> {
    length(Field::EventId, s, MAX_NAME)?;
    match s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))) {
        Some(c) => {
            Err(Refusal::new(Field::EventId, format!("contains {c:?}; only letters, digits and . _ : - are allowed")))
        }
        None => Ok(s),
    }
}

/// 1 to `max` characters, no control characters.
fn name(field: Field, s: &str, max: usize) -> Result<&str, Refusal> {
    length(field, s, max)?;
    match s.chars().find(|c| c.is_control()) {
        Some(c) => Err(Refusal::new(field, format!("contains the control character {c:?}"))),
        None => Ok(s),
    }
}

/// A non-negative decimal string, at most 18 digits before the point and 9 after; never a
/// JSON number. Returns the stored form: leading zeros dropped, the scale kept
/// (`"007.50"` → `"7.50"`).
fn quantity(value: Option<&Value>) -> Result<String, Refusal> {
    let fail = |reason: String| Refusal::new(Field::Quantity, reason);
    let s = match value {
        None => return Err(Refusal::new(Field::Quantity, "is required")),
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(fail(format!("expected a decimal string such as \"12.5\", found {}", kind(other)))),
    };
    if let Some(rest) = s.strip_prefix('-') {
        if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(fail(format!("must not be negative, found \"{s}\"")));
        }
    }
    let (int, fraction) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || fraction.is_some_and(|f| !digits(f)) {
        return Err(fail(format!("expected a decimal string such as \"12.5\", found \"{}\"", quote(s))));
    }
    if int.len() > MAX_INTEGER_DIGITS {
        return Err(fail(format!(
            "has {} digits before the point; at most {MAX_INTEGER_DIGITS} are allowed",
            int.len()
        )));
    }
    if let Some(f) = fraction.filter(|f| f.len() > MAX_FRACTION_DIGITS) {
        return Err(fail(format!("has {} digits after the point; at most {MAX_FRACTION_DIGITS} are allowed", f.len())));
    }
    let int = match int.trim_start_matches('0') {
        "" => "0",
        trimmed => trimmed,
    };
    Ok(match fraction {
        Some(f) => format!("{int}.{f}"),
        None => int.to_owned(),
    })
}

/// RFC 3339 with an offset, at most [`MAX_FUTURE_MINUTES`] ahead of `now` and at most
/// [`MAX_AGE_DAYS`] old.
fn occurred_at(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, Refusal> {
    let fail = |reason: String| Refusal::new(Field::OccurredAt, reason);
    let t = DateTime::parse_from_rfc3339(s)
        .map_err(|_| {
            fail(format!(
                "expected an RFC 3339 time with an offset such as \"2026-11-23T10:15:00Z\", found \"{}\"",
                quote(s)
            ))
        })?
        .with_timezone(&Utc);
    if t > now + Duration::minutes(MAX_FUTURE_MINUTES) {
        return Err(fail(format!("{s} is more than {MAX_FUTURE_MINUTES} minutes in the future")));
    }
    if t < now - Duration::days(MAX_AGE_DAYS) {
        return Err(fail(format!("{s} is older than {MAX_AGE_DAYS} days")));
    }
    Ok(t)
}

/// Optional (`null` counts as none): an object of at most 16 string pairs.
fn attributes(value: Option<&Value>) -> Result<BTreeMap<&str, &str>, Refusal> {
    let pairs = match value {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(pairs)) => pairs,
        Some(other) => {
            let reason = format!("expected an object of strings, found {}", kind(other));
            return Err(Refusal::new(Field::Attributes, reason));
        }
    };
    if pairs.len() > MAX_ATTRIBUTES {
        let reason = format!("has {} pairs; at most {MAX_ATTRIBUTES} are allowed", pairs.len());
        return Err(Refusal::new(Field::Attributes, reason));
    }
    let mut out = BTreeMap::new();
    for (key, value) in pairs {
        let n = key.chars().count();
        if n == 0 || n > MAX_ATTRIBUTE_KEY || key.chars().any(char::is_control) {
            let reason = format!("a key must be 1-{MAX_ATTRIBUTE_KEY} characters without control characters");
            return Err(Refusal::attribute(key, reason));
        }
        let Value::String(value) = value else {
            return Err(Refusal::attribute(key, format!("expected a string, found {}", kind(value))));
        };
        if value.chars().count() > MAX_ATTRIBUTE_VALUE {
            return Err(Refusal::attribute(key, format!("is longer than {MAX_ATTRIBUTE_VALUE} characters")));
        }
        out.insert(key.as_str(), value.as_str());
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
