//! Backpressure: the outbox refuses new events (try again later) rather than grow past its
//! limits, `[storage] max_pending_events` and, for SQLite, `[storage] min_free_disk_mb`. Nothing
//! already stored is ever dropped to make room.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a count of pending events is trusted before it is read again (events stored
/// meanwhile are added to it; deliveries are not subtracted, so it errs on the side of
/// refusing).
const RECOUNT_AFTER: Duration = Duration::from_secs(1);

/// Why the outbox takes no new events now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Pressure {
    /// `max_pending_events` is reached.
    #[error(
        "the outbox holds {pending} pending events, [storage] max_pending_events is {max}: nothing was stored; try \
         again once the agent has delivered some (is `billsync run` running and the platform reachable?)"
    )]
    TooManyPending {
        /// Pending events over all tenants (as last counted).
        pending: u64,
        /// The limit.
        max: u64,
    },
    /// Less than `min_free_disk_mb` is free where the SQLite outbox lives.
    #[error(
        "only {free_mib} MiB are free on the disk of {location}, below [storage] min_free_disk_mb = {floor_mib}: \
         nothing was stored; free some space and try again"
    )]
    DiskLow {
        /// The outbox (its file).
        location: String,
        /// MiB free.
        free_mib: u64,
        /// The floor, in MiB.
        floor_mib: u64,
    },
}

impl Pressure {
    /// Every reason, as [`Pressure::reason`] names them.
    pub const REASONS: [&'static str; 2] = ["max_pending_events", "min_free_disk_mb"];

    /// The limit reached, by its configuration key.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooManyPending { .. } => Self::REASONS[0],
            Self::DiskLow { .. } => Self::REASONS[1],
        }
    }
}

/// The last count of pending events, and when it was read.
#[derive(Debug, Default)]
pub(crate) struct PendingCount {
    last: Mutex<Option<(Instant, u64)>>,
    /// Whether the outbox pushed back when last asked.
    pressure: Mutex<Option<Pressure>>,
}

impl PendingCount {
    /// The count if it is fresh enough.
    pub(crate) fn fresh(&self) -> Option<u64> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.filter(|(at, _)| at.elapsed() < RECOUNT_AFTER).map(|(_, n)| n)
    }

    /// Records a count just read.
    pub(crate) fn set(&self, n: u64) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), n));
    }

    /// Records whether the outbox pushes back now.
    pub(crate) fn pushing_back(&self, pressure: Option<Pressure>) {
        *self.pressure.lock().unwrap_or_else(|p| p.into_inner()) = pressure;
    }

    /// Whether the outbox pushed back when last asked.
    pub(crate) fn pressure(&self) -> Option<Pressure> {
        self.pressure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Adds events just stored.
    pub(crate) fn add(&self, n: u64) {
        if let Some((_, count)) = self.last.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            *count = count.saturating_add(n);
        }
    }
}
