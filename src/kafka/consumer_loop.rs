//! The one consume -> process -> commit loop that every consumer role runs.
//!
//! A role supplies a [`RecordProcessor`]; the loop owns the consumer, the group membership,
//! offsets, commit cadence, rebalances and shutdown. The contract:
//!
//! * `process` is called once per record, in partition order. When it returns `Ok`, the record is
//!   either done or buffered by the processor.
//! * At each commit point (every `commit_max_records` records or `commit_interval`, and at
//!   shutdown) the loop calls `checkpoint`; once that returns `Ok`, everything processed so far is
//!   durable downstream, and the loop commits `last processed offset + 1` of every partition.
//! * When partitions are revoked, their uncommitted work is abandoned (`partitions_revoked`), never
//!   committed; the next owner re-reads it from the last commit. Records of partitions this
//!   member no longer owns are skipped.
//! * On shutdown the loop stops polling, lets the record in progress finish, checkpoints,
//!   commits, and leaves the group.
//!
//! Any `Err` from the processor stops the role without committing the unfinished work: the
//! process exits non-zero and a restart resumes from the last commit. Bad *records* are not
//! errors: processors send them to a dead-letter topic and return `Ok`.
//!
//! Three commit strategies ([`CommitStrategy`]):
//!
//! * `ConsumerOffsets`: a consumer-group offset commit after `checkpoint`.
//! * `Acknowledged`: for sinks, whose records finish (an HTTP 2xx) long after `process` returned
//!   and may wait out an outage of any length. The loop never waits for them: it commits, per
//!   partition, only the offsets the processor reports done ([`RecordProcessor::progress`]),
//!   pauses partitions the processor says are backed up and resumes them when they drain, and
//!   keeps polling meanwhile, so the member stays in its group however long Segment is down.
//!   `checkpoint` is called only at shutdown, under a deadline. At-least-once, made
//!   effectively-once downstream by deterministic message ids.
//! * `Transactional`: the processor writes its output through a [`TransactionalOutput`]; the
//!   loop opens a Kafka transaction before the first record after a commit, and at each commit
//!   point adds the offsets to it (`send_offsets_to_transaction`, with the consumer-group
//!   metadata read afresh every time, KIP-447) and commits. Output and offsets become visible
//!   together or not at all: exactly once for `read_committed` readers. A failed transaction is
//!   aborted and its input re-read from the last commit; a fenced producer stops the role.
//!   Every transactional call runs under our own deadline (they can hang while the coordinator
//!   is down); when one overruns it, or an abort cannot finish, the transaction's outcome is
//!   unknown: the loop replaces the producer (which settles that transaction) and re-reads from
//!   the committed offsets, keeping its group membership; if no new producer can be
//!   initialised either, the loop stops with a transient error and the runtime restarts the role.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::health::ReadinessHandle;
use crate::internal_events::{
    CommitFinished, CommitResult, ConsumeFailed, ConsumerLoopStopped, DiscardCause,
    TransactionDiscarded, TransactionOutcomeUnknown, emit,
};
use crate::kafka::context::{
    LoopContext, RebalanceEvent, RevocationBarrier, TopicPartition, set_paused_lag,
};
use crate::kafka::failover::is_transient_kafka_error;
use crate::kafka::transactional_output::{TransactionalOutput, TxnError};
use crate::metrics::metrics;
use crate::shutdown::Shutdown;

/// A role's per-record work.
pub trait RecordProcessor: Send {
    /// Handles one record. `Ok` means done, or buffered until the next [`checkpoint`](Self::checkpoint).
    fn process(
        &mut self,
        record: &BorrowedMessage<'_>,
    ) -> impl Future<Output = Result<(), ProcessError>> + Send;

    /// Makes everything processed so far durable; the loop commits right after `Ok`.
    fn checkpoint(&mut self) -> impl Future<Output = Result<(), ProcessError>> + Send;

    /// These partitions were taken away: drop any buffered, uncheckpointed work of theirs.
    fn partitions_revoked(&mut self, _partitions: &[TopicPartition]) {}

    /// Work that must be finished before revoked partitions go to another member, run inside
    /// the revocation callback (before [`partitions_revoked`](Self::partitions_revoked), which
    /// the loop calls later, between records): e.g. waiting for side writes of those partitions
    /// that their next owner reads. None by default.
    fn revocation_barrier(&self) -> Option<RevocationBarrier> {
        None
    }

    /// `Acknowledged` strategy: finishes what it can without waiting (collects completions,
    /// sends lingering batches) and returns, per partition, the next offset below which every
    /// record is done. Called on every loop tick, on [`ready`](Self::ready) and at commit points.
    fn progress(
        &mut self,
    ) -> impl Future<Output = Result<Vec<(TopicPartition, i64)>, ProcessError>> + Send {
        std::future::ready(Ok(Vec::new()))
    }

