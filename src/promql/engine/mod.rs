//! The PromQL evaluator: Prometheus 3 semantics for float samples, over raw samples that a
//! [`Storage`] hands over.
//!
//! An evaluation has two phases. [`selectors::collect`] walks the expression once and lists
//! every selector with the time span it reads (lookback or range, offset, `@`, the steps of
//! any subquery around it), so that storage is asked once for everything and may fetch it
//! concurrently. Then [`Ctx`] evaluates the expression series by series: each node produces
//! whole series over all steps ([`super::Series`]), so that labels are computed once per
//! series and not once per step.
//!
//! Where each kind lives: selectors and windows in [`selectors`], subqueries in [`subquery`],
//! aggregations in [`aggregate`], operators in [`binary`], functions in [`functions`] (one
//! table, one module per family).

mod aggregate;
mod binary;
mod functions;
mod selectors;
mod stats;
mod subquery;
pub(crate) mod summaries;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_functions;
#[cfg(test)]
mod tests_summaries;

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use promql_parser::label::{MatchOp, Matcher, Matchers};
use promql_parser::parser::Expr;
use promql_parser::parser::value::ValueType;

use super::{Labels, Limits, PromError, Series, Steps, Value};
pub(crate) use selectors::matchers as selector_matchers;
pub(crate) use summaries::{Answer, Need};

/// What the engine asks storage for: every series the matchers select, with its samples at
/// start_ms < t <= end_ms (left-open, as Prometheus 3), ascending by time, and what the
/// selector's consumer does with them, so that storage may answer from summaries where they
/// give the same result.
#[derive(Debug, Clone)]
pub(crate) struct Selection {
    pub(crate) matchers: Matchers,
    pub(crate) start_ms: i64,
    pub(crate) end_ms: i64,
    pub(crate) need: Need,
}

/// One stored series and its samples, ascending by time.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SampleSeries {
    pub(crate) labels: Labels,
    pub(crate) timestamps: Vec<i64>,
    pub(crate) values: Vec<f64>,
}

pub(crate) trait Storage {
    /// One answer per selection, in order. May refuse with PromError (e.g. too many samples).
    fn select(
        &self,
        selections: &[Selection],
        limits: Limits,
    ) -> impl std::future::Future<Output = Result<Vec<Answer>, PromError>> + Send;
}

/// Whether a series' labels satisfy the matchers; a label a series lacks has the value "".
/// The parser has already anchored regular expressions as Prometheus does (`^(?:re)$`).
/// Matchers joined by `or` match when one of their groups does.
pub(crate) fn matches(matchers: &Matchers, labels: &Labels) -> bool {
    let one = |m: &Matcher| m.is_match(labels.get(&m.name).map(String::as_str).unwrap_or(""));
    matchers.matchers.iter().all(one)
        && (matchers.or_matchers.is_empty()
            || matchers
                .or_matchers
                .iter()
                .any(|group| group.iter().all(one)))
}

/// Evaluates `expr` at every step of `steps`, reading its samples from `storage` in one call.
pub(crate) async fn evaluate<S: Storage + Sync>(
    storage: &S,
    expr: &Expr,
    steps: Steps,
    limits: Limits,
) -> Result<Value, PromError> {
    let plan = selectors::collect(expr, steps, limits)?;
    let answers = storage.select(&plan.selections, limits).await?;
    if answers.len() != plan.selections.len() {
        return Err(PromError::Unavailable(format!(
            "storage answered {} selections of {}",
            answers.len(),
            plan.selections.len()
        )));
    }
    let mut ctx = Ctx::new(plan.keys, answers, steps, limits)?;
    ctx.top(expr, steps)
}

/// The state of one evaluation: the fetched samples, taken by the selector that needs them.
pub(super) struct Ctx {
    /// The answer for each selector, keyed by the selector's address in the expression (each
    /// node is evaluated exactly once, so its samples are moved out, never copied).
    data: HashMap<usize, Answer>,
    /// The query's own steps: `start()` and `end()` refer to them wherever they appear.
    query: Steps,
    limits: Limits,
    /// Samples fetched; every intermediate result is counted on top of them.
    fetched: usize,
}

impl Ctx {
    fn new(
        keys: Vec<usize>,
        answers: Vec<Answer>,
        query: Steps,
        limits: Limits,
    ) -> Result<Ctx, PromError> {
        let fetched = answers.iter().map(Answer::len).sum::<usize>();
        let ctx = Ctx {
            data: keys.into_iter().zip(answers).collect(),
            query,
            limits,
            fetched,
        };
        ctx.hold(0)?;
        Ok(ctx)
    }

    /// Refuses an evaluation that would hold more than `max_samples`: the fetched samples
    /// plus `points` of a result.
    fn hold(&self, points: usize) -> Result<(), PromError> {
        if self.fetched.saturating_add(points) > self.limits.max_samples {
            return Err(too_many_samples(self.limits));
        }
        Ok(())
    }

    fn hold_series(&self, series: &[Series], steps: Steps) -> Result<(), PromError> {
        self.hold(series.len().saturating_mul(steps.n))
    }

