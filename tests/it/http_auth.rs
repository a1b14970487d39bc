//! The HTTP surface behind `HTTP_AUTH_TOKEN`: every protected path answers 401 with
//! `WWW-Authenticate` without the token or with a wrong one, and 200 with it, as a Bearer
//! token and as the HTTP Basic password; the probes and `/metrics` answer without it, unless
//! `METRICS_REQUIRE_AUTH` closes `/metrics`.

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

const TOKEN: &str = "d4shboard-T0ken";

const PROTECTED: &[&str] = &[
    "/",
    "/assets/dashboard.js",
    "/assets/dashboard.css",
    "/assets/chart.umd.min.js",
    "/status",
    "/api/v1/metrics",
    "/api/v1/metrics/latest",
    "/api/v1/metrics/series?bucket=1m",
    "/api/v1/pods",
    "/api/v1/services",
    "/api/v1/namespaces",
    "/api/v1/nodes",
    "/api/v1/openapi.json",
];

/// The service with a database but no broker: the HTTP surface is all there is to see.
async fn service(extra: &[(&str, &str)]) -> (TestApp, TestDatabase) {
    let db = TestDatabase::create().await;
    let mut env: HashMap<String, String> = HashMap::from([
        ("HTTP_PORT".into(), "0".into()),
        ("HTTP_HOST".into(), "127.0.0.1".into()),
        ("RUST_LOG".into(), "info".into()),
        ("DATABASE_URL".into(), db.url.clone()),
        ("KAFKA_BROKERS".into(), format!("127.0.0.1:{}", free_port())),
    ]);
    for (key, value) in extra {
        env.insert((*key).into(), (*value).into());
    }
    let app = TestApp::spawn(env);
    // The REST API answers once the migrations have made its tables.
    assert!(
        app.wait_for_log("database connected", Duration::from_secs(30))
            .is_some(),
        "{:#?}",
        app.lines()
    );
    (app, db)
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

async fn get(app: &TestApp, path: &str, authorization: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(app.url(path));
    if let Some(value) = authorization {
        request = request.header("Authorization", value);
    }
    request
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

async fn assert_refused(app: &TestApp, path: &str, authorization: Option<&str>) {
    let response = get(app, path, authorization).await;
    assert_eq!(response.status(), 401, "GET {path} with {authorization:?}");
    let challenges: Vec<String> = response
        .headers()
        .get_all("WWW-Authenticate")
        .iter()
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        challenges
            .iter()
            .any(|c| c.starts_with("Basic realm=\"panopticon\""))
            && challenges.iter().any(|c| c.starts_with("Bearer")),
        "GET {path}: {challenges:?}"
    );
}

#[tokio::test]
async fn every_protected_path_needs_the_token_as_bearer_or_basic_and_the_probes_do_not() {
    let (app, _db) = service(&[("HTTP_AUTH_TOKEN", TOKEN)]).await;
    let bearer = format!("Bearer {TOKEN}");
    for path in PROTECTED {
        assert_refused(&app, path, None).await;
        assert_refused(&app, path, Some("Bearer wrong-token")).await;
        assert_refused(&app, path, Some(&basic("admin", "wrong-token"))).await;
        assert_refused(&app, path, Some(&basic(TOKEN, ""))).await;
        for authorization in [bearer.clone(), basic("anyone", TOKEN), basic("", TOKEN)] {
            let response = get(&app, path, Some(&authorization)).await;
            assert_eq!(response.status(), 200, "GET {path} with {authorization}");
        }
    }
    assert_eq!(get(&app, "/health", None).await.status(), 200);
    assert_eq!(get(&app, "/metrics", None).await.status(), 200);
    // Not ready (no broker), but it answers, and says why.
    let ready = get(&app, "/ready", None).await;
    assert_eq!(ready.status(), 503);
    assert!(
        app.lines_containing("HTTP authentication is off")
            .is_empty()
    );
}

#[tokio::test]
async fn metrics_require_auth_closes_metrics_and_the_token_may_come_from_a_file() {
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("http-auth-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let token_file = token_file.display().to_string();
    let (app, _db) = service(&[
        ("HTTP_AUTH_TOKEN_FILE", &token_file),
        ("METRICS_REQUIRE_AUTH", "true"),
    ])
    .await;
    assert_refused(&app, "/metrics", None).await;
    assert_refused(&app, "/status", Some(&format!("Bearer {TOKEN}x"))).await;
    let metrics = get(&app, "/metrics", Some(&format!("Bearer {TOKEN}"))).await;
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics
            .text()
            .await
            .unwrap()
            .contains("panopticon_rows_written_total")
    );
    assert_eq!(
        get(&app, "/status", Some(&basic("me", TOKEN)))
            .await
            .status(),
        200
    );
    assert_eq!(get(&app, "/health", None).await.status(), 200);
    assert_eq!(get(&app, "/ready", None).await.status(), 503);
}

#[tokio::test]
async fn without_a_token_everything_is_open_and_one_warning_says_so() {
    let (app, _db) = service(&[]).await;
    for path in PROTECTED {
        assert_eq!(get(&app, path, None).await.status(), 200, "GET {path}");
    }
    let warnings = app.lines_containing("HTTP authentication is off");
    assert_eq!(warnings.len(), 1, "{:#?}", app.lines());
    assert!(warnings[0].contains("WARN"), "{}", warnings[0]);
}
