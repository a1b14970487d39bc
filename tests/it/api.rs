//! The REST API, every endpoint and every class of bad parameter, served in-process by
//! [`panopticon::http::app`] over a fresh migrated database seeded with known rows; and
//! `/status` and `/metrics` of the running binary, fed through the pipeline by a real broker.

use crate::common;

use actix_web::test;
use common::*;
use panopticon::db::Storage;
use panopticon::db::queries::SharedStorage;
use panopticon::http::{self, AppState};
use serde_json::Value;

/// The HTTP surface over a database with the schema migrated and a known set of rows.
struct Seeded {
    state: AppState,
    /// What the API plans its queries by: a plain table, as the test server has.
    storage: SharedStorage,
    db: TestDatabase,
    /// Start of the seeded minute, ms.
    base: i64,
}

/// What the handlers get in the service, over the database at `url`, with the default caps
/// (`API_MAX_LIMIT`, `API_MAX_RANGE_HOURS`, `API_MAX_BUCKETS`) and no token.
fn state(url: &str, storage: &SharedStorage) -> AppState {
    app_state(url, storage.clone(), 1_000_000)
}

/// Rows: pods a-1, a-2 (service alpha, ns one, node n1) and b-1 (service beta, ns two, node
/// n2), one sample every 10 s for 2 minutes, cpu = 10 × pod number + seconds / 10.
async fn seeded() -> Seeded {
    let db = TestDatabase::create().await;
    panopticon::db::migrate(&db.url).await.expect("migrated");
    let base = (now_ms() / 600_000 - 1) * 600_000;
    let client = db.client().await;
    for (pod, service, namespace, node, n) in [
        ("a-1", "alpha", "one", "n1", 1),
        ("a-2", "alpha", "one", "n1", 2),
        ("b-1", "beta", "two", "n2", 3),
    ] {
        for step in 0..12i64 {
            let time = base + step * 10_000;
            let cpu = (10 * n) as f64 + step as f64;
            client
                .execute(
                    "INSERT INTO system_metrics (time, service, pod_name, cpu, memory, namespace, node_name)
                     VALUES (to_timestamp($1::float8 / 1000), $2, $3, $4, $5, $6, $7)",
                    &[&(time as f64), &service, &pod, &cpu, &(100.0 * n as f64), &namespace, &node],
                )
                .await
                .unwrap();
        }
    }
    let storage = SharedStorage::default();
    Seeded {
        state: state(&db.url, &storage),
        storage,
        db,
        base,
    }
}

