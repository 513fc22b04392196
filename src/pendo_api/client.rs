//! One request to Pendo's REST API, and what an answer means (for the poller's reads and the
//! Pendo sink's writes alike).
//!
//! [`PendoClient::post`] never fails: a network error or timeout is a [`PendoResponse`] without
//! a status, so every attempt goes through [`classify`]. The integration key is sent in
//! `x-pendo-integration-key`, marked sensitive, and never logged. Redirects are not followed
//! (one means a wrong base URL, and following it would send the key elsewhere).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, HeaderValue};

use super::base_url;
use crate::config::PendoConfig;
use crate::http::outcome::Outcome;
use crate::http::retry_after::retry_after_of;
use crate::http::{USER_AGENT, error_chain};
use crate::secret::Secret;

/// Header carrying the integration key.
pub const KEY_HEADER: &str = "x-pendo-integration-key";
/// Largest answer read (the per-item answer of a large batch included); a larger one is an
/// error saying so, never a cut body.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// What Pendo's answer means for the request: like Segment's policy (the shared
/// [`Outcome`]), except that 409 "Operation in progress" (another write to the same target is
/// under way) is retried, and 422 is refused content like 400.
pub fn classify(status: Option<u16>) -> Outcome {
    match status {
        None => Outcome::Retry,
        Some(200..=299) => Outcome::Success,
        Some(400 | 413 | 422) => Outcome::Invalid,
        Some(401 | 403) => Outcome::AuthFailure,
        Some(408 | 409 | 429) => Outcome::Retry,
        Some(501 | 505) => Outcome::Misconfigured,
        Some(500..=599) => Outcome::Retry,
        Some(_) => Outcome::Misconfigured,
    }
}

/// What one attempt produced.
#[derive(Debug, Clone)]
pub struct PendoResponse {
    /// HTTP status; `None` for a network error or timeout.
    pub status: Option<u16>,
    /// `Retry-After`, parsed and capped.
    pub retry_after: Option<Duration>,
    /// The response body (at most 4 MiB; a larger answer is an `error` without a status).
    pub body: Vec<u8>,
    /// The transport error (or the answer over the size limit), when there was no status.
    pub error: Option<String>,
    /// From sending to the end of the answer.
    pub elapsed: Duration,
}

impl PendoResponse {
    /// The retry policy's verdict.
    pub fn outcome(&self) -> Outcome {
        classify(self.status)
    }

    /// One line for logs and dead letters.
    pub fn describe(&self) -> String {
        let excerpt = String::from_utf8_lossy(&self.body[..self.body.len().min(512)]);
        crate::http::outcome::describe_answer(self.status, self.error.as_deref(), &excerpt)
    }
}

/// Talks to one Pendo subscription.
#[derive(Debug, Clone)]
pub struct PendoClient {
    http: reqwest::Client,
    base: String,
    key: Secret,
    retry_after_cap: Duration,
    /// `pendo_sink.dry_run_file`: writes go to this file instead of Pendo.
    dry_run: Option<PathBuf>,
}

