//! The webhook HTTP handler shared by the Pendo and Segment connectors.
//!
//! Order of checks, cheapest first: capacity (503), authentication (401; for a body signature,
//! the header's presence and form), content type (415), declared and actual size (413), the body
//! within `body_read_timeout` (408, and the connection closed) and the byte budget (503), the body
//! signature if the endpoint uses one (401), an array body where batches are refused (400,
//! nothing kept), a request slot (503), body shape (400, and the raw
//! body to the DLQ), the size of every event (413, and the body to the DLQ), then every event is
//! appended to Kafka in one transaction. Nothing of a body is kept, not even in the
//! DLQ, before its sender is authenticated.
//!
//! What a sender that has not been authenticated yet can hold (a Segment sender is only
//! authenticated once its whole body has been read and its signature checked): a connection
//! (within the listener's cap and deadlines, see [`super::listener`]), and for at most
//! `body_read_timeout` the body bytes it actually sent. A declared `Content-Length` reserves
//! nothing, and a request slot (`max_in_flight_requests`) is taken only once the body is read and
//! authenticated, so stalled peers cannot starve honest senders of either. 200 only after that transaction committed;
//! 503 with `Retry-After` when Kafka could not take it (nothing of the request is then visible
//! to `read_committed` consumers, so the sender's retry cannot duplicate).
//!
//! Two size limits, because a body is not a record: `max_body_bytes` bounds what one request may
//! carry (memory), `max_event_bytes` bounds each event, which becomes one Kafka record and must fit
//! the raw topic. A body larger than one record (an Actions batch of thousands of events) is
//! still one job of the appender, so all its events commit in one transaction or none does; a job
//! larger than `max_transaction_bytes`/`max_transaction_records` simply gets a transaction of its
//! own. A rejected body larger than one record is dead-lettered in parts (see
//! [`dead_letter_parts`]), never dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::auth::{SharedSecrets, credential_from_header};
use super::body::{BodyError, split_events};
use super::listener::{self, HttpLimits};
use super::signature::{SignatureSecrets, parse_hex_signature};
use crate::config::MAX_RAW_RECORD_BYTES;
use crate::internal_events::{WebhookBodyDeadLettered, WebhookRequest, WebhookRequestEvent, emit};
use crate::kafka::headers;
use crate::kafka::transactional_appender::{AppendError, OutRecord, TransactionalAppender};
use crate::metrics::metrics;
use crate::shutdown::Shutdown;
use prometheus::{Histogram, IntCounter, IntGauge};

/// What the connector reads from one event: its Kafka key and its kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventIdentity {
    /// Partitioning key (per-user ordering downstream).
    pub key: Option<String>,
    /// The event field the key was read from (`userId`, `visitorId`...), named when it is too
    /// long to be a key.
    pub key_field: &'static str,
    /// The source's event kind, for the `event-kind` header.
    pub kind: Option<String>,
    /// The event field the kind was read from (`type`, `event`).
    pub kind_field: &'static str,
}

/// Longest key an event may give its record: ids are short; a megabyte "id" would make every
/// record of its user (and its dead letters) carry it.
pub const MAX_EVENT_KEY_BYTES: usize = 1024;
/// Longest event kind: it becomes the `event-kind` header (and a metric label downstream).
pub const MAX_EVENT_KIND_BYTES: usize = 256;

