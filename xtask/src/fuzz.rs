//! `cargo xtask fuzz [--seconds N]`: runs each cargo-fuzz target of `fuzz/` for N seconds
//! (default 10). cargo-fuzz needs nightly flags; on the stable toolchain they are unlocked with
//! `RUSTC_BOOTSTRAP=1`, and AddressSanitizer is off (`-s none`: coverage-guided fuzzing of
//! panics; the workspace forbids `unsafe`). cargo-fuzz is installed when missing; if that is
//! impossible the step is skipped with a message, since the committed corpus is replayed by
//! `cargo test` (tests/hostile/fuzz_corpus.rs) anyway. New inputs go to `target/fuzz-corpus/`,
//! never into the committed `fuzz/corpus/`; a crash is written to `fuzz/artifacts/<target>/`.

use std::process::Command;

use crate::{cargo, root, sh};

pub const TARGETS: &[&str] = &[
    "billing_event",
    "jwt_inspect",
    "token_response",
    "billing_response",
    "config",
    "www_authenticate",
    "ingest_body",
];

pub fn run(args: &[String]) -> Result<(), String> {
    let mut seconds = "10".to_owned();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => seconds = it.next().ok_or("--seconds needs a value")?.clone(),
            other => return Err(format!("fuzz: unknown argument {other}")),
        }
    }
    if !installed() {
        eprintln!("cargo-fuzz is missing: installing it (cargo install cargo-fuzz --locked)");
        if let Err(e) = sh(cargo().args(["install", "cargo-fuzz", "--locked"])) {
            eprintln!(
                "xtask fuzz: SKIPPED, cargo-fuzz cannot be installed here ({e}); the corpus is still replayed by cargo test"
            );
            return Ok(());
        }
    }
    let fuzz = || {
        let mut c = cargo();
        c.env("RUSTC_BOOTSTRAP", "1").current_dir(root());
        c
    };
    sh(fuzz().args(["fuzz", "build", "-s", "none"]))?;
    for target in TARGETS {
        let scratch = root().join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
        sh(fuzz()
            .args(["fuzz", "run", "-s", "none", target])
            .arg(&scratch)
            .arg(root().join("fuzz/corpus").join(target))
            .args(["--", &format!("-max_total_time={seconds}")]))?;
    }
    Ok(())
}

fn installed() -> bool {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}
