//! Phase 5: the report. The targets, the table printed at the end, and the JSON written to
//! `BENCH_JSON`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

use crate::broker::Broker;
use crate::drain::Drain;
use crate::latency::Latency;
use crate::naive::Naive;
use crate::preload::Preload;
use crate::references::{ReadLimit, WriteLimit};
use crate::sampling::loadavg;
use crate::settings::{Settings, SettingsReport};
use crate::{json_text, round3, step};

/// The goals: a row visible within this long of being produced at the latency run's rate, …
const LATENCY_P99_TARGET_MS: f64 = 100.0;
/// … and the service's peak memory while draining.
const RSS_TARGET_MIB: f64 = 256.0;

/// The machine the run had: the report's `machine`.
#[derive(Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub load_average_at_start: String,
    /// Set by [`Machine::at_end`].
    pub load_average_at_end: String,
    pub postgres: String,
    /// The soak's report names the broker here (a full run's does in `settings`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
}

impl Machine {
    /// The figures at the end of the run filled in.
    pub fn at_end(self) -> Machine {
        Machine {
            load_average_at_end: loadavg(),
            ..self
        }
    }
}

/// Every phase's result, in the order they ran.
pub struct Phases {
    pub preload: Preload,
    pub drain: Drain,
    pub write_limit: WriteLimit,
    pub read_limit: ReadLimit,
    pub naive: Naive,
    pub latency: Latency,
}

/// One target: the figure, the goal as text, and whether the figure meets it.
#[derive(Serialize)]
pub struct Target {
    value: f64,
    target: String,
    pass: bool,
}

impl Target {
    fn new(value: f64, target: impl Into<String>, pass: bool) -> Target {
        Target {
            value,
            target: target.into(),
            pass,
        }
    }
}

/// The report's `targets`.
#[derive(Serialize)]
pub struct Targets {
    drain_vs_copy: Target,
    drain_vs_parallel_copy: Target,
    drain_vs_naive: Target,
    latency_p99_ms: Target,
    lost_metrics: Target,
    duplicate_rows: Target,
    peak_rss_mib: Target,
}

impl Targets {
    pub fn of(phases: &Phases) -> Targets {
        let Phases {
            drain,
            write_limit,
            naive,
            latency,
            ..
        } = phases;
        let vs_copy = drain.rows_per_s / write_limit.binary;
        let vs_parallel = drain.rows_per_s / write_limit.parallel;
        let vs_naive = drain.rows_per_s / naive.rows_per_s;
        let p99 = latency.p99_ms;
        let p99_target = LATENCY_P99_TARGET_MS;
        let lost = (drain.missing_rows + latency.missing_rows) as f64;
        let duplicates = (drain.duplicate_rows + latency.duplicate_rows) as f64;
        let rss = drain.peak_rss_mib.max(latency.peak_rss_mib);
        Targets {
            drain_vs_copy: Target::new(round3(vs_copy), ">= 1.0", vs_copy >= 1.0),
            drain_vs_parallel_copy: Target::new(round3(vs_parallel), ">= 0.8", vs_parallel >= 0.8),
            drain_vs_naive: Target::new(round3(vs_naive), ">= 20", vs_naive >= 20.0),
            latency_p99_ms: Target::new(p99, format!("<= {p99_target}"), p99 <= p99_target),
            lost_metrics: Target::new(lost, "0", lost == 0.0),
            duplicate_rows: Target::new(duplicates, "0", duplicates == 0.0),
            peak_rss_mib: Target::new(rss, "<= 256", rss <= RSS_TARGET_MIB),
        }
    }
}

/// The report written to `BENCH_JSON`.
#[derive(Serialize)]
pub struct Report<'a> {
    settings: SettingsReport,
    machine: Machine,
    preload: &'a Preload,
    drain: &'a Drain,
    write_limit: &'a WriteLimit,
    read_limit: &'a ReadLimit,
    naive: &'a Naive,
    latency: &'a Latency,
    targets: &'a Targets,
    table: String,
}

impl Report<'_> {
    pub fn new<'a>(
        settings: &Settings,
        machine: Machine,
        phases: &'a Phases,
        targets: &'a Targets,
        table: String,
    ) -> Report<'a> {
        Report {
            settings: settings.report(),
            machine,
            preload: &phases.preload,
            drain: &phases.drain,
            write_limit: &phases.write_limit,
            read_limit: &phases.read_limit,
            naive: &phases.naive,
            latency: &phases.latency,
            targets,
            table,
        }
    }
}

