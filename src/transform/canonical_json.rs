//! Canonical JSON text (object keys sorted, no whitespace) and short hex digests of it: the
//! fingerprints of mappings and tracking plans depend on what a file says, not on how it is
//! formatted or in which order its tables are written.

use serde_json::Value;

/// Appends the canonical text of `v` to `out`.
pub fn write(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write(&m[k.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The first 8 bytes of a digest as 16 lowercase hex digits: short enough for a header, a
/// metric label and a log line; 64 bits tell any two versions of one file apart.
pub fn hex16(digest: &[u8]) -> String {
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let a: Value =
            serde_json::from_str(r#"{"b": [1, {"y": 2, "x": "q"}], "a": null}"#).unwrap();
        let b = json!({"a": null, "b": [1, {"x": "q", "y": 2}]});
        let (mut x, mut y) = (String::new(), String::new());
        write(&a, &mut x);
        write(&b, &mut y);
        assert_eq!(x, y);
        assert_eq!(x, r#"{"a":null,"b":[1,{"x":"q","y":2}]}"#);
        assert_eq!(hex16(&[0xab; 32]), "abababababababab");
    }
}
