-- One row per pod sample, as Fluent Bit reports it.
-- Names compare bytewise (COLLATE "C"): Kubernetes names are ASCII, and the indexes on them are
-- maintained for every row, where a linguistic collation costs much of the insert time.
CREATE TABLE system_metrics (
    time      TIMESTAMPTZ      NOT NULL,
    service   TEXT COLLATE "C" NOT NULL,
    pod_name  TEXT COLLATE "C" NOT NULL,
    cpu       DOUBLE PRECISION NOT NULL,
    memory    DOUBLE PRECISION NOT NULL,
    namespace TEXT COLLATE "C" NOT NULL,
    node_name TEXT COLLATE "C" NOT NULL
);

-- What users ask: one service, newest first. One pod, newest first, is served by the unique
-- index of a later migration, which leads with pod_name and time.
CREATE INDEX system_metrics_service_time_idx ON system_metrics (service, time DESC);

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
-- listed as available and still be unusable. Not in shared_preload_libraries, CREATE EXTENSION
-- ends the connection with FATAL, which no EXCEPTION block catches: so it is only tried where
-- the library is preloaded. Any other failure (no privilege) leaves a plain table too, and the
-- service logs which it got and what is missing.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
       AND coalesce((SELECT setting ~ '(^|[\s,"/])timescaledb($|[\s,"])' FROM pg_settings
                     WHERE name = 'shared_preload_libraries'),
                    -- A user who may not read the setting: the preloaded library's own settings.
                    EXISTS (SELECT 1 FROM pg_settings
                            WHERE name = 'timescaledb.max_background_workers'
                              AND vartype = 'integer')) THEN
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
