//! Every Prometheus metric of the process, registered once in a process-wide registry.
//!
//! Names follow Prometheus conventions (`pendo_segment_` prefix, `_total` for counters,
//! `_seconds` for durations). Labels are bounded sets (stage: the role's name, kept as the label name dashboards use; topic, partition, reason, result),
//! never ids or free text, so cardinality stays small; the few labels taken from input (event
//! kinds, field names) go through [`BoundedLabel`], bounded in number and in length.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The metric families shared by all roles.
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// Records taken from Kafka by a stage, by topic.
    pub records_in: IntCounterVec,
    /// Records a stage finished processing (then eligible for commit), by topic.
    pub records_processed: IntCounterVec,
    /// Records a consumer loop skipped because their partition was no longer assigned.
    pub records_skipped: IntCounterVec,
    /// Offset/transaction commits by stage and result (`ok`, `error`).
    pub commits: IntCounterVec,
    /// Time to checkpoint and commit, by stage.
    pub commit_duration: HistogramVec,
    /// Rebalance callbacks by stage and kind (`assign`, `revoke`, `error`).
    pub rebalances: IntCounterVec,
    /// Consumer lag in records, by stage, topic, partition (from librdkafka statistics).
    pub consumer_lag: IntGaugeVec,
    /// Errors that stopped a role or that Kafka reported while consuming, by stage and kind.
    pub errors: IntCounterVec,
    /// 1 for every role running in this process.
    pub role_up: IntGaugeVec,
    /// Roles started again in this process after a Kafka failover stopped them, by role.
    pub role_restarts: IntCounterVec,
    /// Kafka transactions of group-commit appenders by stage and result (`committed`, `aborted`).
    pub transactions: IntCounterVec,
    /// Records per committed appender transaction.
    pub transaction_records: HistogramVec,
    /// Appender jobs that never joined a transaction, by stage and result (`expired`).
    pub appender_jobs: IntCounterVec,
    /// Appender transactions whose commit outcome was unknown when their senders were answered,
    /// by how that outcome was learnt (`committed`, `aborted`, `expired`).
    pub undecided_transactions: IntCounterVec,
    /// Webhook HTTP requests by role and status code.
    pub webhook_requests: IntCounterVec,
    /// Webhook events durably accepted, by role.
    pub webhook_events: IntCounterVec,
    /// Webhook body bytes received, by role.
    pub webhook_bytes: IntCounterVec,
    /// Webhook requests rejected, by role and reason (`auth`, `too_large`, `malformed`, ...).
    pub webhook_rejects: IntCounterVec,
    /// Webhook requests being handled, by role.
    pub webhook_in_flight: IntGaugeVec,
    /// Time from receiving a webhook request to Kafka's commit of its events, by role.
    pub webhook_ack_latency: HistogramVec,
    /// Webhook connections the role closed itself, by role and reason (`header_timeout`,
    /// `body_timeout`, `idle_timeout`, `connection_cap`): stalled peers must show, not hide.
    pub webhook_connections_closed: IntCounterVec,
    /// Webhook connections open, by role (bounded by `max_connections`).
    pub webhook_open_connections: IntGaugeVec,
    /// Segment sink: events Segment acknowledged (2xx), by call type.
    pub segment_events_delivered: IntCounterVec,
    /// Segment sink: HTTP attempts by status (`none` = network error or timeout).
    pub segment_requests: IntCounterVec,
    /// Segment sink: attempts that will be retried, by outcome (retry, auth_failure, misconfigured).
    pub segment_retries: IntCounterVec,
    /// Segment sink: pauses of the whole sink honouring `Retry-After`.
    pub segment_retry_after_pauses: IntCounter,
    /// Segment sink: 1 while deliveries wait on retries (Segment down, rate limited, auth).
    pub segment_sink_backpressure: IntGauge,
    /// Segment sink: batches being delivered.
    pub segment_in_flight_batches: IntGauge,
    /// Pendo sink: HTTP attempts to Pendo by status (`none` = network error or timeout).
    pub pendo_sink_requests: IntCounterVec,
    /// Pendo sink: visitor/account items Pendo applied, by entity id key.
    pub pendo_sink_updates_written: IntCounterVec,
    /// Pendo sink: updates merged into an item of the same visitor/account in a batch.
    pub pendo_sink_updates_coalesced: IntCounter,
    /// Pendo sink: attempts that will be retried, by reason.
    pub pendo_sink_retries: IntCounterVec,
    /// Pendo sink: 1 while writes wait on retries (outage, rate limit, 409, auth failure).
    pub pendo_sink_backpressure: IntGauge,
    /// Pendo sink: jobs being delivered.
    pub pendo_sink_in_flight: IntGauge,
    /// Pendo sink: duration of one HTTP attempt.
    pub pendo_sink_request_duration: Histogram,
    /// Pendo sink: visitors/accounts whose audience list is held in memory (assigned partitions).
    pub pendo_audience_list_entities: IntGauge,
    /// Pendo sink: audience-list state records written, by outcome (`ok`, `failed`).
    pub pendo_audience_list_state_writes: IntCounterVec,
    /// Partitions a consumer role paused because its downstream is backed up.
    pub paused_partitions: IntGauge,
    /// Segment sink: events per request.
    pub segment_batch_events: Histogram,
    /// Segment sink: body bytes per request (uncompressed).
    pub segment_batch_bytes: Histogram,
    /// Segment sink: duration of one HTTP attempt.
    pub segment_request_duration: Histogram,
    /// From the connector receiving a Pendo event to Segment acknowledging its call.
    pub end_to_end_latency: Histogram,
    /// Resident memory of the process, refreshed at every scrape.
    pub resident_memory: IntGauge,
    /// Outcome of every raw event a transformer handled, by kind (bounded labels).
    pub transform_events: IntCounterVec,
    /// Segment calls (or Pendo updates) a transformer produced, by call type.
    pub transform_calls: IntCounterVec,
    /// Events whose kind the mapping does not list, by kind (bounded labels).
    pub unknown_kinds: IntCounterVec,
    /// Fields the mapping does not expect, by kind and field (bounded labels).
    pub unknown_fields: IntCounterVec,
    /// Calls that break the tracking plan, by event and broken rule (bounded labels).
    pub tracking_plan_violations: IntCounterVec,
    /// Constant 1 per transformer, labelled with the fingerprint of the mapping (and tracking
    /// plan) it runs: a dashboard shows when it changed.
    pub mapping_info: IntGaugeVec,
    /// Records written to a dead-letter topic, by stage and reason.
    pub dead_letters: IntCounterVec,
    /// Dead letters cut to fit their topic (key, payload or carried headers), by stage.
    pub dead_letters_cut: IntCounterVec,
    /// Changes applied to the in-memory id mapping, by operation (upsert, delete, invalid).
    pub idmap_updates: IntCounterVec,
    /// Mappings in the in-memory id mapping.
    pub idmap_entries: IntGauge,
    /// Constant 1 with the version as label.
    pub build_info: IntGaugeVec,
    /// Poller: requests to Pendo's REST API by endpoint and status (`none` = no answer).
    pub pendo_api_requests: IntCounterVec,
    /// Poller: rows Pendo returned, by source (accounts, visitors, catalogue kinds).
    pub pendo_api_rows: IntCounterVec,
    /// Poller: records written, by kind (accountSnapshot, visitorFirstSeen,
    /// visitorMetadataUpdated, catalog, dead_letter, ...).
    pub poller_records: IntCounterVec,
    /// Poller: how far each watermark/cycle end is behind now, in seconds.
    pub poller_watermark_lag: IntGaugeVec,
    /// Poller: usage milestones emitted, by rule (configured names: bounded).
    pub milestones_emitted: IntCounterVec,
    /// transform-segment: fields of the configured mapping rules, by rule, field and result
    /// (`written`, `missing` = path absent so not written, `invalid` = object/array, the event
    /// dead-lettered). Labels are configured names: bounded.
    pub transform_rule_fields: IntCounterVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
    registry
        .register(Box::new(c.clone()))
        .expect("unique counter");
    c
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
    labels: &[&str],
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid histogram");
    registry
        .register(Box::new(h.clone()))
        .expect("unique histogram");
    h
}

