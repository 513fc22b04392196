//! Keeps an in-memory table equal to a compacted topic ([`follow_compacted`]): the id mapping
//! ([`IdMapTable`](super::IdMapTable), or for the reverse flow a [`BiIdMap`](super::BiIdMap))
//! from `idmap.visitor-to-user`, and the Pendo catalogue from `pendo.catalog`. It reads every
//! partition from the beginning to its end at start-up (the caller waits for that before it maps
//! any event, and `/readyz` stays false until then), then follows new records live.
//!
//! The follower is not a group member (it assigns every partition itself and never commits), so
//! each transformer instance holds the whole table whatever its share of the input is. It reads
//! `read_committed`, so mappings published inside aborted transactions never apply.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::sync::watch;

use super::reverse::IdMapStore;
use crate::kafka::context::ReadToEndContext;
use crate::kafka::metadata::{ROLE_TOPIC_WAIT, topic_partitions};
use crate::metrics::metrics;
use crate::schema::IdMappingCodec;
use crate::shutdown::Shutdown;

/// Consumer settings of a follower, from the role's consumer configuration.
pub fn follower_client_config(mut base: ClientConfig) -> ClientConfig {
    base.set("enable.partition.eof", "true")
        // Prefetch is bounded: loading millions of mappings must not cost more memory than
        // the table itself.
        .set("queued.max.messages.kbytes", "16384")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed");
    base
}

/// A table kept equal to a compacted topic by [`follow_compacted`].
pub trait CompactedTable: Send + 'static {
    /// What the table holds, for logs (`id mapping`, `catalogue`).
    const WHAT: &'static str;
    /// Applies one record: a value sets the key, `None` (a tombstone) deletes it. An error
    /// means the record was unusable and ignored (the table counts it).
    fn apply(&self, key: &str, value: Option<&[u8]>) -> Result<(), String>;
    /// A record without a UTF-8 key was ignored.
    fn invalid_key(&self) {}
    /// Entries held.
    fn entries(&self) -> usize;
    /// Every partition was read to its end once.
    fn loaded(&self) {}
}

/// Follows `topic` into `table` until `shutdown`. `caught_up` turns true once every partition
/// was read to its end. Errors only when the topic cannot be read at all.
pub async fn follow_compacted<T: CompactedTable>(
    client_config: ClientConfig,
    topic: String,
    table: T,
    caught_up: watch::Sender<bool>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let what = T::WHAT;
    let consumer: Arc<StreamConsumer<ReadToEndContext>> =
        Arc::new(client_config.create_with_context(ReadToEndContext)?);
    let partitions = {
        let consumer = consumer.clone();
        let topic = topic.clone();
        tokio::task::spawn_blocking(move || topic_partitions(&*consumer, &topic, ROLE_TOPIC_WAIT))
            .await??
    };
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(&topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let mut pending: HashSet<i32> = partitions.iter().copied().collect();
    tracing::info!(topic, partitions = partitions.len(), "loading the {what}");
    loop {
        tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            received = consumer.recv() => match received {
                Ok(record) => {
                    let Some(key) = record.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                        table.invalid_key();
                        tracing::warn!(topic, partition = record.partition(), offset = record.offset(), "{what} record without a UTF-8 key ignored");
                        continue;
                    };
                    if let Err(e) = table.apply(key, record.payload()) {
                        tracing::warn!(topic, key, offset = record.offset(), error = %e, "{what} record ignored");
                    }
                }
                Err(KafkaError::PartitionEOF(p)) => {
                    if pending.remove(&p) && pending.is_empty() {
                        table.loaded();
                        release_free_memory();
                        tracing::info!(topic, entries = table.entries(), seconds = started.elapsed().as_secs_f64(), "{what} loaded; following live updates");
                        let _ = caught_up.send(true);
                    }
                }
                Err(e) => {
                    // Transient broker errors are retried by librdkafka; keep following.
                    metrics().errors.with_label_values(&[what, "kafka"]).inc();
                    tracing::warn!(topic, error = %e, "{what} consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// An [`IdMapStore`] fed from `idmap.visitor-to-user` records (Avro `IdMapping` values whose
/// visitorId must equal the key).
struct IdMapRecords<S> {
    codec: IdMappingCodec,
    sink: S,
}

impl<S: IdMapStore> CompactedTable for IdMapRecords<S> {
    const WHAT: &'static str = "id mapping";

    fn apply(&self, key: &str, value: Option<&[u8]>) -> Result<(), String> {
        let m = metrics();
        let result = match value {
            None => {
                self.sink.delete(key);
                m.idmap_updates.with_label_values(&["delete"]).inc();
                Ok(())
            }
            Some(value) => match self.codec.decode(value) {
                Ok(mapping) if mapping.visitor_id == key => {
                    self.sink.upsert(key, &mapping.user_id);
                    m.idmap_updates.with_label_values(&["upsert"]).inc();
                    Ok(())
                }
                Ok(mapping) => Err(format!(
                    "key and visitorId differ (value visitorId {:?})",
                    mapping.visitor_id
                )),
                Err(e) => Err(format!("undecodable: {e}")),
            },
        };
        if result.is_err() {
            m.idmap_updates.with_label_values(&["invalid"]).inc();
        }
        m.idmap_entries.set(self.sink.entries() as i64);
        result
    }

    fn invalid_key(&self) {
        metrics()
            .idmap_updates
            .with_label_values(&["invalid"])
            .inc();
    }

    fn entries(&self) -> usize {
        self.sink.entries()
    }

    fn loaded(&self) {
        self.sink.loaded();
        metrics().idmap_entries.set(self.sink.entries() as i64);
    }
}

/// Follows the id mapping topic into `table` until `shutdown` (see [`follow_compacted`]).
pub async fn follow_idmap(
    client_config: ClientConfig,
    topic: String,
    codec: IdMappingCodec,
    table: impl IdMapStore,
    caught_up: watch::Sender<bool>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let records = IdMapRecords { codec, sink: table };
    follow_compacted(client_config, topic, records, caught_up, shutdown).await
}

/// Hands memory freed while loading (decode buffers, the arena's earlier, smaller copies) back
/// to the OS, so the resident size after start-up reflects the table, not its history.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
        unsafe {
            malloc_trim(0);
        }
    }
}
