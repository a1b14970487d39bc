//! TLS to PostgreSQL, as libpq's URL parameters ask: `sslmode` (`disable`, `prefer` — the
//! default —, `require`, `verify-ca`, `verify-full`), `sslrootcert` (a PEM bundle, or `system`
//! for the system's CAs, which are also used when it is not given), and a client certificate
//! `sslcert` with its key `sslkey`. tokio-postgres's own URL parser knows only `disable`,
//! `prefer` and `require` and none of the files, so [`Target::parse`] takes these parameters
//! out of the URL and builds the OpenSSL connector itself. Every connection the service makes
//! to the database goes through a [`Target`].
//!
//! As in libpq, `prefer` and `require` encrypt without checking the server's certificate
//! (unless `sslrootcert` is given, which makes `require` check it as `verify-ca` does);
//! `verify-ca` checks that a trusted CA signed it; `verify-full` checks the host name too.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use openssl::x509::store::X509StoreBuilder;
use percent_encoding::percent_decode_str;
use postgres_openssl::MakeTlsConnector;
use tokio_postgres::config::SslMode as WireSslMode;

use crate::pem;
use crate::secret::redact_url;

use super::DbError;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Option<SslMode> {
        Some(match text {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where and how to connect: the tokio-postgres configuration and the TLS connector the URL
/// asks for.
pub(crate) struct Target {
    pub config: tokio_postgres::Config,
    pub mode: SslMode,
    pub tls: MakeTlsConnector,
    /// The URL without its password, for messages.
    pub redacted: String,
}

/// The TLS parameters of a URL.
#[derive(Debug, Default)]
struct TlsParameters {
    mode: Option<SslMode>,
    root_cert: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

impl Target {
    /// Parses the URL and reads the certificate files it names; every mistake is reported here,
    /// before any connection is tried.
    pub(crate) fn parse(url: &str) -> Result<Target, DbError> {
        let redacted = redact_url(url);
        let bad = |why: String| DbError::BadUrl(format!("{redacted} ({why})"));
        let (rest, tls) = split_tls_parameters(url).map_err(bad)?;
        let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| bad(e.to_string()))?;
        let mode = tls.mode.unwrap_or(SslMode::Prefer);
        config.ssl_mode(match mode {
            SslMode::Disable => WireSslMode::Disable,
            SslMode::Prefer => WireSslMode::Prefer,
            _ => WireSslMode::Require,
        });
        let tls = connector(mode, &tls).map_err(bad)?;
        Ok(Target {
            config,
            mode,
            tls,
            redacted,
        })
    }

    /// The error of a failed connection attempt, saying so when the server's certificate is
    /// what failed, or when the server wants TLS and `sslmode=disable` refused it.
    pub(crate) fn connect_error(&self, source: tokio_postgres::Error) -> DbError {
        let text = super::describe(&source);
        if text.contains("certificate verify failed") {
            // postgres-openssl ends the message with OpenSSL's verdict on the certificate.
            let verdict = text.rsplit(": ").next().unwrap_or_default();
            return DbError::Certificate {
                url: self.redacted.clone(),
                mode: self.mode.as_str(),
                reason: verdict.to_owned(),
            };
        }
        if self.mode == SslMode::Disable && text.contains("no encryption") {
            return DbError::TlsRequired {
                url: self.redacted.clone(),
                source,
            };
        }
        DbError::Connect {
            url: self.redacted.clone(),
            source,
        }
    }
}

/// Takes `sslmode`, `sslrootcert`, `sslcert` and `sslkey` out of a URL and gives back the
/// rest, for tokio-postgres. The key/value form (`host=… dbname=…`) is passed on as it is:
/// tokio-postgres then accepts its `sslmode` `disable`, `prefer` or `require`.
fn split_tls_parameters(url: &str) -> Result<(String, TlsParameters), String> {
    let mut tls = TlsParameters::default();
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let Some((base, query)) = url.split_once('?').filter(|_| is_url) else {
        return Ok((url.to_owned(), tls));
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| format!("`{key}` is not UTF-8 once percent-decoded"))?
            .into_owned();
        match key {
            "sslmode" => {
                tls.mode = Some(SslMode::parse(&value).ok_or_else(|| {
                    format!(
                        "sslmode `{value}` is not one of disable, prefer, require, verify-ca, verify-full"
                    )
                })?)
            }
            "sslrootcert" => tls.root_cert = Some(value),
            "sslcert" => tls.cert = Some(value.into()),
            "sslkey" => tls.key = Some(value.into()),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, tls))
}

/// The OpenSSL connector for `mode`, with the CAs and the client certificate of the URL.
fn connector(mode: SslMode, tls: &TlsParameters) -> Result<MakeTlsConnector, String> {
    let openssl = |e: openssl::error::ErrorStack| format!("OpenSSL: {e}");
    if mode == SslMode::Disable
        && (tls.root_cert.is_some() || tls.cert.is_some() || tls.key.is_some())
    {
        return Err("sslrootcert, sslcert and sslkey need an sslmode other than disable".into());
    }
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(openssl)?;
    // The system's CAs are the connector's own by default; a file of CAs replaces them.
    let roots = tls.root_cert.as_deref().filter(|r| *r != "system");
    if let Some(path) = roots {
        let mut store = X509StoreBuilder::new().map_err(openssl)?;
        for certificate in pem::certificates("sslrootcert", Path::new(path))? {
            store.add_cert(certificate).map_err(openssl)?;
        }
        builder
            .set_verify_cert_store(store.build())
            .map_err(openssl)?;
    }
    let verify = match mode {
        SslMode::Disable | SslMode::Prefer => false,
        SslMode::Require => roots.is_some(),
        SslMode::VerifyCa | SslMode::VerifyFull => true,
    };
    if !verify {
        builder.set_verify(SslVerifyMode::NONE);
    }
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            pem::key_pair("sslcert", cert, "sslkey", key)?;
            builder.set_certificate_chain_file(cert).map_err(openssl)?;
            builder
                .set_private_key_file(key, SslFiletype::PEM)
                .map_err(openssl)?;
        }
        (Some(_), None) => return Err("sslcert needs sslkey, its private key".into()),
        (None, Some(_)) => return Err("sslkey needs sslcert, its certificate".into()),
        (None, None) => {}
    }
    let mut connector = MakeTlsConnector::new(builder.build());
    let check_host = mode == SslMode::VerifyFull;
    connector.set_callback(move |connection, _host| {
        connection.set_verify_hostname(check_host);
        Ok(())
    });
    Ok(connector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_the_url() {
        let (rest, tls) = split_tls_parameters(
            "postgres://u:p@h:5432/db?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@h:5432/db?application_name=x");
        assert_eq!(tls.mode, Some(SslMode::VerifyFull));
        assert_eq!(tls.root_cert.as_deref(), Some("/etc/ca.pem"));
        let (rest, tls) = split_tls_parameters("postgres://h/db?sslmode=disable").unwrap();
        assert_eq!(rest, "postgres://h/db");
        assert_eq!(tls.mode, Some(SslMode::Disable));
    }

    #[test]
    fn mistakes_are_reported_before_connecting() {
        let error = |url: &str| match Target::parse(url) {
            Ok(_) => panic!("{url} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(error("postgres://h/db?sslmode=verify").contains("sslmode `verify`"));
        assert!(
            error("postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent.pem")
                .contains("cannot read sslrootcert")
        );
        assert!(
            error("postgres://h/db?sslmode=require&sslcert=/c.pem")
                .contains("sslcert needs sslkey")
        );
        assert!(error("postgres://u:s3cret@h/db?sslmode=verify").contains("u:***@h"));
        assert!(Target::parse("postgres://h/db?sslmode=verify-full").is_ok());
        assert!(Target::parse("postgres://h/db").is_ok());
    }
}
