//! Apache Kafka with ACLs (`authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer`,
//! one broker for the tests of this file): the tests' own admin work (topics, producing,
//! reading dead letters, the ACLs themselves, made with Kafka's `kafka-acls`) goes over the
//! PLAINTEXT listener, whose `User:ANONYMOUS` is the super user; the service logs in over
//! `SASL_SSL` with SCRAM as a user of each test's own, allowed exactly what README lists, or
//! over mutual TLS as its client certificate's subject, `User:CN=panopticon`.
//!
//! - With least privilege (Read and Describe on the topic and the group, Write and Describe on
//!   the dead-letter topic) every metric is stored once, across a restart, and invalid ones
//!   are dead-lettered.
//! - Without Create and without a dead-letter topic, the partition holding an invalid message
//!   waits, `/ready` is 503 and says why, until the topic is made; then nothing is lost.
//!   Create on the dead-letter topic alone lets the service make it. Without Write on it, the
//!   partition waits until Write is granted.
//! - Without Read on the topic (or anything on it, or on the group), one ERROR line names the
//!   ACL missing and `/ready` is 503, until it is granted.

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use common::tls::SharedTls;
use common::*;
use rdkafka::config::ClientConfig;

const PASSWORD: &str = "acl-Pa55word";

/// The broker of this file.
fn acls() -> &'static SharedTls {
    common::tls::shared(
        &[("SASL_SSL", "SASL_SSL"), ("MTLS", "SSL")],
        &[
            ("listener.name.mtls.ssl.client.auth", "required"),
            (
                "authorizer.class.name",
                "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            ),
            // The PLAINTEXT and controller listeners: the tests, the broker itself.
            ("super.users", "User:ANONYMOUS"),
        ],
    )
}

/// A SCRAM user of the test's own: `User:<name>` to the ACLs.
fn new_user() -> String {
    let user = unique("acl");
    acls()
        .broker
        .cluster
        .add_scram_user("SCRAM-SHA-512", &user, PASSWORD)
        .expect("make the SCRAM user");
    user
}

fn allow(user: &str, operations: &[&str], resource: &[&str]) {
    acls()
        .broker
        .cluster
        .allow(&format!("User:{user}"), operations, resource)
        .unwrap_or_else(|e| panic!("kafka-acls: {e:#}"));
}

/// The ACLs README lists for the service: Read and Describe on the topic and the group, Write
/// and Describe on the dead-letter topic.
fn allow_least_privilege(user: &str, topic: &str, group: &str) {
    allow(user, &["Read", "Describe"], &["--topic", topic]);
    allow(user, &["Read", "Describe"], &["--group", group]);
    allow(
        user,
        &["Write", "Describe"],
        &["--topic", &format!("{topic}.dlq")],
    );
}

/// The service consuming `topic` as `group`, logged in as `user` over SASL_SSL.
fn service_env_as(
    user: &str,
    topic: &str,
    group: &str,
    db: &TestDatabase,
) -> HashMap<String, String> {
    let mut env = acls().service_env("SASL_SSL", "sasl_ssl", topic, group, db);
    env.insert("KAFKA_SASL_MECHANISM".into(), "SCRAM-SHA-512".into());
    env.insert("KAFKA_SASL_USERNAME".into(), user.into());
    env.insert("KAFKA_SASL_PASSWORD".into(), PASSWORD.into());
    env
}

/// The tests' own client, on the PLAINTEXT listener (the super user).
fn admin() -> ClientConfig {
    client_of(&acls().broker.cluster.bootstrap())
}

fn error_lines(app: &TestApp) -> Vec<String> {
    app.lines_containing(" ERROR ")
}

/// The service consuming a topic of its own (one partition), its group and a fresh database,
/// logged in as a user of its own allowed what `grant(user, topic, dead-letter topic, group)`
/// allows; the dead-letter topic is made first only `with_dlq`.
struct Consuming {
    user: String,
    topic: String,
    dlq: String,
    app: TestApp,
    db: TestDatabase,
}

async fn consuming_as_new_user(
    with_dlq: bool,
    grant: impl FnOnce(&str, &str, &str, &str),
) -> Consuming {
    let user = new_user();
    let topic = unique("metrics");
    let dlq = format!("{topic}.dlq");
    let group = unique("group");
    let topics = [(topic.as_str(), 1), (dlq.as_str(), 1)];
    acls()
        .broker
        .create_topics(&topics[..if with_dlq { 2 } else { 1 }])
        .await;
    grant(&user, &topic, &dlq, &group);
    let db = TestDatabase::create().await;
    let app = TestApp::spawn_consuming(service_env_as(&user, &topic, &group, &db));
    Consuming {
        user,
        topic,
        dlq,
        app,
        db,
    }
}

