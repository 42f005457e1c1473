//! What both adapters share for the quarantine: an entry as it is written (its kept payload,
//! full size and digest, computed on the caller's task), and an entry read back.

use billsync_domain::{QUARANTINE_PAYLOAD_MAX, QuarantineSelection, Quarantined};
use sha2::{Digest as _, Sha256};

use crate::common::from_ms;
use crate::error::StoreError;

/// A message to keep, as the `quarantine` table stores it (but for its time, which is the
/// adapter's clock's at the write).
#[derive(Clone)]
pub(crate) struct NewEntry {
    pub topic: String,
    pub reason: String,
    /// The payload's first [`QUARANTINE_PAYLOAD_MAX`] bytes.
    pub payload: Vec<u8>,
    /// The whole payload's size in bytes.
    pub size: i64,
    /// SHA-256 of the topic's bytes, a 0 byte and the whole payload: the same message on the
    /// same topic is kept once.
    pub digest: Vec<u8>,
}

impl NewEntry {
    pub(crate) fn new(topic: &str, payload: &[u8], reason: &str) -> Self {
        Self {
            topic: topic.to_owned(),
            reason: reason.to_owned(),
            payload: payload[..payload.len().min(QUARANTINE_PAYLOAD_MAX)].to_vec(),
            size: i64::try_from(payload.len()).unwrap_or(i64::MAX),
            digest: digest(topic, payload),
        }
    }
}

/// Without the payload (up to 64 KiB of it).
impl std::fmt::Debug for NewEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewEntry")
            .field("topic", &self.topic)
            .field("reason", &self.reason)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of the topic's bytes, a 0 byte (no topic holds one: MQTT forbids U+0000) and the
/// whole payload.
pub(crate) fn digest(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update(topic.as_bytes());
    hash.update([0]);
    hash.update(payload);
    hash.finalize().to_vec()
}

/// The ids a selection names, `None` for every entry.
pub(crate) fn selected(which: &QuarantineSelection) -> Option<&[i64]> {
    match which {
        QuarantineSelection::All => None,
        QuarantineSelection::Ids(ids) => Some(ids),
    }
}

/// What a selection names, for the `what` of a failure.
pub(crate) fn described(which: &QuarantineSelection) -> String {
    match which {
        QuarantineSelection::All => "every quarantine entry".to_owned(),
        QuarantineSelection::Ids(ids) => format!("{} quarantine entries", ids.len()),
    }
}

/// A `quarantine` row as both adapters select it: id, received_at (ms), topic, reason, payload,
/// size.
pub(crate) type EntryRow = (i64, i64, String, String, Vec<u8>, i64);

/// The entry of a stored row.
pub(crate) fn entry(row: EntryRow) -> Result<Quarantined, StoreError> {
    let (id, received_at, topic, reason, payload, size) = row;
    let size = u64::try_from(size).map_err(|e| StoreError::corrupt("quarantine size", format!("entry {id}: {e}")))?;
    Ok(Quarantined { id, received_at: from_ms(received_at)?, topic, reason, payload, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_keeps_the_first_bytes_and_the_full_size_and_digests_all_of_it() {
        let long = vec![7_u8; QUARANTINE_PAYLOAD_MAX + 10];
        let e = NewEntry::new("t/x", &long, "bad");
        assert_eq!((e.payload.len(), e.size), (QUARANTINE_PAYLOAD_MAX, i64::try_from(long.len()).unwrap()));
        assert_ne!(e.digest, NewEntry::new("t/x", &long[..QUARANTINE_PAYLOAD_MAX], "bad").digest);
        assert_eq!(e.digest, digest("t/x", &long));
        assert_eq!(e.digest.len(), 32);
        // The separator keeps the topic and payload apart.
        assert_ne!(digest("ab", b"c"), digest("a", b"bc"));
        let short = NewEntry::new("t", b"{}", "r");
        assert_eq!((short.payload.as_slice(), short.size), (&b"{}"[..], 2));
    }
}
