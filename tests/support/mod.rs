//! Test support shared by the end-to-end tests: the real Kafka broker, unique names, configs.
//!
//! Every test here needs a real broker. When none is reachable the tests FAIL with the reason;
//! they never skip. `.ci/run` starts one with `scripts/kafka-local start`.
#![allow(dead_code)]

pub mod cluster;
pub mod kafka_proxy;
pub mod pendo_server;
pub mod pipeline;
pub mod produce;
pub mod segment_server;
pub mod synthetic_pendo;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// The broker the tests use: `KAFKA_BOOTSTRAP_SERVERS`, or the local one on 127.0.0.1:9092.
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".to_string())
}

/// Panics with instructions unless the broker answers a metadata request.
pub fn require_kafka() -> String {
    let servers = bootstrap();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .create()
        .expect("client");
    if let Err(e) = consumer.fetch_metadata(None, Duration::from_secs(15)) {
        panic!(
            "integration tests need a real Kafka broker at {servers} ({e}). \
             Start one with `scripts/kafka-local start` or set KAFKA_BOOTSTRAP_SERVERS."
        );
    }
    servers
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Path of the built `pendo-segment` binary.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pendo-segment"))
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write test file");
    p
}

/// An admin client for assertions.
pub fn admin() -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("admin client")
}

/// Options with a bounded wait.
pub fn admin_opts() -> AdminOptions {
    AdminOptions::new().request_timeout(Some(Duration::from_secs(30)))
}

/// Creates a topic (replication 1) and waits until it exists.
pub async fn create_topic(name: &str, partitions: i32) {
    let admin = admin();
    let t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let r = admin
        .create_topics([&t], &admin_opts())
        .await
        .expect("create");
    for x in r {
        x.expect("topic created");
    }
}

/// The topic's effective configs.
pub async fn topic_configs(name: &str) -> HashMap<String, String> {
    let admin = admin();
    let r = admin
        .describe_configs([&ResourceSpecifier::Topic(name)], &admin_opts())
        .await
        .expect("describe configs");
    let mut out = HashMap::new();
    for res in r {
        for e in res.expect("config resource").entries {
            if let Some(v) = e.value {
                out.insert(e.name, v);
            }
        }
    }
    out
}

/// Partition count of a topic, from fresh metadata.
pub fn partition_count(name: &str) -> usize {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("client");
    let md = consumer
        .fetch_metadata(Some(name), Duration::from_secs(15))
        .expect("metadata");
    md.topics()[0].partitions().len()
}

/// Produces `count` records `key-i`/`value-i` round-robin over partitions and waits for acks.
pub async fn produce_numbered(topic: &str, count: usize, partitions: i32) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut pending = Vec::with_capacity(count);
    for i in 0..count {
        let key = format!("key-{i}");
        let value = format!("value-{i}");
        let p = producer.clone();
        let topic = topic.to_string();
        let partition = (i as i32) % partitions;
        pending.push(tokio::spawn(async move {
            p.send(
                FutureRecord::to(&topic)
                    .key(&key)
                    .payload(&value)
                    .partition(partition),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
        }));
    }
    for p in pending {
        p.await.unwrap();
    }
}

/// Committed offsets of `group` on `topic`, by partition (absent = nothing committed).
pub fn committed_offsets(group: &str, topic: &str, partitions: i32) -> HashMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    // Retried: right after a broker (re)start the group coordinator may still be loading
    // `__consumer_offsets` and answer with a retriable error past the call's deadline.
    let mut attempt = 0;
    let committed = loop {
        match consumer.committed_offsets(tpl.clone(), Duration::from_secs(15)) {
            Ok(c) => break c,
            Err(e) if attempt < 3 => {
                attempt += 1;
                eprintln!("committed offsets of {group} (attempt {attempt}): {e}; retrying");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => panic!("committed offsets of {group}: {e}"),
        }
    };
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// A free TCP port on loopback (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `pendo-segment` process started by a test; killed when dropped.
pub struct RoleProcess {
    child: std::process::Child,
    /// Base URL of its ops server (`/metrics`, `/readyz`).
    pub ops: String,
    /// Its stderr (logs).
    pub log: PathBuf,
}

impl RoleProcess {
    /// Starts `pendo-segment --config <config> <args...>`; `ops_port` must match the config's
    /// `observability.listen`.
    pub fn start(config: &Path, args: &[&str], ops_port: u16, log: PathBuf) -> Self {
        let err = std::fs::File::create(&log).expect("log file");
        let child = std::process::Command::new(binary())
            .arg("--config")
            .arg(config)
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn pendo-segment");
        Self {
            child,
            ops: format!("http://127.0.0.1:{ops_port}"),
            log,
        }
    }

    /// Waits until `/readyz` answers 200; panics with the log if the process dies or times out.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let http = reqwest::Client::new();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("process exited ({status}) before ready:\n{}", self.logs());
            }
            if let Ok(r) = http.get(format!("{}/readyz", self.ops)).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not ready in {timeout:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.ops))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// What the process logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        signal(self.child.id(), 15);
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill9(&mut self) {
        signal(self.child.id(), 9);
        let _ = self.child.wait();
    }

    /// The exit status if the process has already exited (reaped), else `None`; never waits.
    /// For supervisors in tests that restart a role that died on its own.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for exit at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "process did not exit within {timeout:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for RoleProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            signal(self.child.id(), 9);
            let _ = self.child.wait();
        }
    }
}

