//! Pendo Segments as a reverse-flow target: membership changes (`PendoSegmentChange`, from
//! `canonical.pendo-segment-changes`, keyed by audience key) applied to one Pendo Segment per
//! audience.
//!
//! - **Coalescing**: per batch and segment, the last change of each visitor wins (added then
//!   removed in one batch ends as a removal); every record merged into a visitor is remembered,
//!   so a per-visitor failure dead-letters exactly those records.
//! - **Creation, once**: a segment is created (`POST /api/v1/segment/upload`, which needs at
//!   least one visitor) with the first batch that adds visitors; its id is remembered in the
//!   compacted topic `state.pendo-segments` (key = audience key, value
//!   `{"segmentId", "name"}`), written and acknowledged before anything else is sent to it. A
//!   `{"segmentId": null}` marker is written first, so a crash between Pendo's answer and the id
//!   being stored is recognised on restart and the segment is looked up by name
//!   (`GET /api/v1/segment`) instead of created twice; a creation left without an answer
//!   (timeout, connection lost) is looked up the same way before it is retried, and an answer
//!   without a `segmentId` too. (The list endpoint is an assumption: if it cannot be read, the
//!   sink creates the segment, accepting a duplicate in that rare case rather than stalling.)
//!   A miss re-reads the state topic first
//!   (another instance may have created the segment while it owned the partition). A batch of
//!   removals only, for a segment that does not exist yet, is a no-op.
//! - **Serialised**: all changes of an audience are in one partition (keyed by audience key),
//!   the sink has at most one job per partition in flight and sends a job's requests one after
//!   the other, and a per-segment lock covers the rest (a partition count change moving a key):
//!   never two requests to one segment in flight from one process.
//! - **Answers**: 409 "operation in progress", 408, 429, 5xx and network errors are retried with
//!   backoff (the metadata path's policy); a 400/413/422 splits the request until the refused
//!   visitor is alone and dead-letters it. A 2xx PATCH is read per item: the `multistatus` list,
//!   one entry per (operation, visitors) with its `status` and `message`. Its shape is not
//!   documented: the shape assumed (served by `tests/support/pendo_server.rs`) is
//!   `{"multistatus": [{"status": 200, "message": "...", "operation": {"op": "add",
//!   "path": "/visitors", "value": [ids]}}]}`, and the entries must account for every visitor
//!   sent exactly once, else the whole request is retried (adds and removes are idempotent).
//!   Entries with a retryable status are retried (only those visitors); other failures are
//!   dead-lettered per visitor with Pendo's message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

use super::config::{segment_create_url, segment_list_url, segment_patch_url};
use super::delivery::PendoDeliveryContext;
use super::encoding::{Coalesced, CoalescedItems, Contributor};
use crate::http::outcome::Outcome;
use crate::http::retry::Retry;
use crate::internal_events::{FailedAttempt, PendoWriteRetried, emit};
use crate::kafka::metadata::ROLE_TOPIC_WAIT;
use crate::kafka::read_to_end::{StartAt, read_to_end};
use crate::metrics::metrics;
use crate::pendo_api::client::PendoResponse;
use crate::schema::PendoSegmentChange;
use crate::sinks::queue::DeliveryError;

/// One visitor's coalesced membership in one batch.
#[derive(Debug, Clone)]
pub struct VisitorChange {
    /// The Pendo visitor id.
    pub visitor_id: String,
    /// The last change: `true` add, `false` remove.
    pub member: bool,
    /// Records merged into this visitor, in order.
    pub contributors: Vec<Contributor>,
}

impl Coalesced for VisitorChange {
    fn id(&self) -> &str {
        &self.visitor_id
    }
}

/// The coalesced changes of one Pendo Segment (one audience) in one job.
#[derive(Debug, Clone)]
pub struct SegmentMembershipChanges {
    /// The audience key (state topic key).
    pub audience_key: String,
    /// The segment's name (the latest change's).
    pub name: String,
    /// Visitors in first-seen order.
    pub visitors: CoalescedItems<VisitorChange>,
}

