//! Soak mode (`BENCH_SOAK_SECS`): one service on its defaults takes a steady stream with a bad
//! message every so often for a long time, and its resources are sampled at every interval:
//! resident memory (`VmRSS`), open file descriptors, threads (`/proc/<pid>/status`), and its
//! connections to the database (`pg_stat_activity`). At the end every metric must be stored
//! once and every bad message dead-lettered; the figures must stay flat.
//!
//! A leak shows as growth over time, so "flat" compares the second half of the run with the
//! first: the descriptors, threads and connections of the second half never exceed the most
//! of the first half, and resident memory stays within 10% of it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, ensure};
use futures_util::StreamExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{Producer, ThreadedProducer};
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::Client;

use crate::db::{Database, committed, connect, stored_rows};
use crate::kafka::{Deliveries, Tracking, create_topic, send};
use crate::pods::pod_infos;
use crate::report::Machine;
use crate::sampling::{CpuSnapshot, memory_mib, open_fds, proc_status_number};
use crate::service::{Service, service_env};
use crate::settings::Settings;
use crate::{json_text, now_ms, round3, step, within};

/// The soak's own settings.
#[derive(Clone, Copy, Serialize)]
pub struct Soak {
    /// How long the stream runs (`BENCH_SOAK_SECS`).
    pub secs: u64,
    /// Valid messages a second (`BENCH_SOAK_RATE`).
    pub rate: u64,
    /// One bad message every this many milliseconds (`BENCH_SOAK_BAD_EVERY_MS`).
    pub bad_every_ms: u64,
    /// How often the service is sampled (`BENCH_SOAK_REPORT_SECS`).
    pub report_secs: u64,
    /// The producer's `linger.ms` (`BENCH_SOAK_LINGER_MS`).
    pub linger_ms: u64,
}

