//! Pure parts of the Pendo sink: checking an update, coalescing updates into one request per
//! (entity kind, field group), the request body, and reading Pendo's per-item answer.
//!
//! Coalescing: within a batch, updates of the same visitor/account are merged in key order
//! (the order of the Kafka partition), the last write of each field winning, so an audience
//! backfill that repeats a visitor costs one item, not one per repetition. Every record that
//! contributed to an item is remembered, so a per-item failure dead-letters exactly those.
//!
//! The bulk endpoint's answer is not documented precisely (`docs/external-apis.md`, "Pendo REST API"). The shape assumed
//! (and served by `tests/support/pendo_server.rs`) is
//! `{"total": n, "updated": n, "failed": n, "missing": [id...], "errors": [{"id": id, "error": text}...]}`.
//! Anything that does not add up (not an object, counts missing or inconsistent, ids that were
//! not sent, failures not accounted for by ids) is an unknown shape: the whole request counts
//! as failed and is retried (the writes are idempotent), never acknowledged on a guess.

use rdkafka::Message;
use rdkafka::message::BorrowedMessage;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::audience_lists::Lists;
use super::segments::SegmentMembershipChanges;
use crate::pendo_api::fields::{FIELD_GROUPS, valid_field_name};
use crate::schema::pendo_metadata_update::{FieldValue, ListChange, PendoEntity};
use crate::schema::{PendoMetadataUpdate, PendoSegmentChange};

/// Checks what Pendo would refuse for the whole batch; `Err` is the dead-letter detail.
pub fn validate_update(u: &PendoMetadataUpdate) -> Result<(), String> {
    if u.entity_id.trim().is_empty() {
        return Err("empty entityId".into());
    }
    if !FIELD_GROUPS.contains(&u.field_group.as_str()) {
        return Err(format!(
            "fieldGroup {:?} is neither custom nor agent",
            u.field_group
        ));
    }
    if u.values.is_empty() && u.list_changes.is_empty() {
        return Err("no values".into());
    }
    for c in &u.list_changes {
        if !valid_field_name(&c.field) {
            return Err(format!("invalid list field name {:?}", c.field));
        }
        if c.key.is_empty() {
            return Err(format!("list field {}: empty key", c.field));
        }
    }
    for (k, v) in &u.values {
        if !valid_field_name(k) {
            return Err(format!("invalid field name {k:?}"));
        }
        if let FieldValue::Double(d) = v
            && !d.is_finite()
        {
            return Err(format!("field {k}: non-finite number"));
        }
    }
    Ok(())
}

/// A field value as JSON.
pub fn value_json(v: &FieldValue) -> Value {
    match v {
        FieldValue::Null => Value::Null,
        FieldValue::Bool(b) => json!(b),
        FieldValue::Long(n) => json!(n),
        FieldValue::Double(d) => json!(d),
        FieldValue::Text(s) => json!(s),
        FieldValue::List(l) => json!(l),
    }
}

/// One Kafka record behind an item: what a dead letter needs.
#[derive(Debug, Clone)]
pub struct Contributor {
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Record key.
    pub key: Option<Arc<[u8]>>,
    /// Record value, as read.
    pub original: Arc<[u8]>,
    /// `origin.receivedAt`, for the end-to-end latency.
    pub received_at: Option<i64>,
}

impl Contributor {
    /// The contributor of `record`, received at `received_at`.
    pub fn of(record: &BorrowedMessage<'_>, received_at: Option<i64>) -> Self {
        Self {
            partition: record.partition(),
            offset: record.offset(),
            key: record.key().map(Into::into),
            original: record.payload().unwrap_or_default().into(),
            received_at,
        }
    }
}

/// One visitor's or account's coalesced values.
#[derive(Debug, Clone)]
pub struct EntityWrite {
    /// The visitor or account id.
    pub id: String,
    /// Field -> last value.
    pub values: BTreeMap<String, FieldValue>,
    /// Records merged into this item, in order.
    pub contributors: Vec<Contributor>,
    /// List membership deltas of the merged records, in order (audience lists).
    pub list_changes: Vec<ListChange>,
    /// The entity's lists after `list_changes`, set when the job is delivered: written to the
    /// audience-list state once Pendo applied the item.
    pub list_state: Option<Lists>,
}

