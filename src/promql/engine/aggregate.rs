//! Aggregations (`sum`, `avg`, `topk`, `count_values`, …) with `by` and `without`: group
//! keys are computed once per series, then each group is reduced step by step.

use std::collections::HashMap;

use promql_parser::parser::token::{self, TokenId};
use promql_parser::parser::{AggregateExpr, Expr, LabelModifier};

use super::{Ctx, stats};
use crate::promql::{Labels, NAME_LABEL, PromError, Series, Steps, format_value};

/// A reducing aggregation: the values of one group at one step, and the parameter there.
type Reduce = fn(&mut [f64], f64) -> f64;

fn reducer(op: TokenId) -> Option<Reduce> {
    Some(match op {
        token::T_SUM => |v, _| stats::sum(v),
        token::T_AVG => |v, _| stats::mean(v),
        token::T_MIN => |v, _| stats::min(v),
        token::T_MAX => |v, _| stats::max(v),
        token::T_COUNT => |v, _| v.len() as f64,
        token::T_GROUP => |_, _| 1.0,
        token::T_STDDEV => |v, _| stats::variance(v).sqrt(),
        token::T_STDVAR => |v, _| stats::variance(v),
        token::T_QUANTILE => |v, q| stats::quantile(q, v),
        _ => return None,
    })
}

/// The groups of `input`: each group's labels and the indices of its series.
fn groups(input: &[Series], modifier: Option<&LabelModifier>) -> Vec<(Labels, Vec<usize>)> {
    let mut index: HashMap<Labels, usize> = HashMap::new();
    let mut out: Vec<(Labels, Vec<usize>)> = Vec::new();
    for (i, s) in input.iter().enumerate() {
        let key = group_labels(&s.labels, modifier);
        let g = *index.entry(key).or_insert_with_key(|key| {
            out.push((key.clone(), Vec::new()));
            out.len() - 1
        });
        out[g].1.push(i);
    }
    out
}

