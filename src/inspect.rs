//! `pendo-segment inspect TOPIC`: prints what a pipeline topic holds, decoded, one JSON object
//! per line — Segment calls as the sink will send them, dead letters with their reasons, id
//! mappings, raw events — so an on-call engineer can look without an Avro toolchain.
//!
//! Canonical calls carry the `mapping-fingerprint` header of the mapping that made them (shown
//! with the headers, and as `mapping=` in `--brief` lines).
//!
//! It reads `read_committed` (what downstream consumers see), from the beginning or the last N
//! records of each partition, up to the current end, and never joins a consumer group or
//! commits: inspecting does not disturb the roles.

use std::process::ExitCode;

use rdkafka::Message;
use rdkafka::message::Headers;
use serde_json::{Value, json};

use crate::config::{Config, SchemaId};
use crate::kafka::read_to_end::{StartAt, read_to_end};
use crate::kafka::topics::TopicId;
use crate::kafka::{client_config, headers};
use crate::schema::segment_call::parse_json_lenient;
use crate::schema::{IdMappingCodec, SegmentCallCodec};
use crate::transform::pendo_to_segment::iso_millis_checked;

/// How record values of a topic are decoded.
pub(crate) enum Decoder {
    SegmentCalls(Box<SegmentCallCodec>),
    IdMappings(IdMappingCodec),
    Raw,
}

/// Resolves `topic` (a default topic name like `canonical.segment-calls`, or the effective name)
/// to its effective name and the decoder for its values; shared with `tail` so both print a
/// record the same way.
pub(crate) fn resolve_topic(config: &Config, topic: &str) -> (String, Decoder) {
    let id = TopicId::ALL
        .iter()
        .copied()
        .find(|t| t.default_name() == topic || config.topic_name(*t) == topic);
    let name = id.map_or_else(|| topic.to_string(), |t| config.topic_name(t));
    let decoder = match id {
        Some(TopicId::CanonicalSegmentCalls) => Decoder::SegmentCalls(Box::new(
            SegmentCallCodec::new(config.schema.wire_format(SchemaId::SegmentCall)),
        )),
        Some(TopicId::IdmapVisitorToUser) => Decoder::IdMappings(IdMappingCodec::new(
            config.schema.wire_format(SchemaId::IdMapping),
        )),
        _ => Decoder::Raw,
    };
    (name, decoder)
}

/// Prints the records of `topic` (a default topic name like `canonical.segment-calls`, or the
/// effective name); at most `last` per partition when given.
pub async fn inspect(config: &Config, topic: &str, last: Option<i64>, brief: bool) -> ExitCode {
    let (name, decoder) = resolve_topic(config, topic);
    let config = config.clone();
    crate::task::blocking_command(
        move || scan(&config, &name, last, &decoder, brief),
        |n| {
            eprintln!("{n} record(s)");
            ExitCode::SUCCESS
        },
    )
    .await
}

fn scan(
    config: &Config,
    topic: &str,
    last: Option<i64>,
    decoder: &Decoder,
    brief: bool,
) -> anyhow::Result<u64> {
    let start = last.map_or(StartAt::Beginning, StartAt::Last);
    read_to_end(
        client_config::consumer(config, "inspect"),
        topic,
        start,
        std::time::Duration::ZERO,
        |m| {
            let v = render(m, decoder);
            if brief {
                println!("{}", one_line(&v));
            } else {
                println!("{v}");
            }
            Ok(())
        },
    )
}