/// Bad messages, in turn: each is rejected for another reason, none can be mistaken for a
/// metric.
fn bad_payload(n: u64) -> Vec<u8> {
    let ts = now_ms();
    match n % 4 {
        0 => format!(
            r#"{{"timestamp":{ts},"service":"soak","podName":"bad-{n}","namespace":"default","nodeName":"soak","cpu":250,"memory":1}}"#
        )
        .into_bytes(),
        1 => format!("not json {n}").into_bytes(),
        2 => format!(r#"{{"timestamp":{ts},"service":"soak","podName":"bad-{n}"}}"#).into_bytes(),
        _ => format!("[{n}]").into_bytes(),
    }
}

/// What the producer has handed to librdkafka so far.
#[derive(Default)]
struct Sent {
    valid: AtomicU64,
    bad: AtomicU64,
    stop: AtomicBool,
}

/// Sends `rate` valid messages a second, pod `i` to partition `i mod partitions`, and a bad
/// one every `bad_every_ms`, until `secs` have passed or `stop` is set.
fn produce(
    soak: Soak,
    pods: u32,
    partitions: i32,
    producer: &ThreadedProducer<Tracking>,
    topic: &str,
    sent: &Sent,
) -> anyhow::Result<()> {
    let mut pods = pod_infos(pods)?;
    // Every metric is told apart by pod and time: a pod's timestamps only go up.
    let mut rng = fastrand::Rng::with_seed(17);
    let mut payload = Vec::with_capacity(256);
    let started = Instant::now();
    let duration = Duration::from_secs(soak.secs);
    let (mut valid, mut bad) = (0u64, 0u64);
    while !sent.stop.load(Ordering::Relaxed) {
        let elapsed = started.elapsed();
        if elapsed >= duration {
            break;
        }
        let due = (elapsed.as_secs_f64() * soak.rate as f64) as u64 + 1;
        while valid < due {
            let pod_index = valid as usize % pods.len();
            let pod = &mut pods[pod_index];
            pod.wander(&mut rng);
            pod.write(&mut payload, now_ms())?;
            let partition = pod_index as i32 % partitions;
            send(producer, topic, partition, &pod.name, &payload, 0)?;
            valid += 1;
            sent.valid.store(valid, Ordering::Relaxed);
        }
        let due = elapsed.as_millis() as u64 / soak.bad_every_ms;
        while bad < due {
            let partition = (bad % partitions as u64) as i32;
            send(producer, topic, partition, "bad", &bad_payload(bad), 0)?;
            bad += 1;
            sent.bad.store(bad, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    producer.flush(Duration::from_secs(60))?;
    Ok(())
}

/// Connections to the soak's database, the bench's own (the one asking) left out.
async fn database_connections(client: &Client, database: &str) -> anyhow::Result<i64> {
    let row = within(
        Duration::from_secs(10),
        "read pg_stat_activity",
        client.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&database],
        ),
    )
    .await??;
    Ok(row.get(0))
}

/// Dead letters in the topic, and how many distinct source records they stand for.
async fn dead_letters(broker: &str, topic: &str, expected: u64) -> anyhow::Result<(u64, u64)> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set(
            "group.id",
            format!("soak_dlq_{}", uuid::Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut stream = consumer.stream();
    let mut sources = std::collections::HashSet::new();
    let mut count = 0u64;
    // Until the expected count and a quiet moment after it (a second delivery would show), or
    // a long quiet moment before it.
    loop {
        let quiet = if count >= expected {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(20)
        };
        match tokio::time::timeout(quiet, stream.next()).await {
            Ok(Some(Ok(message))) => {
                count += 1;
                sources.insert((
                    header(&message, "panopticon-source-partition"),
                    header(&message, "panopticon-source-offset"),
                ));
            }
            Ok(Some(Err(e))) => return Err(anyhow!("reading the dead-letter topic: {e}")),
            Ok(None) | Err(_) => break,
        }
    }
    Ok((count, sources.len() as u64))
}

fn header(message: &impl Message, name: &str) -> Option<String> {
    message
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == name))
        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
}

/// One look at the service.
struct Sample {
    at_s: f64,
    rss_mib: f64,
    fds: u64,
    threads: u64,
    connections: i64,
    sent: u64,
    bad_sent: u64,
    committed: i64,
    stored_per_s: f64,
    lag: i64,
    dead_lettered: u64,
    service_cpu_pct: f64,
    machine_busy_pct: f64,
    broker_rss_mib: f64,
}

/// A [`Sample`] as the report shows it, rounded.
#[derive(Serialize)]
struct SampleReport {
    at_s: f64,
    rss_mib: f64,
    open_fds: u64,
    threads: u64,
    db_connections: i64,
    sent_valid: u64,
    sent_bad: u64,
    offsets_stored: i64,
    stored_per_s: f64,
    lag: i64,
    dead_lettered: u64,
    service_cpu_pct: f64,
    machine_busy_pct: f64,
    broker_rss_mib: f64,
}

impl Sample {
    fn report(&self) -> SampleReport {
        SampleReport {
            at_s: round3(self.at_s),
            rss_mib: round3(self.rss_mib),
            open_fds: self.fds,
            threads: self.threads,
            db_connections: self.connections,
            sent_valid: self.sent,
            sent_bad: self.bad_sent,
            offsets_stored: self.committed,
            stored_per_s: self.stored_per_s.round(),
            lag: self.lag,
            dead_lettered: self.dead_lettered,
            service_cpu_pct: round3(self.service_cpu_pct),
            machine_busy_pct: round3(self.machine_busy_pct),
            broker_rss_mib: round3(self.broker_rss_mib),
        }
    }
}

/// Takes the [`Sample`]s: each one's rates cover the time since the one before.
struct Sampler<'a> {
    pid: u32,
    broker_pid: u32,
    tck: f64,
    started: Instant,
    sent: &'a Sent,
    /// The CPU and the stored offsets at the sample before.
    previous: (CpuSnapshot, i64),
}

