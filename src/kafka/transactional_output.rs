//! The output side of a consume-transform-produce role: a transactional producer whose
//! transactions also carry the consumer's offsets (`send_offsets_to_transaction`), so every
//! input record's output is committed exactly once together with its offset, or not at all.
//!
//! Every record is checked against its topic's `max.message.bytes` before it is enqueued
//! ([`SendError::TooLarge`]): a record Kafka would refuse must become a dead letter of its input,
//! never a failed transaction that the re-read input fails again.
//!
//! The consumer loop owns the transaction boundaries (begin before the first record, commit at
//! commit points, abort on failure or rebalance); processors only [`send`](TransactionalOutput::send).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, Producer, ProducerContext, ThreadedProducer,
};

use crate::kafka::failover::is_fencing_or_denial;
use crate::kafka::record_size::{RecordTooLarge, TopicLimits};

/// A cloneable handle to one transactional producer. Every clone sees the same producer, also
/// after [`renew`](TransactionalOutput::renew) replaced it.
#[derive(Clone)]
pub struct TransactionalOutput {
    producer: Arc<RwLock<Arc<ThreadedProducer<DefaultProducerContext>>>>,
    config: ClientConfig,
    limits: TopicLimits,
}

/// Why a record was not enqueued.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// It would not fit its topic: nothing was enqueued; dead-letter the input instead.
    #[error(transparent)]
    TooLarge(#[from] RecordTooLarge),
    /// The producer refused it (queue full for too long, fatal state...): a role failure.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}

/// How a failed transaction must be handled.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// The transaction was aborted (or must be): nothing of it is visible; re-read its input.
    #[error("transaction aborted: {0}")]
    Abortable(String),
    /// The producer is unusable (fenced by a newer instance, or a fatal error): stop the role.
    #[error("transactional producer unusable: {0}")]
    Fatal(String),
    /// The transaction's outcome is unknown: a call (or the abort after it) did not finish in
    /// time, typically while its coordinator moves to another broker. A new producer with the
    /// same `transactional.id` settles it (see [`crate::kafka::failover`]): restart the work.
    #[error("transaction outcome unknown: {0}")]
    Stuck(String),
}

impl TxnError {
    /// Whether starting afresh (a new producer, input re-read from the last commit) cures it.
    pub fn is_transient(&self) -> bool {
        !matches!(self, TxnError::Fatal(_))
    }
}

fn classify(e: KafkaError) -> TxnError {
    match &e {
        KafkaError::Transaction(t) if t.is_fatal() && is_fencing_or_denial(t.code()) => {
            TxnError::Fatal(e.to_string())
        }
        // Fatal for this producer, but not fencing: a new one with the same id settles it.
        KafkaError::Transaction(t) if t.is_fatal() => TxnError::Stuck(e.to_string()),
        KafkaError::Transaction(t) if t.txn_requires_abort() || t.is_retriable() => {
            TxnError::Abortable(e.to_string())
        }
        _ => TxnError::Abortable(e.to_string()),
    }
}

/// [`classify`] for a call that ran until `deadline`: a retriable failure (a coordinator that
/// did not answer) at the deadline is [`TxnError::Stuck`]. Aborting would wait for the same
/// unreachable coordinator; a new producer settles the transaction once one is elected.
fn classify_at(e: KafkaError, deadline: Instant) -> TxnError {
    match &e {
        KafkaError::Transaction(t)
            if !t.is_fatal() && t.is_retriable() && Instant::now() >= deadline =>
        {
            TxnError::Stuck(e.to_string())
        }
        _ => classify(e),
    }
}

impl TransactionalOutput {
    /// Creates the producer and initialises transactions (fencing any earlier producer with the
    /// same `transactional.id`); records are checked against `limits`. Blocking: call from a
    /// blocking context.
    pub fn create(
        client_config: &ClientConfig,
        limits: TopicLimits,
        timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let producer: ThreadedProducer<DefaultProducerContext> = client_config.create()?;
        producer.init_transactions(timeout)?;
        Ok(Self {
            producer: Arc::new(RwLock::new(Arc::new(producer))),
            config: client_config.clone(),
            limits,
        })
    }

    /// Replaces the producer with a new one with the same `transactional.id`, after a
    /// transaction's outcome became unknown ([`TxnError::Stuck`]): its `init_transactions`
    /// fences the old producer and makes the coordinator finish the old transaction (committed
    /// if its commit had begun, aborted otherwise), so offsets read afterwards are settled.
    /// Blocking. A call of the old producer still running somewhere fails as fenced.
    pub fn renew(&self, timeout: Duration) -> Result<(), KafkaError> {
        let fresh: ThreadedProducer<DefaultProducerContext> = self.config.create()?;
        fresh.init_transactions(timeout)?;
        *self.producer.write().expect("producer lock") = Arc::new(fresh);
        Ok(())
    }

    fn producer(&self) -> Arc<ThreadedProducer<DefaultProducerContext>> {
        self.producer.read().expect("producer lock").clone()
    }

    /// The topic limits records are checked against (dead letters are cut to them).
    pub fn limits(&self) -> &TopicLimits {
        &self.limits
    }

