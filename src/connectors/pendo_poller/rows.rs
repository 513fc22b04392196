//! What the poller asks Pendo for (aggregation pipelines: keyset-paginated, time-windowed) and
//! what it makes of the rows: raw events on `pendo.raw.api` shaped like Pendo's webhook events
//! (`event`, `accountId`/`visitorId`, `timestamp`, `uniqueId`, `properties.metadata`), so the
//! transformer's mapping file maps them like any other kind, and catalogue entries on
//! `pendo.catalog`.

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::state::Fingerprint;

/// Kind of the raw event made from an account row (mapped to a Segment `group` call).
pub const ACCOUNT_KIND: &str = "accountSnapshot";
/// Kind of the raw event made from a newly seen visitor (mapped to an `identify` call).
pub const VISITOR_KIND: &str = "visitorFirstSeen";
/// Kind of the raw event made from a known visitor whose selected metadata changed: Pendo's own
/// webhook kind for it, so the mapping file maps both the same way (an `identify` call).
pub const VISITOR_UPDATE_KIND: &str = "visitorMetadataUpdated";
/// The catalogue kinds and their `GET /api/v1/<kind>` endpoints.
pub const CATALOG_KINDS: [&str; 4] = ["feature", "page", "guide", "tracktype"];

/// A JSON string literal for a filter expression.
pub fn literal(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

/// One page of accounts after `after` (by id), at most `limit` rows.
pub fn accounts_page(after: Option<&str>, limit: usize) -> Value {
    let mut pipeline = vec![json!({"source": {"accounts": null}})];
    if let Some(a) = after {
        pipeline.push(json!({"filter": format!("accountId > {}", literal(a))}));
    }
    pipeline.push(json!({"sort": ["accountId"]}));
    pipeline.push(json!({"limit": limit}));
    Value::Array(pipeline)
}

/// One page of visitors whose `metadata.auto.<field>` is in `[from_ms, to_ms)`, after `after`
/// (by id): `firstvisit` for visitors first seen, `lastupdated` for a profile sync, which reads
/// only the visitors that changed.
pub fn visitors_page(
    field: &str,
    from_ms: i64,
    to_ms: i64,
    after: Option<&str>,
    limit: usize,
) -> Value {
    let mut filter =
        format!("metadata.auto.{field} >= {from_ms} && metadata.auto.{field} < {to_ms}");
    if let Some(a) = after {
        filter.push_str(&format!(" && visitorId > {}", literal(a)));
    }
    json!([
        {"source": {"visitors": null}},
        {"filter": filter},
        {"sort": ["visitorId"]},
        {"limit": limit},
    ])
}

/// One page of an event `source`'s rows of one UTC day (`dayRange`, starting at `day_ms`),
/// matching `filter` (e.g. `featureId == "f1"`), for visitors from `from` on (by id; inclusive
/// when `inclusive`, because a visitor's rows may straddle a page boundary).
pub fn day_page(
    source: &str,
    filter: Option<&str>,
    day_ms: i64,
    from: Option<(&str, bool)>,
    limit: usize,
) -> Value {
    let mut clauses: Vec<String> = filter.map(str::to_string).into_iter().collect();
    if let Some((v, inclusive)) = from {
        let op = if inclusive { ">=" } else { ">" };
        clauses.push(format!("visitorId {op} {}", literal(v)));
    }
    let mut pipeline = vec![json!({
        "source": {source: null},
        "timeSeries": {"period": "dayRange", "first": day_ms, "count": 1},
    })];
    if !clauses.is_empty() {
        pipeline.push(json!({"filter": clauses.join(" && ")}));
    }
    pipeline.push(json!({"sort": ["visitorId"]}));
    pipeline.push(json!({"limit": limit}));
    Value::Array(pipeline)
}

/// A raw event ready for `pendo.raw.api`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRecord {
    /// Record key (account or visitor id).
    pub key: String,
    /// The event's JSON.
    pub value: Vec<u8>,
    /// Its kind (header, metrics).
    pub kind: &'static str,
}

/// Why a row could not be used (it goes to `dlq.pendo-poller` with this reason).
#[derive(Debug, Clone, PartialEq)]
pub struct RowError {
    /// Short machine-readable reason.
    pub reason: &'static str,
    /// Details for a human.
    pub detail: String,
}

fn row_error(reason: &'static str, detail: impl Into<String>) -> RowError {
    RowError {
        reason,
        detail: detail.into(),
    }
}

/// Longest id accepted from Pendo: it becomes a record key and a state key (`visitor:<id>`), so
/// a megabyte "id" would make records no topic holds.
pub const MAX_ID_BYTES: usize = 1024;

fn id_too_long(what: &str, id: &str) -> RowError {
    row_error(
        "id_too_long",
        format!(
            "{what} id is {} bytes; at most {MAX_ID_BYTES} are used as keys",
            id.len()
        ),
    )
}

