//! Broker faults on a 3-node KRaft cluster (every node broker and controller, replication 3,
//! `min.insync.replicas=2`) while 300,000 metrics are produced with `acks=all` by an idempotent
//! producer: the leader of a partition killed and restarted, the active controller killed, the
//! group coordinator's broker killed, the whole cluster stopped (SIGTERM) and started again
//! from its disks, and the whole cluster killed (SIGKILL) and started again. Each time every
//! metric must be stored exactly once and nothing valid dead-lettered.
//!
//! Each case prints how long its fault lasted (until every node it stopped listens again) and,
//! per partition, the time from the fault to the first row stored from a metric produced after
//! the fault began: rows already in flight at the fault do not count.
//!
//! Each test runs a cluster of its own for a minute or more; all but the first are `#[ignore]`d
//! to keep the suite short (`cargo test --test it -- --include-ignored kafka_faults::` runs them).

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
/// Pods: pod `n` goes to partition `n mod 3`, so a row's pod tells its partition.
const PODS: u64 = 300;
/// How long a killed node stays down before it is started again.
const DOWN_FOR: Duration = Duration::from_secs(5);
/// How long a node started again may take to listen: under load, with the producer and the
/// service retrying against it, more than the 30 s of a first start.
const RESTART_WITHIN: Duration = Duration::from_secs(90);

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

/// Where the producer stood when the fault began: the first metric it sent after, so that a
/// row can be told to come from a message produced after the fault.
struct FaultMark {
    begun: AtomicBool,
    first_after: AtomicU64,
}

