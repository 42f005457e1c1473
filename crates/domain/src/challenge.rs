//! `WWW-Authenticate` challenges: the syntax of RFC 7235 section 2.1 and 4.1, read for the
//! parameters of RFC 6750 section 3 (`Bearer realm="iot", error="insufficient_claims"`).
//!
//! ```text
//! WWW-Authenticate = 1#challenge
//! challenge        = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
//! auth-param       = token BWS "=" BWS ( token / quoted-string )
//! ```
//!
//! Empty list elements (`, ,Bearer realm="a",`) are tolerated, as RFC 7230 section 7 allows;
//! after a comma, `name=` continues the current challenge's parameters and anything else
//! starts the next challenge. The parser reads characters, never indexes, and returns a
//! [`ChallengeError`] naming the byte position and what was expected; it never panics.

use std::fmt::{self, Write as _};

/// One challenge of a `WWW-Authenticate` header: an auth-scheme with either a token68
/// (`Negotiate abc==`) or a list of auth-params (`Bearer error="invalid_token"`).
///
/// Names are kept as written; [`Challenge::is_scheme`] and [`Challenge::param`] compare them
/// case-insensitively. A challenge has a token68 or parameters, never both: [`fmt::Display`]
/// writes only the token68 when both are set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Challenge {
    /// The auth-scheme (`Bearer`), a token.
    pub scheme: String,
    /// The token68 of a challenge such as `Negotiate abc==`.
    pub token68: Option<String>,
    /// The auth-params in order, names as written, values unquoted and unescaped.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// Whether the auth-scheme is `scheme`, ignoring ASCII case.
    pub fn is_scheme(&self, scheme: &str) -> bool {
        self.scheme.eq_ignore_ascii_case(scheme)
    }

    /// The value of the first parameter named `name`, ignoring ASCII case.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// `realm`.
    pub fn realm(&self) -> Option<&str> {
        self.param("realm")
    }

    /// `scope` (RFC 6750 section 3: space-separated scope values).
    pub fn scope(&self) -> Option<&str> {
        self.param("scope")
    }

    /// `error` (RFC 6750 section 3.1: `invalid_request`, `invalid_token`,
    /// `insufficient_scope`, or the platform's `insufficient_claims`).
    pub fn error(&self) -> Option<&str> {
        self.param("error")
    }

    /// `error_description`: prose for a human, never a code to match on.
    pub fn error_description(&self) -> Option<&str> {
        self.param("error_description")
    }
}

/// The canonical form: `Bearer error="invalid_token", scope="a b"`, every parameter value
/// quoted with `"` and `\` escaped, or `Negotiate abc==`. It parses back to the same challenge
/// when the scheme, token68 and names are valid and no value holds a control character other
/// than a tab (everything [`parse_challenges`] returns).
impl fmt::Display for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.scheme)?;
        if let Some(token68) = &self.token68 {
            return write!(f, " {token68}");
        }
        for (i, (name, value)) in self.params.iter().enumerate() {
            f.write_str(if i == 0 { " " } else { ", " })?;
            write!(f, "{name}=\"")?;
            for c in value.chars() {
                if matches!(c, '"' | '\\') {
                    f.write_char('\\')?;
                }
                f.write_char(c)?;
            }
            f.write_char('"')?;
        }
        Ok(())
    }
}

/// A `WWW-Authenticate` value that is not a list of challenges.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed WWW-Authenticate: expected {expected} at byte {position}, found {}", found_text(*.found))]
pub struct ChallengeError {
    /// The byte offset in the header where parsing stopped.
    pub position: usize,
    /// What the grammar allows there.
    pub expected: &'static str,
    /// The character found there; `None` at the end of the header.
    pub found: Option<char>,
}

fn found_text(found: Option<char>) -> String {
    found.map_or_else(|| "the end".to_owned(), |c| format!("{c:?}"))
}

/// Parses a `WWW-Authenticate` value into its challenges, in order. An empty value, or one of
/// commas and spaces only, is an empty list.
///
/// ```
/// use billsync_domain::parse_challenges;
/// let cs = parse_challenges(r#"Basic realm="a", Bearer error="invalid_token", error_description="x""#)?;
/// assert_eq!(cs.len(), 2);
/// assert!(cs[1].is_scheme("bearer"));
/// assert_eq!(cs[1].error(), Some("invalid_token"));
/// assert_eq!(cs[1].to_string(), r#"Bearer error="invalid_token", error_description="x""#);
/// # Ok::<(), billsync_domain::ChallengeError>(())
/// ```
pub fn parse_challenges(header: &str) -> Result<Vec<Challenge>, ChallengeError> {
    let mut p = Parser { s: header, pos: 0 };
    let mut challenges = Vec::new();
    loop {
        p.skip_separators();
        if p.peek().is_none() {
            return Ok(challenges);
        }
        challenges.push(p.challenge()?);
        if !p.at_list_end() {
            return Err(p.error("',' or the end of the header"));
        }
    }
}

