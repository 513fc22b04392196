//! Dead letters, counted the same way for every role so one DLQ-rate panel and alert covers
//! them all.

use std::fmt::Display;

use super::InternalEvent;
use crate::metrics::metrics;

/// Dead letters written: `dead_letters{stage,reason}`, and `dead_letters_cut{stage}` when the
/// original had to be cut to fit the dead-letter topic. The role that wrote them logs the
/// record's context (or emits [`WebhookBodyDeadLettered`]).
pub struct DeadLettered<'a> {
    /// The role.
    pub role: &'a str,
    /// The reason code (bounded: a fixed set per role).
    pub reason: &'a str,
    /// How many dead letters.
    pub count: u64,
    /// Whether their originals were cut.
    pub cut: bool,
}

impl InternalEvent for DeadLettered<'_> {
    fn emit(self) {
        let m = metrics();
        m.dead_letters
            .with_label_values(&[self.role, self.reason])
            .inc_by(self.count);
        if self.cut {
            m.dead_letters_cut
                .with_label_values(&[self.role])
                .inc_by(self.count);
        }
    }
}

/// A webhook body was refused and its events kept on the webhook's dead-letter topic:
/// [`DeadLettered`] and a warning naming the request.
pub struct WebhookBodyDeadLettered<'a> {
    /// The webhook role.
    pub role: &'a str,
    /// The request id answered to the sender.
    pub request_id: &'a str,
    /// The reason code.
    pub reason: &'a str,
    /// The error answered.
    pub error: &'a dyn Display,
    /// Dead letters written.
    pub kept: usize,
}

impl InternalEvent for WebhookBodyDeadLettered<'_> {
    fn emit(self) {
        DeadLettered {
            role: self.role,
            reason: self.reason,
            count: self.kept as u64,
            cut: false,
        }
        .emit();
        tracing::warn!(role = self.role, request_id = self.request_id, error = %self.error,
            dead_letters = self.kept, "body rejected and dead-lettered");
    }
}

/// A row polled from Pendo's API could not be used and is dead-lettered (once per row):
/// [`DeadLettered`] and a warning naming the row's source.
pub struct PendoRowDeadLettered<'a> {
    /// The poller role.
    pub role: &'a str,
    /// The report or endpoint the row came from.
    pub source: &'a str,
    /// The reason code.
    pub reason: &'a str,
    /// What was wrong (the caller bounds its length: it comes from the row).
    pub detail: &'a str,
}

impl InternalEvent for PendoRowDeadLettered<'_> {
    fn emit(self) {
        tracing::warn!(source = self.source, reason = self.reason,
            detail = %self.detail, "unusable Pendo row dead-lettered");
        DeadLettered {
            role: self.role,
            reason: self.reason,
            count: 1,
            cut: false,
        }
        .emit();
    }
}

/// A dead letter counted when it was decided had to be cut to fit its topic when it was
/// written: `dead_letters_cut{stage}`.
pub struct DeadLetterCut<'a> {
    /// The role.
    pub role: &'a str,
}

impl InternalEvent for DeadLetterCut<'_> {
    fn emit(self) {
        metrics()
            .dead_letters_cut
            .with_label_values(&[self.role])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internal_events::emit;

    #[test]
    fn dead_letters_count_by_reason_and_cut_ones_apart() {
        let m = metrics();
        let role = "ie-dlq-test";
        emit(DeadLettered {
            role,
            reason: "undecodable",
            count: 1,
            cut: true,
        });
        emit(WebhookBodyDeadLettered {
            role,
            request_id: "r1",
            reason: "invalid_json",
            error: &"not JSON",
            kept: 3,
        });
        emit(PendoRowDeadLettered {
            role,
            source: "visitors",
            reason: "missing_id",
            detail: "no visitorId",
        });
        emit(DeadLetterCut { role });
        let of = |reason: &str| m.dead_letters.with_label_values(&[role, reason]).get();
        assert_eq!(
            (of("undecodable"), of("invalid_json"), of("missing_id")),
            (1, 3, 1)
        );
        assert_eq!(m.dead_letters_cut.with_label_values(&[role]).get(), 2);
    }
}
