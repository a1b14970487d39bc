-- Exact per-minute summaries of system_metrics, so that PromQL reads one row per series and
-- minute where it can instead of every sample.
--
-- A summary covers the right-closed minute (minute_ms - 60000, minute_ms] of Unix
-- milliseconds, sample times floored to the millisecond as PromQL reads them: a window that
-- ends on a whole minute is a union of whole summaries, and the latest sample at or before a
-- whole minute is the last of the newest non-empty summary.
--
-- Summaries are made off the write path, by the service's summarizer, from what the table
-- holds. What changed since lies in system_metrics_pending: every transaction that changes
-- sample times [from_ms, to_ms] adds a row there in the same transaction, and a minute that a
-- pending row touches is read from raw samples until the summarizer has summarised it again
-- and deleted the rows it saw. So a reader never takes a stale summary for an exact one.
CREATE TABLE system_metrics_minutes (
    service      TEXT COLLATE "C" NOT NULL,
    pod_name     TEXT COLLATE "C" NOT NULL,
    namespace    TEXT COLLATE "C" NOT NULL,
    node_name    TEXT COLLATE "C" NOT NULL,
    minute_ms    BIGINT           NOT NULL,
    samples      INTEGER          NOT NULL,
    first_ms     BIGINT           NOT NULL,
    last_ms      BIGINT           NOT NULL,
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
    PRIMARY KEY (minute_ms, pod_name, namespace, service, node_name)
);

-- Sample times changed and not yet summarised again, inclusive, in Unix milliseconds.
CREATE TABLE system_metrics_pending (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    from_ms BIGINT NOT NULL,
    to_ms   BIGINT NOT NULL,
    CHECK (from_ms <= to_ms)
);

-- Everything before the summarizer's first pass is pending: the rows already stored.
INSERT INTO system_metrics_pending (from_ms, to_ms)
SELECT floor(extract(epoch FROM min(time)) * 1000)::int8,
       floor(extract(epoch FROM max(time)) * 1000)::int8
FROM system_metrics
HAVING count(*) > 0;

-- Changes made by others than the service: a DELETE or UPDATE of samples (by a person, a
-- cleanup job) makes the old and new sample times pending in its own transaction; a TRUNCATE
-- empties the summaries and the pending ranges with the table. Statement triggers with
-- transition tables, so a statement adds at most two ranges whatever it changes. TimescaleDB
-- 2.26 takes them on a hypertable; older versions refuse transition tables there: the
-- migration then goes without, the service drops them where a conversion is refused
-- (src/db/timescale.rs), and the writer's own ranges and the summarizer's cleanup of
-- summaries older than the oldest raw sample remain. Retention drops chunks without firing
-- any trigger, whatever the version. The service's
-- own INSERTs log their ranges themselves; INSERTs made behind its back do not (README,
-- Storage).
CREATE FUNCTION system_metrics_log_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        INSERT INTO system_metrics_pending (from_ms, to_ms)
        SELECT floor(extract(epoch FROM min(time)) * 1000)::int8,
               floor(extract(epoch FROM max(time)) * 1000)::int8
        FROM old_rows HAVING count(*) > 0;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO system_metrics_pending (from_ms, to_ms)
        SELECT floor(extract(epoch FROM min(time)) * 1000)::int8,
               floor(extract(epoch FROM max(time)) * 1000)::int8
        FROM new_rows HAVING count(*) > 0;
    END IF;
    RETURN NULL;
END $$;

-- A hypertable (made by the first migration) refuses them: it goes without.
DO $$
BEGIN
    CREATE TRIGGER system_metrics_deleted AFTER DELETE ON system_metrics
        REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION system_metrics_log_changed();
    CREATE TRIGGER system_metrics_updated AFTER UPDATE ON system_metrics
        REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION system_metrics_log_changed();
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'system_metrics is a hypertable: no triggers for changes made by others: %', SQLERRM;
END
$$;

CREATE FUNCTION system_metrics_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM system_metrics_minutes;
    DELETE FROM system_metrics_pending;
    RETURN NULL;
END $$;

CREATE TRIGGER system_metrics_truncated AFTER TRUNCATE ON system_metrics
    FOR EACH STATEMENT EXECUTE FUNCTION system_metrics_truncated();
