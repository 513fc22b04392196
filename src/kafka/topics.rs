//! The topic catalogue (README, "Topics") and `topics apply`: create what is missing, report drift,
//! and with `--fix` repair it.
//!
//! The catalogue is the single place that knows which topics exist, how they are keyed and which
//! cleanup policy they need; roles ask [`crate::config::Config::topic_name`] for names.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use crate::config::Config;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// `max.message.bytes` of the topics that hold whole webhook bodies: a 1 MiB body plus headers
/// does not fit Kafka's default of 1 MiB + 12 bytes.
pub const RAW_MAX_MESSAGE_BYTES: i64 = 3 * 1024 * 1024;

/// `max.message.bytes` of every other topic: Kafka's own default (broker `message.max.bytes`),
/// set on the topic explicitly so the limit the roles check their records against
/// ([`crate::kafka::record_size`]) holds whatever the broker's default is.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_048_588;

/// How a topic keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionPolicy {
    /// `cleanup.policy=delete` with this default `retention.ms`.
    Delete {
        /// Default retention in milliseconds.
        retention_ms: i64,
    },
    /// `cleanup.policy=compact`: the latest value per key is kept forever (state, mappings).
    Compact,
}

macro_rules! topic_catalogue {
    ($($variant:ident => $name:literal, $policy:expr, $doc:literal;)*) => {
        /// Every topic the pipeline uses, identified by its default name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum TopicId {
            $(#[doc = $doc] $variant,)*
        }

        impl TopicId {
            /// All topics, in catalogue order.
            pub const ALL: &'static [TopicId] = &[$(TopicId::$variant,)*];

            /// The default name (before `topics.prefix`), also the key of `topics.overrides`.
            pub fn default_name(self) -> &'static str {
                match self { $(TopicId::$variant => $name,)* }
            }

            /// The cleanup policy this topic must have.
            pub fn policy(self) -> RetentionPolicy {
                match self { $(TopicId::$variant => $policy,)* }
            }
        }
    };
}

const RAW: RetentionPolicy = RetentionPolicy::Delete {
    retention_ms: 7 * DAY_MS,
};
const DLQ: RetentionPolicy = RetentionPolicy::Delete {
    retention_ms: 30 * DAY_MS,
};

topic_catalogue! {
    PendoRawWebhook => "pendo.raw.webhook", RAW, "Pendo webhook deliveries, one record per event, original bytes.";
    PendoRawApi => "pendo.raw.api", RAW, "Rows polled from Pendo's REST API.";
    SegmentRawWebhook => "segment.raw.webhook", RAW, "Segment webhook deliveries, one record per event.";
    CanonicalSegmentCalls => "canonical.segment-calls", RAW, "Avro Segment calls ready for the Segment sink.";
    CanonicalPendoUpdates => "canonical.pendo-updates", RAW, "Avro Pendo metadata updates ready for the Pendo sink.";
    CanonicalPendoSegmentChanges => "canonical.pendo-segment-changes", RAW, "Avro Pendo Segment membership changes, keyed by audience key, ready for the Pendo sink.";
    IdmapVisitorToUser => "idmap.visitor-to-user", RetentionPolicy::Compact, "Pendo visitor id -> Segment user id.";
    PendoCatalog => "pendo.catalog", RetentionPolicy::Compact, "Feature/guide/page/track-type names from Pendo.";
    StatePendoPoller => "state.pendo-poller", RetentionPolicy::Compact, "Poller cursors and watermarks.";
    StateMilestones => "state.milestones", RetentionPolicy::Compact, "Usage milestones already emitted.";
    StatePendoSegments => "state.pendo-segments", RetentionPolicy::Compact, "Pendo Segment created per audience key: {segmentId, name}.";
    StatePendoAudienceLists => "state.pendo-audience-lists", RetentionPolicy::Compact, "Current audience list per visitor/account (key visitor:<id> / account:<id>, value {field: [keys]}), written by pendo-sink to the partition of its canonical.pendo-updates record.";
    DlqPendoWebhook => "dlq.pendo-webhook", DLQ, "Rejected Pendo webhook bodies.";
    DlqPendoPoller => "dlq.pendo-poller", DLQ, "Pendo API rows that could not be used.";
    DlqSegmentWebhook => "dlq.segment-webhook", DLQ, "Rejected Segment webhook bodies.";
    DlqTransformPendo => "dlq.transform-pendo", DLQ, "Pendo events the Pendo-to-Segment transformer could not map.";
    DlqTransformSegment => "dlq.transform-segment", DLQ, "Segment events the reverse transformer could not map.";
    DlqSegmentSink => "dlq.segment-sink", DLQ, "Segment calls that Segment rejected or that break its limits.";
    DlqPendoSink => "dlq.pendo-sink", DLQ, "Pendo metadata updates that Pendo rejected.";
}

