//! Property tests of the validator, `ValidMetric::parse`: whatever a Kafka message holds, the
//! validator never panics and answers either a valid metric or a rejection with a reason and a
//! detail; and for messages shaped like a metric it accepts exactly those that README's "What is
//! valid" accepts, with every field stored as sent.
//!
//! The expected outcome comes from an oracle written here from the rules, independently of the
//! validator's code.

use std::collections::BTreeSet;

use panopticon::domain::{MAX_NAME_CHARS, Reason, Rejection, Rules, ValidMetric};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};
use serde_json::{Map, Number, Value};

/// A clock reading in November 2025 and the default skew.
const NOW_MS: i64 = 1_764_000_000_000;
const RULES: Rules = Rules {
    max_future_skew_ms: 300_000,
    max_age_ms: None,
};

const FIELDS: [&str; 7] = [
    "timestamp",
    "service",
    "podName",
    "namespace",
    "nodeName",
    "cpu",
    "memory",
];
const NAME_FIELDS: [&str; 4] = ["service", "podName", "namespace", "nodeName"];

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The oracle
// ---------------------------------------------------------------------------------------------

/// What the rules say about one field: the value to store, or the reasons a rejection for it
/// may give.
#[derive(Debug, Clone, PartialEq)]
enum Verdict<T> {
    Valid(T),
    Invalid(BTreeSet<&'static str>),
}

fn invalid<T>(reasons: &[Reason]) -> Verdict<T> {
    Verdict::Invalid(reasons.iter().map(|r| r.as_str()).collect())
}

fn type_verdict<T>(value: Option<&Value>) -> Verdict<T> {
    match value {
        None => invalid(&[Reason::MissingField]),
        Some(_) => invalid(&[Reason::WrongType]),
    }
}

/// `timestamp`: a JSON number of Unix milliseconds, ≥ 0 (a fraction is cut off), at most
/// `max_future_skew_ms` ahead of `now_ms`, and, where there is a window, at most `max_age_ms`
/// behind it.
fn timestamp_verdict(value: Option<&Value>, rules: &Rules, now_ms: i64) -> Verdict<i64> {
    let Some(Value::Number(n)) = value else {
        return type_verdict(value);
    };
    let limit = now_ms as i128 + rules.max_future_skew_ms as i128;
    let ms: i128 = if let Some(i) = n.as_i64() {
        i as i128
    } else if let Some(u) = n.as_u64() {
        u as i128
    } else {
        let f = n.as_f64().expect("a JSON number is an f64");
        if f < 0.0 {
            return invalid(&[Reason::OutOfRange]);
        }
        // Saturates far above any limit for huge values.
        f.floor() as i128
    };
    if ms < 0 {
        invalid(&[Reason::OutOfRange])
    } else if ms > i64::MAX as i128 {
        // Beyond what can be stored at all: either reason says it.
        invalid(&[Reason::OutOfRange, Reason::FutureTimestamp])
    } else if ms > limit {
        invalid(&[Reason::FutureTimestamp])
    } else if rules
        .max_age_ms
        .is_some_and(|age| ms < now_ms as i128 - age as i128)
    {
        invalid(&[Reason::TooOld])
    } else {
        Verdict::Valid(ms as i64)
    }
}

/// `service`, `podName`, `namespace`, `nodeName`: a string, not empty or blank, at most 253
/// characters, without control characters.
fn name_verdict(value: Option<&Value>) -> Verdict<String> {
    let Some(Value::String(s)) = value else {
        return type_verdict(value);
    };
    let mut reasons = Vec::new();
    if s.chars().all(char::is_whitespace) {
        reasons.push(Reason::EmptyString);
    }
    if s.chars().count() > MAX_NAME_CHARS {
        reasons.push(Reason::TooLong);
    }
    if s.chars().any(|c| c.is_control()) {
        reasons.push(Reason::ControlCharacter);
    }
    if reasons.is_empty() {
        Verdict::Valid(s.clone())
    } else {
        invalid(&reasons)
    }
}

/// `cpu`: a number from 0 to 100; `memory`: a finite number ≥ 0.
fn number_verdict(value: Option<&Value>, in_range: fn(f64) -> bool) -> Verdict<f64> {
    let Some(Value::Number(n)) = value else {
        return type_verdict(value);
    };
    let x = n.as_f64().expect("a JSON number is an f64");
    if in_range(x) {
        Verdict::Valid(x)
    } else {
        invalid(&[Reason::OutOfRange])
    }
}

fn cpu_in_range(x: f64) -> bool {
    (0.0..=100.0).contains(&x)
}

fn memory_in_range(x: f64) -> bool {
    x >= 0.0 && x.is_finite()
}

/// The metric the rules say a JSON object is, or, per invalid field, the reasons a rejection
/// may give.
struct Expected {
    time_ms: Verdict<i64>,
    names: [Verdict<String>; 4],
    cpu: Verdict<f64>,
    memory: Verdict<f64>,
}

impl Expected {
    fn of(object: &Map<String, Value>, rules: &Rules, now_ms: i64) -> Expected {
        Expected {
            time_ms: timestamp_verdict(object.get("timestamp"), rules, now_ms),
            names: NAME_FIELDS.map(|f| name_verdict(object.get(f))),
            cpu: number_verdict(object.get("cpu"), cpu_in_range),
            memory: number_verdict(object.get("memory"), memory_in_range),
        }
    }

