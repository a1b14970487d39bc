//! The Kafka consumer actor.
//!
//! Owns the rdkafka consumer (a member of `KAFKA_GROUP_ID`, subscribed to `KAFKA_TOPIC`) and a
//! task that reads records into [`RawChunk`]s and sends them to the validator. Accepts
//! [`OffsetsStored`] from the batch writers, and commits those offsets to Kafka, and [`Stop`],
//! which ends the read task, drains the pipeline and makes a last synchronous commit. Its
//! rebalance callback resumes newly assigned partitions at the offsets stored with the rows
//! ([`StoredOffsets`]) and tells the writers what changed hands ([`Writers::assigned`],
//! [`Writers::revoked`], which send each writer its `Rebalanced`).
//!
//! The read task runs beside the actor rather than inside it because awaiting the next
//! record inside the actor would keep it from handling commits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use actix::prelude::*;
use futures_util::{FutureExt, StreamExt};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol,
    StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::metadata::Metadata;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::actors::messages::{Drain, OffsetsStored, RawChunk, Stop};
use crate::actors::writers::Writers;
use crate::backoff::Retry;
use crate::config::KafkaSettings;
use crate::kafka_security::KafkaSecurity;
use crate::log_limit::LogLimit;
use crate::offsets::{Epoch, Position, StoredOffset, StoredOffsets};
use crate::stats::{PartitionReport, Stats};

pub(crate) type MetricsConsumer = StreamConsumer<ConsumerEvents>;

/// How long the consumer waits on a full validator mailbox before it pauses its partitions.
/// Waiting already stops the reading; memory stays bounded by the mailboxes and librdkafka's
/// prefetch limit. Pausing also stops the fetching, but librdkafka drops its prefetched
/// records on pause and the first record after a resume comes about a second later, so it is
/// kept for a database that is really stalled, not for ordinary load.
const PAUSE_AFTER: Duration = Duration::from_secs(2);

/// Consumer settings Panopticon starts from; `KAFKA_CONSUMER_CONFIG` overrides any of them.
/// librdkafka's own defaults wait up to 500 ms per fetch and back off a full second when its
/// queue fills, which caps a fast consumer far below what the database takes.
const DEFAULT_PROPERTIES: &[(&str, &str)] = &[
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("auto.offset.reset", "earliest"),
    ("fetch.wait.max.ms", "10"),
    ("fetch.queue.backoff.ms", "10"),
    ("queued.max.messages.kbytes", "16384"),
    ("topic.metadata.refresh.interval.ms", "10000"),
    ("statistics.interval.ms", "5000"),
];

/// Defaults of the classic group protocol only: under KIP-848's `consumer` protocol the session
/// timeout, the heartbeat and the assignor are the broker's group settings, and librdkafka
/// refuses a consumer that sets them.
const CLASSIC_PROPERTIES: &[(&str, &str)] = &[
    ("session.timeout.ms", "30000"),
    // Incremental rebalances: a member joining or leaving moves only the partitions that
    // change hands, and the others keep flowing.
    ("partition.assignment.strategy", "cooperative-sticky"),
];

/// The group protocol the consumer speaks: `group.protocol` of `KAFKA_CONSUMER_CONFIG` where
/// given (it overrides everything else), else `KAFKA_GROUP_PROTOCOL`.
fn group_protocol(settings: &KafkaSettings) -> &str {
    settings
        .consumer_config
        .0
        .iter()
        .rev()
        .find(|(key, _)| key == "group.protocol")
        .map_or(settings.group_protocol.as_str(), |(_, value)| {
            value.as_str()
        })
}

/// The consumer's librdkafka configuration: Panopticon's defaults, the network bounds, the
/// security settings, then the user's own properties.
pub(crate) fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", &settings.group_id)
        .set("client.id", "panopticon");
    for (key, value) in DEFAULT_PROPERTIES {
        config.set(*key, *value);
    }
    let protocol = group_protocol(settings);
    config.set("group.protocol", protocol);
    if protocol != "consumer" {
        for (key, value) in CLASSIC_PROPERTIES {
            config.set(*key, *value);
        }
    }
    crate::kafka_security::bound_network(&mut config, settings.socket_timeout_ms);
    settings.security.apply(&mut config);
    for (key, value) in &settings.consumer_config.0 {
        config.set(key, value);
    }
    config.set_log_level(RDKafkaLogLevel::Warning);
    config
}

