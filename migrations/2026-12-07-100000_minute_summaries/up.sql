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
