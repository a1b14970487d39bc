//! Binary operators: arithmetic, comparisons (filtering or `bool`), the set operators, and
//! vector matching with `on`/`ignoring` and `group_left`/`group_right`, step by step as
//! Prometheus matches (the one-to-one check comes after a comparison has filtered).

use std::collections::HashMap;

use promql_parser::parser::token::{self, TokenId};
use promql_parser::parser::{BinModifier, BinaryExpr, LabelModifier, VectorMatchCardinality};

use super::{Ctx, duplicate_labelset, unique};
use crate::promql::{Labels, NAME_LABEL, PromError, Series, Steps, Value};

/// The result of `l op r` and whether a comparison keeps it; `None` for a set operator.
fn apply(op: TokenId, l: f64, r: f64) -> Option<(f64, bool)> {
    Some(match op {
        token::T_ADD => (l + r, true),
        token::T_SUB => (l - r, true),
        token::T_MUL => (l * r, true),
        token::T_DIV => (l / r, true),
        token::T_MOD => (l % r, true),
        token::T_POW => (l.powf(r), true),
        token::T_ATAN2 => (l.atan2(r), true),
        token::T_EQLC => (l, l == r),
        token::T_NEQ => (l, l != r),
        token::T_GTR => (l, l > r),
        token::T_LSS => (l, l < r),
        token::T_GTE => (l, l >= r),
        token::T_LTE => (l, l <= r),
        _ => return None,
    })
}

fn is_comparison(op: TokenId) -> bool {
    matches!(
        op,
        token::T_EQLC | token::T_NEQ | token::T_GTR | token::T_LSS | token::T_GTE | token::T_LTE
    )
}

/// Applies an operator to two numbers; a comparison with `bool` answers 1 or 0, one without
/// keeps `keep_value` (the vector's side) or drops the point.
fn elem(op: TokenId, l: f64, r: f64, return_bool: bool) -> Result<Option<f64>, PromError> {
    let (v, keep) = apply(op, l, r).ok_or_else(|| {
        PromError::BadData(format!(
            "the operator {} needs vectors on both sides",
            token::TokenType::new(op)
        ))
    })?;
    Ok(if return_bool {
        Some(if keep { 1.0 } else { 0.0 })
    } else {
        keep.then_some(v)
    })
}

impl Ctx {
    pub(super) fn binary(&mut self, b: &BinaryExpr, steps: Steps) -> Result<Value, PromError> {
        let op = b.op.id();
        let modifier = b.modifier.as_ref();
        if let Some(m) = modifier
            && (m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some())
        {
            return Err(PromError::unsupported(
                "the experimental fill modifiers of a vector match (fill, fill_left, fill_right)",
            ));
        }
        let return_bool = modifier.is_some_and(|m| m.return_bool);
        let l = self.eval(&b.lhs, steps)?;
        let r = self.eval(&b.rhs, steps)?;
        match (l, r) {
            (Value::Scalar(l), Value::Scalar(r)) => {
                let v = l
                    .iter()
                    .zip(&r)
                    .map(|(&l, &r)| Ok(elem(op, l, r, return_bool)?.unwrap_or(f64::NAN)))
                    .collect::<Result<_, PromError>>()?;
                Ok(Value::Scalar(v))
            }
            (Value::Vector(l), Value::Scalar(r)) => {
                Ok(Value::Vector(vector_scalar(op, l, &r, false, return_bool)?))
            }
            (Value::Scalar(l), Value::Vector(r)) => {
                Ok(Value::Vector(vector_scalar(op, r, &l, true, return_bool)?))
            }
            (Value::Vector(l), Value::Vector(r)) => {
                let matching = Matching::of(modifier);
                let out = match op {
                    token::T_LAND => set_and(l, &r, &matching, steps, true),
                    token::T_LUNLESS => set_and(l, &r, &matching, steps, false),
                    token::T_LOR => set_or(l, r, &matching, steps),
                    _ => vector_vector(op, &l, &r, &matching, return_bool, steps)?,
                };
                Ok(Value::Vector(unique(out)?))
            }
            _ => Err(PromError::BadData(
                "binary operators apply to scalars and instant vectors only".into(),
            )),
        }
    }
}

