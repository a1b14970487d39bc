//! Secrets and security settings at start-up: settings that cannot work are configuration
//! errors (one line, exit code 2); secrets may come from files (`*_FILE`), not both ways; and
//! no secret shows in a log line, `/status`, `/metrics`, `/ready`, an error or `--help`.

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use common::tls::Certs;
use common::*;

const DB_PASSWORD: &str = "s3cret-db-Pa55";
const SASL_PASSWORD: &str = "s3cret-sasl-Pa55";
const TOKEN: &str = "s3cret-http-T0ken";

/// Settings, arguments, and what the one line must say.
type Case<'a> = (Vec<(&'a str, String)>, &'a [&'a str], &'a str);

fn base_env() -> HashMap<String, String> {
    HashMap::from([
        ("HTTP_PORT".into(), "0".into()),
        ("HTTP_HOST".into(), "127.0.0.1".into()),
        ("RUST_LOG".into(), "info".into()),
    ])
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [DB_PASSWORD, SASL_PASSWORD, TOKEN] {
        assert!(!text.contains(secret), "{what} shows a secret: {text}");
    }
}

#[test]
fn impossible_settings_are_one_line_and_exit_code_2() {
    let certs = Certs::make();
    let secrets = tempfile::tempdir().unwrap();
    let file = |name: &str, content: &str| {
        let path = secrets.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    };
    let password_file = file("password", &format!("{SASL_PASSWORD}\n"));
    let url_file = file(
        "database-url",
        &format!("postgres://admin:{DB_PASSWORD}@localhost/db\n"),
    );
    let token_file = file("token", &format!("{TOKEN}\n"));
    let empty_file = file("empty", "\n");
    let path = |name: &str| certs.path(name).display().to_string();
    let sasl = [
        ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl".to_owned()),
        ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512".to_owned()),
        ("KAFKA_SASL_USERNAME", "panopticon".to_owned()),
    ];
    let cases: Vec<Case> = vec![
        (
            sasl.to_vec(),
            &[],
            "KAFKA_SASL_MECHANISM=SCRAM-SHA-512 needs KAFKA_SASL_PASSWORD",
        ),
        (
            vec![
                ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl".into()),
                ("KAFKA_SASL_USERNAME", "panopticon".into()),
                ("KAFKA_SASL_PASSWORD", SASL_PASSWORD.into()),
            ],
            &[],
            "KAFKA_SECURITY_PROTOCOL=sasl_ssl needs KAFKA_SASL_MECHANISM",
        ),
        (
            vec![
                ("KAFKA_SECURITY_PROTOCOL", "ssl".into()),
                ("KAFKA_SSL_CA_LOCATION", "/nonexistent/ca.pem".into()),
            ],
            &[],
            "cannot read KAFKA_SSL_CA_LOCATION=/nonexistent/ca.pem",
        ),
        (
            vec![
                ("KAFKA_SECURITY_PROTOCOL", "ssl".into()),
                ("KAFKA_SSL_CA_LOCATION", path("not-pem.pem")),
            ],
            &[],
            "holds no PEM certificate",
        ),
        (
            vec![
                ("KAFKA_SECURITY_PROTOCOL", "ssl".into()),
                ("KAFKA_SSL_CERTIFICATE_LOCATION", path("client.pem")),
            ],
            &[],
            "KAFKA_SSL_CERTIFICATE_LOCATION needs KAFKA_SSL_KEY_LOCATION",
        ),
        (
            vec![
                ("KAFKA_SECURITY_PROTOCOL", "ssl".into()),
                ("KAFKA_SSL_CERTIFICATE_LOCATION", path("client.pem")),
                ("KAFKA_SSL_KEY_LOCATION", path("server.key")),
            ],
            &[],
            "is not the key of KAFKA_SSL_CERTIFICATE_LOCATION",
        ),
        (
            vec![("KAFKA_SSL_CA_LOCATION", path("ca.pem"))],
            &[],
            "KAFKA_SSL_CA_LOCATION is set but KAFKA_SECURITY_PROTOCOL=plaintext uses no TLS",
        ),
        (
            [
                &sasl[..],
                &[
                    ("KAFKA_SASL_PASSWORD", SASL_PASSWORD.into()),
                    ("KAFKA_SASL_PASSWORD_FILE", password_file.clone()),
                ],
            ]
            .concat(),
            &[],
            "KAFKA_SASL_PASSWORD and KAFKA_SASL_PASSWORD_FILE are both set",
        ),
        (
            vec![
                (
                    "DATABASE_URL",
                    format!("postgres://admin:{DB_PASSWORD}@localhost/db"),
                ),
                ("DATABASE_URL_FILE", url_file.clone()),
            ],
            &[],
            "DATABASE_URL and DATABASE_URL_FILE are both set",
        ),
        (
            vec![
                ("HTTP_AUTH_TOKEN", TOKEN.into()),
                ("HTTP_AUTH_TOKEN_FILE", token_file.clone()),
            ],
            &[],
            "HTTP_AUTH_TOKEN and HTTP_AUTH_TOKEN_FILE are both set",
        ),
        (
            vec![("HTTP_AUTH_TOKEN_FILE", empty_file.clone())],
            &[],
            "is empty",
        ),
        (
            vec![("DATABASE_URL_FILE", "/nonexistent/database-url".into())],
            &[],
            "cannot read DATABASE_URL_FILE=/nonexistent/database-url",
        ),
        (
            vec![("METRICS_REQUIRE_AUTH", "true".into())],
            &[],
            "METRICS_REQUIRE_AUTH=true needs HTTP_AUTH_TOKEN",
        ),
        (
            vec![(
                "DATABASE_URL",
                format!(
                    "postgres://admin:{DB_PASSWORD}@localhost/db?sslmode=verify-full&sslrootcert=/nonexistent/root.crt"
                ),
            )],
            &[],
            "cannot read sslrootcert=/nonexistent/root.crt",
        ),
        (
            vec![(
                "DATABASE_URL",
                format!("postgres://admin:{DB_PASSWORD}@localhost/db?sslmode=verify"),
            )],
            &[],
            "sslmode `verify` is not one of",
        ),
        (
            vec![(
                "DATABASE_URL",
                format!(
                    "postgres://admin:{DB_PASSWORD}@localhost/db?sslmode=require&sslcert={}",
                    path("client.pem")
                ),
            )],
            &[],
            "sslcert needs sslkey",
        ),
        (
            vec![
                ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl".into()),
                ("KAFKA_SASL_USERNAME", "panopticon".into()),
            ],
            &["simulate", "--count", "1"],
            "needs KAFKA_SASL_MECHANISM",
        ),
    ];
    for (settings, args, expected) in cases {
        let mut env = base_env();
        for (key, value) in &settings {
            env.insert((*key).into(), value.clone());
        }
        let mut app = TestApp::spawn_args(env, args);
        let status = app.wait_exit(Duration::from_secs(20));
        let lines = app.lines();
        let output = lines.join("\n");
        assert_eq!(status.code(), Some(2), "{settings:?}: {output}");
        assert_eq!(lines.len(), 1, "{settings:?}: one line, not: {output}");
        assert!(
            output.contains("configuration error: ") && output.contains(expected),
            "{settings:?}: expected `{expected}` in: {output}"
        );
        assert_no_secret("a configuration error", &output);
    }
}

