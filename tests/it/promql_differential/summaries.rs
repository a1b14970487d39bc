//! PromQL answers the same from per-minute summaries as from raw samples: every expression
//! of the comparison, over the same stored rows, once with every minute pending (so read
//! raw), once summarised up to a minute in the middle with late rows added to summarised
//! minutes since (pending, as the writer leaves them), once wholly summarised. Instants and
//! ranges on whole minutes (where summaries answer) and off them (where they must not).

use std::sync::Arc;

use actix_web::test;
use panopticon::db::queries::{self, SharedStorage};
use panopticon::http::api::ApiState;
use panopticon::http::auth::Access;
use panopticon::http::{self, AppState};
use panopticon::stats::Stats;
use serde_json::Value;

use super::common::*;
use super::compare::{self, Outcome};
use super::summarizer::{mark_pending, summarise_through};
use super::{data, enc, exprs};

async fn insert(client: &tokio_postgres::Client, rows: &[data::Row]) {
    for chunk in rows.chunks(500) {
        let values: Vec<String> = chunk
            .iter()
            .map(|r| {
                format!(
                    "(to_timestamp({}::numeric / 1000), '{}', '{}', {}, {}, '{}', '{}')",
                    r.t_ms, r.service, r.pod, r.cpu, r.memory, r.namespace, r.node
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO system_metrics (time, service, pod_name, cpu, memory, namespace, node_name) VALUES {}",
            values.join(", ")
        );
        client.execute(&sql, &[]).await.expect("rows inserted");
    }
}

/// Every query's answer, in order.
async fn answers(state: &AppState, paths: &[String]) -> Vec<Value> {
    let app = test::init_service(http::app(state.clone())).await;
    let mut out = Vec::with_capacity(paths.len());
    for path in paths {
        let request = test::TestRequest::get()
            .uri(&format!("/prometheus/api/v1/{path}"))
            .to_request();
        let response = test::call_service(&app, request).await;
        out.push(serde_json::from_slice(&test::read_body(response).await).unwrap_or(Value::Null));
    }
    out
}

/// The first disagreement of two runs of `paths`, if any, and how many points agreed.
fn differences(paths: &[String], raw: &[Value], other: &[Value]) -> (Vec<String>, usize) {
    let mut differ = Vec::new();
    let mut points = 0;
    for ((path, a), b) in paths.iter().zip(raw).zip(other) {
        let ordered = path.contains("sort");
        match compare::compare(a, b, ordered) {
            Outcome::Agree => points += compare::points(a),
            Outcome::Differ(d) | Outcome::Refused(d) => differ.push(format!(
                "{path}: {}",
                d.chars().take(300).collect::<String>()
            )),
        }
    }
    (differ, points)
}

#[tokio::test]
async fn summaries_answer_as_raw_samples_do() {
    let db = TestDatabase::create().await;
    panopticon::db::migrate(&db.url).await.expect("migrated");
    let client = db.client().await;
    let base_ms = (now_ms() / 3_600_000 - 3) * 3_600_000;
    let rows = data::rows(base_ms);
    insert(&client, &rows).await;
    let pool = queries::pool(&db.url, 2, &Default::default()).expect("pool");
    let state = AppState::new(
        Arc::new(Stats::default()),
        ApiState {
            pool,
            storage: SharedStorage::default(),
            max_limit: 1000,
            max_range: chrono::Duration::hours(168),
            max_buckets: 5000,
            max_samples: 5_000_000,
        },
        Access::new(None, false),
    );

    let base_s = base_ms / 1000;
    let mut paths = Vec::new();
    // The fast subset and every window function: a debug build answers some ten queries a
    // second here.
    let chosen = exprs::EXPRESSIONS
        .iter()
        .filter(|(fast, _, e)| *fast || e.contains("_over_time"));
    for &(_, _, expression) in chosen {
        let query = enc(&exprs::expand(expression));
        for t in [2100, 3907] {
            paths.push(format!("query?query={query}&time={}", base_s + t));
        }
        for (start, end, step) in [
            (300, 6300, 60),
            (600, 6000, 300),
            // Steps whose own minute is empty for the gap pod and the early pod (at 32 and
            // 62 minutes) while an earlier minute within the lookback is not.
            (420, 6120, 300),
            (360, 6000, 120),
            (307, 6307, 60),
            (330, 6330, 60),
        ] {
            paths.push(format!(
                "query_range?query={query}&start={}&end={}&step={step}",
                base_s + start,
                base_s + end
            ));
        }
    }

    // Late rows: samples of two pods added to minutes summarised already.
    let late: Vec<data::Row> = rows
        .iter()
        .filter(|r| r.pod == "pod-1" || r.pod == "pod-7")
        .filter(|r| (900_000..1_500_000).contains(&(r.t_ms - base_ms)))
        .map(|r| data::Row {
            t_ms: r.t_ms + 3_001,
            cpu: r.cpu * 0.5 + 7.0,
            ..*r
        })
        .collect();
    let middle_ms = base_ms + 50 * 60_000;
    summarise_through(&client, middle_ms)
        .await
        .expect("summarised");
    insert(&client, &late).await;
    let first = late.iter().map(|r| r.t_ms).min().expect("late rows");
    let last = late.iter().map(|r| r.t_ms).max().expect("late rows");
    mark_pending(&client, first, last).await.expect("pending");
    let partly = answers(&state, &paths).await;

    summarise_through(&client, i64::MAX)
        .await
        .expect("summarised");
    let wholly = answers(&state, &paths).await;

    summarise_through(&client, i64::MIN).await.expect("pending");
    let raw = answers(&state, &paths).await;

    let (differ, points) = differences(&paths, &raw, &partly);
    assert!(differ.is_empty(), "partly summarised: {differ:#?}");
    let (differ, _) = differences(&paths, &raw, &wholly);
    assert!(differ.is_empty(), "wholly summarised: {differ:#?}");
    assert!(points > 50_000, "only {points} points compared");
}
