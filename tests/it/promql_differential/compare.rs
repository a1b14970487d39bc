//! Two answers of the Prometheus HTTP API compared: the envelope's status, the result type,
//! the set of label sets, each series' timestamps and values.

use std::collections::BTreeMap;

use serde_json::Value;

type Labels = BTreeMap<String, String>;

/// How Panopticon's errors name a construct it does not evaluate.
const UNSUPPORTED: &str = "not supported by Panopticon";

/// How one query came out.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Agree,
    /// Both answered, differently; or Prometheus refused and Panopticon answered.
    Differ(String),
    /// Prometheus answered and Panopticon refused.
    Refused(String),
}

/// One series: its labels and its points (ms, value), in the order given.
#[derive(Debug)]
struct Series {
    labels: Labels,
    points: Vec<(i64, f64)>,
}

/// An answer reduced to what is compared.
#[derive(Debug)]
enum Answer {
    Error(String, String),
    Scalar(i64, f64),
    Series(String, Vec<Series>),
}

fn parse_value(v: &Value) -> Result<f64, String> {
    let text = v
        .as_str()
        .ok_or_else(|| format!("value {v} is not a string"))?;
    match text {
        "NaN" => Ok(f64::NAN),
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => text
            .parse()
            .map_err(|_| format!("value {text:?} is no number")),
    }
}

fn parse_point(p: &Value) -> Result<(i64, f64), String> {
    let seconds = p[0]
        .as_f64()
        .ok_or_else(|| format!("point {p} has no timestamp"))?;
    Ok(((seconds * 1000.0).round() as i64, parse_value(&p[1])?))
}

fn parse(envelope: &Value) -> Result<Answer, String> {
    match envelope["status"].as_str() {
        Some("success") => {}
        Some("error") => {
            return Ok(Answer::Error(
                envelope["errorType"].as_str().unwrap_or("?").to_owned(),
                envelope["error"].as_str().unwrap_or("?").to_owned(),
            ));
        }
        _ => return Err(format!("not an API envelope: {envelope}")),
    }
    let data = &envelope["data"];
    let kind = data["resultType"].as_str().unwrap_or("?").to_owned();
    let result = &data["result"];
    match kind.as_str() {
        "scalar" => {
            let (t, v) = parse_point(result)?;
            Ok(Answer::Scalar(t, v))
        }
        "vector" | "matrix" => {
            let items = result.as_array().ok_or("result is not a list")?;
            let mut series = Vec::new();
            for item in items {
                let labels: Labels = item["metric"]
                    .as_object()
                    .ok_or("series without labels")?
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect();
                let points = if kind == "vector" {
                    vec![parse_point(&item["value"])?]
                } else {
                    item["values"]
                        .as_array()
                        .ok_or("series without values")?
                        .iter()
                        .map(parse_point)
                        .collect::<Result<_, _>>()?
                };
                series.push(Series { labels, points });
            }
            Ok(Answer::Series(kind, series))
        }
        other => Err(format!("result type {other:?} is not compared")),
    }
}

/// Equal within a relative 1e-9 (sums taken in another order differ in the last bits); NaN
/// equals NaN and infinities their own sign. Values of a million and more (timestamps in
/// seconds) must also lie within 1e-4 of each other, so that a millisecond still counts.
pub fn close(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    let diff = (a - b).abs();
    let scale = a.abs().max(b.abs());
    diff <= 1e-9 * scale.max(1e-300) && (scale < 1e6 || diff <= 1e-4) || diff == 0.0
}

fn show(labels: &Labels) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

/// Compares Panopticon's answer `ours` with Prometheus's `theirs`. `ordered`: the order of an
/// instant vector's series counts (`sort`, `sort_desc`).
pub fn compare(theirs: &Value, ours: &Value, ordered: bool) -> Outcome {
    let theirs = match parse(theirs) {
        Ok(a) => a,
        Err(e) => return Outcome::Differ(format!("Prometheus: {e}")),
    };
    let ours = match parse(ours) {
        Ok(a) => a,
        Err(e) => return Outcome::Differ(format!("Panopticon: {e}")),
    };
    match (theirs, ours) {
        // Where Prometheus refuses, Panopticon must refuse too, as bad data or as an
        // execution error; `unavailable` would be the database failing, not an answer. A
        // construct Panopticon does not evaluate at all is refused whatever Prometheus says:
        // that it refuses the same query says nothing of why.
        (_, Answer::Error(kind, e)) if e.contains(UNSUPPORTED) => {
            Outcome::Refused(format!("{kind}: {e}"))
        }
        (Answer::Error(_, _), Answer::Error(kind, _))
            if kind == "bad_data" || kind == "execution" =>
        {
            Outcome::Agree
        }
        (Answer::Error(theirs, e), Answer::Error(kind, message)) => Outcome::Differ(format!(
            "Prometheus {theirs}: {e}; Panopticon {kind}: {message}"
        )),
        (Answer::Error(kind, e), _) => Outcome::Differ(format!(
            "Prometheus refuses ({kind}: {e}), Panopticon answers"
        )),
        (_, Answer::Error(kind, e)) => Outcome::Refused(format!("{kind}: {e}")),
        (Answer::Scalar(t1, v1), Answer::Scalar(t2, v2)) => {
            if t1 == t2 && close(v1, v2) {
                Outcome::Agree
            } else {
                Outcome::Differ(format!("scalar {v1} at {t1}, Panopticon {v2} at {t2}"))
            }
        }
        (Answer::Series(k1, s1), Answer::Series(k2, s2)) if k1 == k2 => {
            compare_series(s1, s2, ordered && k1 == "vector")
        }
        (a, b) => Outcome::Differ(format!(
            "result types differ: Prometheus {}, Panopticon {}",
            kind(&a),
            kind(&b)
        )),
    }
}