/// The row's id field as a non-empty string of at most [`MAX_ID_BYTES`].
pub fn row_id<'a>(row: &'a Value, field: &str) -> Result<&'a str, RowError> {
    match row.get(field) {
        Some(Value::String(s)) if s.len() > MAX_ID_BYTES => Err(id_too_long(field, s)),
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        other => Err(row_error(
            "missing_id",
            format!("row without a string `{field}` (found {other:?})"),
        )),
    }
}

/// `metadata` reduced to `fields` (dotted paths; a group name keeps the whole group), nested
/// as in the row so the mapping's `flatten = ["agent", "custom"]` applies. Absent paths are
/// left out.
pub fn select_metadata(row: &Value, fields: &[String]) -> Value {
    let mut out = Map::new();
    let metadata = &row["metadata"];
    for path in fields {
        let mut cur = metadata;
        let mut found = true;
        for part in path.split('.') {
            match cur.get(part) {
                Some(v) => cur = v,
                None => {
                    found = false;
                    break;
                }
            }
        }
        if !found || cur.is_null() {
            continue;
        }
        // Re-create the path in the output.
        let parts: Vec<&str> = path.split('.').collect();
        let mut slot = &mut out;
        for part in &parts[..parts.len() - 1] {
            let next = slot
                .entry(part.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if !next.is_object() {
                *next = Value::Object(Map::new());
            }
            slot = next.as_object_mut().expect("object");
        }
        slot.insert(parts[parts.len() - 1].to_string(), cur.clone());
    }
    Value::Object(out)
}

/// Fingerprint of a JSON value, independent of object key order.
pub fn fingerprint(v: &Value) -> Fingerprint {
    fn feed(h: &mut Sha256, v: &Value) {
        match v {
            Value::Object(o) => {
                let mut keys: Vec<&String> = o.keys().collect();
                keys.sort();
                h.update(b"{");
                for k in keys {
                    feed(h, &Value::String(k.clone()));
                    h.update(b":");
                    feed(h, &o[k]);
                    h.update(b",");
                }
                h.update(b"}");
            }
            Value::Array(a) => {
                h.update(b"[");
                for x in a {
                    feed(h, x);
                    h.update(b",");
                }
                h.update(b"]");
            }
            other => h.update(other.to_string().as_bytes()),
        }
    }
    let mut h = Sha256::new();
    feed(&mut h, v);
    let digest = h.finalize();
    let mut fp = [0u8; 16];
    fp.copy_from_slice(&digest[..16]);
    fp
}

/// The raw event of an account row whose selected metadata has fingerprint `fp`, polled at
/// `now_s` (epoch seconds). Its `uniqueId` carries the fingerprint: a changed account is a new
/// event, the same content emitted again (never, with the state topic) the same one.
pub fn account_event(row: &Value, selected: Value, fp: &Fingerprint, now_s: i64) -> ApiRecord {
    let id = row["accountId"].as_str().unwrap_or_default().to_string();
    let unique_id = format!("pendo-api:account:{id}:{}", hex(fp));
    let event = metadata_event(ACCOUNT_KIND, ("accountId", &id), now_s, unique_id, selected);
    ApiRecord {
        key: id,
        value: event.to_string().into_bytes(),
        kind: ACCOUNT_KIND,
    }
}

/// The raw event of a known visitor whose selected metadata (`selected`, fingerprint `fp`)
/// changed; its time is the update (`metadata.auto.lastupdated`, epoch ms). Its `uniqueId`
/// carries the update time and the fingerprint: each change is a new event (a profile that
/// changes back is sent again), the same change emitted again the same one.
pub fn visitor_update_event(
    row: &Value,
    selected: Value,
    fp: &Fingerprint,
) -> Result<ApiRecord, RowError> {
    let id = row_id(row, "visitorId")?;
    let updated = row["metadata"]["auto"]["lastupdated"]
        .as_i64()
        .ok_or_else(|| row_error("missing_lastupdated", "no metadata.auto.lastupdated"))?;
    let unique_id = format!("pendo-api:visitor-profile:{id}:{updated}:{}", hex(fp));
    let event = metadata_event(
        VISITOR_UPDATE_KIND,
        ("visitorId", id),
        updated,
        unique_id,
        selected,
    );
    Ok(visitor_record(row, id, event, VISITOR_UPDATE_KIND))
}

/// The raw event of a visitor's or account's metadata: `{"event": kind, <id field>: id,
/// "timestamp", "uniqueId", "properties": {"metadata"}}`.
fn metadata_event(
    kind: &str,
    (id_field, id): (&str, &str),
    timestamp: i64,
    unique_id: String,
    metadata: Value,
) -> Value {
    let mut event = json!({
        "event": kind,
        "timestamp": timestamp,
        "uniqueId": unique_id,
        "properties": {"metadata": metadata},
    });
    event[id_field] = Value::String(id.to_string());
    event
}

/// A metadata fingerprint as lower-case hex (in `uniqueId`s).
fn hex(fp: &Fingerprint) -> String {
    fp.iter().map(|b| format!("{b:02x}")).collect()
}

/// A visitor's record keyed by its id; the row's account (`metadata.auto.accountid`), when it
/// has one, goes into the event as `accountId`.
fn visitor_record(row: &Value, id: &str, mut event: Value, kind: &'static str) -> ApiRecord {
    if let Some(account) = row["metadata"]["auto"]["accountid"]
        .as_str()
        .filter(|a| !a.is_empty())
    {
        event["accountId"] = Value::String(account.to_string());
    }
    ApiRecord {
        key: id.to_string(),
        value: event.to_string().into_bytes(),
        kind,
    }
}

/// The raw event of a newly seen visitor row; its time is the first visit (epoch ms).
pub fn visitor_event(row: &Value, fields: &[String]) -> Result<ApiRecord, RowError> {
    let id = row_id(row, "visitorId")?;
    let first = row["metadata"]["auto"]["firstvisit"]
        .as_i64()
        .ok_or_else(|| row_error("missing_firstvisit", "no metadata.auto.firstvisit"))?;
    let event = metadata_event(
        VISITOR_KIND,
        ("visitorId", id),
        first,
        format!("pendo-api:visitor:{id}"),
        select_metadata(row, fields),
    );
    Ok(visitor_record(row, id, event, VISITOR_KIND))
}

/// A catalogue entry for `pendo.catalog`: key `<kind>:<id>`, value
/// `{"kind", "id", "name", "app"}` (the transformer joins names by key).
pub fn catalog_entry(kind: &str, item: &Value) -> Result<(String, Value), RowError> {
    let id = match item.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        other => {
            return Err(row_error(
                "missing_id",
                format!("{kind} without an id (found {other:?})"),
            ));
        }
    };
    if id.len() > MAX_ID_BYTES {
        return Err(id_too_long(kind, &id));
    }
    let name = item
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| row_error("missing_name", format!("{kind} {id} has no name")))?;
    let app = item.get("appId").cloned().unwrap_or(Value::Null);
    Ok((
        format!("{kind}:{id}"),
        json!({"kind": kind, "id": id, "name": name, "app": app}),
    ))
}