/// Checks every librdkafka property without connecting; a bad one is a configuration error.
pub(crate) fn check_config(settings: &KafkaSettings) -> KafkaResult<()> {
    client_config(settings).create::<BaseConsumer>().map(drop)
}

/// Builds the consumer from the settings; a bad property is a configuration error.
pub(crate) fn create_consumer(
    settings: &KafkaSettings,
    events: ConsumerEvents,
) -> KafkaResult<MetricsConsumer> {
    client_config(settings).create_with_context(events)
}

/// Waits until a broker answers the consumer, retrying with backoff, and says whether the
/// topic is there to be consumed.
pub(crate) async fn wait_for_broker(
    consumer: MetricsConsumer,
    settings: &KafkaSettings,
    stats: &Stats,
) -> Result<MetricsConsumer, String> {
    let consumer = Arc::new(consumer);
    let mut retry = Retry::new("Kafka broker");
    loop {
        let probe = consumer.clone();
        let topic = settings.topic.clone();
        let answer = tokio::task::spawn_blocking(move || {
            probe.fetch_metadata(Some(&topic), Duration::from_secs(5))
        })
        .await
        .map_err(|e| e.to_string())?;
        match answer {
            Ok(metadata) => {
                stats.set_kafka_error(None);
                report_topic(&consumer, &metadata, &settings.topic, stats);
                break;
            }
            Err(e) => {
                // librdkafka's own account of the failure (TLS, SASL) waits in the consumer's
                // queue, where polling hands it to the consumer's log callback; it says more
                // than the metadata request's error. Nothing is subscribed yet: no record
                // can come.
                let drain = async {
                    loop {
                        let _ = consumer.recv().await;
                    }
                };
                let _ = tokio::time::timeout(Duration::from_millis(200), drain).await;
                let cause = match stats.kafka_error() {
                    Some(reason) => settings.security.explain(&reason),
                    None => e.to_string(),
                };
                retry
                    .failed(&format!("brokers {}: {cause}", settings.brokers))
                    .await
            }
        }
    }
    Arc::try_unwrap(consumer).map_err(|_| "Kafka consumer still shared after the probe".into())
}

/// Says what the broker's metadata tells of a topic that cannot be consumed yet. A broker
/// answers a principal without Describe on the topic that it is not authorized, whether the
/// topic exists or not: that is a refused ACL, said as one, not a missing topic.
fn report_topic(consumer: &MetricsConsumer, metadata: &Metadata, topic: &str, stats: &Stats) {
    let code = match metadata.topics().iter().find(|t| t.name() == topic) {
        Some(found) if found.error().is_none() && !found.partitions().is_empty() => return,
        Some(found) => found.error().map(RDKafkaErrorCode::from),
        None => None,
    };
    match code {
        None | Some(RDKafkaErrorCode::UnknownTopicOrPartition) => {
            log::warn!("topic {topic} does not exist yet; consuming it once it is created");
        }
        Some(code) if consumer.context().access.refused_with(stats, code) => {}
        Some(code) => log::warn!(
            "topic {topic} is not available yet ({code}): it may not exist yet, or not be visible to {}; \
             consuming it once it is",
            consumer.context().access.principal
        ),
    }
}

/// librdkafka's account of a failure without what changes from one attempt to the next (the
/// time it took, how many were suppressed), so that a repeated failure reads the same.
fn tidy_reason(reason: &str) -> String {
    // Log lines start with the thread's name: `[thrd:ssl://host:9093/bootstrap]: `.
    let reason = match reason.strip_prefix("[thrd:") {
        Some(rest) => rest
            .split_once("]: ")
            .map_or(reason, |(_, message)| message),
        None => reason,
    };
    match reason.rfind(" (after ") {
        Some(at) if reason[at..].contains(" in state ") => reason[..at].to_owned(),
        _ => reason.to_owned(),
    }
}

/// What the brokers' ACLs must allow this consumer, to name the missing one when a broker
/// refuses: a principal without Describe on the group cannot join it, and one without Read on
/// the topic joins, is assigned its partitions, and then reads nothing.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    topic: String,
    group: String,
    /// The principal the brokers see, as `kafka-acls` names it.
    principal: String,
}

impl Access {
    pub(crate) fn new(settings: &KafkaSettings) -> Access {
        Access {
            topic: settings.topic.clone(),
            group: settings.group_id.clone(),
            principal: settings.security.principal(),
        }
    }

