//! The records the Fluent Bit pipeline of `docker/k8s/` produces, keys its Kafka output adds
//! included, pass the validator unchanged.

use panopticon::domain::{Rules, ValidMetric};

#[test]
fn fluent_bit_records_are_valid_metrics() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docker/k8s/fluent-bit-sample-records.jsonl"
    );
    let text = std::fs::read_to_string(path).expect("sample records");
    let rules = Rules {
        max_future_skew_ms: 300_000,
        max_age_ms: None,
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut checked = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let record: serde_json::Value = serde_json::from_str(line).expect("record JSON");
        assert!(
            record.get("@timestamp").is_some(),
            "the Kafka output adds @timestamp: {line}"
        );
        let metric = ValidMetric::parse(line.as_bytes(), &rules, now_ms)
            .unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(metric.time_ms(), record["timestamp"].as_i64().unwrap());
        assert_eq!(metric.pod_name(), record["podName"].as_str().unwrap());
        assert_eq!(metric.cpu(), record["cpu"].as_f64().unwrap());
        assert_eq!(metric.memory(), record["memory"].as_f64().unwrap());
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} records");
}
