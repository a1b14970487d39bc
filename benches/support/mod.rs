//! What the database benchmarks share: their settings from the environment, and a fresh
//! database made by the service's migrations, dropped at the end (made with the pieces the
//! tests and the pipeline benchmark share, `tests/common/harness.rs`).

#[path = "../../tests/common/harness.rs"]
mod harness;

use tokio_postgres::Client;

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
        let admin = harness::connect(&admin_url).await?;
        harness::create_database(&admin, &name).await?;
        let url = harness::database_url(&admin_url, &name);
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
