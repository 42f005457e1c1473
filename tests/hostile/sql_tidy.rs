//! SQL only through bound parameters: every `format!` in `crates/storage/src` that builds SQL
//! may interpolate only numbered placeholders (`?{}` → `?3`) and allow-listed constant
//! fragments, never a value. Values go through `.bind(..)`.

use std::path::Path;

/// Interpolations that are SQL text of our own, never data: the column list of a `SELECT`
/// and the generated list of placeholder tuples of the batch `INSERT`.
const ALLOWED: &[&str] = &["COLUMNS", "values.join(\", \")"];
const SQL_WORDS: &[&str] = &["SELECT ", "INSERT ", "UPDATE ", "DELETE ", " WHERE ", " VALUES", " FROM ", " SET "];

/// The problems in one source text: `line: interpolation`.
fn check_source(src: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = src;
    while let Some(at) = rest.find("format!(") {
        let start = src.len() - rest.len() + at;
        let args = call_args(&src[start + "format!(".len()..]);
        rest = &rest[at + "format!(".len()..];
        let Some((literal, positional)) = args.split_first() else { continue };
        let literal = unquote(literal);
        if !SQL_WORDS.iter().any(|w| literal.contains(w)) {
            continue;
        }
        let line = src[..start].lines().count() + 1;
        let mut next_positional = positional.iter();
        for (placeholder_before, inner) in interpolations(&literal) {
            let name = inner.split(':').next().unwrap_or("").trim();
            let arg = if name.is_empty() { next_positional.next().map(|s| s.trim()).unwrap_or("") } else { name };
            if placeholder_before || ALLOWED.contains(&arg) {
                continue;
            }
            found.push(format!("line {line}: SQL built with `{arg}` interpolated; bind it as a parameter"));
        }
    }
    found
}

/// The comma-separated arguments of a call whose opening parenthesis was just consumed.
fn call_args(s: &str) -> Vec<String> {
    let (mut depth, mut args, mut cur, mut in_str, mut prev) = (0i32, Vec::new(), String::new(), false, '\0');
    for c in s.chars() {
        if in_str {
            in_str = !(c == '"' && prev != '\\');
        } else {
            match c {
                '"' => in_str = true,
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' if depth == 0 => {
                    args.push(std::mem::take(&mut cur));
                    return args;
                }
                ')' | ']' | '}' => depth -= 1,
                ',' if depth == 0 => {
                    args.push(std::mem::take(&mut cur));
                    prev = c;
                    continue;
                }
                _ => {}
            }
        }
        cur.push(c);
        prev = if prev == '\\' && c == '\\' { '\0' } else { c };
    }
    args
}

/// A string literal's text (`"..."` or `r#"..."#`), with `\` line continuations joined.
fn unquote(lit: &str) -> String {
    let t = lit.trim().trim_start_matches('r').trim_matches('#');
    let t = t.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(t);
    let mut out = String::new();
    let mut lines = t.split("\\\n");
    if let Some(first) = lines.next() {
        out.push_str(first);
    }
    for l in lines {
        out.push_str(l.trim_start());
    }
    out
}

/// Each `{...}` of a format string (not `{{`), with whether it directly follows a `?`.
fn interpolations(fmt: &str) -> Vec<(bool, String)> {
    let b = fmt.as_bytes();
    let (mut i, mut out) = (0, Vec::new());
    while i < b.len() {
        match b[i] {
            b'{' if b.get(i + 1) == Some(&b'{') => i += 2,
            b'}' if b.get(i + 1) == Some(&b'}') => i += 2,
            b'{' => {
                let end = fmt[i..].find('}').map_or(b.len(), |e| i + e);
                out.push((i > 0 && b[i - 1] == b'?', fmt[i + 1..end].to_owned()));
                i = end + 1;
            }
            _ => i += 1,
        }
    }
    out
}

#[test]
fn storage_builds_sql_only_with_bound_parameters() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/storage/src");
    let mut problems = Vec::new();
    let mut sql_formats = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            let src = std::fs::read_to_string(&path).unwrap();
            sql_formats += src.matches("format!(").count();
            problems.extend(check_source(&src).into_iter().map(|p| format!("{}: {p}", path.display())));
        }
    }
    assert!(sql_formats > 0, "the scan found no format! at all: is the path right?");
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_check_catches_values_and_passes_placeholders() {
    // Caught: a value inline, named or positional, in any SQL statement.
    assert_eq!(check_source(r#"sqlx::query(&format!("SELECT * FROM events WHERE tenant = '{tenant}'"))"#).len(), 1);
    assert_eq!(check_source(r#"let q = format!("DELETE FROM events WHERE event_id = {}", id.as_str());"#).len(), 1);
    assert_eq!(
        check_source("format!(\"UPDATE events SET state = 2 \\\n     WHERE tenant = '{}' AND seq = ?1\", t)").len(),
        1
    );
    // Passed: numbered placeholders, the allow-listed fragments, text that is not SQL.
    assert!(check_source(r#"format!("(?{}, ?{}, 0)", 3 * i + 2, 3 * i + 3)"#).is_empty());
    assert!(
        check_source(r#"format!("INSERT INTO events (a) VALUES {} ON CONFLICT DO NOTHING", values.join(", "))"#)
            .is_empty()
    );
    assert!(check_source(r#"sqlx::query(&format!("{COLUMNS} WHERE state = 3 ORDER BY seq"))"#).is_empty());
    assert!(check_source(r#"format!("{ms} ms is out of range")"#).is_empty());
}