    /// The invalid fields with the reasons each may be rejected for.
    fn failures(&self) -> Vec<(&'static str, BTreeSet<&'static str>)> {
        fn reasons<T>(v: &Verdict<T>) -> Option<BTreeSet<&'static str>> {
            match v {
                Verdict::Valid(_) => None,
                Verdict::Invalid(r) => Some(r.clone()),
            }
        }
        let mut out = Vec::new();
        if let Some(r) = reasons(&self.time_ms) {
            out.push(("timestamp", r));
        }
        for (field, verdict) in NAME_FIELDS.iter().zip(&self.names) {
            if let Some(r) = reasons(verdict) {
                out.push((field, r));
            }
        }
        if let Some(r) = reasons(&self.cpu) {
            out.push(("cpu", r));
        }
        if let Some(r) = reasons(&self.memory) {
            out.push(("memory", r));
        }
        out
    }
}

/// Checks the validator's answer for a JSON object against the oracle: accepted iff every
/// field is valid, each field stored as sent; rejected for a reason of one of the invalid
/// fields, named in the detail.
fn check_object(
    object: &Map<String, Value>,
    payload: &[u8],
    rules: &Rules,
    now_ms: i64,
) -> Result<(), TestCaseError> {
    let result = ValidMetric::parse(payload, rules, now_ms);
    check_contract(&result, rules, now_ms)?;
    let expected = Expected::of(object, rules, now_ms);
    let failures = expected.failures();
    let text = String::from_utf8_lossy(payload);
    match (&result, failures.is_empty()) {
        (Ok(metric), true) => {
            let Expected {
                time_ms: Verdict::Valid(time_ms),
                names:
                    [
                        Verdict::Valid(service),
                        Verdict::Valid(pod),
                        Verdict::Valid(namespace),
                        Verdict::Valid(node),
                    ],
                cpu: Verdict::Valid(cpu),
                memory: Verdict::Valid(memory),
            } = expected
            else {
                unreachable!("no failures means every field is valid")
            };
            prop_assert_eq!(metric.time_ms(), time_ms, "timestamp of {}", text);
            prop_assert_eq!(metric.service(), service.as_str(), "service of {}", text);
            prop_assert_eq!(metric.pod_name(), pod.as_str(), "podName of {}", text);
            prop_assert_eq!(
                metric.namespace(),
                namespace.as_str(),
                "namespace of {}",
                text
            );
            prop_assert_eq!(metric.node_name(), node.as_str(), "nodeName of {}", text);
            prop_assert_eq!(metric.cpu(), cpu, "cpu of {}", text);
            prop_assert_eq!(metric.memory(), memory, "memory of {}", text);
        }
        (Ok(metric), false) => {
            return Err(TestCaseError::fail(format!(
                "accepted {text}\nas {metric:?}\nthough invalid: {failures:?}"
            )));
        }
        (Err(rejection), true) => {
            return Err(TestCaseError::fail(format!(
                "rejected the valid {text}\nwith {rejection}"
            )));
        }
        (Err(rejection), false) => {
            let reason = rejection.reason.as_str();
            let blamed = failures.iter().any(|(field, reasons)| {
                reasons.contains(reason) && rejection.detail.contains(&format!("`{field}`"))
            });
            prop_assert!(
                blamed,
                "rejection {} of {} names no invalid field with that reason; invalid: {:?}",
                rejection,
                text,
                failures
            );
        }
    }
    Ok(())
}

