//! Broker faults on a 3-node KRaft cluster (every node broker and controller, replication 3,
//! `min.insync.replicas=2`) while 300,000 metrics are produced with `acks=all` by an idempotent
//! producer: the leader of a partition killed and restarted, the active controller killed, the
//! group coordinator's broker killed, the whole cluster stopped and started again from its
//! disks. Each time every metric must be stored exactly once and nothing valid dead-lettered;
//! the time from the fault to the first row stored after it is printed.
//!
//! Each test runs a cluster of its own for a minute or more; all but the first are `#[ignore]`d
//! to keep the suite short (`cargo test --test kafka_faults -- --include-ignored` runs them).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::kafka::{ClusterOptions, KafkaCluster};
use common::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

const METRICS: u64 = 300_000;
const PARTITIONS: i32 = 3;
/// Metrics produced before the fault.
const BEFORE_FAULT: u64 = 60_000;

/// The delivery reports of the producer.
#[derive(Default)]
struct Delivered {
    ok: AtomicU64,
    failed: AtomicU64,
}

struct Counting(Arc<Delivered>);

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.ok.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                eprintln!("delivery failed: {e}");
                self.0.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// A cluster with its topics, a service consuming from it, and a database.
struct Setup {
    topic: String,
    group: String,
    db: TestDatabase,
    app: TestApp,
}

async fn setup() -> (KafkaCluster, Setup) {
    let cluster = tokio::task::spawn_blocking(|| {
        KafkaCluster::start(ClusterOptions {
            nodes: 3,
            properties: BTreeMap::from([
                ("min.insync.replicas".to_owned(), "2".to_owned()),
                ("default.replication.factor".to_owned(), "3".to_owned()),
            ]),
            heap: "384m".into(),
        })
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("cannot start the cluster: {e:#}"));
    let topic = unique("metrics");
    let dlq = format!("{topic}.dlq");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .create()
        .unwrap();
    let topics = [
        NewTopic::new(&topic, PARTITIONS, TopicReplication::Fixed(3)),
        NewTopic::new(&dlq, 1, TopicReplication::Fixed(3)),
    ];
    // The nodes listen before they have all registered; creation may need a moment.
    let deadline = Instant::now() + Duration::from_secs(60);
    for new in &topics {
        loop {
            let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
            match admin.create_topics([new], &options).await.unwrap()[0] {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => break,
                Err((_, e)) if Instant::now() < deadline => {
                    eprintln!("creating {}: {e}; retrying", new.name);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err((_, e)) => panic!("creating {}: {e}", new.name),
            }
        }
    }
    let db = TestDatabase::create().await;
    let group = unique("group");
    let env = HashMap::from([
        ("KAFKA_BROKERS".to_owned(), cluster.bootstrap()),
        ("KAFKA_TOPIC".to_owned(), topic.clone()),
        ("KAFKA_DLQ_TOPIC".to_owned(), dlq),
        ("KAFKA_GROUP_ID".to_owned(), group.clone()),
        ("DATABASE_URL".to_owned(), db.url.clone()),
        ("HTTP_PORT".to_owned(), "0".to_owned()),
        ("HTTP_HOST".to_owned(), "127.0.0.1".to_owned()),
        ("RUST_LOG".to_owned(), "info".to_owned()),
    ]);
    let app = TestApp::spawn_consuming(env);
    (
        cluster,
        Setup {
            topic,
            group,
            db,
            app,
        },
    )
}

/// Produces [`METRICS`] metrics, pod `i mod 300` to partition `i mod 3`, at most `rate` a
/// second, on a thread; answers the delivery counts once every one is acknowledged or failed.
fn produce(bootstrap: String, topic: String, rate: u64) -> std::thread::JoinHandle<Arc<Delivered>> {
    std::thread::spawn(move || {
        let delivered = Arc::new(Delivered::default());
        let producer: ThreadedProducer<Counting> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "20")
            // Long enough to ride out a stopped cluster: an acknowledged record is stored.
            .set("message.timeout.ms", "300000")
            .set("socket.timeout.ms", "10000")
            .create_with_context(Counting(delivered.clone()))
            .expect("producer");
        let base = now_ms() - 3_600_000;
        let started = Instant::now();
        for i in 0..METRICS {
            let payload = guide_message(&format!("pod-{}", i % 300), 1.0, 2.0, base + i as i64);
            let mut record = BaseRecord::<(), [u8]>::to(&topic)
                .partition((i % PARTITIONS as u64) as i32)
                .payload(payload.as_slice());
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => panic!("produce: {e}"),
                }
            }
            let due = Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
        producer.flush(Duration::from_secs(300)).expect("flush");
        delivered
    })
}

/// Waits until `n` rows are stored (the service's own count, not the producer's).
async fn wait_rows(db: &TestDatabase, n: u64) {
    let count = wait_for_count(db, "SELECT count(*) FROM system_metrics", n as i64).await;
    assert!(
        count >= n as i64,
        "only {count} of {n} rows before the fault"
    );
}

