//! Client assertions minted outside billsync (by an HSM, a KMS or a signing sidecar) and
//! written to a file (`client_assertion_file`). The file is read afresh for every token
//! request and checked before it is sent: the platform answers every bad assertion with a bare
//! `invalid_client` (docs/platform.md §1.1), so whatever can be seen here is named here, each
//! problem with its own code.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::assertion::{ClientAssertion, MAX_ASSERTION_LIFETIME};
use crate::jwt::{MAX_TOKEN_LEN, decode_unverified};

/// How far ahead of the token endpoint's clock an assertion's `iat` may be (docs/platform.md
/// §1.1): further ahead, it is refused as not yet valid.
pub const MAX_IAT_AHEAD: chrono::Duration = chrono::Duration::seconds(60);

/// Why a client assertion file cannot be sent. Each kind has a stable [`code`](Self::code);
/// none shows the assertion itself (a bearer credential until it expires).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssertionProblem {
    /// The file cannot be read (missing, a directory, too large, not UTF-8).
    #[error("client_assertion_file {path} cannot be read: {reason}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file does not hold a compact JWS with the claims of docs/platform.md §1.1.
    #[error("the client assertion is not a usable JWT: {reason}")]
    Malformed {
        /// What is missing or broken.
        reason: String,
    },
    /// `exp` has passed on the token endpoint's clock: the file was not rotated in time.
    #[error(
        "the client assertion expired at {expired_at} (token endpoint time {now}); whatever writes the file has not \
         rotated it: billsync waits for a fresh one"
    )]
    Expired {
        /// The assertion's `exp`.
        expired_at: DateTime<Utc>,
        /// The token endpoint's time now (ours corrected by the measured skew).
        now: DateTime<Utc>,
    },
    /// `iat` lies more than [`MAX_IAT_AHEAD`] ahead of the token endpoint's clock.
    #[error(
        "the client assertion is issued at {issued_at}, more than 60 s ahead of the token endpoint's time {now}: \
         the signer's clock is ahead"
    )]
    NotYetValid {
        /// The assertion's `iat`.
        issued_at: DateTime<Utc>,
        /// The token endpoint's time now.
        now: DateTime<Utc>,
    },
    /// `exp - iat` is over 300 s, which the platform refuses.
    #[error("the client assertion lives {seconds} s (exp - iat); the platform accepts at most 300 s")]
    Lifetime {
        /// `exp - iat`.
        seconds: i64,
    },
    /// `aud` is not the token URL the request goes to.
    #[error("the client assertion's aud is {found}, not the token URL it is posted to, {expected}")]
    Audience {
        /// The `aud` found (JSON).
        found: String,
        /// The token URL, exactly as posted.
        expected: String,
    },
    /// `iss` or `sub` is not the tenant's client id.
    #[error("the client assertion's {claim} is {found}, not the tenant's client id {expected}")]
    Issuer {
        /// `iss` or `sub`.
        claim: &'static str,
        /// The value found (JSON).
        found: String,
        /// The client id.
        expected: String,
    },
    /// This agent already sent an assertion with this `jti`: sending it again would be
    /// refused as a replay.
    #[error(
        "this client assertion (jti {jti}) was already sent; the platform would refuse it as a replay, so billsync \
         waits until whatever writes the file rotates it"
    )]
    NotRotated {
        /// The repeated `jti` (not a secret: an identifier).
        jti: String,
    },
}

impl AssertionProblem {
    /// The reason code: `assertion_unreadable`, `assertion_malformed`, `assertion_expired`,
    /// `assertion_not_yet_valid`, `assertion_lifetime`, `assertion_audience`,
    /// `assertion_issuer` or `assertion_not_rotated`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unreadable { .. } => "assertion_unreadable",
            Self::Malformed { .. } => "assertion_malformed",
            Self::Expired { .. } => "assertion_expired",
            Self::NotYetValid { .. } => "assertion_not_yet_valid",
            Self::Lifetime { .. } => "assertion_lifetime",
            Self::Audience { .. } => "assertion_audience",
            Self::Issuer { .. } => "assertion_issuer",
            Self::NotRotated { .. } => "assertion_not_rotated",
        }
    }
}

/// A client assertion from a file that passed [`check_assertion`].
pub struct ExternalAssertion {
    assertion: ClientAssertion,
    jti: String,
    expires_at: DateTime<Utc>,
}

impl fmt::Debug for ExternalAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalAssertion")
            .field("assertion", &self.assertion)
            .field("jti", &self.jti)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl ExternalAssertion {
    /// The assertion to send.
    pub fn assertion(&self) -> &ClientAssertion {
        &self.assertion
    }
    /// Its `jti`.
    pub fn jti(&self) -> &str {
        &self.jti
    }
    /// Its `exp`.
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.expires_at
    }
    /// The assertion, to send.
    pub fn into_assertion(self) -> ClientAssertion {
        self.assertion
    }
}

