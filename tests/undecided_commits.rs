//! How the webhook appender learns the outcome of a commit it could not answer in time: a
//! `read_committed` read at one record's position (`pendo_segment::kafka::undecided::committed_at`)
//! must tell a committed transaction from an aborted one, and must not guess while the
//! partition's last stable offset has not passed the record (a transaction still open).

mod support;

use std::time::Duration;

use pendo_segment::kafka::undecided::{RecordPosition, committed_at};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use support::*;

fn transactional_producer(id: &str) -> FutureProducer {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("transactional.id", id)
        .create()
        .expect("producer");
    p.init_transactions(Duration::from_secs(30))
        .expect("init_transactions");
    p
}

async fn send(p: &FutureProducer, topic: &str, value: &str) -> RecordPosition {
    let delivery = p
        .send(
            FutureRecord::<(), str>::to(topic)
                .partition(0)
                .payload(value),
            Duration::from_secs(30),
        )
        .await
        .expect("delivered");
    RecordPosition {
        topic: topic.to_string(),
        partition: delivery.partition,
        offset: delivery.offset,
    }
}

fn reader() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap())
        .set("group.id", unique("undecided-reader"));
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn a_committed_read_tells_committed_from_aborted_and_waits_for_open_transactions() {
    require_kafka();
    let topic = unique("undecided");
    create_topic(&topic, 1).await;
    let a = transactional_producer(&unique("undecided-a"));
    let b = transactional_producer(&unique("undecided-b"));

    a.begin_transaction().unwrap();
    let committed = send(&a, &topic, "committed").await;
    a.commit_transaction(Duration::from_secs(30)).unwrap();

    a.begin_transaction().unwrap();
    let aborted = send(&a, &topic, "aborted").await;
    a.abort_transaction(Duration::from_secs(30)).unwrap();

    // An open transaction of another producer after the aborted one: the last stable offset
    // stops at its first record, so the aborted record is passed but the open one is not.
    b.begin_transaction().unwrap();
    let open = send(&b, &topic, "open").await;

    let probe = |p: RecordPosition, secs: u64| {
        let r = reader();
        tokio::task::spawn_blocking(move || committed_at(&r, &p, Duration::from_secs(secs)))
    };
    assert_eq!(
        probe(committed.clone(), 30).await.unwrap().unwrap(),
        Some(true)
    );
    assert_eq!(
        probe(aborted.clone(), 30).await.unwrap().unwrap(),
        Some(false),
        "aborted, with another transaction open behind it"
    );
    assert_eq!(
        probe(open.clone(), 3).await.unwrap().unwrap(),
        None,
        "a record of an open transaction is neither committed nor aborted yet"
    );

    b.commit_transaction(Duration::from_secs(30)).unwrap();
    assert_eq!(probe(open, 30).await.unwrap().unwrap(), Some(true));
    // Nothing after it: committed reading ends at the partition's end.
    a.begin_transaction().unwrap();
    let last = send(&a, &topic, "aborted at the end").await;
    a.abort_transaction(Duration::from_secs(30)).unwrap();
    assert_eq!(probe(last, 30).await.unwrap().unwrap(), Some(false));
    assert_eq!(probe(aborted, 30).await.unwrap().unwrap(), Some(false));
}

/// The proxy listens on one fixed port: one test at a time.
static PROXY_PORT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A `pendo-webhook` (1 s ack deadline) whose every Kafka request crosses the proxy's address;
/// its topics are created directly on the broker.
fn webhook_behind_proxy(dir: &std::path::Path, prefix: &str, port: u16) -> RoleProcess {
    let (config, ops) = role_config(
        dir,
        prefix,
        &format!(
            "[pendo_webhook]\nlisten = \"127.0.0.1:{port}\"\nsecrets = [\"undecided-commit-test-secret\"]\n\
             ack_timeout_ms = 1000\nretry_after_seconds = 1\n"
        ),
    );
    apply_topics(&config);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("bootstrap_servers = \"{}\"", bootstrap()),
        &format!(
            "bootstrap_servers = \"{}\"",
            kafka_proxy::KafkaProxy::addresses().0
        ),
    );
    std::fs::write(&config, text).unwrap();
    RoleProcess::start(
        &config,
        &["run", "--role", "pendo-webhook"],
        ops,
        dir.join("role.log"),
    )
}

