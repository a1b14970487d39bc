//! Phase 1: the preload. N messages in the seed format (the simulator's pods, one sample per pod
//! per second of back-fill), pod `i` to partition `i mod P`, by a batching producer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use panopticon::simulate::Simulator;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{Producer, ThreadedProducer};
use serde::Serialize;

use crate::kafka::{Deliveries, Tracking, send};
use crate::settings::Settings;
use crate::{now_ms, rounded, rounded3, step, within};

/// The preloaded messages, packed: payloads in one buffer, with each one's pod index.
pub struct Messages {
    pub bytes: Vec<u8>,
    /// `(pod index, start, end)` of each payload.
    pub index: Vec<(u32, usize, usize)>,
    pod_names: Vec<String>,
}

impl Messages {
    /// N samples of the simulator's pods, one tick a second, ending a minute ago.
    pub fn generate(count: usize, pods: u32) -> Messages {
        let mut simulator = Simulator::new(pods, 42);
        let ticks = count.div_ceil(pods as usize) as i64;
        let mut ts = now_ms() - 60_000 - ticks * 1000;
        let mut messages = Messages {
            bytes: Vec::with_capacity(count * 200),
            index: Vec::with_capacity(count),
            pod_names: Vec::with_capacity(pods as usize),
        };
        while messages.index.len() < count {
            let mut pod = 0u32;
            simulator.tick(ts, |key, payload| {
                if messages.pod_names.len() < pods as usize {
                    messages.pod_names.push(key.to_owned());
                }
                if messages.index.len() < count {
                    let start = messages.bytes.len();
                    messages.bytes.extend_from_slice(payload);
                    messages.index.push((pod, start, messages.bytes.len()));
                }
                pod += 1;
            });
            ts += 1000;
        }
        messages
    }

    /// How many messages each partition gets.
    fn per_partition(&self, partitions: i32) -> Vec<i64> {
        let mut counts = vec![0i64; partitions as usize];
        for &(pod, _, _) in &self.index {
            counts[(pod as i32 % partitions) as usize] += 1;
        }
        counts
    }

    pub fn payload(&self, i: usize) -> &[u8] {
        let (_, start, end) = self.index[i];
        &self.bytes[start..end]
    }
}

/// What the preload took; the report's `preload`, rounded there.
#[derive(Serialize)]
pub struct Preload {
    #[serde(serialize_with = "rounded3")]
    pub seconds: f64,
    #[serde(serialize_with = "rounded")]
    pub messages_per_s: f64,
    #[serde(serialize_with = "rounded3")]
    pub payload_mb: f64,
    /// What each partition holds, by construction: every message is acknowledged, so the
    /// broker's high watermarks say the same.
    pub partitions: Vec<i64>,
}

/// Generates the messages and preloads them into `topic`.
pub async fn run(
    settings: &Settings,
    broker: &str,
    topic: &str,
) -> anyhow::Result<(Arc<Messages>, Preload)> {
    let n = settings.messages;
    step("generating messages");
    let messages = Arc::new(Messages::generate(n, settings.pods));
    let payload_mb = messages.bytes.len() as f64 / 1e6;
    step(&format!(
        "preloading {n} messages ({payload_mb:.1} MB) into {topic}"
    ));
    let seconds = {
        let (broker, topic, messages) = (broker.to_owned(), topic.to_owned(), messages.clone());
        let partitions = settings.partitions;
        let preload_batch = settings.preload_batch;
        within(
            Duration::from_secs(1800),
            "preload",
            tokio::task::spawn_blocking(move || {
                produce(&broker, &topic, &messages, partitions, preload_batch)
            }),
        )
        .await???
    };
    let watermarks = messages.per_partition(settings.partitions);
    step(&format!(
        "preloaded in {seconds:.1} s ({:.0} msg/s); partitions hold {watermarks:?}",
        n as f64 / seconds
    ));
    let preload = Preload {
        seconds,
        messages_per_s: n as f64 / seconds,
        payload_mb,
        partitions: watermarks,
    };
    Ok((messages, preload))
}

/// Produces every message, pod `i` to partition `i mod P`, as fast as a batching producer
/// goes; answers the seconds from the first send to the last acknowledgement. Every message
/// must be acknowledged; the read limit and the drain then check that all of them arrive.
fn produce(
    broker: &str,
    topic: &str,
    messages: &Messages,
    partitions: i32,
    batch: usize,
) -> anyhow::Result<f64> {
    let deliveries = Arc::new(Deliveries::default());
    let producer: ThreadedProducer<Tracking> = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("linger.ms", if batch > 1 { "50" } else { "0" })
        .set("batch.num.messages", batch.to_string())
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create_with_context(Tracking(deliveries.clone()))?;
    let started = Instant::now();
    for (i, &(pod, _, _)) in messages.index.iter().enumerate() {
        send(
            &producer,
            topic,
            pod as i32 % partitions,
            &messages.pod_names[pod as usize],
            messages.payload(i),
            i,
        )?;
    }
    producer.flush(Duration::from_secs(300))?;
    let took = started.elapsed().as_secs_f64();
    deliveries.ensure_all_delivered()?;
    Ok(took)
}
