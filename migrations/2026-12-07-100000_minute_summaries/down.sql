DROP TABLE system_metrics_pending;
DROP TABLE system_metrics_minutes;
