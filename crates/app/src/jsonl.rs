//! Reading billing events from JSON Lines for `billsync enqueue`: all or nothing. When any
//! line is invalid, nothing is stored and every bad line is reported as `line N: field: reason`.

use std::io::BufRead;

use billsync_domain::{EncodedEvent, EventError, EventRules};
use chrono::{DateTime, Utc};

/// One bad line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong with it.
    pub error: EventError,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.error)
    }
}

/// Why a file could not be read as events.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Some lines are invalid; nothing was taken.
    #[error("{} invalid line(s); nothing was stored:\n{}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<LineError>),
    /// The input could not be read (or is not UTF-8).
    #[error("cannot read the input")]
    Io(#[from] std::io::Error),
}

/// Parses every non-blank line. Blank lines are skipped; the same event id twice in one input
/// is reported on its second line.
///
/// # Errors
/// [`ReadError::Invalid`] listing every bad line.
pub fn read_events(
    input: impl BufRead,
    rules: &EventRules,
    now: DateTime<Utc>,
) -> Result<Vec<EncodedEvent>, ReadError> {
    let mut gather = Gather::new(rules, now, "on line");
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        let text = line.trim();
        if !text.is_empty() {
            gather.take(i + 1, text);
        }
    }
    gather.finish().map_err(|errors| {
        ReadError::Invalid(errors.into_iter().map(|(line, error)| LineError { line, error }).collect())
    })
}

/// Events parsed one by one, each at its position (a line or an index), with every error kept:
/// the all-or-nothing reading that `enqueue` and the ingest share.
pub(crate) struct Gather<'a> {
    rules: &'a EventRules,
    now: DateTime<Utc>,
    /// How a position is named in a duplicate's reason (`on line`, `at index`).
    unit: &'static str,
    events: Vec<EncodedEvent>,
    errors: Vec<(usize, EventError)>,
    seen: std::collections::HashMap<billsync_domain::EventId, usize>,
}

impl<'a> Gather<'a> {
    pub(crate) fn new(rules: &'a EventRules, now: DateTime<Utc>, unit: &'static str) -> Self {
        Self { rules, now, unit, events: Vec::new(), errors: Vec::new(), seen: std::collections::HashMap::new() }
    }

    /// Parses the event at `pos`; the same event id twice is an error at its second position.
    pub(crate) fn take(&mut self, pos: usize, text: &str) {
        match self.rules.parse(text, self.now) {
            Ok(e) => {
                if let Some(first) = self.seen.insert(e.event_id().clone(), pos) {
                    let reason = format!("\"{}\" already appears {} {first}", e.event_id(), self.unit);
                    self.errors.push((pos, EventError { field: "event_id".into(), reason }));
                } else {
                    self.events.push(e.encode());
                }
            }
            Err(error) => self.errors.push((pos, error)),
        }
    }

    /// Records an error found before parsing (not UTF-8, say).
    pub(crate) fn refuse(&mut self, pos: usize, error: EventError) {
        self.errors.push((pos, error));
    }

    /// The events, or every error by position.
    pub(crate) fn finish(self) -> Result<Vec<EncodedEvent>, Vec<(usize, EventError)>> {
        if self.errors.is_empty() { Ok(self.events) } else { Err(self.errors) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z").unwrap().to_utc()
    }

    fn line(id: &str, quantity: &str) -> String {
        format!(
            r#"{{"event_id":"{id}","device_id":"d","meter":"m","quantity":{quantity},"unit":"kWh","occurred_at":"2026-11-23T10:00:00Z"}}"#
        )
    }

    #[test]
    fn every_bad_line_is_reported_and_nothing_is_taken() {
        let input =
            [line("a", "\"1\""), String::new(), line("b", "1.5"), "{oops".into(), line("a", "\"2\"")].join("\n");
        let err = read_events(input.as_bytes(), &EventRules::default(), now()).unwrap_err();
        let ReadError::Invalid(lines) = err else { panic!("expected invalid lines") };
        let shown: Vec<String> = lines.iter().map(ToString::to_string).collect();
        assert_eq!(shown[0], r#"line 3: quantity: expected a decimal string such as "12.5", found a number"#);
        assert!(shown[1].starts_with("line 4: json: "), "{}", shown[1]);
        assert_eq!(shown[2], r#"line 5: event_id: "a" already appears on line 1"#);
    }

    #[test]
    fn good_input_gives_canonical_events_in_order() {
        let input = format!("{}\n{}\n", line("a", "\"1.50\""), line("b", "\"2\""));
        let events = read_events(input.as_bytes(), &EventRules::default(), now()).unwrap();
        let ids: Vec<&str> = events.iter().map(|e| e.event_id().as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(events[0].json().contains(r#""quantity":"1.50""#));
    }
}
