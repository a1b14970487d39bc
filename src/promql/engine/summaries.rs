//! What a selection's consumer needs ([`Need`]), and its answer from per-minute summaries.
//!
//! A summary covers the right-closed minute `(m - 60 s, m]`. When every step reads at a whole
//! minute and a window (or the lookback) is a whole number of minutes, those minutes tile it
//! exactly: storage may then hand over, per series, one [`Part::Minute`] per minute in place
//! of its samples, and [`Part::Sample`]s for the minutes whose summary is not exact (not made
//! yet, or made before rows were added). [`latest`] and [`windows`] turn these parts into
//! what the consumer would have computed from every sample:
//! - an instant selector gets, per step, the newest sample within the lookback, which is the
//!   last of the newest non-empty minute in it; handed over as the samples some step picks,
//!   the engine's lookback then finds the same ones;
//! - a `*_over_time` function gets, per step, the [`Aggregates`] of its window.
//!
//! Exactness: counts, minima, maxima, first and last values are the same as from every
//! sample (values are finite: the writer refuses NaN and infinities). Sums are the
//! compensated (Kahan) sum of the minutes' sums, where Prometheus compensates over every
//! sample: the two may differ in the last bits of the result (a relative error near 1e-16).

use super::stats::kahan_inc;
use super::{Labels, SampleSeries};
use crate::promql::LOOKBACK_MS;

/// A summary's minute, as the summarizer makes it (one definition for writer and reader).
pub(crate) use crate::db::summaries::{MINUTE_MS, minute_of};

/// A function of a window that the window's per-minute summaries give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Summarised {
    Sum,
    Count,
    Avg,
    Min,
    Max,
    Last,
    First,
    Present,
}

impl Summarised {
    /// The function's value for a window of `a`, as Prometheus computes it from the samples.
    pub(crate) fn value(self, a: &Aggregates) -> f64 {
        match self {
            Summarised::Sum => a.sum + a.c,
            Summarised::Count => a.count,
            // Prometheus switches to an incremental mean only when the sum overflows, which
            // finite samples of a pod's CPU and memory do not reach.
            Summarised::Avg => a.sum / a.count + a.c / a.count,
            Summarised::Min => a.min,
            Summarised::Max => a.max,
            Summarised::Last => a.last,
            Summarised::First => a.first,
            Summarised::Present => 1.0,
        }
    }
}

/// What the consumer of a selection does with its samples.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Need {
    /// Anything: every sample is handed over.
    Samples,
    /// An instant lookup: the newest sample in `(r - lookback, r]` at each read time `r`
    /// (ascending).
    Latest { refs: Vec<i64> },
    /// `function` over `(r - range_ms, r]` at each read time `r` (ascending).
    Window {
        refs: Vec<i64>,
        range_ms: i64,
        function: Summarised,
    },
}

impl Need {
    /// The minutes the need reads, if whole minutes answer it exactly: every read time a
    /// whole minute, evenly spaced, and the window a whole number of minutes.
    pub(crate) fn minutes(&self) -> Option<Minutes> {
        let (refs, width) = match self {
            Need::Samples => return None,
            Need::Latest { refs } => (refs, LOOKBACK_MS),
            Need::Window { refs, range_ms, .. } => (refs, *range_ms),
        };
        let (&first, &last) = (refs.first()?, refs.last()?);
        let spacing = if refs.len() > 1 { refs[1] - refs[0] } else { 0 };
        let even = refs.windows(2).all(|w| w[1] - w[0] == spacing);
        let whole = |ms: i64| ms % MINUTE_MS == 0;
        let step = if spacing == 0 { width } else { spacing };
        let fits = first.checked_sub(width).is_some() && step > 0 && width > 0;
        (even && fits && whole(first) && whole(step) && whole(width)).then_some(Minutes {
            first,
            last,
            step,
            width,
        })
    }
}

/// A set of minutes: the minutes `m` with `r - width < m <= r` for some read time
/// `r = first + k * step` up to `last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Minutes {
    pub first: i64,
    pub last: i64,
    pub step: i64,
    pub width: i64,
}

impl Minutes {
    /// The newest minute before the set (excluded).
    pub(crate) fn after_ms(&self) -> i64 {
        self.first - self.width
    }

    /// Whether the set is every minute of `(from_ms, last]`.
    pub(crate) fn contiguous(&self) -> bool {
        self.width >= self.step
    }