/// The contract for any payload: a rejection has a known reason and a detail; an accepted
/// metric obeys every rule.
fn check_contract(
    result: &Result<ValidMetric, Rejection>,
    rules: &Rules,
    now_ms: i64,
) -> Result<(), TestCaseError> {
    match result {
        Err(rejection) => {
            prop_assert!(
                Reason::ALL.contains(&rejection.reason),
                "unknown reason {:?}",
                rejection.reason
            );
            prop_assert!(
                !rejection.detail.trim().is_empty(),
                "empty detail for {:?}",
                rejection.reason
            );
        }
        Ok(metric) => {
            prop_assert!(metric.time_ms() >= 0, "{:?}", metric);
            prop_assert!(
                metric.time_ms() as i128 <= now_ms as i128 + rules.max_future_skew_ms as i128,
                "{:?}",
                metric
            );
            prop_assert!(
                rules
                    .max_age_ms
                    .is_none_or(|age| metric.time_ms() as i128 >= now_ms as i128 - age as i128),
                "{:?}",
                metric
            );
            for name in [
                metric.service(),
                metric.pod_name(),
                metric.namespace(),
                metric.node_name(),
            ] {
                prop_assert!(
                    matches!(name_verdict(Some(&Value::from(name))), Verdict::Valid(_)),
                    "invalid name {:?} in {:?}",
                    name,
                    metric
                );
            }
            prop_assert!(cpu_in_range(metric.cpu()), "{:?}", metric);
            prop_assert!(memory_in_range(metric.memory()), "{:?}", metric);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

fn float(f: f64) -> Value {
    Value::Number(Number::from_f64(f).expect("finite"))
}

/// Numbers of every kind JSON carries: integers of both signs up to u64::MAX, fractions, huge
/// and tiny magnitudes, negative zero, the edges of the metric ranges.
fn arb_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1000i64..1000).prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(float),
        (-1.0e4f64..1.0e4).prop_map(float),
        prop::sample::select(vec![
            0.0,
            -0.0,
            0.5,
            -0.5,
            100.0,
            100.00000000000001,
            99.99999999999999,
            -5e-324,
            5e-324,
            1e308,
            -1e308,
            f64::MAX,
            f64::MIN,
            9.223372036854776e18,
            1.8446744073709552e19,
            1e20,
        ])
        .prop_map(float),
    ]
}

/// Strings of any characters: empty, blank, with control characters, non-ASCII, near and
/// beyond the 253-character limit.
fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "(?s).{0,24}",
        2 => "[a-z0-9][a-z0-9.-]{0,30}",
        1 => Just(String::new()),
        1 => "[ \t\n\r\u{0b}\u{0c}\u{85}\u{a0}\u{1680}\u{2000}-\u{200a}\u{2028}\u{2029}\u{202f}\u{205f}\u{3000}]{1,6}",
        1 => "[\u{0}-\u{1f}\u{7f}-\u{9f}]{1,3}",
        1 => ("[a-z]{0,5}", "[\u{0}-\u{1f}\u{7f}-\u{9f}]", "[a-z]{0,5}")
            .prop_map(|(a, c, b)| format!("{a}{c}{b}")),
        1 => "[\u{200b}\u{feff}\u{2060}\u{e000}\u{10ffff}\u{1f600}é\"\\\\/]{1,8}",
        1 => (prop::sample::select(vec!["a", "é", "語", "😀", " "]), 250usize..=256)
            .prop_map(|(c, n)| c.repeat(n)),
        1 => "(?s).{200,600}",
    ]
}

