//! A Pendo-compatible HTTP test server: the stand-in for Pendo's REST API in integration tests
//! (contract: `docs/external-apis.md`, "Pendo REST API"). Serves the bulk metadata writes
//! `POST /api/v1/metadata/{visitor|account}/{custom|agent}/value` and `GET /api/v1/token/verify`,
//! checks what Pendo checks, records every write, keeps the final value per (entity, id, field),
//! and injects faults on a schedule (429 with `Retry-After`, 409 "Operation in progress",
//! 500/503, slow answers) so the sink's retries can be proven. Later poller tests can add
//! routes to the same server.
//!
//! Checks: `x-pendo-integration-key` (401 otherwise), `Content-Type: application/json` (415),
//! body a JSON array of `{"visitorId"|"accountId": non-empty string, "values": object}` with
//! field names of letters, digits and `_` starting with a letter or `_` (400 otherwise). A field
//! not registered for the (entity, group) fails that item only (Pendo needs fields created
//! under Data Mappings first); so does an id the server does not know when `known_ids` is set
//! and `?create=true` is absent.
//!
//! Reads (for the poller): `POST /api/v1/aggregation` over an in-memory data set (accounts,
//! visitors, event rows) with the operators `filter`, `sort`, `limit`, `select`, and the
//! catalogue reads `GET /api/v1/{feature|page|guide|tracktype}`. Result sets are bounded:
//! more than `max_rows` rows left at the end of a pipeline is a 400 (Pendo's stand-in: timeouts
//! on unbounded queries). Reads have their own fault plan (numbered by read request) and their
//! own `Retry-After` early-request counter (`early_read_requests`).
//!
//! The per-item answer is **assumed** (Pendo's exact shape is not confirmed):
//! `{"total": n, "updated": n, "failed": n, "missing": [id...], "errors": [{"id": id, "error": text}...]}`.
//!
//! Pendo Segments (the reverse flow's second target): `POST /api/v1/segment/upload`
//! `{"name", "visitors": [...]}` -> `{"segmentId"}` (400 without visitors or name),
//! `PATCH /api/v1/segment/{id}/visitor` `{"patch": [{"op": "add"|"remove", "path": "/visitors",
//! "value": [...]}]}` -> `{"multistatus": [{"status", "message", "operation"}]}` (assumed shape:
//! one entry per operation, visitors refused by [`PendoTestServer::set_segment_rejected_visitors`]
//! or [`PendoTestServer::set_segment_item_conflicts`] in entries of their own), and
//! `GET /api/v1/segment` (list `[{"id", "name"}]`). The server keeps each segment's members,
//! logs every segment request, answers 409 "Operation in progress" to every n-th segment request
//! ([`PendoTestServer::set_segment_conflict_every`]), can hold each request
//! ([`PendoTestServer::set_segment_delay`]) and records every time two requests to one segment
//! (by name) were in flight at once ([`PendoTestServer::segment_overlaps`]).
// Each test binary uses a different part of the API.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde_json::{Value, json};
use std::cmp::Ordering;

/// Slack granted to the client's clock before a request counts as too early after a 429.
pub const RETRY_AFTER_TOLERANCE: Duration = Duration::from_millis(50);

/// What to do instead of (or before) answering normally.
#[derive(Clone, Debug)]
pub enum PendoFault {
    /// 429 with `Retry-After: <seconds>`.
    TooManyRequests {
        /// The header's value.
        retry_after_s: u64,
    },
    /// 409 "Operation in progress".
    Conflict,
    /// That 5xx status.
    Status(u16),
    /// Wait, then answer normally.
    Slow(Duration),
}

/// Faults by write-request number (1-based, counting every write request received).
#[derive(Clone, Debug, Default)]
pub struct PendoFaultPlan {
    rules: Vec<(u64, u64, PendoFault)>,
}

impl PendoFaultPlan {
    /// No faults.
    pub fn none() -> Self {
        Self::default()
    }

    /// Fault on the `n`th write request.
    pub fn nth(self, n: u64, fault: PendoFault) -> Self {
        self.range(n, n, fault)
    }

    /// Fault on write requests `first..=last`.
    pub fn range(mut self, first: u64, last: u64, fault: PendoFault) -> Self {
        self.rules.push((first, last, fault));
        self
    }

    fn at(&self, n: u64) -> Option<PendoFault> {
        self.rules
            .iter()
            .find(|(a, b, _)| (*a..=*b).contains(&n))
            .map(|(_, _, f)| f.clone())
    }
}

/// Server settings.
#[derive(Clone, Debug)]
pub struct PendoServerConfig {
    /// The integration key expected in `x-pendo-integration-key`.
    pub integration_key: String,
    /// Registered fields per `"visitor/custom"`, `"account/agent"`, ...
    pub fields: HashMap<String, HashSet<String>>,
    /// Ids that exist, per `"visitor"`/`"account"`; `None` means every id exists.
    pub known_ids: Option<HashMap<String, HashSet<String>>>,
    /// Fault schedule.
    pub faults: PendoFaultPlan,
    /// Fault schedule for reads (aggregation and catalogue requests), by read-request number.
    pub read_faults: PendoFaultPlan,
    /// Most rows an aggregation may answer (checked after the whole pipeline, `limit` included).
    pub max_rows: usize,
}

/// Default for [`PendoServerConfig::max_rows`].
pub const DEFAULT_MAX_ROWS: usize = 5_000;

/// Event sources: need a `timeSeries`.
pub const EVENT_SOURCES: [&str; 6] = [
    "events",
    "featureEvents",
    "pageEvents",
    "guideEvents",
    "pollEvents",
    "trackEvents",
];

/// Catalogue kinds served at `GET /api/v1/{kind}`.
pub const CATALOG_KINDS: [&str; 4] = ["feature", "page", "guide", "tracktype"];

/// Longest `timeSeries` span accepted.
pub const MAX_SPAN_MS: i64 = 30 * 24 * 3_600_000;

/// An account row as the aggregation source `accounts` returns it.
pub fn account_row(id: &str, agent: Value, custom: Value, firstvisit_ms: i64) -> Value {
    json!({
        "accountId": id,
        "metadata": {
            "auto": {"id": id, "firstvisit": firstvisit_ms, "lastvisit": firstvisit_ms},
            "agent": agent,
            "custom": custom,
        }
    })
}

