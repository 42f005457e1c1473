//! `private_key_jwt` client authentication (RFC 7523 §2.2): the signing key
//! ([`AssertionKey`]: RS256 or ES256, read from PEM or generated), its RFC 7638 thumbprint and
//! public JWK, and the signed client assertion ([`ClientAssertion`]).
//!
//! Private keys and assertions never appear in `Debug`, `Display`, errors or logs: an assertion
//! is a bearer credential for as long as it lives.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding, PrivateKeyInfo};
use rsa::signature::{RandomizedSigner, SignatureEncoding, Signer as _};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, pkcs1v15};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The smallest RSA key accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// The longest an assertion may live (`exp - iat`).
pub const MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(300);
/// How long an assertion lives unless configured otherwise.
pub const DEFAULT_ASSERTION_LIFETIME: Duration = Duration::from_secs(60);

const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_EC: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";

/// Why a key cannot be used to sign client assertions. Never includes key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No PEM block could be read.
    #[error(
        "the private key is not PEM: expected a -----BEGIN PRIVATE KEY----- (PKCS#8), \
         -----BEGIN RSA PRIVATE KEY----- (PKCS#1) or -----BEGIN EC PRIVATE KEY----- (SEC1) block"
    )]
    NotPem,
    /// The PEM holds something else than a private key (a public key, a certificate).
    #[error("the PEM holds a {label}, not a private key")]
    NoPrivateKey {
        /// The PEM label (`PUBLIC KEY`, `CERTIFICATE`, ...).
        label: String,
    },
    /// An `ENCRYPTED PRIVATE KEY`.
    #[error(
        "the private key is encrypted; store it decrypted (openssl pkcs8 -topk8 -nocrypt) with restricted permissions"
    )]
    Encrypted,
    /// More than one private key in the PEM.
    #[error("the PEM holds more than one private key; keep only the one to sign with")]
    MultipleKeys,
    /// Neither RSA nor EC.
    #[error("unsupported key type {0}: use RSA (2048 bits or more, RS256) or EC P-256 (ES256)")]
    UnsupportedKeyType(String),
    /// An RSA key under [`MIN_RSA_BITS`].
    #[error("the RSA key has {bits} bits; at least 2048 are required")]
    RsaTooSmall {
        /// The modulus' size.
        bits: usize,
    },
    /// An EC key on another curve than P-256.
    #[error("the EC key is on {0}, not P-256 (prime256v1), the only curve ES256 allows")]
    UnsupportedCurve(String),
    /// An EC key that does not name its curve.
    #[error("the EC key does not name its curve; a P-256 (prime256v1) key is required")]
    MissingCurve,
    /// A structure that does not decode.
    #[error("the {form} private key is malformed: {reason}")]
    Malformed {
        /// `PKCS#8`, `PKCS#1` or `SEC1`.
        form: &'static str,
        /// What the decoder found (structure only, never key material).
        reason: String,
    },
    /// An algorithm name other than `RS256` and `ES256`.
    #[error("unsupported assertion algorithm {0:?}: use RS256 or ES256")]
    UnsupportedAlgorithm(String),
    /// An empty key id.
    #[error("the key id (kid) is empty")]
    EmptyKeyId,
    /// A JWK without the members its thumbprint needs.
    #[error("not a usable public JWK: {0}")]
    Jwk(String),
    /// Key generation failed.
    #[error("the key could not be generated: {0}")]
    Generate(String),
    /// PEM encoding failed.
    #[error("the key could not be encoded: {0}")]
    Encode(String),
    /// Signing failed.
    #[error("the client assertion could not be signed")]
    Sign,
}

fn malformed(form: &'static str, e: impl fmt::Display) -> KeyError {
    KeyError::Malformed { form, reason: e.to_string() }
}

/// The JWS algorithm of a client assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AssertionAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256, an RSA key of 2048 bits or more.
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
}

impl AssertionAlgorithm {
    /// The JWS name (`RS256`, `ES256`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
        }
    }
}

impl fmt::Display for AssertionAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AssertionAlgorithm {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        match s.to_ascii_uppercase().as_str() {
            "RS256" => Ok(Self::Rs256),
            "ES256" => Ok(Self::Es256),
            _ => Err(KeyError::UnsupportedAlgorithm(s.chars().take(32).collect())),
        }
    }
}

/// The private key itself; both variants zeroize their secrets on drop (clones too).
#[derive(Clone)]
enum Signer {
    Rs256(Box<pkcs1v15::SigningKey<Sha256>>),
    Es256(Box<p256::ecdsa::SigningKey>),
}

