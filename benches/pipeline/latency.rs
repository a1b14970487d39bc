//! Phase 4: latency at a steady rate into a freshly started service, produce → row visible.
//!
//! The stream starts once the service has its partitions (`/ready`): the figures are those of
//! a running service, and `ready_after_ms` tells apart the one-off wait for the consumer
//! group's assignment (which a message produced meanwhile waits out on top of its latency).
//! Its first `BENCH_LATENCY_WARMUP_SECS` seconds are not counted in the percentiles: a broker
//! acknowledges its first writes to a topic just made hundreds of milliseconds late (measured
//! by the producer's own delivery reports, `ack_p99_ms_by_second`), which a long-running
//! producer writing to a long-standing topic does not see. They are counted in every check
//! of the rows, and their p99 is reported apart (`warmup_p99_ms`).
//!
//! The service stores a batch's rows and each partition's next offset (`kafka_offsets`) in one
//! transaction, so the message at offset `o` of partition `p` is visible exactly when
//! `kafka_offsets` says `next_offset > o` for `p`. A [`Poller`] reads that table every 10 ms; a
//! message's latency is the first look that sees it minus the moment it was handed to the
//! producer. Every 500 ms the poller also counts the rows in the same snapshot, which equals the
//! sum of the offsets unless a message was stored twice or skipped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::ensure;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{Producer, ThreadedProducer};
use serde::Serialize;
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::db::{Database, committed, connect, stored_rows};
use crate::kafka::{Deliveries, Tracking, create_topic, send};
use crate::pods::pod_infos;
use crate::sampling::{CpuSnapshot, CpuSpent, proc_status_number};
use crate::service::{Service, service_env};
use crate::settings::Settings;
use crate::{now_ms, round3, within};

/// The report's `latency`: the figures as the report shows them, rounded.
#[derive(Serialize)]
pub struct Latency {
    pub messages: usize,
    /// From the consumer's connection to its partitions' assignment.
    pub ready_after_ms: f64,
    /// The messages of the warm-up, and their p99: not in the percentiles below.
    pub warmup_messages: usize,
    pub warmup_p99_ms: f64,
    pub achieved_rate: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    /// The p99 of the messages of each partition, and of those sent in each second of the
    /// stream: where the slow ones are.
    pub p99_ms_by_partition: Vec<f64>,
    pub p99_ms_by_second: Vec<f64>,
    /// The p99 of produce → the broker's acknowledgement, of those sent in each second.
    pub ack_p99_ms_by_second: Vec<f64>,
    pub max_ms: f64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub poll_interval_ms: f64,
    pub consistency_checks: u64,
    pub consistency_mismatches: usize,
    pub rows_stored: i64,
    pub duplicate_rows: i64,
    pub missing_rows: i64,
    /// Messages the producer stamped a millisecond after their pod's previous one, having
    /// fallen behind: without that, two of a pod's messages could share a timestamp and be
    /// one metric.
    pub restamped: u64,
    pub service_cpu: CpuSpent,
    pub peak_rss_mib: f64,
    /// As the service's `/status` tells them.
    pub flushes: Value,
    pub exit: Option<i32>,
}

