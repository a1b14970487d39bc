//! Phase 2: the drain. The service consumes the preloaded topic into a fresh database; rows
//! committed a second from the first committed row to the last, its CPU seconds and peak RSS,
//! and the CPU of PostgreSQL, the broker and everything else meanwhile.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::Client;

use crate::db::{Database, committed, connect, stored_rows};
use crate::round3;
use crate::sampling::{CpuSnapshot, CpuSpent, proc_status_number};
use crate::service::{Service, service_env, start_profiler, stop_profiler};
use crate::settings::Settings;

/// The drain fails when the committed count has not moved for this long.
const STALL: Duration = Duration::from_secs(60);

/// The report's `drain`: the figures as the report shows them, rounded.
#[derive(Serialize)]
pub struct Drain {
    pub rows_per_s: f64,
    /// The rate over the first tenth of the rows and over the last (from [`Drain::samples`]):
    /// how the cost grows with the table.
    pub first_tenth_rows_per_s: f64,
    pub last_tenth_rows_per_s: f64,
    pub first_row_after_s: f64,
    pub first_to_last_s: f64,
    pub rows_at_first_sample: i64,
    pub start_to_last_s: f64,
    /// Service CPU seconds from its start to the last row.
    pub service_cpu_s: f64,
    pub service_cpu_s_drain: f64,
    pub peak_rss_mib: f64,
    pub cpu_during_drain: CpuSpent,
    pub cpu_since_start: CpuSpent,
    pub rows_stored: i64,
    pub duplicate_rows: i64,
    pub missing_rows: i64,
    pub exit: Option<i32>,
    pub consumer_joined_logged: bool,
    pub metric_lines_printed: u64,
    /// As the service's `/status` tells them.
    pub flushes: Value,
    pub last_flush: Value,
    pub storage: Value,
    /// `(seconds since the service started, rows committed)`, every 100 ms.
    pub samples: Vec<(f64, i64)>,
}

/// What watching the committed count saw.
struct Watched {
    /// The first sample with a committed row, and the count then.
    first: (CpuSnapshot, i64),
    /// The sample at which every row was in.
    last: CpuSnapshot,
    hwm_kib: u64,
    samples: Vec<(f64, i64)>,
}

pub async fn run(
    settings: &Settings,
    broker: &str,
    broker_pid: u32,
    topic: &str,
    tck: f64,
) -> anyhow::Result<Drain> {
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
    let Watched {
        first: (first, first_count),
        last,
        hwm_kib,
        samples,
    } = watch(&mut service, &poll, &group, topic, n, broker_pid).await?;
    if let Some(profiler) = profiler {
        stop_profiler(profiler);
    }
    let status = service.status().await;
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
    let (first_tenth, last_tenth) = tenth_rates(&samples, n);
    Ok(Drain {
        rows_per_s: rate.round(),
        first_tenth_rows_per_s: first_tenth.round(),
        last_tenth_rows_per_s: last_tenth.round(),
        first_row_after_s: round3(first.at.duration_since(service.started).as_secs_f64()),
        first_to_last_s: round3(seconds),
        rows_at_first_sample: first_count,
        start_to_last_s: round3(last.at.duration_since(service.started).as_secs_f64()),
        service_cpu_s: round3(last.service as f64 / tck),
        service_cpu_s_drain: round3(last.service.saturating_sub(first.service) as f64 / tck),
        peak_rss_mib: round3(hwm_kib as f64 / 1024.0),
        cpu_during_drain: first.until(&last, tck),
        cpu_since_start: before.until(&last, tck),
        rows_stored: stored,
        duplicate_rows: stored - distinct,
        missing_rows: n - distinct,
        exit: exit.code(),
        consumer_joined_logged: joined,
        metric_lines_printed: metric_lines,
        flushes: status["writer"]["flushes"].clone(),
        last_flush: status["writer"]["last_flush"].clone(),
        storage: status["database"]["storage"].clone(),
        samples,
    })
}

/// Reads the committed count every 100 ms until all `n` rows are in; fails should the service
/// exit, or the count stall for [`STALL`] (or 30 minutes pass).
async fn watch(
    service: &mut Service,
    poll: &Client,
    group: &str,
    topic: &str,
    n: i64,
    broker_pid: u32,
) -> anyhow::Result<Watched> {
    let pid = service.process.pid();
    let mut first: Option<(CpuSnapshot, i64)> = None;
    let mut samples: Vec<(f64, i64)> = Vec::new();
    let mut last_change = (Instant::now(), 0i64);
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let count = committed(poll, group, topic).await?;
        let now = Instant::now();
        samples.push((
            round3(now.duration_since(service.started).as_secs_f64()),
            count,
        ));
        if count > 0 && first.is_none() {
            first = Some((CpuSnapshot::take(pid, broker_pid), count));
        }
        if count >= n {
            let last = CpuSnapshot::take(pid, broker_pid);
            let hwm_kib = proc_status_number(pid, "VmHWM:").unwrap_or(0);
            return Ok(Watched {
                first: first.expect("a first sample before the last"),
                last,
                hwm_kib,
                samples,
            });
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
    }
}

/// The committed rows a second over the first tenth of `n` rows (from the first sample with a
/// row to the first holding a tenth) and over the last (from the first sample holding nine
/// tenths to the last); NaN where the samples are too coarse to tell.
fn tenth_rates(samples: &[(f64, i64)], n: i64) -> (f64, f64) {
    let from = |count: i64| samples.iter().find(|s| s.1 >= count).copied();
    let rate = |a: Option<(f64, i64)>, b: Option<(f64, i64)>| match (a, b) {
        (Some((t0, c0)), Some((t1, c1))) if t1 > t0 => (c1 - c0) as f64 / (t1 - t0),
        _ => f64::NAN,
    };
    let tenth = (n / 10).max(1);
    (
        rate(from(1), from(tenth)),
        rate(from(n - tenth), samples.last().copied()),
    )
}
