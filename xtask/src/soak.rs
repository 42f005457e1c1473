//! `cargo xtask soak [--minutes N] [--seed S] [--release] [--keep]`: builds the `billsync` binary
//! and the soak (`tests/examples/soak.rs`), then runs the soak against that binary. The soak
//! itself starts the emulator with every fault on, producers, and an agent it SIGKILLs at
//! random moments; it exits non-zero on any loss. Default 5 minutes; CI runs 1.

use crate::{cargo, root, sh};

pub fn run(args: &[String]) -> Result<(), String> {
    let mut minutes = "5".to_owned();
    let mut release = false;
    let mut passthrough = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--minutes" => minutes = it.next().ok_or("--minutes needs a value")?.clone(),
            "--release" => release = true,
            "--seed" => {
                passthrough.push(a.clone());
                passthrough.push(it.next().ok_or("--seed needs a value")?.clone());
            }
            "--keep" => passthrough.push(a.clone()),
            other => return Err(format!("soak: unknown argument {other}")),
        }
    }
    let profile: &[&str] = if release { &["--release"] } else { &[] };
    sh(cargo()
        .args(["build", "--locked", "-p", "billsync-cli", "--bin", "billsync"])
        .args(crate::ci::TEST_FEATURES)
        .args(profile))?;
    sh(cargo().args(["build", "--locked", "-p", "billsync-tests", "--example", "soak"]).args(profile))?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| root().join("target"));
    let dir = target.join(if release { "release" } else { "debug" });
    sh(std::process::Command::new(dir.join("examples").join("soak"))
        .arg("--minutes")
        .arg(&minutes)
        .arg("--billsync")
        .arg(dir.join("billsync"))
        .args(&passthrough))
}
