//! Role `transform-pendo`: `pendo.raw.*` -> `canonical.segment-calls`, exactly once.
//!
//! Start-up: load and validate the mapping (errors name the line), read the id mapping and the
//! Pendo catalogue (`pendo.catalog`) to their ends (`/readyz` false until then), create the transactional producer (fencing any zombie with
//! the same `transactional.id`), then run the shared consumer loop in transactional mode: each
//! transaction holds the calls and dead letters of many input records and their offsets.

pub mod config;
pub mod processor;

use anyhow::Context;
use tokio::sync::watch;

use crate::app::{RoleEnv, RoleFuture};
use crate::config::{Config, SchemaId};
use crate::idmap::IdMapTable;
use crate::idmap::follower::{follow_compacted, follow_idmap, follower_client_config};
use crate::kafka::client_config;
use crate::kafka::topics::TopicId;
use crate::schema::{IdMappingCodec, SegmentCallCodec};
use crate::task::OwnedTask;
use crate::transform::catalog::CatalogTable;
use crate::transform::mapping::PendoMapping;
use crate::transform::pendo_to_segment::PendoToSegment;
use crate::transform::tracking_plan::TrackingPlan;
use crate::transform::transactional_role::{
    Follower, TransformLoop, run_transform_loop, transactional_output, wait_caught_up,
};
use processor::{OutputTopics, PendoTransformProcessor};

/// The role's name.
pub const ROLE: &str = "transform-pendo";

/// Largest canonical record (a Segment call is at most 32 KB as JSON; Avro is smaller) or dead
/// letter (a raw record, at most the raw topics' limit).
const MAX_OUTPUT_RECORD_BYTES: usize = crate::config::MAX_RAW_RECORD_BYTES;

/// Loads the configured mapping (or the shipped default).
pub fn load_mapping(config: &Config) -> anyhow::Result<PendoMapping> {
    Ok(match &config.transform_pendo.mapping_file {
        Some(path) => PendoMapping::load(path)?,
        None => PendoMapping::default_mapping(),
    })
}

/// Loads the configured tracking plan, if any.
pub fn load_tracking_plan(config: &Config) -> anyhow::Result<Option<TrackingPlan>> {
    Ok(TrackingPlan::from_config(
        &config.transform_pendo.tracking_plan,
    )?)
}

/// Builds the role; fails at once on an invalid mapping or tracking plan file.
pub fn task(config: &Config) -> anyhow::Result<impl FnOnce(RoleEnv) -> RoleFuture + Send + use<>> {
    let mapping = load_mapping(config).context("the mapping file is invalid")?;
    // Checked here so a bad plan stops the start at once; each (re)start compiles its own.
    load_tracking_plan(config).context("the tracking plan is invalid")?;
    let config = config.clone();
    Ok(move |env: RoleEnv| -> RoleFuture {
        Box::pin(async move {
            let c = &config;
            let raw_webhook = c.topic_name(TopicId::PendoRawWebhook);
            let raw_api = c.topic_name(TopicId::PendoRawApi);
            let catalog = CatalogTable::default();
            let mapper =
                PendoToSegment::new(mapping, c.transform_pendo.mapper_settings("pendo.webhook"))
                    .with_catalog(catalog.clone());

            // 1. The id mapping and the catalogue (names joined into calls), read to their
            // ends before any event is mapped, so a replay maps with every id and name known.
            // Every component is registered before any becomes ready: /readyz must not say ready
            // between the id mapping being loaded and the transactional producer being
            // initialised (a zombie with the same id is fenced only then).
            let idmap_ready = env.readiness.register(format!("{ROLE}:idmap"));
            let consumer_ready = env.readiness.register(format!("{ROLE}:consumer"));
            let table = IdMapTable::default();
            let (caught_up_tx, caught_up) = watch::channel(false);
            let idmap = OwnedTask::spawn(follow_idmap(
                follower_client_config(client_config::consumer(c, &format!("{ROLE}.idmap"))),
                c.topic_name(TopicId::IdmapVisitorToUser),
                IdMappingCodec::new(c.schema.wire_format(SchemaId::IdMapping)),
                table.clone(),
                caught_up_tx,
                env.shutdown.clone(),
            ));
            let (catalog_tx, catalog_caught_up) = watch::channel(false);
            let names = OwnedTask::spawn(follow_compacted(
                follower_client_config(client_config::consumer(c, &format!("{ROLE}.catalog"))),
                c.topic_name(TopicId::PendoCatalog),
                catalog,
                catalog_tx,
                env.shutdown.clone(),
            ));
            let mut followers = vec![
                Follower::new("id mapping", idmap, caught_up),
                Follower::new("catalogue", names, catalog_caught_up),
            ];
            if !wait_caught_up(&mut followers, &env.shutdown).await? {
                return Ok(());
            }
            idmap_ready.set_ready(true);

            // 2. The transactional producer (fences a zombie instance with the same id).
            let output = transactional_output(c, ROLE, MAX_OUTPUT_RECORD_BYTES).await?;

            // 3. The loop.
            let processor = PendoTransformProcessor::with_parallelism(
                ROLE,
                mapper,
                SegmentCallCodec::new(c.schema.wire_format(SchemaId::SegmentCall)),
                table,
                output.clone(),
                OutputTopics {
                    calls: c.topic_name(TopicId::CanonicalSegmentCalls),
                    dlq: c.topic_name(TopicId::DlqTransformPendo),
                    sources: vec![
                        (raw_webhook.clone(), "pendo.webhook".into()),
                        (raw_api.clone(), "pendo.api".into()),
                    ],
                },
                c.transform_pendo.parallelism(),
            )
            .with_tracking_plan(load_tracking_plan(c)?);
            // One series per process: a restart in the same process that loaded another
            // mapping must not leave the previous fingerprint looking alive.
            let info = &crate::metrics::metrics().mapping_info;
            info.reset();
            info.with_label_values(&[
                ROLE,
                processor.fingerprint(),
                &processor.mapping_fingerprint(),
                processor.plan_fingerprint().unwrap_or("none"),
            ])
            .set(1);
            tracing::info!(
                fingerprint = processor.fingerprint(),
                "mapping loaded; its calls carry this mapping-fingerprint"
            );
            let spec = TransformLoop {
                role: ROLE,
                inputs: vec![raw_webhook, raw_api],
                output,
                followers,
                ready: consumer_ready,
            };
            run_transform_loop(c, spec, processor, env.shutdown.clone()).await
        })
    })
}
