//! Events of the webhooks' transactional appender (`crate::kafka::transactional_appender`):
//! jobs answered without a transaction, transactions and their outcomes, undecided commits.

use std::fmt::Display;
use std::time::Duration;

use super::InternalEvent;
use crate::metrics::metrics;

/// Jobs that ended without being written by a transaction of theirs:
/// `appender_jobs{stage,result}` (`held_undecided`, `already_committed`, `withdrawn`,
/// `expired`). The sender's answer says the rest, so there is no log line.
pub struct AppenderJobsEnded<'a> {
    /// The role.
    pub role: &'a str,
    /// How they ended.
    pub result: &'static str,
    /// How many.
    pub count: u64,
}

impl InternalEvent for AppenderJobsEnded<'_> {
    fn emit(self) {
        metrics()
            .appender_jobs
            .with_label_values(&[self.role, self.result])
            .inc_by(self.count);
    }
}

/// A commit was not answered in time; its jobs wait for the coordinator's decision before they
/// are answered: `appender_jobs{result="commit_undecided"}` and a warning.
pub struct CommitUndecided<'a> {
    /// The role.
    pub role: &'a str,
    /// The commit's error.
    pub error: &'a dyn Display,
    /// Jobs in the transaction.
    pub jobs: usize,
    /// How long the decision is waited for.
    pub wait: Duration,
}

impl InternalEvent for CommitUndecided<'_> {
    fn emit(self) {
        let role = self.role;
        metrics()
            .appender_jobs
            .with_label_values(&[role, "commit_undecided"])
            .inc_by(self.jobs as u64);
        tracing::warn!(role, error = %self.error, jobs = self.jobs, wait_ms = self.wait.as_millis() as u64,
            "commit not answered in time; waiting for the coordinator's decision before answering");
    }
}

/// Undecided transactions dropped from the memory before their outcome was learnt:
/// `undecided_transactions{result="expired"}` and an error (retries of their events may be
/// stored twice). Nothing is emitted for 0.
pub struct UndecidedTransactionsExpired<'a> {
    /// The role.
    pub role: &'a str,
    /// How many transactions.
    pub count: usize,
}

impl InternalEvent for UndecidedTransactionsExpired<'_> {
    fn emit(self) {
        if self.count == 0 {
            return;
        }
        let role = self.role;
        metrics()
            .undecided_transactions
            .with_label_values(&[role, "expired"])
            .inc_by(self.count as u64);
        tracing::error!(
            role,
            transactions = self.count,
            "outcome of undecided commits never learnt (Kafka unreachable for the whole \
             retention, or the memory is full): retries of their events are written and may be \
             stored twice"
        );
    }
}

/// The outcome of an undecided commit was read back from its partition:
/// `undecided_transactions{result="committed"|"aborted"}` and a warning with the position.
pub struct UndecidedOutcomeLearnt<'a> {
    /// The role.
    pub role: &'a str,
    /// Whether it committed.
    pub committed: bool,
    /// Topic of its first record.
    pub topic: &'a str,
    /// Partition of its first record.
    pub partition: i32,
    /// Offset of its first record.
    pub offset: i64,
}

impl InternalEvent for UndecidedOutcomeLearnt<'_> {
    fn emit(self) {
        let role = self.role;
        let outcome = if self.committed {
            "committed"
        } else {
            "aborted"
        };
        metrics()
            .undecided_transactions
            .with_label_values(&[role, outcome])
            .inc();
        tracing::warn!(role, outcome, topic = %self.topic, partition = self.partition,
            offset = self.offset, "outcome of an undecided commit learnt; retries of its events are answered by it");
    }
}

/// A transactional producer could not be created or initialised; it is retried:
/// `errors{kind="txn_init"}` and a warning.
pub struct TransactionsInitFailed<'a> {
    /// The role.
    pub role: &'a str,
    /// The error.
    pub error: &'a dyn Display,
    /// Undecided commits still waiting for this producer.
    pub undecided: usize,
}

