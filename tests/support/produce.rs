//! Loading records onto a topic quickly: many sends in flight, every one acknowledged.
//! Shared by the tests (`support::produce`) and the benchmarks (`#[path]`).

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};

/// Sends every `(key, value)` to `topic` with up to 20,000 in flight; panics on any failure.
pub async fn produce_all(
    producer: &FutureProducer,
    topic: &str,
    records: impl IntoIterator<Item = (Option<String>, Vec<u8>)>,
) {
    let mut pending = Vec::new();
    for (key, value) in records {
        let p = producer.clone();
        let topic = topic.to_string();
        pending.push(async move {
            let mut r = FutureRecord::to(&topic).payload(&value);
            if let Some(k) = &key {
                r = r.key(k);
            }
            p.send(r, Duration::from_secs(60))
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        });
        if pending.len() == 20_000 {
            for r in futures::future::join_all(std::mem::take(&mut pending)).await {
                r.expect("produce");
            }
        }
    }
    for r in futures::future::join_all(pending).await {
        r.expect("produce");
    }
}
