//! RS256 signing keys, the JWKS, and JWT signing and verification (through jsonwebtoken).

use std::sync::RwLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde::{Deserialize, Serialize};

/// RSA modulus size of every key.
pub const KEY_BITS: usize = 2048;

struct KeyPair {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    n: String,
    e: String,
}

/// A freshly generated key, ready to join the ring (generation is slow: do it off the runtime).
pub(crate) struct NewKey(KeyPair);

/// Why a key could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    #[error("RSA key generation failed: {0}")]
    Rsa(#[from] rsa::Error),
    #[error("RSA key encoding failed: {0}")]
    Encoding(String),
}

impl NewKey {
    pub(crate) fn generate() -> Result<Self, KeyError> {
        let private = RsaPrivateKey::new(&mut rand::rngs::OsRng, KEY_BITS)?;
        let public = RsaPublicKey::from(&private);
        let der = private.to_pkcs1_der().map_err(|e| KeyError::Encoding(e.to_string()))?;
        let kid = format!("emu-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let n = URL_SAFE_NO_PAD.encode(public.n().to_bytes_be());
        let e = URL_SAFE_NO_PAD.encode(public.e().to_bytes_be());
        let decoding = DecodingKey::from_rsa_components(&n, &e).map_err(|e| KeyError::Encoding(e.to_string()))?;
        Ok(Self(KeyPair { kid, encoding: EncodingKey::from_rsa_der(der.as_bytes()), decoding, n, e }))
    }
}

/// One public key of the JWKS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Always `RSA`.
    pub kty: String,
    /// The key id, as in token headers.
    pub kid: String,
    /// Always `RS256`.
    pub alg: String,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub use_: String,
    /// Modulus, base64url without padding.
    pub n: String,
    /// Exponent, base64url without padding.
    pub e: String,
}

/// The JWKS document of `GET /oauth2/v1/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// Every key that may have signed a live token, the current one first.
    pub keys: Vec<Jwk>,
}

/// Why a token did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VerifyError {
    /// Not three base64url parts with a JSON header.
    Malformed,
    /// Wrong algorithm, unknown kid, or the signature does not match.
    BadSignature,
}

/// The signing keys: the current one signs, all of them verify (old tokens stay valid
/// after a rotation until they expire).
pub(crate) struct KeyRing {
    keys: RwLock<Vec<KeyPair>>,
}

impl KeyRing {
    pub(crate) fn new(first: NewKey) -> Self {
        Self { keys: RwLock::new(vec![first.0]) }
    }

    /// Makes `key` the signing key; the previous keys keep verifying. Returns its kid.
    pub(crate) fn rotate(&self, key: NewKey) -> String {
        let kid = key.0.kid.clone();
        self.keys.write().unwrap_or_else(|p| p.into_inner()).insert(0, key.0);
        kid
    }

    pub(crate) fn current_kid(&self) -> String {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).first().map(|k| k.kid.clone()).unwrap_or_default()
    }

    pub(crate) fn jwks(&self) -> Jwks {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        Jwks {
            keys: keys
                .iter()
                .map(|k| Jwk {
                    kty: "RSA".into(),
                    kid: k.kid.clone(),
                    alg: "RS256".into(),
                    use_: "sig".into(),
                    n: k.n.clone(),
                    e: k.e.clone(),
                })
                .collect(),
        }
    }

    /// Signs `claims` with the current key; header `{"typ":"JWT","alg":"RS256","kid":..}`.
    pub(crate) fn sign(&self, claims: &serde_json::Value) -> String {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let Some(key) = keys.first() else { return String::new() };
        let header = Header { kid: Some(key.kid.clone()), ..Header::new(Algorithm::RS256) };
        // Encoding a JSON value with a valid RSA key cannot fail.
        jsonwebtoken::encode(&header, claims, &key.encoding).unwrap_or_default()
    }

    /// Checks the signature and returns the payload (claims are checked by the caller, which
    /// names each problem; here only RS256 with a known kid is accepted).
    pub(crate) fn verify(&self, token: &str) -> Result<serde_json::Value, VerifyError> {
        use jsonwebtoken::errors::ErrorKind;
        let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Malformed)?;
        if header.alg != Algorithm::RS256 {
            return Err(VerifyError::BadSignature);
        }
        let mut validation = Validation::new(Algorithm::RS256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let key = keys.iter().find(|k| Some(&k.kid) == header.kid.as_ref()).ok_or(VerifyError::BadSignature)?;
        match jsonwebtoken::decode::<serde_json::Value>(token, &key.decoding, &validation) {
            Ok(data) => Ok(data.claims),
            Err(e) => match e.kind() {
                ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm | ErrorKind::InvalidRsaKey(_) => {
                    Err(VerifyError::BadSignature)
                }
                _ => Err(VerifyError::Malformed),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_verifies_and_survives_rotation() {
        let ring = KeyRing::new(NewKey::generate().unwrap());
        let claims = serde_json::json!({"sub": "app-a", "exp": 1});
        let old = ring.sign(&claims);
        assert_eq!(ring.verify(&old), Ok(claims.clone()));
        let kid = ring.rotate(NewKey::generate().unwrap());
        assert_eq!(ring.current_kid(), kid);
        assert_eq!(ring.jwks().keys.len(), 2);
        assert_eq!(ring.verify(&old), Ok(claims.clone()));
        let new = ring.sign(&claims);
        assert_eq!(ring.verify(&new), Ok(claims));

        let mut tampered = new.clone();
        let dot = tampered.rfind('.').unwrap();
        tampered.replace_range(dot - 2..dot, "AA");
        assert!(ring.verify(&tampered).is_err());
        assert_eq!(ring.verify("abc"), Err(VerifyError::Malformed));
    }
}
