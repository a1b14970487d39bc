//! The service: the binary started as users start it, its log captured, its `/status` read, and
//! a profiler attached to it on request.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use serde_json::{Value, json};

use crate::db::Database;
use crate::harness::{self, Guarded};
use crate::settings::Settings;

/// The service's log: every line but the `[METRIC]` ones, which are only counted.
#[derive(Default)]
pub struct ServiceLog {
    lines: Vec<String>,
    pub metric_lines: u64,
}

pub struct Service {
    pub process: Guarded,
    pub log: Arc<Mutex<ServiceLog>>,
    port: u16,
    /// When the process was started: the drain's times count from here.
    pub started: Instant,
}

impl Service {
    /// Starts the binary with its defaults and only the given settings; waits for its HTTP
    /// server.
    pub fn spawn(settings: &Settings, env: &[(&str, String)]) -> anyhow::Result<Service> {
        let mut command = harness::service_command(
            &settings.service_bin,
            env.iter().map(|(k, v)| (*k, v.as_str())),
        );
        command.envs(settings.service_env.iter().map(|(k, v)| (k, v)));
        let started = Instant::now();
        let mut process = Guarded::spawn("panopticon", &mut command)?;
        let log = Arc::new(Mutex::new(ServiceLog::default()));
        let echo = settings.echo_log;
        harness::read_output(&mut process.child, {
            let log = log.clone();
            move |line| {
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
        let mut service = Service {
            process,
            log,
            port: 0,
            started,
        };
        let line = service.wait_for_log(harness::START_LINE, Duration::from_secs(30))?;
        service.port =
            harness::service_port(&line).ok_or_else(|| anyhow!("no port in {line:?}"))?;
        Ok(service)
    }

    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
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

    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log.lock().unwrap();
        let start = log.lines.len().saturating_sub(n);
        log.lines[start..].join("\n")
    }

    /// Waits until `GET /ready` answers 200 (the consumer has its partitions), `timeout` at
    /// most; answers how long that took.
    pub async fn wait_until_ready(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        let started = Instant::now();
        loop {
            let ready = client
                .get(format!("http://127.0.0.1:{}/ready", self.port))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                bail!(
                    "the service was not ready within {} s:\n{}",
                    timeout.as_secs(),
                    self.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET /status`, as the service answers it, or `{"error": …}`.
    pub async fn status(&self) -> Value {
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

/// The only settings the service gets besides `BENCH_SERVICE_ENV`: where to read, where to
/// write, and an HTTP port of its own.
pub fn service_env(
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
pub fn start_profiler(template: &str, pid: u32) -> anyhow::Result<Guarded> {
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

/// SIGINT, on which perf and valgrind's tools write their data and exit; waits up to 2 min.
pub fn stop_profiler(mut profiler: Guarded) {
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(profiler.pid().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(120);
    while profiler.exited().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}