impl PendoClient {
    /// A client for `pendo`'s region (or base URL): each request ends after `timeout`, and a
    /// `Retry-After` longer than `retry_after_cap` is capped.
    pub fn with_limits(
        pendo: &PendoConfig,
        timeout: Duration,
        retry_after_cap: Duration,
    ) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the Pendo HTTP client: {e}"))?;
        Ok(Self {
            http,
            base: base_url(pendo),
            key: pendo.integration_key.clone(),
            retry_after_cap,
            dry_run: None,
        })
    }

    /// The same client writing every request to `path` (one JSON line each) instead of sending
    /// it, answered as Pendo answers a full success ([`super::dry_run`]); `None` sends.
    pub fn with_dry_run_file(mut self, path: Option<PathBuf>) -> Self {
        self.dry_run = path;
        self
    }

    /// Where requests go: the base URL, or `file://` and the dry-run path.
    pub fn target(&self) -> String {
        match &self.dry_run {
            Some(p) => format!("file://{}", p.display()),
            None => self.base.clone(),
        }
    }

    /// A dry run's record of a request and its answer.
    async fn dry(
        &self,
        path: &std::path::Path,
        method: &str,
        url: &str,
        body: &[u8],
    ) -> PendoResponse {
        let start = Instant::now();
        let rel = url.strip_prefix(self.base.as_str()).unwrap_or(url);
        let line = super::dry_run::line(method, rel, body);
        match crate::http::dry_run::append_json_line(path.to_path_buf(), line).await {
            Ok(()) => PendoResponse {
                status: Some(200),
                retry_after: None,
                body: super::dry_run::answer(method, rel, body),
                error: None,
                elapsed: start.elapsed(),
            },
            Err(e) => PendoResponse {
                status: None,
                retry_after: None,
                body: Vec::new(),
                error: Some(e),
                elapsed: start.elapsed(),
            },
        }
    }

    /// The base URL requests go to.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn key_header(&self) -> HeaderValue {
        let mut v = HeaderValue::from_str(self.key.expose())
            .unwrap_or_else(|_| HeaderValue::from_static("invalid-key"));
        v.set_sensitive(true);
        v
    }

    /// `POST url` with a JSON body.
    pub async fn post(&self, url: &str, body: Vec<u8>) -> PendoResponse {
        if let Some(path) = &self.dry_run {
            return self.dry(path, "POST", url, &body).await;
        }
        let req = self
            .http
            .post(url)
            .header(KEY_HEADER, self.key_header())
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        self.run(req).await
    }

    /// `PATCH url` with a JSON body (Pendo Segment membership).
    pub async fn patch(&self, url: &str, body: Vec<u8>) -> PendoResponse {
        if let Some(path) = &self.dry_run {
            return self.dry(path, "PATCH", url, &body).await;
        }
        let req = self
            .http
            .patch(url)
            .header(KEY_HEADER, self.key_header())
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        self.run(req).await
    }

    /// `GET url` (catalogue reads).
    pub async fn get(&self, url: &str) -> PendoResponse {
        if let Some(path) = &self.dry_run {
            return self.dry(path, "GET", url, &[]).await;
        }
        let req = self.http.get(url).header(KEY_HEADER, self.key_header());
        self.run(req).await
    }

    /// `GET /api/v1/token/verify`: whether the key is valid in this region (a dry run has no
    /// key to check: accepted, not recorded).
    pub async fn verify_key(&self) -> PendoResponse {
        if self.dry_run.is_some() {
            return PendoResponse {
                status: Some(200),
                retry_after: None,
                body: b"{}".to_vec(),
                error: None,
                elapsed: Duration::ZERO,
            };
        }
        let req = self
            .http
            .get(format!("{}/api/v1/token/verify", self.base))
            .header(KEY_HEADER, self.key_header());
        self.run(req).await
    }

    async fn run(&self, req: reqwest::RequestBuilder) -> PendoResponse {
        let start = Instant::now();
        let mut response = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return PendoResponse {
                    status: None,
                    retry_after: None,
                    body: Vec::new(),
                    error: Some(error_chain(&e)),
                    elapsed: start.elapsed(),
                };
            }
        };
        let status = response.status().as_u16();
        let retry_after = retry_after_of(response.headers(), self.retry_after_cap);
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_RESPONSE_BYTES => {
                    body.extend_from_slice(&chunk)
                }
                Ok(Some(_)) => {
                    // Too large to hold: say so, instead of handing on a cut body that would
                    // then fail as "not JSON". Like an answer cut off by the network it is no
                    // usable answer (retried; the poller gives up after its attempts with this
                    // message). The rest is not read: dropping the response closes it.
                    return PendoResponse {
                        status: None,
                        retry_after,
                        body: Vec::new(),
                        error: Some(format!(
                            "the answer (HTTP {status}) exceeded the {MAX_RESPONSE_BYTES}-byte limit on Pendo answers; it was not read"
                        )),
                        elapsed: start.elapsed(),
                    };
                }
                Ok(None) => break,
                Err(e) => {
                    // A cut answer cannot be trusted for per-item outcomes: retry it.
                    return PendoResponse {
                        status: None,
                        retry_after,
                        body,
                        error: Some(format!("answer cut off: {}", error_chain(&e))),
                        elapsed: start.elapsed(),
                    };
                }
            }
        }
        PendoResponse {
            status: Some(status),
            retry_after,
            body,
            error: None,
            elapsed: start.elapsed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PendoRegion;

    #[test]
    fn statuses_follow_the_pendo_policy() {
        use Outcome::*;
        for (s, o) in [
            (None, Retry),
            (Some(200), Success),
            (Some(409), Retry),
            (Some(429), Retry),
            (Some(500), Retry),
            (Some(503), Retry),
            (Some(400), Invalid),
            (Some(422), Invalid),
            (Some(401), AuthFailure),
            (Some(403), AuthFailure),
            (Some(404), Misconfigured),
            (Some(501), Misconfigured),
        ] {
            assert_eq!(classify(s), o, "{s:?}");
        }
    }

    #[test]
    fn the_client_never_prints_the_key() {
        let pendo = PendoConfig {
            region: PendoRegion::Au,
            base_url: None,
            integration_key: Secret::inline("ik-secret"),
        };
        let c = PendoClient::with_limits(&pendo, Duration::from_secs(10), Duration::from_secs(300))
            .unwrap();
        assert_eq!(c.base(), "https://app.au.pendo.io");
        assert!(!format!("{c:?}").contains("ik-secret"));
    }

    /// Serves one HTTP answer per `bodies` entry (200, JSON), one connection each.
    async fn serve_answers(bodies: Vec<Vec<u8>>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            for body in bodies {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 64 * 1024];
                let _ = s.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                // The client may hang up once it has read enough: not an error here.
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
                let _ = s.shutdown().await;
            }
        });
        url
    }

    #[tokio::test]
    async fn an_answer_over_the_limit_is_an_error_saying_so_not_a_cut_body() {
        // A JSON array just over 4 MiB, then one well within.
        let mut over = b"[".to_vec();
        while over.len() <= MAX_RESPONSE_BYTES {
            over.extend_from_slice(b"1234567,");
        }
        over.extend_from_slice(b"0]");
        let within = br#"[{"id":"f1"}]"#.to_vec();
        let url = serve_answers(vec![over, within.clone()]).await;
        let pendo = PendoConfig {
            region: PendoRegion::Us,
            base_url: Some(url.clone()),
            integration_key: Secret::inline("ik-secret"),
        };
        let c = PendoClient::with_limits(&pendo, Duration::from_secs(10), Duration::from_secs(1))
            .unwrap();
        let r = c.get(&format!("{url}/api/v1/feature")).await;
        assert_eq!(r.status, None, "not a usable answer: {}", r.describe());
        assert_eq!(r.outcome(), Outcome::Retry);
        let said = r.describe();
        assert!(
            said.contains("exceeded") && said.contains(&MAX_RESPONSE_BYTES.to_string()),
            "{said}"
        );
        let r = c.get(&format!("{url}/api/v1/feature")).await;
        assert_eq!(r.status, Some(200));
        assert_eq!(r.body, within);
    }
}
