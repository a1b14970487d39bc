//! The broker: Apache Kafka (the release `tests/kafka/pom.xml` names), one KRaft node that is
//! broker and controller, started by the harness on free loopback ports with its data in a
//! temporary directory, and stopped with the bench.

use crate::kafka_cluster::{ClusterOptions, KAFKA_VERSION, KafkaCluster};
use crate::settings::Settings;
use crate::step;

/// A running broker, stopped (its data removed) when dropped.
pub struct Broker {
    cluster: KafkaCluster,
    /// `127.0.0.1:<port>`
    pub address: String,
}

impl Broker {
    /// Starts one node with the heap `BENCH_KAFKA_HEAP` gives it.
    pub async fn start(settings: &Settings) -> anyhow::Result<Broker> {
        step(&format!(
            "broker: Apache Kafka {KAFKA_VERSION}, one KRaft node, heap {}",
            settings.kafka_heap
        ));
        let options = ClusterOptions {
            nodes: 1,
            heap: settings.kafka_heap.clone(),
            ..ClusterOptions::default()
        };
        // Formatting and starting the JVM blocks for some seconds.
        let cluster = tokio::task::spawn_blocking(move || KafkaCluster::start(options)).await??;
        let address = cluster.bootstrap();
        Ok(Broker { cluster, address })
    }

    /// The broker's JVM, whose CPU the samples count as the broker's.
    pub fn pid(&self) -> u32 {
        self.cluster.nodes[0]
            .process
            .as_ref()
            .map(|p| p.pid())
            .unwrap_or(0)
    }

    /// What the report calls the broker.
    pub fn describe(settings: &Settings) -> String {
        format!(
            "Apache Kafka {KAFKA_VERSION} (one KRaft node, heap {})",
            settings.kafka_heap
        )
    }
}
