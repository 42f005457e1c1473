//! What a billing response means for a client (docs/platform.md section 3),
//! decided from the status, a few headers and the body. Pure, so every row of the table is
//! tested here. Only an answer that is in the contract's table, body included, classifies as
//! that row; everything else (a redirect, an HTML page from a proxy, a `200`, an unknown
//! status, a body past [`MAX_RESPONSE_BODY`]) is [`BillingResponse::Unexpected`], which settles
//! nothing (see [`crate::settle::settle`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::challenge::{Challenge, parse_challenges};

/// The longest wait a server may impose through `Retry-After` or `X-RateLimit-Reset`: one hour.
/// Longer values (up to `u64::MAX` seconds) are read as this.
pub const MAX_SERVER_WAIT: Duration = Duration::from_secs(3600);

/// The most of a response body a client reads (1 MiB); a longer body makes the answer
/// [`BillingResponse::Unexpected`].
pub const MAX_RESPONSE_BODY: usize = 1 << 20;

/// How much of an unexpected body is kept for the operator: 200 characters.
pub const EXCERPT_CHARS: usize = 200;

/// One event the platform refused inside a `202`: permanently bad, dead-letter it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// The refused event.
    pub event_id: String,
    /// The platform's code (`invalid_quantity`).
    pub code: String,
    /// The platform's message.
    #[serde(default)]
    pub message: String,
}

/// The body of a `202`. Classification requires all three fields; whether the receipt is
/// consistent with the batch that was sent is for [`crate::settle::settle`] to judge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// How many events were newly stored.
    pub accepted: u64,
    /// Events the platform already had: delivered too.
    pub duplicates: Vec<String>,
    /// Events refused for good.
    pub rejected: Vec<Rejection>,
}

/// The meaning of a billing response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BillingResponse {
    /// `202` with the contract's receipt.
    Accepted(Receipt),
    /// `400 missing_header`: a configuration bug; block the tenant.
    MissingHeader {
        /// The server's description, naming the header.
        description: String,
    },
    /// `400 invalid_request` (the contract's JSON error): the batch is malformed; split it to
    /// find the poison event.
    InvalidRequest {
        /// The server's description.
        description: String,
    },
    /// `401 invalid_token`: get a new token and retry once.
    InvalidToken,
    /// `401 insufficient_claims`: scope, audience, tenant or application do not line up.
    /// Both fields are the platform's own words, made safe to show (see [`excerpt`]): one line,
    /// at most [`EXCERPT_CHARS`] characters, credentials redacted; an empty value is `None`.
    InsufficientClaims {
        /// What the platform said was wrong: the `error_description` of the `Bearer` challenge
        /// that names `insufficient_claims`, else that of the JSON body when the body's `error`
        /// is `insufficient_claims` too.
        description: Option<String>,
        /// The scope the platform requires: that challenge's `scope` parameter (RFC 6750
        /// section 3, space-separated scope values).
        scope: Option<String>,
    },
    /// `403 tenant_not_authorized`: block the tenant.
    TenantNotAuthorized,
    /// `413 {"error": "payload_too_large"}`: split, or dead-letter a single event.
    PayloadTooLarge,
    /// `429`: wait at least `retry_after`.
    RateLimited {
        /// From `Retry-After` (seconds or an HTTP date), when present and valid; at most
        /// [`MAX_SERVER_WAIT`].
        retry_after: Option<Duration>,
    },
    /// `5xx`: transient; back off.
    ServerError {
        /// The status.
        status: u16,
    },
    /// Anything the contract does not list. Settles nothing; reported verbatim.
    Unexpected {
        /// The status.
        status: u16,
        /// What came back: the redirect's target, the body's size, or the first
        /// [`EXCERPT_CHARS`] characters of the body with anything like a secret removed.
        detail: String,
    },
}

/// An HTTP answer as the transport read it, before classification.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpAnswer<'a> {
    /// The status code.
    pub status: u16,
    /// `WWW-Authenticate`.
    pub www_authenticate: Option<&'a str>,
    /// `Retry-After`.
    pub retry_after: Option<&'a str>,
    /// `Location` (a redirect's target).
    pub location: Option<&'a str>,
    /// The body, at most [`MAX_RESPONSE_BODY`] bytes of it.
    pub body: &'a [u8],
    /// Whether the body went on past [`MAX_RESPONSE_BODY`] (and was not read further).
    pub body_truncated: bool,
}

/// The `X-RateLimit-*` headers of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitStatus {
    /// `X-RateLimit-Limit`.
    pub limit: u32,
    /// `X-RateLimit-Remaining`.
    pub remaining: u32,
    /// `X-RateLimit-Reset`: until the window refills, at most [`MAX_SERVER_WAIT`].
    pub reset: Duration,
}

