//! Kafka over TLS: Apache Kafka's own SSL listeners (tests/common/tls.rs), one broker for the
//! tests of this file. On the `SSL` listener the guide's metric is stored over `ssl` with
//! `KAFKA_SSL_CA_LOCATION`, its dead letters and `panopticon simulate` go over the same
//! secured connection, and an untrusted CA is named in one line and in `/ready`. On the `MTLS`
//! listener (`ssl.client.auth=required`) the service stores metrics with its client
//! certificate and key, and without them says so in one line and in `/ready`.

use crate::common;

use std::time::Duration;

use common::tls::{SharedTls, tls_client};
use common::*;

/// The broker of this file: `SSL` without client authentication, `MTLS` requiring a client
/// certificate signed by the test CA.
fn tls() -> &'static SharedTls {
    common::tls::shared(
        &[("SSL", "SSL"), ("MTLS", "SSL")],
        &[("listener.name.mtls.ssl.client.auth", "required")],
    )
}

#[tokio::test]
async fn metrics_dead_letters_and_the_simulator_go_over_tls_and_an_untrusted_ca_is_named() {
    let SharedTls { certs, broker } = tls();
    let client = tls_client(broker.address_of("SSL"), &certs.path("ca.pem"));
    let Setup { topic, group, db } = setup_with(&client, TestDatabase::create().await).await;
    let mut env = tls().service_env("SSL", "ssl", &topic, &group, &db);

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
    app.assert_unready("certificate verify failed").await;
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

#[tokio::test]
async fn mutual_tls_stores_metrics_with_the_client_certificate_and_is_refused_without_it() {
    let SharedTls { certs, broker } = tls();
    let address = broker.address_of("MTLS");
    let topic = unique("metrics");
    let dlq = format!("{topic}.dlq");
    broker
        .create_topics(&[(topic.as_str(), PARTITIONS), (dlq.as_str(), 1)])
        .await;
    let db = TestDatabase::create().await;
    let mut env = tls().service_env("MTLS", "ssl", &topic, &unique("group"), &db);

    // No client certificate: the broker ends the handshake.
    let app = TestApp::spawn(env.clone());
    let line = app
        .wait_for_log("Kafka broker unreachable", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no line about the broker: {:#?}", app.lines()));
    assert!(
        line.contains("KAFKA_SSL_CERTIFICATE_LOCATION"),
        "the line does not say a client certificate is wanted: {line}"
    );
    assert_eq!(
        app.lines_containing("Kafka broker unreachable").len(),
        1,
        "said more than once: {:#?}",
        app.lines()
    );
    app.assert_unready("KAFKA_SSL_CERTIFICATE_LOCATION").await;
    drop(app);

    // With the certificate and its key.
    env.extend(tls().client_certificate());
    let app = TestApp::spawn_consuming(env);
    let mut client = tls_client(address, &certs.path("ca.pem"));
    client
        .set(
            "ssl.certificate.location",
            certs.path("client.pem").to_string_lossy(),
        )
        .set(
            "ssl.key.location",
            certs.path("client.key").to_string_lossy(),
        );
    produce(
        &producer_on(client.clone()),
        &topic,
        1,
        &[
            guide_message("mtls-pod-1", 12.5, 256.0, now_ms()),
            b"{\"cpu\": \"not a metric\"}".to_vec(),
        ],
    )
    .await;
    assert_eq!(
        wait_for_count(
            &db,
            "SELECT count(*) FROM system_metrics WHERE pod_name = 'mtls-pod-1'",
            1
        )
        .await,
        1,
        "{:#?}",
        app.lines()
    );
    let letters = consume_all_on(client, &dlq, 1).await;
    assert_eq!(letters.len(), 1, "one dead letter over mutual TLS");
    let key = String::from_utf8(certs.read("client.key")).unwrap();
    let secret_line = key
        .lines()
        .find(|l| !l.starts_with("-----"))
        .expect("the key's base64");
    let output = app.lines().join("\n");
    assert!(!output.contains(secret_line), "the key leaked: {output}");
    assert_eq!(
        db.count("SELECT count(*) FROM system_metrics").await,
        1,
        "stored more than once"
    );
}