/// A visitor row as the aggregation source `visitors` returns it (metadata last updated at the
/// first visit).
pub fn visitor_row(
    id: &str,
    account_id: &str,
    firstvisit_ms: i64,
    agent: Value,
    custom: Value,
) -> Value {
    json!({
        "visitorId": id,
        "metadata": {
            "auto": {
                "id": id,
                "firstvisit": firstvisit_ms,
                "lastvisit": firstvisit_ms,
                "lastupdated": firstvisit_ms,
                "accountid": account_id,
                "accountids": [account_id],
            },
            "agent": agent,
            "custom": custom,
        }
    })
}

/// One read request (aggregation or catalogue) as received.
#[derive(Clone, Debug)]
pub struct ReadRecord {
    /// `aggregation:<source>` (`aggregation` if no source could be read), `catalog:<kind>`.
    pub endpoint: String,
    /// The aggregation body, if it was JSON.
    pub body: Option<Value>,
    /// The status answered.
    pub status: u16,
    /// Rows answered (0 unless 200).
    pub rows: usize,
    /// When it arrived.
    pub at: Instant,
}

impl Default for PendoServerConfig {
    fn default() -> Self {
        Self {
            integration_key: "test-integration-key".into(),
            fields: HashMap::new(),
            known_ids: None,
            faults: PendoFaultPlan::none(),
            read_faults: PendoFaultPlan::none(),
            max_rows: DEFAULT_MAX_ROWS,
        }
    }
}

impl PendoServerConfig {
    /// Registers `names` for `entity` (`visitor`/`account`) and `group` (`custom`/`agent`).
    pub fn with_fields(mut self, entity: &str, group: &str, names: &[&str]) -> Self {
        self.fields
            .entry(format!("{entity}/{group}"))
            .or_default()
            .extend(names.iter().map(|s| s.to_string()));
        self
    }

    /// Sets [`Self::max_rows`].
    pub fn with_max_rows(mut self, max_rows: usize) -> Self {
        self.max_rows = max_rows;
        self
    }
}

/// One write request as received.
#[derive(Clone, Debug)]
pub struct WriteRecord {
    /// `visitor` or `account`.
    pub entity: String,
    /// `custom` or `agent`.
    pub group: String,
    /// `?create=true` was given.
    pub create: bool,
    /// Items in the body (0 if unreadable).
    pub items: usize,
    /// The status answered.
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
}

#[derive(Default)]
struct Inner {
    writes: Vec<WriteRecord>,
    /// (entity, id, field) -> value, for applied items.
    state: HashMap<(String, String, String), Value>,
    /// (entity, id) -> how many times an item for it was applied.
    applied: HashMap<(String, String), usize>,
    /// Earliest time the next request may come after a 429.
    not_before: Option<Instant>,
    early: usize,
    verifies: usize,
    unauthorized: usize,
    accounts: Vec<Value>,
    visitors: Vec<Value>,
    /// Catalogue kind -> items.
    catalogs: HashMap<String, Vec<Value>>,
    /// Event source -> rows.
    events: HashMap<String, Vec<Value>>,
    reads: Vec<ReadRecord>,
    /// Earliest time the next read may come after a 429 on a read.
    read_not_before: Option<Instant>,
    early_reads: usize,
}

struct Shared {
    config: Mutex<PendoServerConfig>,
    inner: Mutex<Inner>,
    segments: Mutex<SegmentsInner>,
}

/// One request to a Pendo Segment endpoint, as received.
#[derive(Clone, Debug)]
pub struct SegmentRequestRecord {
    /// `create`, `patch` or `list`.
    pub kind: &'static str,
    /// The segment's name (create, or the patched segment's), if known.
    pub segment: Option<String>,
    /// Visitors in the body.
    pub visitors: usize,
    /// The status answered (0 while in flight).
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
}

/// A Pendo Segment held by the server.
#[derive(Clone, Debug, Default)]
pub struct SegmentData {
    /// Its name.
    pub name: String,
    /// Current members.
    pub members: HashSet<String>,
}

#[derive(Default)]
struct SegmentsInner {
    requests: Vec<SegmentRequestRecord>,
    /// id -> segment.
    segments: HashMap<String, SegmentData>,
    created: usize,
    /// name -> requests in flight.
    in_flight: HashMap<String, usize>,
    overlaps: Vec<String>,
    conflict_every: u64,
    delay: Duration,
    rejected_visitors: HashSet<String>,
    /// visitor -> how many more times its operation answers 409 inside the multistatus.
    item_conflicts: HashMap<String, u32>,
    /// (segment name, visitor) -> every applied operation: (member, epoch ms).
    applied: HashMap<(String, String), Vec<(bool, i64)>>,
    next_id: u64,
}

fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A running Pendo test server; stops when dropped.
pub struct PendoTestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PendoTestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PendoTestServer {
    /// Starts on a free local port.
    pub async fn start(config: PendoServerConfig) -> PendoTestServer {
        let shared = Arc::new(Shared {
            config: Mutex::new(config),
            inner: Mutex::new(Inner::default()),
            segments: Mutex::new(SegmentsInner::default()),
        });
        let app = Router::new()
            .route("/api/v1/metadata/{entity}/{group}/value", post(write))
            .route("/api/v1/token/verify", get(verify))
            .route("/api/v1/aggregation", post(aggregation))
            .route("/api/v1/feature", get(catalog_feature))
            .route("/api/v1/page", get(catalog_page))
            .route("/api/v1/guide", get(catalog_guide))
            .route("/api/v1/tracktype", get(catalog_tracktype))
            .route("/api/v1/segment/upload", post(segment_create))
            .route("/api/v1/segment", get(segment_list))
            .route("/api/v1/segment/{id}/visitor", patch(segment_patch))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        PendoTestServer { addr, shared, task }
    }

    /// Base URL (for `[pendo] base_url`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The expected integration key.
    pub fn integration_key(&self) -> String {
        self.shared.config.lock().unwrap().integration_key.clone()
    }

