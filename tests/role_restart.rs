//! The in-process restart of a role after a Kafka failover (README, "Running on a multi-broker
//! cluster"): a role whose transactional producer cannot be initialised because no broker
//! answers is started again inside its process, with growing pauses, not-ready meanwhile and
//! counted in `pendo_segment_role_restarts_total`; SIGTERM still stops it cleanly.
//!
//! It needs no broker on purpose: Kafka is a closed port, the Pendo API the test server.

mod support;

use std::time::{Duration, Instant};

use support::pendo_server::{PendoServerConfig, PendoTestServer};
use support::*;

/// The role's `pendo_segment_role_restarts_total`, or `None` if `/metrics` does not answer.
async fn restarts(p: &RoleProcess, role: &str) -> Option<f64> {
    let text = reqwest::get(format!("{}/metrics", p.ops))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let prefix = format!("pendo_segment_role_restarts_total{{role=\"{role}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_a_reachable_coordinator_is_restarted_in_process_and_not_ready() {
    let server = PendoTestServer::start(PendoServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let ops = free_port();
    let kafka = free_port(); // nothing listens there
    let config = write_file(
        dir.path(),
        "pendo-segment.toml",
        &format!(
            "[kafka]\nbootstrap_servers = \"127.0.0.1:{kafka}\"\n\
             [processing]\ntransaction_call_timeout_ms = 1000\n\
             [observability]\nlisten = \"127.0.0.1:{ops}\"\n\
             [pendo]\nregion = \"us\"\nbase_url = \"{}\"\nintegration_key = \"{}\"\n",
            server.url(),
            server.integration_key()
        ),
    );
    let mut p = RoleProcess::start(
        &config,
        &["run", "--role", "pendo-poller"],
        ops,
        dir.path().join("poller.log"),
    );
    // Pauses of 1 s then 2 s: a second restart within 30 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = 0.0;
    while Instant::now() < deadline && seen < 2.0 {
        assert!(
            p.exit_status().is_none(),
            "the process exited instead of restarting the role:\n{}",
            p.logs()
        );
        seen = restarts(&p, "pendo-poller").await.unwrap_or(0.0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(seen >= 2.0, "restarts counted: {seen}\n{}", p.logs());
    let ready = reqwest::get(format!("{}/readyz", p.ops)).await.unwrap();
    assert_ne!(ready.status(), 200, "not ready while it cannot work");
    assert!(
        p.logs().contains("restarting it with new clients"),
        "the log says why:\n{}",
        p.logs()
    );
    // Sent right after the second restart was counted, so it lands in the 4 s pause before the
    // third: the role is between attempts and stops cleanly.
    p.sigterm();
    let status = p.wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "SIGTERM while restarting: {status}\n{}",
        p.logs()
    );
}