/// How many points an answer holds (a scalar is one); none for an error.
pub fn points(envelope: &Value) -> usize {
    match parse(envelope) {
        Ok(Answer::Scalar(..)) => 1,
        Ok(Answer::Series(_, series)) => series.iter().map(|s| s.points.len()).sum(),
        _ => 0,
    }
}

fn kind(a: &Answer) -> &str {
    match a {
        Answer::Error(..) => "error",
        Answer::Scalar(..) => "scalar",
        Answer::Series(k, _) => k,
    }
}

fn compare_series(theirs: Vec<Series>, ours: Vec<Series>, ordered: bool) -> Outcome {
    if ordered {
        let a: Vec<&Labels> = theirs.iter().map(|s| &s.labels).collect();
        let b: Vec<&Labels> = ours.iter().map(|s| &s.labels).collect();
        if a != b {
            return Outcome::Differ("the series come in another order".into());
        }
    }
    let mut ours_by: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
    for s in ours {
        if ours_by.insert(s.labels.clone(), s.points).is_some() {
            return Outcome::Differ(format!("Panopticon repeats {}", show(&s.labels)));
        }
    }
    let theirs_by: BTreeMap<Labels, Vec<(i64, f64)>> =
        theirs.into_iter().map(|s| (s.labels, s.points)).collect();
    let missing: Vec<&Labels> = theirs_by
        .keys()
        .filter(|l| !ours_by.contains_key(*l))
        .collect();
    let extra: Vec<&Labels> = ours_by
        .keys()
        .filter(|l| !theirs_by.contains_key(*l))
        .collect();
    if !missing.is_empty() || !extra.is_empty() {
        let first = |v: &[&Labels]| v.first().map(|l| show(l)).unwrap_or_default();
        return Outcome::Differ(format!(
            "label sets: {} missing (e.g. {}), {} extra (e.g. {})",
            missing.len(),
            first(&missing),
            extra.len(),
            first(&extra)
        ));
    }
    for (labels, points) in &theirs_by {
        let mine = &ours_by[labels];
        let times = |p: &[(i64, f64)]| p.iter().map(|(t, _)| *t).collect::<Vec<_>>();
        if times(points) != times(mine) {
            return Outcome::Differ(format!(
                "{}: {} points, Panopticon {} (or other timestamps)",
                show(labels),
                points.len(),
                mine.len()
            ));
        }
        if let Some(((t, a), (_, b))) = points
            .iter()
            .zip(mine)
            .find(|((_, a), (_, b))| !close(*a, *b))
        {
            return Outcome::Differ(format!(
                "{} at {t}: Prometheus {a}, Panopticon {b}",
                show(labels)
            ));
        }
    }
    Outcome::Agree
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vector(value: &str) -> Value {
        json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"pod": "p"}, "value": [1700000000.5, value]}
        ]}})
    }

    #[test]
    fn values_agree_within_a_relative_1e9_and_nan_equals_nan() {
        assert!(close(1.0, 1.0 + 1e-12));
        assert!(!close(1.0, 1.0 + 1e-8));
        assert!(close(f64::NAN, f64::NAN));
        assert!(!close(f64::NAN, 0.0));
        assert!(close(f64::INFINITY, f64::INFINITY));
        assert!(!close(f64::INFINITY, f64::NEG_INFINITY));
        // A timestamp in seconds one millisecond off is a difference.
        assert!(!close(1_700_000_000.001, 1_700_000_000.002));
    }

    #[test]
    fn a_wrong_value_a_missing_series_and_a_refusal_are_told_apart() {
        assert_eq!(
            compare(&vector("1.5"), &vector("1.5"), false),
            Outcome::Agree
        );
        assert!(matches!(
            compare(&vector("1.5"), &vector("1.6"), false),
            Outcome::Differ(_)
        ));
        let empty = json!({"status": "success", "data": {"resultType": "vector", "result": []}});
        assert!(matches!(
            compare(&vector("1"), &empty, false),
            Outcome::Differ(_)
        ));
        let refused = json!({"status": "error", "errorType": "execution",
            "error": "not supported by Panopticon: the function rate()"});
        assert!(matches!(
            compare(&vector("1"), &refused, false),
            Outcome::Refused(_)
        ));
        let theirs = json!({"status": "error", "errorType": "execution",
            "error": "many-to-many matching not allowed"});
        let ours = json!({"status": "error", "errorType": "execution",
            "error": "many-to-many matching"});
        assert_eq!(compare(&theirs, &ours, false), Outcome::Agree);
        assert!(matches!(
            compare(&theirs, &vector("1"), false),
            Outcome::Differ(_)
        ));
        assert!(matches!(
            compare(&theirs, &refused, false),
            Outcome::Refused(_)
        ));
    }
}