impl TopicId {
    /// Whether records of this topic are whole webhook bodies (up to the webhook size limit).
    pub fn holds_webhook_bodies(self) -> bool {
        matches!(
            self,
            TopicId::PendoRawWebhook
                | TopicId::SegmentRawWebhook
                | TopicId::DlqPendoWebhook
                | TopicId::DlqSegmentWebhook
                | TopicId::DlqTransformPendo
                | TopicId::DlqTransformSegment
        )
    }

    /// The `max.message.bytes` the catalogue gives this topic (`topics apply` sets it): the
    /// limit every record a role writes to it is checked against.
    pub fn max_message_bytes(self) -> usize {
        if self.holds_webhook_bodies() {
            RAW_MAX_MESSAGE_BYTES as usize
        } else {
            DEFAULT_MAX_MESSAGE_BYTES
        }
    }

    /// Looks a topic up by its default name.
    pub fn from_default_name(name: &str) -> Option<TopicId> {
        TopicId::ALL
            .iter()
            .copied()
            .find(|t| t.default_name() == name)
    }
}

/// The desired state of one topic, resolved from the catalogue and the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Which catalogue entry this is.
    pub id: TopicId,
    /// Effective name.
    pub name: String,
    /// Desired partition count.
    pub partitions: i32,
    /// Replication factor for creation (-1 = broker default).
    pub replication_factor: i32,
    /// Topic configs we own and check for drift.
    pub configs: BTreeMap<&'static str, String>,
}

/// Resolves every catalogue topic against the configuration.
pub fn desired_topics(config: &Config) -> Vec<TopicSpec> {
    TopicId::ALL
        .iter()
        .map(|&id| {
            let o = config.topics.overrides.get(id.default_name());
            let mut configs = BTreeMap::new();
            match id.policy() {
                RetentionPolicy::Delete { retention_ms } => {
                    configs.insert("cleanup.policy", "delete".to_string());
                    let r = o.and_then(|o| o.retention_ms).unwrap_or(retention_ms);
                    configs.insert("retention.ms", r.to_string());
                }
                RetentionPolicy::Compact => {
                    configs.insert("cleanup.policy", "compact".to_string());
                }
            }
            configs.insert("max.message.bytes", id.max_message_bytes().to_string());
            // On a replicated cluster acks=all only means "on enough brokers" with this set.
            if let Some(m) = config.topics.effective_min_insync_replicas() {
                configs.insert("min.insync.replicas", m.to_string());
            }
            // The audience-list state is written to the partition of its input record: it
            // follows canonical.pendo-updates' partition count unless set itself.
            let follows = match id {
                TopicId::StatePendoAudienceLists => config
                    .topics
                    .overrides
                    .get(TopicId::CanonicalPendoUpdates.default_name())
                    .and_then(|o| o.partitions),
                _ => None,
            };
            TopicSpec {
                id,
                name: config.topic_name(id),
                partitions: o
                    .and_then(|o| o.partitions)
                    .or(follows)
                    .unwrap_or(config.topics.partitions),
                replication_factor: config.topics.replication_factor,
                configs,
            }
        })
        .collect()
}

/// One difference between the broker and the desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicChange {
    /// The topic does not exist.
    Create(TopicSpec),
    /// The topic has fewer partitions than desired.
    RaisePartitions {
        /// Topic name.
        topic: String,
        /// Current count.
        from: i32,
        /// Desired count.
        to: i32,
    },
    /// A topic config differs (or is not set on the topic).
    SetConfig {
        /// Topic name.
        topic: String,
        /// Config name.
        key: &'static str,
        /// Current effective value.
        actual: Option<String>,
        /// Desired value.
        desired: String,
    },
}

impl TopicChange {
    /// Whether this is drift of an existing topic (only fixed with `--fix`).
    pub fn is_drift(&self) -> bool {
        !matches!(self, TopicChange::Create(_))
    }