/// Latency buckets from 1 ms to 10 s.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
    registry
        .register(Box::new(g.clone()))
        .expect("unique gauge");
    g
}

/// An unlabelled counter, registered like [`counter`] (shared by the family builders).
fn plain_counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid counter");
    registry
        .register(Box::new(c.clone()))
        .expect("unique counter");
    c
}

/// An unlabelled gauge, registered like [`gauge`] (shared by the family builders).
fn plain_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid gauge");
    registry
        .register(Box::new(g.clone()))
        .expect("unique gauge");
    g
}

/// An unlabelled histogram, registered like [`histogram`] (shared by the family builders).
fn plain_histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid histogram");
    registry
        .register(Box::new(h.clone()))
        .expect("unique histogram");
    h
}

/// The consumer-loop family (records, commits, rebalances, lag, pauses, dead letters), built
/// apart so [`Metrics::new`] stays a list of families.
struct ConsumerMetrics {
    records_in: IntCounterVec,
    records_processed: IntCounterVec,
    records_skipped: IntCounterVec,
    commits: IntCounterVec,
    commit_duration: HistogramVec,
    rebalances: IntCounterVec,
    consumer_lag: IntGaugeVec,
    paused_partitions: IntGauge,
    dead_letters: IntCounterVec,
    dead_letters_cut: IntCounterVec,
}

