DROP INDEX IF EXISTS system_metrics_time_idx;
