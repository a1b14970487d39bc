-- Queries by time alone, namespace or node (the API's default view: the last hour) need an
-- index on time. create_hypertable makes this very index on TimescaleDB; the name matches.
CREATE INDEX IF NOT EXISTS system_metrics_time_idx ON system_metrics (time DESC);