impl Signer {
    fn rsa(key: RsaPrivateKey) -> Result<Self, KeyError> {
        let bits = key.n().bits();
        if bits < MIN_RSA_BITS {
            return Err(KeyError::RsaTooSmall { bits });
        }
        Ok(Self::Rs256(Box::new(pkcs1v15::SigningKey::new(key))))
    }

    fn ec(key: p256::SecretKey) -> Self {
        Self::Es256(Box::new(p256::ecdsa::SigningKey::from(key)))
    }

    fn algorithm(&self) -> AssertionAlgorithm {
        match self {
            Self::Rs256(_) => AssertionAlgorithm::Rs256,
            Self::Es256(_) => AssertionAlgorithm::Es256,
        }
    }

    /// The RFC 7638 required public members, `kty` included.
    fn public_members(&self) -> BTreeMap<&'static str, String> {
        let mut m = BTreeMap::new();
        match self {
            Self::Rs256(k) => {
                let key: &RsaPrivateKey = k.as_ref().as_ref();
                m.insert("kty", "RSA".to_owned());
                m.insert("n", URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()));
                m.insert("e", URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()));
            }
            Self::Es256(k) => {
                let point = k.verifying_key().to_encoded_point(false);
                m.insert("kty", "EC".to_owned());
                m.insert("crv", "P-256".to_owned());
                m.insert("x", point.x().map(|x| URL_SAFE_NO_PAD.encode(x)).unwrap_or_default());
                m.insert("y", point.y().map(|y| URL_SAFE_NO_PAD.encode(y)).unwrap_or_default());
            }
        }
        m
    }

    fn sign(&self, input: &[u8]) -> Result<Vec<u8>, KeyError> {
        match self {
            // Blinded (randomized) RSA: no timing channel on the private exponent.
            Self::Rs256(k) => {
                k.try_sign_with_rng(&mut rand::thread_rng(), input).map(|s| s.to_vec()).map_err(|_| KeyError::Sign)
            }
            // RFC 6979 deterministic ECDSA; JWS wants the fixed-size r || s (RFC 7518 §3.4).
            Self::Es256(k) => k.try_sign(input).map(|s: p256::ecdsa::Signature| s.to_vec()).map_err(|_| KeyError::Sign),
        }
    }

    fn public_pem(&self) -> Result<String, KeyError> {
        match self {
            Self::Rs256(k) => {
                let key: &RsaPrivateKey = k.as_ref().as_ref();
                key.to_public_key().to_public_key_pem(LineEnding::LF)
            }
            Self::Es256(k) => k.verifying_key().to_public_key_pem(LineEnding::LF),
        }
        .map_err(|e| KeyError::Encode(e.to_string()))
    }

    fn private_pem(&self) -> Result<Zeroizing<String>, KeyError> {
        match self {
            Self::Rs256(k) => {
                let key: &RsaPrivateKey = k.as_ref().as_ref();
                key.to_pkcs8_pem(LineEnding::LF)
            }
            Self::Es256(k) => k.to_pkcs8_pem(LineEnding::LF),
        }
        .map_err(|e| KeyError::Encode(e.to_string()))
    }
}

/// A private key that signs client assertions: RSA of 2048 bits or more (RS256) or EC P-256
/// (ES256), under a key id (`kid`), by default its RFC 7638 thumbprint.
///
/// Its `Debug` shows the algorithm and the key id only; every copy zeroizes its secret when
/// dropped.
#[derive(Clone)]
pub struct AssertionKey {
    signer: Signer,
    kid: String,
    thumbprint: String,
}

