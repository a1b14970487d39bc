//! How Panopticon reaches the Kafka brokers: plaintext, TLS, SASL or SASL over TLS. The
//! settings are checked once at start-up ([`KafkaSecurity::check`]) and become librdkafka
//! properties in one place ([`KafkaSecurity::apply`]), for the consumer, the dead-letter
//! producer and `panopticon simulate` alike.

use std::fmt;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use rdkafka::config::ClientConfig;

use crate::pem;
use crate::secret::{Secret, secret_from_file};

/// librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum SecurityProtocol {
    #[default]
    #[value(name = "plaintext")]
    Plaintext,
    #[value(name = "ssl")]
    Ssl,
    #[value(name = "sasl_plaintext")]
    SaslPlaintext,
    #[value(name = "sasl_ssl")]
    SaslSsl,
}

impl SecurityProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// librdkafka's `sasl.mechanisms`: those it implements itself, without Cyrus SASL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SaslMechanism {
    #[value(name = "PLAIN")]
    Plain,
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// The Kafka security settings.
#[derive(Debug, Clone, Default, Args)]
pub struct KafkaSecurity {
    /// How the brokers are reached: plaintext, ssl (TLS), sasl_plaintext or sasl_ssl (SASL over
    /// TLS).
    #[arg(
        long,
        env = "KAFKA_SECURITY_PROTOCOL",
        value_enum,
        ignore_case = true,
        default_value = "plaintext"
    )]
    pub kafka_security_protocol: SecurityProtocol,

    /// SASL mechanism (sasl_plaintext and sasl_ssl): PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    #[arg(long, env = "KAFKA_SASL_MECHANISM", value_enum, ignore_case = true)]
    pub kafka_sasl_mechanism: Option<SaslMechanism>,

    /// SASL user name.
    #[arg(long, env = "KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,

    /// SASL password (prefer KAFKA_SASL_PASSWORD_FILE).
    #[arg(long, env = "KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub kafka_sasl_password: Option<Secret>,

    /// File holding the SASL password (a trailing newline is ignored).
    #[arg(long, env = "KAFKA_SASL_PASSWORD_FILE")]
    pub kafka_sasl_password_file: Option<PathBuf>,

    /// PEM bundle of the CAs the brokers' certificates are checked against (ssl, sasl_ssl);
    /// the system's CAs when unset.
    #[arg(long, env = "KAFKA_SSL_CA_LOCATION")]
    pub kafka_ssl_ca_location: Option<PathBuf>,

    /// PEM client certificate, for brokers that require mutual TLS (with KAFKA_SSL_KEY_LOCATION).
    #[arg(long, env = "KAFKA_SSL_CERTIFICATE_LOCATION")]
    pub kafka_ssl_certificate_location: Option<PathBuf>,

    /// PEM private key of KAFKA_SSL_CERTIFICATE_LOCATION.
    #[arg(long, env = "KAFKA_SSL_KEY_LOCATION")]
    pub kafka_ssl_key_location: Option<PathBuf>,
}

impl KafkaSecurity {
    /// Replaces the password by the content of `KAFKA_SASL_PASSWORD_FILE`, if that is set.
    pub fn read_secret_files(&mut self) -> Result<(), String> {
        self.kafka_sasl_password = secret_from_file(
            "KAFKA_SASL_PASSWORD",
            self.kafka_sasl_password.take(),
            self.kafka_sasl_password_file.as_deref(),
        )?;
        Ok(())
    }

    /// Refuses settings that cannot work: SASL without a mechanism, user or password, SASL or
    /// TLS settings the protocol would ignore, certificate files that are missing or not PEM,
    /// a client certificate without its key.
    pub fn check(&self) -> Result<(), String> {
        self.check_sasl()?;
        self.check_tls()
    }