    /// Enqueues one record into the open transaction (waits up to 10 s while the queue is full).
    /// A record that would not fit its topic is refused before anything is enqueued.
    pub fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<(), SendError> {
        self.limits
            .check(topic, key, payload, headers.iter().copied())?;
        let mut h = OwnedHeaders::new_with_capacity(headers.len());
        for (k, v) in headers {
            h = h.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        let mut record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(topic).payload(payload).headers(h);
        if let Some(k) = key {
            record = record.key(k);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let producer = self.producer();
        loop {
            match producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if Instant::now() < deadline =>
                {
                    record = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    /// Enqueues a tombstone (a key without a value: compaction then forgets the key) into the
    /// open transaction.
    pub fn send_tombstone(&self, topic: &str, key: &[u8]) -> Result<(), KafkaError> {
        let record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).key(key);
        self.producer().send(record).map_err(|(e, _)| e)
    }

    /// Opens a transaction.
    pub fn begin(&self) -> Result<(), TxnError> {
        self.producer().begin_transaction().map_err(classify)
    }

    /// Delivers the open transaction's records, adds `offsets` for `group`, and commits, all
    /// within `timeout`; an abort after a failure gets `timeout` of its own. Blocking (at most
    /// twice `timeout`). On [`TxnError::Abortable`] the transaction has been aborted already.
    pub fn commit(
        &self,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
        timeout: Duration,
    ) -> Result<(), TxnError> {
        let deadline = Instant::now() + timeout;
        let producer = self.producer();
        let result = flush_deliveries(producer.as_ref(), timeout)
            .map_err(TxnError::Abortable)
            .and_then(|()| {
                producer
                    .send_offsets_to_transaction(offsets, group, remaining(deadline))
                    .map_err(|e| classify_at(e, deadline))
            })
            .and_then(|()| self.commit_until(deadline));
        self.abort_if_abortable(result, timeout)
    }

    /// Delivers the open transaction's records and commits, for producers that consume
    /// nothing (the poller). Blocking (at most twice `timeout`). On [`TxnError::Abortable`] it
    /// has been aborted already.
    pub fn commit_records(&self, timeout: Duration) -> Result<(), TxnError> {
        let deadline = Instant::now() + timeout;
        let result = flush_deliveries(self.producer().as_ref(), timeout)
            .map_err(TxnError::Abortable)
            .and_then(|()| self.commit_until(deadline));
        self.abort_if_abortable(result, timeout)
    }

    fn commit_until(&self, deadline: Instant) -> Result<(), TxnError> {
        commit_transaction_until(self.producer().as_ref(), deadline)
            .map_err(|e| classify_at(e, deadline))
    }

    fn abort_if_abortable(
        &self,
        result: Result<(), TxnError>,
        timeout: Duration,
    ) -> Result<(), TxnError> {
        match result {
            Err(TxnError::Abortable(reason)) => {
                self.abort(timeout)?;
                Err(TxnError::Abortable(reason))
            }
            other => other,
        }
    }

    /// Aborts the open transaction. Blocking. An abort that cannot finish (its coordinator is
    /// unreachable) leaves the outcome to the next producer: [`TxnError::Stuck`].
    pub fn abort(&self, timeout: Duration) -> Result<(), TxnError> {
        self.producer()
            .abort_transaction(timeout)
            .map_err(|e| match &e {
                KafkaError::Transaction(t) if t.is_fatal() && is_fencing_or_denial(t.code()) => {
                    TxnError::Fatal(format!("abort failed: {e}"))
                }
                _ => TxnError::Stuck(format!("abort failed: {e}")),
            })
    }
}

/// `commit_transaction`, called again while it fails retriably (a coordinator that is moving
/// answers so; librdkafka documents the call as safe to retry) until `deadline`. Giving up on
/// the first timeout would abort a transaction the new coordinator was about to commit, and
/// the caller would redo (or, at an HTTP edge, have the sender resend) work that is done.
pub fn commit_transaction_until<C: ProducerContext + 'static>(
    producer: &ThreadedProducer<C>,
    deadline: Instant,
) -> Result<(), KafkaError> {
    loop {
        match producer.commit_transaction(remaining(deadline)) {
            Err(KafkaError::Transaction(t))
                if t.is_retriable()
                    && !t.txn_requires_abort()
                    && Instant::now() + Duration::from_millis(100) < deadline =>
            {
                tracing::debug!(error = %t, "commit_transaction failed retriably; calling it again");
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// Time left until `deadline` (at least a millisecond: a zero timeout means "do not wait").
fn remaining(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

/// Waits until every queued record of `producer` is acknowledged.
///
/// rdkafka's `flush` (also called first by `commit_transaction`) polls in slices that last their
/// whole timeout, so a commit through it costs ~100 ms however fast the broker answers.
/// librdkafka's own `rd_kafka_flush` waits for the delivery reports instead, which the threaded
/// producer's background thread serves. It is called in short slices because each call also
/// wakes the broker threads, which matters for partitions still being added to the transaction.
pub fn flush_deliveries<C: ProducerContext + 'static>(
    producer: &ThreadedProducer<C>,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        // SAFETY: the pointer is the live producer's handle, valid while `producer` is
        // borrowed; rd_kafka_flush may be called from any thread.
        let err = unsafe { rdkafka::bindings::rd_kafka_flush(producer.client().native_ptr(), 5) };
        match RDKafkaErrorCode::from(err) {
            RDKafkaErrorCode::NoError => return Ok(()),
            RDKafkaErrorCode::OperationTimedOut if Instant::now() < deadline => {}
            code => return Err(format!("flush: {code}")),
        }
    }
}
