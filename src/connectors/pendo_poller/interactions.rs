//! Guide and poll interactions that Pendo does not push: only "guide displayed" has a webhook,
//! so guide advanced / dismissed / snoozed / completed and poll answers come from the
//! Aggregation API's `guideEvents` and `pollEvents` sources, one row per interaction
//! (`browserTime` in ms), available with up to ~12 h delay.
//!
//! Each row becomes a webhook-shaped event (`event` = the row's `type`, `visitorId`,
//! `accountId`, `timestamp` = `browserTime`, `properties` = guide/step/poll ids), so the mapping
//! file decides what it becomes (unknown types follow the unknown-kind policy) and the same
//! interaction delivered by webhook gets the same messageId (the mapping's guide and poll kinds
//! derive it from visitor, ids and the time in seconds). A `guideAdvanced` row on a guide's last
//! step (from the catalogue) is a `guideCompleted`.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::rows::{ApiRecord, RowError};

/// The event sources read, with the kind their rows get when they carry no `type`.
pub const GUIDE_EVENTS: &str = "guideEvents";
/// Poll answers.
pub const POLL_EVENTS: &str = "pollEvents";
/// One hour in ms.
pub const HOUR_MS: i64 = 3_600_000;

/// One page of `source` rows in the hour range starting at `first_ms` (`hours` long), from
/// `browserTime` `from` on (inclusive when `inclusive`).
pub fn events_page(
    source: &str,
    first_ms: i64,
    hours: i64,
    from: Option<(i64, bool)>,
    limit: usize,
) -> Value {
    let mut pipeline = vec![json!({
        "source": {source: null},
        "timeSeries": {"period": "hourRange", "first": first_ms, "count": hours},
    })];
    if let Some((t, inclusive)) = from {
        let op = if inclusive { ">=" } else { ">" };
        pipeline.push(json!({"filter": format!("browserTime {op} {t}")}));
    }
    pipeline.push(json!({"sort": ["browserTime"]}));
    pipeline.push(json!({"limit": limit}));
    Value::Array(pipeline)
}

/// The last step of each guide (from the catalogue's `steps`), to tell completions.
#[derive(Debug, Default, Clone)]
pub struct GuideSteps {
    last: HashMap<String, String>,
}

impl GuideSteps {
    /// Learns from catalogue guide items (`{"id", "steps": [{"id"}, ...]}`).
    pub fn learn(&mut self, guides: &[Value]) {
        for g in guides {
            let (Some(id), Some(last)) = (
                g["id"].as_str(),
                g["steps"]
                    .as_array()
                    .and_then(|s| s.last())
                    .and_then(|s| s["id"].as_str()),
            ) else {
                continue;
            };
            self.last.insert(id.to_string(), last.to_string());
        }
    }

    /// Whether `step` is the last step of `guide`.
    pub fn is_last(&self, guide: &str, step: &str) -> bool {
        self.last.get(guide).is_some_and(|l| l == step)
    }
}

fn copy(from: &Value, to: &mut Map<String, Value>, fields: &[&str]) {
    for f in fields {
        if let Some(v) = from.get(*f).filter(|v| !v.is_null()) {
            to.insert((*f).to_string(), v.clone());
        }
    }
}

/// The raw event of one `guideEvents` / `pollEvents` row.
pub fn interaction_event(
    source: &str,
    row: &Value,
    steps: &GuideSteps,
) -> Result<ApiRecord, RowError> {
    let visitor = match row.get("visitorId") {
        Some(Value::String(v)) if !v.is_empty() => v.clone(),
        other => {
            return Err(RowError {
                reason: "missing_id",
                detail: format!("{source} row without a visitorId (found {other:?})"),
            });
        }
    };
    let Some(time) = row.get("browserTime").and_then(Value::as_i64) else {
        return Err(RowError {
            reason: "missing_time",
            detail: format!("{source} row without a numeric browserTime"),
        });
    };
    let mut properties = Map::new();
    let kind = if source == POLL_EVENTS {
        copy(
            row,
            &mut properties,
            &[
                "guideId",
                "guideStepId",
                "pollId",
                "pollType",
                "pollResponse",
            ],
        );
        "pollSubmitted".to_string()
    } else {
        copy(row, &mut properties, &["guideId", "guideStepId", "url"]);
        let kind = row
            .get("type")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| RowError {
                reason: "missing_type",
                detail: "guideEvents row without a type".into(),
            })?;
        let last_step = match (row["guideId"].as_str(), row["guideStepId"].as_str()) {
            (Some(g), Some(s)) => steps.is_last(g, s),
            _ => false,
        };
        if kind == "guideAdvanced" && last_step {
            "guideCompleted".to_string()
        } else {
            kind.to_string()
        }
    };
    let mut event = json!({
        "event": kind,
        "visitorId": visitor,
        "timestamp": time,
        "properties": properties,
    });
    if let Some(a) = row["accountId"].as_str().filter(|a| !a.is_empty()) {
        event["accountId"] = Value::String(a.to_string());
    }
    Ok(ApiRecord {
        key: visitor,
        value: event.to_string().into_bytes(),
        kind: if source == POLL_EVENTS {
            "pollEvent"
        } else {
            "guideEvent"
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_events_and_last_step_advances_complete() {
        let mut steps = GuideSteps::default();
        steps.learn(&[json!({"id": "g1", "steps": [{"id": "s1"}, {"id": "s2"}]})]);
        let row = |t: &str, step: &str| {
            json!({"type": t, "guideId": "g1", "guideStepId": step, "browserTime": 1764330042123i64,
                   "visitorId": "v1", "accountId": "a1", "url": "https://x"})
        };
        let ev = |r: ApiRecord| serde_json::from_slice::<Value>(&r.value).unwrap();
        let a = ev(interaction_event(GUIDE_EVENTS, &row("guideAdvanced", "s1"), &steps).unwrap());
        assert_eq!(a["event"], "guideAdvanced");
        assert_eq!(a["timestamp"], 1764330042123i64);
        assert_eq!(a["properties"]["guideStepId"], "s1");
        let c = ev(interaction_event(GUIDE_EVENTS, &row("guideAdvanced", "s2"), &steps).unwrap());
        assert_eq!(c["event"], "guideCompleted");
        let d = ev(interaction_event(GUIDE_EVENTS, &row("guideDismissed", "s2"), &steps).unwrap());
        assert_eq!(d["event"], "guideDismissed");
        let p = ev(interaction_event(
            POLL_EVENTS,
            &json!({"pollId": "p1", "pollResponse": "Team", "browserTime": 5, "visitorId": "v2"}),
            &steps,
        )
        .unwrap());
        assert_eq!(p["event"], "pollSubmitted");
        assert_eq!(p["properties"]["pollResponse"], "Team");
        assert!(p.get("accountId").is_none());
        let bad = interaction_event(GUIDE_EVENTS, &json!({"visitorId": "v"}), &steps);
        assert_eq!(bad.unwrap_err().reason, "missing_time");
        let q = events_page(GUIDE_EVENTS, 0, 6, Some((42, true)), 10);
        assert_eq!(q[1]["filter"], "browserTime >= 42");
        assert_eq!(q[0]["timeSeries"]["period"], "hourRange");
    }
}
