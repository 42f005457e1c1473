//! Outboxes written by earlier billsync versions are migrated in place and then deliver
//! everything exactly once. Each fixture was written by `crates/storage/examples/make_fixture.rs`
//! with the schema its name gives, and is never rewritten: every later schema change keeps
//! these tests and adds a fixture of its own.
//!
//! Each holds, for `acme`: 3 delivered (`fx-d*`), 2 dead-lettered (`fx-x*`), 3 held by the lease
//! of an agent that is gone (`fx-l*`) and 4 pending (`fx-p*`), with that agent's claim; for
//! `globex`, 2 pending (`fx-g*`). Only the events' `occurred_at` is moved to now before the
//! test, because the platform refuses events older than 35 days and the fixtures stay.

use std::path::PathBuf;
use std::str::FromStr;

use billsync::Agent;
use billsync::config::Config;
use billsync_emulator::{Emulator, EmulatorConfig};
use sqlx::{ConnectOptions, Connection};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

fn occurred_at() -> String {
    (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Syncs the outbox at `storage_url` against a fresh emulator and checks that everything
/// pending or held was delivered once, and nothing settled before was sent or changed.
async fn delivers_everything_once(storage_url: &str, dir: &tempfile::TempDir) {
    let platform = Emulator::start(EmulatorConfig::builtin(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let text = format!(
        "[platform]\nbase_url = \"{}\"\n\n[storage]\nurl = \"{storage_url}\"\n\n\
         [[tenants]]\nname = \"acme\"\ntenant_id = \"acme-prod-001\"\napplication_id = \"app-acme\"\nclient_secret = \"secret-acme\"\n\n\
         [[tenants]]\nname = \"globex\"\ntenant_id = \"globex-prod-001\"\napplication_id = \"app-globex\"\nclient_secret = \"secret-globex\"\n",
        platform.base_url()
    );
    let config = Config::parse(&text, &dir.path().join("billsync.toml")).expect("valid configuration");
    let agent = Agent::builder().config(config).build().await.expect("the old outbox opens and migrates");

    let reports = agent.sync_once().await;

    assert!(reports.iter().all(|r| r.blocked.is_none()), "{reports:?}");
    let mut acme = platform.stored_event_ids("acme-prod-001");
    acme.sort();
    assert_eq!(acme, ["fx-l0", "fx-l1", "fx-l2", "fx-p0", "fx-p1", "fx-p2", "fx-p3"], "held and pending, once each");
    let mut globex = platform.stored_event_ids("globex-prod-001");
    globex.sort();
    assert_eq!(globex, ["fx-g0", "fx-g1"]);
    let status = agent.status().await.unwrap();
    let acme = &status[0];
    assert_eq!((acme.pending, acme.in_flight, acme.delivered, acme.dead_lettered), (0, 0, 10, 2));
    let dead: Vec<String> = agent.dead_letters(None).await.unwrap().iter().map(|d| d.event_id.to_string()).collect();
    assert_eq!(dead, ["fx-x0", "fx-x1"]);
}

/// Copies the SQLite fixture `name`, moves its events to now, and checks it delivers everything once.
async fn sqlite_fixture_delivers_everything_once(name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    std::fs::copy(fixture(name), &path).unwrap();
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new().filename(&path).connect().await.unwrap();
    sqlx::query("UPDATE events SET body = json_set(body, '$.occurred_at', ?1)")
        .bind(occurred_at())
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();

    delivers_everything_once(&format!("sqlite://{}", path.display()), &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_outbox_at_schema_3_migrates_and_delivers_everything_once() {
    sqlite_fixture_delivers_everything_once("sqlite-v3.db").await;
}

/// Schema 7: the last with an event's state in its own row (issue 20 moved it out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_outbox_at_schema_7_migrates_and_delivers_everything_once() {
    sqlite_fixture_delivers_everything_once("sqlite-v7.db").await;
}

/// Restores the PostgreSQL dump `name` into a database of its own, moves its events to now,
/// and checks it delivers everything once.
async fn postgres_fixture_delivers_everything_once(name: &str, database: &str) {
    let admin_url = std::env::var("BILLSYNC_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let admin = sqlx::postgres::PgConnectOptions::from_str(&admin_url).unwrap();
    let db_name = format!("billsync_fixture_{database}_{}", std::process::id());
    let mut conn = admin.connect().await.expect("PostgreSQL is reachable (cargo xtask ci starts it)");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")).execute(&mut conn).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {db_name}")).execute(&mut conn).await.unwrap();
    let db = admin.clone().database(&db_name);
    let mut restore = db.connect().await.unwrap();
    let dump = std::fs::read_to_string(fixture(name)).unwrap();
    sqlx::raw_sql(&dump).execute(&mut restore).await.expect("the dump restores");
    sqlx::query("UPDATE public.events SET body = jsonb_set(body::jsonb, '{occurred_at}', to_jsonb($1::text))::text")
        .bind(occurred_at())
        .execute(&mut restore)
        .await
        .unwrap();
    restore.close().await.unwrap();
    let dir = tempfile::tempdir().unwrap();

    delivers_everything_once(db.to_url_lossy().as_ref(), &dir).await;

    sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")).execute(&mut conn).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outbox_at_schema_2_migrates_and_delivers_everything_once() {
    postgres_fixture_delivers_everything_once("postgres-v2.sql", "v2").await;
}

/// Schema 6: the last before issue 20's PostgreSQL redesign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outbox_at_schema_6_migrates_and_delivers_everything_once() {
    postgres_fixture_delivers_everything_once("postgres-v6.sql", "v6").await;
}
