//! The record-size guarantee: every record a role writes fits its topic's `max.message.bytes`.
//!
//! A record Kafka refuses for its size is worse than a bad record: inside a transaction it aborts
//! everything written with it, and a consumer role that re-reads the input writes it again, so
//! one record would stop the role for good. Roles therefore measure each record before they hand
//! it to the producer ([`TopicLimits::check`]) and turn a record that would not fit into a dead
//! letter of its input, which is cut to fit ([`crate::kafka::dead_letter`]).
//!
//! The size is an upper bound of what the record costs in a batch of its own (Kafka's v2 record
//! format, largest varints) plus the worst case of lz4 on incompressible bytes, so a record that
//! [`fits`] is never refused by a topic whose limit is the one we know. The limits come from the
//! topic catalogue, which `topics apply` sets on every topic and reports drift of.

use std::sync::Arc;

use crate::config::Config;
use crate::kafka::topics::TopicId;

/// Bytes of a record batch header (Kafka's v2 format): a record in a batch of its own pays it.
const BATCH_OVERHEAD: usize = 61;
/// The largest framing of one record without its headers: length, attributes, timestamp and
/// offset deltas, key and value lengths, header count, all as the largest varints.
const RECORD_OVERHEAD: usize = 5 + 1 + 10 + 5 + 5 + 5 + 5;
/// The largest framing of one header: its key and value lengths.
const HEADER_OVERHEAD: usize = 10;

/// An upper bound of the bytes a record occupies on the wire in a batch of its own, before
/// compression.
pub fn record_bytes<'a>(
    key: Option<&[u8]>,
    payload: &[u8],
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> usize {
    let headers: usize = headers
        .into_iter()
        .map(|(k, v)| HEADER_OVERHEAD + k.len() + v.len())
        .sum();
    BATCH_OVERHEAD + RECORD_OVERHEAD + key.map_or(0, <[u8]>::len) + payload.len() + headers
}

/// What a batch of `bytes` may grow to when compressed: lz4 (the producers' codec) expands
/// incompressible input by at most 1/255 plus its frame; 1/250 and 128 bytes leave margin.
fn compressed_upper_bound(bytes: usize) -> usize {
    bytes + bytes / 250 + 128
}

/// Whether a record of [`record_bytes`] `bytes` fits a topic whose `max.message.bytes` is
/// `max_message_bytes`, whatever the compression.
pub fn fits(bytes: usize, max_message_bytes: usize) -> bool {
    compressed_upper_bound(bytes) <= max_message_bytes
}

/// The largest [`record_bytes`] that [`fits`] a topic of `max_message_bytes`.
pub fn budget(max_message_bytes: usize) -> usize {
    // Solve bytes + bytes/250 + 128 <= max, then step down the rounding.
    let mut b = max_message_bytes.saturating_sub(128) * 250 / 251;
    while b > 0 && !fits(b, max_message_bytes) {
        b -= 1;
    }
    while fits(b + 1, max_message_bytes) {
        b += 1;
    }
    b
}

/// A record that would not fit its topic: the caller dead-letters its input instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a record of {bytes} bytes does not fit topic {topic} (max.message.bytes {limit})")]
pub struct RecordTooLarge {
    /// The topic it was meant for.
    pub topic: String,
    /// Its size ([`record_bytes`]).
    pub bytes: usize,
    /// The topic's `max.message.bytes`.
    pub limit: usize,
}

/// `max.message.bytes` per topic name, resolved once from the catalogue: what every role checks
/// its records against.
#[derive(Debug, Clone, Default)]
pub struct TopicLimits {
    /// Looked up twice per record written (a pre-check and the send): a fast hash, for names
    /// that come from the configuration, not from input.
    by_name: Arc<rustc_hash::FxHashMap<String, usize>>,
}

impl TopicLimits {
    /// The limits of every catalogue topic under its configured name.
    pub fn from_config(config: &Config) -> Self {
        Self {
            by_name: Arc::new(
                TopicId::ALL
                    .iter()
                    .map(|&id| (config.topic_name(id), id.max_message_bytes()))
                    .collect(),
            ),
        }
    }

    /// The limit of `topic`; a topic outside the catalogue gets Kafka's default.
    pub fn max_message_bytes(&self, topic: &str) -> usize {
        self.by_name
            .get(topic)
            .copied()
            .unwrap_or(crate::kafka::topics::DEFAULT_MAX_MESSAGE_BYTES)
    }

    /// `Ok` if the record fits `topic`, else why not.
    pub fn check<'a>(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<(), RecordTooLarge> {
        let bytes = record_bytes(key, payload, headers);
        let limit = self.max_message_bytes(topic);
        if fits(bytes, limit) {
            Ok(())
        } else {
            Err(RecordTooLarge {
                topic: topic.to_string(),
                bytes,
                limit,
            })
        }
    }
}

/// `text` cut to at most `max` bytes on a character boundary (never a panic, never half a
/// character).
pub fn cut_str(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_the_largest_size_that_fits() {
        for limit in [1_048_588usize, 3 * 1024 * 1024, 1000, 129, 128, 0] {
            let b = budget(limit);
            if limit > 256 {
                assert!(fits(b, limit), "{limit}");
                assert!(!fits(b + 1, limit), "{limit}");
                // The margin stays small: under 1 % of the limit plus the frame.
                assert!(b > limit - limit / 100 - 256, "{limit}: {b}");
            } else {
                assert!(b == 0 || fits(b, limit));
            }
        }
    }

    #[test]
    fn record_bytes_counts_every_part() {
        let base = record_bytes(None, b"", []);
        assert_eq!(
            record_bytes(Some(b"key"), b"value", [("h", &b"vv"[..])]),
            base + 3 + 5 + HEADER_OVERHEAD + 1 + 2
        );
    }

    #[test]
    fn unknown_topics_get_kafkas_default_and_body_topics_their_own() {
        let config: Config = toml::from_str("[kafka]\nbootstrap_servers = \"b:9092\"\n").unwrap();
        let limits = TopicLimits::from_config(&config);
        assert_eq!(
            limits.max_message_bytes("not-a-catalogue-topic"),
            crate::kafka::topics::DEFAULT_MAX_MESSAGE_BYTES
        );
        assert_eq!(
            limits.max_message_bytes(&config.topic_name(TopicId::SegmentRawWebhook)),
            crate::kafka::topics::RAW_MAX_MESSAGE_BYTES as usize
        );
        let big = vec![b'x'; crate::kafka::topics::DEFAULT_MAX_MESSAGE_BYTES];
        let e = limits
            .check(
                &config.topic_name(TopicId::CanonicalPendoUpdates),
                None,
                &big,
                [],
            )
            .unwrap_err();
        assert_eq!(e.limit, crate::kafka::topics::DEFAULT_MAX_MESSAGE_BYTES);
        assert!(
            limits
                .check(
                    &config.topic_name(TopicId::DlqSegmentWebhook),
                    None,
                    &big,
                    []
                )
                .is_ok()
        );
    }

    #[test]
    fn cut_str_keeps_whole_characters() {
        let s = "aé€😀";
        for max in 0..=s.len() + 1 {
            let c = cut_str(s, max);
            assert!(c.len() <= max);
            assert!(s.starts_with(c));
        }
        assert_eq!(cut_str(s, 2), "a");
        assert_eq!(cut_str(s, 3), "aé");
    }
}
