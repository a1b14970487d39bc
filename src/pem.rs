//! Certificate and key files named by the settings, read and checked at start-up so that a
//! missing or malformed one is a configuration error rather than a failed handshake later.
//! Kafka's `KAFKA_SSL_*` files and the database URL's `sslrootcert`, `sslcert` and `sslkey` are
//! checked here alike.

use std::path::Path;

use openssl::pkey::{PKey, Private};
use openssl::x509::X509;

/// The certificates of a PEM file (a CA bundle or a certificate chain); `setting` names the
/// setting in error messages.
pub(crate) fn certificates(setting: &str, path: &Path) -> Result<Vec<X509>, String> {
    let bytes = read(setting, path)?;
    match X509::stack_from_pem(&bytes) {
        Ok(certificates) if !certificates.is_empty() => Ok(certificates),
        _ => Err(format!(
            "{setting}={} holds no PEM certificate",
            path.display()
        )),
    }
}

/// The private key of a PEM file. Encrypted keys are refused: there is no setting for their
/// passphrase.
pub(crate) fn private_key(setting: &str, path: &Path) -> Result<PKey<Private>, String> {
    let bytes = read(setting, path)?;
    PKey::private_key_from_pem(&bytes).map_err(|_| {
        format!(
            "{setting}={} holds no unencrypted PEM private key",
            path.display()
        )
    })
}

/// A client certificate and its key: both readable, and the key the certificate's own.
pub(crate) fn key_pair(
    certificate_setting: &str,
    certificate: &Path,
    key_setting: &str,
    key: &Path,
) -> Result<(), String> {
    let chain = certificates(certificate_setting, certificate)?;
    let key_value = private_key(key_setting, key)?;
    let matches = chain[0]
        .public_key()
        .map(|public| public.public_eq(&key_value))
        .unwrap_or(false);
    if matches {
        Ok(())
    } else {
        Err(format!(
            "{key_setting}={} is not the key of {certificate_setting}={}",
            key.display(),
            certificate.display()
        ))
    }
}

fn read(setting: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {setting}={}: {e}", path.display()))
}