    /// `Acknowledged` strategy: resolves when [`progress`](Self::progress) has news (a delivery
    /// finished), so the loop reacts at once even while every partition is paused.
    fn ready(&self) -> impl Future<Output = ()> + Send + 'static {
        std::future::pending()
    }

    /// `Acknowledged` strategy: everything buffered was read and processed (see
    /// [`LoopSpec::drained`]): send what waits for more input (open batches) now.
    fn input_drained(&mut self) {}

    /// `Acknowledged` strategy: whether `partition` is backed up and should not be fetched
    /// until it drains. Called after each of its records and on every tick while paused.
    fn is_backpressured(&self, _topic: &str, _partition: i32) -> bool {
        false
    }
}

/// A failure that stops the role (not a bad record: those are dead-lettered).
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ProcessError {
    /// A short, bounded label for metrics (e.g. `produce`, `http`).
    pub kind: &'static str,
    /// What went wrong, for the log.
    pub message: String,
}

impl ProcessError {
    /// An error of `kind` with a message.
    pub fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// Why a consumer loop stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// Creating or subscribing the consumer, or a fatal consumer error.
    #[error("kafka consumer of {role}: {source}")]
    Kafka {
        /// The role.
        role: &'static str,
        /// The client error.
        source: KafkaError,
    },
    /// The processor failed.
    #[error("{role} stopped: {source}")]
    Process {
        /// The role.
        role: &'static str,
        /// The processor's error.
        source: ProcessError,
    },
}

/// How the loop makes processed offsets committed.
#[derive(Clone)]
pub enum CommitStrategy {
    /// Consumer-group offset commit after the processor's checkpoint.
    ConsumerOffsets,
    /// Consumer-group offset commit of what the processor reports done; partitions paused
    /// while backed up; `checkpoint` only at shutdown.
    Acknowledged {
        /// How long the shutdown checkpoint may take; what is not done by then is re-read by
        /// the next owner.
        flush_timeout: Duration,
    },
    /// Offsets committed inside the transaction that holds the processor's output.
    Transactional {
        /// The producer the processor writes through.
        output: TransactionalOutput,
        /// Deadline of each transactional call (keep it below the consumer session timeout).
        timeout: Duration,
    },
}

/// What the loop consumes and how often it commits.
#[derive(Clone)]
pub struct LoopSpec {
    /// Stage (role) name, for metrics and logs.
    pub role: &'static str,
    /// Topics to subscribe to.
    pub topics: Vec<String>,
    /// Commit after this many processed records.
    pub commit_max_records: usize,
    /// Commit at least this often while there is uncommitted work.
    pub commit_interval: Duration,
    /// When nothing more is buffered to read, act at once instead of waiting for the interval
    /// (transactional: commit; acknowledged: [`RecordProcessor::input_drained`], e.g. send the
    /// open batches), at most once per this spacing. `None`: only by count and interval. At low
    /// load this takes a role's latency from the interval down to the spacing; at saturation
    /// the input is never drained and commits stay as large as the count and interval make them.
    pub drained: Option<Duration>,
    /// Offset commits or transactions.
    pub strategy: CommitStrategy,
}

impl LoopSpec {
    /// A role's loop over `topics` with the cadence of `[processing]`.
    pub fn from_processing(
        role: &'static str,
        topics: Vec<String>,
        processing: &crate::config::ProcessingConfig,
        strategy: CommitStrategy,
    ) -> Self {
        Self {
            role,
            topics,
            commit_max_records: processing.commit_max_records,
            commit_interval: Duration::from_millis(processing.commit_interval_ms),
            drained: processing.drained(),
            strategy,
        }
    }
}

/// Summary of a loop that stopped cleanly.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoopStats {
    /// Records handed to the processor.
    pub processed: u64,
    /// Successful commits.
    pub commits: u64,
    /// Transactions aborted (their input was re-read).
    pub aborts: u64,
}

/// Offsets processed but not yet committed: partition -> next offset to read.
#[derive(Default)]
struct PendingOffsets {
    next: HashMap<TopicPartition, i64>,
    records: usize,
    since: Option<Instant>,
}

impl PendingOffsets {
    fn record(&mut self, topic: &str, partition: i32, offset: i64) {
        // The committed offset is the last processed offset + 1: the next record to read.
        match self.next.get_mut(&(topic.to_string(), partition)) {
            Some(next) => *next = offset + 1,
            None => {
                self.next.insert((topic.to_string(), partition), offset + 1);
            }
        }
        self.records += 1;
        self.since.get_or_insert_with(Instant::now);
    }

    fn forget(&mut self, partitions: &[TopicPartition]) {
        for tp in partitions {
            self.next.remove(tp);
        }
        if self.next.is_empty() {
            self.records = 0;
            self.since = None;
        }
    }