    pub(crate) fn contains(&self, minute_ms: i64) -> bool {
        minute_ms > self.after_ms()
            && minute_ms <= self.last
            && (self.contiguous() || (self.first - minute_ms).rem_euclid(self.step) < self.width)
    }
}

/// A minute's summary, of one metric of one series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Summary {
    pub count: f64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub first: f64,
    pub last: f64,
    pub last_ms: i64,
}

/// A piece of a series in time order: a summarised minute, or a sample of a minute that is
/// not summarised exactly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Part {
    Minute { minute_ms: i64, summary: Summary },
    Sample { t: i64, v: f64 },
}

impl Part {
    /// The time the part sorts and is windowed by: a minute lies in a window ending on a
    /// whole minute if and only if its own end does.
    pub(crate) fn key(&self) -> i64 {
        match self {
            Part::Minute { minute_ms, .. } => *minute_ms,
            Part::Sample { t, .. } => *t,
        }
    }

    /// The newest sample of the part.
    fn last(&self) -> (i64, f64) {
        match self {
            Part::Minute { summary, .. } => (summary.last_ms, summary.last),
            Part::Sample { t, v } => (*t, *v),
        }
    }
}

/// What a window's samples add up to, folded in time order as Prometheus folds samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Aggregates {
    pub count: f64,
    /// The compensated sum and its compensation.
    pub sum: f64,
    pub c: f64,
    pub min: f64,
    pub max: f64,
    pub first: f64,
    pub last: f64,
}

impl Aggregates {
    fn of(parts: &[Part]) -> Option<Aggregates> {
        let mut a = Aggregates {
            count: 0.0,
            sum: 0.0,
            c: 0.0,
            min: f64::NAN,
            max: f64::NAN,
            first: f64::NAN,
            last: f64::NAN,
        };
        for part in parts {
            let (count, sum, min, max, first, last) = match part {
                Part::Minute { summary: s, .. } => (s.count, s.sum, s.min, s.max, s.first, s.last),
                Part::Sample { v, .. } => (1.0, *v, *v, *v, *v, *v),
            };
            if a.count == 0.0 {
                a.first = first;
            }
            a.count += count;
            (a.sum, a.c) = kahan_inc(sum, a.sum, a.c);
            if min < a.min || a.min.is_nan() {
                a.min = min;
            }
            if max > a.max || a.max.is_nan() {
                a.max = max;
            }
            a.last = last;
        }
        (a.count > 0.0).then_some(a)
    }
}

/// One series' aggregates at each step.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WindowSeries {
    pub labels: Labels,
    pub windows: Vec<Option<Aggregates>>,
}

/// What storage answers one selection with.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Answer {
    /// Samples of each series: all of them in the selection's range, or, for a
    /// [`Need::Latest`], at least those some step reads.
    Samples(Vec<SampleSeries>),
    /// The aggregates of each step's window, for a [`Need::Window`].
    Windows(Vec<WindowSeries>),
}

impl Answer {
    /// The answer to `need` from each series' parts (in time order); series without a value
    /// at any step are left out, the rest sorted by labels.
    pub(crate) fn from_parts(need: &Need, series: Vec<(Labels, Vec<Part>)>) -> Answer {
        let mut answer = match need {
            Need::Window { refs, range_ms, .. } => Answer::Windows(
                series
                    .into_iter()
                    .filter_map(|(labels, parts)| windows(refs, *range_ms, labels, &parts))
                    .collect(),
            ),
            Need::Latest { refs } => Answer::Samples(
                series
                    .into_iter()
                    .filter_map(|(labels, parts)| latest(refs, labels, &parts))
                    .collect(),
            ),
            Need::Samples => Answer::Samples(
                series
                    .into_iter()
                    .filter_map(|(labels, parts)| samples(labels, &parts))
                    .collect(),
            ),
        };
        match &mut answer {
            Answer::Samples(s) => s.sort_by(|a, b| a.labels.cmp(&b.labels)),
            Answer::Windows(w) => w.sort_by(|a, b| a.labels.cmp(&b.labels)),
        }
        answer
    }

    /// How many values the answer holds.
    pub(crate) fn len(&self) -> usize {
        match self {
            Answer::Samples(s) => s.iter().map(|s| s.timestamps.len()).sum(),
            Answer::Windows(w) => w.iter().map(|w| w.windows.len()).sum(),
        }
    }
}

