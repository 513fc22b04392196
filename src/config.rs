//! Configuration: one TOML file plus `PENDO_SEGMENT_*` environment overrides.
//!
//! Loading is strict on purpose: an unknown key is an error (a typo must not silently fall back
//! to a default), a missing required value names its key, and values that would break a delivery
//! guarantee (for example `enable.idempotence=false`) are refused with the reason. Secrets are
//! [`Secret`]s and every librdkafka property that looks sensitive is redacted when printed.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::connectors::pendo_webhook::config::PendoWebhookConfig;
use crate::connectors::segment_webhook::config::SegmentWebhookConfig;
use crate::connectors::webhook::limits::WebhookLimits;
use crate::kafka::topics::TopicId;
use crate::schema::WireFormat;
use crate::secret::Secret;
use crate::transform::pendo::config::TransformPendoConfig;
use crate::transform::segment::config::TransformSegmentConfig;

/// Largest webhook event a raw topic can hold as one record (its `max.message.bytes` is
/// [`crate::kafka::topics::RAW_MAX_MESSAGE_BYTES`], which leaves room for headers): the upper
/// bound of the webhooks' `max_event_bytes`.
pub const MAX_RAW_RECORD_BYTES: usize = 2 * 1024 * 1024;

/// Upper bound of the webhooks' `max_body_bytes`. A body is split into events (one record each),
/// so it may exceed a record; this cap keeps one request's memory, and the one Kafka transaction
/// that must hold all its events, within reason (Segment's largest Actions batch, 4,000 events of
/// 32 KB, is 125 MiB).
pub const MAX_WEBHOOK_BODY_BYTES: usize = 128 * 1024 * 1024;

/// Shortest webhook secret accepted, in bytes. A shared secret (or HMAC key) is all that stands
/// between the internet and the raw topics: an empty one lets anyone in (an HMAC with an empty
/// key is computable by anyone), a short one can be guessed. `openssl rand -hex 32` gives 64.
pub const MIN_WEBHOOK_SECRET_BYTES: usize = 16;

/// The file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "pendo-segment.toml";
/// Prefix of environment overrides; `__` separates nesting levels.
pub const ENV_PREFIX: &str = "PENDO_SEGMENT_";

/// Why configuration could not be loaded; the message names the key or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file, an environment override, or a value's type was wrong.
    #[error("configuration error: {0}")]
    Load(String),
    /// Values parsed but are not acceptable together or on their own.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole effective configuration of a process.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How to reach Kafka and how to configure every client.
    pub kafka: KafkaConfig,
    /// Topic names, partition counts and retention.
    #[serde(default)]
    pub topics: TopicsConfig,
    /// Commit cadence and shutdown behaviour of every consumer role.
    #[serde(default)]
    pub processing: ProcessingConfig,
    /// The `/metrics`, `/healthz`, `/readyz` server and logging.
    #[serde(default)]
    pub observability: ObservabilityConfig,
    /// The `pendo-webhook` role.
    #[serde(default)]
    pub pendo_webhook: PendoWebhookConfig,
    /// The `segment-webhook` role.
    #[serde(default)]
    pub segment_webhook: SegmentWebhookConfig,
    /// The `transform-pendo` role.
    #[serde(default)]
    pub transform_pendo: TransformPendoConfig,
    /// The `transform-segment` role.
    #[serde(default)]
    pub transform_segment: TransformSegmentConfig,
    /// How Avro records are framed on Kafka.
    #[serde(default)]
    pub schema: SchemaConfig,
    /// The `segment-sink` role (batching, retries, limits).
    #[serde(default)]
    pub segment_sink: crate::sinks::segment::SegmentSinkConfig,
    /// The `pendo-sink` role (batching, coalescing, retries).
    #[serde(default)]
    pub pendo_sink: crate::sinks::pendo::PendoSinkConfig,
    /// The `pendo-poller` role (schedules, selected fields, API limits).
    #[serde(default)]
    pub pendo_poller: crate::connectors::pendo_poller::PendoPollerConfig,
    /// Segment's HTTP Tracking API (used by the Segment sink).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<SegmentConfig>,
    /// Pendo's REST API (used by the poller and the Pendo sink).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pendo: Option<PendoConfig>,
}

/// Kafka connection settings shared by every client of the process.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`. Required: there is no safe default for production.
    pub bootstrap_servers: String,
    /// `client.id` prefix; the role name is appended so broker logs tell roles apart.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Consumer group ids are `<group_id_prefix>.<role>`.
    #[serde(default = "default_client_id")]
    pub group_id_prefix: String,
    /// librdkafka properties for every client (SASL, SSL, timeouts...).
    #[serde(default)]
    pub properties: KafkaProperties,
    /// librdkafka properties for producers only.
    #[serde(default)]
    pub producer_properties: KafkaProperties,
    /// librdkafka properties for consumers only.
    #[serde(default)]
    pub consumer_properties: KafkaProperties,
    /// Identifies this process among the instances of a role (part of `transactional.id`).
    /// Default: `<hostname>-<pid>`. Set it to a stable name (e.g. the pod name) so that a
    /// restarted instance fences its predecessor's unfinished transactions at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Deadline for admin and metadata requests, in milliseconds.
    #[serde(default = "default_admin_timeout_ms")]
    pub admin_timeout_ms: u64,
}

fn default_client_id() -> String {
    "pendo-segment".to_string()
}
fn default_admin_timeout_ms() -> u64 {
    30_000
}

