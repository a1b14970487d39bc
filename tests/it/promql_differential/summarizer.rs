//! A stand-in for the service's summarizer, for tests and benchmarks: one statement that
//! summarises the stored samples per series and right-closed minute into
//! `system_metrics_minutes`, as the table's contract (its migration) describes, and leaves the
//! pending ranges as the writer and the summarizer would; then the service's own packing of
//! every hour summarised whole into `system_metrics_hours`.

/// Summarises every minute ending at or before `through_ms` (Unix ms), clears the pending
/// ranges, and marks the samples after it pending, as if they were written since the
/// summarizer's last pass; then packs every hour no pending range touches.
pub async fn summarise_through(
    client: &tokio_postgres::Client,
    through_ms: i64,
) -> anyhow::Result<()> {
    client
        .batch_execute(&format!(
            "BEGIN;
             DELETE FROM system_metrics_minutes;
             DELETE FROM system_metrics_pending;
             WITH s AS (
                 SELECT service, pod_name, namespace, node_name, cpu, memory,
                        floor(extract(epoch FROM time) * 1000)::int8 AS t
                 FROM system_metrics
             ), m AS (
                 SELECT *, (t + 59999) / 60000 * 60000 AS minute_ms FROM s
             )
             INSERT INTO system_metrics_minutes
             SELECT service, pod_name, namespace, node_name, minute_ms,
                    count(*)::int4, min(t), max(t),
                    (array_agg(cpu ORDER BY t))[1], (array_agg(cpu ORDER BY t DESC))[1],
                    min(cpu), max(cpu), sum(cpu),
                    (array_agg(memory ORDER BY t))[1], (array_agg(memory ORDER BY t DESC))[1],
                    min(memory), max(memory), sum(memory)
             FROM m WHERE minute_ms <= {through_ms}
             GROUP BY service, pod_name, namespace, node_name, minute_ms;
             INSERT INTO system_metrics_pending (from_ms, to_ms)
             SELECT min(t), max(t)
             FROM (SELECT floor(extract(epoch FROM time) * 1000)::int8 AS t
                   FROM system_metrics) s
             WHERE t > {through_ms}
             HAVING count(*) > 0;
             COMMIT;"
        ))
        .await?;
    panopticon::db::pack_every_hour(client, &Default::default(), i64::MAX / 2).await?;
    Ok(())
}

/// Marks `[from_ms, to_ms]` pending, as the writer does for the rows it adds there.
#[allow(dead_code)]
pub async fn mark_pending(
    client: &tokio_postgres::Client,
    from_ms: i64,
    to_ms: i64,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO system_metrics_pending (from_ms, to_ms) VALUES ($1, $2)",
            &[&from_ms, &to_ms],
        )
        .await
        .map(|_| ())
}