    /// SASL: a mechanism, a user and a password where the protocol uses it, none of them
    /// where it does not.
    fn check_sasl(&self) -> Result<(), String> {
        let protocol = self.kafka_security_protocol;
        if !protocol.uses_sasl() {
            let set = [
                ("KAFKA_SASL_MECHANISM", self.kafka_sasl_mechanism.is_some()),
                ("KAFKA_SASL_USERNAME", self.kafka_sasl_username.is_some()),
                ("KAFKA_SASL_PASSWORD", self.kafka_sasl_password.is_some()),
            ]
            .into_iter()
            .find_map(|(name, set)| set.then_some(name));
            return match set {
                Some(setting) => Err(format!(
                    "{setting} is set but KAFKA_SECURITY_PROTOCOL={protocol} uses no SASL (sasl_ssl or sasl_plaintext do)"
                )),
                None => Ok(()),
            };
        }
        let Some(mechanism) = self.kafka_sasl_mechanism else {
            return Err(format!(
                "KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_MECHANISM (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
            ));
        };
        let mechanism = mechanism.as_str();
        if self
            .kafka_sasl_username
            .as_deref()
            .is_none_or(str::is_empty)
        {
            return Err(format!(
                "KAFKA_SASL_MECHANISM={mechanism} needs KAFKA_SASL_USERNAME"
            ));
        }
        if self
            .kafka_sasl_password
            .as_ref()
            .is_none_or(|p| p.expose().is_empty())
        {
            return Err(format!(
                "KAFKA_SASL_MECHANISM={mechanism} needs KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE"
            ));
        }
        Ok(())
    }

    /// TLS: no file where the protocol uses no TLS, each file readable PEM, and a client
    /// certificate only with its key.
    fn check_tls(&self) -> Result<(), String> {
        let protocol = self.kafka_security_protocol;
        let certificate = self.kafka_ssl_certificate_location.as_deref();
        let key = self.kafka_ssl_key_location.as_deref();
        let tls_setting = [
            (
                "KAFKA_SSL_CA_LOCATION",
                self.kafka_ssl_ca_location.is_some(),
            ),
            ("KAFKA_SSL_CERTIFICATE_LOCATION", certificate.is_some()),
            ("KAFKA_SSL_KEY_LOCATION", key.is_some()),
        ]
        .into_iter()
        .find_map(|(name, set)| set.then_some(name));
        if let Some(setting) = tls_setting.filter(|_| !protocol.uses_tls()) {
            return Err(format!(
                "{setting} is set but KAFKA_SECURITY_PROTOCOL={protocol} uses no TLS (ssl or sasl_ssl do)"
            ));
        }
        if let Some(ca) = &self.kafka_ssl_ca_location {
            pem::certificates("KAFKA_SSL_CA_LOCATION", ca)?;
        }
        match (certificate, key) {
            (Some(certificate), Some(key)) => pem::key_pair(
                "KAFKA_SSL_CERTIFICATE_LOCATION",
                certificate,
                "KAFKA_SSL_KEY_LOCATION",
                key,
            ),
            (Some(_), None) => Err(
                "KAFKA_SSL_CERTIFICATE_LOCATION needs KAFKA_SSL_KEY_LOCATION, its private key"
                    .into(),
            ),
            (None, Some(_)) => Err(
                "KAFKA_SSL_KEY_LOCATION needs KAFKA_SSL_CERTIFICATE_LOCATION, its certificate"
                    .into(),
            ),
            (None, None) => Ok(()),
        }
    }

    /// Sets the librdkafka security properties of a client.
    pub fn apply(&self, config: &mut ClientConfig) {
        config.set("security.protocol", self.kafka_security_protocol.as_str());
        if let Some(mechanism) = self.kafka_sasl_mechanism {
            config.set("sasl.mechanisms", mechanism.as_str());
        }
        if let Some(username) = &self.kafka_sasl_username {
            config.set("sasl.username", username);
        }
        if let Some(password) = &self.kafka_sasl_password {
            config.set("sasl.password", password.expose());
        }
        let paths = [
            ("ssl.ca.location", &self.kafka_ssl_ca_location),
            (
                "ssl.certificate.location",
                &self.kafka_ssl_certificate_location,
            ),
            ("ssl.key.location", &self.kafka_ssl_key_location),
        ];
        for (property, path) in paths {
            if let Some(path) = path {
                config.set(property, path.to_string_lossy());
            }
        }
    }

