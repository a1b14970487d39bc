//! `/proc`: CPU time, memory, threads and descriptors of processes, and the machine's CPU.

use std::process::Command;
use std::time::Instant;

use serde::Serialize;

use crate::round3;

pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The machine's load average over 1, 5 and 15 minutes.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `(comm, utime + stime)` of a process, in clock ticks.
fn proc_cpu(pid: u32) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    // Fields after the command: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

pub fn proc_ticks(pid: u32) -> u64 {
    proc_cpu(pid).map(|(_, t)| t).unwrap_or(0)
}

/// The number of a line of `/proc/PID/status`: KiB for the `Vm…` lines, a count for `Threads:`.
pub fn proc_status_number(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A `Vm…` line of `/proc/PID/status` (`VmRSS:`, `VmHWM:`) in MiB, 0 where it cannot be read.
pub fn memory_mib(pid: u32, key: &str) -> f64 {
    proc_status_number(pid, key).unwrap_or(0) as f64 / 1024.0
}

/// Descriptors the process has open.
pub fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// CPU ticks of every PostgreSQL server process (backends, WAL writer, checkpointer, …).
fn postgres_ticks() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(proc_cpu)
        .filter(|(comm, _)| comm == "postgres")
        .map(|(_, t)| t)
        .sum()
}

/// `(busy, total)` ticks of all CPUs.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// CPU of everything involved, read at one moment.
#[derive(Clone, Copy)]
pub struct CpuSnapshot {
    pub at: Instant,
    /// Ticks of the service since it started.
    pub service: u64,
    postgres: u64,
    broker: u64,
    bench: u64,
    machine_busy: u64,
    machine_total: u64,
}

/// CPU seconds spent between two [`CpuSnapshot`]s, by whom, rounded to milliseconds.
#[derive(Clone, Copy, Serialize)]
pub struct CpuSpent {
    pub wall_s: f64,
    pub service_cpu_s: f64,
    pub postgres_cpu_s: f64,
    pub broker_cpu_s: f64,
    pub bench_cpu_s: f64,
    pub other_cpu_s: f64,
    pub machine_busy_pct: f64,
}

impl CpuSnapshot {
    pub fn take(service: u32, broker: u32) -> CpuSnapshot {
        let (machine_busy, machine_total) = machine_ticks();
        CpuSnapshot {
            at: Instant::now(),
            service: proc_ticks(service),
            postgres: postgres_ticks(),
            broker: proc_ticks(broker),
            bench: proc_ticks(std::process::id()),
            machine_busy,
            machine_total,
        }
    }

    /// CPU seconds spent between `self` and `later`, by whom.
    pub fn until(&self, later: &CpuSnapshot, tck: f64) -> CpuSpent {
        let s = |a: u64, b: u64| round3(b.saturating_sub(a) as f64 / tck);
        let wall = later.at.duration_since(self.at).as_secs_f64();
        let busy = s(self.machine_busy, later.machine_busy);
        let total = s(self.machine_total, later.machine_total);
        let service = s(self.service, later.service);
        let postgres = s(self.postgres, later.postgres);
        let broker = s(self.broker, later.broker);
        let bench = s(self.bench, later.bench);
        CpuSpent {
            wall_s: round3(wall),
            service_cpu_s: service,
            postgres_cpu_s: postgres,
            broker_cpu_s: broker,
            bench_cpu_s: bench,
            other_cpu_s: round3((busy - service - postgres - broker - bench).max(0.0)),
            machine_busy_pct: if total > 0.0 {
                round3(100.0 * busy / total)
            } else {
                0.0
            },
        }
    }
}
