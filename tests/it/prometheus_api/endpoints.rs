//! The other endpoints and forms of a request: form posts, labels, label values, metadata,
//! build information, and the errors in Prometheus's envelope.

use super::*;

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
        (
            "pod",
            r#"{pod=~"a-.*", namespace!="two"}"#,
            vec!["a-1", "a-2"],
        ),
        // RE2 classes, matched as Prometheus matches them.
        ("pod", r#"{pod=~"\\w-1"}"#, vec!["a-1", "b-1", "c-1"]),
        ("__name__", r#"{__name__=~".*mib", pod="a-1"}"#, vec![MEM]),
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
