//! Builds librdkafka client configurations from [`Config`].
//!
//! Order of precedence: our defaults, then `kafka.properties`, then the producer/consumer
//! tables, then the settings our guarantees depend on (which `Config::validate` already refuses
//! to see overridden). Every client gets a `client.id` naming its role so broker-side logs and
//! quotas can tell roles apart.

use rdkafka::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;

use crate::config::Config;
use crate::kafka::topics::RAW_MAX_MESSAGE_BYTES;

fn base(config: &Config, role: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.bootstrap_servers)
        .set("client.id", format!("{}.{role}", config.kafka.client_id))
        .set_log_level(RDKafkaLogLevel::Warning);
    for (k, v) in config.kafka.properties.iter() {
        c.set(k, v);
    }
    c
}

/// Configuration for admin clients (topic provisioning, inspection).
pub fn admin(config: &Config) -> ClientConfig {
    base(config, "admin")
}

/// An idempotent `acks=all` producer: a record is acknowledged only once every in-sync replica
/// has it, and librdkafka's retries can neither duplicate nor reorder it.
pub fn producer(config: &Config, role: &str) -> ClientConfig {
    let mut c = base(config, role);
    c.set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "30000")
        // The client must never refuse a record its topic takes (librdkafka's default is
        // 1,000,000, below Kafka's topic default): the roles bound records by the topics' own
        // limits (`record_size`), the largest of which is the raw topics'.
        .set(
            "message.max.bytes",
            (RAW_MAX_MESSAGE_BYTES as usize + 1024 * 1024).to_string(),
        );
    for (k, v) in config.kafka.producer_properties.iter() {
        c.set(k, v);
    }
    c.set("enable.idempotence", "true").set("acks", "all");
    c
}

/// A transactional producer for `role` (group commit of connector requests). Its
/// `transactional.id` is `<client_id>.<role>.<instance_id>`; `max_record_bytes` is the largest
/// value it must be able to send.
pub fn transactional_producer(
    config: &Config,
    role: &str,
    max_record_bytes: usize,
) -> ClientConfig {
    let mut c = producer(config, role);
    c.set("linger.ms", "1")
        .set(
            "transactional.id",
            format!("{}.{role}.{}", config.kafka.client_id, config.instance_id()),
        )
        .set("transaction.timeout.ms", "60000")
        // The next transaction's AddPartitionsToTxn is answered CONCURRENT_TRANSACTIONS until the
        // previous commit's markers are written; librdkafka's default 100 ms retry backoff would
        // then cap a producer at a few transactions per second.
        .set("retry.backoff.ms", "2")
        .set("retry.backoff.max.ms", "50")
        // Room for the largest record plus headers and batch overhead.
        .set(
            "message.max.bytes",
            (max_record_bytes + 1024 * 1024).to_string(),
        )
        // Bounded memory: the group-commit queue waits (and then answers 503) when this is full.
        .set("queue.buffering.max.kbytes", "131072");
    for (k, v) in config.kafka.producer_properties.iter() {
        c.set(k, v);
    }
    // librdkafka refuses message.timeout.ms > transaction.timeout.ms: keep them consistent when
    // only the transaction timeout was lowered.
    let txn: Option<u64> = c.get("transaction.timeout.ms").and_then(|v| v.parse().ok());
    let msg: Option<u64> = c.get("message.timeout.ms").and_then(|v| v.parse().ok());
    if let (Some(txn), Some(msg)) = (txn, msg)
        && msg > txn
    {
        c.set("message.timeout.ms", txn.to_string());
    }
    c
}

/// A consumer in group `<group_id_prefix>.<role>` that never commits on its own and never sees
/// records of aborted transactions.
pub fn consumer(config: &Config, role: &str) -> ClientConfig {
    let mut c = base(config, role);
    c.set("group.id", config.group_id(role))
        .set("auto.offset.reset", "earliest")
        .set(
            "statistics.interval.ms",
            config.processing.statistics_interval_ms.to_string(),
        );
    for (k, v) in config.kafka.consumer_properties.iter() {
        c.set(k, v);
    }
    c.set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed");
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guarantees_win_and_user_properties_pass_through() {
        let config: Config = toml::from_str(
            "[kafka]\nbootstrap_servers = \"b:9092\"\n[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n[kafka.producer_properties]\n\"linger.ms\" = 50\n",
        )
        .unwrap();
        let p = producer(&config, "pendo-webhook");
        assert_eq!(p.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(p.get("linger.ms"), Some("50"));
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(p.get("acks"), Some("all"));
        assert_eq!(p.get("client.id"), Some("pendo-segment.pendo-webhook"));
        let c = consumer(&config, "segment-sink");
        assert_eq!(c.get("group.id"), Some("pendo-segment.segment-sink"));
        assert_eq!(c.get("isolation.level"), Some("read_committed"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
    }
}
