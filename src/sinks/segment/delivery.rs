//! Delivering one batch until every event in it is either acknowledged by Segment or written to
//! the dead-letter topic — nothing in between is possible, which is what lets the sink commit the
//! batch's offsets afterwards.
//!
//! Per attempt: rate limit, wait out a sink-wide `Retry-After` pause, send with a fresh `sentAt`.
//! Retryable answers (network errors, timeouts, 408/410/429/460, most 5xx) and operator problems
//! (401/403, a wrong endpoint) are retried with jittered exponential backoff for as long as it
//! takes — they never drop, ack or dead-letter data; the backpressure gauge shows the wait. A 400
//! (or 413) splits the batch in halves until the offending events are alone, and those are
//! dead-lettered with Segment's answer; the rest is delivered.

use std::sync::Arc;

use super::batch::{SegmentBatch, sent_at_now};
use super::encoding::EncodedEvent;
use super::service::SegmentClient;
use crate::http::outcome::Outcome;
use crate::http::retry::Pacing;
use crate::internal_events::{FailedAttempt, SegmentDeliveryRetried, emit};
use crate::kafka::headers;
use crate::metrics::metrics;
use crate::sinks::dead_letter::SinkDeadLetters;
use crate::sinks::queue::DeliveryError;

/// What every delivery task shares.
pub struct DeliveryContext {
    /// The HTTP client.
    pub client: SegmentClient,
    /// Compress bodies.
    pub gzip: bool,
    /// Rate limit, sink-wide `Retry-After` pause and backoff of every request to Segment.
    pub pacing: Pacing,
    /// Dead letters (`dlq.segment-sink`).
    pub dead_letters: SinkDeadLetters,
    /// The consumed topic (for the dead letters' source headers).
    pub source_topic: String,
    /// Stage name.
    pub role: &'static str,
}

/// A batch's events, with the end-to-end latency inputs of each.
pub struct BatchToDeliver {
    /// The batch.
    pub batch: SegmentBatch,
    /// `origin.receivedAt` of each event (same order), for the latency histogram.
    pub received_at: Vec<Option<i64>>,
    /// Original record bytes of each event (same order), for dead letters.
    pub originals: Vec<Arc<[u8]>>,
    /// Original record keys (same order).
    pub keys: Vec<Option<Arc<[u8]>>>,
}

impl DeliveryContext {
    /// Delivers `b` completely (see the module docs). Errors only when a dead letter cannot be
    /// written.
    pub async fn deliver(&self, b: BatchToDeliver) -> Result<(), DeliveryError> {
        // Work list of (batch, indexes into b's per-event vectors), depth-first so the order of
        // events is kept when a batch is split.
        let BatchToDeliver {
            batch,
            received_at,
            originals,
            keys,
        } = b;
        let indexes: Vec<usize> = (0..batch.len()).collect();
        let mut work = vec![(batch, indexes)];
        let m = metrics();
        while let Some((batch, idx)) = work.pop() {
            let mut retry = self.pacing.start();
            loop {
                retry.attempt_of(batch.len()).await;
                let body = batch.body(&sent_at_now());
                m.segment_batch_events.observe(batch.len() as f64);
                m.segment_batch_bytes.observe(body.len() as f64);
                let r = self.client.send(body, self.gzip).await;
                m.segment_request_duration.observe(r.elapsed.as_secs_f64());
                let status = crate::http::outcome::status_label(r.status);
                m.segment_requests.with_label_values(&[&status]).inc();
                match r.outcome() {
                    Outcome::Success => {
                        m.segment_sink_backpressure.set(0);
                        let now = headers::now_millis();
                        for (e, i) in batch.events().iter().zip(&idx) {
                            m.segment_events_delivered
                                .with_label_values(&[e.call_type])
                                .inc();
                            if let Some(t) = received_at[*i] {
                                m.end_to_end_latency
                                    .observe(now.saturating_sub(t).max(0) as f64 / 1000.0);
                            }
                        }
                        break;
                    }
                    Outcome::Invalid => {
                        match batch.split() {
                            Ok((first, second)) => {
                                let (a, c) = idx.split_at(first.len());
                                // Pushed in reverse so the first half is delivered first.
                                work.push((second, c.to_vec()));
                                work.push((first, a.to_vec()));
                            }
                            // Alone and still refused: this event is the offender.
                            Err(single) => {
                                self.dead_letter(
                                    &single.events()[0],
                                    (&originals[idx[0]], keys[idx[0]].as_deref()),
                                    "rejected",
                                    &r.describe(),
                                )
                                .await?;
                            }
                        }
                        break;
                    }
                    outcome => {
                        let wait = retry.after_failure(r.retry_after);
                        emit(SegmentDeliveryRetried {
                            role: self.role,
                            attempt: FailedAttempt {
                                outcome,
                                answer: &r.describe(),
                                retry_in: wait.delay,
                                peer_asked: wait.peer_asked,
                            },
                        });
                        wait.elapse().await;
                    }
                }
            }
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        e: &EncodedEvent,
        (original, key): (&[u8], Option<&[u8]>),
        reason: &str,
        detail: &str,
    ) -> Result<(), DeliveryError> {
        self.dead_letters
            .write(
                &self.source_topic,
                (e.partition, e.offset),
                key,
                original,
                reason,
                detail,
            )
            .await
    }
}
