//! The configuration contract seen from the command line: clear errors naming the problem,
//! environment overrides, and secrets that never reach the output or the logs.

mod support;

use std::process::{Command, Output};

use support::*;

fn pendo_segment(args: &[&str]) -> Command {
    let mut c = Command::new(binary());
    c.args(args);
    // Start from a clean slate: no overrides leaking in from the test environment.
    for (k, _) in std::env::vars() {
        if k.starts_with("PENDO_SEGMENT_") {
            c.env_remove(k);
        }
    }
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn configuration_errors_name_the_problem_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[kafka]\nbootstrap_servers = \"a:1\"\nbootstrap_server = \"typo\"\n",
            "bootstrap_server`",
        ),
        (
            "[kafka]\nclient_id = \"x\"\n",
            "missing field `bootstrap_servers`",
        ),
        ("[kafka]\nbootstrap_servers = \"a:1\n", "line 2"),
        (
            "[kafka]\nbootstrap_servers = \"a:1\"\n[segment]\nregion = \"mars\"\nwrite_key = \"k\"\n",
            "segment.region",
        ),
    ];
    for (i, (toml, expected)) in cases.iter().enumerate() {
        let cfg = write_file(dir.path(), &format!("c{i}.toml"), toml);
        let o = pendo_segment(&["--config", cfg.to_str().unwrap(), "config", "check"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "case {i}: {}", text(&o));
        assert!(
            text(&o).contains(expected),
            "case {i}: expected {expected:?} in {}",
            text(&o)
        );
    }
    let missing = pendo_segment(&["--config", "/nonexistent/ps.toml", "config", "check"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing).contains("/nonexistent/ps.toml"));
}

#[test]
fn environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_file(
        dir.path(),
        "c.toml",
        "[kafka]\nbootstrap_servers = \"file:1\"\n",
    );
    let o = pendo_segment(&["--config", cfg.to_str().unwrap(), "config", "check"])
        .env("PENDO_SEGMENT_KAFKA__BOOTSTRAP_SERVERS", "env:2")
        .env("PENDO_SEGMENT_TOPICS__PARTITIONS", "12")
        .env("PENDO_SEGMENT_KAFKA__PROPERTIES__SOCKET_TIMEOUT_MS", "7000")
        .output()
        .unwrap();
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("bootstrap_servers = \"env:2\""), "{out}");
    assert!(out.contains("partitions = 12"), "{out}");
    assert!(out.contains("\"socket.timeout.ms\" = \"7000\""), "{out}");
}

#[test]
fn unknown_environment_override_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_file(
        dir.path(),
        "c.toml",
        "[kafka]\nbootstrap_servers = \"a:1\"\n",
    );
    let o = pendo_segment(&["--config", cfg.to_str().unwrap(), "config", "check"])
        .env("PENDO_SEGMENT_KAFKA__BOOTSTRAP_SERVER", "typo:1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("bootstrap_server"), "{}", text(&o));
}

#[test]
fn secrets_never_appear_in_output_or_logs() {
    let servers = require_kafka();
    let dir = tempfile::tempdir().unwrap();
    let key_file = write_file(dir.path(), "pendo.key", "pendo-key-FILE-SECRET-2\n");
    let cfg = write_file(
        dir.path(),
        "c.toml",
        &format!(
            "[kafka]\nbootstrap_servers = \"{servers}\"\n\
             [kafka.properties]\n\"sasl.password\" = \"kafka-INLINE-SECRET-1\"\n\"sasl.username\" = \"visible-user\"\n\
             [kafka.producer_properties]\n\"ssl.key.password\" = {{ env = \"PS_TEST_SSL_KEY_PW\" }}\n\
             [topics]\nprefix = \"{}.\"\nreplication_factor = 1\npartitions = 1\n\
             [segment]\nregion = \"eu\"\nwrite_key = {{ env = \"PS_TEST_WRITE_KEY\" }}\n\
             [pendo]\nregion = \"us\"\nintegration_key = {{ file = \"{}\" }}\n",
            unique("sec"),
            key_file.display()
        ),
    );
    let secrets = [
        "kafka-INLINE-SECRET-1",
        "pendo-key-FILE-SECRET-2",
        "segment-ENV-SECRET-3",
        "ssl-ENV-SECRET-4",
    ];
    let with_env = |args: &[&str]| {
        pendo_segment(args)
            .env("PS_TEST_WRITE_KEY", "segment-ENV-SECRET-3")
            .env("PS_TEST_SSL_KEY_PW", "ssl-ENV-SECRET-4")
            .env("RUST_LOG", "trace")
            .output()
            .unwrap()
    };
    let check = with_env(&["--config", cfg.to_str().unwrap(), "config", "check"]);
    let out = text(&check);
    assert!(check.status.success(), "{out}");
    assert!(
        out.contains("visible-user"),
        "non-secret values are shown: {out}"
    );
    assert!(
        out.contains("<redacted: from env PS_TEST_WRITE_KEY>"),
        "{out}"
    );
    assert!(out.contains("<redacted: from file"), "{out}");
    // A command that builds Kafka clients from the config, with the most verbose logging.
    let apply = with_env(&[
        "--config",
        cfg.to_str().unwrap(),
        "--log-format",
        "json",
        "topics",
        "apply",
        "--dry-run",
    ]);
    let logs = text(&apply);
    assert!(!logs.is_empty());
    for s in secrets {
        assert!(!out.contains(s), "secret {s} leaked in config check: {out}");
        assert!(!logs.contains(s), "secret {s} leaked in logs: {logs}");
    }
}

#[test]
fn shipped_example_config_is_valid() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/pendo-segment.example.toml"
    );
    let o = pendo_segment(&["--config", example, "config", "check"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("bootstrap_servers = \"127.0.0.1:9092\""));
}