/// Any JSON value: scalars of every kind, nested arrays and objects.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        arb_number(),
        arb_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((arb_key(), inner), 0..8)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

/// Object keys: the metric's own, near misses, Fluent Bit's and Kubernetes', any string.
fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(FIELDS.to_vec()).prop_map(str::to_owned),
        extra_key(),
    ]
}

/// Keys that are not one of the seven fields.
fn extra_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "@timestamp",
            "kubernetes",
            "log",
            "Timestamp",
            "pod_name",
            "podname",
            "node_name",
            "CPU",
            "memory ",
            " cpu",
            "",
            "time",
        ])
        .prop_map(str::to_owned),
        "(?s).{0,12}",
    ]
    .prop_filter("not a metric field", |k| !FIELDS.contains(&k.as_str()))
}

fn valid_name() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => "[a-z0-9]([a-z0-9.-]{0,40}[a-z0-9])?",
        1 => "[\\p{L}\\p{N}][\\p{L}\\p{N}\\p{Zs} _./:@-]{0,30}",
        1 => " {0,3}[a-z]{1,5} {0,3}",
        1 => (prop::sample::select(vec!["a", "é", "語", "😀"]), 240usize..=253)
            .prop_map(|(c, n)| c.repeat(n)),
        1 => "[a-z\"\\\\/\u{200b}\u{feff}\u{e000}]{1,10}"
            .prop_filter("not blank", |s| !s.trim().is_empty()),
    ]
    .prop_map(Value::String)
}

fn invalid_name() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::String(String::new())),
        "[ \t\n\r\u{a0}\u{2003}\u{3000}]{1,6}".prop_map(Value::String),
        (
            prop::sample::select(vec!["a", "é", "語", "😀"]),
            254usize..=300
        )
            .prop_map(|(c, n)| Value::String(c.repeat(n))),
        ("[a-z]{0,5}", "[\u{0}-\u{1f}\u{7f}-\u{9f}]", "[a-z]{0,5}")
            .prop_map(|(a, c, b)| Value::String(format!("{a}{c}{b}"))),
        non_string(),
    ]
}

/// A value of any JSON type but string.
fn non_string() -> impl Strategy<Value = Value> {
    arb_json().prop_filter("not a string", |v| !v.is_string())
}

/// A value of any JSON type but number.
fn non_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        arb_json().prop_filter("not a number", |v| !v.is_number()),
        // The number as text, as a sender might quote it.
        (0u64..2_000_000_000_000).prop_map(|n| Value::String(n.to_string())),
    ]
}

fn valid_timestamp(limit: i64) -> impl Strategy<Value = Value> {
    let limit = limit.max(0);
    prop_oneof![
        (0..=limit).prop_map(Value::from),
        Just(Value::from(limit)),
        Just(Value::from(0)),
        (0.0..=limit as f64).prop_map(float),
        // A fraction above the last valid millisecond is cut off.
        Just(float(limit as f64 + 0.5)),
        Just(float(-0.0)),
        Just(float(5e-324)),
    ]
}

fn invalid_timestamp(limit: i64) -> impl Strategy<Value = Value> {
    prop_oneof![
        (i64::MIN..0).prop_map(Value::from),
        (-1.0e13f64..-1e-9).prop_map(float),
        Just(float(-0.5)),
        (1i64..=1_000_000_000).prop_map(move |d| Value::from(limit.saturating_add(d))),
        Just(Value::from(limit.saturating_add(1))),
        Just(float(limit as f64 + 1.0)),
        ((i64::MAX as u64 + 1)..=u64::MAX).prop_map(Value::from),
        prop::sample::select(vec![9.223372036854776e18, 1e19, 1e300, f64::MAX]).prop_map(float),
        non_number(),
    ]
}

