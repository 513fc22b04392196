//! Jittered exponential backoff between attempts of a request (every HTTP client of the
//! pipeline: the sinks, the poller).

use std::time::Duration;

/// Jittered exponential backoff: attempt `n` waits between half and all of
/// `min(max, initial * 2^n)` ("equal jitter": spreads retries of many instances apart while
/// keeping a floor, so a retry never comes right after a failure).
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    rng: XorShift64,
}

impl Backoff {
    /// A backoff from `initial` doubling up to `max`; `seed` makes the jitter reproducible.
    pub fn new(initial: Duration, max: Duration, seed: u64) -> Self {
        Self {
            initial,
            max: max.max(initial),
            attempt: 0,
            rng: XorShift64::new(seed),
        }
    }

    /// The un-jittered delay of the next attempt: `min(max, initial * 2^attempts)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay before the next attempt (advances the attempt count).
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let spread = (ceiling - half).as_nanos() as u64;
        let jitter = if spread == 0 {
            0
        } else {
            self.rng.next_u64() % (spread + 1)
        };
        half + Duration::from_nanos(jitter)
    }

    /// Attempts since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// xorshift64*: tiny and deterministic; jitter needs spread, not cryptographic randomness.
#[derive(Debug, Clone)]
struct XorShift64(u64);

impl XorShift64 {
    fn new(seed: u64) -> Self {
        let s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
        Self(if s == 0 { 0x2545_F491_4F6C_DD1D } else { s })
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_initial_to_max_with_equal_jitter() {
        let initial = Duration::from_millis(500);
        let max = Duration::from_secs(60);
        let mut b = Backoff::new(initial, max, 42);
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            let ceiling = b.ceiling();
            let d = b.next_delay();
            assert!(d >= ceiling / 2 && d <= ceiling, "{d:?} vs {ceiling:?}");
            ceilings.push(ceiling.as_millis());
        }
        assert_eq!(
            ceilings,
            [
                500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000, 60000, 60000
            ]
        );
        assert_eq!(b.attempts(), 12);
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), max, "no overflow after many attempts");
        b.reset();
        assert_eq!(b.ceiling(), initial);
    }

    #[test]
    fn jitter_spreads_and_is_reproducible() {
        let delays = |seed| {
            let mut b = Backoff::new(Duration::from_secs(8), Duration::from_secs(8), seed);
            (0..50).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(delays(7), delays(7));
        assert_ne!(delays(7), delays(8));
        let d = delays(7);
        let distinct: std::collections::HashSet<_> = d.iter().collect();
        assert!(distinct.len() > 40, "jitter spreads delays");
    }
}
