//! PromQL through `/prometheus/api/v1/query_range`, side by side with real Prometheus on the
//! same samples, same machine, same run:
//!
//!     cargo bench --bench queries
//!
//! Makes 24 h of 500 pods (`BENCH_DAYS` days of them where set: every query's step is then at
//! least 5 minutes, as Grafana picks for a week), one sample every 10 s (4.32 M rows a day,
//! each two samples), at times
//! 1.234 s past each 10 s so that no sample lies on a window's edge (Prometheus 2.x includes
//! a sample there, 3.x does not). The rows are copied into a fresh database made by the
//! service's migrations; the same samples are written as OpenMetrics and imported with
//! `promtool tsdb create-blocks-from openmetrics` (Debian's `prometheus` package), and
//! Prometheus is started on those blocks with an empty scrape configuration. The OpenMetrics
//! file and the blocks are cached under `target/bench-queries/`, so reruns are quick.
//!
//! Each query is asked of both (Panopticon through its HTTP app on a free port, with
//! PROMETHEUS_MAX_SAMPLES at 50 M as Prometheus's default), warmed once, then timed three
//! times; the medians, their ratio and whether the answers agree (labels exactly, values
//! within a relative 1e-9) are printed. Queries are asked as Grafana asks them: start and end
//! multiples of the step. Panopticon is timed twice: first with every stored minute pending
//! (read from raw samples, as before summaries), then once the rows are summarised into
//! `system_metrics_minutes` and the whole hours packed into `system_metrics_hours` (by a
//! stand-in for the service's summarizer and its own packing, timed too), cold (the service
//! just started: nothing kept in its memory) and warm (asked again). Beside each query, the peak resident size (`VmHWM`, reset before) of Prometheus
//! while it answered and of the bench's own process (which serves Panopticon's HTTP app)
//! while Panopticon answered, cold and warm.
//!
//! `BENCH_STORAGE=plain|hypertable`, `BENCH_RAW=0` (no raw timing), `BENCH_QUERIES=<substring>`
//! and `BENCH_DAYS` narrow or widen a run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::SinkExt;
use panopticon::db::queries::{self, SharedStorage};
use panopticon::http::api::ApiState;
use panopticon::http::auth::Access;
use panopticon::http::{self, AppState};
use panopticon::stats::Stats;
use serde_json::Value;

#[allow(dead_code)]
mod support;
use support::env_usize;
#[path = "../tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;
#[path = "../tests/it/promql_differential/summarizer.rs"]
mod summarizer;

/// For `pg`: a port free when asked.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// For `pg`: runs `sh -c script` in the background, to stop the server should the bench die.
fn spawn_watchdog(script: &str) {
    if let Ok(mut watchdog) = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        std::thread::spawn(move || watchdog.wait());
    }
}

const PODS: i64 = 500;
const INTERVAL_MS: i64 = 10_000;
const OFFSET_MS: i64 = 1_234;
const DAY_MS: i64 = 86_400_000;

/// The days of samples made and queried (`BENCH_DAYS`, 1).
fn days() -> i64 {
    env_usize("BENCH_DAYS", 1).max(1) as i64
}

/// The span of samples made and of every query.
fn span_ms() -> i64 {
    days() * DAY_MS
}

/// Resets the peak resident size `/proc/<pid>/status` reports (`VmHWM`) to the present one.
fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// The peak resident size of `pid` since [`reset_peak`], in MiB.
fn peak_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// The first sample's time: a fixed day, so the cached files stay valid.
const BASE_MS: i64 = 1_796_342_400_000; // 2026-12-05T00:00:00Z

/// One pod's labels: service, pod, namespace, node.
fn labels(pod: i64) -> [String; 4] {
    [
        format!("svc-{}", pod % 10),
        format!("pod-{pod:03}"),
        format!("ns-{}", pod % 4),
        format!("node-{}", pod % 5),
    ]
}

/// The values of one sample: distinct across pods at each time, so `topk` has no ties.
fn values(pod: i64, step: i64) -> (f64, f64) {
    let cpu = ((pod * 7 + step) % 100) as f64 + pod as f64 / 1000.0 + 0.5;
    let memory = 100.0 + pod as f64 + (step % 7) as f64 * 0.25;
    (cpu, memory)
}

fn time_ms(step: i64) -> i64 {
    BASE_MS + step * INTERVAL_MS + OFFSET_MS
}