impl EventIdentity {
    /// An id field's text: ids may be strings or numbers (some sources send numbers); empty
    /// strings and other shapes count as absent.
    pub fn id_text(v: Option<serde_json::Value>) -> Option<String> {
        match v? {
            serde_json::Value::String(s) if !s.is_empty() => Some(s),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// The identity keyed by the first present id of `ids` (in order of preference, each with
    /// its field's name), of kind `kind` read from `kind_field`.
    pub fn first_of(
        ids: impl IntoIterator<Item = (Option<String>, &'static str)>,
        kind: Option<String>,
        kind_field: &'static str,
    ) -> Self {
        let (key, key_field) = ids
            .into_iter()
            .find_map(|(id, field)| id.map(|id| (Some(id), field)))
            .unwrap_or((None, ""));
        let kind_field = if kind.is_some() { kind_field } else { "" };
        Self {
            key,
            key_field,
            kind,
            kind_field,
        }
    }

    /// A kind field's text: a non-empty string, else absent.
    pub fn kind_text(v: Option<serde_json::Value>) -> Option<String> {
        match v? {
            serde_json::Value::String(s) if !s.is_empty() => Some(s),
            _ => None,
        }
    }

    /// Admission of what becomes the record's key and headers: `Err` names the field over its
    /// bound, so the sender learns what to fix.
    pub fn check(&self, index: Option<usize>) -> Result<(), BodyError> {
        let too_long = |field: &'static str, size: usize, max: usize| BodyError::FieldTooLong {
            index,
            field,
            size,
            max,
        };
        if let Some(k) = &self.key
            && k.len() > MAX_EVENT_KEY_BYTES
        {
            return Err(too_long(self.key_field, k.len(), MAX_EVENT_KEY_BYTES));
        }
        if let Some(k) = &self.kind
            && k.len() > MAX_EVENT_KIND_BYTES
        {
            return Err(too_long(self.kind_field, k.len(), MAX_EVENT_KIND_BYTES));
        }
        Ok(())
    }
}

/// How senders prove who they are.
#[derive(Clone)]
pub enum WebhookAuth {
    /// A shared secret in a header (`<scheme> <secret>`) or, if allowed, as the last path segment.
    SharedSecret {
        /// Accepted secrets.
        secrets: SharedSecrets,
        /// Header carrying the secret.
        header: HeaderName,
        /// Scheme before the secret (`Bearer`), empty for the bare secret.
        scheme: String,
        /// Whether `<path>/<secret>` is accepted.
        path_token: bool,
    },
    /// A hex HMAC-SHA1 of the body in a header (Segment's `X-Signature`; for a JSON array body
    /// it covers the first element, see [`super::signature::signed_part`]). The secret never
    /// travels, so a captured request cannot be re-sent with another (signed part of its) body.
    HmacSha1Signature {
        /// Secrets the signature may be made with (rotation).
        secrets: SignatureSecrets,
        /// Header carrying the signature.
        header: HeaderName,
    },
    /// No authentication (`--insecure-no-auth`).
    Disabled,
}

/// Everything a webhook endpoint needs.
pub struct WebhookEndpoint {
    /// Role name (metrics, `source` header).
    pub role: &'static str,
    /// Route of the endpoint, e.g. `/webhooks/pendo`.
    pub path: String,
    /// Authentication.
    pub auth: WebhookAuth,
    /// Largest accepted body (a request may carry many events).
    pub max_body_bytes: usize,
    /// Largest accepted event: each becomes one Kafka record, so at most
    /// [`MAX_RAW_RECORD_BYTES`].
    pub max_event_bytes: usize,
    /// Most events per request.
    pub max_events: usize,
    /// Whether a JSON array body is accepted. `false` answers 400 to any array, after the
    /// sender is authenticated and before anything is stored (see
    /// `segment_webhook.accept_batches`: Segment's signature covers only a batch's first
    /// element, so the rest of an array is not worth keeping, not even as a dead letter).
    pub accept_batches: bool,
    /// Requests being stored (body read and authenticated, waiting for Kafka) at once; more are
    /// answered 503 at once. Taken only after the body is read, so peers that stall mid-body
    /// cannot hold them.
    pub in_flight: Semaphore,
    /// Bytes of request bodies held at once, one permit per byte, charged as the bytes arrive
    /// (never by the declared `Content-Length`, which a stalled peer could inflate for free); a
    /// request whose next bytes do not fit is answered 503. Bounds memory when bodies are large
    /// (Actions batches), where `in_flight` × `max_body_bytes` would not.
    pub body_budget: Semaphore,
    /// Longest time to receive a whole body once the headers are in; then 408 and the connection
    /// is closed, so a stalled sender holds its bytes of `body_budget` no longer than this.
    pub body_read_timeout: Duration,
    /// `Retry-After` seconds on 503.
    pub retry_after_seconds: u64,
    /// Topic of accepted events.
    pub topic: Arc<str>,
    /// Topic of rejected bodies.
    pub dlq_topic: Arc<str>,
    /// Reads key and kind of one event.
    pub identify: fn(&[u8]) -> EventIdentity,
    /// Where records go.
    pub appender: TransactionalAppender,
    /// This endpoint's metric handles, resolved once.
    pub metrics: WebhookMetrics,
}

/// Metric handles of one webhook role, looked up once instead of on every request.
pub struct WebhookMetrics {
    ok: IntCounter,
    events: IntCounter,
    bytes: IntCounter,
    in_flight: IntGauge,
    ack_latency: Histogram,
    body_timeout: IntCounter,
}

impl WebhookMetrics {
    /// Handles labelled with `role`.
    pub fn new(role: &str) -> Self {
        let m = metrics();
        Self {
            ok: m.webhook_requests.with_label_values(&[role, "200"]),
            events: m.webhook_events.with_label_values(&[role]),
            bytes: m.webhook_bytes.with_label_values(&[role]),
            in_flight: m.webhook_in_flight.with_label_values(&[role]),
            ack_latency: m.webhook_ack_latency.with_label_values(&[role]),
            body_timeout: m
                .webhook_connections_closed
                .with_label_values(&[role, listener::BODY_TIMEOUT]),
        }
    }
}

/// Routes of one endpoint: `POST <path>` and, when path tokens are allowed, `POST <path>/{token}`.
pub fn router(endpoint: Arc<WebhookEndpoint>) -> Router {
    let mut r = Router::new().route(
        &endpoint.path,
        post(
            |State(e): State<Arc<WebhookEndpoint>>, headers: HeaderMap, body: Body| async move {
                handle(e, None, headers, body).await
            },
        ),
    );
    if matches!(
        endpoint.auth,
        WebhookAuth::SharedSecret {
            path_token: true,
            ..
        }
    ) {
        r = r.route(
            &format!("{}/{{token}}", endpoint.path.trim_end_matches('/')),
            post(
                |State(e): State<Arc<WebhookEndpoint>>,
                 Path(token): Path<String>,
                 headers: HeaderMap,
                 body: Body| async move { handle(e, Some(token), headers, body).await },
            ),
        );
    }
    r.with_state(endpoint)
}

/// Serves `endpoint` on `listen` under `limits` until `shutdown`; in-flight requests are
/// finished and answered.
pub async fn serve(
    listen: SocketAddr,
    endpoint: Arc<WebhookEndpoint>,
    limits: HttpLimits,
    shutdown: Shutdown,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let role = endpoint.role;
    let path = endpoint.path.clone();
    let retry_after = endpoint.retry_after_seconds;
    let (addr, task) = listener::serve(
        listen,
        router(endpoint),
        role,
        limits,
        retry_after,
        shutdown,
    )
    .await?;
    tracing::info!(role, %addr, %path, "webhook endpoint listening");
    Ok((addr, task))
}

struct Reply {
    status: StatusCode,
    body: serde_json::Value,
    retry_after: Option<u64>,
}

impl Reply {
    fn error(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: serde_json::json!({ "error": message.into() }),
            retry_after: None,
        }
    }

    fn unavailable(e: &WebhookEndpoint, message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(e.retry_after_seconds),
            ..Self::error(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }
}

async fn handle(
    e: Arc<WebhookEndpoint>,
    token: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let role = e.role;
    let received = Instant::now();
    // Refused before anything is read when every request slot is taken; the slot itself is
    // taken once the body is in (see `handle_admitted`).
    let reply = if e.in_flight.available_permits() == 0 {
        rejected(role, "overloaded");
        overloaded(&e)
    } else {
        handle_admitted(&e, token, &headers, body, received).await
    };
    if reply.status == StatusCode::OK {
        e.metrics.ok.inc();
    } else {
        emit(WebhookRequest {
            role,
            event: WebhookRequestEvent::Answered(reply.status.as_str()),
        });
    }
    let mut response = (reply.status, axum::Json(reply.body)).into_response();
    if let Some(s) = reply.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    if reply.status == StatusCode::REQUEST_TIMEOUT {
        // The rest of the body may still be on its way: this connection cannot carry another
        // request.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn overloaded(e: &WebhookEndpoint) -> Reply {
    Reply::unavailable(e, "overloaded: too many requests in flight")
}

/// Why a body was not read whole.
enum BodyRead {
    /// More than `max_body_bytes`.
    TooLarge,
    /// The byte budget cannot hold its next bytes.
    Overloaded,
    /// The sender went away or sent a broken body.
    Failed,
}

/// Reads the body, charging `body_budget` for every byte as it arrives; the permit holds those
/// bytes until the request is answered. Chunks are kept as received and joined once at the end,
/// never pre-allocated from a declared length.
async fn read_body<'a>(
    e: &'a WebhookEndpoint,
    mut body: Body,
) -> Result<(Bytes, Option<SemaphorePermit<'a>>), BodyRead> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    let mut held: Option<SemaphorePermit<'a>> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| BodyRead::Failed)?;
        let Ok(data) = frame.into_data() else {
            continue; // Trailers carry no body bytes.
        };
        if data.is_empty() {
            continue;
        }
        total += data.len();
        if total > e.max_body_bytes {
            return Err(BodyRead::TooLarge);
        }
        // At most `max_body_bytes` (<= 128 MiB), so it fits a u32; the config guarantees the
        // budget can hold one such body, so a lone request is never refused for it.
        let permit = e
            .body_budget
            .try_acquire_many(data.len() as u32)
            .map_err(|_| BodyRead::Overloaded)?;
        match held.as_mut() {
            Some(h) => h.merge(permit),
            None => held = Some(permit),
        }
        chunks.push(data);
    }
    let bytes = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().expect("one chunk"),
        _ => {
            let mut joined = BytesMut::with_capacity(total);
            chunks.iter().for_each(|c| joined.extend_from_slice(c));
            joined.freeze()
        }
    };
    Ok((bytes, held))
}