impl SegmentMembershipChanges {
    /// An empty batch for `audience_key`.
    pub fn new(audience_key: &str, name: &str) -> Self {
        Self {
            audience_key: audience_key.to_string(),
            name: name.to_string(),
            visitors: CoalescedItems::default(),
        }
    }

    /// Merges `c` in (last write per visitor wins); returns whether it was coalesced.
    pub fn push(&mut self, c: PendoSegmentChange, contributor: Contributor) -> bool {
        self.name = c.segment_name;
        let change = VisitorChange {
            visitor_id: c.visitor_id,
            member: c.member,
            contributors: vec![contributor],
        };
        self.visitors.add(change, |v, later| {
            v.member = later.member;
            v.contributors.extend(later.contributors);
        })
    }

    /// Distinct visitors.
    pub fn len(&self) -> usize {
        self.visitors.len()
    }

    /// Whether nothing was taken in.
    pub fn is_empty(&self) -> bool {
        self.visitors.is_empty()
    }
}

/// Checks what can never be written; `Err` is the dead-letter detail.
pub fn validate_change(c: &PendoSegmentChange) -> Result<(), String> {
    if c.audience_key.trim().is_empty() {
        return Err("empty audienceKey".into());
    }
    if c.visitor_id.trim().is_empty() {
        return Err("empty visitorId".into());
    }
    if c.segment_name.trim().is_empty() {
        return Err("empty segmentName".into());
    }
    Ok(())
}

/// The `PATCH /api/v1/segment/{id}/visitor` body for `changes` (adds first, then removes).
pub fn patch_body(changes: &[&VisitorChange]) -> Vec<u8> {
    let ids = |member: bool| -> Vec<&str> {
        changes
            .iter()
            .filter(|c| c.member == member)
            .map(|c| c.visitor_id.as_str())
            .collect()
    };
    let mut patch = Vec::new();
    for (op, member) in [("add", true), ("remove", false)] {
        let value = ids(member);
        if !value.is_empty() {
            patch.push(json!({"op": op, "path": "/visitors", "value": value}));
        }
    }
    serde_json::to_vec(&json!({ "patch": patch })).expect("JSON serialises")
}

/// The `POST /api/v1/segment/upload` body.
pub fn create_body(name: &str, visitors: &[&VisitorChange]) -> Vec<u8> {
    let ids: Vec<&str> = visitors.iter().map(|v| v.visitor_id.as_str()).collect();
    serde_json::to_vec(&json!({"name": name, "visitors": ids})).expect("JSON serialises")
}

/// The segment id of a creation answer `{"segmentId": "..."}` (also `id`).
pub fn parse_created(body: &[u8]) -> Result<String, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("answer is not JSON ({e})"))?;
    ["segmentId", "id"]
        .iter()
        .find_map(|k| match v.get(*k) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        })
        .ok_or_else(|| "answer has no segmentId".to_string())
}

/// A visitor the PATCH did not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchFailure {
    /// The visitor id.
    pub visitor_id: String,
    /// Pendo's status for its operation.
    pub status: u16,
    /// Pendo's message.
    pub message: String,
}

impl PatchFailure {
    /// Whether trying the visitor again may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self.status, 408 | 409 | 429 | 500..=599)
    }
}