impl RateLimitStatus {
    /// Reads the three headers; `None` unless all parse.
    pub fn from_headers(limit: Option<&str>, remaining: Option<&str>, reset: Option<&str>) -> Option<Self> {
        Some(Self {
            limit: limit?.trim().parse().ok()?,
            remaining: remaining?.trim().parse().ok()?,
            reset: capped_seconds(reset?)?,
        })
    }
}

/// A whole number of seconds, capped at [`MAX_SERVER_WAIT`] however many digits it has.
fn capped_seconds(v: &str) -> Option<Duration> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(v.parse::<u64>().map_or(MAX_SERVER_WAIT, Duration::from_secs).min(MAX_SERVER_WAIT))
}

/// `Retry-After`: delay-seconds or an HTTP date (RFC 9110 section 10.2.3), capped at
/// [`MAX_SERVER_WAIT`]; a date in the past means no wait.
pub fn parse_retry_after(v: &str, now: DateTime<Utc>) -> Option<Duration> {
    if let Some(d) = capped_seconds(v) {
        return Some(d);
    }
    let at = DateTime::parse_from_rfc2822(v.trim()).ok()?.to_utc();
    Some((at - now).to_std().unwrap_or(Duration::ZERO).min(MAX_SERVER_WAIT))
}

/// The contract's JSON error body (`{"error": "...", "error_description": "..."}`).
#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// Classifies an answer. `now` reads a `Retry-After` given as a date.
pub fn classify(answer: &HttpAnswer<'_>, now: DateTime<Utc>) -> BillingResponse {
    let status = answer.status;
    if answer.body_truncated {
        return BillingResponse::Unexpected {
            status,
            detail: format!("the body is longer than {} bytes; it was not read", MAX_RESPONSE_BODY),
        };
    }
    if (300..400).contains(&status) {
        let to = answer.location.map_or_else(|| "no Location".to_owned(), |l| excerpt(l.as_bytes()));
        return BillingResponse::Unexpected {
            status,
            detail: format!("a redirect to {to}; redirects are not followed"),
        };
    }
    let body = answer.body;
    let err: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let code = err.as_ref().map(|e| e.error.as_str());
    let description = || err.as_ref().and_then(|e| e.error_description.clone()).unwrap_or_default();
    match (status, code) {
        (202, _) => match serde_json::from_slice::<Receipt>(body) {
            Ok(r) => BillingResponse::Accepted(r),
            Err(_) => unexpected(status, body),
        },
        (400, Some("missing_header")) => BillingResponse::MissingHeader { description: description() },
        (400, Some("invalid_request")) => BillingResponse::InvalidRequest { description: description() },
        (401, _) => {
            let challenge = bearer_challenge(answer.www_authenticate, "insufficient_claims");
            if challenge.is_some() || code == Some("insufficient_claims") {
                let said = |v: Option<&str>| v.map(|v| excerpt(v.as_bytes())).filter(|v| !v.is_empty());
                let body_description = err.as_ref().filter(|e| e.error == "insufficient_claims");
                BillingResponse::InsufficientClaims {
                    description: said(challenge.as_ref().and_then(Challenge::error_description))
                        .or_else(|| said(body_description.and_then(|e| e.error_description.as_deref()))),
                    scope: said(challenge.as_ref().and_then(Challenge::scope)),
                }
            } else {
                // Getting a new token and trying once more settles nothing, whoever answered.
                BillingResponse::InvalidToken
            }
        }
        (403, Some("tenant_not_authorized")) => BillingResponse::TenantNotAuthorized,
        (413, Some("payload_too_large")) => BillingResponse::PayloadTooLarge,
        (429, _) => {
            BillingResponse::RateLimited { retry_after: answer.retry_after.and_then(|v| parse_retry_after(v, now)) }
        }
        (500..=599, _) => BillingResponse::ServerError { status },
        _ => unexpected(status, body),
    }
}

/// The first `Bearer` challenge of `WWW-Authenticate` that names `error`: `None` when the header
/// is missing or does not parse (the body decides then), whatever words it contains.
fn bearer_challenge(www_authenticate: Option<&str>, error: &str) -> Option<Challenge> {
    parse_challenges(www_authenticate?).ok()?.into_iter().find(|c| c.is_scheme("Bearer") && c.error() == Some(error))
}

fn unexpected(status: u16, body: &[u8]) -> BillingResponse {
    BillingResponse::Unexpected { status, detail: excerpt(body) }
}

