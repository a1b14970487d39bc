//! Every supported query against the oracle, as instant and range queries.

use super::*;

// ---- the oracle ----------------------------------------------------------------------------

/// The instant vector `metric{pred}` at `t`: each series' newest sample in `(t − 5m, t]`.
fn select(rows: &[Row], metric: &str, t: i64, pred: &dyn Fn(&Row) -> bool) -> Vector {
    let mut newest: BTreeMap<Labels, (i64, f64)> = BTreeMap::new();
    for r in rows
        .iter()
        .filter(|r| pred(r) && r.t > t - LOOKBACK && r.t <= t)
    {
        let e = newest.entry(r.labels(metric)).or_insert((i64::MIN, 0.0));
        if r.t > e.0 {
            *e = (r.t, r.value(metric));
        }
    }
    newest.into_iter().map(|(k, (_, v))| (k, v)).collect()
}

/// The samples of each series of `metric{pred}[range]` at `t`, oldest first, name dropped
/// unless `keep_name`.
fn window(
    rows: &[Row],
    metric: &str,
    t: i64,
    range: i64,
    keep_name: bool,
) -> BTreeMap<Labels, Vec<f64>> {
    let mut sorted: Vec<&Row> = rows
        .iter()
        .filter(|r| r.t > t - range && r.t <= t)
        .collect();
    sorted.sort_by_key(|r| r.t);
    let mut out: BTreeMap<Labels, Vec<f64>> = BTreeMap::new();
    for r in sorted {
        let mut labels = r.labels(metric);
        if !keep_name {
            labels.remove("__name__");
        }
        out.entry(labels).or_default().push(r.value(metric));
    }
    out
}

fn over_time(w: BTreeMap<Labels, Vec<f64>>, f: impl Fn(&[f64]) -> f64) -> Vector {
    w.into_iter().map(|(k, v)| (k, f(&v))).collect()
}

