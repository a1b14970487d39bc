//! Selectors: which samples each one needs (the plan handed to storage), and how they become
//! values at the steps: the lookback of an instant selector, the window of a range selector.

use std::time::UNIX_EPOCH;

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{AtModifier, Expr, MatrixSelector, Offset, VectorSelector};

use super::summaries::{Answer, Need, Summarised, WindowSeries};
use super::{Ctx, SampleSeries, Selection, functions, subquery};
use crate::promql::{LOOKBACK_MS, Limits, NAME_LABEL, PromError, Series, Steps};

/// Every selector of a query with the span it reads, and the key its samples go by.
pub(super) struct Plan {
    pub(crate) selections: Vec<Selection>,
    pub(crate) keys: Vec<usize>,
}

/// Lists the selections `expr` needs when evaluated over `steps`.
pub(super) fn collect(expr: &Expr, steps: Steps, limits: Limits) -> Result<Plan, PromError> {
    let mut plan = Plan {
        selections: Vec::new(),
        keys: Vec::new(),
    };
    walk(expr, steps, steps, limits, &mut plan)?;
    Ok(plan)
}

fn walk(
    expr: &Expr,
    steps: Steps,
    query: Steps,
    limits: Limits,
    plan: &mut Plan,
) -> Result<(), PromError> {
    match expr {
        Expr::VectorSelector(vs) => push(vs, LOOKBACK_MS, Use::Latest, steps, query, plan)?,
        Expr::MatrixSelector(ms) => push(
            &ms.vs,
            range_ms(ms, limits)?,
            Use::Samples,
            steps,
            query,
            plan,
        )?,
        Expr::Subquery(sq) => {
            let inner = subquery::inner_steps(sq, steps, query, limits)?;
            if inner.n > 0 {
                walk(&sq.expr, inner, query, limits, plan)?;
            }
        }
        Expr::Paren(p) => walk(&p.expr, steps, query, limits, plan)?,
        Expr::Unary(u) => walk(&u.expr, steps, query, limits, plan)?,
        Expr::Aggregate(a) => {
            if let Some(param) = &a.param {
                walk(param, steps, query, limits, plan)?;
            }
            walk(&a.expr, steps, query, limits, plan)?;
        }
        Expr::Binary(b) => {
            walk(&b.lhs, steps, query, limits, plan)?;
            walk(&b.rhs, steps, query, limits, plan)?;
        }
        Expr::Call(call) => {
            // A window function that summaries give, of a range selector, says so: storage
            // may then answer with each window's aggregates.
            let summarised = functions::summarised(call.func.name);
            for arg in &call.args.args {
                match (summarised, unparen(arg)) {
                    (Some(function), Expr::MatrixSelector(ms)) => {
                        let range = range_ms(ms, limits)?;
                        push(&ms.vs, range, Use::Window(function), steps, query, plan)?
                    }
                    _ => walk(arg, steps, query, limits, plan)?,
                }
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
    Ok(())
}

/// How a selector's samples are used.
#[derive(Clone, Copy)]
enum Use {
    Samples,
    Latest,
    Window(Summarised),
}

fn unparen(expr: &Expr) -> &Expr {
    match expr {
        Expr::Paren(p) => unparen(&p.expr),
        other => other,
    }
}

fn push(
    vs: &VectorSelector,
    window_ms: i64,
    consumer: Use,
    steps: Steps,
    query: Steps,
    plan: &mut Plan,
) -> Result<(), PromError> {
    let offset = offset_ms(&vs.offset)?;
    let refs = refs(steps, &vs.at, offset, query);
    let (first, last) = (refs[0], refs[refs.len() - 1]);
    // Read times ascend with the steps (an `@` makes them all one time).
    let need = match consumer {
        Use::Samples => Need::Samples,
        Use::Latest => Need::Latest { refs },
        Use::Window(function) => Need::Window {
            refs,
            range_ms: window_ms,
            function,
        },
    };
    plan.selections.push(Selection {
        matchers: matchers(vs),
        start_ms: first.saturating_sub(window_ms),
        end_ms: last,
        need,
    });
    plan.keys.push(key(vs));
    Ok(())
}

/// The selector's matchers, with its metric name as a `__name__` matcher.
pub(crate) fn matchers(vs: &VectorSelector) -> promql_parser::label::Matchers {
    let mut matchers = vs.matchers.clone();
    if let Some(name) = &vs.name {
        let named = matchers
            .matchers
            .iter()
            .any(|m| m.name == NAME_LABEL && m.op == MatchOp::Equal && &m.value == name);
        if !named {
            let m = Matcher::new(MatchOp::Equal, NAME_LABEL, name);
            matchers.matchers.push(m.clone());
            matchers
                .or_matchers
                .iter_mut()
                .for_each(|g| g.push(m.clone()));
        }
    }
    matchers
}

/// The key a selector's samples go by: its address in the expression.
fn key(vs: &VectorSelector) -> usize {
    vs as *const VectorSelector as usize
}

/// The width of a range selector, within `max_range_ms`.
pub(super) fn range_ms(ms: &MatrixSelector, limits: Limits) -> Result<i64, PromError> {
    checked_range(ms.range, limits)
}

pub(super) fn checked_range(range: std::time::Duration, limits: Limits) -> Result<i64, PromError> {
    let range_ms = i64::try_from(range.as_millis()).unwrap_or(i64::MAX);
    if range_ms <= 0 {
        return Err(PromError::BadData("a range must be positive".into()));
    }
    if range_ms > limits.max_range_ms {
        return Err(PromError::BadData(format!(
            "the range [{}] is wider than API_MAX_RANGE_HOURS ({} h)",
            promql_parser::util::display_duration(&range),
            limits.max_range_ms / 3_600_000
        )));
    }
    Ok(range_ms)
}

/// An offset in ms (negative looks ahead), at most ten years either way.
pub(super) fn offset_ms(offset: &Option<Offset>) -> Result<i64, PromError> {
    let ms = |d: &std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let offset = match offset {
        None => 0,
        Some(Offset::Pos(d)) => ms(d),
        Some(Offset::Neg(d)) => -ms(d),
    };
    if offset.unsigned_abs() > 10 * 365 * 86_400_000 {
        return Err(PromError::BadData("offset out of range".into()));
    }
    Ok(offset)
}

/// The time an `@` modifier fixes; `start()` and `end()` are the query's.
pub(super) fn at_ms(at: &Option<AtModifier>, query: Steps) -> Option<i64> {
    match at.as_ref()? {
        AtModifier::Start => Some(query.start_ms),
        AtModifier::End => Some(query.end_ms),
        AtModifier::At(t) => Some(match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
        }),
    }
}

/// The time each step reads at: the step (or the `@` time) moved back by the offset.
pub(super) fn refs(
    steps: Steps,
    at: &Option<AtModifier>,
    offset_ms: i64,
    query: Steps,
) -> Vec<i64> {
    evals(steps, at, query)
        .into_iter()
        .map(|t| t.saturating_sub(offset_ms))
        .collect()
}

/// The time each step is evaluated at: the step, or the `@` time.
pub(super) fn evals(steps: Steps, at: &Option<AtModifier>, query: Steps) -> Vec<i64> {
    let at = at_ms(at, query);
    (0..steps.n.max(1))
        .map(|i| at.unwrap_or(steps.time(i)))
        .collect()
}

/// For each read time (ascending), the index of the newest sample at most 5 minutes older,
/// found by one pass over the samples.
pub(super) fn lookback(timestamps: &[i64], refs: &[i64]) -> Vec<Option<usize>> {
    let mut next = 0;
    refs.iter()
        .map(|&r| {
            while next < timestamps.len() && timestamps[next] <= r {
                next += 1;
            }
            (next > 0 && timestamps[next - 1] > r - LOOKBACK_MS).then(|| next - 1)
        })
        .collect()
}

/// A series read by an instant selector, with the index of the sample each step reads.
pub(super) type Indexed = (SampleSeries, Vec<Option<usize>>);

/// A range argument of a function: series of samples and the window each step sees.
pub(super) struct RangeArg {
    pub(crate) series: Vec<SampleSeries>,
    pub(crate) range_ms: i64,
    /// The right edge of each step's window (included); the left edge is `range_ms` older
    /// (excluded).
    pub(crate) refs: Vec<i64>,
    /// The time each step is evaluated at (`predict_linear` extrapolates from it).
    pub(crate) evals: Vec<i64>,
}

/// The samples one step of a range argument sees.
pub(super) struct Window<'a> {
    pub(crate) timestamps: &'a [i64],
    pub(crate) values: &'a [f64],
    pub(crate) start_ms: i64,
    pub(crate) end_ms: i64,
    pub(crate) eval_ms: i64,
    pub(crate) range_ms: i64,
    /// The index of the step.
    pub(crate) step: usize,
}

impl RangeArg {
    /// Applies `f` to every window of every series, in one pass over each series' samples;
    /// series without a value at any step are left out.
    pub(super) fn map(
        &self,
        keep_name: bool,
        mut f: impl FnMut(&Window) -> Option<f64>,
    ) -> Vec<Series> {
        let mut out = Vec::with_capacity(self.series.len());
        for s in &self.series {
            let (mut lo, mut hi) = (0, 0);
            let ts = &s.timestamps;
            let mut any = false;
            let points: Vec<Option<f64>> = self
                .refs
                .iter()
                .zip(&self.evals)
                .enumerate()
                .map(|(step, (&end, &eval))| {
                    let start = end - self.range_ms;
                    while hi < ts.len() && ts[hi] <= end {
                        hi += 1;
                    }
                    while lo < hi && ts[lo] <= start {
                        lo += 1;
                    }
                    let window = Window {
                        timestamps: &ts[lo.min(hi)..hi],
                        values: &s.values[lo.min(hi)..hi],
                        start_ms: start,
                        end_ms: end,
                        eval_ms: eval,
                        range_ms: self.range_ms,
                        step,
                    };
                    let p = f(&window);
                    any |= p.is_some();
                    p
                })
                .collect();
            if any {
                let mut labels = s.labels.clone();
                if !keep_name {
                    labels.remove(NAME_LABEL);
                }
                out.push(Series { labels, points });
            }
        }
        out
    }

    /// The samples each series has in the window of step `i`, for a matrix answer.
    pub(super) fn windows_at(&self, i: usize) -> Vec<SampleSeries> {
        let end = self.refs[i];
        let start = end - self.range_ms;
        self.series
            .iter()
            .filter_map(|s| {
                let lo = s.timestamps.partition_point(|&t| t <= start);
                let hi = s.timestamps.partition_point(|&t| t <= end);
                (lo < hi).then(|| SampleSeries {
                    labels: s.labels.clone(),
                    timestamps: s.timestamps[lo..hi].to_vec(),
                    values: s.values[lo..hi].to_vec(),
                })
            })
            .collect()
    }
}

impl Ctx {
    /// Moves a selector's samples out of the fetched data.
    fn take(&mut self, vs: &VectorSelector) -> Result<Vec<SampleSeries>, PromError> {
        match self.data.remove(&key(vs)) {
            None => Ok(Vec::new()),
            Some(Answer::Samples(series)) => Ok(series),
            Some(Answer::Windows(_)) => Err(PromError::Unavailable(
                "storage answered window aggregates where samples were asked for".into(),
            )),
        }
    }

    /// Moves a selector's window aggregates out of the fetched data, if storage answered
    /// with them (it may answer with samples instead).
    pub(super) fn take_windows(&mut self, vs: &VectorSelector) -> Option<Vec<WindowSeries>> {
        match self.data.remove(&key(vs))? {
            Answer::Windows(windows) => Some(windows),
            samples => {
                self.data.insert(key(vs), samples);
                None
            }
        }
    }

    /// An instant selector: each series' newest sample within the lookback of each step.
    pub(super) fn instant(
        &mut self,
        vs: &VectorSelector,
        steps: Steps,
    ) -> Result<Vec<Series>, PromError> {
        Ok(self
            .instant_indexed(vs, steps)?
            .into_iter()
            .map(|(s, idx)| Series {
                points: idx.iter().map(|i| i.map(|i| s.values[i])).collect(),
                labels: s.labels,
            })
            .collect())
    }

    /// An instant selector as samples and, for each step, the index of the sample it reads.
    pub(super) fn instant_indexed(
        &mut self,
        vs: &VectorSelector,
        steps: Steps,
    ) -> Result<Vec<Indexed>, PromError> {
        let refs = refs(steps, &vs.at, offset_ms(&vs.offset)?, self.query);
        Ok(self
            .take(vs)?
            .into_iter()
            .filter_map(|s| {
                let idx = lookback(&s.timestamps, &refs);
                idx.iter().any(Option::is_some).then_some((s, idx))
            })
            .collect())
    }

    /// A range vector: a range selector or a subquery (in parentheses or not).
    pub(super) fn range(&mut self, expr: &Expr, steps: Steps) -> Result<RangeArg, PromError> {
        match expr {
            Expr::Paren(p) => self.range(&p.expr, steps),
            Expr::MatrixSelector(ms) => {
                let offset = offset_ms(&ms.vs.offset)?;
                Ok(RangeArg {
                    series: self.take(&ms.vs)?,
                    range_ms: range_ms(ms, self.limits)?,
                    refs: refs(steps, &ms.vs.at, offset, self.query),
                    evals: evals(steps, &ms.vs.at, self.query),
                })
            }
            Expr::Subquery(sq) => self.subquery(sq, steps),
            other => Err(PromError::BadData(format!(
                "expected a range vector, got an expression of another type: {other}"
            ))),
        }
    }
}
