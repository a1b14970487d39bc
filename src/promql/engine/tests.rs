//! The engine over an in-memory storage, with expected values computed by hand from
//! Prometheus 3's rules (many after its promqltest cases).

use super::binary::show;
use super::*;
use crate::promql::{Series, parse};

/// Series loaded as promqltest's `load` does: `name{labels}` and values `a+bxn` (n + 1
/// values from a, step b), `axn`, plain numbers and `_` (no sample), every `interval_s`.
pub(super) struct Mem(pub Vec<SampleSeries>);

impl Mem {
    pub(super) fn load(interval_s: i64, series: &[(&str, &str)]) -> Mem {
        Mem(series
            .iter()
            .map(|(selector, values)| {
                let labels = labels_of(selector);
                let (mut timestamps, mut vals) = (Vec::new(), Vec::new());
                for (i, v) in expand(values).into_iter().enumerate() {
                    if let Some(v) = v {
                        timestamps.push(i as i64 * interval_s * 1000);
                        vals.push(v);
                    }
                }
                SampleSeries {
                    labels,
                    timestamps,
                    values: vals,
                }
            })
            .collect())
    }
}

fn labels_of(selector: &str) -> Labels {
    let Ok(Expr::VectorSelector(vs)) = promql_parser::parser::parse(selector) else {
        panic!("bad series {selector}");
    };
    let mut labels: Labels = vs
        .matchers
        .matchers
        .iter()
        .map(|m| (m.name.clone(), m.value.clone()))
        .collect();
    if let Some(name) = vs.name {
        labels.insert(crate::promql::NAME_LABEL.into(), name);
    }
    labels
}

fn expand(values: &str) -> Vec<Option<f64>> {
    let mut out = Vec::new();
    for item in values.split_whitespace() {
        if item == "_" {
            out.push(None);
        } else if let Some((head, n)) = item.split_once('x') {
            let n: usize = n.parse().unwrap();
            let (a, b) = match head[1..].find(['+', '-']) {
                Some(i) => {
                    let (a, b) = head.split_at(i + 1);
                    (a.parse::<f64>().unwrap(), b.parse::<f64>().unwrap())
                }
                None => (head.parse().unwrap(), 0.0),
            };
            out.extend((0..=n).map(|i| Some(a + b * i as f64)));
        } else {
            out.push(Some(item.parse().unwrap()));
        }
    }
    out
}

impl Mem {
    /// The samples of the series a selection selects, in its range.
    pub(super) fn samples(&self, sel: &Selection) -> Vec<SampleSeries> {
        self.0
            .iter()
            .filter(|s| matches(&sel.matchers, &s.labels))
            .map(|s| {
                let keep: Vec<usize> = (0..s.timestamps.len())
                    .filter(|&i| s.timestamps[i] > sel.start_ms && s.timestamps[i] <= sel.end_ms)
                    .collect();
                SampleSeries {
                    labels: s.labels.clone(),
                    timestamps: keep.iter().map(|&i| s.timestamps[i]).collect(),
                    values: keep.iter().map(|&i| s.values[i]).collect(),
                }
            })
            .collect()
    }
}

impl Storage for Mem {
    fn select(
        &self,
        selections: &[Selection],
        _limits: Limits,
    ) -> impl std::future::Future<Output = Result<Vec<Answer>, PromError>> + Send {
        let answers = selections
            .iter()
            .map(|sel| Answer::Samples(self.samples(sel)))
            .collect();
        async move { Ok(answers) }
    }
}

pub(super) const LIMITS: Limits = Limits {
    max_samples: 50_000_000,
    max_range_ms: 168 * 3_600_000,
};

pub(super) fn run(
    mem: &Mem,
    query: &str,
    steps: Steps,
    limits: Limits,
) -> Result<Value, PromError> {
    let expr = parse(query)?;
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(evaluate(mem, &expr, steps, limits))
}

/// An instant query at `t` seconds: each series as `{labels}` and its value, sorted.
pub(super) fn instant(mem: &Mem, query: &str, t: i64) -> Vec<(String, f64)> {
    match run(mem, query, Steps::instant(t * 1000), LIMITS) {
        Ok(Value::Vector(series)) => {
            let mut out: Vec<(String, f64)> = series
                .iter()
                .filter_map(|s| Some((show(&s.labels), s.points[0]?)))
                .collect();
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out
        }
        Ok(Value::Scalar(v)) => vec![("scalar".into(), v[0])],
        other => panic!("{query}: {other:?}"),
    }
}

