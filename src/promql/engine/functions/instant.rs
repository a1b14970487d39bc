//! Functions with an evaluation of their own: `time`, `pi`, `vector`, `scalar`, `absent`,
//! `absent_over_time`, `timestamp`, `sort` and `sort_desc`.

use promql_parser::parser::{Call, Expr};

use super::super::{Ctx, absent_labels, unique};
use super::{Kind, arg, unparen};
use crate::promql::{Labels, NAME_LABEL, PromError, Series, Steps, Value};

pub(super) const FUNCTIONS: &[(&str, Kind)] = &[
    ("time", Kind::Special(time)),
    (
        "pi",
        Kind::Special(|_, _, s| Ok(Value::Scalar(vec![std::f64::consts::PI; s.n]))),
    ),
    ("vector", Kind::Special(vector)),
    ("scalar", Kind::Special(scalar)),
    ("absent", Kind::Special(absent)),
    ("absent_over_time", Kind::Special(absent_over_time)),
    ("timestamp", Kind::Special(timestamp)),
    ("sort", Kind::Special(|c, call, s| sort(c, call, s, false))),
    (
        "sort_desc",
        Kind::Special(|c, call, s| sort(c, call, s, true)),
    ),
];

fn time(_: &mut Ctx, _: &Call, steps: Steps) -> Result<Value, PromError> {
    Ok(Value::Scalar(
        (0..steps.n)
            .map(|i| steps.time(i) as f64 / 1000.0)
            .collect(),
    ))
}

/// `vector(s)`: one series without labels.
fn vector(ctx: &mut Ctx, call: &Call, steps: Steps) -> Result<Value, PromError> {
    let v = ctx.scalar(arg(call, 0)?, steps)?;
    Ok(Value::Vector(vec![Series {
        labels: Labels::new(),
        points: v.into_iter().map(Some).collect(),
    }]))
}

/// `scalar(v)`: the value of the only series with one at a step, NaN otherwise.
fn scalar(ctx: &mut Ctx, call: &Call, steps: Steps) -> Result<Value, PromError> {
    let input = ctx.vector(arg(call, 0)?, steps)?;
    let v = (0..steps.n)
        .map(|i| {
            let mut values = input.iter().filter_map(|s| s.points[i]);
            match (values.next(), values.next()) {
                (Some(v), None) => v,
                _ => f64::NAN,
            }
        })
        .collect();
    Ok(Value::Scalar(v))
}

/// One series, valued 1 at the steps where `present` is false, labelled as `absent` labels.
fn absent_series(expr: &Expr, present: impl Fn(usize) -> bool, steps: Steps) -> Value {
    let points: Vec<Option<f64>> = (0..steps.n).map(|i| (!present(i)).then_some(1.0)).collect();
    if points.iter().all(Option::is_none) {
        return Value::Vector(Vec::new());
    }
    Value::Vector(vec![Series {
        labels: absent_labels(unparen(expr)),
        points,
    }])
}

fn absent(ctx: &mut Ctx, call: &Call, steps: Steps) -> Result<Value, PromError> {
    let expr = arg(call, 0)?;
    let input = ctx.vector(expr, steps)?;
    let present = |i: usize| input.iter().any(|s| s.points[i].is_some());
    Ok(absent_series(expr, present, steps))
}

fn absent_over_time(ctx: &mut Ctx, call: &Call, steps: Steps) -> Result<Value, PromError> {
    let expr = arg(call, 0)?;
    let windows = ctx
        .range(expr, steps)?
        .map(true, |w| (!w.values.is_empty()).then_some(1.0));
    let present = |i: usize| windows.iter().any(|s| s.points[i].is_some());
    Ok(absent_series(expr, present, steps))
}

/// `timestamp(v)`: the time of each sample a selector reads, or the step's time for any
/// other expression; the name is dropped.
fn timestamp(ctx: &mut Ctx, call: &Call, steps: Steps) -> Result<Value, PromError> {
    let expr = arg(call, 0)?;
    let mut out: Vec<Series> = match unparen(expr) {
        Expr::VectorSelector(vs) => ctx
            .instant_indexed(vs, steps)?
            .into_iter()
            .map(|(s, idx)| Series {
                points: idx
                    .iter()
                    .map(|i| i.map(|i| s.timestamps[i] as f64 / 1000.0))
                    .collect(),
                labels: s.labels,
            })
            .collect(),
        _ => {
            let mut input = ctx.vector(expr, steps)?;
            for s in &mut input {
                for (i, p) in s.points.iter_mut().enumerate() {
                    *p = p.map(|_| steps.time(i) as f64 / 1000.0);
                }
            }
            input
        }
    };
    out.iter_mut().for_each(|s| {
        s.labels.remove(NAME_LABEL);
    });
    Ok(Value::Vector(unique(out)?))
}

/// `sort` and `sort_desc`: by value, NaN last; only an instant query's order is visible.
fn sort(ctx: &mut Ctx, call: &Call, steps: Steps, descending: bool) -> Result<Value, PromError> {
    let mut input = ctx.vector(arg(call, 0)?, steps)?;
    if steps.n == 1 {
        input.sort_by(|a, b| {
            let (a, b) = (
                a.points[0].unwrap_or(f64::NAN),
                b.points[0].unwrap_or(f64::NAN),
            );
            match (a.is_nan(), b.is_nan()) {
                (true, true) => std::cmp::Ordering::Equal,
                (true, false) => std::cmp::Ordering::Greater,
                (false, true) => std::cmp::Ordering::Less,
                _ if descending => b.total_cmp(&a),
                _ => a.total_cmp(&b),
            }
        });
    }
    Ok(Value::Vector(input))
}
