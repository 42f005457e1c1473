//! `cargo xtask bench`: runs the criterion benchmarks and collects the figures.

use crate::{cargo, sh};

pub fn run(quick: bool) -> Result<(), String> {
    let mut cmd = cargo();
    cmd.args(["bench", "--workspace", "--locked"]);
    if quick {
        cmd.args(["--", "--quick", "--noplot"]);
    }
    sh(&mut cmd)
}
