//! The roles one binary can run (DESIGN §1), and which of them exist in this build.

use std::fmt;

use crate::app::RoleTask;
use crate::config::Config;

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
    /// `segment.raw.webhook` -> `canonical.pendo-updates`, exactly once.
    TransformSegment,
    /// `canonical.pendo-updates` -> Pendo metadata API.
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

    /// The issue that builds this role while it is not part of this build.
    fn pending_issue(self) -> Option<u32> {
        match self {
            Role::PendoWebhook => Some(3),
            Role::TransformPendo => Some(4),
            Role::SegmentSink => Some(5),
            Role::PendoPoller => Some(6),
            Role::SegmentWebhook | Role::TransformSegment | Role::PendoSink => Some(7),
        }
    }

    /// Builds the role's task, or explains why it cannot run.
    pub fn task(self, _config: &Config) -> Result<RoleTask, RoleError> {
        match self.pending_issue() {
            Some(issue) => Err(RoleError::NotBuilt { role: self, issue }),
            None => unreachable!("every role without a pending issue has a task"),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a role cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    /// The role is designed but not implemented in this build.
    #[error(
        "role `{role}` is not implemented in this build yet (tracked in issue #{issue}); nothing was started"
    )]
    NotBuilt {
        /// The role.
        role: Role,
        /// The issue building it.
        issue: u32,
    },
}
