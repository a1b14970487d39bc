//! Panopticon: consumes pod metrics that Fluent Bit produces to Kafka, validates them, and
//! stores them in TimescaleDB in batches, committing Kafka offsets only after the rows.
//!
//! The binary, the tests and the benchmarks use what is public here; the rest is internal.

#![warn(unreachable_pub)]

pub(crate) mod actors;
pub(crate) mod backoff;
pub mod config;
pub mod db;
pub(crate) mod dead_letter;
pub mod demo;
pub mod domain;
pub mod http;
pub mod kafka_security;
pub(crate) mod log_limit;
pub mod offsets;
pub(crate) mod pem;
pub(crate) mod promql;
pub(crate) mod schema;
pub(crate) mod secret;
pub mod signal;
pub mod simulate;
pub mod startup;
pub mod stats;
