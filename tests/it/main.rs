//! The black-box tests, one binary of one module per subject: the harness in `tests/common`
//! compiles once, and the single-node Apache Kafka broker it starts serves every module (a topic
//! and a group per test). Tests that stop, freeze, reconfigure or secure a broker start brokers
//! of their own.

#[path = "../common/mod.rs"]
mod common;

mod api;
mod broker_outage;
mod dashboard;
mod first_deployment;
mod fluent_bit_records;
mod group_protocols;
mod guide_kafka_tools;
mod http_auth;
mod kafka_acls;
mod kafka_faults;
mod kafka_retries;
mod kafka_sasl;
mod kafka_tls;
mod network_outage;
mod own_postgres;
mod pipeline;
mod postgres_tls;
mod prometheus_api;
mod prometheus_client;
mod promql_differential;
mod refused_offsets;
mod reliability;
mod secrets;
mod startup;
mod status_figures;
mod summaries;
mod validator_fuzz;
