//! The whole pipeline, end to end, against Apache Kafka (one KRaft node the bench starts) and
//! PostgreSQL, with
//! the service binary started as users start it (default settings; only broker, topic, group,
//! database and HTTP port set), compared in the same run with the limits on either side of it
//! and with a naive consumer:
//!
//! 1. preload: N messages in the seed format (the simulator's pods, one sample per pod per
//!    second of back-fill), pod `i` to partition `i mod P`, by a batching producer;
//! 2. drain: the service consumes the preloaded topic into a fresh database; rows committed a
//!    second from the first committed row to the last and over its first and last tenth, its
//!    CPU seconds and peak RSS, and the CPU of PostgreSQL, the broker and everything else
//!    meanwhile;
//! 3. references: the write limit (one `COPY` of the same N rows, CSV and binary, pre-encoded,
//!    into a fresh table made by the same migrations, and binary split over one connection a
//!    CPU at once), the growth reference (a tenth of the rows, shifted to follow them, copied
//!    into the empty table and into the table holding all N), the read limit (an rdkafka
//!    consumer that only reads the topic and touches each payload) and a naive service (one
//!    autocommitted `INSERT` per message, for a bounded time);
//! 4. latency: a steady stream into a freshly started service, produce → row visible.
//!
//! Each phase that writes to PostgreSQL starts after a `CHECKPOINT`, so that none pays for the
//! dirty pages of the one before.
//!
//! ```text
//! cargo bench --bench pipeline                               # the defaults, a few minutes
//! BENCH_MESSAGES=100000 cargo bench --bench pipeline         # a quick run
//! ```
//!
//! Cargo builds the `panopticon` binary for the bench (release profile). Settings, from the
//! environment:
//!
//! | variable | default | |
//! | --- | --- | --- |
//! | `BENCH_MESSAGES` | 1000000 | messages preloaded and drained |
//! | `BENCH_PODS`, `BENCH_PARTITIONS` | 500, 3 | |
//! | `BENCH_PRELOAD_BATCH` | 10000 | messages a produced batch in the preload |
//! | `BENCH_LATENCY_RATE`, `BENCH_LATENCY_SECS` | 10000, 20 | the steady stream |
//! | `BENCH_LATENCY_WARMUP_SECS` | 3 | seconds of the stream sent first and not counted (the broker's first writes to a new topic are slow to be acknowledged; the report gives their p99 apart) |
//! | `BENCH_NAIVE_SECS`, `BENCH_NAIVE_MAX` | 20, 50000 | the naive service stops at either |
//! | `BENCH_JSON` | `target/bench-pipeline.json` | the report |
//! | `BENCH_DATABASE_URL` | `postgres://postgres@127.0.0.1:5432/postgres` | where databases are created and dropped |
//! | `BENCH_KAFKA_HEAP` | `512m` | the broker's JVM heap |
//! | `KAFKA_LIBS` | `~/.cache/panopticon-ci/kafka-4.4.0/libs`, filled by Maven from `tests/kafka/pom.xml` | Apache Kafka's jars |
//! | `BENCH_SERVICE_BIN` | the binary cargo built | |
//! | `BENCH_SERVICE_ENV` | | `KEY=VALUE;…` given to the service on top of its defaults (shown in the report) |
//! | `BENCH_DRAIN_ONLY` | | `1`: stop after the drain |
//! | `BENCH_PROFILE` | | a command run during the drain, `{pid}` standing for the service's process id, stopped with SIGINT once the last row is in, e.g. `perf record -g -o target/drain.perf -p {pid}` |
//! | `BENCH_LOG` | | `1`: echo the service's log |
//! | `BENCH_ROW_COST` | | run only the service's own work a row over this many messages, in the bench's process with no broker or database (`benches/pipeline/row_cost.rs`, meant for callgrind) |
//! | `BENCH_SOAK_SECS` | | run the soak instead (below) for this many seconds |
//! | `BENCH_SOAK_RATE`, `BENCH_SOAK_BAD_EVERY_MS` | 5000, 1000 | the soak's valid messages a second, and one bad message every so often |
//! | `BENCH_SOAK_REPORT_SECS` | 60 | how often the soak samples the service |
//! | `BENCH_SOAK_LINGER_MS` | 100 | the soak producer's `linger.ms` |
//!
//! Soak mode (`BENCH_SOAK_SECS=1800 cargo bench --bench pipeline`, `benches/pipeline/soak.rs`):
//! a fresh service takes a steady stream with a bad message every second; each interval the
//! bench samples its resident memory, open descriptors, threads and database connections, and
//! at the end checks that every metric was stored once and every bad message dead-lettered,
//! and whether the figures stayed flat. The producer batches for up to 100 ms
//! (`BENCH_SOAK_LINGER_MS`), as Fluent Bit's Kafka output does. Report: `target/bench-soak.json`.
//!
//! The broker is Apache Kafka, started by the bench as the tests start it
//! (`tests/common/kafka.rs`): one node, broker and controller, its data in a temporary
//! directory, the JVM's CPU counted as the broker's in the samples.
//!
//! How latency is observed: the service stores a batch's rows and each partition's next offset
//! (`kafka_offsets`) in one transaction, so the message at offset `o` of partition `p` is
//! visible exactly when `kafka_offsets` says `next_offset > o` for `p`. A poller reads that
//! tiny table every 10 ms; a message's latency is the first poll that sees it minus the moment
//! it was handed to the producer (its `timestamp` field is that moment too). Every 500 ms the
//! poller also counts the rows in the same snapshot, which equals the sum of the offsets unless
//! a message was stored twice or skipped; after each run the rows are counted (all, and distinct
//! by pod and timestamp) against the messages sent, and duplicates or losses are reported.
//!
//! The code: this file runs the phases in order; one module a phase (`preload`, `drain`,
//! `references` for the write and read limits, `naive`, `latency`, `soak`), each answering a
//! typed result that the `report` module turns into the table and the JSON; beside them the
//! `settings`, the `broker`, the `service` process, `sampling` of `/proc`, `db` and `kafka`
//! helpers, the simulated `pods` of the steady streams. What it shares with the tests
//! (processes, the service's output, topics, databases) is `tests/common/harness.rs`, and the
//! broker is `tests/common/kafka.rs`.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::anyhow;
use serde::{Serialize, Serializer};