    /// Replaces the fault schedule (request numbers keep counting).
    pub fn set_faults(&self, plan: PendoFaultPlan) {
        self.shared.config.lock().unwrap().faults = plan;
    }

    /// Every write request so far.
    pub fn writes(&self) -> Vec<WriteRecord> {
        self.shared.inner.lock().unwrap().writes.clone()
    }

    /// Number of write requests (any status).
    pub fn write_requests(&self) -> usize {
        self.shared.inner.lock().unwrap().writes.len()
    }

    /// Write requests by status.
    pub fn status_counts(&self) -> HashMap<u16, usize> {
        let mut out = HashMap::new();
        for w in &self.shared.inner.lock().unwrap().writes {
            *out.entry(w.status).or_default() += 1;
        }
        out
    }

    /// The final value of `field` of `entity`/`id`, if ever set.
    pub fn value(&self, entity: &str, id: &str, field: &str) -> Option<Value> {
        self.shared
            .inner
            .lock()
            .unwrap()
            .state
            .get(&(entity.into(), id.into(), field.into()))
            .cloned()
    }

    /// Every (entity, id, field) -> final value.
    pub fn state(&self) -> HashMap<(String, String, String), Value> {
        self.shared.inner.lock().unwrap().state.clone()
    }

    /// How many times an item for (entity, id) was applied.
    pub fn applied_counts(&self) -> HashMap<(String, String), usize> {
        self.shared.inner.lock().unwrap().applied.clone()
    }

    /// Requests that came before a `Retry-After` deadline had passed.
    pub fn early_requests(&self) -> usize {
        self.shared.inner.lock().unwrap().early
    }

    /// `GET /api/v1/token/verify` calls.
    pub fn verifies(&self) -> usize {
        self.shared.inner.lock().unwrap().verifies
    }

    /// Requests refused for the key.
    pub fn unauthorized(&self) -> usize {
        self.shared.inner.lock().unwrap().unauthorized
    }

    /// Replaces the read fault schedule (read numbers keep counting).
    pub fn set_read_faults(&self, plan: PendoFaultPlan) {
        self.shared.config.lock().unwrap().read_faults = plan;
    }

    /// Sets the most rows an aggregation may answer.
    pub fn set_max_rows(&self, max_rows: usize) {
        self.shared.config.lock().unwrap().max_rows = max_rows;
    }

    /// Replaces every account row.
    pub fn set_accounts(&self, rows: Vec<Value>) {
        self.shared.inner.lock().unwrap().accounts = rows;
    }

    /// Replaces the account row with the same `accountId`, or appends it.
    pub fn upsert_account(&self, row: Value) {
        upsert(
            &mut self.shared.inner.lock().unwrap().accounts,
            "accountId",
            row,
        );
    }

    /// Replaces every visitor row.
    pub fn set_visitors(&self, rows: Vec<Value>) {
        self.shared.inner.lock().unwrap().visitors = rows;
    }

    /// Replaces the visitor row with the same `visitorId`, or appends it.
    pub fn upsert_visitor(&self, row: Value) {
        upsert(
            &mut self.shared.inner.lock().unwrap().visitors,
            "visitorId",
            row,
        );
    }

    /// Replaces the catalogue `kind` (`feature`, `page`, `guide`, `tracktype`).
    pub fn set_catalog(&self, kind: &str, items: Vec<Value>) {
        assert!(
            CATALOG_KINDS.contains(&kind),
            "unknown catalogue kind {kind}"
        );
        self.shared
            .inner
            .lock()
            .unwrap()
            .catalogs
            .insert(kind.to_string(), items);
    }

    /// Replaces the rows of event `source` (one of [`EVENT_SOURCES`]). A query answers those
    /// whose `browserTime` (or, failing that, `day`) lies in its `timeSeries` span.
    pub fn set_event_rows(&self, source: &str, rows: Vec<Value>) {
        assert!(
            EVENT_SOURCES.contains(&source),
            "unknown event source {source}"
        );
        self.shared
            .inner
            .lock()
            .unwrap()
            .events
            .insert(source.to_string(), rows);
    }

    /// Every read request so far (aggregation and catalogue).
    pub fn read_requests(&self) -> Vec<ReadRecord> {
        self.shared.inner.lock().unwrap().reads.clone()
    }

    /// Number of read requests (any status).
    pub fn read_request_count(&self) -> usize {
        self.shared.inner.lock().unwrap().reads.len()
    }

    /// Read requests that came before the `Retry-After` deadline of a 429 on a read had
    /// passed (writes are counted separately by [`Self::early_requests`]).
    pub fn early_read_requests(&self) -> usize {
        self.shared.inner.lock().unwrap().early_reads
    }

    /// Answers 409 "Operation in progress" to every `n`th Pendo Segment request (0: never).
    pub fn set_segment_conflict_every(&self, n: u64) {
        self.shared.segments.lock().unwrap().conflict_every = n;
    }

    /// Holds every Pendo Segment request this long before answering (widens overlap windows).
    pub fn set_segment_delay(&self, d: Duration) {
        self.shared.segments.lock().unwrap().delay = d;
    }

    /// Visitors whose operations fail with 400 "visitor not found" inside the multistatus.
    pub fn set_segment_rejected_visitors(&self, ids: &[&str]) {
        self.shared.segments.lock().unwrap().rejected_visitors =
            ids.iter().map(|s| s.to_string()).collect();
    }

    /// Visitors whose operations answer 409 inside the multistatus, `times` times each.
    pub fn set_segment_item_conflicts(&self, ids: &[&str], times: u32) {
        self.shared.segments.lock().unwrap().item_conflicts =
            ids.iter().map(|s| (s.to_string(), times)).collect();
    }

    /// Creates a segment directly (as if an earlier request had), counted in
    /// [`Self::segments_created`]; returns its id.
    pub fn create_segment(&self, name: &str, visitors: &[&str]) -> String {
        let mut s = self.shared.segments.lock().unwrap();
        s.next_id += 1;
        let id = format!("seg{:06}", s.next_id);
        s.segments.insert(
            id.clone(),
            SegmentData {
                name: name.to_string(),
                members: visitors.iter().map(|v| v.to_string()).collect(),
            },
        );
        s.created += 1;
        id
    }

