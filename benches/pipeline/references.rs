//! Phase 3a and 3b: the limits on either side of the service. The write limit is one `COPY` of
//! the same N rows, CSV and binary, pre-encoded, into a fresh table made by the same
//! migrations, and the rows split over one connection a CPU, all writing at once, each its
//! share in binary `COPY`s of `PARALLEL_SLICE_ROWS` (what the database takes with every core
//! writing: in slices because on a hypertable the transaction that creates a chunk holds a
//! lock every other writer into that chunk waits for, so two whole-share `COPY`s run one after
//! the other); the read limit is an rdkafka consumer that only reads the topic and touches each
//! payload.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::SinkExt;
use panopticon::domain::{Rules, ValidMetric};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use serde::Serialize;
use tokio_postgres::Client;

use crate::db::{COLUMNS, checkpoint};
use crate::kafka::consumer_config;
use crate::preload::Messages;
use crate::sampling::proc_ticks;
use crate::settings::Settings;
use crate::{now_ms, rounded, rounded3, step, within};

/// Rows a `COPY` of the parallel reference.
const PARALLEL_SLICE_ROWS: usize = 10_000;

/// The report's `write_limit`, rounded there.
#[derive(Serialize)]
pub struct WriteLimit {
    #[serde(rename = "copy_csv_rows_per_s", serialize_with = "rounded")]
    pub csv: f64,
    #[serde(rename = "copy_binary_rows_per_s", serialize_with = "rounded")]
    pub binary: f64,
    /// The faster of the two.
    #[serde(rename = "limit_rows_per_s", serialize_with = "rounded")]
    pub limit: f64,
    /// The rows split over `parallel_connections` connections writing at once.
    #[serde(rename = "parallel_copy_binary_rows_per_s", serialize_with = "rounded")]
    pub parallel: f64,
    pub parallel_connections: usize,
    /// Rows of the growth reference: a tenth of the messages, binary-copied once into an empty
    /// table and once into the table holding all the messages (the next samples of the same
    /// pods), as the service's first and last tenths of the drain write.
    pub growth_rows: usize,
    #[serde(
        rename = "copy_binary_tenth_into_empty_rows_per_s",
        serialize_with = "rounded"
    )]
    pub tenth_into_empty: f64,
    #[serde(
        rename = "copy_binary_tenth_into_full_rows_per_s",
        serialize_with = "rounded"
    )]
    pub tenth_into_full: f64,
}

/// The report's `read_limit`, rounded there.
#[derive(Serialize)]
pub struct ReadLimit {
    #[serde(serialize_with = "rounded")]
    pub messages_per_s: f64,
    /// The reader's CPU seconds, first message to last.
    #[serde(serialize_with = "rounded3")]
    pub cpu_s: f64,
}

