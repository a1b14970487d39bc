//! Requests the broker carried out whose answers never came back: a proxy of the test's own
//! between a client and a Kafka node forwards every request but, a few seconds at a time,
//! throws the node's answers away. The client times out after `socket.timeout.ms`, gives the
//! connection up and sends again, on a new one, what the broker already did.
//!
//! For a producer with idempotence off the broker cannot tell such a retry from the original,
//! so the topic really holds some metrics twice. Whichever connections are disturbed, the
//! producer's, the service's own or both, the service must store every metric exactly once,
//! count each repeat the topic holds as a skipped duplicate, and dead-letter nothing.

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::kafka::{ClusterOptions, KafkaCluster};
use common::proxy::Proxy;
use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Metrics produced, each one distinct.
const METRICS: usize = 20_000;
/// The socket timeout of the producer and of the service: short, so that answers dropped for
/// a few seconds make every request in flight time out.
const TIMEOUT_MS: u64 = 2000;
/// How often, and for how long each time, the node's answers are thrown away.
const DROPS: usize = 3;
const DROP_FOR: Duration = Duration::from_secs(4);

/// Whose connections go through the proxy; the others go straight to the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disturbed {
    Producer,
    Service,
    Both,
}

impl Disturbed {
    fn producer(self) -> bool {
        matches!(self, Disturbed::Producer | Disturbed::Both)
    }

    fn service(self) -> bool {
        matches!(self, Disturbed::Service | Disturbed::Both)
    }
}

/// A producer that retries every request it hears nothing about, with nothing to tell the
/// broker that a retry is one: no idempotence, several requests in flight.
fn retrying_producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "false")
        .set("acks", "all")
        .set("retries", "1000000")
        .set("max.in.flight.requests.per.connection", "5")
        .set("linger.ms", "5")
        .set("socket.timeout.ms", TIMEOUT_MS.to_string())
        .set("socket.connection.setup.timeout.ms", TIMEOUT_MS.to_string())
        .set("message.timeout.ms", "180000")
        .create()
        .expect("producer")
}

/// Metric `i`: its own time, so that no two share a key.
fn metric(i: usize, base: i64) -> (i32, Vec<u8>) {
    let partition = (i % PARTITIONS as usize) as i32;
    let payload = guide_message(&format!("pod-{}", i % 200), 1.0, 2.0, base + i as i64);
    (partition, payload)
}

/// Sends [`METRICS`] metrics, 100 every 50 ms, without waiting for one delivery before the
/// next send, so that requests are in flight whenever the answers go missing; then waits for
/// every delivery.
async fn produce_steadily(producer: FutureProducer, topic: String, base: i64) {
    let mut deliveries = Vec::with_capacity(METRICS);
    for start in (0..METRICS).step_by(100) {
        for i in start..start + 100 {
            let (partition, payload) = metric(i, base);
            let delivery = producer
                .send_result(
                    FutureRecord::<(), [u8]>::to(&topic)
                        .partition(partition)
                        .payload(payload.as_slice()),
                )
                .map_err(|(e, _)| e)
                .expect("enqueue a metric");
            deliveries.push(delivery);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for delivery in deliveries {
        let outcome = tokio::time::timeout(Duration::from_secs(200), delivery)
            .await
            .expect("a delivery report within the message timeout")
            .expect("the producer is still there");
        outcome.map_err(|(e, _)| e).expect("delivered");
    }
}

/// The records a topic holds: the sum of its partitions' high watermarks (no transactions
/// and no compaction, so offsets are contiguous from 0), read straight from the node.
fn records_in(bootstrap: &str, topic: &str, partitions: i32) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("watermark client");
    (0..partitions)
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            assert_eq!(low, 0, "partition {p} starts at 0");
            high
        })
        .sum()
}

