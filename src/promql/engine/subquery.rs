//! Subqueries (`expr[5m:1m]`): the inner expression is evaluated at steps of its own,
//! aligned to multiples of its step, and its values become the samples of a range argument.

use promql_parser::parser::SubqueryExpr;

use super::selectors::{RangeArg, checked_range, evals, offset_ms, refs};
use super::{Ctx, SampleSeries};
use crate::promql::{Labels, Limits, PromError, Steps, Value};

/// The step of a subquery that names none: Prometheus's default evaluation interval.
pub(super) const DEFAULT_STEP_MS: i64 = 60_000;

/// The steps the inner expression of `sq` is evaluated at when the subquery is read over
/// `steps`: every multiple of its step after the earliest window's left edge, up to the
/// latest window's right edge. `n` is 0 when no multiple falls inside.
pub(super) fn inner_steps(
    sq: &SubqueryExpr,
    steps: Steps,
    query: Steps,
    limits: Limits,
) -> Result<Steps, PromError> {
    let range = checked_range(sq.range, limits)?;
    let step = match sq.step {
        Some(d) if !d.is_zero() => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        _ => DEFAULT_STEP_MS,
    };
    let refs = refs(steps, &sq.at, offset_ms(&sq.offset)?, query);
    let (first, last) = (refs[0], refs[refs.len() - 1]);
    let left = first.saturating_sub(range);
    let mut start = left.div_euclid(step) * step;
    if start <= left {
        start += step;
    }
    let n = if last < start {
        0
    } else {
        usize::try_from((last - start) / step + 1).unwrap_or(usize::MAX)
    };
    if n > limits.max_samples {
        return Err(super::too_many_samples(limits));
    }
    Ok(Steps {
        start_ms: start,
        step_ms: step,
        n,
        end_ms: start + (n as i64 - 1).max(0) * step,
    })
}

impl Ctx {
    /// Evaluates a subquery into a range argument for the steps `steps`.
    pub(super) fn subquery(
        &mut self,
        sq: &SubqueryExpr,
        steps: Steps,
    ) -> Result<RangeArg, PromError> {
        let inner = inner_steps(sq, steps, self.query, self.limits)?;
        let offset = offset_ms(&sq.offset)?;
        let mut arg = RangeArg {
            series: Vec::new(),
            range_ms: checked_range(sq.range, self.limits)?,
            refs: refs(steps, &sq.at, offset, self.query),
            evals: evals(steps, &sq.at, self.query),
        };
        if inner.n == 0 {
            return Ok(arg);
        }
        arg.series = match self.eval(&sq.expr, inner)? {
            Value::Vector(series) => series
                .into_iter()
                .map(|s| samples(s.labels, &s.points, inner))
                .collect(),
            Value::Scalar(v) => {
                let points: Vec<Option<f64>> = v.into_iter().map(Some).collect();
                vec![samples(Labels::new(), &points, inner)]
            }
            _ => {
                return Err(PromError::BadData(
                    "a subquery needs a scalar or an instant vector".into(),
                ));
            }
        };
        let held: usize = arg.series.iter().map(|s| s.timestamps.len()).sum();
        self.hold(held)?;
        Ok(arg)
    }
}

/// The points of a series over `steps` as samples at the step times.
fn samples(labels: Labels, points: &[Option<f64>], steps: Steps) -> SampleSeries {
    let (timestamps, values) = points
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.map(|v| (steps.time(i), v)))
        .unzip();
    SampleSeries {
        labels,
        timestamps,
        values,
    }
}