    fn is_empty(&self) -> bool {
        self.next.is_empty()
    }

    fn due(&self, spec: &LoopSpec) -> bool {
        self.records >= spec.commit_max_records
            || self
                .since
                .is_some_and(|t| t.elapsed() >= spec.commit_interval)
    }

    fn to_list(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in &self.next {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))
                .expect("a valid offset");
        }
        tpl
    }

    /// After a failed commit: wait a full interval (or batch) before trying again.
    fn backoff(&mut self) {
        self.records = 0;
        self.since = Some(Instant::now());
    }

    fn clear(&mut self) {
        *self = PendingOffsets::default();
    }
}

/// Runs `processor` over `spec.topics` until `shutdown` fires or an error stops it.
pub async fn run_consumer_loop<P: RecordProcessor>(
    client_config: &ClientConfig,
    spec: LoopSpec,
    processor: P,
    shutdown: Shutdown,
    readiness: ReadinessHandle,
) -> Result<LoopStats, LoopError> {
    let role = spec.role;
    let kafka_err = |source| LoopError::Kafka { role, source };
    let consumer: Arc<StreamConsumer<LoopContext>> = Arc::new(
        client_config
            .create_with_context(
                LoopContext::new(role, readiness.clone())
                    .with_revocation_barrier(processor.revocation_barrier()),
            )
            .map_err(kafka_err)?,
    );
    let topics: Vec<&str> = spec.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(kafka_err)?;
    tracing::info!(role, topics = ?spec.topics, "consumer loop started");

    let mut state = ConsumerLoop::new(consumer, spec, processor);
    let result = state.run(&shutdown).await;
    readiness.set_ready(false);
    match result {
        Ok(()) => state.finish().await,
        Err(e) => {
            emit(ConsumerLoopStopped {
                role,
                kind: error_kind(&e),
                error: &e,
            });
            Err(e)
        }
    }
}

/// The loop's state between records: the partitions assigned, what is processed but not
/// committed, the open transaction, the `Acknowledged` strategy's progress and the drain
/// cadence. Each thing that can happen (a record, a drained input, a tick, a rebalance, a
/// commit, shutdown) is one method.
struct ConsumerLoop<P> {
    consumer: Arc<StreamConsumer<LoopContext>>,
    spec: LoopSpec,
    processor: P,
    assigned: HashSet<TopicPartition>,
    pending: PendingOffsets,
    stats: LoopStats,
    txn_open: bool,
    acks: AckState,
    acknowledged: bool,
    /// Drain cadence: armed by a processed record, fired (by the branch after `recv`, which a
    /// biased select reaches only when no record is ready) no sooner than `spec.drained` after
    /// the last commit or drain action.
    drain_armed: bool,
    last_action: tokio::time::Instant,
    /// Lag of paused partitions, measured by the loop (librdkafka's statistics freeze it).
    lag_refresh: Option<tokio::task::JoinHandle<()>>,
    last_lag_refresh: tokio::time::Instant,
}

impl<P: RecordProcessor> ConsumerLoop<P> {
    fn new(consumer: Arc<StreamConsumer<LoopContext>>, spec: LoopSpec, processor: P) -> Self {
        let acknowledged = matches!(spec.strategy, CommitStrategy::Acknowledged { .. });
        Self {
            consumer,
            spec,
            processor,
            assigned: HashSet::new(),
            pending: PendingOffsets::default(),
            stats: LoopStats::default(),
            txn_open: false,
            acks: AckState::default(),
            acknowledged,
            drain_armed: false,
            last_action: tokio::time::Instant::now(),
            lag_refresh: None,
            last_lag_refresh: tokio::time::Instant::now(),
        }
    }

    /// Polls, processes and commits until `shutdown` fires (`Ok`) or an error stops the loop.
    async fn run(&mut self, shutdown: &Shutdown) -> Result<(), LoopError> {
        let consumer = self.consumer.clone();
        let mut tick =
            tokio::time::interval((self.spec.commit_interval / 4).max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let ready = self.processor.ready();
            let drain_at = self.last_action + self.spec.drained.unwrap_or_default();
            tokio::select! {
                biased;
                _ = shutdown.wait() => return Ok(()),
                _ = ready => self.progress().await?,
                received = consumer.recv() => self.on_received(received).await?,
                _ = tokio::time::sleep_until(drain_at), if self.drain_armed => self.on_drained().await?,
                _ = tick.tick() => self.on_tick().await?,
            }
        }
    }

