//! Events of the webhook edge that carry a reason or a status (the per-request hot-path
//! counters are cached handles in the webhook server).

use super::InternalEvent;
use crate::metrics::metrics;

/// What is counted of a webhook request beyond the cached handles.
pub enum WebhookRequestEvent<'a> {
    /// Refused before its events were stored, with the reason code (a fixed set):
    /// `webhook_rejects{stage,reason}`. The answer to the sender carries the detail; a log line
    /// per refused request would let a hostile sender fill the logs.
    Rejected(&'a str),
    /// Answered with this status other than 200 (the 200s are a cached handle):
    /// `webhook_requests{stage,status}`.
    Answered(&'a str),
}

/// A webhook request of `role` was refused or answered.
pub struct WebhookRequest<'a> {
    /// The webhook role.
    pub role: &'a str,
    /// What happened.
    pub event: WebhookRequestEvent<'a>,
}

impl InternalEvent for WebhookRequest<'_> {
    fn emit(self) {
        let m = metrics();
        let (family, label) = match self.event {
            WebhookRequestEvent::Rejected(reason) => (&m.webhook_rejects, reason),
            WebhookRequestEvent::Answered(status) => (&m.webhook_requests, status),
        };
        family.with_label_values(&[self.role, label]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internal_events::emit;

    #[test]
    fn rejects_and_answers_count_by_label() {
        let m = metrics();
        let role = "ie-webhook-test";
        for event in [
            WebhookRequestEvent::Rejected("auth"),
            WebhookRequestEvent::Answered("401"),
        ] {
            emit(WebhookRequest { role, event });
        }
        let rejects = m.webhook_rejects.with_label_values(&[role, "auth"]).get();
        let answers = m.webhook_requests.with_label_values(&[role, "401"]).get();
        assert_eq!((rejects, answers), (1, 1));
    }
}
