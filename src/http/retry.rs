//! The retry loop of every HTTP caller (both sinks, the poller), written once: attempts are
//! spaced by a jittered [`Backoff`], and a peer's `Retry-After` replaces the backoff. Where one
//! peer serves several senders (a sink's concurrent deliveries), the `Retry-After` pauses them
//! all through a shared [`PauseGate`], so a rate-limited API sees no request until the time it
//! named. What an answer means (done, refused, worth another attempt) stays with each caller.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::backoff::Backoff;
use super::rate_limit::RateLimiter;

/// A pause shared by every sender of one client: set by a peer's `Retry-After`, waited out
/// before each attempt. A later pause never shortens an earlier one.
#[derive(Debug, Default)]
pub struct PauseGate {
    until: Mutex<Option<Instant>>,
}

impl PauseGate {
    /// Returns once no pause is in force (at once when there is none).
    pub async fn wait(&self) {
        loop {
            let until = *self.until.lock().expect("pause lock");
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t.into()).await,
                _ => return,
            }
        }
    }

    /// Pauses every sender for `d` from now, unless a longer pause is in force.
    pub fn pause_for(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut p = self.until.lock().expect("pause lock");
        if p.is_none_or(|t| t < until) {
            *p = Some(until);
        }
    }
}

/// The backoff bounds of one client's retries (from its configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first backoff delay.
    pub initial: Duration,
    /// The longest backoff delay.
    pub max: Duration,
}

impl RetryPolicy {
    /// The attempts of one request, paused by `gate` when given. The jitter is seeded from the
    /// clock, so concurrent requests spread apart.
    pub fn start<'a>(&self, gate: Option<&'a PauseGate>) -> Retry<'a> {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Retry {
            backoff: Backoff::new(self.initial, self.max, seed),
            gate,
            rate_limit: None,
            attempts: 0,
        }
    }
}

/// How one client paces its requests, shared by all of them: its rate limit, the pause its
/// peer's `Retry-After` puts on every request, and the backoff between attempts.
#[derive(Debug)]
pub struct Pacing {
    /// Client-side rate limit.
    pub rate_limit: RateLimiter,
    /// The pause of every request (the peer's `Retry-After`).
    pub pause: PauseGate,
    /// Backoff bounds between attempts.
    pub retry: RetryPolicy,
}

impl Pacing {
    /// Pacing under `rate_limit` with backoff within `retry`, not paused.
    pub fn new(rate_limit: RateLimiter, retry: RetryPolicy) -> Self {
        Self {
            rate_limit,
            pause: PauseGate::default(),
            retry,
        }
    }

    /// The attempts of one request (see [`Retry::attempt_of`]).
    pub fn start(&self) -> Retry<'_> {
        let mut retry = self.retry.start(Some(&self.pause));
        retry.rate_limit = Some(&self.rate_limit);
        retry
    }
}

/// The attempts of one request: call [`attempt`](Self::attempt) before each one and
/// [`after_failure`](Self::after_failure) after each one that is to be tried again.
#[derive(Debug)]
pub struct Retry<'a> {
    backoff: Backoff,
    gate: Option<&'a PauseGate>,
    rate_limit: Option<&'a RateLimiter>,
    attempts: u32,
}

impl Retry<'_> {
    /// Waits out the gate's pause, if any; returns the number of this attempt (from 1).
    pub async fn attempt(&mut self) -> u32 {
        if let Some(gate) = self.gate {
            gate.wait().await;
        }
        self.attempts += 1;
        self.attempts
    }

    /// After a success within a longer exchange: the next failure starts from the first
    /// backoff delay again.
    pub fn succeeded(&mut self) {
        self.backoff.reset();
    }

    /// [`attempt`](Self::attempt) of a request carrying `cost` events, first taking them (and
    /// the request) from the rate limit when there is one.
    pub async fn attempt_of(&mut self, cost: usize) -> u32 {
        if let Some(limit) = self.rate_limit {
            limit.acquire(cost).await;
        }
        self.attempt().await
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The wait before the next attempt: the peer's `retry_after` when it named one (a pause
    /// of the gate, when there is one; the backoff does not advance), else the next backoff
    /// delay. Log it, then [`Wait::elapse`] it.
    pub fn after_failure(&mut self, retry_after: Option<Duration>) -> Wait {
        match retry_after {
            Some(delay) => {
                if let Some(gate) = self.gate {
                    gate.pause_for(delay);
                }
                Wait {
                    delay,
                    peer_asked: true,
                    gated: self.gate.is_some(),
                }
            }
            None => Wait {
                delay: self.backoff.next_delay(),
                peer_asked: false,
                gated: false,
            },
        }
    }
}

/// The wait before the next attempt (see [`Retry::after_failure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a wait does nothing unless elapsed"]
pub struct Wait {
    /// How long.
    pub delay: Duration,
    /// Whether the peer named it (`Retry-After`) rather than the backoff.
    pub peer_asked: bool,
    gated: bool,
}

impl Wait {
    /// Sleeps it; a pause held by the gate is waited out by the next [`Retry::attempt`]
    /// instead, together with every other sender.
    pub async fn elapse(self) {
        if !self.gated {
            tokio::time::sleep(self.delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        initial: Duration::from_millis(8),
        max: Duration::from_millis(32),
    };

    #[tokio::test]
    async fn retry_after_pauses_every_sender_of_the_gate_and_keeps_the_backoff() {
        let gate = PauseGate::default();
        let mut first = POLICY.start(Some(&gate));
        let mut second = POLICY.start(Some(&gate));
        assert_eq!(first.attempt().await, 1);
        let wait = first.after_failure(Some(Duration::from_millis(400)));
        assert!(wait.peer_asked);
        assert_eq!(wait.delay, Duration::from_millis(400));
        let started = Instant::now();
        wait.elapse().await;
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "the gate holds it, not the sleep"
        );
        // Another sender of the same gate waits too; a shorter pause does not cut it.
        gate.pause_for(Duration::from_millis(10));
        assert_eq!(second.attempt().await, 1);
        assert!(started.elapsed() >= Duration::from_millis(390));
        assert_eq!(first.attempt().await, 2);
        // The backoff did not advance: the first backoff delay is within [initial/2, initial].
        let wait = first.after_failure(None);
        assert!(!wait.peer_asked);
        assert!(wait.delay >= POLICY.initial / 2 && wait.delay <= POLICY.initial);
    }

    #[tokio::test]
    async fn without_a_gate_each_wait_is_slept_and_the_backoff_doubles_to_its_cap() {
        let mut retry = POLICY.start(None);
        let mut delays = Vec::new();
        for _ in 0..4 {
            retry.attempt().await;
            let wait = retry.after_failure(None);
            let started = Instant::now();
            wait.elapse().await;
            assert!(started.elapsed() >= wait.delay);
            delays.push(wait.delay);
        }
        assert_eq!(retry.attempts(), 4);
        for (d, ceiling) in delays.iter().zip([8, 16, 32, 32]) {
            let ceiling = Duration::from_millis(ceiling);
            assert!(*d >= ceiling / 2 && *d <= ceiling, "{d:?} vs {ceiling:?}");
        }
        retry.succeeded();
        assert!(retry.after_failure(None).delay <= POLICY.initial);
        let wait = retry.after_failure(Some(Duration::from_millis(70)));
        let started = Instant::now();
        wait.elapse().await;
        assert!(started.elapsed() >= Duration::from_millis(70));
    }
}