/// Topic provisioning: names, partitions, replication and per-topic overrides.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// Prepended to every default topic name (e.g. `acme.` for a shared cluster).
    #[serde(default)]
    pub prefix: String,
    /// Partitions of every topic unless overridden. Caps the parallelism of each role.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor for new topics; `-1` uses the broker's `default.replication.factor`.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// `min.insync.replicas` set on every topic when `replication_factor` is 3 or more (default
    /// [`DEFAULT_MIN_INSYNC_REPLICAS`]): with `acks=all` a write then survives the loss of a
    /// broker and needs no more replicas than can be up while one is down. Not set below 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_insync_replicas: Option<i32>,
    /// Per-topic settings keyed by the topic's default name, e.g. `[topics.overrides."pendo.raw.webhook"]`.
    #[serde(default)]
    pub overrides: BTreeMap<String, TopicOverride>,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            partitions: default_partitions(),
            replication_factor: default_replication_factor(),
            min_insync_replicas: None,
            overrides: BTreeMap::new(),
        }
    }
}

/// `min.insync.replicas` of every topic on a replicated cluster (`replication_factor` >= 3)
/// unless `topics.min_insync_replicas` says otherwise: 2 of 3 replicas must have a record before
/// it is acknowledged, so one broker may be down.
pub const DEFAULT_MIN_INSYNC_REPLICAS: i32 = 2;

impl TopicsConfig {
    /// The `min.insync.replicas` the catalogue sets on every topic: only when the replication
    /// factor is known and at least 3 (below that, or with the broker default, the broker's own
    /// `min.insync.replicas` applies, as before).
    pub fn effective_min_insync_replicas(&self) -> Option<i32> {
        (self.replication_factor >= 3).then(|| {
            self.min_insync_replicas
                .unwrap_or(DEFAULT_MIN_INSYNC_REPLICAS)
        })
    }
}

fn default_partitions() -> i32 {
    6
}
fn default_replication_factor() -> i32 {
    -1
}

/// Settings of one topic that differ from the defaults.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopicOverride {
    /// The topic's full name (the prefix is not applied to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Partition count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
    /// `retention.ms` (delete-policy topics only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_ms: Option<i64>,
}

/// How consumer roles commit and stop.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessingConfig {
    /// Commit (or commit the transaction) at least this often while records flow, in ms.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// Commit after this many records even if the interval has not passed.
    #[serde(default = "default_commit_max_records")]
    pub commit_max_records: usize,
    /// When a consumer role has read everything buffered, it commits (transformers) or sends
    /// its open batches (sinks) at once, at most this often, in ms, instead of waiting for
    /// `commit_interval_ms` / the linger: low latency at low load, full batches at saturation
    /// (the input is then never drained). 0 turns it off.
    #[serde(default = "default_drained_commit_interval_ms")]
    pub drained_commit_interval_ms: u64,
    /// After SIGTERM/SIGINT, how long in-flight work may take to finish and commit, in ms.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// librdkafka statistics interval (feeds the consumer-lag gauges), in ms; 0 disables.
    #[serde(default = "default_statistics_interval_ms")]
    pub statistics_interval_ms: u64,
    /// Deadline of each transactional call of a transformer (init, send offsets, commit,
    /// abort), in ms. Keep it below the consumer session timeout (45 s by default): a call that
    /// overruns it stops the role instead of guessing.
    #[serde(default = "default_transaction_call_timeout_ms")]
    pub transaction_call_timeout_ms: u64,
    /// Pause before a role that failed on a Kafka failover is started again in its process,
    /// in ms; doubled with each failure in a row, up to `role_restart_backoff_max_ms`.
    #[serde(default = "default_role_restart_backoff_initial_ms")]
    pub role_restart_backoff_initial_ms: u64,
    /// Longest pause between in-process restarts of a role (a cluster that stays unreachable
    /// is tried this often), in ms.
    #[serde(default = "default_role_restart_backoff_max_ms")]
    pub role_restart_backoff_max_ms: u64,
}

impl ProcessingConfig {
    /// [`LoopSpec::drained`](crate::kafka::consumer_loop::LoopSpec::drained) from
    /// `drained_commit_interval_ms` (0: off).
    pub fn drained(&self) -> Option<std::time::Duration> {
        (self.drained_commit_interval_ms > 0)
            .then(|| std::time::Duration::from_millis(self.drained_commit_interval_ms))
    }
}

impl Default for ProcessingConfig {
    fn default() -> Self {
        Self {
            commit_interval_ms: default_commit_interval_ms(),
            commit_max_records: default_commit_max_records(),
            drained_commit_interval_ms: default_drained_commit_interval_ms(),
            shutdown_grace_ms: default_shutdown_grace_ms(),
            statistics_interval_ms: default_statistics_interval_ms(),
            transaction_call_timeout_ms: default_transaction_call_timeout_ms(),
            role_restart_backoff_initial_ms: default_role_restart_backoff_initial_ms(),
            role_restart_backoff_max_ms: default_role_restart_backoff_max_ms(),
        }
    }
}

fn default_commit_interval_ms() -> u64 {
    1_000
}
fn default_commit_max_records() -> usize {
    5_000
}
fn default_drained_commit_interval_ms() -> u64 {
    50
}
fn default_shutdown_grace_ms() -> u64 {
    30_000
}
fn default_transaction_call_timeout_ms() -> u64 {
    10_000
}
fn default_statistics_interval_ms() -> u64 {
    5_000
}
fn default_role_restart_backoff_initial_ms() -> u64 {
    1_000
}
fn default_role_restart_backoff_max_ms() -> u64 {
    30_000
}

