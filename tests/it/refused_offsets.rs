//! Offsets reach Kafka only after their rows and their offsets are stored: when the database
//! refuses a batch's offset update, neither Kafka's committed offsets nor `/status` move past
//! what the database holds.

use crate::common;

use std::time::Duration;

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

/// The offset the group committed to Kafka for partition 0 of `topic`.
fn committed_in_kafka(topic: &str, group: &str) -> Offset {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, 0);
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed offsets");
    committed
        .find_partition(topic, 0)
        .expect("partition 0")
        .offset()
}

#[tokio::test]
async fn offsets_the_database_refuses_are_committed_neither_to_kafka_nor_in_status() {
    let Setup { topic, group, db } = setup().await;
    let mut env = service_env(&topic, &group, &db);
    env.insert("BATCH_MAX_WAIT_MS".into(), "200".into());
    let app = TestApp::spawn_consuming(env);
    // A rule of this database's own: no offset is ever stored.
    db.client()
        .await
        .batch_execute(
            "CREATE FUNCTION refuse_offsets() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'offsets are refused here'; END $$;
             CREATE TRIGGER refuse_offsets BEFORE INSERT OR UPDATE ON kafka_offsets
             FOR EACH ROW EXECUTE FUNCTION refuse_offsets();",
        )
        .await
        .unwrap();
    let ts = now_ms();
    let payloads: Vec<Vec<u8>> = (0..20)
        .map(|i| guide_message(&format!("pod-{i}"), 1.0, 1.0, ts - i))
        .collect();
    produce(&producer(), &topic, 0, &payloads).await;

    app.wait_for_log("database refused to store offsets", Duration::from_secs(30))
        .expect("the offset update was not refused");
    // Time for a commit to Kafka and a /status update, were either to happen.
    tokio::time::sleep(Duration::from_secs(3)).await;

    assert_eq!(db.count("SELECT count(*) FROM kafka_offsets").await, 0);
    assert_eq!(committed_in_kafka(&topic, &group), Offset::Invalid);
    let status = app.status().await;
    let committed = &status["consumer"]["partitions"]["0"]["committed_offset"];
    assert!(committed.is_null(), "/status says committed {committed}");
}
