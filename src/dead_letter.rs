//! The dead-letter topic: every message Panopticon cannot store goes there with its original
//! key and payload, and headers saying why, where it came from and when. A dead letter is sent
//! until the broker acknowledges it; the offset of its message is not stored before that.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures_util::future::join_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaResult;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::backoff::Backoff;
use crate::config::KafkaSettings;
use crate::stats::{HeldPartition, Stats};

/// Header names of a dead letter.
pub(crate) const REASON_HEADER: &str = "panopticon-reason";
pub(crate) const DETAIL_HEADER: &str = "panopticon-detail";
pub(crate) const TOPIC_HEADER: &str = "panopticon-source-topic";
pub(crate) const PARTITION_HEADER: &str = "panopticon-source-partition";
pub(crate) const OFFSET_HEADER: &str = "panopticon-source-offset";
pub(crate) const TIME_HEADER: &str = "panopticon-dead-lettered-at";

/// One message to dead-letter.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter<'a> {
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    pub reason: &'a str,
    pub detail: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// The producer of dead letters; cheap to clone.
#[derive(Clone)]
pub(crate) struct DeadLetters {
    /// Replaced by a new one made from `config` when librdkafka declares it failed for good
    /// (an idempotent producer refused its producer id: no Write ACL on any topic).
    producer: Arc<Mutex<FutureProducer>>,
    config: ClientConfig,
    topic: String,
    source_topic: String,
}

