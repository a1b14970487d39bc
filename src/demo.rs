//! `panopticon demo`: the whole pipeline against librdkafka's in-process Kafka-protocol
//! broker, fed by the simulator. Only a PostgreSQL is needed.

use std::time::Duration;

use rdkafka::mocking::MockCluster;
use tokio_util::sync::CancellationToken;

use crate::config::{DemoArgs, Settings};
use crate::kafka_security::KafkaSecurity;
use crate::signal::shutdown_signal;
use crate::startup::{Application, StartupError};

pub async fn run(mut settings: Settings, args: DemoArgs) -> Result<(), StartupError> {
    let cluster = MockCluster::new(1)
        .map_err(|e| StartupError::Runtime(format!("cannot start the in-process broker: {e}")))?;
    cluster
        .create_topic(&settings.kafka.topic, 3, 1)
        .map_err(|e| StartupError::Runtime(format!("cannot create the demo topic: {e}")))?;
    cluster
        .create_topic(&settings.kafka.dlq_topic, 1, 1)
        .map_err(|e| StartupError::Runtime(format!("cannot create the demo topic: {e}")))?;
    settings.kafka.brokers = cluster.bootstrap_servers();
    // The in-process broker speaks plaintext, whatever the environment says of real ones.
    settings.kafka.security = KafkaSecurity::default();
    log::info!(
        "demo: in-process Kafka broker at {} with topic {} (3 partitions)",
        settings.kafka.brokers,
        settings.kafka.topic
    );
    let app = Application::build(settings.clone())?;
    let stop = CancellationToken::new();
    let producer_stop = stop.clone();
    let brokers = settings.kafka.brokers.clone();
    let topic = settings.kafka.topic.clone();
    let simulator = tokio::task::spawn_blocking(move || {
        crate::simulate::produce(
            &brokers,
            &KafkaSecurity::default(),
            &topic,
            args.pods,
            Duration::from_millis(args.interval_ms),
            0,
            &producer_stop,
        )
    });
    let result = app
        .run_until_stopped(async move {
            shutdown_signal().await;
            stop.cancel();
        })
        .await;
    match simulator.await {
        Ok(Ok(sent)) => log::info!("demo: simulator sent {sent} metrics"),
        Ok(Err(e)) => log::warn!("demo: simulator failed: {e}"),
        Err(e) => log::warn!("demo: simulator task failed: {e}"),
    }
    drop(cluster);
    result
}
