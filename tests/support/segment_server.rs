//! A Segment-compatible HTTP test server: the stand-in for Segment's `POST /v1/batch` in
//! integration tests and benchmarks (contract: `docs/external-apis.md`, "Segment
//! HTTP Tracking API"). It checks what Segment checks, records what it accepts, and injects faults on
//! a reproducible schedule so the sender's retry, back-off and de-duplication can be proven.
//!
//! Why a hand-rolled HTTP/1.1 server on a raw `TcpListener` rather than axum: two faults need
//! control below the HTTP layer — `ResetConnection` closes the TCP connection with no response at
//! all, and `Timeout` holds a connection open without ever answering — which a framework's
//! request/response abstraction cannot express. The subset implemented is what HTTP clients send
//! to Segment: request line, headers, `Content-Length` bodies, keep-alive, pipelining and
//! `Expect: 100-continue`. Chunked request bodies are refused with 411 (Segment clients always
//! know the body length).
//!
//! Included by the tests as `support::segment_server`; benches may include it with `#[path]`, so
//! it depends on nothing else in `support`.
// Each test binary uses a different part of the API.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Segment's limit for a whole request body (500 KB), measured **after** gzip decompression
/// (undocumented upstream, so the stricter reading is enforced).
pub const MAX_REQUEST_BYTES: usize = 500 * 1024;
/// Segment's limit for one event (32 KB), measured on the item's compact JSON serialisation.
pub const MAX_EVENT_BYTES: usize = 32 * 1024;
/// Events past this index in one batch are silently dropped by Segment (answer still 200).
pub const MAX_BATCH_EVENTS: usize = 2_500;
/// The call types Segment knows; anything else is refused (stricter than Segment, see
/// [`SegmentTestServer`]).
pub const EVENT_TYPES: [&str; 6] = ["identify", "group", "track", "page", "screen", "alias"];
/// Segment's documented maximum length of a `messageId` (checked only in strict mode).
pub const MAX_MESSAGE_ID_CHARS: usize = 100;
/// Slack granted to a client's clock and scheduler before a request counts as arriving before
/// the `Retry-After` deadline.
pub const RETRY_AFTER_TOLERANCE: Duration = Duration::from_millis(50);

/// How long a `Timeout` fault holds a connection: far longer than any client timeout.
const TIMEOUT_HOLD: Duration = Duration::from_secs(600);
/// A request head larger than this is refused with 431 (protects the test from garbage).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A body larger than this on the wire is refused without reading it, and the connection closed.
/// Far above anything valid (500 KB uncompressed), so only broken senders hit it.
const MAX_WIRE_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Server settings. `Default` is a strict server with the write key `test-write-key`, no faults
/// and no delay.
#[derive(Clone, Debug)]
pub struct SegmentServerConfig {
    /// Expected HTTP Basic user name (password empty), as Segment's write key.
    pub write_key: String,
    /// Seed of the RNG behind [`FaultTrigger::Probability`], so faulty runs are reproducible.
    pub seed: u64,
    /// `false` (default, "strict"): items Segment would accept and then silently drop (no
    /// userId/anonymousId, track without `event`, group without `groupId`, alias without
    /// `previousId`, bad `messageId`) fail the request with 400 so a sender bug is loud.
    /// `true`: Segment's real behaviour — 200, the item dropped and counted in
    /// [`SegmentTestServer::dropped`].
    pub silently_drop_invalid: bool,
    /// Faults from the first request on; replaceable at runtime with
    /// [`SegmentTestServer::set_faults`].
    pub faults: FaultPlan,
    /// Added before every HTTP answer (not to `Timeout`/`ResetConnection`): models network and
    /// Segment latency for benchmarks.
    pub response_delay: Option<Duration>,
    /// Content rule: a batch holding an item whose `messageId` is in this set is refused with
    /// Segment's 400 body (`invalid_request`, naming the item's index and messageId), and nothing
    /// of it is recorded — one event Segment refuses for reasons a sender cannot check before
    /// sending (a valid-looking event inside an otherwise good batch). Checked right after the
    /// item's size and `type` checks; empty (default) = no such rule.
    pub reject_message_ids: HashSet<String>,
}

