//! Signed client assertions (docs/platform.md section 1.1; RFC 7523 section 2.2, OpenID
//! Connect's `private_key_jwt`): every check of one assertion, each refusal with its audit
//! reason, and the memory of the `jti`s already used. Knows no HTTP: `http::client_auth` hands
//! it the assertion, the `client_id` parameter, the URL posted to and the time.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::audit::Reason;
use crate::client_key::ClientKey;

/// The `client_assertion_type` of a JWT assertion (RFC 7523 section 2.2).
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The longest an assertion may live, `exp - iat`, in seconds.
pub(crate) const MAX_ASSERTION_LIFETIME_S: i64 = 300;
/// How far ahead of the platform's clock an assertion's `iat` (or `nbf`) may be, in seconds.
pub(crate) const ASSERTION_MAX_AHEAD_S: i64 = 60;

/// An assertion as a token request presents it.
pub(crate) struct Presented<'a> {
    /// The `client_assertion` parameter.
    pub assertion: &'a str,
    /// The `client_id` parameter, if sent.
    pub client_id: Option<&'a str>,
    /// The URL of the token endpoint posted to: the only `aud` accepted.
    pub audience: &'a str,
    /// The platform's clock, in seconds since the epoch.
    pub now: i64,
}

/// What the registry holds for an assertion's `iss`.
pub(crate) enum Issuer {
    /// No such client.
    Unknown,
    /// A client registered with a secret.
    Secret,
    /// A client registered with this public key.
    Key(ClientKey),
}

/// An accepted assertion: the client it proves, and its `jti`.
#[derive(Debug)]
pub(crate) struct Accepted {
    pub client_id: String,
    pub jti: String,
}

/// A refused assertion: why (every time and audience problem at once), in words for the audit
/// log, and who it claimed to be once that is known.
#[derive(Debug)]
pub(crate) struct Refused {
    pub reasons: Vec<Reason>,
    pub detail: String,
    pub client_id: Option<String>,
    /// The assertion's `jti`, once its signature verified.
    pub jti: Option<String>,
}

fn refused(reason: Reason, detail: impl Into<String>, client_id: Option<&str>) -> Refused {
    Refused { reasons: vec![reason], detail: detail.into(), client_id: client_id.map(str::to_owned), jti: None }
}

#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    kid: Option<String>,
}

/// `aud`: one audience or several (RFC 7519 section 4.1.3).
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, url: &str) -> bool {
        match self {
            Self::One(a) => a == url,
            Self::Many(all) => all.iter().any(|a| a == url),
        }
    }
}

/// The claims every assertion must carry; times in whole seconds.
#[derive(Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: Audience,
    jti: String,
    iat: i64,
    exp: i64,
    nbf: Option<i64>,
}

/// A JWS in compact form, its header and claims decoded but nothing verified yet.
struct Jwt<'a> {
    header: JoseHeader,
    claims: Claims,
    /// `header.payload`, what the signature signs.
    signed: &'a str,
    signature: &'a str,
}

fn decode_part<T: DeserializeOwned>(part: &str, what: &str) -> Result<T, String> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| format!("the {what} is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("the {what} is not as expected: {e}"))
}

impl<'a> Jwt<'a> {
    fn parse(token: &'a str) -> Result<Self, String> {
        let (signed, signature) = token.rsplit_once('.').ok_or("not a JWT: no dots")?;
        let Some((header, payload)) = signed.split_once('.').filter(|(_, p)| !p.contains('.')) else {
            return Err("not a JWT: not three parts".into());
        };
        let header: JoseHeader = decode_part(header, "header")?;
        let claims: Claims = decode_part(payload, "claims")?;
        if claims.jti.is_empty() {
            return Err("the jti is empty".into());
        }
        Ok(Self { header, claims, signed, signature })
    }
}

/// Checks an assertion in the order of docs/emulator.md: its form, who it names, the key, the
/// signature, then audience and times (all problems at once), then replay. `lookup` gives the
/// registration of a client id; `seen` remembers the `jti`s used.
pub(crate) fn verify(
    p: &Presented<'_>,
    lookup: impl FnOnce(&str) -> Issuer,
    seen: &SeenAssertions,
) -> Result<Accepted, Refused> {
    let jwt = Jwt::parse(p.assertion).map_err(|d| refused(Reason::MalformedAssertion, d, p.client_id))?;
    let iss = jwt.claims.iss.as_str();
    let by = |reason, detail: String| refused(reason, detail, Some(iss));
    if let Some(id) = p.client_id.filter(|id| *id != iss) {
        return Err(by(Reason::AssertionClientMismatch, format!("client_id {id:?} is not the assertion's iss")));
    }
    if jwt.claims.sub != iss {
        return Err(by(Reason::AssertionClientMismatch, format!("sub {:?} is not iss {iss:?}", jwt.claims.sub)));
    }
    let key = match lookup(iss) {
        Issuer::Key(key) => key,
        Issuer::Unknown => return Err(by(Reason::InvalidClient, "unknown client".into())),
        Issuer::Secret => {
            return Err(by(Reason::AssertionNotAllowed, "the client is registered with a secret, not a key".into()));
        }
    };
    check_signature(&jwt, &key).map_err(|(reason, detail)| by(reason, detail))?;
    let with_jti = |mut r: Refused| {
        r.jti = Some(jwt.claims.jti.clone());
        r
    };
    let problems = time_and_audience(&jwt.claims, p);
    if !problems.is_empty() {
        let (reasons, details): (Vec<Reason>, Vec<String>) = problems.into_iter().unzip();
        return Err(with_jti(Refused {
            reasons,
            detail: details.join("; "),
            client_id: Some(iss.to_owned()),
            jti: None,
        }));
    }
    if !seen.first_use(iss, &jwt.claims.jti, jwt.claims.exp, p.now) {
        return Err(with_jti(by(Reason::AssertionReplayed, "this jti was used before".into())));
    }
    Ok(Accepted { client_id: iss.to_owned(), jti: jwt.claims.jti })
}

