//! How the PostgreSQL adapter secures its connection.
//!
//! The URL's `sslmode` means what libpq documents (`disable`, `allow`, `prefer`, `require`,
//! `verify-ca`, `verify-full`), with one difference that sqlx imposes: a `sslrootcert` is
//! trusted *beside* the operating system's store, where libpq trusts it alone. Without
//! `sslmode` (in the URL or `PGSSLMODE`), a server off loopback is connected with
//! `verify-full`; on loopback (or a Unix socket) with libpq's default, `prefer`. A URL that
//! asks for less than `verify-full` off loopback is obeyed, with a warning naming the risk.

use std::net::IpAddr;
use std::path::PathBuf;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::error::StoreError;

/// The URL's query keys sqlx reads as `sslmode` and as `sslrootcert`.
const MODE_KEYS: [&str; 2] = ["sslmode", "ssl-mode"];
const ROOT_KEYS: [&str; 3] = ["sslrootcert", "ssl-root-cert", "ssl-ca"];

/// `options` (read from `url`) with billsync's TLS rule applied, and the warning to log when
/// the connection is weaker than `verify-full` off loopback.
///
/// # Errors
/// [`StoreError::RootCert`] when the `sslrootcert` file cannot be read or holds no PEM
/// certificate (named, rather than a handshake failure later).
pub(super) fn secure(
    options: PgConnectOptions,
    url: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(PgConnectOptions, Option<String>), StoreError> {
    let query = query_pairs(url);
    let explicit = query.iter().any(|(k, _)| MODE_KEYS.contains(&k.as_str())) || env("PGSSLMODE").is_some();
    let local = loopback(&options);
    let options = if explicit || local { options } else { options.ssl_mode(PgSslMode::VerifyFull) };
    let root = query.iter().find(|(k, _)| ROOT_KEYS.contains(&k.as_str())).map(|(_, v)| v.clone());
    if let Some(path) = root.or_else(|| env("PGSSLROOTCERT")) {
        check_root(PathBuf::from(path))?;
    }
    let warning = (!local).then(|| risk(options.get_ssl_mode())).flatten().map(|risk| {
        format!(
            "PostgreSQL at {}:{} is not on this machine and sslmode={} asks for less than verify-full: {risk}; \
             remove sslmode (billsync then uses verify-full) or set sslmode=verify-full",
            options.get_host(),
            options.get_port(),
            name(options.get_ssl_mode())
        )
    });
    Ok((options, warning))
}

/// The mode as libpq spells it.
fn name(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

/// What a mode weaker than `verify-full` exposes.
fn risk(mode: PgSslMode) -> Option<&'static str> {
    match mode {
        PgSslMode::Disable | PgSslMode::Allow | PgSslMode::Prefer => Some(
            "billing rows and the database password may cross the network in clear text, and anyone on the path can pose as the server",
        ),
        PgSslMode::Require => {
            Some("the server's certificate is not checked, so anyone on the path can pose as the server")
        }
        PgSslMode::VerifyCa => Some("the server's name is not checked against its certificate"),
        PgSslMode::VerifyFull => None,
    }
}

/// A Unix socket, `localhost` or a loopback address.
fn loopback(options: &PgConnectOptions) -> bool {
    let host = options.get_host().trim_start_matches('[').trim_end_matches(']');
    options.get_socket().is_some()
        || host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn query_pairs(url: &str) -> Vec<(String, String)> {
    url::Url::parse(url)
        .map(|u| u.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
        .unwrap_or_default()
}

fn check_root(path: PathBuf) -> Result<(), StoreError> {
    match std::fs::read_to_string(&path) {
        Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => Ok(()),
        Ok(_) => Err(StoreError::RootCert {
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "it holds no PEM certificate"),
        }),
        Err(source) => Err(StoreError::RootCert { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn apply(url: &str, env: &[(&str, &str)]) -> (&'static str, Option<String>) {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let lookup = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        let options = PgConnectOptions::from_str(url).unwrap();
        let (options, warning) = secure(options, url, lookup).unwrap();
        (name(options.get_ssl_mode()), warning)
    }

    #[test]
    fn off_loopback_the_default_is_verify_full_and_less_is_obeyed_with_a_warning() {
        assert_eq!(apply("postgres://u@db.example.com/billing", &[]), ("verify-full", None));
        assert_eq!(apply("postgres://u@10.0.0.7:5432/billing", &[]).0, "verify-full");
        for (mode, says) in [
            ("disable", "clear text"),
            ("prefer", "clear text"),
            ("require", "certificate is not checked"),
            ("verify-ca", "name is not checked"),
        ] {
            let (got, warning) = apply(&format!("postgres://u@db.example.com/billing?sslmode={mode}"), &[]);
            assert_eq!(got, mode);
            let warning = warning.unwrap_or_default();
            assert!(warning.contains("db.example.com:5432") && warning.contains(says), "{mode}: {warning}");
        }
        assert_eq!(apply("postgres://u@db.example.com/billing?sslmode=verify-full", &[]), ("verify-full", None));
        // PGSSLMODE is the user's choice too: sqlx reads it (from the real environment, so
        // here its default), and billsync does not override it.
        let (got, warning) = apply("postgres://u@db.example.com/billing", &[("PGSSLMODE", "prefer")]);
        assert_eq!(got, "prefer");
        assert!(warning.is_some());
    }

    #[test]
    fn on_loopback_libpqs_default_stands_and_nothing_is_said() {
        for url in [
            "postgres://u@127.0.0.1:5432/billing",
            "postgres://u@localhost/billing",
            "postgres://u@[::1]:5432/billing",
            "postgres://u@%2Fvar%2Frun%2Fpostgresql/billing",
        ] {
            assert_eq!(apply(url, &[]), ("prefer", None), "{url}");
        }
        assert_eq!(apply("postgres://u@127.0.0.1/billing?sslmode=disable", &[]), ("disable", None));
    }

    #[test]
    fn a_root_certificate_that_cannot_be_used_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let missing = dir.path().join("missing.pem");
        for (path, says) in [(&empty, "no PEM certificate"), (&missing, "No such file")] {
            let url = format!("postgres://u@db.example.com/b?sslmode=verify-ca&sslrootcert={}", path.display());
            let err = secure(PgConnectOptions::from_str(&url).unwrap(), &url, |_| None).err().unwrap();
            let text =
                format!("{err}: {}", std::error::Error::source(&err).map(ToString::to_string).unwrap_or_default());
            assert!(text.contains(&path.display().to_string()) && text.contains(says), "{text}");
        }
    }
}