impl Default for SegmentServerConfig {
    fn default() -> Self {
        Self {
            write_key: "test-write-key".to_string(),
            seed: 0x5EED_5E6E_0000_0001,
            silently_drop_invalid: false,
            faults: FaultPlan::default(),
            response_delay: None,
            reject_message_ids: HashSet::new(),
        }
    }
}

/// What an injected fault does to the request it hits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultAction {
    /// Answer with this status (e.g. 500, 502, 503) and a JSON error body; events not recorded.
    Status(u16),
    /// 429 with `Retry-After: <secs>` and `X-RateLimit-Reset: <unix seconds>`; events not
    /// recorded. Arms the early-request check ([`SegmentTestServer::early_requests`]).
    RateLimited { retry_after_secs: u64 },
    /// Process normally (events recorded at once), then wait this long before answering: the
    /// "accepted but the client gave up" case that turns retries into duplicates.
    Slow(Duration),
    /// Never answer; hold the connection until the client closes it (or 10 minutes, or the
    /// server is dropped). Events not recorded.
    Timeout,
    /// Close the TCP connection abortively (RST) without any HTTP response. Events not recorded.
    ResetConnection,
}

/// Which requests a fault rule hits. Requests are numbered from 1 in arrival order, counting
/// every POST since the server started (the count survives [`SegmentTestServer::set_faults`]).
#[derive(Clone, Debug, PartialEq)]
pub enum FaultTrigger {
    /// Exactly request number `n` (1-based).
    Nth(u64),
    /// Requests `first..=last` (1-based, inclusive).
    Range { first: u64, last: u64 },
    /// Each request independently with this probability (0.0-1.0), drawn from the seeded RNG.
    Probability(f64),
}

/// One rule of a [`FaultPlan`].
#[derive(Clone, Debug, PartialEq)]
pub struct FaultRule {
    pub trigger: FaultTrigger,
    pub action: FaultAction,
}

/// A schedule of faults. Rules are tried in order and the first one that matches wins (a
/// `Probability` rule consumes one RNG draw each time it is evaluated).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultPlan {
    pub rules: Vec<FaultRule>,
}

impl FaultPlan {
    /// No faults.
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds a rule hitting request number `n` (1-based).
    pub fn nth(mut self, n: u64, action: FaultAction) -> Self {
        self.rules.push(FaultRule {
            trigger: FaultTrigger::Nth(n),
            action,
        });
        self
    }

    /// Adds a rule hitting requests `first..=last` (1-based).
    pub fn range(mut self, first: u64, last: u64, action: FaultAction) -> Self {
        self.rules.push(FaultRule {
            trigger: FaultTrigger::Range { first, last },
            action,
        });
        self
    }

    /// Adds a rule hitting each request with probability `p` (seeded, reproducible).
    pub fn probability(mut self, p: f64, action: FaultAction) -> Self {
        self.rules.push(FaultRule {
            trigger: FaultTrigger::Probability(p),
            action,
        });
        self
    }
}

/// One event the server accepted, as Segment would have ingested it.
#[derive(Clone, Debug)]
pub struct ReceivedEvent {
    /// The item's `messageId` when it is a string (Segment de-duplicates on it alone).
    pub message_id: Option<String>,
    /// The batch item exactly as sent (top-level `context`/`integrations` are not merged in).
    pub item: Value,
    /// When the server accepted it.
    pub received_at: Instant,
    /// Number of the request that carried it (1-based, see [`RequestRecord::index`]).
    pub request_index: u64,
}

