//! The pipeline: [`kafka_consumer::KafkaConsumer`] → [`validator::Validator`] →
//! [`batch_writer::BatchWriter`] → PostgreSQL; what they send each other is in [`messages`].
//!
//! Records travel in chunks, one actor message per chunk. Every hand-off queues into a bounded
//! mailbox with `try_send`, so the sender goes on while the receiver works; only a full mailbox
//! makes it wait, in an awaited `send`. So a slow database fills the writer's mailbox, which
//! parks the validator, which parks the consumer, which pauses its partitions.

pub(crate) mod batch_writer;
pub(crate) mod kafka_consumer;
pub(crate) mod messages;
pub(crate) mod summarizer;
pub(crate) mod validator;
pub(crate) mod writers;
