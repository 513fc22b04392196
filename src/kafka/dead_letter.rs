//! Dead letters, one shape for every role: the original bytes and key, a short reason code, a
//! bounded detail, the stage, the time, where the record was, and the input's own headers.
//!
//! A dead letter must never be a reason to stop: it is built to fit its topic by construction.
//! The detail is bounded ([`MAX_DETAIL_BYTES`], never a copy of the payload), carried headers are
//! bounded in number and length, and a dead letter that still would not fit its topic has its key
//! and then its payload cut to fit, with `dlq-truncated` saying what was cut and
//! `dlq-original-bytes` the payload's original size ([`DeadLetter::fit`]).

use std::borrow::Cow;

use crate::internal_events::{DeadLettered, emit};
use crate::kafka::consumer_loop::ProcessError;
use crate::kafka::headers;
use crate::kafka::record_size::{budget, cut_str, record_bytes};
use crate::kafka::transactional_output::TransactionalOutput;

/// Longest `dlq-detail`: enough to explain, never a copy of the payload.
pub const MAX_DETAIL_BYTES: usize = 1024;
/// Longest `dlq-reason` (reasons are short codes; webhook reasons are one sentence).
pub const MAX_REASON_BYTES: usize = 256;
/// Longest value of a header carried over from the input record.
pub const MAX_CARRIED_HEADER_BYTES: usize = 1024;
/// Most headers carried over from the input record.
pub const MAX_CARRIED_HEADERS: usize = 32;
/// Longest key kept whole when the dead letter is too large (longer keys are cut then).
pub const MAX_KEY_BYTES: usize = 1024;

/// A dead letter being built: borrowed key and payload, owned headers only where cut.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    key: Option<&'a [u8]>,
    payload: &'a [u8],
    headers: Vec<(&'a str, Cow<'a, [u8]>)>,
    cut: Vec<&'static str>,
    original_bytes: usize,
}

/// `text` bounded to `max` bytes, saying so when cut.
fn bounded(text: &str, max: usize) -> Cow<'_, [u8]> {
    if text.len() <= max {
        return Cow::Borrowed(text.as_bytes());
    }
    const MARK: &str = "… (cut)";
    let mut s = cut_str(text, max.saturating_sub(MARK.len())).to_string();
    s.push_str(MARK);
    Cow::Owned(s.into_bytes())
}

impl<'a> DeadLetter<'a> {
    /// A dead letter of `payload` (kept byte for byte while it fits) under `key`, rejected by
    /// `role` for `reason` (a short code), explained by `detail` (bounded here).
    pub fn new(
        role: &'a str,
        reason: &'a str,
        detail: &str,
        key: Option<&'a [u8]>,
        payload: &'a [u8],
    ) -> Self {
        let mut headers = vec![(headers::DLQ_REASON, bounded(reason, MAX_REASON_BYTES))];
        if !detail.is_empty() {
            headers.push((
                headers::DLQ_DETAIL,
                Cow::Owned(bounded(detail, MAX_DETAIL_BYTES).into_owned()),
            ));
        }
        headers.push((headers::DLQ_STAGE, Cow::Borrowed(role.as_bytes())));
        headers.push((
            headers::DLQ_TIME,
            Cow::Owned(headers::now_millis().to_string().into_bytes()),
        ));
        Self::with_headers(key, payload, headers)
    }

    fn with_headers(
        key: Option<&'a [u8]>,
        payload: &'a [u8],
        headers: Vec<(&'a str, Cow<'a, [u8]>)>,
    ) -> Self {
        Self {
            key,
            payload,
            headers,
            cut: Vec::new(),
            original_bytes: payload.len(),
        }
    }