    /// The account of an authorization error, with the ACL that would lift it; `None` for
    /// every other error.
    fn refusal(&self, code: RDKafkaErrorCode) -> Option<String> {
        let (resource, option) = match code {
            RDKafkaErrorCode::TopicAuthorizationFailed => (
                format!("topic {}", self.topic),
                format!("--topic {}", self.topic),
            ),
            RDKafkaErrorCode::GroupAuthorizationFailed => (
                format!("consumer group {}", self.group),
                format!("--group {}", self.group),
            ),
            _ => return None,
        };
        Some(format!(
            "Kafka refused {principal} access to {resource} ({code}); grant it: kafka-acls.sh \
             --bootstrap-server … --add --allow-principal {principal} --operation Read \
             --operation Describe {option}; until then no metric is read and /ready answers 503",
            principal = self.principal
        ))
    }

    /// Whether `error` is an authorization error; if it is, it is kept for `/ready` and
    /// logged once, as ERROR: nothing is read until an ACL changes.
    fn refused(&self, stats: &Stats, error: &KafkaError) -> bool {
        error
            .rdkafka_error_code()
            .is_some_and(|code| self.refused_with(stats, code))
    }

    /// Whether `code` is an authorization error; if it is, it is kept and logged as
    /// [`Access::refused`] says.
    fn refused_with(&self, stats: &Stats, code: RDKafkaErrorCode) -> bool {
        let Some(reason) = self.refusal(code) else {
            return false;
        };
        if stats
            .replace_kafka_access_error(Some(reason.clone()))
            .as_ref()
            != Some(&reason)
        {
            log::error!("{reason}");
        }
        true
    }

    /// Clears a refusal that `proof` shows lifted: a record read proves both ACLs, an
    /// assignment the group's.
    fn granted(&self, stats: &Stats, proof: Proof) {
        let Some(reason) = stats.kafka_access_error() else {
            return;
        };
        let lifted = match proof {
            Proof::RecordRead => true,
            Proof::Assigned => {
                self.refusal(RDKafkaErrorCode::GroupAuthorizationFailed) == Some(reason)
            }
        };
        if lifted {
            stats.replace_kafka_access_error(None);
            log::info!(
                "Kafka grants {} access to topic {} and group {} now",
                self.principal,
                self.topic,
                self.group
            );
        }
    }
}

/// What shows that a broker lets the consumer have what an ACL refused it.
#[derive(Debug, Clone, Copy)]
enum Proof {
    RecordRead,
    Assigned,
}

/// Callbacks librdkafka runs on the consumer's behalf: rebalances, commits, statistics.
pub(crate) struct ConsumerEvents {
    stats: Arc<Stats>,
    group: String,
    topic: String,
    /// Where the stored offsets are read on assignment.
    stored_offsets: Box<dyn StoredOffsets>,
    /// Whether "Kafka consumer connected" was logged already.
    joined: AtomicBool,
    /// The batch writers, told of assignments and revocations before any record of theirs is
    /// read.
    writers: Arc<Writers>,
    /// Counts rebalances; chunks carry the count their records were polled under
    /// ([`Epoch`]).
    epoch: AtomicU64,
    /// Names the ACL missing when a broker refuses the group or the topic.
    access: Access,
    /// Says which setting to check when a connection fails (`/ready` gives the reason).
    security: KafkaSecurity,
}

impl ConsumerEvents {
    pub(crate) fn new(
        settings: &KafkaSettings,
        stored_offsets: Box<dyn StoredOffsets>,
        writers: Arc<Writers>,
        stats: Arc<Stats>,
    ) -> ConsumerEvents {
        ConsumerEvents {
            stats,
            group: settings.group_id.clone(),
            topic: settings.topic.clone(),
            stored_offsets,
            joined: AtomicBool::new(false),
            writers,
            epoch: AtomicU64::new(0),
            access: Access::new(settings),
            security: settings.security.clone(),
        }
    }

    /// The current assignment's number.
    pub(crate) fn epoch(&self) -> Epoch {
        Epoch(self.epoch.load(Ordering::SeqCst))
    }

    fn partitions(&self, list: &TopicPartitionList) -> Vec<i32> {
        list.elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }

