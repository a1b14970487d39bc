//! What a first deployment against an existing Kafka and PostgreSQL meets: a dead-letter topic
//! nobody created, TimescaleDB installed but not preloaded (or preloaded only later), a
//! retention window older back-fill would fall out of, and series buckets that must start at
//! the same times on both storages. A broker whose ACLs will not let the service create the
//! dead-letter topic is in `tests/kafka_acls.rs`, against Apache Kafka's own authorizer.
//!
//! The TimescaleDB cases run on a server of the test's own where the extension is installed,
//! and say that they were skipped where it is not.

use crate::common;

use std::time::Duration;

use common::pg::{OwnPostgres, skip_without_timescaledb};
use common::{TestApp, TestDatabase};

/// The advisory lock under which instances adopt TimescaleDB and set up its lifecycle
/// (`db::timescale`).
const LIFECYCLE_LOCK_KEY: i64 = 0x5041_4e4f_5054_4944;

/// The original guide's flow on a broker where only `metrics.system` was created by hand: a
/// malformed message, then good ones. The service creates the dead-letter topic itself, so the
/// bad message is dead-lettered and the good ones behind it are stored.
#[tokio::test]
async fn without_a_dead_letter_topic_the_guide_flow_stores_the_good_metrics() {
    let topic = common::unique("metrics");
    let dlq = format!("{topic}.dlq");
    common::create_topics(&[(topic.as_str(), 1)]).await;
    assert!(
        !common::topic_names().contains(&dlq),
        "the broker made the dead-letter topic by itself"
    );
    let db = TestDatabase::create().await;
    let app = TestApp::spawn_consuming(common::service_env(&topic, &common::unique("g"), &db));
    assert!(
        app.wait_for_log(
            &format!("created dead-letter topic topic={dlq} partitions=1"),
            Duration::from_secs(5)
        )
        .is_some(),
        "no line saying the dead-letter topic was created: {:#?}",
        app.lines()
    );

    let producer = common::producer();
    let now = common::now_ms();
    let mut payloads = vec![b"{\"timestamp\": not json".to_vec()];
    for (i, pod) in ["test-pod-001", "test-pod-002", "test-pod-003"]
        .iter()
        .enumerate()
    {
        payloads.push(common::guide_message(pod, 60.5, 250.0, now + i as i64));
    }
    common::produce(&producer, &topic, 0, &payloads).await;

    let stored = common::wait_for_count(&db, "SELECT count(*) FROM system_metrics", 3).await;
    assert_eq!(
        stored, 3,
        "the good metrics behind the bad one were not stored"
    );
    let letters = common::consume_all(&dlq, 1).await;
    assert_eq!(
        letters.len(),
        1,
        "the bad message was not dead-lettered once"
    );
    assert_eq!(
        common::header(&letters[0], "panopticon-reason").as_deref(),
        Some("invalid_json")
    );
    let status = app
        .wait_for_status("dead letter acknowledged", |s| {
            s["validator"]["dead_lettered"] == 1
        })
        .await;
    assert_eq!(
        status["validator"]["held_partitions"],
        serde_json::json!([])
    );
    assert!(status["validator"]["dead_letter_topic_error"].is_null());
}