impl ConsumerMetrics {
    /// Builds and registers the consumer-loop family in `r`.
    fn new(r: &Registry) -> Self {
        Self {
            records_in: counter(
                r,
                "pendo_segment_records_in_total",
                "Records consumed from Kafka.",
                &["stage", "topic"],
            ),
            records_processed: counter(
                r,
                "pendo_segment_records_processed_total",
                "Records fully processed (eligible for commit).",
                &["stage", "topic"],
            ),
            records_skipped: counter(
                r,
                "pendo_segment_records_skipped_total",
                "Records not processed because their partition had been revoked.",
                &["stage", "topic"],
            ),
            commits: counter(
                r,
                "pendo_segment_commits_total",
                "Offset or transaction commits.",
                &["stage", "result"],
            ),
            commit_duration: histogram(
                r,
                "pendo_segment_commit_duration_seconds",
                "Time to make processed records durable and commit their offsets.",
                latency_buckets(),
                &["stage"],
            ),
            rebalances: counter(
                r,
                "pendo_segment_rebalances_total",
                "Consumer group rebalance callbacks.",
                &["stage", "kind"],
            ),
            consumer_lag: gauge(
                r,
                "pendo_segment_consumer_lag",
                "Records between the committed offset and the partition end.",
                &["stage", "topic", "partition"],
            ),
            paused_partitions: plain_gauge(
                r,
                "pendo_segment_paused_partitions",
                "Partitions paused because their downstream is backed up (a sink waiting on retries).",
            ),
            dead_letters: counter(
                r,
                "pendo_segment_dead_letters_total",
                "Records written to a dead-letter topic, by stage and reason.",
                &["stage", "reason"],
            ),
            dead_letters_cut: counter(
                r,
                "pendo_segment_dead_letters_cut_total",
                "Dead letters cut to fit their topic's max.message.bytes, by stage.",
                &["stage"],
            ),
        }
    }
}

/// The group-commit appender family, built apart so [`Metrics::new`] stays a list of families.
struct AppenderMetrics {
    transactions: IntCounterVec,
    transaction_records: HistogramVec,
    appender_jobs: IntCounterVec,
    undecided_transactions: IntCounterVec,
}

impl AppenderMetrics {
    /// Builds and registers the appender family in `r`.
    fn new(r: &Registry) -> Self {
        Self {
            transactions: counter(
                r,
                "pendo_segment_transactions_total",
                "Kafka transactions of group-commit appenders.",
                &["stage", "result"],
            ),
            transaction_records: histogram(
                r,
                "pendo_segment_transaction_records",
                "Records per committed group-commit transaction.",
                prometheus::exponential_buckets(1.0, 4.0, 10).expect("buckets"),
                &["stage"],
            ),
            appender_jobs: counter(
                r,
                "pendo_segment_appender_jobs_total",
                "Append requests that never joined a transaction.",
                &["stage", "result"],
            ),
            undecided_transactions: counter(
                r,
                "pendo_segment_undecided_transactions_total",
                "Group-commit transactions answered 503 with their outcome unknown, by the outcome learnt later.",
                &["stage", "outcome"],
            ),
        }
    }
}

/// The process and role family (errors, roles up and restarted, memory, build), built apart so
/// [`Metrics::new`] stays a list of families.
struct ProcessMetrics {
    errors: IntCounterVec,
    role_up: IntGaugeVec,
    role_restarts: IntCounterVec,
    resident_memory: IntGauge,
    build_info: IntGaugeVec,
}

