//! A broker that stops answering mid-ingestion (frozen, as behind a network partition) and comes
//! back: the service keeps running, reconnects and resumes, storing each metric once and
//! skipping, as duplicates, the repeats the producer's retries put in the topic. In a
//! file of its own because it freezes the broker its test process shares.

mod common;

use std::time::Duration;

use common::*;

async fn produce_range(topic: &str, from: usize, to: usize, base: i64) {
    let producer = producer();
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
    let topic = unique("metrics");
    create_topic(&topic).await;
    let db = TestDatabase::create().await;
    let mut app = TestApp::spawn_consuming(service_env(&topic, &unique("group"), &db));
    let base = now_ms() - 3_600_000;
    produce_range(&topic, 0, 3000, base).await;
    assert_eq!(
        wait_for_count(&db, "SELECT count(*) FROM system_metrics", 3000).await,
        3000
    );

    // Metrics produced while the broker is down arrive once it is back.
    let late = {
        let topic = topic.clone();
        tokio::spawn(async move { produce_range(&topic, 3000, 6000, base).await })
    };
    signal_broker("STOP");
    tokio::time::sleep(Duration::from_secs(12)).await;
    let health = reqwest::get(app.url("/health")).await.unwrap();
    assert_eq!(health.status(), 200, "the service runs through the outage");
    signal_broker("CONT");
    late.await.unwrap();

    let stored = wait_for_count(&db, "SELECT count(*) FROM system_metrics", 6000).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stored, 6000);
    assert_eq!(db.count("SELECT count(*) FROM system_metrics").await, 6000);
    // The producer's requests stuck in the frozen broker may be retried, so the topic can hold
    // a metric twice: every message the topic holds is consumed, the repeats skipped as such.
    let held = consume_all(&topic, 6000).await.len() as i64;
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
