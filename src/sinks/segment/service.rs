//! One `POST /v1/batch` to Segment, and what came back.
//!
//! [`SegmentClient::send`] never fails: a network error or timeout is a [`SendResult`] without a
//! status, so every attempt goes through [`super::retry::classify`]. The write key is sent as
//! HTTP Basic user name (empty password) in a header marked sensitive and is never logged.
//! Redirects are not followed (Segment does not redirect; one means a wrong endpoint, and
//! following it would resend the key elsewhere).

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::write::GzEncoder;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE};

use super::SegmentSinkConfig;
use super::config::endpoint;
use super::retry::classify;
use crate::config::SegmentConfig;
use crate::http::outcome::Outcome;
use crate::http::retry_after::retry_after_of;
use crate::http::{USER_AGENT, error_chain};
use crate::secret::Secret;

/// How much of a response body is kept (for the DLQ reason and logs).
pub const BODY_EXCERPT_BYTES: usize = 512;
/// Response bytes read at most before the rest is discarded (Segment's answers are tiny; a
/// misbehaving proxy's need not be).
const MAX_RESPONSE_READ: usize = 64 * 1024;

/// What one attempt produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendResult {
    /// The HTTP status; `None` for a network error or timeout.
    pub status: Option<u16>,
    /// `Retry-After`, parsed and capped at `retry_after_cap_s`.
    pub retry_after: Option<Duration>,
    /// The first [`BODY_EXCERPT_BYTES`] of the response body (Segment's error message), lossy
    /// UTF-8.
    pub body_excerpt: String,
    /// The transport error with its causes, when there was no status.
    pub error: Option<String>,
    /// From sending the request to reading the answer.
    pub elapsed: Duration,
}

impl SendResult {
    /// What to do next, per the retry policy.
    pub fn outcome(&self) -> Outcome {
        classify(self.status)
    }

    /// A one-line description for logs and the DLQ (status or error, and the body excerpt).
    pub fn describe(&self) -> String {
        crate::http::outcome::describe_answer(
            self.status,
            self.error.as_deref(),
            &self.body_excerpt,
        )
    }
}

/// Where request bodies go.
#[derive(Debug, Clone)]
enum Transport {
    Http {
        http: reqwest::Client,
        url: String,
        write_key: Secret,
    },
    /// `dry_run_file`: append each body as one JSON line.
    DryRun(PathBuf),
}

/// Sends batch bodies to Segment (or, in dry-run mode, to a JSON-lines file).
#[derive(Debug, Clone)]
pub struct SegmentClient {
    transport: Transport,
    retry_after_cap: Duration,
}

impl SegmentClient {
    /// A client for `segment`'s endpoint with `sink`'s timeout; writes to `sink.dry_run_file`
    /// instead when that is set.
    pub fn new(segment: &SegmentConfig, sink: &SegmentSinkConfig) -> Result<Self, String> {
        let transport = match &sink.dry_run_file {
            Some(path) => Transport::DryRun(path.clone()),
            None => {
                let http = reqwest::Client::builder()
                    .user_agent(USER_AGENT)
                    .timeout(sink.request_timeout())
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| format!("cannot build the Segment HTTP client: {e}"))?;
                Transport::Http {
                    http,
                    url: endpoint(segment),
                    write_key: segment.write_key.clone(),
                }
            }
        };
        Ok(Self {
            transport,
            retry_after_cap: sink.retry_after_cap(),
        })
    }

    /// Where bodies go: the `/v1/batch` URL, or `file://` and the dry-run path.
    pub fn target(&self) -> String {
        match &self.transport {
            Transport::Http { url, .. } => url.clone(),
            Transport::DryRun(path) => format!("file://{}", path.display()),
        }
    }

    /// Sends one body from [`super::batch::SegmentBatch::body`], gzip-compressed when `gzip`.
    pub async fn send(&self, body: Vec<u8>, gzip: bool) -> SendResult {
        let start = Instant::now();
        let (http, url, write_key) = match &self.transport {
            Transport::Http {
                http,
                url,
                write_key,
            } => (http, url, write_key),
            Transport::DryRun(path) => return dry_run(path.clone(), body, start).await,
        };
        let mut request = http
            .post(url)
            .basic_auth(write_key.expose(), None::<&str>)
            .header(CONTENT_TYPE, "application/json");
        let body = if gzip {
            request = request.header(CONTENT_ENCODING, "gzip");
            gzip_bytes(&body)
        } else {
            body
        };
        let mut response = match request.body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                return SendResult {
                    status: None,
                    retry_after: None,
                    body_excerpt: String::new(),
                    error: Some(error_chain(&e)),
                    elapsed: start.elapsed(),
                };
            }
        };
        let status = response.status().as_u16();
        let retry_after = retry_after_of(response.headers(), self.retry_after_cap);
        let mut excerpt = Vec::new();
        let mut read = 0;
        // A body that fails half-way still leaves a valid status: Segment answered.
        while read < MAX_RESPONSE_READ {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    read += chunk.len();
                    let room = BODY_EXCERPT_BYTES - excerpt.len();
                    excerpt.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) | Err(_) => break,
            }
        }
        SendResult {
            status: Some(status),
            retry_after,
            body_excerpt: String::from_utf8_lossy(&excerpt).into_owned(),
            error: None,
            elapsed: start.elapsed(),
        }
    }
}