/// The table printed at the end of a full run, and kept in the report.
pub fn table(settings: &Settings, machine: &Machine, phases: &Phases, targets: &Targets) -> String {
    let mut out = String::new();
    let _ = writeln!(out);
    heading(&mut out, settings, machine, phases);
    let _ = writeln!(out);
    paths(&mut out, settings, phases);
    let _ = writeln!(out);
    details(&mut out, settings, phases);
    let _ = writeln!(out);
    verdicts(&mut out, targets);
    out
}

/// What ran where: sizes, machine, server, broker, the service's settings, the preload.
fn heading(out: &mut String, settings: &Settings, machine: &Machine, phases: &Phases) {
    let n = settings.messages;
    let preload = &phases.preload;
    let _ = writeln!(
        out,
        "Panopticon pipeline: {n} messages ({:.1} MB), {} pods, {} partitions; {} CPUs, load average {} at start; PostgreSQL {} ({}); broker {}",
        preload.payload_mb,
        settings.pods,
        settings.partitions,
        machine.cpus,
        machine.load_average_at_start,
        machine.postgres,
        phases.drain.storage.as_str().unwrap_or("?"),
        Broker::describe(settings)
    );
    let _ = writeln!(
        out,
        "service: {} with {}",
        settings.service_bin.display(),
        if settings.service_env.is_empty() {
            "its default settings (only broker, topic, group, database and HTTP port set)"
                .to_owned()
        } else {
            format!(
                "default settings except {}",
                settings.service_env_lines().join(" ")
            )
        }
    );
    let _ = writeln!(
        out,
        "preload (batches of up to {} messages): {:.1} s = {:.0} msg/s",
        settings.preload_batch, preload.seconds, preload.messages_per_s
    );
}

/// One line a path: the service's drain, the write limits, the read limit, the naive service.
fn paths(out: &mut String, settings: &Settings, phases: &Phases) {
    let Phases {
        drain,
        write_limit,
        read_limit,
        naive,
        ..
    } = phases;
    let _ = writeln!(
        out,
        "{:<46} {:>10} {:>7} {:>7} {:>7} {:>9}",
        "path", "rows/s", "×COPY", "×naive", "CPU s", "RSS MiB"
    );
    let row = |out: &mut String, name: &str, rate: f64, cpu: String, rss: String| {
        let _ = writeln!(
            out,
            "{name:<46} {rate:>10.0} {:>7.2} {:>7.1} {cpu:>7} {rss:>9}",
            rate / write_limit.binary,
            rate / naive.rows_per_s
        );
    };
    row(
        out,
        if settings.service_env.is_empty() {
            "service drain, default settings"
        } else {
            "service drain, settings above"
        },
        drain.rows_per_s,
        format!("{:.1}", drain.service_cpu_s),
        format!("{:.1}", drain.peak_rss_mib),
    );
    row(
        out,
        "write limit: COPY csv, one statement",
        write_limit.csv,
        "-".into(),
        "-".into(),
    );
    row(
        out,
        "write limit: COPY binary, one statement",
        write_limit.binary,
        "-".into(),
        "-".into(),
    );
    row(
        out,
        &format!(
            "write limit: COPY binary, {} connections at once",
            write_limit.parallel_connections
        ),
        write_limit.parallel,
        "-".into(),
        "-".into(),
    );
    row(
        out,
        "read limit: rdkafka consumer, reads only",
        read_limit.messages_per_s,
        format!("{:.1}", read_limit.cpu_s),
        "-".into(),
    );
    row(
        out,
        &format!("naive: INSERT per message ({} rows)", naive.rows),
        naive.rows_per_s,
        "-".into(),
        "-".into(),
    );
}

