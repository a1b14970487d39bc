//! A real Prometheus client reads the API as Grafana would: `prometheus-api-client` (PyPI),
//! in a virtual environment cached under `${XDG_CACHE_HOME:-~/.cache}/panopticon-ci/`,
//! against [`panopticon::http::app`] served on a free port over a seeded database, by GET
//! and by POST.

use crate::common;

use std::path::PathBuf;

use common::*;
use panopticon::db::queries::SharedStorage;
use panopticon::http;
use serde_json::Value;

const CLIENT: &str = "prometheus-api-client==0.7.2";

const SCRIPT: &str = r#"
import json, sys
from datetime import datetime, timedelta, timezone
from prometheus_api_client import PrometheusConnect

prom = PrometheusConnect(url=sys.argv[1], disable_ssl=True, method=sys.argv[2])
end = datetime.now(timezone.utc)
print(json.dumps({
    "instant": prom.custom_query("sum by (service) (pod_cpu_usage_percent)"),
    "range": prom.custom_query_range(
        "avg by (pod) (pod_cpu_usage_percent)",
        start_time=end - timedelta(minutes=8), end_time=end, step="60"),
    "pods": prom.get_label_values("pod"),
    "metrics": prom.all_metrics(),
}))
"#;

/// The virtual environment with the client, made once per pinned version.
fn client_python() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"));
    let venv = cache.join("panopticon-ci").join("venv-prometheus-client");
    let python = venv.join("bin").join("python");
    let stamp = venv.join(".stamp");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(CLIENT) {
        return python;
    }
    let _ = std::fs::remove_dir_all(&venv);
    std::fs::create_dir_all(venv.parent().unwrap()).expect("cache directory");
    let run = |cmd: &mut std::process::Command| {
        let status = cmd.status().expect("run");
        assert!(
            status.success(),
            "{cmd:?} failed (python3-venv installed? .ci/test installs it)"
        );
    };
    run(std::process::Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv));
    run(std::process::Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        CLIENT,
    ]));
    std::fs::write(&stamp, CLIENT).expect("stamp");
    python
}

#[actix_web::test]
async fn prometheus_api_client_reads_queries_ranges_labels_and_metrics() {
    let python = tokio::task::spawn_blocking(client_python).await.unwrap();

    // Arrange: three pods of constant CPU, a sample every 15 s over the last 10 minutes.
    let db = TestDatabase::create().await;
    panopticon::db::migrate(&db.url).await.expect("migrated");
    let client = db.client().await;
    let now = now_ms();
    for (pod, service, cpu) in [
        ("a-1", "alpha", 10.0),
        ("a-2", "alpha", 25.0),
        ("b-1", "beta", 40.0),
    ] {
        for k in 0..40i64 {
            let t = now - 1_000 - k * 15_000;
            client
                .execute(
                    "INSERT INTO system_metrics (time, service, pod_name, cpu, memory, namespace, node_name)
                     VALUES (to_timestamp($1::float8 / 1000), $2, $3, $4, 100, 'default', 'n1')",
                    &[&(t as f64), &service, &pod, &cpu],
                )
                .await
                .unwrap();
        }
    }
    let state = app_state(&db.url, SharedStorage::default(), 1_000_000);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = actix_web::HttpServer::new(move || http::app(state.clone()))
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);

    for method in ["GET", "POST"] {
        // Act
        let output = tokio::process::Command::new(&python)
            .arg("-c")
            .arg(SCRIPT)
            .arg(format!("http://127.0.0.1:{port}/prometheus"))
            .arg(method)
            .output()
            .await
            .expect("python runs");
        assert!(
            output.status.success(),
            "{method}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let got: Value = serde_json::from_slice(&output.stdout).expect("the script prints JSON");

        // Assert
        let mut sums: Vec<(String, String)> = got["instant"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["metric"]["service"].as_str().unwrap().to_owned(),
                    s["value"][1].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        sums.sort();
        assert_eq!(
            sums,
            [
                ("alpha".to_owned(), "35".to_owned()),
                ("beta".to_owned(), "40".to_owned())
            ],
            "{method}"
        );
        let range = got["range"].as_array().unwrap();
        assert_eq!(range.len(), 3, "{method}: one series a pod");
        for series in range {
            let expected = match series["metric"]["pod"].as_str().unwrap() {
                "a-1" => "10",
                "a-2" => "25",
                _ => "40",
            };
            let values = series["values"].as_array().unwrap();
            assert!(values.len() >= 8, "{method}: {series}");
            assert!(
                values.iter().all(|v| v[1] == expected),
                "{method}: {series}"
            );
        }
        assert_eq!(
            got["pods"],
            serde_json::json!(["a-1", "a-2", "b-1"]),
            "{method}"
        );
        assert_eq!(
            got["metrics"],
            serde_json::json!(["pod_cpu_usage_percent", "pod_memory_usage_mib"]),
            "{method}"
        );
    }
    handle.stop(false).await;
}
