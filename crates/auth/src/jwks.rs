//! Signature verification against the token endpoint's JWKS: keys fetched and cached by
//! `kid`, fetched again once when a token names an unknown `kid`. Only RSA algorithms are
//! accepted: `alg: none` and HMAC (including HS256 "signed" with the public key) are refused.

use std::collections::HashMap;
use std::sync::Mutex;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::Url;

use crate::jwt::{DecodedJwt, decode_unverified, normalize};

const MAX_JWKS_BODY: usize = 1024 * 1024;

/// Why a token's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SignatureError {
    #[error("the token is unsigned (alg \"none\")")]
    AlgNone,
    #[error(
        "the token uses {0}, a shared-secret algorithm; billing tokens must be RS256-signed (an HMAC token checked against a public key is a known forgery)"
    )]
    Symmetric(String),
    #[error("the token's algorithm {0:?} is not accepted; billing tokens are RS256-signed")]
    Unsupported(String),
    #[error("the token's header has no kid naming its signing key")]
    MissingKid,
    #[error("no key with kid {0:?} in the JWKS (fetched again to be sure)")]
    UnknownKid(String),
    #[error("the signature does not verify with key {0:?}")]
    BadSignature(String),
    #[error("the token is not a JWT, so its signature cannot be verified")]
    NotAJwt,
    #[error("the JWKS could not be fetched: {0}")]
    JwksUnavailable(String),
}

impl SignatureError {
    /// A stable code for the diagnosis and for `TokenError::Refused`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::AlgNone => "alg_none",
            Self::Symmetric(_) => "symmetric_alg",
            Self::Unsupported(_) => "unsupported_alg",
            Self::MissingKid => "missing_kid",
            Self::UnknownKid(_) => "unknown_kid",
            Self::BadSignature(_) => "bad_signature",
            Self::NotAJwt => "unverifiable_token",
            Self::JwksUnavailable(_) => "jwks_unavailable",
        }
    }
}

/// RSA public keys by `kid`.
pub(crate) struct JwksCache {
    url: Url,
    keys: Mutex<HashMap<String, DecodingKey>>,
}

impl JwksCache {
    pub fn new(url: Url) -> Self {
        Self { url, keys: Mutex::new(HashMap::new()) }
    }

    fn lookup(&self, kid: &str) -> Option<DecodingKey> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).get(kid).cloned()
    }

    /// Verifies `token` (already decoded as `jwt`); returns the `kid` that verified it.
    pub async fn verify(
        &self,
        http: &reqwest::Client,
        token: &str,
        jwt: &DecodedJwt,
    ) -> Result<String, SignatureError> {
        let alg = algorithm(jwt)?;
        let kid = jwt.header_str("kid").ok_or(SignatureError::MissingKid)?.to_owned();
        let key = match self.lookup(&kid) {
            Some(k) => k,
            None => {
                self.refresh(http).await?;
                self.lookup(&kid).ok_or_else(|| SignatureError::UnknownKid(kid.clone()))?
            }
        };
        match check_signature(token, &key, alg) {
            Ok(()) => Ok(kid),
            Err(()) => Err(SignatureError::BadSignature(kid)),
        }
    }

    /// Fetches the JWKS and replaces the cached RSA keys.
    async fn refresh(&self, http: &reqwest::Client) -> Result<(), SignatureError> {
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
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| unavailable(e.to_string()))? {
            if body.len() + chunk.len() > MAX_JWKS_BODY {
                return Err(unavailable("the JWKS is larger than 1 MiB".into()));
            }
            body.extend_from_slice(&chunk);
        }
        let keys = parse_jwks(&body).map_err(unavailable)?;
        tracing::debug!(url = %self.url, keys = keys.len(), "JWKS fetched");
        *self.keys.lock().unwrap_or_else(|p| p.into_inner()) = keys;
        Ok(())
    }
}

/// The signature algorithm a token names, if billsync accepts it.
fn algorithm(jwt: &DecodedJwt) -> Result<Algorithm, SignatureError> {
    let alg_name = jwt.header_str("alg").unwrap_or("(missing)");
    Ok(match alg_name {
        a if a.eq_ignore_ascii_case("none") => return Err(SignatureError::AlgNone),
        "HS256" | "HS384" | "HS512" => return Err(SignatureError::Symmetric(alg_name.to_owned())),
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        other => return Err(SignatureError::Unsupported(other.to_owned())),
    })
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
/// algorithm rules, key selection by `kid` and signature check, without fetching anything.
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
    let key = keys.get(kid).ok_or_else(|| SignatureError::UnknownKid(kid.to_owned()).to_string())?;
    check_signature(normalize(token), key, alg)
        .map(|()| kid.to_owned())
        .map_err(|()| SignatureError::BadSignature(kid.to_owned()).to_string())
}

/// The RSA keys of a JWKS document by `kid`; other keys are skipped.
fn parse_jwks(body: &[u8]) -> Result<HashMap<String, DecodingKey>, String> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).map_err(|e| format!("the JWKS is not a JSON key set: {e}"))?;
    let mut out = HashMap::new();
    for v in set.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(v) else { continue };
        let Some(kid) = jwk.common.key_id.clone() else { continue };
        if !matches!(jwk.algorithm, jsonwebtoken::jwk::AlgorithmParameters::RSA(_)) {
            continue;
        }
        if let Ok(key) = DecodingKey::from_jwk(&jwk) {
            out.insert(kid, key);
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
}