/// Operational HTTP endpoints and logging.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ObservabilityConfig {
    /// Address of the `/metrics`, `/healthz` and `/readyz` server (port 0 picks a free port).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// `text` for people, `json` for log pipelines. `--log-format` overrides it.
    #[serde(default)]
    pub log_format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `info,rdkafka=warn`. `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub log_level: String,
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            log_format: LogFormat::default(),
            log_level: default_log_level(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}
fn default_log_level() -> String {
    "info".to_string()
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// How Avro records are framed on Kafka (see `schemas/README.md`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaConfig {
    /// `single_object` (default: decodable with the files in `schemas/` alone) or `confluent`
    /// (magic 0 + schema id, for registry-aware consumers).
    #[serde(default)]
    pub format: SchemaFormat,
    /// With `confluent`: the registry ids of each schema. (A registry client that looks them up
    /// may come later; the framing does not change.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confluent_ids: Option<ConfluentSchemaIds>,
}

/// Framing of Avro records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SchemaFormat {
    /// Avro single-object encoding.
    #[default]
    SingleObject,
    /// Confluent wire format.
    Confluent,
}

/// Registry ids of the shipped schemas.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfluentSchemaIds {
    /// `segment_call.avsc`.
    pub segment_call: u32,
    /// `id_mapping.avsc`.
    pub id_mapping: u32,
    /// `pendo_metadata_update.avsc`.
    pub pendo_metadata_update: u32,
    /// `pendo_segment_change.avsc` (needed once an audience targets a Pendo Segment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pendo_segment_change: Option<u32>,
}

/// The shipped schemas, for picking a wire format.
#[derive(Debug, Clone, Copy)]
pub enum SchemaId {
    /// `SegmentCall`.
    SegmentCall,
    /// `IdMapping`.
    IdMapping,
    /// `PendoMetadataUpdate`.
    PendoMetadataUpdate,
    /// `PendoSegmentChange`.
    PendoSegmentChange,
}

impl SchemaConfig {
    /// The framing of one record type.
    pub fn wire_format(&self, schema: SchemaId) -> WireFormat {
        match (self.format, &self.confluent_ids) {
            (SchemaFormat::Confluent, Some(ids)) => {
                let schema_id = match schema {
                    SchemaId::SegmentCall => ids.segment_call,
                    SchemaId::IdMapping => ids.id_mapping,
                    SchemaId::PendoMetadataUpdate => ids.pendo_metadata_update,
                    // Validation refuses a Pendo Segment target without this id.
                    SchemaId::PendoSegmentChange => match ids.pendo_segment_change {
                        Some(id) => id,
                        None => return WireFormat::SingleObject,
                    },
                };
                WireFormat::Confluent { schema_id }
            }
            _ => WireFormat::SingleObject,
        }
    }
}

/// Segment's data region; explicit because data sent to the wrong region is silently lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SegmentRegion {
    /// `https://api.segment.io`
    Us,
    /// `https://events.eu1.segmentapis.com`
    Eu,
}

/// Segment HTTP Tracking API access.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentConfig {
    /// Required: the write key's workspace region.
    pub region: SegmentRegion,
    /// Overrides the region's base URL (Segment-compatible APIs, tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The source's write key.
    pub write_key: Secret,
}

/// Pendo data region; an integration key works only in its own region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PendoRegion {
    /// `https://app.pendo.io`
    Us,
    /// `https://us1.app.pendo.io`
    Us1,
    /// `https://app.eu.pendo.io`
    Eu,
    /// `https://app.jpn.pendo.io`
    Jpn,
    /// `https://app.au.pendo.io`
    Au,
}

/// Pendo REST API access.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PendoConfig {
    /// Required: the subscription's data region.
    pub region: PendoRegion,
    /// Overrides the region's base URL (tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Integration key (`x-pendo-integration-key`).
    pub integration_key: Secret,
}

/// A librdkafka property value: plain text, or a secret read from env/file.
#[derive(Clone)]
pub enum PropertyValue {
    /// A value written in the configuration (numbers and booleans are stringified).
    Plain(String),
    /// A value from `{ env = "..." }` or `{ file = "..." }`.
    Secret(Secret),
}

impl PropertyValue {
    /// The value handed to librdkafka.
    pub fn expose(&self) -> &str {
        match self {
            PropertyValue::Plain(v) => v,
            PropertyValue::Secret(s) => s.expose(),
        }
    }
}

/// librdkafka properties by name. Keys are normalised (`_` -> `.`, since librdkafka names never
/// contain `_` and environment variable names cannot contain `.`), and values of sensitive keys
/// are redacted whenever the map is printed.
#[derive(Clone, Default)]
pub struct KafkaProperties(pub BTreeMap<String, PropertyValue>);

/// Whether a librdkafka property holds a credential and must never be printed.
pub fn is_sensitive_property(key: &str) -> bool {
    const MARKERS: [&str; 5] = [
        "password",
        "secret",
        "jaas",
        "oauthbearer.config",
        "key.pem",
    ];
    MARKERS.iter().any(|m| key.contains(m))
}

impl KafkaProperties {
    /// Iterates `(name, value)` pairs to pass to librdkafka.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.expose()))
    }

    /// The value of one property.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(PropertyValue::expose)
    }

    fn redacted(&self) -> BTreeMap<&str, String> {
        self.0
            .iter()
            .map(|(k, v)| {
                let shown = match v {
                    PropertyValue::Secret(s) => s.to_string(),
                    PropertyValue::Plain(_) if is_sensitive_property(k) => "<redacted>".to_string(),
                    PropertyValue::Plain(p) => p.clone(),
                };
                (k.as_str(), shown)
            })
            .collect()
    }
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.redacted()).finish()
    }
}

impl Serialize for KafkaProperties {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.redacted().serialize(serializer)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawPropertyValue {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Secret(Secret),
}

impl<'de> Deserialize<'de> for KafkaProperties {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = BTreeMap::<String, RawPropertyValue>::deserialize(deserializer)?;
        let map = raw
            .into_iter()
            .map(|(k, v)| {
                let value = match v {
                    RawPropertyValue::Text(s) => PropertyValue::Plain(s),
                    RawPropertyValue::Int(i) => PropertyValue::Plain(i.to_string()),
                    RawPropertyValue::Float(f) => PropertyValue::Plain(f.to_string()),
                    RawPropertyValue::Bool(b) => PropertyValue::Plain(b.to_string()),
                    RawPropertyValue::Secret(s) => PropertyValue::Secret(s),
                };
                (k.to_ascii_lowercase().replace('_', "."), value)
            })
            .collect();
        Ok(KafkaProperties(map))
    }
}

