//! Retries of the two sinks: what each answer that is neither delivered nor refused for good
//! moves, and what the operator reads about it.

use std::fmt::Display;
use std::time::Duration;

use super::InternalEvent;
use crate::http::outcome::Outcome;
use crate::metrics::metrics;

/// One failed attempt of an HTTP request that will be sent again (both sinks).
pub struct FailedAttempt<'a> {
    /// What the attempt came to.
    pub outcome: Outcome,
    /// The peer's answer, described.
    pub answer: &'a dyn Display,
    /// The wait before the next attempt.
    pub retry_in: Duration,
    /// Whether the peer asked for the wait (`Retry-After`): every sender of the client pauses.
    pub peer_asked: bool,
}

/// A Segment request will be sent again: `segment_retries{reason}`, the backpressure gauge at
/// 1, a `Retry-After` pause counted in `segment_retry_after_pauses`; an error when only an
/// operator can fix it (write key, endpoint), a warning otherwise.
pub struct SegmentDeliveryRetried<'a> {
    /// The sink role.
    pub role: &'a str,
    /// The attempt.
    pub attempt: FailedAttempt<'a>,
}

impl InternalEvent for SegmentDeliveryRetried<'_> {
    fn emit(self) {
        let m = metrics();
        let a = self.attempt;
        m.segment_retries
            .with_label_values(&[a.outcome.as_str()])
            .inc();
        m.segment_sink_backpressure.set(1);
        let (role, retry_in_s) = (self.role, a.retry_in.as_secs_f64());
        if a.peer_asked {
            m.segment_retry_after_pauses.inc();
            tracing::warn!(
                role,
                seconds = retry_in_s,
                "Segment asked to retry later; the sink pauses"
            );
        } else if a.outcome.needs_operator() {
            tracing::error!(role, answer = %a.answer, retry_in_s,
                "Segment refuses the requests (write key, endpoint?); nothing is dropped, retrying");
        } else {
            tracing::warn!(role, answer = %a.answer, retry_in_s, "Segment delivery failed; retrying");
        }
    }
}

/// A Pendo write (metadata, or a Pendo Segment request) will be sent again:
/// `pendo_sink_retries{reason}`, the backpressure gauge at 1; an error naming the setting to
/// check when Pendo refuses the key or the endpoint, a warning otherwise.
pub struct PendoWriteRetried<'a> {
    /// The sink role.
    pub role: &'a str,
    /// Which request (`metadata`, or the Pendo Segment request).
    pub request: &'a str,
    /// The `reason` label: the outcome, or a finer reason the caller found.
    pub reason: &'a str,
    /// The attempt.
    pub attempt: FailedAttempt<'a>,
}

impl InternalEvent for PendoWriteRetried<'_> {
    fn emit(self) {
        let m = metrics();
        m.pendo_sink_retries.with_label_values(&[self.reason]).inc();
        m.pendo_sink_backpressure.set(1);
        let (role, request, a) = (self.role, self.request, self.attempt);
        let (answer, retry_in_s) = (a.answer, a.retry_in.as_secs_f64());
        match a.outcome {
            _ if a.peer_asked => {
                tracing::warn!(role, request, seconds = retry_in_s, answer = %answer,
                "Pendo asked to retry later; the sink pauses")
            }
            Outcome::AuthFailure => tracing::error!(role, request, answer = %answer, retry_in_s,
                "Pendo refuses the integration key: check pendo.integration_key (it needs write access) \
                 and pendo.region (a key works only in its own region); nothing is dropped, retrying"),
            Outcome::Misconfigured => tracing::error!(role, request, answer = %answer, retry_in_s,
                "Pendo's endpoint refuses the request: check pendo.region / pendo.base_url; nothing is dropped, retrying"),
            _ => {
                tracing::warn!(role, request, answer = %answer, retry_in_s, "Pendo write failed; retrying")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internal_events::emit;

    #[test]
    fn segment_retries_count_by_outcome_and_pauses_apart() {
        let m = metrics();
        let before = (
            m.segment_retries.with_label_values(&["auth_failure"]).get(),
            m.segment_retry_after_pauses.get(),
        );
        for (outcome, peer_asked) in [(Outcome::AuthFailure, false), (Outcome::Retry, true)] {
            emit(SegmentDeliveryRetried {
                role: "ie-sink-test",
                attempt: FailedAttempt {
                    outcome,
                    answer: &"401",
                    retry_in: Duration::from_millis(10),
                    peer_asked,
                },
            });
        }
        let after = (
            m.segment_retries.with_label_values(&["auth_failure"]).get(),
            m.segment_retry_after_pauses.get(),
        );
        assert!(after.0 > before.0 && after.1 > before.1);
    }

    #[test]
    fn pendo_retries_count_by_reason() {
        let retries = metrics()
            .pendo_sink_retries
            .with_label_values(&["ie_test_reason"]);
        for outcome in [Outcome::Misconfigured, Outcome::Retry] {
            emit(PendoWriteRetried {
                role: "ie-sink-test",
                request: "metadata",
                reason: "ie_test_reason",
                attempt: FailedAttempt {
                    outcome,
                    answer: &"404",
                    retry_in: Duration::from_millis(10),
                    peer_asked: false,
                },
            });
        }
        assert_eq!(retries.get(), 2);
    }
}