pub async fn run(
    settings: &Settings,
    broker: &str,
    broker_pid: u32,
    tck: f64,
) -> anyhow::Result<Latency> {
    let topic = format!("latency_{}", uuid::Uuid::new_v4().simple());
    create_topic(broker, &topic, settings.partitions).await?;
    let db = Database::create(&settings.admin_url, "latency").await?;
    let group = format!("latency_{}", uuid::Uuid::new_v4().simple());
    let mut service = Service::spawn(settings, &service_env(broker, &topic, &group, &db))?;
    service.wait_for_log("Kafka consumer connected", Duration::from_secs(60))?;
    let ready_after = service.wait_until_ready(Duration::from_secs(60)).await?;
    let pid = service.process.pid();
    let warmup = (settings.latency_rate * settings.latency_warmup_secs) as usize;
    let total =
        (settings.latency_rate * (settings.latency_warmup_secs + settings.latency_secs)) as usize;
    ensure!(
        total > 0,
        "BENCH_LATENCY_RATE × BENCH_LATENCY_SECS must be > 0"
    );

    let poller = Poller::start(&db, &group, &topic, settings.partitions as usize).await?;
    let deliveries = Arc::new(Deliveries {
        positions: Mutex::new(vec![(-1, -1); total]),
        acked_at: Mutex::new(vec![None; total]),
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
    let (sent, produce_seconds) = produce(
        steady,
        &producer,
        &topic,
        settings.latency_warmup_secs + settings.latency_secs,
    )
    .await?;
    let sent_at = sent.at;
    deliveries.ensure_all_delivered()?;
    let positions = deliveries.positions.lock().unwrap().clone();
    let needed = next_offsets(&positions, settings.partitions)?;
    wait_until_visible(&db, &group, &topic, &needed, total, &service).await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = CpuSnapshot::take(pid, broker_pid);
    let hwm_kib = proc_status_number(pid, "VmHWM:").unwrap_or(0);
    let looked = poller.stop().await?;
    drop(producer);
    let status = service.status().await;
    let exit = service.process.terminate(Duration::from_secs(40))?;

    let mut latencies = latencies_ms(&positions, &sent_at, &looked.looks)?;
    let (stored, distinct) = stored_rows(&db.url).await?;
    let mismatches = &looked.mismatches;
    if !mismatches.is_empty() || stored != total as i64 || distinct != total as i64 {
        eprintln!(
            "WARNING: {total} messages, {stored} rows stored, {distinct} of them distinct; rows and \
             stored offsets disagreed in {} of {} snapshots (rows, offsets): {:?}",
            mismatches.len(),
            looked.checks,
            &mismatches[..mismatches.len().min(10)]
        );
    }
    let p99_of = |keep: &dyn Fn(usize) -> bool| {
        let mut some: Vec<f64> = (0..latencies.len())
            .filter(|&i| keep(i))
            .map(|i| latencies[i])
            .collect();
        some.sort_by(f64::total_cmp);
        round3(percentile(&some, 99.0))
    };
    let p99_ms_by_partition = (0..settings.partitions)
        .map(|p| p99_of(&|i| positions[i].0 == p))
        .collect();
    let first = sent_at.first().copied();
    let second_of = |i: usize| first.map_or(0, |f| sent_at[i].duration_since(f).as_secs());
    let p99_ms_by_second = (0..=second_of(total - 1))
        .map(|second| p99_of(&|i| second_of(i) == second))
        .collect();
    let warmup_p99_ms = p99_of(&|i| i < warmup);
    let mut latencies = latencies.split_off(warmup.min(latencies.len()));
    let acked_at = deliveries.acked_at.lock().unwrap().clone();
    let acks: Vec<f64> = acked_at
        .iter()
        .zip(&sent_at)
        .map(|(acked, sent)| {
            acked.map_or(f64::NAN, |a| {
                a.saturating_duration_since(*sent).as_secs_f64() * 1000.0
            })
        })
        .collect();
    let ack_p99_ms_by_second = (0..=second_of(total - 1))
        .map(|second| {
            let mut some: Vec<f64> = (0..total)
                .filter(|&i| second_of(i) == second)
                .map(|i| acks[i])
                .collect();
            some.sort_by(f64::total_cmp);
            round3(percentile(&some, 99.0))
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    Ok(Latency {
        warmup_messages: warmup,
        warmup_p99_ms,
        ack_p99_ms_by_second,
        p99_ms_by_partition,
        p99_ms_by_second,
        messages: total,
        ready_after_ms: round3(ready_after.as_secs_f64() * 1000.0),
        achieved_rate: (total as f64 / produce_seconds).round(),
        p50_ms: round3(percentile(&latencies, 50.0)),
        p90_ms: round3(percentile(&latencies, 90.0)),
        p99_ms: round3(percentile(&latencies, 99.0)),
        max_ms: round3(latencies.last().copied().unwrap_or(f64::NAN)),
        min_ms: round3(latencies.first().copied().unwrap_or(f64::NAN)),
        mean_ms: round3(latencies.iter().sum::<f64>() / latencies.len().max(1) as f64),
        poll_interval_ms: round3(looked.mean_gap_ms()),
        consistency_checks: looked.checks,
        consistency_mismatches: mismatches.len(),
        rows_stored: stored,
        duplicate_rows: stored - distinct,
        missing_rows: total as i64 - distinct,
        restamped: sent.restamped,
        service_cpu: before.until(&after, tck),
        peak_rss_mib: round3(hwm_kib as f64 / 1024.0),
        flushes: status["writer"]["flushes"].clone(),
        exit: exit.code(),
    })
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

/// What the steady producer sent.
struct Sent {
    /// The moment each message was handed to the producer.
    at: Vec<Instant>,
    /// How many were stamped later than the clock said (see [`crate::pods::PodInfo::write`]).
    restamped: u64,
}

/// Runs [`produce_steady`] on a blocking thread and flushes; answers what was sent, and the
/// seconds it all took.
async fn produce(
    steady: Steady,
    producer: &Arc<ThreadedProducer<Tracking>>,
    topic: &str,
    secs: u64,
) -> anyhow::Result<(Sent, f64)> {
    let producing = {
        let topic = topic.to_owned();
        let producer = producer.clone();
        tokio::task::spawn_blocking(move || {
            let sent = produce_steady(steady, &producer, &topic)?;
            producer.flush(Duration::from_secs(60))?;
            Ok::<_, anyhow::Error>(sent)
        })
    };
    let started = Instant::now();
    let sent = within(
        Duration::from_secs(secs * 3 + 120),
        "steady producer",
        producing,
    )
    .await???;
    Ok((sent, started.elapsed().as_secs_f64()))
}

/// Produces `rate` messages a second until `total` were sent, each stamped with the moment it is
/// handed to the producer (or just after its pod's previous one).
fn produce_steady(
    steady: Steady,
    producer: &ThreadedProducer<Tracking>,
    topic: &str,
) -> anyhow::Result<Sent> {
    let Steady {
        pods,
        rate,
        partitions,
        total,
    } = steady;
    let mut pods = pod_infos(pods)?;
    let mut sent_at = Vec::with_capacity(total);
    let mut restamped = 0;
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
            pod.wander(&mut rng);
            let now = Instant::now();
            let clock = now_ms();
            if pod.write(&mut payload, clock)? != clock {
                restamped += 1;
            }
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
    Ok(Sent {
        at: sent_at,
        restamped,
    })
}

/// Each partition's next offset once every delivered message is in.
fn next_offsets(positions: &[(i32, i64)], partitions: i32) -> anyhow::Result<Vec<i64>> {
    let mut needed = vec![0i64; partitions as usize];
    for &(p, o) in positions {
        ensure!(p >= 0, "a message has no delivery report");
        needed[p as usize] = needed[p as usize].max(o + 1);
    }
    Ok(needed)
}

/// Waits until every message is visible (the poller keeps sampling meanwhile), a minute at most.
async fn wait_until_visible(
    db: &Database,
    group: &str,
    topic: &str,
    needed: &[i64],
    total: usize,
    service: &Service,
) -> anyhow::Result<()> {
    let probe = connect(&db.url).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let count = committed(&probe, group, topic).await?;
        if count >= needed.iter().sum::<i64>() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "only {count} of {total} messages visible a minute after the last was produced; log:\n{}",
            service.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Each message's latency: the first look that saw it minus the moment it was sent.
fn latencies_ms(
    positions: &[(i32, i64)],
    sent_at: &[Instant],
    looks: &[Look],
) -> anyhow::Result<Vec<f64>> {
    let mut latencies: Vec<f64> = Vec::with_capacity(positions.len());
    let mut unseen = 0usize;
    for (i, &(p, o)) in positions.iter().enumerate() {
        let p = p as usize;
        let j = looks.partition_point(|s| s.next[p] <= o);
        match looks.get(j) {
            Some(s) => {
                latencies.push(s.at.saturating_duration_since(sent_at[i]).as_secs_f64() * 1000.0)
            }
            None => unseen += 1,
        }
    }
    ensure!(unseen == 0, "{unseen} messages never seen by the poller");
    Ok(latencies)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One look at `kafka_offsets`: when, and each partition's next offset.
struct Look {
    at: Instant,
    next: Vec<i64>,
}

/// What the poller saw.
struct Looked {
    looks: Vec<Look>,
    /// Snapshots in which the rows were counted against the offsets.
    checks: u64,
    /// `(rows, offsets)` of the snapshots where they disagreed.
    mismatches: Vec<(i64, i64)>,
}

impl Looked {
    /// The mean time between two looks, in milliseconds.
    fn mean_gap_ms(&self) -> f64 {
        let gaps: Vec<f64> = self
            .looks
            .windows(2)
            .map(|w| w[1].at.duration_since(w[0].at).as_secs_f64() * 1000.0)
            .collect();
        gaps.iter().sum::<f64>() / gaps.len().max(1) as f64
    }
}

/// A task that looks at `kafka_offsets` every 10 ms, and counts the rows against the offsets
/// every 500 ms, until stopped.
struct Poller {
    stop: Arc<AtomicBool>,
    task: JoinHandle<anyhow::Result<Looked>>,
}

impl Poller {
    async fn start(
        db: &Database,
        group: &str,
        topic: &str,
        partitions: usize,
    ) -> anyhow::Result<Poller> {
        let stop = Arc::new(AtomicBool::new(false));
        let client = connect(&db.url).await?;
        let (group, topic) = (group.to_owned(), topic.to_owned());
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
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
                let mut looked = Looked {
                    looks: Vec::new(),
                    checks: 0,
                    mismatches: Vec::new(),
                };
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
                    looked.looks.push(Look { at, next });
                    if last_check.elapsed() >= Duration::from_millis(500) {
                        last_check = Instant::now();
                        // Both counts in one statement, so in one snapshot.
                        let row = client.query_one(&checked, &[&group, &topic]).await?;
                        let (rows, offsets): (i64, i64) = (row.get(0), row.get(1));
                        looked.checks += 1;
                        if rows != offsets {
                            looked.mismatches.push((rows, offsets));
                        }
                    }
                }
                Ok(looked)
            }
        });
        Ok(Poller { stop, task })
    }

    /// Stops the poller and answers what it saw.
    async fn stop(self) -> anyhow::Result<Looked> {
        self.stop.store(true, Ordering::Relaxed);
        within(Duration::from_secs(30), "poller", self.task).await??
    }
}
