//! Tenants on keys (`private_key_jwt`): `billsync key generate`, and a tenant that syncs
//! through the platform's assertion-only token endpoint beside a tenant on a secret.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use billsync::{AssertionAlgorithm, AssertionKey};
use billsync_emulator::{ClientRegistration, Emulator, EmulatorConfig};

use crate::text;

fn billsync(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_billsync"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("SECRET_ACME", "secret-acme")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[test]
fn key_generate_writes_a_private_key_prints_what_to_register_and_never_overwrites_by_accident() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("billsync.toml");
    let key_file = dir.path().join("keys/keyed.pem");

    let out = billsync(&config, &["key", "generate", "--tenant", "keyed", "--algorithm", "es256"]);

    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    let key = AssertionKey::from_pem(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(key.algorithm(), AssertionAlgorithm::Es256);
    assert!(
        said.contains("-----BEGIN PUBLIC KEY-----") && said.contains(&format!("\"kid\": \"{}\"", key.key_id())),
        "{said}"
    );
    assert!(said.contains("auth_method = \"private_key_jwt\"\nprivate_key_file = \"keys/keyed.pem\""), "{said}");
    assert!(!said.contains("PRIVATE KEY-----"), "the private key is never printed: {said}");

    let again = billsync(&config, &["key", "generate", "--tenant", "keyed", "--algorithm", "es256"]);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert!(text(&again).contains("exists; pass --force"), "{}", text(&again));
    let same = AssertionKey::from_pem(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
    assert_eq!(same.key_id(), key.key_id(), "the key was not replaced");

    let forced = billsync(&config, &["key", "generate", "--tenant", "keyed", "--algorithm", "es256", "--force"]);
    assert!(forced.status.success(), "{}", text(&forced));
    let replaced = AssertionKey::from_pem(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
    assert_ne!(replaced.key_id(), key.key_id());
    assert_eq!(billsync(&config, &["key", "generate", "--tenant", "../x"]).status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_tenant_syncs_through_the_assertion_only_endpoint_beside_a_secret_tenant() {
    for algorithm in [AssertionAlgorithm::Es256, AssertionAlgorithm::Rs256] {
        let key = AssertionKey::generate(algorithm).unwrap();
        let keyed = ClientRegistration::with_public_key(
            "app-keyed",
            &key.public_pem().unwrap(),
            key.key_id(),
            ["keyed-prod-001"],
            true,
        )
        .unwrap();
        let platform = Emulator::start(EmulatorConfig::builtin().with_client(keyed), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        let key_file = dir.path().join("keys/keyed.pem");
        std::fs::write(&key_file, key.private_pem().unwrap().as_bytes()).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = dir.path().join("billsync.toml");
        std::fs::write(
            &config,
            format!(
                "[platform]\nbase_url = \"{}\"\n[storage]\nurl = \"sqlite://{}\"\n\
                 [[tenants]]\nname = \"acme\"\ntenant_id = \"acme-prod-001\"\napplication_id = \"app-acme\"\nclient_secret_env = \"SECRET_ACME\"\n\
                 [[tenants]]\nname = \"keyed\"\ntenant_id = \"keyed-prod-001\"\napplication_id = \"app-keyed\"\n\
                 auth_method = \"private_key_jwt\"\nprivate_key_file = \"keys/keyed.pem\"\ntoken_url = \"{}\"\n",
                platform.base_url(),
                dir.path().join("outbox.db").display(),
                platform.token_v2_url()
            ),
        )
        .unwrap();
        let at = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
        for tenant in ["acme", "keyed"] {
            let events = dir.path().join(format!("{tenant}.jsonl"));
            let lines: Vec<String> = (0..3)
                .map(|i| format!(r#"{{"event_id":"{tenant}-{i}","device_id":"d","meter":"m","quantity":"1","unit":"kWh","occurred_at":"{at}"}}"#))
                .collect();
            std::fs::write(&events, lines.join("\n")).unwrap();
            let out = billsync(&config, &["enqueue", "--tenant", tenant, events.to_str().unwrap()]);
            assert!(out.status.success(), "{}", text(&out));
        }

        let out = billsync(&config, &["sync"]);

        assert!(out.status.success(), "{algorithm}: {}", text(&out));
        assert_eq!(platform.stored_event_ids("keyed-prod-001").len(), 3, "{algorithm}");
        assert_eq!(platform.stored_event_ids("acme-prod-001").len(), 3, "{algorithm}");
        let by_endpoint = platform.counters().requests_by_endpoint;
        assert_eq!(by_endpoint.get("POST /iot/api/v2/oauth2/token"), Some(&1), "{algorithm}: {by_endpoint:?}");
        assert_eq!(by_endpoint.get("POST /oauth2/v1/token"), Some(&1), "{algorithm}: {by_endpoint:?}");
        platform.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_on_an_assertion_file_syncs_and_waits_for_the_next_rotation_instead_of_replaying() {
    // Arrange: the platform knows the sidecar's public key; the sidecar wrote one assertion.
    let sidecar = AssertionKey::generate(AssertionAlgorithm::Es256).unwrap();
    let client = ClientRegistration::with_public_key(
        "app-signed",
        &sidecar.public_pem().unwrap(),
        sidecar.key_id(),
        ["signed-prod-001"],
        true,
    )
    .unwrap();
    let platform =
        Emulator::start(EmulatorConfig::builtin().with_client(client), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let assertion_file = dir.path().join("signed.jwt");
    let rotate = || {
        let a = sidecar
            .sign_assertion(
                "app-signed",
                &platform.token_v2_url(),
                chrono::Utc::now(),
                std::time::Duration::from_secs(120),
            )
            .unwrap();
        std::fs::write(&assertion_file, a.secret()).unwrap();
        std::fs::set_permissions(&assertion_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    rotate();
    let config = dir.path().join("billsync.toml");
    std::fs::write(
        &config,
        format!(
            "[platform]\nbase_url = \"{}\"\n[storage]\nurl = \"sqlite://{}\"\n\
             [[tenants]]\nname = \"signed\"\ntenant_id = \"signed-prod-001\"\napplication_id = \"app-signed\"\n\
             auth_method = \"private_key_jwt\"\nclient_assertion_file = \"signed.jwt\"\ntoken_url = \"{}\"\n",
            platform.base_url(),
            dir.path().join("outbox.db").display(),
            platform.token_v2_url()
        ),
    )
    .unwrap();
    let at = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let enqueue = |first: usize| {
        let events = dir.path().join("events.jsonl");
        let lines: Vec<String> = (first..first + 3)
            .map(|i| format!(r#"{{"event_id":"signed-{i}","device_id":"d","meter":"m","quantity":"1","unit":"kWh","occurred_at":"{at}"}}"#))
            .collect();
        std::fs::write(&events, lines.join("\n")).unwrap();
        let out = billsync(&config, &["enqueue", "--tenant", "signed", events.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
    };
    let token_requests = || platform.counters().requests_by_endpoint.get("POST /iot/api/v2/oauth2/token").copied();

    // Act 1: a sync with the fresh file.
    enqueue(0);
    let out = billsync(&config, &["sync"]);

    // Assert 1: delivered with a token asked for the write and read scopes at once.
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(platform.stored_event_ids("signed-prod-001").len(), 3);
    assert_eq!(token_requests(), Some(1));

    // Act 2: a second process, the same file (a sidecar that has not rotated yet) and a
    // platform that already saw its jti. The second process does not know the jti: the
    // platform refuses it as a replay, and says so in its audit log.
    enqueue(3);
    let out = billsync(&config, &["sync"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("invalid_client") && said.contains("likely causes, in order: key_not_registered"), "{said}");
    assert!(said.contains("assertion_replayed: the same assertion (jti) reached the platform twice"), "{said}");
    let audit = platform.audit();
    assert!(audit.iter().any(|e| e.reasons.iter().any(|r| r.as_str() == "assertion_replayed")), "{audit:?}");

    // Act 3: the sidecar rotates; the next sync delivers the rest.
    rotate();
    let out = billsync(&config, &["sync"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(platform.stored_event_ids("signed-prod-001").len(), 6);
    platform.shutdown().await;
}
