//! The metric as Fluent Bit sends it ([`RawMetric`]) and the metric Panopticon stores
//! ([`ValidMetric`]). [`ValidMetric::parse`] is the only way to make a `ValidMetric`, so the
//! batch writer, which accepts nothing else, cannot be handed an unchecked row.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Longest accepted service, pod, namespace or node name, in characters: Kubernetes object
/// names are DNS subdomains, at most 253 characters.
pub const MAX_NAME_CHARS: usize = 253;

/// What the validator checks beyond the shape of the message.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// How far past "now" a timestamp may lie, in milliseconds. Clocks on nodes drift; a
    /// timestamp further ahead is a bug in the sender and would sort above every real sample.
    pub max_future_skew_ms: i64,
    /// How far in the past a timestamp may lie, in milliseconds; `None`: any past is valid.
    /// Set to the TimescaleDB retention window, so that a metric the retention job would drop
    /// is rejected instead of being stored, acknowledged and then deleted.
    pub max_age_ms: Option<i64>,
}

/// A metric that passed every check, ready to be stored. Its names are shared with the other
/// metrics of the same service, pod, namespace or node that [`Names`] still holds.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidMetric {
    time_ms: i64,
    service: Arc<str>,
    pod_name: Arc<str>,
    namespace: Arc<str>,
    node_name: Arc<str>,
    cpu: f64,
    memory: f64,
}

/// Total size the names held by [`Names`] may reach before it starts afresh, counting each
/// name's text and about 40 bytes of its own (the shared allocation's counts, the set's slot):
/// some 50,000 names of the usual length, enough for the pods of a large cluster.
pub const NAMES_MAX_BYTES: usize = 4 * 1024 * 1024;

/// Service, pod, namespace and node names seen in valid metrics, each held once. The same few
/// names come with almost every metric; a name found here is shared instead of allocated
/// again, and it needs no second check, for only names that passed the checks are kept and
/// their checks depend on nothing but the name. The names come from a topic anyone with
/// write access fills, so what is held is bounded: when it would exceed its budget the set is
/// emptied and fills again with the names that keep coming (metrics already made keep theirs).
///
/// The set hashes with foldhash, several times faster than the standard library's SipHash on
/// names this short, seeded at random per process like the standard one, so that names made to
/// collide cannot be prepared in advance.
#[derive(Debug, Default)]
pub struct Names {
    held: HashSet<Arc<str>, foldhash::fast::RandomState>,
    bytes: usize,
    max_bytes: usize,
}

impl Names {
    /// Holds names up to `max_bytes` (see [`NAMES_MAX_BYTES`]); 0 holds none.
    pub fn new(max_bytes: usize) -> Names {
        Names {
            held: HashSet::default(),
            bytes: 0,
            max_bytes,
        }
    }

    /// How many names are held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    fn get(&self, text: &str) -> Option<Arc<str>> {
        self.held.get(text).cloned()
    }

    /// `text`, which passed the checks, as a shared name, held for the next metrics if the
    /// budget allows.
    fn insert(&mut self, text: &str) -> Arc<str> {
        let name: Arc<str> = Arc::from(text);
        let cost = text.len() + 40;
        if cost > self.max_bytes {
            return name;
        }
        if self.bytes + cost > self.max_bytes {
            self.held.clear();
            self.bytes = 0;
        }
        self.held.insert(name.clone());
        self.bytes += cost;
        name
    }
}

impl ValidMetric {
    /// Parses and checks one Kafka payload. `now_ms` is the current Unix time in milliseconds.
    pub fn parse(payload: &[u8], rules: &Rules, now_ms: i64) -> Result<ValidMetric, Rejection> {
        ValidMetric::parse_with(payload, rules, now_ms, &mut Names::new(0))
    }