/// Copies every message, as rows, into the empty `system_metrics` of the database at `url`
/// (`client` is connected to it): once as CSV, once binary, once split over one binary `COPY`
/// a CPU at once, each after a `CHECKPOINT`; and a tenth of them, shifted to follow the rest,
/// into the empty table and into the table holding every message; leaves the table empty.
pub async fn write_limit(
    settings: &Settings,
    url: &str,
    client: &Client,
    messages: &Messages,
) -> anyhow::Result<WriteLimit> {
    let n = settings.messages;
    let connections = std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(1)
        .max(2);
    let rows = parse_all(messages)?;
    let csv = encode_csv(&rows);
    let binary = encode_binary(&rows, 0);
    // The next samples of the same pods: the first tenth shifted by the span of all the rows.
    let growth_rows = (n / 10).max(1).min(rows.len());
    let span_ms = match (
        rows.iter().map(|m| m.time_ms()).min(),
        rows.iter().map(|m| m.time_ms()).max(),
    ) {
        (Some(first), Some(last)) => last - first + 1000,
        _ => 0,
    };
    let tenth = encode_binary(&rows[..growth_rows], span_ms);
    let parts: Vec<Vec<(Bytes, usize)>> = rows
        .chunks(rows.len().div_ceil(connections).max(1))
        .map(|part| {
            part.chunks(PARALLEL_SLICE_ROWS)
                .map(|slice| (encode_binary(slice, 0), slice.len()))
                .collect()
        })
        .collect();
    drop(rows);
    checkpoint(&settings.admin_url).await;
    let csv_rate = copy(client, "csv", &csv, n).await?;
    client.batch_execute("TRUNCATE system_metrics").await?;
    checkpoint(&settings.admin_url).await;
    let tenth_into_empty = copy(client, "binary", &tenth, growth_rows).await?;
    client.batch_execute("TRUNCATE system_metrics").await?;
    checkpoint(&settings.admin_url).await;
    let binary_rate = copy(client, "binary", &binary, n).await?;
    checkpoint(&settings.admin_url).await;
    let tenth_into_full = copy(client, "binary", &tenth, growth_rows).await?;
    client.batch_execute("TRUNCATE system_metrics").await?;
    drop((csv, binary, tenth));
    checkpoint(&settings.admin_url).await;
    let parallel_rate = parallel_copy(url, &parts, n).await?;
    client.batch_execute("TRUNCATE system_metrics").await?;
    step(&format!(
        "COPY csv {csv_rate:.0} rows/s, binary {binary_rate:.0} rows/s, binary on {} connections at once {parallel_rate:.0} rows/s; {growth_rows} rows into an empty table {tenth_into_empty:.0} rows/s, into one holding {n} {tenth_into_full:.0} rows/s",
        parts.len()
    ));
    Ok(WriteLimit {
        csv: csv_rate,
        binary: binary_rate,
        limit: csv_rate.max(binary_rate),
        parallel: parallel_rate,
        parallel_connections: parts.len(),
        growth_rows,
        tenth_into_empty,
        tenth_into_full,
    })
}

/// Each part on a connection of its own, all at once, each slice of a part one binary `COPY`;
/// answers the rows/s of the whole, from the first `COPY` started to the last finished.
async fn parallel_copy(
    url: &str,
    parts: &[Vec<(Bytes, usize)>],
    rows: usize,
) -> anyhow::Result<f64> {
    let mut clients = Vec::with_capacity(parts.len());
    for _ in parts {
        clients.push(crate::db::connect(url).await?);
    }
    let started = Instant::now();
    let copies = clients
        .iter()
        .zip(parts)
        .map(|(client, slices)| async move {
            for (data, slice_rows) in slices {
                copy(client, "binary", data, *slice_rows).await?;
            }
            Ok::<_, anyhow::Error>(())
        });
    for result in futures_util::future::join_all(copies).await {
        result?;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

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

/// PostgreSQL's binary COPY format: header, one tuple per row, trailer; each row's time
/// `shift_ms` later than the metric's.
fn encode_binary(rows: &[ValidMetric], shift_ms: i64) -> Bytes {
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
        out.put_i64((m.time_ms() + shift_ms - PG_EPOCH_MS) * 1000);
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

/// Reads the whole topic, `watermarks` messages a partition, on a blocking thread.
pub async fn read_limit(
    broker: &str,
    topic: &str,
    watermarks: &[i64],
    tck: f64,
) -> anyhow::Result<ReadLimit> {
    let (broker, topic, watermarks) = (broker.to_owned(), topic.to_owned(), watermarks.to_vec());
    let (rate, cpu, _) = within(
        Duration::from_secs(1800),
        "read limit",
        tokio::task::spawn_blocking(move || read_all(&broker, &topic, &watermarks, tck)),
    )
    .await???;
    step(&format!("read limit {rate:.0} msg/s"));
    Ok(ReadLimit {
        messages_per_s: rate,
        cpu_s: cpu,
    })
}

/// Reads the whole topic and touches every payload; answers messages/s from the first
/// message to the last, the reader's CPU seconds, and a checksum of the payloads.
fn read_all(
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
