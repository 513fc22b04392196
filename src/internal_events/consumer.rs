//! Events of the shared consume-process-commit loop (`crate::kafka::consumer_loop`): commit
//! points, discarded transactions, consumer errors and a stopped loop.

use std::fmt::Display;
use std::time::Duration;

use super::InternalEvent;
use crate::metrics::metrics;

/// How a commit point ended, as counted in `commits{stage,result}`.
pub enum CommitResult<'a> {
    /// Offsets (and the transaction, if any) committed: `result="ok"`.
    Committed,
    /// A consumer-group offset commit refused; the loop keeps its offsets and tries again at
    /// the next commit point: `result="error"`, and a warning.
    OffsetsRefused(&'a dyn Display),
    /// A transaction that did not commit; what happens to it is its own event
    /// ([`TransactionDiscarded`], [`TransactionOutcomeUnknown`]) or the loop stops. Only the
    /// duration is recorded.
    NotCommitted,
}

/// A commit point ended after `elapsed`: `commit_duration_seconds{stage}` and the result.
pub struct CommitFinished<'a> {
    /// The role (`stage` label).
    pub role: &'a str,
    /// From the start of the commit to its answer.
    pub elapsed: Duration,
    /// How it ended.
    pub result: CommitResult<'a>,
}

impl InternalEvent for CommitFinished<'_> {
    fn emit(self) {
        let m = metrics();
        let role = self.role;
        m.commit_duration
            .with_label_values(&[role])
            .observe(self.elapsed.as_secs_f64());
        match self.result {
            CommitResult::Committed => m.commits.with_label_values(&[role, "ok"]).inc(),
            CommitResult::OffsetsRefused(error) => {
                m.commits.with_label_values(&[role, "error"]).inc();
                tracing::warn!(role, error = %error, "offset commit failed; will retry");
            }
            CommitResult::NotCommitted => {}
        }
    }
}

/// Why an open transaction's work was thrown away.
pub enum DiscardCause<'a> {
    /// The broker aborted it (an abortable error), with the reason.
    Aborted(&'a str),
    /// A rebalance revoked partitions it held records of.
    Rebalance,
    /// Its outcome was unknown and a new producer settled it ([`TransactionOutcomeUnknown`]
    /// already said so).
    Settled,
}

/// A transaction's output and offsets were discarded and its input is re-read from the last
/// commit: `commits{result="aborted"}` and the cause in the log.
pub struct TransactionDiscarded<'a> {
    /// The role.
    pub role: &'a str,
    /// Why.
    pub cause: DiscardCause<'a>,
}

impl InternalEvent for TransactionDiscarded<'_> {
    fn emit(self) {
        let role = self.role;
        match self.cause {
            DiscardCause::Aborted(reason) => tracing::warn!(
                role,
                error = %reason,
                "transaction aborted; re-reading from the last commit"
            ),
            DiscardCause::Rebalance => {
                tracing::info!(role, "open transaction aborted after a rebalance")
            }
            DiscardCause::Settled => {}
        }
        metrics()
            .commits
            .with_label_values(&[role, "aborted"])
            .inc();
    }
}

/// A transactional call did not return in time (a broker failover, typically): the producer is
/// replaced, which settles the transaction. `commits{result="stuck"}` and a warning.
pub struct TransactionOutcomeUnknown<'a> {
    /// The role.
    pub role: &'a str,
    /// What did not answer.
    pub reason: &'a str,
}

impl InternalEvent for TransactionOutcomeUnknown<'_> {
    fn emit(self) {
        let role = self.role;
        tracing::warn!(
            role,
            error = %self.reason,
            "transaction outcome unknown (broker failover?); replacing the transactional producer \
             and re-reading from the last commit"
        );
        metrics().commits.with_label_values(&[role, "stuck"]).inc();
    }
}

/// The consumer reported an error: `errors{kind="consume"}` (librdkafka retries it; warned) or
/// `errors{kind="consume_fatal"}` (the loop stops; [`ConsumerLoopStopped`] logs it).
pub struct ConsumeFailed<'a> {
    /// The role.
    pub role: &'a str,
    /// The consumer's error.
    pub error: &'a dyn Display,
    /// Whether librdkafka declared it fatal.
    pub fatal: bool,
}

impl InternalEvent for ConsumeFailed<'_> {
    fn emit(self) {
        let role = self.role;
        let kind = if self.fatal {
            "consume_fatal"
        } else {
            "consume"
        };
        metrics().errors.with_label_values(&[role, kind]).inc();
        if !self.fatal {
            tracing::warn!(role, error = %self.error, "consumer error (retrying)");
        }
    }
}

/// The loop stopped on an error; uncommitted work is re-read after the restart.
/// `errors{kind}` and an error log.
pub struct ConsumerLoopStopped<'a> {
    /// The role.
    pub role: &'a str,
    /// The error's kind (`kafka`, or the processor's error kind).
    pub kind: &'a str,
    /// The error.
    pub error: &'a dyn Display,
}

impl InternalEvent for ConsumerLoopStopped<'_> {
    fn emit(self) {
        let role = self.role;
        metrics().errors.with_label_values(&[role, self.kind]).inc();
        tracing::error!(role, error = %self.error, "consumer loop stopped; uncommitted work will be re-read after restart");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internal_events::emit;

    #[test]
    fn a_commit_point_moves_its_result_and_its_duration() {
        let m = metrics();
        let role = "ie-commit-test";
        let ok = m.commits.with_label_values(&[role, "ok"]);
        let error = m.commits.with_label_values(&[role, "error"]);
        let timed = m.commit_duration.with_label_values(&[role]);
        emit(CommitFinished {
            role,
            elapsed: Duration::from_millis(3),
            result: CommitResult::Committed,
        });
        emit(CommitFinished {
            role,
            elapsed: Duration::from_millis(3),
            result: CommitResult::OffsetsRefused(&"coordinator moved"),
        });
        emit(CommitFinished {
            role,
            elapsed: Duration::from_millis(3),
            result: CommitResult::NotCommitted,
        });
        assert_eq!((ok.get(), error.get()), (1, 1));
        assert_eq!(timed.get_sample_count(), 3);
    }

    #[test]
    fn discarded_and_stuck_transactions_count_apart() {
        let m = metrics();
        let role = "ie-discard-test";
        let aborted = m.commits.with_label_values(&[role, "aborted"]);
        let stuck = m.commits.with_label_values(&[role, "stuck"]);
        emit(TransactionOutcomeUnknown {
            role,
            reason: "timed out",
        });
        for cause in [
            DiscardCause::Settled,
            DiscardCause::Aborted("fenced"),
            DiscardCause::Rebalance,
        ] {
            emit(TransactionDiscarded { role, cause });
        }
        assert_eq!((aborted.get(), stuck.get()), (3, 1));
    }

    #[test]
    fn consumer_errors_are_counted_by_kind() {
        let m = metrics();
        let role = "ie-consume-test";
        emit(ConsumeFailed {
            role,
            error: &"broker down",
            fatal: false,
        });
        emit(ConsumeFailed {
            role,
            error: &"fatal",
            fatal: true,
        });
        emit(ConsumerLoopStopped {
            role,
            kind: "kafka",
            error: &"fatal",
        });
        let of = |kind: &str| m.errors.with_label_values(&[role, kind]).get();
        assert_eq!((of("consume"), of("consume_fatal"), of("kafka")), (1, 1, 1));
    }
}
