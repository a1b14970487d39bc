//! Secrets kept out of sight: passwords and tokens hidden from `Debug` output, read from the
//! files Kubernetes mounts, and the database URL's password replaced wherever it is shown.

use std::convert::Infallible;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// A password or token: kept out of `Debug` output, so that printing the settings cannot leak
/// it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl FromStr for Secret {
    type Err = Infallible;

    fn from_str(text: &str) -> Result<Secret, Infallible> {
        Ok(Secret::new(text))
    }
}

/// The secret of `variable`, or of its twin `<variable>_FILE`; both set is an error.
pub(crate) fn secret_from_file(
    variable: &str,
    value: Option<Secret>,
    file: Option<&Path>,
) -> Result<Option<Secret>, String> {
    match (value, file) {
        (Some(_), Some(_)) => Err(both_set(variable)),
        (None, Some(path)) => read_secret_file(&format!("{variable}_FILE"), path).map(Some),
        (value, None) => Ok(value),
    }
}

pub(crate) fn both_set(variable: &str) -> String {
    format!("{variable} and {variable}_FILE are both set; set only one of them")
}

/// A secret file's content without its trailing line break, as Kubernetes mounts Secrets.
pub(crate) fn read_secret_file(setting: &str, path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {setting}={}: {e}", path.display()))?;
    let value = text.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(format!("{setting}={} is empty", path.display()));
    }
    Ok(Secret::new(value))
}

/// The database URL with its password replaced, fit for logs and error messages: the password
/// of the user part, a `password` parameter of the URL, or a `password=` of the key/value form.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return redact_key_value(url);
    };
    let (location, query) = match rest.split_once('?') {
        Some((location, query)) => (location, Some(query)),
        None => (rest, None),
    };
    let mut redacted = format!("{scheme}://");
    match location.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => redacted.push_str(&format!("{user}:***@{host}")),
            None => redacted.push_str(location),
        },
        None => redacted.push_str(location),
    }
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        redacted.push('?');
        redacted.push_str(&pairs.join("&"));
    }
    redacted
}

/// `password=…` of libpq's key/value form replaced, quoted or not.
fn redact_key_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("password") {
        let (before, after) = rest.split_at(at + "password".len());
        out.push_str(before);
        let trimmed = after.trim_start();
        let Some(value) = trimmed.strip_prefix('=') else {
            rest = after;
            continue;
        };
        let value = value.trim_start();
        let end = if let Some(quoted) = value.strip_prefix('\'') {
            let mut escaped = false;
            let close = quoted.char_indices().find(|&(_, c)| {
                let closes = c == '\'' && !escaped;
                escaped = c == '\\' && !escaped;
                closes
            });
            close.map_or(value.len(), |(i, _)| i + 2)
        } else {
            value.find(char::is_whitespace).unwrap_or(value.len())
        };
        out.push_str("=***");
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://admin:admin123@localhost:5433/panopticon"),
            "postgres://admin:***@localhost:5433/panopticon"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/db"),
            "postgres://postgres@127.0.0.1/db"
        );
        assert_eq!(
            redact_url("postgres://u@h/db?sslmode=verify-full&password=s3cret&sslrootcert=/ca.pem"),
            "postgres://u@h/db?sslmode=verify-full&password=***&sslrootcert=/ca.pem"
        );
        assert_eq!(
            redact_url("host=h password='s3 cret' user=u"),
            "host=h password=*** user=u"
        );
        assert_eq!(
            redact_url("host=h password = s3cret"),
            "host=h password=***"
        );
    }
}