fn valid_cpu() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0.0f64..=100.0).prop_map(float),
        (0u64..=100).prop_map(Value::from),
        prop::sample::select(vec![0.0, -0.0, 100.0, 5e-324, 99.99999999999999, 78.5])
            .prop_map(float),
    ]
}

fn invalid_cpu() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-1.0e6f64..-1e-12).prop_map(float),
        (100.000001f64..1.0e6).prop_map(float),
        prop::sample::select(vec![100.00000000000001, -5e-324, 1e308, -1e308]).prop_map(float),
        (101u64..=u64::MAX).prop_map(Value::from),
        (i64::MIN..0).prop_map(Value::from),
        non_number(),
    ]
}

fn valid_memory() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0.0f64..1.0e7).prop_map(float),
        any::<u64>().prop_map(Value::from),
        (0.0f64..=f64::MAX).prop_map(float),
        prop::sample::select(vec![0.0, -0.0, 5e-324, 512.3, f64::MAX]).prop_map(float),
    ]
}

fn invalid_memory() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-1.0e7f64..-1e-12).prop_map(float),
        prop::sample::select(vec![-5e-324, -1e308, f64::MIN]).prop_map(float),
        (i64::MIN..0).prop_map(Value::from),
        non_number(),
    ]
}

/// A field mostly present and valid, sometimes invalid, absent, or any JSON value at all.
fn field(
    valid: impl Strategy<Value = Value> + 'static,
    invalid: impl Strategy<Value = Value> + 'static,
) -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        20 => valid.prop_map(Some),
        2 => invalid.prop_map(Some),
        1 => Just(None),
        1 => arb_json().prop_map(Some),
    ]
    .boxed()
}

/// Clock readings and skews: the usual ones, zero, and extremes.
fn arb_clock() -> impl Strategy<Value = (i64, Rules)> {
    let now = prop_oneof![
        3 => Just(NOW_MS),
        1 => 0i64..=4_102_444_800_000,
        1 => Just(0i64),
    ];
    let skew = prop_oneof![
        3 => Just(300_000i64),
        1 => Just(0i64),
        1 => 0i64..=86_400_000,
        1 => Just(i64::MAX),
    ];
    let age = prop_oneof![
        3 => Just(None),
        1 => Just(Some(30 * 86_400_000i64)),
        1 => (0i64..=4_102_444_800_000).prop_map(Some),
    ];
    (now, skew, age).prop_map(|(now, skew, age)| {
        (
            now,
            Rules {
                max_future_skew_ms: skew,
                max_age_ms: age,
            },
        )
    })
}

/// A message shaped like a metric: each field present or not, valid or not, plus other keys,
/// in any order, spaced in any way. Returns the object as the oracle sees it and its bytes.
fn metric_like() -> impl Strategy<Value = (i64, Rules, Map<String, Value>, Vec<u8>)> {
    arb_clock().prop_flat_map(|(now, rules)| {
        let limit = now.saturating_add(rules.max_future_skew_ms);
        let fields = (
            field(valid_timestamp(limit), invalid_timestamp(limit)),
            field(valid_name(), invalid_name()),
            field(valid_name(), invalid_name()),
            field(valid_name(), invalid_name()),
            field(valid_name(), invalid_name()),
            field(valid_cpu(), invalid_cpu()),
            field(valid_memory(), invalid_memory()),
        );
        let extras = prop::collection::vec((extra_key(), arb_json()), 0..4);
        let spacing =
            prop::collection::vec(prop::sample::select(vec!["", " ", "\n", "\t", "  "]), 64);
        (fields, extras, spacing).prop_flat_map(
            move |((ts, svc, pod, ns, node, cpu, mem), extras, spacing)| {
                let mut entries: Vec<(String, Value)> = Vec::new();
                for (name, value) in FIELDS.iter().zip([ts, svc, pod, ns, node, cpu, mem]) {
                    if let Some(value) = value {
                        entries.push(((*name).to_owned(), value));
                    }
                }
                // One value per key, as a JSON object holds it.
                let mut seen = BTreeSet::new();
                for (key, value) in extras {
                    if seen.insert(key.clone()) {
                        entries.push((key, value));
                    }
                }
                let spacing = spacing.clone();
                Just(entries).prop_shuffle().prop_map(move |entries| {
                    let object: Map<String, Value> = entries.iter().cloned().collect();
                    let mut text = String::new();
                    let mut gaps = spacing.iter().cycle();
                    let mut gap = || *gaps.next().expect("cycle");
                    text.push_str(gap());
                    text.push('{');
                    for (i, (key, value)) in entries.iter().enumerate() {
                        if i > 0 {
                            text.push(',');
                        }
                        text.push_str(gap());
                        text.push_str(&serde_json::to_string(key).expect("key"));
                        text.push_str(gap());
                        text.push(':');
                        text.push_str(gap());
                        text.push_str(&serde_json::to_string(value).expect("value"));
                        text.push_str(gap());
                    }
                    text.push('}');
                    text.push_str(gap());
                    (now, rules, object, text.into_bytes())
                })
            },
        )
    })
}

