-- Exact per-minute summaries of system_metrics, so that PromQL reads one row per series and
-- minute where it can instead of every sample. A summary covers the right-closed minute
-- (minute_ms - 60000, minute_ms] of Unix milliseconds (sample times floored to the
-- millisecond, as PromQL reads them): windows ending on whole minutes are unions of whole
-- summaries. Kept by statement triggers on system_metrics in the transaction of each
-- statement, from the rows it really inserted, deleted or changed, whoever writes them (the
-- writer's COPY, its merge that skips rows stored already, a person's DELETE).
--
-- Only on a plain table: TimescaleDB refuses triggers with transition tables on hypertables,
-- and its retention drops chunks without firing triggers. There the tables stay empty and
-- PromQL reads raw samples; readers tell by the triggers' presence.

CREATE TABLE system_metrics_series (
    id        INTEGER GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    service   TEXT COLLATE "C" NOT NULL,
    pod_name  TEXT COLLATE "C" NOT NULL,
    namespace TEXT COLLATE "C" NOT NULL,
    node_name TEXT COLLATE "C" NOT NULL,
    UNIQUE (pod_name, namespace, service, node_name)
);

CREATE TABLE system_metrics_minutes (
    series       INTEGER NOT NULL REFERENCES system_metrics_series (id),
    minute_ms    BIGINT  NOT NULL,
    samples      INTEGER NOT NULL,
    first_ms     BIGINT  NOT NULL,
    last_ms      BIGINT  NOT NULL,
    cpu_first    DOUBLE PRECISION NOT NULL,
    cpu_last     DOUBLE PRECISION NOT NULL,
    cpu_min      DOUBLE PRECISION NOT NULL,
    cpu_max      DOUBLE PRECISION NOT NULL,
    cpu_sum      DOUBLE PRECISION NOT NULL,
    memory_first DOUBLE PRECISION NOT NULL,
    memory_last  DOUBLE PRECISION NOT NULL,
    memory_min   DOUBLE PRECISION NOT NULL,
    memory_max   DOUBLE PRECISION NOT NULL,
    memory_sum   DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (series, minute_ms)
);
CREATE INDEX system_metrics_minutes_minute_idx ON system_metrics_minutes (minute_ms);

