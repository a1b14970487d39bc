//! Evaluation of a plan over the steps: selectors by the database ([`super::sql`]), the rest
//! here, step by step, with Prometheus's rules (which labels each operation keeps, how
//! vectors match, what a comparison filters). Every intermediate vector is counted against
//! `PROMETHEUS_MAX_SAMPLES`.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use futures_util::future::BoxFuture;

use super::plan::{AggregateOp, BinaryOp, Grouping, Matching, Plan};
use super::{Labels, Limits, NAME_LABEL, PromError, Series, Steps, Value, sql};
use crate::db::queries::DbPool;

/// Evaluates `plan` at every step of `steps`.
pub async fn evaluate(
    pool: &DbPool,
    plan: &Plan,
    steps: Steps,
    limits: Limits,
) -> Result<Value, PromError> {
    eval(pool, plan, steps, limits).await
}

fn check(series: &[Series], steps: Steps, limits: Limits) -> Result<(), PromError> {
    if series.len().saturating_mul(steps.n) > limits.max_samples {
        return Err(PromError::Execution(format!(
            "the query would hold more than {} samples (PROMETHEUS_MAX_SAMPLES): {} series × {} steps",
            limits.max_samples,
            series.len(),
            steps.n
        )));
    }
    Ok(())
}

fn eval<'a>(
    pool: &'a DbPool,
    plan: &'a Plan,
    steps: Steps,
    limits: Limits,
) -> BoxFuture<'a, Result<Value, PromError>> {
    Box::pin(async move {
        match plan {
            Plan::Number(n) => Ok(Value::Scalar(vec![*n; steps.n])),
            Plan::String(s) => Ok(Value::String(s.clone())),
            Plan::Selector(selector) => {
                let mut out = Vec::new();
                for metric in &selector.metrics {
                    let budget = limits.max_samples.saturating_sub(out.len() * steps.n);
                    out.extend(
                        sql::leaf(pool, *metric, sql::Leaf::Instant(selector), steps, budget)
                            .await?,
                    );
                    check(&out, steps, limits)?;
                }
                Ok(Value::Vector(out))
            }
            Plan::OverTime {
                func,
                selector,
                range_ms,
            } => {
                let mut out = Vec::new();
                for metric in &selector.metrics {
                    let budget = limits.max_samples.saturating_sub(out.len() * steps.n);
                    let leaf = sql::Leaf::OverTime {
                        func: *func,
                        selector,
                        range_ms: *range_ms,
                    };
                    out.extend(sql::leaf(pool, *metric, leaf, steps, budget).await?);
                    check(&out, steps, limits)?;
                }
                // last_over_time keeps the name; `unique` catches the two metrics colliding
                // once their names are dropped.
                Ok(Value::Vector(unique(out)?))
            }
            Plan::Negate(inner) => match eval(pool, inner, steps, limits).await? {
                Value::Scalar(v) => Ok(Value::Scalar(v.into_iter().map(|x| -x).collect())),
                Value::Vector(series) => {
                    let series = series
                        .into_iter()
                        .map(|mut s| {
                            s.labels.remove(NAME_LABEL);
                            s.points = s.points.into_iter().map(|p| p.map(|x| -x)).collect();
                            s
                        })
                        .collect();
                    Ok(Value::Vector(unique(series)?))
                }
                Value::String(_) | Value::Matrix(_) => {
                    Err(PromError::BadData("unary minus of a string".into()))
                }
            },
            Plan::Aggregate {
                op,
                grouping,
                param,
                expr,
            } => {
                if let Some(aggregation) = pushdown(*op, grouping, expr) {
                    let out = sql::aggregate(pool, &aggregation, steps, limits.max_samples).await?;
                    check(&out, steps, limits)?;
                    return Ok(Value::Vector(out));
                }
                let param = match param {
                    Some(p) => match eval(pool, p, steps, limits).await? {
                        Value::Scalar(v) => Some(v),
                        _ => {
                            return Err(PromError::BadData(
                                "the parameter must be a scalar".into(),
                            ));
                        }
                    },
                    None => None,
                };
                let Value::Vector(input) = eval(pool, expr, steps, limits).await? else {
                    return Err(PromError::BadData(
                        "an aggregation needs an instant vector".into(),
                    ));
                };
                let out = aggregate(*op, grouping, param.as_deref(), input, steps)?;
                check(&out, steps, limits)?;
                Ok(Value::Vector(out))
            }
            Plan::Binary {
                op,
                lhs,
                rhs,
                return_bool,
                matching,
            } => {
                let l = eval(pool, lhs, steps, limits).await?;
                let r = eval(pool, rhs, steps, limits).await?;
                let out = binary(*op, *return_bool, matching.as_ref(), l, r)?;
                if let Value::Vector(series) = &out {
                    check(series, steps, limits)?;
                }
                Ok(out)
            }
        }
    })
}

