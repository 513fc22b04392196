//! Audience lists (`transform_segment.field_mode = "audience_list"` or `"both"`): the Pendo
//! sink keeps each visitor's and account's current audience keys and writes them whole, as one
//! list-valued Pendo field (`audience_list_field`, e.g. `segment_audiences`).
//!
//! - **Input**: the transformer stays stateless; its `PendoMetadataUpdate`s carry membership
//!   deltas in `listChanges` (`{field, key, member}`). `canonical.pendo-updates` is keyed by
//!   the visitor/account id, so every delta of one entity is in one partition, read in order by
//!   the one sink member that owns it.
//! - **State**: per assigned input partition p, an in-memory map (`visitor:<id>` /
//!   `account:<id>`) -> {field: sorted keys}. It is durable in the compacted topic
//!   `state.pendo-audience-lists` (same partition count as `canonical.pendo-updates`), key
//!   `visitor:<id>` / `account:<id>`, value JSON `{"segment_audiences": ["a", "b"]}` (an empty
//!   list is a value; no tombstones), the records of input partition p written to state
//!   partition p. Before the first record of p is taken after an assignment, state partition p
//!   is read to its end; a revoked partition's map is dropped.
//! - **Writing**: when a job is delivered (at most one job per partition is in flight, so the
//!   previous job's state is in memory), each entity's deltas are applied in record order to a
//!   copy of its current lists, and the resulting full lists go into the entity's item values
//!   (`field: [sorted keys]`), next to any other value coalesced in the batch. After Pendo
//!   applied the item (2xx and no per-item failure) the entity's new lists are written to the
//!   state topic and acknowledged by Kafka **before** the job reports its offsets done; only
//!   then the in-memory map changes. A dead-lettered item leaves the state as it was. A state
//!   write that Kafka refuses is retried with backoff (the job is never marked done without
//!   it); lists that would not fit one state record are never written: their item is
//!   dead-lettered first (`audience_lists_too_large`), so no entity can hold its partition.
//! - **Crash and replay converge**: offsets move only after the state write, so a crash or a
//!   rebalance re-reads records whose deltas may already be in the state (the state written,
//!   the offsets not committed) or in Pendo (Pendo written, the state not). A delta sets one
//!   (field, key) to a membership, it does not toggle it: re-applying the same deltas in the
//!   same order leaves each (field, key) at its last operation, whatever part of them the state
//!   already held. The replayed job writes the same full list to Pendo again (idempotent) and
//!   the same state record, so Pendo and the state end identical to a run without the crash.
//!   (An uncommitted state write of an aborted job that lands after the next owner read the
//!   partition is harmless for the same reason: its records are replayed on top.)
//! - **Revocation** ([`AudienceListState::fence`], the sink's revocation barrier, run inside
//!   the rebalance callback that the group waits for): the revoked partitions' state is dropped,
//!   so no state write for them starts any more (a write that Kafka keeps refusing stops
//!   retrying), and every write already handed to Kafka is waited for (up to 30 s). So no write
//!   of the old owner lands after the new owner read the partition and wrote its own — which
//!   compaction would otherwise keep. Left: a member that the group expelled while it was stuck
//!   (session timeout) gets no callback before its partitions move.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde_json::{Map, Value};

use crate::http::retry::RetryPolicy;
use crate::kafka::metadata::ROLE_TOPIC_WAIT;
use crate::kafka::read_to_end::read_partition_to_end;
use crate::metrics::metrics;
use crate::schema::pendo_metadata_update::{FieldValue, ListChange, PendoEntity};

/// How long a revocation waits for the revoked partitions' state writes (Kafka's own send
/// timeout for them).
pub const FENCE_TIMEOUT: Duration = Duration::from_secs(30);

/// One entity's lists: field -> current keys (sorted, no duplicates).
pub type Lists = BTreeMap<String, BTreeSet<String>>;

/// The state key of an entity: `visitor:<id>` or `account:<id>`.
pub fn state_key(entity: PendoEntity, id: &str) -> String {
    match entity {
        PendoEntity::Visitor => format!("visitor:{id}"),
        PendoEntity::Account => format!("account:{id}"),
    }
}

/// Applies `changes` in order to a copy of `current`; returns the new lists and the fields the
/// changes touched (each with its full, sorted value to write).
pub fn apply_changes(
    current: &Lists,
    changes: &[ListChange],
) -> (Lists, BTreeMap<String, FieldValue>) {
    let mut lists = current.clone();
    let mut touched = BTreeSet::new();
    for c in changes {
        let keys = lists.entry(c.field.clone()).or_default();
        if c.member {
            keys.insert(c.key.clone());
        } else {
            keys.remove(&c.key);
        }
        touched.insert(c.field.clone());
    }
    let values = touched
        .into_iter()
        .map(|f| {
            let keys = lists
                .get(&f)
                .map(|k| k.iter().cloned().collect())
                .unwrap_or_default();
            (f, FieldValue::List(keys))
        })
        .collect();
    (lists, values)
}

