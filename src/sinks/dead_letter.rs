//! The sinks' dead letters: written and acknowledged by Kafka before the input record's offset
//! may be committed (a sink commits only what was delivered or dead-lettered).

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::kafka::dead_letter::DeadLetter;
use crate::kafka::topics::TopicId;
use crate::sinks::queue::DeliveryError;

/// Where a sink writes its dead letters, and the role they name.
pub struct SinkDeadLetters {
    /// The producer of dead letters.
    pub producer: FutureProducer,
    /// The sink's dead-letter topic (`dlq.segment-sink`, `dlq.pendo-sink`).
    pub topic: String,
    /// The sink's role (the dead letters' `dlq-stage` header, the metric's label).
    pub role: &'static str,
}

impl SinkDeadLetters {
    /// Writes one dead letter of the record at `position` (partition, offset) of
    /// `source_topic` and waits for Kafka's acknowledgement. The dead letter is cut to fit the
    /// sinks' dead-letter topics (see [`DeadLetter::fit`]), so a record can never stop a sink
    /// through its own dead letter.
    #[allow(clippy::too_many_arguments)]
    pub async fn write(
        &self,
        source_topic: &str,
        position: (i32, i64),
        key: Option<&[u8]>,
        original: &[u8],
        reason: &str,
        detail: &str,
    ) -> Result<(), DeliveryError> {
        // Both sinks' dead-letter topics have the same catalogue limit.
        let limit = TopicId::DlqSegmentSink
            .max_message_bytes()
            .min(TopicId::DlqPendoSink.max_message_bytes());
        let letter = DeadLetter::new(self.role, reason, detail, key, original)
            .from_source(source_topic, position.0, position.1)
            .fit(limit);
        let mut h = rdkafka::message::OwnedHeaders::new();
        for (k, v) in letter.headers() {
            h = h.insert(rdkafka::message::Header {
                key: k,
                value: Some(v),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic)
            .payload(letter.payload())
            .headers(h);
        if let Some(k) = letter.key() {
            record = record.key(k);
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| DeliveryError(format!("dead letter to {}: {e}", self.topic)))?;
        letter.count(self.role, reason);
        Ok(())
    }
}