/// The checks possible before the body is read. For a signature: that one is present and
/// well-formed, so unsigned requests are refused without reading their bodies.
fn authorized(e: &WebhookEndpoint, token: Option<&str>, headers: &HeaderMap) -> bool {
    match &e.auth {
        WebhookAuth::Disabled => true,
        WebhookAuth::HmacSha1Signature { header, .. } => headers
            .get(header)
            .and_then(|v| parse_hex_signature(v.as_bytes()))
            .is_some(),
        WebhookAuth::SharedSecret {
            secrets,
            header,
            scheme,
            ..
        } => {
            if let Some(t) = token {
                return secrets.matches(t.as_bytes());
            }
            headers
                .get(header)
                .and_then(|v| credential_from_header(v.as_bytes(), scheme))
                .is_some_and(|c| secrets.matches(c))
        }
    }
}

/// The body signature, if the endpoint uses one.
fn body_authorized(e: &WebhookEndpoint, headers: &HeaderMap, body: &[u8]) -> bool {
    match &e.auth {
        WebhookAuth::HmacSha1Signature { secrets, header } => headers
            .get(header)
            .is_some_and(|v| secrets.verify(v.as_bytes(), body)),
        WebhookAuth::SharedSecret { .. } | WebhookAuth::Disabled => true,
    }
}