/// What the database can aggregate itself: sum, avg, min, max and count of a leaf of one
/// metric, grouped by label columns (and `job`, the same on every series).
fn pushdown<'a>(
    op: AggregateOp,
    grouping: &Grouping,
    expr: &'a Plan,
) -> Option<sql::Aggregation<'a>> {
    let op = match op {
        AggregateOp::Sum => sql::SqlAggregate::Sum,
        AggregateOp::Avg => sql::SqlAggregate::Avg,
        AggregateOp::Min => sql::SqlAggregate::Min,
        AggregateOp::Max => sql::SqlAggregate::Max,
        AggregateOp::Count => sql::SqlAggregate::Count,
        _ => return None,
    };
    let (leaf, selector) = match expr {
        Plan::Selector(selector) => (sql::Leaf::Instant(selector), selector),
        Plan::OverTime {
            func,
            selector,
            range_ms,
        } => (
            sql::Leaf::OverTime {
                func: *func,
                selector,
                range_ms: *range_ms,
            },
            selector,
        ),
        _ => return None,
    };
    let [metric] = selector.metrics[..] else {
        return None;
    };
    let columns = super::LABEL_COLUMNS;
    let (by, keep_job): (Vec<&'static str>, bool) = match grouping {
        Grouping::By(labels) => {
            // A label that is not a column (the name, or one no series has) is left to the
            // evaluation here.
            let mut by = Vec::new();
            let mut keep_job = false;
            for label in labels {
                match super::label_column(label) {
                    Some(column) => by.push(column),
                    None if label == "job" => keep_job = true,
                    None => return None,
                }
            }
            (by, keep_job)
        }
        Grouping::Without(labels) => (
            columns
                .iter()
                .filter(|(label, _)| !labels.iter().any(|l| l == label))
                .map(|(_, column)| *column)
                .collect(),
            !labels.iter().any(|l| l == "job"),
        ),
    };
    Some(sql::Aggregation {
        metric,
        leaf,
        op,
        by,
        keep_job,
    })
}

/// Merges series of equal labels, which must not both have a value at one step (Prometheus:
/// "vector cannot contain metrics with the same labelset"); series without any value are
/// dropped.
fn unique(series: Vec<Series>) -> Result<Vec<Series>, PromError> {
    let mut merged: BTreeMap<Labels, Vec<Option<f64>>> = BTreeMap::new();
    for s in series {
        if s.points.iter().all(Option::is_none) {
            continue;
        }
        match merged.entry(s.labels) {
            Entry::Vacant(e) => {
                e.insert(s.points);
            }
            Entry::Occupied(mut e) => {
                for (have, new) in e.get_mut().iter_mut().zip(s.points) {
                    if new.is_some() {
                        if have.is_some() {
                            return Err(PromError::Execution(
                                "vector cannot contain metrics with the same labelset".into(),
                            ));
                        }
                        *have = new;
                    }
                }
            }
        }
    }
    Ok(merged
        .into_iter()
        .map(|(labels, points)| Series { labels, points })
        .collect())
}

/// `a op b` for an arithmetic operator.
pub fn arithmetic(op: BinaryOp, a: f64, b: f64) -> f64 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Mod => a % b,
        BinaryOp::Pow => a.powf(b),
        BinaryOp::Atan2 => a.atan2(b),
        BinaryOp::Eq => f64::from(a == b),
        BinaryOp::Ne => f64::from(a != b),
        BinaryOp::Gt => f64::from(a > b),
        BinaryOp::Lt => f64::from(a < b),
        BinaryOp::Ge => f64::from(a >= b),
        BinaryOp::Le => f64::from(a <= b),
    }
}

/// The value of `l op r` for one pair of samples, or `None` where a comparison filters it out.
/// `vector_value` is the sample a filtering comparison keeps.
fn element(op: BinaryOp, return_bool: bool, l: f64, r: f64, vector_value: f64) -> Option<f64> {
    if !op.is_comparison() {
        return Some(arithmetic(op, l, r));
    }
    let holds = arithmetic(op, l, r) == 1.0;
    if return_bool {
        Some(f64::from(holds))
    } else if holds {
        Some(vector_value)
    } else {
        None
    }
}

/// Whether the result of `op` loses the metric name.
fn drops_name(op: BinaryOp, return_bool: bool) -> bool {
    !op.is_comparison() || return_bool
}

