//! The reverse flow end to end, all three roles in one process against a real broker and the
//! Pendo-compatible test server: signed Segment webhook deliveries (every bundled fixture) ->
//! `segment-webhook` -> `transform-segment` -> `pendo-sink` -> Pendo bulk metadata writes. The
//! expected Pendo state is derived here from the fixtures (an audience trait or property per
//! event, later events of a user winning), independently of the mapper's code.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use pendo_segment::connectors::webhook::signature::{sign_hex, signed_part};
use serde_json::Value;
use support::pendo_server::{PendoServerConfig, PendoTestServer};
use support::*;

const SECRET: &str = "fixture-shared-secret";

type State = HashMap<(String, String, String), Value>;

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = fixtures_dir().join("segment");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// What Pendo must end up with: for each audience event, in delivery order, the audience's
/// boolean on the visitor (userId, no id mapping configured) or the account (group calls).
fn expected_state(bodies: &[Vec<u8>]) -> State {
    let mut want = State::new();
    for body in bodies {
        let events = match serde_json::from_slice::<Value>(body).unwrap() {
            Value::Array(a) => a,
            v => vec![v],
        };
        for e in events {
            let personas = &e["context"]["personas"];
            if personas["computation_class"] != "audience" {
                continue;
            }
            let key = e["properties"]["audience_key"]
                .as_str()
                .or(personas["computation_key"].as_str())
                .unwrap()
                .to_string();
            let (entity, id, value) = match e["type"].as_str().unwrap() {
                "identify" => ("visitor", &e["userId"], &e["traits"][&key]),
                "track" => ("visitor", &e["userId"], &e["properties"][&key]),
                "group" => ("account", &e["groupId"], &e["traits"][&key]),
                other => panic!("unexpected audience call {other}"),
            };
            want.insert(
                (
                    entity.to_string(),
                    id.as_str().unwrap().to_string(),
                    format!("segment_{key}"),
                ),
                value.clone(),
            );
        }
    }
    want
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_audience_fixtures_end_as_exactly_the_expected_pendo_metadata() {
    require_kafka();
    let fixtures = fixtures();
    let bodies: Vec<Vec<u8>> = fixtures.iter().map(|(_, b)| b.clone()).collect();
    let want = expected_state(&bodies);
    assert!(
        want.len() >= 4,
        "the fixtures hold audience events: {want:?}"
    );

    let mut server_config = PendoServerConfig::default();
    for (entity, _, field) in want.keys() {
        server_config = server_config.with_fields(entity, "custom", &[field.as_str()]);
    }
    let server = PendoTestServer::start(server_config).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("rev");
    let port = free_port();
    let (config, ops) = role_config(
        dir.path(),
        &prefix,
        &format!(
            "[segment_webhook]\nlisten = \"127.0.0.1:{port}\"\nsecrets = [\"{SECRET}\"]\n\
             [pendo]\nregion = \"us\"\nbase_url = \"{}\"\nintegration_key = \"{}\"\n\
             [pendo_sink]\nlinger_ms = 200\nbackoff_initial_ms = 50\nbackoff_max_ms = 1000\n",
            server.url(),
            server.integration_key()
        ),
    );
    apply_topics(&config);
    let mut role = RoleProcess::start(
        &config,
        &[
            "run",
            "--role",
            "segment-webhook",
            "--role",
            "transform-segment",
            "--role",
            "pendo-sink",
        ],
        ops,
        dir.path().join("roles.log"),
    );
    role.wait_ready(Duration::from_secs(60)).await;

    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/webhooks/segment");
    for (name, body) in &fixtures {
        let signature = sign_hex(SECRET.as_bytes(), signed_part(body));
        let status = http
            .post(&url)
            .header("content-type", "application/json")
            .header("x-signature", signature)
            .body(body.clone())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 200, "{name}");
    }

    let reached = server
        .wait_for(Duration::from_secs(60), |s| {
            let st = s.state();
            want.iter().all(|(k, v)| st.get(k) == Some(v))
        })
        .await;
    assert!(
        reached,
        "Pendo state {:?}, wanted {want:?}\n{}",
        server.state(),
        role.logs()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        server.state(),
        want,
        "exactly the expected fields and values"
    );
    let dlq = read_committed(
        &format!("{prefix}.dlq.pendo-sink"),
        0,
        Duration::from_secs(3),
    );
    assert!(dlq.is_empty(), "no Pendo write refused");
    println!(
        "{} fixtures -> {} Pendo fields in {} write requests",
        fixtures.len(),
        want.len(),
        server.write_requests()
    );
    role.sigterm();
    assert!(
        role.wait_exit(Duration::from_secs(30)).await.success(),
        "{}",
        role.logs()
    );
}