    /// A dead letter whose headers the caller already built (reason, detail, stage...), to be
    /// cut to fit by [`fit`](Self::fit); the detail and reason are bounded here too.
    pub fn from_parts(
        key: Option<&'a [u8]>,
        payload: &'a [u8],
        parts: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Self {
        let headers = parts
            .into_iter()
            .map(|(k, v)| {
                let max = match k {
                    headers::DLQ_DETAIL => Some(MAX_DETAIL_BYTES),
                    headers::DLQ_REASON => Some(MAX_REASON_BYTES),
                    _ => None,
                };
                match (max, std::str::from_utf8(v)) {
                    (Some(max), Ok(text)) if v.len() > max => {
                        (k, Cow::Owned(bounded(text, max).into_owned()))
                    }
                    (Some(max), _) if v.len() > max => (k, Cow::Borrowed(&v[..max])),
                    _ => (k, Cow::Borrowed(v)),
                }
            })
            .collect();
        Self::with_headers(key, payload, headers)
    }

    /// Where the rejected record was read (consumer roles).
    pub fn from_source(mut self, topic: &'a str, partition: i32, offset: i64) -> Self {
        self.headers
            .push((headers::DLQ_SOURCE_TOPIC, Cow::Borrowed(topic.as_bytes())));
        self.headers.push((
            headers::DLQ_SOURCE_PARTITION,
            Cow::Owned(partition.to_string().into_bytes()),
        ));
        self.headers.push((
            headers::DLQ_SOURCE_OFFSET,
            Cow::Owned(offset.to_string().into_bytes()),
        ));
        self
    }

    /// Keeps the input record's own headers (received-at, request id...) for the investigation,
    /// except earlier `dlq-*` ones (a replayed dead letter must not carry two reasons); at most
    /// [`MAX_CARRIED_HEADERS`], each at most [`MAX_CARRIED_HEADER_BYTES`].
    pub fn carrying(mut self, original: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        let mut kept = 0;
        for (k, v) in original {
            if k.starts_with("dlq-") {
                continue;
            }
            if kept == MAX_CARRIED_HEADERS || k.len() > MAX_CARRIED_HEADER_BYTES {
                self.note_cut("headers");
                continue;
            }
            kept += 1;
            if v.len() > MAX_CARRIED_HEADER_BYTES {
                self.note_cut("headers");
                self.headers
                    .push((k, Cow::Borrowed(&v[..MAX_CARRIED_HEADER_BYTES])));
            } else {
                self.headers.push((k, Cow::Borrowed(v)));
            }
        }
        self
    }

    /// Adds one header of the caller's (bounded by the caller).
    pub fn header(mut self, key: &'a str, value: Cow<'a, [u8]>) -> Self {
        self.headers.push((key, value));
        self
    }

    fn note_cut(&mut self, what: &'static str) {
        if !self.cut.contains(&what) {
            self.cut.push(what);
        }
    }

    fn size(&self, extra: usize) -> usize {
        record_bytes(
            self.key,
            self.payload,
            self.headers.iter().map(|(k, v)| (*k, &v[..])),
        ) + extra
    }

    /// Makes the dead letter fit a topic whose `max.message.bytes` is `max_message_bytes`: a
    /// key over [`MAX_KEY_BYTES`] is cut, then the payload is cut to what is left; then (only
    /// for limits of a few KiB, too small to hold the dead-letter headers) the carried headers
    /// are dropped and the key and the detail shortened. Holds for any limit of 2 KiB or more
    /// (below that the pipeline's own reason, stage and source headers may not fit).
    /// Anything cut is named in `dlq-truncated`, and the payload's original size is kept in
    /// `dlq-original-bytes`.
    pub fn fit(mut self, max_message_bytes: usize) -> Self {
        let room = budget(max_message_bytes);
        // Room for the two headers a cut adds.
        let marks = headers::DLQ_TRUNCATED.len()
            + "headers,key,payload,detail".len()
            + headers::DLQ_ORIGINAL_BYTES.len()
            + 20
            + 2 * 10;
        if self.cut.is_empty() && self.size(0) <= room {
            return self;
        }
        if self.size(marks) > room
            && let Some(k) = self.key
            && k.len() > MAX_KEY_BYTES
        {
            self.key = Some(&k[..MAX_KEY_BYTES]);
            self.note_cut("key");
        }
        if self.size(marks) > room {
            let rest = self.size(marks) - self.payload.len();
            let keep = room.saturating_sub(rest).min(self.payload.len());
            self.payload = &self.payload[..keep];
            self.note_cut("payload");
        }
        if self.size(marks) > room {
            // Only the pipeline's own headers (and the source's ids) stay.
            self.headers.retain(|(k, _)| k.starts_with("dlq-"));
            self.note_cut("headers");
            let rest = self.size(marks) - self.payload.len();
            let keep = room.saturating_sub(rest).min(self.payload.len());
            self.payload = &self.payload[..keep];
        }
        // Limits smaller than a key and a detail (a few KiB): shorten those too.
        if self.size(marks) > room
            && let Some(k) = self.key
        {
            let excess = self.size(marks) - room;
            self.key = Some(&k[..k.len().saturating_sub(excess)]);
            self.note_cut("key");
        }
        if self.size(marks) > room
            && let Some(i) = self
                .headers
                .iter()
                .position(|(k, _)| *k == headers::DLQ_DETAIL)
        {
            let excess = self.size(marks) - room;
            let detail = String::from_utf8_lossy(&self.headers[i].1).into_owned();
            let keep = cut_str(&detail, detail.len().saturating_sub(excess)).to_string();
            self.headers[i].1 = Cow::Owned(keep.into_bytes());
            self.note_cut("detail");
        }
        if !self.cut.is_empty() {
            self.headers.push((
                headers::DLQ_TRUNCATED,
                Cow::Owned(self.cut.join(",").into_bytes()),
            ));
            self.headers.push((
                headers::DLQ_ORIGINAL_BYTES,
                Cow::Owned(self.original_bytes.to_string().into_bytes()),
            ));
        }
        self
    }

    /// Whether anything was cut (counted in `dead_letters_cut_total`).
    pub fn was_cut(&self) -> bool {
        !self.cut.is_empty()
    }

    /// The key to write.
    pub fn key(&self) -> Option<&[u8]> {
        self.key
    }

    /// The payload to write.
    pub fn payload(&self) -> &[u8] {
        self.payload
    }

    /// The headers to write, in order.
    pub fn headers(&self) -> Vec<(&str, &[u8])> {
        self.headers.iter().map(|(k, v)| (*k, &v[..])).collect()
    }

    /// Counts the dead letter in `dead_letters{stage,reason}` (and a cut one in
    /// `dead_letters_cut`), once it is written.
    pub fn count(&self, role: &str, reason: &str) {
        emit(DeadLettered {
            role,
            reason,
            count: 1,
            cut: self.was_cut(),
        });
    }
}

/// The input record a consumer role's dead letter preserves.
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
    pub headers: Option<&'a rdkafka::message::OwnedHeaders>,
}

