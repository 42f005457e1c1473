//! Files named by a secret-bearing key (`client_secret_file`, and the key, token and TLS key
//! files of later keys): read only when other users cannot read them.
//!
//! A file others can read (the "other" permission bits) is refused with the `chmod 600` hint,
//! unless the tenant sets `allow_insecure_key_permissions = true` (then a warning). A file its
//! group can read gets a warning only: Kubernetes mounts secrets with a group.

use std::path::Path;

use zeroize::Zeroizing;

/// A secret file's text (its trailing newline removed), and the warning about its permissions,
/// if any.
pub(super) struct SecretFile {
    pub(super) text: String,
    pub(super) warning: Option<String>,
}

/// Why a secret file was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// It cannot be read (missing, a directory, not UTF-8, no permission).
    Unreadable,
    /// Other users can read it.
    Permissions,
}

/// Reads the file named by `key`.
///
/// # Errors
/// Why, with the reason naming the file: unreadable, or readable by others (unless
/// `allow_insecure`).
pub(super) fn read(path: &Path, key: &str, allow_insecure: bool) -> Result<SecretFile, (Refusal, String)> {
    let warning = match permissions(path) {
        Some(mode) if mode & 0o007 != 0 && !allow_insecure => {
            return Err((
                Refusal::Permissions,
                format!(
                    "{} can be read by other users (mode {:03o}); run chmod 600 {0}, or set allow_insecure_key_permissions = true \
                 on the tenant to accept it",
                    path.display(),
                    mode & 0o777
                ),
            ));
        }
        Some(mode) if mode & 0o007 != 0 => Some(format!(
            "{key}: {} can be read by other users (mode {:03o}), accepted as allow_insecure_key_permissions is set; \
             run chmod 600 on it",
            path.display(),
            mode & 0o777
        )),
        Some(mode) if mode & 0o070 != 0 => Some(format!(
            "{key}: {} can be read by its group (mode {:03o}); fine for a mounted Kubernetes secret, otherwise run \
             chmod 600 on it",
            path.display(),
            mode & 0o777
        )),
        _ => None,
    };
    // The buffer read is zeroized; only the trimmed copy leaves, into the caller's secret type.
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| (Refusal::Unreadable, format!("{}: {e}", path.display())))?,
    );
    Ok(SecretFile { text: text.trim_end_matches(['\n', '\r']).to_owned(), warning })
}

/// The file's permission bits (after symlinks, as Kubernetes mounts are links).
#[cfg(unix)]
pub(super) fn permissions(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).ok().map(|m| m.permissions().mode())
}

#[cfg(not(unix))]
pub(super) fn permissions(_: &Path) -> Option<u32> {
    None
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[allow(clippy::unwrap_used)] // test helper: a panic is the failure
    fn file(dir: &Path, mode: u32) -> std::path::PathBuf {
        let path = dir.join(format!("secret-{mode:o}"));
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn others_may_not_read_a_secret_file_and_a_group_gets_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let private = read(&file(dir.path(), 0o600), "k", false).unwrap();
        assert_eq!((private.text.as_str(), private.warning), ("s3cret", None));

        let open = file(dir.path(), 0o644);
        let (why, refused) = read(&open, "k", false).err().unwrap();
        assert_eq!(why, Refusal::Permissions);
        assert!(refused.contains(&open.display().to_string()) && refused.contains("mode 644"), "{refused}");
        assert!(refused.contains("chmod 600") && refused.contains("allow_insecure_key_permissions"), "{refused}");
        let allowed = read(&open, "k", true).unwrap();
        assert!(allowed.warning.is_some_and(|w| w.contains("other users")));

        let group = read(&file(dir.path(), 0o640), "k", false).unwrap();
        assert!(group.warning.is_some_and(|w| w.contains("its group") && w.contains("mode 640")));
    }
}
