//! A tenant's credential: a client secret (inline, from the environment or from a file), or a
//! private key that signs a client assertion for each token request (`private_key_jwt`, RFC
//! 7523).

use std::path::PathBuf;
use std::time::Duration;

use billsync_auth::{AssertionKey, AuthMethod, DEFAULT_ASSERTION_LIFETIME, MAX_ASSERTION_LIFETIME};
use billsync_domain::ClientSecret;
use zeroize::Zeroizing;

use super::{At, ConfigError, RawTenant, relative_to, secret_file};

/// How a tenant proves itself to the token endpoint.
#[derive(Debug)]
pub enum Credential {
    /// A client secret, sent as the tenant's `auth_method` says.
    Secret(ClientSecret),
    /// A private key signing a short-lived client assertion per token request.
    PrivateKey {
        /// The key (its `Debug` shows the algorithm and key id only).
        key: AssertionKey,
        /// `exp - iat` of each assertion.
        lifetime: Duration,
    },
    /// Client assertions minted outside billsync (an HSM, a KMS, a signing sidecar), read
    /// from this file afresh for every token request.
    AssertionFile {
        /// The file, relative paths resolved against the configuration file's directory.
        path: PathBuf,
    },
}

impl RawTenant {
    /// The credential `auth_method` asks for, from exactly the keys that method uses.
    pub(super) fn credential(
        &self,
        at: At<'_>,
        key: &dyn Fn(&str) -> String,
        warnings: &mut Vec<String>,
    ) -> Result<Credential, ConfigError> {
        if self.auth_method == Some(AuthMethod::PrivateKeyJwt) {
            let secret_keys = [
                ("client_secret", self.client_secret.is_some()),
                ("client_secret_env", self.client_secret_env.is_some()),
                ("client_secret_file", self.client_secret_file.is_some()),
            ];
            if let Some((field, _)) = secret_keys.iter().find(|(_, set)| *set) {
                return Err(at.invalid(
                    &key(field),
                    "is not used with auth_method = \"private_key_jwt\" (the tenant signs with its private key); remove it"
                        .into(),
                ));
            }
            if self.client_assertion_file.is_some() {
                return self.assertion_file(at, key, warnings);
            }
            return self.private_key(at, key, warnings);
        }
        let key_keys = [
            ("private_key_file", self.private_key_file.is_some()),
            ("client_assertion_file", self.client_assertion_file.is_some()),
            ("key_id", self.key_id.is_some()),
            ("assertion_lifetime_seconds", self.assertion_lifetime_seconds.is_some()),
        ];
        if let Some((field, _)) = key_keys.iter().find(|(_, set)| *set) {
            return Err(at.invalid(&key(field), "is only used with auth_method = \"private_key_jwt\"".into()));
        }
        Ok(Credential::Secret(self.secret(at, key, warnings)?))
    }

    /// `client_assertion_file`, alone: the file is read at each token request, so here only
    /// its place and, when it exists, its permissions are checked.
    fn assertion_file(
        &self,
        at: At<'_>,
        key: &dyn Fn(&str) -> String,
        warnings: &mut Vec<String>,
    ) -> Result<Credential, ConfigError> {
        let field = key("client_assertion_file");
        for other in ["private_key_file", "key_id", "assertion_lifetime_seconds"] {
            let set = match other {
                "private_key_file" => self.private_key_file.is_some(),
                "key_id" => self.key_id.is_some(),
                _ => self.assertion_lifetime_seconds.is_some(),
            };
            if set {
                return Err(at.invalid(
                    &key(other),
                    "is not used with client_assertion_file (whatever mints the assertions chooses the key and \
                     lifetime); remove one of the two"
                        .into(),
                ));
            }
        }
        let Some(file) = &self.client_assertion_file else {
            return Err(at.invalid(&field, "is missing".into()));
        };
        let path = relative_to(at.0, file);
        match secret_file::permissions(&path) {
            Some(mode) if mode & 0o007 != 0 && !self.allow_insecure_key_permissions => {
                return Err(at.invalid(
                    &field,
                    format!(
                        "{} can be read by other users (mode {:03o}), and it holds a bearer credential until it \
                         expires; make it chmod 600 where it is written, or set allow_insecure_key_permissions = true",
                        path.display(),
                        mode & 0o777
                    ),
                ));
            }
            Some(_) => {}
            None => warnings.push(format!(
                "{field}: {} does not exist yet; billsync reads it at each token request",
                path.display()
            )),
        }
        Ok(Credential::AssertionFile { path })
    }

