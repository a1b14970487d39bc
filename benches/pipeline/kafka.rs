//! Kafka: topics, producers and their delivery reports, consumers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};

use crate::{harness, within};

pub async fn create_topic(broker: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", broker);
    within(
        Duration::from_secs(30),
        "create topic",
        harness::create_topics(&client, &[(topic, partitions)]),
    )
    .await?
}

/// Delivery reports: how many, and where each tracked message landed.
#[derive(Default)]
pub struct Deliveries {
    /// `(partition, offset)` by message index; empty when positions are not tracked.
    pub positions: Mutex<Vec<(i32, i64)>>,
    /// When each message's delivery report came, by message index; empty when not tracked.
    pub acked_at: Mutex<Vec<Option<std::time::Instant>>>,
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub first_error: Mutex<Option<String>>,
}

impl Deliveries {
    /// Fails with the first error where a message was not delivered.
    pub fn ensure_all_delivered(&self) -> anyhow::Result<()> {
        if let Some(e) = self.first_error.lock().unwrap().clone() {
            bail!(
                "{} messages were not delivered: {e}",
                self.failed.load(Ordering::Relaxed)
            );
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct Tracking(pub Arc<Deliveries>);

impl ClientContext for Tracking {}

impl ProducerContext for Tracking {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        match result {
            Ok(message) => {
                self.0.delivered.fetch_add(1, Ordering::Relaxed);
                let mut positions = self.0.positions.lock().unwrap();
                if let Some(slot) = positions.get_mut(index) {
                    *slot = (message.partition(), message.offset());
                }
                drop(positions);
                if let Some(slot) = self.0.acked_at.lock().unwrap().get_mut(index) {
                    *slot = Some(std::time::Instant::now());
                }
            }
            Err((e, _)) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
                self.0
                    .first_error
                    .lock()
                    .unwrap()
                    .get_or_insert(e.to_string());
            }
        }
    }
}

/// Sends one record, waiting while librdkafka's queue is full.
pub fn send(
    producer: &ThreadedProducer<Tracking>,
    topic: &str,
    partition: i32,
    key: &str,
    payload: &[u8],
    index: usize,
) -> anyhow::Result<()> {
    let mut record = BaseRecord::with_opaque_to(topic, index)
        .partition(partition)
        .key(key)
        .payload(payload);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                ensure!(Instant::now() < deadline, "producer queue full for 60 s");
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => bail!("produce: {e}"),
        }
    }
}

/// The consumers' settings: the read limit's, the naive service's, the broker probe's.
pub fn consumer_config(broker: &str, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", broker)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .set("fetch.queue.backoff.ms", "10")
        // The service's prefetch bound, so the read limit has the same buffer to work with.
        .set("queued.max.messages.kbytes", "16384");
    config
}
