//! Runs the emulator until Ctrl-C: `cargo run -p billsync-emulator --example serve -- [--config FILE] [--listen ADDR]`.
//! Without `--config`, the built-in demo registry is used; the default address is 127.0.0.1:8787.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // bench and example code: a panic is a failure

use billsync_emulator::{EmulatorConfig, serve_forever};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = EmulatorConfig::builtin();
    let mut listen = "127.0.0.1:8787".parse()?;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" => {
                let path = args.next().ok_or("--config needs a file")?;
                config = EmulatorConfig::from_toml_file(path)?;
            }
            "--listen" => listen = args.next().ok_or("--listen needs an address")?.parse()?,
            other => return Err(format!("unknown argument {other:?}; expected --config FILE, --listen ADDR").into()),
        }
    }
    serve_forever(config, listen).await?;
    Ok(())
}