/// The first [`EXCERPT_CHARS`] characters of a body for an operator to read: on one line,
/// with anything that looks like a credential (a JWT, the word after `Bearer`, the value after
/// a key naming a token, secret or password) replaced by `[redacted]`.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out = String::with_capacity(text.len().min(4 * EXCERPT_CHARS));
    // `key`: the last word names a credential; `armed`: the next word is its value.
    let (mut key, mut armed) = (false, false);
    let mut rest = text.as_ref();
    while let Some(c) = rest.chars().next() {
        if is_word(c) {
            let end = rest.find(|c: char| !is_word(c)).unwrap_or(rest.len());
            let word = &rest[..end];
            let jwt = word.starts_with("eyJ") && word.matches('.').count() >= 2;
            out.push_str(if armed || jwt { "[redacted]" } else { word });
            let lower = word.to_ascii_lowercase();
            armed = lower == "bearer" || lower == "basic";
            key = CREDENTIAL_KEYS.iter().any(|k| lower.contains(k));
            rest = &rest[end..];
        } else {
            out.push(if c.is_control() || c.is_whitespace() { ' ' } else { c });
            match c {
                ':' | '=' if key => armed = true,
                '"' | '\'' | ' ' => {}
                _ => (key, armed) = (false, false),
            }
            rest = &rest[c.len_utf8()..];
        }
        if out.len() > 8 * EXCERPT_CHARS {
            break;
        }
    }
    let collapsed = out.split_whitespace().collect::<Vec<_>>().join(" ");
    collapsed.chars().take(EXCERPT_CHARS).collect()
}

