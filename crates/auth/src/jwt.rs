//! A forgiving, panic-free JWT decoder (no signature check) shared by the preflight and by
//! [`crate::inspect`]: every way a token can be broken becomes an [`InspectError`] that names it.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use billsync_domain::AccessTokenClaims;
use serde_json::{Map, Value};

/// The longest token [`crate::inspect`] looks at (64 KiB); real access tokens are a few KiB.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

/// Which part of a JWT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Segment {
    /// The first segment (JOSE header).
    Header,
    /// The second segment (claims).
    Payload,
    /// The third segment (signature).
    Signature,
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Header => "header (1st segment)",
            Self::Payload => "payload (2nd segment)",
            Self::Signature => "signature (3rd segment)",
        })
    }
}

/// Why a string is not a decodable JWT. The messages never repeat the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InspectError {
    /// Nothing (or only whitespace) was given.
    #[error("the token is empty")]
    Empty,
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("the token is {len} bytes long; access tokens are a few KiB and at most {max} bytes are inspected")]
    TooLarge {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A character that cannot appear in a compact JWT.
    #[error(
        "character {found:?} at position {position} cannot appear in a JWT (only base64url characters A-Z a-z 0-9 - _ and '.' separators){}",
        hint_for(*.found)
    )]
    InvalidCharacter {
        /// 0-based character position (after trimming whitespace and a `Bearer ` prefix).
        position: usize,
        /// The character.
        found: char,
    },
    /// Not three dot-separated segments.
    #[error(
        "a JWT has 3 segments separated by '.', this has {found}{}",
        match *.found { 1 => ": it may be an opaque (non-JWT) token, which cannot be decoded", 5 => ": it looks like an encrypted JWE, which cannot be inspected without the key", _ => "" }
    )]
    WrongSegmentCount {
        /// How many segments there are.
        found: usize,
    },
    /// The header or payload segment is empty.
    #[error("the {segment} is empty")]
    EmptySegment {
        /// Which one.
        segment: Segment,
    },
    /// A segment is not base64url.
    #[error("the {segment} is not valid base64url: {reason}")]
    NotBase64 {
        /// Which one.
        segment: Segment,
        /// The decoder's complaint.
        reason: String,
    },
    /// A segment decodes to something that is not a JSON object.
    #[error("the {segment} is not a JSON object: {reason}")]
    NotJson {
        /// Which one.
        segment: Segment,
        /// What it is instead.
        reason: String,
    },
    /// The payload is JSON but a registered claim has the wrong type.
    #[error("the payload's claims have the wrong shape: {reason}")]
    InvalidClaims {
        /// Which claim and why.
        reason: String,
    },
}

fn hint_for(c: char) -> &'static str {
    match c {
        '+' | '/' => "; it looks like standard base64 rather than base64url",
        ' ' => "; copy only the token, without surrounding text",
        _ => "",
    }
}

impl InspectError {
    /// Whether the text is simply not a JWT (so an access token in this form is opaque),
    /// as opposed to a JWT with a broken part.
    pub fn is_not_a_jwt(&self) -> bool {
        match self {
            Self::InvalidCharacter { .. } | Self::WrongSegmentCount { .. } => true,
            Self::EmptySegment { segment } | Self::NotBase64 { segment, .. } | Self::NotJson { segment, .. } => {
                *segment == Segment::Header
            }
            _ => false,
        }
    }
}

/// A JWT decoded without any verification.
#[derive(Debug, Clone)]
pub(crate) struct DecodedJwt {
    pub header: Map<String, Value>,
    pub payload: Map<String, Value>,
    pub claims: AccessTokenClaims,
    pub signature_len: usize,
}

impl DecodedJwt {
    pub fn header_str(&self, key: &str) -> Option<&str> {
        self.header.get(key).and_then(Value::as_str)
    }
}

/// Trims whitespace and an optional `Bearer ` prefix.
pub(crate) fn normalize(token: &str) -> &str {
    let t = token.trim();
    let t = match t.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("bearer ") => t.get(7..).unwrap_or_default(),
        _ => t,
    };
    t.trim()
}

