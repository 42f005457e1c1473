//! TOML syntax and type errors, told without echoing the configuration's text.
//!
//! toml's own message quotes the offending line, and serde's type errors quote the value
//! (``invalid type: integer `5` ``). A line may hold a client secret, a private key or a URL
//! with a password, so billsync never shows the text: the message names the line, the column
//! and, on a line that may hold a secret, only the key.

/// Words that make a key secret-bearing (`client_secret`, `password_env`, `ingest_token_file`,
/// `private_key_file`...): conservative, a few harmless keys are treated as secret too.
const SECRET_WORDS: [&str; 5] = ["secret", "password", "private_key", "token", "key_file"];

/// The error in words: `line L, column C: message`, where the message is toml's unless the
/// line may hold a secret.
pub(super) fn describe(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return "the file is not valid TOML (no position given; its text is not shown)".to_owned();
    };
    let (line_no, column, line) = locate(text, span.start);
    if may_hold_secret(line) {
        let key = line.split('=').next().map(str::trim).filter(|k| !k.is_empty()).unwrap_or("?");
        format!(
            "line {line_no}, column {column}: the value of `{key}` is malformed or of the wrong type \
             (its text is not shown, as it may hold a secret)"
        )
    } else {
        format!("line {line_no}, column {column}: {}", e.message())
    }
}

/// The 1-based line and column of byte `at`, and that line's text.
fn locate(text: &str, at: usize) -> (usize, usize, &str) {
    let at = at.min(text.len());
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    let line_no = text[..at].matches('\n').count() + 1;
    let column = text[start..at].chars().count() + 1;
    (line_no, column, &text[start..end])
}

/// Whether a line names a secret-bearing key or holds a URL with a password.
fn may_hold_secret(line: &str) -> bool {
    let lower = line.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| lower.contains(w)) || url_with_password(line)
}

/// `u` with the password of each `scheme://user:password@host` in it replaced by `***`, for
/// messages that quote a URL.
pub(super) fn without_password(u: &str) -> String {
    let mut out = String::with_capacity(u.len());
    let mut rest = u;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail.find(['/', '"', '\'', ' ', '?', '#']).unwrap_or(tail.len());
        let (authority, after) = tail.split_at(end);
        match authority.rsplit_once('@') {
            Some((userinfo, host)) if userinfo.contains(':') => {
                let user = userinfo.split(':').next().unwrap_or("");
                out.push_str(&format!("{user}:***@{host}"));
            }
            _ => out.push_str(authority),
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// `scheme://user:password@host`.
fn url_with_password(line: &str) -> bool {
    line.match_indices("://").any(|(i, _)| {
        let rest = &line[i + 3..];
        let authority = rest.split(['/', '"', '\'', ' ', '?', '#']).next().unwrap_or("");
        authority.rsplit_once('@').is_some_and(|(userinfo, _)| userinfo.contains(':'))
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};

    const MARK: &str = "MARKER-s3cr3t-9f2c";

    fn syntax_error(text: &str) -> String {
        match Config::parse(text, Path::new("billsync.toml")) {
            Err(e @ ConfigError::Syntax { .. }) => e.to_string(),
            other => panic!("not a syntax error: {other:?}"),
        }
    }

    #[test]
    fn a_malformed_line_with_a_secret_is_named_but_never_shown() {
        let base = "[platform]\nbase_url = \"https://iot.example.com\"\n";
        for (line, key) in [
            (format!("client_secret = \"{MARK}"), "client_secret"),
            (format!("client_secret = {MARK}"), "client_secret"),
            (format!("client_secret = \"{MARK}\" x"), "client_secret"),
            (format!("client_secret = [\"{MARK}\"]"), "client_secret"),
        ] {
            let text = format!("{base}[[tenants]]\nname = \"acme\"\n{line}\n");
            let said = syntax_error(&text);
            assert!(!said.contains(MARK), "the secret was echoed: {said}");
            assert!(said.contains("billsync.toml") && said.contains("line 5") && said.contains(key), "{said}");
        }
        let text = format!(
            "[platform]\nbase_url = \"https://iot.example.com\"\n[storage]\nurl = \"postgres://u:{MARK}@db/b\" x\n"
        );
        let said = syntax_error(&text);
        assert!(!said.contains(MARK) && said.contains("line 4") && said.contains("`url`"), "{said}");
    }

    #[test]
    fn passwords_in_quoted_urls_are_masked() {
        use super::without_password;
        assert_eq!(without_password("https://bob:pw@iot.example.com/x"), "https://bob:***@iot.example.com/x");
        assert_eq!(without_password("https://iot.example.com/x?a=b"), "https://iot.example.com/x?a=b");
        assert_eq!(without_password("ftp://a:b:c@h and http://u@h"), "ftp://a:***@h and http://u@h");
        let said = crate::config::check_url(&format!("ftp://u:{MARK}@iot.example.com")).unwrap_err();
        assert!(!said.contains(MARK) && said.contains("ftp://u:***@iot.example.com"), "{said}");
        let said = crate::config::check_url(&format!("http://u:{MARK}@iot.example.com")).unwrap_err();
        assert!(!said.contains(MARK), "{said}");
        let said = crate::config::check_url(&format!("https://u:{MARK}@iot.example.com")).unwrap_err();
        assert!(!said.contains(MARK) && said.contains("holds credentials"), "{said}");
    }

    #[test]
    fn other_errors_keep_tomls_message_with_the_line_but_not_its_text() {
        let text = "[platform]\nbase_url = \"https://iot.example.com\"\n[sync]\nmax_batch_events = \"many-MARK\"\n";
        let said = syntax_error(text);
        assert!(said.contains("line 4") && said.contains("invalid type"), "{said}");
        let text = "[platform]\nbase_url = \"https://iot.example.com\"\nbogus_key = 1\n";
        let said = syntax_error(text);
        assert!(said.contains("line 3") && said.contains("unknown field `bogus_key`"), "{said}");
    }
}