    /// The database's stored offsets for newly assigned partitions: consumption resumes there,
    /// whatever Kafka's committed offsets say. Unreadable offsets fall back to Kafka's; the
    /// writer's fenced offset update then finds the truth before anything is stored.
    fn assign_from_database(&self, list: &mut TopicPartitionList) -> Vec<StoredOffset> {
        let partitions = self.partitions(list);
        let stored = match self.stored_offsets.read(&partitions) {
            Ok(stored) => stored,
            Err(e) => {
                log::warn!(
                    "stored offsets of partitions {partitions:?} unreadable ({e}); starting from Kafka's committed offsets"
                );
                partitions
                    .iter()
                    .map(|p| StoredOffset::new(*p, None))
                    .collect()
            }
        };
        for (partition, next) in stored.iter().filter_map(|s| Some((s.partition, s.next?))) {
            if let Err(e) = list.set_partition_offset(&self.topic, partition, Offset::Offset(next))
            {
                log::warn!("cannot seek partition {partition} to {next}: {e}");
            }
        }
        stored
    }
}

impl ClientContext for ConsumerEvents {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        // Connection failures are reported by the service itself, once, with what to do;
        // librdkafka repeats them every second.
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
                log::error!(target: "librdkafka", "{fac} {message}")
            }
            RDKafkaLogLevel::Error | RDKafkaLogLevel::Warning => {
                // A failed connection (TLS, SASL, transport) is logged here as it happens;
                // the error callback only runs once the consumer is polled.
                if fac == "FAIL" {
                    let reason = self.security.explain(&tidy_reason(message));
                    self.stats.set_kafka_error(Some(reason));
                }
                log::debug!(target: "librdkafka", "{fac} {message}")
            }
            _ => log::trace!(target: "librdkafka", "{fac} {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log::debug!(target: "librdkafka", "{error}: {reason}");
        self.access.refused(&self.stats, &error);
        // Why the brokers cannot be reached (TLS, authentication, transport), for the start-up
        // line and `/ready`; "all brokers are down" follows every such failure and says less.
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::AllBrokersDown) {
            let reason = self.security.explain(&tidy_reason(reason));
            self.stats.set_kafka_error(Some(reason));
        }
    }

    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let Ok(mut partitions) = self.stats.partitions.lock() else {
            return;
        };
        for (id, partition) in partitions.iter_mut() {
            if let Some(seen) = topic.partitions.get(id) {
                partition.observed(seen.hi_offset, seen.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for ConsumerEvents {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        list: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let epoch = Epoch(self.epoch.fetch_add(1, Ordering::SeqCst) + 1);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let stored = self.assign_from_database(list);
                // Before any record of these partitions can reach the writer.
                self.writers.assigned(epoch, stored);
                let result = if cooperative {
                    consumer.incremental_assign(list)
                } else {
                    consumer.assign(list)
                };
                if let Err(e) = result {
                    log::error!("assigning partitions failed: {e}");
                }
                self.post_rebalance(consumer, &Rebalance::Assign(list));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.writers.revoked(&self.partitions(list));
                let result = if cooperative {
                    consumer.incremental_unassign(list)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    log::error!("revoking partitions failed: {e}");
                }
                self.post_rebalance(consumer, &Rebalance::Revoke(list));
            }
            other => {
                let code: rdkafka::error::RDKafkaErrorCode = other.into();
                let _ = consumer.unassign();
                self.post_rebalance(consumer, &Rebalance::Error(KafkaError::Rebalance(code)));
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let assigned: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
                if let Ok(mut partitions) = self.stats.partitions.lock() {
                    for p in &assigned {
                        partitions
                            .entry(*p)
                            .or_insert_with(PartitionReport::default);
                    }
                }
                self.stats.consumer_joined.store(true, Ordering::Relaxed);
                self.access.granted(&self.stats, Proof::Assigned);
                if !self.joined.swap(true, Ordering::Relaxed) {
                    log::info!(
                        "Kafka consumer connected group={} topic={} partitions={assigned:?}",
                        self.group,
                        self.topic
                    );
                } else {
                    log::info!(
                        "partitions assigned topic={} partitions={assigned:?}",
                        self.topic
                    );
                }
            }
            Rebalance::Revoke(list) => {
                let revoked: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
                if let Ok(mut partitions) = self.stats.partitions.lock() {
                    for p in &revoked {
                        partitions.remove(p);
                    }
                }
                log::info!(
                    "partitions revoked topic={} partitions={revoked:?}",
                    self.topic
                );
            }
            Rebalance::Error(e) => log::warn!("consumer group rebalance failed: {e}"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        // The rows are stored; a failed commit only means they may be delivered again.
        if let Err(e) = result {
            log::warn!("committing offsets to Kafka failed: {e}");
        }
    }
}

/// Where the consumer sends what it read: the validator.
pub(crate) struct ConsumerOutput {
    pub chunks: Recipient<RawChunk>,
    pub drain: Recipient<Drain>,
}

pub(crate) struct KafkaConsumer {
    consumer: Arc<MetricsConsumer>,
    topic: String,
    output: Option<ConsumerOutput>,
    stats: Arc<Stats>,
    chunk_max: usize,
    /// Handed to the read task, which sees the brokers' refusals to let it read.
    access: Access,
    /// Ends the read task.
    stop: CancellationToken,
    /// The read task; awaited by [`Stop`] so shutdown knows when the last commit is done.
    reader: Option<JoinHandle<()>>,
}

impl KafkaConsumer {
    pub(crate) fn new(
        consumer: MetricsConsumer,
        settings: &KafkaSettings,
        output: ConsumerOutput,
        stats: Arc<Stats>,
    ) -> KafkaResult<KafkaConsumer> {
        consumer.subscribe(&[settings.topic.as_str()])?;
        Ok(KafkaConsumer {
            consumer: Arc::new(consumer),
            topic: settings.topic.clone(),
            output: Some(output),
            stats,
            chunk_max: settings.chunk_max as usize,
            access: Access::new(settings),
            stop: CancellationToken::new(),
            reader: None,
        })
    }

    fn commit(&self, offsets: &[Position], mode: CommitMode) {
        if offsets.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::with_capacity(offsets.len());
        for next in offsets {
            if let Err(e) =
                list.add_partition_offset(&self.topic, next.partition, Offset::Offset(next.offset))
            {
                log::warn!(
                    "cannot commit offset {} of partition {}: {e}",
                    next.offset,
                    next.partition
                );
            }
        }
        if let Err(e) = self.consumer.commit(&list, mode) {
            log::warn!("committing offsets to Kafka failed: {e}");
        }
    }
}

impl Actor for KafkaConsumer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(output) = self.output.take() else {
            return;
        };
        let reader = Reader {
            consumer: self.consumer.clone(),
            output,
            stats: self.stats.clone(),
            chunk_max: self.chunk_max,
            stop: self.stop.clone(),
            errors: LogLimit::new("Kafka consumer errors", 1),
            access: self.access.clone(),
        };
        let me = ctx.address();
        self.reader = Some(actix_rt::spawn(async move {
            let offsets = reader.run().await;
            // Ask the actor to commit: it owns the topic name and the commit path.
            let _ = me.send(FinalCommit(offsets)).await;
        }));
    }
}