    /// [`ValidMetric::parse`], sharing the names held by `names` and adding the new ones: the
    /// same checks, the same answer.
    pub fn parse_with(
        payload: &[u8],
        rules: &Rules,
        now_ms: i64,
        names: &mut Names,
    ) -> Result<ValidMetric, Rejection> {
        let text = std::str::from_utf8(payload).map_err(|e| {
            Rejection::new(
                Reason::InvalidUtf8,
                format!(
                    "payload is not UTF-8 (invalid byte at position {})",
                    e.valid_up_to()
                ),
            )
        })?;
        // A payload that opens with `{` is neither blank nor anything but an object, as the
        // next two checks would find more slowly.
        let opens_object = text.as_bytes().first() == Some(&b'{');
        if !opens_object && text.trim().is_empty() {
            return Err(Rejection::new(
                Reason::InvalidJson,
                "payload is empty".into(),
            ));
        }
        // serde would also fill the struct from a JSON array, by position: only objects are
        // metrics.
        if !opens_object && !text.trim_start().starts_with('{') {
            return Err(match serde_json::from_str::<IgnoredAny>(text) {
                Ok(_) => {
                    Rejection::new(Reason::NotAnObject, "payload must be a JSON object".into())
                }
                Err(e) => Rejection::new(
                    Reason::InvalidJson,
                    format!("payload is not valid JSON: {e}"),
                ),
            });
        }
        let raw: RawMetric<'_> = serde_json::from_str(text).map_err(|e| {
            Rejection::new(
                Reason::InvalidJson,
                format!("payload is not valid JSON: {e}"),
            )
        })?;
        raw.validate(rules, now_ms, names)
    }

    pub fn time_ms(&self) -> i64 {
        self.time_ms
    }

    pub fn time(&self) -> DateTime<Utc> {
        // The range was checked in `parse`: 0 ≤ time_ms ≤ now + skew.
        DateTime::from_timestamp_millis(self.time_ms).unwrap_or_default()
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    pub fn pod_name(&self) -> &str {
        &self.pod_name
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    pub fn cpu(&self) -> f64 {
        self.cpu
    }

    pub fn memory(&self) -> f64 {
        self.memory
    }
}

/// A metric in the wire format Fluent Bit produces.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WireMetric<'a> {
    pub timestamp: i64,
    pub service: &'a str,
    pub pod_name: &'a str,
    pub namespace: &'a str,
    pub node_name: &'a str,
    pub cpu: f64,
    pub memory: f64,
}

impl ValidMetric {
    /// The metric as it would arrive, e.g. to dead-letter it.
    pub fn to_wire(&self) -> WireMetric<'_> {
        WireMetric {
            timestamp: self.time_ms,
            service: &self.service,
            pod_name: &self.pod_name,
            namespace: &self.namespace,
            node_name: &self.node_name,
            cpu: self.cpu,
            memory: self.memory,
        }
    }
}

/// Why a message was not stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
}

impl Rejection {
    fn new(reason: Reason, detail: String) -> Rejection {
        Rejection { reason, detail }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.detail)
    }
}

/// The classes of rejection, counted separately in `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    InvalidUtf8,
    InvalidJson,
    NotAnObject,
    MissingField,
    WrongType,
    OutOfRange,
    EmptyString,
    TooLong,
    ControlCharacter,
    FutureTimestamp,
    TooOld,
}

