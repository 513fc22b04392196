//! One `SegmentCall` -> the exact JSON item sent in a batch, after the checks Segment does not
//! do loudly.
//!
//! Segment accepts (200) and then silently drops an event without userId/anonymousId, a track
//! without `event` or a group without `groupId`, so those are dead-lettered here instead. The
//! `type` needs no check: [`CallBody`] always has one Segment knows. Sizes are measured on the
//! bytes sent (with `context.library`, without the per-request `sentAt`).

use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::schema::segment_call::{CallBody, Library, SegmentCall};

/// `context.library.name` of every event sent.
pub const LIBRARY_NAME: &str = "pendo-segment";
/// `context.library.version` of every event sent: the version that delivered it.
pub const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Segment's maximum `messageId` length, in characters.
pub const MAX_MESSAGE_ID_CHARS: usize = 100;

/// One event ready to be batched: its JSON item and what the sink needs to account for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEvent {
    /// The batch item: compact JSON object, without `sentAt`, with `context.library`.
    pub json: Vec<u8>,
    /// The item's `messageId` (logs, DLQ, de-duplication checks).
    pub message_id: String,
    /// Segment `type` of the item (metrics).
    pub call_type: &'static str,
    /// Kafka partition of the record it came from; -1 until the sink sets it.
    pub partition: i32,
    /// Kafka offset of the record it came from; -1 until the sink sets it.
    pub offset: i64,
}

impl EncodedEvent {
    /// Size of the item in bytes.
    pub fn len(&self) -> usize {
        self.json.len()
    }

    /// Whether the item is empty (never, for an encoded call; for API completeness).
    pub fn is_empty(&self) -> bool {
        self.json.is_empty()
    }

    /// The same event tagged with the Kafka record it came from.
    pub fn at(mut self, partition: i32, offset: i64) -> Self {
        self.partition = partition;
        self.offset = offset;
        self
    }
}

/// Why an event cannot be sent: a short code for metrics and the DLQ, and the details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidReason {
    /// Neither userId nor anonymousId (Segment would drop it).
    MissingIdentity,
    /// A track call without `event` (Segment would drop it).
    MissingEvent,
    /// A group call without `groupId` (Segment would drop it).
    MissingGroupId,
    /// Empty `messageId`: Segment would assign a random one and retries would duplicate.
    MissingMessageId,
    /// `messageId` longer than 100 characters.
    MessageIdTooLong,
    /// A JSON-text field (properties, traits, integrations, context) is not a JSON object, so
    /// the item would not be valid JSON or not what Segment expects.
    InvalidJson,
    /// The item is larger than `max_event_bytes` (Segment refuses the whole batch).
    TooLarge,
}

impl InvalidReason {
    /// The code: a bounded metric label and the DLQ reason.
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidReason::MissingIdentity => "missing_identity",
            InvalidReason::MissingEvent => "missing_event",
            InvalidReason::MissingGroupId => "missing_group_id",
            InvalidReason::MissingMessageId => "missing_message_id",
            InvalidReason::MessageIdTooLong => "message_id_too_long",
            InvalidReason::InvalidJson => "invalid_json",
            InvalidReason::TooLarge => "too_large",
        }
    }
}

impl fmt::Display for InvalidReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event that must be dead-lettered rather than sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct InvalidEvent {
    /// The code.
    pub reason: InvalidReason,
    /// What exactly is wrong, for the DLQ record.
    pub detail: String,
}

