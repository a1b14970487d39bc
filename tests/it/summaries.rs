//! The per-minute summaries of `system_metrics` through the service: metrics go through a
//! real broker into a fresh PostgreSQL database, and the summaries and pending ranges are
//! compared in SQL with a GROUP BY over the raw samples. They run on whatever server
//! `TEST_DATABASE_URL` names: a plain table on PostgreSQL, a hypertable where TimescaleDB is
//! preloaded (2.26 keeps the statement triggers there too).

use crate::common;

use std::time::Duration;

use common::*;

/// The summaries a GROUP BY over the raw samples makes, written independently of the
/// service's own statement: right-closed minutes of sample times floored to milliseconds.
const RAW_MINUTES: &str = "
    SELECT service, pod_name, namespace, node_name,
           (ceil(floor(extract(epoch FROM time) * 1000) / 60000) * 60000)::int8 AS minute_ms,
           count(*)::int4 AS samples,
           min(floor(extract(epoch FROM time) * 1000))::int8 AS first_ms,
           max(floor(extract(epoch FROM time) * 1000))::int8 AS last_ms,
           (array_agg(cpu ORDER BY time))[1] AS cpu_first,
           (array_agg(cpu ORDER BY time DESC))[1] AS cpu_last,
           min(cpu) AS cpu_min, max(cpu) AS cpu_max, sum(cpu) AS cpu_sum,
           (array_agg(memory ORDER BY time))[1] AS memory_first,
           (array_agg(memory ORDER BY time DESC))[1] AS memory_last,
           min(memory) AS memory_min, max(memory) AS memory_max, sum(memory) AS memory_sum
    FROM system_metrics
    GROUP BY 1, 2, 3, 4, 5";

/// Counts the minutes a reader would get wrong: not touched by a pending range, and with a
/// summary that differs from the raw samples (or exists on one side only). Every column is
/// compared exactly but the sums, which may differ in rounding by the order of addition.
fn wrong_minutes_sql() -> String {
    format!(
        "WITH raw AS ({RAW_MINUTES}),
         pending AS (
             SELECT (ceil(from_ms / 60000.0) * 60000)::int8 AS first_minute,
                    (ceil(to_ms / 60000.0) * 60000)::int8 AS last_minute
             FROM system_metrics_pending)
         SELECT count(*) FROM raw r FULL JOIN system_metrics_minutes s
             ON (r.service, r.pod_name, r.namespace, r.node_name, r.minute_ms)
              = (s.service, s.pod_name, s.namespace, s.node_name, s.minute_ms)
         WHERE NOT EXISTS (SELECT 1 FROM pending p
                           WHERE coalesce(r.minute_ms, s.minute_ms)
                                 BETWEEN p.first_minute AND p.last_minute)
           AND (r.minute_ms IS NULL OR s.minute_ms IS NULL
                OR (r.samples, r.first_ms, r.last_ms, r.cpu_first, r.cpu_last, r.cpu_min,
                    r.cpu_max, r.memory_first, r.memory_last, r.memory_min, r.memory_max)
                   IS DISTINCT FROM
                   (s.samples, s.first_ms, s.last_ms, s.cpu_first, s.cpu_last, s.cpu_min,
                    s.cpu_max, s.memory_first, s.memory_last, s.memory_min, s.memory_max)
                OR abs(r.cpu_sum - s.cpu_sum) > 1e-9 * abs(r.cpu_sum)
                OR abs(r.memory_sum - s.memory_sum) > 1e-9 * abs(r.memory_sum))"
    )
}

/// The wrong minutes as one snapshot of the database sees them.
async fn wrong_minutes(db: &TestDatabase) -> i64 {
    let mut client = db.client().await;
    let transaction = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .expect("begin");
    let wrong = transaction
        .query_one(&wrong_minutes_sql(), &[])
        .await
        .expect("compare summaries with raw samples")
        .get(0);
    transaction.commit().await.expect("commit");
    wrong
}

