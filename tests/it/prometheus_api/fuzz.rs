//! Arbitrary query strings, and every query of the provisioned Grafana dashboard: each gets an
//! answer or a JSON error, never a 500.

use super::*;

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
