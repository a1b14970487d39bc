//! The dead-letter topic: every message Panopticon cannot store goes there with its original
//! key and payload, and headers saying why, where it came from and when. A dead letter is sent
//! until the broker acknowledges it; the offset of its message is not stored before that.

use std::time::Duration;

use chrono::Utc;
use futures_util::future::join_all;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaResult;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::backoff::Backoff;
use crate::kafka_security::KafkaSecurity;

/// Header names of a dead letter.
pub const REASON_HEADER: &str = "panopticon-reason";
pub const DETAIL_HEADER: &str = "panopticon-detail";
pub const TOPIC_HEADER: &str = "panopticon-source-topic";
pub const PARTITION_HEADER: &str = "panopticon-source-partition";
pub const OFFSET_HEADER: &str = "panopticon-source-offset";
pub const TIME_HEADER: &str = "panopticon-dead-lettered-at";

/// One message to dead-letter.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    pub reason: &'a str,
    pub detail: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// The producer of dead letters; cheap to clone.
#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    source_topic: String,
}

impl DeadLetters {
    /// A producer to `topic` over the same secured connection as the consumer's.
    pub fn new(
        brokers: &str,
        security: &KafkaSecurity,
        topic: &str,
        source_topic: &str,
    ) -> KafkaResult<DeadLetters> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("client.id", "panopticon-dead-letters")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000");
        security.apply(&mut config);
        let producer = config.create()?;
        Ok(DeadLetters {
            producer,
            topic: topic.to_owned(),
            source_topic: source_topic.to_owned(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends every letter and returns once the broker has acknowledged all of them, retrying
    /// the failed ones with backoff for as long as it takes: the caller's offsets wait.
    pub async fn send_all(&self, letters: &[DeadLetter<'_>]) {
        let mut pending: Vec<&DeadLetter<'_>> = letters.iter().collect();
        let mut backoff = Backoff::new(Duration::from_millis(400), Duration::from_secs(10));
        while !pending.is_empty() {
            let now = Utc::now().to_rfc3339();
            let results = join_all(pending.iter().map(|letter| {
                let partition = letter.partition.to_string();
                let offset = letter.offset.to_string();
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: REASON_HEADER,
                        value: Some(letter.reason),
                    })
                    .insert(Header {
                        key: DETAIL_HEADER,
                        value: Some(letter.detail),
                    })
                    .insert(Header {
                        key: TOPIC_HEADER,
                        value: Some(self.source_topic.as_str()),
                    })
                    .insert(Header {
                        key: PARTITION_HEADER,
                        value: Some(partition.as_str()),
                    })
                    .insert(Header {
                        key: OFFSET_HEADER,
                        value: Some(offset.as_str()),
                    })
                    .insert(Header {
                        key: TIME_HEADER,
                        value: Some(now.as_str()),
                    });
                let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic)
                    .payload(letter.payload)
                    .headers(headers);
                if let Some(key) = letter.key {
                    record = record.key(key);
                }
                self.producer.send(record, Duration::from_secs(5))
            }))
            .await;
            let mut failed = Vec::new();
            for (letter, result) in pending.into_iter().zip(results) {
                if let Err((e, _)) = result {
                    failed.push((letter, e));
                }
            }
            if let Some((_, e)) = failed.first() {
                let delay = backoff.next_delay();
                log::warn!(
                    "{} dead letters not acknowledged by topic {} ({e}); retrying in {} ms",
                    failed.len(),
                    self.topic,
                    delay.as_millis()
                );
                tokio::time::sleep(delay).await;
            }
            pending = failed.into_iter().map(|(letter, _)| letter).collect();
        }
    }
}