#[test]
fn help_shows_no_secret_from_the_environment() {
    let mut env = base_env();
    env.insert(
        "DATABASE_URL".into(),
        format!("postgres://admin:{DB_PASSWORD}@localhost/db"),
    );
    env.insert("KAFKA_SASL_PASSWORD".into(), SASL_PASSWORD.into());
    env.insert("HTTP_AUTH_TOKEN".into(), TOKEN.into());
    for args in [&["--help"][..], &["simulate", "--help"]] {
        let mut app = TestApp::spawn_args(env.clone(), args);
        assert_eq!(app.wait_exit(Duration::from_secs(20)).code(), Some(0));
        let help = app.lines().join("\n");
        for variable in [
            "KAFKA_SECURITY_PROTOCOL",
            "KAFKA_SASL_MECHANISM",
            "KAFKA_SASL_USERNAME",
            "KAFKA_SASL_PASSWORD",
            "KAFKA_SASL_PASSWORD_FILE",
            "KAFKA_SSL_CA_LOCATION",
            "KAFKA_SSL_CERTIFICATE_LOCATION",
            "KAFKA_SSL_KEY_LOCATION",
        ] {
            assert!(
                help.contains(&format!("env: {variable}")),
                "{variable}: {help}"
            );
        }
        if args.len() == 1 {
            for variable in [
                "DATABASE_URL",
                "DATABASE_URL_FILE",
                "HTTP_AUTH_TOKEN",
                "HTTP_AUTH_TOKEN_FILE",
                "METRICS_REQUIRE_AUTH",
            ] {
                assert!(
                    help.contains(&format!("env: {variable}")),
                    "{variable}: {help}"
                );
            }
        }
        assert_no_secret("--help", &help);
    }
}

#[tokio::test]
async fn no_secret_shows_in_logs_status_metrics_or_errors() {
    // Trust authentication: the server ignores the password, the service still holds it.
    let s = setup().await;
    let url = s.db.url.replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{DB_PASSWORD}@"),
        1,
    );
    assert!(url.contains(DB_PASSWORD), "{url}");
    let secrets = tempfile::tempdir().unwrap();
    let url_file = secrets.path().join("database-url");
    std::fs::write(&url_file, format!("{url}\n")).unwrap();
    let mut env = s.env();
    env.remove("DATABASE_URL");
    env.insert("DATABASE_URL_FILE".into(), url_file.display().to_string());
    env.insert("RUST_LOG".into(), "debug".into());
    env.insert("HTTP_AUTH_TOKEN".into(), TOKEN.into());
    // The test broker checks no credentials: librdkafka's SASL exchange with it fails, and
    // is logged.
    env.insert("KAFKA_SECURITY_PROTOCOL".into(), "sasl_plaintext".into());
    env.insert("KAFKA_SASL_MECHANISM".into(), "SCRAM-SHA-256".into());
    env.insert("KAFKA_SASL_USERNAME".into(), "panopticon".into());
    env.insert("KAFKA_SASL_PASSWORD".into(), SASL_PASSWORD.into());
    let app = TestApp::spawn(env);
    assert!(
        app.wait_for_log("database connected", Duration::from_secs(30))
            .is_some(),
        "the database URL came from its file: {:#?}",
        app.lines()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while app.lines_containing("Kafka broker unreachable").is_empty()
        && app.lines_containing("Kafka consumer connected").is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "{:#?}", app.lines());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = reqwest::Client::new();
    let mut bodies = Vec::new();
    for path in [
        "/status",
        "/metrics",
        "/ready",
        "/health",
        "/",
        "/api/v1/pods",
    ] {
        let response = client
            .get(app.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        bodies.push(format!("{path}: {}", response.text().await.unwrap()));
    }
    let unauthorized = client.get(app.url("/status")).send().await.unwrap();
    bodies.push(format!("401: {}", unauthorized.text().await.unwrap()));
    app.signal("TERM");
    let mut app = app;
    app.wait_exit(Duration::from_secs(40));
    for body in &bodies {
        assert_no_secret("an HTTP answer", body);
    }
    let output = app.lines().join("\n");
    assert!(output.contains("postgres:***@"), "{output}");
    assert_no_secret("the log", &output);
}
