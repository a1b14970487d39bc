//! Exactly-once storage under failure: duplicates, dead letters, refused rows, a killed
//! service, a crashed database, and a second instance that joins and dies. Each test asserts
//! exact counts: rows stored = valid metrics produced, no duplicates, every invalid message in
//! the dead-letter topic.

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use common::pg::OwnPostgres;
use common::*;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;

/// Metric `i` of a run: unique pod per partition and index, so every row is distinct.
fn metric(partition: i32, i: usize, base: i64) -> Vec<u8> {
    guide_message(
        &format!("pod-{partition}-{}", i % 500),
        50.0,
        100.0,
        base + (i / 500) as i64 * 1000 + partition as i64,
    )
}

/// Produces `per_partition` metrics to each partition at about `rate` a second, with an invalid
/// message every `invalid_every` (0: none). Answers with the number of invalid ones.
async fn produce_steadily(
    topic: String,
    per_partition: usize,
    rate: usize,
    invalid_every: usize,
    base: i64,
) -> usize {
    let producer = producer();
    let mut invalid = 0;
    let chunk = (rate / 10).max(1);
    let mut sent = 0;
    while sent < per_partition {
        let end = (sent + chunk).min(per_partition);
        let mut payloads = Vec::new();
        for partition in 0..PARTITIONS {
            for i in sent..end {
                let bad = invalid_every > 0 && i % invalid_every == invalid_every - 1;
                if bad {
                    invalid += 1;
                }
                let payload = if bad {
                    format!("not a metric {partition}/{i}").into_bytes()
                } else {
                    metric(partition, i, base)
                };
                payloads.push((partition, payload));
            }
        }
        produce_all(&producer, &topic, &payloads, Duration::from_secs(30)).await;
        sent = end;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    invalid
}

/// The distinct valid metrics the topic holds, read back from the broker: what the service
/// must store. Says so if the broker holds fewer messages than were produced to it.
async fn valid_in_topic(topic: &str, produced: usize) -> i64 {
    let messages = consume_all(topic, produced).await;
    if messages.len() != produced {
        eprintln!(
            "the broker returned {} messages of the {produced} produced to {topic}",
            messages.len()
        );
    }
    let valid: std::collections::HashSet<Vec<u8>> = messages
        .iter()
        .filter_map(|m| m.payload())
        .filter(|p| p.starts_with(b"{"))
        .map(<[u8]>::to_vec)
        .collect();
    valid.len() as i64
}

async fn assert_exactly(db: &TestDatabase, expected: i64) {
    assert_exactly_from(db, expected, None).await
}

async fn assert_exactly_from(db: &TestDatabase, expected: i64, topic: Option<&str>) {
    let stored = wait_for_count(db, "SELECT count(*) FROM system_metrics", expected).await;
    // Anything more would be a duplicate or a lost offset: give it time to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stored_later = db.count("SELECT count(*) FROM system_metrics").await;
    let distinct = db
        .count("SELECT count(*) FROM (SELECT DISTINCT namespace, pod_name, service, time FROM system_metrics) d")
        .await;
    if (stored, stored_later, distinct) != (expected, expected, expected) {
        let client = db.client().await;
        let per_partition: Vec<(String, i64)> = client
            .query(
                "SELECT split_part(pod_name, '-', 2), count(*) FROM system_metrics GROUP BY 1 ORDER BY 1",
                &[],
            )
            .await
            .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            .unwrap_or_default();
        let offsets: Vec<(i32, i64)> = client
            .query(
                "SELECT partition, next_offset FROM kafka_offsets ORDER BY 1",
                &[],
            )
            .await
            .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            .unwrap_or_default();
        let mut in_topic = std::collections::BTreeMap::new();
        if let Some(topic) = topic {
            for m in consume_all(topic, 18000).await {
                let valid = m.payload().is_some_and(|p| p.starts_with(b"{"));
                *in_topic.entry((m.partition(), valid)).or_insert(0) += 1;
            }
        }
        panic!(
            "stored {stored}, later {stored_later}, distinct {distinct}, expected {expected}; \
             rows per partition {per_partition:?}; offsets {offsets:?}; in topic {in_topic:?}"
        );
    }
}

#[tokio::test]
async fn the_same_metric_delivered_twice_is_stored_once() {
    let s = setup().await;
    let db = &s.db;
    let app = TestApp::spawn_consuming(service_env(&s.topic, &s.group, db));
    let ts = now_ms();
    let message = guide_message("retried-pod", 12.0, 34.0, ts);
    produce(
        &producer(),
        &s.topic,
        0,
        &[message.clone(), message.clone()],
    )
    .await;
    produce(
        &producer(),
        &s.topic,
        2,
        &[message, guide_message("other-pod", 1.0, 2.0, ts)],
    )
    .await;

    assert_exactly(db, 2).await;
    let status = app.status().await;
    assert_eq!(status["writer"]["duplicates_skipped"], 2, "{status:#}");
    assert_eq!(
        db.count("SELECT count(*) FROM system_metrics WHERE pod_name = 'retried-pod'")
            .await,
        1
    );
}

#[tokio::test]
async fn invalid_messages_are_dead_lettered_with_key_payload_and_reason() {
    let s = setup().await;
    let db = &s.db;
    let app = TestApp::spawn_consuming(service_env(&s.topic, &s.group, db));
    let producer = producer();
    let invalid: Vec<(&str, Vec<u8>)> = vec![
        ("k-json", b"{\"cpu\":".to_vec()),
        ("k-range", guide_message("pod", 140.0, 1.0, now_ms())),
        ("k-bytes", vec![0xff, 0xfe, 0x7b]),
    ];
    for (key, payload) in &invalid {
        producer
            .send(
                FutureRecord::to(&s.topic)
                    .partition(1)
                    .key(*key)
                    .payload(payload.as_slice()),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    produce(
        &producer,
        &s.topic,
        1,
        &[guide_message("good", 1.0, 1.0, now_ms())],
    )
    .await;

    assert_exactly(db, 1).await;
    let letters = consume_all(&format!("{}.dlq", s.topic), 3).await;
    assert_eq!(letters.len(), 3, "each invalid message dead-lettered once");
    let by_key: HashMap<String, _> = letters
        .iter()
        .map(|m| (String::from_utf8_lossy(m.key().unwrap()).into_owned(), m))
        .collect();
    for (offset, (key, payload)) in invalid.iter().enumerate() {
        let letter = by_key[*key];
        assert_eq!(letter.payload().unwrap(), payload.as_slice(), "{key}");
        assert_eq!(
            header(letter, "panopticon-source-topic").as_deref(),
            Some(s.topic.as_str())
        );
        assert_eq!(
            header(letter, "panopticon-source-partition").as_deref(),
            Some("1")
        );
        assert_eq!(
            header(letter, "panopticon-source-offset"),
            Some(offset.to_string())
        );
        assert!(header(letter, "panopticon-dead-lettered-at").is_some());
        assert!(header(letter, "panopticon-detail").is_some_and(|d| !d.is_empty()));
    }
    assert_eq!(
        header(by_key["k-json"], "panopticon-reason").as_deref(),
        Some("invalid_json")
    );
    assert_eq!(
        header(by_key["k-range"], "panopticon-reason").as_deref(),
        Some("out_of_range")
    );
    assert_eq!(
        header(by_key["k-bytes"], "panopticon-reason").as_deref(),
        Some("invalid_utf8")
    );
    assert_eq!(app.status().await["validator"]["dead_lettered"], 3);
    assert_eq!(
        db.count("SELECT next_offset FROM kafka_offsets WHERE partition = 1")
            .await,
        4
    );
}

#[tokio::test]
async fn rows_the_database_refuses_are_dead_lettered_and_the_rest_stored() {
    let s = setup().await;
    let db = &s.db;
    let mut env = service_env(&s.topic, &s.group, db);
    env.insert("BATCH_MAX_WAIT_MS".into(), "1000".into());
    let app = TestApp::spawn_consuming(env);
    // A rule of this database's own that the validator knows nothing of.
    db.client()
        .await
        .batch_execute("ALTER TABLE system_metrics ADD CONSTRAINT no_poison CHECK (pod_name NOT LIKE 'poison%')")
        .await
        .unwrap();
    let ts = now_ms();
    let payloads: Vec<Vec<u8>> = (0..100)
        .map(|i| {
            let pod = if i % 40 == 7 {
                format!("poison-{i}")
            } else {
                format!("pod-{i}")
            };
            guide_message(&pod, 1.0, 1.0, ts - i)
        })
        .collect();
    produce(&producer(), &s.topic, 0, &payloads).await;

    assert_exactly(db, 97).await;
    let letters = consume_all(&format!("{}.dlq", s.topic), 3).await;
    assert_eq!(letters.len(), 3);
    for letter in &letters {
        assert_eq!(
            header(letter, "panopticon-reason").as_deref(),
            Some("database_rejected")
        );
        assert!(
            header(letter, "panopticon-detail")
                .unwrap()
                .contains("no_poison"),
            "{:?}",
            header(letter, "panopticon-detail")
        );
        let payload: serde_json::Value = serde_json::from_slice(letter.payload().unwrap()).unwrap();
        assert!(payload["podName"].as_str().unwrap().starts_with("poison"));
        let offset: i64 = header(letter, "panopticon-source-offset")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(offset % 40, 7);
    }
    assert_eq!(
        db.count("SELECT next_offset FROM kafka_offsets WHERE partition = 0")
            .await,
        100
    );
    assert_eq!(app.status().await["writer"]["rows_written"], 97);
}

#[tokio::test]
async fn sigkill_mid_ingestion_then_restart_stores_each_metric_once() {
    let s = setup().await;
    let db = &s.db;
    let mut env = service_env(&s.topic, &s.group, db);
    // The killed member holds its partitions until its session expires.
    env.insert(
        "KAFKA_CONSUMER_CONFIG".into(),
        "session.timeout.ms=6000,heartbeat.interval.ms=500".into(),
    );
    let mut app = TestApp::spawn_consuming(env.clone());
    let base = now_ms() - 3_600_000;
    let producing = tokio::spawn(produce_steadily(s.topic.clone(), 6000, 3000, 500, base));

    wait_for_count(db, "SELECT count(*) FROM system_metrics", 3000).await;
    app.signal("KILL");
    app.wait_exit(Duration::from_secs(10));
    let _restarted = TestApp::spawn_consuming(env);
    let invalid = producing.await.unwrap();

    let expected = valid_in_topic(&s.topic, 6000 * PARTITIONS as usize).await;
    assert_exactly_from(db, expected, Some(&s.topic)).await;
    assert_eq!(
        db.count("SELECT sum(next_offset)::int8 FROM kafka_offsets")
            .await,
        6000 * PARTITIONS as i64
    );
    let letters = consume_all(&format!("{}.dlq", s.topic), invalid).await;
    let distinct: std::collections::HashSet<_> = letters
        .iter()
        .map(|m| m.payload().unwrap().to_vec())
        .collect();
    assert_eq!(
        distinct.len(),
        invalid,
        "every invalid message dead-lettered"
    );
}

#[tokio::test]
async fn a_database_crash_mid_ingestion_loses_and_doubles_nothing() {
    let mut pg = tokio::task::spawn_blocking(OwnPostgres::start)
        .await
        .unwrap();
    let s = setup_on(TestDatabase::on(&pg.url())).await;
    let db = &s.db;
    let mut env = service_env(&s.topic, &s.group, db);
    env.insert("DATABASE_URL".into(), pg.url());
    let app = TestApp::spawn_consuming(env);
    let base = now_ms() - 3_600_000;
    let producing = tokio::spawn(produce_steadily(s.topic.clone(), 6000, 3000, 1000, base));

    wait_for_count(db, "SELECT count(*) FROM system_metrics", 3000).await;
    pg = tokio::task::spawn_blocking(move || {
        pg.crash();
        pg
    })
    .await
    .unwrap();
    let status = app
        .wait_for_status("the outage to show", |s| {
            s["database"]["connected"] == false
        })
        .await;
    assert_ne!(status["backpressure"]["state"], "ok", "{status:#}");
    let ready = reqwest::get(app.url("/ready")).await.unwrap();
    assert_eq!(ready.status(), 503);
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg = tokio::task::spawn_blocking(move || {
        pg.restart();
        pg
    })
    .await
    .unwrap();
    let invalid = producing.await.unwrap();

    let expected = valid_in_topic(&s.topic, 6000 * PARTITIONS as usize).await;
    assert_exactly_from(db, expected, Some(&s.topic)).await;
    assert_eq!(
        db.count("SELECT sum(next_offset)::int8 FROM kafka_offsets")
            .await,
        6000 * PARTITIONS as i64
    );
    let status = app
        .wait_for_status("recovery", |s| s["database"]["connected"] == true)
        .await;
    assert!(
        status["writer"]["actor"]["errors"].as_u64().unwrap() > 0,
        "the outage was seen"
    );
    assert_eq!(
        consume_all(&format!("{}.dlq", s.topic), invalid)
            .await
            .len(),
        invalid
    );
    drop(pg);
}

#[tokio::test]
async fn a_second_instance_that_joins_and_is_killed_loses_and_doubles_nothing() {
    let s = setup().await;
    let db = &s.db;
    let mut env = service_env(&s.topic, &s.group, db);
    // A dead member is noticed after this long.
    env.insert(
        "KAFKA_CONSUMER_CONFIG".into(),
        "session.timeout.ms=6000,heartbeat.interval.ms=500".into(),
    );
    let first = TestApp::spawn_consuming(env.clone());
    let base = now_ms() - 3_600_000;
    let producing = tokio::spawn(produce_steadily(s.topic.clone(), 8000, 2000, 0, base));

    wait_for_count(db, "SELECT count(*) FROM system_metrics", 2000).await;
    let mut second = TestApp::spawn_consuming(env);
    first
        .wait_for_log("partitions revoked", Duration::from_secs(60))
        .expect("the first instance gave up partitions to the second");
    let share = second
        .wait_for_status("the second instance to store rows", |s| {
            s["writer"]["rows_written"].as_u64().unwrap_or(0) > 0
        })
        .await;
    assert!(
        !share["consumer"]["assigned_partitions"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    second.signal("KILL");
    second.wait_exit(Duration::from_secs(10));
    producing.await.unwrap();

    let expected = valid_in_topic(&s.topic, 8000 * PARTITIONS as usize).await;
    assert_exactly_from(db, expected, Some(&s.topic)).await;
    assert_eq!(
        db.count("SELECT sum(next_offset)::int8 FROM kafka_offsets")
            .await,
        8000 * PARTITIONS as i64
    );
    let status = first.status().await;
    assert_eq!(
        status["consumer"]["assigned_partitions"],
        serde_json::json!([0, 1, 2]),
        "{status:#}"
    );
}

#[tokio::test]
async fn insert_revoked_mid_run_pauses_writing_and_loses_nothing() {
    let pg = tokio::task::spawn_blocking(OwnPostgres::start)
        .await
        .unwrap();
    // The service's own role, owning its database: what it may write is the test's to take away.
    pg.psql(
        "postgres",
        "CREATE ROLE panopticon LOGIN; ALTER DATABASE panopticon OWNER TO panopticon",
    );
    let s = setup_on(TestDatabase::on(&pg.url())).await;
    let db = &s.db;
    let mut env = service_env(&s.topic, &s.group, db);
    env.insert(
        "DATABASE_URL".into(),
        format!("postgres://panopticon@127.0.0.1:{}/panopticon", pg.port()),
    );
    let app = TestApp::spawn_consuming(env);
    let ts = now_ms();
    let first: Vec<Vec<u8>> = (0..100)
        .map(|i| guide_message(&format!("pod-{i}"), 1.0, 1.0, ts))
        .collect();
    produce(&producer(), &s.topic, 0, &first).await;
    wait_for_count(db, "SELECT count(*) FROM system_metrics", 100).await;

    pg.psql(
        "panopticon",
        "REVOKE INSERT ON system_metrics FROM panopticon",
    );
    let second: Vec<Vec<u8>> = (0..100)
        .map(|i| guide_message(&format!("pod-{i}"), 1.0, 1.0, ts + 1000))
        .collect();
    produce(&producer(), &s.topic, 0, &second).await;
    assert!(
        app.wait_for_log("permission denied", Duration::from_secs(30))
            .is_some(),
        "the refusal was not logged: {:#?}",
        app.lines()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(db.count("SELECT count(*) FROM system_metrics").await, 100);
    pg.psql("panopticon", "GRANT INSERT ON system_metrics TO panopticon");

    assert_exactly(db, 200).await;
    assert_eq!(app.status().await["validator"]["dead_lettered"], 0);
    let out_of_step: Vec<String> = app
        .lines()
        .into_iter()
        .filter(|l| l.contains("unexpected message") || l.contains("connection closed"))
        .collect();
    assert!(out_of_step.is_empty(), "{out_of_step:#?}");
    drop(pg);
}
