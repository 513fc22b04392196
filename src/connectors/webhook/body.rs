//! Splits a webhook body into events without re-encoding them: a single JSON object is one
//! event (the body, byte for byte); a JSON array yields one event per element, each the exact
//! bytes of that element. Anything else is a clear error, never a panic.
//!
//! Two limits apply, because a body and an event end up in different places: the whole body is
//! bounded by the HTTP server (`max_body_bytes`, a memory bound), while every event becomes one
//! Kafka record and so is bounded by `max_event_bytes` (at most what a raw topic's record holds).
//! An Actions batch of 4,000 events of up to 32 KB each is legitimately far larger than one
//! record, but none of its events may be.

use bytes::Bytes;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Why a body holds no usable events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Not JSON (or JSON nested deeper than 128 levels); the message says where.
    #[error("body is not valid JSON: {0}")]
    Malformed(String),
    /// Valid JSON, but not an object or an array of objects.
    #[error("{0}")]
    NotEvents(String),
    /// More events in one request than allowed.
    #[error("{count} events in one request; at most {max} are accepted")]
    TooManyEvents {
        /// Events in the body.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// One event is larger than a Kafka record of the raw topic may be. The whole request is
    /// refused (never a silent drop of that event alone), and dead-lettered.
    #[error("{} is {size} bytes; at most {max} bytes per event are accepted", describe_event(*.index))]
    EventTooLarge {
        /// Position of the event in an array body; `None` when the body is a single object.
        index: Option<usize>,
        /// Its size in bytes.
        size: usize,
        /// The per-event limit.
        max: usize,
    },
    /// A value that becomes part of the event's Kafka record (its key, a header) is longer than
    /// any real one: refused at admission, naming the field, so it can never make a record or a
    /// dead letter too large downstream. The body is dead-lettered.
    #[error("{}: {field} is {size} bytes; at most {max} bytes are accepted", describe_event(*.index))]
    FieldTooLong {
        /// Position of the event in an array body; `None` when the body is a single object.
        index: Option<usize>,
        /// The event field.
        field: &'static str,
        /// Its length in bytes.
        size: usize,
        /// The limit.
        max: usize,
    },
}

fn describe_event(index: Option<usize>) -> String {
    match index {
        Some(i) => format!("array element {i} (0-based)"),
        None => "the event (the body)".to_string(),
    }
}

impl BodyError {
    /// Whether the body itself is bad (kept in the dead-letter topic for inspection) rather than
    /// merely too big for one request.
    pub fn is_dead_letter(&self) -> bool {
        !matches!(self, BodyError::TooManyEvents { .. })
    }

    /// A short label for metrics.
    pub fn reason_label(&self) -> &'static str {
        match self {
            BodyError::Malformed(_) => "malformed",
            BodyError::NotEvents(_) => "not_events",
            BodyError::TooManyEvents { .. } => "too_many_events",
            BodyError::EventTooLarge { .. } => "event_too_large",
            BodyError::FieldTooLong { .. } => "field_too_long",
        }
    }
}

/// Deepest nesting accepted. Pendo and Segment events nest a handful of levels; anything
/// deeper is not an event, and downstream JSON parsers (128 levels) would refuse it anyway.
pub const MAX_DEPTH: usize = 64;

/// Nesting depth of JSON text (brackets outside strings), stopping early past `limit`.
fn nesting_depth(bytes: &[u8], limit: usize) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
                if max > limit {
                    return max;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// The elements of an array body, held only up to `max`: past it the rest are counted, not
/// kept, so a body of a million tiny elements is refused without a million-entry vector.
struct BoundedElements {
    max: usize,
}

/// What [`BoundedElements`] found.
enum Elements<'a> {
    /// At most `max` elements, as raw text borrowed from the body.
    Within(Vec<&'a RawValue>),
    /// More than `max`: how many in all.
    TooMany(usize),
}

impl<'de> DeserializeSeed<'de> for BoundedElements {
    type Value = Elements<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for BoundedElements {
    type Value = Elements<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut elements = Vec::new();
        while elements.len() < self.max {
            match seq.next_element::<&'de RawValue>()? {
                Some(e) => elements.push(e),
                None => return Ok(Elements::Within(elements)),
            }
        }
        let mut count = elements.len();
        while seq.next_element::<IgnoredAny>()?.is_some() {
            count += 1;
        }
        Ok(if count > self.max {
            Elements::TooMany(count)
        } else {
            Elements::Within(elements)
        })
    }
}