/// Where TimescaleDB's retention job would delete old chunks, a metric older than the window
/// is rejected as `too_old` and dead-lettered, never stored to be deleted; on plain PostgreSQL
/// nothing deletes rows, and old metrics are stored.
#[tokio::test]
async fn metrics_older_than_the_retention_window_are_rejected_where_retention_deletes_them() {
    let producer = common::producer();
    let now = common::now_ms();
    let day = 86_400_000;
    let payloads = vec![
        common::guide_message("backfill-40d", 10.0, 100.0, now - 40 * day),
        common::guide_message("recent", 20.0, 200.0, now - day),
    ];

    // Plain PostgreSQL: no retention window, both are stored.
    let topic = common::unique("metrics");
    common::create_topic(&topic).await;
    let db = TestDatabase::create().await;
    let app = TestApp::spawn_consuming(common::service_env(&topic, &common::unique("g"), &db));
    common::produce(&producer, &topic, 0, &payloads).await;
    assert_eq!(
        common::wait_for_count(&db, "SELECT count(*) FROM system_metrics", 2).await,
        2
    );
    assert!(app.status().await["validator"]["retention_window"].is_null());
    drop(app);

    if skip_without_timescaledb("the hypertable case") {
        return;
    }
    let mut pg = OwnPostgres::start();
    pg.preload_timescaledb();
    let db = TestDatabase::on(&pg.url());
    let topic = common::unique("metrics");
    common::create_topic(&topic).await;
    let app = TestApp::spawn_consuming(common::service_env(&topic, &common::unique("g"), &db));
    let status = app.status().await;
    assert!(
        status["database"]["storage"]
            .as_str()
            .unwrap_or_default()
            .contains("hypertable"),
        "{status:#}"
    );
    assert_eq!(
        status["validator"]["retention_window"]["seconds"],
        30 * 86_400
    );
    common::produce(&producer, &topic, 0, &payloads).await;
    let status = app
        .wait_for_status("both messages handled", |s| {
            s["writer"]["rows_written"] == 1 && s["validator"]["dead_lettered"] == 1
        })
        .await;
    assert_eq!(status["validator"]["invalid_by_reason"]["too_old"], 1);
    let pods: Vec<String> = db
        .client()
        .await
        .query("SELECT pod_name FROM system_metrics", &[])
        .await
        .expect("rows")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(pods, ["recent"]);
    let letters = common::consume_all(&format!("{topic}.dlq"), 1).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(
        common::header(&letters[0], "panopticon-reason").as_deref(),
        Some("too_old")
    );
    assert!(
        !app.lines_containing("reason=too_old").is_empty(),
        "the rejection was not logged"
    );
}

/// TimescaleDB installed but not in `shared_preload_libraries`: the service starts on a plain
/// table and says in one WARN line what is missing. Preloaded later, an empty plain table is
/// converted, and one holding rows is left plain with the statement that converts it; waiting
/// for another instance's lock to convert is bounded by the statement timeout.
#[tokio::test]
async fn timescaledb_installed_but_not_preloaded_leaves_a_plain_table_and_says_how_to_fix_it() {
    if skip_without_timescaledb("the whole test") {
        return;
    }
    let mut pg = OwnPostgres::start();
    pg.psql("postgres", "CREATE DATABASE holding_rows");
    let empty = TestDatabase::on(&pg.url());
    let holding = TestDatabase::on(&pg.url().replace("/panopticon", "/holding_rows"));
    let topic = common::unique("metrics");
    common::create_topic(&topic).await;

    for db in [&empty, &holding] {
        let app = TestApp::spawn_consuming(common::service_env(&topic, &common::unique("g"), db));
        app.wait_for_status("ready", |s| s["ready"] == true).await;
        let warnings = app.lines_containing("shared_preload_libraries = 'timescaledb'");
        assert_eq!(warnings.len(), 1, "{:#?}", app.lines());
        assert!(warnings[0].contains("WARN"), "{}", warnings[0]);
        let status = app.status().await;
        assert!(
            status["database"]["storage"]
                .as_str()
                .unwrap_or_default()
                .contains("installed but not in shared_preload_libraries"),
            "{status:#}"
        );
    }
    holding
        .client()
        .await
        .batch_execute(
            "INSERT INTO system_metrics VALUES (now(), 'svc', 'pod', 1, 2, 'default', 'node')",
        )
        .await
        .expect("insert a row");

    pg.preload_timescaledb();

    // Another instance holds the lifecycle's advisory lock: this one waits for it no longer
    // than its statement timeout, says why in /status, and converts once the lock is free.
    let holder = empty.client().await;
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&LIFECYCLE_LOCK_KEY])
        .await
        .expect("take the lifecycle's lock");
    let mut env = common::service_env(&topic, &common::unique("g"), &empty);
    env.insert("DATABASE_STATEMENT_TIMEOUT_MS".into(), "1000".into());
    let app = TestApp::spawn(env);
    app.wait_for_status("the TimescaleDB check to time out", |s| {
        s["database"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("did not answer the TimescaleDB check within 1000 ms"))
    })
    .await;
    holder
        .execute("SELECT pg_advisory_unlock($1)", &[&LIFECYCLE_LOCK_KEY])
        .await
        .expect("release the lifecycle's lock");
    assert!(
        app.wait_for_log(
            "system_metrics converted to a TimescaleDB hypertable",
            Duration::from_secs(30)
        )
        .is_some(),
        "{:#?}",
        app.lines()
    );
    // The storage reaches /status once the lifecycle is set up, a moment after the log line.
    app.wait_for_status("the hypertable in /status", |s| {
        s["database"]["storage"]
            .as_str()
            .is_some_and(|storage| storage.ends_with("hypertable"))
    })
    .await;
    drop(app);

    let app = TestApp::spawn_consuming(common::service_env(&topic, &common::unique("g"), &holding));
    let warning = app
        .wait_for_log(
            "plain PostgreSQL table holding rows",
            Duration::from_secs(10),
        )
        .expect("no line about the plain table holding rows");
    assert!(warning.contains("migrate_data => true"), "{warning}");
    assert_eq!(
        holding
            .count("SELECT count(*) FROM timescaledb_information.hypertables")
            .await,
        0,
        "a table holding rows was converted"
    );
    assert_eq!(
        holding.count("SELECT count(*) FROM system_metrics").await,
        1
    );
}

