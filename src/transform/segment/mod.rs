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

use tokio::sync::watch;

use crate::app::{RoleEnv, RoleFuture};
use crate::config::{Config, SchemaId};
use crate::idmap::BiIdMap;
use crate::idmap::follower::{follow_idmap, follower_client_config};
use crate::kafka::client_config;
use crate::kafka::topics::TopicId;
use crate::schema::IdMappingCodec;
use crate::task::OwnedTask;
use crate::transform::segment_to_pendo::SegmentToPendo;
use crate::transform::transactional_role::{
    Follower, TransformLoop, run_transform_loop, transactional_output, wait_caught_up,
};
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
            let (caught_up_tx, caught_up) = watch::channel(false);
            let follower = OwnedTask::spawn(follow_idmap(
                follower_client_config(client_config::consumer(c, &format!("{ROLE}.idmap"))),
                idmap_topic.clone(),
                IdMappingCodec::new(c.schema.wire_format(SchemaId::IdMapping)),
                ids.clone(),
                caught_up_tx,
                env.shutdown.clone(),
            ));
            let mut followers = vec![Follower::new("id mapping", follower, caught_up)];
            if !wait_caught_up(&mut followers, &env.shutdown).await? {
                return Ok(());
            }
            idmap_ready.set_ready(true);

            // 2. The transactional producer (fences a zombie instance with the same id).
            let output = transactional_output(c, ROLE, MAX_OUTPUT_RECORD_BYTES).await?;

            // 3. The loop.
            let processor = SegmentTransformProcessor::new(
                ROLE,
                mapper,
                &c.schema,
                ids,
                output.clone(),
                SegmentOutputTopics {
                    updates: c.topic_name(TopicId::CanonicalPendoUpdates),
                    segment_changes: c.topic_name(TopicId::CanonicalPendoSegmentChanges),
                    idmap: idmap_topic,
                    dlq: c.topic_name(TopicId::DlqTransformSegment),
                },
            );
            let spec = TransformLoop {
                role: ROLE,
                inputs: vec![raw],
                output,
                followers,
                ready: consumer_ready,
            };
            run_transform_loop(c, spec, processor, env.shutdown.clone()).await
        })
    })
}
