//! Exact sliding-window rate limits per (tenant, client) pair: any 60 s window holds at most
//! the limit. Timestamps are kept, so a change of limit takes effect at once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The window of docs/platform.md section 5.
pub const WINDOW: Duration = Duration::from_secs(60);

/// What the `X-RateLimit-*` headers say, and whether the request got a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateStatus {
    /// `X-RateLimit-Limit` (`u32::MAX` when limits are off).
    pub limit: u32,
    /// `X-RateLimit-Remaining`.
    pub remaining: u32,
    /// `X-RateLimit-Reset`: seconds, rounded up, until the window is empty again.
    pub reset_s: u64,
    /// `Some(seconds)`, rounded up, until a slot frees, when the request was refused.
    pub retry_after_s: Option<u64>,
}

impl RateStatus {
    pub(crate) fn unlimited() -> Self {
        Self { limit: u32::MAX, remaining: u32::MAX, reset_s: 0, retry_after_s: None }
    }
}

type Pair = (String, String);

#[derive(Default)]
pub(crate) struct Limiter {
    windows: RwLock<HashMap<Pair, Arc<Mutex<VecDeque<Instant>>>>>,
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Limiter {
    fn window(&self, tenant: &str, client: &str, create: bool) -> Option<Arc<Mutex<VecDeque<Instant>>>> {
        let key = (tenant.to_owned(), client.to_owned());
        if let Some(w) = self.windows.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Some(Arc::clone(w));
        }
        if !create {
            return None;
        }
        Some(Arc::clone(self.windows.write().unwrap_or_else(|p| p.into_inner()).entry(key).or_default()))
    }

    /// Takes a slot for the pair at `now` if `take`, otherwise only reports.
    pub(crate) fn check(&self, tenant: &str, client: &str, limit: Option<u32>, now: Instant, take: bool) -> RateStatus {
        let Some(limit) = limit else { return RateStatus::unlimited() };
        let Some(window) = self.window(tenant, client, take) else {
            return RateStatus { limit, remaining: limit, reset_s: 0, retry_after_s: None };
        };
        let mut w = window.lock().unwrap_or_else(|p| p.into_inner());
        while w.front().is_some_and(|&t| t + WINDOW <= now) {
            w.pop_front();
        }
        let mut retry_after_s = None;
        if take {
            if w.len() < limit as usize {
                w.push_back(now);
            } else {
                // The slot frees when the request that makes the window full leaves it.
                let idx = w.len() - limit as usize;
                let frees = w.get(idx).map_or(Duration::ZERO, |&t| (t + WINDOW).saturating_duration_since(now));
                retry_after_s = Some(ceil_secs(frees).max(1));
            }
        }
        let remaining = (limit as usize).saturating_sub(w.len());
        let reset_s = w.back().map_or(0, |&t| ceil_secs((t + WINDOW).saturating_duration_since(now)));
        RateStatus { limit, remaining: u32::try_from(remaining).unwrap_or(u32::MAX), reset_s, retry_after_s }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_window_holds_at_most_the_limit() {
        let l = Limiter::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(l.check("t", "c", Some(2), at(0), true).retry_after_s, None);
        let s = l.check("t", "c", Some(2), at(10), true);
        assert_eq!((s.retry_after_s, s.remaining, s.reset_s), (None, 0, 60));
        let s = l.check("t", "c", Some(2), at(30), true);
        assert_eq!((s.retry_after_s, s.remaining), (Some(30), 0));
        assert_eq!(l.check("t", "other", Some(2), at(30), true).retry_after_s, None);
        assert_eq!(l.check("t", "c", Some(2), at(60), true).retry_after_s, None);
        assert_eq!(l.check("t", "c", Some(2), at(61), false).remaining, 0);
        assert_eq!(l.check("t", "c", None, at(61), true), RateStatus::unlimited());
        assert_eq!(l.check("t", "c", Some(5), at(61), true).remaining, 2);
    }
}
