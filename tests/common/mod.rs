//! Test harness: Apache Kafka (`kafka.rs`) shared by the tests of one process, a
//! fresh PostgreSQL database per test, and the `panopticon` binary started exactly as users
//! start it, on port 0, with its log captured. Set `TEST_LOG=1` to see the logs.
//!
//! `PANOPTICON_TEST_BROKERS` points the tests at an already running broker instead;
//! `TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`) names the
//! server on which test databases are created.
//!
//! The pieces that answer errors instead of panicking, which the benchmarks use too, are in
//! `harness.rs`; the helpers here panic on them.

#![allow(dead_code)]

pub mod harness;
pub mod kafka;
pub mod pg;
pub mod prometheus;
pub mod proxy;
pub mod tls;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

pub const PARTITIONS: i32 = 3;

/// The broker the tests of this process share, and the cluster it runs in unless
/// `PANOPTICON_TEST_BROKERS` named one of somebody else's. No test stops or freezes it: every
/// test of the process depends on it.
struct SharedBroker {
    bootstrap: String,
    cluster: Option<Mutex<kafka::KafkaCluster>>,
}

fn shared_broker() -> &'static SharedBroker {
    static BROKER: OnceLock<SharedBroker> = OnceLock::new();
    BROKER.get_or_init(|| {
        if let Ok(bootstrap) = std::env::var("PANOPTICON_TEST_BROKERS") {
            return SharedBroker {
                bootstrap,
                cluster: None,
            };
        }
        // The cluster lives as long as the test process (statics are never dropped); its
        // watchdogs end it and remove its data after the process is gone.
        let cluster = kafka::KafkaCluster::start(kafka::ClusterOptions::default())
            .unwrap_or_else(|e| panic!("cannot start Apache Kafka: {e:#}"));
        SharedBroker {
            bootstrap: cluster.bootstrap(),
            cluster: Some(Mutex::new(cluster)),
        }
    })
}

/// The broker all tests of this process share; each test uses topics and a group of its own.
pub fn broker() -> &'static str {
    &shared_broker().bootstrap
}

/// Held by the tests that inject a fault and then wait, with deadlines, for the service to
/// recover (a frozen or killed broker, a proxy swallowing bytes): all tests share one process,
/// and two outages at once would compete for a busy machine's cores and stretch each other's
/// recoveries. One such test runs at a time, beside at most one ordinary test of libtest's other
/// thread. A tokio mutex, which a failing test does not poison.
pub async fn one_fault_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static FAULTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    FAULTS.lock().await
}

/// Runs a watchdog shell script in the background, its output discarded: it ends a server of
/// the test's own once the test process is gone, since statics are never dropped.
pub fn spawn_watchdog(script: &str) {
    harness::spawn_watchdog(script, &[]).expect("start a watchdog");
}

pub fn free_port() -> u16 {
    harness::free_port().expect("no free port")
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// librdkafka settings for a client of the plaintext broker at `brokers`.
pub fn client_of(brokers: &str) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", brokers);
    client
}

/// Creates a topic with [`PARTITIONS`] partitions, and its dead-letter topic `<name>.dlq`.
pub async fn create_topic(name: &str) {
    create_topic_on(broker(), name).await
}

/// [`create_topic`] on the broker at `brokers`.
pub async fn create_topic_on(brokers: &str, name: &str) {
    create_topic_with(&client_of(brokers), name).await;
}

/// [`create_topic`] on the broker `client` connects to.
pub async fn create_topic_with(client: &ClientConfig, name: &str) {
    let dlq = format!("{name}.dlq");
    create_topics_with(client, &[(name, PARTITIONS), (dlq.as_str(), 1)]).await;
}

/// Creates each topic with its number of partitions.
pub async fn create_topics(topics: &[(&str, i32)]) {
    create_topics_with(&client_of(broker()), topics).await
}

/// [`create_topics`] on the broker `client` connects to.
pub async fn create_topics_with(client: &ClientConfig, topics: &[(&str, i32)]) {
    harness::create_topics(client, topics)
        .await
        .unwrap_or_else(|e| panic!("create topics {topics:?}: {e:#}"));
}

/// The topics the broker knows.
pub fn topic_names() -> Vec<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker())
        .create()
        .expect("metadata client");
    consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata")
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| t.name().to_owned())
        .collect()
}

/// A producer that sends each record at once (`linger.ms=0`), so that what a test produces
/// reaches the broker before the test goes on.
pub fn producer() -> FutureProducer {
    producer_on(client_of(broker()))
}

/// [`producer`] of the broker `client` connects to.
pub fn producer_on(mut client: ClientConfig) -> FutureProducer {
    client.set("linger.ms", "0").create().expect("producer")
}

