//! The roles one binary can run (README, "Architecture"), and which of them exist in this build.

use std::fmt;

use crate::app::RoleTask;
use crate::config::Config;
use crate::connectors::{pendo_webhook, segment_webhook};
use crate::kafka::topics::TopicId;

/// Command-line options that affect how roles start.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Let webhook roles run without a secret (they log a warning).
    pub insecure_no_auth: bool,
}

/// Every role of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Role {
    /// HTTP receiver of Pendo webhooks -> `pendo.raw.webhook`.
    PendoWebhook,
    /// Pendo REST API poller -> `pendo.raw.api`, `pendo.catalog`.
    PendoPoller,
    /// `pendo.raw.*` -> `canonical.segment-calls`, exactly once.
    TransformPendo,
    /// `canonical.segment-calls` -> Segment `/v1/batch`.
    SegmentSink,
    /// HTTP receiver of Segment webhooks -> `segment.raw.webhook`.
    SegmentWebhook,
    /// `segment.raw.webhook` -> `canonical.pendo-updates`, `canonical.pendo-segment-changes`
    /// and learnt ids on `idmap.visitor-to-user`, exactly once.
    TransformSegment,
    /// `canonical.pendo-updates` -> Pendo metadata API; `canonical.pendo-segment-changes` ->
    /// Pendo Segments.
    PendoSink,
}

impl Role {
    /// All roles in pipeline order.
    pub const ALL: [Role; 7] = [
        Role::PendoWebhook,
        Role::PendoPoller,
        Role::TransformPendo,
        Role::SegmentSink,
        Role::SegmentWebhook,
        Role::TransformSegment,
        Role::PendoSink,
    ];

    /// The role's name on the command line, in metrics and in consumer group ids.
    pub fn name(self) -> &'static str {
        match self {
            Role::PendoWebhook => "pendo-webhook",
            Role::PendoPoller => "pendo-poller",
            Role::TransformPendo => "transform-pendo",
            Role::SegmentSink => "segment-sink",
            Role::SegmentWebhook => "segment-webhook",
            Role::TransformSegment => "transform-segment",
            Role::PendoSink => "pendo-sink",
        }
    }

    /// The topics the role's consumer group (`<kafka.group_id_prefix>.<role>`) reads and commits
    /// offsets for; empty for roles that are no consumer group. Kept next to the roles' start-up
    /// code (`src/transform/*/mod.rs`, `src/sinks/*/mod.rs`) so `replay` resets exactly what a
    /// role consumes. The id mapping followers are not listed: they read
    /// `idmap.visitor-to-user` from the beginning at every start and commit nothing.
    pub fn consumed_topics(self) -> &'static [TopicId] {
        match self {
            Role::TransformPendo => &[TopicId::PendoRawWebhook, TopicId::PendoRawApi],
            Role::SegmentSink => &[TopicId::CanonicalSegmentCalls],
            Role::TransformSegment => &[TopicId::SegmentRawWebhook],
            Role::PendoSink => &[
                TopicId::CanonicalPendoUpdates,
                TopicId::CanonicalPendoSegmentChanges,
            ],
            Role::PendoWebhook | Role::PendoPoller | Role::SegmentWebhook => &[],
        }
    }

    /// Builds the role's task, or explains why it cannot run. The task can be started again
    /// after a transient failure (see [`crate::app`]): each later start builds the role afresh
    /// from the same configuration.
    pub fn task(self, config: &Config, options: RunOptions) -> Result<RoleTask, RoleError> {
        let invalid = |e: anyhow::Error| RoleError::Invalid {
            role: self,
            message: format!("{e:#}"),
        };
        let first = std::sync::Mutex::new(Some(self.build(config, options).map_err(invalid)?));
        let config = config.clone();
        let role = self;
        let start = move |env: crate::app::RoleEnv| -> crate::app::RoleFuture {
            let built = first
                .lock()
                .expect("role start lock")
                .take()
                .map_or_else(|| role.build(&config, options), Ok);
            match built {
                Ok(start) => start(env),
                Err(e) => {
                    Box::pin(async move { Err(e.context(format!("rebuilding role {role}"))) })
                }
            }
        };
        Ok(RoleTask {
            name: self.name().to_string(),
            start: std::sync::Arc::new(start),
        })
    }

    fn build(self, config: &Config, options: RunOptions) -> anyhow::Result<StartOnce> {
        Ok(match self {
            Role::PendoWebhook => Box::new(pendo_webhook::task(config, options.insecure_no_auth)?),
            Role::TransformPendo => Box::new(crate::transform::pendo::task(config)?),
            Role::SegmentSink => Box::new(crate::sinks::segment::task(config)?),
            Role::SegmentWebhook => {
                Box::new(segment_webhook::task(config, options.insecure_no_auth)?)
            }
            Role::TransformSegment => Box::new(crate::transform::segment::task(config)?),
            Role::PendoPoller => Box::new(crate::connectors::pendo_poller::task(config)?),
            Role::PendoSink => Box::new(crate::sinks::pendo::task(config)?),
        })
    }
}

/// One start of a role, as each role's module builds it.
type StartOnce = Box<dyn FnOnce(crate::app::RoleEnv) -> crate::app::RoleFuture + Send>;

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a role cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    /// The role's configuration does not let it start.
    #[error("role `{role}` cannot start: {message}")]
    Invalid {
        /// The role.
        role: Role,
        /// Why.
        message: String,
    },
}