/// A vector and a scalar; `swapped` when the scalar is on the left. A filtering comparison
/// keeps the vector's value, whichever side it is on.
fn vector_scalar(
    op: TokenId,
    vector: Vec<Series>,
    scalar: &[f64],
    swapped: bool,
    return_bool: bool,
) -> Result<Vec<Series>, PromError> {
    let drop_name = !is_comparison(op) || return_bool;
    let mut out = Vec::with_capacity(vector.len());
    for mut s in vector {
        for (p, &x) in s.points.iter_mut().zip(scalar) {
            if let Some(v) = *p {
                let (l, r) = if swapped { (x, v) } else { (v, x) };
                *p = elem(op, l, r, return_bool)?.map(|res| {
                    if is_comparison(op) && !return_bool {
                        v
                    } else {
                        res
                    }
                });
            }
        }
        if drop_name {
            s.labels.remove(NAME_LABEL);
        }
        if s.points.iter().any(Option::is_some) {
            out.push(s);
        }
    }
    unique(out)
}

/// How two vectors match: on the listed labels, or on all but the listed ones (and the
/// name), and which side may have many series per match.
struct Matching {
    on: bool,
    labels: Vec<String>,
    card: VectorMatchCardinality,
}

impl Matching {
    fn of(modifier: Option<&BinModifier>) -> Matching {
        let (on, labels) = match modifier.and_then(|m| m.matching.as_ref()) {
            Some(LabelModifier::Include(l)) => (true, l.labels.clone()),
            Some(LabelModifier::Exclude(l)) => (false, l.labels.clone()),
            None => (false, Vec::new()),
        };
        let card = modifier
            .map(|m| m.card.clone())
            .unwrap_or(VectorMatchCardinality::OneToOne);
        Matching { on, labels, card }
    }

