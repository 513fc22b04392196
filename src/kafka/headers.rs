//! Names of the Kafka record headers the pipeline writes. One list, so producers and the
//! consumers (transformers, DLQ inspection, tests) agree.

/// When the connector received the event: epoch milliseconds, decimal.
pub const RECEIVED_AT: &str = "received-at";
/// The HTTP request that carried the event (the sender's `X-Request-Id` or one we made).
pub const REQUEST_ID: &str = "request-id";
/// The request's `Content-Type`.
pub const CONTENT_TYPE: &str = "content-type";
/// The source's event kind, when the connector could read it (e.g. `featureClicked`).
pub const EVENT_KIND: &str = "event-kind";
/// Canonical records: the fingerprint of the mapping (and tracking plan) that made the record
/// (16 hex digits, as in `pendo_segment_mapping_info`), so any call can be traced to the
/// mapping version that produced it.
pub const MAPPING_FINGERPRINT: &str = "mapping-fingerprint";
/// Which connector produced the record (`pendo-webhook`, ...).
pub const SOURCE: &str = "source";
/// Dead letters: why the record was rejected (short, human-readable).
pub const DLQ_REASON: &str = "dlq-reason";
/// Dead letters from transformers: the full explanation (the reason is a short code).
pub const DLQ_DETAIL: &str = "dlq-detail";
/// Dead letters: the stage that rejected it.
pub const DLQ_STAGE: &str = "dlq-stage";
/// Dead letters: when it was rejected, epoch milliseconds.
pub const DLQ_TIME: &str = "dlq-time";
/// Dead letters from consumers: where the original record was.
pub const DLQ_SOURCE_TOPIC: &str = "dlq-source-topic";
/// Dead letters from consumers: its partition.
pub const DLQ_SOURCE_PARTITION: &str = "dlq-source-partition";
/// Dead letters from consumers: its offset.
pub const DLQ_SOURCE_OFFSET: &str = "dlq-source-offset";

/// Dead letters cut to fit their topic: what was cut, comma-separated (`headers`, `key`,
/// `payload`, and for topics of a few KiB `detail`). Absent when the dead letter is whole.
pub const DLQ_TRUNCATED: &str = "dlq-truncated";
/// Dead letters cut to fit their topic: the payload's original size in bytes, decimal.
pub const DLQ_ORIGINAL_BYTES: &str = "dlq-original-bytes";

/// Milliseconds since the Unix epoch, for header values.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
