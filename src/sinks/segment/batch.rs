//! Batches of encoded events, filled up to Segment's limits with the exact request body size.
//!
//! The body is `{"batch":[e1,e2,...],"sentAt":"2026-11-29T03:00:00.000Z"}`: items joined by
//! commas, and a `sentAt` of fixed length written per attempt. So the size of a body is known
//! before it is written — [`ENVELOPE_BYTES`] + the items + one comma between each two — and
//! [`SegmentBatch::push`] refuses the event that would take a batch over a limit.
//!
//! Who checks what: the per-event limit is [`super::encoding::encode_event`]'s (such an event
//! is dead-lettered and never reaches a batch); a batch only refuses an event because it is full
//! (send it, start the next one), or — should the per-event limit allow it, which
//! [`super::SegmentSinkConfig::validate`] prevents — because it could not fit even alone.

use std::time::{Instant, SystemTime};

use super::encoding::EncodedEvent;

const HEAD: &[u8] = b"{\"batch\":[";
const SENT_AT_KEY: &[u8] = b"],\"sentAt\":\"";
const END: &[u8] = b"\"}";

/// Length of `sentAt` as [`format_sent_at`] writes it (`2026-11-29T03:00:00.000Z`).
pub const SENT_AT_LEN: usize = 24;
/// Bytes of a body besides its items and their separating commas (the size of an empty body).
pub const ENVELOPE_BYTES: usize = HEAD.len() + SENT_AT_KEY.len() + SENT_AT_LEN + END.len();

/// `t` as Segment's `sentAt`: ISO-8601 UTC with milliseconds, always [`SENT_AT_LEN`] long.
pub fn format_sent_at(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// `sentAt` for a request about to be sent.
pub fn sent_at_now() -> String {
    format_sent_at(SystemTime::now())
}

/// The limits one batch is filled to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most events.
    pub max_events: usize,
    /// Most body bytes, envelope included.
    pub max_bytes: usize,
}

impl BatchLimits {
    /// The limits of `config`.
    pub fn from_config(config: &super::SegmentSinkConfig) -> Self {
        Self {
            max_events: config.max_batch_events,
            max_bytes: config.max_batch_bytes,
        }
    }
}

/// Why a batch refused an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The batch has `max_events` events: send it first.
    EventsFull,
    /// The event would take the body over `max_bytes`: send the batch first.
    BytesFull,
    /// The event does not fit even an empty batch: dead-letter it (a configuration error).
    TooLarge,
}

/// An event a batch did not take, handed back.
#[derive(Debug)]
pub struct Rejected {
    /// The event, unchanged.
    pub event: EncodedEvent,
    /// Why.
    pub reason: RejectReason,
}

/// Events for one `POST /v1/batch`, with the exact size of the body they make.
#[derive(Debug, Clone)]
pub struct SegmentBatch {
    limits: BatchLimits,
    events: Vec<EncodedEvent>,
    /// Sum of the items' sizes.
    item_bytes: usize,
    opened_at: Option<Instant>,
}

impl SegmentBatch {
    /// An empty batch.
    pub fn new(limits: BatchLimits) -> Self {
        Self {
            limits,
            events: Vec::new(),
            item_bytes: 0,
            opened_at: None,
        }
    }

    /// Exact body size of `n` items totalling `item_bytes`.
    fn body_size(n: usize, item_bytes: usize) -> usize {
        ENVELOPE_BYTES + item_bytes + n.saturating_sub(1)
    }

