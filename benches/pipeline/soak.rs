//! Soak mode (`BENCH_SOAK_SECS`): one service on its defaults takes a steady stream with a bad
//! message every so often for a long time, and its resources are sampled at every interval:
//! resident memory (`VmRSS`), open file descriptors, threads (`/proc/<pid>/status`), and its
//! connections to the database (`pg_stat_activity`). At the end every metric must be stored
//! once and every bad message dead-lettered; the figures must stay flat.
//!
//! A leak shows as growth over time, so "flat" compares the second half of the run with the
//! first: the descriptors, threads and connections of the second half never exceed the most
//! of the first half, and resident memory stays within 10% of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, ensure};
use futures_util::StreamExt;
use panopticon::domain::WireMetric;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{Producer, ThreadedProducer};
use serde_json::{Value, json};
use tokio_postgres::Client;

use super::{
    CpuSnapshot, Database, Deliveries, Service, Settings, Tracking, committed, connect,
    create_topic, now_ms, pod_infos, proc_status_number, round3, send, service_env, step,
    stored_rows, within,
};

/// The soak's own settings.
#[derive(Clone, Copy)]
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
    let mut last_ts = vec![0i64; pods.len()];
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
            pod.cpu = (pod.cpu + (rng.f64() - 0.5) * 8.0).clamp(0.0, 100.0);
            pod.memory = (pod.memory + (rng.f64() - 0.5) * 16.0).clamp(16.0, 4096.0);
            let ts = now_ms().max(last_ts[pod_index] + 1);
            last_ts[pod_index] = ts;
            payload.clear();
            serde_json::to_writer(
                &mut payload,
                &WireMetric {
                    timestamp: ts,
                    service: &pod.service,
                    pod_name: &pod.name,
                    namespace: &pod.namespace,
                    node_name: &pod.node,
                    cpu: (pod.cpu * 100.0).round() / 100.0,
                    memory: (pod.memory * 100.0).round() / 100.0,
                },
            )?;
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

/// Descriptors the process has open.
fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
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

impl Sample {
    fn json(&self) -> Value {
        json!({
            "at_s": round3(self.at_s),
            "rss_mib": round3(self.rss_mib),
            "open_fds": self.fds,
            "threads": self.threads,
            "db_connections": self.connections,
            "sent_valid": self.sent,
            "sent_bad": self.bad_sent,
            "offsets_stored": self.committed,
            "stored_per_s": self.stored_per_s.round(),
            "lag": self.lag,
            "dead_lettered": self.dead_lettered,
            "service_cpu_pct": round3(self.service_cpu_pct),
            "machine_busy_pct": round3(self.machine_busy_pct),
            "broker_rss_mib": round3(self.broker_rss_mib),
        })
    }
}

const HEADER: &str = "    t  RSS MiB   fds  threads  db conns   msgs sent  stored/s     lag  dead ltrs  CPU %  machine%  broker MiB";

/// One line of the table, from a sample's JSON.
fn row(sample: &Value) -> String {
    let t = sample["at_s"].as_f64().unwrap_or(0.0).round() as u64;
    let num = |key: &str| sample[key].as_f64().unwrap_or(f64::NAN);
    let int = |key: &str| sample[key].as_i64().unwrap_or(-1);
    format!(
        "{:>3}:{:02} {:>8.1} {:>5} {:>8} {:>9} {:>11} {:>9.0} {:>7} {:>10} {:>6.1} {:>9.1} {:>11.1}",
        t / 60,
        t % 60,
        num("rss_mib"),
        int("open_fds"),
        int("threads"),
        int("db_connections"),
        int("sent_valid") + int("sent_bad"),
        num("stored_per_s"),
        int("lag"),
        int("dead_lettered"),
        num("service_cpu_pct"),
        num("machine_busy_pct"),
        num("broker_rss_mib"),
    )
}

/// One figure of a sample, as a number.
type Figure = fn(&Sample) -> f64;

/// Whether the second half of the run stays within what the first half reached.
fn flatness(samples: &[Sample]) -> Value {
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
    let mut checks = serde_json::Map::new();
    let mut flat = !first.is_empty() && !second.is_empty();
    for (name, f, slack) in figures {
        let (a, b) = (most(first, f), most(second, f));
        let ok = b <= a * slack;
        flat &= ok;
        checks.insert(
            name.into(),
            json!({ "first_half_max": a, "second_half_max": b, "flat": ok }),
        );
    }
    json!({ "flat": flat, "checks": checks })
}

