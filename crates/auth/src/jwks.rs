//! Signature verification against the token endpoint's JWKS, after RFC 8725: the algorithm is
//! pinned to RS256 (`alg: none`, HMAC, including HS256 "signed" with the public key, and every
//! other RSA algorithm are refused), and a key whose JWK names another `alg` does not verify.
//!
//! Keys are cached by `kid` for the JWKS response's `Cache-Control: max-age` (1 hour when it
//! says nothing, at most a day); once that has passed, the next verification fetches the JWKS
//! again, so a key the platform removed stops verifying. A token naming an unknown `kid` fetches
//! it again at most once a minute per cache; within the minute it is refused at once.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::Url;
use reqwest::header::{CACHE_CONTROL, HeaderMap};

use crate::jwt::{DecodedJwt, decode_unverified, normalize};

const MAX_JWKS_BODY: usize = 1024 * 1024;
/// The one signature algorithm accepted.
const PINNED_ALG: &str = "RS256";
/// How long keys are kept when the JWKS response has no `Cache-Control: max-age`.
pub(crate) const DEFAULT_MAX_AGE: chrono::Duration = chrono::Duration::hours(1);
/// The longest keys are kept, whatever `max-age` says.
const LONGEST_MAX_AGE: chrono::Duration = chrono::Duration::days(1);
/// A token with an unknown `kid` fetches the JWKS again at most this often.
pub(crate) const UNKNOWN_KID_REFETCH: chrono::Duration = chrono::Duration::minutes(1);

/// Why a token was not accepted by verification (its signature, or a claim RFC 8725 has
/// checked that the billing policy does not: `iss`, `nbf`). Each has a stable [`Self::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SignatureError {
    #[error("the token is unsigned (alg header \"none\")")]
    AlgNone,
    #[error(
        "the token's alg header is {0}, a shared-secret algorithm; billing tokens must be RS256-signed (an HMAC token checked against a public key is a known forgery)"
    )]
    Symmetric(String),
    #[error("the token's alg header is {0:?}; only RS256 is accepted (RFC 8725 §3.1: the algorithm is pinned)")]
    Unsupported(String),
    #[error("the token's header has no kid naming its signing key")]
    MissingKid,
    #[error(
        "no key with kid {kid:?} (the token's kid header) in the JWKS{}",
        if *.fetched { " (fetched again to be sure)" } else { " (fetched less than a minute ago; an unknown kid fetches it again at most once a minute)" }
    )]
    UnknownKid { kid: String, fetched: bool },
    #[error(
        "key {kid:?} is published for {key_alg:?} (its JWK alg), but the token's alg header is RS256; a key verifies only the algorithm it is published for"
    )]
    AlgMismatch { kid: String, key_alg: String },
    #[error("the signature does not verify with key {0:?}")]
    BadSignature(String),
    #[error("the token is not a JWT, so its signature cannot be verified")]
    NotAJwt,
    #[error("the JWKS could not be fetched: {0}")]
    JwksUnavailable(String),
    #[error("{}", issuer_message(expected, found.as_deref()))]
    WrongIssuer { expected: String, found: Option<String> },
    #[error("{0}")]
    NotYetValid(String),
}

fn issuer_message(expected: &str, found: Option<&str>) -> String {
    match found {
        Some(f) => format!("the token's iss claim is {:?}, not the configured token_issuer {expected:?}", shorten(f)),
        None => format!("the token has no iss claim; the configured token_issuer is {expected:?}"),
    }
}

/// At most 100 characters of a claim from the token, for messages.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(100) {
        Some((i, _)) => format!("{}...", s.get(..i).unwrap_or_default()),
        None => s.to_owned(),
    }
}

impl SignatureError {
    /// A stable code for the diagnosis and for `TokenError::Refused`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::AlgNone => "alg_none",
            Self::Symmetric(_) => "symmetric_alg",
            Self::Unsupported(_) => "unsupported_alg",
            Self::MissingKid => "missing_kid",
            Self::UnknownKid { .. } => "unknown_kid",
            Self::AlgMismatch { .. } => "alg_mismatch",
            Self::BadSignature(_) => "bad_signature",
            Self::NotAJwt => "unverifiable_token",
            Self::JwksUnavailable(_) => "jwks_unavailable",
            Self::WrongIssuer { .. } => "wrong_issuer",
            Self::NotYetValid(_) => "not_yet_valid",
        }
    }
}

