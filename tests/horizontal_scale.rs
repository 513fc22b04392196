//! Horizontal scale: two instances of each consumer role of the forward path (`transform-pendo`,
//! `segment-sink`) in the same consumer groups, each its own process, share the partitions
//! evenly and together deliver every event exactly once to the Segment test server.

mod support;

use std::time::Duration;

use rdkafka::Message;
use rdkafka::producer::FutureProducer;
use support::produce::produce_all;
use support::segment_server::{SegmentServerConfig, SegmentTestServer};
use support::synthetic_pendo::synthetic_event;
use support::*;

const EVENTS: usize = 30_000;

/// The partitions a role process holds now, from its last `partitions assigned` log line.
fn assigned(p: &RoleProcess) -> usize {
    p.logs()
        .lines()
        .rev()
        .find(|l| l.contains("partitions assigned"))
        .map_or(0, |l| l.matches("\", ").count())
}

/// Partitions per instance once they are `[6, 6, 3, 3]` (each transformer 3 of each of its two
/// input topics, each sink 3), or what they are when `limit` passed.
async fn wait_for_shares(roles: &[RoleProcess], limit: Duration) -> Vec<usize> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let shares: Vec<usize> = roles.iter().map(assigned).collect();
        if shares == [6, 6, 3, 3] || std::time::Instant::now() >= deadline {
            return shares;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every instance's log without the per-transaction lines, for failure messages; the full logs
/// go to `SCALE_HISTORY_FILE` when it is set.
fn history(roles: &[RoleProcess]) -> String {
    if let Ok(path) = std::env::var("SCALE_HISTORY_FILE") {
        let full: String = roles.iter().map(|r| r.logs() + "\n=====\n").collect();
        std::fs::write(path, full).unwrap();
    }
    roles
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let logs = r.logs();
            let lines: Vec<&str> = logs
                .lines()
                .filter(|l| !l.contains("transaction committed") && !l.contains("Client stats"))
                .map(|l| l.get(..220).unwrap_or(l))
                .collect();
            format!("--- instance {i}\n{}\n", lines.join("\n"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_per_role_share_partitions_and_lose_nothing() {
    require_kafka();
    let server = SegmentTestServer::start(SegmentServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("scale");
    let mut extra = format!(
        "[segment]\nregion = \"us\"\nendpoint = \"{}\"\nwrite_key = \"{}\"\n\
         [segment_sink]\nlinger_ms = 100\n",
        server.url(),
        server.write_key()
    );
    // Diagnosing group membership: SCALE_RDKAFKA_DEBUG=cgrp puts librdkafka's group debug
    // log into every instance's log.
    if let Ok(debug) = std::env::var("SCALE_RDKAFKA_DEBUG") {
        extra.push_str(&format!(
            "[kafka.consumer_properties]\ndebug = \"{debug}\"\n"
        ));
    }
    // One process of `role`, its config and log in its own folder; six partitions per topic
    // (three per instance when two share them).
    let start = |role: &str, n: usize, apply: bool| {
        let sub = dir.path().join(format!("{role}-{n}"));
        std::fs::create_dir_all(&sub).unwrap();
        let (config, ops) = role_config(&sub, &prefix, &extra);
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace("partitions = 3", "partitions = 6");
        std::fs::write(&config, text).unwrap();
        if apply {
            apply_topics(&config);
        }
        RoleProcess::start(&config, &["run", "--role", role], ops, sub.join("role.log"))
    };
    let mut roles = Vec::new();
    for role in ["transform-pendo", "segment-sink"] {
        for n in 0..2 {
            roles.push(start(role, n, roles.is_empty()));
        }
    }
    for r in &mut roles {
        r.wait_ready(Duration::from_secs(90)).await;
    }
    // Ready means started, not yet in a settled group: wait until both groups are balanced
    // before producing, or the first member could process everything before its partner joins.
    let balanced = wait_for_shares(&roles, Duration::from_secs(90)).await;
    assert_eq!(
        balanced,
        [6, 6, 3, 3],
        "groups did not settle before the load\n{}",
        history(&roles)
    );

    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "10")
        .create()
        .unwrap();
    let records: Vec<_> = (0..EVENTS)
        .map(|i| {
            let (key, value) = synthetic_event(i);
            (Some(key), value)
        })
        .collect();
    produce_all(&producer, &format!("{prefix}.pendo.raw.webhook"), records).await;

    let arrived = server
        .wait_for_distinct(EVENTS, Duration::from_secs(240))
        .await;
    assert!(
        arrived,
        "{} of {EVENTS} distinct messageIds arrived",
        server.distinct_count()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(server.distinct_count(), EVENTS, "every event exactly once");
    println!(
        "duplicates delivered: {} (none expected without failures)",
        server.duplicates()
    );

    // Still balanced, and nobody died on the way (a transformer used to stop on a rebalance
    // that revoked everything it held, and its partner took over all partitions: issue #9).
    for r in &mut roles {
        assert!(
            r.exit_status().is_none(),
            "an instance died mid-run:\n{}",
            r.logs()
        );
    }
    let shares = wait_for_shares(&roles, Duration::from_secs(60)).await;
    println!("partitions per instance (transform, transform, sink, sink): {shares:?}");
    assert_eq!(
        shares,
        [6, 6, 3, 3],
        "partitions per instance (transform, transform, sink, sink)\n{}",
        history(&roles)
    );
    for r in &roles {
        let m = r.metrics().await;
        let processed: f64 = m
            .lines()
            .filter(|l| l.starts_with("pendo_segment_records_processed_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(
            processed > 0.0,
            "an instance processed nothing:\n{}",
            r.logs()
        );
    }

    // Scaling out and in under load: a third transformer joins, then leaves, three times. Each
    // eager rebalance revokes every partition of the busy members while their transactions are
    // open; they abort, re-read from their commits and carry on (a member that aborted while it
    // held nothing used to stop with `_INVALID_ARG` from an empty seek — issue #9).
    let second: Vec<_> = (EVENTS..2 * EVENTS)
        .map(|i| {
            let (key, value) = synthetic_event(i);
            (Some(key), value)
        })
        .collect();
    let topic = format!("{prefix}.pendo.raw.webhook");
    // Spread over ~20 s, so every join and leave lands while records flow.
    let load = tokio::spawn(async move {
        for chunk in second.chunks(EVENTS / 40) {
            produce_all(&producer, &topic, chunk.to_vec()).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    for cycle in 0..3 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let mut third = start("transform-pendo", 2 + cycle, false);
        third.wait_ready(Duration::from_secs(90)).await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        third.sigterm();
        assert!(
            third.wait_exit(Duration::from_secs(40)).await.success(),
            "the third transformer did not leave cleanly:\n{}",
            third.logs()
        );
    }
    load.await.unwrap();
    let arrived = server
        .wait_for_distinct(2 * EVENTS, Duration::from_secs(240))
        .await;
    assert!(
        arrived,
        "{} of {} distinct messageIds arrived\n{}",
        server.distinct_count(),
        2 * EVENTS,
        history(&roles)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        server.distinct_count(),
        2 * EVENTS,
        "every event exactly once"
    );
    for r in &mut roles {
        assert!(
            r.exit_status().is_none(),
            "an instance died in the rebalance under load:\n{}",
            r.logs()
        );
    }
    // Exactly once already in Kafka: the canonical topic holds each call once, whatever the
    // rebalances aborted (the sink may still deliver a call twice: at-least-once to Segment).
    let canonical = read_committed(
        &format!("{prefix}.canonical.segment-calls"),
        2 * EVENTS,
        Duration::from_secs(30),
    );
    if canonical.len() != 2 * EVENTS {
        let mut seen: std::collections::HashMap<&[u8], Vec<(i32, i64, i64)>> =
            std::collections::HashMap::new();
        for m in &canonical {
            let ts = m.timestamp().to_millis().unwrap_or(0);
            seen.entry(m.payload().unwrap_or_default())
                .or_default()
                .push((m.partition(), m.offset(), ts));
        }
        let twice: Vec<_> = seen.values().filter(|v| v.len() > 1).collect();
        panic!(
            "canonical.segment-calls holds {} records for {} calls; written more than once at (partition, offset, timestamp ms): {twice:?}\n{}",
            canonical.len(),
            2 * EVENTS,
            history(&roles)
        );
    }
    let aborted: usize = roles[..2]
        .iter()
        .map(|r| {
            r.logs()
                .matches("open transaction aborted after a rebalance")
                .count()
        })
        .sum();
    println!(
        "a third transformer joined and left 3 times under load: {aborted} open transactions aborted by rebalances, duplicates delivered: {}",
        server.duplicates()
    );

    for r in &mut roles {
        r.sigterm();
    }
    for r in &mut roles {
        assert!(r.wait_exit(Duration::from_secs(40)).await.success());
    }
}