/// The state record's value: `{"<field>": ["a", "b"], ...}`.
pub fn encode_lists(lists: &Lists) -> Vec<u8> {
    let o: Map<String, Value> = lists
        .iter()
        .map(|(f, keys)| {
            (
                f.clone(),
                Value::Array(keys.iter().cloned().map(Value::String).collect()),
            )
        })
        .collect();
    serde_json::to_vec(&Value::Object(o)).expect("JSON serialises")
}

/// Reads a state record's value; `None` when it is not an object of string lists.
pub fn decode_lists(value: &[u8]) -> Option<Lists> {
    let v: Value = serde_json::from_slice(value).ok()?;
    v.as_object()?
        .iter()
        .map(|(f, keys)| {
            let keys = keys
                .as_array()?
                .iter()
                .map(|k| k.as_str().map(str::to_string))
                .collect::<Option<BTreeSet<String>>>()?;
            Some((f.clone(), keys))
        })
        .collect()
}

/// The audience lists of the assigned partitions, and their durable copy.
pub struct AudienceListState {
    partitions: Mutex<HashMap<i32, HashMap<String, Lists>>>,
    consumer_config: rdkafka::ClientConfig,
    topic: String,
    producer: FutureProducer,
    retry: RetryPolicy,
}

impl AudienceListState {
    /// State kept in `topic`, read with `consumer_config` and written with `producer`; a
    /// refused write is retried with backoff within `retry`.
    pub fn new(
        consumer_config: rdkafka::ClientConfig,
        topic: String,
        producer: FutureProducer,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            partitions: Mutex::new(HashMap::new()),
            consumer_config,
            topic,
            producer,
            retry,
        }
    }

    /// The state topic's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn update_gauge(map: &HashMap<i32, HashMap<String, Lists>>) {
        let n: usize = map.values().map(HashMap::len).sum();
        metrics().pendo_audience_list_entities.set(n as i64);
    }

    /// Whether partition `p`'s state was read since its assignment.
    pub fn is_loaded(&self, p: i32) -> bool {
        self.partitions.lock().expect("state lock").contains_key(&p)
    }

    /// Reads state partition `p` to its end (before the first record of input partition `p`
    /// is taken); returns the number of entities.
    pub async fn load(&self, p: i32) -> Result<usize, String> {
        let (config, topic) = (self.consumer_config.clone(), self.topic.clone());
        let read = tokio::task::spawn_blocking(move || {
            let mut found: HashMap<String, Lists> = HashMap::new();
            read_partition_to_end(config, &topic, p, ROLE_TOPIC_WAIT, |m| {
                use rdkafka::Message;
                if let Some(k) = m.key().and_then(|k| std::str::from_utf8(k).ok()) {
                    match m.payload().and_then(decode_lists) {
                        Some(lists) => {
                            found.insert(k.to_string(), lists);
                        }
                        None => {
                            tracing::warn!(key = k, partition = p,
                                "unreadable audience-list state record ignored (a tombstone or not {{field: [keys]}})");
                            found.remove(k);
                        }
                    }
                }
                Ok(())
            })
            .map(|_| found)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot read {} partition {p}: {e:#}", self.topic))?;
        let n = read.len();
        let mut map = self.partitions.lock().expect("state lock");
        map.insert(p, read);
        Self::update_gauge(&map);
        Ok(n)
    }

    /// Drops the state of revoked partitions.
    pub fn revoke(&self, partitions: &[i32]) {
        let mut map = self.partitions.lock().expect("state lock");
        for p in partitions {
            map.remove(p);
        }
        Self::update_gauge(&map);
    }

    /// The current lists of `key` in partition `p` (empty when unknown).
    pub fn current(&self, p: i32, key: &str) -> Lists {
        self.partitions
            .lock()
            .expect("state lock")
            .get(&p)
            .and_then(|m| m.get(key))
            .cloned()
            .unwrap_or_default()
    }

    /// The revocation barrier: drops the state of `partitions` (no state write for them starts
    /// from now on) and waits, up to [`FENCE_TIMEOUT`], until every write already handed to
    /// Kafka is resolved, so that none lands after the partitions' next owner wrote its own.
    /// Blocking: call it where blocking is meant (librdkafka's rebalance callback).
    pub fn fence(&self, partitions: &[i32]) {
        if partitions.is_empty() {
            return;
        }
        // Also when the state is no longer held (`revoke` ran first): a write may still be in
        // flight. With nothing queued the flush returns at once.
        self.revoke(partitions);
        let started = std::time::Instant::now();
        match self.producer.flush(FENCE_TIMEOUT) {
            Ok(()) => tracing::info!(topic = %self.topic, ?partitions,
                waited_ms = started.elapsed().as_millis() as u64,
                "revoked: every audience-list state write of these partitions is resolved"),
            Err(e) => {
                metrics()
                    .pendo_audience_list_state_writes
                    .with_label_values(&["unresolved_at_revocation"])
                    .inc();
                tracing::error!(topic = %self.topic, ?partitions, error = %e,
                    "revoked with audience-list state writes still unresolved: one may land after \
                     the next owner's, and compaction would keep that older list until the \
                     entity's next change");
            }
        }
    }

    /// Writes `lists` as the state of `key` to state partition `p`, retrying until Kafka
    /// acknowledges it, then updates the in-memory map. Returns false, without writing, once
    /// `p` is revoked ([`fence`](Self::fence), [`revoke`](Self::revoke)): its next owner
    /// writes the entity's state from the replayed records.
    pub async fn record(&self, p: i32, key: &str, lists: &Lists) -> bool {
        let value = encode_lists(lists);
        let m = metrics();
        let mut retry = self.retry.start(None);
        loop {
            // Checked and handed to Kafka under the lock that `fence` takes: a write is either
            // in the producer's queue when the fence flushes it, or not started at all.
            let delivery = {
                let map = self.partitions.lock().expect("state lock");
                if !map.contains_key(&p) {
                    m.pendo_audience_list_state_writes
                        .with_label_values(&["skipped_revoked"])
                        .inc();
                    return false;
                }
                self.producer.send_result(
                    FutureRecord::to(&self.topic)
                        .partition(p)
                        .key(key)
                        .payload(&value),
                )
            };
            let sent = match delivery {
                Ok(pending) => match pending.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(e),
                    Err(_) => Err(KafkaError::Canceled),
                },
                Err((e, _)) => Err(e),
            };
            match sent {
                Ok(()) => {
                    m.pendo_audience_list_state_writes
                        .with_label_values(&["ok"])
                        .inc();
                    break;
                }
                Err(e) => {
                    m.pendo_audience_list_state_writes
                        .with_label_values(&["failed"])
                        .inc();
                    let wait = retry.after_failure(None);
                    tracing::error!(topic = %self.topic, partition = p, key, error = %e,
                        retry_in_s = wait.delay.as_secs_f64(),
                        "cannot write the audience-list state; the job is not done until it is written, retrying");
                    wait.elapse().await;
                }
            }
        }
        let mut map = self.partitions.lock().expect("state lock");
        // A partition revoked meanwhile keeps no state here (its next owner reads the topic).
        if let Some(entities) = map.get_mut(&p) {
            entities.insert(key.to_string(), lists.clone());
            Self::update_gauge(&map);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(key: &str, member: bool) -> ListChange {
        ListChange {
            field: "segment_audiences".into(),
            key: key.into(),
            member,
        }
    }

    fn list(keys: &[&str]) -> FieldValue {
        FieldValue::List(keys.iter().map(|k| k.to_string()).collect())
    }

    #[test]
    fn deltas_apply_in_order_and_the_full_sorted_list_is_written() {
        let (lists, values) = apply_changes(
            &Lists::new(),
            &[
                change("b", true),
                change("a", true),
                change("a", false),
                change("c", true),
                change("c", true),
            ],
        );
        assert_eq!(values["segment_audiences"], list(&["b", "c"]));
        assert_eq!(values.len(), 1);
        // On top of existing state; other fields are kept but not written.
        let mut current = lists.clone();
        current.insert("other".into(), BTreeSet::from(["x".to_string()]));
        let (after, values) = apply_changes(&current, &[change("b", false)]);
        assert_eq!(
            values,
            BTreeMap::from([("segment_audiences".into(), list(&["c"]))])
        );
        assert_eq!(after["other"], BTreeSet::from(["x".to_string()]));
        // Leaving everything writes an empty list (not nothing).
        let (_, values) = apply_changes(&after, &[change("c", false)]);
        assert_eq!(values["segment_audiences"], list(&[]));
    }

    #[test]
    fn replaying_deltas_over_state_that_already_holds_them_converges() {
        let changes = [
            change("a", true),
            change("b", true),
            change("a", false),
            change("c", true),
        ];
        let (once, _) = apply_changes(&Lists::new(), &changes);
        // A crash after the state was written but before the offsets moved: the same records
        // are applied again, over the state that already holds them, or over any prefix.
        for applied in 0..=changes.len() {
            let (partial, _) = apply_changes(&Lists::new(), &changes[..applied]);
            let (replayed, values) = apply_changes(&partial, &changes);
            assert_eq!(replayed, once, "after {applied} applied");
            assert_eq!(values["segment_audiences"], list(&["b", "c"]));
        }
    }

    #[test]
    fn state_records_round_trip_and_bad_ones_are_refused() {
        let mut lists = Lists::new();
        lists.insert(
            "segment_audiences".into(),
            BTreeSet::from(["b".to_string(), "a".to_string()]),
        );
        lists.insert("empty".into(), BTreeSet::new());
        let bytes = encode_lists(&lists);
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"empty":[],"segment_audiences":["a","b"]}"#
        );
        assert_eq!(decode_lists(&bytes), Some(lists));
        for bad in [&b"[]"[..], b"{\"f\":\"a\"}", b"{\"f\":[1]}", b"not json"] {
            assert_eq!(decode_lists(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(state_key(PendoEntity::Visitor, "v:1"), "visitor:v:1");
        assert_eq!(state_key(PendoEntity::Account, "acme"), "account:acme");
    }
}