impl fmt::Debug for AssertionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssertionKey")
            .field("alg", &format_args!("{}", self.algorithm()))
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl AssertionKey {
    fn new(signer: Signer) -> Self {
        let thumbprint = thumbprint_of(&signer.public_members());
        Self { signer, kid: thumbprint.clone(), thumbprint }
    }

    /// Reads an unencrypted private key from PEM: PKCS#8 (`BEGIN PRIVATE KEY`), PKCS#1
    /// (`BEGIN RSA PRIVATE KEY`) or SEC1 (`BEGIN EC PRIVATE KEY`, with or without the
    /// `EC PARAMETERS` block `openssl ecparam -genkey` writes before it).
    ///
    /// # Errors
    /// A [`KeyError`] naming what is wrong: not PEM, no or several private keys, encrypted, an
    /// unsupported key type, RSA under 2048 bits, an EC curve other than P-256, a malformed key.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let (label, der) = private_block(pem)?;
        let signer = match label.as_str() {
            "RSA PRIVATE KEY" => Signer::rsa(RsaPrivateKey::from_pkcs1_der(&der).map_err(|e| malformed("PKCS#1", e))?)?,
            "EC PRIVATE KEY" => Signer::ec(sec1_p256(&der)?),
            _ => pkcs8_signer(&der)?,
        };
        Ok(Self::new(signer))
    }

    /// A new random key: RSA-2048 for RS256, P-256 for ES256 (from the operating system's
    /// random source). RSA generation takes a while.
    ///
    /// # Errors
    /// [`KeyError::Generate`] if the random source or the generation fails.
    pub fn generate(alg: AssertionAlgorithm) -> Result<Self, KeyError> {
        let signer = match alg {
            AssertionAlgorithm::Rs256 => Signer::rsa(
                RsaPrivateKey::new(&mut rand::rngs::OsRng, MIN_RSA_BITS)
                    .map_err(|e| KeyError::Generate(e.to_string()))?,
            )?,
            AssertionAlgorithm::Es256 => {
                Signer::Es256(Box::new(p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng)))
            }
        };
        Ok(Self::new(signer))
    }

    /// Uses `kid` as the key id (the one the platform's console assigned) instead of the
    /// thumbprint.
    ///
    /// # Errors
    /// [`KeyError::EmptyKeyId`].
    pub fn with_key_id(mut self, kid: impl Into<String>) -> Result<Self, KeyError> {
        let kid = kid.into();
        if kid.is_empty() {
            return Err(KeyError::EmptyKeyId);
        }
        self.kid = kid;
        Ok(self)
    }

    /// The signature algorithm: RS256 for RSA, ES256 for P-256.
    pub fn algorithm(&self) -> AssertionAlgorithm {
        self.signer.algorithm()
    }
    /// The key id sent as the assertion header's `kid`.
    pub fn key_id(&self) -> &str {
        &self.kid
    }
    /// The RFC 7638 JWK thumbprint (SHA-256, base64url) of the public key.
    pub fn thumbprint(&self) -> String {
        self.thumbprint.clone()
    }

    /// The public key as a JWK: `kty`, `n`/`e` or `crv`/`x`/`y`, `kid`, `alg`, `use` = `sig`.
    pub fn public_jwk(&self) -> serde_json::Value {
        let mut jwk = serde_json::Map::new();
        for (k, v) in self.signer.public_members() {
            jwk.insert(k.to_owned(), v.into());
        }
        jwk.insert("kid".into(), self.kid.clone().into());
        jwk.insert("alg".into(), self.algorithm().as_str().into());
        jwk.insert("use".into(), "sig".into());
        serde_json::Value::Object(jwk)
    }

    /// The public key as PEM (SubjectPublicKeyInfo, `BEGIN PUBLIC KEY`).
    ///
    /// # Errors
    /// [`KeyError::Encode`] (not expected for a key that was read or generated).
    pub fn public_pem(&self) -> Result<String, KeyError> {
        self.signer.public_pem()
    }

    /// The private key as unencrypted PKCS#8 PEM (`BEGIN PRIVATE KEY`), zeroized on drop.
    ///
    /// # Errors
    /// [`KeyError::Encode`] (not expected for a key that was read or generated).
    pub fn private_pem(&self) -> Result<Zeroizing<String>, KeyError> {
        self.signer.private_pem()
    }

    /// Signs a client assertion (RFC 7523 §3): header `alg`, `typ` = `JWT`, `kid`; claims `iss`
    /// = `sub` = `client_id`, `aud` = `audience`, a fresh random 128-bit `jti` (base64url),
    /// `iat` = `issued_at` (whole seconds) and `exp` = `iat` + `lifetime` (whole seconds). The
    /// caller chooses the lifetime; [`crate::TenantAuth`] keeps it within
    /// [`MAX_ASSERTION_LIFETIME`].
    ///
    /// # Errors
    /// [`KeyError::Sign`] if signing fails.
    pub fn sign_assertion(
        &self,
        client_id: &str,
        audience: &str,
        issued_at: DateTime<Utc>,
        lifetime: Duration,
    ) -> Result<ClientAssertion, KeyError> {
        let iat = issued_at.timestamp();
        let exp = iat.saturating_add(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX));
        let header = serde_json::json!({"alg": self.algorithm().as_str(), "typ": "JWT", "kid": self.kid});
        let claims = serde_json::json!({
            "iss": client_id, "sub": client_id, "aud": audience, "jti": new_jti(), "iat": iat, "exp": exp,
        });
        let mut jwt = Zeroizing::new(format!("{}.{}", b64_json(&header), b64_json(&claims)));
        let signature = self.signer.sign(jwt.as_bytes())?;
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(ClientAssertion(jwt))
    }
}

