//! The Pendo sink (role `pendo-sink`): `PendoMetadataUpdate`s from `canonical.pendo-updates`
//! written to Pendo's bulk metadata endpoint
//! (`POST /api/v1/metadata/{visitor|account}/{custom|agent}/value`).
//!
//! Split like the Segment sink: [`config`] (`[pendo_sink]`, endpoint from `[pendo]`),
//! [`encoding`] (checks, coalescing, request body, per-item answer), [`delivery`] (one job to
//! the end, retries, dead letters), [`segments`] and [`audience_lists`] (Pendo Segments and
//! audience lists) and [`sink`] (the processor of the shared consumer loop, `Acknowledged`
//! commits, on the queues of [`crate::sinks::queue`] shared with the Segment sink). One
//! request and its status policy are the shared Pendo client's
//! ([`crate::pendo_api::client`]); backoff, `Retry-After` and the rate limiter are the shared
//! HTTP layer's ([`crate::http`]); the dead-letter writer is [`crate::sinks::dead_letter`].

pub mod audience_lists;
pub mod config;
pub mod delivery;
pub mod encoding;
pub mod segments;
pub mod sink;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

pub use config::PendoSinkConfig;

use crate::app::{RoleEnv, RoleFuture};
use crate::config::{Config, SchemaId};
use crate::kafka::client_config;
use crate::kafka::topics::TopicId;
use crate::schema::{PendoMetadataUpdateCodec, PendoSegmentChangeCodec};

/// The role's name.
pub const ROLE: &str = "pendo-sink";

/// Builds the role; refuses to start without `[pendo]` (region and integration key), so
/// `run --all` skips it with a note where no Pendo subscription is configured.
pub fn task(config: &Config) -> anyhow::Result<impl FnOnce(RoleEnv) -> RoleFuture + Send + use<>> {
    let Some(pendo) = config.pendo.clone() else {
        anyhow::bail!(
            "pendo-sink needs [pendo] with region (us, us1, eu, jpn or au: a key works only in its \
             own region) and integration_key (with write access)"
        );
    };
    let sink = config.pendo_sink.clone();
    sink.validate().map_err(anyhow::Error::msg)?;
    let client = crate::pendo_api::client::PendoClient::with_limits(
        &pendo,
        Duration::from_millis(sink.request_timeout_ms),
        Duration::from_secs(sink.retry_after_cap_s),
    )
    .map_err(anyhow::Error::msg)?
    .with_dry_run_file(sink.dry_run_file.clone());
    let config = config.clone();
    Ok(move |env: RoleEnv| -> RoleFuture {
        Box::pin(async move {
            let c = &config;
            tracing::info!(target_url = %client.target(), "pendo-sink writes to");
            let check = client.verify_key().await;
            match check.status {
                Some(200..=299) => tracing::info!("Pendo accepted the integration key"),
                _ => tracing::error!(answer = %check.describe(),
                    "Pendo did not confirm the integration key (GET /api/v1/token/verify): check \
                     pendo.integration_key and pendo.region; writes will be retried until it works"),
            }
            let input = c.topic_name(TopicId::CanonicalPendoUpdates);
            let dlq: rdkafka::producer::FutureProducer = client_config::producer(c, ROLE)
                .create()
                .context("cannot create the dead-letter producer")?;
            // Pendo Segments: read when some audience targets one (the same configuration
            // file serves transform-segment and pendo-sink).
            let segment_topic = c.topic_name(TopicId::CanonicalPendoSegmentChanges);
            let segments = if c.transform_segment.uses_pendo_segments() {
                let state = Arc::new(segments::SegmentState::new(
                    client_config::consumer(c, &format!("{ROLE}.segment-state")),
                    c.topic_name(TopicId::StatePendoSegments),
                    dlq.clone(),
                ));
                let n = state.reload().await.map_err(anyhow::Error::msg)?;
                tracing::info!(segments = n, "Pendo Segment state read");
                Some(state)
            } else {
                None
            };
            let retry = crate::http::retry::RetryPolicy {
                initial: Duration::from_millis(sink.backoff_initial_ms),
                max: Duration::from_millis(sink.backoff_max_ms),
            };
            // Audience lists: the sink keeps each entity's current list when the transformer
            // writes deltas (the same configuration file serves both roles).
            let audience_lists = if c.transform_segment.mapping.field_mode.writes_list() {
                Some(Arc::new(audience_lists::AudienceListState::new(
                    client_config::consumer(c, &format!("{ROLE}.audience-lists")),
                    c.topic_name(TopicId::StatePendoAudienceLists),
                    dlq.clone(),
                    retry,
                )))
            } else {
                None
            };
            let ctx = Arc::new(delivery::PendoDeliveryContext {
                client,
                create: sink.create,
                pacing: crate::http::retry::Pacing::new(
                    crate::http::rate_limit::RateLimiter::new(None, sink.rate_limit_requests_per_s),
                    retry,
                ),
                dead_letters: crate::sinks::dead_letter::SinkDeadLetters {
                    producer: dlq,
                    topic: c.topic_name(TopicId::DlqPendoSink),
                    role: ROLE,
                },
                source_topic: input.clone(),
                role: ROLE,
                segments: segments.clone(),
                segment_request_visitors: sink.segment_request_visitors,
                segment_source_topic: segment_topic.clone(),
                audience_lists,
                codec: PendoMetadataUpdateCodec::new(
                    c.schema.wire_format(SchemaId::PendoMetadataUpdate),
                ),
            });
            let processor = sink::PendoSinkProcessor::new(
                ctx,
                PendoMetadataUpdateCodec::new(c.schema.wire_format(SchemaId::PendoMetadataUpdate)),
                sink.max_batch_entities,
                sink.linger(),
                sink.max_in_flight_requests,
            );
            let mut inputs = vec![input];
            let processor = if segments.is_some() {
                inputs.push(segment_topic.clone());
                processor.with_segments(sink::SegmentInput {
                    topic: segment_topic,
                    codec: PendoSegmentChangeCodec::new(
                        c.schema.wire_format(SchemaId::PendoSegmentChange),
                    ),
                    batch_visitors: sink.segment_batch_visitors,
                    linger: sink.segment_linger(),
                })
            } else {
                processor
            };
            super::run_sink_loop(c, ROLE, inputs, processor, &env).await
        })
    })
}