/// The labels a group keeps: those of `by`, or all but those of `without` and the name.
fn group_labels(labels: &Labels, modifier: Option<&LabelModifier>) -> Labels {
    match modifier {
        None => Labels::new(),
        Some(LabelModifier::Include(by)) => labels
            .iter()
            .filter(|(k, _)| by.labels.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        Some(LabelModifier::Exclude(without)) => labels
            .iter()
            .filter(|(k, _)| *k != NAME_LABEL && !without.labels.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

impl Ctx {
    pub(super) fn aggregate(
        &mut self,
        a: &AggregateExpr,
        steps: Steps,
    ) -> Result<Vec<Series>, PromError> {
        let op = a.op.id();
        if matches!(op, token::T_LIMITK | token::T_LIMIT_RATIO) {
            return Err(PromError::unsupported(format!(
                "the experimental aggregation {}",
                a.op
            )));
        }
        if op == token::T_COUNT_VALUES {
            let label = match a.param.as_deref() {
                Some(Expr::StringLiteral(s)) => s.val.clone(),
                _ => return Err(PromError::BadData("count_values needs a label name".into())),
            };
            let input = self.vector(&a.expr, steps)?;
            return count_values(&label, input, a.modifier.as_ref(), steps);
        }
        let param = match &a.param {
            Some(p) => self.scalar(p, steps)?,
            None => vec![f64::NAN; steps.n],
        };
        let input = self.vector(&a.expr, steps)?;
        let groups = groups(&input, a.modifier.as_ref());
        if let Some(reduce) = reducer(op) {
            return Ok(reduce_groups(&input, groups, &param, steps, reduce));
        }
        match op {
            token::T_TOPK => select_k(input, groups, &param, steps, true),
            token::T_BOTTOMK => select_k(input, groups, &param, steps, false),
            _ => Err(PromError::unsupported(format!("the aggregation {}", a.op))),
        }
    }
}

fn reduce_groups(
    input: &[Series],
    groups: Vec<(Labels, Vec<usize>)>,
    param: &[f64],
    steps: Steps,
    reduce: Reduce,
) -> Vec<Series> {
    let mut buf = Vec::new();
    groups
        .into_iter()
        .map(|(labels, members)| {
            let points = (0..steps.n)
                .map(|i| {
                    buf.clear();
                    buf.extend(members.iter().filter_map(|&m| input[m].points[i]));
                    (!buf.is_empty()).then(|| reduce(&mut buf, param[i]))
                })
                .collect();
            Series { labels, points }
        })
        .filter(|s: &Series| s.points.iter().any(Option::is_some))
        .collect()
}

/// `topk` and `bottomk`: the `k` largest (smallest) series of each group at each step, with
/// their own labels; NaN ranks last either way.
fn select_k(
    input: Vec<Series>,
    groups: Vec<(Labels, Vec<usize>)>,
    param: &[f64],
    steps: Steps,
    top: bool,
) -> Result<Vec<Series>, PromError> {
    let mut chosen: Vec<Option<Vec<Option<f64>>>> = vec![None; input.len()];
    let mut buf: Vec<(f64, usize)> = Vec::new();
    let rank = |a: f64, b: f64| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        _ if top => b.total_cmp(&a),
        _ => a.total_cmp(&b),
    };
    for (_, members) in &groups {
        for (i, &k) in param.iter().enumerate() {
            if k.is_nan() {
                return Err(PromError::BadData("parameter value is NaN".into()));
            }
            let k = k.min(usize::MAX as f64) as i64;
            if k < 1 {
                continue;
            }
            buf.clear();
            buf.extend(
                members
                    .iter()
                    .filter_map(|&m| input[m].points[i].map(|v| (v, m))),
            );
            buf.sort_by(|a, b| rank(a.0, b.0));
            for &(v, m) in buf.iter().take(k as usize) {
                chosen[m].get_or_insert_with(|| vec![None; steps.n])[i] = Some(v);
            }
        }
    }
    // An instant query lists each group's series in rank order, as Prometheus does.
    let order: Vec<usize> = groups
        .iter()
        .flat_map(|(_, members)| {
            let mut members = members.clone();
            if steps.n == 1 {
                members.sort_by(|&a, &b| {
                    let v = |m: usize| input[m].points[0].unwrap_or(f64::NAN);
                    rank(v(a), v(b))
                });
            }
            members
        })
        .collect();
    let mut input: Vec<Option<Series>> = input.into_iter().map(Some).collect();
    Ok(order
        .into_iter()
        .filter_map(|m| {
            let points = chosen[m].take()?;
            let labels = input[m].take()?.labels;
            Some(Series { labels, points })
        })
        .collect())
}

/// `count_values("label", v)`: how many series of each group have each value, the value
/// (formatted as Prometheus formats it) becoming the label.
fn count_values(
    label: &str,
    input: Vec<Series>,
    modifier: Option<&LabelModifier>,
    steps: Steps,
) -> Result<Vec<Series>, PromError> {
    if !valid_label_name(label) {
        return Err(PromError::BadData(format!("invalid label name {label:?}")));
    }
    let mut index: HashMap<(usize, String), usize> = HashMap::new();
    let mut out: Vec<Series> = Vec::new();
    for (labels, members) in groups(&input, modifier) {
        for i in 0..steps.n {
            for &m in &members {
                let Some(v) = input[m].points[i] else {
                    continue;
                };
                let key = (members[0], format_value(v));
                let o = *index.entry(key).or_insert_with_key(|(_, value)| {
                    let mut l = labels.clone();
                    l.insert(label.to_owned(), value.clone());
                    out.push(Series {
                        labels: l,
                        points: vec![None; steps.n],
                    });
                    out.len() - 1
                });
                let p = &mut out[o].points[i];
                *p = Some(p.unwrap_or(0.0) + 1.0);
            }
        }
    }
    Ok(out)
}

/// Whether `name` is a label name Prometheus accepts.
pub(super) fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