/// Series buckets start at multiples of their size from the Unix epoch on both storages, also
/// for sizes that do not divide a day (7 minutes) and for weeks (7 days): TimescaleDB's
/// `time_bucket` would otherwise align them to 2000-01-03.
#[tokio::test]
async fn series_buckets_start_at_the_same_times_on_both_storages() {
    let main = TestDatabase::create().await;
    check_bucket_origin(&main, "plain PostgreSQL").await;
    if skip_without_timescaledb("the hypertable case") {
        return;
    }
    let mut pg = OwnPostgres::start();
    pg.preload_timescaledb();
    check_bucket_origin(&TestDatabase::on(&pg.url()), "TimescaleDB").await;
}

async fn check_bucket_origin(db: &TestDatabase, storage: &str) {
    let topic = common::unique("metrics");
    common::create_topic(&topic).await;
    let mut env = common::service_env(&topic, &common::unique("g"), db);
    env.insert("API_MAX_RANGE_HOURS".into(), "720".into());
    let app = TestApp::spawn_consuming(env);
    // One sample a minute for 20 days, ending now.
    db.client()
        .await
        .batch_execute(
            "INSERT INTO system_metrics
             SELECT date_trunc('minute', now()) - g * INTERVAL '1 minute', 'svc', 'pod', 50, 100, 'default', 'node'
             FROM generate_series(0, 20 * 1440) g",
        )
        .await
        .expect("seed rows");
    let to = chrono::Utc::now().timestamp_millis();
    let from = to - 20 * 86_400_000;
    for (bucket, seconds) in [("7m", 420), ("7d", 7 * 86_400)] {
        for agg in ["avg", "p95"] {
            let url = app.url(&format!(
                "/api/v1/metrics/series?bucket={bucket}&agg={agg}&group_by=pod&from={from}&to={to}"
            ));
            let response = reqwest::get(&url).await.expect("GET series");
            assert_eq!(response.status(), 200, "{url}");
            let body: serde_json::Value = response.json().await.expect("JSON");
            let points = body["series"][0]["points"]
                .as_array()
                .unwrap_or_else(|| panic!("{storage}: no points: {body}"));
            assert!(points.len() > 2, "{storage}: {body}");
            for point in points {
                let time = point["time"].as_str().expect("time");
                let at = chrono::DateTime::parse_from_rfc3339(time).expect("RFC 3339");
                assert_eq!(
                    at.timestamp() % seconds,
                    0,
                    "{storage}: bucket {bucket} ({agg}) starts at {time}, not a multiple of {seconds} s from the epoch"
                );
            }
        }
    }
}

