//! `cargo xtask pins`: every test that `docs/platform.md` names as pinning a row of the contract
//! exists. A test name there is a backticked snake_case identifier of four words or more; it
//! must be a `fn` somewhere under `crates/` or `tests/`.

use std::path::Path;

use crate::root;

/// The backticked identifiers of four or more snake_case words in `text`.
fn test_names(text: &str) -> Vec<&str> {
    let mut names: Vec<&str> = text
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.split('_').count() >= 4
                && s.split('_')
                    .all(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// Appends the text of every `.rs` file under `dir` to `out`.
fn sources(dir: &Path, out: &mut String) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        let skip = path.file_name().is_some_and(|n| n == "target" || n == "node_modules");
        if path.is_dir() && !skip {
            sources(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?);
        }
    }
    Ok(())
}

/// Fails naming every test the contract page cites that does not exist.
pub fn run() -> Result<(), String> {
    let doc = root().join("docs/platform.md");
    let text = std::fs::read_to_string(&doc).map_err(|e| format!("{}: {e}", doc.display()))?;
    let mut code = String::new();
    for dir in ["crates", "tests"] {
        sources(&root().join(dir), &mut code)?;
    }
    let names = test_names(&text);
    let missing: Vec<&str> = names.iter().copied().filter(|n| !code.contains(&format!("fn {n}("))).collect();
    if missing.is_empty() {
        eprintln!("pins: ok ({} tests named by docs/platform.md exist)", names.len());
        Ok(())
    } else {
        Err(format!("docs/platform.md names tests that do not exist (renamed? deleted?): {}", missing.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_names_are_long_snake_case_identifiers_in_backticks() {
        let text = "`missing_scope` and `row_5xx_is_transient`, `the_settle_table`, `a_b_c_d`, `X-Tenant-ID`, \
                    `not an_identifier_at_all`";
        assert_eq!(test_names(text), ["a_b_c_d", "row_5xx_is_transient"]);
    }
}
