//! The dashboard in a real browser: headless Chromium (driven by `tests/browser/dashboard.mjs`)
//! loads `/` from the running service behind `HTTP_AUTH_TOKEN`: without credentials the page
//! is refused (401 with a Basic challenge); with the token as the HTTP Basic password, as a
//! browser's own prompt sends it, it must see no console error, page error or failed request,
//! must show the pods stored through the pipeline, and must see its stats refresh.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[tokio::test]
async fn the_dashboard_shows_stored_pods_and_live_stats_in_chromium() {
    let Setup { topic, group, db } = setup().await;
    let token = "br0wser-T0ken";
    let mut env = service_env(&topic, &group, &db);
    env.insert("HTTP_AUTH_TOKEN".into(), token.into());
    let app = TestApp::spawn_consuming(env);
    let pods = ["dash-pod-1", "dash-pod-2", "dash-pod-3"];
    let producer = producer();
    for round in 0..3 {
        let payloads: Vec<Vec<u8>> = pods
            .iter()
            .map(|pod| {
                guide_message(
                    pod,
                    10.0 + round as f64,
                    100.0,
                    now_ms() - 60_000 + round * 10_000,
                )
            })
            .collect();
        produce(&producer, &topic, 0, &payloads).await;
    }
    assert_eq!(
        wait_for_count(&db, "SELECT count(*) FROM system_metrics", 9).await,
        9
    );

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/dashboard.mjs");
    let url = app.url("");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .env("DASHBOARD_TOKEN", token)
            .arg(script)
            .arg(url)
            .args(pods)
            .output()
            .expect("run node (install Node.js and `npm ci` in tests/browser: see .ci/test)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "dashboard check failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("OK"), "{stdout}");
    drop(app);
    tokio::time::sleep(Duration::from_millis(10)).await;
}