/// Produces payloads to one partition, in order.
pub async fn produce(producer: &FutureProducer, topic: &str, partition: i32, payloads: &[Vec<u8>]) {
    for payload in payloads {
        producer
            .send(
                FutureRecord::<(), [u8]>::to(topic)
                    .partition(partition)
                    .payload(payload.as_slice()),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }
}

/// Produces each `(partition, payload)` at once and waits for every delivery, each bounded by
/// `timeout`.
pub async fn produce_all(
    producer: &FutureProducer,
    topic: &str,
    payloads: &[(i32, Vec<u8>)],
    timeout: Duration,
) {
    let sends = payloads.iter().map(|(partition, payload)| {
        producer.send(
            FutureRecord::<(), [u8]>::to(topic)
                .partition(*partition)
                .payload(payload.as_slice()),
            timeout,
        )
    });
    for result in futures_util::future::join_all(sends).await {
        result.map_err(|(e, _)| e).expect("produce");
    }
}

/// What the HTTP handlers get in the service (`Application::build`), for tests that serve the
/// API in-process over the database at `url`: the REST caps at their defaults
/// (`API_MAX_LIMIT` 1000, `API_MAX_RANGE_HOURS` 168, `API_MAX_BUCKETS` 5000), at most
/// `max_samples` samples per PromQL query, and no token.
pub fn app_state(
    url: &str,
    storage: panopticon::db::queries::SharedStorage,
    max_samples: u32,
) -> panopticon::http::AppState {
    let pool = panopticon::db::queries::pool(url, 2, &Default::default()).expect("pool");
    let api = panopticon::http::api::ApiState {
        pool,
        storage,
        max_limit: 1000,
        max_range: chrono::Duration::hours(168),
        max_buckets: 5000,
        max_samples,
    };
    panopticon::http::AppState::new(
        Arc::new(panopticon::stats::Stats::default()),
        api,
        panopticon::http::auth::Access::new(None, false),
    )
}

/// A database of the test's own, dropped when the test ends.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl TestDatabase {
    pub async fn create() -> TestDatabase {
        let admin_url = std::env::var("TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = unique("panopticon_test");
        let client = connect(&admin_url).await;
        harness::create_database(&client, &name)
            .await
            .expect("create test database");
        TestDatabase {
            url: harness::database_url(&admin_url, &name),
            name,
            admin_url,
        }
    }

    /// A database on a server of the test's own (created there as `panopticon`); not dropped.
    pub fn on(url: &str) -> TestDatabase {
        TestDatabase {
            name: String::new(),
            url: url.to_owned(),
            admin_url: String::new(),
        }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.client()
            .await
            .query_one(sql, &[])
            .await
            .expect(sql)
            .get(0)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || harness::drop_database(&admin_url, &name)).join();
    }
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    harness::connect(url).await.expect("connect to PostgreSQL")
}

/// The running service: its process, its captured log and its HTTP port.
pub struct TestApp {
    child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
    pub port: Option<u16>,
    pub env: HashMap<String, String>,
}

/// What most tests start from: a topic of their own on the shared broker (`PARTITIONS`
/// partitions), a consumer group of their own and a fresh database.
pub struct Setup {
    pub topic: String,
    pub group: String,
    pub db: TestDatabase,
}

pub async fn setup() -> Setup {
    setup_on(TestDatabase::create().await).await
}

/// [`setup`] over `db`, e.g. a database on a PostgreSQL server of the test's own.
pub async fn setup_on(db: TestDatabase) -> Setup {
    setup_with(&client_of(broker()), db).await
}

/// [`setup_on`] with the topic made on the broker `client` connects to, e.g. one of the
/// test's own. [`Setup::env`] still names the shared broker: such a test sets `KAFKA_BROKERS`.
pub async fn setup_with(client: &ClientConfig, db: TestDatabase) -> Setup {
    let topic = unique("metrics");
    create_topic_with(client, &topic).await;
    Setup {
        group: unique("group"),
        topic,
        db,
    }
}

impl Setup {
    /// The service's environment for this topic, group and database.
    pub fn env(&self) -> HashMap<String, String> {
        service_env(&self.topic, &self.group, &self.db)
    }

    /// [`Setup::env`] with `settings` added or replacing its own.
    pub fn env_with(&self, settings: &[(&str, &str)]) -> HashMap<String, String> {
        let mut env = self.env();
        for (key, value) in settings {
            env.insert((*key).into(), (*value).into());
        }
        env
    }
}

/// Environment for a service consuming `topic` as group `group` into `db`.
pub fn service_env(topic: &str, group: &str, db: &TestDatabase) -> HashMap<String, String> {
    HashMap::from([
        ("KAFKA_BROKERS".into(), broker().to_owned()),
        ("KAFKA_TOPIC".into(), topic.to_owned()),
        ("KAFKA_DLQ_TOPIC".into(), format!("{topic}.dlq")),
        ("KAFKA_GROUP_ID".into(), group.to_owned()),
        ("DATABASE_URL".into(), db.url.clone()),
        ("HTTP_PORT".into(), "0".into()),
        ("HTTP_HOST".into(), "127.0.0.1".into()),
        ("BATCH_MAX_WAIT_MS".into(), "200".into()),
        ("RUST_LOG".into(), "info".into()),
    ])
}

