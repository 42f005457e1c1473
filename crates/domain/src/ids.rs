//! Validated identifiers. Each newtype can only be built through `parse`, so a function
//! that takes one never checks it again.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An identifier or name that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct InvalidId {
    /// Which kind of value was being parsed (`tenant_id`, `event_id`, ...).
    pub what: &'static str,
    /// What was wrong with it, in plain words.
    pub reason: String,
}

/// Checks shared by the identifier newtypes.
fn check_len(what: &'static str, s: &str, max: usize) -> Result<(), InvalidId> {
    let n = s.chars().count();
    if n == 0 {
        return Err(InvalidId { what, reason: "must not be empty".into() });
    }
    if n > max {
        return Err(InvalidId { what, reason: format!("is {n} characters long; at most {max} are allowed") });
    }
    Ok(())
}

fn check_chars(what: &'static str, s: &str, allowed: impl Fn(char) -> bool, rule: &str) -> Result<(), InvalidId> {
    match s.chars().find(|c| !allowed(*c)) {
        None => Ok(()),
        Some(c) => Err(InvalidId { what, reason: format!("contains {c:?}; only {rule} are allowed") }),
    }
}

/// Visible ASCII, as required of an HTTP header value that must survive every proxy.
fn header_safe(c: char) -> bool {
    c.is_ascii_graphic()
}

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr, $allowed:expr, $rule:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The longest value accepted, in characters.
            pub const MAX_LEN: usize = $max;

            /// Parses and validates a value.
            ///
            /// # Errors
            /// [`InvalidId`] naming the rule that was broken.
            pub fn parse(s: impl Into<String>) -> Result<Self, InvalidId> {
                let s = s.into();
                check_len($what, &s, $max)?;
                check_chars($what, &s, $allowed, $rule)?;
                Ok(Self(s))
            }

            /// The value as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, InvalidId> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                Self::parse(s)
            }
        }
    };
}

string_newtype!(
    /// A billing event's id: 1-128 characters of `[A-Za-z0-9._:-]`, unique per tenant; the
    /// platform's idempotency key (docs/platform.md section 3).
    EventId, "event_id", 128,
    |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'),
    "letters, digits and . _ : -"
);

string_newtype!(
    /// The organisation's tenant id: sent as `X-Tenant-ID` and carried in the token's
    /// `tenant_id` claim. 1-128 visible ASCII characters (it is an HTTP header value).
    TenantId, "tenant_id", 128, header_safe, "visible ASCII characters"
);

string_newtype!(
    /// The registered application id, sent as `X-Application-ID`; on the reference platform
    /// it equals the OAuth client id. 1-256 visible ASCII characters.
    ApplicationId, "application_id", 256, header_safe, "visible ASCII characters"
);

string_newtype!(
    /// An OAuth2 client id. 1-256 visible ASCII characters.
    ClientId, "client_id", 256, header_safe, "visible ASCII characters"
);

string_newtype!(
    /// One OAuth2 scope token (RFC 6749 section 3.3: no spaces, quotes or backslashes),
    /// such as `urn:oracle:iot:billing:write`.
    Scope, "scope", 512,
    |c: char| c.is_ascii_graphic() && c != '"' && c != '\\',
    "visible ASCII characters other than \" and \\"
);

string_newtype!(
    /// A token audience, such as `https://iot.oraclecloud.com/billing`.
    Audience, "audience", 2048, header_safe, "visible ASCII characters"
);

impl Scope {
    /// The billing write scope, [`BILLING_WRITE_SCOPE`] (a test checks that it parses).
    pub fn billing_write() -> Self {
        Self(BILLING_WRITE_SCOPE.to_owned())
    }

    /// The billing read scope, [`BILLING_READ_SCOPE`] (a test checks that it parses).
    pub fn billing_read() -> Self {
        Self(BILLING_READ_SCOPE.to_owned())
    }
}

