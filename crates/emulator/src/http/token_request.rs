//! What the token endpoints share: which of the two was posted to, the form of a token request,
//! and its refusals (RFC 6749 section 5.2) with their audit reasons.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};

use super::body::{BodyError, read_body};
use super::reply::header_str;
use crate::audit::Reason;

/// Largest body of the token endpoints.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// The token endpoint a request was posted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenRoute {
    /// `POST /oauth2/v1/token`: a secret or a signed assertion, as the client is registered.
    Classic,
    /// `POST /iot/api/v2/oauth2/token`: signed assertions only.
    AssertionOnly,
}

impl TokenRoute {
    /// The path, which with the base URL is the `aud` an assertion must name.
    pub(crate) fn path(self) -> &'static str {
        match self {
            Self::Classic => crate::TOKEN_PATH,
            Self::AssertionOnly => crate::TOKEN_V2_PATH,
        }
    }

    /// The endpoint as the audit log and the counters name it.
    pub(crate) fn endpoint(self) -> &'static str {
        match self {
            Self::Classic => "POST /oauth2/v1/token",
            Self::AssertionOnly => "POST /iot/api/v2/oauth2/token",
        }
    }

    /// Whether clients may authenticate with a secret here.
    pub(crate) fn takes_secrets(self) -> bool {
        self == Self::Classic
    }
}

/// The token request's parameters, in the order sent. Kept as pairs, not one field per
/// parameter: a repeated parameter is refused (RFC 6749 section 3.2), and the extras a tenant
/// may send (`audience`, `resource`, ...) are accepted and ignored.
pub(crate) struct TokenForm(Vec<(String, String)>);

impl TokenForm {
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// The form of a token request: `Content-Type` (any case, parameters allowed), at most 64 KiB
/// (a larger body is drained first, so the client sees the `400`), no parameter twice. Read by
/// hand, not with axum's `Form`: see the `body` module.
pub(crate) async fn read_form(headers: &HeaderMap, body: Body) -> Result<TokenForm, TokenError> {
    let content_type = header_str(headers, "content-type").unwrap_or("");
    if !content_type.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded") {
        return Err(TokenError::request("Content-Type must be application/x-www-form-urlencoded"));
    }
    let bytes = read_body(headers, body, MAX_FORM_BYTES).await.map_err(|e| match e {
        BodyError::TooLarge => TokenError::request("the form is larger than 64 KiB"),
        BodyError::Broken(m) => TokenError::request(format!("could not read the body: {m}")),
    })?;
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(&bytes) {
        if pairs.iter().any(|(seen, _)| *seen == k) {
            return Err(TokenError::request(format!("parameter {k} appears more than once")));
        }
        pairs.push((k.into_owned(), v.into_owned()));
    }
    Ok(TokenForm(pairs))
}

/// An RFC 6749 section 5.2 error, with its audit reasons and detail.
pub(crate) struct TokenError {
    pub status: StatusCode,
    pub error: &'static str,
    pub reasons: Vec<Reason>,
    /// The body's `error_description`; `None` sends none.
    pub description: Option<String>,
    /// What the audit entry says (never a secret or an assertion).
    pub detail: String,
}

impl TokenError {
    pub(crate) fn request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", Reason::InvalidRequest, description)
    }

    pub(crate) fn client(description: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", Reason::InvalidClient, description)
    }

    pub(crate) fn new(status: StatusCode, error: &'static str, reason: Reason, description: impl Into<String>) -> Self {
        let description = description.into();
        Self { status, error, reasons: vec![reason], detail: description.clone(), description: Some(description) }
    }

    /// `401 invalid_client` and nothing more: the reasons and the detail go to the audit only.
    pub(crate) fn bare_client(reasons: Vec<Reason>, detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
            reasons,
            description: None,
            detail: detail.into(),
        }
    }

    /// The same answer, recorded with another reason and detail.
    pub(crate) fn audited_as(mut self, reason: Reason, detail: impl Into<String>) -> Self {
        self.reasons = vec![reason];
        self.detail = detail.into();
        self
    }
}