impl ProcessMetrics {
    /// Builds and registers the process family in `r`.
    fn new(r: &Registry) -> Self {
        Self {
            errors: counter(
                r,
                "pendo_segment_errors_total",
                "Errors by stage and kind.",
                &["stage", "kind"],
            ),
            role_up: gauge(
                r,
                "pendo_segment_role_up",
                "1 while a role runs in this process.",
                &["role"],
            ),
            role_restarts: counter(
                r,
                "pendo_segment_role_restarts_total",
                "Roles started again in this process (new Kafka clients) after a broker failover stopped them.",
                &["role"],
            ),
            resident_memory: plain_gauge(
                r,
                "pendo_segment_process_resident_memory_bytes",
                "Resident set size of this process.",
            ),
            build_info: gauge(
                r,
                "pendo_segment_build_info",
                "Build information.",
                &["version"],
            ),
        }
    }
}

/// The webhook family, built apart so [`Metrics::new`] stays a list of families.
struct WebhookMetrics {
    webhook_requests: IntCounterVec,
    webhook_events: IntCounterVec,
    webhook_bytes: IntCounterVec,
    webhook_rejects: IntCounterVec,
    webhook_in_flight: IntGaugeVec,
    webhook_ack_latency: HistogramVec,
    webhook_connections_closed: IntCounterVec,
    webhook_open_connections: IntGaugeVec,
}

impl WebhookMetrics {
    /// Builds and registers the webhook family in `r`.
    fn new(r: &Registry) -> Self {
        Self {
            webhook_requests: counter(
                r,
                "pendo_segment_webhook_requests_total",
                "Webhook HTTP requests by status code.",
                &["role", "status"],
            ),
            webhook_events: counter(
                r,
                "pendo_segment_webhook_events_accepted_total",
                "Webhook events durably written to Kafka.",
                &["role"],
            ),
            webhook_bytes: counter(
                r,
                "pendo_segment_webhook_received_bytes_total",
                "Webhook body bytes received.",
                &["role"],
            ),
            webhook_rejects: counter(
                r,
                "pendo_segment_webhook_rejects_total",
                "Webhook requests rejected, by reason.",
                &["role", "reason"],
            ),
            webhook_in_flight: gauge(
                r,
                "pendo_segment_webhook_in_flight_requests",
                "Webhook requests being handled.",
                &["role"],
            ),
            webhook_ack_latency: histogram(
                r,
                "pendo_segment_webhook_ack_latency_seconds",
                "From receiving a webhook request to Kafka committing its events.",
                latency_buckets(),
                &["role"],
            ),
            webhook_connections_closed: counter(
                r,
                "pendo_segment_webhook_connections_closed_total",
                "Webhook connections closed by the role: stalled past a timeout, or over the connection cap.",
                &["role", "reason"],
            ),
            webhook_open_connections: gauge(
                r,
                "pendo_segment_webhook_open_connections",
                "Webhook connections open.",
                &["role"],
            ),
        }
    }
}

/// The Segment sink family, built apart so [`Metrics::new`] stays a list of families.
struct SegmentSinkMetrics {
    segment_events_delivered: IntCounterVec,
    segment_requests: IntCounterVec,
    segment_retries: IntCounterVec,
    segment_retry_after_pauses: IntCounter,
    segment_sink_backpressure: IntGauge,
    segment_in_flight_batches: IntGauge,
    segment_batch_events: Histogram,
    segment_batch_bytes: Histogram,
    segment_request_duration: Histogram,
    end_to_end_latency: Histogram,
}

