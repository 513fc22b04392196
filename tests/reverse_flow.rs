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
    let start_role = |role: &str, n: usize| {
        let (c, ops) = role_config(dir.path(), &prefix, &extra);
        RoleProcess::start(
            &c,
            &["run", "--role", role],
            ops,
            dir.path().join(format!("{role}-{n}.log")),
        )
    };
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
