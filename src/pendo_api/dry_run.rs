//! `pendo_sink.dry_run_file`: without a Pendo subscription the sink appends each write it would
//! send (`{"method", "path", "body"}`, one JSON line) to a file and gets the answer Pendo gives
//! a write that fully succeeded, in the shapes the sink reads (`docs/external-apis.md`):
//! every item updated, a created segment's id, every PATCH operation applied. So the reverse
//! flow runs end to end, and shows its Pendo writes, with no account anywhere.

use serde_json::{Value, json};

/// Pendo's answer to a successful `method path` with `body`.
pub fn answer(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let path = path.split('?').next().unwrap_or(path);
    let answer = match (method, path) {
        ("POST", p) if p.starts_with("/api/v1/metadata/") => {
            let n = request.as_array().map_or(0, Vec::len);
            json!({"total": n, "updated": n, "failed": 0, "missing": [], "errors": []})
        }
        ("POST", "/api/v1/segment/upload") => {
            let name = request["name"].as_str().unwrap_or("segment");
            let id: String = name
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            json!({"segmentId": format!("dry-run-{id}")})
        }
        ("PATCH", p) if p.starts_with("/api/v1/segment/") => {
            let ops = request["patch"].as_array().cloned().unwrap_or_default();
            let entries: Vec<Value> = ops
                .into_iter()
                .map(|op| json!({"status": 200, "message": "dry run", "operation": op}))
                .collect();
            json!({"multistatus": entries})
        }
        ("GET", "/api/v1/segment") => json!([]),
        _ => json!({}),
    };
    answer.to_string().into_bytes()
}

/// The line recorded for a request: its body as JSON when it is JSON, else as text.
pub fn line(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let body = serde_json::from_slice::<Value>(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()));
    json!({"method": method, "path": path, "body": body})
        .to_string()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_what_the_sink_reads_as_full_success() {
        let a: Value = serde_json::from_slice(&answer(
            "POST",
            "/api/v1/metadata/visitor/custom/value?create=true",
            br#"[{"visitorId":"v1","values":{"a":1}},{"visitorId":"v2","values":{"a":2}}]"#,
        ))
        .unwrap();
        assert_eq!(a["total"], 2);
        assert_eq!(a["updated"], 2);
        let a: Value = serde_json::from_slice(&answer(
            "POST",
            "/api/v1/segment/upload",
            br#"{"name":"Trial users (Segment)","visitors":["v1"]}"#,
        ))
        .unwrap();
        assert_eq!(a["segmentId"], "dry-run-Trial-users--Segment-");
        let patch = br#"{"patch":[{"op":"add","path":"/visitors","value":["v1"]},{"op":"remove","path":"/visitors","value":["v2"]}]}"#;
        let a: Value =
            serde_json::from_slice(&answer("PATCH", "/api/v1/segment/x/visitor", patch)).unwrap();
        assert_eq!(a["multistatus"].as_array().unwrap().len(), 2);
        assert_eq!(a["multistatus"][1]["operation"]["op"], "remove");
        let l: Value = serde_json::from_slice(&line("POST", "/p", b"not json")).unwrap();
        assert_eq!(l["body"], "not json");
    }
}