impl Reason {
    pub const ALL: [Reason; 11] = [
        Reason::InvalidUtf8,
        Reason::InvalidJson,
        Reason::NotAnObject,
        Reason::MissingField,
        Reason::WrongType,
        Reason::OutOfRange,
        Reason::EmptyString,
        Reason::TooLong,
        Reason::ControlCharacter,
        Reason::FutureTimestamp,
        Reason::TooOld,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::InvalidJson => "invalid_json",
            Reason::NotAnObject => "not_an_object",
            Reason::MissingField => "missing_field",
            Reason::WrongType => "wrong_type",
            Reason::OutOfRange => "out_of_range",
            Reason::EmptyString => "empty_string",
            Reason::TooLong => "too_long",
            Reason::ControlCharacter => "control_character",
            Reason::FutureTimestamp => "future_timestamp",
            Reason::TooOld => "too_old",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The message as it arrives, every field optional and of any JSON type, so that each check
/// can name the field it failed on. Unknown fields (Fluent Bit's `@timestamp`, Kubernetes
/// metadata) are skipped without being allocated.
#[derive(Debug, Default, Deserialize)]
pub struct RawMetric<'a> {
    #[serde(default)]
    timestamp: Json<'a>,
    #[serde(default, borrow)]
    service: Json<'a>,
    #[serde(default, borrow, rename = "podName")]
    pod_name: Json<'a>,
    #[serde(default, borrow)]
    namespace: Json<'a>,
    #[serde(default, borrow, rename = "nodeName")]
    node_name: Json<'a>,
    #[serde(default)]
    cpu: Json<'a>,
    #[serde(default)]
    memory: Json<'a>,
}

impl<'a> RawMetric<'a> {
    fn validate(
        self,
        rules: &Rules,
        now_ms: i64,
        names: &mut Names,
    ) -> Result<ValidMetric, Rejection> {
        let time_ms = timestamp_field(self.timestamp, rules, now_ms)?;
        let service = name_field("service", self.service, names)?;
        let pod_name = name_field("podName", self.pod_name, names)?;
        let namespace = name_field("namespace", self.namespace, names)?;
        let node_name = name_field("nodeName", self.node_name, names)?;
        let cpu = number_field("cpu", self.cpu)?;
        if !(0.0..=100.0).contains(&cpu) {
            return Err(Rejection::new(
                Reason::OutOfRange,
                format!("`cpu` must be a percentage between 0 and 100, found {cpu}"),
            ));
        }
        let memory = number_field("memory", self.memory)?;
        if !(memory >= 0.0 && memory.is_finite()) {
            return Err(Rejection::new(
                Reason::OutOfRange,
                format!("`memory` must be a finite number of MiB ≥ 0, found {memory}"),
            ));
        }
        Ok(ValidMetric {
            time_ms,
            service,
            pod_name,
            namespace,
            node_name,
            cpu,
            memory,
        })
    }
}

fn timestamp_field(value: Json<'_>, rules: &Rules, now_ms: i64) -> Result<i64, Rejection> {
    let out_of_range = |shown: String| {
        Rejection::new(
            Reason::OutOfRange,
            format!("`timestamp` must be Unix milliseconds ≥ 0, found {shown}"),
        )
    };
    let time_ms = match value {
        Json::Int(n) if n < 0 => return Err(out_of_range(n.to_string())),
        Json::Int(n) => n,
        Json::UInt(n) => i64::try_from(n).map_err(|_| out_of_range(n.to_string()))?,
        Json::Float(f) if f.is_finite() && f >= 0.0 && f < i64::MAX as f64 => f.floor() as i64,
        Json::Float(f) => return Err(out_of_range(f.to_string())),
        other => return Err(other.wrong("timestamp", "a number of Unix milliseconds")),
    };
    let limit = now_ms.saturating_add(rules.max_future_skew_ms);
    if time_ms > limit {
        return Err(Rejection::new(
            Reason::FutureTimestamp,
            format!(
                "`timestamp` {time_ms} lies {} ms in the future; at most {} ms are allowed",
                time_ms - now_ms,
                rules.max_future_skew_ms
            ),
        ));
    }
    if let Some(max_age_ms) = rules.max_age_ms {
        let oldest = now_ms.saturating_sub(max_age_ms);
        if time_ms < oldest {
            return Err(Rejection::new(
                Reason::TooOld,
                format!(
                    "`timestamp` {time_ms} lies {} ms in the past, beyond the retention window of {max_age_ms} ms: the retention job would delete it",
                    now_ms - time_ms
                ),
            ));
        }
    }
    Ok(time_ms)
}

fn number_field(name: &'static str, value: Json<'_>) -> Result<f64, Rejection> {
    match value {
        Json::Int(n) => Ok(n as f64),
        Json::UInt(n) => Ok(n as f64),
        Json::Float(f) => Ok(f),
        other => Err(other.wrong(name, "a number")),
    }
}

fn name_field(
    name: &'static str,
    value: Json<'_>,
    names: &mut Names,
) -> Result<Arc<str>, Rejection> {
    let text = match value {
        Json::Str(text) => text,
        other => return Err(other.wrong(name, "a string")),
    };
    if let Some(held) = names.get(&text) {
        return Ok(held);
    }
    check_name(name, &text)?;
    Ok(names.insert(&text))
}

/// The checks of a name, which depend on nothing but its text (`name` only names the field).
fn check_name(name: &'static str, text: &str) -> Result<(), Rejection> {
    if text.trim().is_empty() {
        return Err(Rejection::new(
            Reason::EmptyString,
            format!("`{name}` must not be empty or blank"),
        ));
    }
    if text.len() > MAX_NAME_CHARS {
        let chars = text.chars().count();
        if chars > MAX_NAME_CHARS {
            return Err(Rejection::new(
                Reason::TooLong,
                format!(
                    "`{name}` is {chars} characters long; at most {MAX_NAME_CHARS} are allowed"
                ),
            ));
        }
    }
    if text.chars().any(char::is_control) {
        return Err(Rejection::new(
            Reason::ControlCharacter,
            format!("`{name}` contains a control character"),
        ));
    }
    Ok(())
}

/// One JSON value, kept only as far as the checks need it: strings are borrowed from the
/// payload where they hold no escapes, arrays and objects are skipped.
#[derive(Debug, Default)]
enum Json<'a> {
    #[default]
    Missing,
    Null,
    Bool,
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(Cow<'a, str>),
    Array,
    Object,
}

impl Json<'_> {
    fn wrong(self, field: &'static str, expected: &str) -> Rejection {
        let found = match self {
            Json::Missing => {
                return Rejection::new(Reason::MissingField, format!("missing field `{field}`"));
            }
            Json::Null => "null",
            Json::Bool => "a boolean",
            Json::Int(_) | Json::UInt(_) | Json::Float(_) => "a number",
            Json::Str(_) => "a string",
            Json::Array => "an array",
            Json::Object => "an object",
        };
        Rejection::new(
            Reason::WrongType,
            format!("`{field}` must be {expected}, found {found}"),
        )
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Json<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Json::Bool)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Json::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Json::UInt(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Json::Float(v))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Json::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Json::Object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: i64 = 1_764_000_000_000;
    const RULES: Rules = Rules {
        max_future_skew_ms: 300_000,
        max_age_ms: None,
    };

