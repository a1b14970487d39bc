//! The database's errors, and which of them a retry may cure.

use std::time::Duration;

use tokio_postgres::error::SqlState;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database URL is malformed: {0}")]
    BadUrl(String),
    #[error("cannot connect to the database at {url}: {}", describe(.source))]
    Connect {
        url: String,
        source: tokio_postgres::Error,
    },
    #[error(
        "the database server's certificate does not verify (sslmode={mode}) at {url}: {reason}; connection refused"
    )]
    Certificate {
        url: String,
        mode: &'static str,
        reason: String,
    },
    #[error(
        "the database server at {url} requires TLS but DATABASE_URL says sslmode=disable: {}", describe(.source)
    )]
    TlsRequired {
        url: String,
        source: tokio_postgres::Error,
    },
    #[error("migrations failed on {url}: {message}")]
    Migrate { url: String, message: String },
    #[error("{}", describe(.0))]
    Query(#[from] tokio_postgres::Error),
    /// The server refused a COPY before it began (no privilege to write, a server that only
    /// reads). The connection is then out of step with the server: tokio-postgres follows the
    /// server's error with a second Sync, whose answer no request awaits, so the connection
    /// must not be used again.
    #[error("{}", describe(.0))]
    CopyRefused(tokio_postgres::Error),
    /// No answer in time: the connection may be dead without being closed (a firewall or NAT
    /// dropping packets, a server failing over), so it is given up.
    #[error("the database did not answer {what} within {} ms", .limit.as_millis())]
    Timeout { what: &'static str, limit: Duration },
    #[error("{0}")]
    Internal(String),
}

impl DbError {
    /// Whether retrying the same thing later may succeed: the database is unreachable,
    /// restarting or timing out, or refuses the writer itself, rather than refusing the data.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::BadUrl(_) => false,
            DbError::Internal(_) => true,
            DbError::Connect { .. }
            | DbError::Certificate { .. }
            | DbError::TlsRequired { .. }
            | DbError::Migrate { .. } => true,
            DbError::Query(e) | DbError::CopyRefused(e) => is_transient(e),
            DbError::Timeout { .. } => true,
        }
    }

    /// The SQLSTATE of an error the server sent.
    pub(super) fn code(&self) -> Option<&SqlState> {
        match self {
            DbError::Query(e) | DbError::CopyRefused(e) => e.code(),
            _ => None,
        }
    }
}

/// Transient: the connection is gone, or the server says it is shutting down, out of
/// resources, or cancelled the statement. So is a refusal of the writer rather than of its
/// rows, since every row would be refused alike until a person puts it right: no privilege to
/// write (42501), a server that only reads (25006). Data errors (class 22, 23) are not.
pub fn is_transient(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    match error.code() {
        None => true,
        Some(code)
            if *code == SqlState::INSUFFICIENT_PRIVILEGE
                || *code == SqlState::READ_ONLY_SQL_TRANSACTION =>
        {
            true
        }
        Some(code) => {
            let class = &code.code()[..2];
            matches!(class, "08" | "53" | "57" | "58" | "40")
        }
    }
}

/// The server's own message where there is one ("db error" says nothing); otherwise the error
/// with its causes, which tokio-postgres leaves out of its own message ("error performing TLS
/// handshake" says nothing either).
pub fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = format!(
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            );
            if let Some(detail) = db.detail() {
                text.push_str(&format!("; {detail}"));
            }
            text
        }
        None => {
            let mut text = error.to_string();
            let mut cause = std::error::Error::source(error);
            while let Some(inner) = cause {
                let more = inner.to_string();
                if !text.contains(&more) {
                    text.push_str(": ");
                    text.push_str(&more);
                }
                cause = inner.source();
            }
            text
        }
    }
}