/// Where the drain's CPU went, the latency run, and the row counts of both.
fn details(out: &mut String, settings: &Settings, phases: &Phases) {
    let n = settings.messages;
    let Phases { drain, latency, .. } = phases;
    let during = &drain.cpu_during_drain;
    let _ = writeln!(
        out,
        "drain: first row {:.1} s after start, {} s first→last row; CPU s during it: service {}, postgres {}, broker {}, bench {}, other {}; machine busy {}%",
        drain.first_row_after_s,
        json_text(&drain.first_to_last_s),
        json_text(&during.service_cpu_s),
        json_text(&during.postgres_cpu_s),
        json_text(&during.broker_cpu_s),
        json_text(&during.bench_cpu_s),
        json_text(&during.other_cpu_s),
        json_text(&during.machine_busy_pct)
    );
    let _ = writeln!(
        out,
        "drain flushes: {}; service CPU {:.1} s in all; CPU a row during the drain: service {:.2} µs, broker {:.2} µs, postgres {:.2} µs",
        json_text(&drain.flushes),
        drain.service_cpu_s,
        during.service_cpu_s * 1e6 / n as f64,
        during.broker_cpu_s * 1e6 / n as f64,
        during.postgres_cpu_s * 1e6 / n as f64
    );
    let write_limit = &phases.write_limit;
    let _ = writeln!(
        out,
        "growth: service {:.0} rows/s over the first tenth, {:.0} over the last (×{:.2}); binary COPY of {} rows into an empty table {:.0} rows/s, into one holding {n} {:.0} (×{:.2}); last tenth ÷ COPY into the full table {:.2}",
        drain.first_tenth_rows_per_s,
        drain.last_tenth_rows_per_s,
        drain.last_tenth_rows_per_s / drain.first_tenth_rows_per_s,
        write_limit.growth_rows,
        write_limit.tenth_into_empty,
        write_limit.tenth_into_full,
        write_limit.tenth_into_full / write_limit.tenth_into_empty,
        drain.last_tenth_rows_per_s / write_limit.tenth_into_full,
    );
    let _ = writeln!(
        out,
        "latency @ {} msg/s for {} s (achieved {} msg/s), produce → row visible: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms (poll every {:.1} ms; the stream started once the service was ready, {:.0} ms after it connected, and its first {} s, p99 {:.0} ms, are not counted)",
        settings.latency_rate,
        settings.latency_secs,
        json_text(&latency.achieved_rate),
        latency.p50_ms,
        latency.p90_ms,
        latency.p99_ms,
        latency.max_ms,
        latency.poll_interval_ms,
        latency.ready_after_ms,
        settings.latency_warmup_secs,
        latency.warmup_p99_ms,
    );
    let _ = writeln!(
        out,
        "latency p99 by partition {:?} ms, by second of the stream {:?} ms; produce → broker's acknowledgement p99 by second {:?} ms",
        latency.p99_ms_by_partition, latency.p99_ms_by_second, latency.ack_p99_ms_by_second
    );
    let _ = writeln!(
        out,
        "latency run: service CPU {} s over {} s, peak RSS {} MiB, flushes {}",
        json_text(&latency.service_cpu.service_cpu_s),
        json_text(&latency.service_cpu.wall_s),
        json_text(&latency.peak_rss_mib),
        json_text(&latency.flushes)
    );
    let _ = writeln!(
        out,
        "rows: drain {} for {n} messages ({} duplicates, {} missing); latency run {} for {} ({} duplicates, {} missing, {} restamped; rows ≠ offsets in {} of {} snapshots)",
        drain.rows_stored,
        drain.duplicate_rows,
        drain.missing_rows,
        latency.rows_stored,
        latency.messages,
        latency.duplicate_rows,
        latency.missing_rows,
        latency.restamped,
        latency.consistency_mismatches,
        latency.consistency_checks
    );
}

/// One line a target, with its verdict.
fn verdicts(out: &mut String, targets: &Targets) {
    let _ = writeln!(
        out,
        "{:<28} {:>10} {:>12}  result",
        "target", "value", "goal"
    );
    for (name, target, unit, digits) in [
        ("drain / binary COPY", &targets.drain_vs_copy, "", 2),
        (
            "drain / parallel COPY",
            &targets.drain_vs_parallel_copy,
            "",
            2,
        ),
        ("drain / naive", &targets.drain_vs_naive, "", 1),
        ("latency p99", &targets.latency_p99_ms, " ms", 0),
        ("peak RSS", &targets.peak_rss_mib, " MiB", 1),
        ("metrics lost (both runs)", &targets.lost_metrics, "", 0),
        ("rows stored twice", &targets.duplicate_rows, "", 0),
    ] {
        let _ = writeln!(
            out,
            "{name:<28} {:>10} {:>12}  {}",
            format!("{:.digits$}{unit}", target.value),
            target.target,
            if target.pass { "PASS" } else { "FAIL" }
        );
    }
}

/// Writes the report as pretty JSON to `path`, its keys in alphabetical order.
pub fn write_report(path: &Path, report: &impl Serialize) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    // Through a `Value`, whose maps keep their keys sorted: the same file whatever the order
    // of the fields in the structs.
    let value = serde_json::to_value(report)?;
    std::fs::write(path, serde_json::to_string_pretty(&value)?)
        .with_context(|| format!("writing {}", path.display()))?;
    step(&format!("report written to {}", path.display()));
    Ok(())
}
