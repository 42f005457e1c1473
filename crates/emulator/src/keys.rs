//! RS256 signing keys, the JWKS, and JWT signing and verification.
//!
//! Signing is done here with `rsa` (PKCS#1 v1.5 over SHA-256) rather than through a JWT
//! library, so the emulator never depends on a process-wide crypto provider choice.

use std::sync::RwLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::sha2::Sha256;
use rsa::signature::{SignatureEncoding, Signer, Verifier};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde::{Deserialize, Serialize};

/// RSA modulus size of every key.
pub const KEY_BITS: usize = 2048;

struct KeyPair {
    kid: String,
    signer: SigningKey<Sha256>,
    verifier: VerifyingKey<Sha256>,
    n: String,
    e: String,
}

/// A freshly generated key, ready to join the ring (generation is slow: do it off the runtime).
pub(crate) struct NewKey(KeyPair);

impl NewKey {
    pub(crate) fn generate() -> Result<Self, rsa::Error> {
        let private = RsaPrivateKey::new(&mut rand::rngs::OsRng, KEY_BITS)?;
        let public = RsaPublicKey::from(&private);
        let kid = format!("emu-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        Ok(Self(KeyPair {
            kid,
            n: URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            e: URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
            signer: SigningKey::<Sha256>::new(private),
            verifier: VerifyingKey::<Sha256>::new(public),
        }))
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

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
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

    /// Signs `claims` with the current key: `header.payload.signature`, header
    /// `{"alg":"RS256","typ":"JWT","kid":..}`.
    pub(crate) fn sign(&self, claims: &serde_json::Value) -> String {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let Some(key) = keys.first() else { return String::new() };
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": key.kid});
        let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = key.signer.sign(token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.to_bytes()));
        token
    }

    /// Checks the signature and returns the payload (claims not yet checked).
    pub(crate) fn verify(&self, token: &str) -> Result<serde_json::Value, VerifyError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(VerifyError::Malformed);
        };
        let header: Header = URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(VerifyError::Malformed)?;
        let payload = URL_SAFE_NO_PAD.decode(p).map_err(|_| VerifyError::Malformed)?;
        let signature = URL_SAFE_NO_PAD.decode(s).map_err(|_| VerifyError::Malformed)?;
        if header.alg != "RS256" {
            return Err(VerifyError::BadSignature);
        }
        let signature = Signature::try_from(signature.as_slice()).map_err(|_| VerifyError::BadSignature)?;
        let signed = &token[..h.len() + 1 + p.len()];
        {
            let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
            let key = keys.iter().find(|k| Some(&k.kid) == header.kid.as_ref()).ok_or(VerifyError::BadSignature)?;
            key.verifier.verify(signed.as_bytes(), &signature).map_err(|_| VerifyError::BadSignature)?;
        }
        serde_json::from_slice(&payload).map_err(|_| VerifyError::Malformed)
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
