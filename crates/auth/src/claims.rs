//! The claim checks RFC 8725 asks for that the billing policy does not make: `iss` against the
//! configured token issuer (§3.8), and `nbf` (RFC 7519 §4.1.5) at the token endpoint's time with
//! the same allowance as `exp`. They apply to every JWT access token, verified or not, like the
//! policy's checks; an opaque token has no claims to check.

use billsync_domain::human_duration;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::client::SKEW_TOLERANCE;
use crate::jwks::SignatureError;
use crate::jwt::DecodedJwt;

/// How far in the future `nbf` may be. `exp` has no separate leeway: both are compared with the
/// token endpoint's time as measured from its `Date` header, which is only known to within
/// [`SKEW_TOLERANCE`] (a measured skew that small is treated as none), so that is the allowance.
pub(crate) const NBF_LEEWAY: chrono::Duration = SKEW_TOLERANCE;

/// Checks `iss` (when `issuer` is configured) and `nbf` at `server_now`.
pub(crate) fn check_claims(
    jwt: &DecodedJwt,
    issuer: Option<&str>,
    server_now: DateTime<Utc>,
) -> Result<(), SignatureError> {
    check_issuer(jwt.claims.iss.as_deref(), issuer)?;
    check_not_before(jwt.payload.get("nbf"), server_now)
}

/// `iss` must be exactly the configured issuer (no normalisation: RFC 8725 §3.8).
fn check_issuer(found: Option<&str>, expected: Option<&str>) -> Result<(), SignatureError> {
    match (expected, found) {
        (None, _) => Ok(()),
        (Some(e), Some(f)) if e == f => Ok(()),
        (Some(e), f) => Err(SignatureError::WrongIssuer { expected: e.to_owned(), found: f.map(str::to_owned) }),
    }
}

/// An absent `nbf` is fine; one more than [`NBF_LEEWAY`] ahead of `server_now`, or one that is
/// not a NumericDate, is not.
fn check_not_before(nbf: Option<&Value>, server_now: DateTime<Utc>) -> Result<(), SignatureError> {
    let Some(nbf) = nbf else { return Ok(()) };
    let Some(seconds) = numeric_date(nbf) else {
        return Err(SignatureError::NotYetValid(
            "the token's nbf claim is not a NumericDate (seconds since the epoch), so when it becomes valid is unknown"
                .into(),
        ));
    };
    let ahead_s = seconds.saturating_sub(server_now.timestamp());
    if ahead_s <= NBF_LEEWAY.num_seconds() {
        return Ok(());
    }
    let ahead = chrono::Duration::try_seconds(ahead_s).unwrap_or(chrono::Duration::MAX);
    Err(SignatureError::NotYetValid(format!(
        "the token's nbf claim says it is not valid for another {} (the token endpoint's time, allowing {}); \
         the token endpoint issued a token for later, or the clocks disagree",
        human_duration(ahead),
        human_duration(NBF_LEEWAY)
    )))
}

/// Integer or fractional seconds (rounded up: a token valid from 10.5 s is not valid at 10 s).
fn numeric_date(v: &Value) -> Option<i64> {
    match v.as_i64() {
        Some(s) => Some(s),
        None => v.as_f64().filter(|f| f.is_finite()).map(|f| f.ceil() as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(s, 0).unwrap()
    }

    #[test]
    fn nbf_is_allowed_the_leeway_and_no_more() {
        let now = at(1_000);
        assert!(check_not_before(None, now).is_ok());
        for ok in [json!(0), json!(1_000), json!(1_002), json!(1_001.5), json!(-5), json!(i64::MIN), json!(-1e300)] {
            assert!(check_not_before(Some(&ok), now).is_ok(), "{ok}");
        }
        for refused in [json!(1_003), json!(1_002.1), json!(u64::MAX), json!(1e300), json!("soon"), json!(null)] {
            let e = check_not_before(Some(&refused), now).unwrap_err();
            assert_eq!(e.code(), "not_yet_valid", "{refused}");
            assert!(e.to_string().contains("nbf"), "{e}");
        }
    }

    #[test]
    fn iss_must_match_exactly_when_configured() {
        assert!(check_issuer(Some("https://a"), None).is_ok());
        assert!(check_issuer(None, None).is_ok());
        assert!(check_issuer(Some("https://a"), Some("https://a")).is_ok());
        for found in [Some("https://a/"), Some("https://A"), None] {
            let e = check_issuer(found, Some("https://a")).unwrap_err();
            assert_eq!(e.code(), "wrong_issuer");
            assert!(e.to_string().contains("iss"), "{e}");
        }
    }
}