    fn parse(payload: &str) -> Result<ValidMetric, Rejection> {
        ValidMetric::parse(payload.as_bytes(), &RULES, NOW_MS)
    }

    fn with(field: &str, value: &str) -> String {
        let mut fields = vec![
            ("timestamp", "1730707200000".to_owned()),
            ("service", "\"log-generator\"".to_owned()),
            ("podName", "\"test-pod-123\"".to_owned()),
            ("namespace", "\"default\"".to_owned()),
            ("nodeName", "\"kind-control-plane\"".to_owned()),
            ("cpu", "78.5".to_owned()),
            ("memory", "512.3".to_owned()),
        ];
        for entry in &mut fields {
            if entry.0 == field {
                entry.1 = value.to_owned();
            }
        }
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", body.join(","))
    }

    #[test]
    fn the_guide_example_is_valid() {
        let metric = parse(&with("cpu", "78.5")).unwrap();
        assert_eq!(metric.time_ms(), 1_730_707_200_000);
        assert_eq!(metric.service(), "log-generator");
        assert_eq!(metric.pod_name(), "test-pod-123");
        assert_eq!(metric.namespace(), "default");
        assert_eq!(metric.node_name(), "kind-control-plane");
        assert_eq!(metric.cpu(), 78.5);
        assert_eq!(metric.memory(), 512.3);
    }