/// Polls until `check` holds for the count `sql` answers, or `deadline` passes; returns the
/// last count.
async fn wait_until(
    db: &TestDatabase,
    sql: &str,
    deadline: Instant,
    check: impl Fn(i64) -> bool,
) -> i64 {
    loop {
        let count = match db.client().await.query_one(sql, &[]).await {
            Ok(row) => row.get(0),
            Err(_) => -1,
        };
        if check(count) || Instant::now() >= deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn answers_lost(disturbed: Disturbed) {
    let _alone = one_fault_at_a_time().await;
    // Arrange: a node whose proxied listener advertises the proxy, so that a client
    // bootstrapping from the proxy keeps coming back through it.
    let proxied_port = free_port();
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], proxied_port)));
    let cluster = KafkaCluster::start(ClusterOptions::proxied(proxied_port, &proxy.address()))
        .unwrap_or_else(|e| panic!("cannot start Apache Kafka: {e:#}"));
    let direct = cluster.bootstrap();
    let through_proxy = proxy.address();
    let route = |through: bool| if through { &through_proxy } else { &direct };
    let topic = unique("metrics");
    create_topic_on(&direct, &topic).await;
    let db = TestDatabase::create().await;
    let mut env = service_env(&topic, &unique("group"), &db);
    env.insert(
        "KAFKA_BROKERS".into(),
        route(disturbed.service()).to_owned(),
    );
    env.insert("KAFKA_SOCKET_TIMEOUT_MS".into(), TIMEOUT_MS.to_string());
    let app = TestApp::spawn_consuming(env);

    // Act: the answers go missing three times while the metrics flow and the service drains.
    let production = tokio::spawn(produce_steadily(
        retrying_producer(route(disturbed.producer())),
        topic.clone(),
        now_ms() - 3_600_000,
    ));
    assert!(wait_for_count(&db, "SELECT count(*) FROM system_metrics", 1000).await >= 1000);
    for _ in 0..DROPS {
        proxy.drop_answers();
        tokio::time::sleep(DROP_FOR).await;
        proxy.restore();
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    production.await.expect("every metric delivered");
    let records = records_in(&direct, &topic, PARTITIONS);

    // Assert: every record the topic holds consumed, each metric stored once.
    let deadline = Instant::now() + Duration::from_secs(120);
    let consumed = wait_until(
        &db,
        "SELECT coalesce(sum(next_offset), 0)::int8 FROM kafka_offsets",
        deadline,
        |n| n >= records,
    )
    .await;
    let stored = wait_until(&db, "SELECT count(*) FROM system_metrics", deadline, |n| {
        n >= METRICS as i64
    })
    .await;
    // Anything more would be a duplicate: give it time to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = app.status().await;
    let dead_letter_records = records_in(&direct, &format!("{topic}.dlq"), 1);
    let distinct = db
        .count(
            "SELECT count(*) FROM (SELECT DISTINCT namespace, pod_name, service, time \
             FROM system_metrics) d",
        )
        .await;
    let duplicates = status["writer"]["duplicates_skipped"].as_i64();
    eprintln!(
        "{disturbed:?} disturbed: {METRICS} produced, {records} records in the topic, \
         {stored} rows ({distinct} distinct), {duplicates:?} duplicates skipped, \
         {} bytes of answers dropped",
        proxy.dropped_bytes()
    );
    assert!(proxy.dropped_bytes() > 0, "no answer was dropped");
    if disturbed.producer() {
        assert!(
            records > METRICS as i64,
            "no retried request was stored twice: {records} records for {METRICS} metrics"
        );
    }
    assert_eq!(consumed, records, "records consumed; status: {status:#}");
    assert_eq!(stored, METRICS as i64, "rows stored; status: {status:#}");
    assert_eq!(
        db.count("SELECT count(*) FROM system_metrics").await,
        METRICS as i64
    );
    assert_eq!(distinct, METRICS as i64, "distinct metrics stored");
    assert_eq!(
        duplicates,
        Some(records - METRICS as i64),
        "each repeat the topic holds skipped as a duplicate; status: {status:#}"
    );
    assert_eq!(status["validator"]["dead_lettered"].as_u64(), Some(0));
    assert_eq!(dead_letter_records, 0, "nothing dead-lettered");
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_retrying_requests_whose_answers_were_lost_duplicates_nothing_stored() {
    answers_lost(Disturbed::Producer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_losing_the_answers_to_its_fetches_stores_every_metric_once() {
    answers_lost(Disturbed::Service).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_and_service_losing_answers_together_store_every_metric_once() {
    answers_lost(Disturbed::Both).await;
}
