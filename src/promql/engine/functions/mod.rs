//! Function calls: one table of every function Panopticon evaluates, each entry naming how
//! it is applied. A new function is one entry in its family's table (and its tests).

mod date;
mod instant;
mod label;
mod math;
mod range;

use chrono::{DateTime, Utc};
use promql_parser::parser::value::ValueType;
use promql_parser::parser::{Call, Expr};

use super::selectors::Window;
use super::summaries::Summarised;
use super::{Ctx, unique};
use crate::promql::{NAME_LABEL, PromError, Series, Steps, Value};

/// How a function is applied.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    /// A function of each window of its range argument and of its scalar argument, if any
    /// (NaN if none). `keep_name`: whether the result keeps the metric name. `summary`: the
    /// same function of a window's aggregates, where per-minute summaries give it exactly.
    Range {
        f: fn(&Window, f64) -> Option<f64>,
        keep_name: bool,
        summary: Option<Summarised>,
    },
    /// A function of each value of its vector argument and of its scalar arguments at the
    /// same step; the name is dropped.
    Instant(fn(f64, &[f64]) -> Option<f64>),
    /// A function of a time in seconds (of `time()` when called without an argument).
    Date(fn(DateTime<Utc>) -> f64),
    /// A function evaluated its own way.
    Special(fn(&mut Ctx, &Call, Steps) -> Result<Value, PromError>),
}

/// The entry of `name`.
fn lookup(name: &str) -> Option<Kind> {
    [
        range::FUNCTIONS,
        math::FUNCTIONS,
        date::FUNCTIONS,
        label::FUNCTIONS,
        instant::FUNCTIONS,
    ]
    .into_iter()
    .flatten()
    .find(|(n, _)| *n == name)
    .map(|(_, kind)| *kind)
}

/// The function of a window's aggregates that a call of `name` on a range selector is, if
/// per-minute summaries give it exactly.
pub(super) fn summarised(name: &str) -> Option<Summarised> {
    match lookup(name)? {
        Kind::Range { summary, .. } => summary,
        _ => None,
    }
}

impl Ctx {
    pub(super) fn call(&mut self, call: &Call, steps: Steps) -> Result<Value, PromError> {
        let name = call.func.name;
        if name.starts_with("histogram_") {
            return Err(PromError::unsupported(format!(
                "the function {name}() (native histograms)"
            )));
        }
        if call.func.experimental {
            return Err(PromError::unsupported(format!(
                "the experimental function {name}()"
            )));
        }
        let kind =
            lookup(name).ok_or_else(|| PromError::unsupported(format!("the function {name}()")))?;
        let series = match kind {
            Kind::Special(f) => return f(self, call, steps),
            Kind::Range {
                f,
                keep_name,
                summary,
            } => self.call_range(call, steps, f, keep_name, summary)?,
            Kind::Instant(f) => self.call_instant(call, steps, f)?,
            Kind::Date(f) => self.call_date(call, steps, f)?,
        };
        Ok(Value::Vector(unique(series)?))
    }

    fn call_range(
        &mut self,
        call: &Call,
        steps: Steps,
        f: fn(&Window, f64) -> Option<f64>,
        keep_name: bool,
        summary: Option<Summarised>,
    ) -> Result<Vec<Series>, PromError> {
        let mut param = vec![f64::NAN; steps.n];
        let mut matrix = None;
        for (i, arg) in call.args.args.iter().enumerate() {
            if call.func.arg_types.get(i) == Some(&ValueType::Matrix) {
                matrix = Some(arg);
            } else {
                param = self.scalar(arg, steps)?;
            }
        }
        let matrix = matrix.ok_or_else(|| {
            PromError::BadData(format!("{}() needs a range vector", call.func.name))
        })?;
        if let (Some(function), Expr::MatrixSelector(ms)) = (summary, unparen(matrix))
            && let Some(windows) = self.take_windows(&ms.vs)
        {
            return Ok(windows
                .into_iter()
                .filter_map(|mut w| {
                    if !keep_name {
                        w.labels.remove(NAME_LABEL);
                    }
                    let points: Vec<Option<f64>> = w
                        .windows
                        .iter()
                        .map(|a| a.as_ref().map(|a| function.value(a)))
                        .collect();
                    points.iter().any(Option::is_some).then_some(Series {
                        labels: w.labels,
                        points,
                    })
                })
                .collect());
        }
        let arg = self.range(matrix, steps)?;
        Ok(arg.map(keep_name, |w| f(w, param[w.step])))
    }

    fn call_instant(
        &mut self,
        call: &Call,
        steps: Steps,
        f: fn(f64, &[f64]) -> Option<f64>,
    ) -> Result<Vec<Series>, PromError> {
        let args = &call.args.args;
        let vector = args
            .first()
            .ok_or_else(|| PromError::BadData(format!("{}() needs an argument", call.func.name)))?;
        let params = args[1..]
            .iter()
            .map(|a| self.scalar(a, steps))
            .collect::<Result<Vec<_>, _>>()?;
        let input = self.vector(vector, steps)?;
        let mut at = vec![0.0; params.len()];
        Ok(map_values(input, |i, v| {
            for (slot, p) in at.iter_mut().zip(&params) {
                *slot = p[i];
            }
            f(v, &at)
        }))
    }

    fn call_date(
        &mut self,
        call: &Call,
        steps: Steps,
        f: fn(DateTime<Utc>) -> f64,
    ) -> Result<Vec<Series>, PromError> {
        let input = match call.args.args.first() {
            Some(arg) => self.vector(arg, steps)?,
            None => vec![Series {
                labels: Default::default(),
                points: (0..steps.n)
                    .map(|i| Some(steps.time(i) as f64 / 1000.0))
                    .collect(),
            }],
        };
        Ok(map_values(input, |_, v| {
            if !v.is_finite() {
                return Some(f64::NAN);
            }
            DateTime::from_timestamp(v as i64, 0).map(f)
        }))
    }
}

/// Applies `f` to each value (with its step), dropping the name and the series left empty.
fn map_values(input: Vec<Series>, mut f: impl FnMut(usize, f64) -> Option<f64>) -> Vec<Series> {
    input
        .into_iter()
        .filter_map(|mut s| {
            for (i, p) in s.points.iter_mut().enumerate() {
                *p = p.and_then(|v| f(i, v));
            }
            s.labels.remove(NAME_LABEL);
            s.points.iter().any(Option::is_some).then_some(s)
        })
        .collect()
}

/// The argument `i` of a call, or a clear error.
fn arg(call: &Call, i: usize) -> Result<&Expr, PromError> {
    call.args
        .args
        .get(i)
        .map(|a| a.as_ref())
        .ok_or_else(|| PromError::BadData(format!("{}() needs argument {}", call.func.name, i + 1)))
}

/// A string argument.
fn string_arg(call: &Call, i: usize) -> Result<String, PromError> {
    match unparen(arg(call, i)?) {
        Expr::StringLiteral(s) => Ok(s.val.clone()),
        _ => Err(PromError::BadData(format!(
            "argument {} of {}() must be a string",
            i + 1,
            call.func.name
        ))),
    }
}

fn unparen(expr: &Expr) -> &Expr {
    match expr {
        Expr::Paren(p) => unparen(&p.expr),
        other => other,
    }
}
