//! The series that the metadata endpoints (series, label names, label values) list: the
//! distinct label sets of `system_metrics` with a row in a time range.
//!
//! The database reduces the rows to one per series (`SELECT DISTINCT`), where the engine's
//! storage would hand over every sample of the range: a listing over days reads no more
//! than the series there are. Equality matchers on label columns narrow the rows in SQL;
//! every matcher is then applied exactly by the engine's own [`matches`] (RE2, as
//! Prometheus), so that a selector lists the same series here as it selects in a query.
//! Label values are bound parameters; only column names from [`LABEL_COLUMNS`] are written
//! into the SQL.

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use futures_util::FutureExt;
use promql_parser::label::{MatchOp, Matcher, Matchers};

use super::engine::matches;
use super::{JOB, LABEL_COLUMNS, Labels, Metric, NAME_LABEL, PromError, label_column};
use crate::db::queries::{self, Bind, DbPool, Params};

/// One distinct series: its four label columns.
#[derive(Debug, QueryableByName)]
struct SeriesRow {
    #[diesel(sql_type = Text)]
    service: String,
    #[diesel(sql_type = Text)]
    pod_name: String,
    #[diesel(sql_type = Text)]
    namespace: String,
    #[diesel(sql_type = Text)]
    node_name: String,
}

impl SeriesRow {
    /// The labels of the row's series of `metric`.
    fn labels(&self, metric: Metric) -> Labels {
        let mut labels = Labels::new();
        labels.insert(NAME_LABEL.into(), metric.name().into());
        labels.insert("job".into(), JOB.into());
        for (label, column) in LABEL_COLUMNS {
            let value = match column {
                "service" => &self.service,
                "pod_name" => &self.pod_name,
                "namespace" => &self.namespace,
                _ => &self.node_name,
            };
            labels.insert(label.into(), value.clone());
        }
        labels
    }
}

/// The series some selector in `selectors` matches with a row in `(from_ms, to_ms]`, each
/// once, sorted; more than `limit` of them is refused.
pub(crate) async fn series(
    pool: &DbPool,
    selectors: &[Matchers],
    from_ms: i64,
    to_ms: i64,
    limit: usize,
) -> Result<Vec<Labels>, PromError> {
    let mut all = std::collections::BTreeSet::new();
    for selector in selectors {
        let metrics: Vec<Metric> = Metric::ALL
            .into_iter()
            .filter(|m| may_match(selector, *m))
            .collect();
        if metrics.is_empty() {
            continue;
        }
        for row in distinct(pool, selector, from_ms, to_ms, limit).await? {
            for metric in &metrics {
                let labels = row.labels(*metric);
                if matches(selector, &labels) {
                    all.insert(labels);
                }
            }
        }
        if all.len() > limit {
            return Err(too_many(limit));
        }
    }
    Ok(all.into_iter().collect())
}

/// Whether the labels that are no column (`__name__`, `job`, any other, empty on every
/// series) let `selector` match a series of `metric`: if not, no row needs reading.
fn may_match(selector: &Matchers, metric: Metric) -> bool {
    let decides = |m: &Matcher| {
        label_column(&m.name).is_some()
            || m.is_match(match m.name.as_str() {
                NAME_LABEL => metric.name(),
                "job" => JOB,
                _ => "",
            })
    };
    selector.matchers.iter().all(decides)
        && (selector.or_matchers.is_empty()
            || selector
                .or_matchers
                .iter()
                .any(|group| group.iter().all(decides)))
}

/// The distinct label columns of the rows in `(from_ms, to_ms]` that the selector's
/// equality matchers on columns keep; more than `limit` rows is refused.
async fn distinct(
    pool: &DbPool,
    selector: &Matchers,
    from_ms: i64,
    to_ms: i64,
    limit: usize,
) -> Result<Vec<SeriesRow>, PromError> {
    let mut params = Params::default();
    let mut conditions = vec![
        format!("time > {}", params.add(Bind::Time(time(from_ms)?))),
        format!("time <= {}", params.add(Bind::Time(time(to_ms)?))),
    ];
    for m in &selector.matchers {
        if let (MatchOp::Equal, Some(column)) = (&m.op, label_column(&m.name)) {
            let placeholder = params.add(Bind::Text(m.value.clone()));
            conditions.push(format!("{column} = {placeholder}"));
        }
    }
    let sql = format!(
        "SELECT DISTINCT service, pod_name, namespace, node_name
         FROM system_metrics WHERE {conditions}
         LIMIT {limit}",
        conditions = conditions.join(" AND "),
        limit = params.add(Bind::BigInt(limit as i64 + 1)),
    );
    let conn = queries::connection(pool).await?;
    let query = params.bind_to(sql);
    let rows: Vec<SeriesRow> =
        queries::bounded(pool, conn, |conn| query.load::<SeriesRow>(conn).boxed()).await?;
    if rows.len() > limit {
        return Err(too_many(limit));
    }
    Ok(rows)
}

fn time(ms: i64) -> Result<DateTime<Utc>, PromError> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| PromError::BadData("time out of range".into()))
}

fn too_many(limit: usize) -> PromError {
    PromError::Execution(format!("more than {limit} series (PROMETHEUS_MAX_SAMPLES)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(q: &str) -> Matchers {
        match super::super::parse(q).unwrap() {
            promql_parser::parser::Expr::VectorSelector(vs) => {
                super::super::engine::selector_matchers(&vs)
            }
            other => panic!("{q}: not a selector: {other:?}"),
        }
    }

    #[test]
    fn only_selectors_that_may_match_a_metric_read_rows() {
        for (q, cpu, memory) in [
            (r#"{pod=~"a.*"}"#, true, true),
            ("pod_cpu_usage_percent", true, false),
            (r#"{__name__=~"pod_mem.*"}"#, false, true),
            (r#"pod_memory_usage_mib{job="other"}"#, false, false),
            (r#"{job="panopticon", other=""}"#, true, true),
            (r#"{other="x"}"#, false, false),
            ("up", false, false),
            (
                r#"{pod="a" or __name__="pod_cpu_usage_percent"}"#,
                true,
                true,
            ),
            (
                r#"{job="x" or __name__="pod_cpu_usage_percent"}"#,
                true,
                false,
            ),
        ] {
            let s = selector(q);
            assert_eq!(may_match(&s, Metric::Cpu), cpu, "{q}: cpu");
            assert_eq!(may_match(&s, Metric::Memory), memory, "{q}: memory");
        }
    }

    #[test]
    fn a_row_carries_every_label_of_its_series() {
        let row = SeriesRow {
            service: "alpha".into(),
            pod_name: "a-1".into(),
            namespace: "one".into(),
            node_name: "n1".into(),
        };
        let labels = row.labels(Metric::Memory);
        let names: Vec<&str> = labels.keys().map(String::as_str).collect();
        assert_eq!(names, super::super::LABEL_NAMES);
        assert_eq!(labels["__name__"], "pod_memory_usage_mib");
        assert_eq!(labels["pod"], "a-1");
        assert_eq!(labels["node"], "n1");
        assert_eq!(labels["namespace"], "one");
        assert_eq!(labels["service"], "alpha");
        assert_eq!(labels["job"], "panopticon");
    }
}