/// The OpenMetrics file of `steps` samples per pod: each family whole, each series in time
/// order, timestamps in seconds, `# EOF` last.
fn write_openmetrics(path: &Path, steps: i64) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    for (family, pick) in [
        ("pod_cpu_usage_percent", 0usize),
        ("pod_memory_usage_mib", 1),
    ] {
        writeln!(out, "# TYPE {family} gauge")?;
        for pod in 0..PODS {
            let [service, name, namespace, node] = labels(pod);
            for step in 0..steps {
                let (cpu, memory) = values(pod, step);
                let v = if pick == 0 { cpu } else { memory };
                let t = time_ms(step);
                writeln!(
                    out,
                    "{family}{{job=\"panopticon\",namespace=\"{namespace}\",node=\"{node}\",pod=\"{name}\",service=\"{service}\"}} {v} {}.{:03}",
                    t / 1000,
                    t % 1000
                )?;
            }
        }
    }
    writeln!(out, "# EOF")?;
    out.flush()?;
    Ok(())
}

/// The Prometheus blocks of `steps` samples per pod, made once.
fn blocks(cache: &Path, steps: i64) -> anyhow::Result<PathBuf> {
    let dir = cache.join(format!("tsdb-{BASE_MS}-{steps}"));
    if dir.join(".done").exists() {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let file = cache.join(format!("samples-{BASE_MS}-{steps}.om"));
    println!("writing {}", file.display());
    write_openmetrics(&file, steps)?;
    println!("importing with promtool (a minute or two)");
    let status = Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&file)
        .arg(&dir)
        .stdout(Stdio::null())
        .status()
        .context("promtool (apt-get install prometheus)")?;
    if !status.success() {
        bail!("promtool failed");
    }
    std::fs::remove_file(&file)?;
    std::fs::write(dir.join(".done"), "")?;
    Ok(dir)
}

/// Prometheus on the blocks, stopped when dropped.
struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_prometheus(cache: &Path, tsdb: &Path) -> anyhow::Result<Prometheus> {
    let config = cache.join("prometheus.yml");
    std::fs::write(&config, "scrape_configs: []\n")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", tsdb.display()))
        .arg("--storage.tsdb.retention.time=10y")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("prometheus (apt-get install prometheus)")?;
    let prometheus = Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    for _ in 0..600 {
        if let Ok(r) = client
            .get(format!("{}/-/ready", prometheus.url))
            .send()
            .await
            && r.status().is_success()
        {
            return Ok(prometheus);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("prometheus did not become ready")
}

/// Copies the rows of `steps` samples per pod into the database.
async fn load(url: &str, steps: i64) -> anyhow::Result<()> {
    let client = panopticon::db::connect(url, &Default::default()).await?;
    let sink = client
        .copy_in("COPY system_metrics (time, service, pod_name, cpu, memory, namespace, node_name) FROM STDIN (FORMAT csv)")
        .await?;
    futures_util::pin_mut!(sink);
    let mut text = String::with_capacity(8 << 20);
    let names: Vec<[String; 4]> = (0..PODS).map(labels).collect();
    for step in 0..steps {
        let ts = chrono::DateTime::from_timestamp_millis(time_ms(step))
            .unwrap_or_default()
            .format("%Y-%m-%d %H:%M:%S%.3f+00");
        for (pod, [service, name, namespace, node]) in names.iter().enumerate() {
            use std::fmt::Write;
            let (cpu, memory) = values(pod as i64, step);
            let _ = writeln!(
                text,
                "{ts},{service},{name},{cpu},{memory},{namespace},{node}"
            );
        }
        if text.len() > 4 << 20 {
            sink.send(bytes::Bytes::from(std::mem::take(&mut text)))
                .await?;
        }
    }
    sink.send(bytes::Bytes::from(text)).await?;
    sink.finish().await?;
    client
        .batch_execute("VACUUM ANALYZE system_metrics")
        .await?;
    Ok(())
}

/// One answer of `query_range`, by labels: its points.
type Answer = BTreeMap<String, Vec<(f64, f64)>>;

async fn query_range(
    client: &reqwest::Client,
    base: &str,
    query: &str,
    start_ms: i64,
    end_ms: i64,
    step_s: i64,
) -> anyhow::Result<Answer> {
    let params = form_urlencoded::Serializer::new(String::new())
        .append_pair("query", query)
        .append_pair("start", &format!("{}", start_ms as f64 / 1000.0))
        .append_pair("end", &format!("{}", end_ms as f64 / 1000.0))
        .append_pair("step", &step_s.to_string())
        .finish();
    let body: Value = client
        .get(format!("{base}/api/v1/query_range?{params}"))
        .send()
        .await?
        .json()
        .await?;
    if body["status"] != "success" {
        bail!("{base}: {query}: {body}");
    }
    let mut answer = Answer::new();
    for series in body["data"]["result"].as_array().into_iter().flatten() {
        let key = series["metric"].to_string();
        let points = series["values"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let t = p[0].as_f64().unwrap_or(f64::NAN);
                let v = match p[1].as_str() {
                    Some("+Inf") => f64::INFINITY,
                    Some("-Inf") => f64::NEG_INFINITY,
                    Some(v) => v.parse().unwrap_or(f64::NAN),
                    None => f64::NAN,
                };
                (t, v)
            })
            .collect();
        answer.insert(key, points);
    }
    Ok(answer)
}

/// Same labels, same times, values within a relative 1e-9 (NaN equal to NaN).
fn agree(a: &Answer, b: &Answer) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((ka, pa), (kb, pb))| {
            ka == kb
                && pa.len() == pb.len()
                && pa.iter().zip(pb).all(|((ta, va), (tb, vb))| {
                    ta == tb
                        && ((va.is_nan() && vb.is_nan())
                            || va == vb
                            || (va - vb).abs() <= 1e-9 * va.abs().max(vb.abs()))
                })
        })
}

