DROP INDEX IF EXISTS system_metrics_identity_idx;