/// Reads a PATCH answer for `sent` changes: the visitors that failed, or `Err` for an unknown
/// shape (the whole request is retried).
pub fn parse_multistatus(
    body: &[u8],
    sent: &[&VisitorChange],
) -> Result<Vec<PatchFailure>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("answer is not JSON ({e})"))?;
    let entries = v
        .get("multistatus")
        .and_then(Value::as_array)
        .ok_or("answer has no multistatus list")?;
    // (visitor, add?) -> seen
    let mut expected: HashMap<(&str, bool), bool> = sent
        .iter()
        .map(|c| ((c.visitor_id.as_str(), c.member), false))
        .collect();
    let mut failures = Vec::new();
    for e in entries {
        let status = e
            .get("status")
            .and_then(Value::as_u64)
            .ok_or("multistatus: an entry without a numeric status")? as u16;
        let message = match e.get("message") {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) => String::new(),
            Some(other) => other.to_string(),
        };
        let op = e
            .get("operation")
            .ok_or("multistatus: an entry without operation")?;
        let add = match op.get("op").and_then(Value::as_str) {
            Some("add") => true,
            Some("remove") => false,
            other => return Err(format!("multistatus: operation op {other:?}")),
        };
        let ids = op
            .get("value")
            .and_then(Value::as_array)
            .ok_or("multistatus: operation without a value list")?;
        for id in ids {
            let id = id
                .as_str()
                .ok_or("multistatus: a visitor id is not a string")?;
            match expected.get_mut(&(id, add)) {
                Some(seen @ false) => *seen = true,
                Some(true) => return Err(format!("multistatus: {id:?} reported twice")),
                None => return Err(format!("multistatus: {id:?} was not sent")),
            }
            if !(200..300).contains(&status) {
                failures.push(PatchFailure {
                    visitor_id: id.to_string(),
                    status,
                    message: message.clone(),
                });
            }
        }
    }
    if let Some(((id, _), _)) = expected.iter().find(|(_, seen)| !**seen) {
        return Err(format!("multistatus: {id:?} is not accounted for"));
    }
    Ok(failures)
}

/// What `state.pendo-segments` holds for one audience.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentEntry {
    /// Pendo's id; `None` while a creation may be under way (recovered by name).
    pub segment_id: Option<String>,
    /// The segment's name.
    pub name: String,
}

/// The segment ids of every audience (`state.pendo-segments`), and a lock per segment.
pub struct SegmentState {
    entries: Mutex<HashMap<String, SegmentEntry>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    consumer_config: rdkafka::ClientConfig,
    topic: String,
    producer: FutureProducer,
}

fn parse_entry(value: &[u8]) -> Option<SegmentEntry> {
    let v: Value = serde_json::from_slice(value).ok()?;
    Some(SegmentEntry {
        segment_id: match v.get("segmentId") {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        },
        name: v.get("name").and_then(Value::as_str)?.to_string(),
    })
}

