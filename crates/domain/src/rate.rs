//! The platform's rate rule: at most N requests in ANY sliding window of 60 s (docs/platform.md §5).
//! A token bucket that allows a full burst and then refills would break it; this is exact.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::time::Duration;

/// At most `limit` requests in any window of `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RatePolicy {
    limit: NonZeroU32,
    window: Duration,
}

impl RatePolicy {
    /// `limit` requests per 60 s, the platform's window.
    pub fn per_minute(limit: NonZeroU32) -> Self {
        Self { limit, window: Duration::from_secs(60) }
    }
    /// Any limit and window.
    pub fn new(limit: NonZeroU32, window: Duration) -> Self {
        Self { limit, window }
    }
    /// Requests allowed per window.
    pub fn limit(&self) -> u32 {
        self.limit.get()
    }
    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }
}

/// An exact sliding-window limiter. Times are durations since any fixed origin (a monotonic
/// clock), so the limiter itself does no I/O and can be driven by tests.
#[derive(Debug, Clone)]
pub struct SlidingWindow {
    policy: RatePolicy,
    sent: VecDeque<Duration>,
    not_before: Duration,
}

impl SlidingWindow {
    /// An empty window.
    pub fn new(policy: RatePolicy) -> Self {
        Self { policy, sent: VecDeque::with_capacity(policy.limit() as usize), not_before: Duration::ZERO }
    }

    /// Takes a slot at time `now`, or says how long to wait for one. A request recorded at
    /// `t` leaves the window at `t + window`, so any half-open window `(t - 60 s, t]` holds at
    /// most `limit` requests.
    ///
    /// # Errors
    /// The time to wait before trying again.
    pub fn try_acquire(&mut self, now: Duration) -> Result<(), Duration> {
        if now < self.not_before {
            return Err(self.not_before - now);
        }
        while let Some(&first) = self.sent.front() {
            if first.saturating_add(self.policy.window) <= now {
                self.sent.pop_front();
            } else {
                break;
            }
        }
        if self.sent.len() < self.policy.limit() as usize {
            self.sent.push_back(now);
            Ok(())
        } else {
            let first = self.sent.front().copied().unwrap_or(now);
            Err(first.saturating_add(self.policy.window).saturating_sub(now))
        }
    }

    /// The server knows better (`Retry-After`, or `X-RateLimit-Remaining: 0` with a reset):
    /// take no slot before `now + wait`.
    pub fn defer(&mut self, now: Duration, wait: Duration) {
        self.not_before = self.not_before.max(now.saturating_add(wait));
    }

    /// How many slots are free at `now` (ignoring a server's wait).
    fn free(&self, now: Duration) -> usize {
        let held = self.sent.iter().filter(|&&t| t.saturating_add(self.policy.window) > now).count();
        (self.policy.limit() as usize).saturating_sub(held)
    }
}

/// How long a reconciliation counts as reading after its last read or its wait (a reader
/// that went away stops holding delivery back after this).
const READ_GRACE: Duration = Duration::from_secs(2);

/// One tenant's window, shared by delivery and by reconciliation's reads of the platform
/// (docs/platform.md §3: reads count against the billing rate limit).
///
/// Every request takes a slot of the whole window, so any 60 s holds at most `limit` of them;
/// reads also take a slot of their own window, so any 60 s holds at most
/// `floor(share × limit)` reads (at least 1). While a reconciliation reads (from when it wants
/// a slot until [`READ_GRACE`] after its last read or wait), delivery leaves free the slots the
/// reads may still take, so a backlog does not starve them: delivery then gets `1 - share` of
/// the window, and all of it otherwise.
///
/// ```
/// # use std::{num::NonZeroU32, time::Duration};
/// # use billsync_domain::{RatePolicy, SharedWindow};
/// let mut w = SharedWindow::new(RatePolicy::per_minute(NonZeroU32::new(10).unwrap()), 0.2);
/// let now = Duration::ZERO;
/// assert!(w.try_read(now).is_ok());
/// assert!(w.try_read(now).is_ok());
/// assert!(w.try_read(now).is_err(), "2 of 10 is the reads' share");
/// for _ in 0..8 {
///     assert!(w.try_send(now).is_ok());
/// }
/// assert!(w.try_send(now).is_err(), "10 requests in the window");
/// ```
#[derive(Debug, Clone)]
pub struct SharedWindow {
    all: SlidingWindow,
    reads: SlidingWindow,
    /// While reads go on: from when they want slots, until when (`(from, until)`).
    reading: Option<(Duration, Duration)>,
}

impl SharedWindow {
    /// A window of `policy` of which reads take at most `read_share` (clamped to `0..=1`).
    pub fn new(policy: RatePolicy, read_share: f64) -> Self {
        let share = if read_share.is_nan() { 0.0 } else { read_share.clamp(0.0, 1.0) };
        // floor, at least 1, at most the limit: exact for any u32 limit.
        let reads = ((f64::from(policy.limit()) * share).floor() as u32).clamp(1, policy.limit());
        let reads = RatePolicy::new(NonZeroU32::new(reads).unwrap_or(NonZeroU32::MIN), policy.window());
        Self { all: SlidingWindow::new(policy), reads: SlidingWindow::new(reads), reading: None }
    }

