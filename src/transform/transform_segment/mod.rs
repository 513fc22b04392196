//! Role `transform-segment`: `segment.raw.webhook` -> `canonical.pendo-updates`, exactly once.
//!
//! Segment Engage audience deliveries (identify, track `Audience Entered`/`Exited`, group)
//! become `PendoMetadataUpdate`s, and so do other identify/track/group calls that match a rule
//! of `[[transform_segment.rules]]` (others are ignored, counted); events that name a Pendo
//! visitor id next to a userId also publish that mapping to `idmap.visitor-to-user`, in the same
//! transaction. Same plumbing as `transform-pendo`: read the id mapping to its end (both
//! directions: the reverse flow needs userId -> visitorId), create the transactional producer
//! (fencing a zombie), then run the shared consumer loop in transactional mode.

pub mod config;
pub mod processor;

use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::app::{RoleEnv, RoleFuture};
use crate::config::{Config, SchemaId};
use crate::idmap::BiIdMap;
use crate::idmap::follower::{follow_idmap, follower_client_config, stopped_early};
use crate::kafka::client_config;
use crate::kafka::consumer_loop::{CommitStrategy, LoopSpec, run_consumer_loop};
use crate::kafka::record_size::TopicLimits;
use crate::kafka::topics::TopicId;
use crate::kafka::transactional_output::TransactionalOutput;
use crate::schema::{IdMappingCodec, PendoMetadataUpdateCodec, PendoSegmentChangeCodec};
use crate::transform::segment_to_pendo::SegmentToPendo;
use processor::{SegmentOutputTopics, SegmentTransformProcessor};

/// The role's name.
pub const ROLE: &str = "transform-segment";

/// `origin.source` of the updates this role writes.
pub const SOURCE: &str = "segment.webhook";

/// Largest output record: a dead letter holds a whole raw record.
const MAX_OUTPUT_RECORD_BYTES: usize = crate::config::MAX_RAW_RECORD_BYTES;

/// Builds the role; fails at once on an invalid `[transform_segment]` section.
pub fn task(config: &Config) -> anyhow::Result<impl FnOnce(RoleEnv) -> RoleFuture + Send + use<>> {
    config
        .transform_segment
        .validate()
        .map_err(anyhow::Error::msg)?;
    let rules = config
        .transform_segment
        .compiled_rules()
        .map_err(anyhow::Error::msg)?;
    let config = config.clone();
    Ok(move |env: RoleEnv| -> RoleFuture {
        Box::pin(async move {
            let c = &config;
            let raw = c.topic_name(TopicId::SegmentRawWebhook);
            let idmap_topic = c.topic_name(TopicId::IdmapVisitorToUser);
            let mapper =
                SegmentToPendo::new(c.transform_segment.mapper_settings(SOURCE)).with_rules(rules);

            // 1. The id mapping in both directions, read to its end before any event is mapped.
            // Every component is registered before any becomes ready: /readyz must not say ready
            // between the id mapping being loaded and the transactional producer being
            // initialised (a zombie with the same id is fenced only then).
            let idmap_ready = env.readiness.register(format!("{ROLE}:idmap"));
            let consumer_ready = env.readiness.register(format!("{ROLE}:consumer"));
            let ids = BiIdMap::default();
            let (caught_up_tx, mut caught_up) = watch::channel(false);
            let follower = crate::task::OwnedTask::spawn(follow_idmap(
                follower_client_config(client_config::consumer(c, &format!("{ROLE}.idmap"))),
                idmap_topic.clone(),
                IdMappingCodec::new(c.schema.wire_format(SchemaId::IdMapping)),
                ids.clone(),
                caught_up_tx,
                env.shutdown.clone(),
            ));
            tokio::select! {
                _ = env.shutdown.wait() => return Ok(()),
                failed = async { caught_up.wait_for(|v| *v).await.is_err() } => if failed { return Err(stopped_early(follower, "id mapping").await); }
            }
            idmap_ready.set_ready(true);

            // 2. The transactional producer (fences a zombie instance with the same id).
            let timeout = Duration::from_millis(c.processing.transaction_call_timeout_ms);
            let producer = client_config::transactional_producer(c, ROLE, MAX_OUTPUT_RECORD_BYTES);
            let limits = TopicLimits::from_config(c);
            let output = tokio::task::spawn_blocking(move || {
                TransactionalOutput::create(&producer, limits, timeout)
            })
            .await?
            .context("cannot initialise the transactional producer")?;

            // 3. The loop.
            let spec = LoopSpec {
                stage: ROLE,
                topics: vec![raw],
                commit_max_records: c.processing.commit_max_records,
                commit_interval: Duration::from_millis(c.processing.commit_interval_ms),
                drained: c.processing.drained(),
                strategy: CommitStrategy::Transactional {
                    output: output.clone(),
                    timeout,
                },
            };
            let processor = SegmentTransformProcessor::new(
                ROLE,
                mapper,
                PendoMetadataUpdateCodec::new(c.schema.wire_format(SchemaId::PendoMetadataUpdate)),
                PendoSegmentChangeCodec::new(c.schema.wire_format(SchemaId::PendoSegmentChange)),
                IdMappingCodec::new(c.schema.wire_format(SchemaId::IdMapping)),
                ids,
                output,
                SegmentOutputTopics {
                    updates: c.topic_name(TopicId::CanonicalPendoUpdates),
                    segment_changes: c.topic_name(TopicId::CanonicalPendoSegmentChanges),
                    idmap: idmap_topic,
                    dlq: c.topic_name(TopicId::DlqTransformSegment),
                },
            );
            let consumer_config = client_config::consumer(c, ROLE);
            let consumer_loop = run_consumer_loop(
                &consumer_config,
                spec,
                processor,
                env.shutdown.clone(),
                consumer_ready,
            );
            tokio::pin!(consumer_loop);
            let mut follower = follower;
            tokio::select! {
                r = &mut consumer_loop => r.map(|_| ()).map_err(anyhow::Error::from),
                f = &mut follower => match f {
                    // The follower stops only at shutdown: let the loop finish and commit too.
                    Ok(Ok(())) => consumer_loop.await.map(|_| ()).map_err(anyhow::Error::from),
                    Ok(Err(e)) => Err(e.context("id mapping follower failed")),
                    Err(e) => Err(anyhow::anyhow!("id mapping follower panicked: {e}")),
                },
            }
        })
    })
}
