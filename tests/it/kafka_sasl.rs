//! SASL against Apache Kafka's own `SASL_SSL` and `SASL_PLAINTEXT` listeners (one broker for
//! the tests of this file), the SCRAM credentials made with Kafka's own tool
//! (`org.apache.kafka.tools.ConfigCommand --add-config 'SCRAM-SHA-512=[password=…]'`). Metrics
//! are stored with SCRAM-SHA-512 and SCRAM-SHA-256, over `sasl_ssl` and `sasl_plaintext`, the
//! password read from `KAFKA_SASL_PASSWORD_FILE` or `KAFKA_SASL_PASSWORD`; a wrong password
//! gives one clear line and `/ready` 503, and the password shows nowhere.

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use common::tls::{SharedTls, tls_client};
use common::*;

/// The broker of this file: `SASL_SSL` and `SASL_PLAINTEXT`, both with SCRAM-SHA-256 and -512.
fn sasl() -> &'static SharedTls {
    common::tls::shared(
        &[
            ("SASL_SSL", "SASL_SSL"),
            ("SASL_PLAINTEXT", "SASL_PLAINTEXT"),
        ],
        &[],
    )
}

/// A user of the test's own with a `mechanism` credential, made by Kafka's ConfigCommand.
fn scram_user(mechanism: &str, password: &str) -> String {
    let user = unique("panopticon");
    sasl()
        .broker
        .cluster
        .add_scram_user(mechanism, &user, password)
        .expect("make the SCRAM user");
    user
}

/// The service's settings for `listener` (`SASL_SSL` or `SASL_PLAINTEXT`) as `user`, without
/// a password.
fn service_env_for(
    listener: &str,
    mechanism: &str,
    user: &str,
    topic: &str,
    db: &TestDatabase,
) -> HashMap<String, String> {
    let mut env = sasl().service_env(
        listener,
        &listener.to_ascii_lowercase(),
        topic,
        &unique("group"),
        db,
    );
    env.insert("KAFKA_SASL_MECHANISM".into(), mechanism.into());
    env.insert("KAFKA_SASL_USERNAME".into(), user.into());
    env
}

/// A test producer on the PLAINTEXT listener.
fn admin_producer() -> rdkafka::producer::FutureProducer {
    producer_on(client_of(&sasl().broker.cluster.bootstrap()))
}