/// `tchar` (RFC 7230 section 3.2.6).
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// The characters of a token68 before its trailing `=`s (RFC 7235 section 2.1).
fn is_token68_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~+/".contains(c)
}

/// `qdtext`: HTAB, SP, visible ASCII but `"` and `\`, and obs-text (any non-ASCII character).
fn is_qdtext(c: char) -> bool {
    c == '\t' || c == ' ' || (c.is_ascii_graphic() && c != '"' && c != '\\') || !c.is_ascii()
}

/// What may follow `\` in a quoted-pair: HTAB, SP, VCHAR, obs-text.
fn is_quotable(c: char) -> bool {
    c == '\t' || c == ' ' || c.is_ascii_graphic() || !c.is_ascii()
}

#[derive(Clone, Copy)]
struct Parser<'a> {
    s: &'a str,
    /// Always on a character boundary of `s`.
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<char> {
        self.s.get(self.pos..).and_then(|rest| rest.chars().next())
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn eat(&mut self, c: char) -> bool {
        self.peek() == Some(c) && self.bump().is_some()
    }

    fn error(&self, expected: &'static str) -> ChallengeError {
        ChallengeError { position: self.pos, expected, found: self.peek() }
    }

    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&keep) {
            self.bump();
        }
        self.s.get(start..self.pos).unwrap_or_default()
    }

    /// Skips optional whitespace; whether there was any.
    fn skip_ows(&mut self) -> bool {
        !self.take_while(|c| c == ' ' || c == '\t').is_empty()
    }

    /// Skips whitespace and commas: the separators and empty elements of a list.
    fn skip_separators(&mut self) {
        self.take_while(|c| matches!(c, ' ' | '\t' | ','));
    }

    fn at_list_end(&self) -> bool {
        matches!(self.peek(), None | Some(','))
    }

    fn token(&mut self) -> Option<&'a str> {
        Some(self.take_while(is_tchar)).filter(|t| !t.is_empty())
    }

    /// Whether an auth-param (`name=`, `name =`) starts here.
    fn at_param(&self) -> bool {
        let mut ahead = *self;
        ahead.token().is_some() && {
            ahead.skip_ows();
            ahead.peek() == Some('=')
        }
    }

    /// An auth-scheme and its token68 or parameters; stops at the end or at the `,` before
    /// the next challenge.
    fn challenge(&mut self) -> Result<Challenge, ChallengeError> {
        let scheme = self.token().ok_or_else(|| self.error("an auth-scheme (a token)"))?;
        let mut challenge = Challenge { scheme: scheme.to_owned(), ..Challenge::default() };
        let spaced = self.skip_ows();
        if !self.at_list_end() {
            if !spaced {
                return Err(self.error("a space, ',' or the end after the auth-scheme"));
            }
            if let Some(token68) = self.token68() {
                challenge.token68 = Some(token68.to_owned());
                return Ok(challenge);
            }
            challenge.params.push(self.auth_param()?);
        }
        while let Some(param) = self.next_param()? {
            challenge.params.push(param);
        }
        Ok(challenge)
    }

    /// A token68 that makes up the rest of its list element, or nothing consumed.
    fn token68(&mut self) -> Option<&'a str> {
        let start = *self;
        if self.take_while(is_token68_char).is_empty() {
            return None;
        }
        self.take_while(|c| c == '=');
        let token68 = self.s.get(start.pos..self.pos);
        self.skip_ows();
        if self.at_list_end() {
            return token68;
        }
        *self = start;
        None
    }

    /// After a comma: the current challenge's next parameter, if one starts there.
    fn next_param(&mut self) -> Result<Option<(String, String)>, ChallengeError> {
        let before = *self;
        self.skip_separators();
        if !self.at_param() {
            *self = before;
            return Ok(None);
        }
        self.auth_param().map(Some)
    }

    /// `name BWS = BWS value` and the whitespace after it, ending at `,` or the end.
    fn auth_param(&mut self) -> Result<(String, String), ChallengeError> {
        let name = self.token().ok_or_else(|| self.error("a parameter name (a token)"))?;
        self.skip_ows();
        if !self.eat('=') {
            return Err(self.error("'=' after the parameter name"));
        }
        self.skip_ows();
        let value = if self.peek() == Some('"') {
            self.quoted_string()?
        } else {
            self.token().ok_or_else(|| self.error("a parameter value (a token or a quoted string)"))?.to_owned()
        };
        self.skip_ows();
        if !self.at_list_end() {
            return Err(self.error("',' or the end of the header after a parameter"));
        }
        Ok((name.to_owned(), value))
    }

    /// A quoted-string, unescaped; `self` is on its opening `"`.
    fn quoted_string(&mut self) -> Result<String, ChallengeError> {
        self.bump();
        let mut value = String::new();
        loop {
            match self.peek() {
                None => return Err(self.error("'\"' closing the quoted string")),
                Some('"') => {
                    self.bump();
                    return Ok(value);
                }
                Some('\\') => {
                    self.bump();
                    match self.peek() {
                        Some(c) if is_quotable(c) => value.push(c),
                        _ => return Err(self.error("a tab, space or visible character after '\\'")),
                    }
                }
                Some(c) if is_qdtext(c) => value.push(c),
                Some(_) => return Err(self.error("a tab, space, visible character or '\"' in a quoted string")),
            }
            self.bump();
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn challenge(scheme: &str, params: &[(&str, &str)]) -> Challenge {
        Challenge {
            scheme: scheme.into(),
            token68: None,
            params: params.iter().map(|(n, v)| ((*n).into(), (*v).into())).collect(),
        }
    }

    fn parse(header: &str) -> Vec<Challenge> {
        parse_challenges(header).unwrap_or_else(|e| panic!("{header:?}: {e}"))
    }

    fn error(header: &str) -> ChallengeError {
        parse_challenges(header).expect_err(header)
    }

    #[test]
    fn a_bearer_challenge_with_token_and_quoted_values() {
        let cs = parse(r#"Bearer realm="iot", error=insufficient_claims, scope="a b""#);
        assert_eq!(cs, [challenge("Bearer", &[("realm", "iot"), ("error", "insufficient_claims"), ("scope", "a b")])]);
        let c = &cs[0];
        assert_eq!(
            (c.realm(), c.error(), c.scope(), c.error_description()),
            (Some("iot"), Some("insufficient_claims"), Some("a b"), None)
        );
    }

    #[test]
    fn several_challenges_in_one_header() {
        assert_eq!(
            parse(r#"Basic realm="a", Bearer error="invalid_token", error_description="x""#),
            [
                challenge("Basic", &[("realm", "a")]),
                challenge("Bearer", &[("error", "invalid_token"), ("error_description", "x")]),
            ]
        );
        assert_eq!(
            parse(r#"Basic, Bearer realm="a", Digest"#),
            [challenge("Basic", &[]), challenge("Bearer", &[("realm", "a")]), challenge("Digest", &[]),]
        );
    }

    #[test]
    fn quoted_strings_unescape_backslashes() {
        let cs = parse(r#"Bearer error_description="say \"no\" \\ \o", realm="""#);
        assert_eq!(cs, [challenge("Bearer", &[("error_description", r#"say "no" \ o"#), ("realm", "")])]);
        assert_eq!(parse("Bearer realm=\"caf\\é \t\""), [challenge("Bearer", &[("realm", "café \t")])]);
    }

    #[test]
    fn optional_whitespace_around_equals_and_commas() {
        assert_eq!(
            parse("  Bearer \t realm = \"a\" ,error\t=x  "),
            [challenge("Bearer", &[("realm", "a"), ("error", "x")])]
        );
    }

    #[test]
    fn a_token68_is_kept_without_parameters() {
        let negotiate = Challenge { scheme: "Negotiate".into(), token68: Some("abc==".into()), params: vec![] };
        assert_eq!(parse("Negotiate abc=="), std::slice::from_ref(&negotiate));
        assert_eq!(
            parse(r#"Negotiate abc== , Basic realm="x""#),
            [negotiate.clone(), challenge("Basic", &[("realm", "x")])]
        );
        assert_eq!(negotiate.to_string(), "Negotiate abc==");
        let token = parse("Bearer a/b+c-d._~")[0].token68.clone();
        assert_eq!(token.as_deref(), Some("a/b+c-d._~"));
    }

    #[test]
    fn empty_list_elements_are_tolerated() {
        assert_eq!(parse(""), []);
        assert_eq!(parse(","), []);
        assert_eq!(parse(" , ,, \t"), []);
        assert_eq!(
            parse(r#", ,Bearer realm="a",, error="x" ,, Basic ,"#),
            [challenge("Bearer", &[("realm", "a"), ("error", "x")]), challenge("Basic", &[]),]
        );
        assert_eq!(parse(r#"Bearer , realm="a""#), [challenge("Bearer", &[("realm", "a")])]);
    }

    #[test]
    fn scheme_and_parameter_names_are_case_insensitive() {
        let c = &parse(r#"bEaReR ERROR="invalid_token", Error_Description=x, REALM=r, Scope=s"#)[0];
        assert!(c.is_scheme("Bearer") && !c.is_scheme("Basic"));
        assert_eq!(c.error(), Some("invalid_token"));
        assert_eq!(c.param("error_DESCRIPTION"), Some("x"));
        assert_eq!((c.realm(), c.scope()), (Some("r"), Some("s")));
        assert_eq!(c.to_string(), r#"bEaReR ERROR="invalid_token", Error_Description="x", REALM="r", Scope="s""#);
    }

    #[test]
    fn display_quotes_and_escapes_every_value() {
        let c = challenge("Bearer", &[("error", "invalid_token"), ("scope", "a b"), ("d", r#"x"y\z"#)]);
        assert_eq!(c.to_string(), r#"Bearer error="invalid_token", scope="a b", d="x\"y\\z""#);
        assert_eq!(parse(&c.to_string()), [c]);
    }

    #[test]
    fn an_unterminated_quote_is_an_error_at_the_end() {
        let header = r#"Bearer error="insufficient_claims"#;
        let e = error(header);
        assert_eq!((e.position, e.found), (header.len(), None));
        assert!(e.to_string().contains("closing the quoted string"), "{e}");
        assert_eq!(error(r#"Bearer realm="a\"#).position, 16, "a backslash at the end");
    }

    #[test]
    fn a_parameter_without_equals_is_an_error() {
        let e = error(r#"Bearer error "invalid_token""#);
        assert_eq!((e.position, e.expected, e.found), (13, "'=' after the parameter name", Some('"')));
        assert_eq!(error(r#"Bearer realm="a" error="b""#).position, 17, "a missing comma");
        assert_eq!(error(r#"Bearer realm="a", error "x""#).position, 24);
        assert_eq!(error(r#"Bearer a="b", realm="#).expected, "a parameter value (a token or a quoted string)");
        assert_eq!(parse("Bearer realm=")[0].token68.as_deref(), Some("realm="), "alone, it is a token68");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for header in [
            "=",
            "\"",
            "Bearer=x",
            "Bearer a=b=",
            "Bearer a==b",
            "Bearer realm=\"a\u{0}\"",
            "Bearer realm=\"a\"\r\n",
            "Bearer \u{1F600}",
            "\u{1F600}",
            "Bearer realm=\u{e9}",
            "Negotiate abc== def",
            "Bearer realm=\"\\\u{7}\"",
            "(Basic)",
        ] {
            let e = error(header);
            assert!(e.position <= header.len() && header.is_char_boundary(e.position), "{header:?}: {e:?}");
            assert!(e.to_string().starts_with("malformed WWW-Authenticate: expected "), "{e}");
        }
    }

    fn token() -> impl Strategy<Value = String> {
        "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,10}"
    }

    fn value() -> impl Strategy<Value = String> {
        let printable = prop_oneof![
            6 => proptest::char::range(' ', '~'),
            1 => Just('"'),
            1 => Just('\\'),
            1 => Just('\t'),
            1 => any::<char>().prop_filter("printable", |c| !c.is_control()),
        ];
        proptest::collection::vec(printable, 0..16).prop_map(|cs| cs.into_iter().collect())
    }

    fn arb_challenge() -> impl Strategy<Value = Challenge> {
        let params = proptest::collection::vec((token(), value()), 0..=4);
        prop_oneof![
            4 => (token(), params).prop_map(|(scheme, params)| Challenge { scheme, token68: None, params }),
            1 => (token(), "[A-Za-z0-9._~+/-]{1,10}={0,2}")
                .prop_map(|(scheme, t)| Challenge { scheme, token68: Some(t), params: vec![] }),
        ]
    }

    proptest! {
        #[test]
        fn one_challenge_round_trips_through_display(c in arb_challenge()) {
            prop_assert_eq!(parse_challenges(&c.to_string()), Ok(vec![c]));
        }

        #[test]
        fn several_challenges_round_trip_joined_with_commas(cs in proptest::collection::vec(arb_challenge(), 0..5)) {
            let header = cs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            prop_assert_eq!(parse_challenges(&header), Ok(cs));
        }

        #[test]
        fn any_text_parses_or_errors_and_what_parses_is_canonical(header in "[ -~\t\u{e9}\u{1F600}\u{0}]{0,40}") {
            match parse_challenges(&header) {
                Ok(cs) => {
                    let canonical = cs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
                    prop_assert_eq!(parse_challenges(&canonical), Ok(cs));
                }
                Err(e) => prop_assert!(e.position <= header.len() && header.is_char_boundary(e.position)),
            }
        }
    }
}
