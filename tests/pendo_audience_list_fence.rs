//! The Pendo sink's revocation barrier for audience-list state (`AudienceListState::fence`,
//! run inside the rebalance callback) against a real broker: when it returns, every state write
//! of the revoked partitions that was handed to Kafka has landed, and no further write starts —
//! so none can land after the partition's next owner wrote its own (compaction would keep it).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pendo_segment::http::retry::RetryPolicy;
use pendo_segment::sinks::pendo::audience_lists::{AudienceListState, Lists};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;
use support::*;

fn lists(keys: usize) -> Lists {
    BTreeMap::from([(
        "segment_audiences".to_string(),
        (0..keys)
            .map(|i| format!("audience-with-a-long-key-{i:04}"))
            .collect::<BTreeSet<_>>(),
    )])
}

fn consumer_config() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap())
        .set("group.id", unique("fence-reader"))
        .set("enable.auto.commit", "false");
    c
}

fn producer(extra: &[(&str, &str)]) -> FutureProducer {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap())
        .set("acks", "all")
        .set("enable.idempotence", "true");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c.create().expect("producer")
}

/// Records on partition 0 of `topic` (its high watermark).
fn records(topic: &str) -> i64 {
    let c: BaseConsumer = consumer_config().create().expect("consumer");
    c.fetch_watermarks(topic, 0, Duration::from_secs(10))
        .expect("watermarks")
        .1
}

#[tokio::test(flavor = "multi_thread")]
async fn after_the_fence_no_state_write_of_a_revoked_partition_can_land() {
    require_kafka();
    let topic = unique("fence-state");
    create_topic(&topic, 1).await;

    // 1. A write already handed to Kafka (held back 3 s by linger.ms) has landed when the
    //    fence returns.
    let state = Arc::new(AudienceListState::new(
        consumer_config(),
        topic.clone(),
        producer(&[("linger.ms", "3000")]),
        RetryPolicy {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
        },
    ));
    state.load(0).await.expect("load");
    let writer = {
        let state = state.clone();
        tokio::spawn(async move { state.record(0, "visitor:v-1", &lists(2)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(records(&topic), 0, "still lingering in the producer");
    let fenced = {
        let state = state.clone();
        let started = Instant::now();
        tokio::task::spawn_blocking(move || state.fence(&[0]))
            .await
            .unwrap();
        started.elapsed()
    };
    assert_eq!(
        records(&topic),
        1,
        "the in-flight write landed before the fence returned (it waited {fenced:?})"
    );
    assert!(writer.await.unwrap(), "the write was acknowledged");
    // Revoked: a new write is not started (the next owner writes from the replayed records).
    assert!(!state.record(0, "visitor:v-1", &lists(3)).await);
    assert!(!state.is_loaded(0));

    // 2. A write Kafka keeps refusing (larger than the producer's message.max.bytes) is
    //    retried until the fence, then abandoned: it never lands.
    let refusing = Arc::new(AudienceListState::new(
        consumer_config(),
        topic.clone(),
        producer(&[("message.max.bytes", "1000")]),
        RetryPolicy {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
        },
    ));
    refusing.load(0).await.expect("load");
    let retrying = {
        let state = refusing.clone();
        tokio::spawn(async move { state.record(0, "visitor:v-2", &lists(60)).await })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!retrying.is_finished(), "refused writes are retried");
    {
        let state = refusing.clone();
        tokio::task::spawn_blocking(move || state.fence(&[0]))
            .await
            .unwrap();
    }
    let outcome = tokio::time::timeout(Duration::from_secs(5), retrying)
        .await
        .expect("the retry loop stops once the partition is revoked")
        .unwrap();
    assert!(!outcome, "abandoned, not written");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(records(&topic), 1, "nothing of the abandoned write");

    // A fence of partitions whose state is not held returns at once.
    let started = Instant::now();
    refusing.fence(&[0, 7]);
    assert!(started.elapsed() < Duration::from_secs(1));
}
