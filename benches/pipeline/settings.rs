//! The bench's settings, from the environment (the table in `main.rs` lists them).

use std::path::PathBuf;

use anyhow::{anyhow, ensure};
use serde::Serialize;

use crate::broker::Broker;
use crate::soak::Soak;

pub struct Settings {
    pub messages: usize,
    pub pods: u32,
    pub partitions: i32,
    pub latency_rate: u64,
    pub latency_secs: u64,
    /// Seconds of the stream sent before the measured ones, not counted.
    pub latency_warmup_secs: u64,
    pub naive_secs: u64,
    pub naive_max: usize,
    pub preload_batch: usize,
    /// A command run during the drain, `{pid}` replaced by the service's process id, stopped
    /// with SIGINT when the drain is done: a profiler.
    pub profile: Option<String>,
    /// Settings given to the service besides the defaults, for experiments.
    pub service_env: Vec<(String, String)>,
    pub json: PathBuf,
    pub admin_url: String,
    pub service_bin: PathBuf,
    /// The broker's JVM heap (`BENCH_KAFKA_HEAP`).
    pub kafka_heap: String,
    pub echo_log: bool,
    /// `BENCH_DRAIN_ONLY` is set: stop after the drain.
    pub drain_only: bool,
    /// `BENCH_SOAK_SECS` is set: the soak runs instead of everything else.
    pub soak: Option<Soak>,
    /// `BENCH_ROW_COST` is set: only the service's own work a row runs, over this many
    /// messages.
    pub row_cost: Option<usize>,
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
    pub fn from_env() -> anyhow::Result<Settings> {
        let soak = match std::env::var("BENCH_SOAK_SECS") {
            Ok(_) => Some(Soak {
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
            latency_warmup_secs: env_num("BENCH_LATENCY_WARMUP_SECS", 3)?,
            naive_secs: env_num("BENCH_NAIVE_SECS", 20)?,
            naive_max: env_num("BENCH_NAIVE_MAX", 50_000)?,
            preload_batch: env_num("BENCH_PRELOAD_BATCH", 10_000)?,
            profile: std::env::var("BENCH_PROFILE")
                .ok()
                .filter(|p| !p.trim().is_empty()),
            service_env: service_env_from(&std::env::var("BENCH_SERVICE_ENV").unwrap_or_default())?,
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
            kafka_heap: std::env::var("BENCH_KAFKA_HEAP").unwrap_or_else(|_| "512m".into()),
            echo_log: std::env::var_os("BENCH_LOG").is_some(),
            drain_only: std::env::var_os("BENCH_DRAIN_ONLY").is_some(),
            soak,
            row_cost: match std::env::var("BENCH_ROW_COST") {
                Ok(_) => Some(env_num("BENCH_ROW_COST", 0)?),
                Err(_) => None,
            },
        };
        ensure!(settings.messages > 0, "BENCH_MESSAGES must be > 0");
        ensure!(settings.pods > 0, "BENCH_PODS must be > 0");
        ensure!(settings.partitions > 0, "BENCH_PARTITIONS must be > 0");
        ensure!(
            settings.kafka_heap.len() > 1
                && settings.kafka_heap[..settings.kafka_heap.len() - 1]
                    .bytes()
                    .all(|b| b.is_ascii_digit())
                && settings.kafka_heap.ends_with(['m', 'g']),
            "BENCH_KAFKA_HEAP={:?} is not a JVM heap size such as 512m or 1g",
            settings.kafka_heap
        );
        ensure!(
            settings.service_bin.exists(),
            "service binary {} not found (cargo build --release, or set BENCH_SERVICE_BIN)",
            settings.service_bin.display()
        );
        Ok(settings)
    }

    /// `BENCH_SERVICE_ENV` as the report shows it: `KEY=VALUE` each.
    pub fn service_env_lines(&self) -> Vec<String> {
        self.service_env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }

    /// The settings of a full run, as the report's `settings` shows them.
    pub fn report(&self) -> SettingsReport {
        SettingsReport {
            messages: self.messages,
            pods: self.pods,
            partitions: self.partitions,
            latency_rate: self.latency_rate,
            latency_secs: self.latency_secs,
            latency_warmup_secs: self.latency_warmup_secs,
            naive_secs: self.naive_secs,
            naive_max: self.naive_max,
            service_bin: self.service_bin.display().to_string(),
            service_env: self.service_env_lines(),
            broker: Broker::describe(self),
            preload_batch: self.preload_batch,
        }
    }
}

/// `KEY=VALUE;…`, empty pieces skipped.
fn service_env_from(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    text.split(';')
        .filter(|kv| !kv.trim().is_empty())
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
                .ok_or_else(|| anyhow!("BENCH_SERVICE_ENV: {kv:?} is not KEY=VALUE"))
        })
        .collect()
}

/// The report's `settings`.
#[derive(Serialize)]
pub struct SettingsReport {
    messages: usize,
    pods: u32,
    partitions: i32,
    latency_rate: u64,
    latency_secs: u64,
    latency_warmup_secs: u64,
    naive_secs: u64,
    naive_max: usize,
    service_bin: String,
    service_env: Vec<String>,
    broker: String,
    preload_batch: usize,
}
