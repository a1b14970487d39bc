//! Black-box tests of the ingest pipeline: the `panopticon` binary against a real
//! Kafka-protocol broker and a fresh PostgreSQL database per test.

use crate::common;

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use common::*;

fn iso(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Produces `count` metrics to `partition` of the setup's topic, in order, from the pods
/// `{prefix}{i}`, each with `value` as its CPU and memory, the i-th stamped `ts - i`.
async fn produce_pods(s: &Setup, partition: i32, prefix: &str, count: i64, value: f64, ts: i64) {
    let payloads: Vec<Vec<u8>> = (0..count)
        .map(|i| guide_message(&format!("{prefix}{i}"), value, value, ts - i))
        .collect();
    produce(&producer(), &s.topic, partition, &payloads).await;
}

#[tokio::test]
async fn guide_method_1_prints_the_metric_line() {
    let s = setup().await;
    let app = TestApp::spawn_consuming(s.env());
    let ts = now_ms();

    produce(
        &producer(),
        &s.topic,
        0,
        &[guide_message("test-pod-123", 78.5, 512.3, ts)],
    )
    .await;

    let expected = format!(
        "[METRIC] service=log-generator pod=test-pod-123 CPU=78.50% Memory=512.30Mi timestamp={}",
        iso(ts)
    );
    let line = app.wait_for_log("[METRIC]", Duration::from_secs(30));
    assert!(
        line.as_deref().is_some_and(|l| l.ends_with(&expected)),
        "expected a line ending in {expected:?}, got {line:?}"
    );
}

#[tokio::test]
async fn guide_method_2_prints_three_lines_in_order() {
    let s = setup().await;
    let app = TestApp::spawn_consuming(s.env());
    let producer = producer();

    let pods = [
        ("test-pod-001", 60.5, 250.0),
        ("test-pod-002", 70.5, 300.0),
        ("test-pod-003", 80.5, 350.0),
    ];
    for (pod, cpu, memory) in pods {
        produce(
            &producer,
            &s.topic,
            0,
            &[guide_message(pod, cpu, memory, now_ms())],
        )
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    app.wait_for_log("pod=test-pod-003", Duration::from_secs(30));
    let lines = app.lines_containing("[METRIC]");
    let expected = [
        "pod=test-pod-001 CPU=60.50% Memory=250.00Mi",
        "pod=test-pod-002 CPU=70.50% Memory=300.00Mi",
        "pod=test-pod-003 CPU=80.50% Memory=350.00Mi",
    ];
    assert_eq!(lines.len(), 3, "{lines:#?}");
    for (line, part) in lines.iter().zip(expected) {
        assert!(line.contains(part), "{line} should contain {part}");
    }
}

#[tokio::test]
async fn guide_method_3_stores_the_row_within_3_seconds() {
    let s = setup().await;
    let _app = TestApp::spawn_consuming(s.env());
    let ts = now_ms();

    produce(
        &producer(),
        &s.topic,
        1,
        &[guide_message("db-test-pod-999", 85.5, 400.0, ts)],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let client = s.db.client().await;
    let rows = client
        .query(
            "SELECT time, service, pod_name, cpu, memory, namespace, node_name FROM system_metrics
             WHERE service = 'log-generator' ORDER BY time DESC LIMIT 5",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.get::<_, DateTime<Utc>>(0).timestamp_millis(), ts);
    assert_eq!(row.get::<_, String>(1), "log-generator");
    assert_eq!(row.get::<_, String>(2), "db-test-pod-999");
    assert_eq!(row.get::<_, f64>(3), 85.5);
    assert_eq!(row.get::<_, f64>(4), 400.0);
    assert_eq!(row.get::<_, String>(5), "default");
    assert_eq!(row.get::<_, String>(6), "kind-control-plane");
}

#[tokio::test]
async fn every_fixture_behaves_as_described() {
    let s = setup().await;
    let app = TestApp::spawn_consuming(s.env());
    let valid = fixtures("valid.jsonl");
    let invalid = fixtures("invalid.jsonl");
    // Invalid ones first and between, so that every one of them must be passed to store
    // the valid ones behind it.
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    for (i, bad) in invalid.iter().enumerate() {
        payloads.push(bad.payload.clone());
        if let Some(good) = valid.get(i) {
            payloads.push(good.payload.clone());
        }
    }
    produce(&producer(), &s.topic, 2, &payloads).await;

    let total = payloads.len() as i64;
    let committed = wait_for_count(
        &s.db,
        "SELECT COALESCE(SUM(next_offset), 0)::int8 FROM kafka_offsets",
        total,
    )
    .await;
    assert_eq!(committed, total, "every message, valid or not, is done");

    let client = s.db.client().await;
    let rows = client
        .query(
            "SELECT (extract(epoch FROM time) * 1000)::int8, service, pod_name, namespace, node_name, cpu, memory
             FROM system_metrics ORDER BY time",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        rows.len(),
        valid.len(),
        "exactly the valid fixtures are stored"
    );
    for (row, fixture) in rows.iter().zip(&valid) {
        let expected = fixture.row.as_ref().unwrap();
        assert_eq!(
            row.get::<_, i64>(0),
            expected["time_ms"].as_i64().unwrap(),
            "{}",
            fixture.case
        );
        // The columns after `time`, in the query's order, each against the fixture's field.
        for (column, field) in [
            (1, "service"),
            (2, "pod_name"),
            (3, "namespace"),
            (4, "node_name"),
        ] {
            assert_eq!(
                row.get::<_, String>(column),
                expected[field].as_str().unwrap(),
                "{} {field}",
                fixture.case
            );
        }
        for (column, field) in [(5, "cpu"), (6, "memory")] {
            assert_eq!(
                row.get::<_, f64>(column),
                expected[field].as_f64().unwrap(),
                "{} {field}",
                fixture.case
            );
        }
    }

    let status = app.status().await;
    assert_eq!(
        status["validator"]["invalid_total"],
        invalid.len() as u64,
        "{status:#}"
    );
    let warnings = app.lines_containing("invalid message skipped partition=2");
    assert_eq!(warnings.len(), invalid.len(), "{warnings:#?}");
    assert!(
        warnings
            .iter()
            .all(|w| w.contains("offset=") && w.contains("reason="))
    );
}

#[tokio::test]
async fn an_invalid_message_between_two_valid_ones_is_skipped_and_passed() {
    let s = setup().await;
    let app = TestApp::spawn_consuming(s.env());
    let ts = now_ms();

    let payloads = [
        guide_message("before", 10.0, 100.0, ts),
        b"{\"timestamp\": \"yesterday\"}".to_vec(),
        guide_message("after", 20.0, 200.0, ts + 1),
    ];
    produce(&producer(), &s.topic, 0, &payloads).await;

    let stored = wait_for_count(&s.db, "SELECT count(*) FROM system_metrics", 2).await;
    assert_eq!(stored, 2);
    let pods =
        s.db.count("SELECT count(*) FROM system_metrics WHERE pod_name IN ('before', 'after')")
            .await;
    assert_eq!(pods, 2);
    let next = wait_for_count(
        &s.db,
        "SELECT COALESCE(MAX(next_offset), 0)::int8 FROM kafka_offsets WHERE partition = 0",
        3,
    )
    .await;
    assert_eq!(next, 3, "the offset advances past the invalid message");
    let status = app.status().await;
    assert_eq!(
        status["validator"]["invalid_by_reason"]["wrong_type"], 1,
        "{status:#}"
    );
    let warning = app.lines_containing("invalid message skipped");
    assert_eq!(warning.len(), 1);
    assert!(
        warning[0].contains("partition=0 offset=1 reason=wrong_type"),
        "{}",
        warning[0]
    );
}

#[tokio::test]
async fn rejection_warnings_have_a_cap_of_their_own() {
    let s = setup().await;
    let app = TestApp::spawn_consuming(s.env_with(&[
        ("REJECTION_LOG_MAX_PER_SEC", "2"),
        ("METRIC_LOG_MAX_PER_SEC", "1000"),
    ]));
    let ts = now_ms();
    let mut payloads = Vec::new();
    for i in 0..10 {
        payloads.push(b"{\"timestamp\": \"yesterday\"}".to_vec());
        payloads.push(guide_message(&format!("capped-{i}"), 10.0, 100.0, ts + i));
    }
    produce(&producer(), &s.topic, 0, &payloads).await;

    wait_for_count(&s.db, "SELECT count(*) FROM system_metrics", 10).await;
    let next = wait_for_count(
        &s.db,
        "SELECT COALESCE(MAX(next_offset), 0)::int8 FROM kafka_offsets WHERE partition = 0",
        20,
    )
    .await;
    assert_eq!(next, 20);
    let status = app.status().await;
    assert_eq!(
        status["validator"]["invalid_by_reason"]["wrong_type"], 10,
        "every rejection is counted, logged or not: {status:#}"
    );
    // Read in a second or two: two windows at most.
    let warnings = app.lines_containing("invalid message skipped").len();
    assert!(
        (1..=4).contains(&warnings),
        "{warnings} rejection warnings for 10 rejections at 2 a second"
    );
    // The [METRIC] lines keep their own cap.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while app
        .lines_containing("[METRIC] service=log-generator pod=capped-")
        .len()
        < 10
    {
        assert!(
            std::time::Instant::now() < deadline,
            "[METRIC] lines were capped by the rejection cap"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_full_batch_is_flushed_by_size() {
    let s = setup().await;
    let app = TestApp::spawn_consuming(s.env_with(&[
        ("BATCH_MAX_ROWS", "10"),
        ("BATCH_MAX_WAIT_MS", "3600000"),
        ("BATCH_FLUSH_WHEN_IDLE", "false"),
    ]));
    let ts = now_ms();

    produce_pods(&s, 0, "pod-", 25, 1.0, ts).await;

    let status = app
        .wait_for_status("25 rows consumed and a batch flushed", |s| {
            s["writer"]["actor"]["records"] == 25
                && s["writer"]["flushes"]["size"].as_u64().unwrap_or(0) >= 1
                && s["writer"]["actor"]["mailbox_depth"] == 0
                && s["writer"]["rows_written"].as_u64().unwrap_or(0)
                    + s["writer"]["rows_buffered"].as_u64().unwrap_or(0)
                    == 25
        })
        .await;
    // Chunks may carry more than one row, so flushes happen at 10 rows or more, never fewer.
    let stored = s.db.count("SELECT count(*) FROM system_metrics").await;
    let buffered = status["writer"]["rows_buffered"].as_i64().unwrap();
    assert_eq!(stored + buffered, 25, "{status:#}");
    assert!(
        stored >= 10 && buffered < 10,
        "stored {stored}, buffered {buffered}"
    );
    assert!(status["writer"]["flushes"]["size"].as_u64().unwrap() >= 1);
    assert_eq!(
        status["writer"]["flushes"]["time"], 0,
        "the time trigger is an hour away"
    );
}

#[tokio::test]
async fn an_idle_writer_flushes_at_once() {
    let s = setup().await;
    let app = TestApp::spawn_consuming(s.env_with(&[
        ("BATCH_MAX_ROWS", "100000"),
        ("BATCH_MAX_WAIT_MS", "3600000"),
    ]));

    produce_pods(&s, 0, "pod-", 3, 1.0, now_ms()).await;

    // Neither the size nor the time trigger is anywhere near: the writer has nothing else to do.
    assert_eq!(
        wait_for_count(&s.db, "SELECT count(*) FROM system_metrics", 3).await,
        3
    );
    let status = app.status().await;
    assert!(
        status["writer"]["flushes"]["idle"].as_u64().unwrap() >= 1,
        "{status:#}"
    );
    assert_eq!(status["writer"]["flushes"]["size"], 0);
    assert_eq!(status["writer"]["flushes"]["time"], 0);
    assert_eq!(status["writer"]["last_flush"]["trigger"], "idle");
    assert_eq!(status["writer"]["rows_buffered"], 0);
}

#[tokio::test]
async fn writer_connections_share_the_partitions_and_status_sums_them() {
    let s = setup().await;
    let app = TestApp::spawn_consuming(s.env_with(&[("WRITER_CONNECTIONS", "2")]));
    let ts = now_ms();
    for partition in 0..PARTITIONS {
        produce_pods(&s, partition, &format!("pod-{partition}-"), 20, 5.0, ts).await;
    }
    let total = 20 * PARTITIONS as i64;
    assert_eq!(
        wait_for_count(&s.db, "SELECT count(*) FROM system_metrics", total).await,
        total
    );
    let status = app
        .wait_for_status("every row counted as written", |s| {
            s["writer"]["rows_written"] == total
        })
        .await;

    let connections = status["writer"]["connections"].as_array().unwrap();
    assert_eq!(connections.len(), 2, "{status:#}");
    let mut owned: Vec<i64> = Vec::new();
    let (mut written, mut flushes) = (0, 0);
    for connection in connections {
        let partitions: Vec<i64> = connection["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_i64().unwrap())
            .collect();
        // The writer owning the fewest takes the next partition: 3 partitions split 2 and 1.
        assert!(
            (1..=2).contains(&partitions.len()),
            "each connection owns one or two partitions: {status:#}"
        );
        let rows = connection["rows_written"].as_i64().unwrap();
        assert_eq!(rows, 20 * partitions.len() as i64, "{status:#}");
        owned.extend(partitions);
        written += rows;
        flushes += connection["flushes"].as_u64().unwrap();
    }
    owned.sort_unstable();
    assert_eq!(
        owned,
        (0..PARTITIONS as i64).collect::<Vec<_>>(),
        "{status:#}"
    );
    assert_eq!(written, total);
    let by_trigger: u64 = ["size", "time", "idle", "shutdown"]
        .iter()
        .map(|t| status["writer"]["flushes"][t].as_u64().unwrap())
        .sum();
    assert_eq!(flushes, by_trigger, "{status:#}");

    let metrics = reqwest::get(app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for connection in ["0", "1"] {
        assert!(
            metrics.contains(&format!(
                "panopticon_writer_connection_rows_written_total{{connection=\"{connection}\"}}"
            )),
            "{metrics}"
        );
    }
}

#[tokio::test]
async fn a_waiting_batch_is_flushed_by_time() {
    let s = setup().await;
    let app = TestApp::spawn_consuming(s.env_with(&[
        ("BATCH_MAX_ROWS", "100000"),
        ("BATCH_MAX_WAIT_MS", "300"),
        ("BATCH_FLUSH_WHEN_IDLE", "false"),
    ]));

    produce_pods(&s, 0, "pod-", 3, 1.0, now_ms()).await;

    assert_eq!(
        wait_for_count(&s.db, "SELECT count(*) FROM system_metrics", 3).await,
        3
    );
    let status = app.status().await;
    assert!(
        status["writer"]["flushes"]["time"].as_u64().unwrap() >= 1,
        "{status:#}"
    );
    assert_eq!(status["writer"]["flushes"]["size"], 0);
    assert_eq!(status["writer"]["last_flush"]["trigger"], "time");
}

#[tokio::test]
async fn a_killed_service_loses_nothing_on_restart() {
    let s = setup().await;
    let mut env = s.env_with(&[
        ("BATCH_MAX_WAIT_MS", "3600000"),
        ("BATCH_MAX_ROWS", "1000000"),
        ("BATCH_FLUSH_WHEN_IDLE", "false"),
    ]);
    let mut app = TestApp::spawn_consuming(env.clone());
    let ts = now_ms();
    for partition in 0..PARTITIONS {
        produce_pods(&s, partition, &format!("pod-{partition}-"), 50, 5.0, ts).await;
    }
    app.wait_for_status("all records buffered", |s| {
        s["writer"]["rows_buffered"] == 150
    })
    .await;

    app.signal("KILL");
    app.wait_exit(Duration::from_secs(10));
    assert_eq!(
        s.db.count("SELECT count(*) FROM system_metrics").await,
        0,
        "nothing was flushed"
    );

    env.insert("BATCH_MAX_WAIT_MS".into(), "200".into());
    let _restarted = TestApp::spawn_consuming(env);
    let stored = wait_for_count(&s.db, "SELECT count(*) FROM system_metrics", 150).await;
    assert_eq!(
        stored, 150,
        "every metric consumed before the crash is delivered again"
    );
}

#[tokio::test]
async fn sigterm_flushes_commits_and_exits_0() {
    let s = setup().await;
    let mut env = s.env_with(&[
        ("BATCH_MAX_WAIT_MS", "3600000"),
        ("BATCH_MAX_ROWS", "1000000"),
        ("BATCH_FLUSH_WHEN_IDLE", "false"),
    ]);
    let mut app = TestApp::spawn_consuming(env.clone());
    let ts = now_ms();
    produce_pods(&s, 1, "pod-", 40, 5.0, ts).await;
    app.wait_for_status("all records buffered", |s| {
        s["writer"]["rows_buffered"] == 40
    })
    .await;
    assert_eq!(s.db.count("SELECT count(*) FROM system_metrics").await, 0);

    app.signal("TERM");
    let status = app.wait_exit(Duration::from_secs(30));

    assert_eq!(status.code(), Some(0), "{:#?}", app.lines());
    assert_eq!(s.db.count("SELECT count(*) FROM system_metrics").await, 40);
    assert_eq!(
        s.db.count("SELECT next_offset FROM kafka_offsets WHERE partition = 1")
            .await,
        40
    );
    assert!(
        app.wait_for_log("final offsets committed", Duration::from_secs(5))
            .is_some()
    );

    // The offsets reached Kafka too: a new instance of the group consumes nothing again.
    env.insert("BATCH_MAX_WAIT_MS".into(), "200".into());
    let again = TestApp::spawn_consuming(env);
    produce(
        &producer(),
        &s.topic,
        1,
        &[guide_message("marker", 1.0, 1.0, ts + 1)],
    )
    .await;
    let stored = wait_for_count(&s.db, "SELECT count(*) FROM system_metrics", 41).await;
    assert_eq!(stored, 41);
    let status = again.status().await;
    assert_eq!(status["consumer"]["actor"]["records"], 1, "{status:#}");
}

#[tokio::test]
async fn a_stalled_database_pauses_consumption_instead_of_buffering() {
    let s = setup().await;
    let app = TestApp::spawn_consuming(s.env_with(&[
        ("BATCH_MAX_ROWS", "10"),
        ("BATCH_MAX_WAIT_MS", "50"),
        ("CONSUMER_CHUNK_MAX", "10"),
        ("VALIDATOR_MAILBOX_CAPACITY", "1"),
        ("WRITER_MAILBOX_CAPACITY", "1"),
    ]));
    app.wait_for_status("ready", |s| s["ready"] == true).await;

    // Hold the table so that every write waits, as behind a stalled disk.
    let mut blocker = s.db.client().await;
    let lock = blocker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE system_metrics IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    let ts = now_ms();
    produce_pods(&s, 0, "pod-", 2000, 1.0, ts).await;

    let status = app
        .wait_for_status("the consumer to pause", |s| {
            s["backpressure"]["state"] == "paused"
        })
        .await;
    assert_eq!(
        status["consumer"]["paused_partitions"],
        serde_json::json!([0, 1, 2]),
        "{status:#}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = app.status().await;
    let taken = status["consumer"]["actor"]["records"].as_u64().unwrap();
    // A chunk in the writer's flush, one in each mailbox slot, one in each hand: bounded by
    // the mailbox capacities, not by the backlog.
    assert!(
        taken <= 100,
        "the consumer took {taken} of 2000 records while the database stalled: {status:#}"
    );
    assert_eq!(s.db.count("SELECT count(*) FROM kafka_offsets").await, 0);

    lock.rollback().await.unwrap();
    let stored = wait_for_count(&s.db, "SELECT count(*) FROM system_metrics", 2000).await;
    assert_eq!(stored, 2000, "{:#}", app.status().await);
    app.wait_for_status("the consumer to resume", |s| {
        s["backpressure"]["state"] == "ok"
    })
    .await;
}