/// Keys whose value is a credential.
const CREDENTIAL_KEYS: [&str; 5] = ["token", "secret", "password", "assertion", "authorization"];

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '+' | '/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-29T12:00:00Z").unwrap().to_utc()
    }

    fn answer(status: u16, body: &str) -> BillingResponse {
        classify(&HttpAnswer { status, body: body.as_bytes(), ..HttpAnswer::default() }, now())
    }

    fn unexpected(status: u16, detail: &str) -> BillingResponse {
        BillingResponse::Unexpected { status, detail: detail.into() }
    }

    const RECEIPT: &str = r#"{"accepted": 2, "duplicates": ["a"], "rejected": [{"event_id": "b", "code": "invalid_quantity", "message": "m"}], "index": 7}"#;

    #[test]
    fn every_row_of_the_response_table() {
        assert_eq!(
            answer(202, RECEIPT),
            BillingResponse::Accepted(Receipt {
                accepted: 2,
                duplicates: vec!["a".into()],
                rejected: vec![Rejection {
                    event_id: "b".into(),
                    code: "invalid_quantity".into(),
                    message: "m".into()
                }],
            }),
            "extra fields (the emulator's index) are ignored"
        );
        assert_eq!(
            answer(400, r#"{"error": "missing_header", "error_description": "X-Application-ID"}"#),
            BillingResponse::MissingHeader { description: "X-Application-ID".into() }
        );
        assert_eq!(
            answer(400, r#"{"error": "invalid_request", "error_description": "bad"}"#),
            BillingResponse::InvalidRequest { description: "bad".into() }
        );
        let www = |status, challenge: &'static str, body: &'static str| {
            classify(
                &HttpAnswer {
                    status,
                    www_authenticate: Some(challenge),
                    body: body.as_bytes(),
                    ..HttpAnswer::default()
                },
                now(),
            )
        };
        assert_eq!(
            www(401, r#"Bearer error="invalid_token""#, r#"{"error": "invalid_token"}"#),
            BillingResponse::InvalidToken
        );
        assert_eq!(
            www(401, r#"Bearer error="insufficient_claims""#, r#"{"error": "insufficient_claims"}"#),
            claims(None, None)
        );
        assert_eq!(answer(403, r#"{"error": "tenant_not_authorized"}"#), BillingResponse::TenantNotAuthorized);
        assert_eq!(answer(413, r#"{"error": "payload_too_large"}"#), BillingResponse::PayloadTooLarge);
        assert_eq!(answer(503, ""), BillingResponse::ServerError { status: 503 });
    }

    #[test]
    fn insufficient_claims_is_read_from_a_bearer_challenge_not_a_substring() {
        let www = |challenge: &'static str, body: &'static str| {
            classify(
                &HttpAnswer {
                    status: 401,
                    www_authenticate: Some(challenge),
                    body: body.as_bytes(),
                    ..HttpAnswer::default()
                },
                now(),
            )
        };
        assert_eq!(www(r#"Bearer realm="iot", error="insufficient_claims""#, ""), claims(None, None));
        assert_eq!(
            www(r#"Bearer error="invalid_token", error_description="the scope insufficient_claims is..."""#, ""),
            BillingResponse::InvalidToken,
            "the word in a description is not the error"
        );
        assert_eq!(
            www(r#"Basic realm="insufficient_claims", Bearer error=invalid_token"#, ""),
            BillingResponse::InvalidToken,
            "only a Bearer challenge's error counts"
        );
        assert_eq!(
            www(r#"Basic realm="a", bearer ERROR=insufficient_claims"#, ""),
            claims(None, None),
            "scheme and parameter names are case-insensitive"
        );
        assert_eq!(
            www(r#"Bearer error="insufficient_claims"#, r#"{"error": "invalid_token"}"#),
            BillingResponse::InvalidToken,
            "a header that does not parse falls back to the body"
        );
        assert_eq!(
            www("Bearer error=\"oops", r#"{"error": "insufficient_claims"}"#),
            claims(None, None),
            "the body still decides when the header does not parse"
        );
    }

    fn claims(description: Option<&str>, scope: Option<&str>) -> BillingResponse {
        BillingResponse::InsufficientClaims {
            description: description.map(str::to_owned),
            scope: scope.map(str::to_owned),
        }
    }

    fn unauthorized(challenge: Option<&str>, body: &str) -> BillingResponse {
        classify(
            &HttpAnswer { status: 401, www_authenticate: challenge, body: body.as_bytes(), ..HttpAnswer::default() },
            now(),
        )
    }

    #[test]
    fn insufficient_claims_carries_the_platforms_description_and_scope() {
        assert_eq!(
            unauthorized(
                Some(
                    r#"Bearer realm="iot", error="insufficient_claims", error_description="tenant_id claim does not match X-Tenant-ID", scope="urn:oracle:iot:billing:write""#
                ),
                r#"{"error": "insufficient_claims", "error_description": "insufficient claims"}"#,
            ),
            claims(Some("tenant_id claim does not match X-Tenant-ID"), Some("urn:oracle:iot:billing:write")),
            "the challenge's description wins over the body's"
        );
        assert_eq!(
            unauthorized(
                Some(r#"Bearer error="insufficient_claims""#),
                r#"{"error": "insufficient_claims", "error_description": "aud claim lacks the billing audience"}"#,
            ),
            claims(Some("aud claim lacks the billing audience"), None),
            "a challenge without a description: the body's"
        );
        assert_eq!(
            unauthorized(None, r#"{"error": "insufficient_claims", "error_description": "scope missing"}"#),
            claims(Some("scope missing"), None),
            "no challenge: the body's description"
        );
        assert_eq!(
            unauthorized(
                Some(r#"Bearer error="insufficient_claims""#),
                r#"{"error": "invalid_token", "error_description": "expired"}"#
            ),
            claims(None, None),
            "a body naming another error says nothing about these claims"
        );
        assert_eq!(
            unauthorized(
                Some(
                    r#"Basic realm="x", error_description="not this", Bearer error="insufficient_claims", scope="a b""#
                ),
                "",
            ),
            claims(None, Some("a b")),
            "only the insufficient_claims Bearer challenge speaks"
        );
        assert_eq!(
            unauthorized(Some(r#"Bearer error="insufficient_claims", error_description="", scope="""#), ""),
            claims(None, None),
            "empty values are absent"
        );
    }

    #[test]
    fn insufficient_claims_text_is_unescaped_and_made_safe_to_show() {
        assert_eq!(
            unauthorized(
                Some(
                    r#"Bearer error="insufficient_claims", error_description="the \"tenant_id\" claim \is \\acme\\", scope="urn:a\:b""#
                ),
                "",
            ),
            claims(Some(r#"the "tenant_id" claim is \acme\"#), Some("urn:a:b")),
            "quoted-pairs are unescaped"
        );
        let long = format!(
            r#"Bearer error="insufficient_claims", error_description="{}", scope="{}""#,
            "d".repeat(5_000),
            "s".repeat(5_000)
        );
        let BillingResponse::InsufficientClaims { description: Some(d), scope: Some(s) } =
            unauthorized(Some(&long), "")
        else {
            panic!("not insufficient_claims with both fields");
        };
        assert_eq!((d.chars().count(), s.chars().count()), (EXCERPT_CHARS, EXCERPT_CHARS), "cut to an excerpt");
        let body = "{\"error\": \"insufficient_claims\", \"error_description\": \"bad\\u0000claim\\u001b[31m\\nAuthorization: Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln\"}";
        let BillingResponse::InsufficientClaims { description: Some(d), scope: None } = unauthorized(None, body) else {
            panic!("not insufficient_claims with a description");
        };
        assert!(!d.chars().any(char::is_control), "{d:?}");
        assert!(d.starts_with("bad claim [31m Authorization:"), "{d:?}");
        assert!(!d.contains("eyJ"), "{d:?}");
    }

    #[test]
    fn answers_outside_the_table_are_unexpected() {
        assert_eq!(answer(200, RECEIPT), unexpected(200, &RECEIPT.split_whitespace().collect::<Vec<_>>().join(" ")));
        assert_eq!(answer(202, "not json"), unexpected(202, "not json"));
        assert_eq!(answer(202, r#"{"accepted": 3}"#), unexpected(202, r#"{"accepted": 3}"#), "all three fields");
        assert_eq!(
            answer(400, "<html><body>Bad Request</body></html>"),
            unexpected(400, "<html><body>Bad Request</body></html>")
        );
        assert_eq!(answer(400, r#"{"error": "waf_block"}"#), unexpected(400, r#"{"error": "waf_block"}"#));
        assert_eq!(
            answer(413, "<html>413 Request Entity Too Large</html>"),
            unexpected(413, "<html>413 Request Entity Too Large</html>")
        );
        assert_eq!(answer(403, "<h1>Forbidden</h1>"), unexpected(403, "<h1>Forbidden</h1>"));
        assert_eq!(answer(418, "I'm a teapot"), unexpected(418, "I'm a teapot"));
        let redirect = classify(
            &HttpAnswer { status: 302, location: Some("http://elsewhere.example/login"), ..HttpAnswer::default() },
            now(),
        );
        assert_eq!(
            redirect,
            unexpected(302, "a redirect to http://elsewhere.example/login; redirects are not followed")
        );
        let long = classify(
            &HttpAnswer { status: 202, body: RECEIPT.as_bytes(), body_truncated: true, ..HttpAnswer::default() },
            now(),
        );
        assert!(
            matches!(long, BillingResponse::Unexpected { status: 202, ref detail } if detail.contains("1048576 bytes")),
            "{long:?}"
        );
    }

    #[test]
    fn server_waits_are_read_as_seconds_or_dates_and_capped_at_an_hour() {
        let retry = |v: &'static str| {
            classify(&HttpAnswer { status: 429, retry_after: Some(v), ..HttpAnswer::default() }, now())
        };
        let wait = |d: Option<Duration>| BillingResponse::RateLimited { retry_after: d };
        assert_eq!(retry("7"), wait(Some(Duration::from_secs(7))));
        assert_eq!(retry("18446744073709551615"), wait(Some(MAX_SERVER_WAIT)));
        assert_eq!(retry("99999999999999999999999999"), wait(Some(MAX_SERVER_WAIT)));
        assert_eq!(retry("Sun, 29 Nov 2026 12:00:30 GMT"), wait(Some(Duration::from_secs(30))));
        assert_eq!(retry("Sun, 29 Nov 2026 11:00:00 GMT"), wait(Some(Duration::ZERO)), "a date in the past");
        assert_eq!(retry("Fri, 01 Jan 2100 00:00:00 GMT"), wait(Some(MAX_SERVER_WAIT)));
        assert_eq!(retry("soon"), wait(None));
        assert_eq!(retry("-5"), wait(None));
        assert_eq!(
            RateLimitStatus::from_headers(Some("100"), Some("0"), Some("18446744073709551615")).map(|r| r.reset),
            Some(MAX_SERVER_WAIT)
        );
    }

    #[test]
    fn rate_limit_headers_need_all_three() {
        assert_eq!(
            RateLimitStatus::from_headers(Some("100"), Some("0"), Some("12")),
            Some(RateLimitStatus { limit: 100, remaining: 0, reset: Duration::from_secs(12) })
        );
        assert_eq!(RateLimitStatus::from_headers(Some("100"), None, Some("12")), None);
    }

    #[test]
    fn excerpts_are_short_on_one_line_and_hold_no_credentials() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
        let body = format!(
            "<html>\n<p>Authorization: Bearer {jwt}</p>\n{{\"client_secret\": \"s3cr3t-value\", \"access_token\":\"abc.def\"}} token expired</html>"
        );
        let e = excerpt(body.as_bytes());
        assert!(!e.contains("eyJ") && !e.contains("s3cr3t") && !e.contains("abc.def"), "{e}");
        assert!(e.contains("token expired"), "prose after a key word is kept: {e}");
        assert!(!e.contains('\n'), "{e}");
        assert_eq!(excerpt("x".repeat(5_000).as_bytes()).chars().count(), EXCERPT_CHARS);
        assert_eq!(excerpt(&[0xff, b'o', b'k']), "\u{fffd}ok");
    }
}