    fn topic(&self) -> &str {
        match self {
            TopicChange::Create(s) => &s.name,
            TopicChange::RaisePartitions { topic, .. } | TopicChange::SetConfig { topic, .. } => {
                topic
            }
        }
    }
}

impl fmt::Display for TopicChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicChange::Create(s) => {
                let cfg: Vec<String> = s.configs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(
                    f,
                    "create {} (partitions={}, replication={}, {})",
                    s.name,
                    s.partitions,
                    if s.replication_factor < 0 {
                        "broker default".to_string()
                    } else {
                        s.replication_factor.to_string()
                    },
                    cfg.join(", ")
                )
            }
            TopicChange::RaisePartitions { topic, from, to } => {
                write!(f, "drift {topic}: partitions is {from}, expected {to}")
            }
            TopicChange::SetConfig {
                topic,
                key,
                actual,
                desired,
            } => write!(
                f,
                "drift {topic}: {key} is {}, expected {desired}",
                actual.as_deref().unwrap_or("unset")
            ),
        }
    }
}

/// What `topics apply` found: changes to make and notes it cannot act on.
#[derive(Debug, Default)]
pub struct TopicPlan {
    /// Differences, in catalogue order.
    pub changes: Vec<TopicChange>,
    /// Things that differ but are never changed automatically (e.g. more partitions than asked).
    pub notes: Vec<String>,
    /// Number of topics examined.
    pub topics: usize,
}

/// Errors of topic provisioning, with the topic and broker message.
#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    /// Could not talk to the cluster.
    #[error("cannot reach Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The broker refused an operation on a topic.
    #[error("{op} failed for topic {topic}: {code}")]
    Refused {
        /// What we tried.
        op: &'static str,
        /// Topic name.
        topic: String,
        /// Broker error.
        code: RDKafkaErrorCode,
    },
}

/// Talks to the cluster for `topics apply`.
pub struct TopicAdmin {
    admin: Arc<AdminClient<DefaultClientContext>>,
    timeout: Duration,
}

impl TopicAdmin {
    /// Builds an admin client from the common client configuration.
    pub fn new(client_config: &ClientConfig, timeout: Duration) -> Result<Self, TopicsError> {
        Ok(Self {
            admin: Arc::new(client_config.create()?),
            timeout,
        })
    }

    fn options(&self) -> AdminOptions {
        AdminOptions::new().request_timeout(Some(self.timeout))
    }