/// gzip of `body` (the `Content-Encoding: gzip` request body).
pub fn gzip_bytes(body: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::default());
    encoder.write_all(body).expect("writing to a Vec");
    encoder.finish().expect("writing to a Vec")
}

/// Appends `body` as one line to `path`: a 200 when written, no status (retried) when not.
async fn dry_run(path: PathBuf, body: Vec<u8>, start: Instant) -> SendResult {
    let error = crate::http::dry_run::append_json_line(path, body)
        .await
        .err();
    SendResult {
        status: error.is_none().then_some(200),
        retry_after: None,
        body_excerpt: String::new(),
        error,
        elapsed: start.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::config::SegmentRegion;

    fn segment() -> SegmentConfig {
        SegmentConfig {
            region: SegmentRegion::Us,
            endpoint: None,
            write_key: Secret::inline("wk-secret"),
        }
    }

    #[test]
    fn gzip_round_trips() {
        let body = br#"{"batch":[],"sentAt":"2026-11-29T03:00:00.000Z"}"#.repeat(50);
        let z = gzip_bytes(&body);
        assert!(z.len() < body.len());
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&z[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, body);
    }

    #[test]
    fn the_client_targets_the_region_and_never_prints_the_key() {
        let c = SegmentClient::new(&segment(), &SegmentSinkConfig::default()).unwrap();
        assert_eq!(c.target(), "https://api.segment.io/v1/batch");
        assert!(!format!("{c:?}").contains("wk-secret"));
        assert!(USER_AGENT.starts_with("pendo-segment/"));
    }

    #[tokio::test]
    async fn dry_run_appends_one_line_per_body() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let sink = SegmentSinkConfig {
            dry_run_file: Some(path.clone()),
            ..Default::default()
        };
        let c = SegmentClient::new(&segment(), &sink).unwrap();
        assert!(c.target().starts_with("file://"));
        let r = c
            .send(
                b"{\"batch\":[{\"a\":\n1}],\r\n\"sentAt\":\"x\"}".to_vec(),
                true,
            )
            .await;
        assert_eq!((r.status, r.outcome()), (Some(200), Outcome::Success));
        c.send(b"{\"batch\":[]}".to_vec(), false).await;
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(first["batch"][0]["a"], 1);

        let broken = SegmentClient::new(
            &segment(),
            &SegmentSinkConfig {
                dry_run_file: Some(dir.path().join("missing-dir").join("out.jsonl")),
                ..Default::default()
            },
        )
        .unwrap();
        let r = broken.send(b"{}".to_vec(), false).await;
        assert_eq!(r.status, None);
        assert_eq!(r.outcome(), Outcome::Retry);
        assert!(r.describe().contains("cannot write"), "{}", r.describe());
    }
}
