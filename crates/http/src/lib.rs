//! The HTTP client settings that billsync's HTTP adapters share, built in one place: the token
//! client (`billsync-auth`) and the billing transport (`billsync-transport`) trust the same
//! roots, read the CA bundle once, never follow a redirect, and describe a failed request the
//! same way. It is adapter support, not an adapter: it knows nothing of the domain.
//!
//! Servers are trusted through the operating system's store (as `rustls-native-certs` reads
//! it: `SSL_CERT_FILE` and `SSL_CERT_DIR` when set), plus the CA bundle given with
//! [`HttpSettings::with_ca_file`]. Where the OS store holds no certificate (a bare container),
//! the Mozilla roots compiled into billsync stand in for it: see [`trust_store`].
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use billsync_http::HttpSettings;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let settings = HttpSettings::default().with_timeout(Duration::from_secs(5));
//! let client = settings.client("billsync-example/1")?;
//! # let _ = client;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Why the HTTP client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HttpSetupError {
    /// The CA bundle could not be read.
    #[error("cannot read the CA bundle {}", path.display())]
    ReadCa {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The CA bundle holds no usable certificate.
    #[error("the CA bundle {origin} holds no PEM certificate")]
    EmptyCa {
        /// Where it came from (the file, or "the given PEM").
        origin: String,
    },
    /// The CA bundle is not PEM certificates.
    #[error("the CA bundle {origin} is not PEM certificates")]
    BadCa {
        /// Where it came from.
        origin: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// reqwest could not build a client.
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// Where the roots that HTTPS servers are checked against come from, besides a CA bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustStore {
    /// The operating system's store, holding this many certificates.
    Os {
        /// How many certificates it holds.
        certificates: usize,
    },
    /// The Mozilla roots compiled into billsync, because the OS store is empty or unreadable.
    Bundled,
}

impl std::fmt::Display for TrustStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Os { certificates } => write!(f, "the operating system's store ({certificates} certificates)"),
            Self::Bundled => f.write_str("the bundled Mozilla roots (the operating system's store is empty)"),
        }
    }
}

/// The trust store of this process's HTTPS clients, read once (a change to the OS store is
/// seen after a restart).
pub fn trust_store() -> TrustStore {
    static STORE: std::sync::OnceLock<TrustStore> = std::sync::OnceLock::new();
    *STORE.get_or_init(|| match rustls_native_certs::load_native_certs().certs.len() {
        0 => TrustStore::Bundled,
        certificates => TrustStore::Os { certificates },
    })
}

/// A CA bundle, parsed once.
#[derive(Clone)]
struct CaBundle {
    origin: String,
    certs: Arc<Vec<reqwest::Certificate>>,
}

/// How billsync's HTTP clients connect: timeouts and the extra CA bundle to trust. Cheap to
/// clone; the bundle is read and parsed once, when it is set.
#[derive(Clone)]
pub struct HttpSettings {
    timeout: Duration,
    connect_timeout: Duration,
    ca: Option<CaBundle>,
}

impl std::fmt::Debug for HttpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSettings")
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("ca", &self.ca.as_ref().map(|c| &c.origin))
            .finish()
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(30), connect_timeout: Duration::from_secs(10), ca: None }
    }
}

impl HttpSettings {
    /// The whole-request timeout (default 30 s).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The connect timeout (default 10 s).
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Trusts the certificates of a PEM bundle file besides the [`trust_store`].
    ///
    /// # Errors
    /// [`HttpSetupError`] naming the file when it cannot be read, is not PEM, or is empty.
    pub fn with_ca_file(self, path: &Path) -> Result<Self, HttpSetupError> {
        let pem = std::fs::read(path).map_err(|source| HttpSetupError::ReadCa { path: path.into(), source })?;
        self.with_ca_pem(&pem, &path.display().to_string())
    }

    /// Trusts the certificates of a PEM bundle besides the [`trust_store`]; `origin` names it
    /// in errors.
    ///
    /// # Errors
    /// [`HttpSetupError::BadCa`] or [`HttpSetupError::EmptyCa`].
    pub fn with_ca_pem(mut self, pem: &[u8], origin: &str) -> Result<Self, HttpSetupError> {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|source| HttpSetupError::BadCa { origin: origin.to_owned(), source })?;
        if certs.is_empty() {
            return Err(HttpSetupError::EmptyCa { origin: origin.to_owned() });
        }
        self.ca = Some(CaBundle { origin: origin.to_owned(), certs: Arc::new(certs) });
        Ok(self)
    }

    /// A client with these settings: rustls, no redirects (a redirect is never an answer from
    /// the platform's APIs), `user_agent`.
    ///
    /// # Errors
    /// [`HttpSetupError::Client`].
    pub fn client(&self, user_agent: &str) -> Result<reqwest::Client, HttpSetupError> {
        let os = matches!(trust_store(), TrustStore::Os { .. });
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_native_certs(os)
            .tls_built_in_webpki_certs(!os)
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .pool_max_idle_per_host(16)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(user_agent);
        for cert in self.ca.iter().flat_map(|ca| ca.certs.iter()) {
            builder = builder.add_root_certificate(cert.clone());
        }
        builder.build().map_err(HttpSetupError::Client)
    }
}

/// A failed request in words, for a person: what failed (`what`, such as "the request to the
/// token endpoint failed"), then each cause in the error chain (refused, reset, TLS). The
/// chain never holds the request's headers, so no credential appears.
pub fn describe(what: &str, e: &reqwest::Error) -> String {
    let mut msg = what.to_owned();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_is_named_when_unreadable_or_empty() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = HttpSettings::default().with_ca_file(&missing).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = HttpSettings::default().with_ca_file(&empty).unwrap_err();
        assert!(matches!(e, HttpSetupError::EmptyCa { .. }) && e.to_string().contains("empty.pem"), "{e}");
    }

    #[test]
    fn settings_build_a_client() {
        let s = HttpSettings::default().with_timeout(Duration::from_secs(3));
        assert_eq!(s.timeout(), Duration::from_secs(3));
        assert!(s.client("billsync-test/0").is_ok());
    }
}