/// Metrics of `pods` pods every `step_ms` from `from_ms` to `to_ms`, with values that differ
/// per sample, spread over the partitions.
fn metrics(pods: usize, from_ms: i64, to_ms: i64, step_ms: i64) -> Vec<(i32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut time = from_ms;
    let mut n = 0u64;
    while time <= to_ms {
        for pod in 0..pods {
            n += 1;
            let cpu = (n * 7919 % 9_900) as f64 / 100.0 + 0.125;
            let memory = (n * 104_729 % 1_000_000) as f64 / 7.0;
            out.push((
                (pod as i32) % PARTITIONS,
                guide_message(&format!("pod-{pod}"), cpu, memory, time),
            ));
        }
        time += step_ms;
    }
    out
}

async fn send(topic: &str, payloads: &[(i32, Vec<u8>)]) {
    produce_all(&producer(), topic, payloads, Duration::from_secs(30)).await;
}

async fn wait_for_rows(db: &TestDatabase, expected: i64) {
    let stored = wait_for_count(db, "SELECT count(*) FROM system_metrics", expected).await;
    assert_eq!(stored, expected, "every metric stored");
}

/// Waits until no range is pending (the summarizer has run over everything), checking at
/// each look that no minute outside the pending ranges is wrong; answers how many looks.
async fn wait_until_summarised(db: &TestDatabase) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut looks = 0;
    loop {
        looks += 1;
        assert_eq!(
            wrong_minutes(db).await,
            0,
            "a minute outside the pending ranges differs from its raw samples"
        );
        if db
            .count("SELECT count(*) FROM system_metrics_pending")
            .await
            == 0
        {
            return looks;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ranges still pending after 90 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Summary rows, and the samples they count.
async fn summarised(db: &TestDatabase) -> (i64, i64) {
    let row = db
        .client()
        .await
        .query_one(
            "SELECT count(*), coalesce(sum(samples), 0)::int8 FROM system_metrics_minutes",
            &[],
        )
        .await
        .expect("count summaries");
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn every_batch_makes_its_minutes_pending_in_its_own_transaction() {
    let s = setup().await;
    let _app = TestApp::spawn_consuming(s.env());
    let now = now_ms();
    // Whole minutes and their edges: a sample on a whole minute belongs to the minute it
    // ends.
    let start = (now / 60_000 - 5) * 60_000;
    let payloads = metrics(4, start, start + 4 * 60_000, 15_000);
    send(&s.topic, &payloads).await;
    wait_for_rows(&s.db, payloads.len() as i64).await;

    assert_eq!(
        wrong_minutes(&s.db).await,
        0,
        "every stored minute is pending"
    );
}

#[tokio::test]
async fn summaries_equal_a_group_by_over_the_raw_samples_once_summarised() {
    let s = setup().await;
    let app = TestApp::spawn_consuming(s.env());
    let now = now_ms();
    // More minutes than a pass takes: the pending ranges are split.
    let start = (now / 60_000 - 100) * 60_000;
    // Samples on whole minutes, just after them, and a few milliseconds apart.
    let mut payloads = metrics(5, start, start + 95 * 60_000, 20_000);
    payloads.extend(metrics(2, start + 1, start + 3 * 60_000 + 1, 7_001));
    send(&s.topic, &payloads).await;
    wait_for_rows(&s.db, payloads.len() as i64).await;

    wait_until_summarised(&s.db).await;
    assert_eq!(wrong_minutes(&s.db).await, 0);
    let (rows, samples) = summarised(&s.db).await;
    assert!(rows > 5 * 95, "summaries made: {rows}");
    assert_eq!(samples, payloads.len() as i64, "every sample counted once");
    let status = app
        .wait_for_status("the summarizer's report", |s| {
            s["summaries"]["pending_ranges"] == 0 && s["summaries"]["last_pass"].is_object()
        })
        .await;
    let summaries = &status["summaries"];
    assert!(summaries["passes"].as_u64() > Some(0), "{summaries}");
    assert!(summaries["error"].is_null(), "{summaries}");
    assert!(summaries["oldest_pending"].is_null(), "{summaries}");
}

#[tokio::test]
async fn late_metrics_make_summarised_minutes_pending_then_exact_again() {
    let s = setup().await;
    let _app = TestApp::spawn_consuming(s.env());
    let start = (now_ms() / 60_000 - 20) * 60_000;
    let first = metrics(3, start, start + 10 * 60_000, 20_000);
    send(&s.topic, &first).await;
    wait_for_rows(&s.db, first.len() as i64).await;
    wait_until_summarised(&s.db).await;
    let (_, before) = summarised(&s.db).await;
    assert_eq!(before, first.len() as i64);

    // Late: between the samples already summarised, in minutes long summarised, with a new
    // smallest and largest value, and for a pod not seen before.
    let mut late = metrics(3, start + 5_000, start + 10 * 60_000, 60_000);
    late.push((0, guide_message("pod-0", 0.0, 1e9, start + 30_000)));
    late.push((1, guide_message("late-pod", 42.0, 7.0, start + 90_000)));
    send(&s.topic, &late).await;
    let total = (first.len() + late.len()) as i64;
    wait_for_rows(&s.db, total).await;
    let looks = wait_until_summarised(&s.db).await;
    let (_, after) = summarised(&s.db).await;
    assert_eq!(after, total, "the late samples are in the summaries");
    assert_eq!(wrong_minutes(&s.db).await, 0);
    assert!(looks > 0);
}

#[tokio::test]
async fn two_instances_keep_the_same_summaries_exact() {
    let s = setup().await;
    let one = TestApp::spawn_consuming(s.env());
    let two = TestApp::spawn_consuming(s.env());
    let start = (now_ms() / 60_000 - 30) * 60_000;
    let mut sent = 0;
    // Several rounds, each both early and late, so that both instances write and summarise
    // the same minutes over and over.
    for round in 0..4 {
        let payloads = metrics(6, start + round * 1_000, start + 25 * 60_000, 30_000);
        sent += payloads.len() as i64;
        send(&s.topic, &payloads).await;
        wait_for_rows(&s.db, sent).await;
    }
    wait_until_summarised(&s.db).await;
    let (_, samples) = summarised(&s.db).await;
    assert_eq!(samples, sent);
    for app in [&one, &two] {
        let status = app.status().await;
        assert!(
            status["summaries"]["passes"].as_u64().unwrap_or(0)
                + status["summaries"]["skipped"].as_u64().unwrap_or(0)
                > 0,
            "{:#}",
            status["summaries"]
        );
    }
}

#[tokio::test]
async fn a_persons_delete_update_or_truncate_keeps_the_summaries_exact() {
    let s = setup().await;
    let _app = TestApp::spawn_consuming(s.env());
    let start = (now_ms() / 60_000 - 20) * 60_000;
    let payloads = metrics(4, start, start + 15 * 60_000, 10_000);
    send(&s.topic, &payloads).await;
    wait_for_rows(&s.db, payloads.len() as i64).await;
    wait_until_summarised(&s.db).await;
    let client = s.db.client().await;
    let since = |ms: i64| format!("to_timestamp({}::float8 / 1000)", ms);

    let deleted = client
        .execute(
            &format!(
                "DELETE FROM system_metrics WHERE pod_name = 'pod-1' AND time < {}",
                since(start + 4 * 60_000 + 500)
            ),
            &[],
        )
        .await
        .expect("delete");
    assert!(deleted > 0);
    assert_eq!(
        wrong_minutes(&s.db).await,
        0,
        "the deleted minutes are pending"
    );
    wait_until_summarised(&s.db).await;
    let (_, samples) = summarised(&s.db).await;
    assert_eq!(samples, payloads.len() as i64 - deleted as i64);

    // Moved to other minutes and changed: both the old and the new minutes are pending.
    let updated = client
        .execute(
            &format!(
                "UPDATE system_metrics SET cpu = cpu / 2, time = time + INTERVAL '7 minutes 1 millisecond'
                 WHERE pod_name = 'pod-2' AND time < {}",
                since(start + 3 * 60_000)
            ),
            &[],
        )
        .await
        .expect("update");
    assert!(updated > 0);
    assert_eq!(
        wrong_minutes(&s.db).await,
        0,
        "the updated minutes are pending"
    );
    wait_until_summarised(&s.db).await;
    assert_eq!(wrong_minutes(&s.db).await, 0);

    client
        .batch_execute("TRUNCATE system_metrics")
        .await
        .expect("truncate");
    assert_eq!(
        summarised(&s.db).await,
        (0, 0),
        "no summary outlives the table"
    );
    assert_eq!(
        s.db.count("SELECT count(*) FROM system_metrics_pending")
            .await,
        0
    );
}

/// Each pod's CPU maximum and sample count over `(t - 3 h, t]`, from the raw rows.
async fn raw_window(db: &TestDatabase, t_ms: i64) -> Vec<(String, f64, f64)> {
    let rows = db
        .client()
        .await
        .query(
            "SELECT pod_name, max(cpu), count(*)::float8 FROM system_metrics
             WHERE floor(extract(epoch FROM time) * 1000) > $1::int8 - 10800000
               AND floor(extract(epoch FROM time) * 1000) <= $1::int8
             GROUP BY pod_name ORDER BY pod_name",
            &[&t_ms],
        )
        .await
        .expect("raw window");
    rows.iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// The same, as PromQL answers it at `t` (the window holds three whole hours, which the
/// summaries' cache keeps).
async fn promql_window(app: &TestApp, t_ms: i64) -> Vec<(String, f64, f64)> {
    let ask = |function: &str| {
        let url = app.url(&format!(
            "/prometheus/api/v1/query?query={function}(pod_cpu_usage_percent[3h])&time={}",
            t_ms / 1000
        ));
        async move {
            let body: serde_json::Value = reqwest::get(url)
                .await
                .expect("query")
                .json()
                .await
                .expect("query JSON");
            let mut out: Vec<(String, f64)> = body["data"]["result"]
                .as_array()
                .unwrap_or_else(|| panic!("{body}"))
                .iter()
                .map(|s| {
                    let value = s["value"][1].as_str().unwrap_or("NaN").parse().unwrap();
                    (s["metric"]["pod"].as_str().unwrap_or("").to_owned(), value)
                })
                .collect();
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out
        }
    };
    let (max, count) = (ask("max_over_time").await, ask("count_over_time").await);
    assert_eq!(max.len(), count.len());
    max.into_iter()
        .zip(count)
        .map(|((pod, max), (_, count))| (pod, max, count))
        .collect()
}

/// Asks twice (the second from the kept hours) and compares both with the raw rows.
async fn assert_window_exact(app: &TestApp, db: &TestDatabase, t_ms: i64, when: &str) {
    let raw = raw_window(db, t_ms).await;
    assert!(!raw.is_empty());
    for ask in ["first", "second"] {
        assert_eq!(promql_window(app, t_ms).await, raw, "{when}, {ask} ask");
    }
}

#[tokio::test]
async fn kept_hours_of_summaries_answer_only_while_they_are_what_the_table_holds() {
    let s = setup().await;
    let app = TestApp::spawn_consuming(s.env());
    let now = now_ms();
    // Evaluated at the next whole hour: the window (t - 3 h, t] is three whole hours, and
    // the samples (the last 100 minutes) lie in it.
    let t = (now / 3_600_000 + 1) * 3_600_000;
    let start = (now / 60_000 - 100) * 60_000;
    let first = metrics(3, start, start + 90 * 60_000, 60_000);
    send(&s.topic, &first).await;
    let mut stored = first.len() as i64;
    wait_for_rows(&s.db, stored).await;
    wait_until_summarised(&s.db).await;
    assert_window_exact(&app, &s.db, t, "summarised").await;
    let status = app.status().await;
    assert!(
        status["summary_cache"]["hours"].as_u64().unwrap_or(0) > 0,
        "{:#}",
        status["summary_cache"]
    );

    // A late sample with a new maximum, in a minute summarised and kept long ago.
    send(
        &s.topic,
        &[(
            0,
            guide_message("pod-0", 99.75, 1.0, start + 10 * 60_000 + 500),
        )],
    )
    .await;
    stored += 1;
    wait_for_rows(&s.db, stored).await;
    wait_until_summarised(&s.db).await;
    assert_window_exact(&app, &s.db, t, "after a late sample").await;

    // A person's DELETE.
    let client = s.db.client().await;
    client
        .execute(
            &format!(
                "DELETE FROM system_metrics WHERE pod_name = 'pod-1' AND time < to_timestamp({}::float8 / 1000)",
                start + 40 * 60_000
            ),
            &[],
        )
        .await
        .expect("delete");
    wait_until_summarised(&s.db).await;
    assert_window_exact(&app, &s.db, t, "after a DELETE").await;

    // TRUNCATE, then other values at the same times.
    client
        .batch_execute("TRUNCATE system_metrics")
        .await
        .expect("truncate");
    let again = metrics(2, start, start + 90 * 60_000, 120_000);
    send(&s.topic, &again).await;
    wait_for_rows(&s.db, again.len() as i64).await;
    wait_until_summarised(&s.db).await;
    assert_window_exact(&app, &s.db, t, "after a TRUNCATE").await;

    // Another instance on the same database, whose summarizer may be the one to summarise
    // the next late sample: the kept hours are checked against the database, not against
    // what this instance did.
    let _two = TestApp::spawn_consuming(s.env());
    send(
        &s.topic,
        &[(
            1,
            guide_message("pod-1", 99.875, 1.0, start + 20 * 60_000 + 500),
        )],
    )
    .await;
    wait_for_rows(&s.db, again.len() as i64 + 1).await;
    wait_until_summarised(&s.db).await;
    assert_window_exact(&app, &s.db, t, "after another instance's pass").await;
}

/// Waits until at least `hours` hours' packed rows are of the hours' current versions.
async fn wait_until_packed(db: &TestDatabase, hours: i64) {
    let packed = wait_for_count(
        db,
        "SELECT count(*) FROM system_metrics_minutes_versions WHERE packed = version",
        hours,
    )
    .await;
    assert!(
        packed >= hours,
        "{packed} of {hours} hours packed after 90 s"
    );
}

#[tokio::test]
async fn packed_hours_answer_only_at_the_version_they_were_packed_from() {
    let s = setup().await;
    // Nothing kept in the service's memory: every ask reads the database.
    let app = TestApp::spawn_consuming(s.env_with(&[("PROMETHEUS_SUMMARY_CACHE_MB", "0")]));
    let hour = 3_600_000;
    // Three whole hours, over before the clock's last two minutes, and the window (t - 3 h,
    // t] at their end.
    let t = ((now_ms() - 3 * 60_000) / hour) * hour;
    let start = t - 3 * hour + 30_000;
    let payloads = metrics(3, start, t, 60_000);
    send(&s.topic, &payloads).await;
    wait_for_rows(&s.db, payloads.len() as i64).await;
    wait_until_summarised(&s.db).await;
    wait_until_packed(&s.db, 3).await;
    assert_window_exact(&app, &s.db, t, "packed").await;
    let status = app
        .wait_for_status("a pass that packed", |s| {
            s["summaries"]["last_pass"].is_object()
        })
        .await;
    assert!(
        status["summaries"]["last_pass"]["hours"].is_u64(),
        "{:#}",
        status["summaries"]
    );

    // The answer comes from the packed rows: changed behind the service's back (no version
    // moves), every pod's maximum is what they now say.
    let client = s.db.client().await;
    client
        .batch_execute(
            "UPDATE system_metrics_hours \
             SET cpu_max = (SELECT string_agg(float8send(123.5), ''::bytea) \
                            FROM generate_series(1, length(minute_ms) / 8))",
        )
        .await
        .expect("change the packed rows");
    let changed = promql_window(&app, t).await;
    assert!(
        !changed.is_empty() && changed.iter().all(|(_, max, _)| *max == 123.5),
        "{changed:?}"
    );

    // A summary of each hour touched (a new version): the packed rows are not taken.
    client
        .batch_execute("UPDATE system_metrics_minutes SET samples = samples")
        .await
        .expect("touch the summaries");
    assert_eq!(promql_window(&app, t).await, raw_window(&s.db, t).await);
    // Packed again from the summaries, and exact.
    wait_until_packed(&s.db, 3).await;
    assert_window_exact(&app, &s.db, t, "packed again").await;

    // A late sample in a packed hour: its minute is read raw until summarised, then the
    // hour is packed again.
    send(
        &s.topic,
        &[(
            0,
            guide_message("pod-2", 99.625, 1.0, start + 20 * 60_000 + 500),
        )],
    )
    .await;
    wait_for_rows(&s.db, payloads.len() as i64 + 1).await;
    assert_window_exact(&app, &s.db, t, "a late sample").await;
    wait_until_summarised(&s.db).await;
    wait_until_packed(&s.db, 3).await;
    assert_window_exact(&app, &s.db, t, "a late sample packed").await;
}