    #[test]
    fn escaped_strings_are_unescaped() {
        let metric = parse(&with("podName", r#""pod-\u0061""#)).unwrap();
        assert_eq!(metric.pod_name(), "pod-a");
    }

    #[test]
    fn each_reason_is_reported() {
        let cases = [
            (with("cpu", "true"), Reason::WrongType),
            (with("cpu", "null"), Reason::WrongType),
            (with("timestamp", "\"1730707200000\""), Reason::WrongType),
            (with("memory", "-0.5"), Reason::OutOfRange),
            (with("cpu", "100.01"), Reason::OutOfRange),
            (with("timestamp", "-5"), Reason::OutOfRange),
            (
                with("timestamp", "18446744073709551615"),
                Reason::OutOfRange,
            ),
            (
                with("timestamp", &(NOW_MS + 300_001).to_string()),
                Reason::FutureTimestamp,
            ),
            (with("service", "\"\""), Reason::EmptyString),
            (with("namespace", "\"\\t \""), Reason::EmptyString),
            (
                with("nodeName", &format!("\"{}\"", "n".repeat(254))),
                Reason::TooLong,
            ),
            (with("podName", "\"pod\\u0000\""), Reason::ControlCharacter),
            (with("podName", "[]"), Reason::WrongType),
            ("{\"cpu\":1}".to_owned(), Reason::MissingField),
            ("42".to_owned(), Reason::NotAnObject),
            (
                r#"[1730707200000,"s","p","n","d",1.0,2.0]"#.to_owned(),
                Reason::NotAnObject,
            ),
            ("[]".to_owned(), Reason::NotAnObject),
            (with("cpu", "100.00000000000001"), Reason::OutOfRange),
            ("{\"cpu\":".to_owned(), Reason::InvalidJson),
        ];
        for (payload, reason) in cases {
            let rejection = parse(&payload).expect_err(&payload);
            assert_eq!(rejection.reason, reason, "{payload}: {rejection}");
        }
        let bad = ValidMetric::parse(b"{\"service\":\"\xff\"}", &RULES, NOW_MS).unwrap_err();
        assert_eq!(bad.reason, Reason::InvalidUtf8);
    }

    #[test]
    fn limits_are_inclusive() {
        assert!(parse(&with("cpu", "0")).is_ok());
        assert!(parse(&with("cpu", "100")).is_ok());
        assert!(parse(&with("timestamp", "0")).is_ok());
        assert!(parse(&with("timestamp", &(NOW_MS + 300_000).to_string())).is_ok());
        assert!(parse(&with("nodeName", &format!("\"{}\"", "é".repeat(253)))).is_ok());
    }

    #[test]
    fn a_metric_older_than_the_retention_window_is_too_old() {
        let day_ms = 86_400_000;
        let rules = Rules {
            max_age_ms: Some(30 * day_ms),
            ..RULES
        };
        let at = |ms: i64| {
            ValidMetric::parse(
                with("timestamp", &ms.to_string()).as_bytes(),
                &rules,
                NOW_MS,
            )
        };
        assert_eq!(
            at(NOW_MS - 30 * day_ms - 1).unwrap_err().reason,
            Reason::TooOld
        );
        assert_eq!(at(1_730_707_200_000).unwrap_err().reason, Reason::TooOld);
        assert!(
            at(NOW_MS - 30 * day_ms).is_ok(),
            "the window's edge is inside"
        );
        assert!(at(NOW_MS).is_ok());
        assert!(
            parse(&with("timestamp", "0")).is_ok(),
            "no window: any past is valid"
        );
    }

    #[test]
    fn held_names_are_shared_and_give_the_same_answers() {
        let mut names = Names::new(NAMES_MAX_BYTES);
        let guide = with("cpu", "78.5");
        let first = ValidMetric::parse_with(guide.as_bytes(), &RULES, NOW_MS, &mut names).unwrap();
        let second = ValidMetric::parse_with(guide.as_bytes(), &RULES, NOW_MS, &mut names).unwrap();
        assert_eq!(first, parse(&guide).unwrap());
        assert_eq!(second, first);
        assert!(Arc::ptr_eq(&first.service, &second.service));
        assert!(Arc::ptr_eq(&first.node_name, &second.node_name));
        assert_eq!(names.len(), 4);
        // A name that fails its checks is never held, so it fails every time.
        for _ in 0..2 {
            let bad = with("podName", "\"pod\\u0007\"");
            let rejection =
                ValidMetric::parse_with(bad.as_bytes(), &RULES, NOW_MS, &mut names).unwrap_err();
            assert_eq!(rejection, parse(&bad).unwrap_err());
        }
        assert_eq!(names.len(), 4);
    }

    #[test]
    fn held_names_stay_within_their_budget() {
        let mut names = Names::new(2_000);
        for pod in 0..1_000 {
            let payload = with("podName", &format!("\"pod-{pod}\""));
            let metric =
                ValidMetric::parse_with(payload.as_bytes(), &RULES, NOW_MS, &mut names).unwrap();
            assert_eq!(metric.pod_name(), format!("pod-{pod}"));
            assert!(names.bytes <= 2_000, "{} bytes held", names.bytes);
        }
        assert!(names.len() < 50, "{} names held", names.len());
        let long = "n".repeat(253);
        let mut tiny = Names::new(100);
        let payload = with("nodeName", &format!("\"{long}\""));
        let metric =
            ValidMetric::parse_with(payload.as_bytes(), &RULES, NOW_MS, &mut tiny).unwrap();
        assert_eq!(metric.node_name(), long);
        assert!(tiny.len() <= 3 && tiny.bytes <= 100);
    }

    #[test]
    fn the_field_is_named_in_the_detail() {
        let rejection = parse(&with("memory", "{\"value\":1}")).unwrap_err();
        assert_eq!(
            rejection.detail,
            "`memory` must be a number, found an object"
        );
    }
}