impl DeadLetters {
    /// A producer to the dead-letter topic over the same secured connection as the
    /// consumer's.
    pub(crate) fn new(settings: &KafkaSettings) -> KafkaResult<DeadLetters> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &settings.brokers)
            .set("client.id", "panopticon-dead-letters")
            // Missing, the topic is made at start-up with its own settings, or reported.
            .set("allow.auto.create.topics", "false")
            // Acknowledged by every in-sync replica, and written once however often a send is
            // retried: a dead letter is acknowledged before its offset is stored, so a
            // leader lost after its answer must not lose it, and a retry after a lost answer
            // must not store it twice.
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000");
        crate::kafka_security::bound_network(&mut config, settings.socket_timeout_ms);
        settings.security.apply(&mut config);
        let producer = config.create()?;
        Ok(DeadLetters {
            producer: Arc::new(Mutex::new(producer)),
            config,
            topic: settings.dlq_topic.clone(),
            source_topic: settings.topic.clone(),
        })
    }

    /// Sends every letter and returns once the broker has acknowledged all of them, retrying
    /// the failed ones with backoff for as long as it takes: the caller's offsets wait. While
    /// they wait, `stats` shows the partitions held and why.
    pub(crate) async fn send_all(&self, letters: &[DeadLetter<'_>], stats: &Stats) {
        let mut pending: Vec<&DeadLetter<'_>> = letters.iter().collect();
        let mut backoff = Backoff::new(Duration::from_millis(400), Duration::from_secs(10));
        while !pending.is_empty() {
            let producer = self.producer();
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
                producer.send(record, Duration::from_secs(5))
            }))
            .await;
            let mut failed = Vec::new();
            for (letter, result) in pending.into_iter().zip(results) {
                if let Err((e, _)) = result {
                    failed.push((letter, e));
                }
            }
            stats.hold_partitions(
                failed
                    .iter()
                    .map(|(letter, e)| HeldPartition {
                        partition: letter.partition,
                        offset: letter.offset,
                        reason: format!(
                            "dead letter not acknowledged by topic {}: {e}",
                            self.topic
                        ),
                    })
                    .collect(),
                letters.iter().map(|letter| letter.partition),
            );
            if let Some((code, reason)) = producer.client().fatal_error() {
                self.replace_failed_producer(code, &reason);
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

impl DeadLetters {
    fn producer(&self) -> FutureProducer {
        match self.producer.lock() {
            Ok(producer) => producer.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Makes a new producer in place of one librdkafka declared failed for good, which would
    /// refuse every send from then on: the cause (an ACL) may be lifted by now, and if it is
    /// not, the new one says so again.
    fn replace_failed_producer(&self, code: RDKafkaErrorCode, reason: &str) {
        log::warn!(
            "dead-letter producer failed for good ({code}: {reason}); making a new one (the principal needs Write on topic {})",
            self.topic
        );
        match self.config.create::<FutureProducer>() {
            Ok(fresh) => {
                if let Ok(mut producer) = self.producer.lock() {
                    *producer = fresh;
                }
            }
            Err(e) => log::warn!("cannot make a new dead-letter producer: {e}"),
        }
    }
}

/// Creates the dead-letter topic where it is missing, as Kafka Connect does: without it the
/// first invalid message would hold its partition. Where the broker refuses, says so in one
/// ERROR line, keeps `/ready` at 503 and tries again in the background until the topic exists.
pub(crate) async fn ensure_topic_at_start(settings: &KafkaSettings, stats: Arc<Stats>) {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("client.id", "panopticon-admin");
    settings.security.apply(&mut config);
    crate::kafka_security::bound_network(&mut config, settings.socket_timeout_ms);
    let topic = settings.dlq_topic.clone();
    let partitions = settings.dlq_partitions;
    let error = match ensure_topic(&config, &topic, partitions).await {
        Ok(created) => {
            if created {
                log::info!("created dead-letter topic topic={topic} partitions={partitions}");
            }
            return;
        }
        Err(e) => e,
    };
    log::error!(
        "dead-letter topic {topic} is missing and cannot be created ({error}); create it \
         (kafka-topics.sh --create --topic {topic} --partitions {partitions}) or allow this client to create topics: \
         until then a partition holding an invalid message waits and /ready answers 503"
    );
    stats.set_dead_letter_topic_error(Some(format!(
        "dead-letter topic {topic} is missing and cannot be created: {error}"
    )));
    actix_rt::spawn(recheck_topic(config, topic, partitions, stats));
}

/// Looks for the dead-letter topic every [`TOPIC_RECHECK`], making it where it is still
/// missing, until it exists.
async fn recheck_topic(config: ClientConfig, topic: String, partitions: i32, stats: Arc<Stats>) {
    let mut tick = tokio::time::interval(TOPIC_RECHECK);
    tick.tick().await;
    loop {
        tick.tick().await;
        if stats.dead_letter_topic_error().is_none() {
            return;
        }
        if let Ok(created) = ensure_topic(&config, &topic, partitions).await {
            if created {
                log::info!("created dead-letter topic topic={topic} partitions={partitions}");
            } else {
                log::info!("dead-letter topic {topic} exists now");
            }
            stats.set_dead_letter_topic_error(None);
            return;
        }
    }
}

/// How often a dead-letter topic that could not be created is looked for again.
const TOPIC_RECHECK: Duration = Duration::from_secs(15);

/// Whether the dead-letter topic exists, making it if it does not: `Ok(true)` when this call
/// created it. The broker's own default replication factor is used (`-1`, Kafka 2.4 and later).
pub(crate) async fn ensure_topic(
    config: &ClientConfig,
    topic: &str,
    partitions: i32,
) -> Result<bool, String> {
    let admin: AdminClient<DefaultClientContext> =
        // The admin client is a producer to librdkafka, whose metadata requests would
        // otherwise let a broker auto-create the topic with its own defaults.
        config
            .clone()
            .set("allow.auto.create.topics", "false")
            .create()
            .map_err(|e| format!("admin client: {e}"))?;
    let probe = topic.to_owned();
    let admin = std::sync::Arc::new(admin);
    let metadata_admin = admin.clone();
    let exists = tokio::task::spawn_blocking(move || {
        metadata_admin
            .inner()
            .fetch_metadata(Some(&probe), Duration::from_secs(10))
            .map(|metadata| {
                metadata
                    .topics()
                    .iter()
                    .any(|t| t.name() == probe && t.error().is_none() && !t.partitions().is_empty())
            })
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("cannot read the topic's metadata: {e}"))?;
    if exists {
        return Ok(false);
    }
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(15)));
    let results = admin
        .create_topics([&new], &options)
        .await
        .map_err(|e| e.to_string())?;
    for result in results {
        match result {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => return Ok(false),
            Err((_, code)) => return Err(format!("the broker refused to create it: {code}")),
        }
    }
    Ok(true)
}