fn unauthorized(e: &WebhookEndpoint) -> Reply {
    let message = match &e.auth {
        WebhookAuth::HmacSha1Signature { header, .. } => {
            format!("missing or wrong signature in {header}")
        }
        _ => "missing or wrong webhook secret".to_string(),
    };
    Reply::error(StatusCode::UNAUTHORIZED, message)
}

/// Longest `Content-Type` accepted (it is kept as the `content-type` header of every record).
const MAX_CONTENT_TYPE_BYTES: usize = 256;

fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return true; // Not declared: judge the body itself.
    };
    // It is stored as a header of every event's record: a real one is short.
    if ct.len() > MAX_CONTENT_TYPE_BYTES {
        return false;
    }
    let Ok(ct) = ct.to_str() else { return false };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

async fn handle_admitted(
    e: &WebhookEndpoint,
    token: Option<String>,
    headers: &HeaderMap,
    body: Body,
    received: Instant,
) -> Reply {
    let role = e.role;
    let reject = |reason| rejected(role, reason);

    if !authorized(e, token.as_deref(), headers) {
        reject("auth");
        return unauthorized(e);
    }
    if !json_content_type(headers) {
        reject("content_type");
        return Reply::error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        );
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > e.max_body_bytes as u64) {
        reject("too_large");
        return too_large(e);
    }
    let (bytes, _body_permit) =
        match tokio::time::timeout(e.body_read_timeout, read_body(e, body)).await {
            Ok(Ok(read)) => read,
            Ok(Err(BodyRead::TooLarge)) => {
                reject("too_large");
                return too_large(e);
            }
            Ok(Err(BodyRead::Overloaded)) => {
                reject("overloaded");
                return Reply::unavailable(e, "overloaded: too many request bytes in flight");
            }
            Ok(Err(BodyRead::Failed)) => {
                // The client went away mid-body.
                reject("body_read");
                return Reply::error(StatusCode::BAD_REQUEST, "could not read the request body");
            }
            Err(_) => {
                reject("body_timeout");
                e.metrics.body_timeout.inc();
                return Reply::error(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "body not received within {} ms",
                        e.body_read_timeout.as_millis()
                    ),
                );
            }
        };
    e.metrics.bytes.inc_by(bytes.len() as u64);
    if !body_authorized(e, headers, &bytes) {
        reject("auth");
        return unauthorized(e);
    }
    if !e.accept_batches && bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        reject("batch_refused");
        return Reply::error(
            StatusCode::BAD_REQUEST,
            "JSON array (batched) bodies are not accepted here (accept_batches = false): the \
             signature covers only the first element of a batch; send one event per request",
        );
    }
    let Ok(_slot) = e.in_flight.try_acquire() else {
        reject("overloaded");
        return overloaded(e);
    };
    e.metrics.in_flight.inc();
    let reply = store(e, headers, bytes, received).await;
    e.metrics.in_flight.dec();
    reply
}