    /// A record (or a consumer error) arrived.
    async fn on_received(
        &mut self,
        received: Result<BorrowedMessage<'_>, KafkaError>,
    ) -> Result<(), LoopError> {
        let role = self.spec.role;
        if self.rebalanced().await? {
            // Every assigned partition was sought back to its last commit, this record's
            // included: it comes again. Processing it now as well wrote it twice into the next
            // transaction (issue #9, found by the scale test).
            return Ok(());
        }
        let record = match received {
            Ok(r) => r,
            Err(e) => return handle_consume_error(role, e),
        };
        let m = metrics();
        let topic = record.topic();
        m.records_in.with_label_values(&[role, topic]).inc();
        if !self
            .assigned
            .contains(&(topic.to_string(), record.partition()))
        {
            m.records_skipped.with_label_values(&[role, topic]).inc();
            return Ok(());
        }
        self.begin_transaction()?;
        self.processor
            .process(&record)
            .await
            .map_err(|source| LoopError::Process { role, source })?;
        m.records_processed.with_label_values(&[role, topic]).inc();
        self.pending
            .record(topic, record.partition(), record.offset());
        self.stats.processed += 1;
        if self.acknowledged && self.processor.is_backpressured(topic, record.partition()) {
            self.acks.pause(
                &self.consumer,
                role,
                (topic.to_string(), record.partition()),
            );
        }
        self.drain_armed = self.spec.drained.is_some();
        if self.pending.due(&self.spec) {
            self.commit().await?;
            self.last_action = tokio::time::Instant::now();
        }
        Ok(())
    }

    /// Nothing more is buffered to read (see [`LoopSpec::drained`]).
    async fn on_drained(&mut self) -> Result<(), LoopError> {
        self.drain_armed = false;
        self.last_action = tokio::time::Instant::now();
        // The `recv` this branch was reached past may have run a rebalance callback: apply it
        // before committing. Committing first sent the offsets of revoked partitions with the
        // new generation's metadata, which the coordinator accepts, while their new owner was
        // already re-reading from the old commit (121 calls written twice in the scale test).
        if self.rebalanced().await? {
            return Ok(());
        }
        if self.acknowledged {
            self.processor.input_drained();
            self.progress().await?;
            if self.pending.due(&self.spec) {
                self.commit().await?;
            }
        } else if !self.pending.is_empty() {
            self.commit().await?;
        }
        Ok(())
    }

    /// The periodic tick: rebalances, progress and paused partitions' lag, a due commit.
    async fn on_tick(&mut self) -> Result<(), LoopError> {
        self.rebalanced().await?;
        if self.acknowledged {
            self.progress().await?;
            if !self.acks.paused.is_empty()
                && self.last_lag_refresh.elapsed() >= PAUSED_LAG_REFRESH
                && self.lag_refresh.as_ref().is_none_or(|h| h.is_finished())
            {
                self.last_lag_refresh = tokio::time::Instant::now();
                self.lag_refresh = Some(refresh_paused_lag(
                    &self.consumer,
                    self.spec.role,
                    self.acks.paused_positions(),
                ));
            }
        }
        if self.pending.due(&self.spec) {
            self.commit().await?;
            self.last_action = tokio::time::Instant::now();
        }
        Ok(())
    }

    /// Collects the processor's progress (`Acknowledged` strategy).
    async fn progress(&mut self) -> Result<(), LoopError> {
        self.acks
            .progress(&self.consumer, self.spec.role, &mut self.processor)
            .await
    }

    /// After shutdown: the last checkpoint and commit, then leaving the group.
    async fn finish(mut self) -> Result<LoopStats, LoopError> {
        let role = self.spec.role;
        self.rebalanced().await?;
        if let CommitStrategy::Acknowledged { flush_timeout } = &self.spec.strategy
            && !self.pending.is_empty()
        {
            match tokio::time::timeout(*flush_timeout, self.processor.checkpoint()).await {
                Ok(flushed) => flushed.map_err(|source| LoopError::Process { role, source })?,
                Err(_) => tracing::warn!(
                    role,
                    timeout = ?flush_timeout,
                    "shutdown: not every record was acknowledged in time; the unacknowledged \
                     ones are not committed and will be re-read (and re-sent) after restart"
                ),
            }
        }
        if let Some(source) = self.commit().await? {
            // Processed work is durable downstream but its offsets are not: the next owner
            // re-reads it. Say so loudly instead of exiting as if all was committed.
            return Err(LoopError::Kafka { role, source });
        }
        self.consumer.unsubscribe();
        tracing::info!(
            role,
            processed = self.stats.processed,
            commits = self.stats.commits,
            "consumer loop stopped cleanly"
        );
        Ok(self.stats)
    }

    /// Applies queued rebalance events; after a revocation, aborts the open transaction. True
    /// when a transaction was aborted and the assigned partitions rewound.
    async fn rebalanced(&mut self) -> Result<bool, LoopError> {
        if self.apply_rebalances() {
            self.abandon_transaction().await
        } else {
            Ok(false)
        }
    }