impl SegmentSinkMetrics {
    /// Builds and registers the Segment sink family in `r`.
    fn new(r: &Registry) -> Self {
        Self {
            segment_events_delivered: counter(
                r,
                "pendo_segment_segment_events_delivered_total",
                "Events Segment acknowledged (2xx), by call type.",
                &["call"],
            ),
            segment_requests: counter(
                r,
                "pendo_segment_segment_requests_total",
                "HTTP attempts to Segment by status (none = network error or timeout).",
                &["status"],
            ),
            segment_retries: counter(
                r,
                "pendo_segment_segment_retries_total",
                "Segment attempts that will be retried, by outcome.",
                &["outcome"],
            ),
            segment_retry_after_pauses: plain_counter(
                r,
                "pendo_segment_segment_retry_after_pauses_total",
                "Pauses of the whole Segment sink honouring Retry-After.",
            ),
            segment_sink_backpressure: plain_gauge(
                r,
                "pendo_segment_segment_sink_backpressure",
                "1 while Segment deliveries wait on retries (outage, rate limit, auth failure).",
            ),
            segment_in_flight_batches: plain_gauge(
                r,
                "pendo_segment_segment_in_flight_batches",
                "Batches being delivered to Segment.",
            ),
            segment_batch_events: plain_histogram(
                r,
                "pendo_segment_segment_batch_events",
                "Events per Segment request.",
                prometheus::exponential_buckets(1.0, 2.0, 13).expect("buckets"),
            ),
            segment_batch_bytes: plain_histogram(
                r,
                "pendo_segment_segment_batch_bytes",
                "Uncompressed body bytes per Segment request.",
                prometheus::exponential_buckets(1024.0, 2.0, 10).expect("buckets"),
            ),
            segment_request_duration: plain_histogram(
                r,
                "pendo_segment_segment_request_duration_seconds",
                "Duration of one HTTP attempt to Segment.",
                latency_buckets(),
            ),
            end_to_end_latency: plain_histogram(
                r,
                "pendo_segment_end_to_end_latency_seconds",
                "From the connector receiving a Pendo event to Segment acknowledging its call.",
                prometheus::exponential_buckets(0.01, 2.0, 16).expect("buckets"),
            ),
        }
    }
}

/// The Pendo sink family, built apart so [`Metrics::new`] stays a list of families.
struct PendoSinkMetrics {
    pendo_sink_requests: IntCounterVec,
    pendo_sink_updates_written: IntCounterVec,
    pendo_sink_updates_coalesced: IntCounter,
    pendo_sink_retries: IntCounterVec,
    pendo_sink_backpressure: IntGauge,
    pendo_sink_in_flight: IntGauge,
    pendo_sink_request_duration: Histogram,
    pendo_audience_list_entities: IntGauge,
    pendo_audience_list_state_writes: IntCounterVec,
}

impl PendoSinkMetrics {
    /// Builds and registers the Pendo sink family in `r`.
    fn new(r: &Registry) -> Self {
        Self {
            pendo_sink_requests: counter(
                r,
                "pendo_segment_pendo_sink_requests_total",
                "HTTP attempts to Pendo's metadata API by status (none = network error or timeout).",
                &["status"],
            ),
            pendo_sink_updates_written: counter(
                r,
                "pendo_segment_pendo_sink_updates_written_total",
                "Visitor/account items Pendo applied (after coalescing), by id key.",
                &["entity"],
            ),
            pendo_sink_updates_coalesced: plain_counter(
                r,
                "pendo_segment_pendo_sink_updates_coalesced_total",
                "Updates merged into an earlier update of the same visitor/account in a batch.",
            ),
            pendo_sink_retries: counter(
                r,
                "pendo_segment_pendo_sink_retries_total",
                "Pendo attempts that will be retried, by reason.",
                &["reason"],
            ),
            pendo_sink_backpressure: plain_gauge(
                r,
                "pendo_segment_pendo_sink_backpressure",
                "1 while Pendo writes wait on retries (outage, rate limit, 409, auth failure).",
            ),
            pendo_sink_in_flight: plain_gauge(
                r,
                "pendo_segment_pendo_sink_in_flight_jobs",
                "Pendo sink jobs being delivered.",
            ),
            pendo_sink_request_duration: plain_histogram(
                r,
                "pendo_segment_pendo_sink_request_duration_seconds",
                "Duration of one HTTP attempt to Pendo.",
                latency_buckets(),
            ),
            pendo_audience_list_entities: plain_gauge(
                r,
                "pendo_segment_pendo_audience_list_state_entities",
                "Visitors/accounts whose audience list the Pendo sink holds (its assigned partitions).",
            ),
            pendo_audience_list_state_writes: counter(
                r,
                "pendo_segment_pendo_audience_list_state_writes_total",
                "Audience-list state records written to state.pendo-audience-lists, by outcome.",
                &["outcome"],
            ),
        }
    }
}

