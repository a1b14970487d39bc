//! SASL against Apache Kafka's own `SASL_SSL` listener, the SCRAM credential made with Kafka's
//! own tool (`org.apache.kafka.tools.ConfigCommand --add-config 'SCRAM-SHA-512=[password=…]'`). The
//! metric is stored over `sasl_ssl` with `SCRAM-SHA-512`, the password read from
//! `KAFKA_SASL_PASSWORD_FILE`; a wrong password gives a clear line and `/ready` 503.

mod common;

use std::time::Duration;

use common::tls::{Certs, TlsBroker, tls_client};
use common::*;

const USER: &str = "panopticon";
const PASSWORD: &str = "scram-Pa55word";

#[tokio::test]
async fn metrics_are_stored_over_sasl_ssl_with_scram_and_a_wrong_password_is_refused() {
    let certs = Certs::make();
    let broker = TlsBroker::start(&certs, "SASL_SSL", &[]);
    let topic = unique("metrics");
    broker
        .cluster
        .add_scram_user("SCRAM-SHA-512", USER, PASSWORD)
        .expect("make the SCRAM user");
    create_topic_on(&broker.cluster.bootstrap(), &topic).await;

    let db = TestDatabase::create().await;
    let mut env = service_env(&topic, &unique("group"), &db);
    env.insert("KAFKA_BROKERS".into(), broker.address.clone());
    env.insert("KAFKA_SECURITY_PROTOCOL".into(), "sasl_ssl".into());
    env.insert("KAFKA_SASL_MECHANISM".into(), "SCRAM-SHA-512".into());
    env.insert("KAFKA_SASL_USERNAME".into(), USER.into());
    env.insert(
        "KAFKA_SSL_CA_LOCATION".into(),
        certs.path("ca.pem").display().to_string(),
    );

    // A wrong password.
    let mut wrong = env.clone();
    wrong.insert("KAFKA_SASL_PASSWORD".into(), "not-the-Pa55word".into());
    let app = TestApp::spawn(wrong);
    let line = app
        .wait_for_log("Kafka broker unreachable", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no line about the broker: {:#?}", app.lines()));
    assert!(
        line.contains("SASL authentication")
            && line.contains("the broker refused KAFKA_SASL_USERNAME=panopticon"),
        "{line}"
    );
    let ready = reqwest::get(app.url("/ready")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert!(
        body["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("SASL authentication"),
        "{body}"
    );
    let output = app.lines().join("\n");
    assert!(
        !output.contains("not-the-Pa55word"),
        "the password leaked: {output}"
    );
    drop(app);

    // The right one, from a file as Kubernetes mounts it.
    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("kafka-sasl-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    env.insert(
        "KAFKA_SASL_PASSWORD_FILE".into(),
        password_file.display().to_string(),
    );
    let app = TestApp::spawn_consuming(env);
    let mut client = tls_client(&broker.address, &certs.path("ca.pem"));
    client
        .set("security.protocol", "sasl_ssl")
        .set("sasl.mechanisms", "SCRAM-SHA-512")
        .set("sasl.username", USER)
        .set("sasl.password", PASSWORD);
    produce(
        &producer_on(client),
        &topic,
        0,
        &[guide_message("sasl-pod-123", 78.5, 512.3, now_ms())],
    )
    .await;
    assert_eq!(
        wait_for_count(&db, "SELECT count(*) FROM system_metrics", 1).await,
        1,
        "{:#?}",
        app.lines()
    );
    let output = app.lines().join("\n");
    assert!(!output.contains(PASSWORD), "the password leaked: {output}");
}
