-- A metric is identified by its pod (namespace, pod, service) and its time: the same sample
-- delivered twice (a producer retry, a redelivery after a crash or a rebalance) is stored once.
-- Rows stored twice before this migration are reduced to one first.
DELETE FROM system_metrics a
USING system_metrics b
WHERE a.ctid < b.ctid
  AND a.time = b.time
  AND a.namespace = b.namespace
  AND a.pod_name = b.pod_name
  AND a.service = b.service;

CREATE UNIQUE INDEX system_metrics_identity_idx
    ON system_metrics (pod_name, time, namespace, service);
