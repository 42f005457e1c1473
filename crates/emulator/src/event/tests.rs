//! The event rules of docs/platform.md section 3, one row per rule.

use serde_json::json;

use super::*;

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z").unwrap().with_timezone(&Utc)
}

fn good() -> Value {
    json!({"event_id": "0193f6c2-7d1e-7c3a-9a4e-2b1f0c9d8e71", "device_id": "meter-0042",
           "meter": "energy.active", "quantity": "12.500", "unit": "kWh",
           "occurred_at": "2026-11-23T10:15:00Z", "attributes": {"site": "plant-7"}})
}

/// The good event with one field replaced (or removed with `None`).
fn with(field: &str, value: Option<Value>) -> Value {
    let mut e = good();
    match value {
        Some(v) => e[field] = v,
        None => {
            e.as_object_mut().unwrap().remove(field);
        }
    }
    e
}

/// The code and message of a refusal, or `Ok` with the stored JSON.
fn check(event: &Value) -> Result<String, (String, String)> {
    validate(event, now()).map(|v| v.json).map_err(|r| (r.code(), r.message()))
}

fn refused(field: &str, value: Option<Value>, code: &str, message: &str) {
    let got = check(&with(field, value.clone()));
    assert_eq!(got, Err((code.to_owned(), message.to_owned())), "{field} = {value:?}");
}

fn accepted(field: &str, value: Value) -> Value {
    let json = check(&with(field, Some(value.clone()))).unwrap_or_else(|e| panic!("{field} = {value}: {e:?}"));
    serde_json::from_str(&json).unwrap()
}

#[test]
fn the_platform_example_is_stored_in_canonical_form() {
    let stored = check(&good()).unwrap();
    assert_eq!(
        stored,
        r#"{"event_id":"0193f6c2-7d1e-7c3a-9a4e-2b1f0c9d8e71","device_id":"meter-0042","meter":"energy.active","quantity":"12.500","unit":"kWh","occurred_at":"2026-11-23T10:15:00Z","attributes":{"site":"plant-7"}}"#
    );
    let v = validate(&good(), now()).unwrap();
    assert_eq!((v.event_id.as_str(), v.meter.as_str()), ("0193f6c2-7d1e-7c3a-9a4e-2b1f0c9d8e71", "energy.active"));
}

#[test]
fn quantities_are_decimal_strings_kept_at_their_scale() {
    let q = |s: &str| accepted("quantity", json!(s))["quantity"].as_str().unwrap().to_owned();
    assert_eq!(q("12.50"), "12.50");
    assert_eq!(q("0012.50"), "12.50");
    assert_eq!(q("00"), "0");
    assert_eq!(q("0.000"), "0.000");
    assert_eq!(q("999999999999999999.999999999"), "999999999999999999.999999999");
    let expected = |found: &str| format!("quantity: expected a decimal string such as \"12.5\", found {found}");
    refused("quantity", Some(json!(12.5)), "invalid_quantity", &expected("a number"));
    refused("quantity", Some(json!(null)), "invalid_quantity", &expected("null"));
    for bad in ["1e5", ".5", "1.", "+1", " 1", "1,5", "1.2.3", "", "-", "٣"] {
        refused("quantity", Some(json!(bad)), "invalid_quantity", &expected(&format!("\"{bad}\"")));
    }
    refused("quantity", Some(json!("-1.5")), "invalid_quantity", "quantity: must not be negative, found \"-1.5\"");
    refused(
        "quantity",
        Some(json!("1234567890123456789")),
        "invalid_quantity",
        "quantity: has 19 digits before the point; at most 18 are allowed",
    );
    refused(
        "quantity",
        Some(json!("1.1234567890")),
        "invalid_quantity",
        "quantity: has 10 digits after the point; at most 9 are allowed",
    );
    refused("quantity", None, "invalid_quantity", "quantity: is required");
}