/// The registered `kid`, then the signature with the key's own algorithm.
fn check_signature(jwt: &Jwt<'_>, key: &ClientKey) -> Result<(), (Reason, String)> {
    if jwt.header.kid.as_deref() != Some(key.kid()) {
        let detail = format!("kid {:?} is not the client's key id {:?}", jwt.header.kid, key.kid());
        return Err((Reason::UnknownKey, detail));
    }
    let alg = match jwt.header.alg.as_str() {
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        _ => None,
    };
    match alg {
        Some(alg) if key.verifies(alg, jwt.signed.as_bytes(), jwt.signature) => Ok(()),
        Some(alg) if alg != key.alg() => {
            Err((Reason::BadAssertionSignature, format!("alg {alg:?} is not the key's {:?}", key.alg())))
        }
        Some(_) => Err((Reason::BadAssertionSignature, "the signature does not verify with the client's key".into())),
        None => Err((Reason::BadAssertionSignature, format!("alg {:?}: only RS256 and ES256", jwt.header.alg))),
    }
}

/// Every problem of `aud`, lifetime, expiry and `iat`/`nbf`, in that order.
fn time_and_audience(c: &Claims, p: &Presented<'_>) -> Vec<(Reason, String)> {
    let mut problems = Vec::new();
    if !c.aud.contains(p.audience) {
        problems.push((Reason::AssertionAudience, format!("aud is not {}", p.audience)));
    }
    if c.exp.saturating_sub(c.iat) > MAX_ASSERTION_LIFETIME_S {
        let lifetime = c.exp.saturating_sub(c.iat);
        problems.push((Reason::AssertionLifetime, format!("lives {lifetime} s, more than {MAX_ASSERTION_LIFETIME_S}")));
    }
    if c.exp <= p.now {
        problems.push((Reason::AssertionExpired, format!("expired {} s ago", p.now.saturating_sub(c.exp))));
    }
    let ahead = c.iat.max(c.nbf.unwrap_or(i64::MIN)).saturating_sub(p.now);
    if ahead > ASSERTION_MAX_AHEAD_S {
        problems.push((Reason::AssertionNotYetValid, format!("iat or nbf {ahead} s ahead")));
    }
    problems
}

/// The `jti`s each client has used, each kept until its assertion's `exp`: an assertion
/// presented again within its lifetime is a replay, and after it the assertion has expired.
#[derive(Debug, Default)]
pub(crate) struct SeenAssertions(Mutex<HashMap<String, HashMap<String, i64>>>);

impl SeenAssertions {
    /// Records `jti` of `client` until `exp`; `false` when it is already recorded (a replay).
    /// Forgets every expired entry first, so the memory holds only live assertions: at most
    /// the last 300 s of them.
    pub(crate) fn first_use(&self, client: &str, jti: &str, exp: i64, now: i64) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|_, jtis| {
            jtis.retain(|_, until| *until > now);
            !jtis.is_empty()
        });
        let jtis = seen.entry(client.to_owned()).or_default();
        if jtis.contains_key(jti) {
            return false;
        }
        jtis.insert(jti.to_owned(), exp);
        true
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).values().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_memory_is_per_client_and_forgets_expired_assertions() {
        let seen = SeenAssertions::default();
        assert!(seen.first_use("a", "j1", 110, 100));
        assert!(!seen.first_use("a", "j1", 110, 105), "a replay within the lifetime");
        assert!(seen.first_use("b", "j1", 110, 105), "jtis are per client");
        assert!(seen.first_use("a", "j2", 200, 105));
        assert_eq!(seen.held(), 3);
        assert!(seen.first_use("c", "j3", 300, 150), "at 150 both j1 have expired");
        assert_eq!(seen.held(), 2);
    }

    #[test]
    fn malformed_assertions_are_refused_without_a_panic() {
        let p = |assertion| Presented { assertion, client_id: Some("app"), audience: "http://x/t", now: 0 };
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","kid":"k"}"#);
        let claims = URL_SAFE_NO_PAD.encode(r#"{"iss":"app","sub":"app","aud":"http://x/t","jti":"","iat":0,"exp":1}"#);
        let inputs = [
            String::new(),
            ".".into(),
            "..".into(),
            "a.b.c.d".into(),
            format!("{header}.{claims}.sig"),
            format!("{header}.{header}.sig"),
            format!("{header}.\u{e9}.sig"),
        ];
        for input in &inputs {
            let refusal = verify(&p(input), |_| Issuer::Unknown, &SeenAssertions::default()).unwrap_err();
            assert_eq!(refusal.reasons, [Reason::MalformedAssertion], "{input:?}: {refusal:?}");
            assert_eq!(refusal.client_id.as_deref(), Some("app"));
        }
    }
}
