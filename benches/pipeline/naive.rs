//! Phase 3c: the naive service. It consumes and validates like the service, but stores each
//! message with its own autocommitted `INSERT`, for a bounded time.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use panopticon::domain::{Rules, ValidMetric};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use serde::Serialize;
use tokio_postgres::Client;

use crate::db::COLUMNS;
use crate::kafka::consumer_config;
use crate::settings::Settings;
use crate::{now_ms, rounded, within};

/// The report's `naive`, rounded there.
#[derive(Serialize)]
pub struct Naive {
    #[serde(serialize_with = "rounded")]
    pub rows_per_s: f64,
    pub rows: usize,
}

/// Stores messages of `topic` one `INSERT` each into `client`'s database, for `naive_secs` or
/// `naive_max` messages, whichever comes first.
pub async fn run(
    settings: &Settings,
    broker: &str,
    topic: &str,
    client: &Client,
) -> anyhow::Result<Naive> {
    let group = format!("naive_{}", uuid::Uuid::new_v4().simple());
    let consumer: StreamConsumer = consumer_config(broker, &group).create()?;
    consumer.subscribe(&[topic])?;
    let insert = client
        .prepare(&format!(
            "INSERT INTO {COLUMNS} VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .await?;
    let rules = Rules {
        max_future_skew_ms: 300_000,
        max_age_ms: None,
    };
    let limit = Duration::from_secs(settings.naive_secs);
    let mut started: Option<Instant> = None;
    let mut stored = 0usize;
    // The topic holds `messages`: stop there at the latest.
    let most = settings.naive_max.min(settings.messages);
    while stored < most && started.is_none_or(|s| s.elapsed() < limit) {
        let message = within(Duration::from_secs(60), "naive consumer", consumer.recv()).await??;
        started.get_or_insert_with(Instant::now);
        let metric = ValidMetric::parse(message.payload().unwrap_or_default(), &rules, now_ms())
            .map_err(|e| anyhow!("invalid message: {e}"))?;
        within(
            Duration::from_secs(30),
            "naive INSERT",
            client.execute(
                &insert,
                &[
                    &metric.time(),
                    &metric.service(),
                    &metric.pod_name(),
                    &metric.cpu(),
                    &metric.memory(),
                    &metric.namespace(),
                    &metric.node_name(),
                ],
            ),
        )
        .await??;
        stored += 1;
    }
    let seconds = started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(1.0);
    Ok(Naive {
        rows_per_s: stored as f64 / seconds,
        rows: stored,
    })
}