/// Keyset pagination on a field that is not unique (a visitor's rows, events of one
/// millisecond): when the page is full, drops its trailing rows that share the last `field`
/// value, so the next page can start at that value inclusively and read them all. Returns where
/// to continue (the value, and whether inclusively), or `None` after the last page. A page made
/// of one value only is kept whole and continued after it.
pub fn split_page(rows: &mut Vec<Value>, limit: usize, field: &str) -> Option<(Value, bool)> {
    if rows.len() < limit {
        return None;
    }
    let last = rows.last()?.get(field)?.clone();
    let keep = rows
        .iter()
        .rposition(|r| r.get(field) != Some(&last))
        .map_or(0, |i| i + 1);
    if keep == 0 {
        return Some((last, false));
    }
    rows.truncate(keep);
    Some((last, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_pages_filter_and_continue_by_visitor() {
        let f = format!("featureId == {}", literal("f\"1"));
        let q = day_page(
            "featureEvents",
            Some(&f),
            86_400_000,
            Some(("v9", true)),
            100,
        );
        assert_eq!(
            q[1]["filter"],
            "featureId == \"f\\\"1\" && visitorId >= \"v9\""
        );
        assert_eq!(q[0]["timeSeries"]["count"], 1);
        assert_eq!(q[0]["timeSeries"]["first"], 86_400_000);
        let q = day_page("events", None, 0, None, 10);
        assert_eq!(q.as_array().unwrap().len(), 3, "no filter stage: {q}");
        assert_eq!(q[2]["limit"], 10);
        let q = day_page("events", None, 0, Some(("v\"", false)), 10);
        assert_eq!(q[1]["filter"], "visitorId > \"v\\\"\"");
    }

    #[test]
    fn pages_split_between_key_values() {
        let row = |v: &str| json!({"visitorId": v});
        let mut rows = vec![row("a"), row("b"), row("b")];
        assert_eq!(
            split_page(&mut rows, 3, "visitorId"),
            Some((json!("b"), true))
        );
        assert_eq!(rows.len(), 1);
        let mut one = vec![row("b"), row("b")];
        assert_eq!(
            split_page(&mut one, 2, "visitorId"),
            Some((json!("b"), false))
        );
        assert_eq!(one.len(), 2);
        let mut short = vec![row("a")];
        assert_eq!(split_page(&mut short, 5, "visitorId"), None);
    }

    #[test]
    fn pages_are_bounded_and_keyset_paginated() {
        let p = accounts_page(Some("a\"b"), 500);
        assert_eq!(p[1]["filter"], "accountId > \"a\\\"b\"");
        assert_eq!(p[3]["limit"], 500);
        let v = visitors_page("firstvisit", 10, 20, None, 7);
        assert_eq!(
            v[1]["filter"],
            "metadata.auto.firstvisit >= 10 && metadata.auto.firstvisit < 20"
        );
        let u = visitors_page("lastupdated", 10, 20, Some("v9"), 7);
        assert_eq!(
            u[1]["filter"],
            "metadata.auto.lastupdated >= 10 && metadata.auto.lastupdated < 20 && visitorId > \"v9\""
        );
        assert_eq!(u[3]["limit"], 7);
    }

    #[test]
    fn selection_keeps_structure_and_fingerprints_ignore_key_order() {
        let row = json!({"accountId": "a1", "metadata": {
            "auto": {"lastvisit": 5}, "agent": {"name": "Acme", "tier": "gold"},
            "custom": {"health": 71}}});
        let sel = select_metadata(
            &row,
            &["agent.name".into(), "custom".into(), "pendo.nope".into()],
        );
        assert_eq!(
            sel,
            json!({"agent": {"name": "Acme"}, "custom": {"health": 71}})
        );
        let a = json!({"x": 1, "y": {"b": [1, 2], "a": null}});
        let b: Value = serde_json::from_str(r#"{"y":{"a":null,"b":[1,2]},"x":1}"#).unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&json!({"x": 2})));
    }

    #[test]
    fn rows_become_webhook_shaped_events() {
        let row = json!({"visitorId": "v1", "metadata": {"auto": {"firstvisit": 1764000000000i64,
            "accountid": "a1"}, "agent": {"email": "x@y"}}});
        let r = visitor_event(&row, &["agent".into()]).unwrap();
        let v: Value = serde_json::from_slice(&r.value).unwrap();
        assert_eq!(v["event"], VISITOR_KIND);
        assert_eq!(v["accountId"], "a1");
        assert_eq!(v["timestamp"], 1764000000000i64);
        assert_eq!(v["properties"]["metadata"]["agent"]["email"], "x@y");
        let bad = visitor_event(&json!({"visitorId": "v2", "metadata": {}}), &[]).unwrap_err();
        assert_eq!(bad.reason, "missing_firstvisit");

        // A changed profile: an identify-shaped event at the update time, whose id names the
        // change (same change, same id; a later change back to the same content, a new one).
        let mut row = row;
        row["metadata"]["auto"]["lastupdated"] = json!(1764000005000i64);
        let selected = select_metadata(&row, &["agent".into()]);
        let fp = fingerprint(&selected);
        let r = visitor_update_event(&row, selected.clone(), &fp).unwrap();
        let v: Value = serde_json::from_slice(&r.value).unwrap();
        assert_eq!(v["event"], VISITOR_UPDATE_KIND);
        assert_eq!(v["timestamp"], 1764000005000i64);
        assert_eq!(v["accountId"], "a1");
        assert_eq!(v["properties"]["metadata"], selected);
        let again = visitor_update_event(&row, selected.clone(), &fp).unwrap();
        assert_eq!(again.value, r.value);
        row["metadata"]["auto"]["lastupdated"] = json!(1764000009000i64);
        let later: Value =
            serde_json::from_slice(&visitor_update_event(&row, selected, &fp).unwrap().value)
                .unwrap();
        assert_ne!(later["uniqueId"], v["uniqueId"]);
        let bad = visitor_update_event(&json!({"visitorId": "v3", "metadata": {}}), json!({}), &fp)
            .unwrap_err();
        assert_eq!(bad.reason, "missing_lastupdated");
        let (k, e) = catalog_entry(
            "feature",
            &json!({"id": "f1", "name": "Export", "appId": 7}),
        )
        .unwrap();
        assert_eq!(k, "feature:f1");
        assert_eq!(e["name"], "Export");
        assert!(catalog_entry("page", &json!({"id": "p"})).is_err());
    }

    #[test]
    fn ids_longer_than_a_key_are_refused() {
        let long = "v".repeat(MAX_ID_BYTES + 1);
        let e = row_id(&json!({"visitorId": long}), "visitorId").unwrap_err();
        assert_eq!(e.reason, "id_too_long");
        assert!(e.detail.len() < 200, "{}", e.detail);
        let ok = "v".repeat(MAX_ID_BYTES);
        assert_eq!(
            row_id(&json!({"visitorId": ok}), "visitorId")
                .unwrap()
                .len(),
            MAX_ID_BYTES
        );
        let e = catalog_entry("feature", &json!({"id": long, "name": "x"})).unwrap_err();
        assert_eq!(e.reason, "id_too_long");
    }
}
