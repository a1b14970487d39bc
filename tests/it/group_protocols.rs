//! Both consumer group protocols, `classic` and KIP-848's `consumer` (`KAFKA_GROUP_PROTOCOL`):
//! two service instances share a topic under load, rebalance as the second joins, and one is
//! killed with SIGKILL; the survivor takes its partitions once the broker expires it (the
//! session timeout: 30 s on the classic protocol, the broker's 45 s on the consumer protocol),
//! and every metric is stored exactly once.

use crate::common;

use std::time::Duration;

use common::*;

const METRICS: usize = 20_000;

async fn two_instances_one_killed(protocol: &str) {
    let Setup { topic, group, db } = setup().await;
    let mut env = service_env(&topic, &group, &db);
    env.insert("KAFKA_GROUP_PROTOCOL".into(), protocol.into());
    let first = TestApp::spawn_consuming(env.clone());
    let second = TestApp::spawn_consuming(env);

    let producer = {
        let topic = topic.clone();
        tokio::spawn(async move {
            let producer = producer_on({
                let mut client = rdkafka::config::ClientConfig::new();
                client.set("bootstrap.servers", broker());
                client
            });
            let base = now_ms() - 3_600_000;
            // A thousand at a time, so that the load runs through the kill.
            for from in (0..METRICS).step_by(1000) {
                let payloads: Vec<(i32, Vec<u8>)> = (from..from + 1000)
                    .map(|i| {
                        let pod = format!("pod-{}", i % 300);
                        (
                            (i % 3) as i32,
                            guide_message(&pod, 1.0, 2.0, base + i as i64),
                        )
                    })
                    .collect();
                produce_all(&producer, &topic, &payloads, Duration::from_secs(60)).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let before = wait_for_count(&db, "SELECT count(*) FROM system_metrics", 5000).await;
    assert!(
        before >= 5000,
        "{protocol}: only {before} rows before the kill"
    );
    first.signal("KILL");
    producer.await.unwrap();
    let stored = wait_for_count(&db, "SELECT count(*) FROM system_metrics", METRICS as i64).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let distinct = db
        .count("SELECT count(DISTINCT (pod_name, time)) FROM system_metrics")
        .await;
    assert_eq!(stored, METRICS as i64, "{protocol}: rows stored");
    assert_eq!(
        db.count("SELECT count(*) FROM system_metrics").await,
        METRICS as i64,
        "{protocol}: rows stored"
    );
    assert_eq!(distinct, METRICS as i64, "{protocol}: distinct metrics");
    let status = second.status().await;
    assert_eq!(
        status["validator"]["dead_lettered"].as_u64(),
        Some(0),
        "{protocol}: nothing dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_classic_protocol_stores_every_metric_once_through_a_killed_member() {
    two_instances_one_killed("classic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_protocol_stores_every_metric_once_through_a_killed_member() {
    two_instances_one_killed("consumer").await;
}
