//! Batching: at most `max_events` events (the platform allows 500) and at most `max_bytes`
//! serialized (1 MiB) per request, in enqueue order.

use std::fmt;

use crate::event::EncodedEvent;

/// The platform's ceiling on events per request.
pub const MAX_BATCH_EVENTS: usize = 500;
/// The platform's ceiling on a request body, in bytes.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

const PREFIX: &str = "{\"events\":[";
const SUFFIX: &str = "]}";

/// A batch limit outside what the platform accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("max_batch_events: {0} is not between 1 and 500")]
pub struct InvalidBatchSize(pub usize);

/// Splits events into batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batcher {
    max_events: usize,
    max_bytes: usize,
}

impl Default for Batcher {
    fn default() -> Self {
        Self { max_events: MAX_BATCH_EVENTS, max_bytes: MAX_BATCH_BYTES }
    }
}

impl Batcher {
    /// A batcher of at most `max_events` (1-500) events and 1 MiB.
    ///
    /// # Errors
    /// [`InvalidBatchSize`] when `max_events` is 0 or above 500.
    pub fn new(max_events: usize) -> Result<Self, InvalidBatchSize> {
        if (1..=MAX_BATCH_EVENTS).contains(&max_events) {
            Ok(Self { max_events, max_bytes: MAX_BATCH_BYTES })
        } else {
            Err(InvalidBatchSize(max_events))
        }
    }

    /// The same batcher with a smaller byte ceiling (clamped to at most 1 MiB).
    pub fn with_max_bytes(self, max_bytes: usize) -> Self {
        Self { max_bytes: max_bytes.min(MAX_BATCH_BYTES), ..self }
    }

    /// Events per batch at most.
    pub fn max_events(&self) -> usize {
        self.max_events
    }

    /// Splits `events` into consecutive batches, each within both limits. An event too large
    /// to fit any batch on its own (impossible for events that passed the platform's field
    /// limits) still travels alone, so nothing is ever dropped.
    pub fn split<'a>(&self, events: &'a [EncodedEvent]) -> Vec<&'a [EncodedEvent]> {
        let mut out = Vec::with_capacity(events.len() / self.max_events + 1);
        let mut start = 0;
        let mut bytes = PREFIX.len() + SUFFIX.len();
        for (i, e) in events.iter().enumerate() {
            let n = i - start;
            let add = e.json().len() + usize::from(n > 0);
            if n > 0 && (n == self.max_events || bytes + add > self.max_bytes) {
                out.push(&events[start..i]);
                start = i;
                bytes = PREFIX.len() + SUFFIX.len() + e.json().len();
            } else {
                bytes += add;
            }
        }
        if start < events.len() {
            out.push(&events[start..]);
        }
        out
    }
}

/// A serialized request body `{"events":[...]}`.
#[derive(Clone, PartialEq, Eq)]
pub struct BatchBody {
    json: String,
    events: usize,
    key: String,
}

impl BatchBody {
    /// Builds the body for a batch.
    pub fn new(batch: &[EncodedEvent]) -> Self {
        let len = PREFIX.len() + SUFFIX.len() + batch.iter().map(|e| e.json().len() + 1).sum::<usize>();
        let mut json = String::with_capacity(len);
        // FNV-1a over the event ids: the same batch gets the same key after a restart.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        json.push_str(PREFIX);
        for (i, e) in batch.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            json.push_str(e.json());
            for b in e.event_id().as_str().bytes().chain([0]) {
                hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        json.push_str(SUFFIX);
        Self { json, events: batch.len(), key: format!("billsync-{hash:016x}-{}", batch.len()) }
    }

    /// The `Idempotency-Key` for this batch: derived from its event ids, so a retry of the
    /// same batch carries the same key.
    pub fn idempotency_key(&self) -> &str {
        &self.key
    }
    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.json
    }
    /// How many events it holds.
    pub fn events(&self) -> usize {
        self.events
    }
    /// Gives up the JSON.
    pub fn into_string(self) -> String {
        self.json
    }
}

impl fmt::Debug for BatchBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchBody").field("events", &self.events).field("bytes", &self.json.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::EventId;
    use proptest::prelude::*;

    fn ev(i: usize, pad: usize) -> EncodedEvent {
        EncodedEvent::from_stored(
            EventId::parse(format!("e{i}")).unwrap(),
            format!("{{\"p\":\"{}\"}}", "x".repeat(pad)),
        )
    }

    #[test]
    fn a_backlog_goes_in_full_batches() {
        let events: Vec<_> = (0..1234).map(|i| ev(i, 10)).collect();
        let sizes: Vec<_> = Batcher::default().split(&events).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [500, 500, 234]);
    }

    #[test]
    fn the_body_is_valid_json() {
        let events: Vec<_> = (0..3).map(|i| ev(i, 2)).collect();
        let body = BatchBody::new(&events);
        let v: serde_json::Value = serde_json::from_str(body.as_str()).unwrap();
        assert_eq!(v["events"].as_array().unwrap().len(), 3);
    }

    proptest! {
        #[test]
        fn batching_never_exceeds_a_limit_and_never_loses_or_duplicates_an_event(
            pads in proptest::collection::vec(0usize..3000, 0..600),
            max_events in 1usize..=500,
            max_bytes in 4096usize..=MAX_BATCH_BYTES,
        ) {
            let events: Vec<_> = pads.iter().enumerate().map(|(i, &p)| ev(i, p)).collect();
            let b = Batcher::new(max_events).unwrap().with_max_bytes(max_bytes);
            let batches = b.split(&events);
            let mut seen = Vec::new();
            for batch in &batches {
                prop_assert!(!batch.is_empty());
                prop_assert!(batch.len() <= max_events);
                prop_assert!(BatchBody::new(batch).as_str().len() <= max_bytes);
                seen.extend(batch.iter().map(|e| e.event_id().clone()));
            }
            let all: Vec<_> = events.iter().map(|e| e.event_id().clone()).collect();
            prop_assert_eq!(seen, all);
        }
    }
}
