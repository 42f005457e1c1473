//! Running one test again in a child process with its own environment.
//!
//! A test process is multi-threaded, so its environment cannot be changed safely (and the
//! workspace forbids `unsafe`). Some behaviours are set by the environment only, such as the
//! operating system's trust store that `rustls-native-certs` reads (`SSL_CERT_FILE`,
//! `SSL_CERT_DIR`). [`in_child_with_env`] runs the calling test's binary again for that one test,
//! with the variables set.

use std::ffi::OsStr;
use std::process::Command;

/// The variable that marks the child run, holding the test's name.
const MARK: &str = "BILLSYNC_TESTKIT_CHILD";

/// Runs `test` (its name as the harness knows it, `module::name`) again in a child process
/// with `env` set, and returns `false` once the child has passed; in the child itself,
/// returns `true` at once, and the caller then does the work that needs the environment.
///
/// ```no_run
/// #[test]
/// fn trusts_what_the_os_trusts() {
///     if !billsync_testkit::in_child_with_env("tls::trusts_what_the_os_trusts", &[("SSL_CERT_FILE", "ca.pem".as_ref())]) {
///         return; // the child passed
///     }
///     // here SSL_CERT_FILE=ca.pem
/// }
/// ```
///
/// # Panics
/// In the parent, when the child cannot be started or fails (with its output).
#[allow(clippy::expect_used)] // test support: a panic is the failure
pub fn in_child_with_env(test: &str, env: &[(&str, &OsStr)]) -> bool {
    if std::env::var(MARK).is_ok_and(|t| t == test) {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = Command::new(exe);
    child.args([test, "--exact", "--nocapture", "--test-threads=1"]).env(MARK, test);
    for (key, value) in env {
        child.env(key, value);
    }
    let out = child.output().expect("the test binary runs again");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{test} failed in its child process:\n{said}");
    // The harness says "1 passed" when the name matched a test, "0 passed" when it did not.
    assert!(said.contains("1 passed"), "{test} is not the name of this test (module::name):\n{said}");
    false
}