/// `GET path`: the status and the JSON body (null where it is not JSON).
async fn get(state: &AppState, path: &str) -> (u16, Value) {
    let app = test::init_service(http::app(state.clone())).await;
    let response = test::call_service(&app, test::TestRequest::get().uri(path).to_request()).await;
    let status = response.status().as_u16();
    let body = test::read_body(response).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[actix_web::test]
async fn metrics_pages_through_every_row_newest_first() {
    let s = seeded().await;
    let range = format!("from={}&to={}", s.base, s.base + 3_600_000);
    let (status, body) = get(&s.state, &format!("/api/v1/metrics?pod=a-1&{range}")).await;
    assert_eq!(status, 200, "{body}");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 12);
    assert!(
        data.iter()
            .all(|r| r["pod_name"] == "a-1" && r["service"] == "alpha")
    );
    assert_eq!(data[0]["cpu"], 21.0, "newest first");
    assert!(body["next_cursor"].is_null());

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/v1/metrics?limit=5&{range}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = get(&s.state, &path).await;
        assert_eq!(status, 200, "{page}");
        for row in page["data"].as_array().unwrap() {
            seen.push(format!("{}/{}", row["pod_name"], row["time"]));
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let mut unique_seen = seen.clone();
    unique_seen.sort();
    unique_seen.dedup();
    assert_eq!(seen.len(), 36, "every row once");
    assert_eq!(unique_seen.len(), 36);

    let rfc = chrono::DateTime::from_timestamp_millis(s.base + 60_000)
        .unwrap()
        .to_rfc3339();
    let (status, body) = get(
        &s.state,
        &format!(
            "/api/v1/metrics?service=beta&from={}",
            rfc.replace('+', "%2B")
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"].as_array().unwrap().len(),
        6,
        "RFC 3339 from: the second minute"
    );
}

#[actix_web::test]
async fn latest_gives_one_row_per_pod() {
    let s = seeded().await;
    let (status, body) = get(&s.state, "/api/v1/metrics/latest").await;
    assert_eq!(status, 200, "{body}");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    let a1 = data.iter().find(|r| r["pod_name"] == "a-1").unwrap();
    assert_eq!(a1["cpu"], 21.0);
    let (_, body) = get(&s.state, "/api/v1/metrics/latest?namespace=two").await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert_eq!(body["data"][0]["node_name"], "n2");
}

#[actix_web::test]
async fn latest_honours_every_filter() {
    let s = seeded().await;
    for (query, pods) in [
        ("pod=a-2", vec!["a-2"]),
        ("service=alpha", vec!["a-1", "a-2"]),
        ("namespace=two", vec!["b-1"]),
        ("node=n1", vec!["a-1", "a-2"]),
        ("service=alpha&pod=b-1", vec![]),
    ] {
        let (status, body) = get(&s.state, &format!("/api/v1/metrics/latest?{query}")).await;
        assert_eq!(status, 200, "{query}: {body}");
        let got: Vec<&str> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["pod_name"].as_str().unwrap())
            .collect();
        assert_eq!(got, pods, "{query}");
    }
    let (_, body) = get(&s.state, "/api/v1/metrics/latest?pod=a-2").await;
    assert_eq!(body["data"][0]["cpu"], 31.0, "the newest sample of a-2");
}

#[actix_web::test]
async fn series_buckets_and_aggregates() {
    let s = seeded().await;
    let range = format!("from={}&to={}", s.base, s.base + 120_000);
    let (status, body) = get(
        &s.state,
        &format!("/api/v1/metrics/series?bucket=1m&agg=avg&group_by=pod&{range}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let series = body["series"].as_array().unwrap();
    assert_eq!(series.len(), 3);
    let a1 = series.iter().find(|s| s["group"] == "a-1").unwrap();
    let points = a1["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    assert_eq!(points[0]["cpu"], 12.5, "avg of 10..15");
    assert_eq!(points[1]["cpu"], 18.5, "avg of 16..21");

    let (_, body) = get(
        &s.state,
        &format!("/api/v1/metrics/series?bucket=2m&agg=max&group_by=service&{range}"),
    )
    .await;
    let alpha = body["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["group"] == "alpha")
        .unwrap()
        .clone();
    assert_eq!(alpha["points"][0]["cpu"], 31.0);
    assert_eq!(alpha["points"][0]["memory"], 200.0);

    let (_, body) = get(
        &s.state,
        &format!("/api/v1/metrics/series?bucket=2m&agg=p95&group_by=node&node=n2&{range}"),
    )
    .await;
    let n2 = &body["series"][0];
    assert_eq!(n2["group"], "n2");
    let p95 = n2["points"][0]["cpu"].as_f64().unwrap();
    assert!((p95 - 40.45).abs() < 1e-9, "p95 of 30..41 is {p95}");
    let (_, body) = get(
        &s.state,
        &format!("/api/v1/metrics/series?bucket=2m&agg=min&group_by=namespace&{range}"),
    )
    .await;
    assert_eq!(body["series"].as_array().unwrap().len(), 2);
}

/// The server is up before the database is reached: what the series are computed from is
/// read from the shared storage at each request, as start-up sets it once connected.
#[actix_web::test]
async fn series_follow_the_storage_set_after_the_server_is_built() {
    let s = seeded().await;
    let path = format!(
        "/api/v1/metrics/series?bucket=1m&from={}&to={}",
        s.base,
        s.base + 120_000
    );
    let (status, body) = get(&s.state, &path).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["series"].as_array().unwrap().len(), 3);

    // A plain PostgreSQL server has neither the aggregate nor `time_bucket`: told it has
    // both, the API tries the aggregate, falls back to the hypertable's rows, and reports
    // the failure of that.
    s.storage.set(Storage::Hypertable {
        minute_aggregate: true,
    });
    let (status, body) = get(&s.state, &path).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("time_bucket"),
        "{body}"
    );

    s.storage.set(Storage::Table);
    let (status, _) = get(&s.state, &path).await;
    assert_eq!(status, 200);
}

#[actix_web::test]
async fn distinct_values_with_first_last_and_count() {
    let s = seeded().await;
    for (path, names) in [
        ("/api/v1/pods", vec!["a-1", "a-2", "b-1"]),
        ("/api/v1/services", vec!["alpha", "beta"]),
        ("/api/v1/namespaces", vec!["one", "two"]),
        ("/api/v1/nodes", vec!["n1", "n2"]),
    ] {
        let (status, body) = get(&s.state, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        let got: Vec<&str> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(got, names, "{path}");
    }
    let (_, body) = get(&s.state, "/api/v1/services").await;
    assert_eq!(body["data"][0]["samples"], 24);
    let first =
        chrono::DateTime::parse_from_rfc3339(body["data"][0]["first_seen"].as_str().unwrap())
            .unwrap();
    assert_eq!(first.timestamp_millis(), s.base);
    let (_, body) = get(&s.state, "/api/v1/pods?service=beta").await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
}

#[actix_web::test]
async fn every_bad_parameter_is_a_400_naming_the_field() {
    let s = seeded().await;
    let cases = [
        ("/api/v1/metrics?from=yesterday", "from"),
        ("/api/v1/metrics?to=2024-13-45T00:00:00Z", "to"),
        (
            "/api/v1/metrics?from=1730707300000&to=1730707200000",
            "from",
        ),
        ("/api/v1/metrics?from=0&to=1730707200000", "from"),
        ("/api/v1/metrics?limit=-1", "limit"),
        ("/api/v1/metrics?limit=abc", "limit"),
        ("/api/v1/metrics?limit=0", "limit"),
        ("/api/v1/metrics?limit=1000000", "limit"),
        ("/api/v1/metrics?cursor=garbage", "cursor"),
        ("/api/v1/metrics/latest?limit=1.5", "limit"),
        ("/api/v1/metrics/series?agg=median", "agg"),
        ("/api/v1/metrics/series?group_by=cluster", "group_by"),
        ("/api/v1/metrics/series?bucket=fast", "bucket"),
        ("/api/v1/metrics/series?bucket=0s", "bucket"),
        (
            "/api/v1/metrics/series?bucket=1s&from=1730707200000&to=1731307200000",
            "bucket",
        ),
        ("/api/v1/pods?from=soon", "from"),
        ("/api/v1/services?limit=x", "limit"),
        ("/api/v1/namespaces?to=never", "to"),
        ("/api/v1/nodes?limit=-5", "limit"),
    ];
    for (path, field) in cases {
        let (status, body) = get(&s.state, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["field"], field, "{path}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path}: {body}"
        );
    }
    // Filter values are data: an injection attempt matches nothing and breaks nothing.
    for path in [
        "/api/v1/metrics?service=%27%20OR%201%3D1%20--",
        "/api/v1/metrics/latest?namespace=x%27%3B%20DROP%20TABLE%20system_metrics%3B%20--",
        "/api/v1/metrics/series?pod=%27%29%20OR%20true%20--",
    ] {
        let (status, body) = get(&s.state, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(
            body["data"]
                .as_array()
                .map(|d| d.is_empty())
                .unwrap_or(true)
        );
        assert!(
            body["series"]
                .as_array()
                .map(|d| d.is_empty())
                .unwrap_or(true)
        );
    }
    assert_eq!(s.db.count("SELECT count(*) FROM system_metrics").await, 36);
}

#[actix_web::test]
async fn openapi_documents_every_endpoint() {
    // The document is static: no database is ever asked.
    let state = state(
        "postgres://postgres@127.0.0.1:1/unreachable",
        &SharedStorage::default(),
    );
    let (status, doc) = get(&state, "/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    for path in [
        "/api/v1/metrics",
        "/api/v1/metrics/latest",
        "/api/v1/metrics/series",
        "/api/v1/pods",
        "/api/v1/services",
        "/api/v1/namespaces",
        "/api/v1/nodes",
    ] {
        assert!(doc["paths"][path]["get"].is_object(), "{path} missing");
    }
    let params: Vec<&str> = doc["paths"]["/api/v1/metrics/series"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in ["bucket", "agg", "group_by", "from", "to"] {
        assert!(params.contains(&name), "{name} in {params:?}");
    }
    let params = |path: &str| -> Vec<String> {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(params("/api/v1/metrics").contains(&"cursor".to_owned()));
    for path in ["/api/v1/metrics/latest", "/api/v1/pods", "/api/v1/nodes"] {
        let names = params(path);
        for name in ["service", "namespace", "pod", "node", "from", "to", "limit"] {
            assert!(
                names.iter().any(|n| n == name),
                "{path}: {name} in {names:?}"
            );
        }
        assert!(!names.iter().any(|n| n == "cursor"), "{path} pages nothing");
        assert!(
            doc["paths"][path]["get"]["responses"]["503"].is_object(),
            "{path}: 503 when the database is unavailable"
        );
    }
}

#[tokio::test]
async fn prometheus_and_status_report_the_pipeline() {
    let Setup { topic, group, db } = setup().await;
    let app = TestApp::spawn_consuming(service_env(&topic, &group, &db));
    let payloads: Vec<Vec<u8>> = (0..20)
        .map(|i| guide_message(&format!("pod-{i}"), 1.0, 2.0, now_ms()))
        .collect();
    produce(&producer(), &topic, 0, &payloads).await;
    produce(&producer(), &topic, 1, &[b"not json".to_vec()]).await;
    assert_eq!(
        wait_for_count(&db, "SELECT count(*) FROM system_metrics", 20).await,
        20
    );

    let status = app
        .wait_for_status("rates and lag", |s| {
            s["writer"]["actor"]["rate_1m"].as_f64().unwrap_or(0.0) > 0.0
                && s["consumer"]["partitions"]["0"]["committed_offset"] == 20
                && s["validator"]["dead_lettered"] == 1
        })
        .await;
    assert_eq!(status["writer"]["rows_written"], 20);
    assert_eq!(status["validator"]["invalid_by_reason"]["invalid_json"], 1);
    for actor in ["consumer", "validator", "writer"] {
        for field in [
            "mailbox_depth",
            "mailbox_capacity",
            "messages_received",
            "messages_handled",
            "rate_10s",
            "rate_1m",
            "errors",
        ] {
            assert!(
                status[actor]["actor"][field].is_number(),
                "{actor}.{field}: {status:#}"
            );
        }
    }

    let text = reqwest::get(app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "panopticon_records_total{actor=\"writer\"} 20",
        "panopticon_rows_written_total 20",
        "panopticon_invalid_messages_total{reason=\"invalid_json\"} 1",
        // The sum over the default three writer connections of 8 chunks each.
        "panopticon_mailbox_capacity{actor=\"writer\"} 24",
        "panopticon_writer_connection_rows_written_total{connection=\"0\"} 20",
        "panopticon_partition_committed_offset{partition=\"0\"} 20",
        "panopticon_flushes_total{trigger=\"time\"}",
        "panopticon_flushes_total{trigger=\"idle\"}",
        "panopticon_database_up 1",
        "panopticon_dead_letters_total 1",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}
