//! Apache Kafka, the broker users run, for the tests and the benchmark (which includes this
//! file, beside `harness.rs`): the jars Maven copies from `tests/kafka/pom.xml` into a cache
//! outside the checkout, and KRaft clusters of one or more nodes on free loopback ports, each
//! node both broker and controller, with a static quorum (`controller.quorum.voters`), data in
//! a temporary directory, and the JVM sized for a 2-core machine. Each answers an error
//! instead of panicking.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::harness::{self, Guarded};

/// The Kafka release the tests and the benchmark run (`tests/kafka/pom.xml`).
pub const KAFKA_VERSION: &str = "4.4.0";

/// The folder of Kafka's jars: `KAFKA_LIBS` where set, else the cache
/// (`$XDG_CACHE_HOME` or `~/.cache`)`/panopticon-ci/kafka-<version>/libs`, filled by Maven
/// from `tests/kafka/pom.xml` the first time.
pub fn kafka_libs() -> anyhow::Result<PathBuf> {
    if let Some(libs) = std::env::var_os("KAFKA_LIBS") {
        return Ok(PathBuf::from(libs));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache"));
    let libs = cache.join(format!("panopticon-ci/kafka-{KAFKA_VERSION}/libs"));
    if libs
        .join(format!("kafka_2.13-{KAFKA_VERSION}.jar"))
        .exists()
    {
        return Ok(libs);
    }
    let pom = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka/pom.xml");
    let status = Command::new("mvn")
        .args(["-q", "-B", "-f"])
        .arg(&pom)
        .arg("dependency:copy-dependencies")
        .arg(format!("-DoutputDirectory={}", libs.display()))
        .arg("-DincludeScope=runtime")
        .stdin(Stdio::null())
        .status()
        .context("cannot run mvn to fetch Apache Kafka (install Maven and Java 17)")?;
    if !status.success() {
        bail!(
            "mvn could not fetch Apache Kafka from {}: {status}",
            pom.display()
        );
    }
    Ok(libs)
}

/// `java -cp '<libs>/*' <class>`: one of Kafka's classes (`kafka.Kafka`,
/// `org.apache.kafka.tools.ConsoleProducer`, …), its output inherited.
pub fn java(libs: &Path, class: &str) -> Command {
    let mut command = Command::new("java");
    command
        .arg("-cp")
        .arg(libs.join("*"))
        .args([
            "-Xms64m",
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
        ])
        .arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=warn")
        .arg(class)
        .stdin(Stdio::null());
    command
}

/// Runs one of Kafka's tools to its end; its output is the error when it fails.
pub fn run_tool(libs: &Path, class: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = java(libs, class)
        .args(args)
        .output()
        .with_context(|| format!("cannot run java {class}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{class} {args:?} failed ({}): {stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}

/// How to start a cluster: its size and the server properties every node adds to or overrides
/// in [`KafkaCluster::properties`] (listeners of other protocols, an authorizer, replication…).
/// In their values `{port}` and `{controller_port}` stand for the node's own PLAINTEXT and
/// controller ports, so that a listener of another protocol can be added beside them.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub nodes: usize,
    pub properties: BTreeMap<String, String>,
    /// The broker's heap, e.g. `512m`.
    pub heap: String,
}

impl Default for ClusterOptions {
    fn default() -> ClusterOptions {
        ClusterOptions {
            nodes: 1,
            properties: BTreeMap::new(),
            heap: "512m".into(),
        }
    }
}

/// One node: broker and controller.
pub struct Node {
    pub id: usize,
    /// The PLAINTEXT listener clients bootstrap from.
    pub port: u16,
    pub controller_port: u16,
    pub config: PathBuf,
    pub process: Option<Guarded>,
}

/// A running KRaft cluster, stopped (and its data removed) when dropped.
pub struct KafkaCluster {
    pub libs: PathBuf,
    pub nodes: Vec<Node>,
    pub options: ClusterOptions,
    /// Data and configuration, removed with the cluster.
    pub dir: tempfile::TempDir,
}

impl KafkaCluster {
    /// Formats each node's storage and starts them all, then waits until every broker listens.
    pub fn start(options: ClusterOptions) -> anyhow::Result<KafkaCluster> {
        let libs = kafka_libs()?;
        let dir = tempfile::Builder::new()
            .prefix("panopticon-kafka-")
            .tempdir()
            .context("cannot make the broker's directory")?;
        // Statics are never dropped: a cluster a test process keeps for its lifetime loses
        // its data with the process all the same.
        harness::spawn_watchdog(
            "while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; sleep 2; rm -rf \"$2\"",
            &[
                std::process::id().to_string(),
                dir.path().display().to_string(),
            ],
        )
        .context("cannot start the watchdog shell")?;
        let mut nodes = Vec::new();
        for id in 1..=options.nodes {
            nodes.push(Node {
                id,
                port: harness::free_port()?,
                controller_port: harness::free_port()?,
                config: dir.path().join(format!("server-{id}.properties")),
                process: None,
            });
        }
        let mut cluster = KafkaCluster {
            libs,
            nodes,
            options,
            dir,
        };
        let cluster_id = run_tool(&cluster.libs, "kafka.tools.StorageTool", &["random-uuid"])?
            .trim()
            .to_owned();
        for i in 0..cluster.nodes.len() {
            let properties = cluster.properties(i);
            let text: String = properties
                .iter()
                .map(|(k, v)| format!("{k}={v}\n"))
                .collect();
            let config = cluster.nodes[i].config.clone();
            std::fs::write(&config, text).context("cannot write server.properties")?;
            let config = config.display().to_string();
            run_tool(
                &cluster.libs,
                "kafka.tools.StorageTool",
                &["format", "-t", &cluster_id, "-c", &config],
            )?;
        }
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i)?;
        }
        for i in 0..cluster.nodes.len() {
            cluster.wait_listening(i)?;
        }
        Ok(cluster)
    }

    /// Node `i`'s server properties: the defaults for a test cluster, then the options'.
    pub fn properties(&self, i: usize) -> BTreeMap<String, String> {
        let node = &self.nodes[i];
        let voters = self
            .nodes
            .iter()
            .map(|n| format!("{}@127.0.0.1:{}", n.id, n.controller_port))
            .collect::<Vec<_>>()
            .join(",");
        let replication = self.nodes.len().min(3).to_string();
        let mut p: BTreeMap<String, String> = [
            ("process.roles", "broker,controller".to_owned()),
            ("node.id", node.id.to_string()),
            ("controller.quorum.voters", voters),
            (
                "listeners",
                format!(
                    "PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{}",
                    node.port, node.controller_port
                ),
            ),
            (
                "advertised.listeners",
                format!("PLAINTEXT://127.0.0.1:{}", node.port),
            ),
            ("controller.listener.names", "CONTROLLER".to_owned()),
            ("inter.broker.listener.name", "PLAINTEXT".to_owned()),
            (
                "listener.security.protocol.map",
                "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT".to_owned(),
            ),
            (
                "log.dirs",
                self.dir
                    .path()
                    .join(format!("data-{}", node.id))
                    .display()
                    .to_string(),
            ),
            ("offsets.topic.replication.factor", replication.clone()),
            ("offsets.topic.num.partitions", "3".to_owned()),
            ("transaction.state.log.replication.factor", replication),
            ("transaction.state.log.min.isr", "1".to_owned()),
            ("group.initial.rebalance.delay.ms", "0".to_owned()),
            ("num.partitions", "1".to_owned()),
            ("auto.create.topics.enable", "false".to_owned()),
            ("num.network.threads", "2".to_owned()),
            ("num.io.threads", "2".to_owned()),
            ("log.flush.interval.ms", "60000".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        p.extend(self.options.properties.iter().map(|(k, v)| {
            let v = v
                .replace("{port}", &node.port.to_string())
                .replace("{controller_port}", &node.controller_port.to_string());
            (k.clone(), v)
        }));
        p
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let heap = format!("-Xmx{}", self.options.heap);
        let log = if std::env::var_os("TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        let mut command = Command::new("java");
        command
            .arg("-cp")
            .arg(self.libs.join("*"))
            .args(["-Xms128m", &heap, "-XX:+UseSerialGC"])
            .arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=warn")
            .arg("kafka.Kafka")
            .arg(&self.nodes[i].config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.nodes[i].process = Some(Guarded::spawn("kafka", &mut command)?);
        Ok(())
    }

    fn wait_listening(&mut self, i: usize) -> anyhow::Result<()> {
        let port = self.nodes[i].port;
        let node = &mut self.nodes[i];
        harness::wait_for_port(port, "kafka", || {
            node.process.as_mut().and_then(|p| p.exited())
        })
    }

    /// `127.0.0.1:<port>,…` of every node.
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills node `i` with SIGKILL, as a crash would.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut process) = self.nodes[i].process.take() {
            let _ = process.child.kill();
            let _ = process.child.wait();
        }
    }

    /// Stops node `i` with SIGTERM (a controlled shutdown), waiting up to `timeout`.
    pub fn stop(&mut self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        if let Some(mut process) = self.nodes[i].process.take() {
            process.terminate(timeout)?;
        }
        Ok(())
    }

    /// Starts node `i` again on its data, and waits until it listens.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.spawn(i)?;
        self.wait_listening(i)
    }

    /// Starts every stopped node again on its data, all before waiting for any: a KRaft node
    /// may wait for a quorum of its voters before it listens.
    pub fn restart_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            if self.nodes[i].process.is_none() {
                self.spawn(i)?;
            }
        }
        for i in 0..self.nodes.len() {
            self.wait_listening(i)?;
        }
        Ok(())
    }

    /// Sends a signal (`STOP`, `CONT`) to node `i`.
    pub fn signal(&self, i: usize, signal: &str) {
        if let Some(process) = &self.nodes[i].process {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(process.pid().to_string())
                .status();
        }
    }

    /// Node `i`'s process id, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].process.as_ref().map(Guarded::pid)
    }

    /// Runs one of Kafka's tools against this cluster; `{bootstrap}` in an argument is
    /// replaced by [`KafkaCluster::bootstrap`].
    pub fn tool(&self, class: &str, args: &[&str]) -> anyhow::Result<String> {
        let bootstrap = self.bootstrap();
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("{bootstrap}", &bootstrap))
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_tool(&self.libs, class, &args)
    }

    /// Gives `user` a SCRAM credential for `mechanism` (`SCRAM-SHA-256`, `SCRAM-SHA-512`) with
    /// Kafka's own tool, over the PLAINTEXT listener.
    pub fn add_scram_user(
        &self,
        mechanism: &str,
        user: &str,
        password: &str,
    ) -> anyhow::Result<()> {
        let config = format!("{mechanism}=[password={password}]");
        self.tool(
            "org.apache.kafka.tools.ConfigCommand",
            &[
                "--bootstrap-server",
                "{bootstrap}",
                "--alter",
                "--add-config",
                &config,
                "--entity-type",
                "users",
                "--entity-name",
                user,
            ],
        )?;
        Ok(())
    }

    /// Allows `principal` (`User:…`) each of `operations` on `resource` (`["--topic", name]`,
    /// `["--group", name]`) with Kafka's own `kafka-acls` (AclCommand), over the PLAINTEXT
    /// listener, whose principal must be a super user where an authorizer is on.
    pub fn allow(
        &self,
        principal: &str,
        operations: &[&str],
        resource: &[&str],
    ) -> anyhow::Result<()> {
        let mut args = vec![
            "--bootstrap-server",
            "{bootstrap}",
            "--add",
            "--allow-principal",
            principal,
        ];
        for operation in operations {
            args.extend(["--operation", operation]);
        }
        args.extend(resource);
        self.tool("org.apache.kafka.tools.AclCommand", &args)?;
        Ok(())
    }
}