impl SegmentState {
    /// State kept in `topic`, read with `consumer_config` and written with `producer`.
    pub fn new(
        consumer_config: rdkafka::ClientConfig,
        topic: String,
        producer: FutureProducer,
    ) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            consumer_config,
            topic,
            producer,
        }
    }

    /// Reads the whole topic again (at start and on a miss).
    pub async fn reload(&self) -> Result<usize, String> {
        let (config, topic) = (self.consumer_config.clone(), self.topic.clone());
        let read = tokio::task::spawn_blocking(move || {
            let mut found = HashMap::new();
            read_to_end(config, &topic, StartAt::Beginning, ROLE_TOPIC_WAIT, |m| {
                use rdkafka::Message;
                if let Some(k) = m.key().and_then(|k| std::str::from_utf8(k).ok()) {
                    match m.payload().and_then(parse_entry) {
                        Some(e) => {
                            found.insert(k.to_string(), e);
                        }
                        None => {
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
        .map_err(|e| format!("cannot read {}: {e:#}", self.topic))?;
        let n = read.len();
        let mut entries = self.entries.lock().expect("state lock");
        for (k, e) in read {
            // A recorded id is never replaced by a marker read back later.
            let keep = entries
                .get(&k)
                .is_some_and(|old| old.segment_id.is_some() && e.segment_id.is_none());
            if !keep {
                entries.insert(k, e);
            }
        }
        Ok(n)
    }

    fn get(&self, key: &str) -> Option<SegmentEntry> {
        self.entries.lock().expect("state lock").get(key).cloned()
    }

    /// The lock serialising requests to the segment of `key`.
    fn lock_of(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("locks lock")
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    /// Writes `entry` for `key` and waits for Kafka's acknowledgement.
    async fn record(&self, key: &str, entry: SegmentEntry) -> Result<(), DeliveryError> {
        let value = json!({"segmentId": entry.segment_id, "name": entry.name}).to_string();
        self.producer
            .send(
                FutureRecord::to(&self.topic).key(key).payload(&value),
                std::time::Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| DeliveryError(format!("cannot write {}: {e}", self.topic)))?;
        self.entries
            .lock()
            .expect("state lock")
            .insert(key.to_string(), entry);
        Ok(())
    }
}

/// One Pendo Segment request.
#[derive(Clone, Copy)]
enum Request<'a> {
    Post(&'a str, &'a [u8]),
    Patch(&'a str, &'a [u8]),
}

impl PendoDeliveryContext {
    /// Sends one request until Pendo answers it with a 2xx or a refusal of its content
    /// (400/413/422): every other answer is retried with backoff or after `Retry-After`.
    async fn until_answered(
        &self,
        request: Request<'_>,
        retry: &mut Retry<'_>,
        what: &str,
    ) -> PendoResponse {
        let m = metrics();
        loop {
            retry.attempt_of(1).await;
            let r = match request {
                Request::Post(url, body) => self.client.post(url, body.to_vec()).await,
                Request::Patch(url, body) => self.client.patch(url, body.to_vec()).await,
            };
            super::delivery::answered(&r);
            match r.outcome() {
                Outcome::Success | Outcome::Invalid => {
                    m.pendo_sink_backpressure.set(0);
                    return r;
                }
                // A creation without an answer may have happened: the caller looks first.
                Outcome::Retry if r.status.is_none() && matches!(request, Request::Post(..)) => {
                    m.pendo_sink_retries.with_label_values(&["retry"]).inc();
                    return r;
                }
                outcome => {
                    let wait = retry.after_failure(r.retry_after);
                    emit(PendoWriteRetried {
                        role: self.role,
                        request: what,
                        reason: outcome.as_str(),
                        attempt: FailedAttempt {
                            outcome,
                            answer: &r.describe(),
                            retry_in: wait.delay,
                            peer_asked: wait.peer_asked,
                        },
                    });
                    if wait.peer_asked {
                        continue;
                    }
                    wait.elapse().await;
                }
            }
        }
    }

    /// The attempts of one Pendo Segment request, paused with the sink's other requests.
    fn retry(&self) -> Retry<'_> {
        self.pacing.start()
    }

    async fn dead_letter_visitor(
        &self,
        v: &VisitorChange,
        reason: &str,
        detail: &str,
    ) -> Result<(), DeliveryError> {
        self.dead_letter_contributors(&self.segment_source_topic, &v.contributors, reason, detail)
            .await
    }

    fn written(&self, _v: &VisitorChange) {
        metrics()
            .pendo_sink_updates_written
            .with_label_values(&["segmentVisitor"])
            .inc();
    }

    /// Applies one segment's coalesced changes (see the module docs).
    pub async fn deliver_segment(
        &self,
        batch: SegmentMembershipChanges,
    ) -> Result<(), DeliveryError> {
        let Some(state) = &self.segments else {
            // Not configured (cannot happen: the topic is read only with a state).
            return Err(DeliveryError(
                "Pendo Segment state is not configured".into(),
            ));
        };
        let lock = state.lock_of(&batch.audience_key);
        let _serialised = lock.lock().await;
        let Some((segment_id, pending)) = self.segment_for(state, &batch).await? else {
            return Ok(());
        };
        self.patch_visitors(&segment_id, &pending).await
    }

    /// The segment's id and the changes still to PATCH into it, creating the segment (with the
    /// first adds) when it does not exist yet; `None` when nothing is left to send. The create
    /// phase of [`Self::deliver_segment`].
    async fn segment_for<'b>(
        &self,
        state: &SegmentState,
        batch: &'b SegmentMembershipChanges,
    ) -> Result<Option<(String, Vec<&'b VisitorChange>)>, DeliveryError> {
        let key = batch.audience_key.as_str();
        let mut entry = state.get(key);
        if entry.as_ref().is_none_or(|e| e.segment_id.is_none()) {
            // Another instance may have created it while it owned this partition.
            let mut retry = self.retry();
            while let Err(e) = state.reload().await {
                let wait = retry.after_failure(None);
                let delay = wait.delay;
                tracing::warn!(role = self.role, problem = %e, retry_in_s = delay.as_secs_f64(),
                    "cannot read the Pendo Segment state; retrying");
                wait.elapse().await;
            }
            entry = state.get(key);
        }
        let adds: Vec<&VisitorChange> = batch.visitors.iter().filter(|v| v.member).collect();
        let mut pending: Vec<&VisitorChange> = Vec::new();
        let segment_id = match entry.and_then(|e| e.segment_id) {
            Some(id) => {
                pending.extend(batch.visitors.iter());
                id
            }
            None => {
                if adds.is_empty() {
                    // Nothing to remove from a segment that does not exist.
                    for v in &batch.visitors {
                        self.written(v);
                    }
                    return Ok(None);
                }
                let marker = state.get(key).is_some();
                let found = if marker {
                    self.find_by_name(&batch.name).await
                } else {
                    state
                        .record(
                            key,
                            SegmentEntry {
                                segment_id: None,
                                name: batch.name.clone(),
                            },
                        )
                        .await?;
                    None
                };
                match found {
                    Some(id) => {
                        record_id(state, key, &id, &batch.name).await?;
                        pending.extend(batch.visitors.iter());
                        id
                    }
                    None => {
                        let first: Vec<&VisitorChange> = adds
                            .iter()
                            .take(self.segment_request_visitors)
                            .copied()
                            .collect();
                        let Some(id) = self.create(batch, &first).await? else {
                            return Ok(None);
                        };
                        record_id(state, key, &id, &batch.name).await?;
                        for v in &first {
                            self.written(v);
                        }
                        // Removals of visitors the new segment never held are no-ops.
                        for v in batch.visitors.iter().filter(|v| !v.member) {
                            self.written(v);
                        }
                        pending.extend(adds.iter().skip(first.len()).copied());
                        id
                    }
                }
            }
        };
        Ok(Some((segment_id, pending)))
    }

    /// PATCHes `pending` into the segment in requests of at most `segment_request_visitors`,
    /// splitting refused requests and retrying per item: the patch phase of
    /// [`Self::deliver_segment`].
    async fn patch_visitors(
        &self,
        segment_id: &str,
        pending: &[&VisitorChange],
    ) -> Result<(), DeliveryError> {
        let url = segment_patch_url(self.client.base(), segment_id);
        let size = self.segment_request_visitors.max(1);
        let mut work: Vec<Vec<&VisitorChange>> =
            pending.chunks(size).rev().map(<[_]>::to_vec).collect();
        let mut retry = self.retry();
        while let Some(chunk) = work.pop() {
            let body = patch_body(&chunk);
            let r = self
                .until_answered(Request::Patch(&url, &body), &mut retry, "patch")
                .await;
            if r.outcome() == Outcome::Invalid {
                if chunk.len() > 1 {
                    let (a, b) = chunk.split_at(chunk.len() / 2);
                    work.push(b.to_vec());
                    work.push(a.to_vec());
                } else {
                    self.dead_letter_visitor(chunk[0], "rejected", &r.describe())
                        .await?;
                }
                continue;
            }
            match parse_multistatus(&r.body, &chunk) {
                Ok(failures) => {
                    let mut again = Vec::new();
                    for v in &chunk {
                        match failures.iter().find(|f| f.visitor_id == v.visitor_id) {
                            None => self.written(v),
                            Some(f) if f.retryable() => again.push(*v),
                            Some(f) => {
                                let detail =
                                    format!("HTTP {} for this visitor: {}", f.status, f.message);
                                self.dead_letter_visitor(v, "rejected", &detail).await?
                            }
                        }
                    }
                    if !again.is_empty() {
                        metrics()
                            .pendo_sink_retries
                            .with_label_values(&["item"])
                            .inc();
                        retry.after_failure(None).elapse().await;
                        work.push(again);
                    } else {
                        retry.succeeded();
                    }
                }
                Err(e) => {
                    tracing::error!(role = self.role, problem = %e, answer = %r.describe(),
                        "Pendo's PATCH answer has an unknown shape; the whole request is retried");
                    metrics()
                        .pendo_sink_retries
                        .with_label_values(&["unknown_answer"])
                        .inc();
                    retry.after_failure(None).elapse().await;
                    work.push(chunk);
                }
            }
        }
        Ok(())
    }

    /// Creates the segment with `first`; `None` when Pendo refused it (dead-lettered).
    async fn create(
        &self,
        batch: &SegmentMembershipChanges,
        first: &[&VisitorChange],
    ) -> Result<Option<String>, DeliveryError> {
        let url = segment_create_url(self.client.base());
        let body = create_body(&batch.name, first);
        let mut retry = self.retry();
        loop {
            let r = self
                .until_answered(Request::Post(&url, &body), &mut retry, "create")
                .await;
            if r.status.is_none() {
                // No answer (timeout, connection lost): Pendo may have created it anyway.
                tracing::warn!(role = self.role, segment = %batch.name, answer = %r.describe(),
                    "no answer to the segment creation; looking it up by name before retrying");
                retry.after_failure(None).elapse().await;
                if let Some(id) = self.find_by_name(&batch.name).await {
                    return Ok(Some(id));
                }
                continue;
            }
            if r.outcome() == Outcome::Invalid {
                tracing::error!(role = self.role, segment = %batch.name, answer = %r.describe(),
                    "Pendo refused to create the segment; its changes are dead-lettered");
                for v in &batch.visitors {
                    self.dead_letter_visitor(v, "rejected", &r.describe())
                        .await?;
                }
                return Ok(None);
            }
            match parse_created(&r.body) {
                Ok(id) => {
                    tracing::info!(role = self.role, segment = %batch.name, segment_id = %id,
                        audience = %batch.audience_key, "created the Pendo Segment");
                    return Ok(Some(id));
                }
                Err(e) => {
                    // Unknown answer: retrying could create a second segment, so look it up.
                    tracing::error!(role = self.role, problem = %e, answer = %r.describe(),
                        "Pendo's creation answer has an unknown shape; looking the segment up by name");
                    if let Some(id) = self.find_by_name(&batch.name).await {
                        return Ok(Some(id));
                    }
                    retry.after_failure(None).elapse().await;
                }
            }
        }
    }

    /// The id of the segment called `name` (`GET /api/v1/segment`), to recover a creation whose
    /// id was not stored. `None` when there is none or the list cannot be read.
    async fn find_by_name(&self, name: &str) -> Option<String> {
        let url = segment_list_url(self.client.base());
        let mut retry = self.retry();
        // A few attempts only: if the list cannot be read, creating is the way forward.
        let mut answer = None;
        while retry.attempts() < 5 {
            retry.attempt().await;
            let r = self.client.get(&url).await;
            metrics()
                .pendo_sink_requests
                .with_label_values(&[&crate::http::outcome::status_label(r.status)])
                .inc();
            match r.outcome() {
                Outcome::Success => {
                    answer = Some(r);
                    break;
                }
                Outcome::Retry => retry.after_failure(None).elapse().await,
                _ => break,
            }
        }
        let Some(r) = answer else {
            tracing::warn!(role = self.role, segment = %name,
                "cannot list Pendo Segments to recover an unrecorded creation; creating it");
            return None;
        };
        let list: Value = serde_json::from_slice(&r.body).ok()?;
        let found = list.as_array()?.iter().find_map(|s| {
            (s.get("name").and_then(Value::as_str) == Some(name))
                .then(|| match s.get("id") {
                    Some(Value::String(id)) => Some(id.clone()),
                    Some(Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                })
                .flatten()
        });
        tracing::warn!(role = self.role, segment = %name, found = ?found,
            "recovering a Pendo Segment creation that was not recorded (crash after creating?)");
        found
    }
}

/// Stores the id of the segment created (or found) for `key`.
async fn record_id(
    state: &SegmentState,
    key: &str,
    id: &str,
    name: &str,
) -> Result<(), DeliveryError> {
    state
        .record(
            key,
            SegmentEntry {
                segment_id: Some(id.to_string()),
                name: name.to_string(),
            },
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::pendo_segment_change::SegmentChangeOrigin;
    use crate::sinks::pendo::encoding::tests::contributor;

    fn change(visitor: &str, member: bool) -> PendoSegmentChange {
        PendoSegmentChange {
            change_id: format!("c-{visitor}-{member}"),
            audience_key: "k".into(),
            segment_name: "Segment: k".into(),
            visitor_id: visitor.into(),
            member,
            timestamp: "2026-11-29T00:00:00.000Z".into(),
            origin: SegmentChangeOrigin::default(),
        }
    }

    #[test]
    fn the_last_change_per_visitor_wins_and_bodies_hold_adds_then_removes() {
        let mut b = SegmentMembershipChanges::new("k", "Segment: k");
        assert!(!b.push(change("v1", true), contributor(0)));
        assert!(!b.push(change("v2", true), contributor(1)));
        assert!(b.push(change("v1", false), contributor(2)));
        assert!(!b.push(change("v3", false), contributor(3)));
        assert_eq!(b.len(), 3);
        assert!(!b.visitors[0].member);
        assert_eq!(b.visitors[0].contributors.len(), 2);
        let all: Vec<&VisitorChange> = b.visitors.iter().collect();
        let body: Value = serde_json::from_slice(&patch_body(&all)).unwrap();
        assert_eq!(
            body,
            json!({"patch": [
                {"op": "add", "path": "/visitors", "value": ["v2"]},
                {"op": "remove", "path": "/visitors", "value": ["v1", "v3"]}
            ]})
        );
        let adds: Vec<&VisitorChange> = b.visitors.iter().filter(|v| v.member).collect();
        let body: Value = serde_json::from_slice(&create_body("Segment: k", &adds)).unwrap();
        assert_eq!(body, json!({"name": "Segment: k", "visitors": ["v2"]}));
        assert_eq!(parse_created(br#"{"segmentId":"s-1"}"#).unwrap(), "s-1");
        assert!(parse_created(b"{}").is_err());
    }

    #[test]
    fn multistatus_answers_are_read_per_visitor_and_defensively() {
        let mut b = SegmentMembershipChanges::new("k", "n");
        b.push(change("v1", true), contributor(0));
        b.push(change("v2", true), contributor(1));
        b.push(change("v3", false), contributor(2));
        let sent: Vec<&VisitorChange> = b.visitors.iter().collect();
        let ok = br#"{"multistatus":[{"status":200,"message":"ok","operation":{"op":"add","path":"/visitors","value":["v1","v2"]}},{"status":200,"operation":{"op":"remove","path":"/visitors","value":["v3"]}}]}"#;
        assert_eq!(parse_multistatus(ok, &sent).unwrap(), vec![]);
        let partial = br#"{"multistatus":[{"status":200,"operation":{"op":"add","value":["v1"]}},{"status":409,"message":"Operation in progress","operation":{"op":"add","value":["v2"]}},{"status":400,"message":"no such visitor","operation":{"op":"remove","value":["v3"]}}]}"#;
        let f = parse_multistatus(partial, &sent).unwrap();
        assert_eq!(f.len(), 2);
        assert!(f[0].retryable() && f[0].visitor_id == "v2");
        assert!(!f[1].retryable() && f[1].message == "no such visitor");
        for unknown in [
            &b"[]"[..],
            b"{}",
            br#"{"multistatus":[{"status":200,"operation":{"op":"add","value":["v1","v2"]}}]}"#,
            br#"{"multistatus":[{"status":200,"operation":{"op":"add","value":["v1","v2","v9"]}},{"status":200,"operation":{"op":"remove","value":["v3"]}}]}"#,
            br#"{"multistatus":[{"status":200,"operation":{"op":"add","value":["v1","v2","v1"]}},{"status":200,"operation":{"op":"remove","value":["v3"]}}]}"#,
            br#"{"multistatus":[{"status":200,"operation":{"op":"add","value":["v1","v2"]}},{"status":200,"operation":{"op":"add","value":["v3"]}}]}"#,
            br#"{"multistatus":[{"operation":{"op":"add","value":["v1","v2"]}},{"status":200,"operation":{"op":"remove","value":["v3"]}}]}"#,
        ] {
            assert!(
                parse_multistatus(unknown, &sent).is_err(),
                "{}",
                String::from_utf8_lossy(unknown)
            );
        }
    }
}