/// An item coalescing the records of one id (an entity's write, a visitor's membership).
pub trait Coalesced {
    /// The id records are coalesced by.
    fn id(&self) -> &str;
}

impl Coalesced for EntityWrite {
    fn id(&self) -> &str {
        &self.id
    }
}

/// Items in first-seen order with an index by id, so a later record of the same id merges
/// into its item instead of adding one (both Pendo requests' batches coalesce so). Items may be
/// changed in place, never their ids (the index would go stale).
#[derive(Debug, Clone)]
pub struct CoalescedItems<T> {
    items: Vec<T>,
    index: HashMap<String, usize>,
}

impl<T: Coalesced> CoalescedItems<T> {
    /// `items` (with distinct ids), in order.
    pub fn from_items(items: Vec<T>) -> Self {
        let index = items
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id().to_string(), i))
            .collect();
        Self { items, index }
    }

    /// Adds `item`, or merges it with `merge` into the item of the same id; returns whether it
    /// merged.
    pub fn add(&mut self, item: T, merge: impl FnOnce(&mut T, T)) -> bool {
        match self.index.get(item.id()) {
            Some(&i) => {
                merge(&mut self.items[i], item);
                true
            }
            None => {
                self.index.insert(item.id().to_string(), self.items.len());
                self.items.push(item);
                false
            }
        }
    }

    /// The items, in order.
    pub fn into_items(self) -> Vec<T> {
        self.items
    }
}

impl<T> Default for CoalescedItems<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            index: HashMap::new(),
        }
    }
}

impl<T> std::ops::Deref for CoalescedItems<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.items
    }
}

impl<'a, T> IntoIterator for &'a CoalescedItems<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.iter()
    }
}

impl<'a, T> IntoIterator for &'a mut CoalescedItems<T> {
    type Item = &'a mut T;
    type IntoIter = std::slice::IterMut<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.iter_mut()
    }
}

impl<T> std::ops::DerefMut for CoalescedItems<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.items
    }
}

/// The items of one request: one entity kind and field group.
#[derive(Debug, Clone)]
pub struct GroupBatch {
    /// Visitor or account.
    pub entity: PendoEntity,
    /// `custom` or `agent`.
    pub group: String,
    /// Items in first-seen order.
    pub writes: CoalescedItems<EntityWrite>,
}

impl GroupBatch {
    /// An empty batch.
    pub fn new(entity: PendoEntity, group: &str) -> Self {
        Self {
            entity,
            group: group.to_string(),
            writes: CoalescedItems::default(),
        }
    }

    /// Removes and returns the writes `refuse` picks (e.g. those whose audience-list state would
    /// not fit its topic), keeping the others in order.
    pub fn remove_writes(
        &mut self,
        mut refuse: impl FnMut(&EntityWrite) -> bool,
    ) -> Vec<EntityWrite> {
        let (out, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.writes)
            .into_items()
            .into_iter()
            .partition(|w| refuse(w));
        self.writes = CoalescedItems::from_items(keep);
        out
    }

    /// Merges `u` in; returns whether it was coalesced into an existing item.
    pub fn push(&mut self, u: PendoMetadataUpdate, c: Contributor) -> bool {
        let write = EntityWrite {
            id: u.entity_id,
            values: u.values,
            contributors: vec![c],
            list_changes: u.list_changes,
            list_state: None,
        };
        self.writes.add(write, |w, later| {
            w.values.extend(later.values);
            w.list_changes.extend(later.list_changes);
            w.contributors.extend(later.contributors);
        })
    }