    /// The whole window's policy.
    pub fn policy(&self) -> RatePolicy {
        self.all.policy
    }

    /// The most reads in any window.
    pub fn read_limit(&self) -> u32 {
        self.reads.policy.limit()
    }

    /// Takes a slot for a delivery at `now`, or says how long to wait.
    ///
    /// # Errors
    /// The time to wait before trying again.
    pub fn try_send(&mut self, now: Duration) -> Result<(), Duration> {
        if let Some((_, until)) = self.reading.filter(|&(from, until)| from <= now && now < until) {
            // Leave free what the reads may still take.
            let keep = self.reads.free(now);
            if keep > 0 && self.all.free(now) <= keep {
                let wait = self.all.clone().try_acquire(now).err().unwrap_or(Duration::ZERO);
                return Err(wait.max(Duration::from_millis(1)).min(until - now));
            }
        }
        self.all.try_acquire(now)
    }

    /// Whether a delivery could take a slot at `now` (nothing is taken), or how long to wait.
    ///
    /// # Errors
    /// The time to wait before a slot could be free.
    pub fn probe_send(&self, now: Duration) -> Result<(), Duration> {
        self.clone().try_send(now)
    }

    /// Whether two deliveries could take a slot each at `now` (nothing is taken).
    pub fn has_two_free(&self, now: Duration) -> bool {
        let mut probe = self.clone();
        probe.try_send(now).is_ok() && probe.try_send(now).is_ok()
    }

    /// Takes a slot for a read at `now`: one of the reads' share and one of the whole window,
    /// or neither. Either way the reads count as going on (see [`SharedWindow`]).
    ///
    /// # Errors
    /// The time to wait before trying again.
    pub fn try_read(&mut self, now: Duration) -> Result<(), Duration> {
        let mut reads = self.reads.clone();
        if let Err(wait) = reads.try_acquire(now) {
            // The share is used up until `now + wait`: from then on, reads want slots.
            let from = now.saturating_add(wait);
            self.reading = Some((from, from.saturating_add(READ_GRACE)));
            return Err(wait);
        }
        match self.all.try_acquire(now) {
            Ok(()) => {
                self.reads = reads;
                self.reading = Some((now, now.saturating_add(READ_GRACE)));
                Ok(())
            }
            Err(wait) => {
                self.reading = Some((now, now.saturating_add(wait).saturating_add(READ_GRACE)));
                Err(wait)
            }
        }
    }

