//! When to refresh a token: at a fraction of its lifetime (default 0.8, so 12 of a billing
//! token's 15 minutes) and never later than expiry minus a skew margin.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// A refresh fraction outside (0, 1).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("refresh_at: {0} is not between 0 and 1 (exclusive); 0.8 refreshes a 15-minute token after 12 minutes")]
pub struct InvalidRefreshFraction(pub f64);

/// The refresh rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefreshPolicy {
    fraction: f64,
    skew_margin: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self { fraction: 0.8, skew_margin: Duration::from_secs(30) }
    }
}

impl RefreshPolicy {
    /// A policy refreshing at `fraction` of the lifetime, at least `skew_margin` before expiry.
    /// The margin is capped at a tenth of a token's lifetime, so that short-lived tokens
    /// (seconds, in tests) are still used for most of their life.
    ///
    /// # Errors
    /// [`InvalidRefreshFraction`] unless `0 < fraction < 1`.
    pub fn new(fraction: f64, skew_margin: Duration) -> Result<Self, InvalidRefreshFraction> {
        if fraction.is_finite() && fraction > 0.0 && fraction < 1.0 {
            Ok(Self { fraction, skew_margin })
        } else {
            Err(InvalidRefreshFraction(fraction))
        }
    }

    /// The fraction of the lifetime after which to refresh.
    pub fn fraction(&self) -> f64 {
        self.fraction
    }

    /// When a token issued at `issued_at` and expiring at `expires_at` should be replaced.
    /// Always strictly before `expires_at`, and never before `issued_at` unless the token was
    /// already expired when issued.
    pub fn refresh_at(&self, issued_at: DateTime<Utc>, expires_at: DateTime<Utc>) -> DateTime<Utc> {
        let one_ms = chrono::Duration::milliseconds(1);
        if expires_at <= issued_at {
            return expires_at - one_ms;
        }
        let lifetime = expires_at - issued_at;
        let lifetime_ms = lifetime.num_milliseconds();
        let at_fraction = issued_at + chrono::Duration::milliseconds((lifetime_ms as f64 * self.fraction) as i64);
        let margin = chrono::Duration::from_std(self.skew_margin).unwrap_or(chrono::Duration::MAX).min(lifetime / 10);
        at_fraction.min(expires_at - margin).min(expires_at - one_ms).max(issued_at.min(expires_at - one_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(s, 0).unwrap()
    }

    #[test]
    fn billing_tokens_refresh_at_twelve_minutes() {
        let p = RefreshPolicy::default();
        assert_eq!(p.refresh_at(t(0), t(900)), t(720));
        // A 4 s token refreshes after 3.2 s.
        assert_eq!(p.refresh_at(t(0), t(4)), t(0) + chrono::Duration::milliseconds(3200));
        // A fraction close to 1 is held back by the skew margin.
        let late = RefreshPolicy::new(0.99, Duration::from_secs(30)).unwrap();
        assert_eq!(late.refresh_at(t(0), t(900)), t(870));
    }

    #[test]
    fn rejects_fractions_outside_zero_one() {
        for f in [0.0, 1.0, -0.5, 1.5, f64::NAN] {
            assert!(RefreshPolicy::new(f, Duration::ZERO).is_err(), "{f}");
        }
    }

    proptest! {
        #[test]
        fn refresh_is_always_strictly_before_expiry(
            fraction in 0.001f64..0.999,
            margin_s in 0u64..100_000,
            iat in -1_000_000i64..1_000_000,
            lifetime_ms in prop_oneof![-10_000i64..=0, 1i64..100, 100i64..10_000_000],
        ) {
            let p = RefreshPolicy::new(fraction, Duration::from_secs(margin_s)).unwrap();
            let issued = t(iat);
            let expires = issued + chrono::Duration::milliseconds(lifetime_ms);
            let at = p.refresh_at(issued, expires);
            prop_assert!(at < expires);
            if lifetime_ms > 1 {
                prop_assert!(at >= issued);
            }
        }
    }
}
