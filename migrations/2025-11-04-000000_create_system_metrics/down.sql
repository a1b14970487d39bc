DROP TABLE IF EXISTS kafka_offsets;
DROP TABLE IF EXISTS system_metrics;