    /// The principal the brokers' ACLs know this client as, in `kafka-acls` notation: the SASL
    /// user; else the client certificate's subject as Kafka's default mapping writes it
    /// (RFC 2253, most specific attribute first); else `User:ANONYMOUS`.
    pub fn principal(&self) -> String {
        if self.kafka_security_protocol.uses_sasl() {
            let user = self.kafka_sasl_username.as_deref().unwrap_or_default();
            return format!("User:{user}");
        }
        let Some(certificate) = &self.kafka_ssl_certificate_location else {
            return "User:ANONYMOUS".into();
        };
        let subject = pem::certificates("KAFKA_SSL_CERTIFICATE_LOCATION", certificate)
            .ok()
            .and_then(|chain| chain.into_iter().next())
            .map(|leaf| {
                let mut parts: Vec<String> = leaf
                    .subject_name()
                    .entries()
                    .filter_map(|entry| {
                        let name = entry.object().nid().short_name().ok()?;
                        let value = entry.data().to_string().ok()?;
                        Some(format!("{name}={value}"))
                    })
                    .collect();
                parts.reverse();
                parts.join(",")
            });
        match subject {
            Some(subject) if !subject.is_empty() => format!("User:{subject}"),
            _ => "User:<the subject of KAFKA_SSL_CERTIFICATE_LOCATION>".into(),
        }
    }

    /// librdkafka's account of a failed connection, with what to check where the cause is one
    /// of these settings.
    pub fn explain(&self, reason: &str) -> String {
        let lower = reason.to_ascii_lowercase();
        let hint = if lower.contains("certificate verify failed")
            || lower.contains("certificate could not be verified")
        {
            Some(match &self.kafka_ssl_ca_location {
                Some(ca) => format!(
                    "the broker's certificate is not signed by a CA in KAFKA_SSL_CA_LOCATION={}",
                    ca.display()
                ),
                None => "the broker's certificate is not signed by a CA the system trusts; set KAFKA_SSL_CA_LOCATION".into(),
            })
        } else if lower.contains("alert bad certificate")
            || lower.contains("alert certificate required")
            || lower.contains("alert unknown ca")
        {
            // The broker's TLS alert about the client's certificate: none sent where the
            // listener requires one (`ssl.client.auth=required`), or one it does not trust.
            Some(match &self.kafka_ssl_certificate_location {
                Some(certificate) => format!(
                    "the broker refused the client certificate KAFKA_SSL_CERTIFICATE_LOCATION={}; check that a CA in the broker's truststore signed it and that it is still valid",
                    certificate.display()
                ),
                None => "the broker requires a client certificate (mutual TLS); set KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION".into(),
            })
        } else if lower.contains("authentication") || lower.contains("invalid credentials") {
            Some(format!(
                "the broker refused KAFKA_SASL_USERNAME={} with KAFKA_SASL_MECHANISM={}; check the user name and password",
                self.kafka_sasl_username.as_deref().unwrap_or(""),
                self.kafka_sasl_mechanism.map_or("", SaslMechanism::as_str)
            ))
        } else if lower.contains("ssl handshake failed") || lower.contains("wrong version number") {
            Some(format!(
                "TLS failed with KAFKA_SECURITY_PROTOCOL={}; check that the broker's port speaks it",
                self.kafka_security_protocol
            ))
        } else {
            None
        };
        match hint {
            // Explained already where it was recorded.
            Some(hint) if reason.ends_with(&format!("({hint})")) => reason.to_owned(),
            Some(hint) => format!("{reason} ({hint})"),
            None => reason.to_owned(),
        }
    }
}