    /// Current partition counts of the topics that exist.
    async fn partition_counts(&self) -> Result<HashMap<String, i32>, TopicsError> {
        let admin = self.admin.clone();
        let timeout = self.timeout;
        let md = tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(None, timeout))
            .await
            .expect("metadata task panicked")?;
        Ok(md
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| (t.name().to_string(), t.partitions().len() as i32))
            .collect())
    }

    /// Current values of every config of one topic, with whether each was set on the topic.
    async fn topic_configs(
        &self,
        topic: &str,
    ) -> Result<HashMap<String, (Option<String>, ConfigSource)>, TopicsError> {
        let results = self
            .admin
            .describe_configs([&ResourceSpecifier::Topic(topic)], &self.options())
            .await?;
        let mut out = HashMap::new();
        for r in results {
            let resource = r.map_err(|code| TopicsError::Refused {
                op: "describe configs",
                topic: topic.to_string(),
                code,
            })?;
            for e in resource.entries {
                out.insert(e.name, (e.value, e.source));
            }
        }
        Ok(out)
    }

    /// Compares the cluster with `specs`.
    pub async fn plan(&self, specs: &[TopicSpec]) -> Result<TopicPlan, TopicsError> {
        let counts = self.partition_counts().await?;
        let mut plan = TopicPlan {
            topics: specs.len(),
            ..TopicPlan::default()
        };
        for spec in specs {
            let Some(&current) = counts.get(&spec.name) else {
                plan.changes.push(TopicChange::Create(spec.clone()));
                continue;
            };
            if current < spec.partitions {
                plan.changes.push(TopicChange::RaisePartitions {
                    topic: spec.name.clone(),
                    from: current,
                    to: spec.partitions,
                });
            } else if current > spec.partitions {
                plan.notes.push(format!(
                    "{} has {current} partitions, more than the {} configured; Kafka cannot shrink a topic, leaving it",
                    spec.name, spec.partitions
                ));
            }
            let actual = self.topic_configs(&spec.name).await?;
            for (key, desired) in &spec.configs {
                let value = actual.get(*key).and_then(|(v, _)| v.clone());
                if value.as_deref() != Some(desired.as_str()) {
                    plan.changes.push(TopicChange::SetConfig {
                        topic: spec.name.clone(),
                        key,
                        actual: value,
                        desired: desired.clone(),
                    });
                }
            }
        }
        Ok(plan)
    }

    /// Creates missing topics and, when `fix` is set, repairs drift. Returns what was done.
    pub async fn apply(&self, plan: &TopicPlan, fix: bool) -> Result<Vec<String>, TopicsError> {
        let mut done = Vec::new();
        let creates: Vec<&TopicSpec> = plan
            .changes
            .iter()
            .filter_map(|c| match c {
                TopicChange::Create(s) => Some(s),
                _ => None,
            })
            .collect();
        if !creates.is_empty() {
            let new_topics: Vec<NewTopic<'_>> = creates
                .iter()
                .map(|s| {
                    s.configs.iter().fold(
                        NewTopic::new(
                            &s.name,
                            s.partitions,
                            TopicReplication::Fixed(s.replication_factor),
                        ),
                        |t, (k, v)| t.set(k, v),
                    )
                })
                .collect();
            for result in self
                .admin
                .create_topics(new_topics.iter(), &self.options())
                .await?
            {
                match result {
                    Ok(name) => done.push(format!("created {name}")),
                    // Another process created it between plan and apply: fine, it exists.
                    Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                        done.push(format!("{name} was created concurrently"))
                    }
                    Err((topic, code)) => {
                        return Err(TopicsError::Refused {
                            op: "create",
                            topic,
                            code,
                        });
                    }
                }
            }
        }
        if !fix {
            return Ok(done);
        }
        for change in plan.changes.iter().filter(|c| c.is_drift()) {
            if let TopicChange::RaisePartitions { topic, to, .. } = change {
                let np = NewPartitions::new(topic, *to as usize);
                for r in self.admin.create_partitions([&np], &self.options()).await? {
                    r.map_err(|(topic, code)| TopicsError::Refused {
                        op: "add partitions",
                        topic,
                        code,
                    })?;
                }
                done.push(format!("raised partitions of {topic} to {to}"));
            }
        }
        // AlterConfigs (non-incremental) replaces every topic-level config, so the topic's other
        // dynamic settings are read back and sent along to keep them.
        let mut by_topic: BTreeMap<&str, Vec<(&'static str, &str)>> = BTreeMap::new();
        for change in &plan.changes {
            if let TopicChange::SetConfig { key, desired, .. } = change {
                by_topic
                    .entry(change.topic())
                    .or_default()
                    .push((key, desired.as_str()));
            }
        }
        for (topic, wanted) in by_topic {
            let existing = self.topic_configs(topic).await?;
            let mut entries: BTreeMap<String, String> = existing
                .into_iter()
                .filter(|(_, (_, src))| *src == ConfigSource::DynamicTopic)
                .filter_map(|(k, (v, _))| v.map(|v| (k, v)))
                .collect();
            for (k, v) in &wanted {
                entries.insert(k.to_string(), v.to_string());
            }
            let alter = entries.iter().fold(
                AlterConfig::new(ResourceSpecifier::Topic(topic)),
                |a, (k, v)| a.set(k, v),
            );
            for r in self.admin.alter_configs([&alter], &self.options()).await? {
                r.map_err(|(_, code)| TopicsError::Refused {
                    op: "alter configs",
                    topic: topic.to_string(),
                    code,
                })?;
            }
            for (k, v) in wanted {
                done.push(format!("set {k}={v} on {topic}"));
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        toml::from_str(
            "[kafka]\nbootstrap_servers = \"x:1\"\n[topics]\nprefix = \"t.\"\n[topics.overrides.\"pendo.raw.webhook\"]\npartitions = 12\nretention_ms = 1000\n[topics.overrides.\"state.milestones\"]\nname = \"custom-milestones\"\n",
        )
        .unwrap()
    }

    #[test]
    fn state_and_idmap_topics_are_compacted_others_deleted() {
        for spec in desired_topics(&config()) {
            let name = spec.id.default_name();
            let policy = spec.configs["cleanup.policy"].as_str();
            if name.starts_with("idmap.") || name.starts_with("state.") || name == "pendo.catalog" {
                assert_eq!(policy, "compact", "{name}");
                assert!(!spec.configs.contains_key("retention.ms"));
            } else {
                assert_eq!(policy, "delete", "{name}");
            }
        }
    }

    #[test]
    fn overrides_and_prefix_apply() {
        let specs = desired_topics(&config());
        let raw = specs
            .iter()
            .find(|s| s.id == TopicId::PendoRawWebhook)
            .unwrap();
        assert_eq!(raw.name, "t.pendo.raw.webhook");
        assert_eq!(raw.partitions, 12);
        assert_eq!(raw.configs["retention.ms"], "1000");
        let m = specs
            .iter()
            .find(|s| s.id == TopicId::StateMilestones)
            .unwrap();
        assert_eq!(m.name, "custom-milestones");
        let dlq = specs
            .iter()
            .find(|s| s.id == TopicId::DlqSegmentSink)
            .unwrap();
        assert_eq!(dlq.configs["retention.ms"], (30 * DAY_MS).to_string());
    }

    fn with_topics(topics: &str) -> Config {
        toml::from_str(&format!(
            "[kafka]\nbootstrap_servers = \"x:1\"\n[topics]\n{topics}\n"
        ))
        .unwrap()
    }

    #[test]
    fn replicated_clusters_get_min_insync_replicas_on_every_topic() {
        for (topics, want) in [
            ("replication_factor = 3", "2"),
            ("replication_factor = 5", "2"),
            ("replication_factor = 5\nmin_insync_replicas = 3", "3"),
        ] {
            let specs = desired_topics(&with_topics(topics));
            assert_eq!(specs.len(), TopicId::ALL.len());
            for spec in specs {
                assert_eq!(
                    spec.configs.get("min.insync.replicas").map(String::as_str),
                    Some(want),
                    "{topics}: {}",
                    spec.name
                );
            }
        }
    }

    #[test]
    fn small_or_broker_default_replication_sets_no_min_insync_replicas() {
        for topics in [
            "",
            "replication_factor = -1",
            "replication_factor = 1",
            "replication_factor = 2",
            "min_insync_replicas = 2",
            "replication_factor = 2\nmin_insync_replicas = 1",
        ] {
            for spec in desired_topics(&with_topics(topics)) {
                assert!(
                    !spec.configs.contains_key("min.insync.replicas"),
                    "{topics:?}: {}",
                    spec.name
                );
            }
        }
    }

    #[test]
    fn min_insync_replicas_drift_is_reported_like_other_configs() {
        let spec = desired_topics(&with_topics("replication_factor = 3"))
            .into_iter()
            .next()
            .unwrap();
        let change = TopicChange::SetConfig {
            topic: spec.name.clone(),
            key: "min.insync.replicas",
            actual: Some("1".into()),
            desired: spec.configs["min.insync.replicas"].clone(),
        };
        assert!(change.is_drift());
        assert_eq!(
            change.to_string(),
            format!("drift {}: min.insync.replicas is 1, expected 2", spec.name)
        );
        let create = TopicChange::Create(spec).to_string();
        assert!(
            create.contains("replication=3") && create.contains("min.insync.replicas=2"),
            "{create}"
        );
    }

    #[test]
    fn audience_list_state_follows_the_partitions_of_pendo_updates() {
        let partitions = |c: &Config, id| {
            desired_topics(c)
                .into_iter()
                .find(|s| s.id == id)
                .unwrap()
                .partitions
        };
        let c = config();
        assert_eq!(
            partitions(&c, TopicId::StatePendoAudienceLists),
            partitions(&c, TopicId::CanonicalPendoUpdates)
        );
        let c: Config = toml::from_str(
            "[kafka]\nbootstrap_servers = \"x:1\"\n[topics.overrides.\"canonical.pendo-updates\"]\npartitions = 9\n",
        )
        .unwrap();
        assert_eq!(partitions(&c, TopicId::StatePendoAudienceLists), 9);
        let spec = desired_topics(&c)
            .into_iter()
            .find(|s| s.id == TopicId::StatePendoAudienceLists)
            .unwrap();
        assert_eq!(spec.name, "state.pendo-audience-lists");
        assert_eq!(spec.configs["cleanup.policy"], "compact");
    }
}
