//! `pendo-segment topics apply` against a real broker: creation, compaction, idempotence,
//! drift reporting and `--fix` (which must keep the topic's other settings).

mod support;

use std::process::Output;

use rdkafka::admin::{AlterConfig, ResourceSpecifier};
use support::*;

fn run(config: &std::path::Path, args: &[&str]) -> Output {
    std::process::Command::new(binary())
        .arg("--config")
        .arg(config)
        .args(["topics", "apply"])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run pendo-segment")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

async fn alter(topic: &str, entries: &[(&str, &str)]) {
    let admin = admin();
    let a = entries.iter().fold(
        AlterConfig::new(ResourceSpecifier::Topic(topic)),
        |a, (k, v)| a.set(k, v),
    );
    for r in admin.alter_configs([&a], &admin_opts()).await.unwrap() {
        r.unwrap();
    }
}

#[tokio::test]
async fn apply_creates_everything_then_is_idempotent_then_reports_and_fixes_drift() {
    let servers = require_kafka();
    let prefix = format!("{}.", unique("ta"));
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_file(
        dir.path(),
        "c.toml",
        &format!(
            "[kafka]\nbootstrap_servers = \"{servers}\"\n[topics]\nprefix = \"{prefix}\"\npartitions = 2\nreplication_factor = 1\n"
        ),
    );

    // 1. Empty broker (for this prefix): everything is created.
    let first = run(&cfg, &[]);
    let out = stdout(&first);
    assert!(
        first.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(out.matches("done: created ").count(), 19, "{out}");

    for compacted in [
        "idmap.visitor-to-user",
        "state.pendo-poller",
        "state.milestones",
        "state.pendo-segments",
        "state.pendo-audience-lists",
        "pendo.catalog",
    ] {
        let c = topic_configs(&format!("{prefix}{compacted}")).await;
        assert_eq!(c["cleanup.policy"], "compact", "{compacted}");
    }
    let raw = format!("{prefix}pendo.raw.webhook");
    let c = topic_configs(&raw).await;
    assert_eq!(c["cleanup.policy"], "delete");
    assert_eq!(c["retention.ms"], (7 * 86_400_000i64).to_string());
    let dlq = topic_configs(&format!("{prefix}dlq.segment-sink")).await;
    assert_eq!(dlq["retention.ms"], (30 * 86_400_000i64).to_string());
    assert_eq!(partition_count(&raw), 2);

    // 2. Second run: nothing to do, and it says so.
    let second = run(&cfg, &[]);
    assert!(second.status.success());
    assert!(
        stdout(&second).contains("no changes: all 19 topics match"),
        "{}",
        stdout(&second)
    );

    // 3. Hand-made drift: retention changed, plus an unrelated dynamic setting that a fix must keep.
    alter(&raw, &[("retention.ms", "1000"), ("segment.ms", "3600000")]).await;
    let drift = run(&cfg, &[]);
    let out = stdout(&drift);
    assert_eq!(drift.status.code(), Some(1), "unfixed drift exits 1: {out}");
    assert!(
        out.contains(&format!(
            "drift {raw}: retention.ms is 1000, expected 604800000"
        )),
        "{out}"
    );
    assert_eq!(
        topic_configs(&raw).await["retention.ms"],
        "1000",
        "not fixed without --fix"
    );

    // --dry-run with --fix changes nothing.
    let dry = run(&cfg, &["--fix", "--dry-run"]);
    assert!(dry.status.success());
    assert_eq!(topic_configs(&raw).await["retention.ms"], "1000");

    let fix = run(&cfg, &["--fix"]);
    assert!(fix.status.success(), "{}", stdout(&fix));
    let c = topic_configs(&raw).await;
    assert_eq!(c["retention.ms"], "604800000");
    assert_eq!(
        c["segment.ms"], "3600000",
        "--fix must keep other topic settings"
    );
    assert!(stdout(&run(&cfg, &[])).contains("no changes"));

    // 4. More partitions configured: drift, raised by --fix.
    let cfg3 = write_file(
        dir.path(),
        "c3.toml",
        &format!(
            "[kafka]\nbootstrap_servers = \"{servers}\"\n[topics]\nprefix = \"{prefix}\"\npartitions = 2\nreplication_factor = 1\n[topics.overrides.\"pendo.raw.webhook\"]\npartitions = 4\n"
        ),
    );
    let p = run(&cfg3, &[]);
    assert_eq!(p.status.code(), Some(1));
    assert!(
        stdout(&p).contains(&format!("drift {raw}: partitions is 2, expected 4")),
        "{}",
        stdout(&p)
    );
    let pf = run(&cfg3, &["--fix"]);
    assert!(pf.status.success(), "{}", stdout(&pf));
    assert_eq!(partition_count(&raw), 4);
    assert!(stdout(&run(&cfg3, &[])).contains("no changes"));

    // Fewer partitions than exist is a note, never a change (Kafka cannot shrink topics).
    let shrink = run(&cfg, &[]);
    assert!(shrink.status.success());
    assert!(
        stdout(&shrink).contains("cannot shrink"),
        "{}",
        stdout(&shrink)
    );
}
