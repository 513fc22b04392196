//! The local 3-broker cluster of `scripts/kafka-local cluster` (issue #18): its address, and the
//! broker-level chaos the failover tests need — SIGKILL, graceful stop and start of one broker
//! by id, who leads a partition, who coordinates a transactional id or a group, and waiting
//! until every replica is back in sync.
//!
//! Leaders and in-sync replicas are read from the cluster's metadata with rdkafka (fast);
//! coordinators with Kafka's own tools through the script. Every call blocks: async tests wrap
//! them in `spawn_blocking` ([`LocalCluster::blocking`]) so the load keeps flowing meanwhile.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// Client port of broker 1 (broker N listens on this + 2(N-1)), as the script defaults it.
const DEFAULT_PORT: u16 = 19092;

/// The cluster's brokers are 1, 2 and 3.
pub const BROKERS: [u32; 3] = [1, 2, 3];

/// Handle to the local cluster (it is `Copy`: it only names the ports).
#[derive(Clone, Copy, Debug)]
pub struct LocalCluster {
    port: u16,
}

impl LocalCluster {
    /// The cluster on `KAFKA_LOCAL_CLUSTER_PORT` (default 19092). Panics with instructions
    /// unless all three brokers run and a controller leads: a test that kills brokers cannot
    /// run anywhere else, and a test that cannot run fails.
    pub fn require() -> Self {
        let port = std::env::var("KAFKA_LOCAL_CLUSTER_PORT")
            .ok()
            .map(|p| p.parse().expect("KAFKA_LOCAL_CLUSTER_PORT is a port"))
            .unwrap_or(DEFAULT_PORT);
        let cluster = Self { port };
        let out = cluster.script(&["status"]);
        assert!(
            out.status.success(),
            "the multi-broker tests need the local 3-broker cluster on 127.0.0.1:{port}.. \
             (scripts/test starts it; by hand: `scripts/kafka-local cluster start`). Status:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster
    }

    /// `bootstrap.servers` of all three brokers.
    pub fn bootstrap(&self) -> String {
        BROKERS
            .iter()
            .map(|n| format!("127.0.0.1:{}", self.port + 2 * (*n as u16 - 1)))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn script(&self, args: &[&str]) -> std::process::Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka-local");
        Command::new(script)
            .arg("cluster")
            .args(args)
            .env_remove("KAFKA_BOOTSTRAP_SERVERS")
            .env("KAFKA_LOCAL_CLUSTER_PORT", self.port.to_string())
            .output()
            .expect("run scripts/kafka-local cluster")
    }

    fn must(&self, args: &[&str]) -> String {
        let out = self.script(args);
        assert!(
            out.status.success(),
            "scripts/kafka-local cluster {} failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A broker id from a query of the script, retried for up to 60 s (a query can fail while a
    /// coordinator moves).
    fn broker_query(&self, args: &[&str]) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.script(args);
            let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success()
                && let Ok(id) = text.parse()
            {
                return id;
            }
            assert!(
                Instant::now() < deadline,
                "scripts/kafka-local cluster {} gave no broker id: {text}\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// SIGKILLs broker `n` (returns once the process is gone).
    pub fn kill(&self, n: u32) {
        self.must(&["kill", &n.to_string()]);
    }

    /// Stops broker `n` gracefully (SIGTERM; returns once it exited).
    pub fn stop(&self, n: u32) {
        self.must(&["stop", &n.to_string()]);
    }

    /// Starts broker `n` and waits until it answers.
    pub fn start(&self, n: u32) {
        self.must(&["start", &n.to_string()]);
    }

    /// The broker coordinating `transactional_id` (it exists once a producer initialised it).
    pub fn txn_coordinator(&self, transactional_id: &str) -> u32 {
        self.broker_query(&["txn-coordinator", transactional_id])
    }

    /// The broker coordinating consumer group `group`.
    pub fn group_coordinator(&self, group: &str) -> u32 {
        self.broker_query(&["group-coordinator", group])
    }

    fn metadata_client(&self) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("topic.metadata.refresh.interval.ms", "1000")
            .create()
            .expect("metadata client")
    }

    /// The leader of `topic` partition `partition` (retried while it has none).
    pub fn leader(&self, topic: &str, partition: i32) -> u32 {
        let client = self.metadata_client();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(md) = client.fetch_metadata(Some(topic), Duration::from_secs(10))
                && let Some(p) = md
                    .topics()
                    .first()
                    .and_then(|t| t.partitions().iter().find(|p| p.id() == partition))
                && p.leader() >= 0
            {
                return p.leader() as u32;
            }
            assert!(
                Instant::now() < deadline,
                "{topic}-{partition} has no leader after 60 s"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Partitions of topics starting with one of `prefixes` whose in-sync replicas are fewer
    /// than 3, as `topic-partition (isr)`; `None` if metadata could not be read.
    pub fn under_replicated(&self, prefixes: &[&str]) -> Option<Vec<String>> {
        let md = self
            .metadata_client()
            .fetch_metadata(None, Duration::from_secs(10))
            .ok()?;
        let mut out = Vec::new();
        for t in md
            .topics()
            .iter()
            .filter(|t| prefixes.iter().any(|p| t.name().starts_with(p)))
        {
            for p in t.partitions() {
                if p.isr().len() < BROKERS.len() {
                    out.push(format!("{}-{} (isr {:?})", t.name(), p.id(), p.isr()));
                }
            }
        }
        Some(out)
    }

    /// Waits until every partition of topics starting with `prefix` and of Kafka's own
    /// `__consumer_offsets` / `__transaction_state` has all 3 replicas in sync; returns how long.
    pub fn wait_in_sync(&self, prefix: &str, timeout: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let lagging =
                self.under_replicated(&[prefix, "__consumer_offsets", "__transaction_state"]);
            match lagging {
                Some(l) if l.is_empty() => return started.elapsed(),
                other => assert!(
                    started.elapsed() < timeout,
                    "replicas not back in sync within {timeout:?}: {:?}",
                    other.map(|l| l.into_iter().take(10).collect::<Vec<_>>())
                ),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Deletes the topics starting with `prefix` (after a run that passed: every partition the
    /// cluster holds makes its brokers' restarts slower for the next run).
    pub async fn delete_topics(&self, prefix: &str) {
        let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
            ClientConfig::new()
                .set("bootstrap.servers", self.bootstrap())
                .create()
                .expect("admin client");
        let md = self
            .metadata_client()
            .fetch_metadata(None, Duration::from_secs(15))
            .expect("metadata");
        let mine: Vec<String> = md
            .topics()
            .iter()
            .map(|t| t.name().to_string())
            .filter(|n| n.starts_with(prefix))
            .collect();
        let names: Vec<&str> = mine.iter().map(String::as_str).collect();
        for r in admin
            .delete_topics(&names, &rdkafka::admin::AdminOptions::new())
            .await
            .expect("delete topics")
        {
            r.expect("topic deleted");
        }
    }

    /// Runs a blocking cluster call off the async workers.
    pub async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(LocalCluster) -> T + Send + 'static,
    ) -> T {
        let cluster = *self;
        tokio::task::spawn_blocking(move || call(cluster))
            .await
            .expect("cluster call panicked")
    }
}