/// The transformer family (events, calls, schema drift, tracking plan, mapping, rules) and the
/// id mapping's, built apart so [`Metrics::new`] stays a list of families.
struct TransformMetrics {
    transform_events: IntCounterVec,
    transform_calls: IntCounterVec,
    unknown_kinds: IntCounterVec,
    unknown_fields: IntCounterVec,
    tracking_plan_violations: IntCounterVec,
    mapping_info: IntGaugeVec,
    transform_rule_fields: IntCounterVec,
    idmap_updates: IntCounterVec,
    idmap_entries: IntGauge,
}

impl TransformMetrics {
    /// Builds and registers the transformer and id mapping family in `r`.
    fn new(r: &Registry) -> Self {
        Self {
            transform_events: counter(
                r,
                "pendo_segment_transform_events_total",
                "Raw events handled by a transformer, by kind and outcome (mapped, filtered, dropped, dead_lettered).",
                &["stage", "kind", "outcome"],
            ),
            transform_calls: counter(
                r,
                "pendo_segment_transform_calls_total",
                "Canonical records produced by a transformer, by call type.",
                &["stage", "call"],
            ),
            unknown_kinds: counter(
                r,
                "pendo_segment_transform_unknown_kinds_total",
                "Events of kinds the mapping does not list (schema drift), by kind.",
                &["stage", "kind"],
            ),
            unknown_fields: counter(
                r,
                "pendo_segment_transform_unknown_fields_total",
                "Fields the mapping does not expect (schema drift), by kind and field.",
                &["stage", "kind", "field"],
            ),
            tracking_plan_violations: counter(
                r,
                "pendo_segment_tracking_plan_violations_total",
                "Rules of the tracking plan broken by calls transform-pendo made, by event (track event name, or identify/group/page) and rule (required, type, enum, additional_properties, ..., unplanned_event).",
                &["event", "rule"],
            ),
            mapping_info: gauge(
                r,
                "pendo_segment_mapping_info",
                "Constant 1: the mapping and tracking plan a transformer runs (fingerprint = what its calls carry in the mapping-fingerprint header; tracking_plan is none without a plan).",
                &["stage", "fingerprint", "mapping", "tracking_plan"],
            ),
            transform_rule_fields: counter(
                r,
                "pendo_segment_transform_rule_fields_total",
                "Fields of transform-segment mapping rules, by rule, field and result (written, missing, invalid).",
                &["stage", "rule", "field", "result"],
            ),
            idmap_updates: counter(
                r,
                "pendo_segment_idmap_updates_total",
                "Id mapping records applied, by operation (upsert, delete, invalid).",
                &["op"],
            ),
            idmap_entries: plain_gauge(
                r,
                "pendo_segment_idmap_entries",
                "Pendo visitor -> Segment user mappings held in memory.",
            ),
        }
    }
}

/// The Pendo poller family, built apart so [`Metrics::new`] stays a list of families.
struct PollerMetrics {
    pendo_api_requests: IntCounterVec,
    pendo_api_rows: IntCounterVec,
    poller_records: IntCounterVec,
    poller_watermark_lag: IntGaugeVec,
    milestones_emitted: IntCounterVec,
}

