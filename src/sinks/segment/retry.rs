//! The retry policy as data: what an answer from Segment means (the backoff and `Retry-After`
//! handling it uses are the shared ones of [`crate::http`]).
//!
//! It follows the official clients (Node, Java, 2026): never retry 400; retry 408, 410, 429, 460,
//! 5xx except 501/505/511, network errors and timeouts, with jittered exponential backoff from
//! 0.5 s to 60 s; honour `Retry-After` up to 300 s. It differs where they may drop data and we
//! must not: the official clients drop a batch they cannot send, while this sink has Kafka
//! behind it, so an answer that no change of content can fix (bad write key, wrong endpoint,
//! a proxy) pauses the sink and alerts instead of dead-lettering the whole stream.

use crate::http::outcome::Outcome;

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
}