/// librdkafka settings this project relies on for its guarantees; overriding them is refused.
const GUARANTEE_PROPERTIES: [(&str, &str, &str); 5] = [
    (
        "enable.idempotence",
        "true",
        "the producer must be idempotent so retries never duplicate or reorder records",
    ),
    (
        "acks",
        "all",
        "a record is acknowledged only when every in-sync replica has it",
    ),
    (
        "enable.auto.commit",
        "false",
        "offsets are committed only after records are processed",
    ),
    (
        "isolation.level",
        "read_committed",
        "consumers must not see records of aborted transactions",
    ),
    (
        "enable.auto.offset.store",
        "false",
        "offsets are stored only after records are processed",
    ),
];

impl Config {
    /// Loads `path` (or `pendo-segment.toml` if present when `path` is `None`), applies the
    /// `PENDO_SEGMENT_*` environment overrides, and validates the result.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, Env::prefixed(ENV_PREFIX).split("__"))
    }

    fn load_with_env(path: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        match path {
            Some(p) => {
                if !p.exists() {
                    return Err(ConfigError::Load(format!(
                        "config file {} does not exist",
                        p.display()
                    )));
                }
                figment = figment.merge(Toml::file_exact(p));
            }
            None => {
                let default = PathBuf::from(DEFAULT_CONFIG_FILE);
                if default.exists() {
                    figment = figment.merge(Toml::file_exact(default));
                }
            }
        }
        figment = figment.merge(env);
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Load(describe_figment_error(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks constraints that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_kafka()?;
        self.validate_topics()?;
        self.validate_webhooks()?;
        self.validate_credentials()?;
        self.transform_pendo
            .validate()
            .map_err(ConfigError::Invalid)?;
        self.transform_segment
            .validate()
            .map_err(ConfigError::Invalid)?;
        self.pendo_sink.validate().map_err(ConfigError::Invalid)?;
        self.pendo_poller.validate().map_err(ConfigError::Invalid)?;
        self.validate_schema()?;
        self.validate_processing()
    }

    /// `[kafka]`: the bootstrap servers, and librdkafka properties that would break the
    /// guarantees or that pendo-segment sets itself. A section step of [`Self::validate`].
    fn validate_kafka(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return invalid("kafka.bootstrap_servers is empty".into());
        }
        for (section, props) in [
            ("kafka.properties", &self.kafka.properties),
            ("kafka.producer_properties", &self.kafka.producer_properties),
            ("kafka.consumer_properties", &self.kafka.consumer_properties),
        ] {
            for (key, required, why) in GUARANTEE_PROPERTIES {
                if let Some(v) = props.get(key)
                    && !v.eq_ignore_ascii_case(required)
                    && !(key == "acks" && v == "-1")
                {
                    return invalid(format!(
                        "{section}.\"{key}\" = \"{v}\" is not allowed: it must stay \"{required}\" because {why}"
                    ));
                }
            }
            for managed in ["bootstrap.servers", "group.id", "transactional.id"] {
                if props.0.contains_key(managed) {
                    return invalid(format!(
                        "{section}.\"{managed}\" is set by pendo-segment itself; use kafka.bootstrap_servers / kafka.group_id_prefix"
                    ));
                }
            }
        }
        Ok(())
    }

    /// `[topics]`: partitions, replication, min ISR, overrides and every effective topic name.
    /// A section step of [`Self::validate`].
    fn validate_topics(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let t = &self.topics;
        if t.partitions < 1 {
            return invalid(format!(
                "topics.partitions must be >= 1, got {}",
                t.partitions
            ));
        }
        if t.replication_factor == 0 || t.replication_factor < -1 {
            return invalid(format!(
                "topics.replication_factor must be >= 1 or -1 (broker default), got {}",
                t.replication_factor
            ));
        }
        if let Some(m) = t.min_insync_replicas {
            if m < 1 {
                return invalid(format!("topics.min_insync_replicas must be >= 1, got {m}"));
            }
            // With acks=all, min.insync.replicas equal to the replication factor would make
            // every write fail while any one broker is down.
            if t.replication_factor != -1 && m >= t.replication_factor {
                return invalid(format!(
                    "topics.min_insync_replicas ({m}) must be less than topics.replication_factor ({}), or no broker could ever be down",
                    t.replication_factor
                ));
            }
        }
        for (id, o) in &t.overrides {
            if TopicId::from_default_name(id).is_none() {
                let known: Vec<&str> = TopicId::ALL.iter().map(|t| t.default_name()).collect();
                return invalid(format!(
                    "topics.overrides.\"{id}\" names no known topic; known: {}",
                    known.join(", ")
                ));
            }
            if let Some(p) = o.partitions
                && p < 1
            {
                return invalid(format!("topics.overrides.\"{id}\".partitions must be >= 1"));
            }
            if let Some(r) = o.retention_ms
                && r < -1
            {
                return invalid(format!(
                    "topics.overrides.\"{id}\".retention_ms must be >= -1 (-1 = forever)"
                ));
            }
        }
        for &id in TopicId::ALL {
            let name = self.topic_name(id);
            if let Err(why) = validate_topic_name(&name) {
                return invalid(format!(
                    "topic name \"{name}\" ({}): {why}",
                    id.default_name()
                ));
            }
        }
        Ok(())
    }

    /// `[pendo_webhook]` and `[segment_webhook]`: limits, HTTP timeouts, the signature header
    /// and secrets (checked in this order across both). A section step of [`Self::validate`].
    fn validate_webhooks(&self) -> Result<(), ConfigError> {
        let (p, s) = (&self.pendo_webhook, &self.segment_webhook);
        for (section, path, max_body_bytes, max_events_per_request, ack_timeout_ms, limits) in [
            (
                "pendo_webhook",
                &p.path,
                p.max_body_bytes,
                p.max_events_per_request,
                p.ack_timeout_ms,
                &p.limits,
            ),
            (
                "segment_webhook",
                &s.path,
                s.max_body_bytes,
                s.max_events_per_request,
                s.ack_timeout_ms,
                &s.limits,
            ),
        ] {
            validate_webhook(
                section,
                path,
                max_body_bytes,
                limits.max_event_bytes,
                limits.max_in_flight_bytes,
                &[
                    ("max_events_per_request", max_events_per_request as u64),
                    (
                        "max_in_flight_requests",
                        limits.max_in_flight_requests as u64,
                    ),
                    (
                        "max_transaction_records",
                        limits.max_transaction_records as u64,
                    ),
                    ("ack_timeout_ms", ack_timeout_ms),
                    ("transaction_producers", limits.transaction_producers as u64),
                ],
            )
            .and_then(|()| validate_http_limits(section, limits))
            .map_err(ConfigError::Invalid)?;
        }
        if self.segment_webhook.signature_header.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "segment_webhook.signature_header is empty".into(),
            ));
        }
        for (section, secrets) in [
            ("pendo_webhook", &self.pendo_webhook.secrets),
            ("segment_webhook", &self.segment_webhook.secrets),
        ] {
            for (i, secret) in secrets.iter().enumerate() {
                // The value is never printed: its length and where it came from are.
                let len = secret.expose().len();
                if len < MIN_WEBHOOK_SECRET_BYTES {
                    return Err(ConfigError::Invalid(format!(
                        "{section}.secrets[{i}] ({secret}) is {len} bytes; at least {MIN_WEBHOOK_SECRET_BYTES} are required, or senders can be forged (generate one with `openssl rand -hex 32`)"
                    )));
                }
            }
        }
        Ok(())
    }

    /// `[segment]` and `[pendo]`: their keys, when the sections are set. A section step of
    /// [`Self::validate`].
    fn validate_credentials(&self) -> Result<(), ConfigError> {
        if let Some(s) = &self.segment
            && s.write_key.expose().trim().is_empty()
        {
            return Err(ConfigError::Invalid("segment.write_key is empty".into()));
        }
        if let Some(p) = &self.pendo
            && p.integration_key.expose().trim().is_empty()
        {
            return Err(ConfigError::Invalid(
                "pendo.integration_key is empty".into(),
            ));
        }
        Ok(())
    }

    /// `[schema]`: the Confluent schema ids the enabled records need. A section step of
    /// [`Self::validate`].
    fn validate_schema(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.schema.format == SchemaFormat::Confluent && self.schema.confluent_ids.is_none() {
            return invalid(
                "schema.format = \"confluent\" needs [schema.confluent_ids] (segment_call, id_mapping, pendo_metadata_update)".into(),
            );
        }
        if self.schema.format == SchemaFormat::Confluent
            && self.transform_segment.uses_pendo_segments()
            && self
                .schema
                .confluent_ids
                .as_ref()
                .is_some_and(|i| i.pendo_segment_change.is_none())
        {
            return invalid(
                "schema.format = \"confluent\" with an audience targeting a Pendo Segment needs schema.confluent_ids.pendo_segment_change".into(),
            );
        }
        Ok(())
    }

    /// `[processing]`: commit cadence and role restart pauses. A section step of
    /// [`Self::validate`].
    fn validate_processing(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let p = &self.processing;
        if p.commit_max_records == 0 || p.commit_interval_ms == 0 {
            return invalid(
                "processing.commit_max_records and processing.commit_interval_ms must be > 0"
                    .into(),
            );
        }
        // A zero pause would restart a failing role in a tight loop against a broker that is
        // down.
        if p.role_restart_backoff_initial_ms == 0
            || p.role_restart_backoff_max_ms < p.role_restart_backoff_initial_ms
        {
            return invalid(
                "processing.role_restart_backoff_initial_ms must be > 0 and at most \
                 processing.role_restart_backoff_max_ms"
                    .into(),
            );
        }
        Ok(())
    }

    /// The effective name of a topic (override, else prefix + default name).
    pub fn topic_name(&self, id: TopicId) -> String {
        self.topics
            .overrides
            .get(id.default_name())
            .and_then(|o| o.name.clone())
            .unwrap_or_else(|| format!("{}{}", self.topics.prefix, id.default_name()))
    }

    /// This process's instance id (see [`KafkaConfig::instance_id`]).
    pub fn instance_id(&self) -> String {
        self.kafka.instance_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "host".to_string());
            format!("{host}-{}", std::process::id())
        })
    }

    /// Consumer group id of a role.
    pub fn group_id(&self, role: &str) -> String {
        format!("{}.{}", self.kafka.group_id_prefix, role)
    }

    /// The effective configuration as TOML with every secret redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// The limits every webhook section shares: a real path, positive limits, events that fit in