/// Produces an invalid message and, behind it, a valid one from `pod` to partition 0 of
/// `topic`, and waits until the service holds that partition (its dead letter cannot go out):
/// `/status` then.
async fn hold_partition_zero(app: &TestApp, topic: &str, pod: &str) -> serde_json::Value {
    produce(
        &producer_on(admin()),
        topic,
        0,
        &[b"not json".to_vec(), guide_message(pod, 1.0, 2.0, now_ms())],
    )
    .await;
    app.wait_for_status("the partition held", |s| {
        s["validator"]["held_partitions"]
            .as_array()
            .is_some_and(|held| !held.is_empty())
    })
    .await
}

#[tokio::test]
async fn with_least_privilege_every_metric_is_stored_once_and_invalid_ones_are_dead_lettered() {
    let user = new_user();
    let topic = unique("metrics");
    let dlq = format!("{topic}.dlq");
    let group = unique("group");
    acls()
        .broker
        .create_topics(&[(topic.as_str(), PARTITIONS), (dlq.as_str(), 1)])
        .await;
    allow_least_privilege(&user, &topic, &group);
    let db = TestDatabase::create().await;
    let env = service_env_as(&user, &topic, &group, &db);

    let app = TestApp::spawn_consuming(env.clone());
    let now = now_ms();
    let mut records: Vec<(i32, Vec<u8>)> = (0..9)
        .map(|i| {
            let pod = format!("acl-pod-{i}");
            (
                i % PARTITIONS,
                guide_message(&pod, 1.0, 2.0, now + i64::from(i)),
            )
        })
        .collect();
    records.push((0, b"not json".to_vec()));
    records.push((2, b"{\"podName\": 7}".to_vec()));
    produce_all(
        &producer_on(admin()),
        &topic,
        &records,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        wait_for_count(&db, "SELECT count(*) FROM system_metrics", 9).await,
        9,
        "{:#?}",
        app.lines()
    );
    let letters = consume_all_on(admin(), &dlq, 2).await;
    assert_eq!(letters.len(), 2, "the two invalid messages dead-lettered");
    let status = app
        .wait_for_status("offsets committed", |s| {
            s["validator"]["dead_lettered"] == 2
                && s["consumer"]["partitions"]["0"]["committed_offset"] == 4
        })
        .await;
    assert_eq!(status["ready"], true, "{status:#}");
    drop(app);

    // Restarted, it resumes where it stopped: the stored metrics are not stored again.
    let app = TestApp::spawn_consuming(env);
    produce_all(
        &producer_on(admin()),
        &topic,
        &[(1, guide_message("acl-pod-after", 1.0, 2.0, now_ms()))],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        wait_for_count(&db, "SELECT count(*) FROM system_metrics", 10).await,
        10
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        db.count("SELECT count(DISTINCT pod_name) FROM system_metrics")
            .await,
        10,
        "a metric stored twice"
    );
    assert_eq!(
        consume_all_on(admin(), &dlq, 3).await.len(),
        2,
        "dead-lettered again"
    );
    assert!(
        error_lines(&app).is_empty(),
        "least privilege is not enough: {:#?}",
        error_lines(&app)
    );
    let ready = reqwest::get(app.url("/ready")).await.unwrap();
    assert_eq!(ready.status(), 200);
}

/// A broker that refuses to create topics (no Create ACL) and no dead-letter topic: one ERROR
/// line naming the topic and the fix, `/ready` 503 with the reason, and `/status` showing the
/// partition an invalid message holds and why; once the topic is made, the dead letter is
/// acknowledged, the partition goes on, and the metric behind it is stored once.
#[tokio::test]
async fn without_create_and_without_a_dead_letter_topic_the_partition_waits_until_it_is_made() {
    let Consuming {
        topic,
        dlq,
        app,
        db,
        ..
    } = consuming_as_new_user(false, |user, topic, _, group| {
        allow_least_privilege(user, topic, group)
    })
    .await;

    let line = app
        .wait_for_log(
            &format!("dead-letter topic {dlq} is missing and cannot be created"),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("no line about the dead-letter topic: {:#?}", app.lines()));
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains("Topic authorization failed"),
        "the line does not say the broker refused: {line}"
    );
    assert!(
        line.contains("--create --topic"),
        "the line names no fix: {line}"
    );
    assert_eq!(
        app.lines_containing("cannot be created").len(),
        1,
        "said more than once"
    );
    app.assert_unready(&dlq).await;

    let status = hold_partition_zero(&app, &topic, "behind-the-held-one").await;
    let held = &status["validator"]["held_partitions"][0];
    assert_eq!(held["partition"], 0);
    assert_eq!(held["offset"], 0);
    assert!(
        held["reason"].as_str().unwrap_or_default().contains(&dlq),
        "{held}"
    );
    assert!(
        status["validator"]["dead_letter_topic_error"]
            .as_str()
            .is_some_and(|e| e.contains(&dlq)),
        "{status:#}"
    );
    assert_eq!(status["ready"], false);
    assert_eq!(
        status["consumer"]["partitions"]["0"]["committed_offset"],
        serde_json::Value::Null,
        "an offset past the held message was committed: {status:#}"
    );

    // An operator makes the topic; the held dead letter goes through.
    acls().broker.create_topics(&[(dlq.as_str(), 1)]).await;
    let status = app
        .wait_for_status("the dead letter acknowledged", |s| {
            s["validator"]["dead_lettered"] == 1
                && s["validator"]["held_partitions"] == serde_json::json!([])
                && s["consumer"]["partitions"]["0"]["committed_offset"] == 2
        })
        .await;
    assert!(
        status["validator"]["dead_letter_topic_error"].is_null(),
        "{status:#}"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM system_metrics WHERE pod_name = 'behind-the-held-one'")
            .await,
        1
    );
    let letters = consume_all_on(admin(), &dlq, 1).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(
        header(&letters[0], "panopticon-reason").as_deref(),
        Some("invalid_json")
    );
    let ready = reqwest::get(app.url("/ready")).await.unwrap();
    assert_eq!(ready.status(), 200);
}