    /// Adds `event`, or hands it back if the batch would exceed a limit with it.
    pub fn push(&mut self, event: EncodedEvent) -> Result<(), Rejected> {
        let reject = |event, reason| Err(Rejected { event, reason });
        if Self::body_size(1, event.len()) > self.limits.max_bytes {
            return reject(event, RejectReason::TooLarge);
        }
        if self.events.len() >= self.limits.max_events {
            return reject(event, RejectReason::EventsFull);
        }
        if Self::body_size(self.events.len() + 1, self.item_bytes + event.len())
            > self.limits.max_bytes
        {
            return reject(event, RejectReason::BytesFull);
        }
        if self.events.is_empty() {
            self.opened_at = Some(Instant::now());
        }
        self.item_bytes += event.len();
        self.events.push(event);
        Ok(())
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Exact size of [`Self::body`], in bytes (uncompressed).
    pub fn bytes(&self) -> usize {
        Self::body_size(self.events.len(), self.item_bytes)
    }

    /// Whether no further event can be added (the count limit is reached).
    pub fn is_full(&self) -> bool {
        self.events.len() >= self.limits.max_events
    }

    /// When the first event was added (the linger deadline counts from it).
    pub fn opened_at(&self) -> Option<Instant> {
        self.opened_at
    }

    /// The limits the batch is filled to.
    pub fn limits(&self) -> BatchLimits {
        self.limits
    }

    /// The events, in the order added.
    pub fn events(&self) -> &[EncodedEvent] {
        &self.events
    }

    /// The events, in the order added, for acknowledging or dead-lettering them.
    pub fn into_events(self) -> Vec<EncodedEvent> {
        self.events
    }

    /// Takes the events out, leaving an empty batch with the same limits.
    pub fn take(&mut self) -> SegmentBatch {
        std::mem::replace(self, SegmentBatch::new(self.limits))
    }

    /// The request body with `sent_at` (from [`format_sent_at`], written per attempt). Its
    /// length is exactly [`Self::bytes`].
    pub fn body(&self, sent_at: &str) -> Vec<u8> {
        debug_assert_eq!(sent_at.len(), SENT_AT_LEN, "sentAt {sent_at:?}");
        let mut out = Vec::with_capacity(self.bytes());
        out.extend_from_slice(HEAD);
        for (i, e) in self.events.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&e.json);
        }
        out.extend_from_slice(SENT_AT_KEY);
        out.extend_from_slice(sent_at.as_bytes());
        out.extend_from_slice(END);
        out
    }

    /// Halves the batch (first half, second half), in order, to isolate the event Segment
    /// refused a batch for (400). A batch of fewer than two events is handed back: if it was
    /// refused, its one event is the offender.
    pub fn split(mut self) -> Result<(SegmentBatch, SegmentBatch), SegmentBatch> {
        if self.events.len() < 2 {
            return Err(self);
        }
        let second: Vec<EncodedEvent> = self.events.split_off(self.events.len() / 2);
        let part = |events: Vec<EncodedEvent>| SegmentBatch {
            limits: self.limits,
            item_bytes: events.iter().map(EncodedEvent::len).sum(),
            events,
            opened_at: self.opened_at,
        };
        let first = std::mem::take(&mut self.events);
        Ok((part(first), part(second)))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    /// A minimal xorshift for reproducible random sizes.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn event(i: usize, pad: usize) -> EncodedEvent {
        let json = format!(
            r#"{{"type":"track","messageId":"m-{i}","userId":"u","event":"E","properties":{{"p":"{}"}}}}"#,
            "x".repeat(pad)
        );
        EncodedEvent {
            json: json.into_bytes(),
            message_id: format!("m-{i}"),
            call_type: "track",
            partition: 0,
            offset: i as i64,
        }
    }

    const SENT_AT: &str = "2026-11-29T03:00:00.000Z";

    #[test]
    fn sent_at_has_the_fixed_length() {
        assert_eq!(SENT_AT.len(), SENT_AT_LEN);
        assert_eq!(sent_at_now().len(), SENT_AT_LEN);
        assert_eq!(
            format_sent_at(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(ENVELOPE_BYTES, 48);
    }

    #[test]
    fn empty_and_single_event_bodies_are_valid_and_exactly_sized() {
        let mut b = SegmentBatch::new(BatchLimits {
            max_events: 10,
            max_bytes: 10_000,
        });
        assert!(b.is_empty() && b.opened_at().is_none());
        assert_eq!(b.body(SENT_AT).len(), b.bytes());
        let v: Value = serde_json::from_slice(&b.body(SENT_AT)).unwrap();
        assert_eq!(v["batch"], serde_json::json!([]));
        b.push(event(1, 3)).unwrap();
        assert!(b.opened_at().is_some());
        let body = b.body(SENT_AT);
        assert_eq!(body.len(), b.bytes());
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["sentAt"], SENT_AT);
        assert_eq!(v["batch"][0]["messageId"], "m-1");
    }

    #[test]
    fn exact_size_equals_body_length_and_limits_hold_for_random_batches() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..200 {
            let limits = BatchLimits {
                max_events: 1 + rng.below(60) as usize,
                max_bytes: 2_000 + rng.below(20_000) as usize,
            };
            let mut b = SegmentBatch::new(limits);
            let mut bodies = 0;
            for i in 0..300 {
                let e = event(i, rng.below(1_500) as usize);
                match b.push(e) {
                    Ok(()) => {}
                    Err(Rejected { event, reason }) => {
                        assert_ne!(reason, RejectReason::TooLarge);
                        let full = b.take();
                        assert!(!full.is_empty());
                        if reason == RejectReason::EventsFull {
                            assert_eq!(full.len(), limits.max_events);
                        } else {
                            assert!(full.bytes() + event.len() + 1 > limits.max_bytes);
                        }
                        check(&full, limits, round);
                        bodies += 1;
                        b.push(event).unwrap();
                    }
                }
                assert!(b.bytes() <= limits.max_bytes && b.len() <= limits.max_events);
            }
            check(&b, limits, round);
            assert!(bodies > 0, "round {round} never filled a batch");
        }

        fn check(b: &SegmentBatch, limits: BatchLimits, round: usize) {
            let body = b.body(SENT_AT);
            assert_eq!(body.len(), b.bytes(), "round {round}");
            assert!(body.len() <= limits.max_bytes && b.len() <= limits.max_events);
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["batch"].as_array().unwrap().len(), b.len());
        }
    }

    #[test]
    fn a_batch_filled_to_the_byte_takes_nothing_more() {
        let e = event(0, 100);
        let limits = BatchLimits {
            max_events: 100,
            max_bytes: ENVELOPE_BYTES + 3 * e.len() + 2,
        };
        let mut b = SegmentBatch::new(limits);
        for i in 0..3 {
            b.push(event(i, 100)).unwrap();
        }
        assert_eq!(b.bytes(), limits.max_bytes);
        assert_eq!(b.body(SENT_AT).len(), limits.max_bytes);
        let r = b.push(event(3, 0)).unwrap_err();
        assert_eq!(r.reason, RejectReason::BytesFull);
        assert_eq!(r.event.message_id, "m-3", "the event is handed back");
    }

    #[test]
    fn the_event_count_limit_is_enforced() {
        let mut b = SegmentBatch::new(BatchLimits {
            max_events: 2,
            max_bytes: 500_000,
        });
        b.push(event(0, 1)).unwrap();
        assert!(!b.is_full());
        b.push(event(1, 1)).unwrap();
        assert!(b.is_full());
        assert_eq!(
            b.push(event(2, 1)).unwrap_err().reason,
            RejectReason::EventsFull
        );
    }

    #[test]
    fn an_event_that_cannot_fit_even_alone_is_too_large() {
        let big = event(0, 1_000);
        let limits = BatchLimits {
            max_events: 10,
            max_bytes: ENVELOPE_BYTES + big.len() - 1,
        };
        let mut b = SegmentBatch::new(limits);
        assert_eq!(b.push(big).unwrap_err().reason, RejectReason::TooLarge);
        b.push(event(1, 10)).unwrap();
        // Even with a non-empty batch it is TooLarge, not "full": sending first would not help.
        assert_eq!(
            b.push(event(2, 1_000)).unwrap_err().reason,
            RejectReason::TooLarge
        );
    }

    #[test]
    fn split_halves_in_order_until_one_event_is_left() {
        let mut b = SegmentBatch::new(BatchLimits {
            max_events: 100,
            max_bytes: 500_000,
        });
        for i in 0..5 {
            b.push(event(i, i * 7)).unwrap();
        }
        let opened = b.opened_at();
        let (first, second) = b.split().unwrap();
        let ids = |b: &SegmentBatch| -> Vec<String> {
            b.events().iter().map(|e| e.message_id.clone()).collect()
        };
        assert_eq!(ids(&first), ["m-0", "m-1"]);
        assert_eq!(ids(&second), ["m-2", "m-3", "m-4"]);
        assert_eq!(first.opened_at(), opened);
        for part in [&first, &second] {
            assert_eq!(part.body(SENT_AT).len(), part.bytes());
        }
        let (a, _) = first.split().unwrap();
        let single = a.split().unwrap_err();
        assert_eq!(ids(&single), ["m-0"]);
        assert_eq!(single.into_events().len(), 1);
    }
}