impl Audience {
    /// The billing audience, [`BILLING_AUDIENCE`] (a test checks that it parses).
    pub fn billing() -> Self {
        Self(BILLING_AUDIENCE.to_owned())
    }
}

string_newtype!(
    /// The local name of a tenant in billsync's configuration (`acme`): the key of its
    /// events in the outbox and the name used on the command line.
    TenantName, "tenant name", 64,
    |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'),
    "letters, digits and - _ ."
);

/// The billing write scope of the reference platform (full URN form).
pub const BILLING_WRITE_SCOPE: &str = "urn:oracle:iot:billing:write";
/// The billing read scope of the reference platform, for reconciliation queries.
pub const BILLING_READ_SCOPE: &str = "urn:oracle:iot:billing:read";
/// The device telemetry scope of the reference platform.
pub const DEVICE_WRITE_SCOPE: &str = "urn:oracle:iot:device:write";
/// The billing audience of the reference platform.
pub const BILLING_AUDIENCE: &str = "https://iot.oraclecloud.com/billing";
/// The base audience of the reference platform, which device tokens carry.
pub const BASE_AUDIENCE: &str = "https://iot.oraclecloud.com";

/// One tenant as billsync knows it: its local name and the identifiers that must line up
/// on every billing request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    name: TenantName,
    tenant_id: TenantId,
    application_id: ApplicationId,
    client_id: ClientId,
}

impl Tenant {
    /// Builds a tenant from already-validated parts.
    pub fn new(name: TenantName, tenant_id: TenantId, application_id: ApplicationId, client_id: ClientId) -> Self {
        Self { name, tenant_id, application_id, client_id }
    }
    /// The local name (`acme`).
    pub fn name(&self) -> &TenantName {
        &self.name
    }
    /// The platform tenant id, sent as `X-Tenant-ID`.
    pub fn tenant_id(&self) -> &TenantId {
        &self.tenant_id
    }
    /// The application id, sent as `X-Application-ID`.
    pub fn application_id(&self) -> &ApplicationId {
        &self.application_id
    }
    /// The OAuth client id used to get tokens.
    pub fn client_id(&self) -> &ClientId {
        &self.client_id
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_billing_constants_are_valid_values() {
        assert_eq!(Scope::parse(BILLING_WRITE_SCOPE), Ok(Scope::billing_write()));
        assert_eq!(Scope::parse(BILLING_READ_SCOPE), Ok(Scope::billing_read()));
        assert_eq!(Audience::parse(BILLING_AUDIENCE), Ok(Audience::billing()));
    }

    use super::*;

    fn check(input: &str, expected: Result<(), &str>) {
        let got = EventId::parse(input).map(|_| ()).map_err(|e| e.to_string());
        assert_eq!(got, expected.map_err(str::to_string), "input {input:?}");
    }

    #[test]
    fn event_id_rules() {
        check("0193f6c2-7d1e-7c3a-9a4e-2b1f0c9d8e71", Ok(()));
        check("a.b_c:d-e", Ok(()));
        check("", Err("event_id: must not be empty"));
        check("a b", Err("event_id: contains ' '; only letters, digits and . _ : - are allowed"));
        check(&"x".repeat(128), Ok(()));
        check(&"x".repeat(129), Err("event_id: is 129 characters long; at most 128 are allowed"));
    }

    #[test]
    fn header_values_reject_control_characters() {
        let err = TenantId::parse("acme\r\nX-Evil: 1").unwrap_err();
        assert_eq!(err.what, "tenant_id");
        assert!(TenantId::parse("acme-prod-001").is_ok());
        assert!(ApplicationId::parse("app a").is_err());
    }

    #[test]
    fn deserialising_validates() {
        let ok: Result<Scope, _> = serde_json::from_str("\"urn:oracle:iot:billing:write\"");
        assert!(ok.is_ok());
        let bad: Result<Scope, _> = serde_json::from_str("\"a b\"");
        assert!(bad.unwrap_err().to_string().contains("scope: contains ' '"));
    }
}