fn binary(
    op: BinaryOp,
    return_bool: bool,
    matching: Option<&Matching>,
    l: Value,
    r: Value,
) -> Result<Value, PromError> {
    match (l, r) {
        (Value::Scalar(a), Value::Scalar(b)) => Ok(Value::Scalar(
            a.iter()
                .zip(&b)
                .map(|(x, y)| element(op, true, *x, *y, *x).unwrap_or(f64::NAN))
                .collect(),
        )),
        (Value::Vector(v), Value::Scalar(s)) => vector_scalar(op, return_bool, v, &s, false),
        (Value::Scalar(s), Value::Vector(v)) => vector_scalar(op, return_bool, v, &s, true),
        (Value::Vector(a), Value::Vector(b)) => vector_vector(op, return_bool, matching, a, b),
        _ => Err(PromError::BadData(
            "binary operators are not defined on strings".into(),
        )),
    }
}

fn vector_scalar(
    op: BinaryOp,
    return_bool: bool,
    vector: Vec<Series>,
    scalar: &[f64],
    scalar_first: bool,
) -> Result<Value, PromError> {
    let out = vector
        .into_iter()
        .map(|mut s| {
            s.points = s
                .points
                .iter()
                .zip(scalar)
                .map(|(p, k)| {
                    p.and_then(|v| {
                        let (l, r) = if scalar_first { (*k, v) } else { (v, *k) };
                        element(op, return_bool, l, r, v)
                    })
                })
                .collect();
            if drops_name(op, return_bool) {
                s.labels.remove(NAME_LABEL);
            }
            s
        })
        .collect();
    Ok(Value::Vector(unique(out)?))
}