/// One RSA public key of the JWKS, with the `alg` its JWK names, if any.
#[derive(Clone)]
struct PublishedKey {
    key: DecodingKey,
    alg: Option<String>,
}

/// What the cache holds: the keys and, in local time, until when they may be used and when
/// the last fetch started.
#[derive(Default)]
struct Cached {
    keys: HashMap<String, PublishedKey>,
    /// `None` until the first successful fetch.
    expires_at: Option<DateTime<Utc>>,
    /// The last fetch started (successful or not), for the unknown-`kid` throttle.
    attempted_at: Option<DateTime<Utc>>,
}

impl Cached {
    fn expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|t| now >= t)
    }
    fn may_refetch(&self, now: DateTime<Utc>) -> bool {
        self.attempted_at.is_none_or(|t| now - t >= UNKNOWN_KID_REFETCH)
    }
}

/// RSA public keys by `kid`, with their lifetime; one fetch at a time.
pub(crate) struct JwksCache {
    url: Url,
    cached: Mutex<Cached>,
    fetching: tokio::sync::Mutex<()>,
}

impl JwksCache {
    pub fn new(url: Url) -> Self {
        Self { url, cached: Mutex::new(Cached::default()), fetching: tokio::sync::Mutex::new(()) }
    }

    fn with_cached<R>(&self, f: impl FnOnce(&mut Cached) -> R) -> R {
        f(&mut self.cached.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Verifies `token` (already decoded as `jwt`) at local time `now`; returns the `kid` that
    /// verified it.
    pub async fn verify(
        &self,
        http: &reqwest::Client,
        token: &str,
        jwt: &DecodedJwt,
        now: DateTime<Utc>,
    ) -> Result<String, SignatureError> {
        let alg = algorithm(jwt)?;
        let kid = jwt.header_str("kid").ok_or(SignatureError::MissingKid)?.to_owned();
        let key = self.key(http, &kid, now).await?;
        check_key_alg(&kid, &key)?;
        match check_signature(token, &key.key, alg) {
            Ok(()) => Ok(kid),
            Err(()) => Err(SignatureError::BadSignature(kid)),
        }
    }

    /// The key named `kid`: from the cache while it is fresh, else from a new fetch; an unknown
    /// `kid` fetches again unless a fetch started less than a minute ago.
    async fn key(&self, http: &reqwest::Client, kid: &str, now: DateTime<Utc>) -> Result<PublishedKey, SignatureError> {
        let mut fetched = false;
        if self.with_cached(|c| c.expired(now)) {
            fetched = self.fetch_if(http, now, |c| c.expired(now)).await?;
        }
        if let Some(key) = self.with_cached(|c| c.keys.get(kid).cloned()) {
            return Ok(key);
        }
        if !fetched {
            fetched = self.fetch_if(http, now, |c| c.may_refetch(now)).await?;
        }
        let unknown = || SignatureError::UnknownKid { kid: kid.to_owned(), fetched };
        self.with_cached(|c| c.keys.get(kid).cloned()).ok_or_else(unknown)
    }

    /// Fetches the JWKS if `needed` still holds once no other fetch is under way (so callers
    /// who waited for someone else's fetch use its result); whether this call fetched.
    async fn fetch_if(
        &self,
        http: &reqwest::Client,
        now: DateTime<Utc>,
        needed: impl Fn(&Cached) -> bool,
    ) -> Result<bool, SignatureError> {
        let _one_at_a_time = self.fetching.lock().await;
        if !self.with_cached(|c| needed(c)) {
            return Ok(false);
        }
        self.with_cached(|c| c.attempted_at = Some(now));
        let (keys, max_age) = self.fetch(http).await?;
        tracing::debug!(url = %self.url, keys = keys.len(), max_age_s = max_age.num_seconds(), "JWKS fetched");
        self.with_cached(|c| {
            c.keys = keys;
            c.expires_at = Some(now.checked_add_signed(max_age).unwrap_or(now));
        });
        Ok(true)
    }

    /// Fetches the JWKS: its RSA keys and how long they may be kept.
    async fn fetch(
        &self,
        http: &reqwest::Client,
    ) -> Result<(HashMap<String, PublishedKey>, chrono::Duration), SignatureError> {
        let unavailable = |e: String| SignatureError::JwksUnavailable(e);
        let mut resp = http
            .get(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(unavailable(format!("{} answered HTTP {}", self.url, resp.status())));
        }
        let max_age = max_age(resp.headers());
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| unavailable(e.to_string()))? {
            if body.len() + chunk.len() > MAX_JWKS_BODY {
                return Err(unavailable("the JWKS is larger than 1 MiB".into()));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((parse_jwks(&body).map_err(unavailable)?, max_age))
    }
}

/// How long a JWKS response may be kept: its `Cache-Control` `max-age` (at most a day), none
/// for `no-store` or `no-cache` or an unreadable `max-age` (RFC 9111: stale), and
/// [`DEFAULT_MAX_AGE`] when it has no `Cache-Control` or no `max-age`.
fn max_age(headers: &HeaderMap) -> chrono::Duration {
    let directives: Vec<String> = headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_ascii_lowercase())
        .collect();
    if directives.iter().any(|d| d == "no-store" || d == "no-cache") {
        return chrono::Duration::zero();
    }
    let value = directives.iter().find_map(|d| d.strip_prefix("max-age=").map(|v| v.trim().trim_matches('"')));
    match value {
        None => DEFAULT_MAX_AGE,
        Some(v) => match v.parse::<u32>() {
            Ok(s) => chrono::Duration::seconds(i64::from(s)).min(LONGEST_MAX_AGE),
            // A number too large for u32 is still a number: as long as allowed.
            Err(_) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => LONGEST_MAX_AGE,
            Err(_) => chrono::Duration::zero(),
        },
    }
}

/// The signature algorithm a token names, if it is the pinned one.
fn algorithm(jwt: &DecodedJwt) -> Result<Algorithm, SignatureError> {
    let alg_name = jwt.header_str("alg").unwrap_or("(missing)");
    match alg_name {
        PINNED_ALG => Ok(Algorithm::RS256),
        a if a.eq_ignore_ascii_case("none") => Err(SignatureError::AlgNone),
        "HS256" | "HS384" | "HS512" => Err(SignatureError::Symmetric(alg_name.to_owned())),
        other => Err(SignatureError::Unsupported(other.to_owned())),
    }
}

/// A key published with an `alg` verifies that algorithm only (RFC 8725 §3.1).
fn check_key_alg(kid: &str, key: &PublishedKey) -> Result<(), SignatureError> {
    match key.alg.as_deref() {
        Some(a) if a != PINNED_ALG => Err(SignatureError::AlgMismatch { kid: kid.to_owned(), key_alg: shorten(a) }),
        _ => Ok(()),
    }
}

/// The signature check alone: no claim is validated here (the policy does that).
fn check_signature(token: &str, key: &DecodingKey, alg: Algorithm) -> Result<(), ()> {
    let mut validation = Validation::new(alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    validation.leeway = 0;
    jsonwebtoken::decode::<serde_json::Value>(token, key, &validation).map(drop).map_err(drop)
}

/// Verifies `token`'s signature against the keys of a JWKS document (`jwks`, the JSON body),
/// exactly as the token cache does with `verify_jwks = true` once it holds the JWKS: the same
/// algorithm rules (RS256 only, and the JWK's `alg` when it names one), key selection by `kid`
/// and signature check, without fetching anything (and without the `iss` and `nbf` checks).
/// Returns the `kid` that verified it. Meant for tools and benchmarks.
///
/// # Errors
/// The reason, as text: not a JWT, an algorithm billsync refuses, no or unknown `kid`, a bad
/// signature, or an unusable JWKS.
pub fn verify_with_jwks(token: &str, jwks: &[u8]) -> Result<String, String> {
    let jwt = decode_unverified(token).map_err(|e| e.to_string())?;
    let alg = algorithm(&jwt).map_err(|e| e.to_string())?;
    let kid = jwt.header_str("kid").ok_or_else(|| SignatureError::MissingKid.to_string())?;
    let keys = parse_jwks(jwks)?;
    let unknown = || format!("no key with kid {kid:?} (the token's kid header) in the JWKS");
    let key = keys.get(kid).ok_or_else(unknown)?;
    check_key_alg(kid, key).map_err(|e| e.to_string())?;
    check_signature(normalize(token), &key.key, alg)
        .map(|()| kid.to_owned())
        .map_err(|()| SignatureError::BadSignature(kid.to_owned()).to_string())
}

/// The RSA keys of a JWKS document by `kid`, with their JWK's `alg`; other keys are skipped.
fn parse_jwks(body: &[u8]) -> Result<HashMap<String, PublishedKey>, String> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).map_err(|e| format!("the JWKS is not a JSON key set: {e}"))?;
    let mut out = HashMap::new();
    for v in set.keys {
        let alg = v.get("alg").and_then(serde_json::Value::as_str).map(str::to_owned);
        let Ok(jwk) = serde_json::from_value::<Jwk>(v) else { continue };
        let Some(kid) = jwk.common.key_id.clone() else { continue };
        if !matches!(jwk.algorithm, jsonwebtoken::jwk::AlgorithmParameters::RSA(_)) {
            continue;
        }
        if let Ok(key) = DecodingKey::from_jwk(&jwk) {
            out.insert(kid, PublishedKey { key, alg });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_rsa_and_broken_keys_are_skipped() {
        let keys = parse_jwks(
            br#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"},{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"},{"kty":"weird"}]}"#,
        )
        .unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), ["r"]);
        assert!(parse_jwks(b"[]").is_err());
    }

    #[test]
    fn max_age_follows_cache_control() {
        let age = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(CACHE_CONTROL, v.parse().unwrap());
            }
            max_age(&h).num_seconds()
        };
        assert_eq!(age(&[]), 3600, "no Cache-Control: an hour");
        assert_eq!(age(&["public"]), 3600, "no max-age: an hour");
        assert_eq!(age(&["public, max-age=300"]), 300);
        assert_eq!(age(&["public", "Max-Age=\"42\""]), 42);
        assert_eq!(age(&["max-age=0"]), 0);
        assert_eq!(age(&["max-age=300, no-cache"]), 0);
        assert_eq!(age(&["no-store"]), 0);
        assert_eq!(age(&["max-age=soon"]), 0, "unreadable: stale");
        assert_eq!(age(&["max-age=-1"]), 0);
        assert_eq!(age(&["max-age=31536000"]), 86_400, "at most a day");
        assert_eq!(age(&["max-age=99999999999999999999999"]), 86_400);
    }

    #[test]
    fn pinned_alg_and_the_jwks_alg() {
        let key = |alg: Option<&str>| PublishedKey { key: DecodingKey::from_secret(b"k"), alg: alg.map(str::to_owned) };
        assert!(check_key_alg("k", &key(None)).is_ok());
        assert!(check_key_alg("k", &key(Some("RS256"))).is_ok());
        let e = check_key_alg("k", &key(Some("PS256"))).unwrap_err();
        assert_eq!(e.code(), "alg_mismatch");
        assert!(e.to_string().contains("PS256") && e.to_string().contains("alg"), "{e}");
    }

    #[test]
    fn the_cache_expires_and_unknown_kids_refetch_once_a_minute() {
        let t = |s: i64| DateTime::from_timestamp(1_900_000_000 + s, 0).unwrap();
        let mut c = Cached::default();
        assert!(c.expired(t(0)) && c.may_refetch(t(0)));
        c.attempted_at = Some(t(0));
        c.expires_at = Some(t(0) + DEFAULT_MAX_AGE);
        assert!(!c.expired(t(3599)) && c.expired(t(3600)));
        assert!(!c.may_refetch(t(59)) && c.may_refetch(t(60)));
    }
}
