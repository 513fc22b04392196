//! What one attempt of a request came to, as every HTTP client of the pipeline acts on it: each
//! destination's own policy (which status means what) maps its answers onto these.

/// What to do after one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: the events are delivered; acknowledge them.
    Success,
    /// Transient (408, 410, 429, 460, 5xx other than 501/505/511, network error or timeout):
    /// send the same events again after a backoff or `Retry-After`.
    Retry,
    /// 400 or 413 (Pendo also 422): the destination refuses the content. A batch is split to
    /// isolate the offending events, which are dead-lettered with the destination's message; the
    /// rest is delivered. Never retried as is.
    Invalid,
    /// 401 or 403: the write key (Segment) or integration key (Pendo) is wrong or revoked. Never
    /// acknowledge, drop or dead-letter: pause, alert, and retry with backoff until someone
    /// fixes the key.
    AuthFailure,
    /// An answer no content could change: redirects (not followed), other 4xx (404 wrong
    /// endpoint, 405, 415...), 501, 505, 511 (the official clients never retry these). Handled
    /// like [`Outcome::AuthFailure`] — pause, alert, retry with backoff — because dead-lettering
    /// would empty the whole stream into the DLQ while the endpoint is misconfigured.
    Misconfigured,
}

impl Outcome {
    /// A bounded metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Retry => "retry",
            Outcome::Invalid => "invalid",
            Outcome::AuthFailure => "auth_failure",
            Outcome::Misconfigured => "misconfigured",
        }
    }

    /// Whether the same request is to be sent again later (after backoff, with a fresh `sentAt`).
    pub fn sends_again(self) -> bool {
        matches!(
            self,
            Outcome::Retry | Outcome::AuthFailure | Outcome::Misconfigured
        )
    }

    /// Whether the sink should raise an alert and pause until an operator acts.
    pub fn needs_operator(self) -> bool {
        matches!(self, Outcome::AuthFailure | Outcome::Misconfigured)
    }
}
/// The `status` label of a request metric: the HTTP status, or `none` when no answer came.
pub fn status_label(status: Option<u16>) -> String {
    status.map_or_else(|| "none".to_string(), |s| s.to_string())
}

/// One line for logs and dead letters about an answer: its status and the start of its body,
/// or the transport error when none came.
pub fn describe_answer(status: Option<u16>, error: Option<&str>, body_excerpt: &str) -> String {
    match (status, error) {
        (Some(s), _) => format!("HTTP {s}: {body_excerpt}"),
        (None, Some(e)) => format!("no response: {e}"),
        (None, None) => "no response".to_string(),
    }
}