/// Counts a request of `role` refused for `reason`.
fn rejected(role: &str, reason: &str) {
    emit(WebhookRequest {
        role,
        event: WebhookRequestEvent::Rejected(reason),
    });
}

/// Splits an authenticated body into events and appends them to Kafka in one transaction.
async fn store(e: &WebhookEndpoint, headers: &HeaderMap, bytes: Bytes, received: Instant) -> Reply {
    let role = e.role;
    let reject = |reason| rejected(role, reason);

    let request_id = request_id(headers);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| Bytes::copy_from_slice(v.as_bytes()))
        .unwrap_or_else(|| Bytes::from_static(b"application/json"));
    let received_at = Bytes::from(headers::now_millis().to_string());
    let common = vec![
        (headers::RECEIVED_AT, received_at),
        (headers::REQUEST_ID, Bytes::from(request_id.clone())),
        (headers::CONTENT_TYPE, content_type),
        (headers::SOURCE, Bytes::from_static(role.as_bytes())),
    ];

    let events = match split_events(&bytes, e.max_events, e.max_event_bytes) {
        Ok(ev) => ev,
        Err(err) => {
            reject(err.reason_label());
            return rejected_body(e, err, bytes, common, &request_id).await;
        }
    };
    let identities: Vec<EventIdentity> = events.iter().map(|ev| (e.identify)(ev)).collect();
    let array = events.len() > 1 || bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    for (i, id) in identities.iter().enumerate() {
        if let Err(err) = id.check(array.then_some(i)) {
            reject(err.reason_label());
            return rejected_body(e, err, bytes, common, &request_id).await;
        }
    }
    let records: Vec<OutRecord> = events
        .into_iter()
        .zip(identities)
        .map(|(event, id)| {
            let mut h = common.clone();
            if let Some(kind) = id.kind {
                h.push((headers::EVENT_KIND, Bytes::from(kind)));
            }
            OutRecord {
                topic: e.topic.clone(),
                key: id.key.map(Bytes::from),
                payload: event,
                headers: h,
            }
        })
        .collect();
    let count = records.len();
    if count == 0 {
        return Reply {
            status: StatusCode::OK,
            body: serde_json::json!({ "accepted": 0, "request_id": request_id }),
            retry_after: None,
        };
    }
    match e.appender.append(records).await {
        Ok(()) => {
            e.metrics.events.inc_by(count as u64);
            e.metrics
                .ack_latency
                .observe(received.elapsed().as_secs_f64());
            Reply {
                status: StatusCode::OK,
                body: serde_json::json!({ "accepted": count, "request_id": request_id }),
                retry_after: None,
            }
        }
        Err(err) => {
            reject(append_reason(&err));
            tracing::warn!(role, request_id = %request_id, error = %err, "events not accepted; answering 503");
            Reply::unavailable(e, format!("not stored, retry later: {err}"))
        }
    }
}

