//! A stand-in for Fluent Bit: pods of a few services whose CPU and memory wander like real
//! ones, one sample per pod per interval, produced to Kafka in the format Panopticon consumes.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use tokio_util::sync::CancellationToken;

use crate::config::SimulateArgs;
use crate::domain::WireMetric;
use crate::kafka_security::KafkaSecurity;

/// None is `log-generator`, the service of the original test guide's messages, so that the
/// guide's queries show only its own rows while the simulator runs.
const SERVICES: &[&str] = &["api-gateway", "checkout", "payments", "search", "frontend"];
const NAMESPACES: &[&str] = &["default", "shop"];
const NODES: &[&str] = &["kind-control-plane", "kind-worker", "kind-worker2"];

#[derive(Debug)]
struct Pod {
    service: &'static str,
    name: String,
    namespace: &'static str,
    node: &'static str,
    cpu: f64,
    memory: f64,
}

/// Simulated pods and their current readings.
#[derive(Debug)]
pub struct Simulator {
    pods: Vec<Pod>,
    rng: fastrand::Rng,
}

impl Simulator {
    pub fn new(pods: u32, seed: u64) -> Simulator {
        let mut rng = fastrand::Rng::with_seed(seed);
        let pods = (0..pods as usize)
            .map(|i| {
                let service = SERVICES[i % SERVICES.len()];
                let replica_set: String = (0..9)
                    .map(|_| rng.alphanumeric().to_ascii_lowercase())
                    .collect();
                let suffix: String = (0..5)
                    .map(|_| rng.alphanumeric().to_ascii_lowercase())
                    .collect();
                Pod {
                    service,
                    name: format!("{service}-{replica_set}-{suffix}"),
                    namespace: NAMESPACES[i % NAMESPACES.len()],
                    node: NODES[i % NODES.len()],
                    cpu: rng.f64() * 60.0,
                    memory: 64.0 + rng.f64() * 960.0,
                }
            })
            .collect();
        Simulator { pods, rng }
    }

    /// Advances every pod one interval and calls `emit(key, payload)` for its sample.
    pub fn tick(&mut self, now_ms: i64, mut emit: impl FnMut(&str, &[u8])) {
        let mut payload = Vec::with_capacity(256);
        for pod in &mut self.pods {
            // A bounded random walk: load drifts, with an occasional spike.
            let spike = if self.rng.f64() < 0.02 { 30.0 } else { 0.0 };
            pod.cpu = (pod.cpu + (self.rng.f64() - 0.5) * 8.0 + spike).clamp(0.0, 100.0);
            pod.memory = (pod.memory + (self.rng.f64() - 0.5) * 16.0).clamp(16.0, 4096.0);
            payload.clear();
            let sample = WireMetric {
                timestamp: now_ms,
                service: pod.service,
                pod_name: &pod.name,
                namespace: pod.namespace,
                node_name: pod.node,
                cpu: (pod.cpu * 100.0).round() / 100.0,
                memory: (pod.memory * 100.0).round() / 100.0,
            };
            if serde_json::to_writer(&mut payload, &sample).is_ok() {
                emit(&pod.name, &payload);
            }
        }
    }
}

/// Produces samples until `count` were sent (0: no limit) or `stop` is cancelled.
pub fn produce(
    brokers: &str,
    security: &KafkaSecurity,
    topic: &str,
    pods: u32,
    interval: Duration,
    count: u64,
    stop: &CancellationToken,
) -> Result<u64, KafkaError> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("client.id", "panopticon-simulator");
    security.apply(&mut config);
    let producer: ThreadedProducer<DefaultProducerContext> = config.create()?;
    let mut simulator = Simulator::new(pods, fastrand::u64(..));
    let mut sent = 0u64;
    let mut next_tick = Instant::now();
    while !stop.is_cancelled() && (count == 0 || sent < count) {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut failure = None;
        simulator.tick(now_ms, |key, payload| {
            if failure.is_some() || (count != 0 && sent >= count) {
                return;
            }
            let mut record = BaseRecord::to(topic).key(key).payload(payload);
            loop {
                match producer.send(record) {
                    Ok(()) => {
                        sent += 1;
                        return;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => {
                        failure = Some(e);
                        return;
                    }
                }
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        next_tick += interval;
        let now = Instant::now();
        if next_tick > now {
            std::thread::sleep(next_tick - now);
        } else {
            next_tick = now;
        }
    }
    producer.flush(Duration::from_secs(10))?;
    Ok(sent)
}

/// `panopticon simulate`. The Kafka security settings are checked by the caller.
pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let worker_stop = stop.clone();
    log::info!(
        "simulating {} pods, one sample each every {} ms, to topic {} at {}",
        args.pods,
        args.interval_ms,
        args.topic,
        args.brokers
    );
    let worker = tokio::task::spawn_blocking(move || {
        produce(
            &args.brokers,
            &args.kafka_security,
            &args.topic,
            args.pods,
            Duration::from_millis(args.interval_ms),
            args.count,
            &worker_stop,
        )
    });
    tokio::pin!(worker);
    let sent = tokio::select! {
        result = &mut worker => result??,
        () = crate::signal::shutdown_signal() => {
            stop.cancel();
            worker.await??
        }
    };
    log::info!("simulator sent {sent} metrics");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Rules, ValidMetric};

    #[test]
    fn every_sample_is_valid() {
        let mut simulator = Simulator::new(50, 7);
        let rules = Rules {
            max_future_skew_ms: 0,
            max_age_ms: None,
        };
        let mut seen = 0;
        for round in 0..20 {
            simulator.tick(1_730_707_200_000 + round * 1000, |_, payload| {
                ValidMetric::parse(payload, &rules, 1_800_000_000_000).unwrap();
                seen += 1;
            });
        }
        assert_eq!(seen, 50 * 20);
    }
}
