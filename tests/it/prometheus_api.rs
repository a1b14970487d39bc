//! The Prometheus-compatible API under `/prometheus/api/v1`, served in-process by
//! [`panopticon::http::app`] over a fresh migrated database seeded with known rows.
//!
//! Each supported query is checked against an oracle: the same computation done here from the
//! raw rows, with Prometheus's rules written out independently of the service's code (an
//! instant selector takes the newest sample in `(t − 5m, t]`, a range selector the samples in
//! `(t − range, t]`, steps are `start + i × step` up to `end`). A seeded generator then throws
//! a few hundred strings at the query endpoints: each must get an answer or a JSON error,
//! never a 500.

use crate::common;
use crate::promql_differential::summarizer;

use std::collections::BTreeMap;

use actix_web::test;
use common::*;
use panopticon::db::queries::SharedStorage;
use panopticon::http::{self, AppState};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

type Labels = BTreeMap<String, String>;
/// One instant vector: each series' value.
type Vector = BTreeMap<Labels, f64>;

const CPU: &str = "pod_cpu_usage_percent";
const MEM: &str = "pod_memory_usage_mib";
const LOOKBACK: i64 = 300_000;

/// One seeded row.
#[derive(Debug, Clone)]
struct Row {
    t: i64,
    service: &'static str,
    pod: &'static str,
    namespace: &'static str,
    node: &'static str,
    cpu: f64,
    memory: f64,
}

