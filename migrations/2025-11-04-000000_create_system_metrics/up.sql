-- One row per pod sample, as Fluent Bit reports it.
CREATE TABLE system_metrics (
    time      TIMESTAMPTZ      NOT NULL,
    service   TEXT             NOT NULL,
    pod_name  TEXT             NOT NULL,
    cpu       DOUBLE PRECISION NOT NULL,
    memory    DOUBLE PRECISION NOT NULL,
    namespace TEXT             NOT NULL,
    node_name TEXT             NOT NULL
);

-- What users ask: one service or one pod, newest first.
CREATE INDEX system_metrics_service_time_idx ON system_metrics (service, time DESC);
CREATE INDEX system_metrics_pod_time_idx ON system_metrics (pod_name, time DESC);

-- Where each partition of the topic stands: the next offset whose rows are not yet stored.
-- Written in the same transaction as the rows it covers.
CREATE TABLE kafka_offsets (
    consumer_group TEXT        NOT NULL,
    topic          TEXT        NOT NULL,
    partition      INTEGER     NOT NULL,
    next_offset    BIGINT      NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

-- TimescaleDB where the server offers it; a plain table otherwise. The extension can be
-- listed as available and still fail to load (not in shared_preload_libraries, no privilege):
-- that too leaves a plain table, and the service logs which it got.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS timescaledb;
            PERFORM create_hypertable('system_metrics', 'time',
                                      chunk_time_interval => INTERVAL '1 day',
                                      if_not_exists => TRUE);
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'timescaledb not usable, system_metrics stays a plain table: %', SQLERRM;
        END;
    END IF;
END
$$;
