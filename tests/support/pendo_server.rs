//! A Pendo-compatible HTTP test server: the stand-in for Pendo's REST API in integration tests
//! (contract: `/work/shared/API-FACTS.md`, "Pendo REST API"). Serves the bulk metadata writes
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
//! The per-item answer is **assumed** (Pendo's exact shape is not confirmed):
//! `{"total": n, "updated": n, "failed": n, "missing": [id...], "errors": [{"id": id, "error": text}...]}`.
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
use axum::routing::{get, post};
use serde_json::{Value, json};

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
}

impl Default for PendoServerConfig {
    fn default() -> Self {
        Self {
            integration_key: "test-integration-key".into(),
            fields: HashMap::new(),
            known_ids: None,
            faults: PendoFaultPlan::none(),
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
}

struct Shared {
    config: Mutex<PendoServerConfig>,
    inner: Mutex<Inner>,
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
        });
        let app = Router::new()
            .route("/api/v1/metadata/{entity}/{group}/value", post(write))
            .route("/api/v1/token/verify", get(verify))
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

async fn answer(
    shared: &Shared,
    entity: &str,
    group: &str,
    create: bool,
    headers: &HeaderMap,
    body: &[u8],
    fault: Option<PendoFault>,
) -> (StatusCode, Response) {
    let plain = |s: StatusCode, text: &str| (s, (s, text.to_string()).into_response());
    match fault {
        Some(PendoFault::TooManyRequests { retry_after_s }) => {
            shared.inner.lock().unwrap().not_before =
                Some(Instant::now() + Duration::from_secs(retry_after_s));
            let s = StatusCode::TOO_MANY_REQUESTS;
            return (
                s,
                (
                    s,
                    [("retry-after", retry_after_s.to_string())],
                    "Too Many Requests",
                )
                    .into_response(),
            );
        }
        Some(PendoFault::Conflict) => {
            return plain(StatusCode::CONFLICT, "Operation in progress");
        }
        Some(PendoFault::Status(code)) => {
            return plain(StatusCode::from_u16(code).unwrap(), "injected server error");
        }
        Some(PendoFault::Slow(d)) => tokio::time::sleep(d).await,
        None => {}
    }
    if !key_ok(shared, headers) {
        shared.inner.lock().unwrap().unauthorized += 1;
        return plain(StatusCode::UNAUTHORIZED, "invalid integration key");
    }
    if !["visitor", "account"].contains(&entity) || !["custom", "agent"].contains(&group) {
        return plain(StatusCode::NOT_FOUND, "no such metadata kind");
    }
    let json_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !json_type {
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
