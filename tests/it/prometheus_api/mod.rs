//! The Prometheus-compatible API under `/prometheus/api/v1`, served in-process by
//! [`panopticon::http::app`] over a fresh migrated database seeded with known rows.
//!
//! Each supported query is checked against an oracle: the same computation done here from the
//! raw rows, with Prometheus's rules written out independently of the service's code (an
//! instant selector takes the newest sample in `(t − 5m, t]`, a range selector the samples in
//! `(t − range, t]`, steps are `start + i × step` up to `end`). A seeded generator then throws
//! a few hundred strings at the query endpoints: each must get an answer or a JSON error,
//! never a 500.

mod endpoints;
mod fuzz;
mod oracle;

use crate::common;
use crate::promql_differential::summarizer;

use std::collections::BTreeMap;

use actix_web::test;
use common::*;
use panopticon::db::queries::SharedStorage;
use panopticon::http::{self, AppState};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

type Labels = BTreeMap<String, String>;
/// One instant vector: each series' value.
type Vector = BTreeMap<Labels, f64>;

const CPU: &str = "pod_cpu_usage_percent";
const MEM: &str = "pod_memory_usage_mib";
const LOOKBACK: i64 = 300_000;

/// One seeded row.
#[derive(Debug, Clone)]
struct Row {
    t: i64,
    service: &'static str,
    pod: &'static str,
    namespace: &'static str,
    node: &'static str,
    cpu: f64,
    memory: f64,
}

impl Row {
    fn labels(&self, metric: &str) -> Labels {
        [
            ("__name__", metric),
            ("job", "panopticon"),
            ("service", self.service),
            ("pod", self.pod),
            ("namespace", self.namespace),
            ("node", self.node),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn value(&self, metric: &str) -> f64 {
        if metric == CPU { self.cpu } else { self.memory }
    }
}

const PODS: [(&str, &str, &str, &str); 6] = [
    ("a-1", "alpha", "one", "n1"),
    ("a-2", "alpha", "one", "n1"),
    ("a-3", "alpha", "two", "n2"),
    ("b-1", "beta", "two", "n2"),
    ("b-2", "beta", "one", "n1"),
    ("c-1", "gamma", "two", "n1"),
];

/// 20 minutes of samples every 15 s (offset per pod by whole seconds, so some fall exactly
/// on steps and on lookback edges), with gaps: b-2 stops after 10 minutes, c-1 starts after
/// 7.5, a-3 is silent for over 6 minutes in between. Values are distinct (no ties for topk).
fn rows(base: i64) -> Vec<Row> {
    let mut rows = Vec::new();
    for (p, (pod, service, namespace, node)) in PODS.iter().enumerate() {
        for k in 0..80i64 {
            let silent = match *pod {
                "b-2" => k >= 40,
                "c-1" => k < 30,
                "a-3" => (20..45).contains(&k),
                _ => false,
            };
            if silent {
                continue;
            }
            let p = p as i64;
            rows.push(Row {
                t: base + k * 15_000 + p * 2_000 * (p % 2),
                service,
                pod,
                namespace,
                node,
                cpu: ((k * 37 + p * 53) % 97) as f64 + p as f64 * 0.01 + k as f64 * 0.0001,
                memory: 100.0
                    + ((k * 11 + p * 29) % 61) as f64 * 8.0
                    + p as f64 * 0.1
                    + k as f64 * 0.001,
            });
        }
    }
    rows
}

struct Seeded {
    state: AppState,
    rows: Vec<Row>,
    base: i64,
    _db: TestDatabase,
}

fn state_with(url: &str, max_samples: u32) -> AppState {
    app_state(url, SharedStorage::default(), max_samples)
}

async fn seeded() -> Seeded {
    let db = TestDatabase::create().await;
    panopticon::db::migrate(&db.url).await.expect("migrated");
    let base = (now_ms() / 3_600_000 - 2) * 3_600_000;
    let rows = rows(base);
    let client = db.client().await;
    for chunk in rows.chunks(100) {
        let mut sql = String::from(
            "INSERT INTO system_metrics (time, service, pod_name, cpu, memory, namespace, node_name) VALUES ",
        );
        let values: Vec<String> = chunk
            .iter()
            .map(|r| {
                format!(
                    "(to_timestamp({}::numeric / 1000), '{}', '{}', {}, {}, '{}', '{}')",
                    r.t, r.service, r.pod, r.cpu, r.memory, r.namespace, r.node
                )
            })
            .collect();
        sql.push_str(&values.join(", "));
        client.execute(&sql, &[]).await.expect("seed");
    }
    // The first ten minutes summarised, the rest pending: as the service's summarizer and
    // writer leave them, so that queries are answered from both.
    summarizer::summarise_through(&client, base + 600_000)
        .await
        .expect("summarised");
    Seeded {
        state: state_with(&db.url, 1_000_000),
        rows,
        base,
        _db: db,
    }
}

async fn call(state: &AppState, request: test::TestRequest) -> (u16, Value) {
    let app = test::init_service(http::app(state.clone())).await;
    let response = test::call_service(&app, request.to_request()).await;
    let status = response.status().as_u16();
    let body = test::read_body(response).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn get(state: &AppState, path: &str) -> (u16, Value) {
    call(state, test::TestRequest::get().uri(path)).await
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}
