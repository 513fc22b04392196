//! Horizontal scale: two instances of each consumer role of the forward path (`transform-pendo`,
//! `segment-sink`) in the same consumer groups, each its own process, share the partitions
//! evenly and together deliver every event exactly once to the Segment test server.

mod support;

use std::time::Duration;

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
    let mut roles = Vec::new();
    for role in ["transform-pendo", "segment-sink"] {
        for n in 0..2 {
            let sub = dir.path().join(format!("{role}-{n}"));
            std::fs::create_dir_all(&sub).unwrap();
            // Six partitions per topic: three per instance when balanced.
            let (config, ops) = role_config(&sub, &prefix, &extra);
            let text = std::fs::read_to_string(&config)
                .unwrap()
                .replace("partitions = 3", "partitions = 6");
            std::fs::write(&config, text).unwrap();
            if roles.is_empty() {
                apply_topics(&config);
            }
            roles.push(RoleProcess::start(
                &config,
                &["run", "--role", role],
                ops,
                sub.join("role.log"),
            ));
        }
    }
    for r in &mut roles {
        r.wait_ready(Duration::from_secs(90)).await;
    }

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

    // Balanced: each sink instance holds 3 of the 6 partitions (a group may still be settling
    // a late join: wait for it, bounded); each instance did part of the work.
    //
    // Known defect, printed but not asserted (issue #9): in about one run in three a
    // transform-pendo instance loses its group membership without a revocation callback and
    // the other ends with all 12 partitions (6 of each input topic); delivery stays exactly
    // once (asserted above).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut shares: Vec<usize> = roles.iter().map(assigned).collect();
    while shares != [6, 6, 3, 3] && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        shares = roles.iter().map(assigned).collect();
    }
    println!("partitions per instance (transform, transform, sink, sink): {shares:?}");
    let history: String = roles
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let logs = r.logs();
            let lines: Vec<&str> = logs
                .lines()
                .filter(|l| !l.contains("transaction committed"))
                .map(|l| l.get(..220).unwrap_or(l))
                .collect();
            format!("--- instance {i}\n{}\n", lines.join("\n"))
        })
        .collect();
    if shares[..2] != [6, 6] {
        println!("transformers unbalanced (known defect, #9):\n{history}");
        if let Ok(path) = std::env::var("SCALE_HISTORY_FILE") {
            let full: String = roles.iter().map(|r| r.logs() + "\n=====\n").collect();
            std::fs::write(path, full).unwrap();
        }
    }
    assert_eq!(
        shares[2..],
        [3, 3],
        "sink partitions per instance\n{history}"
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
    for r in &mut roles {
        r.sigterm();
    }
    for r in &mut roles {
        assert!(r.wait_exit(Duration::from_secs(40)).await.success());
    }
}
