//! The building blocks the test harness shares with the pipeline benchmark, which includes this
//! file (`benches/pipeline/main.rs`): free ports, processes that end with the caller however it
//! ends, the service binary with its output read line by line,
//! topics, and databases created and dropped. Each answers an error instead of panicking; the
//! tests' helpers in `mod.rs` and `tls.rs` turn errors into panics, the benchmark reports them.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use tokio_postgres::{Client, NoTls};

pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs `sh -c script watchdog args…` in the background, its output discarded: it ends a
/// process of the caller's own once the caller is gone, since statics are never dropped and a
/// killed process runs no destructor.
pub fn spawn_watchdog(script: &str, args: &[String]) -> std::io::Result<()> {
    let mut watchdog = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("watchdog")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::spawn(move || watchdog.wait());
    Ok(())
}

/// A child process killed when dropped, with a watchdog that kills it should this process die
/// without running destructors.
pub struct Guarded {
    pub child: Child,
    name: &'static str,
}

impl Guarded {
    pub fn spawn(name: &'static str, command: &mut Command) -> anyhow::Result<Guarded> {
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name} ({command:?})"))?;
        spawn_watchdog(
            "while kill -0 \"$1\" 2>/dev/null && kill -0 \"$2\" 2>/dev/null; do sleep 0.5; done; \
             kill -0 \"$1\" 2>/dev/null || kill -9 \"$2\" 2>/dev/null",
            &[std::process::id().to_string(), child.id().to_string()],
        )
        .context("cannot start the watchdog shell")?;
        Ok(Guarded { child, name })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits up to `timeout` for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("{} did not exit within {timeout:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits up to 30 s until something listens on `port` of 127.0.0.1; `exited` tells whether
/// the process that should listen is gone (`|| None` where that cannot be known).
pub fn wait_for_port(
    port: u16,
    what: &str,
    mut exited: impl FnMut() -> Option<ExitStatus>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = exited() {
            bail!("{what} exited at start-up: {status}");
        }
        if Instant::now() >= deadline {
            bail!("{what} did not listen on port {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Creates each topic with its number of partitions on the broker `client` connects to.
pub async fn create_topics(client: &ClientConfig, topics: &[(&str, i32)]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client.create()?;
    // One topic a request, so that an error names the topic it is about.
    for (topic, partitions) in topics {
        let new = NewTopic::new(topic, *partitions, TopicReplication::Fixed(1));
        let results = admin
            .create_topics(
                [&new],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await?;
        for result in results {
            result.map_err(|(t, e)| anyhow!("creating topic {t}: {e}"))?;
        }
    }
    Ok(())
}

/// The line the service logs once its HTTP server listens; the port ends it.
pub const START_LINE: &str = "Application is running on: http://localhost:";

/// The port in the service's [`START_LINE`].
pub fn service_port(line: &str) -> Option<u16> {
    line.rsplit(':').next().and_then(|p| p.trim().parse().ok())
}

/// The service binary as users start it: `env` and the `PATH` its only environment, its
/// output piped (read it with [`read_output`]).
pub fn service_command<K, V>(binary: &Path, env: impl IntoIterator<Item = (K, V)>) -> Command
where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let mut command = Command::new(binary);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Hands every line of the child's stderr and stdout to `on_line`, on a thread a stream, until
/// the child closes them.
pub fn read_output(child: &mut Child, on_line: impl Fn(String) + Clone + Send + 'static) {
    let streams: [Option<Box<dyn Read + Send>>; 2] = [
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ];
    for stream in streams.into_iter().flatten() {
        let on_line = on_line.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                on_line(line);
            }
        });
    }
}

/// A client of the database at `url`, its connection driven by a task of its own.
pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The URL of the database `name` on the server of `admin_url`.
pub fn database_url(admin_url: &str, name: &str) -> String {
    let base = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b)
        .unwrap_or(admin_url);
    format!("{base}/{name}")
}

pub async fn create_database(admin: &Client, name: &str) -> Result<(), tokio_postgres::Error> {
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
}

/// Drops the database `name`, whoever is still connected to it, giving up after 30 s. It runs
/// a runtime of its own, so it must not be called on a thread of another (`Drop` impls call it
/// on a thread of its own).
pub fn drop_database(admin_url: &str, name: &str) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    runtime.block_on(async {
        let drop = async {
            if let Ok(client) = connect(admin_url).await {
                let _ = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(30), drop).await;
    });
}