/// What happened to one POST, faulted or not.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// 1-based arrival number among all POSTs (the numbering fault rules use).
    pub index: u64,
    /// Request path without query string (normally `/v1/batch`).
    pub path: String,
    /// HTTP status answered; `None` for `Timeout` and `ResetConnection`.
    pub status: Option<u16>,
    /// The injected fault, if any.
    pub fault: Option<FaultAction>,
    /// Items in the batch as sent (0 when the body was not a valid batch).
    pub item_count: usize,
    /// Items recorded as accepted events.
    pub accepted: usize,
    /// Items dropped as invalid (only with `silently_drop_invalid`).
    pub dropped_invalid: usize,
    /// Items dropped because they were past [`MAX_BATCH_EVENTS`].
    pub dropped_over_limit: usize,
    /// Body size on the wire (compressed when gzip).
    pub body_bytes: usize,
    /// Body size after decompression (equal to `body_bytes` without gzip; 0 if not decoded).
    pub decoded_bytes: usize,
    /// Whether the body was sent with `Content-Encoding: gzip`.
    pub gzip: bool,
    /// The body's top-level `sentAt`, when present and a string.
    pub sent_at: Option<String>,
    /// When the request head had been read.
    pub received_at: Instant,
    /// Arrived before the latest `Retry-After` deadline (minus the tolerance).
    pub early: bool,
    /// The error message answered with a 4xx, if any.
    pub error: Option<String>,
}

