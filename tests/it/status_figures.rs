//! The figures `/status` and `/metrics` show together agree with each other: the binary against
//! a real broker and a fresh database, read the moment the records are committed.

use crate::common;

use std::collections::BTreeMap;

use common::*;

/// `partition → (committed offset, high watermark, lag)` from a `/status` body.
fn from_status(status: &serde_json::Value) -> BTreeMap<i32, (i64, Option<i64>, Option<i64>)> {
    let partitions = status["consumer"]["partitions"]
        .as_object()
        .expect("consumer.partitions");
    partitions
        .iter()
        .filter_map(|(id, p)| {
            Some((
                id.parse().expect("partition id"),
                (
                    p["committed_offset"].as_i64()?,
                    p["high_watermark"].as_i64(),
                    p["lag"].as_i64(),
                ),
            ))
        })
        .collect()
}

/// The same from a `/metrics` body.
fn from_metrics(text: &str) -> BTreeMap<i32, (i64, Option<i64>, Option<i64>)> {
    let mut by_name: BTreeMap<&str, BTreeMap<i32, i64>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some((name, labels)) = series.split_once("{partition=\"") else {
            continue;
        };
        let partition = labels.trim_end_matches("\"}").parse().expect("partition");
        let value: f64 = value.parse().expect("sample value");
        by_name
            .entry(name)
            .or_default()
            .insert(partition, value as i64);
    }
    let get = |name: &str, p: &i32| by_name.get(name).and_then(|m| m.get(p)).copied();
    by_name
        .get("panopticon_partition_committed_offset")
        .map(|committed| {
            committed
                .iter()
                .map(|(p, c)| {
                    let high = get("panopticon_partition_high_watermark", p);
                    let lag = get("panopticon_partition_lag_messages", p);
                    (*p, (*c, high, lag))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every partition with a committed offset has a watermark at or past it and a lag that is
/// the distance between the two, never negative.
fn assert_consistent(
    what: &str,
    figures: &BTreeMap<i32, (i64, Option<i64>, Option<i64>)>,
    body: &str,
) {
    for (partition, (committed, high, lag)) in figures {
        let high = high.unwrap_or_else(|| {
            panic!("{what}: partition {partition} has a committed offset but no watermark: {body}")
        });
        let lag = lag.unwrap_or_else(|| {
            panic!("{what}: partition {partition} has a committed offset but no lag: {body}")
        });
        assert!(
            *committed <= high,
            "{what}: partition {partition}: committed offset {committed} above the high watermark {high}: {body}"
        );
        assert!(
            lag >= 0,
            "{what}: partition {partition}: negative lag {lag}: {body}"
        );
        assert_eq!(
            lag,
            high - committed,
            "{what}: partition {partition}: lag is not watermark - committed: {body}"
        );
    }
}

#[tokio::test]
async fn the_watermark_is_never_behind_the_committed_offset() {
    let Setup { topic, group, db } = setup().await;
    let app = TestApp::spawn_consuming(service_env(&topic, &group, &db));
    let producer = producer();
    let mut sent = [0i64; PARTITIONS as usize];

    // A few rounds, each read back as soon as it is committed: librdkafka's statistics, the
    // only other source of the watermark, come every 5 s.
    for round in 0..3 {
        for partition in 0..PARTITIONS {
            let payloads: Vec<Vec<u8>> = (0..4)
                .map(|i| guide_message(&format!("pod-{partition}-{round}-{i}"), 1.0, 1.0, now_ms()))
                .collect();
            produce(&producer, &topic, partition, &payloads).await;
            sent[partition as usize] += payloads.len() as i64;
        }
        let status = app
            .wait_for_status("every record of the round committed", |s| {
                let figures = from_status(s);
                (0..PARTITIONS).all(|p| figures.get(&p).map(|f| f.0) == Some(sent[p as usize]))
            })
            .await;
        let metrics = reqwest::get(app.url("/metrics"))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");

        let figures = from_status(&status);
        assert_consistent(
            &format!("round {round}, /status"),
            &figures,
            &status.to_string(),
        );
        // Everything produced is committed: the watermark is where the partition ends.
        for (partition, (committed, high, lag)) in &figures {
            assert_eq!(
                (*high, *lag),
                (Some(*committed), Some(0)),
                "round {round}: partition {partition} holds {committed} records, all committed: {status:#}"
            );
        }
        let scraped = from_metrics(&metrics);
        assert_eq!(
            scraped.len(),
            PARTITIONS as usize,
            "round {round}: /metrics shows every partition: {metrics}"
        );
        assert_consistent(&format!("round {round}, /metrics"), &scraped, &metrics);
    }
}