    /// The server knows better (`Retry-After`, or `X-RateLimit-Remaining: 0` with a reset): no
    /// request of either kind before `now + wait`.
    pub fn defer(&mut self, now: Duration, wait: Duration) {
        self.all.defer(now, wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn a_full_window_waits_for_the_oldest_request_to_leave() {
        let mut w = SlidingWindow::new(RatePolicy::per_minute(NonZeroU32::new(2).unwrap()));
        assert_eq!(w.try_acquire(ms(0)), Ok(()));
        assert_eq!(w.try_acquire(ms(10_000)), Ok(()));
        assert_eq!(w.try_acquire(ms(30_000)), Err(ms(30_000)));
        assert_eq!(w.try_acquire(ms(60_000)), Ok(()));
        w.defer(ms(60_000), ms(5_000));
        assert_eq!(w.try_acquire(ms(61_000)), Err(ms(4_000)));
    }

    #[test]
    fn a_wait_near_u64_max_saturates_instead_of_overflowing() {
        let mut w = SlidingWindow::new(RatePolicy::per_minute(NonZeroU32::new(2).unwrap()));
        w.defer(ms(1_000), Duration::from_secs(u64::MAX));
        assert_eq!(w.try_acquire(ms(2_000)), Err(Duration::MAX - ms(2_000)));
    }

    fn shared(limit: u32, share: f64) -> SharedWindow {
        SharedWindow::new(RatePolicy::per_minute(NonZeroU32::new(limit).unwrap()), share)
    }

    #[test]
    fn reads_get_a_floor_of_the_share_and_at_least_one() {
        assert_eq!(shared(100, 0.2).read_limit(), 20);
        assert_eq!(shared(7, 0.2).read_limit(), 1);
        assert_eq!(shared(10, 1.0).read_limit(), 10);
        assert_eq!(shared(10, f64::NAN).read_limit(), 1);
        assert_eq!(shared(10, 7.0).read_limit(), 10);
    }

    #[test]
    fn while_reads_go_on_delivery_leaves_them_their_share() {
        let mut w = shared(10, 0.2);
        for at in 0..10 {
            w.try_send(ms(at * 1_000)).unwrap();
        }
        // The read waits for the first request to leave the window, at 60 s.
        assert_eq!(w.try_read(ms(10_000)), Err(ms(50_000)));
        // From 60 s on the slots free one a second: delivery leaves the reads their 2.
        assert!(w.try_send(ms(60_000)).is_err());
        assert_eq!(w.try_read(ms(60_000)), Ok(()));
        assert_eq!(w.try_read(ms(60_000)), Err(ms(1_000)));
        assert!(w.try_send(ms(61_000)).is_err());
        assert_eq!(w.try_read(ms(61_000)), Ok(()));
        // The reads' share is used: the next slot goes to delivery.
        assert_eq!(w.try_send(ms(62_000)), Ok(()));
    }

    #[test]
    fn a_reader_that_went_away_stops_holding_delivery_back() {
        let mut w = shared(2, 0.5);
        w.try_send(ms(0)).unwrap();
        w.try_send(ms(10_000)).unwrap();
        assert_eq!(w.try_read(ms(11_000)), Err(ms(49_000)));
        assert!(w.try_send(ms(60_000)).is_err(), "the read still may come");
        assert_eq!(w.try_send(ms(60_000) + READ_GRACE), Ok(()));
    }

    #[test]
    fn a_server_wait_holds_reads_too() {
        let mut w = shared(10, 0.5);
        w.defer(ms(0), ms(5_000));
        assert_eq!(w.try_read(ms(1_000)), Err(ms(4_000)));
        assert_eq!(w.try_send(ms(1_000)), Err(ms(4_000)));
    }

    proptest! {
        /// Acquire greedily at arbitrary times; every 60 s window holds at most `limit`.
        #[test]
        fn any_sixty_second_window_holds_at_most_the_limit(
            limit in 1u32..20,
            steps in proptest::collection::vec(0u64..5_000, 1..400),
        ) {
            let mut w = SlidingWindow::new(RatePolicy::per_minute(NonZeroU32::new(limit).unwrap()));
            let mut now = Duration::ZERO;
            let mut granted = Vec::new();
            for step in steps {
                now += ms(step);
                if w.try_acquire(now).is_ok() {
                    granted.push(now);
                }
            }
            for (i, &start) in granted.iter().enumerate() {
                let in_window = granted[i..].iter().take_while(|&&t| t < start + ms(60_000)).count();
                prop_assert!(in_window <= limit as usize, "{} in the window starting {:?}", in_window, start);
            }
        }

        /// A backlog and a reconciliation both take every slot they are allowed, each waiting as
        /// told: any 60 s holds at most `limit` requests and at most the reads' share of reads,
        /// and the reads get their share (they are not starved), so delivery gets the rest.
        #[test]
        fn delivery_and_reads_share_the_window_as_promised(limit in 2u32..40, share in 0.05f64..0.9) {
            let mut w = shared(limit, share);
            let reads_max = w.read_limit() as usize;
            let (mut next_send, mut next_read) = (Duration::ZERO, Duration::ZERO);
            let mut log: Vec<(Duration, bool)> = Vec::new();
            let end = ms(600_000);
            while next_send.min(next_read) < end {
                // Whoever is due first tries; delivery tries first at a tie (the worst for reads).
                if next_read < next_send {
                    let now = next_read;
                    match w.try_read(now) {
                        Ok(()) => log.push((now, true)),
                        Err(wait) => next_read = now + wait,
                    }
                } else {
                    let now = next_send;
                    match w.try_send(now) {
                        Ok(()) => log.push((now, false)),
                        Err(wait) => next_send = now + wait,
                    }
                }
            }
            for (i, &(start, _)) in log.iter().enumerate() {
                let window: Vec<_> = log[i..].iter().take_while(|(t, _)| *t < start + ms(60_000)).collect();
                prop_assert!(window.len() <= limit as usize, "{} requests from {:?}", window.len(), start);
                let reads = window.iter().filter(|(_, read)| *read).count();
                prop_assert!(reads <= reads_max, "{} reads from {:?}", reads, start);
            }
            // Ten windows, all used: the reads took their share of each but the first (where
            // delivery came first, before any read), delivery the rest.
            let reads = log.iter().filter(|(_, read)| *read).count();
            prop_assert!(reads >= reads_max * 9, "{} reads, {} allowed per window", reads, reads_max);
            prop_assert_eq!(log.len(), limit as usize * 10);
        }

        /// With a backlog, waiting exactly as told uses the whole allowance.
        #[test]
        fn waiting_as_told_uses_the_whole_allowance(limit in 1u32..50, requests in 1usize..300) {
            let mut w = SlidingWindow::new(RatePolicy::per_minute(NonZeroU32::new(limit).unwrap()));
            let mut now = Duration::ZERO;
            let mut done = 0;
            while done < requests {
                match w.try_acquire(now) {
                    Ok(()) => done += 1,
                    Err(wait) => now += wait,
                }
            }
            let windows = (requests as u64 - 1) / u64::from(limit);
            prop_assert_eq!(now, ms(60_000 * windows));
        }
    }
}
