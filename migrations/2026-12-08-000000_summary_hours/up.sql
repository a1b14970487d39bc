-- Each hour of summaries packed, once the hour is over: one row per series and hour holding
-- its minutes' summaries side by side, so that a reader of many hours reads one row per
-- series and hour instead of sixty.
--
-- A packed row holds what `system_metrics_minutes` holds for the series' minutes of the
-- hour `hour` (minute ends in (hour × 3600000, (hour + 1) × 3600000], as in
-- system_metrics_minutes_versions), each column the minutes' values in ascending minute
-- order, concatenated in PostgreSQL's binary form (int8send, int4send, float8send: big-endian):
-- minute_ms and last_ms 8 bytes a minute, samples 4, every value 8.
--
-- The rows of an hour are exact only at the version they were packed from: `packed` in
-- system_metrics_minutes_versions names it, and any change to the hour's summaries gives the
-- hour a fresh version (the triggers of 2026-12-07-170000_summary_versions), so a reader
-- takes an hour's packed rows only where, in its own snapshot, `packed = version`; else it
-- reads the hour's minutes. Pending minutes are read raw either way. Whoever packs an hour
-- replaces all of its rows and sets `packed` in one transaction.
CREATE TABLE system_metrics_hours (
    hour         BIGINT           NOT NULL,
    service      TEXT COLLATE "C" NOT NULL,
    pod_name     TEXT COLLATE "C" NOT NULL,
    namespace    TEXT COLLATE "C" NOT NULL,
    node_name    TEXT COLLATE "C" NOT NULL,
    minute_ms    BYTEA            NOT NULL,
    samples      BYTEA            NOT NULL,
    last_ms      BYTEA            NOT NULL,
    cpu_first    BYTEA            NOT NULL,
    cpu_last     BYTEA            NOT NULL,
    cpu_min      BYTEA            NOT NULL,
    cpu_max      BYTEA            NOT NULL,
    cpu_sum      BYTEA            NOT NULL,
    memory_first BYTEA            NOT NULL,
    memory_last  BYTEA            NOT NULL,
    memory_min   BYTEA            NOT NULL,
    memory_max   BYTEA            NOT NULL,
    memory_sum   BYTEA            NOT NULL,
    PRIMARY KEY (hour, pod_name, namespace, service, node_name)
-- A full hour is about 6.5 kB a row: kept in line and uncompressed (pglz gains little on
-- doubles), so that a reader of a few columns reads no TOAST.
) WITH (toast_tuple_target = 8160);

ALTER TABLE system_metrics_minutes_versions ADD COLUMN packed UUID;

-- TRUNCATE of the summaries empties the packed hours with the versions.
CREATE OR REPLACE FUNCTION system_metrics_minutes_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM system_metrics_minutes_versions;
    DELETE FROM system_metrics_hours;
    RETURN NULL;
END $$;
