//! RS256 signing keys, the JWKS, and JWT signing and verification (through jsonwebtoken).
//! Test aids sign with the other RSA algorithms too, and withdraw old keys from the JWKS (the
//! methods of [`crate::Emulator`] at the end).

use std::fmt;
use std::str::FromStr;
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
    /// Every key that may have signed a live token (unless withdrawn), the current one first.
    pub keys: Vec<Jwk>,
}

/// An RSA signature algorithm the signing key can sign with (a test aid: the platform's own
/// tokens, and the only ones it accepts, are RS256).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SigningAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256: the platform's algorithm.
    #[default]
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// RSASSA-PSS with SHA-384.
    Ps384,
    /// RSASSA-PSS with SHA-512.
    Ps512,
}

impl SigningAlg {
    /// Every algorithm, in the order above.
    pub const ALL: [SigningAlg; 6] = [Self::Rs256, Self::Rs384, Self::Rs512, Self::Ps256, Self::Ps384, Self::Ps512];

    /// The JOSE name (`RS384`), as in a token's `alg` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Ps256 => "PS256",
            Self::Ps384 => "PS384",
            Self::Ps512 => "PS512",
        }
    }

    fn algorithm(self) -> Algorithm {
        match self {
            Self::Rs256 => Algorithm::RS256,
            Self::Rs384 => Algorithm::RS384,
            Self::Rs512 => Algorithm::RS512,
            Self::Ps256 => Algorithm::PS256,
            Self::Ps384 => Algorithm::PS384,
            Self::Ps512 => Algorithm::PS512,
        }
    }
}

impl fmt::Display for SigningAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of the [`SigningAlg`]s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("alg {0:?} is not one the signing key can sign with: use RS256, RS384, RS512, PS256, PS384 or PS512")]
pub struct UnknownAlg(pub String);

impl FromStr for SigningAlg {
    type Err = UnknownAlg;
    fn from_str(s: &str) -> Result<Self, UnknownAlg> {
        Self::ALL.into_iter().find(|a| a.as_str() == s).ok_or_else(|| UnknownAlg(s.to_owned()))
    }
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
/// after a rotation until they expire, or until their key is withdrawn).
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

    /// Removes key `kid` from the JWKS (and from verification); the current signing key cannot
    /// be withdrawn. Whether a key was removed.
    pub(crate) fn withdraw(&self, kid: &str) -> bool {
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let Some(at) = keys.iter().position(|k| k.kid == kid).filter(|&i| i > 0) else { return false };
        keys.remove(at);
        true
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
        self.sign_as(claims, SigningAlg::Rs256)
    }

    /// Signs `claims` with the current key and `alg`; header `{"typ":"JWT","alg":..,"kid":..}`.
    pub(crate) fn sign_as(&self, claims: &serde_json::Value, alg: SigningAlg) -> String {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let Some(key) = keys.first() else { return String::new() };
        let header = Header { kid: Some(key.kid.clone()), ..Header::new(alg.algorithm()) };
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

/// The test aids of RFC 8725 on [`crate::Emulator`]: tokens signed with another algorithm,
/// withdrawn keys, the JWKS's max-age.
impl crate::Emulator {
    /// Signs arbitrary claims with the current key and `alg` in the header: a test aid for
    /// tokens the platform never issues (RS384, PS256, ...; it accepts RS256 only).
    pub fn sign_claims_with(&self, claims: &serde_json::Value, alg: SigningAlg) -> String {
        self.state.keys.sign_as(claims, alg)
    }

    /// Withdraws key `kid` from the JWKS: tokens it signed no longer verify here, and a client
    /// that refetches the JWKS no longer finds it. The current signing key cannot be withdrawn
    /// (rotate first). Whether a key was withdrawn.
    pub fn withdraw_key(&self, kid: &str) -> bool {
        let withdrawn = self.state.keys.withdraw(kid);
        if withdrawn {
            tracing::info!(kid = %kid, "signing key withdrawn from the JWKS");
        }
        withdrawn
    }

    /// The JWKS's `Cache-Control: max-age` from now on (whole seconds); `None` sends no
    /// `Cache-Control` (the default). Also `jwks_max_age_s` in [`crate::SettingsUpdate`].
    pub fn set_jwks_max_age(&self, max_age: Option<std::time::Duration>) {
        self.state.update_settings(|s| s.jwks_max_age_s = max_age.map(|d| d.as_secs()));
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

    #[test]
    fn other_algs_sign_but_never_verify_and_withdrawn_keys_are_gone() {
        let ring = KeyRing::new(NewKey::generate().unwrap());
        let claims = serde_json::json!({"sub": "app-a"});
        for alg in SigningAlg::ALL {
            assert_eq!(alg.as_str().parse::<SigningAlg>(), Ok(alg));
            let token = ring.sign_as(&claims, alg);
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(format!("{:?}", header.alg), alg.as_str());
            let verified = ring.verify(&token);
            assert_eq!(verified.is_ok(), alg == SigningAlg::Rs256, "{alg}");
        }
        assert!("HS256".parse::<SigningAlg>().unwrap_err().to_string().contains("HS256"));

        let first = ring.current_kid();
        let old = ring.sign(&claims);
        assert!(!ring.withdraw(&first), "the signing key stays");
        ring.rotate(NewKey::generate().unwrap());
        assert!(ring.withdraw(&first) && !ring.withdraw(&first) && !ring.withdraw("nope"));
        assert_eq!(ring.jwks().keys.len(), 1);
        assert_eq!(ring.verify(&old), Err(VerifyError::BadSignature));
    }
}