/// The median of BENCH_RUNS (3) timed runs after one to warm up, in ms, and the last answer.
async fn timed(
    client: &reqwest::Client,
    base: &str,
    query: &str,
    start_ms: i64,
    end_ms: i64,
    step_s: i64,
) -> anyhow::Result<(f64, Answer)> {
    let mut answer = query_range(client, base, query, start_ms, end_ms, step_s).await?;
    let mut times = Vec::new();
    for _ in 0..env_usize("BENCH_RUNS", 3).max(1) {
        let started = Instant::now();
        answer = query_range(client, base, query, start_ms, end_ms, step_s).await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], answer))
}

/// The settings of the bench's own server: durability off (nothing here must survive a
/// crash), buffers that hold a day of summaries, TimescaleDB preloaded.
const SERVER_SETTINGS: &str = "fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 256MB
max_wal_size = 4GB
max_connections = 50";

/// The machine's load averages, for the report (the machine may be shared).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A database on the bench's server, migrated by the service: a hypertable where made by
/// `postgres`, a plain table where made by a role that may create tables but not the
/// extension (no CREATE on the database: the migration then keeps a plain table, as on a
/// server without TimescaleDB).
async fn database(server: &pg::OwnPostgres, hypertable: bool) -> anyhow::Result<String> {
    let name = if hypertable {
        "bench_hypertable"
    } else {
        "bench_plain"
    };
    server.psql("postgres", &format!("CREATE DATABASE {name}"));
    let owner = if hypertable {
        "postgres".to_owned()
    } else {
        server.psql("postgres", &format!("CREATE ROLE {name} LOGIN"));
        server.psql(name, &format!("GRANT CREATE ON SCHEMA public TO {name}"));
        name.to_owned()
    };
    let url = format!("postgres://{owner}@127.0.0.1:{}/{name}", server.port());
    let (_client, storage) = panopticon::db::prepare(&url, &Default::default()).await?;
    if storage.storage.is_hypertable() != hypertable {
        bail!(
            "{name}: wanted hypertable={hypertable}, got {}",
            storage.description
        );
    }
    println!("{name}: {}", storage.description);
    Ok(url)
}

/// The queries timed: the bench's own four, then the panels of the provisioned dashboard
/// with every namespace and service; each with its step in seconds.
fn queries() -> Vec<(String, i64)> {
    let all = r#"{namespace=~".*", service=~".*"}"#;
    vec![
        ("avg by (pod) (pod_cpu_usage_percent)".into(), 60),
        (
            "max by (namespace) (avg_over_time(pod_cpu_usage_percent[5m]))".into(),
            300,
        ),
        ("topk(10, pod_cpu_usage_percent)".into(), 300),
        ("count(pod_cpu_usage_percent > 90)".into(), 60),
        (format!("avg by (pod) (pod_cpu_usage_percent{all})"), 60),
        (format!("avg by (pod) (pod_memory_usage_mib{all})"), 60),
        (
            format!("topk(10, max by (pod) (avg_over_time(pod_cpu_usage_percent{all}[5m])))"),
            60,
        ),
        (
            format!("topk(10, avg by (pod) (pod_cpu_usage_percent{all}))"),
            60,
        ),
        (
            format!("sum by (namespace) (pod_cpu_usage_percent{all})"),
            60,
        ),
        (
            format!("sum by (namespace) (pod_memory_usage_mib{all})"),
            60,
        ),
        (
            format!("count by (namespace) (pod_cpu_usage_percent{all})"),
            60,
        ),
        (format!("count(pod_cpu_usage_percent{all} > 90)"), 60),
    ]
}

