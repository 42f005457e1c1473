//! Secrets that must never reach a log: client secrets and access tokens. `Debug` and
//! `Display` print `[redacted]`; the value is only reachable through an explicit `secret()`.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

/// An OAuth2 client secret.
pub struct ClientSecret(SecretString);

impl ClientSecret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(SecretString::from(s.into()))
    }
    /// The secret itself, for the one place that sends it.
    pub fn secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret([redacted])")
    }
}

/// An OAuth2 access token (usually a JWT). Deliberately not `Clone`: share it behind an `Arc`.
pub struct AccessToken(SecretString);

impl AccessToken {
    /// Wraps a token.
    pub fn new(s: impl Into<String>) -> Self {
        Self(SecretString::from(s.into()))
    }
    /// The token itself, for the `Authorization` header and for decoding.
    pub fn secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = ClientSecret::new("hunter2");
        let t = AccessToken::new("eyJhbGciOi.payload.sig");
        let shown = format!("{s:?} {t:?} {:#?}", (&s, &t));
        assert!(!shown.contains("hunter2") && !shown.contains("eyJ"), "{shown}");
        assert_eq!(s.secret(), "hunter2");
    }
}
