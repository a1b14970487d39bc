//! Kafka over TLS: Apache Kafka's own SSL listener (tests/common/tls.rs). The guide's metric is stored over `ssl` with
//! `KAFKA_SSL_CA_LOCATION`, its dead letters and `panopticon simulate` go over the same
//! secured connection, and an untrusted CA is named in one line and in `/ready`.

mod common;

use std::time::Duration;

use common::tls::{Certs, TlsBroker, tls_client};
use common::*;

#[tokio::test]
async fn metrics_dead_letters_and_the_simulator_go_over_tls_and_an_untrusted_ca_is_named() {
    let certs = Certs::make();
    let broker = TlsBroker::start(&certs, "SSL", &[]);
    let client = tls_client(&broker.address, &certs.path("ca.pem"));
    let topic = unique("metrics");
    create_topic_with(&client, &topic).await;
    let db = TestDatabase::create().await;
    let mut env = service_env(&topic, &unique("group"), &db);
    env.insert("KAFKA_BROKERS".into(), broker.address.clone());
    env.insert("KAFKA_SECURITY_PROTOCOL".into(), "ssl".into());

    // A CA that did not sign the broker's certificate.
    let other_ca = certs.path("other-ca.pem");
    env.insert(
        "KAFKA_SSL_CA_LOCATION".into(),
        other_ca.display().to_string(),
    );
    let app = TestApp::spawn(env.clone());
    let line = app
        .wait_for_log("Kafka broker unreachable", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no line about the broker: {:#?}", app.lines()));
    assert!(
        line.contains("certificate verify failed")
            && line.contains(&format!(
                "the broker's certificate is not signed by a CA in KAFKA_SSL_CA_LOCATION={}",
                other_ca.display()
            )),
        "{line}"
    );
    let ready = reqwest::get(app.url("/ready")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert!(
        body["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("certificate verify failed"),
        "{body}"
    );
    drop(app);

    // Restarted with the right CA, the service recovers.
    env.insert(
        "KAFKA_SSL_CA_LOCATION".into(),
        certs.path("ca.pem").display().to_string(),
    );
    let app = TestApp::spawn_consuming(env.clone());
    let producer = producer_on(client.clone());
    produce(
        &producer,
        &topic,
        0,
        &[
            guide_message("tls-pod-123", 78.5, 512.3, now_ms()),
            b"not json".to_vec(),
        ],
    )
    .await;
    assert_eq!(
        wait_for_count(&db, "SELECT count(*) FROM system_metrics", 1).await,
        1,
        "{:#?}",
        app.lines()
    );
    assert!(
        app.wait_for_log(
            "[METRIC] service=log-generator pod=tls-pod-123",
            Duration::from_secs(10)
        )
        .is_some()
    );
    let letters = consume_all_on(client.clone(), &format!("{topic}.dlq"), 1).await;
    assert_eq!(letters.len(), 1, "one dead letter over TLS");
    assert_eq!(
        rdkafka::message::Message::payload(&letters[0]),
        Some(&b"not json"[..])
    );

    // The simulator takes the same settings.
    let mut simulate = TestApp::spawn_args(
        env.clone(),
        &[
            "simulate",
            "--pods",
            "3",
            "--interval-ms",
            "100",
            "--count",
            "6",
        ],
    );
    let status = simulate.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{:#?}", simulate.lines());
    assert_eq!(
        wait_for_count(&db, "SELECT count(*) FROM system_metrics", 7).await,
        7,
        "{:#?}",
        app.lines()
    );
    drop(app);
}