/// A signed client assertion: a bearer credential until it expires. Its `Debug` is redacted.
pub struct ClientAssertion(Zeroizing<String>);

impl ClientAssertion {
    pub(crate) fn new(jwt: String) -> Self {
        Self(Zeroizing::new(jwt))
    }

    /// The compact JWS, for the one place that sends it.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientAssertion([redacted])")
    }
}

/// The RFC 7638 thumbprint (SHA-256, base64url) of a public JWK: RSA (`e`, `kty`, `n`), EC
/// (`crv`, `kty`, `x`, `y`) or OKP (`crv`, `kty`, `x`, RFC 8037). Other members are ignored.
///
/// # Errors
/// [`KeyError::Jwk`] when `kty` is missing or another (`oct` keys are secrets and have no
/// thumbprint here), or a required member is missing or not a string.
pub fn jwk_thumbprint(jwk: &serde_json::Value) -> Result<String, KeyError> {
    let member = |name: &'static str| {
        jwk.get(name).and_then(serde_json::Value::as_str).ok_or_else(|| KeyError::Jwk(format!("no string {name:?}")))
    };
    let required: &[&'static str] = match member("kty")? {
        "RSA" => &["e", "kty", "n"],
        "EC" => &["crv", "kty", "x", "y"],
        "OKP" => &["crv", "kty", "x"],
        other => {
            return Err(KeyError::Jwk(format!(
                "kty {:?} is not RSA, EC or OKP",
                other.chars().take(16).collect::<String>()
            )));
        }
    };
    let mut members = BTreeMap::new();
    for name in required {
        members.insert(*name, member(name)?.to_owned());
    }
    Ok(thumbprint_of(&members))
}

/// base64url(SHA-256(the members as JSON, sorted, without whitespace)).
fn thumbprint_of(members: &BTreeMap<&'static str, String>) -> String {
    // A map of strings always serialises; BTreeMap orders the keys as RFC 7638 §3.3 requires.
    let canonical = serde_json::to_string(members).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

fn b64_json(v: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// 128 random bits, base64url.
fn new_jti() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}

/// The one private key block of `pem` (label and DER); `EC PARAMETERS` blocks are skipped.
fn private_block(pem: &str) -> Result<(String, Zeroizing<Vec<u8>>), KeyError> {
    let blocks = pem::parse_many(pem).map_err(|_| KeyError::NotPem)?;
    let mut found = None;
    let mut other = None;
    for block in blocks {
        let label = block.tag().to_owned();
        let der = Zeroizing::new(block.into_contents());
        match label.as_str() {
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" if found.is_some() => {
                return Err(KeyError::MultipleKeys);
            }
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" => found = Some((label, der)),
            "ENCRYPTED PRIVATE KEY" => return Err(KeyError::Encrypted),
            "EC PARAMETERS" => {}
            l if l.contains("PRIVATE KEY") => return Err(KeyError::UnsupportedKeyType(format!("{l:?} (PEM label)"))),
            _ => other = other.or(Some(label)),
        }
    }
    match (found, other) {
        (Some(f), _) => Ok(f),
        (None, Some(label)) => Err(KeyError::NoPrivateKey { label }),
        (None, None) => Err(KeyError::NotPem),
    }
}

/// A PKCS#8 key: RSA or EC P-256.
fn pkcs8_signer(der: &[u8]) -> Result<Signer, KeyError> {
    let info = PrivateKeyInfo::try_from(der).map_err(|e| malformed("PKCS#8", e))?;
    match info.algorithm.oid.to_string().as_str() {
        OID_RSA => Signer::rsa(RsaPrivateKey::try_from(info).map_err(|e| malformed("PKCS#8", e))?),
        OID_EC => {
            check_curve(info.algorithm.parameters_oid().ok().map(|o| o.to_string()))?;
            Ok(Signer::ec(p256::SecretKey::try_from(info).map_err(|e| malformed("PKCS#8", e))?))
        }
        oid => Err(KeyError::UnsupportedKeyType(key_type_name(oid))),
    }
}

/// A SEC1 `EC PRIVATE KEY` on P-256.
fn sec1_p256(der: &[u8]) -> Result<p256::SecretKey, KeyError> {
    let key = sec1::EcPrivateKey::try_from(der).map_err(|e| malformed("SEC1", e))?;
    check_curve(key.parameters.and_then(|p| p.named_curve()).map(|o| o.to_string()))?;
    p256::SecretKey::from_sec1_der(der).map_err(|e| malformed("SEC1", e))
}

