//! The pipeline: [`kafka_consumer::KafkaConsumer`] → [`validator::Validator`] →
//! [`batch_writer::BatchWriter`] → PostgreSQL; what they send each other is in [`messages`].
//!
//! Records travel in chunks, one actor message per chunk. Every hand-off is an awaited `send`
//! into a bounded mailbox, so a slow database fills the writer's mailbox, which parks the
//! validator, which parks the consumer, which pauses its partitions.

pub mod batch_writer;
pub mod kafka_consumer;
pub mod messages;
pub mod summarizer;
pub mod validator;
pub mod writers;
