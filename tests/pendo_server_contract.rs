//! The Pendo-compatible test server's read contract (no Kafka): aggregation checks and
//! operators, the bounded-result guard, catalogue reads, read faults and early-request
//! detection. Poller tests rely on these semantics.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::pendo_server::{
    PendoFault, PendoFaultPlan, PendoServerConfig, PendoTestServer, account_row, visitor_row,
};

const DAY: i64 = 86_400_000;
const T0: i64 = 1_764_000_000_000;

struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Client {
    fn new(server: &PendoTestServer) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: server.url(),
            key: server.integration_key(),
        }
    }

    async fn raw(&self, key: &str, content_type: &str, body: String) -> (u16, String) {
        let r = self
            .http
            .post(format!("{}/api/v1/aggregation", self.base))
            .header("x-pendo-integration-key", key)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Posts `pipeline`; returns (status, text).
    async fn agg(&self, pipeline: Value) -> (u16, String) {
        let body = json!({"response": {"mimeType": "application/json"},
                          "request": {"pipeline": pipeline}});
        self.raw(&self.key, "application/json", body.to_string())
            .await
    }

    /// Posts `pipeline`, expects 200, returns the rows.
    async fn rows(&self, pipeline: Value) -> Vec<Value> {
        let (status, text) = self.agg(pipeline).await;
        assert_eq!(status, 200, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        v["results"].as_array().unwrap().clone()
    }

    async fn expect_400(&self, pipeline: Value, reason: &str) {
        let (status, text) = self.agg(pipeline).await;
        assert_eq!(status, 400, "{text}");
        assert!(text.contains(reason), "{text:?} should contain {reason:?}");
    }

    async fn catalog(&self, kind: &str, key: &str) -> reqwest::Response {
        self.http
            .get(format!("{}/api/v1/{kind}", self.base))
            .header("x-pendo-integration-key", key)
            .send()
            .await
            .unwrap()
    }
}

fn ids(rows: &[Value], key: &str) -> Vec<String> {
    rows.iter()
        .map(|r| r[key].as_str().unwrap().to_string())
        .collect()
}

/// 100 visitors `v-0000`..`v-0099` inserted in reverse order, over accounts `a-0`..`a-4`.
fn visitors() -> Vec<Value> {
    (0..100)
        .rev()
        .map(|i| {
            visitor_row(
                &format!("v-{i:04}"),
                &format!("a-{}", i % 5),
                T0 + i * 1000,
                json!({"plan": if i % 2 == 0 { "pro" } else { "free" }}),
                json!({"score": i % 10}),
            )
        })
        .collect()
}

#[tokio::test]
async fn checks_auth_content_type_and_shape() {
    let server = PendoTestServer::start(PendoServerConfig::default()).await;
    let c = Client::new(&server);
    let ok = json!({"response": {"mimeType": "application/json"},
                    "request": {"pipeline": [{"source": {"accounts": null}}]}})
    .to_string();

    assert_eq!(c.raw("wrong", "application/json", ok.clone()).await.0, 401);
    assert_eq!(c.raw(&c.key, "text/plain", ok.clone()).await.0, 415);
    assert_eq!(c.raw(&c.key, "application/json", "{".into()).await.0, 400);
    let (s, t) = c
        .raw(
            &c.key,
            "application/json",
            json!({"request": {"pipeline": [{"source": {"accounts": null}}]}}).to_string(),
        )
        .await;
    assert_eq!(s, 400);
    assert!(t.contains("mimeType"), "{t}");
    assert_eq!(c.raw(&c.key, "application/json", ok).await.0, 200);

    c.expect_400(json!([]), "non-empty").await;
    c.expect_400(json!([{"filter": "x == 1"}]), "source").await;
    c.expect_400(
        json!([{"source": {"nosuch": null}}]),
        "unsupported source nosuch",
    )
    .await;
    c.expect_400(
        json!([{"source": {"featureEvents": null}}]),
        "needs a timeSeries",
    )
    .await;
    let ts = |period: &str, count: i64| {
        json!([{"source": {"pageEvents": null},
                "timeSeries": {"period": period, "first": T0, "count": count}}])
    };
    c.expect_400(ts("dayRange", 31), "at most 30 days").await;
    c.expect_400(ts("hourRange", 721), "at most 30 days").await;
    c.expect_400(ts("dayRange", 0), "count").await;
    c.expect_400(ts("weekRange", 1), "period").await;
    assert!(c.rows(ts("dayRange", 30)).await.is_empty());
    assert!(c.rows(ts("hourRange", 720)).await.is_empty());
    c.expect_400(
        json!([{"source": {"accounts": null}}, {"group": {"group": ["x"]}}]),
        "unsupported operator group",
    )
    .await;
    for bad in [
        "",
        "visitorId",
        "visitorId = \"a\"",
        "visitorId == v-1",
        "visitorId == \"unterminated",
        "visitorId == 1 &&",
        "visitorId == 1 || x == 2",
        ".a == 1",
        "a. == 1",
        "a == 1 b == 2",
    ] {
        c.expect_400(
            json!([{"source": {"visitors": null}}, {"filter": bad}]),
            "bad filter",
        )
        .await;
    }

    assert_eq!(server.unauthorized(), 1);
    let reads = server.read_requests();
    assert_eq!(reads.len(), server.read_request_count());
    assert_eq!(reads[0].status, 401);
    assert_eq!(reads[0].endpoint, "aggregation:accounts");
    assert_eq!(reads[1].status, 415);
    assert_eq!(reads[2].endpoint, "aggregation");
    assert!(reads[2].body.is_none());
    assert_eq!(reads[4].status, 200);
    assert_eq!(
        reads[4].body.as_ref().unwrap()["request"]["pipeline"][0],
        json!({"source": {"accounts": null}})
    );
    assert_eq!(server.write_requests(), 0);
}

#[tokio::test]
async fn filter_sort_limit_select_and_keyset_pagination() {
    let server = PendoTestServer::start(PendoServerConfig::default()).await;
    let c = Client::new(&server);
    server.set_visitors(visitors());
    server.set_accounts(vec![
        account_row("a-1", json!({"tier": "gold"}), json!({}), T0),
        account_row("a-2", json!({"tier": "silver"}), json!({}), T0 + DAY),
    ]);
    server.upsert_account(account_row(
        "a-1",
        json!({"tier": "platinum"}),
        json!({}),
        T0,
    ));
    server.upsert_account(account_row("a-3", json!({}), json!({"x": 1}), T0 + 2 * DAY));

    // Accounts: upsert replaced a-1 and appended a-3.
    let accounts = c.rows(json!([{"source": {"accounts": null}}])).await;
    assert_eq!(ids(&accounts, "accountId"), ["a-1", "a-2", "a-3"]);
    assert_eq!(accounts[0]["metadata"]["agent"]["tier"], "platinum");
    assert_eq!(accounts[1]["metadata"]["auto"]["firstvisit"], T0 + DAY);

    // Keyset pagination over visitors, pages of 25.
    let mut after = String::new();
    let mut seen = Vec::new();
    loop {
        let mut pipeline = vec![json!({"source": {"visitors": null}})];
        if !after.is_empty() {
            pipeline.push(json!({"filter": format!("visitorId > {}", json!(after))}));
        }
        pipeline.push(json!({"sort": ["visitorId"]}));
        pipeline.push(json!({"limit": 25}));
        let page = c.rows(Value::Array(pipeline)).await;
        if page.is_empty() {
            break;
        }
        after = page.last().unwrap()["visitorId"]
            .as_str()
            .unwrap()
            .to_string();
        seen.extend(ids(&page, "visitorId"));
    }
    let want: Vec<String> = (0..100).map(|i| format!("v-{i:04}")).collect();
    assert_eq!(seen, want);
    assert_eq!(server.read_request_count(), 1 + 5);
    assert_eq!(
        server
            .read_requests()
            .iter()
            .map(|r| r.rows)
            .collect::<Vec<_>>(),
        [3, 25, 25, 25, 25, 0]
    );

    // The brief's example: after v-0042.
    let page = c
        .rows(json!([{"source": {"visitors": null}},
                     {"filter": "visitorId > \"v-0042\""},
                     {"sort": ["visitorId"]}, {"limit": 3}]))
        .await;
    assert_eq!(ids(&page, "visitorId"), ["v-0043", "v-0044", "v-0045"]);

    // Conjunctions, numbers, dotted paths, string escapes, whitespace.
    let rows = c
        .rows(json!([{"source": {"visitors": null}},
                     {"filter": "metadata.agent.plan == \"pro\" &&\tmetadata.custom.score >= 6 && metadata.auto.firstvisit < 1764000050000"},
                     {"sort": ["-metadata.custom.score", "visitorId"]}]))
        .await;
    assert_eq!(
        ids(&rows, "visitorId"),
        [
            "v-0008", "v-0018", "v-0028", "v-0038", "v-0048", "v-0006", "v-0016", "v-0026",
            "v-0036", "v-0046"
        ]
    );
    let rows = c
        .rows(json!([{"source": {"visitors": null}},
                     {"filter": "metadata.auto.accountid != \"a-0\" && metadata.auto.firstvisit <= 1764000003000.0"}]))
        .await;
    assert_eq!(ids(&rows, "visitorId"), ["v-0003", "v-0002", "v-0001"]);
    // Missing field: false, even for !=.
    assert!(
        c.rows(json!([{"source": {"visitors": null}}, {"filter": "nosuch != 1"}]))
            .await
            .is_empty()
    );
    // Type mismatch: only != holds.
    assert_eq!(
        c.rows(json!([{"source": {"visitors": null}}, {"filter": "visitorId != 5"}]))
            .await
            .len(),
        100
    );
    assert!(
        c.rows(json!([{"source": {"visitors": null}}, {"filter": "visitorId > 5"}]))
            .await
            .is_empty()
    );
    server.upsert_visitor(visitor_row("q\"\\é", "a-9", T0, json!({}), json!({})));
    let rows = c
        .rows(json!([{"source": {"visitors": null}}, {"filter": "visitorId == \"q\\\"\\\\\\u00e9\""}]))
        .await;
    assert_eq!(ids(&rows, "visitorId"), ["q\"\\é"]);
    // Strings compare bytewise: "V" < "q" < "v".
    server.upsert_visitor(visitor_row("V-upper", "a-9", T0, json!({}), json!({})));
    let rows = c
        .rows(json!([{"source": {"visitors": null}}, {"sort": ["-visitorId"]}, {"limit": 1}]))
        .await;
    assert_eq!(ids(&rows, "visitorId"), ["v-0099"]);
    let rows = c
        .rows(json!([{"source": {"visitors": null}}, {"sort": ["visitorId"]}, {"limit": 2}]))
        .await;
    assert_eq!(ids(&rows, "visitorId"), ["V-upper", "q\"\\é"]);
    // Numbers compare numerically (9 < 10), not as text.
    let rows = c
        .rows(json!([{"source": {"visitors": null}},
                     {"filter": "metadata.custom.score >= 9 && visitorId < \"v-0020\""},
                     {"sort": ["metadata.auto.firstvisit"]}]))
        .await;
    assert_eq!(ids(&rows, "visitorId"), ["v-0009", "v-0019"]);

    // Select: out names from dotted paths, missing -> null.
    let rows = c
        .rows(json!([{"source": {"visitors": null}},
                     {"filter": "visitorId == \"v-0007\""},
                     {"select": {"id": "visitorId", "acct": "metadata.auto.accountid", "none": "metadata.nope"}}]))
        .await;
    assert_eq!(rows, [json!({"id": "v-0007", "acct": "a-2", "none": null})]);
    // Operators apply in order: sort on the selected name.
    let rows = c
        .rows(json!([{"source": {"visitors": null}},
                     {"select": {"id": "visitorId", "s": "metadata.custom.score"}},
                     {"filter": "s == 3"}, {"sort": ["-id"]}, {"limit": 2}]))
        .await;
    assert_eq!(
        rows,
        [
            json!({"id": "v-0093", "s": 3}),
            json!({"id": "v-0083", "s": 3})
        ]
    );
}

#[tokio::test]
async fn bounded_result_sets() {
    let server = PendoTestServer::start(PendoServerConfig::default().with_max_rows(40)).await;
    let c = Client::new(&server);
    server.set_visitors(visitors());
    let src = json!({"source": {"visitors": null}});

    c.expect_400(
        json!([src]),
        "result set too large: add a time window or limit",
    )
    .await;
    c.expect_400(json!([src, {"limit": 41}]), "result set too large")
        .await;
    assert_eq!(c.rows(json!([src, {"limit": 40}])).await.len(), 40);
    // A filter that narrows the set is enough.
    assert_eq!(
        c.rows(json!([src, {"filter": "visitorId >= \"v-0080\""}]))
            .await
            .len(),
        20
    );
    server.set_max_rows(1000);
    assert_eq!(c.rows(json!([src])).await.len(), 100);

    // Event rows: only those inside the time series span, which bounds the set.
    server.set_max_rows(3);
    let events: Vec<Value> = (0..10)
        .map(|d| json!({"visitorId": "v-1", "browserTime": T0 + d * DAY + 5, "guideId": "g"}))
        .collect();
    server.set_event_rows("guideEvents", events);
    let ts = |first: i64, count: i64| {
        json!([{"source": {"guideEvents": null},
                "timeSeries": {"period": "dayRange", "first": first, "count": count}}])
    };
    let rows = c.rows(ts(T0 + DAY, 3)).await;
    assert_eq!(
        rows.iter()
            .map(|r| r["browserTime"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [T0 + DAY + 5, T0 + 2 * DAY + 5, T0 + 3 * DAY + 5]
    );
    c.expect_400(ts(T0, 10), "result set too large").await;
    assert_eq!(c.rows(ts(T0 + 9 * DAY + 6, 1)).await.len(), 0);
}

#[tokio::test]
async fn catalogue_reads() {
    let server = PendoTestServer::start(PendoServerConfig::default()).await;
    let c = Client::new(&server);
    let features = vec![
        json!({"id": "f1", "name": "Export", "appId": 123, "kind": "Feature"}),
        json!({"id": "f2", "name": "Import", "appId": 123, "kind": "Feature"}),
    ];
    server.set_catalog("feature", features.clone());
    server.set_catalog(
        "page",
        vec![json!({"id": "p1", "name": "Home", "appId": 1, "kind": "Page"})],
    );

    let r = c.catalog("feature", &c.key).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Vec<Value>>().await.unwrap(), features);
    assert_eq!(
        c.catalog("page", &c.key)
            .await
            .json::<Vec<Value>>()
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        c.catalog("guide", &c.key)
            .await
            .json::<Vec<Value>>()
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        c.catalog("tracktype", &c.key)
            .await
            .json::<Vec<Value>>()
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(c.catalog("feature", "wrong").await.status(), 401);
    assert_eq!(c.catalog("nosuch", &c.key).await.status(), 404);

    let reads = server.read_requests();
    assert_eq!(
        reads
            .iter()
            .map(|r| (r.endpoint.as_str(), r.status, r.rows))
            .collect::<Vec<_>>(),
        [
            ("catalog:feature", 200, 2),
            ("catalog:page", 200, 1),
            ("catalog:guide", 200, 0),
            ("catalog:tracktype", 200, 0),
            ("catalog:feature", 401, 0),
        ]
    );
}

#[tokio::test]
async fn read_faults_and_early_requests() {
    let server = PendoTestServer::start(PendoServerConfig::default()).await;
    let c = Client::new(&server);
    server.set_accounts(vec![account_row("a-1", json!({}), json!({}), T0)]);
    server.set_read_faults(
        PendoFaultPlan::none()
            .nth(1, PendoFault::TooManyRequests { retry_after_s: 1 })
            .nth(3, PendoFault::Status(503))
            .nth(4, PendoFault::Conflict)
            .nth(5, PendoFault::Slow(Duration::from_millis(300))),
    );
    let accounts = json!([{"source": {"accounts": null}}]);

    let r = c.catalog("feature", &c.key).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    // Too early: counted, and answered normally (read 2 has no fault).
    assert_eq!(c.agg(accounts.clone()).await.0, 200);
    assert_eq!(server.early_read_requests(), 1);
    assert_eq!(server.early_requests(), 0, "writes are counted apart");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(c.agg(accounts.clone()).await.0, 503);
    assert_eq!(c.agg(accounts.clone()).await.0, 409);
    let started = std::time::Instant::now();
    assert_eq!(c.rows(accounts.clone()).await.len(), 1);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(server.early_read_requests(), 1);

    // A faulted request is counted even when it would have been refused.
    server.set_read_faults(PendoFaultPlan::none().nth(6, PendoFault::Status(500)));
    assert_eq!(c.catalog("feature", "wrong").await.status(), 500);
    assert_eq!(c.catalog("feature", "wrong").await.status(), 401);

    let statuses: Vec<u16> = server.read_requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 200, 503, 409, 200, 500, 401]);
    let reads = server.read_requests();
    assert!(reads[1].at - reads[0].at < Duration::from_secs(1));
    assert!(
        server
            .wait_for(Duration::from_secs(1), |s| s.read_request_count() == 7)
            .await
    );
}

#[tokio::test]
async fn write_and_read_fault_plans_are_separate() {
    let server = PendoTestServer::start(PendoServerConfig::default().with_fields(
        "visitor",
        "custom",
        &["x"],
    ))
    .await;
    let c = Client::new(&server);
    server.set_faults(
        PendoFaultPlan::none().nth(1, PendoFault::TooManyRequests { retry_after_s: 5 }),
    );
    server.set_read_faults(PendoFaultPlan::none().nth(2, PendoFault::Status(502)));
    let write = || {
        c.http
            .post(format!("{}/api/v1/metadata/visitor/custom/value", c.base))
            .header("x-pendo-integration-key", &c.key)
            .header("content-type", "application/json")
            .body(json!([{"visitorId": "v", "values": {"x": 1}}]).to_string())
            .send()
    };
    assert_eq!(write().await.unwrap().status(), 429);
    assert_eq!(c.agg(json!([{"source": {"accounts": null}}])).await.0, 200);
    assert_eq!(c.agg(json!([{"source": {"accounts": null}}])).await.0, 502);
    assert_eq!(write().await.unwrap().status(), 200);
    assert_eq!(server.early_requests(), 1);
    assert_eq!(server.early_read_requests(), 0);
    assert_eq!(server.write_requests(), 2);
    assert_eq!(server.read_request_count(), 2);
    assert_eq!(server.value("visitor", "v", "x"), Some(json!(1)));
}
