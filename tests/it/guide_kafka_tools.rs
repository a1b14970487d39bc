//! The original test guide run with Apache Kafka's own tools, as its readers run it: the topic
//! made with `kafka-topics` (TopicCommand: `metrics.system` only, 3 partitions, replication 1),
//! the guide's exact JSON lines fed to `kafka-console-producer` (ConsoleProducer) on stdin,
//! its three methods checked on the service's `[METRIC]` lines and rows, and its
//! troubleshooting step's `kafka-console-consumer` (ConsoleConsumer) reading the topic and the
//! dead-letter topic the service made for itself, where an invalid message lands.

use crate::common;

use std::io::Write as _;
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use common::kafka::{ClusterOptions, KafkaCluster, java};
use common::*;

const TOPIC: &str = "metrics.system";

/// `kafka-console-producer.sh --bootstrap-server … --topic metrics.system` fed `line` on stdin,
/// as `echo '…' | kafka-console-producer.sh …` does; it ends once the line is acknowledged.
fn console_produce(cluster: &KafkaCluster, line: &str) {
    let mut child = java(&cluster.libs, "org.apache.kafka.tools.ConsoleProducer")
        .args(["--bootstrap-server", &cluster.bootstrap(), "--topic", TOPIC])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ConsoleProducer");
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, "{line}").expect("write to ConsoleProducer");
    drop(stdin);
    let output = child.wait_with_output().expect("ConsoleProducer ends");
    assert!(
        output.status.success(),
        "ConsoleProducer failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `kafka-console-consumer.sh --bootstrap-server … --topic <topic> --from-beginning
/// --max-messages <n>`, giving up after 30 s without a message.
fn console_consume(cluster: &KafkaCluster, topic: &str, max: usize) -> String {
    cluster
        .tool(
            "org.apache.kafka.tools.consumer.ConsoleConsumer",
            &[
                "--bootstrap-server",
                "{bootstrap}",
                "--topic",
                topic,
                "--from-beginning",
                "--max-messages",
                &max.to_string(),
                "--timeout-ms",
                "30000",
            ],
        )
        .expect("ConsoleConsumer")
}

/// The guide's line, `'$(date +%s)'000` for its timestamp.
fn guide_line(pod: &str, cpu: &str, memory: &str) -> (String, i64) {
    let timestamp = Utc::now().timestamp() * 1000;
    let line = format!(
        r#"{{"timestamp":{timestamp},"service":"log-generator","podName":"{pod}","namespace":"default","nodeName":"kind-control-plane","cpu":{cpu},"memory":{memory}}}"#
    );
    (line, timestamp)
}

fn iso(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[tokio::test]
async fn the_guide_works_with_kafkas_console_tools() {
    // A broker of the test's own: the guide's topic names are fixed.
    let cluster = KafkaCluster::start(ClusterOptions::default()).expect("start Apache Kafka");
    cluster
        .tool(
            "org.apache.kafka.tools.TopicCommand",
            &[
                "--create",
                "--topic",
                TOPIC,
                "--bootstrap-server",
                "{bootstrap}",
                "--partitions",
                "3",
                "--replication-factor",
                "1",
            ],
        )
        .expect("kafka-topics --create");
    let db = TestDatabase::create().await;
    let mut env = service_env(TOPIC, &unique("group"), &db);
    env.insert("KAFKA_BROKERS".into(), cluster.bootstrap());
    // The guide makes no dead-letter topic: the service's default name, made by the service.
    env.remove("KAFKA_DLQ_TOPIC");
    let app = TestApp::spawn_consuming(env);
    assert!(
        app.wait_for_log(
            "created dead-letter topic topic=metrics.system.dlq",
            Duration::from_secs(30)
        )
        .is_some(),
        "{:#?}",
        app.lines()
    );

    // Method 1: one metric.
    let (line, ts) = guide_line("test-pod-123", "78.5", "512.3");
    console_produce(&cluster, &line);
    let expected = format!(
        "[METRIC] service=log-generator pod=test-pod-123 CPU=78.50% Memory=512.30Mi timestamp={}",
        iso(ts)
    );
    let printed = app.wait_for_log("[METRIC]", Duration::from_secs(30));
    assert!(
        printed.as_deref().is_some_and(|l| l.ends_with(&expected)),
        "expected a line ending in {expected:?}, got {printed:?}"
    );

    // Method 2: three metrics, one second apart, printed in order.
    for (pod, cpu, memory) in [
        ("test-pod-001", "60.5", "250.0"),
        ("test-pod-002", "70.5", "300.0"),
        ("test-pod-003", "80.5", "350.0"),
    ] {
        console_produce(&cluster, &guide_line(pod, cpu, memory).0);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    app.wait_for_log("pod=test-pod-003", Duration::from_secs(30));
    let lines = app.lines_containing("[METRIC]");
    let expected = [
        "pod=test-pod-123 CPU=78.50% Memory=512.30Mi",
        "pod=test-pod-001 CPU=60.50% Memory=250.00Mi",
        "pod=test-pod-002 CPU=70.50% Memory=300.00Mi",
        "pod=test-pod-003 CPU=80.50% Memory=350.00Mi",
    ];
    assert_eq!(lines.len(), expected.len(), "{lines:#?}");
    for (line, part) in lines.iter().zip(expected) {
        assert!(line.contains(part), "{line} should contain {part}");
    }

    // Method 3: stored, queried 3 seconds later as the guide queries it.
    let (line, ts) = guide_line("db-test-pod-999", "85.5", "400.0");
    console_produce(&cluster, &line);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rows = db
        .client()
        .await
        .query(
            "SELECT time, service, pod_name, cpu, memory, namespace, node_name FROM system_metrics
             WHERE service = 'log-generator' ORDER BY time DESC LIMIT 5",
            &[],
        )
        .await
        .expect("the guide's query");
    assert_eq!(rows.len(), 5);
    let row = &rows[0];
    assert_eq!(row.get::<_, DateTime<Utc>>(0).timestamp_millis(), ts);
    assert_eq!(row.get::<_, String>(1), "log-generator");
    assert_eq!(row.get::<_, String>(2), "db-test-pod-999");
    assert_eq!(row.get::<_, f64>(3), 85.5);
    assert_eq!(row.get::<_, f64>(4), 400.0);
    assert_eq!(row.get::<_, String>(5), "default");
    assert_eq!(row.get::<_, String>(6), "kind-control-plane");

    // Troubleshooting: the messages are in the topic, and the topics are listed.
    let read = console_consume(&cluster, TOPIC, 5);
    for pod in [
        "test-pod-123",
        "test-pod-001",
        "test-pod-002",
        "test-pod-003",
        "db-test-pod-999",
    ] {
        assert!(read.contains(pod), "{pod} missing from {read}");
    }
    let listed = cluster
        .tool(
            "org.apache.kafka.tools.TopicCommand",
            &["--list", "--bootstrap-server", "{bootstrap}"],
        )
        .expect("kafka-topics --list");
    let listed: Vec<&str> = listed.lines().collect();
    assert!(
        listed.contains(&TOPIC) && listed.contains(&"metrics.system.dlq"),
        "{listed:?}"
    );

    // An invalid message (CPU over 100 %) prints no line, stores no row, and is read back
    // from the dead-letter topic with the console consumer.
    let (invalid, _) = guide_line("bad-pod-1", "150.0", "400.0");
    console_produce(&cluster, &invalid);
    let letters = console_consume(&cluster, "metrics.system.dlq", 1);
    assert!(
        letters.lines().any(|l| l == invalid),
        "expected {invalid} in the dead-letter topic, got {letters}"
    );
    let status = app
        .wait_for_status("the dead letter", |s| {
            s["validator"]["dead_lettered"].as_u64() == Some(1)
        })
        .await;
    assert_eq!(
        status["validator"]["held_partitions"],
        serde_json::json!([])
    );
    assert_eq!(db.count("SELECT count(*) FROM system_metrics").await, 5);
    assert!(
        !app.lines_containing("[METRIC]")
            .iter()
            .any(|l| l.contains("pod=bad-pod-1"))
    );
}
