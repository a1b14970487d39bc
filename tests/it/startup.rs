//! Start-up behaviour: malformed settings, unreachable dependencies, probes, the demo.

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

fn base_env() -> HashMap<String, String> {
    HashMap::from([
        ("HTTP_PORT".into(), "0".into()),
        ("HTTP_HOST".into(), "127.0.0.1".into()),
        ("RUST_LOG".into(), "info".into()),
    ])
}

#[test]
fn malformed_settings_exit_with_code_2_and_say_why() {
    let cases = [
        ("BATCH_MAX_ROWS", "lots", "BATCH_MAX_ROWS"),
        ("WRITER_CONNECTIONS", "0", "WRITER_CONNECTIONS"),
        (
            "BATCH_FLUSH_WHEN_IDLE",
            "sometimes",
            "BATCH_FLUSH_WHEN_IDLE",
        ),
        ("HTTP_PORT", "70000", "70000"),
        (
            "TIMESCALE_CHUNK_INTERVAL",
            "30s",
            "must be between 1m and 366d",
        ),
        (
            "DATABASE_URL",
            "postgres://admin:s3cret@localhost:notaport/db",
            "database URL is malformed",
        ),
        (
            "KAFKA_CONSUMER_CONFIG",
            "no.such.property=1",
            "no.such.property",
        ),
        ("KAFKA_CONSUMER_CONFIG", "fetch.wait.max.ms", "key=value"),
    ];
    for (key, value, expected) in cases {
        let mut env = base_env();
        env.insert(key.into(), value.into());
        let mut app = TestApp::spawn_args(env, &[]);
        let status = app.wait_exit(Duration::from_secs(20));
        let output = app.lines().join("\n");
        assert_eq!(status.code(), Some(2), "{key}={value}: {output}");
        assert!(output.contains(expected), "{key}={value}: {output}");
        assert!(!output.contains("s3cret"), "the password leaked: {output}");
    }
}

#[test]
fn help_lists_every_setting_with_its_default() {
    let mut app = TestApp::spawn_args(base_env(), &["--help"]);
    assert_eq!(app.wait_exit(Duration::from_secs(20)).code(), Some(0));
    let help = app.lines().join("\n");
    for (variable, default) in [
        ("KAFKA_BROKERS", "localhost:9092"),
        ("KAFKA_TOPIC", "metrics.system"),
        ("KAFKA_GROUP_ID", "panopticon"),
        ("KAFKA_CONSUMER_CONFIG", "\"\""),
        (
            "DATABASE_URL",
            "postgres://admin:admin123@localhost:5433/panopticon",
        ),
        ("HTTP_PORT", "3001"),
        ("BATCH_MAX_ROWS", "10000"),
        ("CONSUMER_CHUNK_MAX", "5000"),
        ("BATCH_MAX_WAIT_MS", "500"),
        ("VALIDATOR_MAILBOX_CAPACITY", "4"),
        ("WRITER_MAILBOX_CAPACITY", "8"),
        ("WRITER_CONNECTIONS", "3"),
        ("BATCH_FLUSH_WHEN_IDLE", "true"),
        ("METRIC_LOG_MAX_PER_SEC", "100"),
        ("REJECTION_LOG_MAX_PER_SEC", "100"),
        ("SHUTDOWN_TIMEOUT_MS", "30000"),
        ("PROMETHEUS_MAX_SAMPLES", "10000000"),
        ("TIMESCALE_CHUNK_INTERVAL", "1d"),
    ] {
        // Secret settings show their variable without its value.
        assert!(
            help.contains(&format!("env: {variable}="))
                || help.contains(&format!("env: {variable}]")),
            "{variable} missing:\n{help}"
        );
        assert!(
            help.contains(&format!("[default: {default}]")),
            "{default} missing:\n{help}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_database_is_named_once_and_retried_while_probes_answer() {
    let mut env = base_env();
    let port = free_port();
    env.insert(
        "DATABASE_URL".into(),
        format!("postgres://admin:s3cret@127.0.0.1:{port}/panopticon"),
    );
    env.insert("KAFKA_BROKERS".into(), broker().into());
    let app = TestApp::spawn(env);

    let line = app
        .wait_for_log("database unreachable", Duration::from_secs(20))
        .expect("a log line naming the database");
    assert!(
        line.contains(&format!("postgres://admin:***@127.0.0.1:{port}/panopticon")),
        "{line}"
    );
    assert!(line.contains("retrying"), "{line}");

    let health = reqwest::get(app.url("/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = reqwest::get(app.url("/ready")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert!(
        body["reason"].as_str().unwrap().contains("database"),
        "{body}"
    );

    tokio::time::sleep(Duration::from_secs(3)).await;
    let output = app.lines().join("\n");
    assert!(!output.contains("s3cret"), "the password leaked: {output}");
    assert_eq!(
        app.lines_containing("database unreachable").len(),
        1,
        "the same failure is not repeated: {output}"
    );
}

#[tokio::test]
async fn an_unreachable_broker_is_named_and_retried_until_it_answers() {
    let db = TestDatabase::create().await;
    let mut env = base_env();
    env.insert("DATABASE_URL".into(), db.url.clone());
    env.insert("KAFKA_BROKERS".into(), format!("127.0.0.1:{}", free_port()));
    let app = TestApp::spawn(env);

    let line = app
        .wait_for_log("Kafka broker unreachable", Duration::from_secs(30))
        .expect("a log line naming the broker");
    assert!(line.contains("retrying"), "{line}");
    let ready = reqwest::get(app.url("/ready")).await.unwrap();
    assert_eq!(ready.status(), 503);
}

#[tokio::test]
async fn ready_once_partitions_are_assigned() {
    let Setup { topic, group, db } = setup().await;
    let app = TestApp::spawn_consuming(service_env(&topic, &group, &db));
    let status = app.wait_for_status("ready", |s| s["ready"] == true).await;
    assert_eq!(
        status["consumer"]["assigned_partitions"],
        serde_json::json!([0, 1, 2])
    );
    assert_eq!(reqwest::get(app.url("/ready")).await.unwrap().status(), 200);
    assert_eq!(status["backpressure"]["state"], "ok");
}

#[tokio::test]
async fn the_demo_runs_the_pipeline_without_a_kafka_installation() {
    let db = TestDatabase::create().await;
    let mut env = base_env();
    env.insert("DATABASE_URL".into(), db.url.clone());
    env.insert("BATCH_MAX_WAIT_MS".into(), "200".into());
    let mut app = TestApp::spawn_args(env, &["demo", "--pods", "12", "--interval-ms", "200"]);

    let stored = wait_for_count(
        &db,
        "SELECT count(DISTINCT pod_name) FROM system_metrics",
        12,
    )
    .await;
    assert_eq!(
        stored,
        12,
        "every simulated pod is stored: {:#?}",
        app.lines()
    );
    assert!(
        app.wait_for_log("[METRIC] service=", Duration::from_secs(10))
            .is_some()
    );

    app.signal("INT");
    assert_eq!(app.wait_exit(Duration::from_secs(30)).code(), Some(0));
    let rows = db.count("SELECT count(*) FROM system_metrics").await;
    let committed = db
        .count("SELECT COALESCE(SUM(next_offset), 0)::int8 FROM kafka_offsets")
        .await;
    assert_eq!(rows, committed, "every consumed sample is stored once");
}
