//! The samples both systems are given: each row one Kafka message for Panopticon and two
//! OpenMetrics samples (cpu, memory) for Prometheus.

use std::fmt::Write as _;

pub const CPU: &str = "pod_cpu_usage_percent";
pub const MEM: &str = "pod_memory_usage_mib";

/// How long the data runs, in seconds from the base.
pub const SPAN_S: i64 = 100 * 60;

/// How a pod reports.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Every 10 s.
    Regular,
    /// At intervals of 3 to 37 s.
    Irregular,
    /// Every 10 s, silent from minute 30 to minute 42: longer than the 5-minute lookback.
    Gap,
    /// Every 10 s from minute 40 on.
    Late,
    /// Every 10 s until minute 60.
    Early,
    /// A counter-like cpu: rising by a varying step, reset to a small value at minute 50.
    Counter,
    /// Every 15 s; cpu 0 for its first 20 minutes, memory 0 on every fifth sample.
    Zero,
}

/// Pod, service, namespace, node, kind.
const PODS: [(&str, &str, &str, &str, Kind); 12] = [
    ("pod-1", "alpha", "one", "n1", Kind::Regular),
    ("pod-2", "alpha", "one", "n2", Kind::Irregular),
    ("pod-3", "alpha", "two", "n3", Kind::Counter),
    ("pod-4", "alpha", "two", "n1", Kind::Regular),
    ("pod-5", "beta", "one", "n2", Kind::Gap),
    ("pod-6", "beta", "one", "n3", Kind::Late),
    ("pod-7", "beta", "two", "n1", Kind::Irregular),
    ("pod-8", "beta", "two", "n2", Kind::Zero),
    ("pod-9", "gamma", "one", "n3", Kind::Early),
    ("pod-10", "gamma", "one", "n1", Kind::Regular),
    ("pod-11", "gamma", "two", "n2", Kind::Counter),
    ("pod-12", "gamma", "two", "n3", Kind::Irregular),
];

/// One row of `system_metrics`.
pub struct Row {
    pub t_ms: i64,
    pub service: &'static str,
    pub pod: &'static str,
    pub namespace: &'static str,
    pub node: &'static str,
    pub cpu: f64,
    pub memory: f64,
}

/// Every row, from `base_ms` (a whole second) on. Each pod's samples lie at whole seconds plus
/// 137 + 10 × index ms, so never on a whole second: see the file's top comment.
pub fn rows(base_ms: i64) -> Vec<Row> {
    let mut rows = Vec::new();
    for (p, &(pod, service, namespace, node, kind)) in PODS.iter().enumerate() {
        let p = p as i64;
        let fraction_ms = 137 + 10 * p;
        // A small deterministic generator for the irregular intervals and counter steps.
        let mut state = 0x2545_f491_4f6c_dd1d_u64 ^ (p as u64 + 1);
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut counter = 1.0 + p as f64 * 0.01;
        let mut s = p % 7;
        let mut k = 0i64;
        while s < SPAN_S {
            let silent = match kind {
                Kind::Gap => (30 * 60..42 * 60).contains(&s),
                Kind::Late => s < 40 * 60,
                Kind::Early => s > 60 * 60,
                _ => false,
            };
            if !silent {
                // The pod's index in the hundredths (tenths for memory) and the sample's in
                // smaller digits keep any two pods' values apart, so that topk and bottomk
                // meet no ties, whose order Prometheus leaves open.
                let wave = ((k * 37 + p * 53) % 97) as f64 + p as f64 * 0.01 + k as f64 * 1e-5;
                let cpu = match kind {
                    Kind::Counter => {
                        if (50 * 60..50 * 60 + 10).contains(&s) {
                            counter = 0.5 + p as f64 * 0.01;
                        }
                        counter += (next() % 20) as f64 * 0.01;
                        counter
                    }
                    Kind::Zero if s < 20 * 60 => 0.0,
                    _ => wave.min(99.99),
                };
                let memory = if kind == Kind::Zero && k % 5 == 0 {
                    0.0
                } else {
                    100.0 + ((k * 11 + p * 29) % 61) as f64 * 8.0 + p as f64 * 0.1 + k as f64 * 1e-5
                };
                rows.push(Row {
                    t_ms: base_ms + s * 1000 + fraction_ms,
                    service,
                    pod,
                    namespace,
                    node,
                    cpu,
                    memory,
                });
                k += 1;
            }
            s += match kind {
                Kind::Irregular => 3 + (next() % 35) as i64,
                Kind::Zero => 15,
                _ => 10,
            };
        }
    }
    rows
}

/// The row as the message users send to `metrics.system`.
pub fn message(row: &Row) -> Vec<u8> {
    format!(
        r#"{{"timestamp":{},"service":"{}","podName":"{}","namespace":"{}","nodeName":"{}","cpu":{:?},"memory":{:?}}}"#,
        row.t_ms, row.service, row.pod, row.namespace, row.node, row.cpu, row.memory
    )
    .into_bytes()
}

/// The rows as OpenMetrics: one family after the other, each series' samples in time order
/// (as `rows` makes them), timestamps in seconds with their milliseconds.
pub fn openmetrics(rows: &[Row]) -> String {
    let mut text = String::new();
    for (metric, value) in [
        (CPU, (|r: &Row| r.cpu) as fn(&Row) -> f64),
        (MEM, |r: &Row| r.memory),
    ] {
        let _ = writeln!(text, "# TYPE {metric} gauge");
        for row in rows {
            let _ = writeln!(
                text,
                r#"{metric}{{job="panopticon",namespace="{}",node="{}",pod="{}",service="{}"}} {:?} {}.{:03}"#,
                row.namespace,
                row.node,
                row.pod,
                row.service,
                value(row),
                row.t_ms.div_euclid(1000),
                row.t_ms.rem_euclid(1000)
            );
        }
    }
    text.push_str("# EOF\n");
    text
}
