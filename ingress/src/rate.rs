//! The per-connection request rate limit: a token bucket refilled continuously, holding at most
//! one second's worth of requests. Pure: time is passed in.

use std::time::Instant;

/// A token bucket of `rate` requests per second with a burst of `rate`.
#[derive(Debug)]
pub struct RequestRate {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl RequestRate {
    pub fn new(per_sec: u32, now: Instant) -> RequestRate {
        let rate = f64::from(per_sec.max(1));
        RequestRate { rate, tokens: rate, last: now }
    }

    /// Takes one request's token; false when the connection is over its rate.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
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
    use std::time::Duration;

    use super::*;

    #[test]
    fn allows_a_burst_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut rate = RequestRate::new(10, t0);
        assert_eq!((0..15).filter(|_| rate.try_take(t0)).count(), 10);
        assert!(!rate.try_take(t0 + Duration::from_millis(50)));
        assert!(rate.try_take(t0 + Duration::from_millis(100)));
        assert!(!rate.try_take(t0 + Duration::from_millis(100)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..15).filter(|_| rate.try_take(later)).count(), 10);
    }
}
