//! Sinks: the roles that deliver canonical records from Kafka to a destination's API.
//!
//! A sink commits a Kafka offset only once the destination has accepted the record (or the
//! record was dead-lettered with the reason), so delivery is at least once and the destination's
//! de-duplication (Segment's `messageId`) makes it effectively once. Each sink is split into
//! pure, separately tested parts (configuration, encoding, batching, retry policy, rate limit,
//! HTTP service), in the manner of Vector's sinks. The per-partition queues, flow control and
//! done-offset bookkeeping of the `Acknowledged` commit strategy are shared ([`queue`]), and so is
//! the acknowledged dead-letter writer ([`dead_letter`]); the HTTP plumbing (backoff,
//! `Retry-After`, rate limits) is [`crate::http`]. A sink never imports another sink.

pub mod dead_letter;
pub mod pendo;
pub mod queue;
pub mod segment;

use std::future::Future;
use std::time::Duration;

use rdkafka::message::BorrowedMessage;

use crate::app::RoleEnv;
use crate::config::Config;
use crate::kafka::client_config;
use crate::kafka::consumer_loop::{
    CommitStrategy, LoopSpec, ProcessError, RecordProcessor, run_consumer_loop,
};
use crate::kafka::context::{RevocationBarrier, TopicPartition};
use crate::sinks::queue::{PartitionQueues, SinkJob};

/// A sink's own part of the loop: its per-record work over its [`PartitionQueues`]. The rest
/// of the `Acknowledged` contract (checkpoint, progress, readiness, backpressure, revoked
/// partitions, sending open batches once the input is drained) every sink gets from its
/// queues, through the [`RecordProcessor`] implemented here for every `QueuedSink`.
pub trait QueuedSink: Send {
    /// What one partition's queue holds.
    type Job: SinkJob;

    /// The sink's queues.
    fn queues(&mut self) -> &mut PartitionQueues<Self::Job>;

    /// The sink's queues, read only.
    fn queues_ref(&self) -> &PartitionQueues<Self::Job>;

    /// Handles one record: queues it, or dead-letters it ([`PartitionQueues::reject`]).
    fn process(
        &mut self,
        record: &BorrowedMessage<'_>,
    ) -> impl Future<Output = Result<(), ProcessError>> + Send;

    /// Partitions taken away, after their queued work was dropped: per-partition state of
    /// the sink's own. None by default.
    fn partitions_revoked(&mut self, _partitions: &[TopicPartition]) {}

    /// See [`RecordProcessor::revocation_barrier`]. None by default.
    fn revocation_barrier(&self) -> Option<RevocationBarrier> {
        None
    }
}

impl<S: QueuedSink> RecordProcessor for S {
    fn process(
        &mut self,
        record: &BorrowedMessage<'_>,
    ) -> impl Future<Output = Result<(), ProcessError>> + Send {
        QueuedSink::process(self, record)
    }

    async fn checkpoint(&mut self) -> Result<(), ProcessError> {
        self.queues().checkpoint().await
    }

    fn partitions_revoked(&mut self, partitions: &[TopicPartition]) {
        // Their records are re-read by the next owner; a request already sent may reach the
        // destination twice, which its de-duplication (Segment's messageId, Pendo's idempotent
        // writes) absorbs.
        self.queues().revoked(partitions);
        QueuedSink::partitions_revoked(self, partitions);
    }

    fn revocation_barrier(&self) -> Option<RevocationBarrier> {
        QueuedSink::revocation_barrier(self)
    }

    async fn progress(&mut self) -> Result<Vec<(TopicPartition, i64)>, ProcessError> {
        self.queues().progress()
    }

    fn ready(&self) -> impl Future<Output = ()> + Send + 'static {
        self.queues_ref().ready()
    }

    fn input_drained(&mut self) {
        // Open batches wait for more records only while more are coming; the request rate
        // caps still bound how often they go.
        self.queues().close_open();
    }

    fn is_backpressured(&self, topic: &str, partition: i32) -> bool {
        self.queues_ref().is_backpressured(topic, partition)
    }
}

/// Runs a sink's processor over `inputs` in the shared loop with the `Acknowledged` strategy:
/// the commit cadence of `[processing]`, and a shutdown flush that ends 5 s before the grace
/// period does (what is not acknowledged by then stays uncommitted).
pub async fn run_sink_loop<P: RecordProcessor>(
    config: &Config,
    role: &'static str,
    inputs: Vec<String>,
    processor: P,
    env: &RoleEnv,
) -> anyhow::Result<()> {
    let p = &config.processing;
    let flush_timeout = Duration::from_millis(p.shutdown_grace_ms)
        .saturating_sub(Duration::from_secs(5))
        .max(Duration::from_secs(1));
    let spec = LoopSpec::from_processing(
        role,
        inputs,
        p,
        CommitStrategy::Acknowledged { flush_timeout },
    );
    run_consumer_loop(
        &client_config::consumer(config, role),
        spec,
        processor,
        env.shutdown.clone(),
        env.readiness.register(format!("{role}:consumer")),
    )
    .await?;
    Ok(())
}