/// Sends a Unix signal.
pub fn signal(pid: u32, sig: i32) {
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { kill(pid as i32, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// Reads every committed record of `topic` (all partitions, from the start) until `expected`
/// records arrived or `idle` passed without a new one.
pub fn read_committed(
    topic: &str,
    expected: usize,
    idle: Duration,
) -> Vec<rdkafka::message::OwnedMessage> {
    read_committed_from(&bootstrap(), topic, expected, idle)
}

/// [`read_committed`] from the cluster at `servers`.
pub fn read_committed_from(
    servers: &str,
    topic: &str,
    expected: usize,
    idle: Duration,
) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", unique("reader"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(15))
        .expect("metadata");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut last = std::time::Instant::now();
    while out.len() < expected && last.elapsed() < idle {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                out.push(m.detach());
                last = std::time::Instant::now();
            }
            Some(Err(e)) => panic!("consume {topic}: {e}"),
            None => {}
        }
    }
    // Anything beyond `expected` would be a duplicate: give it a moment to show up.
    let settle = std::time::Instant::now();
    while settle.elapsed() < Duration::from_millis(1500) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(m.detach());
        }
    }
    out
}

/// The value of header `name` of a record, as text.
pub fn header(m: &rdkafka::message::OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::Message;
    use rdkafka::message::Headers;
    let h = m.headers()?;
    h.iter()
        .find(|x| x.key == name)
        .and_then(|x| x.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Starts `pendo-segment run --role <role>` as its own process on a config of `extra` written to
/// `dir` (with its own ops port), logging to `<dir>/<role>-<n>.log`.
pub fn role_process(dir: &Path, prefix: &str, extra: &str, role: &str, n: usize) -> RoleProcess {
    let (config, ops) = role_config(dir, prefix, extra);
    RoleProcess::start(
        &config,
        &["run", "--role", role],
        ops,
        dir.join(format!("{role}-{n}.log")),
    )
}

/// Writes a config for one role process and returns (path, ops port).
pub fn role_config(dir: &Path, prefix: &str, extra: &str) -> (PathBuf, u16) {
    let ops = free_port();
    let text = format!(
        "[kafka]\nbootstrap_servers = \"{}\"\ngroup_id_prefix = \"{prefix}\"\n\
         [topics]\nprefix = \"{prefix}.\"\npartitions = 3\nreplication_factor = 1\n\
         [observability]\nlisten = \"127.0.0.1:{ops}\"\n{extra}",
        bootstrap()
    );
    (write_file(dir, "pendo-segment.toml", &text), ops)
}

/// Creates every topic of the catalogue for `config` with `topics apply`.
pub fn apply_topics(config: &Path) {
    let out = std::process::Command::new(binary())
        .arg("--config")
        .arg(config)
        .args(["topics", "apply"])
        .output()
        .expect("topics apply");
    assert!(
        out.status.success(),
        "topics apply failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The sample payloads bundled with the repository (`tests/fixtures`).
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Runs `scripts/kafka-local <cmd>` against the local broker the tests use. Tests that restart
/// the broker need that broker: pointing them at another cluster is a failure, not a skip.
pub fn local_broker(cmd: &str) {
    let servers = bootstrap();
    let port = servers
        .strip_prefix("127.0.0.1:")
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| {
            panic!("this test stops and restarts the broker, so it needs the local broker of scripts/kafka-local, not {servers}")
        });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka-local");
    let status = std::process::Command::new(script)
        .arg(cmd)
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env("KAFKA_LOCAL_PORT", port.to_string())
        .status()
        .expect("run scripts/kafka-local");
    assert!(status.success(), "scripts/kafka-local {cmd} failed");
}

/// A small deterministic PRNG (xorshift64*), so fuzz inputs are reproducible from the seed.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (non-zero).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    /// Next 64 random bits.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Child side of the re-exec tests: runs `task` with the library's process runtime (signals,
/// ops server, grace period) exactly as the binary does, then exits 0 or 1.
pub fn run_role_in_child(
    config: &pendo_segment::config::Config,
    task: pendo_segment::app::RoleTask,
) -> ! {
    pendo_segment::logging::init(config.observability.log_format, "info");
    let rt = tokio::runtime::Runtime::new().unwrap();
    match rt.block_on(pendo_segment::app::run_roles(config, vec![task])) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("child failed: {e:#}");
            std::process::exit(1)
        }
    }
}

/// A child process that is SIGKILLed when dropped, so a failing test leaves nothing running.
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
