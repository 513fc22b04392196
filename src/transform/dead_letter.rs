//! Dead letters of the transformers, shared by `transform-pendo` and `transform-segment` so both
//! DLQs carry the same headers: the original bytes and key, a short reason code, the full
//! detail, the stage, the time, where the record was, and the connector's own headers (kept for
//! the investigation; earlier `dlq-*` headers are dropped so a replayed dead letter does not
//! carry two reasons).

use rdkafka::message::{Headers, OwnedHeaders};

use crate::kafka::consumer_loop::ProcessError;
use crate::kafka::headers;
use crate::kafka::transactional_output::TransactionalOutput;
use crate::metrics::metrics;

/// The input record a dead letter preserves.
pub struct DeadLetterSource<'a> {
    /// Topic it was read from.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its key (kept, so the dead letter lands beside the key's other records when replayed).
    pub key: Option<&'a [u8]>,
    /// Its original bytes.
    pub payload: &'a [u8],
    /// Its headers.
    pub headers: Option<&'a OwnedHeaders>,
}

/// Writes `raw` into the open transaction on `dlq_topic` with the reason headers, and counts it
/// in `dead_letters{stage,reason}`.
pub fn send_dead_letter(
    output: &TransactionalOutput,
    dlq_topic: &str,
    stage: &str,
    raw: &DeadLetterSource<'_>,
    reason: &str,
    detail: &str,
) -> Result<(), ProcessError> {
    let partition = raw.partition.to_string();
    let offset = raw.offset.to_string();
    let now = headers::now_millis().to_string();
    let mut h: Vec<(&str, &[u8])> = vec![
        (headers::DLQ_REASON, reason.as_bytes()),
        (headers::DLQ_DETAIL, detail.as_bytes()),
        (headers::DLQ_STAGE, stage.as_bytes()),
        (headers::DLQ_TIME, now.as_bytes()),
        (headers::DLQ_SOURCE_TOPIC, raw.topic.as_bytes()),
        (headers::DLQ_SOURCE_PARTITION, partition.as_bytes()),
        (headers::DLQ_SOURCE_OFFSET, offset.as_bytes()),
    ];
    // Keep the connector's headers (received-at, request id...) for the investigation.
    if let Some(original) = raw.headers {
        for header in original.iter() {
            if !header.key.starts_with("dlq-") {
                h.push((header.key, header.value.unwrap_or_default()));
            }
        }
    }
    output
        .send(dlq_topic, raw.key, raw.payload, &h)
        .map_err(|e| ProcessError::new("produce", format!("dead letter: {e}")))?;
    metrics()
        .dead_letters
        .with_label_values(&[stage, reason])
        .inc();
    Ok(())
}