/// one raw record (each event is one), and bodies within [`MAX_WEBHOOK_BODY_BYTES`] (a body is
/// split into events, so it may be larger than a record).
fn validate_webhook(
    section: &str,
    path: &str,
    max_body_bytes: usize,
    max_event_bytes: usize,
    max_in_flight_bytes: usize,
    positive: &[(&str, u64)],
) -> Result<(), String> {
    if !path.starts_with('/') || path.len() < 2 {
        return Err(format!(
            "{section}.path must start with '/' and not be the root, got {path:?}"
        ));
    }
    if max_body_bytes == 0 {
        return Err(format!("{section}.max_body_bytes must be > 0"));
    }
    if max_event_bytes == 0 {
        return Err(format!("{section}.max_event_bytes must be > 0"));
    }
    if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
        return Err(format!("{section}.{key} must be > 0"));
    }
    if max_body_bytes > MAX_WEBHOOK_BODY_BYTES {
        return Err(format!(
            "{section}.max_body_bytes may be at most {MAX_WEBHOOK_BODY_BYTES} (128 MiB), got {max_body_bytes}"
        ));
    }
    if max_in_flight_bytes < max_body_bytes {
        return Err(format!(
            "{section}.max_in_flight_bytes ({max_in_flight_bytes}) must be at least max_body_bytes ({max_body_bytes}), or no body of the largest size could be accepted"
        ));
    }
    if max_event_bytes > MAX_RAW_RECORD_BYTES {
        return Err(format!(
            "{section}.max_event_bytes may be at most {MAX_RAW_RECORD_BYTES} (each event is one record; the raw topics' max.message.bytes leaves room for its headers), got {max_event_bytes}"
        ));
    }
    Ok(())
}