/// Groups by the labels `by` (aggregations drop the name).
fn by(v: &Vector, labels: &[&str], f: impl Fn(&[f64]) -> f64) -> Vector {
    group(
        v,
        |l| {
            l.iter()
                .filter(|(k, _)| labels.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        },
        f,
    )
}

fn without(v: &Vector, labels: &[&str], f: impl Fn(&[f64]) -> f64) -> Vector {
    group(
        v,
        |l| {
            l.iter()
                .filter(|(k, _)| !labels.contains(&k.as_str()) && k.as_str() != "__name__")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        },
        f,
    )
}

fn group(v: &Vector, key: impl Fn(&Labels) -> Labels, f: impl Fn(&[f64]) -> f64) -> Vector {
    let mut groups: BTreeMap<Labels, Vec<f64>> = BTreeMap::new();
    for (labels, value) in v {
        groups.entry(key(labels)).or_default().push(*value);
    }
    groups.into_iter().map(|(k, vs)| (k, f(&vs))).collect()
}

fn sum(v: &[f64]) -> f64 {
    v.iter().sum()
}
fn mean(v: &[f64]) -> f64 {
    sum(v) / v.len() as f64
}
fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}
fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}
fn count(v: &[f64]) -> f64 {
    v.len() as f64
}
fn last(v: &[f64]) -> f64 {
    v[v.len() - 1]
}
/// Prometheus's φ-quantile: rank φ(n − 1), linear between the neighbours.
fn quantile(q: f64, v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = q * (v.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    let w = rank - rank.floor();
    v[lo] * (1.0 - w) + v[hi] * w
}

fn drop_name(v: Vector) -> Vector {
    v.into_iter()
        .map(|(mut k, x)| {
            k.remove("__name__");
            (k, x)
        })
        .collect()
}

/// The k series of greatest (or least) value, labels kept, per group of `group_by`.
fn topk(v: &Vector, k: usize, group_by: &[&str], greatest: bool) -> Vector {
    let mut groups: BTreeMap<Labels, Vec<(&Labels, f64)>> = BTreeMap::new();
    for (labels, value) in v {
        let key: Labels = labels
            .iter()
            .filter(|(n, _)| group_by.contains(&n.as_str()))
            .map(|(a, b)| (a.clone(), b.clone()))
            .collect();
        groups.entry(key).or_default().push((labels, *value));
    }
    let mut out = Vector::new();
    for mut members in groups.into_values() {
        members.sort_by(|a, b| {
            if greatest {
                b.1.total_cmp(&a.1)
            } else {
                a.1.total_cmp(&b.1)
            }
        });
        for (labels, value) in members.into_iter().take(k) {
            out.insert(labels.clone(), value);
        }
    }
    out
}

/// `lhs op rhs` matched one-to-one on `key` of each side's labels, labelled by `result`.
fn match_vectors(
    lhs: &Vector,
    rhs: &Vector,
    key: impl Fn(&Labels) -> Labels,
    result: impl Fn(&Labels) -> Labels,
    op: impl Fn(f64, f64) -> Option<f64>,
) -> Vector {
    let right: BTreeMap<Labels, f64> = rhs.iter().map(|(k, v)| (key(k), *v)).collect();
    let mut out = Vector::new();
    for (labels, l) in lhs {
        if let Some(r) = right.get(&key(labels))
            && let Some(v) = op(*l, *r)
        {
            out.insert(result(labels), v);
        }
    }
    out
}

fn no_name(l: &Labels) -> Labels {
    let mut l = l.clone();
    l.remove("__name__");
    l
}

/// Every supported query, with its expected answer at `t` from the rows.
/// What a query should answer at a time, from the rows.
type Oracle = Box<dyn Fn(&[Row], i64) -> Vector>;

fn cases() -> Vec<(&'static str, Oracle)> {
    let all = |_: &Row| true;
    vec![
        (
            "pod_cpu_usage_percent",
            Box::new(move |r, t| select(r, CPU, t, &all)),
        ),
        (
            r#"pod_memory_usage_mib{namespace="one"}"#,
            Box::new(|r, t| select(r, MEM, t, &|x| x.namespace == "one")),
        ),
        (
            r#"pod_cpu_usage_percent{pod!="a-1"}"#,
            Box::new(|r, t| select(r, CPU, t, &|x| x.pod != "a-1")),
        ),
        (
            r#"pod_cpu_usage_percent{pod=~"a-.*"}"#,
            Box::new(|r, t| select(r, CPU, t, &|x| x.pod.starts_with("a-"))),
        ),
        (
            r#"pod_cpu_usage_percent{service!~"al.*",node="n1"}"#,
            Box::new(|r, t| {
                select(r, CPU, t, &|x| {
                    !x.service.starts_with("al") && x.node == "n1"
                })
            }),
        ),
        (
            r#"pod_cpu_usage_percent{pod=~"a|1"}"#,
            Box::new(|_, _| Vector::new()),
        ),
        (
            r#"pod_cpu_usage_percent{pod=~"b-1|c\\-1"}"#,
            Box::new(|r, t| select(r, CPU, t, &|x| x.pod == "b-1" || x.pod == "c-1")),
        ),
        (
            r#"{__name__=~"pod_.*",pod="b-1",job="panopticon"}"#,
            Box::new(|r, t| {
                let mut v = select(r, CPU, t, &|x| x.pod == "b-1");
                v.extend(select(r, MEM, t, &|x| x.pod == "b-1"));
                v
            }),
        ),
        (
            r#"pod_cpu_usage_percent{job="other"}"#,
            Box::new(|_, _| Vector::new()),
        ),
        (
            "sum(pod_cpu_usage_percent)",
            Box::new(move |r, t| by(&select(r, CPU, t, &all), &[], sum)),
        ),
        (
            "avg by (namespace) (pod_cpu_usage_percent)",
            Box::new(move |r, t| by(&select(r, CPU, t, &all), &["namespace"], mean)),
        ),
        (
            "max by (node) (pod_memory_usage_mib)",
            Box::new(move |r, t| by(&select(r, MEM, t, &all), &["node"], max)),
        ),
        (
            "min without (pod, service) (pod_cpu_usage_percent)",
            Box::new(move |r, t| without(&select(r, CPU, t, &all), &["pod", "service"], min)),
        ),
        (
            "count by (service) (pod_cpu_usage_percent)",
            Box::new(move |r, t| by(&select(r, CPU, t, &all), &["service"], count)),
        ),
        (
            "topk(2, pod_cpu_usage_percent)",
            Box::new(move |r, t| topk(&select(r, CPU, t, &all), 2, &[], true)),
        ),
        (
            "bottomk by (namespace) (1, pod_memory_usage_mib)",
            Box::new(move |r, t| topk(&select(r, MEM, t, &all), 1, &["namespace"], false)),
        ),
        (
            "quantile(0.9, pod_cpu_usage_percent)",
            Box::new(move |r, t| by(&select(r, CPU, t, &all), &[], |v| quantile(0.9, v))),
        ),
        (
            "avg_over_time(pod_cpu_usage_percent[2m])",
            Box::new(|r, t| over_time(window(r, CPU, t, 120_000, false), mean)),
        ),
        (
            "max_over_time(pod_cpu_usage_percent[5m])",
            Box::new(|r, t| over_time(window(r, CPU, t, 300_000, false), max)),
        ),
        (
            r#"min_over_time(pod_memory_usage_mib{node="n1"}[90s])"#,
            Box::new(|r, t| {
                let rows: Vec<Row> = r.iter().filter(|x| x.node == "n1").cloned().collect();
                over_time(window(&rows, MEM, t, 90_000, false), min)
            }),
        ),
        (
            "count_over_time(pod_cpu_usage_percent[3m])",
            Box::new(|r, t| over_time(window(r, CPU, t, 180_000, false), count)),
        ),
        (
            "last_over_time(pod_cpu_usage_percent[10m])",
            Box::new(|r, t| over_time(window(r, CPU, t, 600_000, true), last)),
        ),
        (
            "quantile_over_time(0.5, pod_cpu_usage_percent[4m])",
            Box::new(|r, t| over_time(window(r, CPU, t, 240_000, false), |v| quantile(0.5, v))),
        ),
        (
            "pod_cpu_usage_percent > 50",
            Box::new(move |r, t| {
                select(r, CPU, t, &all)
                    .into_iter()
                    .filter(|(_, v)| *v > 50.0)
                    .collect()
            }),
        ),
        (
            "pod_cpu_usage_percent > bool 50",
            Box::new(move |r, t| {
                drop_name(select(r, CPU, t, &all))
                    .into_iter()
                    .map(|(k, v)| (k, f64::from(v > 50.0)))
                    .collect()
            }),
        ),
        (
            "100 - pod_cpu_usage_percent",
            Box::new(move |r, t| {
                drop_name(select(r, CPU, t, &all))
                    .into_iter()
                    .map(|(k, v)| (k, 100.0 - v))
                    .collect()
            }),
        ),
        (
            "-pod_cpu_usage_percent",
            Box::new(move |r, t| {
                drop_name(select(r, CPU, t, &all))
                    .into_iter()
                    .map(|(k, v)| (k, -v))
                    .collect()
            }),
        ),
        (
            "pod_memory_usage_mib / pod_cpu_usage_percent",
            Box::new(move |r, t| {
                match_vectors(
                    &select(r, MEM, t, &all),
                    &select(r, CPU, t, &all),
                    no_name,
                    no_name,
                    |a, b| Some(a / b),
                )
            }),
        ),
        (
            "pod_memory_usage_mib / on(pod) pod_cpu_usage_percent",
            Box::new(move |r, t| {
                let pod = |l: &Labels| Labels::from([("pod".to_owned(), l["pod"].clone())]);
                match_vectors(
                    &select(r, MEM, t, &all),
                    &select(r, CPU, t, &all),
                    pod,
                    pod,
                    |a, b| Some(a / b),
                )
            }),
        ),
        (
            "pod_cpu_usage_percent > ignoring(node) (pod_memory_usage_mib / 10)",
            Box::new(move |r, t| {
                let ignore = |l: &Labels| {
                    let mut l = no_name(l);
                    l.remove("node");
                    l
                };
                let keep = |l: &Labels| {
                    let mut l = l.clone();
                    l.remove("node");
                    l
                };
                let tenth: Vector = drop_name(select(r, MEM, t, &all))
                    .into_iter()
                    .map(|(k, v)| (k, v / 10.0))
                    .collect();
                match_vectors(&select(r, CPU, t, &all), &tenth, ignore, keep, |a, b| {
                    (a > b).then_some(a)
                })
            }),
        ),
        (
            "pod_cpu_usage_percent >= bool on(pod) (pod_memory_usage_mib / 10)",
            Box::new(move |r, t| {
                let pod = |l: &Labels| Labels::from([("pod".to_owned(), l["pod"].clone())]);
                let tenth: Vector = drop_name(select(r, MEM, t, &all))
                    .into_iter()
                    .map(|(k, v)| (k, v / 10.0))
                    .collect();
                match_vectors(&select(r, CPU, t, &all), &tenth, pod, pod, |a, b| {
                    Some(f64::from(a >= b))
                })
            }),
        ),
        (
            "pod_cpu_usage_percent offset 3m",
            Box::new(move |r, t| select(r, CPU, t - 180_000, &all)),
        ),
        (
            "sum by (namespace) (avg_over_time(pod_cpu_usage_percent[2m] offset 1m)) * 2",
            Box::new(|r, t| {
                by(
                    &over_time(window(r, CPU, t - 60_000, 120_000, false), mean),
                    &["namespace"],
                    sum,
                )
                .into_iter()
                .map(|(k, v)| (k, v * 2.0))
                .collect()
            }),
        ),
        (
            "(1 + 2) * 3 - 4 / 8",
            Box::new(|_, _| Vector::from([(Labels::new(), 8.5)])),
        ),
        (
            "2 > bool 1",
            Box::new(|_, _| Vector::from([(Labels::new(), 1.0)])),
        ),
    ]
}

fn number(v: &Value) -> f64 {
    match v.as_str().expect("a value is a string") {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        s => s.parse().expect("a number"),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn labels_of(v: &Value) -> Labels {
    v.as_object()
        .expect("metric is an object")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("label value").to_owned()))
        .collect()
}

fn ms(t: &Value) -> i64 {
    (t.as_f64().expect("a timestamp") * 1000.0).round() as i64
}

/// Compares the answer of a range query with the oracle at each step.
fn check_matrix(query: &str, body: &Value, expected: &BTreeMap<Labels, Vec<(i64, f64)>>) {
    assert_eq!(body["status"], "success", "{query}: {body}");
    assert_eq!(body["data"]["resultType"], "matrix", "{query}");
    let mut got: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
    for series in body["data"]["result"].as_array().unwrap() {
        let points = series["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (ms(&p[0]), number(&p[1])))
            .collect();
        assert!(
            got.insert(labels_of(&series["metric"]), points).is_none(),
            "{query}: a series twice"
        );
    }
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "{query}: the series"
    );
    for (labels, points) in expected {
        let have = &got[labels];
        assert_eq!(
            have.iter().map(|p| p.0).collect::<Vec<_>>(),
            points.iter().map(|p| p.0).collect::<Vec<_>>(),
            "{query}: the steps of {labels:?}"
        );
        for (h, e) in have.iter().zip(points) {
            assert!(
                close(h.1, e.1),
                "{query}: {labels:?} at {}: got {}, expected {}",
                e.0,
                h.1,
                e.1
            );
        }
    }
}

fn expected_matrix(
    f: &dyn Fn(&[Row], i64) -> Vector,
    rows: &[Row],
    start: i64,
    end: i64,
    step: i64,
) -> BTreeMap<Labels, Vec<(i64, f64)>> {
    let mut out: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
    let mut t = start;
    while t <= end {
        for (labels, v) in f(rows, t) {
            out.entry(labels).or_default().push((t, v));
        }
        t += step;
    }
    out
}

#[actix_web::test]
async fn every_supported_query_matches_the_oracle_over_ranges_and_instants() {
    let s = seeded().await;
    let cases = cases();
    assert!(cases.len() >= 25);
    // Steps on the samples' grid, and steps off it; the ranges start before the data and
    // end after it, where every series has gone stale.
    let ranges = [
        (s.base - 120_000, s.base + 28 * 60_000, 60_000, "60"),
        (s.base + 13_500, s.base + 26 * 60_000, 37_000, "37s"),
    ];
    for (query, f) in &cases {
        for (start, end, step_ms, step) in ranges {
            let path = format!(
                "/prometheus/api/v1/query_range?query={}&start={}&end={}&step={step}",
                enc(query),
                start as f64 / 1000.0,
                end as f64 / 1000.0,
            );
            let (status, body) = get(&s.state, &path).await;
            assert_eq!(status, 200, "{query}: {body}");
            let expected = expected_matrix(f.as_ref(), &s.rows, start, end, step_ms);
            if !query.contains("job=\"other\"") && !query.contains("a|1") {
                assert!(
                    !expected.is_empty(),
                    "{query}: the oracle expects something"
                );
            }
            check_matrix(query, &body, &expected);
        }
        // Instant queries, at a time off every grid and at one exactly on samples (RFC 3339).
        for at in [s.base + 7 * 60_000 + 7_500, s.base + 10 * 60_000] {
            let time = if at % 60_000 == 0 {
                enc(&chrono::DateTime::from_timestamp_millis(at)
                    .unwrap()
                    .to_rfc3339())
            } else {
                format!("{}", at as f64 / 1000.0)
            };
            let path = format!("/prometheus/api/v1/query?query={}&time={time}", enc(query));
            let (status, body) = get(&s.state, &path).await;
            assert_eq!(status, 200, "{query}: {body}");
            let expected = f(&s.rows, at);
            let data = &body["data"];
            if data["resultType"] == "scalar" {
                let v = &expected[&Labels::new()];
                assert_eq!(ms(&data["result"][0]), at);
                assert!(close(number(&data["result"][1]), *v), "{query}: {body}");
                continue;
            }
            assert_eq!(data["resultType"], "vector", "{query}: {body}");
            let got: Vector = data["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    assert_eq!(ms(&e["value"][0]), at);
                    (labels_of(&e["metric"]), number(&e["value"][1]))
                })
                .collect();
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                expected.keys().collect::<Vec<_>>(),
                "{query} at {at}"
            );
            for (k, v) in &expected {
                assert!(
                    close(got[k], *v),
                    "{query} at {at}: {k:?}: got {}, expected {v}",
                    got[k]
                );
            }
        }
    }
}