#[test]
fn occurred_at_is_rfc_3339_within_five_minutes_ahead_and_35_days_back() {
    assert_eq!(accepted("occurred_at", json!("2026-11-23T12:05:00Z"))["occurred_at"], "2026-11-23T12:05:00Z");
    assert_eq!(
        accepted("occurred_at", json!("2026-11-23T13:00:00.500+02:00"))["occurred_at"],
        "2026-11-23T11:00:00.500Z"
    );
    assert_eq!(accepted("occurred_at", json!("2026-10-19T12:00:00Z"))["occurred_at"], "2026-10-19T12:00:00Z");
    for (at, message) in [
        ("2026-11-23T12:05:01Z", "occurred_at: 2026-11-23T12:05:01Z is more than 5 minutes in the future"),
        ("2026-11-23T14:00:00Z", "occurred_at: 2026-11-23T14:00:00Z is more than 5 minutes in the future"),
        ("2026-10-19T11:59:59Z", "occurred_at: 2026-10-19T11:59:59Z is older than 35 days"),
        (
            "2026-11-23T10:15:00",
            r#"occurred_at: expected an RFC 3339 time with an offset such as "2026-11-23T10:15:00Z", found "2026-11-23T10:15:00""#,
        ),
    ] {
        refused("occurred_at", Some(json!(at)), "invalid_occurred_at", message);
    }
    refused("occurred_at", Some(json!(1)), "invalid_occurred_at", "occurred_at: expected a string, found a number");
}

#[test]
fn ids_names_and_units_have_their_lengths_and_characters() {
    refused(
        "event_id",
        Some(json!("a/b")),
        "invalid_event_id",
        "event_id: contains '/'; only letters, digits and . _ : - are allowed",
    );
    refused("event_id", Some(json!(7)), "invalid_event_id", "event_id: expected a string, found a number");
    refused(
        "event_id",
        Some(json!("a".repeat(129))),
        "invalid_event_id",
        "event_id: is 129 characters long; at most 128 are allowed",
    );
    assert_eq!(accepted("event_id", json!("a.b_c:d-E9"))["event_id"], "a.b_c:d-E9");
    refused("device_id", Some(json!("")), "invalid_device_id", "device_id: must not be empty");
    refused("device_id", None, "invalid_device_id", "device_id: is required");
    refused("meter", Some(json!("a\u{7}b")), "invalid_meter", r"meter: contains the control character '\u{7}'");
    assert_eq!(accepted("meter", json!("é".repeat(128)))["meter"], "é".repeat(128));
    refused("unit", Some(json!("u".repeat(33))), "invalid_unit", "unit: is 33 characters long; at most 32 are allowed");
    refused("unit", Some(json!(null)), "invalid_unit", "unit: expected a string, found null");
}

#[test]
fn attributes_are_at_most_16_string_pairs() {
    assert!(accepted("attributes", json!(null)).get("attributes").is_none());
    assert!(accepted("attributes", json!({})).get("attributes").is_none());
    refused(
        "attributes",
        Some(json!({"site": 7})),
        "invalid_attributes",
        "attributes.site: expected a string, found a number",
    );
    refused(
        "attributes",
        Some(json!([])),
        "invalid_attributes",
        "attributes: expected an object of strings, found an array",
    );
    let many: Map<String, Value> = (0..17).map(|i| (format!("k{i}"), Value::from("v"))).collect();
    refused(
        "attributes",
        Some(Value::Object(many)),
        "invalid_attributes",
        "attributes: has 17 pairs; at most 16 are allowed",
    );
    let long_key: Map<String, Value> = [("k".repeat(129), Value::from("v"))].into_iter().collect();
    refused(
        "attributes",
        Some(Value::Object(long_key)),
        "invalid_attributes",
        &format!("attributes.{}...: a key must be 1-128 characters without control characters", "k".repeat(40)),
    );
    refused(
        "attributes",
        Some(json!({"site": "v".repeat(1025)})),
        "invalid_attributes",
        "attributes.site: is longer than 1024 characters",
    );
}

#[test]
fn the_shape_is_an_object_of_known_fields() {
    refused(
        "quantiy",
        Some(json!("1")),
        "invalid_event",
        r#"event: unknown field "quantiy"; expected event_id, device_id, meter, quantity, unit, occurred_at, attributes"#,
    );
    for (value, kind) in [(json!([1]), "an array"), (json!("x"), "a string"), (json!(null), "null")] {
        assert_eq!(
            check(&value),
            Err(("invalid_event".to_owned(), format!("event: expected a JSON object, found {kind}"))),
        );
    }
}