/// Reads a client assertion file: at most 64 KiB of UTF-8, surrounding whitespace trimmed.
///
/// # Errors
/// [`AssertionProblem::Unreadable`] naming the file and why.
pub fn read_assertion_file(path: &Path) -> Result<Zeroizing<String>, AssertionProblem> {
    let unreadable = |reason: String| AssertionProblem::Unreadable { path: path.display().to_string(), reason };
    let file = std::fs::File::open(path).map_err(|e| unreadable(e.to_string()))?;
    let mut bytes = Zeroizing::new(Vec::new());
    let limit = u64::try_from(MAX_TOKEN_LEN).unwrap_or(u64::MAX) + 1;
    file.take(limit).read_to_end(&mut bytes).map_err(|e| unreadable(e.to_string()))?;
    if bytes.len() > MAX_TOKEN_LEN {
        return Err(unreadable(format!("it is larger than {MAX_TOKEN_LEN} bytes")));
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| unreadable("it is not UTF-8 text".into()))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(unreadable("it is empty".into()));
    }
    Ok(Zeroizing::new(trimmed.to_owned()))
}

/// Checks an assertion minted elsewhere against what the platform will check (docs/platform.md
/// §1.1), at `now` on the token endpoint's clock: a compact JWS with `alg` RS256 or ES256 and a
/// `kid`; `iss` = `sub` = `client_id`; `aud` = `audience` (one of several is enough); a `jti`;
/// `exp` in the future, `iat` at most 60 s ahead, and `exp - iat` ≤ 300 s. The signature is
/// not checked: only the platform has the registered public key.
///
/// # Errors
/// The first [`AssertionProblem`] found, in the order above.
pub fn check_assertion(
    text: &str,
    client_id: &str,
    audience: &str,
    now: DateTime<Utc>,
) -> Result<ExternalAssertion, AssertionProblem> {
    let malformed = |reason: String| AssertionProblem::Malformed { reason };
    let jwt = decode_unverified(text).map_err(|e| malformed(e.to_string()))?;
    match jwt.header_str("alg") {
        Some("RS256" | "ES256") => {}
        Some(other) => return Err(malformed(format!("header alg {other:?} is not RS256 or ES256"))),
        None => return Err(malformed("the header has no alg".into())),
    }
    if jwt.header_str("kid").is_none_or(str::is_empty) {
        return Err(malformed("the header has no kid (the registered key id)".into()));
    }
    let claims = &jwt.payload;
    for claim in ["iss", "sub"] {
        if claims.get(claim).and_then(Value::as_str) != Some(client_id) {
            return Err(AssertionProblem::Issuer {
                claim,
                found: shown(claims.get(claim)),
                expected: client_id.into(),
            });
        }
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == audience,
        Some(Value::Array(all)) => all.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    };
    if !aud_ok {
        return Err(AssertionProblem::Audience { found: shown(claims.get("aud")), expected: audience.into() });
    }
    let jti = match claims.get("jti").and_then(Value::as_str) {
        Some(j) if !j.is_empty() => j.to_owned(),
        _ => return Err(malformed("it has no jti (a unique id per assertion)".into())),
    };
    let (issued_at, expires_at) = (time(claims, "iat")?, time(claims, "exp")?);
    if expires_at <= now {
        return Err(AssertionProblem::Expired { expired_at: expires_at, now });
    }
    if now.checked_add_signed(MAX_IAT_AHEAD).is_some_and(|limit| issued_at > limit) {
        return Err(AssertionProblem::NotYetValid { issued_at, now });
    }
    let seconds = expires_at.timestamp().saturating_sub(issued_at.timestamp());
    if seconds > i64::try_from(MAX_ASSERTION_LIFETIME.as_secs()).unwrap_or(i64::MAX) {
        return Err(AssertionProblem::Lifetime { seconds });
    }
    Ok(ExternalAssertion { assertion: ClientAssertion::new(text.trim().to_owned()), jti, expires_at })
}

/// A NumericDate claim as a time.
fn time(claims: &Map<String, Value>, name: &str) -> Result<DateTime<Utc>, AssertionProblem> {
    claims
        .get(name)
        .and_then(Value::as_i64)
        .and_then(|s| DateTime::from_timestamp(s, 0))
        .ok_or_else(|| AssertionProblem::Malformed { reason: format!("{name} is missing or not a time in seconds") })
}

/// A claim's value for a message: JSON, at most 120 characters.
fn shown(v: Option<&Value>) -> String {
    let s = v.map_or_else(|| "(absent)".to_owned(), Value::to_string);
    if s.chars().count() > 120 { format!("{}...", s.chars().take(120).collect::<String>()) } else { s }
}

/// The `jti`s this agent has sent per tenant, each kept until its assertion expires (after
/// that the platform would refuse the assertion as expired anyway).
#[derive(Debug, Default)]
pub(crate) struct SentJtis {
    by_tenant: HashMap<String, Vec<(String, DateTime<Utc>)>>,
}

