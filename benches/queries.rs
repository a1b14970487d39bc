//! Query latency of the REST API's queries over a large table, on a fresh database made by
//! the service's migrations:
//!
//!     cargo bench --bench queries        # BENCH_ROWS=10000000
//!
//! Loads BENCH_ROWS rows (500 pods, one sample each every 10 s, ending now) with binary COPY,
//! then times the queries behind `GET /api/v1/metrics?pod=…` (1 h of one pod),
//! `GET /api/v1/metrics/series?bucket=1m&group_by=pod` (24 h of all pods) and the Grafana-like
//! panel `avg by (pod) (pod_cpu_usage_percent)` of `/prometheus/api/v1/query_range` (24 h,
//! 1-minute step). The queries are called as the handlers call them, through the same pool,
//! without the HTTP hop.

use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::SinkExt;
use panopticon::db::queries::{self, Aggregate, Dimension, Filters, Storage};

mod support;
use support::{FreshDatabase, env_usize};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

async fn time_it<F, Fut>(runs: usize, mut f: F) -> anyhow::Result<(f64, f64, usize)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<usize>>,
{
    let mut times = Vec::with_capacity(runs);
    let mut size = 0;
    f().await?; // warm the cache once
    for _ in 0..runs {
        let started = Instant::now();
        size = f().await?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok((percentile(&times, 0.5), percentile(&times, 0.99), size))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let total = env_usize("BENCH_ROWS", 10_000_000);
    let pods = 500usize;
    let database = FreshDatabase::create("q").await?;
    let url = database.url.clone();

    let samples_per_pod = total / pods;
    let end = Utc::now().timestamp_millis() / 10_000 * 10_000;
    let start = end - (samples_per_pod as i64 - 1) * 10_000;
    println!(
        "loading {total} rows: {pods} pods × {samples_per_pod} samples, every 10 s, {:.1} h",
        (end - start) as f64 / 3_600_000.0
    );
    let loading = Instant::now();
    {
        let client = panopticon::db::connect(&url, &Default::default()).await?;
        let sink = client
            .copy_in("COPY system_metrics (time, service, pod_name, cpu, memory, namespace, node_name) FROM STDIN (FORMAT csv)")
            .await?;
        futures_util::pin_mut!(sink);
        let mut text = String::with_capacity(8 << 20);
        for step in 0..samples_per_pod as i64 {
            let ts = chrono::DateTime::from_timestamp_millis(start + step * 10_000)
                .unwrap_or_default()
                .to_rfc3339();
            for pod in 0..pods {
                use std::fmt::Write;
                let _ = writeln!(
                    text,
                    "{ts},svc-{},pod-{pod:03},{},{},ns-{},node-{}",
                    pod % 10,
                    (pod * 7 + step as usize) % 100,
                    100 + pod,
                    pod % 4,
                    pod % 5
                );
            }
            if text.len() > 4 << 20 {
                sink.send(bytes::Bytes::from(std::mem::take(&mut text)))
                    .await?;
            }
        }
        sink.send(bytes::Bytes::from(text)).await?;
        sink.finish().await?;
        client.batch_execute("ANALYZE system_metrics").await?;
    }
    println!("loaded in {:.0} s", loading.elapsed().as_secs_f64());

    let pool = queries::pool(&url, 2, &Default::default()).map_err(anyhow::Error::msg)?;
    let now = chrono::DateTime::from_timestamp_millis(end + 1).unwrap_or_default();
    let one_pod = Filters {
        pod: Some("pod-042".into()),
        from: now - chrono::Duration::hours(1),
        to: now,
        ..Filters::default()
    };
    let all_pods = Filters {
        from: now - chrono::Duration::hours(24),
        to: now,
        ..Filters::default()
    };
    let raw = time_it(200, || async {
        Ok(queries::list_metrics(&pool, &one_pod, None, 1000)
            .await?
            .len())
    })
    .await?;
    let series = time_it(10, || async {
        Ok(queries::series(
            &pool,
            Storage::Table,
            &all_pods,
            60,
            Aggregate::Avg,
            Dimension::Pod,
        )
        .await?
        .len())
    })
    .await?;
    let one_pod_series = time_it(100, || async {
        Ok(queries::series(
            &pool,
            Storage::Table,
            &one_pod,
            60,
            Aggregate::P95,
            Dimension::Pod,
        )
        .await?
        .len())
    })
    .await?;
    // The panel Grafana draws: 1,441 steps of a minute over 24 h, on whole minutes.
    let panel_end = end / 60_000 * 60_000;
    let steps = panopticon::promql::Steps {
        start_ms: panel_end - 24 * 3_600_000,
        step_ms: 60_000,
        n: 24 * 60 + 1,
    };
    let limits = panopticon::promql::Limits {
        max_samples: 1_000_000,
        max_range_ms: 168 * 3_600_000,
    };
    let promql = time_it(env_usize("BENCH_PROMQL_RUNS", 10), || async {
        let value =
            panopticon::promql::query(&pool, "avg by (pod) (pod_cpu_usage_percent)", steps, limits)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(match value {
            panopticon::promql::Value::Vector(series) => series
                .iter()
                .map(|s| s.points.iter().flatten().count())
                .sum(),
            _ => 0,
        })
    })
    .await?;
    println!(
        "{:<48} {:>9} {:>9} {:>9}",
        "query", "p50 ms", "p99 ms", "rows"
    );
    for (label, (p50, p99, rows)) in [
        ("1 h of one pod, raw rows (/metrics?pod=)", raw),
        ("1 h of one pod, 1m buckets, p95 (/series)", one_pod_series),
        ("24 h of 500 pods, 1m buckets, avg (/series)", series),
        ("24 h, 1m step, avg by (pod) (PromQL query_range)", promql),
    ] {
        println!("{label:<48} {p50:>9.1} {p99:>9.1} {rows:>9}");
    }
    drop(pool);
    database.drop_it().await
}
