//! `cargo xtask ci`.

use std::process::Command;

use crate::{cargo, output, root, sh};

/// The features every test build has: the failpoints of the crash tests (one build serves the
/// tests, the doctests and the soak's binary).
pub const TEST_FEATURES: [&str; 2] = ["--features", "billsync-cli/failpoints"];

pub fn run() -> Result<(), String> {
    let vars = test_env()?;
    sh(cargo().args(["fmt", "--all", "--", "--check"]))?;
    sh(cargo().args(["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"]))?;
    crate::arch::run()?;
    crate::pins::run()?;
    let nextest = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    let mut tests = cargo();
    if nextest {
        tests.args(["nextest", "run", "--workspace", "--locked", "--no-fail-fast", "--profile", "ci"]);
    } else {
        tests.args(["test", "--workspace", "--locked", "--no-fail-fast"]);
    }
    tests.args(TEST_FEATURES);
    sh(tests.envs(vars.iter().map(|(k, v)| (k, v))))?;
    if nextest {
        // nextest does not run doctests.
        sh(cargo()
            .args(["test", "--workspace", "--locked", "--doc"])
            .args(TEST_FEATURES)
            .envs(vars.iter().map(|(k, v)| (k, v))))?;
    }
    // Hostile conditions (docs/hostile.md): a one-minute fault soak with SIGKILLed agents, then
    // a short run of every fuzz target (skipped with a message where cargo-fuzz cannot be had).
    crate::soak::run(&["--minutes".into(), "1".into()])?;
    crate::fuzz::run(&["--seconds".into(), "10".into()])?;
    // Speed is measured, never asserted: the quick benchmarks must run, and their figures
    // (with baselines of the same run) land in target/bench/report.{json,md}.
    crate::bench::run(true)?;
    Ok(())
}

/// Starts what the tests need and returns the environment variables that point at it.
pub fn test_env() -> Result<Vec<(String, String)>, String> {
    let scripts = root().join("scripts");
    let pg = output(Command::new("bash").arg(scripts.join("ensure-postgres.sh")))?;
    let url = pg.lines().last().unwrap_or_default().trim().to_owned();
    if url.is_empty() {
        return Err("scripts/ensure-postgres.sh printed no URL".into());
    }
    let mut vars = vec![("BILLSYNC_TEST_DATABASE_URL".to_owned(), url)];
    // The MQTT tests start brokers of their own: the binary is all they need.
    let mosquitto = output(Command::new("bash").arg(scripts.join("ensure-mosquitto.sh")))?;
    let mosquitto = mosquitto.lines().last().unwrap_or_default().trim().to_owned();
    if mosquitto.is_empty() {
        return Err("scripts/ensure-mosquitto.sh printed no path".into());
    }
    vars.push(("BILLSYNC_MOSQUITTO".to_owned(), mosquitto));
    let npm = scripts.join("install-npm-test-peers.sh");
    if npm.exists() {
        sh(Command::new("bash").arg(npm))?;
        vars.push((
            "OAUTH2_MOCK_SERVER_DIR".to_owned(),
            root().join("target/test-deps/node_modules/oauth2-mock-server").display().to_string(),
        ));
        vars.push((
            "OIDC_PROVIDER_DIR".to_owned(),
            root().join("target/test-deps/node_modules/oidc-provider").display().to_string(),
        ));
    }
    Ok(vars)
}