    /// Items in the request.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// The id key of each item: `visitorId` or `accountId`.
    pub fn id_key(&self) -> &'static str {
        match self.entity {
            PendoEntity::Visitor => "visitorId",
            PendoEntity::Account => "accountId",
        }
    }

    /// The request body: `[{"visitorId": id, "values": {...}}, ...]`.
    pub fn body(&self) -> Vec<u8> {
        let items: Vec<Value> = self
            .writes
            .iter()
            .map(|w| {
                let values: Map<String, Value> = w
                    .values
                    .iter()
                    .map(|(k, v)| (k.clone(), value_json(v)))
                    .collect();
                let mut item = Map::new();
                item.insert(self.id_key().into(), json!(w.id));
                item.insert("values".into(), Value::Object(values));
                Value::Object(item)
            })
            .collect();
        serde_json::to_vec(&items).expect("JSON values serialise")
    }

    /// Halves of this batch (to isolate an item Pendo refuses with a 400); `Err(self)` when
    /// there is one item left.
    pub fn split(self) -> Result<(GroupBatch, GroupBatch), GroupBatch> {
        if self.writes.len() < 2 {
            return Err(self);
        }
        let mut first = self.writes.into_items();
        let second = first.split_off(first.len() / 2);
        let make = |writes: Vec<EntityWrite>| GroupBatch {
            entity: self.entity,
            group: self.group.clone(),
            writes: CoalescedItems::from_items(writes),
        };
        Ok((make(first), make(second)))
    }
}

/// The open or closed work of one partition: one [`GroupBatch`] per (entity, field group),
/// and one [`SegmentMembershipChanges`] per Pendo Segment (audience key).
#[derive(Debug, Default)]
pub struct PendoJob {
    /// Batches by (entity kind, field group), sent in this order.
    pub groups: BTreeMap<(u8, String), GroupBatch>,
    /// Pendo Segment changes by audience key, sent after the groups, one segment at a time.
    pub segments: BTreeMap<String, SegmentMembershipChanges>,
    /// When the first update was taken in (for the linger).
    pub opened_at: Option<Instant>,
    /// The job's own linger (segment changes), if not the sink's.
    pub linger: Option<Duration>,
}

impl PendoJob {
    /// Adds `u`; returns whether it was coalesced, and the size of its batch afterwards.
    pub fn push(&mut self, u: PendoMetadataUpdate, c: Contributor) -> (bool, usize) {
        self.opened_at.get_or_insert_with(Instant::now);
        let kind = match u.entity {
            PendoEntity::Visitor => 0,
            PendoEntity::Account => 1,
        };
        let b = self
            .groups
            .entry((kind, u.field_group.clone()))
            .or_insert_with(|| GroupBatch::new(u.entity, &u.field_group));
        let coalesced = b.push(u, c);
        (coalesced, b.len())
    }

    /// Adds a Pendo Segment change; returns whether it was coalesced, and the number of
    /// distinct visitors of its segment afterwards. `linger` is the segment changes' linger.
    pub fn push_segment(
        &mut self,
        c: PendoSegmentChange,
        contributor: Contributor,
        linger: Duration,
    ) -> (bool, usize) {
        self.opened_at.get_or_insert_with(Instant::now);
        self.linger = Some(self.linger.map_or(linger, |l| l.min(linger)));
        let b = self
            .segments
            .entry(c.audience_key.clone())
            .or_insert_with(|| SegmentMembershipChanges::new(&c.audience_key, &c.segment_name));
        let coalesced = b.push(c, contributor);
        (coalesced, b.len())
    }

    /// Whether no update was taken in.
    pub fn is_empty(&self) -> bool {
        self.groups.values().all(GroupBatch::is_empty)
            && self
                .segments
                .values()
                .all(SegmentMembershipChanges::is_empty)
    }
}

/// An item Pendo did not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemFailure {
    /// The visitor or account id.
    pub id: String,
    /// Bounded dead-letter reason: `missing` (unknown visitor/account) or `rejected`.
    pub reason: &'static str,
    /// Pendo's message.
    pub detail: String,
}