/// Expects one ERROR line saying Kafka refused `user` access to `resource` with the
/// `kafka-acls` option that grants it, and `/ready` 503 saying the same; answers the line.
async fn refused(app: &TestApp, user: &str, resource: &str, option: &str) -> String {
    let needle = format!("Kafka refused User:{user} access to {resource}");
    let line = app
        .wait_for_log(&needle, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no line saying {needle}: {:#?}", app.lines()));
    assert!(line.contains(" ERROR "), "{line}");
    assert!(
        line.contains(&format!(
            "--allow-principal User:{user} --operation Read --operation Describe {option}"
        )),
        "the line names no ACL: {line}"
    );
    app.assert_unready(&needle).await;
    // librdkafka reports the refusal more than once; it is said once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        error_lines(app),
        vec![line.clone()],
        "not one clear line: {:#?}",
        app.lines()
    );
    line
}

#[tokio::test]
async fn without_read_on_the_topic_one_line_names_the_acl_and_ready_is_503_until_it_is_granted() {
    let topic = unique("metrics");
    let dlq = format!("{topic}.dlq");
    acls()
        .broker
        .create_topics(&[(topic.as_str(), 1), (dlq.as_str(), 1)])
        .await;
    produce(
        &producer_on(admin()),
        &topic,
        0,
        &[guide_message("read-granted-later", 1.0, 2.0, now_ms())],
    )
    .await;
    let db = TestDatabase::create().await;

    // Describe but no Read on the topic: the consumer joins and is assigned the partition,
    // and every fetch is refused.
    let user = new_user();
    let group = unique("group");
    allow(&user, &["Describe"], &["--topic", &topic]);
    allow(&user, &["Read", "Describe"], &["--group", &group]);
    allow(&user, &["Write", "Describe"], &["--topic", &dlq]);
    let app = TestApp::spawn(service_env_as(&user, &topic, &group, &db));
    refused(
        &app,
        &user,
        &format!("topic {topic}"),
        &format!("--topic {topic}"),
    )
    .await;
    assert_eq!(db.count("SELECT count(*) FROM system_metrics").await, 0);

    // Granted, the metric waiting is read, and the service is ready.
    allow(&user, &["Read"], &["--topic", &topic]);
    assert_eq!(
        wait_for_count(&db, "SELECT count(*) FROM system_metrics", 1).await,
        1,
        "{:#?}",
        app.lines()
    );
    assert!(
        app.wait_for_log(
            &format!("Kafka grants User:{user} access"),
            Duration::from_secs(5)
        )
        .is_some()
    );
    let status = app.wait_for_status("ready", |s| s["ready"] == true).await;
    assert!(status["consumer"]["access_error"].is_null(), "{status:#}");
    drop(app);

    // Nothing at all on the topic: the same line.
    let user = new_user();
    let group = unique("group");
    allow(&user, &["Read", "Describe"], &["--group", &group]);
    allow(&user, &["Write", "Describe"], &["--topic", &dlq]);
    let app = TestApp::spawn(service_env_as(&user, &topic, &group, &db));
    refused(
        &app,
        &user,
        &format!("topic {topic}"),
        &format!("--topic {topic}"),
    )
    .await;
    // The broker hides the topic from a principal without Describe: no line says it is missing.
    assert!(
        app.lines_containing("does not exist yet").is_empty(),
        "{:#?}",
        app.lines()
    );
    drop(app);

    // Nothing on the group: the line names the group.
    let user = new_user();
    let group = unique("group");
    allow(&user, &["Read", "Describe"], &["--topic", &topic]);
    allow(&user, &["Write", "Describe"], &["--topic", &dlq]);
    let app = TestApp::spawn(service_env_as(&user, &topic, &group, &db));
    refused(
        &app,
        &user,
        &format!("consumer group {group}"),
        &format!("--group {group}"),
    )
    .await;
}

/// Create on the dead-letter topic alone, not on the cluster, is enough for the service to
/// make it at start-up.
#[tokio::test]
async fn create_on_the_dead_letter_topic_alone_lets_the_service_make_it() {
    let Consuming {
        topic, dlq, app, ..
    } = consuming_as_new_user(false, |user, topic, dlq, group| {
        allow_least_privilege(user, topic, group);
        allow(user, &["Create"], &["--topic", dlq]);
    })
    .await;
    assert!(
        app.wait_for_log(
            &format!("created dead-letter topic topic={dlq} partitions=1"),
            Duration::from_secs(10)
        )
        .is_some(),
        "{:#?}",
        app.lines()
    );
    produce(&producer_on(admin()), &topic, 0, &[b"not json".to_vec()]).await;
    assert_eq!(consume_all_on(admin(), &dlq, 1).await.len(), 1);
    assert!(error_lines(&app).is_empty(), "{:#?}", error_lines(&app));
}

/// Over mutual TLS the principal is the client certificate's subject: allowed, it stores
/// metrics; refused, the line names it as the ACLs do.
#[tokio::test]
async fn over_mutual_tls_the_certificate_subject_is_the_principal_the_acls_name() {
    let shared @ SharedTls { broker, .. } = acls();
    let principal = "CN=panopticon";
    let db = TestDatabase::create().await;
    let env = |topic: &str, group: &str| {
        let mut env = shared.service_env("MTLS", "ssl", topic, group, &db);
        env.extend(shared.client_certificate());
        env
    };

    let topic = unique("metrics");
    let group = unique("group");
    broker
        .create_topics(&[(topic.as_str(), 1), (format!("{topic}.dlq").as_str(), 1)])
        .await;
    allow_least_privilege(principal, &topic, &group);
    let app = TestApp::spawn_consuming(env(&topic, &group));
    produce(
        &producer_on(admin()),
        &topic,
        0,
        &[guide_message("mtls-acl-pod", 1.0, 2.0, now_ms())],
    )
    .await;
    assert_eq!(
        wait_for_count(&db, "SELECT count(*) FROM system_metrics", 1).await,
        1,
        "{:#?}",
        app.lines()
    );
    drop(app);

    // A topic this principal may not read.
    let other = unique("metrics");
    let group = unique("group");
    broker
        .create_topics(&[(other.as_str(), 1), (format!("{other}.dlq").as_str(), 1)])
        .await;
    allow(principal, &["Read", "Describe"], &["--group", &group]);
    allow(
        principal,
        &["Write", "Describe"],
        &["--topic", &format!("{other}.dlq")],
    );
    let app = TestApp::spawn(env(&other, &group));
    refused(
        &app,
        principal,
        &format!("topic {other}"),
        &format!("--topic {other}"),
    )
    .await;
}

/// Without Write on the dead-letter topic (nor on any topic) the idempotent dead-letter
/// producer is refused its producer id, which librdkafka makes final: the partition waits, and
/// once Write is granted a new producer sends the dead letter, without a restart.
#[tokio::test]
async fn without_write_on_the_dead_letter_topic_the_partition_waits_until_it_is_granted() {
    let Consuming {
        user,
        topic,
        dlq,
        app,
        db,
    } = consuming_as_new_user(true, |user, topic, dlq, group| {
        allow(user, &["Read", "Describe"], &["--topic", topic]);
        allow(user, &["Read", "Describe"], &["--group", group]);
        allow(user, &["Describe"], &["--topic", dlq]);
    })
    .await;
    let status = hold_partition_zero(&app, &topic, "behind-the-unwritable-one").await;
    assert_eq!(status["validator"]["held_partitions"][0]["offset"], 0);
    assert!(
        app.wait_for_log(
            "dead-letter producer failed for good",
            Duration::from_secs(15)
        )
        .is_some(),
        "{:#?}",
        app.lines()
    );

    allow(&user, &["Write"], &["--topic", &dlq]);
    app.wait_for_status("the dead letter acknowledged", |s| {
        s["validator"]["dead_lettered"] == 1
            && s["validator"]["held_partitions"] == serde_json::json!([])
    })
    .await;
    assert_eq!(consume_all_on(admin(), &dlq, 1).await.len(), 1);
    assert_eq!(
        wait_for_count(
            &db,
            "SELECT count(*) FROM system_metrics WHERE pod_name = 'behind-the-unwritable-one'",
            1
        )
        .await,
        1
    );
}