    /// Applies queued rebalance events; true if partitions were revoked.
    fn apply_rebalances(&mut self) -> bool {
        let mut revoked = false;
        for event in self.consumer.context().take_events() {
            match event {
                RebalanceEvent::Assigned(parts) => self.assigned.extend(parts),
                RebalanceEvent::Revoked(parts) => {
                    for p in &parts {
                        self.assigned.remove(p);
                    }
                    self.pending.forget(&parts);
                    self.acks.forget(&self.consumer, &parts);
                    self.processor.partitions_revoked(&parts);
                    revoked = true;
                }
            }
        }
        revoked
    }

    /// Opens a transaction before the first record after a commit (transactional strategy only).
    fn begin_transaction(&mut self) -> Result<(), LoopError> {
        if let CommitStrategy::Transactional { output, .. } = &self.spec.strategy
            && !self.txn_open
        {
            output.begin().map_err(|e| txn_error(self.spec.role, e))?;
            self.txn_open = true;
        }
        Ok(())
    }

    /// After a revocation: the open transaction holds records of the revoked partitions, so it
    /// is aborted. Records of partitions still assigned (possible with a cooperative assignor)
    /// were in it too, so their uncommitted work is discarded and re-read like after any abort.
    /// True when a transaction was aborted and the assigned partitions rewound: a record
    /// received but not yet processed is then read again and must not be processed now.
    async fn abandon_transaction(&mut self) -> Result<bool, LoopError> {
        let role = self.spec.role;
        if let CommitStrategy::Transactional { output, timeout } = &self.spec.strategy
            && self.txn_open
        {
            let (out, timeout) = (output.clone(), *timeout);
            match bounded(timeout, 1, move || out.abort(timeout)).await {
                Ok(()) => {}
                Err(TxnError::Stuck(reason)) => {
                    renew_producer(role, output, timeout, &reason).await?
                }
                Err(e) => return Err(txn_error(role, e)),
            }
            self.txn_open = false;
            self.discard_aborted(DiscardCause::Rebalance).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// After an aborted transaction: nothing of it is visible, so forget its offsets, drop the
    /// processor's buffered work and re-read every still-assigned partition from its last
    /// commit.
    async fn discard_aborted(&mut self, cause: DiscardCause<'_>) -> Result<(), LoopError> {
        let role = self.spec.role;
        emit(TransactionDiscarded { role, cause });
        self.stats.aborts += 1;
        let all: Vec<TopicPartition> = self.pending.next.keys().cloned().collect();
        self.processor.partitions_revoked(&all);
        self.pending.clear();
        rewind(&self.consumer)
            .await
            .map_err(|source| LoopError::Kafka { role, source })
    }

    /// Checkpoints the processor and commits pending offsets. A processor failure is an error;
    /// a failed offset commit is returned as `Ok(Some(..))` and retried at the next commit
    /// point.
    async fn commit(&mut self) -> Result<Option<KafkaError>, LoopError> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let role = self.spec.role;
        let started = Instant::now();
        if let CommitStrategy::Acknowledged { .. } = &self.spec.strategy {
            return self
                .acks
                .commit(
                    &self.consumer,
                    role,
                    &mut self.pending,
                    &mut self.processor,
                    &mut self.stats,
                    started,
                )
                .await;
        }
        self.processor
            .checkpoint()
            .await
            .map_err(|source| LoopError::Process { role, source })?;
        let tpl = self.pending.to_list();
        if let CommitStrategy::Transactional { output, timeout } = &self.spec.strategy {
            let output = output.clone();
            return self
                .commit_transaction(output, *timeout, tpl, started)
                .await;
        }
        match commit_offsets(&self.consumer, role, tpl, started, &mut self.stats).await {
            Ok(()) => {
                self.pending.clear();
                Ok(None)
            }
            Err(e) => {
                // The work is durable downstream but the offsets are not stored: keep them and
                // try again at the next commit point (commits are cumulative). If the
                // partitions were revoked meanwhile, their new owner re-reads them:
                // at-least-once, deduplicated downstream by deterministic ids.
                self.pending.backoff();
                Ok(Some(e))
            }
        }
    }

    /// Adds `tpl` to the open transaction and commits it; an aborted or stuck one is discarded
    /// and its input re-read.
    async fn commit_transaction(
        &mut self,
        output: TransactionalOutput,
        timeout: Duration,
        tpl: TopicPartitionList,
        started: Instant,
    ) -> Result<Option<KafkaError>, LoopError> {
        let role = self.spec.role;
        let group = self
            .consumer
            .group_metadata()
            .ok_or_else(|| LoopError::Kafka {
                role,
                source: KafkaError::Subscription("no consumer group metadata".into()),
            })?;
        let out = output.clone();
        let result = bounded(timeout, 2, move || out.commit(&tpl, &group, timeout)).await;
        self.txn_open = false;
        emit(CommitFinished {
            role,
            elapsed: started.elapsed(),
            result: match result {
                Ok(()) => CommitResult::Committed,
                Err(_) => CommitResult::NotCommitted,
            },
        });
        match result {
            Ok(()) => {
                self.stats.commits += 1;
                self.consumer
                    .context()
                    .note_committed_in_txn(&self.pending.next);
                self.pending.clear();
            }
            Err(TxnError::Abortable(reason)) => {
                self.discard_aborted(DiscardCause::Aborted(&reason)).await?;
            }
            Err(TxnError::Stuck(reason)) => {
                renew_producer(role, &output, timeout, &reason).await?;
                self.discard_aborted(DiscardCause::Settled).await?;
            }
            Err(fatal) => return Err(txn_error(role, fatal)),
        }
        Ok(None)
    }
}

/// A consumer-group offset commit of `tpl`, timed and counted; a failure is logged (the caller
/// keeps its offsets and tries again at the next commit point).
async fn commit_offsets(
    consumer: &Arc<StreamConsumer<LoopContext>>,
    role: &'static str,
    tpl: TopicPartitionList,
    started: Instant,
    stats: &mut LoopStats,
) -> Result<(), KafkaError> {
    let c = consumer.clone();
    let result = tokio::task::spawn_blocking(move || c.commit(&tpl, CommitMode::Sync))
        .await
        .expect("commit task panicked");
    emit(CommitFinished {
        role,
        elapsed: started.elapsed(),
        result: match &result {
            Ok(()) => CommitResult::Committed,
            Err(e) => CommitResult::OffsetsRefused(e),
        },
    });
    if result.is_ok() {
        stats.commits += 1;
    }
    result
}

impl LoopError {
    /// Whether the loop stopped because of a broker failover (a transaction whose outcome is
    /// unknown, a Kafka call that timed out or found no coordinator), which a new loop with
    /// new clients rides through; see [`crate::kafka::failover`]. Fencing, fatal client errors
    /// and processor failures are not.
    pub fn is_transient(&self) -> bool {
        match self {
            LoopError::Kafka { source, .. } => is_transient_kafka_error(source),
            LoopError::Process { source, .. } => source.kind == TRANSACTION_STUCK,
        }
    }
}

fn error_kind(e: &LoopError) -> &'static str {
    match e {
        LoopError::Kafka { .. } => "kafka",
        LoopError::Process { source, .. } => source.kind,
    }
}

