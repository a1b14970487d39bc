//! The whole pipeline, end to end, against a Kafka-protocol broker (tansu) and PostgreSQL, with
//! the service binary started as users start it (default settings; only broker, topic, group,
//! database and HTTP port set), compared in the same run with the limits on either side of it
//! and with a naive consumer:
//!
//! 1. preload: N messages in the seed format (the simulator's pods, one sample per pod per
//!    second of back-fill), pod `i` to partition `i mod P`, by a batching producer;
//! 2. drain: the service consumes the preloaded topic into a fresh database; rows committed a
//!    second from the first committed row to the last, its CPU seconds and peak RSS, and the
//!    CPU of PostgreSQL, the broker and everything else meanwhile;
//! 3. references: the write limit (one `COPY` of the same N rows, CSV and binary, pre-encoded,
//!    into a fresh table made by the same migrations), the read limit (an rdkafka consumer that
//!    only reads the topic and touches each payload) and a naive service (one autocommitted
//!    `INSERT` per message, for a bounded time);
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
//! | `BENCH_NAIVE_SECS`, `BENCH_NAIVE_MAX` | 20, 50000 | the naive service stops at either |
//! | `BENCH_JSON` | `target/bench-pipeline.json` | the report |
//! | `BENCH_DATABASE_URL` | `postgres://postgres@127.0.0.1:5432/postgres` | where databases are created and dropped |
//! | `TANSU` | `target/bench-broker/bin/tansu`, else `~/.cargo/bin/tansu`, else `tansu` | the broker |
//! | `BENCH_SERVICE_BIN` | the binary cargo built | |
//! | `BENCH_SERVICE_ENV` | | `KEY=VALUE;…` given to the service on top of its defaults (shown in the report) |
//! | `BENCH_DRAIN_ONLY` | | `1`: stop after the drain |
//! | `BENCH_PROFILE` | | a command run during the drain, `{pid}` standing for the service's process id, stopped with SIGINT once the last row is in, e.g. `perf record -g -o target/drain.perf -p {pid}` |
//! | `BENCH_LOG` | | `1`: echo the service's log |
//! | `BENCH_SOAK_SECS` | | run the soak instead (below) for this many seconds |
//! | `BENCH_SOAK_RATE`, `BENCH_SOAK_BAD_EVERY_MS` | 5000, 1000 | the soak's valid messages a second, and one bad message every so often |
//! | `BENCH_SOAK_REPORT_SECS` | 60 | how often the soak samples the service |
//! | `BENCH_SOAK_LINGER_MS` | 100 | the soak producer's `linger.ms` |
//!
//! Soak mode (`BENCH_SOAK_SECS=1800 cargo bench --bench pipeline`, `benches/pipeline/soak.rs`):
//! a fresh service takes a steady stream with a bad message every second; each interval the
//! bench samples its resident memory, open descriptors, threads and database connections, and
//! at the end checks that every metric was stored once and every bad message dead-lettered,
//! and whether the figures stayed flat. The producer batches for up to 100 ms: tansu's memory
//! storage lists every batch of a partition on each fetch, so fewer, larger batches keep the
//! broker's cost from growing into the figures over a long run. Report: `target/bench-soak.json`.
//!
//! The broker must answer a fetch that starts inside a record batch with that batch, as Kafka
//! does: the service pauses and resumes its partitions under backpressure, and librdkafka
//! resumes at the position the service has read to, mostly inside a batch. A broker that
//! answers with the next batch loses the rest of the current one; the bench checks this first.
//! Stock tansu 0.6.0 does, so unless `TANSU` names a broker, the bench then builds tansu 0.6.0
//! with a one-line fix (`benches/broker/build-tansu.sh`, about 10 minutes, once) and uses it.
//!
//! How latency is observed: the service stores a batch's rows and each partition's next offset
//! (`kafka_offsets`) in one transaction, so the message at offset `o` of partition `p` is
//! visible exactly when `kafka_offsets` says `next_offset > o` for `p`. A poller reads that
//! tiny table every 10 ms; a message's latency is the first poll that sees it minus the moment
//! it was handed to the producer (its `timestamp` field is that moment too). Every 500 ms the
//! poller also counts the rows in the same snapshot, which equals the sum of the offsets unless
//! a message was stored twice or skipped; after each run the rows are counted (all, and distinct
//! by pod and timestamp) against the messages sent, and duplicates or losses are reported.

use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail, ensure};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::SinkExt;
use panopticon::domain::WireMetric;
use panopticon::domain::{Rules, ValidMetric};
use panopticon::simulate::Simulator;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use serde_json::{Value, json};
use tokio_postgres::{Client, NoTls};

#[path = "pipeline/soak.rs"]
mod soak;

const COLUMNS: &str = "system_metrics (time, service, pod_name, cpu, memory, namespace, node_name)";
/// The service's defaults the targets refer to.
const BATCH_MAX_WAIT_MS: f64 = 500.0;
const RSS_TARGET_MIB: f64 = 256.0;
/// The drain fails when the committed count has not moved for this long.
const STALL: Duration = Duration::from_secs(60);
/// Where databases of this bench start; leftovers of a killed run are dropped at start-up.
const DB_PREFIX: &str = "panopticon_bench_pipeline_";

struct Settings {
    messages: usize,
    pods: u32,
    partitions: i32,
    latency_rate: u64,
    latency_secs: u64,
    naive_secs: u64,
    naive_max: usize,
    preload_batch: usize,
    /// A command run during the drain, `{pid}` replaced by the service's process id, stopped
    /// with SIGINT when the drain is done: a profiler.
    profile: Option<String>,
    /// Settings given to the service besides the defaults, for experiments.
    service_env: Vec<(String, String)>,
    json: PathBuf,
    admin_url: String,
    service_bin: PathBuf,
    tansu: PathBuf,
    /// `TANSU` was set: use that broker or fail, never build one.
    tansu_chosen: bool,
    echo_log: bool,
    /// `BENCH_SOAK_SECS` is set: the soak runs instead of everything else.
    soak: Option<soak::Soak>,
}

