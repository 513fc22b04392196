//! Test support shared by the end-to-end tests: the real Kafka broker, unique names, configs.
//!
//! Every test here needs a real broker. When none is reachable the tests FAIL with the reason;
//! they never skip. `.ci/run` starts one with `scripts/kafka-local start`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// The broker the tests use: `KAFKA_BOOTSTRAP_SERVERS`, or the local one on 127.0.0.1:9092.
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".to_string())
}

/// Panics with instructions unless the broker answers a metadata request.
pub fn require_kafka() -> String {
    let servers = bootstrap();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .create()
        .expect("client");
    if let Err(e) = consumer.fetch_metadata(None, Duration::from_secs(15)) {
        panic!(
            "integration tests need a real Kafka broker at {servers} ({e}). \
             Start one with `scripts/kafka-local start` or set KAFKA_BOOTSTRAP_SERVERS."
        );
    }
    servers
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Path of the built `pendo-segment` binary.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pendo-segment"))
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write test file");
    p
}

/// An admin client for assertions.
pub fn admin() -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("admin client")
}

/// Options with a bounded wait.
pub fn admin_opts() -> AdminOptions {
    AdminOptions::new().request_timeout(Some(Duration::from_secs(30)))
}

/// Creates a topic (replication 1) and waits until it exists.
pub async fn create_topic(name: &str, partitions: i32) {
    let admin = admin();
    let t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let r = admin
        .create_topics([&t], &admin_opts())
        .await
        .expect("create");
    for x in r {
        x.expect("topic created");
    }
}

/// The topic's effective configs.
pub async fn topic_configs(name: &str) -> HashMap<String, String> {
    let admin = admin();
    let r = admin
        .describe_configs([&ResourceSpecifier::Topic(name)], &admin_opts())
        .await
        .expect("describe configs");
    let mut out = HashMap::new();
    for res in r {
        for e in res.expect("config resource").entries {
            if let Some(v) = e.value {
                out.insert(e.name, v);
            }
        }
    }
    out
}

/// Partition count of a topic, from fresh metadata.
pub fn partition_count(name: &str) -> usize {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("client");
    let md = consumer
        .fetch_metadata(Some(name), Duration::from_secs(15))
        .expect("metadata");
    md.topics()[0].partitions().len()
}

/// Produces `count` records `key-i`/`value-i` round-robin over partitions and waits for acks.
pub async fn produce_numbered(topic: &str, count: usize, partitions: i32) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut pending = Vec::with_capacity(count);
    for i in 0..count {
        let key = format!("key-{i}");
        let value = format!("value-{i}");
        let p = producer.clone();
        let topic = topic.to_string();
        let partition = (i as i32) % partitions;
        pending.push(tokio::spawn(async move {
            p.send(
                FutureRecord::to(&topic)
                    .key(&key)
                    .payload(&value)
                    .partition(partition),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
        }));
    }
    for p in pending {
        p.await.unwrap();
    }
}

/// Committed offsets of `group` on `topic`, by partition (absent = nothing committed).
pub fn committed_offsets(group: &str, topic: &str, partitions: i32) -> HashMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(15))
        .expect("committed offsets");
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// A free TCP port on loopback (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
