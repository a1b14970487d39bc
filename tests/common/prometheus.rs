//! A real Prometheus to compare PromQL answers with: samples written as OpenMetrics are turned
//! into TSDB blocks by `promtool tsdb create-blocks-from openmetrics`, and `prometheus` serves
//! them with an empty scrape configuration on a free port of 127.0.0.1, as a guarded child that
//! ends with the caller. Each step answers an error instead of panicking, so that a benchmark
//! can use this file too.
//!
//! `PROMETHEUS` and `PROMTOOL` name the binaries; otherwise `prometheus` and `promtool` are
//! taken from the `PATH` (Debian: `apt-get install prometheus`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::harness::{self, Guarded};

/// What to tell someone who has no Prometheus.
pub const INSTALL_HINT: &str = "install Prometheus 2.x with its promtool: on Debian or Ubuntu \
     `sudo apt-get install -y prometheus` (then `sudo systemctl disable --now prometheus` so \
     that no service stays on port 9090), or set PROMETHEUS and PROMTOOL to the binaries";

/// The binary named by the environment variable `var`, else `name` found on the `PATH`.
fn binary(var: &str, name: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!("{var}={} is not a file; {INSTALL_HINT}", path.display());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("no `{name}` binary on the PATH; {INSTALL_HINT}"))
}

/// A Prometheus server over blocks of the caller's samples; it ends when dropped.
pub struct Prometheus {
    server: Guarded,
    pub port: u16,
    http: reqwest::Client,
    // Removed on drop, after the server (fields drop in order).
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Imports `openmetrics` (gauge or untyped lines `name{labels} value seconds`, `# EOF`
    /// last) and starts a server on it, waiting until it is ready to answer queries.
    /// The import and the start-up block the calling thread (seconds, for a few thousand
    /// samples).
    pub async fn start(openmetrics: &str) -> anyhow::Result<Prometheus> {
        let prometheus = binary("PROMETHEUS", "prometheus")?;
        let promtool = binary("PROMTOOL", "promtool")?;
        let dir = tempfile::tempdir().context("temporary directory for Prometheus")?;
        let data = dir.path().join("data");
        let input = dir.path().join("samples.om");
        std::fs::write(&input, openmetrics).context("write the OpenMetrics file")?;
        import(&promtool, &input, &data)?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, "global: {}\nscrape_configs: []\n")
            .context("write the Prometheus configuration")?;

        let port = harness::free_port().context("no free port for Prometheus")?;
        let log = if std::env::var_os("TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        let mut command = Command::new(&prometheus);
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg("--storage.tsdb.retention.time=10y")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let mut server = Guarded::spawn("prometheus", &mut command)?;
        harness::wait_for_port(port, "prometheus", || server.exited())?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("HTTP client")?;
        let prometheus = Prometheus {
            server,
            port,
            http,
            _dir: dir,
        };
        prometheus.wait_ready().await?;
        Ok(prometheus)
    }

    /// Waits up to 60 s for `/-/ready`: the server listens before it has opened its blocks.
    async fn wait_ready(&self) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/-/ready", self.port);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answer = tokio::time::timeout(Duration::from_secs(5), self.http.get(&url).send());
            if matches!(answer.await, Ok(Ok(r)) if r.status().is_success()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("Prometheus on port {} was not ready within 60 s", self.port);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// GET `/api/v1/<path_and_query>` (`query?query=…&time=…`), the JSON envelope whatever
    /// the status (an error is an answer too); an error only where there is no JSON.
    pub async fn api(&self, path_and_query: &str) -> anyhow::Result<serde_json::Value> {
        let url = format!("http://127.0.0.1:{}/api/v1/{path_and_query}", self.port);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        response
            .json()
            .await
            .with_context(|| format!("GET {url}: {status} without a JSON body"))
    }

    pub fn pid(&self) -> u32 {
        self.server.pid()
    }
}

/// Runs `promtool tsdb create-blocks-from openmetrics input data`.
fn import(promtool: &Path, input: &Path, data: &Path) -> anyhow::Result<()> {
    let output = Command::new(promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(input)
        .arg(data)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}; {INSTALL_HINT}", promtool.display()))?;
    if !output.status.success() {
        bail!(
            "promtool could not import the samples ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
