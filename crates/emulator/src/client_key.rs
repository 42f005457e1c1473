//! The public key of a client registered for `private_key_jwt` (docs/platform.md section 1.1):
//! read from PEM once, at registration, so that a key the platform could never verify with is
//! refused there and not at every assertion.

use std::fmt;

use jsonwebtoken::{Algorithm, DecodingKey};
use rsa::RsaPublicKey;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;

/// The smallest RSA modulus accepted (RFC 7518 section 3.3).
const MIN_RSA_BITS: usize = 2048;

const NOT_A_KEY: &str = "not an RSA public key (SPKI or PKCS#1) nor an EC P-256 public key (SPKI) in PEM";

/// A client's registered public key and its key id. `Debug` shows the key id and algorithm.
#[derive(Clone)]
pub(crate) struct ClientKey {
    kid: String,
    /// `RS256` for an RSA key, `ES256` for a P-256 key: the only algorithm it verifies.
    alg: Algorithm,
    /// The PEM as registered (for equality).
    pem: String,
    decoding: DecodingKey,
}

/// Which part of a registration is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyProblem {
    /// The key id: empty or not visible ASCII.
    KeyId(String),
    /// The PEM.
    Key(String),
}

impl ClientKey {
    /// The key in `pem` (an RSA public key of at least 2048 bits, SPKI or PKCS#1, or an EC
    /// P-256 public key, SPKI) under key id `kid` (1 or more visible ASCII characters).
    pub(crate) fn from_pem(pem: &str, kid: &str) -> Result<Self, KeyProblem> {
        if kid.is_empty() || !kid.chars().all(|c| c.is_ascii_graphic()) {
            return Err(KeyProblem::KeyId("must be 1 or more visible ASCII characters".into()));
        }
        let (alg, decoding) = parse(pem).map_err(KeyProblem::Key)?;
        Ok(Self { kid: kid.to_owned(), alg, pem: pem.trim().to_owned(), decoding })
    }

    /// The registered key id.
    pub(crate) fn kid(&self) -> &str {
        &self.kid
    }

    /// The one algorithm this key verifies: `RS256` or `ES256`.
    pub(crate) fn alg(&self) -> Algorithm {
        self.alg
    }

    /// Whether `signature` (base64url, as in a JWS) is this key's signature of `message` with
    /// `alg`; any other algorithm than the key's never verifies.
    pub(crate) fn verifies(&self, alg: Algorithm, message: &[u8], signature: &str) -> bool {
        alg == self.alg && jsonwebtoken::crypto::verify(signature, message, &self.decoding, alg).unwrap_or(false)
    }
}

impl PartialEq for ClientKey {
    fn eq(&self, other: &Self) -> bool {
        (&self.kid, self.alg, &self.pem) == (&other.kid, other.alg, &other.pem)
    }
}

impl Eq for ClientKey {}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientKey").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}

/// The algorithm and the verifying key of a PEM public key. Errors never quote the PEM.
fn parse(pem: &str) -> Result<(Algorithm, DecodingKey), String> {
    if pem.contains("PRIVATE KEY-----") {
        return Err("this is a private key: register the public key only".into());
    }
    let pem = pem.trim();
    match RsaPublicKey::from_public_key_pem(pem).or_else(|_| RsaPublicKey::from_pkcs1_pem(pem)) {
        Ok(key) => rsa_key(&key),
        Err(_) => ec_key(pem),
    }
}

fn rsa_key(key: &RsaPublicKey) -> Result<(Algorithm, DecodingKey), String> {
    let bits = key.n().bits();
    if bits < MIN_RSA_BITS {
        return Err(format!("an RSA key of {bits} bits: at least {MIN_RSA_BITS} are needed"));
    }
    Ok((Algorithm::RS256, DecodingKey::from_rsa_raw_components(&key.n().to_bytes_be(), &key.e().to_bytes_be())))
}

fn ec_key(pem: &str) -> Result<(Algorithm, DecodingKey), String> {
    let key = DecodingKey::from_ec_pem(pem.as_bytes()).map_err(|_| NOT_A_KEY.to_owned())?;
    // Verifying an empty signature builds the P-256 verifier first: that fails for a point of
    // another curve, or off the curve, and only then does the signature not match.
    match jsonwebtoken::crypto::verify("", b"", &key, Algorithm::ES256) {
        Ok(_) => Ok((Algorithm::ES256, key)),
        Err(_) => Err("an EC key must be a point of the P-256 curve".into()),
    }
}
