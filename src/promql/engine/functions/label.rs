//! Functions that rewrite labels: `label_replace` and `label_join`. They work per series
//! (labels do not change from step to step) and keep the metric name.

use promql_parser::parser::Call;

use super::super::aggregate::valid_label_name;
use super::super::{Ctx, unique};
use super::{Kind, arg, string_arg};
use crate::promql::{Labels, PromError, Steps, Value};

pub(super) const FUNCTIONS: &[(&str, Kind)] = &[
    ("label_replace", Kind::Special(label_replace)),
    ("label_join", Kind::Special(label_join)),
];

fn set_or_remove(labels: &mut Labels, name: &str, value: String) {
    if value.is_empty() {
        labels.remove(name);
    } else {
        labels.insert(name.to_owned(), value);
    }
}

/// `label_replace(v, dst, replacement, src, regex)`: where `regex` matches the whole of
/// `src`, `dst` becomes `replacement` with `$1`, `${name}` expanded.
fn label_replace(ctx: &mut Ctx, call: &Call, steps: Steps) -> Result<Value, PromError> {
    let dst = string_arg(call, 1)?;
    let replacement = string_arg(call, 2)?;
    let src = string_arg(call, 3)?;
    let pattern = string_arg(call, 4)?;
    let re = regex::Regex::new(&format!("^(?s:{pattern})$")).map_err(|e| {
        PromError::BadData(format!(
            "invalid regular expression in label_replace(): {pattern}: {e}"
        ))
    })?;
    if !valid_label_name(&dst) {
        return Err(PromError::BadData(format!(
            "invalid destination label name in label_replace(): {dst}"
        )));
    }
    let mut input = ctx.vector(arg(call, 0)?, steps)?;
    for s in &mut input {
        let value = s.labels.get(&src).map(String::as_str).unwrap_or("");
        if let Some(caps) = re.captures(value) {
            let mut out = String::new();
            caps.expand(&replacement, &mut out);
            set_or_remove(&mut s.labels, &dst, out);
        }
    }
    Ok(Value::Vector(unique(input)?))
}

/// `label_join(v, dst, separator, src...)`: `dst` becomes the values of the `src` labels
/// joined by `separator`.
fn label_join(ctx: &mut Ctx, call: &Call, steps: Steps) -> Result<Value, PromError> {
    let dst = string_arg(call, 1)?;
    let separator = string_arg(call, 2)?;
    let sources = (3..call.args.args.len())
        .map(|i| string_arg(call, i))
        .collect::<Result<Vec<_>, _>>()?;
    if !valid_label_name(&dst) {
        return Err(PromError::BadData(format!(
            "invalid destination label name in label_join(): {dst}"
        )));
    }
    let mut input = ctx.vector(arg(call, 0)?, steps)?;
    for s in &mut input {
        let values: Vec<&str> = sources
            .iter()
            .map(|l| s.labels.get(l).map(String::as_str).unwrap_or(""))
            .collect();
        let joined = values.join(&separator);
        set_or_remove(&mut s.labels, &dst, joined);
    }
    Ok(Value::Vector(unique(input)?))
}
