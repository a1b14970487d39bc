//! What the database benchmarks share: their settings from the environment, and a fresh
//! database made by the service's migrations, dropped at the end.

use tokio_postgres::{Client, NoTls};

pub fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A database of its own, created on `BENCH_DATABASE_URL`'s server and migrated.
pub struct FreshDatabase {
    admin: Client,
    name: String,
    pub url: String,
}

impl FreshDatabase {
    pub async fn create(tag: &str) -> anyhow::Result<FreshDatabase> {
        let admin_url = std::env::var("BENCH_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("panopticon_bench_{tag}_{}", std::process::id());
        let (admin, conn) = tokio_postgres::connect(&admin_url, NoTls).await?;
        tokio::spawn(conn);
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let base = admin_url
            .rsplit_once('/')
            .map(|(b, _)| b)
            .unwrap_or(&admin_url);
        let url = format!("{base}/{name}");
        panopticon::db::migrate(&url).await?;
        Ok(FreshDatabase { admin, name, url })
    }

    /// Drops the database, whoever is still connected to it.
    pub async fn drop_it(self) -> anyhow::Result<()> {
        self.admin
            .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .await?;
        Ok(())
    }
}