impl FaultMark {
    fn new() -> FaultMark {
        FaultMark {
            begun: AtomicBool::new(false),
            first_after: AtomicU64::new(u64::MAX),
        }
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
        let start = || {
            KafkaCluster::start(ClusterOptions {
                nodes: 3,
                properties: BTreeMap::from([
                    ("min.insync.replicas".to_owned(), "2".to_owned()),
                    ("default.replication.factor".to_owned(), "3".to_owned()),
                ]),
                heap: "384m".into(),
            })
        };
        // Three JVMs starting at once on a loaded 2-core machine may miss the 30 s each node
        // gets to listen: a second try, on fresh ports and data, before giving up.
        start().or_else(|e| {
            eprintln!("the cluster did not start ({e:#}); trying again");
            start()
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
            // The request as a whole may time out too (no controller elected yet): retried
            // as a refusal of the topic is.
            let outcome = match admin.create_topics([new], &options).await {
                Ok(results) => match &results[0] {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => Ok(()),
                    Err((_, e)) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            match outcome {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("creating {}: {e}; retrying", new.name);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => panic!("creating {}: {e}", new.name),
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

/// Produces [`METRICS`] metrics, metric `i` of pod `i mod 300` at `base + i` ms to partition
/// `i mod 3`, at most `rate` a second, on a thread; marks the first one sent after the fault
/// began; answers the delivery counts once every one is acknowledged or failed.
fn produce(
    bootstrap: String,
    topic: String,
    base: i64,
    rate: u64,
    mark: Arc<FaultMark>,
) -> std::thread::JoinHandle<Arc<Delivered>> {
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
        let started = Instant::now();
        for i in 0..METRICS {
            if mark.begun.load(Ordering::SeqCst)
                && mark.first_after.load(Ordering::SeqCst) == u64::MAX
            {
                mark.first_after.store(i, Ordering::SeqCst);
            }
            let payload = guide_message(&format!("pod-{}", i % PODS), 1.0, 2.0, base + i as i64);
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

/// The pods of each partition.
fn pods_by_partition() -> Vec<Vec<String>> {
    (0..PARTITIONS as u64)
        .map(|p| {
            (0..PODS)
                .filter(|n| n % PARTITIONS as u64 == p)
                .map(|n| format!("pod-{n}"))
                .collect()
        })
        .collect()
}

/// For each partition, the seconds from `from` to the first row stored of that partition with
/// a time after `after[partition]`, polled every 50 ms.
async fn first_rows_after(
    db: &TestDatabase,
    after: &[chrono::DateTime<chrono::Utc>],
    from: Instant,
) -> Vec<f64> {
    let deadline = from + Duration::from_secs(300);
    let pods = pods_by_partition();
    let client = db.client().await;
    let mut first: Vec<Option<f64>> = vec![None; PARTITIONS as usize];
    loop {
        for (p, seen) in first.iter_mut().enumerate() {
            if seen.is_some() {
                continue;
            }
            let stored: bool = client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM system_metrics \
                     WHERE pod_name = ANY($1) AND time > $2)",
                    &[&pods[p], &after[p]],
                )
                .await
                .expect("look for a new row")
                .get(0);
            if stored {
                *seen = Some(from.elapsed().as_secs_f64());
            }
        }
        if first.iter().all(Option::is_some) {
            return first.into_iter().flatten().collect();
        }
        assert!(
            Instant::now() < deadline,
            "no new row on some partition within 300 s: {first:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// For each partition, the seconds from `fault` to the first row stored from a metric the
/// producer sent after the fault began.
async fn first_rows_produced_after(
    db: &TestDatabase,
    base: i64,
    mark: &FaultMark,
    fault: Instant,
) -> Vec<f64> {
    let first_after = loop {
        let first = mark.first_after.load(Ordering::SeqCst);
        if first != u64::MAX {
            break first;
        }
        assert!(
            fault.elapsed() < Duration::from_secs(300),
            "the producer sent nothing after the fault"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    // Metric `i` is stamped `base + i` ms: those sent after the fault are those after this.
    let before = chrono::DateTime::from_timestamp_millis(base + first_after as i64 - 1)
        .expect("a time in range");
    first_rows_after(db, &[before; PARTITIONS as usize], fault).await
}

/// For each partition, the seconds from `back` (the cluster listening again) to the first row
/// newer than any stored at that moment; and the seconds to the topic's first new record, which
/// tells the producer's recovery from the service's.
async fn first_rows_after_restart(
    db: &TestDatabase,
    bootstrap: String,
    topic: String,
    back: Instant,
) -> (Vec<f64>, f64) {
    let client = db.client().await;
    let mut newest = Vec::new();
    for pods in pods_by_partition() {
        let row = client
            .query_one(
                "SELECT coalesce(max(time), 'epoch') FROM system_metrics WHERE pod_name = ANY($1)",
                &[&pods],
            )
            .await
            .expect("the newest row");
        newest.push(row.get::<_, chrono::DateTime<chrono::Utc>>(0));
    }
    let grew = tokio::task::spawn_blocking(move || topic_grows(&bootstrap, &topic, back));
    let rows = first_rows_after(db, &newest, back).await;
    (rows, grew.await.unwrap())
}

/// The seconds from `from` until the topic holds more records than it first answers, polled
/// every 50 ms; the brokers may not answer at once after a restart.
fn topic_grows(bootstrap: &str, topic: &str, from: Instant) -> f64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("watermark client");
    let records = || -> Option<i64> {
        (0..PARTITIONS)
            .map(|p| {
                consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(5))
                    .ok()
                    .map(|(_, high)| high)
            })
            .sum()
    };
    let deadline = from + Duration::from_secs(300);
    let mut first = None;
    loop {
        match (first, records()) {
            (None, Some(n)) => first = Some(n),
            (Some(at_first), Some(n)) if n > at_first => return from.elapsed().as_secs_f64(),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "the topic did not grow within 300 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every metric stored once, nothing dead-lettered, nothing undelivered.
async fn assert_exactly_once(setup: &Setup, delivered: &Delivered, fault: Fault) {
    assert_eq!(delivered.failed.load(Ordering::Relaxed), 0, "{fault:?}");
    assert_eq!(delivered.ok.load(Ordering::Relaxed), METRICS, "{fault:?}");
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
    let stored_now = setup.db.count("SELECT count(*) FROM system_metrics").await;
    let status = setup.app.status().await;
    let dead_lettered = status["validator"]["dead_lettered"].as_u64();
    eprintln!("{fault:?}: {stored_now} rows, {distinct} distinct, {dead_lettered:?} dead-lettered");
    assert_eq!(stored, METRICS as i64, "{fault:?}: rows stored");
    assert_eq!(stored_now, METRICS as i64, "{fault:?}: rows stored");
    assert_eq!(distinct, METRICS as i64, "{fault:?}: distinct metrics");
    assert_eq!(dead_lettered, Some(0), "{fault:?}: dead letters");
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

/// The node leading the group's coordinator, from Kafka's own group tool.
fn group_coordinator(cluster: &KafkaCluster, group: &str) -> i32 {
    let state = cluster
        .tool(
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            &[
                "--bootstrap-server",
                "{bootstrap}",
                "--describe",
                "--group",
                group,
                "--state",
            ],
        )
        .unwrap();
    // `GROUP  COORDINATOR (ID)  …` then `<group>  127.0.0.1:<port> (<id>)  …`.
    let line = state
        .lines()
        .find(|l| l.starts_with(group))
        .unwrap_or_else(|| panic!("no line for the group in {state}"));
    number_after(line, " (").expect("coordinator id")
}

/// The active controller, from Kafka's own quorum tool.
fn active_controller(cluster: &KafkaCluster) -> i32 {
    let status = cluster
        .tool(
            "org.apache.kafka.tools.MetadataQuorumCommand",
            &["--bootstrap-server", "{bootstrap}", "describe", "--status"],
        )
        .unwrap();
    number_after(&status, "LeaderId:").expect("LeaderId in the status")
}

/// The faults, one test each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The broker leading partition 0 SIGKILLed, started again [`DOWN_FOR`] later.
    LeaderKilled,
    /// The active controller SIGKILLed, started again [`DOWN_FOR`] later.
    ControllerKilled,
    /// The broker of the group's coordinator SIGKILLed, started again [`DOWN_FOR`] later.
    CoordinatorKilled,
    /// Every node stopped with SIGTERM (a controlled shutdown) and waited for, then all
    /// started again from their disks [`DOWN_FOR`] later.
    ClusterStopped,
    /// Every node SIGKILLed at once, then all started again [`DOWN_FOR`] later: each recovers
    /// its logs from an unclean shutdown (what they wrote survives in the page cache).
    ClusterKilled,
}

impl Fault {
    fn whole_cluster(self) -> bool {
        matches!(self, Fault::ClusterStopped | Fault::ClusterKilled)
    }

    /// The node a single-node fault strikes, and its role, found before the fault so that
    /// looking it up (Kafka's tools start a JVM) takes nothing from the timings.
    fn victim(self, cluster: &KafkaCluster, setup: &Setup) -> Option<(&'static str, i32)> {
        match self {
            Fault::LeaderKilled => Some((
                "the leader of partition 0",
                partition_leader(cluster, &setup.topic),
            )),
            Fault::ControllerKilled => Some(("the active controller", active_controller(cluster))),
            Fault::CoordinatorKilled => Some((
                "the group's coordinator",
                group_coordinator(cluster, &setup.group),
            )),
            Fault::ClusterStopped | Fault::ClusterKilled => None,
        }
    }

    /// Does the fault on the cluster, blocking while nodes stop and start; answers what it did,
    /// once every node it stopped listens again.
    fn run(self, cluster: &mut KafkaCluster, victim: Option<(&str, i32)>) -> String {
        if let Some((role, id)) = victim {
            cluster.kill(index_of(id));
            std::thread::sleep(DOWN_FOR);
            cluster
                .restart_within(Some(index_of(id)), RESTART_WITHIN)
                .unwrap();
            return format!("node {id}, {role}, SIGKILLed");
        }
        let stopping = Instant::now();
        if self == Fault::ClusterStopped {
            cluster.stop_all(Duration::from_secs(120)).unwrap();
        } else {
            for i in 0..cluster.nodes.len() {
                cluster.kill(i);
            }
        }
        let stopped_s = stopping.elapsed().as_secs_f64();
        std::thread::sleep(DOWN_FOR);
        cluster.restart_within(None, RESTART_WITHIN).unwrap();
        if self == Fault::ClusterStopped {
            format!("every node stopped with SIGTERM (all exited within {stopped_s:.1} s)")
        } else {
            "every node SIGKILLed".to_owned()
        }
    }
}

/// Runs `fault` on the cluster (on a thread of its own) once [`BEFORE_FAULT`] rows are
/// stored, prints its timings, then checks that every metric is stored once.
async fn ride_out(fault: Fault) {
    let _alone = one_fault_at_a_time().await;
    let (cluster, setup) = setup().await;
    let setup = Arc::new(setup);
    let mark = Arc::new(FaultMark::new());
    let base = now_ms() - 3_600_000;
    let producer = produce(
        cluster.bootstrap(),
        setup.topic.clone(),
        base,
        8_000,
        mark.clone(),
    );
    wait_rows(&setup.db, BEFORE_FAULT).await;
    let bootstrap = cluster.bootstrap();
    let (cluster, victim) = {
        let setup = setup.clone();
        tokio::task::spawn_blocking(move || {
            let victim = fault.victim(&cluster, &setup);
            (cluster, victim)
        })
        .await
        .unwrap()
    };
    let at = Instant::now();
    mark.begun.store(true, Ordering::SeqCst);
    let faulted = {
        let mut cluster = cluster;
        tokio::task::spawn_blocking(move || {
            let what = fault.run(&mut cluster, victim);
            (cluster, what, at.elapsed().as_secs_f64())
        })
    };
    let restart = async {
        let (cluster, what, over_s) = faulted.await.unwrap();
        let back = Instant::now();
        let after_restart = if fault.whole_cluster() {
            Some(first_rows_after_restart(&setup.db, bootstrap, setup.topic.clone(), back).await)
        } else {
            None
        };
        (cluster, what, over_s, after_restart)
    };
    let (first, (_cluster, what, over_s, after_restart)) = tokio::join!(
        first_rows_produced_after(&setup.db, base, &mark, at),
        restart
    );
    let by_partition = |seconds: &[f64]| -> String {
        seconds
            .iter()
            .enumerate()
            .map(|(p, s)| format!("partition {p} {s:.2} s"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    eprintln!("{fault:?}: {what}; every node listening again {over_s:.2} s after the fault");
    eprintln!(
        "{fault:?}: from the fault to the first row of a metric produced after it: {}",
        by_partition(&first)
    );
    if let Some((rows, grew)) = after_restart {
        eprintln!(
            "{fault:?}: from the restart to the topic's first new record {grew:.2} s, to the \
             first new row: {}",
            by_partition(&rows)
        );
    }
    let delivered = tokio::task::spawn_blocking(move || producer.join().unwrap())
        .await
        .unwrap();
    assert_exactly_once(&setup, &delivered, fault).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_leader_killed_and_restarted_loses_and_repeats_nothing() {
    ride_out(Fault::LeaderKilled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a cluster of its own for a minute or more"]
async fn the_active_controller_killed_loses_and_repeats_nothing() {
    ride_out(Fault::ControllerKilled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a cluster of its own for a minute or more"]
async fn the_group_coordinator_killed_loses_and_repeats_nothing() {
    ride_out(Fault::CoordinatorKilled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a cluster of its own for a minute or more"]
async fn the_whole_cluster_stopped_and_restarted_from_disk_loses_and_repeats_nothing() {
    ride_out(Fault::ClusterStopped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a cluster of its own for a minute or more"]
async fn the_whole_cluster_killed_and_restarted_loses_and_repeats_nothing() {
    ride_out(Fault::ClusterKilled).await;
}
