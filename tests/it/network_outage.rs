//! A database or broker that stops answering without closing the connection (a firewall or NAT
//! dropping packets, a server failing over): a proxy of the test's own between the service and
//! the server black-holes the traffic mid-ingestion — bytes swallowed, connections left open,
//! nothing reset — and then lets new connections through, while the old ones stay swallowed.
//! The service must notice within its configured timeouts, say so on `/ready`, reconnect, and
//! store every metric exactly once.

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureProducer;

/// The timeouts the service runs with here: short, so that the test is quick.
const TIMEOUT_MS: u64 = 2000;
/// How long the black hole lasts: several timeouts.
const OUTAGE: Duration = Duration::from_secs(8);
/// Metrics produced, per partition.
const PER_PARTITION: usize = 2000;

/// Metric `i` of partition `partition`: each one distinct.
fn metric(partition: i32, i: usize, base: i64) -> Vec<u8> {
    guide_message(
        &format!("pod-{partition}-{}", i % 100),
        10.0,
        20.0,
        base + (i / 100) as i64 * 1000,
    )
}

/// Produces [`PER_PARTITION`] metrics to each partition, about 1,500 a second in all, so that
/// the service is writing while the test cuts the line.
async fn produce_steadily(producer: FutureProducer, topic: String, base: i64) {
    let step = 50;
    for start in (0..PER_PARTITION).step_by(step) {
        let payloads: Vec<(i32, Vec<u8>)> = (0..PARTITIONS)
            .flat_map(|p| (start..start + step).map(move |i| (p, metric(p, i, base))))
            .collect();
        produce_all(&producer, &topic, &payloads, Duration::from_secs(120)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ready_status(app: &TestApp) -> (u16, serde_json::Value) {
    let response = reqwest::get(app.url("/ready")).await.expect("GET /ready");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// Every metric stored, each once, within `deadline`.
async fn assert_all_stored_once(db: &TestDatabase, deadline: Instant, app: &TestApp) {
    let expected = (PER_PARTITION * PARTITIONS as usize) as i64;
    let mut stored = -1;
    while Instant::now() < deadline {
        stored = db.count("SELECT count(*) FROM system_metrics").await;
        if stored >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        stored,
        expected,
        "not every metric was stored in time; status: {:#}",
        app.status().await
    );
    // Anything more would be a duplicate: give it time to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        db.count("SELECT count(*) FROM system_metrics").await,
        expected
    );
    assert_eq!(
        db.count(
            "SELECT count(*) FROM (SELECT DISTINCT namespace, pod_name, service, time \
             FROM system_metrics) d"
        )
        .await,
        expected
    );
}

/// Waits until `/ready` answers 503 and returns its reason.
async fn wait_not_ready(app: &TestApp, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = ready_status(app).await;
        if status == 503 {
            return body["reason"].as_str().unwrap_or_default().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "/ready stayed {status} for {within:?} of the outage: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_database_that_stops_answering_is_given_up_and_reconnected_without_loss_or_duplicates() {
    let _alone = one_fault_at_a_time().await;
    let Setup { topic, group, db } = setup().await;
    // `postgres://<user>@<host:port>/<database>`, on the server TEST_DATABASE_URL names.
    let (server, database) = db
        .url
        .rsplit_once('@')
        .and_then(|(_, at)| at.split_once('/'))
        .expect("server and database in the URL");
    let server: SocketAddr = server.parse().expect("the server's address");
    let proxy = Proxy::start(server);
    let mut env = service_env(&topic, &group, &db);
    env.insert(
        "DATABASE_URL".into(),
        format!("postgres://postgres@{}/{database}", proxy.address()),
    );
    env.insert("DATABASE_CONNECT_TIMEOUT_MS".into(), TIMEOUT_MS.to_string());
    env.insert(
        "DATABASE_STATEMENT_TIMEOUT_MS".into(),
        TIMEOUT_MS.to_string(),
    );
    env.insert("BATCH_MAX_ROWS".into(), "300".into());
    let app = TestApp::spawn_consuming(env);

    let production = tokio::spawn(produce_steadily(
        producer(),
        topic.clone(),
        now_ms() - 3_600_000,
    ));
    assert!(wait_for_count(&db, "SELECT count(*) FROM system_metrics", 600).await >= 600);
    proxy.black_hole();
    let cut = Instant::now();

    // The writer's round trip goes unanswered: within the statement timeout (and a retry's
    // backoff) the service says the database is down.
    let reason = wait_not_ready(&app, Duration::from_millis(TIMEOUT_MS * 3)).await;
    assert!(reason.contains("database"), "{reason}");
    let status = app.status().await;
    assert!(
        status["database"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("did not answer")),
        "{status:#}"
    );
    tokio::time::sleep(OUTAGE.saturating_sub(cut.elapsed())).await;
    let (during, _) = ready_status(&app).await;
    assert_eq!(during, 503, "still down at the end of the outage");
    proxy.restore();
    let restored = Instant::now();

    // A new connection gets through; the old one stays swallowed, and its server session,
    // left inside a transaction, is ended by the new one.
    production.await.expect("producer");
    // Recovery: a failed attempt costs at most a timeout and the writer's longest backoff
    // (10 s); what is left to store takes a few seconds.
    assert_all_stored_once(&db, restored + Duration::from_secs(40), &app).await;
    let (after, body) = ready_status(&app).await;
    assert_eq!(after, 200, "{body}");
    assert!(
        !app.lines_containing("ended the database session of the connection given up")
            .is_empty(),
        "the stuck session was not ended"
    );
}

/// A producer whose requests time out as fast as the service's, so that the test's own
/// metrics get through soon after the outage.
fn bounded_producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .set("socket.timeout.ms", TIMEOUT_MS.to_string())
        .set("message.timeout.ms", "120000")
        .create()
        .expect("producer")
}

/// A Kafka node of the test's own whose listener on `port` advertises `advertised`.
fn broker_behind(port: u16, advertised: &str) -> common::kafka::KafkaCluster {
    common::kafka::KafkaCluster::start(common::kafka::ClusterOptions::proxied(port, advertised))
        .unwrap_or_else(|e| panic!("cannot start Apache Kafka: {e:#}"))
}

#[tokio::test]
async fn a_broker_that_stops_answering_is_reconnected_without_loss_or_duplicates() {
    let _alone = one_fault_at_a_time().await;
    // A broker of the test's own, advertising the proxy: every client's connections, the
    // service's and the producer's, go through it.
    let broker_port = free_port();
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], broker_port)));
    let _cluster = broker_behind(broker_port, &proxy.address());
    let brokers = proxy.address();
    let Setup { topic, group, db } =
        setup_with(&client_of(&brokers), TestDatabase::create().await).await;
    let mut env = service_env(&topic, &group, &db);
    env.insert("KAFKA_BROKERS".into(), brokers.clone());
    env.insert("KAFKA_SOCKET_TIMEOUT_MS".into(), TIMEOUT_MS.to_string());
    let app = TestApp::spawn_consuming(env);

    let production = tokio::spawn(produce_steadily(
        bounded_producer(&brokers),
        topic.clone(),
        now_ms() - 3_600_000,
    ));
    assert!(wait_for_count(&db, "SELECT count(*) FROM system_metrics", 600).await >= 600);
    proxy.black_hole();
    tokio::time::sleep(OUTAGE).await;
    let health = reqwest::get(app.url("/health")).await.expect("GET /health");
    assert_eq!(health.status(), 200, "the service runs through the outage");
    proxy.restore();
    let restored = Instant::now();

    production.await.expect("producer");
    // Recovery: the requests left on the swallowed connections time out after
    // KAFKA_SOCKET_TIMEOUT_MS, and librdkafka reconnects within its longest reconnect backoff
    // (10 s); librdkafka's own default would wait 60 s.
    assert_all_stored_once(&db, restored + Duration::from_secs(35), &app).await;
    let (after, body) = ready_status(&app).await;
    assert_eq!(after, 200, "{body}");
}