#[path = "../../tests/common/harness.rs"]
mod harness;
#[path = "../../tests/common/kafka.rs"]
mod kafka_cluster;

mod broker;
mod db;
mod drain;
mod kafka;
mod latency;
mod naive;
mod pods;
mod preload;
mod references;
mod report;
mod row_cost;
mod sampling;
mod service;
mod settings;
mod soak;

use broker::Broker;
use db::{Database, checkpoint, connect, drop_leftover_databases, server_version};
use report::{Machine, Phases, Report, Targets};
use sampling::{clock_ticks, loadavg};
use settings::Settings;

fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(settings))
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    if let Some(count) = settings.row_cost {
        return row_cost::run(count, settings.pods);
    }
    let tck = clock_ticks();
    let machine = start(&settings).await?;
    match settings.soak {
        Some(soak) => {
            let broker = Broker::start(&settings).await?;
            run_soak(&settings, soak, broker, machine, tck).await
        }
        None => {
            let broker = Broker::start(&settings).await?;
            run_phases(settings, broker, machine, tck).await
        }
    }
}

/// Says what runs where, drops what killed runs left behind, and notes the machine.
async fn start(settings: &Settings) -> anyhow::Result<Machine> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let load_average_at_start = loadavg();
    let what = match settings.soak {
        Some(soak) => format!("soak of {} s", soak.secs),
        None => format!("{} messages", settings.messages),
    };
    step(&format!(
        "{what}, {} pods, {} partitions; {cpus} CPUs, load average {load_average_at_start}",
        settings.pods, settings.partitions
    ));
    drop_leftover_databases(&settings.admin_url).await?;
    Ok(Machine {
        cpus,
        load_average_at_start,
        load_average_at_end: String::new(),
        postgres: server_version(&settings.admin_url).await?,
        broker: None,
    })
}