/// Consumer errors are mostly transient (librdkafka retries them itself); fatal ones stop the role.
fn handle_consume_error(role: &'static str, e: KafkaError) -> Result<(), LoopError> {
    let fatal = matches!(
        e.rdkafka_error_code(),
        Some(rdkafka::types::RDKafkaErrorCode::Fatal)
    );
    emit(ConsumeFailed {
        role,
        error: &e,
        fatal,
    });
    if fatal {
        return Err(LoopError::Kafka { role, source: e });
    }
    Ok(())
}

fn txn_error(role: &'static str, e: TxnError) -> LoopError {
    let kind = if e.is_transient() {
        TRANSACTION_STUCK
    } else {
        "transaction"
    };
    LoopError::Process {
        role,
        source: ProcessError::new(kind, e.to_string()),
    }
}

/// [`ProcessError::kind`] of a transaction whose outcome is unknown (see [`TxnError::Stuck`]).
const TRANSACTION_STUCK: &str = "transaction_stuck";

/// Runs a blocking transactional call under our own deadline: `calls` times the call timeout
/// (a commit may be followed by an abort) plus 5 s. A call that hangs while the coordinator is
/// down must not hang the role; one that overruns leaves the transaction's outcome unknown
/// ([`TxnError::Stuck`]), which a new producer settles ([`renew_producer`]).
async fn bounded<T: Send + 'static>(
    timeout: Duration,
    calls: u32,
    call: impl FnOnce() -> Result<T, TxnError> + Send + 'static,
) -> Result<T, TxnError> {
    let budget = timeout * calls + Duration::from_secs(5);
    match tokio::time::timeout(budget, tokio::task::spawn_blocking(call)).await {
        Ok(joined) => joined.expect("transaction task panicked"),
        Err(_) => Err(TxnError::Stuck(format!(
            "a transactional call did not return within {budget:?}"
        ))),
    }
}