/// The labels two series are matched by.
fn signature(labels: &Labels, matching: Option<&Matching>) -> Labels {
    match matching {
        Some(Matching::On(on)) => labels
            .iter()
            .filter(|(k, _)| on.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        Some(Matching::Ignoring(ignoring)) => labels
            .iter()
            .filter(|(k, _)| !ignoring.contains(k) && k.as_str() != NAME_LABEL)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        None => labels
            .iter()
            .filter(|(k, _)| k.as_str() != NAME_LABEL)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

fn format_labels(labels: &Labels) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

/// One-to-one matching of two vectors, step by step, as Prometheus matches them.
fn vector_vector(
    op: BinaryOp,
    return_bool: bool,
    matching: Option<&Matching>,
    lhs: Vec<Series>,
    rhs: Vec<Series>,
) -> Result<Value, PromError> {
    let n = lhs
        .first()
        .or(rhs.first())
        .map(|s| s.points.len())
        .unwrap_or(0);
    let lsig: Vec<Labels> = lhs.iter().map(|s| signature(&s.labels, matching)).collect();
    let rsig: Vec<Labels> = rhs.iter().map(|s| signature(&s.labels, matching)).collect();
    let result_labels: Vec<Labels> = lhs
        .iter()
        .map(|s| {
            let mut labels = s.labels.clone();
            if drops_name(op, return_bool) {
                labels.remove(NAME_LABEL);
            }
            match matching {
                Some(Matching::On(on)) => labels.retain(|k, _| on.contains(k)),
                Some(Matching::Ignoring(ignoring)) => labels.retain(|k, _| !ignoring.contains(k)),
                None => {}
            }
            labels
        })
        .collect();
    let mut out: BTreeMap<Labels, Vec<Option<f64>>> = BTreeMap::new();
    for step in 0..n {
        let mut right: BTreeMap<&Labels, f64> = BTreeMap::new();
        for (s, sig) in rhs.iter().zip(&rsig) {
            if let Some(v) = s.points[step]
                && right.insert(sig, v).is_some()
            {
                return Err(PromError::Execution(format!(
                    "found duplicate series for the match group {} on the right hand-side of the operation: many-to-many matching not allowed: matching labels must be unique on one side",
                    format_labels(sig)
                )));
            }
        }
        let mut matched: BTreeMap<&Labels, ()> = BTreeMap::new();
        for (i, s) in lhs.iter().enumerate() {
            let Some(l) = s.points[step] else { continue };
            let Some(r) = right.get(&lsig[i]) else {
                continue;
            };
            if matched.insert(&lsig[i], ()).is_some() {
                return Err(PromError::Execution(format!(
                    "multiple matches for labels {}: many-to-one matching must be explicit (group_left/group_right, not supported by Panopticon)",
                    format_labels(&lsig[i])
                )));
            }
            if let Some(v) = element(op, return_bool, l, *r, l) {
                let points = out
                    .entry(result_labels[i].clone())
                    .or_insert_with(|| vec![None; n]);
                if points[step].replace(v).is_some() {
                    return Err(PromError::Execution(
                        "vector cannot contain metrics with the same labelset".into(),
                    ));
                }
            }
        }
    }
    Ok(Value::Vector(
        out.into_iter()
            .map(|(labels, points)| Series { labels, points })
            .collect(),
    ))
}

/// The labels of a series' group.
fn group_of(labels: &Labels, grouping: &Grouping) -> Labels {
    match grouping {
        Grouping::By(by) => labels
            .iter()
            .filter(|(k, _)| by.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        Grouping::Without(without) => labels
            .iter()
            .filter(|(k, _)| !without.contains(k) && k.as_str() != NAME_LABEL)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// The φ-quantile of `values` (sorted here), interpolated as Prometheus does.
pub fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

fn aggregate(
    op: AggregateOp,
    grouping: &Grouping,
    param: Option<&[f64]>,
    input: Vec<Series>,
    steps: Steps,
) -> Result<Vec<Series>, PromError> {
    let n = steps.n;
    let groups: Vec<Labels> = input
        .iter()
        .map(|s| group_of(&s.labels, grouping))
        .collect();
    if matches!(op, AggregateOp::TopK | AggregateOp::BottomK) {
        let ks = param.ok_or_else(|| PromError::BadData("topk and bottomk need k".into()))?;
        let mut out: Vec<Series> = input
            .iter()
            .map(|s| Series {
                labels: s.labels.clone(),
                points: vec![None; n],
            })
            .collect();
        for (step, &k) in ks.iter().enumerate().take(n) {
            if !k.is_finite() || k.abs() > 9.0e18 {
                return Err(PromError::Execution(format!(
                    "scalar value {k} overflows int64"
                )));
            }
            let k = k as i64;
            if k < 1 {
                continue;
            }
            let mut by_group: BTreeMap<&Labels, Vec<(usize, f64)>> = BTreeMap::new();
            for (i, s) in input.iter().enumerate() {
                if let Some(v) = s.points[step] {
                    by_group.entry(&groups[i]).or_default().push((i, v));
                }
            }
            for members in by_group.values_mut() {
                // NaN ranks below every number for topk and above every number for bottomk,
                // as in Prometheus.
                if op == AggregateOp::TopK {
                    members.sort_by(|a, b| match (a.1.is_nan(), b.1.is_nan()) {
                        (true, true) => std::cmp::Ordering::Equal,
                        (true, false) => std::cmp::Ordering::Greater,
                        (false, true) => std::cmp::Ordering::Less,
                        _ => b.1.total_cmp(&a.1),
                    });
                } else {
                    members.sort_by(|a, b| match (a.1.is_nan(), b.1.is_nan()) {
                        (true, true) => std::cmp::Ordering::Equal,
                        (true, false) => std::cmp::Ordering::Greater,
                        (false, true) => std::cmp::Ordering::Less,
                        _ => a.1.total_cmp(&b.1),
                    });
                }
                for (i, v) in members.iter().take(k as usize) {
                    out[*i].points[step] = Some(*v);
                }
            }
        }
        out.retain(|s| s.points.iter().any(Option::is_some));
        return Ok(out);
    }
    let mut values: BTreeMap<Labels, Vec<Vec<f64>>> = BTreeMap::new();
    for (s, group) in input.iter().zip(groups) {
        let slot = values.entry(group).or_insert_with(|| vec![Vec::new(); n]);
        for (step, p) in s.points.iter().enumerate() {
            if let Some(v) = p {
                slot[step].push(*v);
            }
        }
    }
    let mut out = Vec::new();
    for (labels, per_step) in values {
        let mut points = vec![None; n];
        for (step, mut vs) in per_step.into_iter().enumerate() {
            if vs.is_empty() {
                continue;
            }
            points[step] = Some(match op {
                AggregateOp::Sum => vs.iter().sum(),
                AggregateOp::Avg => vs.iter().sum::<f64>() / vs.len() as f64,
                AggregateOp::Count => vs.len() as f64,
                AggregateOp::Min => vs
                    .iter()
                    .copied()
                    .fold(f64::NAN, |m, v| if m > v || m.is_nan() { v } else { m }),
                AggregateOp::Max => vs
                    .iter()
                    .copied()
                    .fold(f64::NAN, |m, v| if m < v || m.is_nan() { v } else { m }),
                AggregateOp::Quantile => {
                    let q = param
                        .map(|p| p[step])
                        .ok_or_else(|| PromError::BadData("quantile needs φ".into()))?;
                    quantile(q, &mut vs)
                }
                AggregateOp::TopK | AggregateOp::BottomK => unreachable!("handled above"),
            });
        }
        if points.iter().any(Option::is_some) {
            out.push(Series { labels, points });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        assert_eq!(quantile(0.5, &mut [1.0, 2.0, 3.0, 4.0]), 2.5);
        assert_eq!(quantile(0.0, &mut [3.0, 1.0]), 1.0);
        assert_eq!(quantile(1.0, &mut [3.0, 1.0]), 3.0);
        assert_eq!(quantile(-1.0, &mut [3.0]), f64::NEG_INFINITY);
        assert_eq!(quantile(2.0, &mut [3.0]), f64::INFINITY);
    }
}