/// The events of `body`, as slices of it (no copies): at most `max_events` of them, none larger
/// than `max_event_bytes`. The first offending element is the one named in the error.
pub fn split_events(
    body: &Bytes,
    max_events: usize,
    max_event_bytes: usize,
) -> Result<Vec<Bytes>, BodyError> {
    if nesting_depth(body, MAX_DEPTH) > MAX_DEPTH {
        return Err(BodyError::Malformed(format!(
            "JSON nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let first = body.iter().copied().find(|b| !b.is_ascii_whitespace());
    match first {
        Some(b'{') => {
            serde_json::from_slice::<IgnoredAny>(body)
                .map_err(|e| BodyError::Malformed(e.to_string()))?;
            if body.len() > max_event_bytes {
                return Err(BodyError::EventTooLarge {
                    index: None,
                    size: body.len(),
                    max: max_event_bytes,
                });
            }
            Ok(vec![body.clone()])
        }
        Some(b'[') => {
            let mut de = serde_json::Deserializer::from_slice(body);
            let elements = BoundedElements { max: max_events }
                .deserialize(&mut de)
                .and_then(|elements| de.end().map(|()| elements))
                .map_err(|e| BodyError::Malformed(e.to_string()))?;
            let elements = match elements {
                Elements::Within(elements) => elements,
                Elements::TooMany(count) => {
                    return Err(BodyError::TooManyEvents {
                        count,
                        max: max_events,
                    });
                }
            };
            let base = body.as_ptr() as usize;
            elements
                .iter()
                .enumerate()
                .map(|(i, raw)| {
                    let text = raw.get();
                    if !text.starts_with('{') {
                        return Err(BodyError::NotEvents(format!(
                            "array element {i} is not a JSON object"
                        )));
                    }
                    if text.len() > max_event_bytes {
                        return Err(BodyError::EventTooLarge {
                            index: Some(i),
                            size: text.len(),
                            max: max_event_bytes,
                        });
                    }
                    // `RawValue` borrows from `body`, so its text is a sub-slice of it.
                    let start = text.as_ptr() as usize - base;
                    Ok(body.slice(start..start + text.len()))
                })
                .collect()
        }
        None => Err(BodyError::Malformed("empty body".to_string())),
        Some(_) => match serde_json::from_slice::<IgnoredAny>(body) {
            Ok(_) => Err(BodyError::NotEvents(
                "body is JSON but neither an object nor an array of objects".to_string(),
            )),
            Err(e) => Err(BodyError::Malformed(e.to_string())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Result<Vec<String>, BodyError> {
        split_with(s, 1024)
    }

    fn split_with(s: &str, max_event_bytes: usize) -> Result<Vec<String>, BodyError> {
        split_events(&Bytes::from(s.to_string()), 3, max_event_bytes).map(|v| {
            v.iter()
                .map(|b| String::from_utf8(b.to_vec()).unwrap())
                .collect()
        })
    }

    #[test]
    fn object_is_kept_byte_for_byte() {
        let body = " {\"a\": 1,  \"b\":[1,2]}\n";
        assert_eq!(split(body).unwrap(), vec![body.to_string()]);
    }

    #[test]
    fn array_elements_are_exact_slices() {
        assert_eq!(
            split("[ {\"a\":1} ,{\"b\" : \"x\"}]").unwrap(),
            vec!["{\"a\":1}".to_string(), "{\"b\" : \"x\"}".to_string()]
        );
        assert_eq!(split("[]").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn bad_bodies_are_errors() {
        assert!(matches!(split(""), Err(BodyError::Malformed(_))));
        assert!(matches!(split("{\"a\":"), Err(BodyError::Malformed(_))));
        assert!(matches!(split("nope"), Err(BodyError::Malformed(_))));
        assert!(matches!(split("42"), Err(BodyError::NotEvents(_))));
        assert!(matches!(split("[{}, 3]"), Err(BodyError::NotEvents(_))));
        assert_eq!(
            split("[{},{},{},{}]"),
            Err(BodyError::TooManyEvents { count: 4, max: 3 })
        );
        // Deep nesting: a clear rejection, never a stack overflow.
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(split(&deep), Err(BodyError::Malformed(_))));
        // Brackets inside strings do not count.
        let in_string = format!("{{\"a\":\"{}\\\"{}\"}}", "[".repeat(100), "{".repeat(100));
        assert_eq!(split(&in_string).unwrap().len(), 1);
        let deep_in_array = format!("[{{\"a\":{}1{}}}]", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(
            split(&deep_in_array),
            Err(BodyError::Malformed(_))
        ));
        let deep_obj = format!("{{\"a\":{}1{}}}", "[".repeat(500), "]".repeat(500));
        assert!(matches!(split(&deep_obj), Err(BodyError::Malformed(_))));
    }

    #[test]
    fn an_event_over_the_per_event_limit_is_named() {
        // 64 bytes per event: an element of exactly 64 bytes passes, 65 does not,
        // whatever the body's total size.
        let at = format!("{{\"p\":\"{}\"}}", "x".repeat(56));
        assert_eq!(at.len(), 64);
        let over = format!("{{\"p\":\"{}\"}}", "x".repeat(57));
        let ok = format!("[{at},{at},{at}]");
        assert!(ok.len() > 64 * 3);
        assert_eq!(split_with(&ok, 64).unwrap().len(), 3);
        let err = split_with(&format!("[{at}, {over}]"), 64).unwrap_err();
        assert_eq!(
            err,
            BodyError::EventTooLarge {
                index: Some(1),
                size: 65,
                max: 64
            }
        );
        let message = err.to_string();
        assert!(message.contains("array element 1") && message.contains("65 bytes"));
        assert!(message.contains("at most 64 bytes per event"), "{message}");
        assert!(err.is_dead_letter());
        assert_eq!(err.reason_label(), "event_too_large");
        // A single-object body is one event: the same limit.
        assert_eq!(
            split_with(&over, 64),
            Err(BodyError::EventTooLarge {
                index: None,
                size: 65,
                max: 64
            })
        );
        // Too many events is judged first: a sender that splits its batch may still succeed.
        assert!(matches!(
            split_with(&format!("[{over},{at},{at},{at}]"), 64),
            Err(BodyError::TooManyEvents { .. })
        ));
    }

    #[test]
    fn a_body_far_larger_than_one_record_splits_into_records_within_the_limit() {
        // An Actions batch of 3,000 events of ~1 KB: 3 MB in all, each event far below the limit.
        let event = format!("{{\"type\":\"track\",\"p\":\"{}\"}}", "y".repeat(1000));
        let body = format!("[{}]", vec![event.as_str(); 3000].join(","));
        assert!(body.len() > 3_000_000);
        let events = split_events(&Bytes::from(body), 4000, 2 * 1024 * 1024).unwrap();
        assert_eq!(events.len(), 3000);
        assert!(events.iter().all(|e| e.as_ref() == event.as_bytes()));
    }
}