impl PollerMetrics {
    /// Builds and registers the poller family in `r`.
    fn new(r: &Registry) -> Self {
        Self {
            pendo_api_requests: counter(
                r,
                "pendo_segment_pendo_api_requests_total",
                "Poller requests to Pendo's REST API by endpoint and status (none = no answer).",
                &["endpoint", "status"],
            ),
            pendo_api_rows: counter(
                r,
                "pendo_segment_pendo_api_rows_total",
                "Rows Pendo's REST API returned to the poller, by source.",
                &["source"],
            ),
            poller_records: counter(
                r,
                "pendo_segment_poller_records_total",
                "Records the poller wrote, by kind.",
                &["kind"],
            ),
            poller_watermark_lag: gauge(
                r,
                "pendo_segment_poller_watermark_lag_seconds",
                "How far each poller watermark or cycle end is behind now.",
                &["cursor"],
            ),
            milestones_emitted: counter(
                r,
                "pendo_segment_milestones_emitted_total",
                "Usage milestones the poller emitted, by rule.",
                &["rule"],
            ),
        }
    }
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        let consumer = ConsumerMetrics::new(&r);
        let appender = AppenderMetrics::new(&r);
        let process = ProcessMetrics::new(&r);
        let webhook = WebhookMetrics::new(&r);
        let segment = SegmentSinkMetrics::new(&r);
        let pendo = PendoSinkMetrics::new(&r);
        let transform = TransformMetrics::new(&r);
        let poller = PollerMetrics::new(&r);
        let m = Metrics {
            registry: r,
            records_in: consumer.records_in,
            records_processed: consumer.records_processed,
            records_skipped: consumer.records_skipped,
            commits: consumer.commits,
            commit_duration: consumer.commit_duration,
            rebalances: consumer.rebalances,
            consumer_lag: consumer.consumer_lag,
            errors: process.errors,
            role_up: process.role_up,
            role_restarts: process.role_restarts,
            transactions: appender.transactions,
            transaction_records: appender.transaction_records,
            appender_jobs: appender.appender_jobs,
            undecided_transactions: appender.undecided_transactions,
            webhook_requests: webhook.webhook_requests,
            webhook_events: webhook.webhook_events,
            webhook_bytes: webhook.webhook_bytes,
            webhook_rejects: webhook.webhook_rejects,
            webhook_in_flight: webhook.webhook_in_flight,
            webhook_ack_latency: webhook.webhook_ack_latency,
            webhook_connections_closed: webhook.webhook_connections_closed,
            webhook_open_connections: webhook.webhook_open_connections,
            segment_events_delivered: segment.segment_events_delivered,
            segment_requests: segment.segment_requests,
            segment_retries: segment.segment_retries,
            segment_retry_after_pauses: segment.segment_retry_after_pauses,
            segment_sink_backpressure: segment.segment_sink_backpressure,
            segment_in_flight_batches: segment.segment_in_flight_batches,
            pendo_sink_requests: pendo.pendo_sink_requests,
            pendo_sink_updates_written: pendo.pendo_sink_updates_written,
            pendo_sink_updates_coalesced: pendo.pendo_sink_updates_coalesced,
            pendo_sink_retries: pendo.pendo_sink_retries,
            pendo_sink_backpressure: pendo.pendo_sink_backpressure,
            pendo_sink_in_flight: pendo.pendo_sink_in_flight,
            pendo_sink_request_duration: pendo.pendo_sink_request_duration,
            pendo_audience_list_entities: pendo.pendo_audience_list_entities,
            pendo_audience_list_state_writes: pendo.pendo_audience_list_state_writes,
            paused_partitions: consumer.paused_partitions,
            segment_batch_events: segment.segment_batch_events,
            segment_batch_bytes: segment.segment_batch_bytes,
            segment_request_duration: segment.segment_request_duration,
            end_to_end_latency: segment.end_to_end_latency,
            resident_memory: process.resident_memory,
            transform_events: transform.transform_events,
            transform_calls: transform.transform_calls,
            unknown_kinds: transform.unknown_kinds,
            unknown_fields: transform.unknown_fields,
            tracking_plan_violations: transform.tracking_plan_violations,
            mapping_info: transform.mapping_info,
            dead_letters: consumer.dead_letters,
            dead_letters_cut: consumer.dead_letters_cut,
            idmap_updates: transform.idmap_updates,
            idmap_entries: transform.idmap_entries,
            build_info: process.build_info,
            pendo_api_requests: poller.pendo_api_requests,
            pendo_api_rows: poller.pendo_api_rows,
            poller_records: poller.poller_records,
            poller_watermark_lag: poller.poller_watermark_lag,
            milestones_emitted: poller.milestones_emitted,
            transform_rule_fields: transform.transform_rule_fields,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m
    }

    /// Encodes every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        if let Some(rss) = resident_memory_bytes() {
            self.resident_memory.set(rss);
        }
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding never fails");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

/// RSS from `/proc/self/statm` (Linux); `None` elsewhere.
fn resident_memory_bytes() -> Option<i64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Longest label value taken from input data, in bytes (the cut marker included). Prometheus
/// keeps every label value of every series and `/metrics` repeats it on every line, so a 5 KB
/// event kind would cost 5 KB per series and per scrape; real kinds and field names are short.
pub const MAX_LABEL_BYTES: usize = 64;

/// Appended to a label value that was cut to [`MAX_LABEL_BYTES`].
const CUT_MARKER: char = '…';