/// Panopticon's HTTP app over one database, on a free port; stopped by its handle.
fn serve(url: &str) -> anyhow::Result<(String, actix_web::dev::ServerHandle)> {
    let pool = queries::pool(url, 4, &Default::default()).map_err(anyhow::Error::msg)?;
    let api = ApiState {
        pool,
        storage: SharedStorage::default(),
        max_limit: 1000,
        max_range: chrono::Duration::hours(168),
        max_buckets: 11_000,
        max_samples: 50_000_000,
    };
    let state = AppState::new(Arc::new(Stats::default()), api, Access::new(None, false));
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let server = actix_web::HttpServer::new(move || http::app(state.clone()))
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    Ok((format!("http://127.0.0.1:{port}/prometheus"), handle))
}

/// Loads the days into one storage and times every query there and on Prometheus, one after
/// the other, so that both see the same load; with the peak resident size of each while it
/// answered.
async fn compare(
    client: &reqwest::Client,
    prometheus: &Prometheus,
    url: &str,
    storage: &str,
    raw_too: bool,
    filter: Option<&str>,
) -> anyhow::Result<()> {
    let prom = prometheus.url.as_str();
    let steps = span_ms() / INTERVAL_MS;
    let loading = Instant::now();
    load(url, steps).await?;
    println!(
        "{storage}: loaded {} rows in {:.0} s",
        steps * PODS,
        loading.elapsed().as_secs_f64()
    );
    let (panopticon, handle) = serve(url)?;
    let end_of = |step_s: i64| (BASE_MS + span_ms()) / (step_s * 1000) * (step_s * 1000);
    // Over more than a day, at least the 5-minute step Grafana picks for a week.
    let queries: Vec<(String, i64)> = queries()
        .into_iter()
        .filter(|(q, _)| filter.is_none_or(|f| q.contains(f)))
        .map(|(q, step_s)| (q, if days() > 1 { step_s.max(300) } else { step_s }))
        .collect();
    let summaries = panopticon::db::connect(url, &Default::default()).await?;
    summarizer::summarise_through(&summaries, i64::MIN).await?;
    let mut raw = Vec::new();
    for (query, step_s) in &queries {
        let end = end_of(*step_s);
        let start = end - span_ms() + step_s * 1000;
        raw.push(if raw_too {
            Some(timed(client, &panopticon, query, start, end, *step_s).await)
        } else {
            None
        });
    }
    let summarising = Instant::now();
    summarizer::summarise_through(&summaries, i64::MAX).await?;
    summaries
        .batch_execute("VACUUM ANALYZE system_metrics_minutes, system_metrics_hours")
        .await?;
    println!(
        "{storage}: summarised {} rows into minutes and packed their hours in {:.0} s; load average {}",
        steps * PODS,
        summarising.elapsed().as_secs_f64(),
        load_average()
    );
    println!(
        "{:<92} {:>5} {:>11} {:>11} {:>11} {:>11} {:>7} {:>7} {:>7} {:>14} agree (raw/cold/warm)",
        format!("query ({} h of 500 pods, {storage})", span_ms() / 3_600_000),
        "step",
        "raw",
        "cold",
        "warm",
        "Prometheus",
        "raw/P",
        "cold/P",
        "warm/P",
        "peak MiB P/us"
    );
    let show = |r: &Option<anyhow::Result<(f64, Answer)>>| match r {
        Some(Ok((ms, _))) => format!("{ms:>9.0}ms"),
        Some(Err(_)) => format!("{:>11}", "refused"),
        None => format!("{:>11}", "-"),
    };
    for ((query, step_s), raw) in queries.iter().zip(raw) {
        let end = end_of(*step_s);
        let start = end - span_ms() + step_s * 1000;
        let us = std::process::id();
        reset_peak(us);
        let (cold, cold_answer) =
            timed_cold(client, &panopticon, &summaries, query, start, end, *step_s).await?;
        let ours = Some(timed(client, &panopticon, query, start, end, *step_s).await);
        let our_peak = peak_mib(us);
        reset_peak(prometheus.child.id());
        let theirs = timed(client, prom, query, start, end, *step_s).await?;
        let their_peak = peak_mib(prometheus.child.id());
        let ratio = |r: &Option<anyhow::Result<(f64, Answer)>>| match r {
            Some(Ok((ms, _))) => format!("{:>7.2}", ms / theirs.0),
            _ => format!("{:>7}", "-"),
        };
        let agrees = |r: &Option<anyhow::Result<(f64, Answer)>>| match r {
            Some(Ok((_, answer))) => agree(answer, &theirs.1).to_string(),
            Some(Err(e)) => format!("refused: {e}"),
            None => "-".into(),
        };
        println!(
            "{query:<92} {step_s:>5} {} {cold:>9.0}ms {} {:>9.0}ms {} {:>7.2} {} {:>14} {}/{}/{}",
            show(&raw),
            show(&ours),
            theirs.0,
            ratio(&raw),
            cold / theirs.0,
            ratio(&ours),
            format!("{their_peak:.0}/{our_peak:.0}"),
            agrees(&raw),
            agree(&cold_answer, &theirs.1),
            agrees(&ours)
        );
    }
    handle.stop(false).await;
    Ok(())
}

