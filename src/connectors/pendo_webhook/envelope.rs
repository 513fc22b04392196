//! What the connector reads from a Pendo event: the Kafka key (visitor id, else account id)
//! and the event kind. Nothing else is interpreted here.

use serde::Deserialize;
use serde_json::Value;

use crate::connectors::webhook::server::EventIdentity;

#[derive(Deserialize)]
struct PendoEnvelope {
    #[serde(rename = "visitorId", default)]
    visitor_id: Option<Value>,
    #[serde(rename = "accountId", default)]
    account_id: Option<Value>,
    #[serde(default)]
    event: Option<Value>,
}

/// Key and kind of one Pendo event (a JSON object). Never fails: an event without ids is
/// stored unkeyed and judged by the transformer.
pub fn identify(event: &[u8]) -> EventIdentity {
    let Ok(env) = serde_json::from_slice::<PendoEnvelope>(event) else {
        return EventIdentity::default();
    };
    EventIdentity::first_of(
        [
            (EventIdentity::id_text(env.visitor_id), "visitorId"),
            (EventIdentity::id_text(env.account_id), "accountId"),
        ],
        EventIdentity::kind_text(env.event),
        "event",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visitor_then_account_then_nothing() {
        let v = identify(br#"{"visitorId":"v1","accountId":"a1","event":"featureClicked"}"#);
        assert_eq!(v.key.as_deref(), Some("v1"));
        assert_eq!(v.kind.as_deref(), Some("featureClicked"));
        let a = identify(br#"{"visitorId":"","accountId":"a1","event":"accountCreated"}"#);
        assert_eq!(a.key.as_deref(), Some("a1"));
        let n = identify(br#"{"visitorId":12345,"event":7}"#);
        assert_eq!(n.key.as_deref(), Some("12345"));
        assert_eq!(n.kind, None);
        assert_eq!(identify(br#"{"x":1}"#), EventIdentity::default());
        assert_eq!(identify(b"not json"), EventIdentity::default());
    }
}
