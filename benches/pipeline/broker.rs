//! The broker: tansu on a free port with in-memory storage, checked for the mid-batch fetch the
//! service relies on, and replaced by the fixed build where it lacks it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{Producer, ThreadedProducer};

use crate::harness::{self, Guarded};
use crate::kafka::{Deliveries, Tracking, consumer_config, create_topic, send};
use crate::settings::Settings;
use crate::{step, within};

/// A running broker, ended when dropped.
pub struct Broker {
    pub process: Guarded,
    /// `127.0.0.1:<port>`
    pub address: String,
    /// Whether it answers a fetch that starts inside a record batch with that batch
    /// ([`fetches_inside_batches`]).
    pub fetches_inside_batches: bool,
}

impl Broker {
    /// Starts `settings.tansu` and probes its fetch.
    pub async fn start(settings: &Settings) -> anyhow::Result<Broker> {
        let (process, address) = start_tansu(settings)?;
        let fetches_inside_batches = fetches_inside_batches(&address).await?;
        Ok(Broker {
            process,
            address,
            fetches_inside_batches,
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Starts a broker the preload and the drain can trust: unless `TANSU` names one, the
    /// bench's own build (`benches/broker/build-tansu.sh`: built once, again when its patch
    /// changes), which fetches as Kafka does; a named one that skips records only with batches
    /// of one message.
    pub async fn for_the_drain(settings: &mut Settings) -> anyhow::Result<Broker> {
        if !settings.tansu_chosen {
            step("broker: tansu with the fetch fixes (benches/broker/build-tansu.sh, built once)");
            settings.tansu = build_fixed_tansu()?;
        }
        let broker = Broker::start(settings).await?;
        if !broker.fetches_inside_batches {
            let why = format!(
                "the broker ({}) answers a fetch that starts inside a record batch with the next \
                 batch, skipping the rest of the current one (tansu 0.6.0's memory engine does: \
                 dynostore's fetch takes the batches whose base offset is at or after the fetch \
                 offset). The service pauses and resumes its partitions under backpressure, which \
                 refetches from inside a batch, so messages would be lost and the results wrong. \
                 Point TANSU at a broker without this bug",
                settings.tansu.display()
            );
            ensure!(
                settings.preload_batch == 1,
                "{why}, or preload one message a batch with BENCH_PRELOAD_BATCH=1 (slow, and \
                 the broker then bounds the drain)."
            );
            eprintln!("WARNING: {why}. Preloading one message a batch (BENCH_PRELOAD_BATCH=1).");
        }
        Ok(broker)
    }
}

/// tansu on a free port, in-memory storage; answers the broker address.
fn start_tansu(settings: &Settings) -> anyhow::Result<(Guarded, String)> {
    let port = harness::free_port()?;
    let address = format!("127.0.0.1:{port}");
    let mut command = Command::new(&settings.tansu);
    command
        .args(harness::tansu_args(port, &address, "memory://tansu/"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(if settings.echo_log {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
    let mut broker = Guarded::spawn("tansu", &mut command)
        .with_context(|| format!("is tansu installed at {}?", settings.tansu.display()))?;
    harness::wait_for_port(port, "tansu", || broker.exited())?;
    Ok((broker, address))
}

/// Where `benches/broker/build-tansu.sh` builds the broker.
fn fixed_tansu_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-broker")
}

/// The broker `benches/broker/build-tansu.sh` builds.
pub fn fixed_tansu_path() -> PathBuf {
    fixed_tansu_dir().join("bin/tansu")
}

/// Builds tansu with the fetch fix (see `benches/broker/build-tansu.sh`); answers its path.
fn build_fixed_tansu() -> anyhow::Result<PathBuf> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/broker/build-tansu.sh");
    let status = Command::new("bash")
        .arg(&script)
        .arg(fixed_tansu_dir())
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(status.success(), "{} failed: {status}", script.display());
    let path = fixed_tansu_path();
    ensure!(
        path.exists(),
        "{} did not produce {}",
        script.display(),
        path.display()
    );
    Ok(path)
}

/// Whether a fetch that starts inside a record batch gets that batch (as Kafka answers, the
/// client skipping the records before its position) rather than the next one. The service
/// pauses its partitions under backpressure, and librdkafka resumes them at the position the
/// service has read to, which is mostly inside a batch: a broker that answers with the next
/// batch loses the rest of the current one.
async fn fetches_inside_batches(broker: &str) -> anyhow::Result<bool> {
    let topic = format!("probe_{}", uuid::Uuid::new_v4().simple());
    create_topic(broker, &topic, 1).await?;
    let broker = broker.to_owned();
    let probe = tokio::task::spawn_blocking(move || {
        let deliveries = Arc::new(Deliveries::default());
        let producer: ThreadedProducer<Tracking> = ClientConfig::new()
            .set("bootstrap.servers", &broker)
            .set("linger.ms", "200")
            .create_with_context(Tracking(deliveries.clone()))?;
        for i in 0..3 {
            send(&producer, &topic, 0, "probe", b"probe", i)?;
        }
        producer.flush(Duration::from_secs(10))?;
        ensure!(
            deliveries.delivered.load(Ordering::Relaxed) == 3,
            "probe messages not delivered"
        );
        let consumer: BaseConsumer = consumer_config(&broker, "probe").create()?;
        let mut assignment = rdkafka::TopicPartitionList::new();
        assignment.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(1))?;
        consumer.assign(&assignment)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                return Ok(message?.offset() == 1);
            }
        }
        Ok::<_, anyhow::Error>(false)
    });
    within(Duration::from_secs(30), "broker probe", probe).await??
}