/// A webhook started while Kafka is unreachable becomes ready once Kafka answers, without a
/// request: a load balancer sends none to a role that is not ready. (Its first attempts give
/// up within the 1 s ack deadline; the worker keeps initialising in the background.)
#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_started_before_kafka_is_reachable_becomes_ready_without_a_request() {
    require_kafka();
    let _port = PROXY_PORT.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("undecided-ready");
    let mut role = webhook_behind_proxy(dir.path(), &prefix, free_port());
    // Nothing listens on the proxy's address yet: Kafka is unreachable for the role.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ready = reqwest::get(format!("{}/readyz", role.ops))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    assert_ne!(ready, 200, "ready while Kafka is unreachable");
    let _proxy = kafka_proxy::KafkaProxy::start().await;
    role.wait_ready(Duration::from_secs(60)).await;
    role.sigterm();
    assert!(role.wait_exit(Duration::from_secs(30)).await.success());
}

/// The webhook's view: a commit whose answer never comes (the proxy withholds it, or drops the
/// commit itself) is answered 503 with its outcome unknown; the sender's retries are held until
/// the role has learnt the outcome, then answered without storing anything twice or losing
/// anything: committed -> accepted without writing again; aborted -> written.
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_of_a_delivery_whose_commit_went_undecided_is_stored_exactly_once() {
    use kafka_proxy::{EndTxnFault, KafkaProxy};
    use rdkafka::Message;
    use std::collections::HashMap;
    use std::time::Instant;

    require_kafka();
    let _port = PROXY_PORT.lock().await;
    let proxy = KafkaProxy::start().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("undecided-webhook");
    let port = free_port();
    let mut role = webhook_behind_proxy(dir.path(), &prefix, port);
    role.wait_ready(Duration::from_secs(60)).await;
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/webhooks/pendo");
    let post = |body: String| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            http.post(&url)
                .header("authorization", "Bearer undecided-commit-test-secret")
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    let delivery = |name: &str| {
        let events: Vec<String> = (0..3)
            .map(|i| {
                format!(
                    "{{\"event\":\"featureClicked\",\"visitorId\":\"v-{i}\",\"accountId\":\"a-1\",\
                     \"uniqueId\":\"{name}-{i}\",\"timestamp\":1764330099,\"properties\":{{}}}}"
                )
            })
            .collect();
        format!("[{}]", events.join(","))
    };

    // A normal delivery first: the proxy forwards what it is not armed for.
    assert_eq!(post(delivery("plain")).await, 200, "{}", role.logs());
    let mut retries = Vec::new();
    for (n, (fault, name)) in [
        (EndTxnFault::WithholdAnswer, "withheld"),
        (EndTxnFault::Drop, "dropped"),
    ]
    .into_iter()
    .enumerate()
    {
        proxy.arm(fault);
        let body = delivery(name);
        let started = Instant::now();
        let first = post(body.clone()).await;
        assert_eq!(
            first,
            503,
            "{name}: a commit whose answer never came is not acknowledged; role log:\n{}",
            role.logs()
        );
        assert_eq!(proxy.applied(), n + 1, "{name}: the fault was applied");
        // Retried as a sender does, until accepted.
        let mut attempts = 1;
        loop {
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "{name}: retry never accepted; role log:\n{}",
                role.logs()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
            attempts += 1;
            match post(body.clone()).await {
                200 => break,
                503 | 0 => {}
                other => panic!("{name}: unexpected status {other}"),
            }
        }
        retries.push((name, attempts, started.elapsed()));
    }
    assert_eq!(post(delivery("after")).await, 200);

    let topic = format!("{prefix}.pendo.raw.webhook");
    let records = read_committed(&topic, 12, Duration::from_secs(30));
    let mut per_event: HashMap<String, usize> = HashMap::new();
    for r in &records {
        let v: serde_json::Value = serde_json::from_slice(r.payload().unwrap()).unwrap();
        *per_event
            .entry(v["uniqueId"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let metrics = role.metrics().await;
    let value = |needle: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    println!(
        "RESULT: retries until accepted (attempts, time from the first attempt): {retries:?}; \
         stored {} records for 12 events",
        records.len()
    );
    let expected: HashMap<String, usize> = ["plain", "withheld", "dropped", "after"]
        .iter()
        .flat_map(|n| (0..3).map(move |i| (format!("{n}-{i}"), 1)))
        .collect();
    assert_eq!(per_event, expected, "every event stored exactly once");
    assert_eq!(
        value("pendo_segment_transactions_total{result=\"unknown\""),
        2.0
    );
    assert_eq!(
        value("pendo_segment_undecided_transactions_total{outcome=\"committed\""),
        1.0,
        "the withheld answer's commit was learnt as committed"
    );
    assert_eq!(
        value("pendo_segment_undecided_transactions_total{outcome=\"aborted\""),
        1.0,
        "the dropped commit was learnt as aborted"
    );
    assert!(
        value("pendo_segment_appender_jobs_total{result=\"already_committed\"") >= 1.0,
        "the committed delivery's retry was answered without writing it again"
    );
    role.sigterm();
    assert!(role.wait_exit(Duration::from_secs(30)).await.success());
}
