//! The claims of an access token, as decoded (not trusted): every field is optional, because
//! the point is to say which one is missing.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize};

/// The claims of docs/platform.md section 2, decoded from a JWT payload.
///
/// `scope` accepts a space-separated string (RFC 8693 style) or an array; `aud` a string or
/// an array; `exp`/`iat` integer or fractional seconds. Unknown claims are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenClaims {
    /// Granted scopes, one entry per scope token.
    #[serde(default, deserialize_with = "space_or_list", serialize_with = "ser_space")]
    pub scope: Vec<String>,
    /// Audiences.
    #[serde(default, deserialize_with = "one_or_list")]
    pub aud: Vec<String>,
    /// The organisation's tenant id.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// The OAuth client id (= the registered application id).
    #[serde(default)]
    pub client_id: Option<String>,
    /// Expiry, seconds since the epoch.
    #[serde(default, deserialize_with = "numeric_date")]
    pub exp: Option<i64>,
    /// Issued at, seconds since the epoch.
    #[serde(default, deserialize_with = "numeric_date")]
    pub iat: Option<i64>,
    /// Issuer.
    #[serde(default)]
    pub iss: Option<String>,
    /// Subject.
    #[serde(default)]
    pub sub: Option<String>,
    /// Token id.
    #[serde(default)]
    pub jti: Option<String>,
}

impl AccessTokenClaims {
    /// `exp` as a time, if present and representable.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.exp.and_then(|s| Utc.timestamp_opt(s, 0).single())
    }
    /// `iat` as a time, if present and representable.
    pub fn issued_at(&self) -> Option<DateTime<Utc>> {
        self.iat.and_then(|s| Utc.timestamp_opt(s, 0).single())
    }
    /// Whether the scope list holds exactly this scope token.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope.iter().any(|s| s == scope)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrList {
    One(String),
    List(Vec<String>),
}

fn one_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match Option::<OneOrList>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrList::One(s)) => vec![s],
        Some(OneOrList::List(v)) => v,
    })
}

fn space_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match Option::<OneOrList>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrList::One(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(OneOrList::List(v)) => v,
    })
}

fn ser_space<S: serde::Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.join(" "))
}

fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let n = Option::<serde_json::Number>::deserialize(d)?;
    Ok(n.and_then(|n| n.as_i64().or_else(|| n.as_f64().filter(|f| f.is_finite() && f.abs() < 1e15).map(|f| f as i64))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_shapes_real_servers_send() {
        let c: AccessTokenClaims = serde_json::from_str(
            r#"{"scope": "urn:oracle:iot:billing:write openid", "aud": "https://iot.oraclecloud.com",
                "exp": 1700000900.5, "iat": 1700000000, "extra": {"x": 1}}"#,
        )
        .unwrap();
        assert_eq!(c.scope, ["urn:oracle:iot:billing:write", "openid"]);
        assert_eq!(c.aud, ["https://iot.oraclecloud.com"]);
        assert_eq!(c.exp, Some(1_700_000_900));
        assert!(c.has_scope("openid"));
        let c: AccessTokenClaims = serde_json::from_str(r#"{"scope": ["a", "b"], "aud": ["x", "y"]}"#).unwrap();
        assert_eq!((c.scope.len(), c.aud.len(), c.tenant_id), (2, 2, None));
    }
}