    /// Every Pendo Segment request, in arrival order.
    pub fn segment_requests(&self) -> Vec<SegmentRequestRecord> {
        self.shared.segments.lock().unwrap().requests.clone()
    }

    /// Segments created (successful `upload`s).
    pub fn segments_created(&self) -> usize {
        self.shared.segments.lock().unwrap().created
    }

    /// The segments by id.
    pub fn segments(&self) -> HashMap<String, SegmentData> {
        self.shared.segments.lock().unwrap().segments.clone()
    }

    /// The members of the segment called `name` (empty if there is none).
    pub fn segment_members(&self, name: &str) -> HashSet<String> {
        self.shared
            .segments
            .lock()
            .unwrap()
            .segments
            .values()
            .find(|s| s.name == name)
            .map(|s| s.members.clone())
            .unwrap_or_default()
    }

    /// Each time a request to a segment arrived while another to it was in flight.
    pub fn segment_overlaps(&self) -> Vec<String> {
        self.shared.segments.lock().unwrap().overlaps.clone()
    }

    /// Applied operations of `visitor` in segment `name`: (member, epoch ms), in order.
    pub fn segment_applied(&self, name: &str, visitor: &str) -> Vec<(bool, i64)> {
        self.shared
            .segments
            .lock()
            .unwrap()
            .applied
            .get(&(name.to_string(), visitor.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// Every applied operation of segment `name`: visitor -> [(member, epoch ms)].
    pub fn segment_applied_all(&self, name: &str) -> HashMap<String, Vec<(bool, i64)>> {
        self.shared
            .segments
            .lock()
            .unwrap()
            .applied
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, v), ops)| (v.clone(), ops.clone()))
            .collect()
    }

    /// Waits until `cond(self)` holds or `timeout` passes; returns whether it held.
    pub async fn wait_for(&self, timeout: Duration, cond: impl Fn(&Self) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if cond(self) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cond(self)
    }
}

fn key_ok(shared: &Shared, headers: &HeaderMap) -> bool {
    let want = shared.config.lock().unwrap().integration_key.clone();
    headers
        .get("x-pendo-integration-key")
        .and_then(|v| v.to_str().ok())
        == Some(want.as_str())
}

async fn verify(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    shared.inner.lock().unwrap().verifies += 1;
    if key_ok(&shared, &headers) {
        (StatusCode::OK, axum::Json(json!({"valid": true}))).into_response()
    } else {
        shared.inner.lock().unwrap().unauthorized += 1;
        (StatusCode::UNAUTHORIZED, "invalid integration key").into_response()
    }
}

fn valid_field_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

async fn write(
    State(shared): State<Arc<Shared>>,
    Path((entity, group)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let create = query
        .as_deref()
        .is_some_and(|q| q.split('&').any(|p| p == "create=true"));
    let now = Instant::now();
    let (n, fault) = {
        let mut inner = shared.inner.lock().unwrap();
        if inner
            .not_before
            .is_some_and(|t| now + RETRY_AFTER_TOLERANCE < t)
        {
            inner.early += 1;
        }
        let n = inner.writes.len() as u64 + 1;
        inner.writes.push(WriteRecord {
            entity: entity.clone(),
            group: group.clone(),
            create,
            items: 0,
            status: 0,
            at: now,
        });
        (n, shared.config.lock().unwrap().faults.at(n))
    };
    let idx = n as usize - 1;
    let (status, response) = answer(&shared, &entity, &group, create, &headers, &body, fault).await;
    let mut inner = shared.inner.lock().unwrap();
    inner.writes[idx].status = status.as_u16();
    inner.writes[idx].items = serde_json::from_slice::<Vec<Value>>(&body).map_or(0, |v| v.len());
    response
}

fn plain(s: StatusCode, text: &str) -> (StatusCode, Response) {
    (s, (s, text.to_string()).into_response())
}

fn json_type_ok(headers: &HeaderMap) -> bool {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("application/json")
        })
}

/// The faulty answer for `fault`, if it replaces the normal one (`Slow` waits and returns
/// `None`). A 429 sets the deadline for writes or, with `read`, for reads.
async fn apply_fault(
    shared: &Shared,
    fault: Option<PendoFault>,
    read: bool,
) -> Option<(StatusCode, Response)> {
    match fault {
        Some(PendoFault::TooManyRequests { retry_after_s }) => {
            let deadline = Some(Instant::now() + Duration::from_secs(retry_after_s));
            let mut inner = shared.inner.lock().unwrap();
            if read {
                inner.read_not_before = deadline;
            } else {
                inner.not_before = deadline;
            }
            let s = StatusCode::TOO_MANY_REQUESTS;
            Some((
                s,
                (
                    s,
                    [("retry-after", retry_after_s.to_string())],
                    "Too Many Requests",
                )
                    .into_response(),
            ))
        }
        Some(PendoFault::Conflict) => Some(plain(StatusCode::CONFLICT, "Operation in progress")),
        Some(PendoFault::Status(code)) => Some(plain(
            StatusCode::from_u16(code).unwrap(),
            "injected server error",
        )),
        Some(PendoFault::Slow(d)) => {
            tokio::time::sleep(d).await;
            None
        }
        None => None,
    }
}