/// The last offsets, committed synchronously before shutdown completes.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct FinalCommit(Vec<Position>);

impl Handler<FinalCommit> for KafkaConsumer {
    type Result = ();

    fn handle(&mut self, FinalCommit(offsets): FinalCommit, _ctx: &mut Self::Context) {
        self.commit(&offsets, CommitMode::Sync);
        let listed: Vec<(i32, i64)> = offsets.iter().map(|n| (n.partition, n.offset)).collect();
        log::info!("final offsets committed: {listed:?}");
    }
}

impl Handler<OffsetsStored> for KafkaConsumer {
    type Result = ();

    fn handle(&mut self, OffsetsStored(offsets): OffsetsStored, _ctx: &mut Self::Context) {
        self.stats.consumer.handled.fetch_add(1, Ordering::Relaxed);
        self.stats.record_committed(&offsets);
        self.commit(&offsets, CommitMode::Async);
    }
}

impl Handler<Stop> for KafkaConsumer {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Stop, _ctx: &mut Self::Context) -> Self::Result {
        self.stop.cancel();
        let reader = self.reader.take();
        Box::pin(async move {
            if let Some(reader) = reader {
                let _ = reader.await;
            }
        })
    }
}

/// The read task: records in, chunks out.
struct Reader {
    consumer: Arc<MetricsConsumer>,
    output: ConsumerOutput,
    stats: Arc<Stats>,
    chunk_max: usize,
    stop: CancellationToken,
    errors: LogLimit,
    /// Says once which ACL is missing when a broker refuses, and when it is granted.
    access: Access,
}

