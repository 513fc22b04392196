//! Synthetic Pendo webhook events for load and crash tests and the benchmarks: several
//! single-call kinds, realistic sizes (0.4-0.7 KB), unique ids, deterministic from the index.
//! Included by tests (`support::synthetic_pendo`) and benches (`#[path]`).

use serde_json::json;

/// Event `i`: (record key = visitor id, JSON bytes). Each maps to exactly one Segment call.
pub fn synthetic_event(i: usize) -> (String, Vec<u8>) {
    let visitor = format!("vis-{}", (i as u64).wrapping_mul(2_654_435_761) % 2_000);
    let ts = 1_764_330_000 + i as i64;
    let v = match i % 4 {
        0 => {
            json!({"event": "featureClicked", "visitorId": visitor, "accountId": "acct-1", "timestamp": ts,
            "uniqueId": format!("syn-{i}"), "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
            "app": {"id": -323232, "name": "acme-web", "platform": "web"},
            "subscription": {"id": 5550000000000001_i64, "name": "acme-web"},
            "properties": {"featureId": format!("ft_{}", i % 97), "featureName": "Export CSV button",
                "pageId": "pg_reports", "url": "https://app.acme.example/reports/rep-77", "language": "de-DE"}})
        }
        1 => {
            json!({"event": "pageLoaded", "visitorId": visitor, "accountId": "acct-2", "timestamp": ts,
            "uniqueId": format!("syn-{i}"), "app": {"id": -323232, "name": "acme-web", "platform": "web"},
            "properties": {"pageId": "pg_reports", "pageName": "Reports",
                "url": format!("https://app.acme.example/reports/{i}?tab=summary"), "title": "Weekly revenue – Reports",
                "referrer": "https://app.acme.example/home", "language": "en-US"}})
        }
        2 => {
            json!({"event": "guideDisplayed", "visitorId": visitor, "accountId": "acct-1", "timestamp": ts,
            "uniqueId": format!("syn-{i}"), "app": {"id": -323232, "name": "acme-web", "platform": "web"},
            "properties": {"guideId": "gd_onboard_01", "guideStepId": "st_01", "language": "en-US",
                "guideProperties": {"id": "gd_onboard_01", "name": "Welcome tour", "createdAt": 1731000000000_i64,
                    "steps": [{"id": "st_01", "type": "lightbox"}, {"id": "st_02", "type": "tooltip"}]}}})
        }
        _ => {
            json!({"event": "trackEventReceived", "visitorId": visitor, "accountId": "acct-3", "timestamp": ts,
            "uniqueId": format!("syn-{i}"), "app": {"id": -323232, "name": "acme-web", "platform": "web"},
            "properties": {"trackTypeName": "Report Exported", "trackTypeId": "tt_report_exported",
                "url": "https://app.acme.example/reports/rep-77", "language": "de-DE",
                "eventProperties": {"format": "csv", "rows": i, "scheduled": false,
                    "report": {"id": "rep-77", "name": "Weekly revenue"}}}})
        }
    };
    (visitor, serde_json::to_vec(&v).expect("json"))
}
