//! A per-connection token bucket for client messages: `rate` per second,
//! bursts of twice that. Owned by one reader task, so no locking.

use std::time::Instant;

#[derive(Debug)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self { capacity: per_second * 2.0, per_second, tokens: per_second * 2.0, last: Instant::now() }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self) -> bool {
        self.take_at(Instant::now())
    }

    fn take_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_a_burst_of_twice_the_rate_then_refills() {
        let start = Instant::now();
        let mut bucket = TokenBucket { last: start, ..TokenBucket::new(10) };
        let passed = (0..30).filter(|_| bucket.take_at(start)).count();
        assert_eq!(passed, 20);
        assert!(bucket.take_at(start + Duration::from_millis(100)), "one token after 1/10 s");
        assert!(!bucket.take_at(start + Duration::from_millis(100)));
    }
}