impl Sampler<'_> {
    fn take(&mut self, stored: i64, status: &Value, connections: i64) -> Sample {
        let at = Instant::now();
        let cpu = CpuSnapshot::take(self.pid, self.broker_pid);
        let spent = self.previous.0.until(&cpu, self.tck);
        let wall = spent.wall_s.max(1e-9);
        let lag = status["consumer"]["partitions"]
            .as_object()
            .map(|p| p.values().filter_map(|p| p["lag"].as_i64()).sum())
            .unwrap_or(0);
        let sample = Sample {
            at_s: at.duration_since(self.started).as_secs_f64(),
            rss_mib: memory_mib(self.pid, "VmRSS:"),
            fds: open_fds(self.pid).unwrap_or(0),
            threads: proc_status_number(self.pid, "Threads:").unwrap_or(0),
            connections,
            sent: self.sent.valid.load(Ordering::Relaxed),
            bad_sent: self.sent.bad.load(Ordering::Relaxed),
            committed: stored,
            stored_per_s: (stored - self.previous.1) as f64 / wall,
            lag,
            dead_lettered: status["validator"]["dead_lettered"].as_u64().unwrap_or(0),
            service_cpu_pct: 100.0 * spent.service_cpu_s / wall,
            machine_busy_pct: spent.machine_busy_pct,
            broker_rss_mib: memory_mib(self.broker_pid, "VmRSS:"),
        };
        self.previous = (cpu, stored);
        sample
    }
}

const HEADER: &str = "    t  RSS MiB   fds  threads  db conns   msgs sent  stored/s     lag  dead ltrs  CPU %  machine%  broker MiB";

/// One line of the table.
fn row(sample: &SampleReport) -> String {
    let t = sample.at_s.round() as u64;
    format!(
        "{:>3}:{:02} {:>8.1} {:>5} {:>8} {:>9} {:>11} {:>9.0} {:>7} {:>10} {:>6.1} {:>9.1} {:>11.1}",
        t / 60,
        t % 60,
        sample.rss_mib,
        sample.open_fds,
        sample.threads,
        sample.db_connections,
        sample.sent_valid + sample.sent_bad,
        sample.stored_per_s,
        sample.lag,
        sample.dead_lettered,
        sample.service_cpu_pct,
        sample.machine_busy_pct,
        sample.broker_rss_mib,
    )
}

/// One figure of a sample, as a number.
type Figure = fn(&Sample) -> f64;

/// Whether the second half of the run stays within what the first half reached.
#[derive(Serialize)]
struct Flatness {
    flat: bool,
    checks: BTreeMap<&'static str, FlatCheck>,
}

#[derive(Serialize)]
struct FlatCheck {
    first_half_max: f64,
    second_half_max: f64,
    flat: bool,
}

fn flatness(samples: &[Sample]) -> Flatness {
    // The sample before the stream started is a baseline, not part of either half.
    let running = &samples[1.min(samples.len())..];
    let half = running.len() / 2;
    let (first, second) = running.split_at(half);
    let most = |part: &[Sample], f: Figure| part.iter().map(f).fold(f64::NAN, f64::max);
    let figures: [(&str, Figure, f64); 4] = [
        ("rss_mib", |s| s.rss_mib, 1.10),
        ("open_fds", |s| s.fds as f64, 1.0),
        ("threads", |s| s.threads as f64, 1.0),
        ("db_connections", |s| s.connections as f64, 1.0),
    ];
    let mut checks = BTreeMap::new();
    let mut flat = !first.is_empty() && !second.is_empty();
    for (name, f, slack) in figures {
        let (a, b) = (most(first, f), most(second, f));
        let ok = b <= a * slack;
        flat &= ok;
        checks.insert(
            name,
            FlatCheck {
                first_half_max: a,
                second_half_max: b,
                flat: ok,
            },
        );
    }
    Flatness { flat, checks }
}

/// The report's `settings`.
#[derive(Serialize)]
struct SoakSettings {
    #[serde(flatten)]
    soak: Soak,
    pods: u32,
    partitions: i32,
}

/// What the soak found.
#[derive(Serialize)]
pub struct SoakReport {
    settings: SoakSettings,
    samples: Vec<SampleReport>,
    end: SampleReport,
    everything_in_after_s: f64,
    sent_valid: u64,
    sent_bad: u64,
    offsets_stored: i64,
    rows_stored: i64,
    lost_metrics: i64,
    duplicate_rows: i64,
    invalid_counted: u64,
    /// As the service's `/status` tells them.
    invalid_by_reason: Value,
    dead_lettered_acknowledged: u64,
    dead_letters_in_topic: u64,
    dead_letters_distinct: u64,
    duplicates_skipped: Value,
    writer_errors: Value,
    flushes: Value,
    exit: Option<i32>,
    flatness: Flatness,
    pass: bool,
}

