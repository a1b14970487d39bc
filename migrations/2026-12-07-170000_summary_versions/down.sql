DROP TRIGGER IF EXISTS system_metrics_minutes_truncated ON system_metrics_minutes;
DROP TRIGGER IF EXISTS system_metrics_minutes_deleted ON system_metrics_minutes;
DROP TRIGGER IF EXISTS system_metrics_minutes_updated ON system_metrics_minutes;
DROP TRIGGER IF EXISTS system_metrics_minutes_inserted ON system_metrics_minutes;
DROP FUNCTION system_metrics_minutes_truncated();
DROP FUNCTION system_metrics_minutes_changed();
DROP TABLE system_metrics_minutes_versions;