async fn answer(
    shared: &Shared,
    entity: &str,
    group: &str,
    create: bool,
    headers: &HeaderMap,
    body: &[u8],
    fault: Option<PendoFault>,
) -> (StatusCode, Response) {
    if let Some(faulted) = apply_fault(shared, fault, false).await {
        return faulted;
    }
    if !key_ok(shared, headers) {
        shared.inner.lock().unwrap().unauthorized += 1;
        return plain(StatusCode::UNAUTHORIZED, "invalid integration key");
    }
    if !["visitor", "account"].contains(&entity) || !["custom", "agent"].contains(&group) {
        return plain(StatusCode::NOT_FOUND, "no such metadata kind");
    }
    if !json_type_ok(headers) {
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        );
    }
    let id_key = if entity == "visitor" {
        "visitorId"
    } else {
        "accountId"
    };
    let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(body) else {
        return plain(StatusCode::BAD_REQUEST, "body must be a JSON array");
    };
    let mut parsed = Vec::new();
    for item in &items {
        let id = item
            .get(id_key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let values = item.get("values").and_then(Value::as_object);
        let (Some(id), Some(values)) = (id, values) else {
            return plain(
                StatusCode::BAD_REQUEST,
                &format!("each item needs {id_key} and values"),
            );
        };
        if let Some(bad) = values.keys().find(|k| !valid_field_name(k)) {
            return plain(
                StatusCode::BAD_REQUEST,
                &format!("invalid field name {bad:?}"),
            );
        }
        parsed.push((id.to_string(), values.clone()));
    }
    let config = shared.config.lock().unwrap().clone();
    let registered = config.fields.get(&format!("{entity}/{group}"));
    let mut inner = shared.inner.lock().unwrap();
    let (mut updated, mut missing, mut errors) = (0, Vec::new(), Vec::new());
    for (id, values) in parsed {
        let known = config
            .known_ids
            .as_ref()
            .is_none_or(|k| k.get(entity).is_some_and(|ids| ids.contains(&id)));
        if !known && !create {
            missing.push(json!(id));
            continue;
        }
        if let Some(unknown) = values
            .keys()
            .find(|k| registered.is_none_or(|r| !r.contains(*k)))
        {
            errors.push(json!({"id": id, "error": format!("unknown field {unknown}")}));
            continue;
        }
        for (k, v) in values {
            inner.state.insert((entity.to_string(), id.clone(), k), v);
        }
        *inner.applied.entry((entity.to_string(), id)).or_default() += 1;
        updated += 1;
    }
    let failed = missing.len() + errors.len();
    let answer = json!({
        "total": items.len(),
        "updated": updated,
        "failed": failed,
        "missing": missing,
        "errors": errors,
    });
    (
        StatusCode::OK,
        (StatusCode::OK, axum::Json(answer)).into_response(),
    )
}

fn upsert(rows: &mut Vec<Value>, id_key: &str, row: Value) {
    let id = row.get(id_key).cloned();
    match rows.iter_mut().find(|r| r.get(id_key) == id.as_ref()) {
        Some(existing) if id.is_some() => *existing = row,
        _ => rows.push(row),
    }
}

// ---- Reads: aggregation and catalogues ----

/// Counts a read request (checking it against a read 429's deadline) and returns its index
/// and the fault planned for it.
fn begin_read(
    shared: &Shared,
    endpoint: String,
    body: Option<Value>,
) -> (usize, Option<PendoFault>) {
    let now = Instant::now();
    let mut inner = shared.inner.lock().unwrap();
    if inner
        .read_not_before
        .is_some_and(|t| now + RETRY_AFTER_TOLERANCE < t)
    {
        inner.early_reads += 1;
    }
    inner.reads.push(ReadRecord {
        endpoint,
        body,
        status: 0,
        rows: 0,
        at: now,
    });
    let n = inner.reads.len();
    (
        n - 1,
        shared.config.lock().unwrap().read_faults.at(n as u64),
    )
}

fn finish_read(shared: &Shared, idx: usize, status: StatusCode, rows: usize) {
    let mut inner = shared.inner.lock().unwrap();
    inner.reads[idx].status = status.as_u16();
    inner.reads[idx].rows = rows;
}

async fn catalog_feature(State(s): State<Arc<Shared>>, h: HeaderMap) -> Response {
    catalog(&s, "feature", &h).await
}
async fn catalog_page(State(s): State<Arc<Shared>>, h: HeaderMap) -> Response {
    catalog(&s, "page", &h).await
}
async fn catalog_guide(State(s): State<Arc<Shared>>, h: HeaderMap) -> Response {
    catalog(&s, "guide", &h).await
}
async fn catalog_tracktype(State(s): State<Arc<Shared>>, h: HeaderMap) -> Response {
    catalog(&s, "tracktype", &h).await
}

async fn catalog(shared: &Shared, kind: &str, headers: &HeaderMap) -> Response {
    let (idx, fault) = begin_read(shared, format!("catalog:{kind}"), None);
    let (status, rows, response) = if let Some((s, r)) = apply_fault(shared, fault, true).await {
        (s, 0, r)
    } else if !key_ok(shared, headers) {
        shared.inner.lock().unwrap().unauthorized += 1;
        let (s, r) = plain(StatusCode::UNAUTHORIZED, "invalid integration key");
        (s, 0, r)
    } else {
        let items = shared
            .inner
            .lock()
            .unwrap()
            .catalogs
            .get(kind)
            .cloned()
            .unwrap_or_default();
        let n = items.len();
        (
            StatusCode::OK,
            n,
            (StatusCode::OK, axum::Json(Value::Array(items))).into_response(),
        )
    };
    finish_read(shared, idx, status, rows);
    response
}

async fn aggregation(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed = serde_json::from_slice::<Value>(&body).ok();
    let source = parsed
        .as_ref()
        .and_then(|b| b.pointer("/request/pipeline/0/source"))
        .and_then(Value::as_object)
        .and_then(|o| o.keys().next().cloned());
    let endpoint = match &source {
        Some(s) => format!("aggregation:{s}"),
        None => "aggregation".to_string(),
    };
    let (idx, fault) = begin_read(&shared, endpoint, parsed.clone());
    let (status, rows, response) = if let Some((s, r)) = apply_fault(&shared, fault, true).await {
        (s, 0, r)
    } else if !key_ok(&shared, &headers) {
        shared.inner.lock().unwrap().unauthorized += 1;
        let (s, r) = plain(StatusCode::UNAUTHORIZED, "invalid integration key");
        (s, 0, r)
    } else if !json_type_ok(&headers) {
        let (s, r) = plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        );
        (s, 0, r)
    } else {
        match run_aggregation(&shared, parsed.as_ref()) {
            Ok(results) => {
                let n = results.len();
                (
                    StatusCode::OK,
                    n,
                    (StatusCode::OK, axum::Json(json!({"results": results}))).into_response(),
                )
            }
            Err(reason) => {
                let (s, r) = plain(StatusCode::BAD_REQUEST, &reason);
                (s, 0, r)
            }
        }
    };
    finish_read(&shared, idx, status, rows);
    response
}