/// A metric-shaped payload damaged: cut short, a byte changed, bytes inserted.
fn damaged_payload() -> impl Strategy<Value = Vec<u8>> {
    (
        metric_like(),
        any::<prop::sample::Index>(),
        any::<u8>(),
        0u8..3,
    )
        .prop_map(|((_, _, _, mut bytes), at, byte, how)| {
            let i = at.index(bytes.len() + 1);
            match how {
                0 => bytes.truncate(i),
                1 if i < bytes.len() => bytes[i] = byte,
                _ => bytes.insert(i.min(bytes.len()), byte),
            }
            bytes
        })
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(2000))]

    /// Any bytes at all, from random noise to a damaged metric: no panic, and either a metric
    /// obeying the rules or a rejection with a known reason and a detail. Bytes that are not
    /// UTF-8 are rejected as such.
    #[test]
    fn any_bytes_give_a_metric_or_a_rejection(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..2048),
            "(?s).{0,200}".prop_map(String::into_bytes),
            damaged_payload(),
        ]
    ) {
        let result = ValidMetric::parse(&bytes, &RULES, NOW_MS);
        check_contract(&result, &RULES, NOW_MS)?;
        if std::str::from_utf8(&bytes).is_err() {
            prop_assert_eq!(
                result.map(|_| ()).map_err(|r| r.reason),
                Err(Reason::InvalidUtf8)
            );
        }
    }

    /// Any JSON value: no panic; what is not an object is rejected as not an object; an
    /// object is judged exactly as the rules say.
    #[test]
    fn any_json_value_is_judged_by_the_rules(value in arb_json(), (now, rules) in arb_clock()) {
        let payload = serde_json::to_vec(&value).expect("serialize");
        match &value {
            Value::Object(object) => check_object(object, &payload, &rules, now)?,
            _ => {
                let result = ValidMetric::parse(&payload, &rules, now);
                check_contract(&result, &rules, now)?;
                prop_assert_eq!(
                    result.map(|_| ()).map_err(|r| r.reason),
                    Err(Reason::NotAnObject),
                    "payload {}",
                    String::from_utf8_lossy(&payload)
                );
            }
        }
    }

    /// A message shaped like a metric is accepted iff all seven fields are present and valid,
    /// and then stored exactly as sent.
    #[test]
    fn a_metric_is_accepted_iff_every_field_is_valid(
        (now, rules, object, payload) in metric_like()
    ) {
        check_object(&object, &payload, &rules, now)?;
    }
}