impl InternalEvent for TransactionsInitFailed<'_> {
    fn emit(self) {
        let role = self.role;
        metrics()
            .errors
            .with_label_values(&[role, "txn_init"])
            .inc();
        tracing::warn!(role, error = %self.error, undecided = self.undecided,
            "cannot initialise transactions; retrying");
    }
}

/// An appender transaction ended: `transactions{stage,result}`; a committed one also records
/// its size (`transaction_records`), a failed one logs why (an error when Kafka did not decide).
pub enum AppenderTransactionEnded<'a> {
    /// Committed, with this many records.
    Committed {
        /// The role.
        role: &'a str,
        /// Records in it.
        records: usize,
    },
    /// Not committed: aborted (`unknown: false`) or undecided past the wait (`unknown: true`).
    Failed {
        /// The role.
        role: &'a str,
        /// Why.
        reason: &'a str,
        /// Whether Kafka did not decide it.
        unknown: bool,
        /// Jobs answered 503.
        jobs: usize,
    },
}

impl InternalEvent for AppenderTransactionEnded<'_> {
    fn emit(self) {
        let m = metrics();
        match self {
            AppenderTransactionEnded::Committed { role, records } => {
                m.transactions.with_label_values(&[role, "committed"]).inc();
                m.transaction_records
                    .with_label_values(&[role])
                    .observe(records as f64);
            }
            AppenderTransactionEnded::Failed {
                role,
                reason,
                unknown: true,
                jobs,
            } => {
                m.transactions.with_label_values(&[role, "unknown"]).inc();
                tracing::error!(role, error = %reason, jobs,
                    "Kafka did not decide the commit in time: answering 503, so the senders \
                     resend; if the coordinator committed it after all, those events are stored twice");
            }
            AppenderTransactionEnded::Failed {
                role, reason, jobs, ..
            } => {
                m.transactions.with_label_values(&[role, "aborted"]).inc();
                tracing::warn!(role, error = %reason, jobs, "transaction failed; aborting");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internal_events::emit;

    #[test]
    fn transactions_count_by_outcome_and_committed_ones_by_size() {
        let m = metrics();
        let role = "ie-appender-test";
        let of = |result: &str| m.transactions.with_label_values(&[role, result]).get();
        emit(AppenderTransactionEnded::Committed { role, records: 7 });
        for unknown in [true, false, false] {
            emit(AppenderTransactionEnded::Failed {
                role,
                reason: "broker gone",
                unknown,
                jobs: 2,
            });
        }
        assert_eq!((of("committed"), of("unknown"), of("aborted")), (1, 1, 2));
        let sizes = m.transaction_records.with_label_values(&[role]);
        assert_eq!((sizes.get_sample_count(), sizes.get_sample_sum()), (1, 7.0));
    }

    #[test]
    fn undecided_commits_count_their_jobs_and_outcomes() {
        let m = metrics();
        let role = "ie-undecided-test";
        emit(CommitUndecided {
            role,
            error: &"timed out",
            jobs: 5,
            wait: Duration::from_secs(1),
        });
        emit(AppenderJobsEnded {
            role,
            result: "withdrawn",
            count: 1,
        });
        emit(UndecidedTransactionsExpired { role, count: 0 });
        emit(UndecidedTransactionsExpired { role, count: 2 });
        for committed in [true, false] {
            emit(UndecidedOutcomeLearnt {
                role,
                committed,
                topic: "t",
                partition: 0,
                offset: 1,
            });
        }
        emit(TransactionsInitFailed {
            role,
            error: &"no coordinator",
            undecided: 1,
        });
        let jobs = |r: &str| m.appender_jobs.with_label_values(&[role, r]).get();
        let undecided = |r: &str| m.undecided_transactions.with_label_values(&[role, r]).get();
        assert_eq!((jobs("commit_undecided"), jobs("withdrawn")), (5, 1));
        assert_eq!(
            (
                undecided("expired"),
                undecided("committed"),
                undecided("aborted")
            ),
            (2, 1, 1)
        );
        assert_eq!(m.errors.with_label_values(&[role, "txn_init"]).get(), 1);
    }
}