/// Writes the dead letter of `raw` into the open transaction on `dlq_topic`, cut to fit that
/// topic, and counts it in `dead_letters{stage,reason}`.
pub fn send_dead_letter(
    output: &TransactionalOutput,
    dlq_topic: &str,
    role: &str,
    raw: &DeadLetterSource<'_>,
    reason: &str,
    detail: &str,
) -> Result<(), ProcessError> {
    use rdkafka::message::Headers;
    let carried: Vec<(&str, &[u8])> = raw
        .headers
        .map(|h| {
            h.iter()
                .map(|x| (x.key, x.value.unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let letter = DeadLetter::new(role, reason, detail, raw.key, raw.payload)
        .from_source(raw.topic, raw.partition, raw.offset)
        .carrying(carried)
        .fit(output.limits().max_message_bytes(dlq_topic));
    output
        .send(dlq_topic, letter.key(), letter.payload(), &letter.headers())
        .map_err(|e| ProcessError::new("produce", format!("dead letter: {e}")))?;
    letter.count(role, reason);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::record_size::fits;

    fn header<'b>(l: &'b DeadLetter<'_>, name: &str) -> Option<&'b [u8]> {
        l.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| &v[..])
    }

    #[test]
    fn a_small_dead_letter_is_kept_whole() {
        let l = DeadLetter::new("s", "bad", "why", Some(b"k"), b"{\"a\":1}")
            .from_source("t", 3, 42)
            .carrying([("received-at", &b"1"[..]), ("dlq-reason", &b"old"[..])])
            .fit(1_048_588);
        assert!(!l.was_cut());
        assert_eq!(l.payload(), b"{\"a\":1}");
        assert_eq!(l.key(), Some(&b"k"[..]));
        assert_eq!(header(&l, "dlq-reason"), Some(&b"bad"[..]));
        assert_eq!(header(&l, "dlq-source-offset"), Some(&b"42"[..]));
        assert_eq!(header(&l, "received-at"), Some(&b"1"[..]));
        assert_eq!(
            l.headers()
                .iter()
                .filter(|(k, _)| *k == "dlq-reason")
                .count(),
            1
        );
        assert_eq!(header(&l, headers::DLQ_TRUNCATED), None);
    }

    #[test]
    fn the_detail_is_bounded_and_says_so() {
        let detail = "é".repeat(1_000_000);
        let l = DeadLetter::new("s", "bad", &detail, None, b"x").fit(1_048_588);
        let d = header(&l, "dlq-detail").unwrap();
        assert!(d.len() <= MAX_DETAIL_BYTES);
        let d = std::str::from_utf8(d).unwrap();
        assert!(d.ends_with("(cut)"), "{d}");
    }

    #[test]
    fn an_oversized_dead_letter_is_cut_to_fit_with_its_original_size() {
        let limit = 1_048_588;
        let payload = vec![b'p'; limit];
        let key = vec![b'k'; 500_000];
        let big_header = vec![b'h'; 100_000];
        let many: Vec<(String, Vec<u8>)> = (0..100)
            .map(|i| (format!("h{i}"), vec![b'v'; 10]))
            .collect();
        let mut carried: Vec<(&str, &[u8])> = vec![("request-id", &big_header[..])];
        carried.extend(many.iter().map(|(k, v)| (k.as_str(), &v[..])));
        let l = DeadLetter::new("s", "bad", "detail", Some(&key), &payload)
            .from_source("t", 0, 1)
            .carrying(carried)
            .fit(limit);
        let size = record_bytes(l.key(), l.payload(), l.headers());
        assert!(fits(size, limit), "{size}");
        assert!(l.was_cut());
        assert_eq!(
            header(&l, headers::DLQ_TRUNCATED),
            Some(&b"headers,key,payload"[..])
        );
        assert_eq!(
            header(&l, headers::DLQ_ORIGINAL_BYTES),
            Some(limit.to_string().as_bytes())
        );
        assert_eq!(l.key().unwrap().len(), MAX_KEY_BYTES);
        assert!(l.payload().len() > limit * 9 / 10, "{}", l.payload().len());
        assert!(
            l.headers().len() <= 4 + 3 + MAX_CARRIED_HEADERS + 2,
            "{}",
            l.headers().len()
        );
    }

    #[test]
    fn every_limit_is_respected_even_tiny_ones() {
        let payload = vec![b'p'; 10_000];
        for limit in [600usize, 1000, 4096, 9000, 10_200, 20_000] {
            let l = DeadLetter::new("stage", "reason", "some detail", Some(b"key"), &payload)
                .from_source("topic", 0, 1)
                .carrying([("received-at", &b"123"[..])])
                .fit(limit);
            let size = record_bytes(l.key(), l.payload(), l.headers());
            assert!(fits(size, limit), "{limit}: {size}");
        }
    }
}