/// The samples among the parts, for a consumer that needs every one (storage hands over no
/// minutes then).
fn samples(labels: Labels, parts: &[Part]) -> Option<SampleSeries> {
    let (timestamps, values) = parts
        .iter()
        .filter_map(|p| match p {
            Part::Sample { t, v } => Some((*t, *v)),
            Part::Minute { .. } => None,
        })
        .unzip();
    let series = SampleSeries {
        labels,
        timestamps,
        values,
    };
    (!series.timestamps.is_empty()).then_some(series)
}

/// The samples the steps at `refs` pick: at each, the newest within the lookback.
pub(crate) fn latest(refs: &[i64], labels: Labels, parts: &[Part]) -> Option<SampleSeries> {
    let mut series = SampleSeries {
        labels,
        timestamps: Vec::new(),
        values: Vec::new(),
    };
    let (mut next, mut picked) = (0, usize::MAX);
    for &r in refs {
        while next < parts.len() && parts[next].key() <= r {
            next += 1;
        }
        if next > 0 && next - 1 != picked && parts[next - 1].key() > r - LOOKBACK_MS {
            picked = next - 1;
            let (t, v) = parts[picked].last();
            series.timestamps.push(t);
            series.values.push(v);
        }
    }
    (!series.timestamps.is_empty()).then_some(series)
}

/// The aggregates of each window `(r - range_ms, r]`.
pub(crate) fn windows(
    refs: &[i64],
    range_ms: i64,
    labels: Labels,
    parts: &[Part],
) -> Option<WindowSeries> {
    let (mut lo, mut hi) = (0, 0);
    let windows: Vec<Option<Aggregates>> = refs
        .iter()
        .map(|&r| {
            while hi < parts.len() && parts[hi].key() <= r {
                hi += 1;
            }
            while lo < hi && parts[lo].key() <= r - range_ms {
                lo += 1;
            }
            Aggregates::of(&parts[lo.min(hi)..hi])
        })
        .collect();
    windows
        .iter()
        .any(Option::is_some)
        .then_some(WindowSeries { labels, windows })
}

/// Each minute of a series' samples as one summary, but the minutes `raw` names, whose
/// samples stay: what a summarizer makes of stored samples, for tests.
#[cfg(test)]
pub(crate) fn summarise(
    timestamps: &[i64],
    values: &[f64],
    raw: impl Fn(i64) -> bool,
) -> Vec<Part> {
    let mut parts: Vec<Part> = Vec::new();
    for (&t, &v) in timestamps.iter().zip(values) {
        let minute_ms = minute_of(t);
        if raw(minute_ms) {
            parts.push(Part::Sample { t, v });
            continue;
        }
        match parts.last_mut() {
            Some(Part::Minute {
                minute_ms: m,
                summary: s,
            }) if *m == minute_ms => {
                s.count += 1.0;
                s.sum += v;
                s.min = s.min.min(v);
                s.max = s.max.max(v);
                s.last = v;
                s.last_ms = t;
            }
            _ => parts.push(Part::Minute {
                minute_ms,
                summary: Summary {
                    count: 1.0,
                    sum: v,
                    min: v,
                    max: v,
                    first: v,
                    last: v,
                    last_ms: t,
                },
            }),
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_minutes_are_summarised() {
        let latest = |refs: Vec<i64>| Need::Latest { refs }.minutes();
        assert_eq!(
            latest(vec![600_000, 900_000]),
            Some(Minutes {
                first: 600_000,
                last: 900_000,
                step: 300_000,
                width: 300_000
            })
        );
        assert_eq!(latest(vec![600_000, 630_000]), None, "half-minute step");
        assert_eq!(latest(vec![600_001]), None, "unaligned");
        assert_eq!(latest(vec![60_000, 120_000, 240_000]), None, "uneven");
        assert!(latest(vec![60_000, 60_000]).is_some(), "@ fixes one time");
        let window = |range_ms| {
            Need::Window {
                refs: vec![600_000],
                range_ms,
                function: Summarised::Sum,
            }
            .minutes()
        };
        assert!(window(120_000).is_some());
        assert_eq!(window(90_000), None);
        assert_eq!(Need::Samples.minutes(), None);
    }

    #[test]
    fn sparse_minutes_are_those_of_some_window() {
        let m = Minutes {
            first: 600_000,
            last: 1_200_000,
            step: 300_000,
            width: 120_000,
        };
        let inside: Vec<i64> = (0..30)
            .map(|i| i * MINUTE_MS)
            .filter(|&x| m.contains(x))
            .collect();
        assert_eq!(
            inside,
            [540_000, 600_000, 840_000, 900_000, 1_140_000, 1_200_000]
        );
    }
}
