//! Internal events: each thing that can happen inside a role, as a type that emits its metric
//! and its log line together (in the spirit of Vector's `internal_events`).
//!
//! A call site says *what* happened (`emit(OffsetCommitFailed { role, .. })`); the event decides
//! which counters move, with which labels, and what is logged at which level. So a metric's
//! label order lives in one place, and an operator who sees a counter move finds the log line
//! that explains it under the same event. Hot-path counters that are resolved once per role
//! (the webhook's per-request handles, the consumer loop's per-record counts) stay as cached
//! handles; this module holds the events that carry a reason, an outcome or a log line.
//!
//! Neutral like [`crate::metrics`]: it imports no role (only `metrics` and `http`'s `Outcome`),
//! and every role may use it.

mod appender;
mod consumer;
mod dead_letter;
mod rebalance;
mod role;
mod sink;
mod webhook;

pub use appender::{
    AppenderJobsEnded, AppenderTransactionEnded, CommitUndecided, TransactionsInitFailed,
    UndecidedOutcomeLearnt, UndecidedTransactionsExpired,
};
pub use consumer::{
    CommitFinished, CommitResult, ConsumeFailed, ConsumerLoopStopped, DiscardCause,
    TransactionDiscarded, TransactionOutcomeUnknown,
};
pub use dead_letter::{DeadLetterCut, DeadLettered, PendoRowDeadLettered, WebhookBodyDeadLettered};
pub use rebalance::{PartitionsRebalanced, RebalanceKind};
pub use role::{RoleEnded, RoleRestartScheduled, RoleStarted};
pub use sink::{FailedAttempt, PendoWriteRetried, SegmentDeliveryRetried};
pub use webhook::{WebhookRequest, WebhookRequestEvent};

/// Something that happened, emitted once: its metrics and its log line.
pub trait InternalEvent {
    /// Moves the event's metrics and writes its log line, if it has one.
    fn emit(self);
}

/// Emits `event` (reads like Vector's `emit!`).
pub fn emit(event: impl InternalEvent) {
    event.emit();
}
