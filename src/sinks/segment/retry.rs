//! The retry policy as data: what an answer from Segment means, how long to wait before trying
//! again, and how to read `Retry-After`.
//!
//! It follows the official clients (Node, Java, 2026): never retry 400; retry 408, 410, 429, 460,
//! 5xx except 501/505/511, network errors and timeouts, with jittered exponential backoff from
//! 0.5 s to 60 s; honour `Retry-After` up to 300 s. It differs where they may drop data and we
//! must not: the official clients drop a batch they cannot send, while this sink has Kafka
//! behind it, so an answer that no change of content can fix (bad write key, wrong endpoint,
//! a proxy) pauses the sink and alerts instead of dead-lettering the whole stream.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What to do after one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: the events are delivered; acknowledge them.
    Success,
    /// Transient (408, 410, 429, 460, 5xx other than 501/505/511, network error or timeout):
    /// send the same events again after a backoff or `Retry-After`.
    Retry,
    /// 400 or 413: Segment refuses the content. Split the batch to isolate the offending events,
    /// dead-letter those with Segment's message, deliver the rest. Never retried as is.
    Invalid,
    /// 401 or 403: the write key is wrong or revoked. Never acknowledge, drop or dead-letter:
    /// pause, alert, and retry with backoff until someone fixes the key.
    AuthFailure,
    /// An answer no content could change: redirects (not followed), other 4xx (404 wrong
    /// endpoint, 405, 415...), 501, 505, 511 (the official clients never retry these). Handled
    /// like [`Outcome::AuthFailure`] — pause, alert, retry with backoff — because dead-lettering
    /// would empty the whole stream into the DLQ while the endpoint is misconfigured.
    Misconfigured,
}

impl Outcome {
    /// A bounded metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Retry => "retry",
            Outcome::Invalid => "invalid",
            Outcome::AuthFailure => "auth_failure",
            Outcome::Misconfigured => "misconfigured",
        }
    }

    /// Whether the same request is to be sent again later (after backoff, with a fresh `sentAt`).
    pub fn sends_again(self) -> bool {
        matches!(
            self,
            Outcome::Retry | Outcome::AuthFailure | Outcome::Misconfigured
        )
    }

    /// Whether the sink should raise an alert and pause until an operator acts.
    pub fn needs_operator(self) -> bool {
        matches!(self, Outcome::AuthFailure | Outcome::Misconfigured)
    }
}

/// Classifies an HTTP status; `None` is a network error or timeout (no answer).
pub fn classify(status: Option<u16>) -> Outcome {
    match status {
        None => Outcome::Retry,
        Some(200..=299) => Outcome::Success,
        Some(400 | 413) => Outcome::Invalid,
        Some(401 | 403) => Outcome::AuthFailure,
        Some(408 | 410 | 429 | 460) => Outcome::Retry,
        Some(501 | 505 | 511) => Outcome::Misconfigured,
        Some(500..=599) => Outcome::Retry,
        Some(_) => Outcome::Misconfigured,
    }
}

/// Default and usual cap of a `Retry-After` pause.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(300);

/// Reads a `Retry-After` value: delta-seconds, or an HTTP-date (IMF-fixdate, e.g.
/// `Sun, 06 Nov 1994 08:49:37 GMT`) relative to now. Capped at `cap`; `None` when unreadable
/// (the caller falls back to its backoff).
pub fn parse_retry_after(value: &str, cap: Duration) -> Option<Duration> {
    parse_retry_after_at(value, SystemTime::now(), cap)
}

/// [`parse_retry_after`] with an explicit current time.
pub fn parse_retry_after_at(value: &str, now: SystemTime, cap: Duration) -> Option<Duration> {
    let value = value.trim();
    let wait = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for a u64 is still "a very long time".
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = parse_imf_fixdate(value)?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(cap))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` -> the time (the obsolete HTTP date formats are not read).
fn parse_imf_fixdate(value: &str) -> Option<SystemTime> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let parts: Vec<&str> = value.split_ascii_whitespace().collect();
    let [weekday, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    if !weekday.ends_with(',') || day.len() != 2 || year.len() != 4 || time.len() != 8 {
        return None;
    }
    let month = MONTHS.iter().position(|m| m == month)? + 1;
    let rfc3339 = format!("{year}-{month:02}-{day}T{time}Z");
    let t = humantime::parse_rfc3339(&rfc3339).ok()?;
    (t >= UNIX_EPOCH).then_some(t)
}

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

    /// The backoff of `config`, seeded from the clock (instances must not retry in step).
    pub fn from_config(config: &super::SegmentSinkConfig) -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        Self::new(
            Duration::from_millis(config.backoff_initial_ms),
            Duration::from_millis(config.backoff_max_ms),
            seed,
        )
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
    fn statuses_follow_the_official_clients_policy() {
        use Outcome::*;
        let cases = [
            (None, Retry),
            (Some(200), Success),
            (Some(204), Success),
            (Some(400), Invalid),
            (Some(413), Invalid),
            (Some(401), AuthFailure),
            (Some(403), AuthFailure),
            (Some(408), Retry),
            (Some(410), Retry),
            (Some(429), Retry),
            (Some(460), Retry),
            (Some(500), Retry),
            (Some(502), Retry),
            (Some(503), Retry),
            (Some(504), Retry),
            (Some(599), Retry),
            (Some(501), Misconfigured),
            (Some(505), Misconfigured),
            (Some(511), Misconfigured),
            (Some(404), Misconfigured),
            (Some(415), Misconfigured),
            (Some(302), Misconfigured),
            (Some(100), Misconfigured),
        ];
        for (status, outcome) in cases {
            assert_eq!(classify(status), outcome, "{status:?}");
        }
        assert!(!Invalid.sends_again() && !Success.sends_again());
        assert!(Retry.sends_again() && AuthFailure.sends_again() && Misconfigured.sends_again());
        assert!(AuthFailure.needs_operator() && !Retry.needs_operator());
        assert_eq!(AuthFailure.as_str(), "auth_failure");
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_capped() {
        let cap = RETRY_AFTER_CAP;
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        let p = |v: &str| parse_retry_after_at(v, now, cap);
        assert_eq!(p("7"), Some(Duration::from_secs(7)));
        assert_eq!(p(" 0 "), Some(Duration::ZERO));
        assert_eq!(p("301"), Some(cap));
        assert_eq!(p("99999999999999999999999"), Some(cap));
        assert_eq!(
            parse_retry_after_at("20", now, Duration::from_secs(10)),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            p("Sun, 06 Nov 1994 08:50:37 GMT"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(p("Sun, 06 Nov 1994 08:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(p("Mon, 07 Nov 1994 08:49:37 GMT"), Some(cap));
        for bad in [
            "",
            "-1",
            "1.5",
            "soon",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun 06 Foo 1994 08:49:37 GMT",
        ] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
        assert_eq!(
            parse_retry_after("3", cap),
            Some(Duration::from_secs(3)),
            "relative to the real clock"
        );
    }

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
        let cfg = crate::sinks::segment::SegmentSinkConfig::default();
        assert_eq!(Backoff::from_config(&cfg).ceiling(), initial_of(&cfg));

        fn initial_of(c: &crate::sinks::segment::SegmentSinkConfig) -> Duration {
            Duration::from_millis(c.backoff_initial_ms)
        }
    }
}
