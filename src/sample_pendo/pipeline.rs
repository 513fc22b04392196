//! The subset of Pendo's Aggregation API the sample serves: a `source` (with a `timeSeries` for
//! event sources), then `filter` (clauses `path op literal` joined by `&&`; `==`, `!=`, `>=`,
//! `<=`, `>`, `<`; a JSON string or number), `sort` (field names, `-` for descending) and
//! `limit`. Anything else is refused with a message, as Pendo refuses what it cannot run.

use std::cmp::Ordering;

use serde_json::Value;

use super::data::SampleData;

/// Most rows one answer may hold (an unbounded query is refused, as Pendo times out on one).
pub const MAX_ROWS: usize = 5_000;
/// Longest `timeSeries` span, in ms (Pendo answers at most 30 days).
pub const MAX_SPAN_MS: i64 = 30 * 86_400_000;

/// Runs the pipeline of an aggregation request body against `data`; `Err` is the 400 message.
pub fn run(data: &SampleData, body: &Value) -> Result<Vec<Value>, String> {
    let pipeline = body
        .pointer("/request/pipeline")
        .and_then(Value::as_array)
        .filter(|p| !p.is_empty())
        .ok_or("request.pipeline must be a non-empty array")?;
    let first = pipeline[0]
        .as_object()
        .ok_or("pipeline stages must be objects")?;
    let source = first
        .get("source")
        .and_then(Value::as_object)
        .filter(|o| o.len() == 1)
        .and_then(|o| o.keys().next())
        .ok_or("the first stage needs {\"source\": {\"<name>\": null}}")?;
    let mut rows = if data.is_event_source(source) {
        let (from, to) = time_span(first.get("timeSeries"), source)?;
        data.event_rows(source, from, to)
    } else {
        data.entity_rows(source)
            .ok_or_else(|| format!("unsupported source {source}"))?
    };
    for stage in &pipeline[1..] {
        let (op, arg) = stage
            .as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.iter().next())
            .ok_or("each pipeline stage must be an object with one operator")?;
        match op.as_str() {
            "filter" => {
                let clauses = parse_filter(arg.as_str().ok_or("filter takes a string")?)?;
                rows.retain(|r| clauses.iter().all(|c| c.matches(r)));
            }
            "sort" => {
                let keys: Vec<&str> = arg
                    .as_array()
                    .and_then(|a| a.iter().map(Value::as_str).collect())
                    .ok_or("sort takes an array of field names")?;
                rows.sort_by(|a, b| {
                    keys.iter()
                        .map(|k| match k.strip_prefix('-') {
                            Some(k) => compare(lookup(b, k), lookup(a, k)),
                            None => compare(lookup(a, k), lookup(b, k)),
                        })
                        .find(|o| *o != Ordering::Equal)
                        .unwrap_or(Ordering::Equal)
                });
            }
            "limit" => {
                let n = arg.as_u64().ok_or("limit takes a non-negative integer")?;
                rows.truncate(usize::try_from(n).unwrap_or(usize::MAX));
            }
            other => {
                return Err(format!(
                    "operator {other} is not served by the sample API (filter, sort, limit)"
                ));
            }
        }
    }
    if rows.len() > MAX_ROWS {
        return Err(format!(
            "result set too large ({} rows, at most {MAX_ROWS}): add a time window or a limit",
            rows.len()
        ));
    }
    Ok(rows)
}

/// `[from, to)` (epoch ms) of a `timeSeries`.
fn time_span(ts: Option<&Value>, source: &str) -> Result<(i64, i64), String> {
    let ts = ts.ok_or_else(|| format!("source {source} needs a timeSeries"))?;
    let unit = match ts["period"].as_str() {
        Some("dayRange") => 86_400_000,
        Some("hourRange") => 3_600_000,
        _ => return Err("timeSeries.period must be dayRange or hourRange".into()),
    };
    let first = ts["first"]
        .as_i64()
        .ok_or("timeSeries.first must be epoch ms")?;
    let count = ts["count"]
        .as_i64()
        .filter(|c| *c >= 1)
        .ok_or("timeSeries.count must be >= 1")?;
    let span = count.saturating_mul(unit);
    if span > MAX_SPAN_MS {
        return Err("a timeSeries spans at most 30 days".into());
    }
    Ok((first, first + span))
}

