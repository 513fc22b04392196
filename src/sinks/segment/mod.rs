//! The Segment sink's parts: delivery of `SegmentCall`s to Segment's `POST /v1/batch`.
//!
//! Segment answers 200 to almost everything and silently drops what it cannot use (an event
//! without ids, the 2,501st event of a batch), so every limit is enforced here, before sending.
//! Who checks what:
//!
//! | check | where | on failure |
//! |---|---|---|
//! | call size without `context.library` (`transform_pendo.max_call_bytes`) | transformer | dead-lettered there |
//! | `type`, userId/anonymousId, `event`, `groupId`, `messageId`, JSON texts | [`encoding::validate_event`] | dead-lettered, never sent |
//! | event size as sent (with `context.library`) ≤ `max_event_bytes` | [`encoding::encode_event`] | dead-lettered, never sent |
//! | events per request, exact body bytes per request | [`batch::SegmentBatch::push`] | the batch is sent, the event starts the next one |
//! | anything Segment still refuses (400/413) | Segment | [`batch::SegmentBatch::split`] until the offender is alone, then dead-lettered |
//!
//! [`retry`] classifies answers and paces retries, [`rate_limit`] keeps under the workspace's
//! rate limit, [`service`] performs one request, [`delivery`] sees one batch through to the end,
//! and [`sink`] is the processor the shared consumer loop runs (role `segment-sink`).

pub mod batch;
pub mod config;
pub mod delivery;
pub mod encoding;
pub mod retry;
pub mod service;
pub mod sink;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

pub use config::SegmentSinkConfig;

use crate::app::{RoleEnv, RoleFuture};
use crate::config::{Config, SchemaId, SegmentConfig, SegmentRegion};
use crate::http::rate_limit::RateLimiter;
use crate::http::retry::{Pacing, RetryPolicy};
use crate::kafka::client_config;
use crate::kafka::topics::TopicId;
use crate::schema::SegmentCallCodec;
use crate::secret::Secret;

/// The role's name.
pub const ROLE: &str = "segment-sink";

/// Builds the role; refuses to start without `[segment]` (region and write key) unless
/// `segment_sink.dry_run_file` is set.
pub fn task(config: &Config) -> anyhow::Result<impl FnOnce(RoleEnv) -> RoleFuture + Send + use<>> {
    let sink = config.segment_sink.clone();
    let segment = match (&config.segment, &sink.dry_run_file) {
        (Some(s), _) => s.clone(),
        (None, Some(_)) => SegmentConfig {
            region: SegmentRegion::Us,
            endpoint: None,
            write_key: Secret::inline("dry-run"),
        },
        (None, None) => anyhow::bail!(
            "segment-sink needs [segment] with region (us or eu: a wrong region loses data silently) \
             and write_key, or segment_sink.dry_run_file to write the batches to a file instead"
        ),
    };
    let client = service::SegmentClient::new(&segment, &sink).map_err(anyhow::Error::msg)?;
    let config = config.clone();
    Ok(move |env: RoleEnv| -> RoleFuture {
        Box::pin(async move {
            let c = &config;
            tracing::info!(target = %client.target(), "segment-sink delivers to");
            let input = c.topic_name(TopicId::CanonicalSegmentCalls);
            let dlq = client_config::producer(c, ROLE)
                .create()
                .context("cannot create the dead-letter producer")?;
            let ctx = Arc::new(delivery::DeliveryContext {
                client,
                gzip: sink.gzip,
                pacing: Pacing::new(
                    RateLimiter::new(sink.rate_limit_events_per_s, sink.rate_limit_requests_per_s),
                    RetryPolicy {
                        initial: Duration::from_millis(sink.backoff_initial_ms),
                        max: Duration::from_millis(sink.backoff_max_ms),
                    },
                ),
                dead_letters: crate::sinks::dead_letter::SinkDeadLetters {
                    producer: dlq,
                    topic: c.topic_name(TopicId::DlqSegmentSink),
                    role: ROLE,
                },
                source_topic: input.clone(),
                role: ROLE,
            });
            let processor = sink::SegmentSinkProcessor::new(
                ctx,
                SegmentCallCodec::new(c.schema.wire_format(SchemaId::SegmentCall)),
                batch::BatchLimits::from_config(&sink),
                sink.max_event_bytes,
                sink.linger(),
                sink.max_in_flight_requests,
            );
            super::run_sink_loop(c, ROLE, vec![input], processor, &env).await
        })
    })
}
