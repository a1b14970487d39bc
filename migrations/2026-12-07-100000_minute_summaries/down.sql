DROP TRIGGER IF EXISTS system_metrics_truncated ON system_metrics;
DROP TRIGGER IF EXISTS system_metrics_updated ON system_metrics;
DROP TRIGGER IF EXISTS system_metrics_deleted ON system_metrics;
DROP FUNCTION system_metrics_truncated();
DROP FUNCTION system_metrics_log_changed();
DROP TABLE system_metrics_pending;
DROP TABLE system_metrics_minutes;