/// Bounds every wait on a broker, for the consumer and the dead-letter producer alike. A
/// request unanswered within `socket.timeout.ms` makes librdkafka close the connection and
/// send again on a new one, so a broker that stops answering without closing the connection
/// (packets dropped by a firewall or NAT) is noticed within that; keep-alive probes idle
/// connections.
pub fn bound_network(config: &mut ClientConfig, socket_timeout_ms: u64) {
    config
        .set("socket.timeout.ms", socket_timeout_ms.to_string())
        // librdkafka's floor for this one is a second.
        .set(
            "socket.connection.setup.timeout.ms",
            socket_timeout_ms.max(1000).to_string(),
        )
        .set("socket.keepalive.enable", "true");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sasl() -> KafkaSecurity {
        KafkaSecurity {
            kafka_security_protocol: SecurityProtocol::SaslPlaintext,
            kafka_sasl_mechanism: Some(SaslMechanism::ScramSha512),
            kafka_sasl_username: Some("panopticon".into()),
            kafka_sasl_password: Some(Secret::new("hunter2")),
            ..KafkaSecurity::default()
        }
    }

    #[test]
    fn impossible_combinations_are_refused() {
        assert!(KafkaSecurity::default().check().is_ok());
        assert!(sasl().check().is_ok());
        let no_password = KafkaSecurity {
            kafka_sasl_password: None,
            ..sasl()
        };
        assert!(
            no_password
                .check()
                .unwrap_err()
                .contains("KAFKA_SASL_PASSWORD")
        );
        let no_mechanism = KafkaSecurity {
            kafka_sasl_mechanism: None,
            ..sasl()
        };
        assert!(
            no_mechanism
                .check()
                .unwrap_err()
                .contains("KAFKA_SASL_MECHANISM")
        );
        let sasl_settings_on_plaintext = KafkaSecurity {
            kafka_security_protocol: SecurityProtocol::Plaintext,
            ..sasl()
        };
        assert!(sasl_settings_on_plaintext.check().is_err());
        let ca_on_plaintext = KafkaSecurity {
            kafka_ssl_ca_location: Some("/etc/ssl/certs/ca-certificates.crt".into()),
            ..KafkaSecurity::default()
        };
        assert!(ca_on_plaintext.check().unwrap_err().contains("uses no TLS"));
        let missing_ca = KafkaSecurity {
            kafka_security_protocol: SecurityProtocol::Ssl,
            kafka_ssl_ca_location: Some("/nonexistent/ca.pem".into()),
            ..KafkaSecurity::default()
        };
        assert!(missing_ca.check().unwrap_err().contains("cannot read"));
    }

    #[test]
    fn a_refused_client_certificate_is_told_apart_from_a_missing_one() {
        let reason = "Receive failed: error:0A000412:SSL routines::sslv3 alert bad certificate: SSL alert number 42";
        let without = KafkaSecurity {
            kafka_security_protocol: SecurityProtocol::Ssl,
            ..KafkaSecurity::default()
        };
        assert!(without.explain(reason).contains(
            "requires a client certificate (mutual TLS); set KAFKA_SSL_CERTIFICATE_LOCATION"
        ));
        let with = KafkaSecurity {
            kafka_ssl_certificate_location: Some("/etc/panopticon/client.pem".into()),
            ..without
        };
        assert!(with.explain(reason).contains(
            "refused the client certificate KAFKA_SSL_CERTIFICATE_LOCATION=/etc/panopticon/client.pem"
        ));
    }

    #[test]
    fn the_principal_is_the_sasl_user_else_anonymous() {
        assert_eq!(sasl().principal(), "User:panopticon");
        assert_eq!(KafkaSecurity::default().principal(), "User:ANONYMOUS");
    }

    #[test]
    fn the_password_never_shows_in_explanations() {
        let text = sasl().explain("SASL authentication error: Authentication failed");
        assert_eq!(sasl().explain(&text), text, "explained twice");
        assert!(text.contains("KAFKA_SASL_USERNAME=panopticon"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
