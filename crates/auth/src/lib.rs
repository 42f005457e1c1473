//! OAuth2 client credentials for billsync: token requests (`client_secret_post`,
//! `client_secret_basic`, RFC 6749 §4.4, or `private_key_jwt`, RFC 7523 §2.2, with an
//! [`AssertionKey`]), a preflight that checks every issued token against
//! the billing policy before anything is sent with it (and, optionally, its RS256 signature
//! against the JWKS), and [`TokenCache`], the [`billsync_domain::TokenSource`] the engine uses:
//! one token per (tenant, client id, scope set, auth method), refreshed at 80% of its lifetime
//! corrected for the token endpoint's clock skew, one token request at a time per slot; a
//! read-scope slot per tenant for reconciliation ([`TokenCache::read_headers`]). A
//! `private_key_jwt` tenant signs with an [`AssertionKey`] or sends an assertion minted elsewhere
//! ([`TenantAuth::new_assertion_file`]), checked by [`check_assertion`] before it is sent.
//!
//! It also explains tokens: [`OAuthClient::diagnose`] for `billsync doctor` and [`inspect`]
//! for `billsync token inspect`. Secrets (client secrets, access tokens) never appear in
//! `Debug`, `Display`, errors or logs; nor do private keys and client assertions.
//!
//! # Example
//!
//! Inspect the thread's telemetry-only token:
//!
//! ```
//! use base64::Engine;
//! use billsync_auth::inspect;
//! use billsync_domain::{BillingPolicy, ViolationCode};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
//! let token = format!(
//!     "{}.{}.c2ln",
//!     b64(r#"{"alg":"RS256","kid":"k1"}"#),
//!     b64(r#"{"scope":"urn:oracle:iot:device:write","aud":"https://iot.oraclecloud.com",
//!            "tenant_id":"tenant-a","client_id":"app-a","iat":1800000000,"exp":1800000900}"#),
//! );
//! let now = chrono::DateTime::from_timestamp(1_800_000_060, 0).ok_or("bad time")?;
//! let report = inspect(&token, None, None, &BillingPolicy::default(), now)?;
//! assert!(!report.ready());
//! assert_eq!(report.codes(), [ViolationCode::MissingScope, ViolationCode::AudienceMissing]);
//! assert_eq!(report.times().expires.as_deref(), Some("expires in 14m 0s"));
//! println!("{report}");
//! # Ok(())
//! # }
//! ```
//!
//! Getting billing headers for a tenant:
//!
//! ```no_run
//! use billsync_auth::{AuthConfig, TenantAuth, TokenCache};
//! use billsync_domain::{ClientSecret, Tenant, TokenSource};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let tenant = Tenant::new("acme".parse()?, "tenant-a".parse()?, "app-a".parse()?, "app-a".parse()?);
//! let auth = TenantAuth::new(tenant.clone(), ClientSecret::new("from the config file"));
//! let cache = TokenCache::new(AuthConfig::new("https://idcs.example.com/oauth2/v1/token")?, [auth])?;
//! let headers = cache.headers(&tenant).await?; // passed the billing policy, or an error naming why not
//! # let _ = headers; Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod assertion;
mod cache;
mod claims;
mod client;
mod config;
mod diagnose;
mod external;
mod inspect;
mod jwks;
mod jwt;
mod preflight;

pub use assertion::{
    AssertionAlgorithm, AssertionKey, CLIENT_ASSERTION_TYPE, ClientAssertion, DEFAULT_ASSERTION_LIFETIME, KeyError,
    MAX_ASSERTION_LIFETIME, MIN_RSA_BITS, jwk_thumbprint,
};
pub use cache::TokenCache;
pub use client::{OAuthClient, TokenResponse, parse_token_response};
pub use config::{AuthConfig, AuthMethod, ConfigError, RetryPolicy, TenantAuth};
pub use diagnose::{ASSERTION_SKEW_LIMIT, Check, Diagnosis, HeaderConfig, LikelyCause, likely_assertion_causes};
pub use external::{AssertionProblem, ExternalAssertion, MAX_IAT_AHEAD, check_assertion, read_assertion_file};
pub use inspect::{Inspection, TokenTimes, inspect};
pub use jwks::verify_with_jwks;
pub use jwt::{InspectError, MAX_TOKEN_LEN, Segment};
