//! The durable producer: idempotent, `acks=all`, and `send` resolves only once the broker has
//! acknowledged the record. Connectors answer their senders from this result, so an error here
//! must be classified: "try again later" (queue full, timeout, broker down) versus a rejection.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

/// Why a record was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The local queue is full: the broker is slow or down. Retry later (HTTP 503).
    #[error("producer queue is full")]
    QueueFull,
    /// The record was not acknowledged within `message.timeout.ms`. Retry later (HTTP 503).
    #[error("record not acknowledged in time")]
    Timeout,
    /// Any other failure (topic missing, authorization, record too large...).
    #[error("record rejected: {0}")]
    Rejected(KafkaError),
}

impl ProduceError {
    fn classify(e: KafkaError) -> Self {
        match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::QueueFull) => ProduceError::QueueFull,
            Some(RDKafkaErrorCode::MessageTimedOut) | Some(RDKafkaErrorCode::RequestTimedOut) => {
                ProduceError::Timeout
            }
            _ => ProduceError::Rejected(e),
        }
    }

    /// Whether the same record may succeed if sent again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProduceError::QueueFull | ProduceError::Timeout => true,
            ProduceError::Rejected(e) => matches!(
                e.rdkafka_error_code(),
                Some(
                    RDKafkaErrorCode::AllBrokersDown
                        | RDKafkaErrorCode::BrokerTransportFailure
                        | RDKafkaErrorCode::NotEnoughReplicas
                        | RDKafkaErrorCode::NotEnoughReplicasAfterAppend
                        | RDKafkaErrorCode::LeaderNotAvailable
                        | RDKafkaErrorCode::NotLeaderForPartition
                        | RDKafkaErrorCode::NetworkException
                )
            ),
        }
    }
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// An idempotent `acks=all` producer whose sends complete on broker acknowledgement.
#[derive(Clone)]
pub struct DurableProducer {
    inner: FutureProducer,
}

impl DurableProducer {
    /// Builds the producer from [`crate::kafka::client_config::producer`] output.
    pub fn new(client_config: &ClientConfig) -> Result<Self, KafkaError> {
        Ok(Self {
            inner: client_config.create()?,
        })
    }

    /// Sends one record and waits for the broker's acknowledgement. When the local queue is
    /// full, waits at most `queue_wait` for room before failing with [`ProduceError::QueueFull`].
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
        queue_wait: Duration,
    ) -> Result<Delivered, ProduceError> {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        match self.inner.send(record, queue_wait).await {
            Ok(d) => Ok(Delivered {
                partition: d.partition,
                offset: d.offset,
            }),
            Err((e, _)) => Err(ProduceError::classify(e)),
        }
    }

    /// Waits up to `timeout` for every queued record to be acknowledged.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner.flush(timeout)
    }
}
