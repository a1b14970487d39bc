//! The engine answers the same from per-minute summaries as from every sample: the same
//! queries over the same samples, once from an in-memory storage that hands over samples
//! only, once from one that answers from summaries wherever a [`Need`] allows (with some
//! minutes left unsummarised, as pending minutes are).

use std::sync::atomic::{AtomicUsize, Ordering};

use super::summaries::{Part, summarise};
use super::tests::{LIMITS, Mem, run};
use super::*;
use crate::promql::parse;

/// Answers from summaries of the samples where the need allows, from samples elsewhere;
/// minutes that `raw` names are handed over as samples, as storage does with pending ones.
struct Summaries<'a> {
    mem: &'a Mem,
    raw: fn(i64) -> bool,
    /// Selections answered from summaries, so that a test knows the path was taken.
    summarised: AtomicUsize,
}

impl Storage for Summaries<'_> {
    fn select(
        &self,
        selections: &[Selection],
        _limits: Limits,
    ) -> impl std::future::Future<Output = Result<Vec<Answer>, PromError>> + Send {
        let answers = selections
            .iter()
            .map(|sel| match sel.need.minutes() {
                None => Answer::Samples(self.mem.samples(sel)),
                Some(minutes) => {
                    self.summarised.fetch_add(1, Ordering::Relaxed);
                    let series = self
                        .mem
                        .samples(sel)
                        .into_iter()
                        .map(|s| {
                            let parts: Vec<Part> = summarise(&s.timestamps, &s.values, self.raw)
                                .into_iter()
                                .filter(|p| match p {
                                    Part::Minute { minute_ms, .. } => minutes.contains(*minute_ms),
                                    Part::Sample { .. } => true,
                                })
                                .collect();
                            (s.labels, parts)
                        })
                        .collect();
                    Answer::from_parts(&sel.need, series)
                }
            })
            .collect();
        async move { Ok(answers) }
    }
}

/// Two pods over three hours at irregular intervals, with a gap of twelve minutes, values
/// that make sums round differently, and a series that stops early.
fn data() -> Mem {
    let mut series = Vec::new();
    for (pod, interval_ms, phase_ms) in [("a", 7_000, 0), ("b", 13_000, 2_500), ("c", 60_000, 0)] {
        let mut labels = Labels::new();
        labels.insert("__name__".into(), "m".into());
        labels.insert("pod".into(), pod.into());
        let (mut timestamps, mut values) = (Vec::new(), Vec::new());
        let mut t = phase_ms;
        let mut i = 0u32;
        while t <= 3 * 3_600_000 {
            let gap = (3_000_000..3_720_000).contains(&t);
            let stopped = pod == "c" && t > 5_400_000;
            if !gap && !stopped {
                timestamps.push(t);
                values.push(0.1 * f64::from(i % 17) + 1e-3 * f64::from(i % 5) + 33.3);
            }
            t += interval_ms;
            i += 1;
        }
        series.push(SampleSeries {
            labels,
            timestamps,
            values,
        });
    }
    Mem(series)
}

/// Whether two answers agree: exactly, but sums and means to a relative 1e-12 (summed per
/// minute, then across minutes, their last bits may differ).
fn same(a: &Value, b: &Value) -> bool {
    let close = |x: f64, y: f64| x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs());
    match (a, b) {
        (Value::Vector(a), Value::Vector(b)) => {
            a.len() == b.len()
                && a.iter().zip(b).all(|(x, y)| {
                    x.labels == y.labels
                        && x.points.len() == y.points.len()
                        && x.points.iter().zip(&y.points).all(|p| match p {
                            (Some(x), Some(y)) => close(*x, *y),
                            (None, None) => true,
                            _ => false,
                        })
                })
        }
        (Value::Scalar(a), Value::Scalar(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| close(*x, *y))
        }
        (a, b) => a == b,
    }
}

const QUERIES: &[&str] = &[
    "m",
    "m offset 3m",
    "m offset 90s",
    "m @ 3600",
    "m @ 3630",
    "timestamp(m)",
    "sum_over_time(m[5m])",
    "avg_over_time(m[10m])",
    "count_over_time(m[1m])",
    "min_over_time(m[3m])",
    "max_over_time((m[2m]))",
    "last_over_time(m[5m] offset 2m)",
    "present_over_time(m[1h])",
    "max by (pod) (avg_over_time(m[5m]))",
    "count(m > 34)",
    "topk(1, m)",
    "sum_over_time(m[90s])",
    "rate(m[5m])",
    "avg_over_time(m[5m] @ 7200)",
    "max_over_time(avg_over_time(m[2m])[30m:5m])",
];

#[test]
fn summaries_give_the_answers_of_every_sample() {
    let mem = data();
    let pending: fn(i64) -> bool = |minute| (minute / 60_000) % 7 == 3;
    let summaries = Summaries {
        mem: &mem,
        raw: pending,
        summarised: AtomicUsize::new(0),
    };
    // Whole-minute steps (summaries), half-minute and unaligned ones (samples only).
    let ranges = [
        (600_000, 60_000, 170),
        (900_000, 300_000, 30),
        (600_000, 30_000, 300),
        (601_000, 60_000, 100),
        (7_200_000, 60_000, 1),
    ];
    for query in QUERIES {
        for &(start_ms, step_ms, n) in &ranges {
            let steps = Steps {
                start_ms,
                step_ms,
                n,
                end_ms: start_ms + (n as i64 - 1) * step_ms,
            };
            let expected = run(&mem, query, steps, LIMITS).unwrap();
            let expr = parse(query).unwrap();
            let got = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(evaluate(&summaries, &expr, steps, LIMITS))
                .unwrap();
            assert!(
                same(&expected, &got),
                "{query} at {start_ms}+{step_ms}x{n}:\n{expected:?}\n{got:?}"
            );
        }
    }
    let summarised = summaries.summarised.load(Ordering::Relaxed);
    assert!(
        summarised > 50,
        "only {summarised} selections were summarised"
    );
}