fn env_num<T: std::str::FromStr>(key: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(key) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow!("{key}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let home = PathBuf::from(std::env::var("HOME").unwrap_or_default());
        let cargo_home = std::env::var("CARGO_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|_| home.join(".cargo"));
        let fixed = fixed_tansu_path();
        let tansu_chosen = std::env::var_os("TANSU").is_some();
        let tansu = match std::env::var("TANSU") {
            Ok(path) => PathBuf::from(path),
            Err(_) if fixed.exists() => fixed,
            Err(_) if cargo_home.join("bin/tansu").exists() => cargo_home.join("bin/tansu"),
            Err(_) => PathBuf::from("tansu"),
        };
        let soak = match std::env::var("BENCH_SOAK_SECS") {
            Ok(_) => Some(soak::Soak {
                secs: env_num("BENCH_SOAK_SECS", 0)?,
                rate: env_num("BENCH_SOAK_RATE", 5_000)?,
                bad_every_ms: env_num("BENCH_SOAK_BAD_EVERY_MS", 1_000)?,
                report_secs: env_num("BENCH_SOAK_REPORT_SECS", 60)?,
                linger_ms: env_num("BENCH_SOAK_LINGER_MS", 100)?,
            }),
            Err(_) => None,
        };
        let settings = Settings {
            messages: env_num("BENCH_MESSAGES", 1_000_000)?,
            pods: env_num("BENCH_PODS", 500)?,
            partitions: env_num("BENCH_PARTITIONS", 3)?,
            latency_rate: env_num("BENCH_LATENCY_RATE", 10_000)?,
            latency_secs: env_num("BENCH_LATENCY_SECS", 20)?,
            naive_secs: env_num("BENCH_NAIVE_SECS", 20)?,
            naive_max: env_num("BENCH_NAIVE_MAX", 50_000)?,
            preload_batch: env_num("BENCH_PRELOAD_BATCH", 10_000)?,
            profile: std::env::var("BENCH_PROFILE")
                .ok()
                .filter(|p| !p.trim().is_empty()),
            service_env: std::env::var("BENCH_SERVICE_ENV")
                .unwrap_or_default()
                .split(';')
                .filter(|kv| !kv.trim().is_empty())
                .map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
                        .ok_or_else(|| anyhow!("BENCH_SERVICE_ENV: {kv:?} is not KEY=VALUE"))
                })
                .collect::<anyhow::Result<_>>()?,
            json: std::env::var("BENCH_JSON")
                .unwrap_or_else(|_| {
                    if soak.is_some() {
                        "target/bench-soak.json".into()
                    } else {
                        "target/bench-pipeline.json".into()
                    }
                })
                .into(),
            admin_url: std::env::var("BENCH_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
            service_bin: std::env::var("BENCH_SERVICE_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|_| PathBuf::from(env!("CARGO_BIN_EXE_panopticon"))),
            tansu,
            tansu_chosen,
            echo_log: std::env::var_os("BENCH_LOG").is_some(),
            soak,
        };
        ensure!(settings.messages > 0, "BENCH_MESSAGES must be > 0");
        ensure!(settings.pods > 0, "BENCH_PODS must be > 0");
        ensure!(settings.partitions > 0, "BENCH_PARTITIONS must be > 0");
        ensure!(
            settings.service_bin.exists(),
            "service binary {} not found (cargo build --release, or set BENCH_SERVICE_BIN)",
            settings.service_bin.display()
        );
        Ok(settings)
    }
}

fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(settings))
}

// ---------------------------------------------------------------------------------------------
// Processes: the broker and the service, each ended when the bench ends, however it ends.

/// A child process killed when dropped, with a watchdog that kills it should this process
/// die without running destructors.
struct Guarded {
    child: Child,
    name: &'static str,
}