fn too_large(e: &WebhookEndpoint) -> Reply {
    Reply::error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("body larger than {} bytes", e.max_body_bytes),
    )
}

fn append_reason(err: &AppendError) -> &'static str {
    match err {
        AppendError::Overloaded => "overloaded",
        AppendError::Unavailable(_) => "kafka_unavailable",
        AppendError::ShuttingDown => "shutting_down",
    }
}

/// Largest payload of one dead-letter record: the DLQ topics hold records as large as the raw
/// topics' (`max.message.bytes` leaves room for the headers).
pub const MAX_DEAD_LETTER_PAYLOAD_BYTES: usize = MAX_RAW_RECORD_BYTES;

/// The dead-letter records that keep a rejected `body`, as (payload, detail) pairs, in order.
///
/// A body that fits one record is kept whole and byte for byte (no detail). A larger body cannot
/// be one record, so: an array body is kept one record per element, each the element's exact
/// bytes, so every event of a refused batch can be inspected and replayed; anything else is kept
/// as its first `limit` bytes. A part still over `limit` (the oversized event itself) is cut to its
/// first `limit` bytes. Each part's detail says which part of which body it is and whether it was
/// cut, so a cut is never silent.
pub fn dead_letter_parts(body: &Bytes, limit: usize) -> Vec<(Bytes, Option<String>)> {
    let total = body.len();
    if total <= limit {
        return vec![(body.clone(), None)];
    }
    let cut = |part: Bytes| -> (Bytes, Option<String>) {
        if part.len() <= limit {
            (part, None)
        } else {
            let note = format!("cut to its first {limit} of {} bytes", part.len());
            (part.slice(..limit), Some(note))
        }
    };
    // Checked without holding anything first: an array that is not valid JSON as a whole (a
    // million elements, then garbage) must not become a million-entry vector here either. A
    // valid one reached this point past `split_events`' count check, so its elements are few.
    let elements: Option<Vec<&serde_json::value::RawValue>> = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .filter(|&&b| b == b'[')
        .filter(|_| serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok())
        .and_then(|_| serde_json::from_slice(body).ok());
    match elements {
        Some(elements) if !elements.is_empty() => {
            let base = body.as_ptr() as usize;
            let n = elements.len();
            elements
                .iter()
                .enumerate()
                .map(|(i, raw)| {
                    let text = raw.get();
                    // `RawValue` borrows from `body`, so its text is a sub-slice of it.
                    let start = text.as_ptr() as usize - base;
                    let (payload, note) = cut(body.slice(start..start + text.len()));
                    let mut detail =
                        format!("array element {i} of {n} of a {total}-byte body, kept apart");
                    if let Some(note) = note {
                        detail.push_str(&format!("; {note}"));
                    }
                    (payload, Some(detail))
                })
                .collect()
        }
        _ => {
            let (payload, note) = cut(body.clone());
            let note = note.unwrap_or_default();
            vec![(payload, Some(format!("the body, {note}")))]
        }
    }
}

