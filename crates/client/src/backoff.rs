//! Reconnect delays: exponential backoff with full jitter (AWS's "full
//! jitter": a uniform draw between zero and the capped exponential), so that
//! many clients that lost the same gateway do not return in lockstep.

use std::time::Duration;

/// Backoff settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    /// The cap of the first delay.
    pub initial: Duration,
    /// No delay is longer than this.
    pub max: Duration,
    /// Failed attempts in a row after which the client gives up; `None` = never.
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: Duration::from_secs(1), max: Duration::from_secs(30), max_attempts: None }
    }
}

impl Backoff {
    /// The ceiling of attempt `attempt` (0-based): `initial · 2^attempt`, capped.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// A delay for attempt `attempt`, uniform in `0..=ceiling(attempt)`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.ceiling(attempt).mul_f64(rand::random::<f64>())
    }

    /// Whether `attempts` failures in a row are more than allowed.
    pub fn exhausted(&self, attempts: u32) -> bool {
        self.max_attempts.is_some_and(|max| attempts >= max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_never_exceed_it() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(0), Duration::from_secs(1));
        assert_eq!(b.ceiling(3), Duration::from_secs(8));
        assert_eq!(b.ceiling(5), Duration::from_secs(30));
        assert_eq!(b.ceiling(100), Duration::from_secs(30));
        for attempt in 0..10 {
            assert!(b.delay(attempt) <= b.ceiling(attempt));
        }
        let spread: std::collections::BTreeSet<u128> = (0..50).map(|_| b.delay(4).as_millis()).collect();
        assert!(spread.len() > 10, "full jitter spreads the delays: {spread:?}");
    }

    #[test]
    fn attempts_are_bounded_only_when_asked() {
        assert!(!Backoff::default().exhausted(1_000));
        let b = Backoff { max_attempts: Some(3), ..Backoff::default() };
        assert!(!b.exhausted(2) && b.exhausted(3));
    }
}