impl Guarded {
    fn spawn(name: &'static str, command: &mut Command) -> anyhow::Result<Guarded> {
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name} ({command:?})"))?;
        let pid = child.id();
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(
                "while kill -0 \"$1\" 2>/dev/null && kill -0 \"$2\" 2>/dev/null; do sleep 0.5; done; \
                 kill -0 \"$1\" 2>/dev/null || kill -9 \"$2\" 2>/dev/null",
            )
            .arg("watchdog")
            .arg(std::process::id().to_string())
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start the watchdog shell")?;
        std::thread::spawn(move || watchdog.wait());
        Ok(Guarded { child, name })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits up to `timeout` for the exit.
    fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("{} did not exit within {timeout:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// tansu on a free port, in-memory storage; answers the broker address.
fn start_tansu(settings: &Settings) -> anyhow::Result<(Guarded, String)> {
    let port = free_port()?;
    let url = format!("tcp://127.0.0.1:{port}");
    let mut command = Command::new(&settings.tansu);
    command
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(if settings.echo_log {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
    let mut broker = Guarded::spawn("tansu", &mut command)
        .with_context(|| format!("is tansu installed at {}?", settings.tansu.display()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = broker.exited() {
            bail!("tansu exited at start-up: {status}");
        }
        ensure!(
            Instant::now() < deadline,
            "tansu did not listen on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((broker, format!("127.0.0.1:{port}")))
}

/// The service's log: every line but the `[METRIC]` ones, which are only counted.
#[derive(Default)]
struct ServiceLog {
    lines: Vec<String>,
    metric_lines: u64,
}

struct Service {
    process: Guarded,
    log: Arc<Mutex<ServiceLog>>,
    port: u16,
    started: Instant,
}

impl Service {
    /// Starts the binary with its defaults and only the given settings; waits for its HTTP
    /// server.
    fn spawn(settings: &Settings, env: &[(&str, String)]) -> anyhow::Result<Service> {
        let mut command = Command::new(&settings.service_bin);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .envs(settings.service_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut process = Guarded::spawn("panopticon", &mut command)?;
        let log = Arc::new(Mutex::new(ServiceLog::default()));
        let streams: [Option<Box<dyn Read + Send>>; 2] = [
            process
                .child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            process
                .child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ];
        for stream in streams.into_iter().flatten() {
            let log = log.clone();
            let echo = settings.echo_log;
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if echo {
                        eprintln!("  | {line}");
                    }
                    let mut log = log.lock().unwrap();
                    if line.contains("[METRIC]") {
                        log.metric_lines += 1;
                    } else {
                        log.lines.push(line);
                    }
                }
            });
        }
        let mut service = Service {
            process,
            log,
            port: 0,
            started,
        };
        let line = service.wait_for_log(
            "Application is running on: http://localhost:",
            Duration::from_secs(30),
        )?;
        service.port = line
            .rsplit(':')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| anyhow!("no port in {line:?}"))?;
        Ok(service)
    }

    fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self
                .log
                .lock()
                .unwrap()
                .lines
                .iter()
                .find(|l| l.contains(needle))
            {
                return Ok(line.clone());
            }
            if let Some(status) = self.process.exited() {
                bail!(
                    "the service exited ({status}) before logging {needle:?}; log:\n{}",
                    self.log_tail(30)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "the service did not log {needle:?} within {timeout:?}; log:\n{}",
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_tail(&self, n: usize) -> String {
        let log = self.log.lock().unwrap();
        let start = log.lines.len().saturating_sub(n);
        log.lines[start..].join("\n")
    }

    async fn status(&self) -> Value {
        let get = async {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?;
            let status: Value = client
                .get(format!("http://127.0.0.1:{}/status", self.port))
                .send()
                .await?
                .json()
                .await?;
            Ok::<_, anyhow::Error>(status)
        };
        get.await
            .unwrap_or_else(|e| json!({ "error": e.to_string() }))
    }
}

fn service_env(
    broker: &str,
    topic: &str,
    group: &str,
    db: &Database,
) -> Vec<(&'static str, String)> {
    vec![
        ("KAFKA_BROKERS", broker.to_owned()),
        ("KAFKA_TOPIC", topic.to_owned()),
        ("KAFKA_GROUP_ID", group.to_owned()),
        ("DATABASE_URL", db.url.clone()),
        ("HTTP_PORT", "0".into()),
        ("HTTP_HOST", "127.0.0.1".into()),
    ]
}

/// Starts `sh -c template` with `{pid}` replaced, and gives it a moment to attach.
fn start_profiler(template: &str, pid: u32) -> anyhow::Result<Guarded> {
    let script = format!("exec {}", template.replace("{pid}", &pid.to_string()));
    let profiler = Guarded::spawn(
        "profiler",
        Command::new("sh")
            .arg("-c")
            .arg(&script)
            .stdin(Stdio::null()),
    )?;
    std::thread::sleep(Duration::from_millis(500));
    Ok(profiler)
}

// ---------------------------------------------------------------------------------------------
// /proc: CPU time and memory of processes, and of the machine.

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// `(comm, utime + stime)` of a process, in clock ticks.
fn proc_cpu(pid: u32) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    // Fields after the command: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

fn proc_ticks(pid: u32) -> u64 {
    proc_cpu(pid).map(|(_, t)| t).unwrap_or(0)
}

/// The number of a line of `/proc/PID/status`: KiB for the `Vm…` lines, a count for `Threads:`.
fn proc_status_number(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU ticks of every PostgreSQL server process (backends, WAL writer, checkpointer, …).
fn postgres_ticks() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(proc_cpu)
        .filter(|(comm, _)| comm == "postgres")
        .map(|(_, t)| t)
        .sum()
}

/// `(busy, total)` ticks of all CPUs.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// CPU of everything involved, read at one moment.
#[derive(Clone, Copy)]
struct CpuSnapshot {
    at: Instant,
    service: u64,
    postgres: u64,
    broker: u64,
    bench: u64,
    machine_busy: u64,
    machine_total: u64,
}

impl CpuSnapshot {
    fn take(service: u32, broker: u32) -> CpuSnapshot {
        let (machine_busy, machine_total) = machine_ticks();
        CpuSnapshot {
            at: Instant::now(),
            service: proc_ticks(service),
            postgres: postgres_ticks(),
            broker: proc_ticks(broker),
            bench: proc_ticks(std::process::id()),
            machine_busy,
            machine_total,
        }
    }

    /// CPU seconds spent between `self` and `later`, by whom.
    fn until(&self, later: &CpuSnapshot, tck: f64) -> Value {
        let s = |a: u64, b: u64| round3(b.saturating_sub(a) as f64 / tck);
        let wall = later.at.duration_since(self.at).as_secs_f64();
        let busy = s(self.machine_busy, later.machine_busy);
        let total = s(self.machine_total, later.machine_total);
        let service = s(self.service, later.service);
        let postgres = s(self.postgres, later.postgres);
        let broker = s(self.broker, later.broker);
        let bench = s(self.bench, later.bench);
        json!({
            "wall_s": round3(wall),
            "service_cpu_s": service,
            "postgres_cpu_s": postgres,
            "broker_cpu_s": broker,
            "bench_cpu_s": bench,
            "other_cpu_s": round3((busy - service - postgres - broker - bench).max(0.0)),
            "machine_busy_pct": if total > 0.0 { round3(100.0 * busy / total) } else { 0.0 },
        })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

// ---------------------------------------------------------------------------------------------
// Databases: fresh ones, dropped at the end (and leftovers of killed runs at the start).

struct Database {
    name: String,
    url: String,
    admin_url: String,
}

impl Database {
    async fn create(admin_url: &str, tag: &str) -> anyhow::Result<Database> {
        let name = format!(
            "{DB_PREFIX}{}_{tag}_{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let admin = connect(admin_url).await?;
        within(
            Duration::from_secs(30),
            "CREATE DATABASE",
            admin.batch_execute(&format!("CREATE DATABASE {name}")),
        )
        .await??;
        let base = admin_url
            .rsplit_once('/')
            .map(|(b, _)| b)
            .unwrap_or(admin_url);
        let db = Database {
            url: format!("{base}/{name}"),
            name,
            admin_url: admin_url.to_owned(),
        };
        within(
            Duration::from_secs(60),
            "migrations",
            panopticon::db::migrate(&db.url),
        )
        .await??;
        Ok(db)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || drop_database(&admin_url, &name)).join();
    }
}

fn drop_database(admin_url: &str, name: &str) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    runtime.block_on(async {
        let drop = async {
            if let Ok((client, conn)) = tokio_postgres::connect(admin_url, NoTls).await {
                tokio::spawn(conn);
                let _ = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(30), drop).await;
    });
}

/// Drops the databases of earlier runs whose process is gone.
async fn drop_leftover_databases(admin_url: &str) -> anyhow::Result<()> {
    let admin = connect(admin_url).await?;
    let rows = admin
        .query(
            "SELECT datname FROM pg_database WHERE starts_with(datname, $1)",
            &[&DB_PREFIX],
        )
        .await?;
    for row in rows {
        let name: String = row.get(0);
        let pid = name[DB_PREFIX.len()..]
            .split('_')
            .next()
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !PathBuf::from(format!("/proc/{pid}")).exists()
        {
            eprintln!("dropping database {name} left by an earlier run");
            let admin_url = admin_url.to_owned();
            tokio::task::spawn_blocking(move || drop_database(&admin_url, &name)).await?;
        }
    }
    Ok(())
}

/// Writes out what earlier phases left dirty, so that each phase starts from a clean server
/// rather than paying for the checkpoint its predecessor triggered. Needs a superuser (or
/// `pg_checkpoint`); without one, phases simply share the server's state.
async fn checkpoint(admin_url: &str) {
    let run = async {
        connect(admin_url)
            .await?
            .batch_execute("CHECKPOINT")
            .await
            .map_err(anyhow::Error::from)
    };
    match within(Duration::from_secs(300), "CHECKPOINT", run).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) | Err(e) => eprintln!("CHECKPOINT skipped: {e}"),
    }
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, conn) = within(
        Duration::from_secs(10),
        "connect to PostgreSQL",
        tokio_postgres::connect(url, NoTls),
    )
    .await??;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| anyhow!("timed out after {limit:?}: {what}"))
}

// ---------------------------------------------------------------------------------------------
// Kafka: topics, producers, delivery reports.

async fn create_topic(broker: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .create()?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = within(
        Duration::from_secs(30),
        "create topic",
        admin.create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ),
    )
    .await??;
    for result in results {
        result.map_err(|(t, e)| anyhow!("creating topic {t}: {e}"))?;
    }
    Ok(())
}

/// Delivery reports: how many, and where each tracked message landed.
#[derive(Default)]
struct Deliveries {
    /// `(partition, offset)` by message index; empty when positions are not tracked.
    positions: Mutex<Vec<(i32, i64)>>,
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

#[derive(Clone)]
struct Tracking(Arc<Deliveries>);

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
fn send(
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

/// Where `benches/broker/build-tansu.sh` builds the broker.
fn fixed_tansu_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-broker")
}

/// The broker `benches/broker/build-tansu.sh` builds.
fn fixed_tansu_path() -> PathBuf {
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

/// The preloaded messages, packed: payloads in one buffer, with each one's pod index.
struct Messages {
    bytes: Vec<u8>,
    /// `(pod index, start, end)` of each payload.
    index: Vec<(u32, usize, usize)>,
    pod_names: Vec<String>,
}

impl Messages {
    /// N samples of the simulator's pods, one tick a second, ending a minute ago.
    fn generate(count: usize, pods: u32) -> Messages {
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

    fn payload(&self, i: usize) -> &[u8] {
        let (_, start, end) = self.index[i];
        &self.bytes[start..end]
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Produces every message, pod `i` to partition `i mod P`, as fast as a batching producer
/// goes; answers the seconds from the first send to the last acknowledgement. Every message
/// must be acknowledged; the read limit and the drain then check that all of them arrive.
fn preload(
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
    if let Some(e) = deliveries.first_error.lock().unwrap().clone() {
        bail!(
            "{} messages were not delivered: {e}",
            deliveries.failed.load(Ordering::Relaxed)
        );
    }
    Ok(took)
}

// ---------------------------------------------------------------------------------------------
// Phase 2: the service drains the preloaded topic.

/// Rows in `system_metrics`, and how many distinct ones: every message of a run has its own
/// pod and timestamp.
async fn stored_rows(url: &str) -> anyhow::Result<(i64, i64)> {
    let row = within(
        Duration::from_secs(120),
        "count rows",
        connect(url).await?.query_one(
            "SELECT count(*), count(DISTINCT (pod_name, time)) FROM system_metrics",
            &[],
        ),
    )
    .await??;
    Ok((row.get(0), row.get(1)))
}

async fn committed(client: &Client, group: &str, topic: &str) -> anyhow::Result<i64> {
    let row = within(
        Duration::from_secs(10),
        "read kafka_offsets",
        client.query_one(
            "SELECT coalesce(sum(next_offset), 0)::int8 FROM kafka_offsets
             WHERE consumer_group = $1 AND topic = $2",
            &[&group, &topic],
        ),
    )
    .await??;
    Ok(row.get(0))
}

async fn drain(
    settings: &Settings,
    broker: &str,
    broker_pid: u32,
    topic: &str,
    tck: f64,
) -> anyhow::Result<Value> {
    let n = settings.messages as i64;
    let db = Database::create(&settings.admin_url, "drain").await?;
    let group = format!("drain_{}", uuid::Uuid::new_v4().simple());
    let mut service = Service::spawn(settings, &service_env(broker, topic, &group, &db))?;
    let pid = service.process.pid();
    let poll = connect(&db.url).await?;
    let profiler = match &settings.profile {
        Some(template) => Some(start_profiler(template, pid)?),
        None => None,
    };
    let before = CpuSnapshot::take(pid, broker_pid);
    let mut first: Option<(CpuSnapshot, i64)> = None;
    let mut samples: Vec<(f64, i64)> = Vec::new();
    let mut last_change = (Instant::now(), 0i64);
    let deadline = Instant::now() + Duration::from_secs(1800);
    let (last, hwm_kib) = loop {
        let count = committed(&poll, &group, topic).await?;
        let now = Instant::now();
        samples.push((
            round3(now.duration_since(service.started).as_secs_f64()),
            count,
        ));
        if count > 0 && first.is_none() {
            first = Some((CpuSnapshot::take(pid, broker_pid), count));
        }
        if count >= n {
            let snapshot = CpuSnapshot::take(pid, broker_pid);
            break (snapshot, proc_status_number(pid, "VmHWM:").unwrap_or(0));
        }
        if count != last_change.1 {
            last_change = (now, count);
        }
        if let Some(status) = service.process.exited() {
            bail!(
                "the service exited ({status}) during the drain; log:\n{}",
                service.log_tail(30)
            );
        }
        if now.duration_since(last_change.0) > STALL || now > deadline {
            bail!(
                "the drain stalled at {count} of {n} rows; status: {:#}\nlog:\n{}",
                service.status().await,
                service.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if let Some(mut profiler) = profiler {
        // SIGINT: perf and valgrind's tools write their data and exit.
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(profiler.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(120);
        while profiler.exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let status = service.status().await;
    let (first, first_count) = first.expect("a first sample before the last");
    let seconds = last.at.duration_since(first.at).as_secs_f64();
    let rate = if seconds > 0.0 && first_count < n {
        (n - first_count) as f64 / seconds
    } else {
        n as f64 / last.at.duration_since(service.started).as_secs_f64()
    };
    let joined = service
        .wait_for_log("Kafka consumer connected", Duration::ZERO)
        .is_ok();
    let exit = service.process.terminate(Duration::from_secs(40))?;
    let (stored, distinct) = stored_rows(&db.url).await?;
    if stored != n || distinct != n {
        eprintln!(
            "WARNING: {n} messages, {stored} rows stored, {distinct} of them distinct; log:\n{}",
            service.log_tail(20)
        );
    }
    let metric_lines = service.log.lock().unwrap().metric_lines;
    Ok(json!({
        "rows_per_s": rate.round(),
        "first_row_after_s": round3(first.at.duration_since(service.started).as_secs_f64()),
        "first_to_last_s": round3(seconds),
        "rows_at_first_sample": first_count,
        "start_to_last_s": round3(last.at.duration_since(service.started).as_secs_f64()),
        "service_cpu_s": round3(last.service as f64 / tck),
        "service_cpu_s_drain": round3(last.service.saturating_sub(first.service) as f64 / tck),
        "peak_rss_mib": round3(hwm_kib as f64 / 1024.0),
        "cpu_during_drain": first.until(&last, tck),
        "cpu_since_start": before.until(&last, tck),
        "rows_stored": stored,
        "duplicate_rows": stored - distinct,
        "missing_rows": n - distinct,
        "exit": exit.code(),
        "consumer_joined_logged": joined,
        "metric_lines_printed": metric_lines,
        "flushes": status["writer"]["flushes"].clone(),
        "last_flush": status["writer"]["last_flush"].clone(),
        "storage": status["database"]["storage"].clone(),
        "samples": samples,
    }))
}

// ---------------------------------------------------------------------------------------------
// Phase 3a: the write limit, COPY of the same rows.

fn parse_all(messages: &Messages) -> anyhow::Result<Vec<ValidMetric>> {
    let rules = Rules {
        max_future_skew_ms: 300_000,
        max_age_ms: None,
    };
    let now = now_ms();
    (0..messages.index.len())
        .map(|i| {
            ValidMetric::parse(messages.payload(i), &rules, now)
                .map_err(|e| anyhow!("message {i} is invalid: {e}"))
        })
        .collect()
}

fn csv_field(out: &mut BytesMut, s: &str) {
    if s.contains([',', '"', '\n', '\r']) {
        out.put_u8(b'"');
        out.put_slice(s.replace('"', "\"\"").as_bytes());
        out.put_u8(b'"');
    } else {
        out.put_slice(s.as_bytes());
    }
}

fn encode_csv(rows: &[ValidMetric]) -> Bytes {
    use std::fmt::Write;
    let mut out = BytesMut::with_capacity(rows.len() * 160);
    let mut line = String::with_capacity(64);
    for m in rows {
        line.clear();
        let _ = write!(line, "{}", m.time().format("%Y-%m-%d %H:%M:%S%.3f+00"));
        out.put_slice(line.as_bytes());
        out.put_u8(b',');
        csv_field(&mut out, m.service());
        out.put_u8(b',');
        csv_field(&mut out, m.pod_name());
        line.clear();
        let _ = write!(line, ",{},{},", m.cpu(), m.memory());
        out.put_slice(line.as_bytes());
        csv_field(&mut out, m.namespace());
        out.put_u8(b',');
        csv_field(&mut out, m.node_name());
        out.put_u8(b'\n');
    }
    out.freeze()
}

/// PostgreSQL's binary COPY format: header, one tuple per row, trailer.
fn encode_binary(rows: &[ValidMetric]) -> Bytes {
    const PG_EPOCH_MS: i64 = 946_684_800_000;
    let mut out = BytesMut::with_capacity(rows.len() * 160);
    out.put_slice(b"PGCOPY\n\xff\r\n\0");
    out.put_i32(0);
    out.put_i32(0);
    let text = |out: &mut BytesMut, s: &str| {
        out.put_i32(s.len() as i32);
        out.put_slice(s.as_bytes());
    };
    for m in rows {
        out.put_i16(7);
        out.put_i32(8);
        out.put_i64((m.time_ms() - PG_EPOCH_MS) * 1000);
        text(&mut out, m.service());
        text(&mut out, m.pod_name());
        out.put_i32(8);
        out.put_f64(m.cpu());
        out.put_i32(8);
        out.put_f64(m.memory());
        text(&mut out, m.namespace());
        text(&mut out, m.node_name());
    }
    out.put_i16(-1);
    out.freeze()
}

/// One `COPY` of the whole, pre-encoded data, streamed in 1 MiB pieces; answers rows/s.
async fn copy(client: &Client, format: &str, data: &Bytes, rows: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let run = async {
        let sink = client
            .copy_in(&format!("COPY {COLUMNS} FROM STDIN (FORMAT {format})"))
            .await?;
        futures_util::pin_mut!(sink);
        let mut at = 0;
        while at < data.len() {
            let end = (at + (1 << 20)).min(data.len());
            sink.send(data.slice(at..end)).await?;
            at = end;
        }
        let copied = sink.finish().await?;
        Ok::<_, tokio_postgres::Error>(copied)
    };
    let copied = within(Duration::from_secs(600), "COPY", run).await??;
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    ensure!(
        copied as usize == rows,
        "COPY stored {copied} of {rows} rows"
    );
    Ok(rate)
}

// ---------------------------------------------------------------------------------------------
// Phase 3b: the read limit.

fn consumer_config(broker: &str, group: &str) -> ClientConfig {
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

/// Reads the whole topic and touches every payload; answers messages/s from the first
/// message to the last, and the reader's CPU seconds.
fn read_limit(
    broker: &str,
    topic: &str,
    watermarks: &[i64],
    tck: f64,
) -> anyhow::Result<(f64, f64, u64)> {
    let group = format!("read_{}", uuid::Uuid::new_v4().simple());
    let consumer: BaseConsumer = consumer_config(broker, &group).create()?;
    consumer.subscribe(&[topic])?;
    let mut next = vec![0i64; watermarks.len()];
    let total: i64 = watermarks.iter().sum();
    let mut seen = 0i64;
    let mut checksum = 0u64;
    let mut first: Option<(Instant, u64)> = None;
    let mut last_progress = Instant::now();
    while next.iter().zip(watermarks).any(|(n, w)| n < w) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                if first.is_none() {
                    first = Some((Instant::now(), proc_ticks(std::process::id())));
                }
                let payload = message.payload().unwrap_or_default();
                checksum = payload
                    .iter()
                    .fold(checksum, |acc, b| acc.rotate_left(5) ^ u64::from(*b));
                let p = message.partition() as usize;
                next[p] = next[p].max(message.offset() + 1);
                seen += 1;
                last_progress = Instant::now();
            }
            Some(Err(e)) => bail!("read limit consumer: {e}"),
            None => ensure!(
                last_progress.elapsed() < Duration::from_secs(60),
                "read limit consumer stalled at {seen} of {total}"
            ),
        }
    }
    let (start, ticks) = first.ok_or_else(|| anyhow!("nothing read"))?;
    let cpu = proc_ticks(std::process::id()).saturating_sub(ticks) as f64 / tck;
    let rate = (seen - 1).max(1) as f64 / start.elapsed().as_secs_f64();
    Ok((rate, cpu, std::hint::black_box(checksum)))
}

// ---------------------------------------------------------------------------------------------
// Phase 3c: the naive service.

/// Consumes and validates like the service, but stores each message with its own autocommitted
/// `INSERT`; for `naive_secs` or `naive_max` messages, whichever comes first.
async fn naive(
    settings: &Settings,
    broker: &str,
    topic: &str,
    client: &Client,
) -> anyhow::Result<(f64, usize)> {
    let group = format!("naive_{}", uuid::Uuid::new_v4().simple());
    let consumer: StreamConsumer = consumer_config(broker, &group).create()?;
    consumer.subscribe(&[topic])?;
    let insert = client
        .prepare(&format!(
            "INSERT INTO {COLUMNS} VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .await?;
    let rules = Rules {
        max_future_skew_ms: 300_000,
        max_age_ms: None,
    };
    let limit = Duration::from_secs(settings.naive_secs);
    let mut started: Option<Instant> = None;
    let mut stored = 0usize;
    // The topic holds `messages`: stop there at the latest.
    let most = settings.naive_max.min(settings.messages);
    while stored < most && started.is_none_or(|s| s.elapsed() < limit) {
        let message = within(Duration::from_secs(60), "naive consumer", consumer.recv()).await??;
        started.get_or_insert_with(Instant::now);
        let metric = ValidMetric::parse(message.payload().unwrap_or_default(), &rules, now_ms())
            .map_err(|e| anyhow!("invalid message: {e}"))?;
        within(
            Duration::from_secs(30),
            "naive INSERT",
            client.execute(
                &insert,
                &[
                    &metric.time(),
                    &metric.service(),
                    &metric.pod_name(),
                    &metric.cpu(),
                    &metric.memory(),
                    &metric.namespace(),
                    &metric.node_name(),
                ],
            ),
        )
        .await??;
        stored += 1;
    }
    let seconds = started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(1.0);
    Ok((stored as f64 / seconds, stored))
}

// ---------------------------------------------------------------------------------------------
// Phase 4: latency at a steady rate.

struct PodInfo {
    service: String,
    name: String,
    namespace: String,
    node: String,
    cpu: f64,
    memory: f64,
}

fn pod_infos(pods: u32) -> anyhow::Result<Vec<PodInfo>> {
    let mut simulator = Simulator::new(pods, 7);
    let mut infos = Vec::new();
    let mut failure = None;
    simulator.tick(now_ms(), |key, payload| {
        match serde_json::from_slice::<Value>(payload) {
            Ok(v) => infos.push(PodInfo {
                service: v["service"].as_str().unwrap_or_default().to_owned(),
                name: key.to_owned(),
                namespace: v["namespace"].as_str().unwrap_or_default().to_owned(),
                node: v["nodeName"].as_str().unwrap_or_default().to_owned(),
                cpu: v["cpu"].as_f64().unwrap_or(0.0),
                memory: v["memory"].as_f64().unwrap_or(0.0),
            }),
            Err(e) => failure = Some(e),
        }
    });
    if let Some(e) = failure {
        bail!("simulator payload: {e}");
    }
    Ok(infos)
}

/// What the steady producer sends: `total` messages, `rate` a second, pod `i` to partition
/// `i mod partitions`.
#[derive(Clone, Copy)]
struct Steady {
    pods: u32,
    rate: u64,
    partitions: i32,
    total: usize,
}

/// Produces `rate` messages a second until `total` were sent, each stamped with the moment it is
/// handed to the producer; answers those moments.
fn produce_steady(
    steady: Steady,
    producer: &ThreadedProducer<Tracking>,
    topic: &str,
) -> anyhow::Result<Vec<Instant>> {
    let Steady {
        pods,
        rate,
        partitions,
        total,
    } = steady;
    let mut pods = pod_infos(pods)?;
    let mut sent_at = Vec::with_capacity(total);
    let mut rng = fastrand::Rng::with_seed(11);
    let mut payload = Vec::with_capacity(256);
    let started = Instant::now();
    let rate = rate as f64;
    while sent_at.len() < total {
        let due = ((started.elapsed().as_secs_f64() * rate) as usize + 1).min(total);
        while sent_at.len() < due {
            let i = sent_at.len();
            let pod_index = i % pods.len();
            let pod = &mut pods[pod_index];
            pod.cpu = (pod.cpu + (rng.f64() - 0.5) * 8.0).clamp(0.0, 100.0);
            pod.memory = (pod.memory + (rng.f64() - 0.5) * 16.0).clamp(16.0, 4096.0);
            let now = Instant::now();
            payload.clear();
            serde_json::to_writer(
                &mut payload,
                &WireMetric {
                    timestamp: now_ms(),
                    service: &pod.service,
                    pod_name: &pod.name,
                    namespace: &pod.namespace,
                    node_name: &pod.node,
                    cpu: (pod.cpu * 100.0).round() / 100.0,
                    memory: (pod.memory * 100.0).round() / 100.0,
                },
            )?;
            send(
                producer,
                topic,
                pod_index as i32 % partitions,
                &pod.name,
                &payload,
                i,
            )?;
            sent_at.push(now);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(sent_at)
}

/// One look at `kafka_offsets`: when, and each partition's next offset.
struct Look {
    at: Instant,
    next: Vec<i64>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn latency(
    settings: &Settings,
    broker: &str,
    broker_pid: u32,
    tck: f64,
) -> anyhow::Result<Value> {
    let topic = format!("latency_{}", uuid::Uuid::new_v4().simple());
    create_topic(broker, &topic, settings.partitions).await?;
    let db = Database::create(&settings.admin_url, "latency").await?;
    let group = format!("latency_{}", uuid::Uuid::new_v4().simple());
    let mut service = Service::spawn(settings, &service_env(broker, &topic, &group, &db))?;
    service.wait_for_log("Kafka consumer connected", Duration::from_secs(60))?;
    let pid = service.process.pid();
    let total = (settings.latency_rate * settings.latency_secs) as usize;
    ensure!(
        total > 0,
        "BENCH_LATENCY_RATE × BENCH_LATENCY_SECS must be > 0"
    );

    // The poller.
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        let client = connect(&db.url).await?;
        let group = group.clone();
        let topic = topic.clone();
        let partitions = settings.partitions as usize;
        tokio::spawn(async move {
            let offsets = client
                .prepare(
                    "SELECT partition, next_offset FROM kafka_offsets
                     WHERE consumer_group = $1 AND topic = $2",
                )
                .await?;
            let checked = client
                .prepare(
                    "SELECT (SELECT count(*) FROM system_metrics),
                            (SELECT coalesce(sum(next_offset), 0)::int8 FROM kafka_offsets
                             WHERE consumer_group = $1 AND topic = $2)",
                )
                .await?;
            let mut samples: Vec<Look> = Vec::new();
            let (mut checks, mut mismatches) = (0u64, Vec::<(i64, i64)>::new());
            let mut last_check = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let at = Instant::now();
                let rows = within(
                    Duration::from_secs(10),
                    "poll kafka_offsets",
                    client.query(&offsets, &[&group, &topic]),
                )
                .await??;
                let mut next = vec![0i64; partitions];
                for row in rows {
                    let p: i32 = row.get(0);
                    if let Some(slot) = next.get_mut(p as usize) {
                        *slot = row.get(1);
                    }
                }
                samples.push(Look { at, next });
                if last_check.elapsed() >= Duration::from_millis(500) {
                    last_check = Instant::now();
                    // Both counts in one statement, so in one snapshot.
                    let row = client.query_one(&checked, &[&group, &topic]).await?;
                    let (rows, offsets): (i64, i64) = (row.get(0), row.get(1));
                    checks += 1;
                    if rows != offsets {
                        mismatches.push((rows, offsets));
                    }
                }
            }
            Ok::<_, anyhow::Error>((samples, checks, mismatches))
        })
    };

    let deliveries = Arc::new(Deliveries {
        positions: Mutex::new(vec![(-1, -1); total]),
        ..Deliveries::default()
    });
    // librdkafka's producer defaults (linger.ms 5), as Fluent Bit's Kafka output uses.
    let producer: ThreadedProducer<Tracking> = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .create_with_context(Tracking(deliveries.clone()))?;
    let before = CpuSnapshot::take(pid, broker_pid);
    let steady = Steady {
        pods: settings.pods,
        rate: settings.latency_rate,
        partitions: settings.partitions,
        total,
    };
    let producer = Arc::new(producer);
    let producing = {
        let topic = topic.clone();
        let producer = producer.clone();
        tokio::task::spawn_blocking(move || {
            let sent = produce_steady(steady, &producer, &topic)?;
            producer.flush(Duration::from_secs(60))?;
            Ok::<_, anyhow::Error>(sent)
        })
    };
    let produce_started = Instant::now();
    let sent_at = within(
        Duration::from_secs(settings.latency_secs * 3 + 120),
        "steady producer",
        producing,
    )
    .await???;
    let produce_seconds = produce_started.elapsed().as_secs_f64();
    if let Some(e) = deliveries.first_error.lock().unwrap().clone() {
        bail!(
            "{} messages were not delivered: {e}",
            deliveries.failed.load(Ordering::Relaxed)
        );
    }
    let positions = deliveries.positions.lock().unwrap().clone();
    let mut needed = vec![0i64; settings.partitions as usize];
    for &(p, o) in &positions {
        ensure!(p >= 0, "a message has no delivery report");
        needed[p as usize] = needed[p as usize].max(o + 1);
    }
    // Wait until every message is visible (the poller keeps sampling meanwhile).
    let probe = connect(&db.url).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let count = committed(&probe, &group, &topic).await?;
        if count >= needed.iter().sum::<i64>() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "only {count} of {total} messages visible a minute after the last was produced; log:\n{}",
            service.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = CpuSnapshot::take(pid, broker_pid);
    let hwm_kib = proc_status_number(pid, "VmHWM:").unwrap_or(0);
    stop.store(true, Ordering::Relaxed);
    let (samples, checks, mismatches) =
        within(Duration::from_secs(30), "poller", poller).await???;
    drop(producer);
    let status = service.status().await;
    let exit = service.process.terminate(Duration::from_secs(40))?;

    let mut latencies: Vec<f64> = Vec::with_capacity(total);
    let mut unseen = 0usize;
    for (i, &(p, o)) in positions.iter().enumerate() {
        let p = p as usize;
        let j = samples.partition_point(|s| s.next[p] <= o);
        match samples.get(j) {
            Some(s) => {
                latencies.push(s.at.saturating_duration_since(sent_at[i]).as_secs_f64() * 1000.0)
            }
            None => unseen += 1,
        }
    }
    ensure!(unseen == 0, "{unseen} messages never seen by the poller");
    let (stored, distinct) = stored_rows(&db.url).await?;
    if !mismatches.is_empty() || stored != total as i64 || distinct != total as i64 {
        eprintln!(
            "WARNING: {total} messages, {stored} rows stored, {distinct} of them distinct; rows and \
             stored offsets disagreed in {} of {checks} snapshots (rows, offsets): {:?}",
            mismatches.len(),
            &mismatches[..mismatches.len().min(10)]
        );
    }
    latencies.sort_by(f64::total_cmp);
    let gaps: Vec<f64> = samples
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at).as_secs_f64() * 1000.0)
        .collect();
    let mean_gap = gaps.iter().sum::<f64>() / gaps.len().max(1) as f64;
    Ok(json!({
        "messages": total,
        "achieved_rate": (total as f64 / produce_seconds).round(),
        "p50_ms": round3(percentile(&latencies, 50.0)),
        "p90_ms": round3(percentile(&latencies, 90.0)),
        "p99_ms": round3(percentile(&latencies, 99.0)),
        "max_ms": round3(latencies.last().copied().unwrap_or(f64::NAN)),
        "min_ms": round3(latencies.first().copied().unwrap_or(f64::NAN)),
        "mean_ms": round3(latencies.iter().sum::<f64>() / latencies.len().max(1) as f64),
        "poll_interval_ms": round3(mean_gap),
        "consistency_checks": checks,
        "consistency_mismatches": mismatches.len(),
        "rows_stored": stored,
        "duplicate_rows": stored - distinct,
        "missing_rows": total as i64 - distinct,
        "service_cpu": before.until(&after, tck),
        "peak_rss_mib": round3(hwm_kib as f64 / 1024.0),
        "flushes": status["writer"]["flushes"].clone(),
        "exit": exit.code(),
    }))
}

// ---------------------------------------------------------------------------------------------
// The run.

fn step(what: &str) {
    eprintln!("[{}] {what}", chrono::Local::now().format("%H:%M:%S"));
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let tck = clock_ticks();
    let n = settings.messages;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let load_at_start = loadavg();
    let what = match settings.soak {
        Some(soak) => format!("soak of {} s", soak.secs),
        None => format!("{n} messages"),
    };
    step(&format!(
        "{what}, {} pods, {} partitions; {cpus} CPUs, load average {load_at_start}",
        settings.pods, settings.partitions
    ));
    drop_leftover_databases(&settings.admin_url).await?;
    let pg_version: String = connect(&settings.admin_url)
        .await?
        .query_one("SHOW server_version", &[])
        .await?
        .get(0);

    let (mut broker_process, mut broker) = start_tansu(&settings)?;
    let mut fetches_right = fetches_inside_batches(&broker).await?;
    if let Some(soak) = settings.soak {
        if !fetches_right {
            eprintln!(
                "WARNING: the broker ({}) answers a fetch that starts inside a record batch with \
                 the next batch. A steady stream never fetches from inside a batch, but should \
                 the service pause its partitions, records would be lost, and the count at the \
                 end would say so.",
                settings.tansu.display()
            );
        }
        step(&format!(
            "soak: {} msg/s for {} s, a bad message every {} ms",
            soak.rate, soak.secs, soak.bad_every_ms
        ));
        checkpoint(&settings.admin_url).await;
        let mut report = soak::run(&settings, soak, &broker, broker_process.pid(), tck).await?;
        drop(broker_process);
        report["machine"] = json!({
            "cpus": cpus,
            "load_average_at_start": load_at_start,
            "load_average_at_end": loadavg(),
            "postgres": pg_version,
            "broker": settings.tansu.display().to_string(),
            "broker_fetches_inside_batches": fetches_right,
        });
        let table = soak::table(&report);
        println!("{table}");
        report["table"] = Value::String(table);
        return write_report(&settings.json, &report);
    }
    let mut settings = settings;
    if !fetches_right && !settings.tansu_chosen && settings.preload_batch > 1 {
        step(&format!(
            "{} skips records when a fetch starts inside a batch; building tansu with the fix \
             (benches/broker/build-tansu.sh, once)",
            settings.tansu.display()
        ));
        drop(broker_process);
        settings.tansu = build_fixed_tansu()?;
        (broker_process, broker) = start_tansu(&settings)?;
        fetches_right = fetches_inside_batches(&broker).await?;
    }
    let settings = settings;
    let broker_pid = broker_process.pid();
    if !fetches_right {
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
    let topic = format!("preload_{}", uuid::Uuid::new_v4().simple());
    create_topic(&broker, &topic, settings.partitions).await?;

    // 1. Preload.
    step("generating messages");
    let messages = Arc::new(Messages::generate(n, settings.pods));
    let payload_mb = messages.bytes.len() as f64 / 1e6;
    step(&format!(
        "preloading {n} messages ({payload_mb:.1} MB) into {topic}"
    ));
    let preload_s = {
        let (broker, topic, messages) = (broker.clone(), topic.clone(), messages.clone());
        let partitions = settings.partitions;
        let preload_batch = settings.preload_batch;
        within(
            Duration::from_secs(1800),
            "preload",
            tokio::task::spawn_blocking(move || {
                preload(&broker, &topic, &messages, partitions, preload_batch)
            }),
        )
        .await???
    };
    // What each partition holds, by construction. (tansu's ListOffsets answers the base
    // offset of a partition's last batch as its high watermark, so it is not asked.)
    let watermarks = messages.per_partition(settings.partitions);
    step(&format!(
        "preloaded in {preload_s:.1} s ({:.0} msg/s); partitions hold {watermarks:?}",
        n as f64 / preload_s
    ));

    // 2. The service drains it.
    step("draining with the service (default settings)");
    checkpoint(&settings.admin_url).await;
    let drain = drain(&settings, &broker, broker_pid, &topic, tck).await?;
    step(&format!("drain: {} rows/s", drain["rows_per_s"]));
    if std::env::var_os("BENCH_DRAIN_ONLY").is_some() {
        let mut drain = drain;
        drain["samples"] = Value::Null;
        println!("{drain:#}");
        return Ok(());
    }

    // 3a. Write limit.
    step("write limit: COPY of the same rows");
    let reference = Database::create(&settings.admin_url, "reference").await?;
    let client = connect(&reference.url).await?;
    let (csv_rate, binary_rate) = {
        let rows = parse_all(&messages)?;
        let csv = encode_csv(&rows);
        let binary = encode_binary(&rows);
        drop(rows);
        checkpoint(&settings.admin_url).await;
        let csv_rate = copy(&client, "csv", &csv, n).await?;
        client.batch_execute("TRUNCATE system_metrics").await?;
        checkpoint(&settings.admin_url).await;
        let binary_rate = copy(&client, "binary", &binary, n).await?;
        client.batch_execute("TRUNCATE system_metrics").await?;
        (csv_rate, binary_rate)
    };
    drop(messages);
    let copy_limit = csv_rate.max(binary_rate);
    step(&format!(
        "COPY csv {csv_rate:.0} rows/s, binary {binary_rate:.0} rows/s"
    ));

    // 3b. Read limit.
    step("read limit: rdkafka consumer");
    let (read_rate, read_cpu, _) = {
        let (broker, topic, watermarks) = (broker.clone(), topic.clone(), watermarks.clone());
        within(
            Duration::from_secs(1800),
            "read limit",
            tokio::task::spawn_blocking(move || read_limit(&broker, &topic, &watermarks, tck)),
        )
        .await???
    };
    step(&format!("read limit {read_rate:.0} msg/s"));

    // 3c. Naive service.
    step(&format!(
        "naive service: one INSERT per message, {} s or {} messages",
        settings.naive_secs, settings.naive_max
    ));
    checkpoint(&settings.admin_url).await;
    let (naive_rate, naive_rows) = naive(&settings, &broker, &topic, &client).await?;
    step(&format!("naive {naive_rate:.0} rows/s ({naive_rows} rows)"));
    drop(client);
    drop(reference);

    // 4. Latency.
    step(&format!(
        "latency: {} msg/s for {} s into a fresh service",
        settings.latency_rate, settings.latency_secs
    ));
    checkpoint(&settings.admin_url).await;
    let latency = latency(&settings, &broker, broker_pid, tck).await?;
    drop(broker_process);

    // 5. Report.
    let drain_rate = drain["rows_per_s"].as_f64().unwrap_or(0.0);
    let drain_cpu = drain["service_cpu_s"].as_f64().unwrap_or(0.0);
    let drain_rss = drain["peak_rss_mib"].as_f64().unwrap_or(0.0);
    let p50 = latency["p50_ms"].as_f64().unwrap_or(f64::NAN);
    let p99 = latency["p99_ms"].as_f64().unwrap_or(f64::NAN);
    let vs_copy = drain_rate / copy_limit;
    let vs_naive = drain_rate / naive_rate;
    let p99_target = BATCH_MAX_WAIT_MS + 100.0;
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    let sum = |key: &str| {
        drain[key].as_f64().unwrap_or(f64::NAN) + latency[key].as_f64().unwrap_or(f64::NAN)
    };
    let (lost, duplicates) = (sum("missing_rows"), sum("duplicate_rows"));
    let targets = json!({
        "drain_vs_copy": { "value": round3(vs_copy), "target": ">= 0.6", "pass": vs_copy >= 0.6 },
        "drain_vs_naive": { "value": round3(vs_naive), "target": ">= 20", "pass": vs_naive >= 20.0 },
        "latency_p99_ms": { "value": p99, "target": format!("<= {p99_target}"), "pass": p99 <= p99_target },
        "lost_metrics": { "value": lost, "target": "0", "pass": lost == 0.0 },
        "duplicate_rows": { "value": duplicates, "target": "0", "pass": duplicates == 0.0 },
        "peak_rss_mib": { "value": drain_rss.max(latency["peak_rss_mib"].as_f64().unwrap_or(0.0)), "target": "<= 256", "pass": drain_rss.max(latency["peak_rss_mib"].as_f64().unwrap_or(0.0)) <= RSS_TARGET_MIB },
    });

    let mut out = String::new();
    use std::fmt::Write;
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Panopticon pipeline: {n} messages ({payload_mb:.1} MB), {} pods, {} partitions; {cpus} CPUs, load average {load_at_start} at start; PostgreSQL {pg_version} ({}); broker {} (memory storage)",
        settings.pods,
        settings.partitions,
        drain["storage"].as_str().unwrap_or("?"),
        settings.tansu.display()
    );
    let _ = writeln!(
        out,
        "service: {} with {}",
        settings.service_bin.display(),
        if settings.service_env.is_empty() {
            "its default settings (only broker, topic, group, database and HTTP port set)"
                .to_owned()
        } else {
            let extra: Vec<String> = settings
                .service_env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!("default settings except {}", extra.join(" "))
        }
    );
    let _ = writeln!(
        out,
        "preload (batches of up to {} messages): {preload_s:.1} s = {:.0} msg/s",
        settings.preload_batch,
        n as f64 / preload_s
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<46} {:>10} {:>7} {:>7} {:>7} {:>9}",
        "path", "rows/s", "×COPY", "×naive", "CPU s", "RSS MiB"
    );
    let row = |out: &mut String, name: &str, rate: f64, cpu: String, rss: String| {
        let _ = writeln!(
            out,
            "{name:<46} {rate:>10.0} {:>7.2} {:>7.1} {cpu:>7} {rss:>9}",
            rate / copy_limit,
            rate / naive_rate
        );
    };
    row(
        &mut out,
        if settings.service_env.is_empty() {
            "service drain, default settings"
        } else {
            "service drain, settings above"
        },
        drain_rate,
        format!("{drain_cpu:.1}"),
        format!("{drain_rss:.1}"),
    );
    row(
        &mut out,
        "write limit: COPY csv, one statement",
        csv_rate,
        "-".into(),
        "-".into(),
    );
    row(
        &mut out,
        "write limit: COPY binary, one statement",
        binary_rate,
        "-".into(),
        "-".into(),
    );
    row(
        &mut out,
        "read limit: rdkafka consumer, reads only",
        read_rate,
        format!("{read_cpu:.1}"),
        "-".into(),
    );
    row(
        &mut out,
        &format!("naive: INSERT per message ({naive_rows} rows)"),
        naive_rate,
        "-".into(),
        "-".into(),
    );
    let during = &drain["cpu_during_drain"];
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "drain: first row {:.1} s after start, {} s first→last row; CPU s during it: service {}, postgres {}, tansu {}, bench {}, other {}; machine busy {}%",
        drain["first_row_after_s"].as_f64().unwrap_or(0.0),
        drain["first_to_last_s"],
        during["service_cpu_s"],
        during["postgres_cpu_s"],
        during["broker_cpu_s"],
        during["bench_cpu_s"],
        during["other_cpu_s"],
        during["machine_busy_pct"]
    );
    let _ = writeln!(
        out,
        "drain flushes: {}; service CPU {:.1} s in all, {:.2} µs a row during the drain",
        drain["flushes"],
        drain_cpu,
        during["service_cpu_s"].as_f64().unwrap_or(0.0) * 1e6 / n as f64
    );
    let lat_cpu = &latency["service_cpu"];
    let _ = writeln!(
        out,
        "latency @ {} msg/s for {} s (achieved {} msg/s), produce → row visible: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms (poll every {:.1} ms)",
        settings.latency_rate,
        settings.latency_secs,
        latency["achieved_rate"],
        p50,
        latency["p90_ms"].as_f64().unwrap_or(f64::NAN),
        p99,
        latency["max_ms"].as_f64().unwrap_or(f64::NAN),
        latency["poll_interval_ms"].as_f64().unwrap_or(f64::NAN),
    );
    let _ = writeln!(
        out,
        "latency run: service CPU {} s over {} s, peak RSS {} MiB, flushes {}",
        lat_cpu["service_cpu_s"], lat_cpu["wall_s"], latency["peak_rss_mib"], latency["flushes"]
    );
    let _ = writeln!(
        out,
        "rows: drain {} for {n} messages ({} duplicates, {} missing); latency run {} for {} ({} duplicates, {} missing; rows ≠ offsets in {} of {} snapshots)",
        drain["rows_stored"],
        drain["duplicate_rows"],
        drain["missing_rows"],
        latency["rows_stored"],
        latency["messages"],
        latency["duplicate_rows"],
        latency["missing_rows"],
        latency["consistency_mismatches"],
        latency["consistency_checks"]
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<28} {:>10} {:>12}  result",
        "target", "value", "goal"
    );
    for (name, key, unit, digits) in [
        ("drain / COPY limit", "drain_vs_copy", "", 2),
        ("drain / naive", "drain_vs_naive", "", 1),
        ("latency p99", "latency_p99_ms", " ms", 0),
        ("peak RSS", "peak_rss_mib", " MiB", 1),
        ("metrics lost (both runs)", "lost_metrics", "", 0),
        ("rows stored twice", "duplicate_rows", "", 0),
    ] {
        let t = &targets[key];
        let _ = writeln!(
            out,
            "{name:<28} {:>10} {:>12}  {}",
            format!("{:.digits$}{unit}", t["value"].as_f64().unwrap_or(f64::NAN)),
            t["target"].as_str().unwrap_or_default(),
            verdict(t["pass"].as_bool().unwrap_or(false))
        );
    }
    println!("{out}");

    let report = json!({
        "settings": {
            "messages": n,
            "pods": settings.pods,
            "partitions": settings.partitions,
            "latency_rate": settings.latency_rate,
            "latency_secs": settings.latency_secs,
            "naive_secs": settings.naive_secs,
            "naive_max": settings.naive_max,
            "service_bin": settings.service_bin.display().to_string(),
            "service_env": settings.service_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "broker": settings.tansu.display().to_string(),
            "preload_batch": settings.preload_batch,
        },
        "machine": {
            "cpus": cpus,
            "load_average_at_start": load_at_start,
            "load_average_at_end": loadavg(),
            "postgres": pg_version,
        },
        "preload": { "seconds": round3(preload_s), "messages_per_s": (n as f64 / preload_s).round(), "payload_mb": round3(payload_mb), "partitions": watermarks },
        "drain": drain,
        "write_limit": { "copy_csv_rows_per_s": csv_rate.round(), "copy_binary_rows_per_s": binary_rate.round(), "limit_rows_per_s": copy_limit.round() },
        "read_limit": { "messages_per_s": read_rate.round(), "cpu_s": round3(read_cpu) },
        "naive": { "rows_per_s": naive_rate.round(), "rows": naive_rows },
        "latency": latency,
        "targets": targets,
        "table": out,
    });
    write_report(&settings.json, &report)
}

fn write_report(path: &std::path::Path, report: &Value) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    step(&format!("report written to {}", path.display()));
    Ok(())
}