/// After a transaction whose outcome is unknown (a coordinator unreachable past the deadline,
/// typically a broker failover): replaces the producer, which settles that transaction (see
/// [`TransactionalOutput::renew`]). The caller then re-reads from the committed offsets, which
/// are final once the new producer is initialised. The loop and its group membership go on;
/// only if no new producer can be initialised either does the loop stop (a transient error:
/// the runtime restarts the role).
async fn renew_producer(
    role: &'static str,
    output: &TransactionalOutput,
    timeout: Duration,
    reason: &str,
) -> Result<(), LoopError> {
    emit(TransactionOutcomeUnknown { role, reason });
    let out = output.clone();
    bounded(timeout, 1, move || {
        out.renew(timeout).map_err(|e| {
            if is_transient_kafka_error(&e) {
                TxnError::Stuck(format!("no new transactional producer: {e}"))
            } else {
                TxnError::Fatal(format!("no new transactional producer: {e}"))
            }
        })
    })
    .await
    .map_err(|e| txn_error(role, e))?;
    tracing::info!(role, "new transactional producer ready");
    Ok(())
}

/// Seeks every assigned partition back to its committed offset (after an aborted transaction).
///
/// After an eager revocation nothing is assigned: there is nothing to rewind (the next owner,
/// or this member after its next assignment, starts from the committed offsets). librdkafka
/// refuses to seek an empty list (`_INVALID_ARG`), which used to stop the role (issue #9: a
/// transformer died at a rebalance and its partner took over every partition). A partition
/// that cannot be rewound is an error: reading on past an aborted transaction would skip its
/// records.
async fn rewind(consumer: &Arc<StreamConsumer<LoopContext>>) -> Result<(), KafkaError> {
    let c = consumer.clone();
    tokio::task::spawn_blocking(move || {
        let committed = c.committed(Duration::from_secs(30))?;
        let tpl = rewind_positions(&committed)?;
        if tpl.count() == 0 {
            return Ok(());
        }
        let sought = c.seek_partitions(tpl, Duration::from_secs(30))?;
        for e in sought.elements() {
            if let Err(err) = e.error() {
                return Err(KafkaError::Seek(format!(
                    "{} [{}]: {err}",
                    e.topic(),
                    e.partition()
                )));
            }
        }
        Ok(())
    })
    .await
    .expect("rewind task panicked")
}

/// Where each assigned partition restarts after an abort: its committed offset, or the
/// beginning when it has none.
fn rewind_positions(committed: &TopicPartitionList) -> Result<TopicPartitionList, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for e in committed.elements() {
        let offset = match e.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        tpl.add_partition_offset(e.topic(), e.partition(), offset)?;
    }
    Ok(tpl)
}

/// How often the lag of paused partitions is measured.
const PAUSED_LAG_REFRESH: Duration = Duration::from_secs(2);

/// Measures the lag of paused partitions off the loop (watermark and committed-offset queries
/// are blocking broker round trips): a paused partition is not fetched, so librdkafka's
/// statistics would keep reporting the lag it had when it was paused while its backlog grows
/// behind it.
fn refresh_paused_lag(
    consumer: &Arc<StreamConsumer<LoopContext>>,
    role: &'static str,
    positions: Vec<(TopicPartition, Option<i64>)>,
) -> tokio::task::JoinHandle<()> {
    let consumer = consumer.clone();
    tokio::task::spawn_blocking(move || {
        for (tp, committed) in positions {
            let (low, high) = match consumer.fetch_watermarks(&tp.0, tp.1, Duration::from_secs(2)) {
                Ok(w) => w,
                Err(e) => {
                    tracing::debug!(role, topic = %tp.0, partition = tp.1, error = %e, "paused partition's watermark not read");
                    continue;
                }
            };
            // Nothing committed by this process yet (a fresh start whose destination refused
            // from the first batch): the group's committed offset, else where the group starts
            // reading (`auto.offset.reset = earliest`), so a backlog is never reported as 0.
            let from = committed
                .or_else(|| group_committed(&consumer, &tp))
                .unwrap_or(low);
            // Not for a partition resumed or revoked meanwhile: its gauge is the statistics'
            // again, or was removed with it.
            if consumer.context().is_paused(&tp) {
                set_paused_lag(role, &tp, high, from);
            }
        }
    })
}

/// The group's committed offset of `tp` on the broker, if it has one.
fn group_committed(consumer: &StreamConsumer<LoopContext>, tp: &TopicPartition) -> Option<i64> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&tp.0, tp.1);
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(2))
        .ok()?;
    committed
        .find_partition(&tp.0, tp.1)
        .and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        })
}

/// `Acknowledged` strategy: offsets the processor reported done, what is committed, and which
/// partitions are paused.
#[derive(Default)]
struct AckState {
    done: HashMap<TopicPartition, i64>,
    committed: HashMap<TopicPartition, i64>,
    paused: HashSet<TopicPartition>,
}

