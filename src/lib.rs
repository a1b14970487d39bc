//! Panopticon: consumes pod metrics that Fluent Bit produces to Kafka, validates them, and
//! stores them in TimescaleDB in batches, committing Kafka offsets only after the rows.

pub mod actors;
pub mod backoff;
pub mod config;
pub mod db;
pub mod dead_letter;
pub mod demo;
pub mod domain;
pub mod http;
pub mod kafka_security;
pub mod log_limit;
pub mod offsets;
pub mod pem;
pub mod schema;
pub mod simulate;
pub mod startup;
pub mod stats;
