//! Databases: fresh ones, made by the service's migrations and dropped at the end (leftovers of
//! killed runs at the start), and what the phases read from them.

use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::Client;

use crate::{harness, within};

/// The table every phase writes, with its columns in the order of the service's `COPY`.
pub const COLUMNS: &str =
    "system_metrics (time, service, pod_name, cpu, memory, namespace, node_name)";
/// Where databases of this bench start; leftovers of a killed run are dropped at start-up.
const DB_PREFIX: &str = "panopticon_bench_pipeline_";

/// A migrated database of its own, dropped when dropped.
pub struct Database {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl Database {
    pub async fn create(admin_url: &str, tag: &str) -> anyhow::Result<Database> {
        let name = format!(
            "{DB_PREFIX}{}_{tag}_{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let admin = connect(admin_url).await?;
        within(
            Duration::from_secs(30),
            "CREATE DATABASE",
            harness::create_database(&admin, &name),
        )
        .await??;
        let db = Database {
            url: harness::database_url(admin_url, &name),
            name,
            admin_url: admin_url.to_owned(),
        };
        within(
            Duration::from_secs(60),
            "migrations",
            panopticon::db::migrate(&db.url),
        )
        .await??;
        Ok(db)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || harness::drop_database(&admin_url, &name)).join();
    }
}

/// Drops the databases of earlier runs whose process is gone.
pub async fn drop_leftover_databases(admin_url: &str) -> anyhow::Result<()> {
    let admin = connect(admin_url).await?;
    let rows = admin
        .query(
            "SELECT datname FROM pg_database WHERE starts_with(datname, $1)",
            &[&DB_PREFIX],
        )
        .await?;
    for row in rows {
        let name: String = row.get(0);
        let pid = name[DB_PREFIX.len()..]
            .split('_')
            .next()
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !PathBuf::from(format!("/proc/{pid}")).exists()
        {
            eprintln!("dropping database {name} left by an earlier run");
            let admin_url = admin_url.to_owned();
            tokio::task::spawn_blocking(move || harness::drop_database(&admin_url, &name)).await?;
        }
    }
    Ok(())
}

/// Writes out what earlier phases left dirty, so that each phase starts from a clean server
/// rather than paying for the checkpoint its predecessor triggered. Needs a superuser (or
/// `pg_checkpoint`); without one, phases simply share the server's state.
pub async fn checkpoint(admin_url: &str) {
    let run = async {
        connect(admin_url)
            .await?
            .batch_execute("CHECKPOINT")
            .await
            .map_err(anyhow::Error::from)
    };
    match within(Duration::from_secs(300), "CHECKPOINT", run).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) | Err(e) => eprintln!("CHECKPOINT skipped: {e}"),
    }
}

pub async fn connect(url: &str) -> anyhow::Result<Client> {
    Ok(within(
        Duration::from_secs(10),
        "connect to PostgreSQL",
        harness::connect(url),
    )
    .await??)
}

/// The server's version, for the report.
pub async fn server_version(admin_url: &str) -> anyhow::Result<String> {
    Ok(connect(admin_url)
        .await?
        .query_one("SHOW server_version", &[])
        .await?
        .get(0))
}

/// Rows in `system_metrics`, and how many distinct ones: every message of a run has its own
/// pod and timestamp.
pub async fn stored_rows(url: &str) -> anyhow::Result<(i64, i64)> {
    let row = within(
        Duration::from_secs(120),
        "count rows",
        connect(url).await?.query_one(
            "SELECT count(*), count(DISTINCT (pod_name, time)) FROM system_metrics",
            &[],
        ),
    )
    .await??;
    Ok((row.get(0), row.get(1)))
}

/// The offsets the service has stored for `group` on `topic`, summed over the partitions: the
/// messages it has committed.
pub async fn committed(client: &Client, group: &str, topic: &str) -> anyhow::Result<i64> {
    let row = within(
        Duration::from_secs(10),
        "read kafka_offsets",
        client.query_one(
            "SELECT coalesce(sum(next_offset), 0)::int8 FROM kafka_offsets
             WHERE consumer_group = $1 AND topic = $2",
            &[&group, &topic],
        ),
    )
    .await??;
    Ok(row.get(0))
}
