//! Functions of a range vector, computed per window: rates, deltas, regression and the
//! `*_over_time` family.

use super::super::selectors::Window;
use super::super::stats;
use super::super::summaries::Summarised;
use super::Kind;

macro_rules! over_time {
    ($f:expr) => {
        over_time!($f, None)
    };
    ($f:expr, $summary:expr) => {
        Kind::Range {
            f: |w, _| (!w.values.is_empty()).then(|| $f(w.values)),
            keep_name: false,
            summary: $summary,
        }
    };
}

const fn drop_name(f: fn(&Window, f64) -> Option<f64>) -> Kind {
    Kind::Range {
        f,
        keep_name: false,
        summary: None,
    }
}

pub(super) const FUNCTIONS: &[(&str, Kind)] = &[
    ("rate", drop_name(|w, _| extrapolated(w, true, true))),
    ("increase", drop_name(|w, _| extrapolated(w, true, false))),
    ("delta", drop_name(|w, _| extrapolated(w, false, false))),
    ("irate", drop_name(|w, _| instant_delta(w, true))),
    ("idelta", drop_name(|w, _| instant_delta(w, false))),
    ("deriv", drop_name(deriv)),
    ("predict_linear", drop_name(predict_linear)),
    ("resets", drop_name(resets)),
    ("changes", drop_name(changes)),
    (
        "avg_over_time",
        over_time!(stats::mean, Some(Summarised::Avg)),
    ),
    (
        "sum_over_time",
        over_time!(stats::sum, Some(Summarised::Sum)),
    ),
    (
        "min_over_time",
        over_time!(stats::min, Some(Summarised::Min)),
    ),
    (
        "max_over_time",
        over_time!(stats::max, Some(Summarised::Max)),
    ),
    (
        "count_over_time",
        over_time!(|v: &[f64]| v.len() as f64, Some(Summarised::Count)),
    ),
    (
        "stddev_over_time",
        over_time!(|v| stats::variance(v).sqrt()),
    ),
    ("stdvar_over_time", over_time!(stats::variance)),
    (
        "present_over_time",
        over_time!(|_| 1.0, Some(Summarised::Present)),
    ),
    ("quantile_over_time", drop_name(quantile_over_time)),
    (
        "last_over_time",
        Kind::Range {
            f: |w, _| w.values.last().copied(),
            keep_name: true,
            summary: Some(Summarised::Last),
        },
    ),
    (
        "first_over_time",
        Kind::Range {
            f: |w, _| w.values.first().copied(),
            keep_name: true,
            summary: Some(Summarised::First),
        },
    ),
];

/// `rate`, `increase` and `delta`: the change over the window, corrected for counter resets
/// and extrapolated towards the window's edges as Prometheus does (all the way when the first
/// or last sample lies within 1.1 average intervals of the edge, half an interval otherwise,
/// and never below a counter's zero).
fn extrapolated(w: &Window, counter: bool, per_second: bool) -> Option<f64> {
    let (ts, vs) = (w.timestamps, w.values);
    if vs.len() < 2 {
        return None;
    }
    let (first_t, last_t) = (ts[0], ts[ts.len() - 1]);
    let mut result = vs[vs.len() - 1] - vs[0];
    if counter {
        result += vs
            .windows(2)
            .filter(|p| p[1] < p[0])
            .map(|p| p[0])
            .sum::<f64>();
    }
    let mut to_start = (first_t - w.start_ms) as f64 / 1000.0;
    let mut to_end = (w.end_ms - last_t) as f64 / 1000.0;
    let sampled = (last_t - first_t) as f64 / 1000.0;
    let average = sampled / (vs.len() - 1) as f64;
    let threshold = average * 1.1;
    if to_start >= threshold {
        to_start = average / 2.0;
    }
    if counter {
        let to_zero = if result > 0.0 && vs[0] >= 0.0 {
            sampled * (vs[0] / result)
        } else {
            to_start
        };
        to_start = to_start.min(to_zero);
    }
    if to_end >= threshold {
        to_end = average / 2.0;
    }
    let mut factor = (sampled + to_start + to_end) / sampled;
    if per_second {
        factor /= w.range_ms as f64 / 1000.0;
    }
    Some(result * factor)
}

/// `irate` and `idelta`: from the last two samples only.
fn instant_delta(w: &Window, rate: bool) -> Option<f64> {
    let n = w.values.len();
    if n < 2 {
        return None;
    }
    let (prev, last) = (w.values[n - 2], w.values[n - 1]);
    if !rate {
        return Some(last - prev);
    }
    let interval = w.timestamps[n - 1] - w.timestamps[n - 2];
    if interval == 0 {
        return None;
    }
    let change = if last < prev { last } else { last - prev };
    Some(change / (interval as f64 / 1000.0))
}

/// The least-squares slope and intercept of the samples, time in seconds from
/// `intercept_ms`.
fn regression(ts: &[i64], vs: &[f64], intercept_ms: i64) -> (f64, f64) {
    let constant = vs.iter().all(|&v| v == vs[0]);
    if constant {
        return if vs[0].is_infinite() {
            (f64::NAN, f64::NAN)
        } else {
            (0.0, vs[0])
        };
    }
    let n = vs.len() as f64;
    let (mut sx, mut cx, mut sy, mut cy) = (0.0, 0.0, 0.0, 0.0);
    let (mut sxy, mut cxy, mut sx2, mut cx2) = (0.0, 0.0, 0.0, 0.0);
    for (&t, &v) in ts.iter().zip(vs) {
        let x = (t - intercept_ms) as f64 / 1000.0;
        (sx, cx) = stats::kahan_inc(x, sx, cx);
        (sy, cy) = stats::kahan_inc(v, sy, cy);
        (sxy, cxy) = stats::kahan_inc(x * v, sxy, cxy);
        (sx2, cx2) = stats::kahan_inc(x * x, sx2, cx2);
    }
    let (sx, sy, sxy, sx2) = (sx + cx, sy + cy, sxy + cxy, sx2 + cx2);
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    (slope, sy / n - slope * sx / n)
}

fn deriv(w: &Window, _: f64) -> Option<f64> {
    (w.values.len() >= 2).then(|| regression(w.timestamps, w.values, w.timestamps[0]).0)
}

/// The value the regression line reaches `seconds` after the evaluation time.
fn predict_linear(w: &Window, seconds: f64) -> Option<f64> {
    (w.values.len() >= 2).then(|| {
        let (slope, intercept) = regression(w.timestamps, w.values, w.eval_ms);
        slope * seconds + intercept
    })
}

fn resets(w: &Window, _: f64) -> Option<f64> {
    (!w.values.is_empty()).then(|| w.values.windows(2).filter(|p| p[1] < p[0]).count() as f64)
}

fn changes(w: &Window, _: f64) -> Option<f64> {
    let changed = |p: &&[f64]| !(p[0] == p[1] || (p[0].is_nan() && p[1].is_nan()));
    (!w.values.is_empty()).then(|| w.values.windows(2).filter(changed).count() as f64)
}

fn quantile_over_time(w: &Window, q: f64) -> Option<f64> {
    (!w.values.is_empty()).then(|| stats::quantile(q, &mut w.values.to_vec()))
}
