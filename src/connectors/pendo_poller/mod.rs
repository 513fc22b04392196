//! The Pendo API poller (role `pendo-poller`): what webhooks do not carry, read from Pendo's
//! REST API on schedules — account snapshots (-> Segment `group` calls), visitors first seen
//! and known visitors whose selected metadata changed (-> `identify` calls), guide and poll
//! interactions Pendo does not push (-> `Guide Dismissed` / `Advanced` / `Completed`, `Poll
//! Responded`), computed usage metrics (-> identify / group traits) and usage milestones (-> `Feature Milestone Reached` tracks) onto
//! `pendo.raw.api`, and the catalogue of features, pages, guides and track types onto the
//! compacted `pendo.catalog`.
//!
//! Split by idea: [`config`] (`[pendo_poller]`), [`api`] (polite reads: rate limit, retries,
//! `Retry-After`, a refused key named), [`rows`] (queries and row -> record),
//! [`interactions`] (guideEvents/pollEvents rows), [`milestones`] (rules over aggregated
//! feature usage), [`usage`] (computed usage metrics: visitor and account traits),
//! [`state`] (what was emitted, in the compacted `state.pendo-poller`), and [`poller`] (the
//! cycles; every page is one Kafka transaction with its state).
//!
//! One poller runs per Pendo subscription: its `transactional.id` is fixed
//! (`<group_id_prefix>.pendo-poller`), so a second instance fences the first instead of
//! racing it.

pub mod api;
pub mod config;
pub mod interactions;
pub mod milestones;
pub mod poller;
pub mod rows;
pub mod state;
pub mod usage;

use std::time::Duration;

use anyhow::Context;

pub use config::PendoPollerConfig;

use crate::app::{RoleEnv, RoleFuture};
use crate::config::Config;
use crate::kafka::client_config;
use crate::kafka::metadata::ROLE_TOPIC_WAIT;
use crate::kafka::read_to_end::{StartAt, read_to_end};
use crate::kafka::record_size::TopicLimits;
use crate::kafka::topics::TopicId;
use crate::kafka::transactional_output::TransactionalOutput;
use rdkafka::Message;

/// The role's name.
pub const ROLE: &str = "pendo-poller";
/// Largest record the poller writes (a row with large metadata).
const MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;

/// Builds the role; refuses to start without `[pendo]`.
pub fn task(config: &Config) -> anyhow::Result<impl FnOnce(RoleEnv) -> RoleFuture + Send + use<>> {
    let Some(pendo) = config.pendo.clone() else {
        anyhow::bail!(
            "pendo-poller needs [pendo] with region (us, us1, eu, jpn or au: a key works only in \
             its own region) and integration_key"
        );
    };
    let cfg = config.pendo_poller.clone();
    cfg.validate().map_err(anyhow::Error::msg)?;
    let api = api::PendoApi::new(&pendo, &cfg).map_err(anyhow::Error::msg)?;
    let mut producer = client_config::transactional_producer(config, ROLE, MAX_RECORD_BYTES);
    // Like a consumer group id, it names the deployment's one poller.
    producer.set("transactional.id", config.group_id(ROLE));
    let state_reader = client_config::consumer(config, ROLE);
    let topics = poller::PollerTopics {
        raw_api: config.topic_name(TopicId::PendoRawApi),
        catalog: config.topic_name(TopicId::PendoCatalog),
        state: config.topic_name(TopicId::StatePendoPoller),
        dlq: config.topic_name(TopicId::DlqPendoPoller),
        milestones: config.topic_name(TopicId::StateMilestones),
    };
    let txn_timeout = Duration::from_millis(config.processing.transaction_call_timeout_ms);
    let limits = TopicLimits::from_config(config);
    Ok(move |env: RoleEnv| -> RoleFuture {
        Box::pin(async move {
            let ready = env.readiness.register(format!("{ROLE}:api"));
            tracing::info!(base_url = %api.base(), "pendo-poller reads from");
            // A refused key keeps the role up and not ready, trying again slowly: the refusal
            // stays visible (metrics, alert) and a fix is picked up without a restart.
            let retry = Duration::from_secs(cfg.refused_key_retry_s);
            loop {
                match api.verify_key().await {
                    Ok(()) => tracing::info!("Pendo accepted the integration key"),
                    Err(e @ api::ApiError::Unauthorized { .. }) => {
                        tracing::error!(error = %e, retry_in_s = retry.as_secs(),
                            "the poller is not ready until Pendo accepts the key");
                        tokio::select! {
                            _ = env.shutdown.wait() => return Ok(()),
                            _ = tokio::time::sleep(retry) => continue,
                        }
                    }
                    Err(e) => tracing::warn!(error = %e,
                        "could not verify the Pendo integration key; polling anyway"),
                }
                break;
            }
            // Fence an earlier instance (aborting its open transaction) before reading the
            // state, so what is read back is final.
            let limits = limits.clone();
            let out = tokio::task::spawn_blocking(move || {
                TransactionalOutput::create(&producer, limits, txn_timeout)
            })
            .await?
            .context("cannot start the poller's transactional producer")?;
            let state_topics = (topics.state.clone(), topics.milestones.clone());
            let loading = std::time::Instant::now();
            let state = tokio::task::spawn_blocking(move || {
                let mut state = state::PollerState::default();
                let mut unreadable = 0u64;
                let (cursors, milestones) = state_topics;
                read_to_end(
                    state_reader.clone(),
                    &cursors,
                    StartAt::Beginning,
                    ROLE_TOPIC_WAIT,
                    |m| {
                        let key = m.key().map(String::from_utf8_lossy).unwrap_or_default();
                        if let Err(e) = state.apply_record(&key, m.payload()) {
                            unreadable += 1;
                            tracing::warn!(error = %e, "state record ignored");
                        }
                        Ok(())
                    },
                )?;
                read_to_end(
                    state_reader,
                    &milestones,
                    StartAt::Beginning,
                    ROLE_TOPIC_WAIT,
                    |m| {
                        let key = m.key().map(String::from_utf8_lossy).unwrap_or_default();
                        state.apply_milestone_record(&key, m.payload().is_some());
                        Ok(())
                    },
                )?;
                anyhow::Ok((state, unreadable))
            })
            .await?
            .context("cannot read the poller state (state.pendo-poller)")?;
            let (state, unreadable) = state;
            let (accounts, visitors, catalog) = state.sizes();
            tracing::info!(
                accounts,
                visitors,
                catalog,
                unreadable,
                visitors_watermark = state.cursor(poller::VISITORS_CURSOR),
                load_ms = loading.elapsed().as_millis() as u64,
                "poller state loaded"
            );
            ready.set_ready(true);
            let p = poller::Poller {
                guide_steps: Default::default(),
                api,
                out,
                state,
                cfg,
                topics,
                txn_timeout,
            };
            let result = p.run(env.shutdown.clone(), &ready).await;
            ready.set_ready(false);
            result
        })
    })
}