/// Decodes header, payload and claims without checking the signature.
pub(crate) fn decode_unverified(token: &str) -> Result<DecodedJwt, InspectError> {
    let t = normalize(token);
    if t.is_empty() {
        return Err(InspectError::Empty);
    }
    if t.len() > MAX_TOKEN_LEN {
        return Err(InspectError::TooLarge { len: t.len(), max: MAX_TOKEN_LEN });
    }
    if let Some((position, found)) =
        t.chars().enumerate().find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=')))
    {
        return Err(InspectError::InvalidCharacter { position, found });
    }
    let parts: Vec<&str> = t.split('.').collect();
    if parts.len() != 3 {
        return Err(InspectError::WrongSegmentCount { found: parts.len() });
    }
    let header = object(Segment::Header, parts[0])?;
    let payload = object(Segment::Payload, parts[1])?;
    let claims: AccessTokenClaims = serde_json::from_value(Value::Object(payload.clone()))
        .map_err(|e| InspectError::InvalidClaims { reason: e.to_string() })?;
    let signature = b64(Segment::Signature, parts[2])?;
    Ok(DecodedJwt { header, payload, claims, signature_len: signature.len() })
}

fn b64(segment: Segment, s: &str) -> Result<Vec<u8>, InspectError> {
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| InspectError::NotBase64 { segment, reason: e.to_string() })
}

fn object(segment: Segment, s: &str) -> Result<Map<String, Value>, InspectError> {
    if s.is_empty() {
        return Err(InspectError::EmptySegment { segment });
    }
    let bytes = b64(segment, s)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| InspectError::NotJson { segment, reason: "it decodes to binary data, not UTF-8 text".into() })?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(InspectError::NotJson { segment, reason: format!("it is a JSON {}", kind(&other)) }),
        Err(e) => Err(InspectError::NotJson { segment, reason: e.to_string() }),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: &str) -> String {
        URL_SAFE_NO_PAD.encode(v)
    }

    fn check(input: &str, expected: Result<(), &str>) {
        let got = decode_unverified(input).map(|_| ()).map_err(|e| e.to_string());
        match (got, expected) {
            (Ok(()), Ok(())) => {}
            (Err(g), Err(w)) => assert!(g.contains(w), "input {input:?}: got {g:?}, want {w:?}"),
            (g, w) => panic!("input {input:?}: got {g:?}, want {w:?}"),
        }
    }

    #[test]
    fn every_broken_shape_is_named() {
        let h = enc(r#"{"alg":"RS256","kid":"k"}"#);
        let p = enc(r#"{"scope":"a b","exp":1}"#);
        check(&format!("{h}.{p}.c2ln"), Ok(()));
        check(&format!("Bearer {h}.{p}.c2ln\n"), Ok(()));
        check(&format!("{h}.{p}."), Ok(()));
        check("", Err("empty"));
        check("   ", Err("empty"));
        check("abc", Err("this has 1: it may be an opaque"));
        check(&format!("{h}.{p}"), Err("this has 2"));
        check("a.b.c.d.e", Err("encrypted JWE"));
        check(&format!("{h}.{p}.a+b/"), Err("standard base64"));
        check("a b.c.d", Err("position 1"));
        check(&format!(".{p}.x"), Err("header (1st segment) is empty"));
        check(&format!("{h}.!.x"), Err("character '!'"));
        check(&format!("{h}.a.x"), Err("payload (2nd segment) is not valid base64url"));
        check(&format!("{}.{p}.x", enc("[1]")), Err("header (1st segment) is not a JSON object: it is a JSON array"));
        check(&format!("{}.{p}.x", URL_SAFE_NO_PAD.encode([0xff, 0xfe])), Err("binary data"));
        check(&format!("{h}.{}.x", enc(r#"{"exp":"soon"}"#)), Err("wrong shape"));
        check(&"a".repeat(MAX_TOKEN_LEN + 1), Err("at most 65536 bytes"));
        check("\u{0}\u{1}", Err("position 0"));
    }

    #[test]
    fn opaque_versus_broken_jwt() {
        assert!(decode_unverified("2YotnFZFEjr1zCsicMWpAA").unwrap_err().is_not_a_jwt());
        let h = enc(r#"{"alg":"RS256"}"#);
        assert!(!decode_unverified(&format!("{h}.a.b")).unwrap_err().is_not_a_jwt());
    }
}