proptest! {
    #![proptest_config(config(20))]

    /// Every message of a batch is either a valid metric or a counted rejection: nothing is
    /// lost between the two counts.
    #[test]
    fn every_message_of_a_batch_is_counted_once(
        batch in prop::collection::vec(
            prop_oneof![
                metric_like().prop_map(|(_, _, _, bytes)| bytes),
                prop::collection::vec(any::<u8>(), 0..256),
                arb_json().prop_map(|v| serde_json::to_vec(&v).expect("serialize")),
            ],
            0..200,
        )
    ) {
        let mut valid = 0usize;
        let mut by_reason = [0usize; Reason::ALL.len()];
        for payload in &batch {
            match ValidMetric::parse(payload, &RULES, NOW_MS) {
                Ok(_) => valid += 1,
                Err(rejection) => by_reason[rejection.reason.index()] += 1,
            }
        }
        let rejected: usize = by_reason.iter().sum();
        prop_assert_eq!(valid + rejected, batch.len());
    }
}

/// A deeply nested payload is rejected, not a stack overflow.
#[test]
fn deep_nesting_is_rejected_without_overflow() {
    for payload in [
        "[".repeat(100_000),
        format!("{{\"cpu\":{}", "[".repeat(100_000)),
        format!(
            "{{\"@timestamp\":{}1{}}}",
            "{\"a\":".repeat(5_000),
            "}".repeat(5_000)
        ),
    ] {
        let rejection = ValidMetric::parse(payload.as_bytes(), &RULES, NOW_MS)
            .expect_err("nested payload accepted");
        assert!(!rejection.detail.is_empty());
    }
}

/// Only a JSON object is a metric: an array holding the seven values in field order is not
/// one.
#[test]
fn an_array_of_the_seven_values_is_not_a_metric() {
    let payload = br#"[1730707200000,"log-generator","test-pod-123","default","kind-control-plane",78.5,512.3]"#;
    let result = ValidMetric::parse(payload, &RULES, NOW_MS);
    assert_eq!(
        result.map_err(|r| r.reason),
        Err(Reason::NotAnObject),
        "{}",
        String::from_utf8_lossy(payload)
    );
    for payload in ["[]", "[null]", "[1730707200000]"] {
        let result = ValidMetric::parse(payload.as_bytes(), &RULES, NOW_MS);
        assert_eq!(
            result.map(|_| ()).map_err(|r| r.reason),
            Err(Reason::NotAnObject),
            "{payload}"
        );
    }
}

/// The guide's message with one field's JSON text replaced.
fn guide_with(field: &str, json: &str) -> String {
    let fields = [
        ("timestamp", "1730707200000"),
        ("service", "\"log-generator\""),
        ("podName", "\"test-pod-123\""),
        ("namespace", "\"default\""),
        ("nodeName", "\"kind-control-plane\""),
        ("cpu", "78.5"),
        ("memory", "512.3"),
    ];
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("\"{k}\":{}", if *k == field { json } else { v }))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// A number is read as the nearest double to its decimal text, as every JSON writer expects:
/// the stored value is the one sent, and a value just above a limit is not rounded onto it.
#[test]
fn numbers_are_read_to_the_nearest_double() {
    for (fields, text) in [
        (&["cpu", "memory"][..], "99.34903004604277"),
        (&["cpu", "memory"][..], "93.50901549855263"),
        (&["memory"][..], "1651.3193673091603"),
        (&["cpu", "memory"][..], "78.5"),
        (&["cpu", "memory"][..], "0.1"),
    ] {
        let sent: f64 = text.parse().expect("a number");
        for &field in fields {
            let payload = guide_with(field, text);
            let metric = ValidMetric::parse(payload.as_bytes(), &RULES, NOW_MS)
                .unwrap_or_else(|r| panic!("{payload}: {r}"));
            let stored = if field == "cpu" {
                metric.cpu()
            } else {
                metric.memory()
            };
            assert_eq!(stored, sent, "{field} {text} stored as {stored:?}");
        }
    }
    // The double nearest to this text is 100.00000000000001421, above 100.
    let payload = guide_with("cpu", "100.00000000000001");
    let result = ValidMetric::parse(payload.as_bytes(), &RULES, NOW_MS);
    assert_eq!(
        result.map(|m| m.cpu()).map_err(|r| r.reason),
        Err(Reason::OutOfRange),
        "{payload}"
    );
}
