//! `pendo-segment inspect TOPIC`: prints what a pipeline topic holds, decoded, one JSON object
//! per line — Segment calls as the sink will send them, dead letters with their reasons, id
//! mappings, raw events — so an on-call engineer can look without an Avro toolchain.
//!
//! It reads `read_committed` (what downstream consumers see), from the beginning or the last N
//! records of each partition, up to the current end, and never joins a consumer group or
//! commits: inspecting does not disturb the roles.

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{Value, json};

use crate::config::{Config, SchemaId};
use crate::kafka::client_config;
use crate::kafka::context::ReadToEndContext;
use crate::kafka::topics::TopicId;
use crate::schema::{IdMappingCodec, SegmentCallCodec};

/// How record values of a topic are decoded.
enum Decoder {
    SegmentCalls(Box<SegmentCallCodec>),
    IdMappings(IdMappingCodec),
    Raw,
}

/// Prints the records of `topic` (a default topic name like `canonical.segment-calls`, or the
/// effective name); at most `last` per partition when given.
pub async fn inspect(config: &Config, topic: &str, last: Option<i64>, brief: bool) -> ExitCode {
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
    let config = config.clone();
    match tokio::task::spawn_blocking(move || scan(&config, &name, last, &decoder, brief)).await {
        Ok(Ok(n)) => {
            eprintln!("{n} record(s)");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn scan(
    config: &Config,
    topic: &str,
    last: Option<i64>,
    decoder: &Decoder,
    brief: bool,
) -> anyhow::Result<u64> {
    let mut cc = client_config::consumer(config, "inspect");
    cc.set("enable.partition.eof", "true");
    let consumer: BaseConsumer<ReadToEndContext> = cc.create_with_context(ReadToEndContext)?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        anyhow::bail!("topic {topic} does not exist (run `pendo-segment topics apply`)");
    }
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        let offset = match last {
            Some(n) => Offset::OffsetTail(n.max(1)),
            None => Offset::Beginning,
        };
        tpl.add_partition_offset(topic, *p, offset)?;
    }
    consumer.assign(&tpl)?;
    let mut pending: HashSet<i32> = partitions.into_iter().collect();
    let mut count = 0u64;
    while !pending.is_empty() {
        match consumer.poll(Duration::from_secs(5)) {
            None => {
                // Nothing for 5 s: partitions that never report an end are empty or idle.
                break;
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                pending.remove(&p);
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => {
                count += 1;
                let v = render(&m, decoder);
                if brief {
                    println!("{}", one_line(&v));
                } else {
                    println!("{v}");
                }
            }
        }
    }
    Ok(count)
}

/// A short human line: where, what kind of call (or why dead-lettered), who.
fn one_line(v: &Value) -> String {
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
        return format!(
            "{at} {what} {who} {} {}",
            seg["timestamp"].as_str().unwrap_or(""),
            seg["messageId"].as_str().unwrap_or("")
        );
    }
    let reason = v["headers"]["dlq-reason"]
        .as_str()
        .map(|r| format!(" dlq-reason={r}"))
        .unwrap_or_default();
    let mut value = v["value"].to_string();
    value.truncate(120);
    format!("{at} key={}{reason} {value}", v["key"])
}

fn render(m: &rdkafka::message::BorrowedMessage<'_>, decoder: &Decoder) -> Value {
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
        (Some(v), Decoder::Raw) => serde_json::from_slice(v)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(v).into_owned())),
    };
    json!({
        "partition": m.partition(),
        "offset": m.offset(),
        "key": key,
        "headers": headers,
        "value": value,
    })
}