    /// The labels a series is matched by.
    fn signature(&self, labels: &Labels) -> Labels {
        labels
            .iter()
            .filter(|(k, _)| {
                if self.on {
                    self.labels.contains(k)
                } else {
                    *k != NAME_LABEL && !self.labels.contains(k)
                }
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Numbers each series' signature so that matching at a step is an index, not a hash.
fn signatures(matching: &Matching, sides: [&[Series]; 2]) -> (Vec<usize>, Vec<usize>, Vec<Labels>) {
    let mut index: HashMap<Labels, usize> = HashMap::new();
    let mut names = Vec::new();
    let mut ids = |side: &[Series]| -> Vec<usize> {
        side.iter()
            .map(|s| {
                *index
                    .entry(matching.signature(&s.labels))
                    .or_insert_with_key(|k| {
                        names.push(k.clone());
                        names.len() - 1
                    })
            })
            .collect()
    };
    let l = ids(sides[0]);
    let r = ids(sides[1]);
    (l, r, names)
}

/// `and` (`keep_matched`) and `unless`: the left series at the steps where some right
/// series with the same signature has (has not) a value.
fn set_and(
    l: Vec<Series>,
    r: &[Series],
    matching: &Matching,
    steps: Steps,
    keep_matched: bool,
) -> Vec<Series> {
    let (lsig, rsig, names) = signatures(matching, [&l, r]);
    let mut present = vec![false; names.len()];
    let mut out = l;
    for i in 0..steps.n {
        present.iter_mut().for_each(|p| *p = false);
        for (s, &sig) in r.iter().zip(&rsig) {
            present[sig] |= s.points[i].is_some();
        }
        for (s, &sig) in out.iter_mut().zip(&lsig) {
            if present[sig] != keep_matched {
                s.points[i] = None;
            }
        }
    }
    out.retain(|s| s.points.iter().any(Option::is_some));
    out
}

/// `or`: every left series, and the right series at the steps where no left series has
/// their signature.
fn set_or(l: Vec<Series>, r: Vec<Series>, matching: &Matching, steps: Steps) -> Vec<Series> {
    let (lsig, rsig, names) = signatures(matching, [&l, &r]);
    let mut present = vec![false; names.len()];
    let mut right = r;
    for i in 0..steps.n {
        present.iter_mut().for_each(|p| *p = false);
        for (s, &sig) in l.iter().zip(&lsig) {
            present[sig] |= s.points[i].is_some();
        }
        for (s, &sig) in right.iter_mut().zip(&rsig) {
            if present[sig] {
                s.points[i] = None;
            }
        }
    }
    let mut out = l;
    out.extend(
        right
            .into_iter()
            .filter(|s| s.points.iter().any(Option::is_some)),
    );
    out
}

/// Arithmetic and comparisons between two vectors.
fn vector_vector(
    op: TokenId,
    l: &[Series],
    r: &[Series],
    matching: &Matching,
    return_bool: bool,
    steps: Steps,
) -> Result<Vec<Series>, PromError> {
    // The right side is the "one" side; group_right swaps the sides to make it so.
    let swapped = matches!(matching.card, VectorMatchCardinality::OneToMany(_));
    let (many, one) = if swapped { (r, l) } else { (l, r) };
    let (msig, osig, names) = signatures(matching, [many, one]);
    let include: &[String] = match &matching.card {
        VectorMatchCardinality::ManyToOne(ls) | VectorMatchCardinality::OneToMany(ls) => &ls.labels,
        _ => &[],
    };
    let one_to_one = matches!(matching.card, VectorMatchCardinality::OneToOne);
    let drop_name = !is_comparison(op) || return_bool;
    let mut out: Vec<Series> = Vec::new();
    let mut results: HashMap<(usize, usize), usize> = HashMap::new();
    let mut by_labels: HashMap<Labels, usize> = HashMap::new();
    let mut one_at: Vec<Option<usize>> = vec![None; names.len()];
    let mut matched: Vec<Option<usize>> = vec![None; names.len()];
    for i in 0..steps.n {
        index_one_side(one, &osig, &names, swapped, i, &mut one_at)?;
        matched.iter_mut().for_each(|x| *x = None);
        for (j, s) in many.iter().enumerate() {
            let (Some(mv), Some(o)) = (s.points[i], one_at[msig[j]]) else {
                continue;
            };
            let Some(ov) = one[o].points[i] else { continue };
            let (lv, rv) = if swapped { (ov, mv) } else { (mv, ov) };
            let Some(v) = elem(op, lv, rv, return_bool)? else {
                continue;
            };
            let k = *results.entry((j, o)).or_insert_with(|| {
                let labels = result_labels(&s.labels, &one[o].labels, matching, include, drop_name);
                *by_labels.entry(labels).or_insert_with_key(|labels| {
                    out.push(Series {
                        labels: labels.clone(),
                        points: vec![None; steps.n],
                    });
                    out.len() - 1
                })
            });
            if one_to_one {
                if matched[msig[j]].is_some() {
                    return Err(PromError::Execution(
                        "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)".into(),
                    ));
                }
                matched[msig[j]] = Some(k);
            }
            if out[k].points[i].is_some() {
                return Err(if one_to_one {
                    duplicate_labelset()
                } else {
                    not_unique_in_group()
                });
            }
            out[k].points[i] = Some(v);
        }
    }
    out.retain(|s| s.points.iter().any(Option::is_some));
    Ok(out)
}

/// Which series of the "one" side holds each signature at step `i` (`one_at`, by signature);
/// two of them with the same signature is Prometheus's many-to-many error.
fn index_one_side(
    one: &[Series],
    osig: &[usize],
    names: &[Labels],
    swapped: bool,
    i: usize,
    one_at: &mut [Option<usize>],
) -> Result<(), PromError> {
    one_at.iter_mut().for_each(|x| *x = None);
    for (j, s) in one.iter().enumerate() {
        if s.points[i].is_none() {
            continue;
        }
        if let Some(prev) = one_at[osig[j]] {
            return Err(duplicate_match(
                &names[osig[j]],
                swapped,
                &s.labels,
                &one[prev].labels,
            ));
        }
        one_at[osig[j]] = Some(j);
    }
    Ok(())
}

fn not_unique_in_group() -> PromError {
    PromError::Execution(
        "multiple matches for labels: grouping labels must ensure unique matches".into(),
    )
}

/// The labels of a result: the "many" side's, less the name for arithmetic, restricted to
/// the matching labels for one-to-one, with the `group_x` labels taken from the "one" side.
fn result_labels(
    many: &Labels,
    one: &Labels,
    matching: &Matching,
    include: &[String],
    drop_name: bool,
) -> Labels {
    let mut labels = many.clone();
    if drop_name {
        labels.remove(NAME_LABEL);
    }
    if matches!(matching.card, VectorMatchCardinality::OneToOne) {
        if matching.on {
            labels.retain(|k, _| matching.labels.contains(k));
        } else {
            labels.retain(|k, _| !matching.labels.contains(k));
        }
    }
    for name in include {
        match one.get(name) {
            Some(v) if !v.is_empty() => {
                labels.insert(name.clone(), v.clone());
            }
            _ => {
                labels.remove(name);
            }
        }
    }
    labels
}

fn duplicate_match(group: &Labels, swapped: bool, a: &Labels, b: &Labels) -> PromError {
    let side = if swapped { "left" } else { "right" };
    PromError::Execution(format!(
        "found duplicate series for the match group {} on the {side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
        show(group),
        show(a),
        show(b)
    ))
}

/// Labels as Prometheus prints them: `{a="1", b="2"}`.
pub(super) fn show(labels: &Labels) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}