fn lookup<'a>(row: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(row, |v, part| v.get(part))
}

fn compare(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            x.partial_cmp(&y).unwrap_or(Ordering::Equal)
        }
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        _ => Ordering::Equal,
    }
}

/// One `path op literal` clause.
#[derive(Debug)]
struct Clause {
    path: String,
    op: &'static str,
    literal: Value,
}

impl Clause {
    fn matches(&self, row: &Value) -> bool {
        let Some(v) = lookup(row, &self.path) else {
            return false;
        };
        let comparable = matches!(
            (v, &self.literal),
            (Value::Number(_), Value::Number(_)) | (Value::String(_), Value::String(_))
        );
        if !comparable {
            return self.op == "!=";
        }
        let o = compare(Some(v), Some(&self.literal));
        match self.op {
            "==" => o == Ordering::Equal,
            "!=" => o != Ordering::Equal,
            ">=" => o != Ordering::Less,
            "<=" => o != Ordering::Greater,
            ">" => o == Ordering::Greater,
            _ => o == Ordering::Less,
        }
    }
}

/// Clauses of a filter expression joined by `&&`.
fn parse_filter(expr: &str) -> Result<Vec<Clause>, String> {
    let mut clauses = Vec::new();
    let mut rest = expr.trim();
    loop {
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(rest.len());
        let path = &rest[..end];
        if path.is_empty() || path.split('.').any(str::is_empty) {
            return Err(format!("bad filter: expected a field name in {rest:?}"));
        }
        rest = rest[end..].trim_start();
        let op = ["==", "!=", ">=", "<=", ">", "<"]
            .into_iter()
            .find(|op| rest.starts_with(op))
            .ok_or_else(|| format!("bad filter: expected an operator in {rest:?}"))?;
        rest = rest[op.len()..].trim_start();
        // The literal: a JSON value read as a prefix of the rest.
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        let literal = match values.next() {
            Some(Ok(v @ (Value::String(_) | Value::Number(_)))) => v,
            _ => {
                return Err(format!(
                    "bad filter: expected a string or number in {rest:?}"
                ));
            }
        };
        rest = rest[values.byte_offset()..].trim_start();
        clauses.push(Clause {
            path: path.to_string(),
            op,
            literal,
        });
        if rest.is_empty() {
            return Ok(clauses);
        }
        rest = rest
            .strip_prefix("&&")
            .ok_or_else(|| format!("bad filter: expected && in {rest:?}"))?
            .trim_start();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(pipeline: Value) -> Value {
        json!({"response": {"mimeType": "application/json"}, "request": {"pipeline": pipeline}})
    }

    #[test]
    fn filters_sort_and_limit_as_the_poller_asks() {
        let data = SampleData::generate(1_764_900_000_000);
        let rows = run(
            &data,
            &body(json!([
                {"source": {"visitors": null}},
                {"filter": "metadata.auto.firstvisit >= 0 && visitorId > \"vis-010\""},
                {"sort": ["visitorId"]},
                {"limit": 5},
            ])),
        )
        .unwrap();
        assert_eq!(rows.len(), 5);
        assert_eq!(rows[0]["visitorId"], "vis-011");
        let desc = run(
            &data,
            &body(json!([{"source": {"accounts": null}}, {"sort": ["-accountId"]}, {"limit": 1}])),
        )
        .unwrap();
        assert!(desc[0]["accountId"].as_str().unwrap() > "acct-a");
        let err = run(&data, &body(json!([{"source": {"events": null}}]))).unwrap_err();
        assert!(err.contains("timeSeries"), "{err}");
        let err = run(
            &data,
            &body(json!([{"source": {"accounts": null}}, {"group": ["x"]}])),
        )
        .unwrap_err();
        assert!(err.contains("not served"), "{err}");
        assert!(parse_filter("a == ").is_err());
        assert!(parse_filter("a = 1").is_err());
        let c = parse_filter("featureId == \"f\\\"1\" && day>=5").unwrap();
        assert_eq!(c[0].literal, json!("f\"1"));
        assert_eq!(c[1].op, ">=");
    }
}
