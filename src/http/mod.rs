//! HTTP plumbing shared by every role that calls an HTTP API (the Segment and Pendo sinks, the
//! Pendo poller): what an attempt came to, backoff, `Retry-After`, the retry loop and its shared
//! pause, rate limits, the user agent and error text. It imports no role: a change here reaches
//! all of them on purpose, and a change to one role's client reaches none of the others.

pub mod backoff;
pub mod dry_run;
pub mod outcome;
pub mod rate_limit;
pub mod retry;
pub mod retry_after;

/// `User-Agent` of every request: names the library, as the official clients do.
pub const USER_AGENT: &str = concat!("pendo-segment/", env!("CARGO_PKG_VERSION"));

/// An error and its sources on one line (reqwest's top-level message alone hides the cause).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
