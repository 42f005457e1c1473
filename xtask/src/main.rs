//! Project chores, run as `cargo xtask <task>` (the alias lives in `.cargo/config.toml`).
//!
//! - `ci`: exactly what CI runs: set up the test environment (PostgreSQL, the npm
//!   authorization server used for interoperability), `cargo fmt --check`, clippy with
//!   `-D warnings`, the layering check (`arch`), the contract's test pins (`pins`), every test, a one-minute soak, a short fuzz run of
//!   each target, and the quick benchmarks. If it passes locally, CI is green.
//! - `bench [--quick]`: the benchmarks, written to `target/bench/`.
//! - `arch`: the layering, from `cargo metadata` (domain pure, adapters independent, the library
//!   without the CLI or the emulator, nothing on the benchmarks).
//! - `pins`: every test `docs/platform.md` names as pinning the contract exists.
//! - `soak [--minutes N] [--seed S] [--release] [--keep]`: the fault soak (every platform fault,
//!   concurrent producers, the agent SIGKILLed and restarted), then a reconciliation; fails on
//!   any loss. Default 5 minutes.
//! - `fuzz [--seconds N]`: each cargo-fuzz target for N seconds (installs cargo-fuzz if missing).

mod arch;
mod bench;
mod ci;
mod fuzz;
mod pins;
mod soak;

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci::run(),
        Some("arch") => arch::run(),
        Some("pins") => pins::run(),
        Some("soak") => soak::run(&args[1..]),
        Some("fuzz") => fuzz::run(&args[1..]),
        Some("bench") => bench::run(args.iter().any(|a| a == "--quick")),
        Some("env") => ci::test_env().map(|vars| {
            for (k, v) in vars {
                println!("export {k}={v}");
            }
        }),
        _ => {
            eprintln!(
                "usage: cargo xtask <ci | bench [--quick] | arch | pins | soak [--minutes N] | fuzz [--seconds N] | env>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command from the workspace root, echoing it; fails with its exit status.
pub(crate) fn sh(cmd: &mut Command) -> Result<(), String> {
    eprintln!("$ {}", show(cmd));
    let status = cmd.current_dir(root()).status().map_err(|e| format!("{}: {e}", show(cmd)))?;
    if status.success() { Ok(()) } else { Err(format!("`{}` failed with {status}", show(cmd))) }
}

/// Runs a command and returns its standard output.
pub(crate) fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.current_dir(root()).output().map_err(|e| format!("{}: {e}", show(cmd)))?;
    if !out.status.success() {
        return Err(format!("`{}` failed: {}", show(cmd), String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// The workspace root (the parent of this crate).
pub(crate) fn root() -> std::path::PathBuf {
    let here = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(std::path::Path::to_path_buf).unwrap_or(here)
}

pub(crate) fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}