    fn private_key(
        &self,
        at: At<'_>,
        key: &dyn Fn(&str) -> String,
        warnings: &mut Vec<String>,
    ) -> Result<Credential, ConfigError> {
        let field = key("private_key_file");
        let Some(file) = &self.private_key_file else {
            return Err(at.invalid(
                &field,
                "is missing; auth_method = \"private_key_jwt\" signs with the tenant's private key \
                 (`billsync key generate --tenant NAME` writes one)"
                    .into(),
            ));
        };
        let path = relative_to(at.0, file);
        // Each refusal starts with its code, as `billsync doctor` names the others.
        let read = secret_file::read(&path, &field, self.allow_insecure_key_permissions).map_err(|(why, reason)| {
            let code = match why {
                secret_file::Refusal::Unreadable => "key_unreadable",
                secret_file::Refusal::Permissions => "key_permissions",
            };
            at.invalid(&field, format!("{code}: {reason}"))
        })?;
        warnings.extend(read.warning);
        let pem = Zeroizing::new(read.text);
        let mut private = AssertionKey::from_pem(&pem)
            .map_err(|e| at.invalid(&field, format!("key_unusable: {}: {e}", path.display())))?;
        if let Some(id) = &self.key_id {
            private = private.with_key_id(id.as_str()).map_err(|e| at.invalid(&key("key_id"), e.to_string()))?;
        }
        let (default, max) = (DEFAULT_ASSERTION_LIFETIME.as_secs(), MAX_ASSERTION_LIFETIME.as_secs());
        let secs = self.assertion_lifetime_seconds.unwrap_or(default);
        if !(1..=max).contains(&secs) {
            return Err(at.invalid(
                &key("assertion_lifetime_seconds"),
                format!("{secs} is outside 1 to {max} (the platform refuses longer-lived assertions)"),
            ));
        }
        Ok(Credential::PrivateKey { key: private, lifetime: Duration::from_secs(secs) })
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use billsync_auth::AssertionAlgorithm;

    use super::*;
    use crate::config::Config;

    const KEYED: &str = r#"
[platform]
base_url = "https://iot.example.com"

[[tenants]]
name = "acme"
tenant_id = "acme-prod-001"
application_id = "app-acme"
auth_method = "private_key_jwt"
private_key_file = "keys/acme.pem"
token_url = "https://iot.example.com/iot/api/v2/oauth2/token"
"#;

    /// A configuration directory with an ES256 key at `keys/acme.pem` (mode `mode`).
    #[allow(clippy::unwrap_used)] // test helper: a panic is the failure
    fn dir_with_key(mode: u32) -> (tempfile::TempDir, AssertionKey) {
        let dir = tempfile::tempdir().unwrap();
        let key = AssertionKey::generate(AssertionAlgorithm::Es256).unwrap();
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        let path = dir.path().join("keys/acme.pem");
        std::fs::write(&path, key.private_pem().unwrap().as_bytes()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, key)
    }

    fn parse(dir: &Path, text: &str) -> Result<Config, String> {
        Config::parse(text, &dir.join("billsync.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_key_tenant_reads_its_private_key_with_its_thumbprint_as_kid_and_its_own_token_url() {
        let (dir, key) = dir_with_key(0o600);
        let c = parse(dir.path(), KEYED).unwrap();
        let t = &c.tenants[0];
        let Credential::PrivateKey { key: read, lifetime } = &t.credential else { panic!("{:?}", t.credential) };
        assert_eq!((read.key_id(), read.algorithm()), (key.thumbprint().as_str(), AssertionAlgorithm::Es256));
        assert_eq!(*lifetime, Duration::from_secs(60));
        assert_eq!(t.token_url.as_ref().map(url::Url::as_str), Some("https://iot.example.com/iot/api/v2/oauth2/token"));
        let text = KEYED.replace("token_url", "key_id = \"console-7\"\nassertion_lifetime_seconds = 300\ntoken_url");
        let c = parse(dir.path(), &text).unwrap();
        let Credential::PrivateKey { key: read, lifetime } = &c.tenants[0].credential else { panic!() };
        assert_eq!((read.key_id(), *lifetime), ("console-7", Duration::from_secs(300)));
        assert!(!format!("{c:?}").contains("PRIVATE KEY"), "Debug shows no key material");
    }

    #[test]
    fn each_mistake_in_a_key_tenant_is_named() {
        let (dir, _) = dir_with_key(0o600);
        let cases = [
            (
                KEYED.replace("auth_method", "client_secret = \"s\"\nauth_method"),
                "tenants[acme].client_secret: is not used",
            ),
            (KEYED.replace("private_key_file = \"keys/acme.pem\"\n", ""), "tenants[acme].private_key_file: is missing"),
            (KEYED.replace("keys/acme.pem", "keys/none.pem"), "tenants[acme].private_key_file: key_unreadable: "),
            (
                KEYED.replace("token_url", "assertion_lifetime_seconds = 301\ntoken_url"),
                "assertion_lifetime_seconds: 301 is outside",
            ),
            (KEYED.replace("token_url = \"https", "token_url = \"http"), "tenants[acme].token_url"),
            (
                KEYED.replace("auth_method = \"private_key_jwt\"\n", "client_secret = \"s\"\n"),
                "tenants[acme].private_key_file: is only used with auth_method",
            ),
        ];
        for (text, says) in cases {
            let e = parse(dir.path(), &text).err().unwrap_or_default();
            assert!(e.contains(says), "expected {says:?} in: {e}");
        }
        std::fs::write(dir.path().join("keys/acme.pem"), "not a key").unwrap();
        let e = parse(dir.path(), KEYED).err().unwrap_or_default();
        assert!(e.contains("tenants[acme].private_key_file: key_unusable: ") && e.contains("acme.pem"), "{e}");
    }

    #[test]
    fn a_private_key_others_can_read_is_refused() {
        let (dir, _) = dir_with_key(0o644);
        let e = parse(dir.path(), KEYED).err().unwrap_or_default();
        assert!(e.contains("tenants[acme].private_key_file: key_permissions: ") && e.contains("chmod 600"), "{e}");
        let allowed = KEYED.replace("auth_method", "allow_insecure_key_permissions = true\nauth_method");
        assert_eq!(parse(dir.path(), &allowed).map(|c| c.warnings.len()), Ok(1));
    }

    #[test]
    fn an_assertion_file_tenant_names_its_file_alone_and_it_may_not_exist_yet() {
        let dir = tempfile::tempdir().unwrap();
        let text = KEYED.replace("private_key_file = \"keys/acme.pem\"", "client_assertion_file = \"run/acme.jwt\"");
        let c = parse(dir.path(), &text).unwrap();
        let Credential::AssertionFile { path } = &c.tenants[0].credential else {
            panic!("{:?}", c.tenants[0].credential)
        };
        assert_eq!(path, &dir.path().join("run/acme.jwt"), "relative to the configuration file");
        assert!(c.warnings.iter().any(|w| w.contains("client_assertion_file") && w.contains("does not exist yet")));
        for (extra, field) in [
            ("private_key_file = \"keys/acme.pem\"\n", "private_key_file"),
            ("key_id = \"k\"\n", "key_id"),
            ("assertion_lifetime_seconds = 60\n", "assertion_lifetime_seconds"),
        ] {
            let e = parse(dir.path(), &text.replace("token_url", &format!("{extra}token_url"))).unwrap_err();
            assert!(e.contains(&format!("tenants[acme].{field}: is not used with client_assertion_file")), "{e}");
        }
        let secret = text.replace("auth_method = \"private_key_jwt\"\n", "client_secret = \"s\"\n");
        let e = parse(dir.path(), &secret).unwrap_err();
        assert!(e.contains("tenants[acme].client_assertion_file: is only used with auth_method"), "{e}");
    }

    #[test]
    fn an_assertion_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acme.jwt");
        std::fs::write(&path, "a.b.c").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let text = KEYED.replace("private_key_file = \"keys/acme.pem\"", "client_assertion_file = \"acme.jwt\"");
        let e = parse(dir.path(), &text).unwrap_err();
        assert!(e.contains("tenants[acme].client_assertion_file") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(parse(dir.path(), &text).map(|c| c.warnings.len()), Ok(0));
    }
}
