//! A broker that stops answering mid-ingestion (frozen, as behind a network partition) and comes
//! back: the service keeps running, reconnects and resumes, storing each metric once and
//! skipping, as duplicates, the repeats the producer's retries put in the topic. The test freezes
//! a broker of its own, not the one the other tests share.

use crate::common;

use std::time::Duration;

use common::kafka::{ClusterOptions, KafkaCluster};
use common::*;
use rdkafka::config::ClientConfig;

fn client(cluster: &KafkaCluster) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", cluster.bootstrap());
    client
}

/// Sends a signal (`STOP`, `CONT`) to the broker, and fails unless it was delivered.
fn signal_broker(cluster: &KafkaCluster, signal: &str) {
    let pid = cluster.pid(0).expect("the broker runs");
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

async fn produce_range(client: ClientConfig, topic: &str, from: usize, to: usize, base: i64) {
    let producer = producer_on(client);
    let payloads: Vec<(i32, Vec<u8>)> = (from..to)
        .map(|i| {
            let partition = (i % PARTITIONS as usize) as i32;
            (
                partition,
                guide_message(&format!("pod-{}", i % 300), 1.0, 2.0, base + i as i64),
            )
        })
        .collect();
    produce_all(&producer, topic, &payloads, Duration::from_secs(120)).await;
}

#[tokio::test]
async fn a_broker_outage_is_ridden_out_without_loss_or_duplicates() {
    let _alone = one_fault_at_a_time().await;
    let cluster = KafkaCluster::start(ClusterOptions::default()).expect("start Apache Kafka");
    let topic = unique("metrics");
    create_topic_with(&client(&cluster), &topic).await;
    let db = TestDatabase::create().await;
    let mut env = service_env(&topic, &unique("group"), &db);
    env.insert("KAFKA_BROKERS".into(), cluster.bootstrap());
    let mut app = TestApp::spawn_consuming(env);
    let base = now_ms() - 3_600_000;
    produce_range(client(&cluster), &topic, 0, 3000, base).await;
    assert_eq!(
        wait_for_count(&db, "SELECT count(*) FROM system_metrics", 3000).await,
        3000
    );

    // Metrics produced while the broker is down arrive once it is back.
    let late = {
        let topic = topic.clone();
        let client = client(&cluster);
        tokio::spawn(async move { produce_range(client, &topic, 3000, 6000, base).await })
    };
    signal_broker(&cluster, "STOP");
    tokio::time::sleep(Duration::from_secs(12)).await;
    let health = reqwest::get(app.url("/health")).await.unwrap();
    assert_eq!(health.status(), 200, "the service runs through the outage");
    signal_broker(&cluster, "CONT");
    late.await.unwrap();

    let stored = wait_for_count(&db, "SELECT count(*) FROM system_metrics", 6000).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stored, 6000);
    assert_eq!(db.count("SELECT count(*) FROM system_metrics").await, 6000);
    // The producer's requests stuck in the frozen broker may be retried, so the topic can hold
    // a metric twice: every message the topic holds is consumed, the repeats skipped as such.
    let held = consume_all_on(client(&cluster), &topic, 6000).await.len() as i64;
    assert_eq!(
        db.count("SELECT sum(next_offset)::int8 FROM kafka_offsets")
            .await,
        held
    );
    let status = app.status().await;
    assert_eq!(
        status["writer"]["duplicates_skipped"].as_i64(),
        Some(held - 6000),
        "{status:#}"
    );
    assert!(
        app.try_exit().is_none(),
        "the service is still running: {:#?}",
        app.lines()
    );
}