fn check_curve(oid: Option<String>) -> Result<(), KeyError> {
    match oid.as_deref() {
        Some(OID_P256) => Ok(()),
        Some(other) => Err(KeyError::UnsupportedCurve(curve_name(other))),
        None => Err(KeyError::MissingCurve),
    }
}

fn curve_name(oid: &str) -> String {
    match oid {
        "1.3.132.0.34" => "P-384 (secp384r1)".into(),
        "1.3.132.0.35" => "P-521 (secp521r1)".into(),
        "1.3.132.0.10" => "secp256k1".into(),
        "1.3.36.3.3.2.8.1.1.7" => "brainpoolP256r1".into(),
        other => format!("the curve with OID {other}"),
    }
}

fn key_type_name(oid: &str) -> String {
    match oid {
        "1.3.101.112" => "Ed25519".into(),
        "1.3.101.113" => "Ed448".into(),
        "1.3.101.110" => "X25519".into(),
        "1.3.101.111" => "X448".into(),
        "1.2.840.10040.4.1" => "DSA".into(),
        "1.2.840.113549.1.1.10" => "RSASSA-PSS (an RSA key restricted to PSS; RS256 needs an rsaEncryption key)".into(),
        other => format!("with algorithm OID {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rfc7638_members() -> BTreeMap<&'static str, String> {
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        BTreeMap::from([("kty", "RSA".to_owned()), ("n", n.to_owned()), ("e", "AQAB".to_owned())])
    }

    #[test]
    fn the_thumbprint_of_rfc7638s_example_key() {
        assert_eq!(thumbprint_of(&rfc7638_members()), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn ec_members_are_hashed_in_lexicographic_order_without_whitespace() {
        let k = AssertionKey::generate(AssertionAlgorithm::Es256).unwrap();
        let m = k.signer.public_members();
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#, m["x"], m["y"]);
        assert_eq!(k.thumbprint(), URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())));
        assert_eq!((m["x"].len(), m["y"].len()), (43, 43), "32-byte coordinates");
    }

    #[test]
    fn assertions_carry_the_claims_and_a_fresh_jti() {
        let k = AssertionKey::generate(AssertionAlgorithm::Es256).unwrap();
        let at = DateTime::from_timestamp(1_900_000_000, 0).unwrap();
        let claims = |a: &ClientAssertion| -> serde_json::Value {
            let payload = a.secret().split('.').nth(1).unwrap();
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
        };
        let (a, b) = (
            k.sign_assertion("app-a", "https://x/token", at, Duration::from_secs(90)).unwrap(),
            k.sign_assertion("app-a", "https://x/token", at, Duration::from_secs(90)).unwrap(),
        );
        let (ca, cb) = (claims(&a), claims(&b));
        assert_eq!((&ca["iss"], &ca["sub"], &ca["aud"]), (&"app-a".into(), &"app-a".into(), &"https://x/token".into()));
        assert_eq!((ca["iat"].as_i64(), ca["exp"].as_i64()), (Some(1_900_000_000), Some(1_900_000_090)));
        assert_ne!(ca["jti"], cb["jti"]);
        assert_eq!(URL_SAFE_NO_PAD.decode(ca["jti"].as_str().unwrap()).unwrap().len(), 16);
        let sig = URL_SAFE_NO_PAD.decode(a.secret().rsplit('.').next().unwrap()).unwrap();
        assert_eq!(sig.len(), 64, "ES256 is r || s");
        assert_eq!(format!("{a:?}"), "ClientAssertion([redacted])");
    }

    #[test]
    fn debug_shows_the_algorithm_and_kid_only() {
        let k = AssertionKey::generate(AssertionAlgorithm::Es256).unwrap().with_key_id("k-1").unwrap();
        let shown = format!("{k:?} {k:#?}");
        assert!(shown.starts_with(r#"AssertionKey { alg: ES256, kid: "k-1", .. }"#), "{shown}");
        let pem = k.private_pem().unwrap();
        let secret_line = pem.lines().nth(1).unwrap();
        assert!(!shown.contains(secret_line), "{shown}");
    }

    #[test]
    fn algorithms_parse_and_display_as_jws_names() {
        assert_eq!("rs256".parse::<AssertionAlgorithm>().unwrap(), AssertionAlgorithm::Rs256);
        assert_eq!(AssertionAlgorithm::Es256.to_string(), "ES256");
        assert_eq!(serde_json::to_value(AssertionAlgorithm::Rs256).unwrap(), "RS256");
        assert!(matches!("HS256".parse::<AssertionAlgorithm>(), Err(KeyError::UnsupportedAlgorithm(_))));
    }
}
