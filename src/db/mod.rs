//! Everything that talks to PostgreSQL: connecting and its bounds ([`Timeouts`]), errors
//! ([`DbError`]), migrating, where rows go ([`Storage`]), the stored offsets
//! ([`OffsetReader`]), the REST API's queries, and the batch insert path. Only the batch writer
//! writes rows, through [`Writer`].

mod connect;
mod error;
mod migrate;
mod offsets;
pub mod queries;
mod storage;
pub(crate) mod summaries;
pub(crate) mod timescale;
pub(crate) mod tls;
mod writer;

pub use connect::{Timeouts, check_url, connect, connect_diesel, within};
pub use error::{DbError, describe, is_transient};
pub use migrate::{MIGRATIONS, migrate};
pub use offsets::{OffsetReader, OffsetScope};
pub use storage::{Found, Storage, prepare};
pub use summaries::pack_every_hour;
pub use writer::{AsMetric, COPY_PIECE_BYTES, Session, WriteOutcome, Writer, encode_copy_row};