impl SentJtis {
    /// Whether `jti` was sent for `tenant` and has not expired by `now`.
    pub fn seen(&mut self, tenant: &str, jti: &str, now: DateTime<Utc>) -> bool {
        let list = self.by_tenant.entry(tenant.to_owned()).or_default();
        list.retain(|(_, exp)| *exp > now);
        list.iter().any(|(j, _)| j == jti)
    }

    /// Records that `jti` (valid until `expires_at`) is being sent for `tenant`.
    pub fn record(&mut self, tenant: &str, jti: &str, expires_at: DateTime<Utc>) {
        self.by_tenant.entry(tenant.to_owned()).or_default().push((jti.to_owned(), expires_at));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code: a panic is the failure
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use chrono::TimeZone;

    use super::*;

    const AUD: &str = "https://iot.example.com/iot/api/v2/oauth2/token";

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000, 0).unwrap()
    }

    fn jwt(header: &Value, claims: &Value) -> String {
        let enc = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.c2ln", enc(header), enc(claims))
    }

    fn good() -> Value {
        serde_json::json!({"iss": "app", "sub": "app", "aud": AUD, "jti": "j1", "iat": 1_800_000_000i64 - 10, "exp": 1_800_000_050i64})
    }

    fn check_with(edit: impl FnOnce(&mut Value)) -> Result<ExternalAssertion, AssertionProblem> {
        let mut claims = good();
        edit(&mut claims);
        check_assertion(&jwt(&serde_json::json!({"alg": "ES256", "kid": "k"}), &claims), "app", AUD, now())
    }

    #[test]
    fn a_good_assertion_passes_with_its_jti_and_expiry() {
        let a = check_with(|_| {}).unwrap();
        assert_eq!((a.jti(), a.expires_at().timestamp()), ("j1", 1_800_000_050));
        assert!(!format!("{a:?}").contains("c2ln"), "Debug shows no assertion");
    }

    type Edit = Box<dyn FnOnce(&mut Value)>;

    #[test]
    fn every_problem_is_named_by_its_code() {
        let cases: Vec<(&str, Edit)> = vec![
            ("assertion_expired", Box::new(|c| c["exp"] = 1_800_000_000i64.into())),
            ("assertion_not_yet_valid", Box::new(|c| c["iat"] = 1_800_000_061i64.into())),
            ("assertion_lifetime", Box::new(|c| c["iat"] = 1_799_999_749i64.into())),
            ("assertion_audience", Box::new(|c| c["aud"] = "https://iot.example.com/oauth2/v1/token".into())),
            ("assertion_issuer", Box::new(|c| c["iss"] = "other".into())),
            ("assertion_issuer", Box::new(|c| c["sub"] = Value::Null)),
            ("assertion_malformed", Box::new(|c| c["jti"] = "".into())),
            ("assertion_malformed", Box::new(|c| c["exp"] = "soon".into())),
        ];
        for (code, edit) in cases {
            let e = check_with(edit).unwrap_err();
            assert_eq!(e.code(), code, "{e}");
        }
        let aud_list = check_with(|c| c["aud"] = serde_json::json!(["x", AUD]));
        assert!(aud_list.is_ok(), "one audience of several is enough");
        let lifetime_300 = check_with(|c| c["iat"] = 1_799_999_750i64.into());
        assert!(lifetime_300.is_ok(), "300 s is allowed");
    }

    #[test]
    fn the_header_must_name_an_allowed_alg_and_a_kid() {
        for header in [serde_json::json!({"alg": "HS256", "kid": "k"}), serde_json::json!({"alg": "RS256"})] {
            let e = check_assertion(&jwt(&header, &good()), "app", AUD, now()).unwrap_err();
            assert_eq!(e.code(), "assertion_malformed", "{e}");
        }
        let e = check_assertion("not a jwt", "app", AUD, now()).unwrap_err();
        assert_eq!(e.code(), "assertion_malformed");
    }

    #[test]
    fn a_jti_is_remembered_until_its_assertion_expires() {
        let mut sent = SentJtis::default();
        let exp = now() + chrono::Duration::seconds(60);
        assert!(!sent.seen("acme", "j1", now()));
        sent.record("acme", "j1", exp);
        assert!(sent.seen("acme", "j1", now()));
        assert!(!sent.seen("globex", "j1", now()), "per tenant");
        assert!(!sent.seen("acme", "j1", exp), "forgotten once expired");
    }

    #[test]
    fn a_file_is_read_trimmed_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jwt");
        std::fs::write(&path, "  abc.def.ghi\n").unwrap();
        assert_eq!(read_assertion_file(&path).unwrap().as_str(), "abc.def.ghi");
        std::fs::write(&path, vec![b'a'; MAX_TOKEN_LEN + 1]).unwrap();
        assert_eq!(read_assertion_file(&path).unwrap_err().code(), "assertion_unreadable");
        let e = read_assertion_file(&dir.path().join("missing")).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
