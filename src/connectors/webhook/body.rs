//! Splits a webhook body into events without re-encoding them: a single JSON object is one
//! event (the body, byte for byte); a JSON array yields one event per element, each the exact
//! bytes of that element. Anything else is a clear error, never a panic.

use bytes::Bytes;
use serde::de::IgnoredAny;
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

/// The events of `body`, as slices of it (no copies).
pub fn split_events(body: &Bytes, max_events: usize) -> Result<Vec<Bytes>, BodyError> {
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
            Ok(vec![body.clone()])
        }
        Some(b'[') => {
            let elements: Vec<&RawValue> =
                serde_json::from_slice(body).map_err(|e| BodyError::Malformed(e.to_string()))?;
            if elements.len() > max_events {
                return Err(BodyError::TooManyEvents {
                    count: elements.len(),
                    max: max_events,
                });
            }
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
        split_events(&Bytes::from(s.to_string()), 3).map(|v| {
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
}