/// The seconds from `fault` to the first row stored after it, polled every 50 ms.
async fn first_new_row(db: &TestDatabase, fault: Instant, rows_at_fault: i64) -> f64 {
    let client = db.client().await;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let count: i64 = client
            .query_one("SELECT count(*) FROM system_metrics", &[])
            .await
            .unwrap()
            .get(0);
        if count > rows_at_fault {
            return fault.elapsed().as_secs_f64();
        }
        assert!(
            Instant::now() < deadline,
            "no row stored 300 s after the fault"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn rows(db: &TestDatabase) -> i64 {
    db.count("SELECT count(*) FROM system_metrics").await
}

/// Every metric stored once, nothing dead-lettered, nothing undelivered.
async fn assert_exactly_once(setup: &Setup, delivered: &Delivered, fault: &str, after_s: f64) {
    assert_eq!(delivered.failed.load(Ordering::Relaxed), 0, "{fault}");
    assert_eq!(delivered.ok.load(Ordering::Relaxed), METRICS, "{fault}");
    let stored = wait_for_count(
        &setup.db,
        "SELECT count(*) FROM system_metrics",
        METRICS as i64,
    )
    .await;
    // Give a duplicate the time to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let distinct = setup
        .db
        .count("SELECT count(DISTINCT (pod_name, time)) FROM system_metrics")
        .await;
    let stored_now = rows(&setup.db).await;
    let status = setup.app.status().await;
    let dead_lettered = status["validator"]["dead_lettered"].as_u64();
    eprintln!(
        "{fault}: first row {after_s:.2} s after the fault; {stored_now} rows, {distinct} distinct, \
         {dead_lettered:?} dead-lettered"
    );
    assert_eq!(stored, METRICS as i64, "{fault}: rows stored");
    assert_eq!(stored_now, METRICS as i64, "{fault}: rows stored");
    assert_eq!(distinct, METRICS as i64, "{fault}: distinct metrics");
    assert_eq!(dead_lettered, Some(0), "{fault}: dead letters");
}

/// The node index (0-based) of broker id `id`.
fn index_of(id: i32) -> usize {
    (id - 1) as usize
}

/// The broker leading partition 0 of `topic`.
fn partition_leader(cluster: &KafkaCluster, topic: &str) -> i32 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    metadata.topics()[0]
        .partitions()
        .iter()
        .find(|p| p.id() == 0)
        .expect("partition 0")
        .leader()
}

/// The number after `key` in a tool's output (`LeaderId:  2`, `127.0.0.1:9092 (2)`).
fn number_after(text: &str, key: &str) -> Option<i32> {
    let at = text.find(key)? + key.len();
    text[at..]
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Runs `fault` on the cluster (on a thread of its own: it blocks while nodes stop and start)
/// once [`BEFORE_FAULT`] rows are stored, timing the first row stored after the fault began,
/// then checks that every metric is stored once.
async fn ride_out(name: &str, fault: impl FnOnce(&mut KafkaCluster, &Setup) + Send + 'static) {
    let (mut cluster, setup) = setup().await;
    let setup = Arc::new(setup);
    let producer = produce(cluster.bootstrap(), setup.topic.clone(), 8_000);
    wait_rows(&setup.db, BEFORE_FAULT).await;
    let rows_at_fault = rows(&setup.db).await;
    let at = Instant::now();
    let faulted = {
        let setup = setup.clone();
        tokio::task::spawn_blocking(move || {
            fault(&mut cluster, &setup);
            cluster
        })
    };
    let after_s = first_new_row(&setup.db, at, rows_at_fault).await;
    let _cluster = faulted.await.unwrap();
    let delivered = tokio::task::spawn_blocking(move || producer.join().unwrap())
        .await
        .unwrap();
    assert_exactly_once(&setup, &delivered, name, after_s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_leader_killed_and_restarted_loses_and_repeats_nothing() {
    ride_out("partition leader SIGKILLed", |cluster, setup| {
        let leader = partition_leader(cluster, &setup.topic);
        eprintln!("killing node {leader}, leader of partition 0");
        cluster.kill(index_of(leader));
        std::thread::sleep(Duration::from_secs(5));
        cluster.restart(index_of(leader)).unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a cluster of its own for a minute or more"]
async fn the_active_controller_killed_loses_and_repeats_nothing() {
    ride_out("active controller SIGKILLed", |cluster, _| {
        let status = cluster
            .tool(
                "org.apache.kafka.tools.MetadataQuorumCommand",
                &["--bootstrap-server", "{bootstrap}", "describe", "--status"],
            )
            .unwrap();
        let controller = number_after(&status, "LeaderId:").expect("LeaderId in the status");
        eprintln!("killing node {controller}, the active controller");
        cluster.kill(index_of(controller));
        std::thread::sleep(Duration::from_secs(5));
        cluster.restart(index_of(controller)).unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a cluster of its own for a minute or more"]
async fn the_group_coordinator_killed_loses_and_repeats_nothing() {
    ride_out("group coordinator SIGKILLed", |cluster, setup| {
        let state = cluster
            .tool(
                "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
                &[
                    "--bootstrap-server",
                    "{bootstrap}",
                    "--describe",
                    "--group",
                    &setup.group,
                    "--state",
                ],
            )
            .unwrap();
        // `GROUP  COORDINATOR (ID)  …` then `<group>  127.0.0.1:<port> (<id>)  …`.
        let line = state
            .lines()
            .find(|l| l.starts_with(setup.group.as_str()))
            .unwrap_or_else(|| panic!("no line for the group in {state}"));
        let coordinator = number_after(line, " (").expect("coordinator id");
        eprintln!("killing node {coordinator}, the group's coordinator");
        cluster.kill(index_of(coordinator));
        std::thread::sleep(Duration::from_secs(5));
        cluster.restart(index_of(coordinator)).unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a cluster of its own for a minute or more"]
async fn the_whole_cluster_stopped_and_restarted_from_disk_loses_and_repeats_nothing() {
    ride_out("whole cluster killed and restarted", |cluster, _| {
        // All at once, as a power cut would (what the nodes wrote survives in the page cache;
        // each starts again from its log directory).
        for i in 0..3 {
            cluster.kill(i);
        }
        eprintln!("every node killed");
        std::thread::sleep(Duration::from_secs(5));
        cluster.restart_all().unwrap();
    })
    .await;
}