pub(super) fn error(mem: &Mem, query: &str, t: i64) -> PromError {
    match run(mem, query, Steps::instant(t * 1000), LIMITS) {
        Err(e) => e,
        Ok(v) => panic!("{query}: expected an error, got {v:?}"),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

/// Checks an instant query's answer against `expected` (`{labels}` and value).
pub(super) fn check(mem: &Mem, query: &str, t: i64, expected: &[(&str, f64)]) {
    let got = instant(mem, query, t);
    let mut want: Vec<(String, f64)> = expected.iter().map(|(l, v)| (l.to_string(), *v)).collect();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    let same = got.len() == want.len()
        && got
            .iter()
            .zip(&want)
            .all(|(g, w)| g.0 == w.0 && close(g.1, w.1));
    assert!(same, "{query} at {t}s:\n got  {got:?}\n want {want:?}");
}

pub(super) fn counters() -> Mem {
    Mem::load(
        60,
        &[
            ("c{job=\"a\"}", "0 10 20 5 15"),
            ("g{job=\"a\"}", "1 3 2"),
            ("lin{job=\"a\"}", "0+60x2"),
            ("o{job=\"a\"}", "1 2 3 4"),
        ],
    )
}

pub(super) fn groups() -> Mem {
    Mem::load(
        60,
        &[
            ("m{g=\"a\",i=\"1\"}", "1"),
            ("m{g=\"a\",i=\"2\"}", "3"),
            ("m{g=\"b\",i=\"3\"}", "5"),
            ("n{g=\"a\"}", "10"),
            ("n{g=\"b\"}", "20"),
            ("n2{g=\"a\",owner=\"x\"}", "1"),
        ],
    )
}

#[test]
fn instant_selectors_look_back_five_minutes_left_open() {
    let mem = Mem::load(60, &[("x", "1 2")]);
    check(&mem, "x", 60, &[("{__name__=\"x\"}", 2.0)]);
    check(&mem, "x", 359, &[("{__name__=\"x\"}", 2.0)]);
    check(&mem, "x", 360, &[]);
    let mem = Mem::load(60, &[("x", "1")]);
    check(&mem, "x", 299, &[("{__name__=\"x\"}", 1.0)]);
    check(&mem, "x", 300, &[]);
}

#[test]
fn the_lookback_edge_is_excluded_at_every_step_of_a_range_query() {
    let mem = Mem::load(60, &[("x", "1 2")]);
    let steps = Steps {
        start_ms: 60_000,
        step_ms: 299_000,
        n: 2,
        end_ms: 359000,
    };
    let Ok(Value::Vector(s)) = run(&mem, "x", steps, LIMITS) else {
        panic!();
    };
    assert_eq!(s[0].points, vec![Some(2.0), Some(2.0)]);
    let steps = Steps {
        step_ms: 300_000,
        ..steps
    };
    let Ok(Value::Vector(s)) = run(&mem, "x", steps, LIMITS) else {
        panic!();
    };
    assert_eq!(s[0].points, vec![Some(2.0), None]);
}

#[test]
fn offsets_and_at_move_the_read_time() {
    let mem = Mem::load(60, &[("x", "0+1x10")]);
    check(&mem, "x offset 2m", 300, &[("{__name__=\"x\"}", 3.0)]);
    check(&mem, "x offset -1m", 300, &[("{__name__=\"x\"}", 6.0)]);
    check(&mem, "x @ 120", 300, &[("{__name__=\"x\"}", 2.0)]);
    check(&mem, "x @ 240 offset 1m", 0, &[("{__name__=\"x\"}", 3.0)]);
    let steps = Steps {
        start_ms: 120_000,
        step_ms: 60_000,
        n: 4,
        end_ms: 300000,
    };
    for (q, v) in [("x @ start()", 2.0), ("x @ end()", 5.0)] {
        let Ok(Value::Vector(s)) = run(&mem, q, steps, LIMITS) else {
            panic!("{q}");
        };
        assert_eq!(s[0].points, vec![Some(v); 4], "{q}");
    }
}

#[test]
fn a_range_selector_alone_is_a_matrix_of_an_instant_query() {
    let mem = Mem::load(60, &[("x", "0+1x10")]);
    let Ok(Value::Matrix(m)) = run(&mem, "x[2m]", Steps::instant(300_000), LIMITS) else {
        panic!("not a matrix");
    };
    assert_eq!(m[0].timestamps, vec![240_000, 300_000]);
    assert_eq!(m[0].values, vec![4.0, 5.0]);
    let steps = Steps {
        start_ms: 0,
        step_ms: 60_000,
        n: 2,
        end_ms: 60000,
    };
    assert!(matches!(
        run(&mem, "x[2m]", steps, LIMITS),
        Err(PromError::BadData(_))
    ));
}

#[test]
fn aggregations_group_by_and_without() {
    let mem = groups();
    check(
        &mem,
        "sum by (g) (m)",
        0,
        &[("{g=\"a\"}", 4.0), ("{g=\"b\"}", 5.0)],
    );
    check(
        &mem,
        "avg by (g) (m)",
        0,
        &[("{g=\"a\"}", 2.0), ("{g=\"b\"}", 5.0)],
    );
    check(&mem, "count(m)", 0, &[("{}", 3.0)]);
    check(
        &mem,
        "max without (i) (m)",
        0,
        &[("{g=\"a\"}", 3.0), ("{g=\"b\"}", 5.0)],
    );
    check(&mem, "min(m)", 0, &[("{}", 1.0)]);
    check(
        &mem,
        "group by (g) (m)",
        0,
        &[("{g=\"a\"}", 1.0), ("{g=\"b\"}", 1.0)],
    );
    check(
        &mem,
        "stddev by (g) (m)",
        0,
        &[("{g=\"a\"}", 1.0), ("{g=\"b\"}", 0.0)],
    );
    check(&mem, "stdvar(m)", 0, &[("{}", 8.0 / 3.0)]);
    check(&mem, "quantile(0.5, m)", 0, &[("{}", 3.0)]);
    check(
        &mem,
        "sum by (__name__) (m)",
        0,
        &[("{__name__=\"m\"}", 9.0)],
    );
    check(
        &mem,
        "topk(1, m)",
        0,
        &[("{__name__=\"m\", g=\"b\", i=\"3\"}", 5.0)],
    );
    check(
        &mem,
        "bottomk by (g) (1, m)",
        0,
        &[
            ("{__name__=\"m\", g=\"a\", i=\"1\"}", 1.0),
            ("{__name__=\"m\", g=\"b\", i=\"3\"}", 5.0),
        ],
    );
    check(
        &mem,
        "count_values(\"v\", n)",
        0,
        &[("{v=\"10\"}", 1.0), ("{v=\"20\"}", 1.0)],
    );
}

#[test]
fn topk_lists_an_instant_query_in_rank_order() {
    let mem = groups();
    let Ok(Value::Vector(s)) = run(&mem, "topk(3, m)", Steps::instant(0), LIMITS) else {
        panic!();
    };
    let values: Vec<f64> = s.iter().filter_map(|s| s.points[0]).collect();
    assert_eq!(values, vec![5.0, 3.0, 1.0]);
    let Ok(Value::Vector(s)) = run(&mem, "sort_desc(m)", Steps::instant(0), LIMITS) else {
        panic!();
    };
    let values: Vec<f64> = s.iter().filter_map(|s| s.points[0]).collect();
    assert_eq!(values, vec![5.0, 3.0, 1.0]);
}

#[test]
fn arithmetic_and_comparisons_with_scalars() {
    let mem = groups();
    check(&mem, "2 ^ 3", 0, &[("scalar", 8.0)]);
    check(&mem, "5 % 3", 0, &[("scalar", 2.0)]);
    check(&mem, "-5 % 3", 0, &[("scalar", -2.0)]);
    check(
        &mem,
        "1 atan2 1",
        0,
        &[("scalar", std::f64::consts::FRAC_PI_4)],
    );
    check(&mem, "2 > bool 1", 0, &[("scalar", 1.0)]);
    check(
        &mem,
        "n * 2",
        0,
        &[("{g=\"a\"}", 20.0), ("{g=\"b\"}", 40.0)],
    );
    check(&mem, "-n", 0, &[("{g=\"a\"}", -10.0), ("{g=\"b\"}", -20.0)]);
    check(&mem, "n > 15", 0, &[("{__name__=\"n\", g=\"b\"}", 20.0)]);
    check(&mem, "15 < n", 0, &[("{__name__=\"n\", g=\"b\"}", 20.0)]);
    check(
        &mem,
        "n > bool 15",
        0,
        &[("{g=\"a\"}", 0.0), ("{g=\"b\"}", 1.0)],
    );
}

#[test]
fn vector_matching() {
    let mem = groups();
    check(
        &mem,
        "m / on(g) group_left n",
        0,
        &[
            ("{g=\"a\", i=\"1\"}", 0.1),
            ("{g=\"a\", i=\"2\"}", 0.3),
            ("{g=\"b\", i=\"3\"}", 0.25),
        ],
    );
    check(
        &mem,
        "n2 * on(g) group_right(owner) m",
        0,
        &[
            ("{g=\"a\", i=\"1\", owner=\"x\"}", 1.0),
            ("{g=\"a\", i=\"2\", owner=\"x\"}", 3.0),
        ],
    );
    check(
        &mem,
        "n - on(g) n",
        0,
        &[("{g=\"a\"}", 0.0), ("{g=\"b\"}", 0.0)],
    );
    check(
        &mem,
        "n == ignoring(owner) n2 * 10",
        0,
        &[("{__name__=\"n\", g=\"a\"}", 10.0)],
    );
    let e = error(&mem, "m + on(g) n", 0);
    assert!(
        e.to_string()
            .contains("many-to-one matching must be explicit"),
        "{e}"
    );
    let e = error(&mem, "n + on(g) group_left m", 0);
    assert!(
        e.to_string()
            .contains("found duplicate series for the match group"),
        "{e}"
    );
}

#[test]
fn a_filtering_comparison_drops_pairs_before_the_one_to_one_check() {
    let mem = groups();
    check(
        &mem,
        "m >= on(g) max by (g) (m)",
        0,
        &[("{g=\"a\"}", 3.0), ("{g=\"b\"}", 5.0)],
    );
    let e = error(&mem, "m >= bool on(g) max by (g) (m)", 0);
    assert!(e.to_string().contains("multiple matches"), "{e}");
}

#[test]
fn set_operators() {
    let mem = groups();
    let m = |i: &str, g: &str, v: f64| (format!("{{__name__=\"m\", g=\"{g}\", i=\"{i}\"}}"), v);
    let owned = |v: Vec<(String, f64)>| v;
    let and = owned(vec![m("1", "a", 1.0), m("2", "a", 3.0)]);
    let and: Vec<(&str, f64)> = and.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    check(&mem, "m and on(g) n{g=\"a\"}", 0, &and);
    let unless = [m("3", "b", 5.0)];
    let unless: Vec<(&str, f64)> = unless.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    check(&mem, "m unless on(g) n{g=\"a\"}", 0, &unless);
    assert_eq!(instant(&mem, "m or n", 0).len(), 5);
    assert_eq!(instant(&mem, "n or n2", 0).len(), 3);
    assert_eq!(instant(&mem, "n or on(g) n2", 0).len(), 2);
}

#[test]
fn duplicate_labelsets_are_refused() {
    let mem = Mem::load(60, &[("x{a=\"1\"}", "1"), ("y{a=\"1\"}", "2")]);
    let e = error(&mem, "{a=\"1\"} * 1", 0);
    assert_eq!(
        e.to_string(),
        "vector cannot contain metrics with the same labelset"
    );
    check(
        &mem,
        "{a=\"1\"} > 0",
        0,
        &[
            ("{__name__=\"x\", a=\"1\"}", 1.0),
            ("{__name__=\"y\", a=\"1\"}", 2.0),
        ],
    );
}

#[test]
fn regex_matchers_are_anchored() {
    let mem = Mem::load(
        60,
        &[
            ("x{a=\"b\"}", "1"),
            ("x{a=\"bc\"}", "2"),
            ("x{a=\"c\"}", "3"),
        ],
    );
    assert_eq!(instant(&mem, "x{a=~\"b|c\"}", 0).len(), 2);
    assert_eq!(instant(&mem, "x{a!~\"b.*\"}", 0).len(), 1);
    assert_eq!(instant(&mem, "x{a=\"b\" or a=\"c\"}", 0).len(), 2);
    assert_eq!(instant(&mem, "x{a!=\"b\"}", 0).len(), 2);
}

#[test]
fn limits_bound_samples_and_ranges() {
    let mem = Mem::load(60, &[("x", "0+1x100")]);
    let limits = Limits {
        max_samples: 10,
        max_range_ms: 3_600_000,
    };
    let expr = "sum_over_time(x[1h])";
    match run(&mem, expr, Steps::instant(6_000_000), limits) {
        Err(PromError::Execution(m)) => assert!(m.contains("too many samples"), "{m}"),
        other => panic!("{other:?}"),
    }
    match run(
        &mem,
        "sum_over_time(x[2h])",
        Steps::instant(6_000_000),
        LIMITS_1H,
    ) {
        Err(PromError::BadData(m)) => assert!(m.contains("API_MAX_RANGE_HOURS"), "{m}"),
        other => panic!("{other:?}"),
    }
    let steps = Steps {
        start_ms: 0,
        step_ms: 1_000,
        n: 11,
        end_ms: 10000,
    };
    let small = Limits {
        max_samples: 20,
        max_range_ms: 3_600_000,
    };
    assert!(matches!(run(&mem, "x", steps, small), Ok(Value::Vector(_))));
    assert!(matches!(
        run(
            &mem,
            "x + x * 0",
            steps,
            Limits {
                max_samples: 5,
                ..small
            }
        ),
        Err(PromError::Execution(_))
    ));
}

const LIMITS_1H: Limits = Limits {
    max_samples: 1_000_000,
    max_range_ms: 3_600_000,
};

#[test]
fn experimental_and_histogram_functions_are_refused_by_name() {
    let mem = groups();
    for (q, what) in [
        ("histogram_quantile(0.9, m)", "histogram_quantile"),
        (
            "sort_by_label(m, \"i\")",
            "experimental function sort_by_label",
        ),
        (
            "mad_over_time(m[5m])",
            "experimental function mad_over_time",
        ),
        (
            "double_exponential_smoothing(m[5m], 0.5, 0.5)",
            "double_exponential_smoothing",
        ),
        ("limitk(1, m)", "experimental aggregation limitk"),
        (
            "limit_ratio(0.5, m)",
            "experimental aggregation limit_ratio",
        ),
        ("m + fill_left(0) m", "experimental fill modifiers"),
    ] {
        match error(&mem, q, 0) {
            PromError::Execution(m) => {
                assert!(
                    m.contains("not supported by Panopticon") && m.contains(what),
                    "{q}: {m}"
                )
            }
            other => panic!("{q}: {other:?}"),
        }
    }
}

#[test]
fn range_queries_give_series_over_the_steps() {
    let mem = Mem::load(60, &[("x{a=\"1\"}", "0+1x10"), ("x{a=\"2\"}", "_ _ _ 5 5")]);
    let steps = Steps {
        start_ms: 0,
        step_ms: 120_000,
        n: 4,
        end_ms: 360000,
    };
    let Ok(Value::Vector(s)) = run(&mem, "sum(x)", steps, LIMITS) else {
        panic!();
    };
    assert_eq!(
        s,
        vec![Series {
            labels: Labels::new(),
            points: vec![Some(0.0), Some(2.0), Some(9.0), Some(11.0)],
        }]
    );
}

/// Times a day of 500 series at 10 s (4.32 M samples) queried at a 60 s step; run with
/// `cargo test --release --lib timing_of_a_day -- --ignored --nocapture`.
#[test]
#[ignore]
fn timing_of_a_day_over_500_series() {
    let day_ms = 86_400_000;
    let series = (0..500)
        .map(|i| {
            let labels: Labels = [
                ("__name__", "pod_cpu_usage_percent".to_string()),
                ("job", "panopticon".into()),
                ("namespace", format!("ns{}", i % 5)),
                ("pod", format!("pod{i}")),
                ("service", format!("svc{}", i % 20)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            let timestamps: Vec<i64> = (1..=8_640).map(|j| j * 10_000).collect();
            let values = (0..8_640)
                .map(|j| ((i * 7 + j * 13) % 100) as f64)
                .collect();
            SampleSeries {
                labels,
                timestamps,
                values,
            }
        })
        .collect();
    let mem = Mem(series);
    let steps = Steps {
        start_ms: 60_000,
        step_ms: 60_000,
        n: (day_ms / 60_000) as usize,
        end_ms: 60_000 + ((day_ms / 60_000) as usize as i64 - 1) * 60_000,
    };
    for query in [
        "pod_cpu_usage_percent",
        "avg by (pod) (pod_cpu_usage_percent)",
        "rate(pod_cpu_usage_percent[5m])",
        "max by (namespace) (avg_over_time(pod_cpu_usage_percent[5m]))",
        "topk(10, pod_cpu_usage_percent)",
        "count(pod_cpu_usage_percent > 90)",
        "pod_cpu_usage_percent >= on(service) group_left max by (service) (pod_cpu_usage_percent)",
    ] {
        let started = std::time::Instant::now();
        let value = run(&mem, query, steps, LIMITS).unwrap();
        let Value::Vector(out) = value else { panic!() };
        println!(
            "{:>7.1} ms  {} series  {query}",
            started.elapsed().as_secs_f64() * 1000.0,
            out.len()
        );
    }
}
