-- A version for each hour of summaries, so that a reader may keep summaries it has read and
-- know, in a later snapshot, whether they are still what the table holds.
--
-- The hour `hour` holds the minutes (hour × 3600000, (hour + 1) × 3600000] of minute ends
-- (Unix ms), right-closed like the minutes: floor((minute_ms - 60000) / 3600000). Every
-- statement that inserts, updates or deletes summaries of an hour gives that hour a fresh
-- version, in the statement's own transaction (whoever runs it: the summarizer of any
-- instance, a cleanup, a person), and TRUNCATE removes every version. A version is a random
-- UUID: never handed out twice, across TRUNCATE, in another database, or in this one
-- dropped and made again, so an hour whose version in a snapshot equals the one it had in
-- an earlier snapshot holds the same summaries in both; an hour without a version row is
-- not to be kept.
CREATE TABLE system_metrics_minutes_versions (
    hour    BIGINT PRIMARY KEY,
    version UUID   NOT NULL
);

CREATE FUNCTION system_metrics_minutes_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        INSERT INTO system_metrics_minutes_versions (hour, version)
        SELECT hour, gen_random_uuid()
        FROM (SELECT DISTINCT floor((minute_ms - 60000)::numeric / 3600000)::int8 AS hour
              FROM old_rows) hours
        ON CONFLICT (hour) DO UPDATE SET version = excluded.version;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO system_metrics_minutes_versions (hour, version)
        SELECT hour, gen_random_uuid()
        FROM (SELECT DISTINCT floor((minute_ms - 60000)::numeric / 3600000)::int8 AS hour
              FROM new_rows) hours
        ON CONFLICT (hour) DO UPDATE SET version = excluded.version;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER system_metrics_minutes_inserted AFTER INSERT ON system_metrics_minutes
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION system_metrics_minutes_changed();
CREATE TRIGGER system_metrics_minutes_updated AFTER UPDATE ON system_metrics_minutes
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION system_metrics_minutes_changed();
CREATE TRIGGER system_metrics_minutes_deleted AFTER DELETE ON system_metrics_minutes
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION system_metrics_minutes_changed();

CREATE FUNCTION system_metrics_minutes_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM system_metrics_minutes_versions;
    RETURN NULL;
END $$;

CREATE TRIGGER system_metrics_minutes_truncated AFTER TRUNCATE ON system_metrics_minutes
    FOR EACH STATEMENT EXECUTE FUNCTION system_metrics_minutes_truncated();

-- The summaries already made.
INSERT INTO system_metrics_minutes_versions (hour, version)
SELECT hour, gen_random_uuid()
FROM (SELECT DISTINCT floor((minute_ms - 60000)::numeric / 3600000)::int8 AS hour
      FROM system_metrics_minutes) hours;