/// One Engage audience track event.
fn audience_event(i: usize, users: usize) -> Value {
    let user = format!("user-{}", i % users);
    let key = format!("aud_{}", (i / users) % 3);
    let member = (i / (3 * users)).is_multiple_of(2);
    serde_json::json!({
        "type": "track",
        "event": if member { "Audience Entered" } else { "Audience Exited" },
        "messageId": format!("personas_chaos_{i:06}"),
        "userId": user,
        "properties": {"audience_key": key, key.clone(): member},
        "context": {"personas": {"computation_class": "audience", "computation_key": key,
                                 "computation_id": "aud_chaos", "space_id": "spa_1", "namespace": "spa_1"}},
        "timestamp": format!("2026-11-27T10:{:02}:{:02}.000Z", (i / 60) % 60, i % 60),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_each_role_mid_stream_still_ends_in_the_exact_state() {
    require_kafka();
    const EVENTS: usize = 6_000;
    const USERS: usize = 400;
    let events: Vec<Value> = (0..EVENTS).map(|i| audience_event(i, USERS)).collect();
    let bodies: Vec<Vec<u8>> = events
        .chunks(100)
        .map(|c| serde_json::to_vec(c).unwrap())
        .collect();
    let want = expected_state(&bodies);
    assert_eq!(want.len(), USERS * 3);

    let server = PendoTestServer::start(PendoServerConfig::default().with_fields(
        "visitor",
        "custom",
        &["segment_aud_0", "segment_aud_1", "segment_aud_2"],
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("revk");
    let port = free_port();
    let extra = format!(
        "[segment_webhook]\nlisten = \"127.0.0.1:{port}\"\nsecrets = [\"{SECRET}\"]\n\
         [pendo]\nregion = \"us\"\nbase_url = \"{}\"\nintegration_key = \"{}\"\n\
         [pendo_sink]\nlinger_ms = 100\nmax_batch_entities = 50\nbackoff_initial_ms = 50\nbackoff_max_ms = 1000\n",
        server.url(),
        server.integration_key()
    );
    // Each process gets the same settings and its own ops port (the file is read at start).
    let start_role = |role: &str, n: usize| role_process(dir.path(), &prefix, &extra, role, n);
    let (config, _) = role_config(dir.path(), &prefix, &extra);
    apply_topics(&config);
    let mut hook = start_role("segment-webhook", 0);
    hook.wait_ready(Duration::from_secs(60)).await;
    let mut transform = start_role("transform-segment", 0);
    let mut sink = start_role("pendo-sink", 0);

    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/webhooks/segment");
    let mut kills = 0;
    for (n, body) in bodies.iter().enumerate() {
        // Like Segment, retry a delivery until it is answered 2xx (the webhook may be down).
        let mut attempts = 0;
        loop {
            let answer = http
                .post(&url)
                .header("content-type", "application/json")
                .header(
                    "x-signature",
                    sign_hex(SECRET.as_bytes(), signed_part(body)),
                )
                .body(body.clone())
                .send()
                .await;
            if answer.as_ref().is_ok_and(|r| r.status().as_u16() == 200) {
                break;
            }
            attempts += 1;
            assert!(attempts < 100, "delivery {n} never accepted: {answer:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if n == 30 {
            // The webhook dies; the next delivery is retried until the restarted one answers.
            hook.kill9();
            kills += 1;
            hook = start_role("segment-webhook", n);
        }
        // Kill and restart the transformer and the sink at different moments mid-stream.
        if n == 15 || n == 40 {
            transform.kill9();
            kills += 1;
            transform = start_role("transform-segment", n);
        }
        if n == 25 || n == 50 {
            sink.kill9();
            kills += 1;
            sink = start_role("pendo-sink", n);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reached = server
        .wait_for(Duration::from_secs(120), |s| {
            let st = s.state();
            want.iter().all(|(k, v)| st.get(k) == Some(v))
        })
        .await;
    assert!(
        reached,
        "{} of {} fields right\n{}\n{}",
        {
            let st = server.state();
            want.iter().filter(|(k, v)| st.get(*k) == Some(*v)).count()
        },
        want.len(),
        transform.logs(),
        sink.logs()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(server.state(), want, "exactly the expected final state");
    println!(
        "{EVENTS} audience events, {kills} SIGKILLs: {} fields exact, {} write requests",
        want.len(),
        server.write_requests()
    );
    for mut role in [transform, sink, hook] {
        role.sigterm();
        assert!(role.wait_exit(Duration::from_secs(30)).await.success());
    }
}

/// An audience membership event for `field_mode = "audience_list"`: a track `Audience
/// Entered`/`Exited` for a visitor, or a group call with the audience trait for an account.
fn list_event(n: usize, entity: &str, id: &str, key: &str, member: bool) -> Value {
    let personas = serde_json::json!({"computation_class": "audience", "computation_key": key,
        "computation_id": format!("aud_{key}"), "space_id": "spa_1", "namespace": "spa_1"});
    let timestamp = format!("2026-11-28T09:00:{n:02}.000Z");
    match entity {
        "visitor" => serde_json::json!({
            "type": "track",
            "event": if member { "Audience Entered" } else { "Audience Exited" },
            "messageId": format!("personas_list_{n}"),
            "userId": id,
            "properties": {"audience_key": key, key: member},
            "context": {"personas": personas},
            "timestamp": timestamp,
        }),
        _ => serde_json::json!({
            "type": "group",
            "messageId": format!("personas_list_{n}"),
            "userId": "someone",
            "groupId": id,
            "traits": {key: member},
            "context": {"personas": personas},
            "timestamp": timestamp,
        }),
    }
}

/// `field_mode = "audience_list"`, real processes: a visitor enters a and b, exits a, enters c,
/// an account enters x (several webhook requests, each its own batch); Pendo ends with the
/// visitor's list ["b","c"] and the account's ["x"], and no per-audience boolean. The sink is
/// SIGKILLed and restarted, one more exit (b) ends as ["c"]: the membership survived the
/// restart in `state.pendo-audience-lists`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audience_list_mode_keeps_each_entitys_current_list_across_a_sink_restart() {
    require_kafka();
    const VISITOR: &str = "user-list-1";
    const ACCOUNT: &str = "acct-list-1";
    const FIELD: &str = "segment_audiences";
    let server = PendoTestServer::start(
        PendoServerConfig::default()
            .with_fields("visitor", "custom", &[FIELD])
            .with_fields("account", "custom", &[FIELD]),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("revl");
    let port = free_port();
    let extra = format!(
        "[kafka.consumer_properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n\
         [segment_webhook]\nlisten = \"127.0.0.1:{port}\"\nsecrets = [\"{SECRET}\"]\n\
         [transform_segment]\nfield_mode = \"audience_list\"\naudience_list_field = \"{FIELD}\"\n\
         [pendo]\nregion = \"us\"\nbase_url = \"{}\"\nintegration_key = \"{}\"\n\
         [pendo_sink]\nlinger_ms = 100\nbackoff_initial_ms = 50\nbackoff_max_ms = 1000\n",
        server.url(),
        server.integration_key()
    );
    let start_role = |role: &str, n: usize| role_process(dir.path(), &prefix, &extra, role, n);
    let (config, _) = role_config(dir.path(), &prefix, &extra);
    apply_topics(&config);
    let mut hook = start_role("segment-webhook", 0);
    hook.wait_ready(Duration::from_secs(60)).await;
    let mut transform = start_role("transform-segment", 0);
    transform.wait_ready(Duration::from_secs(60)).await;
    let mut sink = start_role("pendo-sink", 0);
    sink.wait_ready(Duration::from_secs(60)).await;

    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/webhooks/segment");
    let deliver = |events: Vec<Value>| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            // One event alone, several as an Actions batch (a JSON array).
            let body = if events.len() == 1 {
                serde_json::to_vec(&events[0]).unwrap()
            } else {
                serde_json::to_vec(&events).unwrap()
            };
            let status = http
                .post(&url)
                .header("content-type", "application/json")
                .header(
                    "x-signature",
                    sign_hex(SECRET.as_bytes(), signed_part(&body)),
                )
                .body(body)
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status.as_u16(), 200);
        }
    };
    let list_of = |s: &PendoTestServer, entity: &str, id: &str| s.value(entity, id, FIELD);
    let expect = |entity: &'static str, id: &'static str, keys: &'static [&'static str]| {
        move |s: &PendoTestServer| list_of(s, entity, id) == Some(serde_json::json!(keys))
    };

    // 1. Enters a and b (one batched request).
    deliver(vec![
        list_event(1, "visitor", VISITOR, "a", true),
        list_event(2, "visitor", VISITOR, "b", true),
    ])
    .await;
    assert!(
        server
            .wait_for(
                Duration::from_secs(60),
                expect("visitor", VISITOR, &["a", "b"])
            )
            .await,
        "visitor list {:?}\n{}\n{}",
        list_of(&server, "visitor", VISITOR),
        transform.logs(),
        sink.logs()
    );
    // 2. Exits a; 3. enters c, and an account enters x.
    deliver(vec![list_event(3, "visitor", VISITOR, "a", false)]).await;
    deliver(vec![
        list_event(4, "visitor", VISITOR, "c", true),
        list_event(5, "account", ACCOUNT, "x", true),
    ])
    .await;
    let reached = server
        .wait_for(Duration::from_secs(60), |s| {
            expect("visitor", VISITOR, &["b", "c"])(s) && expect("account", ACCOUNT, &["x"])(s)
        })
        .await;
    assert!(reached, "state {:?}\n{}", server.state(), sink.logs());
    // Only the list field is written: no per-audience boolean.
    let mut fields: Vec<(String, String, String)> = server.state().into_keys().collect();
    fields.sort();
    assert_eq!(
        fields,
        vec![
            ("account".into(), ACCOUNT.into(), FIELD.into()),
            ("visitor".into(), VISITOR.into(), FIELD.into()),
        ]
    );

    // 4. SIGKILL the sink once it committed past every update (so the restarted sink cannot
    // rebuild the lists by replaying them: it must read the state topic), restart it, one more
    // exit.
    let updates = read_committed(
        &format!("{prefix}.canonical.pendo-updates"),
        5,
        Duration::from_secs(5),
    );
    assert_eq!(updates.len(), 5, "one update per audience event");
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for u in &updates {
        use rdkafka::Message;
        let end = ends.entry(u.partition()).or_default();
        *end = (*end).max(u.offset() + 1);
    }
    let group = format!("{prefix}.pendo-sink");
    let input = format!("{prefix}.canonical.pendo-updates");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let committed = committed_offsets(&group, &input, 3);
        if ends
            .iter()
            .all(|(p, end)| committed.get(p).is_some_and(|c| c >= end))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sink never committed past {ends:?}: {committed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sink.kill9();
    sink = start_role("pendo-sink", 1);
    deliver(vec![list_event(6, "visitor", VISITOR, "b", false)]).await;
    assert!(
        server
            .wait_for(Duration::from_secs(90), expect("visitor", VISITOR, &["c"]))
            .await,
        "visitor list {:?}\n{}",
        list_of(&server, "visitor", VISITOR),
        sink.logs()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        list_of(&server, "visitor", VISITOR),
        Some(serde_json::json!(["c"]))
    );
    assert_eq!(
        list_of(&server, "account", ACCOUNT),
        Some(serde_json::json!(["x"]))
    );
    // The durable state holds the same lists, keyed visitor:<id> / account:<id>.
    let state = read_committed(
        &format!("{prefix}.state.pendo-audience-lists"),
        100,
        Duration::from_secs(3),
    );
    let mut last: HashMap<String, Value> = HashMap::new();
    for r in &state {
        use rdkafka::Message;
        last.insert(
            String::from_utf8(r.key().unwrap().to_vec()).unwrap(),
            serde_json::from_slice(r.payload().unwrap()).unwrap(),
        );
    }
    assert_eq!(
        last.get(&format!("visitor:{VISITOR}")),
        Some(&serde_json::json!({FIELD: ["c"]}))
    );
    assert_eq!(
        last.get(&format!("account:{ACCOUNT}")),
        Some(&serde_json::json!({FIELD: ["x"]}))
    );
    for mut role in [transform, sink, hook] {
        role.sigterm();
        assert!(role.wait_exit(Duration::from_secs(30)).await.success());
    }
}

/// `field_mode = "audience_list"` under SIGKILLs: 2,400 entries and exits of 300 visitors in 3
/// audiences, the sink killed twice mid-stream (records replayed over state that may already
/// hold them): every visitor's list ends exactly as its events in order say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audience_lists_converge_after_sink_sigkills_mid_stream() {
    require_kafka();
    const USERS: usize = 300;
    const EVENTS: usize = 2_400;
    const FIELD: &str = "segment_audiences";
    // Event i: user i % USERS, audience (i / USERS) % 3, entering unless a pseudo-random
    // quarter of the events exits.
    let event = |i: usize| {
        let user = format!("user-l{}", i % USERS);
        let key = format!("aud_{}", (i / USERS + i % 7) % 3);
        let member = !(i * 7919 + 13).is_multiple_of(4);
        (user, key, member)
    };
    let mut want: HashMap<String, std::collections::BTreeSet<String>> = HashMap::new();
    for i in 0..EVENTS {
        let (user, key, member) = event(i);
        let keys = want.entry(user).or_default();
        if member {
            keys.insert(key);
        } else {
            keys.remove(&key);
        }
    }
    let server = PendoTestServer::start(PendoServerConfig::default().with_fields(
        "visitor",
        "custom",
        &[FIELD],
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("revlk");
    let extra = format!(
        "[kafka.consumer_properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n\
         [transform_segment]\nfield_mode = \"audience_list\"\n\
         [pendo]\nregion = \"us\"\nbase_url = \"{}\"\nintegration_key = \"{}\"\n\
         [pendo_sink]\nlinger_ms = 100\nmax_batch_entities = 40\nbackoff_initial_ms = 50\nbackoff_max_ms = 1000\n",
        server.url(),
        server.integration_key()
    );
    let start_role = |role: &str, n: usize| role_process(dir.path(), &prefix, &extra, role, n);
    let (config, _) = role_config(dir.path(), &prefix, &extra);
    apply_topics(&config);
    let mut transform = start_role("transform-segment", 0);
    transform.wait_ready(Duration::from_secs(60)).await;
    let mut sink = start_role("pendo-sink", 0);
    sink.wait_ready(Duration::from_secs(60)).await;
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let raw = format!("{prefix}.segment.raw.webhook");
    let group = format!("{prefix}.pendo-sink");
    let input = format!("{prefix}.canonical.pendo-updates");
    let (mut committed_at_kill, mut kills_after) = (0i64, Vec::new());
    for (chunk, start) in (0..EVENTS).step_by(200).enumerate() {
        let records: Vec<(Option<String>, Vec<u8>)> = (start..start + 200)
            .map(|i| {
                let (user, key, member) = event(i);
                let mut e = list_event(i % 60, "visitor", &user, &key, member);
                e["messageId"] = Value::String(format!("personas_listk_{i}"));
                (Some(user), serde_json::to_vec(&e).unwrap())
            })
            .collect();
        support::produce::produce_all(&producer, &raw, records).await;
        if chunk == 3 || chunk == 8 {
            // Kill mid-stream once the sink committed past some updates since the last kill:
            // the restarted sink must take the lists of those from the state topic (a replay
            // from the start would hide a lost state), and replays whatever was not committed.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let done: i64 = committed_offsets(&group, &input, 3).values().sum();
                if done > committed_at_kill {
                    committed_at_kill = done;
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the sink commits nothing\n{}",
                    sink.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            sink.kill9();
            kills_after.push(committed_at_kill);
            sink = start_role("pendo-sink", chunk);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let want_json: HashMap<String, Value> = want
        .iter()
        .map(|(u, keys)| (u.clone(), serde_json::json!(keys)))
        .collect();
    let right = |s: &PendoTestServer| {
        want_json
            .iter()
            .filter(|(u, keys)| s.value("visitor", u, FIELD).as_ref() == Some(*keys))
            .count()
    };
    let reached = server
        .wait_for(Duration::from_secs(120), |s| right(s) == USERS)
        .await;
    assert!(
        reached,
        "{} of {USERS} lists right\n{}\n{}",
        right(&server),
        transform.logs(),
        sink.logs()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(right(&server), USERS, "nothing late changes a list");
    println!(
        "audience lists: {EVENTS} deltas of {USERS} visitors, 2 sink SIGKILLs (after committed offsets summing to {kills_after:?}): every list exact, {} write requests",
        server.write_requests()
    );
    for mut role in [transform, sink] {
        role.sigterm();
        assert!(role.wait_exit(Duration::from_secs(30)).await.success());
    }
}
