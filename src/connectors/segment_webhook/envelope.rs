//! What the connector reads from a Segment event: the Kafka key and the call type. Nothing else
//! is interpreted here; the reverse transformer judges the event.
//!
//! Key: `userId`, else (group calls) `groupId`, else `anonymousId`. Per-user order is what the
//! reverse flow needs (an audience's `Audience Entered` before its `Audience Exited`); a group
//! call without a user belongs to its account, so it is ordered with that account's other
//! user-less group calls rather than scattered by anonymous id.

use serde::Deserialize;
use serde_json::Value;

use crate::connectors::webhook::server::EventIdentity;

#[derive(Deserialize)]
struct SegmentEnvelope {
    #[serde(rename = "type", default)]
    kind: Option<Value>,
    #[serde(rename = "userId", default)]
    user_id: Option<Value>,
    #[serde(rename = "anonymousId", default)]
    anonymous_id: Option<Value>,
    #[serde(rename = "groupId", default)]
    group_id: Option<Value>,
}

/// Key and kind (Segment's `type`: `track`, `identify`, `group`, ...) of one Segment event (a
/// JSON object). Never fails: an event without ids is stored unkeyed and judged downstream.
pub fn identify(event: &[u8]) -> EventIdentity {
    let Ok(env) = serde_json::from_slice::<SegmentEnvelope>(event) else {
        return EventIdentity::default();
    };
    let kind = EventIdentity::kind_text(env.kind);
    let group = if kind.as_deref() == Some("group") {
        EventIdentity::id_text(env.group_id)
    } else {
        None
    };
    EventIdentity::first_of(
        [
            (EventIdentity::id_text(env.user_id), "userId"),
            (group, "groupId"),
            (EventIdentity::id_text(env.anonymous_id), "anonymousId"),
        ],
        kind,
        "type",
    )
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use bytes::Bytes;

    use super::*;
    use crate::connectors::webhook::body::split_events;

    fn fixture(name: &str) -> Bytes {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/segment")
            .join(name);
        Bytes::from(std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
    }

    fn id(key: &str, kind: &str) -> (Option<String>, Option<String>) {
        (Some(key.to_string()), Some(kind.to_string()))
    }

    /// Key and kind of one event (the field names are checked separately).
    fn key_kind(event: &[u8]) -> (Option<String>, Option<String>) {
        let i = identify(event);
        (i.key, i.kind)
    }

    #[test]
    fn fixtures_are_keyed_by_user_and_labelled_by_type() {
        for (name, want) in [
            ("account-audience-group.json", id("user-8841", "group")),
            (
                "audience-identify-entered.json",
                id("user-8841", "identify"),
            ),
            ("audience-track-entered.json", id("user-8841", "track")),
            ("audience-track-exited.json", id("user-8841", "track")),
            ("non-audience-track.json", id("user-1001", "track")),
        ] {
            assert_eq!(key_kind(&fixture(name)), want, "{name}");
        }
        let batch = split_events(&fixture("actions-batch.json"), 10, usize::MAX).unwrap();
        let ids: Vec<_> = batch.iter().map(|e| key_kind(e)).collect();
        assert_eq!(
            ids,
            vec![id("user-1001", "track"), id("user-2002", "track")]
        );
    }

    #[test]
    fn user_then_group_then_anonymous_then_nothing() {
        assert_eq!(
            key_kind(br#"{"type":"track","anonymousId":"anon-1","event":"x"}"#),
            id("anon-1", "track")
        );
        assert_eq!(
            key_kind(br#"{"type":"identify","userId":"","anonymousId":"anon-2"}"#),
            id("anon-2", "identify")
        );
        // A group call without a user is keyed by its account...
        assert_eq!(
            key_kind(br#"{"type":"group","anonymousId":"anon-3","groupId":"acct-1"}"#),
            id("acct-1", "group")
        );
        // ... but a user's group call stays with the user's other calls.
        assert_eq!(
            key_kind(br#"{"type":"group","userId":"u-9","anonymousId":"a","groupId":"acct-1"}"#),
            id("u-9", "group")
        );
        // groupId outside a group call is not an identity.
        assert_eq!(
            key_kind(br#"{"type":"track","groupId":"acct-1","anonymousId":"anon-4"}"#),
            id("anon-4", "track")
        );
        assert_eq!(
            key_kind(br#"{"type":"page","userId":42}"#),
            id("42", "page")
        );
        assert_eq!(
            identify(br#"{"type":7,"userId":{"x":1},"anonymousId":null}"#),
            EventIdentity::default()
        );
        assert_eq!(identify(br#"{"x":1}"#), EventIdentity::default());
        assert_eq!(identify(b"not json"), EventIdentity::default());
        assert_eq!(identify(b"[1]"), EventIdentity::default());
    }

    #[test]
    fn the_key_names_its_field() {
        let f = |e: &[u8]| identify(e).key_field;
        assert_eq!(
            f(br#"{"type":"track","userId":"u","anonymousId":"a"}"#),
            "userId"
        );
        assert_eq!(
            f(br#"{"type":"group","groupId":"g","anonymousId":"a"}"#),
            "groupId"
        );
        assert_eq!(f(br#"{"type":"track","anonymousId":"a"}"#), "anonymousId");
        assert_eq!(identify(br#"{"type":"track"}"#).kind_field, "type");
    }
}