/// The running server; stops (all connections aborted) when dropped.
///
/// Validation, in Segment's order: HTTP Basic auth (401), `Content-Type: application/json`
/// (400), optional `Content-Encoding: gzip`, body ≤ [`MAX_REQUEST_BYTES`] decompressed (400),
/// valid JSON object with a `batch` array (400), then for the first [`MAX_BATCH_EVENTS`] items:
/// each ≤ [`MAX_EVENT_BYTES`] (400) and with a `type` among [`EVENT_TYPES`] (400 naming the
/// index — **stricter than Segment on purpose**: an item Segment cannot route is a sender bug we
/// want loud in tests), then the test's reject rule
/// ([`SegmentServerConfig::reject_message_ids`]), then the strict checks (see
/// [`SegmentServerConfig::silently_drop_invalid`]). A 400 rejects the whole batch: nothing of it
/// is recorded. Items past [`MAX_BATCH_EVENTS`] are dropped uninspected with a 200, like Segment.
/// The alternative `writeKey`-in-body authentication is not supported: our sender must use Basic.
pub struct SegmentTestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl SegmentTestServer {
    /// Binds 127.0.0.1 on a free port and starts serving. Panics if it cannot bind (test setup).
    pub async fn start(config: SegmentServerConfig) -> SegmentTestServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("segment test server: bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("segment test server: local_addr");
        let expected_token = base64_encode(format!("{}:", config.write_key).as_bytes());
        let shared = Arc::new(Shared {
            write_key: config.write_key,
            expected_token,
            silently_drop_invalid: config.silently_drop_invalid,
            response_delay: config.response_delay.unwrap_or(Duration::ZERO),
            reject_message_ids: config.reject_message_ids,
            inner: Mutex::new(Inner {
                faults: config.faults,
                rng: XorShift64::new(config.seed),
                ..Inner::default()
            }),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        SegmentTestServer { addr, shared, task }
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`; the sender posts to `{url}/v1/batch`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `{url}/v1/batch`, for tests that post directly.
    pub fn batch_url(&self) -> String {
        format!("{}/v1/batch", self.url())
    }

    /// The bound socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The write key the server expects as Basic user name.
    pub fn write_key(&self) -> &str {
        &self.shared.write_key
    }

    /// Replaces the fault plan from the next request on (request numbering continues).
    pub fn set_faults(&self, plan: FaultPlan) {
        self.shared.lock().faults = plan;
    }

    /// Every accepted event, in acceptance order (a copy).
    pub fn events(&self) -> Vec<ReceivedEvent> {
        self.shared.lock().events.clone()
    }

    /// Number of accepted events (cheap, for benchmarks).
    pub fn event_count(&self) -> usize {
        self.shared.lock().events.len()
    }

    /// The distinct `messageId`s accepted — what Segment keeps after de-duplication.
    pub fn distinct_message_ids(&self) -> HashSet<String> {
        self.shared.lock().message_ids.keys().cloned().collect()
    }

    /// Number of distinct `messageId`s accepted (cheap, for polling).
    pub fn distinct_count(&self) -> usize {
        self.shared.lock().message_ids.len()
    }

    /// How many times each `messageId` was accepted.
    pub fn message_id_counts(&self) -> HashMap<String, usize> {
        self.shared.lock().message_ids.clone()
    }

    /// Accepted events whose `messageId` had already been accepted (in an earlier request or
    /// earlier in the same batch): the duplicates Segment would have to remove.
    pub fn duplicates(&self) -> usize {
        self.shared.lock().duplicates
    }

    /// Every POST, in the order their handling finished (sort by `index` for arrival order).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.clone()
    }

    /// How many POSTs got each HTTP status (`Timeout`/`ResetConnection` have none).
    pub fn status_counts(&self) -> HashMap<u16, usize> {
        let inner = self.shared.lock();
        let mut counts = HashMap::new();
        for status in inner.requests.iter().filter_map(|r| r.status) {
            *counts.entry(status).or_insert(0) += 1;
        }
        counts
    }

    /// Requests answered 401 (missing or wrong write key).
    pub fn unauthorized(&self) -> usize {
        self.shared.lock().unauthorized
    }

    /// Items dropped as invalid under `silently_drop_invalid` (Segment's silent loss).
    pub fn dropped(&self) -> usize {
        self.shared.lock().dropped
    }

    /// Items dropped because their batch had more than [`MAX_BATCH_EVENTS`].
    pub fn dropped_over_limit(&self) -> usize {
        self.shared.lock().dropped_over_limit
    }

    /// Requests that arrived before the latest 429's `Retry-After` deadline but after that 429
    /// was answered (both with [`RETRY_AFTER_TOLERANCE`], so requests already on the wire do not
    /// count): a sender honouring `Retry-After` keeps this at 0. The deadline is global, like
    /// Segment's per-workspace rate limit, so concurrent senders count too.
    pub fn early_requests(&self) -> usize {
        self.shared.lock().early_requests
    }

    /// Polls until at least `n` distinct `messageId`s were accepted; `false` on timeout.
    pub async fn wait_for_distinct(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.distinct_count() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for SegmentTestServer {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// Shared state

struct Shared {
    write_key: String,
    /// base64 of `"<write key>:"`, the Basic credentials Segment expects.
    expected_token: String,
    silently_drop_invalid: bool,
    response_delay: Duration,
    reject_message_ids: HashSet<String>,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the records inconsistent enough to matter.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Default)]
struct Inner {
    faults: FaultPlan,
    rng: XorShift64,
    posts: u64,
    events: Vec<ReceivedEvent>,
    message_ids: HashMap<String, usize>,
    duplicates: usize,
    requests: Vec<RequestRecord>,
    unauthorized: usize,
    dropped: usize,
    dropped_over_limit: usize,
    early_requests: usize,
    retry_deadline: Option<Instant>,
    /// When the latest 429 that moved the deadline was answered.
    retry_issued_at: Option<Instant>,
}

impl Inner {
    fn pick_fault(&mut self, index: u64) -> Option<FaultAction> {
        let Inner { faults, rng, .. } = self;
        for rule in &faults.rules {
            let hit = match rule.trigger {
                FaultTrigger::Nth(n) => index == n,
                FaultTrigger::Range { first, last } => (first..=last).contains(&index),
                FaultTrigger::Probability(p) => rng.next_f64() < p,
            };
            if hit {
                return Some(rule.action.clone());
            }
        }
        None
    }
}

/// xorshift64*: tiny, deterministic across platforms, good enough to spread faults.
#[derive(Default)]
struct XorShift64(u64);

impl XorShift64 {
    fn new(seed: u64) -> Self {
        // Zero is a fixed point of xorshift; mix the seed so small seeds differ a lot.
        let s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
        Self(if s == 0 { 0x2545_F491_4F6C_DD1D } else { s })
    }

    fn next_u64(&mut self) -> u64 {
        if self.0 == 0 {
            *self = Self::new(0);
        }
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

// ---------------------------------------------------------------------------------------------
// Connections

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, shared.clone()));
                }
                // E.g. out of file descriptors under a load test: back off, keep serving.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

struct Head {
    method: String,
    path: String,
    http11: bool,
    /// Lower-cased names, trimmed values, in order.
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn keep_alive(&self) -> bool {
        if self.has_token("connection", "close") {
            false
        } else {
            self.http11 || self.has_token("connection", "keep-alive")
        }
    }
}

enum HeadError {
    /// The client closed (or the socket failed) between requests or mid-request.
    Closed,
    TooLarge,
    Malformed(String),
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn json(status: u16, body: &Value) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.to_string().into_bytes(),
        }
    }

    /// Segment's 400 body.
    fn invalid_request(message: &str) -> Self {
        Self::json(
            400,
            &json!({"success": false, "message": message, "code": "invalid_request"}),
        )
    }
}

/// What to do with a POST once processed.
enum Outcome {
    Respond {
        response: Response,
        /// Wait this long before answering.
        delay: Duration,
        /// A 429: arm the `Retry-After` deadline when actually answering.
        retry_after_secs: Option<u64>,
    },
    Hold,
    Reset,
}

async fn serve_connection(mut stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    loop {
        let (head, head_len) = match read_head(&mut stream, &mut buf).await {
            Ok(h) => h,
            Err(HeadError::Closed) => return,
            Err(HeadError::TooLarge) => {
                let r = Response::json(
                    431,
                    &json!({"success": false, "message": "request head too large"}),
                );
                let _ = write_response(&mut stream, &r, false).await;
                return;
            }
            Err(HeadError::Malformed(message)) => {
                let _ =
                    write_response(&mut stream, &Response::invalid_request(&message), false).await;
                return;
            }
        };
        let arrival = Instant::now();
        let keep_alive = head.keep_alive();

        // Body framing: Content-Length only.
        if head.header("transfer-encoding").is_some() {
            let r = Response::json(
                411,
                &json!({"success": false, "message": "chunked request bodies are not supported; send Content-Length"}),
            );
            let _ = write_response(&mut stream, &r, false).await;
            return;
        }
        let content_length = match head.header("content-length").map(|v| v.parse::<usize>()) {
            None => 0,
            Some(Ok(n)) => n,
            Some(Err(_)) => {
                let _ = write_response(
                    &mut stream,
                    &Response::invalid_request("invalid Content-Length"),
                    false,
                )
                .await;
                return;
            }
        };
        if content_length > MAX_WIRE_BODY_BYTES {
            let r = Response::invalid_request("request body too large");
            let _ = write_response(&mut stream, &r, false).await;
            return;
        }
        if content_length > 0
            && buf.len() < head_len + content_length
            && head.has_token("expect", "100-continue")
            && stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return;
        }
        while buf.len() < head_len + content_length {
            buf.reserve(head_len + content_length - buf.len());
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        let body = buf[head_len..head_len + content_length].to_vec();
        buf.drain(..head_len + content_length);

        let outcome = if head.method == "POST" {
            process_post(&shared, &head, &body, arrival)
        } else {
            let (status, message) = if head.path == "/v1/batch" {
                (405, "use POST")
            } else {
                (404, "not found")
            };
            let mut response =
                Response::json(status, &json!({"success": false, "message": message}));
            if status == 405 {
                response.headers.push(("Allow".into(), "POST".into()));
            }
            Outcome::Respond {
                response,
                delay: Duration::ZERO,
                retry_after_secs: None,
            }
        };

        match outcome {
            Outcome::Respond {
                mut response,
                delay,
                retry_after_secs,
            } => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if let Some(secs) = retry_after_secs {
                    let deadline = Instant::now() + Duration::from_secs(secs);
                    {
                        let mut inner = shared.lock();
                        if inner.retry_deadline.is_none_or(|d| d < deadline) {
                            inner.retry_deadline = Some(deadline);
                            inner.retry_issued_at = Some(Instant::now());
                        }
                    }
                    let reset = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs()
                        + secs;
                    response
                        .headers
                        .push(("Retry-After".into(), secs.to_string()));
                    response
                        .headers
                        .push(("X-RateLimit-Reset".into(), reset.to_string()));
                }
                if write_response(&mut stream, &response, keep_alive)
                    .await
                    .is_err()
                    || !keep_alive
                {
                    return;
                }
            }
            Outcome::Hold => {
                hold_until_client_leaves(&mut stream).await;
                return;
            }
            Outcome::Reset => {
                // SO_LINGER 0: the close sends RST, no FIN, no response.
                let _ = stream.set_zero_linger();
                drop(stream);
                return;
            }
        }
    }
}

/// Reads until a complete request head is in `buf`; returns it and its length in bytes.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(Head, usize), HeadError> {
    let mut searched: usize = 0;
    loop {
        let from = searched.saturating_sub(3);
        if let Some(pos) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = from + pos + 4;
            return parse_head(&buf[..end]).map(|h| (h, end));
        }
        searched = buf.len();
        if buf.len() > MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
        buf.reserve(16 * 1024);
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(HeadError::Closed),
            Ok(_) => {}
        }
    }
}

fn parse_head(raw: &[u8]) -> Result<Head, HeadError> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| HeadError::Malformed("request head is not UTF-8".into()))?;
    // Tolerate empty lines before the request line (RFC 9112 2.2).
    let mut lines = text.trim_start_matches("\r\n").split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed(format!(
            "bad request line {request_line:?}"
        )));
    };
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        other => {
            return Err(HeadError::Malformed(format!(
                "unsupported HTTP version {other:?}"
            )));
        }
    };
    let mut headers = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(HeadError::Malformed(format!("bad header line {line:?}")));
        };
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let path = target.split('?').next().unwrap_or_default().to_string();
    Ok(Head {
        method: method.to_string(),
        path,
        http11,
        headers,
    })
}

async fn write_response(
    stream: &mut TcpStream,
    r: &Response,
    keep_alive: bool,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {}\r\n",
        r.status,
        reason(r.status),
        r.body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    )
    .into_bytes();
    for (name, value) in &r.headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&r.body);
    stream.write_all(&out).await?;
    stream.flush().await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// `Timeout` fault: wait for the client to give up (EOF/error on read) or the long hold to end.
async fn hold_until_client_leaves(stream: &mut TcpStream) {
    let mut scratch = vec![0u8; 4096];
    let client_left = async {
        loop {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        _ = tokio::time::sleep(TIMEOUT_HOLD) => {}
        _ = client_left => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Segment semantics

fn process_post(shared: &Shared, head: &Head, body: &[u8], arrival: Instant) -> Outcome {
    let gzip = head
        .header("content-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip") || v.eq_ignore_ascii_case("x-gzip"));
    let (index, early, fault) =
        {
            let mut inner = shared.lock();
            inner.posts += 1;
            let index = inner.posts;
            let early = inner.retry_deadline.zip(inner.retry_issued_at).is_some_and(
                |(deadline, issued)| {
                    // Sent after the 429 could have been seen (requests already on the wire when it
                    // was answered are not early), and before the deadline.
                    arrival > issued + RETRY_AFTER_TOLERANCE
                        && arrival + RETRY_AFTER_TOLERANCE < deadline
                },
            );
            if early {
                inner.early_requests += 1;
            }
            (index, early, inner.pick_fault(index))
        };
    let mut record = RequestRecord {
        index,
        path: head.path.clone(),
        status: None,
        fault: fault.clone(),
        item_count: 0,
        accepted: 0,
        dropped_invalid: 0,
        dropped_over_limit: 0,
        body_bytes: body.len(),
        decoded_bytes: 0,
        gzip,
        sent_at: None,
        received_at: arrival,
        early,
        error: None,
    };
    let respond = |response: Response, extra: Duration, retry_after_secs| Outcome::Respond {
        response,
        delay: shared.response_delay + extra,
        retry_after_secs,
    };
    let mut slow = Duration::ZERO;
    match fault {
        Some(FaultAction::Timeout) => {
            shared.lock().requests.push(record);
            return Outcome::Hold;
        }
        Some(FaultAction::ResetConnection) => {
            shared.lock().requests.push(record);
            return Outcome::Reset;
        }
        Some(FaultAction::Status(code)) => {
            record.status = Some(code);
            shared.lock().requests.push(record);
            let body = json!({"success": false, "message": format!("injected fault: HTTP {code}"), "code": "injected_fault"});
            return respond(Response::json(code, &body), Duration::ZERO, None);
        }
        Some(FaultAction::RateLimited { retry_after_secs }) => {
            record.status = Some(429);
            shared.lock().requests.push(record);
            let body =
                json!({"success": false, "message": "rate limit exceeded", "code": "rate_limited"});
            return respond(
                Response::json(429, &body),
                Duration::ZERO,
                Some(retry_after_secs),
            );
        }
        Some(FaultAction::Slow(d)) => slow = d,
        None => {}
    }

    // Validation runs outside the lock so concurrent connections do not serialise on it.
    let checked = check_batch(shared, head, body, &mut record);
    let mut guard = shared.lock();
    // Through the guard once, so the fields can be borrowed separately.
    let inner = &mut *guard;
    let response = match checked {
        Err(response) => response,
        Ok(batch) => {
            let now = Instant::now();
            for item in batch.keep {
                let message_id = item
                    .get("messageId")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                if let Some(id) = &message_id {
                    let count = inner.message_ids.entry(id.clone()).or_insert(0);
                    if *count > 0 {
                        inner.duplicates += 1;
                    }
                    *count += 1;
                }
                inner.events.push(ReceivedEvent {
                    message_id,
                    item,
                    received_at: now,
                    request_index: index,
                });
                record.accepted += 1;
            }
            record.dropped_invalid = batch.dropped_invalid;
            record.dropped_over_limit = batch.dropped_over_limit;
            inner.dropped += batch.dropped_invalid;
            inner.dropped_over_limit += batch.dropped_over_limit;
            Response::json(200, &json!({"success": true}))
        }
    };
    record.status = Some(response.status);
    if response.status == 401 {
        inner.unauthorized += 1;
    }
    inner.requests.push(record);
    respond(response, slow, None)
}

/// A batch that passed every check: the items to record and what was dropped.
struct CheckedBatch {
    keep: Vec<Value>,
    dropped_invalid: usize,
    dropped_over_limit: usize,
}

/// Segment's checks, in Segment's order. Fills the request record as it goes; `Err` is the
/// response to send (nothing of the batch is recorded then).
fn check_batch(
    shared: &Shared,
    head: &Head,
    body: &[u8],
    record: &mut RequestRecord,
) -> Result<CheckedBatch, Response> {
    let invalid = |record: &mut RequestRecord, message: String| {
        let response = Response::invalid_request(&message);
        record.error = Some(message);
        response
    };
    if head.path != "/v1/batch" {
        return Err(Response::json(
            404,
            &json!({"success": false, "message": "not found"}),
        ));
    }
    let authorized = head
        .header("authorization")
        .and_then(|v| v.split_once(' '))
        .is_some_and(|(scheme, token)| {
            scheme.eq_ignore_ascii_case("basic") && token.trim() == shared.expected_token
        });
    if !authorized {
        let body =
            json!({"success": false, "message": "Invalid write key", "code": "unauthorized"});
        record.error = Some("missing or wrong write key".into());
        return Err(Response::json(401, &body));
    }
    let content_type = head.header("content-type").unwrap_or_default();
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    if !media_type.eq_ignore_ascii_case("application/json") {
        return Err(invalid(
            record,
            format!("Content-Type must be application/json, got {content_type:?}"),
        ));
    }
    let decoded: Vec<u8> = match head
        .header("content-encoding")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("identity") => body.to_vec(),
        Some("gzip" | "x-gzip") => {
            let mut out = Vec::new();
            // Read one byte past the limit: enough to know it is exceeded, and no gzip bomb.
            let mut limited = flate2::read::GzDecoder::new(body).take(MAX_REQUEST_BYTES as u64 + 1);
            if let Err(e) = limited.read_to_end(&mut out) {
                return Err(invalid(record, format!("invalid gzip body: {e}")));
            }
            out
        }
        Some(other) => {
            return Err(invalid(
                record,
                format!("unsupported Content-Encoding {other:?}"),
            ));
        }
    };
    record.decoded_bytes = decoded.len();
    if decoded.len() > MAX_REQUEST_BYTES {
        return Err(invalid(
            record,
            format!("request body exceeds {MAX_REQUEST_BYTES} bytes (500 KB) uncompressed"),
        ));
    }
    let parsed: Value = match serde_json::from_slice(&decoded) {
        Ok(v) => v,
        Err(e) => return Err(invalid(record, format!("invalid JSON: {e}"))),
    };
    record.sent_at = parsed
        .get("sentAt")
        .and_then(Value::as_str)
        .map(str::to_string);
    let Some(Value::Array(mut batch)) = (match parsed {
        Value::Object(mut map) => map.remove("batch"),
        _ => None,
    }) else {
        return Err(invalid(
            record,
            "body must be a JSON object with a \"batch\" array".into(),
        ));
    };
    record.item_count = batch.len();
    let dropped_over_limit = batch.len().saturating_sub(MAX_BATCH_EVENTS);
    batch.truncate(MAX_BATCH_EVENTS);

    let mut keep = Vec::with_capacity(batch.len());
    let mut dropped_invalid = 0;
    for (i, item) in batch.into_iter().enumerate() {
        let size = serde_json::to_vec(&item).map_or(usize::MAX, |v| v.len());
        if size > MAX_EVENT_BYTES {
            return Err(invalid(
                record,
                format!(
                    "batch[{i}] is {size} bytes, over the {MAX_EVENT_BYTES}-byte (32 KB) event limit"
                ),
            ));
        }
        let Some(kind) = item
            .get("type")
            .and_then(Value::as_str)
            .filter(|k| EVENT_TYPES.contains(k))
        else {
            return Err(invalid(
                record,
                format!(
                    "batch[{i}] has no valid \"type\" (one of {EVENT_TYPES:?}), got {:?}",
                    item.get("type")
                ),
            ));
        };
        if let Some(id) = item
            .get("messageId")
            .and_then(Value::as_str)
            .filter(|id| shared.reject_message_ids.contains(*id))
        {
            return Err(invalid(
                record,
                format!(
                    "batch[{i}] ({kind}, messageId {id:?}) was refused (test server reject rule)"
                ),
            ));
        }
        match strict_problem(kind, &item) {
            None => keep.push(item),
            Some(_) if shared.silently_drop_invalid => dropped_invalid += 1,
            Some(problem) => {
                return Err(invalid(
                    record,
                    format!(
                        "batch[{i}] ({kind}) {problem} (Segment would accept and silently drop it)"
                    ),
                ));
            }
        }
    }
    Ok(CheckedBatch {
        keep,
        dropped_invalid,
        dropped_over_limit,
    })
}

/// Why Segment would accept and then drop this item, if it would.
fn strict_problem(kind: &str, item: &Value) -> Option<&'static str> {
    fn present(v: Option<&Value>) -> bool {
        match v {
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Number(_)) => true,
            _ => false,
        }
    }
    match item.get("messageId") {
        None => {}
        Some(Value::String(id)) if id.chars().count() <= MAX_MESSAGE_ID_CHARS => {}
        Some(Value::String(_)) => return Some("has a messageId longer than 100 characters"),
        Some(_) => return Some("has a messageId that is not a string"),
    }
    if kind != "alias" && !present(item.get("userId")) && !present(item.get("anonymousId")) {
        return Some("has neither userId nor anonymousId");
    }
    match kind {
        "track" if !present(item.get("event")) => Some("has no \"event\""),
        "group" if !present(item.get("groupId")) => Some("has no \"groupId\""),
        "alias" if !present(item.get("previousId")) => Some("has no \"previousId\""),
        _ => None,
    }
}

/// Standard base64 with padding (for the expected `Authorization` value; no extra dependency).
fn base64_encode(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(ALPHABET[(n >> 18) as usize & 63] as char);
        out.push(ALPHABET[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            ALPHABET[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            ALPHABET[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}