pub async fn run(
    settings: &Settings,
    soak: Soak,
    broker: &str,
    broker_pid: u32,
    tck: f64,
) -> anyhow::Result<Value> {
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
    let mut previous = (CpuSnapshot::take(pid, broker_pid), 0i64);
    let take = |at: Instant,
                previous: &(CpuSnapshot, i64),
                stored: i64,
                status: &Value,
                connections: i64| {
        let cpu = CpuSnapshot::take(pid, broker_pid);
        let spent = previous.0.until(&cpu, tck);
        let wall = spent["wall_s"].as_f64().unwrap_or(0.0).max(1e-9);
        let lag = status["consumer"]["partitions"]
            .as_object()
            .map(|p| p.values().filter_map(|p| p["lag"].as_i64()).sum())
            .unwrap_or(0);
        let sample = Sample {
            at_s: at.duration_since(started).as_secs_f64(),
            rss_mib: proc_status_number(pid, "VmRSS:").unwrap_or(0) as f64 / 1024.0,
            fds: open_fds(pid).unwrap_or(0),
            threads: proc_status_number(pid, "Threads:").unwrap_or(0),
            connections,
            sent: sent.valid.load(Ordering::Relaxed),
            bad_sent: sent.bad.load(Ordering::Relaxed),
            committed: stored,
            stored_per_s: (stored - previous.1) as f64 / wall,
            lag,
            dead_lettered: status["validator"]["dead_lettered"].as_u64().unwrap_or(0),
            service_cpu_pct: 100.0 * spent["service_cpu_s"].as_f64().unwrap_or(0.0) / wall,
            machine_busy_pct: spent["machine_busy_pct"].as_f64().unwrap_or(0.0),
            broker_rss_mib: proc_status_number(broker_pid, "VmRSS:").unwrap_or(0) as f64 / 1024.0,
        };
        (sample, cpu)
    };

    eprintln!("{HEADER}");
    let intervals = soak.secs.div_ceil(soak.report_secs);
    let mut k = 0u64;
    loop {
        let stored = committed(&poll, &group, &topic).await?;
        let status = service.status().await;
        let connections = database_connections(&poll, &db.name).await?;
        let (sample, cpu) = take(Instant::now(), &previous, stored, &status, connections);
        eprintln!("{}", row(&sample.json()));
        previous = (cpu, stored);
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
    if let Some(e) = deliveries.first_error.lock().unwrap().clone() {
        anyhow::bail!(
            "{} messages were not delivered: {e}",
            deliveries.failed.load(Ordering::Relaxed)
        );
    }
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
    let (last, _) = take(
        Instant::now(),
        &previous,
        stored_offsets,
        &status,
        connections,
    );
    eprintln!("{}  (everything in)", row(&last.json()));
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
    Ok(json!({
        "settings": {
            "secs": soak.secs,
            "rate": soak.rate,
            "bad_every_ms": soak.bad_every_ms,
            "report_secs": soak.report_secs,
            "linger_ms": soak.linger_ms,
            "pods": settings.pods,
            "partitions": settings.partitions,
        },
        "samples": samples.iter().map(Sample::json).collect::<Vec<_>>(),
        "end": last.json(),
        "everything_in_after_s": round3(finished_after_s),
        "sent_valid": valid,
        "sent_bad": bad,
        "offsets_stored": stored_offsets,
        "rows_stored": rows,
        "lost_metrics": lost,
        "duplicate_rows": doubled,
        "invalid_counted": invalid_total,
        "invalid_by_reason": status["validator"]["invalid_by_reason"].clone(),
        "dead_lettered_acknowledged": dead_lettered,
        "dead_letters_in_topic": dlq_messages,
        "dead_letters_distinct": dlq_sources,
        "duplicates_skipped": status["writer"]["duplicates_skipped"].clone(),
        "writer_errors": status["writer"]["actor"]["errors"].clone(),
        "flushes": status["writer"]["flushes"].clone(),
        "exit": exit.code(),
        "flatness": verdict,
        "pass": pass,
    }))
}

/// The report's table: one row per sample, then the totals and the verdict.
pub fn table(report: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let s = &report["settings"];
    let _ = writeln!(
        out,
        "soak: {} s at {} msg/s, a bad message every {} ms, {} pods, {} partitions, sampled every {} s",
        s["secs"], s["rate"], s["bad_every_ms"], s["pods"], s["partitions"], s["report_secs"]
    );
    let _ = writeln!(out, "{HEADER}");
    let samples = report["samples"].as_array().cloned().unwrap_or_default();
    for sample in samples.iter().chain([&report["end"]]) {
        let _ = writeln!(out, "{}", row(sample));
    }
    let _ = writeln!(
        out,
        "sent {} valid + {} bad; rows stored {} ({} lost, {} twice); offsets stored {}; \
         invalid counted {}, dead letters acknowledged {}, in the topic {} ({} distinct); exit {}",
        report["sent_valid"],
        report["sent_bad"],
        report["rows_stored"],
        report["lost_metrics"],
        report["duplicate_rows"],
        report["offsets_stored"],
        report["invalid_counted"],
        report["dead_lettered_acknowledged"],
        report["dead_letters_in_topic"],
        report["dead_letters_distinct"],
        report["exit"],
    );
    let flat = &report["flatness"];
    let _ = writeln!(
        out,
        "flat (second half within the first half's most; RSS within 10%): {} {}",
        if flat["flat"].as_bool().unwrap_or(false) {
            "yes"
        } else {
            "NO"
        },
        flat["checks"]
    );
    let _ = writeln!(
        out,
        "nothing lost or doubled, every bad message dead-lettered once: {}",
        if report["pass"].as_bool().unwrap_or(false) {
            "PASS"
        } else {
            "FAIL"
        }
    );
    out
}