/// The soak, on whatever broker there is (a loss would show in its counts).
async fn run_soak(
    settings: &Settings,
    soak: soak::Soak,
    broker: Broker,
    machine: Machine,
    tck: f64,
) -> anyhow::Result<()> {
    step(&format!(
        "soak: {} msg/s for {} s, a bad message every {} ms",
        soak.rate, soak.secs, soak.bad_every_ms
    ));
    checkpoint(&settings.admin_url).await;
    let report = soak::run(settings, soak, &broker.address, broker.pid(), tck).await?;
    drop(broker);
    let machine = Machine {
        broker: Some(Broker::describe(settings)),
        ..machine.at_end()
    };
    let table = soak::table(&report);
    println!("{table}");
    let written = soak::Written {
        report: &report,
        machine,
        table,
    };
    report::write_report(&settings.json, &written)
}

/// Phases 1 to 5: preload, drain, references, latency, report.
async fn run_phases(
    settings: Settings,
    broker: Broker,
    machine: Machine,
    tck: f64,
) -> anyhow::Result<()> {
    let (address, broker_pid) = (broker.address.clone(), broker.pid());
    let topic = format!("preload_{}", uuid::Uuid::new_v4().simple());
    kafka::create_topic(&address, &topic, settings.partitions).await?;

    // 1. Preload.
    let (messages, preload) = preload::run(&settings, &address, &topic).await?;

    // 2. The service drains it.
    step("draining with the service (default settings)");
    checkpoint(&settings.admin_url).await;
    let drain = drain::run(&settings, &address, broker_pid, &topic, tck).await?;
    step(&format!("drain: {} rows/s", json_text(&drain.rows_per_s)));
    if settings.drain_only {
        let mut drain = serde_json::to_value(&drain)?;
        drain["samples"] = serde_json::Value::Null;
        println!("{drain:#}");
        return Ok(());
    }

    // 3a. Write limit.
    step("write limit: COPY of the same rows, on one connection and on one a CPU");
    let reference = Database::create(&settings.admin_url, "reference").await?;
    let client = connect(&reference.url).await?;
    let write_limit =
        references::write_limit(&settings, &reference.url, &client, &messages).await?;
    drop(messages);

    // 3b. Read limit.
    step("read limit: rdkafka consumer");
    let read_limit = references::read_limit(&address, &topic, &preload.partitions, tck).await?;

    // 3c. Naive service.
    step(&format!(
        "naive service: one INSERT per message, {} s or {} messages",
        settings.naive_secs, settings.naive_max
    ));
    checkpoint(&settings.admin_url).await;
    let naive = naive::run(&settings, &address, &topic, &client).await?;
    step(&format!(
        "naive {:.0} rows/s ({} rows)",
        naive.rows_per_s, naive.rows
    ));
    drop(client);
    drop(reference);

    // 4. Latency.
    step(&format!(
        "latency: {} msg/s for {} s into a fresh service",
        settings.latency_rate, settings.latency_secs
    ));
    checkpoint(&settings.admin_url).await;
    let latency = latency::run(&settings, &address, broker_pid, tck).await?;
    drop(broker);

    // 5. Report.
    let phases = Phases {
        preload,
        drain,
        write_limit,
        read_limit,
        naive,
        latency,
    };
    let targets = Targets::of(&phases);
    let table = report::table(&settings, &machine, &phases, &targets);
    println!("{table}");
    let report = Report::new(&settings, machine.at_end(), &phases, &targets, table);
    report::write_report(&settings.json, &report)
}

// ---------------------------------------------------------------------------------------------
// What every phase uses.

fn step(what: &str) {
    eprintln!("[{}] {what}", chrono::Local::now().format("%H:%M:%S"));
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Serialises a figure rounded to a whole number (`#[serde(serialize_with = "rounded")]`).
fn rounded<S: Serializer>(x: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    x.round().serialize(serializer)
}

/// Serialises a figure rounded to three decimals.
fn rounded3<S: Serializer>(x: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    round3(*x).serialize(serializer)
}

/// A value as the report's JSON writes it (`12.0`, `null`, maps with their keys sorted), for
/// the tables.
fn json_text(value: &impl Serialize) -> String {
    serde_json::to_value(value)
        .map(|v| v.to_string())
        .unwrap_or_default()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| anyhow!("timed out after {limit:?}: {what}"))
}