impl TestApp {
    /// Starts the binary and waits until its HTTP server listens.
    pub fn spawn(env: HashMap<String, String>) -> TestApp {
        let mut app = TestApp::spawn_args(env, &[]);
        let line = app
            .wait_for_log(harness::START_LINE, Duration::from_secs(30))
            .expect("the service did not start its HTTP server");
        let port = harness::service_port(&line).expect("port in the start-up line");
        app.port = Some(port);
        app
    }

    /// Starts the binary with arguments, without waiting for anything.
    pub fn spawn_args(env: HashMap<String, String>, args: &[&str]) -> TestApp {
        let mut command =
            harness::service_command(Path::new(env!("CARGO_BIN_EXE_panopticon")), &env);
        command.args(args);
        let mut child = command.spawn().expect("start panopticon");
        let log = Arc::new(Mutex::new(Vec::new()));
        let echo = std::env::var_os("TEST_LOG").is_some();
        harness::read_output(&mut child, {
            let log = log.clone();
            move |line| {
                if echo {
                    eprintln!("{line}");
                }
                log.lock().unwrap().push(line);
            }
        });
        TestApp {
            child,
            log,
            port: None,
            env,
        }
    }

    /// Starts the binary and waits until its consumer has joined the group.
    pub fn spawn_consuming(env: HashMap<String, String>) -> TestApp {
        let app = TestApp::spawn(env);
        app.wait_for_log("Kafka consumer connected", Duration::from_secs(60))
            .expect("the consumer did not join its group");
        app
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port.expect("HTTP port"))
    }

    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn lines_containing(&self, needle: &str) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.contains(needle))
            .collect()
    }

    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| l.contains(needle)) {
                return Some(line);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn status(&self) -> serde_json::Value {
        reqwest::get(self.url("/status"))
            .await
            .expect("GET /status")
            .json()
            .await
            .expect("status JSON")
    }

    /// Expects `/ready` to answer 503 with a reason that contains `reason`.
    pub async fn assert_unready(&self, reason: &str) {
        let ready = reqwest::get(self.url("/ready")).await.expect("GET /ready");
        assert_eq!(ready.status(), 503);
        let body: serde_json::Value = ready.json().await.expect("/ready JSON");
        assert!(
            body["reason"].as_str().unwrap_or_default().contains(reason),
            "{body}"
        );
    }

    /// Polls `/status` until `check` holds.
    pub async fn wait_for_status(
        &self,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.status().await;
            if check(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; status: {status:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{signal} failed");
    }

    /// The exit status if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait")
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // Let the log readers catch the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the service did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls a count query until it reaches `expected` or 90 s pass; returns the last count.
pub async fn wait_for_count(db: &TestDatabase, sql: &str, expected: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        // Before the service has migrated, the table is not there yet.
        let count = match db.client().await.query_one(sql, &[]).await {
            Ok(row) => row.get(0),
            Err(_) => -1,
        };
        if count >= expected || Instant::now() >= deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One fixture line of `tests/fixtures/`.
pub struct Fixture {
    pub case: String,
    pub payload: Vec<u8>,
    pub row: Option<serde_json::Value>,
}

/// Reads a fixture file; `HEX:` payloads are decoded to their bytes.
pub fn fixtures(file: &str) -> Vec<Fixture> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("fixture JSON");
            let payload = value["payload"].as_str().expect("payload").to_owned();
            let payload = match payload.strip_prefix("HEX:") {
                Some(hex) => hex
                    .split_whitespace()
                    .map(|pair| u8::from_str_radix(pair, 16).expect("hex pair"))
                    .collect(),
                None => payload.into_bytes(),
            };
            Fixture {
                case: value["case"].as_str().unwrap_or_default().to_owned(),
                payload,
                row: value.get("row").cloned(),
            }
        })
        .collect()
}

/// The guide's message for a pod, stamped now.
pub fn guide_message(pod: &str, cpu: f64, memory: f64, timestamp_ms: i64) -> Vec<u8> {
    format!(
        r#"{{"timestamp":{timestamp_ms},"service":"log-generator","podName":"{pod}","namespace":"default","nodeName":"kind-control-plane","cpu":{cpu},"memory":{memory}}}"#
    )
    .into_bytes()
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Reads every record of a topic from the beginning until `expected` were read or 30 s pass.
pub async fn consume_all(topic: &str, expected: usize) -> Vec<rdkafka::message::OwnedMessage> {
    consume_all_on(client_of(broker()), topic, expected).await
}

/// [`consume_all`] from the broker `client` connects to.
pub async fn consume_all_on(
    mut client: ClientConfig,
    topic: &str,
    expected: usize,
) -> Vec<rdkafka::message::OwnedMessage> {
    use futures_util::StreamExt;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let consumer: StreamConsumer = client
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut messages = Vec::new();
    let mut stream = consumer.stream();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while messages.len() < expected {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(message))) => messages.push(message.detach()),
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    // Anything beyond `expected` would be a duplicate: give it a moment to show up.
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_millis(500), stream.next()).await
    {
        messages.push(message.detach());
    }
    messages
}

/// A header of a Kafka message, as text.
pub fn header(message: &rdkafka::message::OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::message::{Headers, Message};
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
}