/// The median of BENCH_RUNS (3) asks, each made cold, as the first after a restart: every
/// hour the service keeps in memory is made stale first (new versions, as a summary pass
/// gives the hours it rewrites), its packed rows left current (their version moved with
/// it: the summaries did not change), so the summaries are read from the database again.
async fn timed_cold(
    client: &reqwest::Client,
    base: &str,
    db: &tokio_postgres::Client,
    query: &str,
    start_ms: i64,
    end_ms: i64,
    step_s: i64,
) -> anyhow::Result<(f64, Answer)> {
    let mut times = Vec::new();
    let mut answer = Answer::new();
    for _ in 0..env_usize("BENCH_RUNS", 3).max(1) {
        db.batch_execute(
            "WITH fresh AS (SELECT hour, gen_random_uuid() AS version \
                            FROM system_metrics_minutes_versions) \
             UPDATE system_metrics_minutes_versions v \
             SET version = fresh.version, \
                 packed = CASE WHEN v.packed = v.version THEN fresh.version END \
             FROM fresh WHERE fresh.hour = v.hour",
        )
        .await?;
        let started = Instant::now();
        answer = query_range(client, base, query, start_ms, end_ms, step_s).await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], answer))
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let cache = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-queries");
    std::fs::create_dir_all(&cache)?;
    println!("load average at the start {}", load_average());
    let steps = span_ms() / INTERVAL_MS;
    let tsdb = tokio::task::spawn_blocking({
        let cache = cache.clone();
        move || blocks(&cache, steps)
    })
    .await??;
    let prometheus = start_prometheus(&cache, &tsdb).await?;

    // A server of the bench's own, the same for both storages.
    let mut server = tokio::task::spawn_blocking(|| {
        let mut server = pg::OwnPostgres::start();
        server.configure(SERVER_SETTINGS);
        server.preload_timescaledb();
        server
    })
    .await?;
    // No idle connections kept: the service closes one idle for 5 s (actix's keep-alive),
    // as it is while Prometheus is timed, and a request on it would fail.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .pool_max_idle_per_host(0)
        .build()?;
    let storages = std::env::var("BENCH_STORAGE").unwrap_or_else(|_| "plain,hypertable".into());
    let raw_too = std::env::var("BENCH_RAW").map_or(true, |v| v != "0");
    let filter = std::env::var("BENCH_QUERIES").ok();
    for storage in storages.split(',') {
        let hypertable = match storage {
            "plain" => false,
            "hypertable" => true,
            other => bail!("BENCH_STORAGE: {other}: plain or hypertable"),
        };
        let url = database(&server, hypertable).await?;
        compare(
            &client,
            &prometheus,
            &url,
            storage,
            raw_too,
            filter.as_deref(),
        )
        .await?;
        let name = if hypertable {
            "bench_hypertable"
        } else {
            "bench_plain"
        };
        server.psql("postgres", &format!("DROP DATABASE {name} WITH (FORCE)"));
    }
    println!("load average at the end {}", load_average());
    drop(prometheus);
    tokio::task::spawn_blocking(move || server.stop()).await?;
    Ok(())
}