/// Adds a record to a chunk.
fn push(chunk: &mut RawChunk, message: &impl Message) {
    chunk.push(
        Position::new(message.partition(), message.offset()),
        message.key(),
        message.payload().unwrap_or_default(),
    );
}

impl Reader {
    /// Reads until stopped, then drains the pipeline and answers with the stored offsets.
    async fn run(mut self) -> Vec<Position> {
        let consumer = self.consumer.clone();
        let mut stream = consumer.stream();
        let epoch = || consumer.context().epoch();
        // A chunk begun with a record polled after a rebalance, waiting for the next round.
        let mut carried: Option<RawChunk> = None;
        loop {
            let mut chunk = match carried.take() {
                Some(chunk) => chunk,
                None => {
                    let first = tokio::select! {
                        biased;
                        () = self.stop.cancelled() => break,
                        next = stream.next() => next,
                    };
                    match first {
                        Some(Ok(message)) => {
                            self.access.granted(&self.stats, Proof::RecordRead);
                            // Read after the poll: a rebalance runs inside it, before its
                            // record.
                            let mut chunk = RawChunk::new(epoch());
                            push(&mut chunk, &message);
                            chunk
                        }
                        Some(Err(e)) => {
                            self.failed(&e);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                        None => continue,
                    }
                }
            };
            // Take what is already fetched, up to a chunk, without waiting for more: under
            // load chunks fill up, when idle a record goes on at once.
            while chunk.len() < self.chunk_max {
                match stream.next().now_or_never().flatten() {
                    Some(Ok(message)) => {
                        let now = epoch();
                        if now != chunk.epoch {
                            // The assignment changed inside this poll: the record belongs to
                            // the new one, and so does the chunk it starts.
                            push(carried.insert(RawChunk::new(now)), &message);
                            break;
                        }
                        push(&mut chunk, &message);
                    }
                    Some(Err(e)) => {
                        self.failed(&e);
                        break;
                    }
                    None => break,
                }
            }
            self.stats
                .consumer
                .records
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            // Before the hand-off, so no offset is committed that was not counted as read.
            self.stats.record_read(chunk.records.iter().map(|r| r.at));
            if !self.hand_off(chunk).await {
                break;
            }
        }
        match self.output.drain.send(Drain).await {
            Ok(offsets) => offsets,
            Err(e) => {
                log::error!("pipeline could not be drained: {e}");
                Vec::new()
            }
        }
    }

    /// Counts a consumer error and logs it, at most once a second.
    fn failed(&mut self, error: &KafkaError) {
        self.stats.consumer.errors.fetch_add(1, Ordering::Relaxed);
        if self.access.refused(&self.stats, error) {
            return;
        }
        if self.errors.allow() {
            log::warn!("Kafka consumer error: {error}");
        }
    }

    /// Sends a chunk to the validator, pausing the partitions while its mailbox is full.
    /// Answers false if the validator is gone.
    async fn hand_off(&self, chunk: RawChunk) -> bool {
        self.stats
            .validator
            .enqueued
            .fetch_add(1, Ordering::Relaxed);
        let validator = &self.output.chunks;
        let chunk = match validator.try_send(chunk) {
            Ok(()) => return true,
            Err(SendError::Full(chunk)) => chunk,
            Err(SendError::Closed(_)) => return false,
        };
        // A full mailbox for a moment is normal under load (see PAUSE_AFTER).
        let send = validator.send(chunk);
        tokio::pin!(send);
        if let Ok(result) = tokio::time::timeout(PAUSE_AFTER, &mut send).await {
            return result.is_ok();
        }
        let assignment = self.consumer.assignment().unwrap_or_default();
        if let Err(e) = self.consumer.pause(&assignment) {
            log::debug!("pausing partitions failed: {e}");
        }
        self.stats.consumer_paused.store(true, Ordering::Relaxed);
        log::debug!("validator mailbox full; partitions paused");
        let sent = send.await.is_ok();
        let assignment = self.consumer.assignment().unwrap_or_default();
        if let Err(e) = self.consumer.resume(&assignment) {
            log::debug!("resuming partitions failed: {e}");
        }
        self.stats.consumer_paused.store(false, Ordering::Relaxed);
        sent
    }
}