/// `value` at most [`MAX_LABEL_BYTES`] long: unchanged when it fits, else its first bytes (cut on
/// a character boundary) followed by `…`. Long values that share those first bytes therefore
/// share one label; that is intended (such values are junk or drift, and the count they get is
/// still right in sum), and the marker tells a cut value from a real one.
pub fn cap_label_len(value: &str) -> std::borrow::Cow<'_, str> {
    if value.len() <= MAX_LABEL_BYTES {
        return std::borrow::Cow::Borrowed(value);
    }
    let keep = value.floor_char_boundary(MAX_LABEL_BYTES - CUT_MARKER.len_utf8());
    let mut cut = String::with_capacity(keep + CUT_MARKER.len_utf8());
    cut.push_str(&value[..keep]);
    cut.push(CUT_MARKER);
    std::borrow::Cow::Owned(cut)
}

/// Caps a label that comes from input data (event kinds, field names) in number and in length,
/// so a stream of junk cannot grow the metric series, or `/metrics`, without bound: values are
/// cut to [`MAX_LABEL_BYTES`] (see [`cap_label_len`]), and after `max` distinct values new ones
/// are reported as `_other`.
pub struct BoundedLabel {
    /// A fast hash: looked up once per record, and the set is capped, so input cannot make it
    /// degrade beyond `max` entries.
    seen: std::sync::Mutex<rustc_hash::FxHashSet<String>>,
    max: usize,
}

impl BoundedLabel {
    /// A cap of `max` distinct values.
    pub fn new(max: usize) -> Self {
        Self {
            seen: Default::default(),
            max,
        }
    }

    /// `value` (cut to [`MAX_LABEL_BYTES`]) if it is (or can become) one of the tracked values,
    /// else `_other`.
    pub fn label<'a>(&self, value: &'a str) -> std::borrow::Cow<'a, str> {
        let value = cap_label_len(value);
        let mut seen = self.seen.lock().expect("label lock");
        if seen.contains(value.as_ref()) {
            return value;
        }
        if seen.len() < self.max {
            seen.insert(value.to_string());
            return value;
        }
        std::borrow::Cow::Borrowed("_other")
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_contains_build_info_and_rss() {
        metrics().records_in.with_label_values(&["test", "t"]).inc();
        let text = metrics().render();
        assert!(
            text.contains("pendo_segment_build_info{version=\""),
            "{text}"
        );
        assert!(text.contains("pendo_segment_records_in_total{stage=\"test\",topic=\"t\"} "));
        assert!(text.contains("pendo_segment_process_resident_memory_bytes "));
    }

    #[test]
    fn labels_from_input_are_capped_in_length_as_well_as_in_number() {
        // Issue #17: 300 Pendo events with distinct 5 KB kinds made /metrics 2 MB.
        let kinds = BoundedLabel::new(200);
        let role = "bounded-label-length-test";
        for i in 0..300 {
            let value = format!("{i:04}{}", "k".repeat(5 * 1024));
            let label = kinds.label(&value);
            assert!(label.len() <= MAX_LABEL_BYTES, "{} bytes", label.len());
            metrics()
                .unknown_kinds
                .with_label_values(&[role, &*label])
                .inc();
        }
        let ours: usize = metrics()
            .render()
            .lines()
            .filter(|l| l.contains(role))
            .map(|l| l.len() + 1)
            .sum();
        assert!(ours > 0);
        assert!(ours < 50 * 1024, "{ours} bytes of /metrics for one label");
    }

    #[test]
    fn long_labels_are_cut_on_a_char_boundary_and_marked() {
        let l = BoundedLabel::new(10);
        assert_eq!(l.label("short"), "short");
        let exact = "x".repeat(MAX_LABEL_BYTES);
        assert_eq!(l.label(&exact), exact.as_str());
        // Multi-byte characters straddling the cut: never split, never over the bound.
        for pad in 0..4 {
            let long = format!("{}{}", "a".repeat(pad), "é€😀".repeat(100));
            let cut = l.label(&long);
            assert!(cut.len() <= MAX_LABEL_BYTES, "{}", cut.len());
            assert!(cut.ends_with('…'), "{cut}");
            assert!(long.starts_with(cut.trim_end_matches('…')));
        }
        // Long values sharing their first bytes share one label (documented).
        let a = format!("{}a", "p".repeat(200));
        let b = format!("{}b", "p".repeat(200));
        assert_eq!(l.label(&a), l.label(&b));
    }
}