/// `TIMESCALE_CHUNK_INTERVAL` sets the span of the chunks made from then on: metrics three
/// hours apart land in chunks of an hour each, and a restart on another interval changes it for
/// new chunks and leaves the existing ones as they are. On plain PostgreSQL it is accepted and
/// has nothing to change.
#[tokio::test]
async fn the_chunk_interval_setting_sets_the_span_of_new_chunks() {
    let producer = common::producer();
    let now = common::now_ms();
    let hour = 3_600_000;
    let payloads: Vec<Vec<u8>> = [5, 3, 1]
        .iter()
        .map(|h| common::guide_message(&format!("pod-{h}h-ago"), 10.0, 100.0, now - h * hour))
        .collect();

    // Plain PostgreSQL: accepted, nothing to set.
    let topic = common::unique("metrics");
    common::create_topic(&topic).await;
    let db = TestDatabase::create().await;
    let mut env = common::service_env(&topic, &common::unique("g"), &db);
    env.insert("TIMESCALE_CHUNK_INTERVAL".into(), "1h".into());
    let app = TestApp::spawn_consuming(env);
    common::produce(&producer, &topic, 0, &payloads).await;
    assert_eq!(
        common::wait_for_count(&db, "SELECT count(*) FROM system_metrics", 3).await,
        3
    );
    assert!(app.lines_containing("chunk interval").is_empty());
    drop(app);

    if skip_without_timescaledb("the hypertable case") {
        return;
    }
    let mut pg = OwnPostgres::start();
    pg.preload_timescaledb();
    let db = TestDatabase::on(&pg.url());
    let topic = common::unique("metrics");
    common::create_topic(&topic).await;
    let mut env = common::service_env(&topic, &common::unique("g"), &db);
    env.insert("TIMESCALE_CHUNK_INTERVAL".into(), "1h".into());
    let app = TestApp::spawn_consuming(env.clone());
    assert!(
        app.wait_for_log(
            "TimescaleDB chunk interval (3600 s) set up",
            Duration::from_secs(10)
        )
        .is_some(),
        "{:#?}",
        app.lines()
    );
    common::produce(&producer, &topic, 0, &payloads).await;
    assert_eq!(
        common::wait_for_count(&db, "SELECT count(*) FROM system_metrics", 3).await,
        3
    );
    let client = db.client().await;
    let current: i64 = client
        .query_one(
            "SELECT extract(epoch FROM time_interval)::bigint FROM timescaledb_information.dimensions
             WHERE hypertable_name = 'system_metrics'",
            &[],
        )
        .await
        .expect("dimension")
        .get(0);
    assert_eq!(current, 3600);
    let chunks = chunk_spans(&client).await;
    assert_eq!(chunks, [3600, 3600, 3600]);
    drop(app);

    // Restarted on the default, the next chunk spans a day; the hourly ones stay.
    env.remove("TIMESCALE_CHUNK_INTERVAL");
    let app = TestApp::spawn_consuming(env);
    common::produce(
        &producer,
        &topic,
        0,
        &[common::guide_message(
            "pod-2d-ago",
            10.0,
            100.0,
            now - 48 * hour,
        )],
    )
    .await;
    assert_eq!(
        common::wait_for_count(&db, "SELECT count(*) FROM system_metrics", 4).await,
        4
    );
    let chunks = chunk_spans(&client).await;
    assert_eq!(chunks, [86_400, 3600, 3600, 3600]);
    drop(app);
}

/// The span in seconds of each chunk of `system_metrics`, oldest first.
async fn chunk_spans(client: &tokio_postgres::Client) -> Vec<i64> {
    client
        .query(
            "SELECT extract(epoch FROM range_end - range_start)::bigint FROM timescaledb_information.chunks
             WHERE hypertable_name = 'system_metrics' ORDER BY range_start",
            &[],
        )
        .await
        .expect("chunks")
        .iter()
        .map(|row| row.get(0))
        .collect()
}
