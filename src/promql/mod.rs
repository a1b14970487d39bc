//! PromQL over the stored metrics, with Prometheus 3's semantics for float samples. A query
//! is parsed by `promql-parser` ([`parse`]), then evaluated by [`engine`] over the samples
//! that [`store`] reads from PostgreSQL (raw rows, or per-minute summaries where they give
//! the same answer). What is not evaluated (native histograms, experimental functions) is
//! refused by name. [`metadata`] lists the series the metadata endpoints name.
//!
//! Each row of `system_metrics` is two samples at its `time`: `pod_cpu_usage_percent` (`cpu`)
//! and `pod_memory_usage_mib` (`memory`), with the labels `service`, `pod` (`pod_name`),
//! `namespace`, `node` (`node_name`) and `job="panopticon"`.

pub(crate) mod engine;
pub(crate) mod metadata;
pub(crate) mod store;

use std::collections::BTreeMap;

/// The name of the metric label.
pub(crate) const NAME_LABEL: &str = "__name__";
/// The `job` every series carries.
pub(crate) const JOB: &str = "panopticon";
/// How far back an instant vector selector looks for a sample (Prometheus's default).
pub(crate) const LOOKBACK_MS: i64 = 300_000;

/// A stored metric: its name, the column it is read from, and its help text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Metric {
    Cpu,
    Memory,
}

impl Metric {
    pub(crate) const ALL: [Metric; 2] = [Metric::Cpu, Metric::Memory];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Metric::Cpu => "pod_cpu_usage_percent",
            Metric::Memory => "pod_memory_usage_mib",
        }
    }

    pub(crate) fn column(self) -> &'static str {
        match self {
            Metric::Cpu => "cpu",
            Metric::Memory => "memory",
        }
    }

    pub(crate) fn help(self) -> &'static str {
        match self {
            Metric::Cpu => "CPU usage of the pod, percent of one core (column cpu)",
            Metric::Memory => "Memory usage of the pod, MiB (column memory)",
        }
    }
}

/// A label a series carries and the column holding it; `job` and `__name__` are not columns.
pub(crate) const LABEL_COLUMNS: [(&str, &str); 4] = [
    ("namespace", "namespace"),
    ("node", "node_name"),
    ("pod", "pod_name"),
    ("service", "service"),
];

/// Every label name a series carries, sorted.
pub(crate) const LABEL_NAMES: [&str; 6] =
    ["__name__", "job", "namespace", "node", "pod", "service"];

/// The column of a label, if it is one.
pub(crate) fn label_column(label: &str) -> Option<&'static str> {
    LABEL_COLUMNS
        .iter()
        .find(|(name, _)| *name == label)
        .map(|(_, column)| *column)
}

/// A series' labels, sorted by name.
pub(crate) type Labels = BTreeMap<String, String>;

/// Why a query has no answer; each becomes one `errorType` of the Prometheus envelope.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum PromError {
    /// The query or a parameter is malformed (400 `bad_data`).
    #[error("{0}")]
    BadData(String),
    /// The query is valid but cannot be answered: not supported here, too many samples, an
    /// ambiguous match (422 `execution`).
    #[error("{0}")]
    Execution(String),
    /// The database cannot answer (503 `unavailable`).
    #[error("{0}")]
    Unavailable(String),
}

impl PromError {
    pub(crate) fn unsupported(what: impl std::fmt::Display) -> PromError {
        PromError::Execution(format!("not supported by Panopticon: {what}"))
    }
}

impl From<crate::db::queries::QueryError> for PromError {
    fn from(e: crate::db::queries::QueryError) -> PromError {
        use crate::db::queries::QueryError;
        match e {
            // An error of the statement itself (a regular expression PostgreSQL refuses, say)
            // is the query's; the rest is the database being unavailable.
            QueryError::Query(diesel::result::Error::DatabaseError(_, info)) => {
                log::warn!("PromQL query failed: {}", info.message());
                PromError::Execution(format!(
                    "the database refused the query: {}",
                    info.message()
                ))
            }
            other => {
                log::warn!("PromQL query failed: {other}");
                PromError::Unavailable(format!("database unavailable: {other}"))
            }
        }
    }
}

/// The steps a query is evaluated at: `start`, `start + step`, … `n` of them, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Steps {
    pub(crate) start_ms: i64,
    pub(crate) step_ms: i64,
    pub(crate) n: usize,
    /// The `end` the query asked for, which `end()` names: at or after the last step.
    pub(crate) end_ms: i64,
}

impl Steps {
    pub(crate) fn instant(at_ms: i64) -> Steps {
        Steps {
            start_ms: at_ms,
            step_ms: 1,
            n: 1,
            end_ms: at_ms,
        }
    }

    pub(crate) fn time(&self, i: usize) -> i64 {
        self.start_ms + i as i64 * self.step_ms
    }
}

/// One series over the steps: its labels and its value at each step, if it has one.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Series {
    pub(crate) labels: Labels,
    pub(crate) points: Vec<Option<f64>>,
}

/// What an expression evaluates to over the steps.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// One number at each step.
    Scalar(Vec<f64>),
    /// Series, each with a value at some steps.
    Vector(Vec<Series>),
    /// A string literal.
    String(String),
    /// Series of samples: an instant query of a range vector (`x[5m]`), answered as a matrix.
    Matrix(Vec<engine::SampleSeries>),
}

/// The bounds of one evaluation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Most samples (series × steps) held at once, and most rows one statement may return.
    pub(crate) max_samples: usize,
    /// Widest window one selector may read.
    pub(crate) max_range_ms: i64,
}

/// Formats a sample value as Prometheus does: shortest round-trip, `NaN`, `+Inf`, `-Inf`.
pub(crate) fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// Parses, plans and evaluates `query` over `steps`.
pub(crate) async fn query(
    pool: &crate::db::queries::DbPool,
    query: &str,
    steps: Steps,
    limits: Limits,
) -> Result<Value, PromError> {
    let expr = parse(query)?;
    engine::evaluate(&store::PgStorage::new(pool), &expr, steps, limits).await
}

/// Parses a query; the parser's own errors are `bad_data`, and so is a panic of the parser
/// (caught, so that no input can take a worker down).
pub(crate) fn parse(query: &str) -> Result<promql_parser::parser::Expr, PromError> {
    if query.trim().is_empty() {
        return Err(PromError::BadData("empty query".into()));
    }
    let owned = query.to_owned();
    match std::panic::catch_unwind(move || promql_parser::parser::parse(&owned)) {
        Ok(Ok(expr)) => Ok(expr),
        Ok(Err(e)) => Err(PromError::BadData(format!("parse error: {e}"))),
        Err(_) => Err(PromError::BadData(
            "parse error: the query could not be parsed".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_format_like_prometheus() {
        assert_eq!(format_value(78.5), "78.5");
        assert_eq!(format_value(1.0), "1");
        assert_eq!(format_value(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
    }
}
