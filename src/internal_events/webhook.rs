//! Events of the webhook edge that carry a reason or a status (the per-request hot-path
//! counters are cached handles in the webhook server).

use super::InternalEvent;
use crate::metrics::metrics;

/// A webhook request refused before its events were stored: `webhook_rejects{stage,reason}`.
/// The answer to the sender carries the detail; a log line per refused request would let a
/// hostile sender fill the logs.
pub struct WebhookRejected<'a> {
    /// The webhook role.
    pub role: &'a str,
    /// The reason code (a fixed set).
    pub reason: &'a str,
}

impl InternalEvent for WebhookRejected<'_> {
    fn emit(self) {
        metrics()
            .webhook_rejects
            .with_label_values(&[self.role, self.reason])
            .inc();
    }
}

/// A webhook request answered with a status other than 200 (the 200s are a cached handle):
/// `webhook_requests{stage,status}`.
pub struct WebhookAnswered<'a> {
    /// The webhook role.
    pub role: &'a str,
    /// The HTTP status code, as text.
    pub status: &'a str,
}

impl InternalEvent for WebhookAnswered<'_> {
    fn emit(self) {
        metrics()
            .webhook_requests
            .with_label_values(&[self.role, self.status])
            .inc();
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
        emit(WebhookRejected {
            role,
            reason: "auth",
        });
        emit(WebhookAnswered {
            role,
            status: "401",
        });
        assert_eq!(
            m.webhook_rejects.with_label_values(&[role, "auth"]).get(),
            1
        );
        assert_eq!(
            m.webhook_requests.with_label_values(&[role, "401"]).get(),
            1
        );
    }
}
