//! PostgreSQL over TLS, against the test server (TLS on, with the Debian snakeoil certificate
//! on a fresh machine: `scripts/ensure-postgres.sh` turns it on where it is off).

use std::str::FromStr;
use std::sync::Arc;

use billsync_domain::{ManualClock, Outbox, OutboxError};
use billsync_storage::PostgresOutbox;
use billsync_testkit::{TestResult, error_chain, events, t0, tenant};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use crate::helpers::{TestDb, pg_admin_url};

/// The test database's URL with `query` in place of its own, on `host`.
fn at(db: &TestDb, host: &str, query: &str) -> TestResult<String> {
    let mut url = url::Url::parse(db.url())?;
    url.set_host(Some(host))?;
    url.set_query(Some(query));
    Ok(url.to_string())
}

/// The test database's URL with `query` in place of its own.
fn with(db: &TestDb, query: &str) -> TestResult<String> {
    let host = PgConnectOptions::from_str(db.url())?.get_host().to_owned();
    at(db, &host, query)
}

/// The server's own certificate (a self-signed one), as the server names it.
async fn server_certificate() -> TestResult<String> {
    let mut admin = PgConnection::connect(&pg_admin_url()).await?;
    let path: String = sqlx::query_scalar("SHOW ssl_cert_file").fetch_one(&mut admin).await?;
    admin.close().await?;
    Ok(path)
}

/// Whether every session of the database is encrypted (and there is one), from the server's
/// side.
async fn all_sessions_encrypted(db: &TestDb) -> TestResult<bool> {
    let name = PgConnectOptions::from_str(db.url())?.get_database().unwrap_or_default().to_owned();
    let mut admin = PgConnection::connect(&pg_admin_url()).await?;
    let (sessions, encrypted): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.datname = $1",
    )
    .bind(&name)
    .fetch_one(&mut admin)
    .await?;
    admin.close().await?;
    Ok(sessions > 0 && sessions == encrypted)
}

#[tokio::test]
async fn sslmode_require_connects_encrypted() -> TestResult {
    let db = TestDb::create().await?;
    let outbox = PostgresOutbox::connect(&with(&db, "sslmode=require")?, Arc::new(ManualClock::new(t0()))).await?;
    outbox.enqueue(&tenant("acme"), &events("e", 3)).await?;
    assert!(all_sessions_encrypted(&db).await?, "pg_stat_ssl shows a session in clear text");
    Ok(())
}

#[tokio::test]
async fn the_default_on_loopback_prefers_tls_and_gets_it() -> TestResult {
    let db = TestDb::create().await?;
    let outbox = PostgresOutbox::connect(db.url(), Arc::new(ManualClock::new(t0()))).await?;
    outbox.enqueue(&tenant("acme"), &events("e", 3)).await?;
    assert!(all_sessions_encrypted(&db).await?, "pg_stat_ssl shows a session in clear text");
    Ok(())
}

#[tokio::test]
async fn verify_ca_with_the_servers_certificate_as_root_succeeds() -> TestResult {
    let db = TestDb::create().await?;
    let root = server_certificate().await?;
    // sqlx checks the server's name under verify-ca too (see docs/decisions.md): the test
    // server's certificate names localhost.
    let url = at(&db, "localhost", &format!("sslmode=verify-ca&sslrootcert={root}"))?;
    let outbox = PostgresOutbox::connect(&url, Arc::new(ManualClock::new(t0()))).await?;
    assert_eq!(outbox.enqueue(&tenant("acme"), &events("e", 2)).await?.stored, 2);
    assert!(all_sessions_encrypted(&db).await?);
    Ok(())
}

#[tokio::test]
async fn an_unusable_sslrootcert_is_named_before_any_connection() -> TestResult {
    let db = TestDb::create().await?;
    let url = with(&db, "sslmode=verify-full&sslrootcert=/nonexistent/root.pem")?;
    let err = PostgresOutbox::connect(&url, Arc::new(ManualClock::new(t0()))).await.err();
    let chain = err.as_ref().map(|e| error_chain(e)).unwrap_or_default().join(": ");
    assert!(chain.contains("sslrootcert /nonexistent/root.pem"), "{chain}");
    Ok(())
}

/// A directory standing for the operating system's trust store, for rustls-native-certs
/// (`SSL_CERT_DIR`, `SSL_CERT_FILE`): empty, or holding `cert`.
fn os_store(cert: Option<&str>) -> TestResult<(tempfile::TempDir, std::path::PathBuf)> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("store.pem");
    std::fs::write(&file, cert.map(std::fs::read_to_string).transpose()?.unwrap_or_default())?;
    Ok((dir, file))
}

/// With an empty OS store, `sslrootcert` alone decides: the server's own certificate works,
/// another CA is refused with the certificate problem named, and nothing verifies without it.
#[test]
fn with_an_empty_os_store_sslrootcert_alone_is_trusted() -> TestResult {
    let (dir, file) = os_store(None)?;
    let env = [("SSL_CERT_FILE", file.as_os_str()), ("SSL_CERT_DIR", dir.path().as_os_str())];
    if !billsync_testkit::in_child_with_env("tls::with_an_empty_os_store_sslrootcert_alone_is_trusted", &env) {
        return Ok(());
    }
    tokio::runtime::Runtime::new()?.block_on(async {
        let db = TestDb::create().await?;
        let clock = Arc::new(ManualClock::new(t0()));
        let root = server_certificate().await?;
        let url = at(&db, "localhost", &format!("sslmode=verify-ca&sslrootcert={root}"))?;
        PostgresOutbox::connect(&url, clock.clone()).await?;

        let other = dir.path().join("other-ca.pem");
        let ca = rcgen::generate_simple_self_signed(vec!["billsync test ca".to_owned()])?;
        std::fs::write(&other, ca.cert.pem())?;
        for url in [
            at(&db, "localhost", &format!("sslmode=verify-ca&sslrootcert={}", other.display()))?,
            at(&db, "localhost", "sslmode=verify-full")?,
        ] {
            let Some(err @ OutboxError::Storage(_)) = PostgresOutbox::connect(&url, clock.clone()).await.err() else {
                return Err(format!("{url}: a server whose certificate no trusted root signed was accepted").into());
            };
            let chain = error_chain(&err).join(": ");
            assert!(chain.contains("could not connect to PostgreSQL at"), "{chain}");
            assert!(chain.contains("UnknownIssuer"), "the certificate problem is named: {chain}");
        }
        Ok(())
    })
}

/// Without `sslrootcert`, the server's certificate is checked against the OS store.
#[test]
fn without_sslrootcert_the_os_store_decides() -> TestResult {
    let root = tokio::runtime::Runtime::new()?.block_on(server_certificate())?;
    let (dir, file) = os_store(Some(&root))?;
    let env = [("SSL_CERT_FILE", file.as_os_str()), ("SSL_CERT_DIR", dir.path().as_os_str())];
    if !billsync_testkit::in_child_with_env("tls::without_sslrootcert_the_os_store_decides", &env) {
        return Ok(());
    }
    tokio::runtime::Runtime::new()?.block_on(async {
        let db = TestDb::create().await?;
        let url = at(&db, "localhost", "sslmode=verify-full")?;
        let outbox = PostgresOutbox::connect(&url, Arc::new(ManualClock::new(t0()))).await?;
        assert_eq!(outbox.enqueue(&tenant("acme"), &events("e", 1)).await?.stored, 1);
        Ok(())
    })
}