impl AckState {
    fn forget(&mut self, consumer: &StreamConsumer<LoopContext>, partitions: &[TopicPartition]) {
        for tp in partitions {
            self.done.remove(tp);
            self.committed.remove(tp);
            if self.paused.remove(tp) {
                metrics().paused_partitions.dec();
                consumer.context().set_paused(tp, false);
            }
        }
    }

    /// Paused partitions with the offset this process committed for each, if any, for
    /// measuring their lag (see [`refresh_paused_lag`]).
    fn paused_positions(&self) -> Vec<(TopicPartition, Option<i64>)> {
        self.paused
            .iter()
            .map(|tp| (tp.clone(), self.committed.get(tp).copied()))
            .collect()
    }

    fn pause(
        &mut self,
        consumer: &StreamConsumer<LoopContext>,
        role: &'static str,
        tp: TopicPartition,
    ) {
        if self.paused.contains(&tp) {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&tp.0, tp.1);
        match consumer.pause(&tpl) {
            Ok(()) => {
                tracing::debug!(role, topic = %tp.0, partition = tp.1, "partition paused (backpressure)");
                metrics().paused_partitions.inc();
                consumer.context().set_paused(&tp, true);
                self.paused.insert(tp);
            }
            Err(e) => tracing::warn!(role, error = %e, "could not pause a backed-up partition"),
        }
    }

    /// Collects the processor's progress and resumes partitions that drained.
    async fn progress<P: RecordProcessor>(
        &mut self,
        consumer: &StreamConsumer<LoopContext>,
        role: &'static str,
        processor: &mut P,
    ) -> Result<(), LoopError> {
        let done = processor
            .progress()
            .await
            .map_err(|source| LoopError::Process { role, source })?;
        self.done.extend(done);
        let drained: Vec<TopicPartition> = self
            .paused
            .iter()
            .filter(|tp| !processor.is_backpressured(&tp.0, tp.1))
            .cloned()
            .collect();
        for tp in drained {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&tp.0, tp.1);
            match consumer.resume(&tpl) {
                Ok(()) => {
                    metrics().paused_partitions.dec();
                    consumer.context().set_paused(&tp, false);
                    self.paused.remove(&tp);
                }
                Err(e) => tracing::warn!(role, error = %e, "could not resume a partition"),
            }
        }
        Ok(())
    }

    /// Commits the done offsets that moved; what is processed but not done stays pending.
    async fn commit<P: RecordProcessor>(
        &mut self,
        consumer: &Arc<StreamConsumer<LoopContext>>,
        role: &'static str,
        pending: &mut PendingOffsets,
        processor: &mut P,
        stats: &mut LoopStats,
        started: Instant,
    ) -> Result<Option<KafkaError>, LoopError> {
        self.progress(consumer, role, processor).await?;
        let mut tpl = TopicPartitionList::new();
        let mut advanced = Vec::new();
        for (tp, next) in &self.done {
            // Only partitions this member owns and has processed records of.
            let Some(processed) = pending.next.get(tp) else {
                continue;
            };
            let next = (*next).min(*processed);
            if self.committed.get(tp).is_some_and(|c| *c >= next) {
                continue;
            }
            tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(next))
                .expect("a valid offset");
            advanced.push((tp.clone(), next));
        }
        if advanced.is_empty() {
            pending.backoff();
            return Ok(None);
        }
        match commit_offsets(consumer, role, tpl, started, stats).await {
            Ok(()) => {
                for (tp, next) in advanced {
                    if pending.next.get(&tp).is_some_and(|p| *p <= next) {
                        pending.next.remove(&tp);
                    }
                    self.committed.insert(tp, next);
                }
                if pending.next.is_empty() {
                    pending.clear();
                } else {
                    pending.backoff();
                }
                Ok(None)
            }
            Err(e) => {
                pending.backoff();
                Ok(Some(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LoopSpec {
        LoopSpec {
            role: "t",
            topics: vec![],
            commit_max_records: 3,
            commit_interval: Duration::from_secs(3600),
            drained: None,
            strategy: CommitStrategy::ConsumerOffsets,
        }
    }

    #[test]
    fn pending_offsets_commit_last_plus_one_and_forget_revoked() {
        let mut p = PendingOffsets::default();
        p.record("a", 0, 10);
        p.record("a", 0, 11);
        p.record("a", 1, 5);
        assert!(p.due(&spec()));
        let tpl = p.to_list();
        assert_eq!(
            tpl.find_partition("a", 0).unwrap().offset(),
            Offset::Offset(12)
        );
        assert_eq!(
            tpl.find_partition("a", 1).unwrap().offset(),
            Offset::Offset(6)
        );
        p.forget(&[("a".to_string(), 0)]);
        assert!(p.to_list().find_partition("a", 0).is_none());
        p.forget(&[("a".to_string(), 1)]);
        assert!(p.is_empty());
        assert!(!p.due(&spec()));
    }
}
