//! Dotted paths into JSON objects (`properties.nps.rating`), parsed once when the mapping is
//! loaded and applied per event without allocation for the lookup.

use serde_json::Value;

/// A path of object keys. Keys cannot contain dots (Pendo's field names do not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath(Vec<String>);

impl JsonPath {
    /// Parses `a.b.c`; `None` for an empty path or an empty segment.
    pub fn parse(text: &str) -> Option<Self> {
        if text.is_empty() {
            return None;
        }
        let parts: Vec<String> = text.split('.').map(str::to_string).collect();
        if parts.iter().any(String::is_empty) {
            return None;
        }
        Some(Self(parts))
    }

    /// The path's segments.
    pub fn segments(&self) -> &[String] {
        &self.0
    }

    /// The first segment (the top-level key).
    pub fn first(&self) -> &str {
        &self.0[0]
    }

    /// The value at this path, if every step is an object holding the key.
    pub fn get<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        let mut v = root;
        for k in &self.0 {
            v = v.as_object()?.get(k)?;
        }
        Some(v)
    }
}

impl std::fmt::Display for JsonPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn get_nested() {
        let p = JsonPath::parse("a.b").unwrap();
        let v = json!({"a": {"b": 1, "c": 2}});
        assert_eq!(p.get(&v), Some(&json!(1)));
        assert_eq!(JsonPath::parse("x.y").unwrap().get(&v), None);
        assert!(JsonPath::parse("a..b").is_none());
        assert!(JsonPath::parse("").is_none());
    }
}