/// Validates the body and runs its pipeline; `Err` is the 400 reason.
fn run_aggregation(shared: &Shared, body: Option<&Value>) -> Result<Vec<Value>, String> {
    let body = body.ok_or("body must be JSON")?;
    if body.pointer("/response/mimeType").and_then(Value::as_str) != Some("application/json") {
        return Err("response.mimeType must be \"application/json\"".into());
    }
    let pipeline = body
        .pointer("/request/pipeline")
        .and_then(Value::as_array)
        .filter(|p| !p.is_empty())
        .ok_or("request.pipeline must be a non-empty array")?;
    let first = pipeline[0]
        .as_object()
        .ok_or("pipeline stages must be objects")?;
    if let Some(k) = first.keys().find(|k| *k != "source" && *k != "timeSeries") {
        return Err(format!("unexpected key {k} in the source stage"));
    }
    let source = first
        .get("source")
        .and_then(Value::as_object)
        .filter(|o| o.len() == 1)
        .ok_or("the first stage needs {\"source\": {\"<name>\": ...}}")?;
    let (name, params) = source.iter().next().unwrap();
    if !(params.is_null() || params.is_object()) {
        return Err(format!("source {name} takes null or an object"));
    }
    let mut rows = {
        let inner = shared.inner.lock().unwrap();
        match name.as_str() {
            "accounts" => inner.accounts.clone(),
            "visitors" => inner.visitors.clone(),
            s if EVENT_SOURCES.contains(&s) => {
                let (from, to) = time_span(first.get("timeSeries"), s)?;
                inner
                    .events
                    .get(s)
                    .map(|rows| {
                        rows.iter()
                            .filter(|r| {
                                r.get("browserTime")
                                    .or_else(|| r.get("day"))
                                    .and_then(Value::as_i64)
                                    .is_some_and(|t| from <= t && t < to)
                            })
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default()
            }
            other => return Err(format!("unsupported source {other}")),
        }
    };
    for stage in &pipeline[1..] {
        let stage = stage
            .as_object()
            .filter(|o| o.len() == 1)
            .ok_or("each pipeline stage must be an object with one operator")?;
        let (op, arg) = stage.iter().next().unwrap();
        match op.as_str() {
            "filter" => {
                let expr = arg.as_str().ok_or("filter takes a string expression")?;
                let clauses = parse_filter(expr).map_err(|e| format!("bad filter: {e}"))?;
                rows.retain(|r| clauses.iter().all(|c| c.matches(r)));
            }
            "sort" => {
                let keys = arg
                    .as_array()
                    .and_then(|a| {
                        a.iter()
                            .map(|k| k.as_str().filter(|k| !k.is_empty() && *k != "-"))
                            .collect::<Option<Vec<_>>>()
                    })
                    .ok_or("sort takes an array of field names")?;
                rows.sort_by(|a, b| {
                    for k in &keys {
                        let (path, desc) = match k.strip_prefix('-') {
                            Some(p) => (p, true),
                            None => (*k, false),
                        };
                        let o = compare_values(lookup(a, path), lookup(b, path));
                        let o = if desc { o.reverse() } else { o };
                        if o != Ordering::Equal {
                            return o;
                        }
                    }
                    Ordering::Equal
                });
            }
            "limit" => {
                let n = arg.as_u64().ok_or("limit takes a non-negative integer")?;
                rows.truncate(usize::try_from(n).unwrap_or(usize::MAX));
            }
            "select" => {
                let fields = arg
                    .as_object()
                    .filter(|o| !o.is_empty())
                    .ok_or("select takes an object of outName: path")?;
                let mut paths = Vec::new();
                for (out, path) in fields {
                    let path = path
                        .as_str()
                        .ok_or_else(|| format!("select {out}: path must be a string"))?;
                    paths.push((out.clone(), path.to_string()));
                }
                rows = rows
                    .iter()
                    .map(|r| {
                        Value::Object(
                            paths
                                .iter()
                                .map(|(out, p)| {
                                    (out.clone(), lookup(r, p).cloned().unwrap_or(Value::Null))
                                })
                                .collect(),
                        )
                    })
                    .collect();
            }
            other => return Err(format!("unsupported operator {other}")),
        }
    }
    if rows.len() > shared.config.lock().unwrap().max_rows {
        return Err("result set too large: add a time window or limit".into());
    }
    Ok(rows)
}

/// `[from, to)` in epoch ms of a `timeSeries`, required for event `source`.
fn time_span(ts: Option<&Value>, source: &str) -> Result<(i64, i64), String> {
    let ts = ts
        .and_then(Value::as_object)
        .ok_or_else(|| format!("source {source} needs a timeSeries"))?;
    let unit = match ts.get("period").and_then(Value::as_str) {
        Some("dayRange") => 86_400_000,
        Some("hourRange") => 3_600_000,
        _ => return Err("timeSeries.period must be \"dayRange\" or \"hourRange\"".into()),
    };
    let first = ts
        .get("first")
        .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
        .ok_or("timeSeries.first must be a number (epoch ms)")?;
    let count = ts
        .get("count")
        .and_then(Value::as_i64)
        .filter(|c| *c >= 1)
        .ok_or("timeSeries.count must be an integer >= 1")?;
    let span = count.saturating_mul(unit);
    if span > MAX_SPAN_MS {
        return Err("timeSeries span must be at most 30 days".into());
    }
    Ok((first, first.saturating_add(span)))
}

/// The value at dotted `path` in `row` (objects only).
fn lookup<'a>(row: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(row, |v, seg| v.get(seg))
}

/// Total order for sort: missing < null < bools < numbers (numerically) < strings (bytewise)
/// < arrays < objects (those two compare equal among themselves).
fn compare_values(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    fn rank(v: Option<&Value>) -> u8 {
        match v {
            None => 0,
            Some(Value::Null) => 1,
            Some(Value::Bool(_)) => 2,
            Some(Value::Number(_)) => 3,
            Some(Value::String(_)) => 4,
            Some(Value::Array(_)) => 5,
            Some(Value::Object(_)) => 6,
        }
    }
    match (a, b) {
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(Value::Number(x)), Some(Value::Number(y))) => compare_numbers(x, y),
        (Some(Value::String(x)), Some(Value::String(y))) => x.as_bytes().cmp(y.as_bytes()),
        _ => rank(a).cmp(&rank(b)),
    }
}