/// Starts the service with a wrong password and checks what it says: one line naming the user
/// and mechanism, `/ready` 503, and neither password anywhere in the log or `/status`.
async fn refused_with_a_wrong_password(mut env: HashMap<String, String>, right: &str) {
    let wrong = "not-the-Pa55word";
    env.insert("KAFKA_SASL_PASSWORD".into(), wrong.into());
    let user = env["KAFKA_SASL_USERNAME"].clone();
    let mechanism = env["KAFKA_SASL_MECHANISM"].clone();
    let app = TestApp::spawn(env);
    let line = app
        .wait_for_log("Kafka broker unreachable", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no line about the broker: {:#?}", app.lines()));
    assert!(
        line.contains("SASL authentication") && line.contains(&format!(
            "the broker refused KAFKA_SASL_USERNAME={user} with KAFKA_SASL_MECHANISM={mechanism}"
        )),
        "{line}"
    );
    app.assert_unready("SASL authentication").await;
    let status = reqwest::get(app.url("/status"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        app.lines_containing("Kafka broker unreachable").len(),
        1,
        "said more than once: {:#?}",
        app.lines()
    );
    let output = app.lines().join("\n");
    for password in [wrong, right] {
        assert!(
            !output.contains(password),
            "the password leaked to the log: {output}"
        );
        assert!(
            !status.contains(password),
            "the password leaked to /status: {status}"
        );
    }
}

#[tokio::test]
async fn metrics_are_stored_over_sasl_ssl_with_scram_sha_512_and_a_wrong_password_is_refused() {
    let password = "scram-512-Pa55word";
    let user = scram_user("SCRAM-SHA-512", password);
    let topic = unique("metrics");
    sasl().broker.create_topics(&[(topic.as_str(), 1)]).await;
    let db = TestDatabase::create().await;
    let mut env = service_env_for("SASL_SSL", "SCRAM-SHA-512", &user, &topic, &db);

    refused_with_a_wrong_password(env.clone(), password).await;

    // The right one, from a file as Kubernetes mounts it.
    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("kafka-sasl-password");
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    env.insert(
        "KAFKA_SASL_PASSWORD_FILE".into(),
        password_file.display().to_string(),
    );
    let app = TestApp::spawn_consuming(env);
    // The test's producer authenticates over SASL_SSL too.
    let SharedTls { certs, broker } = sasl();
    let mut client = tls_client(broker.address_of("SASL_SSL"), &certs.path("ca.pem"));
    client
        .set("security.protocol", "sasl_ssl")
        .set("sasl.mechanisms", "SCRAM-SHA-512")
        .set("sasl.username", &user)
        .set("sasl.password", password);
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
    // Its dead-letter topic was made over the same SASL_SSL connection.
    assert!(
        app.wait_for_log(
            &format!("created dead-letter topic topic={topic}.dlq"),
            Duration::from_secs(5)
        )
        .is_some(),
        "{:#?}",
        app.lines()
    );
    let output = app.lines().join("\n");
    assert!(!output.contains(password), "the password leaked: {output}");
}

#[tokio::test]
async fn metrics_are_stored_with_scram_sha_256_over_sasl_ssl_and_sasl_plaintext() {
    let password = "scram-256-Pa55word";
    let user = scram_user("SCRAM-SHA-256", password);
    for listener in ["SASL_SSL", "SASL_PLAINTEXT"] {
        let topic = unique("metrics");
        sasl().broker.create_topics(&[(topic.as_str(), 1)]).await;
        let db = TestDatabase::create().await;
        let mut env = service_env_for(listener, "SCRAM-SHA-256", &user, &topic, &db);
        if listener == "SASL_PLAINTEXT" {
            refused_with_a_wrong_password(env.clone(), password).await;
        }
        env.insert("KAFKA_SASL_PASSWORD".into(), password.into());
        let app = TestApp::spawn_consuming(env);
        let pod = format!("scram-256-{}", listener.to_ascii_lowercase());
        produce(
            &admin_producer(),
            &topic,
            0,
            &[
                guide_message(&pod, 10.0, 100.0, now_ms()),
                b"not json".to_vec(),
            ],
        )
        .await;
        assert_eq!(
            wait_for_count(&db, "SELECT count(*) FROM system_metrics", 1).await,
            1,
            "{listener}: {:#?}",
            app.lines()
        );
        assert_eq!(
            db.count(&format!(
                "SELECT count(*) FROM system_metrics WHERE pod_name = '{pod}'"
            ))
            .await,
            1
        );
        app.wait_for_status("the dead letter acknowledged", |s| {
            s["validator"]["dead_lettered"] == 1
        })
        .await;
        let output = app.lines().join("\n");
        assert!(!output.contains(password), "the password leaked: {output}");
    }
}

/// A user with only a SCRAM-SHA-512 credential cannot log in with SCRAM-SHA-256: the line
/// names the mechanism to check.
#[tokio::test]
async fn a_mechanism_the_user_has_no_credential_for_is_refused() {
    let password = "only-512-Pa55word";
    let user = scram_user("SCRAM-SHA-512", password);
    let topic = unique("metrics");
    let db = TestDatabase::create().await;
    let mut env = service_env_for("SASL_SSL", "SCRAM-SHA-256", &user, &topic, &db);
    env.insert("KAFKA_SASL_PASSWORD".into(), password.into());
    let app = TestApp::spawn(env);
    let line = app
        .wait_for_log("Kafka broker unreachable", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no line about the broker: {:#?}", app.lines()));
    assert!(
        line.contains("KAFKA_SASL_MECHANISM=SCRAM-SHA-256"),
        "{line}"
    );
    let ready = reqwest::get(app.url("/ready")).await.unwrap();
    assert_eq!(ready.status(), 503);
}