/// A short human line: where, what kind of call (or why dead-lettered), who.
pub(crate) fn one_line(v: &Value) -> String {
    let at = format!("p{}@{}", v["partition"], v["offset"]);
    let seg = &v["value"]["segment"];
    if seg.is_object() {
        let what = match seg["type"].as_str().unwrap_or("?") {
            "track" => format!("track {}", seg["event"]),
            "page" => format!("page {}", seg["name"]),
            "group" => format!("group {}", seg["groupId"]),
            other => other.to_string(),
        };
        let who = seg["userId"]
            .as_str()
            .map(|u| format!("userId={u}"))
            .or_else(|| {
                seg["anonymousId"]
                    .as_str()
                    .map(|a| format!("anonymousId={a}"))
            })
            .unwrap_or_default();
        // Which mapping (and tracking plan) made the call.
        let mapping = v["headers"][headers::MAPPING_FINGERPRINT]
            .as_str()
            .map(|f| format!(" mapping={f}"))
            .unwrap_or_default();
        return format!(
            "{at} {what} {who} {} {}{mapping}",
            seg["timestamp"].as_str().unwrap_or(""),
            seg["messageId"].as_str().unwrap_or("")
        );
    }
    let reason = v["headers"]["dlq-reason"]
        .as_str()
        .map(|r| format!(" dlq-reason={r}"))
        .unwrap_or_default();
    let value = v["value"].to_string();
    // At most 120 bytes, cut on a character boundary (values hold any text).
    let value = &value[..value.floor_char_boundary(120)];
    format!("{at} key={}{reason} {value}", v["key"])
}

/// A record's Kafka timestamp as RFC 3339 text; a producer may set any value, so one that has
/// no RFC 3339 form (before 1970, after 9999) is shown as the number of milliseconds it is.
fn timestamp_json(ms: Option<i64>) -> Value {
    match ms {
        None => Value::Null,
        Some(ms) => iso_millis_checked(ms).map_or_else(|| Value::from(ms), Value::String),
    }
}

/// One record as JSON: where it is (partition, offset), when (its Kafka timestamp, RFC 3339),
/// key, headers (`dlq-*` reasons included) and the decoded value.
pub(crate) fn render(m: &rdkafka::message::BorrowedMessage<'_>, decoder: &Decoder) -> Value {
    let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
    let headers: serde_json::Map<String, Value> = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|x| {
                    (
                        x.key.to_string(),
                        Value::String(
                            String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                        ),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let value = match (m.payload(), decoder) {
        (None, _) => Value::Null,
        (Some(v), Decoder::SegmentCalls(codec)) => match codec.decode(v) {
            Ok(call) => json!({"segment": call.to_segment_json(), "origin": {
                "source": call.origin.source, "kind": call.origin.kind,
                "visitorId": call.origin.visitor_id, "accountId": call.origin.account_id,
                "receivedAt": call.origin.received_at}}),
            Err(e) => json!({"undecodable": e.to_string()}),
        },
        (Some(v), Decoder::IdMappings(codec)) => match codec.decode(v) {
            Ok(im) => json!({"visitorId": im.visitor_id, "userId": im.user_id,
                "source": im.source, "updatedAt": im.updated_at}),
            Err(e) => json!({"undecodable": e}),
        },
        (Some(v), Decoder::Raw) => parse_json_lenient(v)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(v).into_owned())),
    };
    let timestamp = timestamp_json(m.timestamp().to_millis());
    json!({
        "partition": m.partition(),
        "offset": m.offset(),
        "timestamp": timestamp,
        "key": key,
        "headers": headers,
        "value": value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brief_lines_are_cut_on_char_boundaries() {
        // Multi-byte characters around byte 120 of the value's JSON, at every alignment.
        for pad in 0..4 {
            let text = format!("{}{}", "a".repeat(110 + pad), "é€😀".repeat(20));
            let v = json!({"partition": 0, "offset": 7, "key": null, "headers": {},
                "value": {"p": text}});
            let line = one_line(&v);
            assert!(line.starts_with("p0@7 key=null {\"p\":\"aaa"), "{line}");
            assert!(line.len() < 200, "{line}");
        }
    }

    #[test]
    fn kafka_timestamps_of_any_value_render() {
        assert_eq!(timestamp_json(None), Value::Null);
        assert_eq!(timestamp_json(Some(0)), "1970-01-01T00:00:00.000Z");
        for ms in [i64::MIN, -1, 253_402_300_800_000, i64::MAX] {
            assert_eq!(timestamp_json(Some(ms)), Value::from(ms));
        }
    }
}
