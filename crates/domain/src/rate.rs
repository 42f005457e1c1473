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