    /// The value of the whole query: a range vector is answered as a matrix to an instant
    /// query, and refused in a range query as Prometheus does.
    fn top(&mut self, expr: &Expr, steps: Steps) -> Result<Value, PromError> {
        if expr.value_type() == ValueType::Matrix {
            if steps.n != 1 {
                return Err(PromError::BadData(
                    "invalid expression type \"range vector\" for range query, must be Scalar or instant Vector".into(),
                ));
            }
            let arg = self.range(expr, steps)?;
            return Ok(Value::Matrix(arg.windows_at(0)));
        }
        self.eval(expr, steps)
    }

    /// Evaluates an expression of an instant type (scalar, vector or string).
    fn eval(&mut self, expr: &Expr, steps: Steps) -> Result<Value, PromError> {
        let value = match expr {
            Expr::NumberLiteral(n) => Value::Scalar(vec![n.val; steps.n]),
            Expr::StringLiteral(s) => Value::String(s.val.clone()),
            Expr::Paren(p) => self.eval(&p.expr, steps)?,
            Expr::Unary(u) => negate(self.eval(&u.expr, steps)?)?,
            Expr::VectorSelector(vs) => Value::Vector(self.instant(vs, steps)?),
            Expr::Aggregate(a) => Value::Vector(self.aggregate(a, steps)?),
            Expr::Binary(b) => self.binary(b, steps)?,
            Expr::Call(call) => self.call(call, steps)?,
            Expr::MatrixSelector(_) | Expr::Subquery(_) => {
                return Err(PromError::BadData(
                    "a range vector is not allowed here: it needs a function such as rate()".into(),
                ));
            }
            Expr::Extension(_) => return Err(PromError::unsupported("extension expressions")),
        };
        if let Value::Vector(series) = &value {
            self.hold_series(series, steps)?;
        }
        Ok(value)
    }

    /// Evaluates an expression that must be a scalar, one number per step.
    fn scalar(&mut self, expr: &Expr, steps: Steps) -> Result<Vec<f64>, PromError> {
        match self.eval(expr, steps)? {
            Value::Scalar(v) => Ok(v),
            _ => Err(PromError::BadData(format!(
                "expected a scalar, got an expression of another type: {expr}"
            ))),
        }
    }

    /// Evaluates an expression that must be an instant vector.
    fn vector(&mut self, expr: &Expr, steps: Steps) -> Result<Vec<Series>, PromError> {
        match self.eval(expr, steps)? {
            Value::Vector(v) => Ok(v),
            _ => Err(PromError::BadData(format!(
                "expected an instant vector, got an expression of another type: {expr}"
            ))),
        }
    }
}

/// Prometheus's refusal of a query over `max_samples`.
fn too_many_samples(limits: Limits) -> PromError {
    PromError::Execution(format!(
        "query processing would load too many samples into memory in query execution (more than {}, PROMETHEUS_MAX_SAMPLES)",
        limits.max_samples
    ))
}

/// `-x`: the name is dropped, as by any arithmetic.
fn negate(value: Value) -> Result<Value, PromError> {
    match value {
        Value::Scalar(v) => Ok(Value::Scalar(v.into_iter().map(|x| -x).collect())),
        Value::Vector(series) => {
            let series = series
                .into_iter()
                .map(|mut s| {
                    s.labels.remove(super::NAME_LABEL);
                    s.points.iter_mut().flatten().for_each(|x| *x = -*x);
                    s
                })
                .collect();
            Ok(Value::Vector(unique(series)?))
        }
        _ => Err(PromError::BadData(
            "unary minus only applies to scalars and instant vectors".into(),
        )),
    }
}

/// Merges series that ended up with the same labels (once a name is dropped, say); two of
/// them with a value at the same step are the error Prometheus gives.
pub(super) fn unique(series: Vec<Series>) -> Result<Vec<Series>, PromError> {
    let mut index: HashMap<Labels, usize> = HashMap::with_capacity(series.len());
    let mut out: Vec<Series> = Vec::with_capacity(series.len());
    for s in series {
        match index.entry(s.labels) {
            Entry::Vacant(e) => {
                let labels = e.key().clone();
                e.insert(out.len());
                out.push(Series {
                    labels,
                    points: s.points,
                });
            }
            Entry::Occupied(e) => {
                let target = &mut out[*e.get()].points;
                for (t, p) in target.iter_mut().zip(s.points) {
                    if p.is_some() {
                        if t.is_some() {
                            return Err(duplicate_labelset());
                        }
                        *t = p;
                    }
                }
            }
        }
    }
    Ok(out)
}

pub(super) fn duplicate_labelset() -> PromError {
    PromError::Execution("vector cannot contain metrics with the same labelset".into())
}

/// The labels an `absent()` result carries: those the selector fixes with `=`, unless it
/// fixes one twice.
pub(super) fn absent_labels(expr: &Expr) -> Labels {
    let mut labels = Labels::new();
    let Expr::VectorSelector(vs) = expr else {
        if let Expr::MatrixSelector(ms) = expr {
            return absent_labels(&Expr::VectorSelector(ms.vs.clone()));
        }
        return labels;
    };
    let mut fixed = std::collections::HashSet::new();
    for m in vs
        .matchers
        .matchers
        .iter()
        .chain(vs.matchers.or_matchers.iter().flatten())
    {
        if m.name == super::NAME_LABEL {
            continue;
        }
        if matches!(m.op, MatchOp::Equal) && fixed.insert(m.name.clone()) {
            labels.insert(m.name.clone(), m.value.clone());
        } else {
            labels.remove(&m.name);
        }
    }
    labels
}