/// Longest accepted webhook connection deadline: one of hours protects nothing.
pub const MAX_WEBHOOK_TIMEOUT_MS: u64 = 3_600_000;
/// Most accepted webhook connections per role: far beyond one process's useful file descriptors.
pub const MAX_WEBHOOK_CONNECTIONS: usize = 1_000_000;

/// The connection limits of a webhook section: every deadline positive and at most
/// [`MAX_WEBHOOK_TIMEOUT_MS`] (zero would close every connection, hours would let stalled peers
/// stay), and a connection cap of 1 to [`MAX_WEBHOOK_CONNECTIONS`].
fn validate_http_limits(section: &str, limits: &WebhookLimits) -> Result<(), String> {
    let max_connections = limits.max_connections;
    for (key, ms) in [
        ("header_read_timeout_ms", limits.header_read_timeout_ms),
        ("body_read_timeout_ms", limits.body_read_timeout_ms),
        ("idle_timeout_ms", limits.idle_timeout_ms),
    ] {
        if ms == 0 || ms > MAX_WEBHOOK_TIMEOUT_MS {
            return Err(format!(
                "{section}.{key} must be 1 to {MAX_WEBHOOK_TIMEOUT_MS} (1 hour), got {ms}: a stalled connection must be closed, and a live one get time to send"
            ));
        }
    }
    if max_connections == 0 || max_connections > MAX_WEBHOOK_CONNECTIONS {
        return Err(format!(
            "{section}.max_connections must be 1 to {MAX_WEBHOOK_CONNECTIONS}, got {max_connections}"
        ));
    }
    Ok(())
}

