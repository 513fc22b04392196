//! Token buckets that keep a client under its destination's rate limit (Segment's workspace
//! limit of about 1,000 requests or events per second, the poller's `requests_per_s`) before the
//! destination has to answer 429.
//!
//! A caller reserves its tokens at once and then sleeps off any deficit, so the bucket can go
//! into debt: concurrent callers queue behind each other in reservation order, and a request
//! larger than the burst is still allowed (it just waits longer). A reservation whose wait is
//! cancelled is not refunded; the rate only errs on the slow side.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// One token bucket: `rate` tokens per second, at most `capacity` saved up.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    /// May be negative: tokens already promised to waiting callers.
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate_per_s` tokens per second with one second's worth of burst, starting full.
    pub fn new(rate_per_s: u32) -> Self {
        Self::with_capacity(rate_per_s, rate_per_s)
    }

    /// `rate_per_s` tokens per second, at most `capacity` saved up, starting full.
    pub fn with_capacity(rate_per_s: u32, capacity: u32) -> Self {
        let capacity = f64::from(capacity.max(1));
        Self {
            rate: f64::from(rate_per_s.max(1)),
            capacity,
            state: Mutex::new(BucketState {
                tokens: capacity,
                last: Instant::now(),
            }),
        }
    }

    /// Takes `n` tokens at `now` and returns how long the caller must wait before using them.
    fn reserve_at(&self, n: u64, now: Instant) -> Duration {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(s.last).as_secs_f64();
        s.last = s.last.max(now);
        s.tokens = (s.tokens + elapsed * self.rate).min(self.capacity);
        s.tokens -= n as f64;
        if s.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-s.tokens / self.rate)
        }
    }

    /// Waits until `n` tokens are available, and takes them.
    pub async fn acquire(&self, n: u64) {
        let wait = self.reserve_at(n, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// A client's limits: events per second and requests per second, each optional.
#[derive(Debug, Default)]
pub struct RateLimiter {
    events: Option<TokenBucket>,
    requests: Option<TokenBucket>,
}

impl RateLimiter {
    /// Limits of `events_per_s` and `requests_per_s`; `None` is unlimited.
    pub fn new(events_per_s: Option<u32>, requests_per_s: Option<u32>) -> Self {
        Self {
            events: events_per_s.map(TokenBucket::new),
            requests: requests_per_s.map(TokenBucket::new),
        }
    }

    /// Whether no limit is configured (nothing ever waits).
    pub fn is_unlimited(&self) -> bool {
        self.events.is_none() && self.requests.is_none()
    }

    /// Waits until one request carrying `events` events may be sent.
    pub async fn acquire(&self, events: usize) {
        if let Some(b) = &self.requests {
            b.acquire(1).await;
        }
        if let Some(b) = &self.events {
            b.acquire(events as u64).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_follow_the_rate_and_the_burst() {
        // Whole milliseconds: the arithmetic is in f64.
        let ms = |d: Duration| (d.as_secs_f64() * 1000.0).round() as u64;
        let b = TokenBucket::with_capacity(100, 50);
        let t0 = Instant::now();
        assert_eq!(ms(b.reserve_at(50, t0)), ms(Duration::ZERO), "starts full");
        assert_eq!(ms(b.reserve_at(10, t0)), ms(Duration::from_millis(100)));
        // In debt by 10: after 100 ms the debt is paid, 20 more need 200 ms.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(ms(b.reserve_at(20, t1)), ms(Duration::from_millis(200)));
        // A long idle period refills only up to the capacity.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(ms(b.reserve_at(50, t2)), ms(Duration::ZERO));
        assert_eq!(ms(b.reserve_at(1, t2)), ms(Duration::from_millis(10)));
        // Larger than the burst: allowed, with a proportional wait.
        let t3 = t2 + Duration::from_secs(60);
        assert_eq!(ms(b.reserve_at(250, t3)), ms(Duration::from_secs(2)));
        // A clock read before the last one is treated as "no time passed".
        assert_eq!(
            ms(b.reserve_at(0, t3 - Duration::from_secs(1))),
            ms(Duration::from_secs(2))
        );
    }

    #[tokio::test]
    async fn acquire_waits_for_the_tokens_in_real_time() {
        let b = TokenBucket::new(1_000);
        let start = std::time::Instant::now();
        b.acquire(1_000).await;
        assert!(
            start.elapsed() < Duration::from_millis(50),
            "the burst is free"
        );
        b.acquire(150).await;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(140) && took < Duration::from_millis(1_000),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn the_limiter_applies_both_limits_and_none_means_unlimited() {
        let free = RateLimiter::new(None, None);
        assert!(free.is_unlimited());
        let start = std::time::Instant::now();
        for _ in 0..1_000 {
            free.acquire(10_000).await;
        }
        assert!(start.elapsed() < Duration::from_millis(100));

        let requests = RateLimiter::new(None, Some(20));
        let start = std::time::Instant::now();
        for _ in 0..23 {
            requests.acquire(1).await;
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(140),
            "3 over the burst at 20/s: {took:?}"
        );

        let events = RateLimiter::new(Some(1_000), None);
        assert!(!events.is_unlimited());
        let start = std::time::Instant::now();
        events.acquire(1_100).await;
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(90), "{took:?}");
    }
}