/// Reads the bulk endpoint's per-item answer for a request of `sent` ids: the items that
/// failed, or `Err` for an unknown shape (the whole request is then retried).
pub fn parse_outcome(body: &[u8], sent: &[&str]) -> Result<Vec<ItemFailure>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("answer is not JSON ({e})"))?;
    let o = v.as_object().ok_or("answer is not a JSON object")?;
    let count = |k: &str| {
        o.get(k)
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("answer has no count {k:?}"))
    };
    let (total, updated, failed) = (count("total")?, count("updated")?, count("failed")?);
    if total != sent.len() as u64 || updated + failed != total {
        return Err(format!(
            "answer counts do not add up: total {total}, updated {updated}, failed {failed}, sent {}",
            sent.len()
        ));
    }
    let known = |id: &str| sent.contains(&id);
    let mut out = Vec::new();
    match o.get("missing") {
        None | Some(Value::Null) => {}
        Some(Value::Array(ids)) => {
            for id in ids {
                let id = id.as_str().ok_or("missing: not a list of ids")?;
                if !known(id) {
                    return Err(format!("missing: {id:?} was not sent"));
                }
                out.push(ItemFailure {
                    id: id.to_string(),
                    reason: "missing",
                    detail: "Pendo does not know this id (pendo_sink.create = false)".into(),
                });
            }
        }
        Some(_) => return Err("missing: not a list".into()),
    }
    match o.get("errors") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for item in items {
                let id = item
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or("errors: an item without id")?;
                if !known(id) {
                    return Err(format!("errors: {id:?} was not sent"));
                }
                let detail = match item.get("error") {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => "failed".into(),
                };
                out.push(ItemFailure {
                    id: id.to_string(),
                    reason: "rejected",
                    detail,
                });
            }
        }
        Some(_) => return Err("errors: not a list".into()),
    }
    if out.len() as u64 != failed {
        return Err(format!(
            "answer reports {failed} failed items but names {}",
            out.len()
        ));
    }
    Ok(out)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::schema::pendo_metadata_update::UpdateOrigin;

    fn update(id: &str, fields: &[(&str, FieldValue)]) -> PendoMetadataUpdate {
        PendoMetadataUpdate {
            update_id: format!("u-{id}"),
            entity: PendoEntity::Visitor,
            entity_id: id.into(),
            field_group: "custom".into(),
            values: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            timestamp: "2026-11-29T00:00:00.000Z".into(),
            origin: UpdateOrigin::default(),
            list_changes: vec![],
        }
    }

    /// A contributor at `offset` of partition 0 (also for the Pendo Segment tests).
    pub(in crate::sinks::pendo) fn contributor(offset: i64) -> Contributor {
        Contributor {
            partition: 0,
            offset,
            key: None,
            original: Arc::from(&b"x"[..]),
            received_at: None,
        }
    }

    #[test]
    fn field_names_and_updates_are_checked() {
        for ok in ["a", "_x", "segment_trial_1", "A9"] {
            assert!(valid_field_name(ok), "{ok}");
        }
        for bad in ["", "1a", "a-b", "a b", "é"] {
            assert!(!valid_field_name(bad), "{bad}");
        }
        validate_update(&update("v", &[("a", FieldValue::Bool(true))])).unwrap();
        assert!(validate_update(&update("v", &[])).is_err());
        assert!(validate_update(&update("", &[("a", FieldValue::Null)])).is_err());
        assert!(validate_update(&update("v", &[("a", FieldValue::Double(f64::NAN))])).is_err());
        let mut u = update("v", &[("a", FieldValue::Null)]);
        u.field_group = "other".into();
        assert!(validate_update(&u).is_err());
    }

    #[test]
    fn updates_of_one_visitor_coalesce_last_write_wins_in_order() {
        let mut job = PendoJob::default();
        let t = FieldValue::Bool(true);
        let f = FieldValue::Bool(false);
        assert_eq!(
            job.push(update("v1", &[("a", t.clone())]), contributor(0)),
            (false, 1)
        );
        assert_eq!(
            job.push(update("v2", &[("a", t.clone())]), contributor(1)),
            (false, 2)
        );
        assert_eq!(
            job.push(
                update("v1", &[("a", f.clone()), ("b", t.clone())]),
                contributor(2)
            ),
            (true, 2)
        );
        let mut acct = update("a1", &[("tier", FieldValue::Text("gold".into()))]);
        acct.entity = PendoEntity::Account;
        assert_eq!(job.push(acct, contributor(3)), (false, 1));
        assert_eq!(job.groups.len(), 2);
        let visitors = &job.groups[&(0, "custom".to_string())];
        let body: Value = serde_json::from_slice(&visitors.body()).unwrap();
        assert_eq!(
            body,
            json!([
                {"visitorId": "v1", "values": {"a": false, "b": true}},
                {"visitorId": "v2", "values": {"a": true}}
            ])
        );
        assert_eq!(visitors.writes[0].contributors.len(), 2);
        let accounts = &job.groups[&(1, "custom".to_string())];
        let body: Value = serde_json::from_slice(&accounts.body()).unwrap();
        assert_eq!(
            body,
            json!([{"accountId": "a1", "values": {"tier": "gold"}}])
        );
    }

    #[test]
    fn list_changes_are_checked_and_accumulate_in_record_order() {
        let change = |field: &str, key: &str, member: bool| ListChange {
            field: field.into(),
            key: key.into(),
            member,
        };
        let with = |id: &str, changes: Vec<ListChange>| PendoMetadataUpdate {
            list_changes: changes,
            ..update(id, &[])
        };
        // Only list changes, no values: valid (the sink computes the value).
        validate_update(&with("v1", vec![change("segment_audiences", "a", true)])).unwrap();
        assert!(validate_update(&with("v1", vec![change("bad-name", "a", true)])).is_err());
        assert!(validate_update(&with("v1", vec![change("segment_audiences", "", true)])).is_err());
        let mut job = PendoJob::default();
        job.push(
            with("v1", vec![change("segment_audiences", "a", true)]),
            contributor(0),
        );
        job.push(
            with("v1", vec![change("segment_audiences", "a", false)]),
            contributor(1),
        );
        job.push(
            with("v1", vec![change("segment_audiences", "b", true)]),
            contributor(2),
        );
        let w = &job.groups.values().next().unwrap().writes[0];
        assert_eq!(
            w.list_changes,
            vec![
                change("segment_audiences", "a", true),
                change("segment_audiences", "a", false),
                change("segment_audiences", "b", true),
            ]
        );
        assert!(w.values.is_empty() && w.list_state.is_none());
        assert_eq!(w.contributors.len(), 3);
    }

    #[test]
    fn every_value_kind_is_written_as_json() {
        let u = update(
            "v",
            &[
                ("n", FieldValue::Null),
                ("l", FieldValue::Long(3)),
                ("d", FieldValue::Double(1.5)),
                ("s", FieldValue::List(vec!["x".into()])),
            ],
        );
        let mut b = GroupBatch::new(PendoEntity::Visitor, "custom");
        b.push(u, contributor(0));
        let body: Value = serde_json::from_slice(&b.body()).unwrap();
        assert_eq!(
            body[0]["values"],
            json!({"n": null, "l": 3, "d": 1.5, "s": ["x"]})
        );
        let (one, two) = {
            b.push(update("w", &[("l", FieldValue::Long(1))]), contributor(1));
            b.split().unwrap()
        };
        assert_eq!(
            (one.writes[0].id.as_str(), two.writes[0].id.as_str()),
            ("v", "w")
        );
        assert!(one.split().is_err());
    }

    #[test]
    fn outcomes_are_read_defensively() {
        let sent = ["v1", "v2", "v3"];
        let ok = br#"{"total":3,"updated":3,"failed":0,"missing":[],"errors":[]}"#;
        assert_eq!(parse_outcome(ok, &sent).unwrap(), vec![]);
        let partial = br#"{"total":3,"updated":1,"failed":2,"missing":["v3"],"errors":[{"id":"v2","error":"unknown field foo"}]}"#;
        let f = parse_outcome(partial, &sent).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!((f[0].id.as_str(), f[0].reason), ("v3", "missing"));
        assert_eq!((f[1].id.as_str(), f[1].reason), ("v2", "rejected"));
        assert_eq!(f[1].detail, "unknown field foo");
        for unknown in [
            &b"not json"[..],
            b"[]",
            b"{}",
            br#"{"total":3,"updated":3}"#,
            br#"{"total":2,"updated":2,"failed":0}"#,
            br#"{"total":3,"updated":2,"failed":0}"#,
            br#"{"total":3,"updated":2,"failed":1}"#,
            br#"{"total":3,"updated":2,"failed":1,"missing":["zz"]}"#,
            br#"{"total":3,"updated":2,"failed":1,"errors":[{"error":"x"}]}"#,
            br#"{"total":3,"updated":2,"failed":1,"missing":"v1"}"#,
        ] {
            assert!(
                parse_outcome(unknown, &sent).is_err(),
                "{}",
                String::from_utf8_lossy(unknown)
            );
        }
    }
}