fn validate_topic_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 249 {
        return Err("must be 1 to 249 characters");
    }
    if name == "." || name == ".." {
        return Err("must not be . or ..");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err("may contain only ASCII letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// figment's messages say "for key default.kafka"; users wrote no `default`, so drop it.
fn describe_figment_error(e: figment::Error) -> String {
    e.into_iter()
        .map(|err| {
            let mut msg = err.kind.to_string();
            let path: Vec<&str> = err.path.iter().map(String::as_str).collect();
            if !path.is_empty() {
                msg.push_str(&format!(" (at key `{}`)", path.join(".")));
            }
            if let Some(md) = &err.metadata {
                match &md.source {
                    Some(src) => msg.push_str(&format!(" in {src}")),
                    None => msg.push_str(&format!(" in {}", md.name)),
                }
            }
            msg
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(toml_text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml_text).unwrap();
        Config::load_with_env(
            Some(&path),
            Env::prefixed("PS_UNIT_TEST_NOTHING_").split("__"),
        )
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = load_str("[kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\n").unwrap();
        assert_eq!(c.topics.partitions, 6);
        assert_eq!(c.topic_name(TopicId::PendoRawWebhook), "pendo.raw.webhook");
        assert_eq!(
            c.group_id("transform-pendo"),
            "pendo-segment.transform-pendo"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load_str("[kafka]\nbootstrap_servers = \"x:1\"\nbootstrap_server = \"y\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bootstrap_server"), "{err}");
    }

    #[test]
    fn missing_bootstrap_is_named() {
        let err = load_str("[kafka]\nclient_id = \"a\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bootstrap_servers"), "{err}");
    }

    #[test]
    fn malformed_toml_reports_line() {
        let err = load_str("[kafka]\nbootstrap_servers = \"x:1\nfoo\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn guarantee_properties_cannot_be_weakened() {
        let err = load_str(
            "[kafka]\nbootstrap_servers = \"x:1\"\n[kafka.producer_properties]\n\"enable.idempotence\" = false\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("enable.idempotence"), "{err}");
    }

    #[test]
    fn property_keys_are_normalised_and_sensitive_values_redacted() {
        let c = load_str(
            "[kafka]\nbootstrap_servers = \"x:1\"\n[kafka.properties]\nsasl_password = \"hunter2\"\n\"socket.timeout.ms\" = 1000\n",
        )
        .unwrap();
        assert_eq!(c.kafka.properties.get("sasl.password"), Some("hunter2"));
        assert_eq!(c.kafka.properties.get("socket.timeout.ms"), Some("1000"));
        let printed = c.to_redacted_toml();
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn webhook_sections_are_validated_alike() {
        let c = load_str("[kafka]\nbootstrap_servers = \"x:1\"\n").unwrap();
        assert_eq!(c.segment_webhook.path, "/webhooks/segment");
        assert_ne!(c.segment_webhook.listen, c.pendo_webhook.listen);
        for (section, body, needle) in [
            ("segment_webhook", "path = \"/\"", "segment_webhook.path"),
            (
                "segment_webhook",
                "max_events_per_request = 0",
                "segment_webhook.max_events_per_request must be > 0",
            ),
            (
                "segment_webhook",
                "max_body_bytes = 200000000",
                "segment_webhook.max_body_bytes may be at most 134217728",
            ),
            (
                "segment_webhook",
                "max_event_bytes = 3000000",
                "segment_webhook.max_event_bytes may be at most 2097152",
            ),
            (
                "pendo_webhook",
                "max_event_bytes = 0",
                "pendo_webhook.max_event_bytes must be > 0",
            ),
            (
                "segment_webhook",
                "max_in_flight_bytes = 1048576",
                "segment_webhook.max_in_flight_bytes (1048576) must be at least max_body_bytes (33554432)",
            ),
            (
                "segment_webhook",
                "signature_header = \" \"",
                "segment_webhook.signature_header",
            ),
            (
                "pendo_webhook",
                "ack_timeout_ms = 0",
                "pendo_webhook.ack_timeout_ms must be > 0",
            ),
            (
                "processing",
                "role_restart_backoff_initial_ms = 0",
                "processing.role_restart_backoff_initial_ms must be > 0",
            ),
            (
                "processing",
                "role_restart_backoff_initial_ms = 5000\nrole_restart_backoff_max_ms = 1000",
                "at most processing.role_restart_backoff_max_ms",
            ),
        ] {
            let err = load_str(&format!(
                "[kafka]\nbootstrap_servers = \"x:1\"\n[{section}]\n{body}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains(needle), "{body}: {err}");
        }
        let err = load_str(
            "[kafka]\nbootstrap_servers = \"x:1\"\n[segment_webhook]\nauth_scheme = \"Bearer\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("auth_scheme"), "{err}");
    }

    #[test]
    fn webhook_connection_limits_have_defaults_and_are_validated() {
        let c = load_str("[kafka]\nbootstrap_servers = \"x:1\"\n").unwrap();
        for limits in [
            c.pendo_webhook.limits.http(),
            c.segment_webhook.limits.http(),
        ] {
            assert_eq!(
                limits,
                crate::connectors::webhook::listener::HttpLimits {
                    header_read_timeout: std::time::Duration::from_secs(10),
                    body_read_timeout: std::time::Duration::from_secs(30),
                    idle_timeout: std::time::Duration::from_secs(75),
                    max_connections: 2048,
                }
            );
        }
        let c = load_str(
            "[kafka]\nbootstrap_servers = \"x:1\"\n[segment_webhook]\nheader_read_timeout_ms = 1500\nbody_read_timeout_ms = 2000\nidle_timeout_ms = 3000\nmax_connections = 7\n",
        )
        .unwrap();
        let l = c.segment_webhook.limits.http();
        assert_eq!(l.header_read_timeout.as_millis(), 1500);
        assert_eq!(l.body_read_timeout.as_millis(), 2000);
        assert_eq!(l.idle_timeout.as_millis(), 3000);
        assert_eq!(l.max_connections, 7);
        assert_eq!(c.pendo_webhook.limits.max_connections, 2048);
        for (section, body, needle) in [
            (
                "pendo_webhook",
                "header_read_timeout_ms = 0",
                "pendo_webhook.header_read_timeout_ms must be 1 to 3600000",
            ),
            (
                "segment_webhook",
                "body_read_timeout_ms = 0",
                "segment_webhook.body_read_timeout_ms must be 1 to 3600000",
            ),
            (
                "segment_webhook",
                "idle_timeout_ms = 3600001",
                "segment_webhook.idle_timeout_ms must be 1 to 3600000 (1 hour), got 3600001",
            ),
            (
                "pendo_webhook",
                "max_connections = 0",
                "pendo_webhook.max_connections must be 1 to 1000000, got 0",
            ),
            (
                "segment_webhook",
                "max_connections = 1000001",
                "segment_webhook.max_connections must be 1 to 1000000",
            ),
        ] {
            let err = load_str(&format!(
                "[kafka]\nbootstrap_servers = \"x:1\"\n[{section}]\n{body}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains(needle), "{body}: {err}");
        }
        // The bounds themselves are accepted.
        load_str(
            "[kafka]\nbootstrap_servers = \"x:1\"\n[pendo_webhook]\nheader_read_timeout_ms = 1\nbody_read_timeout_ms = 3600000\nidle_timeout_ms = 1\nmax_connections = 1000000\n",
        )
        .unwrap();
    }

    #[test]
    fn shared_webhook_limits_sit_in_each_section_and_unknown_keys_stay_refused() {
        let c = load_str(
            "[kafka]\nbootstrap_servers = \"x:1\"\n[pendo_webhook]\nlinger_ms = 9\nmax_body_bytes = 2048\n[segment_webhook]\nmax_transaction_records = 17\n",
        )
        .unwrap();
        assert_eq!(c.pendo_webhook.limits.linger_ms, 9);
        assert_eq!(c.pendo_webhook.max_body_bytes, 2048);
        assert_eq!(c.segment_webhook.limits.max_transaction_records, 17);
        assert_eq!(c.segment_webhook.limits.linger_ms, 3);
        // The sender-specific defaults stay per section.
        assert_eq!(c.segment_webhook.max_events_per_request, 4_000);
        assert_eq!(c.pendo_webhook.max_events_per_request, 10_000);
        for section in ["pendo_webhook", "segment_webhook"] {
            let err = load_str(&format!(
                "[kafka]\nbootstrap_servers = \"x:1\"\n[{section}]\nmax_conections = 5\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains("max_conections"), "{section}: {err}");
        }
        // Printed back at the section's level, as written.
        let printed = toml::to_string(&c.pendo_webhook).unwrap();
        assert!(printed.contains("\nlinger_ms = 9\n"), "{printed}");
        assert!(!printed.contains("limits"), "{printed}");
    }

    #[test]
    fn webhook_bodies_may_exceed_a_record_but_events_may_not() {
        let c = load_str(
            "[kafka]
bootstrap_servers = \"x:1\"\n",
        )
        .unwrap();
        // Actions batches are far larger than one record; each event is one.
        assert_eq!(c.segment_webhook.max_body_bytes, 32 * 1024 * 1024);
        assert_eq!(
            c.segment_webhook.limits.max_event_bytes,
            MAX_RAW_RECORD_BYTES
        );
        assert_eq!(c.pendo_webhook.max_body_bytes, 1024 * 1024);
        assert_eq!(c.pendo_webhook.limits.max_event_bytes, MAX_RAW_RECORD_BYTES);
        let c = load_str(
            "[kafka]\nbootstrap_servers = \"x:1\"\n[segment_webhook]\nmax_body_bytes = 134217728\nmax_event_bytes = 32768\n[pendo_webhook]\nmax_body_bytes = 8388608\n",
        )
        .unwrap();
        assert_eq!(c.segment_webhook.max_body_bytes, MAX_WEBHOOK_BODY_BYTES);
        assert_eq!(c.segment_webhook.limits.max_event_bytes, 32768);
        assert_eq!(c.pendo_webhook.max_body_bytes, 8 * 1024 * 1024);
    }

    #[test]
    fn webhook_secrets_are_never_printed() {
        let c = load_str(
            "[kafka]\nbootstrap_servers = \"x:1\"\n[segment_webhook]\nsecrets = [\"sig-secret-1-of-rotation\", \"sig-secret-2-of-rotation\"]\n",
        )
        .unwrap();
        assert_eq!(c.segment_webhook.secrets.len(), 2);
        let printed = c.to_redacted_toml();
        assert!(printed.contains("[segment_webhook]"), "{printed}");
        assert!(!printed.contains("sig-secret"), "{printed}");
        assert!(!format!("{c:?}").contains("sig-secret"));
    }

    #[test]
    fn min_insync_replicas_is_validated_against_the_replication_factor() {
        let load = |topics: &str| {
            load_str(&format!(
                "[kafka]\nbootstrap_servers = \"x:1\"\n[topics]\n{topics}\n"
            ))
        };
        for (topics, error) in [
            ("replication_factor = 3\nmin_insync_replicas = 0", ">= 1"),
            ("min_insync_replicas = -1", ">= 1"),
            (
                "replication_factor = 3\nmin_insync_replicas = 3",
                "less than",
            ),
            (
                "replication_factor = 2\nmin_insync_replicas = 2",
                "less than",
            ),
        ] {
            let err = load(topics).unwrap_err().to_string();
            assert!(
                err.contains("topics.min_insync_replicas") && err.contains(error),
                "{topics}: {err}"
            );
        }
        let c = load("replication_factor = 5\nmin_insync_replicas = 3").unwrap();
        assert_eq!(c.topics.effective_min_insync_replicas(), Some(3));
        // The broker default replication factor is unknown: only >= 1 is checked, nothing is set.
        let c = load("min_insync_replicas = 4").unwrap();
        assert_eq!(c.topics.effective_min_insync_replicas(), None);
        let c = load("replication_factor = 3").unwrap();
        assert_eq!(c.topics.effective_min_insync_replicas(), Some(2));
        assert!(!c.to_redacted_toml().contains("min_insync_replicas"));
    }

    #[test]
    fn unknown_topic_override_lists_known_topics() {
        let err = load_str(
            "[kafka]\nbootstrap_servers = \"x:1\"\n[topics.overrides.\"pendo.raw.webhooks\"]\npartitions = 3\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("pendo.raw.webhook,"), "{err}");
    }

    #[test]
    fn empty_or_short_webhook_secrets_are_refused_naming_the_setting_not_the_value() {
        for section in ["pendo_webhook", "segment_webhook"] {
            for (secrets, index, len) in [
                (r#"[""]"#, 0, 0),
                (r#"["tiny-secret-x"]"#, 0, 13),
                (r#"["a-long-enough-secret", "tiny-secret-x"]"#, 1, 13),
            ] {
                let err = load_str(&format!(
                    "[kafka]\nbootstrap_servers = \"x:1\"\n[{section}]\nsecrets = {secrets}\n"
                ))
                .unwrap_err()
                .to_string();
                assert!(
                    err.contains(&format!("{section}.secrets[{index}]"))
                        && err.contains(&format!("{len} bytes"))
                        && err.contains("at least 16"),
                    "{err}"
                );
                assert!(!err.contains("tiny-secret"), "the value leaked: {err}");
            }
            // 16 bytes is enough.
            let c = load_str(&format!(
                "[kafka]\nbootstrap_servers = \"x:1\"\n[{section}]\nsecrets = [\"0123456789abcdef\"]\n"
            ));
            assert!(c.is_ok(), "{c:?}");
        }
    }

    #[test]
    fn empty_api_keys_are_refused() {
        let err = load_str(
            "[kafka]\nbootstrap_servers = \"x:1\"\n[segment]\nregion = \"us\"\nwrite_key = \"\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("segment.write_key is empty"), "{err}");
        let err = load_str(
            "[kafka]\nbootstrap_servers = \"x:1\"\n[pendo]\nregion = \"us\"\nintegration_key = \" \"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("pendo.integration_key is empty"), "{err}");
        // Any non-empty key is the vendor's to judge.
        assert!(
            load_str(
                "[kafka]\nbootstrap_servers = \"x:1\"\n[segment]\nregion = \"us\"\nwrite_key = \"k\"\n"
            )
            .is_ok()
        );
    }
}
