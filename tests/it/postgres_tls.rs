//! TLS to PostgreSQL: a server of the test's own with `ssl = on`, a certificate signed by a CA
//! the test makes, and `pg_hba.conf` accepting only TLS (`hostssl`), the service's user only
//! with a client certificate. Every connection of the service (migrations, the writer, the
//! stored-offsets lookup, the REST API's pool) must get through; a certificate that does not
//! verify, and a plaintext connection, must be refused with a reason that says so.

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use common::pg::OwnPostgres;
use common::tls::Certs;
use common::*;

/// A server that speaks only TLS; `panopticon` must show a client certificate, `postgres`
/// (the test's own psql) need not.
fn tls_only_server(certs: &Certs) -> OwnPostgres {
    let mut pg = OwnPostgres::start();
    pg.psql(
        "postgres",
        "CREATE ROLE panopticon LOGIN; ALTER DATABASE panopticon OWNER TO panopticon",
    );
    pg.install_file("server.pem", &certs.read("server.pem"));
    pg.install_file("server.key", &certs.read("server.key"));
    pg.install_file("ca.pem", &certs.read("ca.pem"));
    pg.configure(
        "ssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server.key'\nssl_ca_file = 'ca.pem'",
    );
    pg.set_hba(
        "local all all trust\n\
         hostssl all postgres 127.0.0.1/32 trust\n\
         hostssl all panopticon 127.0.0.1/32 trust clientcert=verify-full\n",
    );
    pg.restart();
    pg
}

fn database_url(pg: &OwnPostgres, host: &str, query: &str) -> String {
    format!(
        "postgres://panopticon:s3cret-db@{host}:{}/panopticon?{query}",
        pg.port()
    )
}

/// The service's settings for `topic` and the database at `url`, in a group of its own.
fn env_for(url: &str, topic: &str) -> HashMap<String, String> {
    service_env(topic, &unique("group"), &TestDatabase::on(url))
}

/// Starts the service against `url` and returns its database line and `/ready`'s reason.
async fn refused(url: &str, topic: &str) -> (String, String) {
    let app = TestApp::spawn(env_for(url, topic));
    let line = app
        .wait_for_log("database unreachable", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no database line: {:#?}", app.lines()));
    let ready = reqwest::get(app.url("/ready")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    let reason = body["reason"].as_str().unwrap_or_default().to_owned();
    let output = app.lines().join("\n");
    assert!(
        !output.contains("s3cret-db"),
        "the password leaked: {output}"
    );
    assert!(
        !reason.contains("s3cret-db"),
        "the password leaked: {reason}"
    );
    (line, reason)
}

#[tokio::test]
async fn verify_full_with_a_client_certificate_stores_rows_and_bad_certificates_are_refused() {
    let certs = Certs::make();
    let pg = tls_only_server(&certs);
    let topic = unique("metrics");
    create_topic(&topic).await;
    let ca = certs.path("ca.pem");
    let client = format!(
        "sslcert={}&sslkey={}",
        certs.path("client.pem").display(),
        certs.path("client.key").display()
    );

    // verify-full, the right CA, the host name of the certificate, a client certificate.
    let good = database_url(
        &pg,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}&{client}", ca.display()),
    );
    let app = TestApp::spawn_consuming(env_for(&good, &topic));
    produce(
        &producer(),
        &topic,
        1,
        &[guide_message("tls-pod-1", 78.5, 512.3, now_ms())],
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while pg
        .psql("panopticon", "SELECT count(*) FROM system_metrics")
        .trim()
        != "1"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the row was not stored over TLS: {:#?}",
            app.lines()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The REST API's pool connects the same way.
    let api = reqwest::get(app.url("/api/v1/metrics?pod=tls-pod-1"))
        .await
        .unwrap();
    assert_eq!(api.status(), 200);
    let body: serde_json::Value = api.json().await.unwrap();
    assert_eq!(body["data"][0]["pod_name"], "tls-pod-1", "{body}");
    // So does the stored-offsets lookup at assignment, and every connection is encrypted
    // and shows the client certificate.
    assert!(
        app.lines_containing("unreadable").is_empty(),
        "{:#?}",
        app.lines()
    );
    let plain = pg.psql(
        "panopticon",
        "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.usename = 'panopticon' AND (NOT s.ssl OR s.client_dn IS DISTINCT FROM '/CN=panopticon')",
    );
    assert_eq!(plain.trim(), "0", "a connection without TLS or certificate");
    drop(app);

    // verify-ca checks the CA only: the address, not in the certificate, is accepted.
    let by_address = database_url(
        &pg,
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={}&{client}", ca.display()),
    );
    let app = TestApp::spawn(env_for(&by_address, &topic));
    assert!(
        app.wait_for_log("database connected", Duration::from_secs(30))
            .is_some(),
        "{:#?}",
        app.lines()
    );
    drop(app);

    // Another CA.
    let other = database_url(
        &pg,
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={}&{client}",
            certs.path("other-ca.pem").display()
        ),
    );
    let (line, reason) = refused(&other, &topic).await;
    for text in [&line, &reason] {
        assert!(
            text.contains("certificate does not verify (sslmode=verify-full)")
                && (text.contains("unable to get local issuer certificate")
                    || text.contains("self-signed certificate in certificate chain")),
            "{text}"
        );
    }

    // The right CA, but a host the certificate does not name (it names localhost only).
    let mismatch = database_url(
        &pg,
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}&{client}", ca.display()),
    );
    let (line, reason) = refused(&mismatch, &topic).await;
    for text in [&line, &reason] {
        assert!(
            text.contains("certificate does not verify") && text.contains("IP address mismatch"),
            "{text}"
        );
    }

    // No TLS at all, against a server that accepts only TLS.
    let plaintext = database_url(&pg, "localhost", "sslmode=disable");
    let (line, reason) = refused(&plaintext, &topic).await;
    for text in [&line, &reason] {
        assert!(
            text.contains("requires TLS but DATABASE_URL says sslmode=disable"),
            "{text}"
        );
    }
}