/// A body that will never become valid: keep it in the DLQ, then answer 4xx. If even the DLQ
/// cannot take it, answer 503 so the sender retries and nothing is lost.
async fn rejected_body(
    e: &WebhookEndpoint,
    err: BodyError,
    body: Bytes,
    mut headers_out: Vec<(&'static str, Bytes)>,
    request_id: &str,
) -> Reply {
    let status = match err {
        BodyError::TooManyEvents { .. } | BodyError::EventTooLarge { .. } => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        _ => StatusCode::BAD_REQUEST,
    };
    let reason = err.to_string();
    if !err.is_dead_letter() {
        return Reply::error(status, reason);
    }
    headers_out.push((headers::DLQ_REASON, Bytes::from(reason.clone())));
    headers_out.push((headers::DLQ_STAGE, Bytes::from_static(e.role.as_bytes())));
    headers_out.push((
        headers::DLQ_TIME,
        Bytes::from(headers::now_millis().to_string()),
    ));
    // All parts in one job: the whole body is kept, in one transaction, or none of it is.
    let records: Vec<OutRecord> = dead_letter_parts(&body, MAX_DEAD_LETTER_PAYLOAD_BYTES)
        .into_iter()
        .map(|(payload, detail)| {
            let mut h = headers_out.clone();
            if let Some(d) = detail {
                h.push((headers::DLQ_DETAIL, Bytes::from(d)));
            }
            OutRecord {
                topic: e.dlq_topic.clone(),
                key: None,
                payload,
                headers: h,
            }
        })
        .collect();
    let kept = records.len();
    match e.appender.append(records).await {
        Ok(()) => {
            // Counted with every other stage's dead letters, so one DLQ-rate panel and alert
            // covers the webhooks too.
            emit(WebhookBodyDeadLettered {
                role: e.role,
                request_id,
                reason: err.reason_label(),
                error: &reason,
                kept,
            });
            Reply {
                status,
                body: serde_json::json!({ "error": reason, "request_id": request_id }),
                retry_after: None,
            }
        }
        Err(a) => Reply::unavailable(
            e,
            format!("rejected body could not be kept, retry later: {a}"),
        ),
    }
}

fn request_id(headers: &HeaderMap) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    if let Some(v) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()) {
            return v.to_string();
        }
    }
    format!(
        "{:012x}-{:06x}-{:08x}",
        headers::now_millis(),
        std::process::id() & 0xff_ffff,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: &Bytes) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    #[test]
    fn admission_bounds_keys_kinds_and_content_types() {
        let id = |key: usize, kind: usize| EventIdentity {
            key: Some("k".repeat(key)),
            key_field: "userId",
            kind: Some("t".repeat(kind)),
            kind_field: "type",
        };
        assert!(
            id(MAX_EVENT_KEY_BYTES, MAX_EVENT_KIND_BYTES)
                .check(None)
                .is_ok()
        );
        let e = id(MAX_EVENT_KEY_BYTES + 1, 5).check(Some(3)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "array element 3 (0-based): userId is 1025 bytes; at most 1024 bytes are accepted"
        );
        assert_eq!(e.reason_label(), "field_too_long");
        assert!(e.is_dead_letter());
        let e = id(5, 1_000_000).check(None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("the event (the body): type is 1000000 bytes")
        );
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        assert!(json_content_type(&h));
        let long = format!("application/json; x={}", "y".repeat(300));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(&long).unwrap());
        assert!(!json_content_type(&h));
    }

    #[test]
    fn a_body_that_fits_one_record_is_dead_lettered_whole() {
        let body = Bytes::from_static(b"[{\"a\":1}, 3]");
        assert_eq!(dead_letter_parts(&body, 64), vec![(body.clone(), None)]);
    }

    #[test]
    fn a_larger_array_is_dead_lettered_per_element_and_the_oversized_one_cut() {
        let small = format!("{{\"p\":\"{}\"}}", "s".repeat(20));
        let big = format!("{{\"p\":\"{}\"}}", "b".repeat(100));
        let body = Bytes::from(format!("[{small},\n {big} ,{small}]"));
        let parts = dead_letter_parts(&body, 64);
        assert_eq!(parts.len(), 3);
        assert_eq!(text(&parts[0].0), small);
        assert_eq!(text(&parts[2].0), small);
        assert_eq!(text(&parts[1].0), &big[..64]);
        let detail = parts[1].1.as_deref().unwrap();
        assert!(detail.contains("array element 1 of 3"), "{detail}");
        assert!(
            detail.contains("cut to its first 64 of 108 bytes"),
            "{detail}"
        );
        let whole = parts[0].1.as_deref().unwrap();
        assert!(
            whole.contains("element 0 of 3") && !whole.contains("cut"),
            "{whole}"
        );
    }

    #[test]
    fn a_larger_body_that_is_no_array_is_cut_with_a_note() {
        let body = Bytes::from(format!("{{\"p\": not json {}", "x".repeat(200)));
        let parts = dead_letter_parts(&body, 64);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].0, body.slice(..64));
        let detail = parts[0].1.as_deref().unwrap();
        assert!(
            detail.contains(&format!("first 64 of {} bytes", body.len())),
            "{detail}"
        );
    }
}