impl InvalidEvent {
    fn new(reason: InvalidReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// Checks what Segment would silently drop, and what would make the item invalid JSON.
pub fn validate_event(call: &SegmentCall) -> Result<(), InvalidEvent> {
    let kind = call.body.call_type();
    if call.message_id.is_empty() {
        return Err(InvalidEvent::new(
            InvalidReason::MissingMessageId,
            format!("the {kind} call has an empty messageId"),
        ));
    }
    let id_chars = call.message_id.chars().count();
    if id_chars > MAX_MESSAGE_ID_CHARS {
        return Err(InvalidEvent::new(
            InvalidReason::MessageIdTooLong,
            format!("messageId is {id_chars} characters, over Segment's {MAX_MESSAGE_ID_CHARS}"),
        ));
    }
    let present = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    if !present(&call.user_id) && !present(&call.anonymous_id) {
        return Err(InvalidEvent::new(
            InvalidReason::MissingIdentity,
            format!(
                "the {kind} call {} has neither userId nor anonymousId",
                call.message_id
            ),
        ));
    }
    let (body_field, body_json) = match &call.body {
        CallBody::Track { event, properties } => {
            if event.is_empty() {
                return Err(InvalidEvent::new(
                    InvalidReason::MissingEvent,
                    format!("the track call {} has no event name", call.message_id),
                ));
            }
            ("properties", properties)
        }
        CallBody::Page { properties, .. } => ("properties", properties),
        CallBody::Identify { traits } => ("traits", traits),
        CallBody::Group { group_id, traits } => {
            if group_id.is_empty() {
                return Err(InvalidEvent::new(
                    InvalidReason::MissingGroupId,
                    format!("the group call {} has no groupId", call.message_id),
                ));
            }
            ("traits", traits)
        }
    };
    let json_texts = [
        (body_field, Some(body_json.as_str())),
        ("integrations", call.integrations.as_deref()),
        ("context.traits", call.context.traits.as_deref()),
        ("context (extra fields)", call.context.extra.as_deref()),
    ];
    for (field, text) in json_texts {
        if let Some(text) = text
            && serde_json::from_str::<JsonObject>(text).is_err()
        {
            let shown: String = text.chars().take(80).collect();
            return Err(InvalidEvent::new(
                InvalidReason::InvalidJson,
                format!(
                    "{field} of the {kind} call {} is not a JSON object: {shown:?}",
                    call.message_id
                ),
            ));
        }
    }
    Ok(())
}

/// Validates `call`, sets its `context.library` to this project (the canonical record carries
/// none: the library is whatever delivers it) and writes the batch item. Refuses an item larger
/// than `max_event_bytes`.
pub fn encode_event(
    call: &mut SegmentCall,
    max_event_bytes: usize,
) -> Result<EncodedEvent, InvalidEvent> {
    validate_event(call)?;
    call.context.library = Some(Library {
        name: LIBRARY_NAME.to_string(),
        version: LIBRARY_VERSION.to_string(),
    });
    let mut json = Vec::with_capacity(1024);
    call.write_segment_json(&mut json);
    if json.len() > max_event_bytes {
        return Err(InvalidEvent::new(
            InvalidReason::TooLarge,
            format!(
                "the {} call {} is {} bytes as sent, over the {max_event_bytes}-byte limit per Segment event",
                call.body.call_type(),
                call.message_id,
                json.len()
            ),
        ));
    }
    Ok(EncodedEvent {
        json,
        message_id: call.message_id.clone(),
        call_type: call.body.call_type(),
        partition: -1,
        offset: -1,
    })
}

/// Deserializes only from a JSON object (any content), without building it.
struct JsonObject;

impl<'de> Deserialize<'de> for JsonObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonObject, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(JsonObject)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::schema::segment_call::{CallContext, Origin, PageContext};

    fn call(body: CallBody) -> SegmentCall {
        SegmentCall {
            message_id: "pendo-0123456789abcdef".into(),
            timestamp: "2026-11-29T03:00:00.000Z".into(),
            user_id: Some("u-1".into()),
            anonymous_id: None,
            context: CallContext {
                group_id: Some("acct-1".into()),
                page: Some(PageContext {
                    url: Some("https://app.example/r?x=1".into()),
                    path: Some("/r".into()),
                    ..PageContext::default()
                }),
                traits: Some(r#"{"email":"a@b.c"}"#.into()),
                user_agent: Some("Mozilla/5.0 \"x\"".into()),
                locale: Some("de-DE".into()),
                library: None,
                extra: Some(r#"{"app":{"name":"acme"}}"#.into()),
            },
            integrations: Some(r#"{"All":true,"Mixpanel":false}"#.into()),
            origin: Origin::default(),
            body,
        }
    }

    fn track() -> SegmentCall {
        call(CallBody::Track {
            event: "Report Exported".into(),
            properties: r#"{"big":18446744073709551615,"s":"é\u0000\"","n":null,"a":[1,{"b":[]}]}"#
                .into(),
        })
    }

    fn all_types() -> Vec<SegmentCall> {
        vec![
            track(),
            call(CallBody::Page {
                name: Some("Reports".into()),
                category: None,
                properties: "{}".into(),
            }),
            call(CallBody::Identify {
                traits: r#"{"plan":"pro"}"#.into(),
            }),
            call(CallBody::Group {
                group_id: "acct-1".into(),
                traits: r#"{"seats":5}"#.into(),
            }),
        ]
    }

    #[test]
    fn items_are_exact_json_with_library_and_no_sent_at() {
        for mut c in all_types() {
            let original = c.clone();
            let e = encode_event(&mut c, 32_000).unwrap();
            let v: Value = serde_json::from_slice(&e.json).expect("valid JSON");
            assert!(v.is_object());
            assert_eq!(v["type"], original.body.call_type());
            assert_eq!(e.call_type, original.body.call_type());
            assert_eq!(v["messageId"], original.message_id.as_str());
            assert_eq!(e.message_id, original.message_id);
            assert_eq!(v["timestamp"], original.timestamp.as_str(), "unchanged");
            assert_eq!(v["userId"], "u-1");
            assert_eq!(
                v["context"]["library"],
                json!({"name": "pendo-segment", "version": env!("CARGO_PKG_VERSION")})
            );
            assert!(v.get("sentAt").is_none(), "sentAt is set per request");
            assert!(v.get("receivedAt").is_none());
            assert_eq!(v["context"]["app"]["name"], "acme");
            assert_eq!(v["integrations"]["Mixpanel"], false);
            assert_eq!((e.partition, e.offset), (-1, -1));
            assert_eq!(e.len(), e.json.len());
            // Compact: re-serialising the parsed value does not shrink it.
            assert!(serde_json::to_vec(&v).unwrap().len() <= e.len());
        }
        let mut t = track();
        let v: Value = serde_json::from_slice(&encode_event(&mut t, 32_000).unwrap().json).unwrap();
        assert_eq!(v["event"], "Report Exported");
        assert_eq!(v["properties"]["big"].to_string(), "18446744073709551615");
        assert_eq!(v["properties"]["s"], "é\u{0}\"");
        assert_eq!(v["context"]["userAgent"], "Mozilla/5.0 \"x\"");
        let mut g = all_types().remove(3);
        let v: Value = serde_json::from_slice(&encode_event(&mut g, 32_000).unwrap().json).unwrap();
        assert_eq!(v["groupId"], "acct-1");
        assert_eq!(v["traits"]["seats"], 5);
        let e = encode_event(&mut track(), 32_000).unwrap().at(3, 42);
        assert_eq!((e.partition, e.offset), (3, 42));
    }

    #[test]
    fn a_library_already_set_is_replaced_by_ours() {
        let mut c = track();
        c.context.library = Some(Library {
            name: "other".into(),
            version: "9".into(),
        });
        let e = encode_event(&mut c, 32_000).unwrap();
        let v: Value = serde_json::from_slice(&e.json).unwrap();
        assert_eq!(v["context"]["library"]["name"], "pendo-segment");
    }

    #[test]
    fn anonymous_only_is_fine_and_no_identity_is_refused() {
        let mut c = track();
        c.user_id = None;
        c.anonymous_id = Some("anon-1".into());
        validate_event(&c).unwrap();
        c.anonymous_id = Some(String::new());
        c.user_id = Some(String::new());
        let e = validate_event(&c).unwrap_err();
        assert_eq!(e.reason.as_str(), "missing_identity");
        assert!(e.to_string().starts_with("missing_identity: "), "{e}");
    }

    #[test]
    fn each_reason_has_its_code() {
        let cases: Vec<(SegmentCall, &str)> = vec![
            (
                call(CallBody::Track {
                    event: String::new(),
                    properties: "{}".into(),
                }),
                "missing_event",
            ),
            (
                call(CallBody::Group {
                    group_id: String::new(),
                    traits: "{}".into(),
                }),
                "missing_group_id",
            ),
            (
                SegmentCall {
                    message_id: "x".repeat(101),
                    ..track()
                },
                "message_id_too_long",
            ),
            (
                SegmentCall {
                    message_id: String::new(),
                    ..track()
                },
                "missing_message_id",
            ),
            (
                call(CallBody::Identify {
                    traits: "[1,2]".into(),
                }),
                "invalid_json",
            ),
            (
                call(CallBody::Track {
                    event: "E".into(),
                    properties: r#"{}, "userId": "someone-else""#.into(),
                }),
                "invalid_json",
            ),
            (
                SegmentCall {
                    integrations: Some("{".into()),
                    ..track()
                },
                "invalid_json",
            ),
        ];
        for (c, code) in cases {
            let e = validate_event(&c).unwrap_err();
            assert_eq!(e.reason.as_str(), code, "{e}");
            assert!(!e.detail.is_empty());
        }
        // 100 multi-byte characters are within the limit (it counts characters).
        validate_event(&SegmentCall {
            message_id: "é".repeat(100),
            ..track()
        })
        .unwrap();
    }

    #[test]
    fn the_size_limit_applies_to_the_item_as_sent() {
        let mut c = track();
        let size = encode_event(&mut c.clone(), usize::MAX).unwrap().len();
        let at_limit = encode_event(&mut c, size).unwrap();
        assert_eq!(at_limit.len(), size);
        let e = encode_event(&mut track(), size - 1).unwrap_err();
        assert_eq!(e.reason, InvalidReason::TooLarge);
        assert!(e.detail.contains(&size.to_string()), "{}", e.detail);
    }
}