/// The soak's report as written to `BENCH_JSON`: what it found, the machine, the table.
#[derive(Serialize)]
pub struct Written<'a> {
    #[serde(flatten)]
    pub report: &'a SoakReport,
    pub machine: Machine,
    pub table: String,
}

pub async fn run(
    settings: &Settings,
    soak: Soak,
    broker: &str,
    broker_pid: u32,
    tck: f64,
) -> anyhow::Result<SoakReport> {
    ensure!(soak.rate > 0, "BENCH_SOAK_RATE must be > 0");
    ensure!(soak.bad_every_ms > 0, "BENCH_SOAK_BAD_EVERY_MS must be > 0");
    ensure!(soak.report_secs > 0, "BENCH_SOAK_REPORT_SECS must be > 0");
    let topic = format!("soak_{}", uuid::Uuid::new_v4().simple());
    let dlq = format!("{topic}.dlq");
    create_topic(broker, &topic, settings.partitions).await?;
    create_topic(broker, &dlq, 1).await?;
    let db = Database::create(&settings.admin_url, "soak").await?;
    let group = format!("soak_{}", uuid::Uuid::new_v4().simple());
    let mut env = service_env(broker, &topic, &group, &db);
    env.push(("KAFKA_DLQ_TOPIC", dlq.clone()));
    let mut service = Service::spawn(settings, &env)?;
    service.wait_for_log("Kafka consumer connected", Duration::from_secs(60))?;
    let pid = service.process.pid();
    let poll = connect(&db.url).await?;

    let deliveries = Arc::new(Deliveries::default());
    let producer: ThreadedProducer<Tracking> = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("linger.ms", soak.linger_ms.to_string())
        .create_with_context(Tracking(deliveries.clone()))?;
    let producer = Arc::new(producer);
    let sent = Arc::new(Sent::default());
    let producing = {
        let (producer, sent, topic) = (producer.clone(), sent.clone(), topic.clone());
        let (pods, partitions) = (settings.pods, settings.partitions);
        tokio::task::spawn_blocking(move || {
            produce(soak, pods, partitions, &producer, &topic, &sent)
        })
    };

    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut sampler = Sampler {
        pid,
        broker_pid,
        tck,
        started,
        sent: &sent,
        previous: (CpuSnapshot::take(pid, broker_pid), 0),
    };

    eprintln!("{HEADER}");
    let intervals = soak.secs.div_ceil(soak.report_secs);
    let mut k = 0u64;
    loop {
        let stored = committed(&poll, &group, &topic).await?;
        let status = service.status().await;
        let connections = database_connections(&poll, &db.name).await?;
        let sample = sampler.take(stored, &status, connections);
        eprintln!("{}", row(&sample.report()));
        samples.push(sample);
        if k == intervals {
            break;
        }
        k += 1;
        let due = started + Duration::from_secs((k * soak.report_secs).min(soak.secs));
        while Instant::now() < due {
            if let Some(status) = service.process.exited() {
                sent.stop.store(true, Ordering::Relaxed);
                anyhow::bail!(
                    "the service exited ({status}) during the soak; log:\n{}",
                    service.log_tail(30)
                );
            }
            if producing.is_finished() && k < intervals {
                break;
            }
            tokio::time::sleep(
                Duration::from_millis(500).min(due.saturating_duration_since(Instant::now())),
            )
            .await;
        }
        if producing.is_finished() && k < intervals {
            // Only an error ends the producer early; it is reported below.
            break;
        }
    }
    within(Duration::from_secs(120), "soak producer", producing)
        .await?
        .context("soak producer panicked")??;
    deliveries.ensure_all_delivered()?;
    let valid = sent.valid.load(Ordering::Relaxed);
    let bad = sent.bad.load(Ordering::Relaxed);
    let total = (valid + bad) as i64;

    // Everything sent is stored, or dead-lettered, before the last look.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (stored_offsets, status) = loop {
        let stored = committed(&poll, &group, &topic).await?;
        let status = service.status().await;
        let dead = status["validator"]["dead_lettered"].as_u64().unwrap_or(0);
        if (stored >= total && dead >= bad) || Instant::now() >= deadline {
            break (stored, status);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let finished_after_s = started.elapsed().as_secs_f64();
    let connections = database_connections(&poll, &db.name).await?;
    let last = sampler.take(stored_offsets, &status, connections).report();
    eprintln!("{}  (everything in)", row(&last));
    drop(poll);
    drop(producer);
    let exit = service.process.terminate(Duration::from_secs(40))?;
    step("counting rows and dead letters");
    let (rows, distinct) = stored_rows(&db.url).await?;
    let (dlq_messages, dlq_sources) = dead_letters(broker, &dlq, bad).await?;

    let verdict = flatness(&samples);
    let lost = valid as i64 - distinct;
    let doubled = rows - distinct;
    let invalid_total = status["validator"]["invalid_total"].as_u64().unwrap_or(0);
    let dead_lettered = status["validator"]["dead_lettered"].as_u64().unwrap_or(0);
    let every_bad_one = invalid_total == bad && dead_lettered == bad && dlq_sources == bad;
    let pass = lost == 0 && doubled == 0 && every_bad_one && stored_offsets == total;
    Ok(SoakReport {
        settings: SoakSettings {
            soak,
            pods: settings.pods,
            partitions: settings.partitions,
        },
        samples: samples.iter().map(Sample::report).collect(),
        end: last,
        everything_in_after_s: round3(finished_after_s),
        sent_valid: valid,
        sent_bad: bad,
        offsets_stored: stored_offsets,
        rows_stored: rows,
        lost_metrics: lost,
        duplicate_rows: doubled,
        invalid_counted: invalid_total,
        invalid_by_reason: status["validator"]["invalid_by_reason"].clone(),
        dead_lettered_acknowledged: dead_lettered,
        dead_letters_in_topic: dlq_messages,
        dead_letters_distinct: dlq_sources,
        duplicates_skipped: status["writer"]["duplicates_skipped"].clone(),
        writer_errors: status["writer"]["actor"]["errors"].clone(),
        flushes: status["writer"]["flushes"].clone(),
        exit: exit.code(),
        flatness: verdict,
        pass,
    })
}

/// The report's table: one row per sample, then the totals and the verdict.
pub fn table(report: &SoakReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let s = &report.settings;
    let _ = writeln!(
        out,
        "soak: {} s at {} msg/s, a bad message every {} ms, {} pods, {} partitions, sampled every {} s",
        s.soak.secs, s.soak.rate, s.soak.bad_every_ms, s.pods, s.partitions, s.soak.report_secs
    );
    let _ = writeln!(out, "{HEADER}");
    for sample in report.samples.iter().chain([&report.end]) {
        let _ = writeln!(out, "{}", row(sample));
    }
    let _ = writeln!(
        out,
        "sent {} valid + {} bad; rows stored {} ({} lost, {} twice); offsets stored {}; \
         invalid counted {}, dead letters acknowledged {}, in the topic {} ({} distinct); exit {}",
        report.sent_valid,
        report.sent_bad,
        report.rows_stored,
        report.lost_metrics,
        report.duplicate_rows,
        report.offsets_stored,
        report.invalid_counted,
        report.dead_lettered_acknowledged,
        report.dead_letters_in_topic,
        report.dead_letters_distinct,
        json_text(&report.exit),
    );
    let flat = &report.flatness;
    let _ = writeln!(
        out,
        "flat (second half within the first half's most; RSS within 10%): {} {}",
        if flat.flat { "yes" } else { "NO" },
        json_text(&flat.checks)
    );
    let _ = writeln!(
        out,
        "nothing lost or doubled, every bad message dead-lettered once: {}",
        if report.pass { "PASS" } else { "FAIL" }
    );
    out
}
