CREATE OR REPLACE FUNCTION system_metrics_minutes_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM system_metrics_minutes_versions;
    RETURN NULL;
END $$;

ALTER TABLE system_metrics_minutes_versions DROP COLUMN packed;
DROP TABLE system_metrics_hours;