-- The statements that merge the summaries of a set of rows (a query with the columns of
-- system_metrics) into their series and minutes; the series are registered first. They are
-- made here and run by the trigger itself: a trigger's transition tables are visible only to
-- the statements of its own function.
CREATE FUNCTION system_metrics_summary_statements(rows_sql TEXT) RETURNS TEXT[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY[format(
        'INSERT INTO system_metrics_series (service, pod_name, namespace, node_name)
         SELECT DISTINCT service, pod_name, namespace, node_name FROM (%s) r
         ON CONFLICT DO NOTHING', rows_sql),
    format(
        'INSERT INTO system_metrics_minutes AS m
         SELECT s.id, r.minute_ms, count(*), min(r.ms), max(r.ms),
                (array_agg(r.cpu ORDER BY r.ms))[1], (array_agg(r.cpu ORDER BY r.ms DESC))[1],
                min(r.cpu), max(r.cpu), sum(r.cpu),
                (array_agg(r.memory ORDER BY r.ms))[1], (array_agg(r.memory ORDER BY r.ms DESC))[1],
                min(r.memory), max(r.memory), sum(r.memory)
         FROM (SELECT t.*, ms, floor((ms + 59999)::numeric / 60000)::int8 * 60000 AS minute_ms
               FROM (%s) t, LATERAL (SELECT floor(extract(epoch FROM t.time) * 1000)::int8 AS ms) x) r
         JOIN system_metrics_series s USING (service, pod_name, namespace, node_name)
         GROUP BY s.id, r.minute_ms
         ON CONFLICT (series, minute_ms) DO UPDATE SET
             samples = m.samples + excluded.samples,
             first_ms = least(m.first_ms, excluded.first_ms),
             last_ms = greatest(m.last_ms, excluded.last_ms),
             cpu_first = CASE WHEN excluded.first_ms < m.first_ms THEN excluded.cpu_first ELSE m.cpu_first END,
             cpu_last = CASE WHEN excluded.last_ms > m.last_ms THEN excluded.cpu_last ELSE m.cpu_last END,
             cpu_min = least(m.cpu_min, excluded.cpu_min),
             cpu_max = greatest(m.cpu_max, excluded.cpu_max),
             cpu_sum = m.cpu_sum + excluded.cpu_sum,
             memory_first = CASE WHEN excluded.first_ms < m.first_ms THEN excluded.memory_first ELSE m.memory_first END,
             memory_last = CASE WHEN excluded.last_ms > m.last_ms THEN excluded.memory_last ELSE m.memory_last END,
             memory_min = least(m.memory_min, excluded.memory_min),
             memory_max = greatest(m.memory_max, excluded.memory_max),
             memory_sum = m.memory_sum + excluded.memory_sum', rows_sql)]
$$;

-- Rows inserted: merged into their minutes.
CREATE FUNCTION system_metrics_minutes_insert() RETURNS TRIGGER LANGUAGE plpgsql AS $$
DECLARE
    statement TEXT;
BEGIN
    FOREACH statement IN ARRAY system_metrics_summary_statements('SELECT * FROM new_rows') LOOP
        EXECUTE statement;
    END LOOP;
    RETURN NULL;
END
$$;

-- Rows deleted or changed: their minutes (before and after a change) are summarised again
-- from what the table holds.
CREATE FUNCTION system_metrics_minutes_change() RETURNS TRIGGER LANGUAGE plpgsql AS $$
DECLARE
    minute TEXT := 'floor((floor(extract(epoch FROM time) * 1000) + 59999)::numeric / 60000)::int8 * 60000';
    statement TEXT;
BEGIN
    CREATE TEMPORARY TABLE IF NOT EXISTS system_metrics_touched
        (series INTEGER, minute_ms BIGINT, PRIMARY KEY (series, minute_ms)) ON COMMIT DROP;
    EXECUTE format(
        'INSERT INTO system_metrics_touched
         SELECT DISTINCT s.id, %s FROM old_rows JOIN system_metrics_series s
             USING (service, pod_name, namespace, node_name)
         ON CONFLICT DO NOTHING', minute);
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO system_metrics_series (service, pod_name, namespace, node_name)
        SELECT DISTINCT service, pod_name, namespace, node_name FROM new_rows
        ON CONFLICT DO NOTHING;
        EXECUTE format(
            'INSERT INTO system_metrics_touched
             SELECT DISTINCT s.id, %s FROM new_rows JOIN system_metrics_series s
                 USING (service, pod_name, namespace, node_name)
             ON CONFLICT DO NOTHING', minute);
    END IF;
    DELETE FROM system_metrics_minutes m USING system_metrics_touched t
    WHERE m.series = t.series AND m.minute_ms = t.minute_ms;
    -- The time bounds, a second wider each side, only let an index narrow the rows; the
    -- millisecond bounds decide.
    FOREACH statement IN ARRAY system_metrics_summary_statements(
        'SELECT r.* FROM system_metrics_touched t
         JOIN system_metrics_series s ON s.id = t.series
         JOIN system_metrics r USING (service, pod_name, namespace, node_name)
         WHERE r.time >= to_timestamp((t.minute_ms - 61000) / 1000.0)
           AND r.time <= to_timestamp((t.minute_ms + 1000) / 1000.0)
           AND floor(extract(epoch FROM r.time) * 1000) > t.minute_ms - 60000
           AND floor(extract(epoch FROM r.time) * 1000) <= t.minute_ms') LOOP
        EXECUTE statement;
    END LOOP;
    TRUNCATE system_metrics_touched;
    RETURN NULL;
END
$$;

CREATE FUNCTION system_metrics_minutes_truncate() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM system_metrics_minutes;
    RETURN NULL;
END
$$;

DO $$
DECLARE
    hypertable BOOLEAN := FALSE;
    statement TEXT;
BEGIN
    IF to_regclass('_timescaledb_catalog.hypertable') IS NOT NULL THEN
        EXECUTE 'SELECT EXISTS (SELECT 1 FROM _timescaledb_catalog.hypertable
                                WHERE table_name = ''system_metrics'')' INTO hypertable;
    END IF;
    IF hypertable THEN
        RAISE NOTICE 'system_metrics is a hypertable: no minute summaries, PromQL reads raw samples';
        RETURN;
    END IF;
    CREATE TRIGGER system_metrics_minutes_insert AFTER INSERT ON system_metrics
        REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
        EXECUTE FUNCTION system_metrics_minutes_insert();
    CREATE TRIGGER system_metrics_minutes_delete AFTER DELETE ON system_metrics
        REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
        EXECUTE FUNCTION system_metrics_minutes_change();
    CREATE TRIGGER system_metrics_minutes_update AFTER UPDATE ON system_metrics
        REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
        EXECUTE FUNCTION system_metrics_minutes_change();
    CREATE TRIGGER system_metrics_minutes_truncate AFTER TRUNCATE ON system_metrics
        FOR EACH STATEMENT EXECUTE FUNCTION system_metrics_minutes_truncate();
    FOREACH statement IN ARRAY system_metrics_summary_statements('SELECT * FROM system_metrics') LOOP
        EXECUTE statement;
    END LOOP;
END
$$;
