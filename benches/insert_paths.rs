//! Insert paths for one batch of metrics, measured against text `COPY` of the same rows (the
//! write limit) in the same run, on a fresh database made by the service's own migrations.
//!
//!     cargo bench --bench insert_paths            # BENCH_ROWS=200000 BENCH_BATCH=5000
//!
//! `BENCH_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`) names the server.

use std::time::Instant;

use futures_util::SinkExt;
use panopticon::db::{self, OffsetScope};
use panopticon::domain::{Rules, ValidMetric};
use panopticon::offsets::OffsetAdvance;
use panopticon::simulate::Simulator;
use tokio_postgres::Client;

mod support;
use support::{FreshDatabase, env_usize};

fn rows(count: usize) -> Vec<ValidMetric> {
    let mut simulator = Simulator::new(500, 1);
    let rules = Rules {
        max_future_skew_ms: 0,
        max_age_ms: None,
    };
    let mut rows = Vec::with_capacity(count);
    let mut ts = 1_730_707_200_000;
    while rows.len() < count {
        simulator.tick(ts, |_, payload| {
            if rows.len() < count {
                rows.push(ValidMetric::parse(payload, &rules, i64::MAX / 2).expect("valid"));
            }
        });
        ts += 1000;
    }
    rows
}

async fn copy_csv(client: &mut Client, batch: &[ValidMetric]) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let sink = tx
        .copy_in("COPY system_metrics (time, service, pod_name, cpu, memory, namespace, node_name) FROM STDIN (FORMAT csv)")
        .await?;
    let mut text = String::with_capacity(batch.len() * 120);
    for m in batch {
        use std::fmt::Write;
        let _ = writeln!(
            text,
            "{},{},{},{},{},{},{}",
            m.time().to_rfc3339(),
            m.service(),
            m.pod_name(),
            m.cpu(),
            m.memory(),
            m.namespace(),
            m.node_name()
        );
    }
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from(text)).await?;
    sink.finish().await?;
    tx.commit().await
}

async fn unnest(client: &mut Client, batch: &[ValidMetric]) -> Result<(), tokio_postgres::Error> {
    let time: Vec<_> = batch.iter().map(|m| m.time()).collect();
    let service: Vec<&str> = batch.iter().map(|m| m.service()).collect();
    let pod: Vec<&str> = batch.iter().map(|m| m.pod_name()).collect();
    let cpu: Vec<f64> = batch.iter().map(|m| m.cpu()).collect();
    let memory: Vec<f64> = batch.iter().map(|m| m.memory()).collect();
    let namespace: Vec<&str> = batch.iter().map(|m| m.namespace()).collect();
    let node: Vec<&str> = batch.iter().map(|m| m.node_name()).collect();
    client
        .execute(
            "INSERT INTO system_metrics (time, service, pod_name, cpu, memory, namespace, node_name)
             SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::float8[], $5::float8[], $6::text[], $7::text[])",
            &[&time, &service, &pod, &cpu, &memory, &namespace, &node],
        )
        .await?;
    Ok(())
}

async fn values(client: &mut Client, batch: &[ValidMetric]) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    // 7 binds a row; stay under the protocol's 32,767 binds a statement.
    for part in batch.chunks(4000) {
        let mut sql = String::from(
            "INSERT INTO system_metrics (time, service, pod_name, cpu, memory, namespace, node_name) VALUES ",
        );
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
        let times: Vec<_> = part.iter().map(|m| m.time()).collect();
        let cpus: Vec<f64> = part.iter().map(|m| m.cpu()).collect();
        let mems: Vec<f64> = part.iter().map(|m| m.memory()).collect();
        let services: Vec<&str> = part.iter().map(|m| m.service()).collect();
        let pods: Vec<&str> = part.iter().map(|m| m.pod_name()).collect();
        let namespaces: Vec<&str> = part.iter().map(|m| m.namespace()).collect();
        let nodes: Vec<&str> = part.iter().map(|m| m.node_name()).collect();
        for i in 0..part.len() {
            let b = i * 7;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "(${},${},${},${},${},${},${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6,
                b + 7
            ));
            params.extend_from_slice(&[
                &times[i],
                &services[i],
                &pods[i],
                &cpus[i],
                &mems[i],
                &namespaces[i],
                &nodes[i],
            ]);
        }
        tx.execute(sql.as_str(), &params).await?;
    }
    tx.commit().await
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let total = env_usize("BENCH_ROWS", 200_000);
    let batch = env_usize("BENCH_BATCH", 5000);
    let database = FreshDatabase::create("inserts").await?;
    let url = database.url.clone();
    let mut writer = db::Writer::connect(&url, &Default::default()).await?;
    let mut client = db::connect(&url, &Default::default()).await?;
    let rows = rows(total);
    let scope = OffsetScope {
        group: "bench".into(),
        topic: "bench".into(),
    };

    println!(
        "{total} rows in batches of {batch}, one connection, the table and indexes of the migrations"
    );
    let mut results: Vec<(&str, f64)> = Vec::new();
    for round in 0..2 {
        for path in [
            "copy csv (reference)",
            "binary copy, dedup, fenced offsets (service)",
            "unnest arrays",
            "multi-row values",
        ] {
            client.batch_execute("TRUNCATE system_metrics").await?;
            client.batch_execute("VACUUM system_metrics").await?;
            let started = Instant::now();
            for (i, part) in rows.chunks(batch).enumerate() {
                match path {
                    "copy csv (reference)" => copy_csv(&mut client, part).await?,
                    "binary copy, dedup, fenced offsets (service)" => {
                        let advance = OffsetAdvance {
                            partition: 0,
                            expected: (i > 0).then(|| i as i64 - 1),
                            next: i as i64,
                        };
                        writer.write_batch(part, &scope, &[advance]).await?;
                    }
                    "unnest arrays" => unnest(&mut client, part).await?,
                    _ => values(&mut client, part).await?,
                }
            }
            let rate = total as f64 / started.elapsed().as_secs_f64();
            if round == 1 {
                results.push((path, rate));
            }
        }
    }
    let reference = results[0].1;
    println!("{:<46} {:>12} {:>8}", "path", "rows/s", "× COPY");
    for (path, rate) in &results {
        println!("{path:<46} {rate:>12.0} {:>8.2}", rate / reference);
    }
    drop((client, writer));
    database.drop_it().await
}