impl Row {
    fn labels(&self, metric: &str) -> Labels {
        [
            ("__name__", metric),
            ("job", "panopticon"),
            ("service", self.service),
            ("pod", self.pod),
            ("namespace", self.namespace),
            ("node", self.node),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn value(&self, metric: &str) -> f64 {
        if metric == CPU { self.cpu } else { self.memory }
    }
}

const PODS: [(&str, &str, &str, &str); 6] = [
    ("a-1", "alpha", "one", "n1"),
    ("a-2", "alpha", "one", "n1"),
    ("a-3", "alpha", "two", "n2"),
    ("b-1", "beta", "two", "n2"),
    ("b-2", "beta", "one", "n1"),
    ("c-1", "gamma", "two", "n1"),
];

/// 20 minutes of samples every 15 s (offset per pod by whole seconds, so some fall exactly
/// on steps and on lookback edges), with gaps: b-2 stops after 10 minutes, c-1 starts after
/// 7.5, a-3 is silent for over 6 minutes in between. Values are distinct (no ties for topk).
fn rows(base: i64) -> Vec<Row> {
    let mut rows = Vec::new();
    for (p, (pod, service, namespace, node)) in PODS.iter().enumerate() {
        for k in 0..80i64 {
            let silent = match *pod {
                "b-2" => k >= 40,
                "c-1" => k < 30,
                "a-3" => (20..45).contains(&k),
                _ => false,
            };
            if silent {
                continue;
            }
            let p = p as i64;
            rows.push(Row {
                t: base + k * 15_000 + p * 2_000 * (p % 2),
                service,
                pod,
                namespace,
                node,
                cpu: ((k * 37 + p * 53) % 97) as f64 + p as f64 * 0.01 + k as f64 * 0.0001,
                memory: 100.0
                    + ((k * 11 + p * 29) % 61) as f64 * 8.0
                    + p as f64 * 0.1
                    + k as f64 * 0.001,
            });
        }
    }
    rows
}

struct Seeded {
    state: AppState,
    rows: Vec<Row>,
    base: i64,
    _db: TestDatabase,
}

fn state_with(url: &str, max_samples: u32) -> AppState {
    app_state(url, SharedStorage::default(), max_samples)
}

async fn seeded() -> Seeded {
    let db = TestDatabase::create().await;
    panopticon::db::migrate(&db.url).await.expect("migrated");
    let base = (now_ms() / 3_600_000 - 2) * 3_600_000;
    let rows = rows(base);
    let client = db.client().await;
    for chunk in rows.chunks(100) {
        let mut sql = String::from(
            "INSERT INTO system_metrics (time, service, pod_name, cpu, memory, namespace, node_name) VALUES ",
        );
        let values: Vec<String> = chunk
            .iter()
            .map(|r| {
                format!(
                    "(to_timestamp({}::numeric / 1000), '{}', '{}', {}, {}, '{}', '{}')",
                    r.t, r.service, r.pod, r.cpu, r.memory, r.namespace, r.node
                )
            })
            .collect();
        sql.push_str(&values.join(", "));
        client.execute(&sql, &[]).await.expect("seed");
    }
    // The first ten minutes summarised, the rest pending: as the service's summarizer and
    // writer leave them, so that queries are answered from both.
    summarizer::summarise_through(&client, base + 600_000)
        .await
        .expect("summarised");
    Seeded {
        state: state_with(&db.url, 1_000_000),
        rows,
        base,
        _db: db,
    }
}

async fn call(state: &AppState, request: test::TestRequest) -> (u16, Value) {
    let app = test::init_service(http::app(state.clone())).await;
    let response = test::call_service(&app, request.to_request()).await;
    let status = response.status().as_u16();
    let body = test::read_body(response).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn get(state: &AppState, path: &str) -> (u16, Value) {
    call(state, test::TestRequest::get().uri(path)).await
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

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

#[actix_web::test]
async fn form_posts_answer_like_gets() {
    let s = seeded().await;
    let at = s.base + 5 * 60_000;
    let form = format!(
        "query={}&time={}",
        enc("sum by (service) (pod_cpu_usage_percent)"),
        at / 1000
    );
    let (status, posted) = call(
        &s.state,
        test::TestRequest::post()
            .uri("/prometheus/api/v1/query")
            .insert_header(("content-type", "application/x-www-form-urlencoded"))
            .set_payload(form.clone()),
    )
    .await;
    assert_eq!(status, 200, "{posted}");
    let (_, got) = get(&s.state, &format!("/prometheus/api/v1/query?{form}")).await;
    assert_eq!(posted, got);
    assert_eq!(
        posted["data"]["result"].as_array().unwrap().len(),
        2,
        "alpha and beta; gamma starts later"
    );

    let form = format!(
        "match[]={}&start={}&end={}",
        enc(r#"pod_cpu_usage_percent{namespace="two"}"#),
        s.base / 1000,
        (s.base + 1_200_000) / 1000
    );
    let (status, body) = call(
        &s.state,
        test::TestRequest::post()
            .uri("/prometheus/api/v1/series")
            .insert_header(("content-type", "application/x-www-form-urlencoded"))
            .set_payload(form),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut pods: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pod"].as_str().unwrap())
        .collect();
    pods.sort();
    assert_eq!(pods, ["a-3", "b-1", "c-1"]);
    assert_eq!(body["data"][0]["__name__"], CPU);
    assert_eq!(body["data"][0]["job"], "panopticon");
}

#[actix_web::test]
async fn labels_values_metadata_and_buildinfo() {
    let s = seeded().await;
    let range = format!(
        "start={}&end={}",
        s.base / 1000,
        (s.base + 1_200_000) / 1000
    );
    let (status, body) = get(&s.state, &format!("/prometheus/api/v1/labels?{range}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"],
        serde_json::json!(["__name__", "job", "namespace", "node", "pod", "service"])
    );

    for (name, filter, expected) in [
        ("pod", "", vec!["a-1", "a-2", "a-3", "b-1", "b-2", "c-1"]),
        ("service", "", vec!["alpha", "beta", "gamma"]),
        ("namespace", "", vec!["one", "two"]),
        (
            "node",
            r#"pod_cpu_usage_percent{namespace="two"}"#,
            vec!["n1", "n2"],
        ),
        (
            "pod",
            r#"pod_memory_usage_mib{node="n2"}"#,
            vec!["a-3", "b-1"],
        ),
        ("__name__", "", vec![CPU, MEM]),
        ("job", "", vec!["panopticon"]),
        ("nonexistent", "", vec![]),
    ] {
        let matcher = if filter.is_empty() {
            String::new()
        } else {
            format!("&match[]={}", enc(filter))
        };
        let (status, body) = get(
            &s.state,
            &format!("/prometheus/api/v1/label/{name}/values?{range}{matcher}"),
        )
        .await;
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(body["data"], serde_json::json!(expected), "{name} {filter}");
    }
    let (status, body) = get(
        &s.state,
        "/prometheus/api/v1/label/pod/values?start=0&end=1",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["data"], serde_json::json!([]), "nothing in 1970");

    let (status, body) = get(&s.state, "/prometheus/api/v1/metadata").await;
    assert_eq!(status, 200);
    assert_eq!(body["data"][CPU][0]["type"], "gauge");
    assert_eq!(body["data"][MEM][0]["type"], "gauge");
    let (_, body) = get(
        &s.state,
        &format!("/prometheus/api/v1/metadata?metric={MEM}"),
    )
    .await;
    assert_eq!(body["data"].as_object().unwrap().len(), 1);

    let (status, body) = get(&s.state, "/prometheus/api/v1/status/buildinfo").await;
    assert_eq!(status, 200);
    assert!(body["data"]["version"].as_str().unwrap().starts_with('3'));
    let (status, body) = get(
        &s.state,
        "/prometheus/api/v1/query_exemplars?query=x&start=1&end=2",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, serde_json::json!({"status": "success", "data": []}));
}

#[actix_web::test]
async fn errors_are_named_in_the_prometheus_envelope() {
    let s = seeded().await;
    let at = s.base / 1000 + 600;
    let range = format!(
        "start={}&end={}&step=60",
        s.base / 1000,
        s.base / 1000 + 1200
    );
    for (path, status, kind, needle) in [
        (
            format!("query?query={}&time={at}", enc("sum(")),
            400,
            "bad_data",
            "parse error",
        ),
        (format!("query?time={at}"), 400, "bad_data", "query"),
        (
            "query?query=up&time=yesterday".to_owned(),
            400,
            "bad_data",
            "time",
        ),
        (
            format!(
                "query?query={}&time={at}",
                enc("histogram_quantile(0.9, pod_cpu_usage_percent)")
            ),
            422,
            "execution",
            "histogram_quantile",
        ),
        (
            format!(
                "query?query={}&time={at}",
                enc("mad_over_time(pod_cpu_usage_percent[5m])")
            ),
            422,
            "execution",
            "experimental",
        ),
        (
            format!(
                "query?query={}&time={at}",
                enc(r#"pod_cpu_usage_percent{pod=~"(?P<x"}"#)
            ),
            400,
            "bad_data",
            "parse error",
        ),
        (
            format!(
                "query_range?query={}&{range}",
                enc("pod_cpu_usage_percent[5m]")
            ),
            400,
            "bad_data",
            "range vector",
        ),
        (
            format!(
                "query?query={}&time={at}",
                enc("pod_memory_usage_mib / on(namespace) pod_cpu_usage_percent")
            ),
            422,
            "execution",
            "match",
        ),
        (
            "query_range?query=pod_cpu_usage_percent&start=10&end=5&step=1".to_owned(),
            400,
            "bad_data",
            "end",
        ),
        (
            "query_range?query=pod_cpu_usage_percent&start=0&end=1000000&step=1".to_owned(),
            400,
            "bad_data",
            "API_MAX_RANGE_HOURS",
        ),
        (
            "query_range?query=pod_cpu_usage_percent&start=0&end=100000&step=1".to_owned(),
            400,
            "bad_data",
            "API_MAX_BUCKETS",
        ),
        (
            format!("query_range?query=pod_cpu_usage_percent&{range}").replace("step=60", "step=0"),
            400,
            "bad_data",
            "step",
        ),
        (
            format!("query_range?query={}&{range}", enc("\"text\"")),
            400,
            "bad_data",
            "string",
        ),
        (
            format!(
                "query?query={}&time={at}",
                enc("max_over_time(pod_cpu_usage_percent[400d])")
            ),
            400,
            "bad_data",
            "API_MAX_RANGE_HOURS",
        ),
        (
            "series?start=1&end=2".to_owned(),
            400,
            "bad_data",
            "match[]",
        ),
        ("label/1x/values".to_owned(), 400, "bad_data", "label name"),
    ] {
        let (got, body) = get(&s.state, &format!("/prometheus/api/v1/{path}")).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(body["status"], "error", "{path}");
        assert_eq!(body["errorType"], kind, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(needle),
            "{path}: {body}"
        );
    }

    // PROMETHEUS_MAX_SAMPLES: 6 series × 21 steps is over 100.
    let small = state_with(&s._db.url, 100);
    let (status, body) = get(
        &small,
        &format!("/prometheus/api/v1/query_range?query=pod_cpu_usage_percent&{range}"),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("PROMETHEUS_MAX_SAMPLES"),
        "{body}"
    );
    let (status, _) = get(
        &small,
        &format!("/prometheus/api/v1/query?query=pod_cpu_usage_percent&time={at}"),
    )
    .await;
    assert_eq!(status, 200, "one step is within the cap");

    // A database that cannot answer: 503 unavailable, and no password in the error.
    let down = state_with("postgres://postgres:hunter2@127.0.0.1:1/none", 1000);
    let (status, body) = get(
        &down,
        &format!("/prometheus/api/v1/query?query=pod_cpu_usage_percent&time={at}"),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["errorType"], "unavailable");
    assert!(!body.to_string().contains("hunter2"), "{body}");
}

/// Strings of PromQL fragments, mutated valid queries and raw noise.
fn fuzz_inputs(n: usize) -> Vec<String> {
    let mut rng = fastrand::Rng::with_seed(14);
    let fragments = [
        "pod_cpu_usage_percent",
        "pod_memory_usage_mib",
        "up",
        "{",
        "}",
        "(",
        ")",
        "[",
        "]",
        "5m",
        "1h",
        "0s",
        ",",
        "=",
        "!=",
        "=~",
        "!~",
        "\"a-.*\"",
        "\"\"",
        "pod",
        "__name__",
        "by",
        "without",
        "on",
        "ignoring",
        "bool",
        "offset",
        "@",
        "sum",
        "avg",
        "topk",
        "quantile",
        "count_values",
        "rate",
        "avg_over_time",
        "quantile_over_time",
        "last_over_time",
        "+",
        "-",
        "*",
        "/",
        "%",
        "^",
        ">",
        "<=",
        "==",
        "and",
        "or",
        "1",
        "0",
        "-1",
        "1e308",
        "NaN",
        "Inf",
        "0.5",
        "\"",
        "'",
        "`",
        "\\",
        ":",
        "group_left",
        "start()",
        " ",
        "\n",
        "#",
        "1m:30s",
        "-5m",
        "999999999999d",
    ];
    let valid: Vec<&str> = vec![
        "sum by (pod) (pod_cpu_usage_percent)",
        "topk(3, pod_memory_usage_mib)",
        "avg_over_time(pod_cpu_usage_percent{pod=~\"a.*\"}[5m]) > 10",
        "pod_cpu_usage_percent / on(pod) pod_memory_usage_mib",
        "quantile_over_time(0.9, pod_cpu_usage_percent[2m] offset 1m)",
    ];
    let mut out = Vec::new();
    for i in 0..n {
        let s = match i % 3 {
            0 => (0..rng.usize(1..12))
                .map(|_| fragments[rng.usize(..fragments.len())])
                .collect::<Vec<_>>()
                .join(if rng.bool() { " " } else { "" }),
            1 => {
                let mut s: Vec<char> = valid[rng.usize(..valid.len())].chars().collect();
                for _ in 0..rng.usize(1..4) {
                    let at = rng.usize(..=s.len());
                    match rng.u8(..3) {
                        0 if at < s.len() => {
                            s.remove(at);
                        }
                        1 => s.insert(
                            at,
                            fragments[rng.usize(..fragments.len())]
                                .chars()
                                .next()
                                .unwrap_or('x'),
                        ),
                        _ => s.insert(at, rng.char(..)),
                    }
                }
                s.into_iter().collect()
            }
            _ => (0..rng.usize(0..40)).map(|_| rng.char(..)).collect(),
        };
        out.push(s);
    }
    out
}

#[actix_web::test]
async fn any_query_string_gets_an_answer_or_a_json_error() {
    let s = seeded().await;
    let inputs = fuzz_inputs(300);
    let app = test::init_service(http::app(s.state.clone())).await;
    let mut answered = 0;
    for (i, query) in inputs.iter().enumerate() {
        let path = if i % 2 == 0 {
            format!(
                "/prometheus/api/v1/query?query={}&time={}",
                enc(query),
                s.base / 1000 + 600
            )
        } else {
            format!(
                "/prometheus/api/v1/query_range?query={}&start={}&end={}&step=30",
                enc(query),
                s.base / 1000,
                s.base / 1000 + 1200
            )
        };
        let response =
            test::call_service(&app, test::TestRequest::get().uri(&path).to_request()).await;
        let status = response.status().as_u16();
        let body: Value = serde_json::from_slice(&test::read_body(response).await)
            .unwrap_or_else(|e| panic!("{query:?}: not JSON: {e}"));
        assert!(
            matches!(status, 200 | 400 | 422),
            "{query:?}: {status} {body}"
        );
        if status == 200 {
            answered += 1;
            assert_eq!(body["status"], "success");
        } else {
            assert_eq!(body["status"], "error", "{query:?}");
            assert!(body["error"].is_string());
        }
    }
    assert!(answered > 0, "some inputs are valid queries");
}

#[actix_web::test]
async fn every_query_of_the_provisioned_grafana_dashboard_is_answered() {
    let s = seeded().await;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/docker/grafana/dashboards");
    let mut queries = Vec::new();
    for entry in std::fs::read_dir(dir).expect("docker/grafana/dashboards") {
        let path = entry.unwrap().path();
        let dashboard: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                queries.push(target["expr"].as_str().unwrap().to_owned());
            }
        }
        for variable in dashboard["templating"]["list"].as_array().unwrap() {
            // label_values(selector, label): what Grafana asks /label/<label>/values.
            let q = variable["query"]["query"].as_str().unwrap();
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .unwrap();
            let (selector, label) = inner.rsplit_once(',').unwrap();
            let path = format!(
                "/prometheus/api/v1/label/{}/values?match[]={}&start={}&end={}",
                label.trim(),
                enc(&selector.replace("$namespace", ".*")),
                s.base / 1000,
                s.base / 1000 + 1200
            );
            let (status, body) = get(&s.state, &path).await;
            assert_eq!(status, 200, "{q}: {body}");
            assert!(!body["data"].as_array().unwrap().is_empty(), "{q}: {body}");
        }
    }
    assert!(queries.len() >= 6);
    for query in queries {
        let expr = query.replace("$namespace", ".*").replace("$service", ".*");
        let path = format!(
            "/prometheus/api/v1/query_range?query={}&start={}&end={}&step=60",
            enc(&expr),
            s.base / 1000,
            s.base / 1000 + 1200
        );
        let (status, body) = get(&s.state, &path).await;
        assert_eq!(status, 200, "{query}: {body}");
        assert!(
            !body["data"]["result"].as_array().unwrap().is_empty(),
            "{query}: {body}"
        );
    }
}
