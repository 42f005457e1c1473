//! `billsync key generate`: a new private key for a tenant on `private_key_jwt`, written where
//! only its owner can read it, with what to register in the platform's console and what to add
//! to the configuration. The configuration itself is never edited.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use billsync::{AssertionAlgorithm, AssertionKey};

/// What `key generate` was asked for.
pub struct Generate<'a> {
    /// The configuration file (the key goes to `keys/TENANT.pem` beside it by default).
    pub config: &'a Path,
    /// The tenant's local name.
    pub tenant: &'a str,
    /// RS256 (RSA 2048) or ES256 (P-256).
    pub algorithm: AssertionAlgorithm,
    /// Where to write the key instead.
    pub out: Option<PathBuf>,
    /// Overwrite an existing file.
    pub force: bool,
}

/// Writes the key and prints the public key (PEM and JWK), its `kid` and the configuration
/// lines. Exit 2 when the file exists (without `--force`) or the tenant name cannot be a file
/// name.
///
/// # Errors
/// The key could not be generated or written.
pub fn generate(args: &Generate<'_>) -> anyhow::Result<ExitCode> {
    if !safe_name(args.tenant) {
        eprintln!("error: --tenant {:?} is not a tenant name (letters, digits, '.', '_', '-')", args.tenant);
        return Ok(ExitCode::from(2));
    }
    let beside = args.config.parent().unwrap_or(Path::new("."));
    let path = args.out.clone().unwrap_or_else(|| beside.join("keys").join(format!("{}.pem", args.tenant)));
    if path.exists() && !args.force {
        eprintln!(
            "error: {} exists; pass --force to replace it (the old key stops working once replaced)",
            path.display()
        );
        return Ok(ExitCode::from(2));
    }
    let key = AssertionKey::generate(args.algorithm).context("generating the key")?;
    write_private(&path, key.private_pem()?.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    let shown = if args.out.is_some() { path.display().to_string() } else { format!("keys/{}.pem", args.tenant) };
    println!("wrote the private key to {} (mode 600)\n", path.display());
    println!("public key ({}, key id {}):\n{}", key.algorithm(), key.key_id(), key.public_pem()?);
    println!("as a JWK:\n{}\n", serde_json::to_string_pretty(&key.public_jwk())?);
    println!("Register this public key (PEM or JWK) with the tenant's client application in the platform console,");
    println!("with key id {}, then add to tenant {:?} in the configuration:\n", key.key_id(), args.tenant);
    println!("auth_method = \"private_key_jwt\"\nprivate_key_file = \"{shown}\"");
    println!(
        "# key_id = \"{}\"   (the default: the key's RFC 7638 thumbprint; set it if the console assigns its own)",
        key.key_id()
    );
    println!(
        "# token_url = \"https://.../iot/api/v2/oauth2/token\"   (the assertion-only endpoint, if the tenant uses it)"
    );
    Ok(ExitCode::SUCCESS)
}

/// A name safe as a file name.
fn safe_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// Writes `bytes` to `path`, created or truncated, with its directory if missing; on Unix with
/// mode 0600, also when the file existed with another mode (set before anything is written).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    #[cfg(unix)]
    file.set_permissions(<std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600))?;
    file.write_all(bytes)
}