fn compare_numbers(x: &serde_json::Number, y: &serde_json::Number) -> Ordering {
    match (x.as_i64(), y.as_i64()) {
        (Some(a), Some(b)) => a.cmp(&b),
        _ => {
            let (a, b) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            a.partial_cmp(&b).unwrap_or(Ordering::Equal)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum CmpOp {
    Eq,
    Ne,
    Ge,
    Le,
    Gt,
    Lt,
}

/// One `<path> <op> <literal>` clause of a filter expression.
#[derive(Clone, Debug)]
struct Clause {
    path: String,
    op: CmpOp,
    literal: Value,
}

impl Clause {
    /// Missing field: false. Same type (number/number, string/string): compared. Other types:
    /// only `!=` holds.
    fn matches(&self, row: &Value) -> bool {
        let Some(v) = lookup(row, &self.path) else {
            return false;
        };
        let ord = match (v, &self.literal) {
            (Value::Number(a), Value::Number(b)) => compare_numbers(a, b),
            (Value::String(a), Value::String(b)) => a.as_bytes().cmp(b.as_bytes()),
            _ => return self.op == CmpOp::Ne,
        };
        match self.op {
            CmpOp::Eq => ord == Ordering::Equal,
            CmpOp::Ne => ord != Ordering::Equal,
            CmpOp::Ge => ord != Ordering::Less,
            CmpOp::Le => ord != Ordering::Greater,
            CmpOp::Gt => ord == Ordering::Greater,
            CmpOp::Lt => ord == Ordering::Less,
        }
    }
}

/// Parses `clause (&& clause)*`, clause = `path op literal`, path = identifiers
/// (`[A-Za-z_][A-Za-z0-9_]*`) joined by `.`, op one of `== != >= <= > <`, literal a JSON
/// number or a double-quoted JSON string. Whitespace (spaces, tabs, newlines) between tokens.
fn parse_filter(expr: &str) -> Result<Vec<Clause>, String> {
    let b = expr.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    let mut clauses = Vec::new();
    loop {
        skip_ws(&mut i);
        // path
        let start = i;
        loop {
            if i >= b.len() || !(b[i].is_ascii_alphabetic() || b[i] == b'_') {
                return Err(format!("expected a field name at offset {i}"));
            }
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            if i < b.len() && b[i] == b'.' {
                i += 1;
            } else {
                break;
            }
        }
        let path = expr[start..i].to_string();
        skip_ws(&mut i);
        let rest = &expr[i..];
        let (op, len) = [
            ("==", CmpOp::Eq),
            ("!=", CmpOp::Ne),
            (">=", CmpOp::Ge),
            ("<=", CmpOp::Le),
            (">", CmpOp::Gt),
            ("<", CmpOp::Lt),
        ]
        .iter()
        .find(|(t, _)| rest.starts_with(t))
        .map(|(t, op)| (*op, t.len()))
        .ok_or_else(|| format!("expected an operator (== != >= <= > <) at offset {i}"))?;
        i += len;
        skip_ws(&mut i);
        let start = i;
        if i < b.len() && b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            if i >= b.len() {
                return Err(format!("unterminated string at offset {start}"));
            }
            i += 1;
        } else {
            while i < b.len() && matches!(b[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                i += 1;
            }
        }
        let literal = serde_json::from_str::<Value>(&expr[start..i])
            .ok()
            .filter(|v| v.is_number() || v.is_string())
            .ok_or_else(|| format!("expected a JSON number or string at offset {start}"))?;
        clauses.push(Clause { path, op, literal });
        skip_ws(&mut i);
        if i == b.len() {
            return Ok(clauses);
        }
        if !expr[i..].starts_with("&&") {
            return Err(format!("expected && or the end at offset {i}"));
        }
        i += 2;
    }
}

// ---- Pendo Segments -------------------------------------------------------------------------

/// Starts a segment request: logs it, notes an overlap, and says whether to answer 409.
fn segment_begin(
    shared: &Shared,
    kind: &'static str,
    segment: Option<&str>,
    visitors: usize,
) -> (usize, bool, Duration) {
    let mut s = shared.segments.lock().unwrap();
    s.requests.push(SegmentRequestRecord {
        kind,
        segment: segment.map(str::to_string),
        visitors,
        status: 0,
        at: Instant::now(),
    });
    let n = s.requests.len();
    if let Some(name) = segment {
        let c = s.in_flight.entry(name.to_string()).or_default();
        *c += 1;
        if *c > 1 {
            let c = *c;
            s.overlaps.push(format!(
                "{kind} request #{n} to segment {name:?} while {} other(s) were in flight",
                c - 1
            ));
        }
    }
    let conflict = s.conflict_every > 0 && (n as u64).is_multiple_of(s.conflict_every);
    (n, conflict, s.delay)
}

fn segment_end(shared: &Shared, n: usize, segment: Option<&str>, status: StatusCode) {
    let mut s = shared.segments.lock().unwrap();
    s.requests[n - 1].status = status.as_u16();
    if let Some(name) = segment
        && let Some(c) = s.in_flight.get_mut(name)
    {
        *c -= 1;
    }
}

fn string_list(v: Option<&Value>) -> Option<Vec<String>> {
    v?.as_array()?
        .iter()
        .map(|x| x.as_str().filter(|s| !s.is_empty()).map(str::to_string))
        .collect()
}

/// Segment writes run to the end even when the client goes away (as on a server that received
/// the request): a killed sink cannot leave a request half-counted.
async fn segment_create(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    tokio::spawn(segment_create_run(shared, headers, body))
        .await
        .unwrap()
}

async fn segment_patch(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    tokio::spawn(segment_patch_run(shared, id, headers, body))
        .await
        .unwrap()
}

async fn segment_create_run(shared: Arc<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let name = parsed
        .as_ref()
        .and_then(|v| v.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let visitors = string_list(parsed.as_ref().and_then(|v| v.get("visitors")));
    let (n, conflict, delay) = segment_begin(
        &shared,
        "create",
        name.as_deref(),
        visitors.as_ref().map_or(0, Vec::len),
    );
    tokio::time::sleep(delay).await;
    let (status, response) = if conflict {
        plain(StatusCode::CONFLICT, "Operation in progress")
    } else if !key_ok(&shared, &headers) {
        shared.inner.lock().unwrap().unauthorized += 1;
        plain(StatusCode::UNAUTHORIZED, "invalid integration key")
    } else if !json_type_ok(&headers) {
        plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        )
    } else {
        match (&name, visitors) {
            (Some(name), Some(visitors)) if !name.is_empty() && !visitors.is_empty() => {
                let mut s = shared.segments.lock().unwrap();
                s.next_id += 1;
                let id = format!("seg{:06}", s.next_id);
                let at = epoch_ms();
                for v in &visitors {
                    s.applied
                        .entry((name.clone(), v.clone()))
                        .or_default()
                        .push((true, at));
                }
                s.segments.insert(
                    id.clone(),
                    SegmentData {
                        name: name.clone(),
                        members: visitors.into_iter().collect(),
                    },
                );
                s.created += 1;
                let st = StatusCode::OK;
                (
                    st,
                    (st, axum::Json(json!({"segmentId": id}))).into_response(),
                )
            }
            (_, Some(v)) if v.is_empty() => plain(
                StatusCode::BAD_REQUEST,
                "a segment needs at least one visitor",
            ),
            _ => plain(
                StatusCode::BAD_REQUEST,
                "body must be {\"name\": string, \"visitors\": [string...]}",
            ),
        }
    };
    segment_end(&shared, n, name.as_deref(), status);
    response
}

async fn segment_list(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let (n, _, _) = segment_begin(&shared, "list", None, 0);
    let (status, response) = if !key_ok(&shared, &headers) {
        plain(StatusCode::UNAUTHORIZED, "invalid integration key")
    } else {
        let s = shared.segments.lock().unwrap();
        let list: Vec<Value> = s
            .segments
            .iter()
            .map(|(id, d)| json!({"id": id, "name": d.name}))
            .collect();
        let st = StatusCode::OK;
        (st, (st, axum::Json(Value::Array(list))).into_response())
    };
    segment_end(&shared, n, None, status);
    response
}

async fn segment_patch_run(
    shared: Arc<Shared>,
    id: String,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let name = shared
        .segments
        .lock()
        .unwrap()
        .segments
        .get(&id)
        .map(|d| d.name.clone());
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let ops: Option<Vec<(bool, Vec<String>)>> = parsed
        .as_ref()
        .and_then(|v| v.get("patch"))
        .and_then(Value::as_array)
        .and_then(|ops| {
            ops.iter()
                .map(|o| {
                    let add = match o.get("op").and_then(Value::as_str)? {
                        "add" => true,
                        "remove" => false,
                        _ => return None,
                    };
                    if o.get("path").and_then(Value::as_str) != Some("/visitors") {
                        return None;
                    }
                    Some((add, string_list(o.get("value"))?))
                })
                .collect()
        });
    let visitors = ops
        .as_ref()
        .map_or(0, |o| o.iter().map(|(_, v)| v.len()).sum());
    let target = name.clone().unwrap_or_else(|| format!("id:{id}"));
    let (n, conflict, delay) = segment_begin(&shared, "patch", Some(&target), visitors);
    tokio::time::sleep(delay).await;
    let (status, response) = if conflict {
        plain(StatusCode::CONFLICT, "Operation in progress")
    } else if !key_ok(&shared, &headers) {
        shared.inner.lock().unwrap().unauthorized += 1;
        plain(StatusCode::UNAUTHORIZED, "invalid integration key")
    } else if !json_type_ok(&headers) {
        plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        )
    } else if name.is_none() {
        plain(StatusCode::NOT_FOUND, "no such segment")
    } else {
        match ops {
            Some(ops) if !ops.is_empty() && visitors <= 1_000 => {
                let mut s = shared.segments.lock().unwrap();
                let name = name.clone().unwrap();
                let at = epoch_ms();
                let mut multistatus = Vec::new();
                for (add, ids) in ops {
                    let op = if add { "add" } else { "remove" };
                    let mut ok = Vec::new();
                    for v in ids {
                        if s.rejected_visitors.contains(&v) {
                            multistatus.push(json!({"status": 400, "message": "visitor not found",
                                "operation": {"op": op, "path": "/visitors", "value": [v]}}));
                            continue;
                        }
                        if let Some(left) = s.item_conflicts.get_mut(&v)
                            && *left > 0
                        {
                            *left -= 1;
                            multistatus
                                .push(json!({"status": 409, "message": "Operation in progress",
                                "operation": {"op": op, "path": "/visitors", "value": [v]}}));
                            continue;
                        }
                        let seg = s.segments.get_mut(&id).unwrap();
                        if add {
                            seg.members.insert(v.clone());
                        } else {
                            seg.members.remove(&v);
                        }
                        s.applied
                            .entry((name.clone(), v.clone()))
                            .or_default()
                            .push((add, at));
                        ok.push(v);
                    }
                    if !ok.is_empty() {
                        multistatus.push(json!({"status": 200, "message": "ok",
                            "operation": {"op": op, "path": "/visitors", "value": ok}}));
                    }
                }
                let st = StatusCode::OK;
                (
                    st,
                    (st, axum::Json(json!({"multistatus": multistatus}))).into_response(),
                )
            }
            Some(_) if visitors > 1_000 => plain(
                StatusCode::BAD_REQUEST,
                "at most 1,000 visitors per request",
            ),
            _ => plain(
                StatusCode::BAD_REQUEST,
                "body must be {\"patch\": [{\"op\": \"add\"|\"remove\", \"path\": \"/visitors\", \"value\": [string...]}]}",
            ),
        }
    };
    segment_end(&shared, n, Some(&target), status);
    response
}