impl ClusterOptions {
    /// One node with, beside its own listeners, a listener `PROXIED` on `port` that advertises
    /// `advertised` (a proxy in front of it): clients that bootstrap from the proxy are told to
    /// come back through it, while those that bootstrap from [`KafkaCluster::bootstrap`] go
    /// straight to the node. The node's broker and controller talk past the proxy.
    pub fn proxied(port: u16, advertised: &str) -> ClusterOptions {
        let properties = [
            (
                "listeners",
                format!(
                    "PLAINTEXT://127.0.0.1:{{port}},CONTROLLER://127.0.0.1:{{controller_port}},PROXIED://127.0.0.1:{port}"
                ),
            ),
            (
                "advertised.listeners",
                format!("PLAINTEXT://127.0.0.1:{{port}},PROXIED://{advertised}"),
            ),
            (
                "listener.security.protocol.map",
                "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,PROXIED:PLAINTEXT".to_owned(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        ClusterOptions {
            properties,
            ..ClusterOptions::default()
        }
    }
}

impl KafkaCluster {
    /// Stops every running node with SIGTERM (a controlled shutdown) at once, as when a whole
    /// cluster is taken down, then waits up to `timeout` for each to exit.
    pub fn stop_all(&mut self, timeout: Duration) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            self.signal(i, "TERM");
        }
        for i in 0..self.nodes.len() {
            self.stop(i, timeout)
                .with_context(|| format!("node {}", self.nodes[i].id))?;
        }
        Ok(())
    }

    /// [`KafkaCluster::restart_all`], or [`KafkaCluster::restart`] of the nodes `only`, waiting
    /// up to `timeout` for each to listen: a node recovering its logs while clients retry
    /// against it, on a loaded machine, may take longer than the 30 s start-up allows.
    pub fn restart_within(&mut self, only: Option<usize>, timeout: Duration) -> anyhow::Result<()> {
        let nodes: Vec<usize> = match only {
            Some(i) => vec![i],
            None => (0..self.nodes.len()).collect(),
        };
        for &i in &nodes {
            if self.nodes[i].process.is_none() {
                self.spawn(i)?;
            }
        }
        for &i in &nodes {
            let deadline = std::time::Instant::now() + timeout;
            let node = &mut self.nodes[i];
            while std::net::TcpStream::connect(("127.0.0.1", node.port)).is_err() {
                if let Some(status) = node.process.as_mut().and_then(|p| p.exited()) {
                    bail!("kafka node {} exited at start-up: {status}", node.id);
                }
                if std::time::Instant::now() >= deadline {
                    bail!("kafka node {} did not listen within {timeout:?}", node.id);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }
}
