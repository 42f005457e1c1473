//! A fleet: two agents (`billsync run`, or `billsync sync`) share one PostgreSQL outbox; one
//! dies by SIGKILL; the other finishes every tenant, and the platform holds every event
//! exactly once.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use billsync_emulator::{Emulator, EmulatorConfig, Fault, FaultKind};
use sqlx::Connection;

/// A throwaway database on the test server; dropped at the end.
pub(crate) struct Database {
    admin_url: String,
    name: String,
    pub(crate) url: String,
}

impl Database {
    pub(crate) async fn create() -> Self {
        let admin_url = std::env::var("BILLSYNC_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("billsync_fleet_{}_{n}", std::process::id());
        let mut c = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL must answer at {admin_url} (run scripts/ensure-postgres.sh): {e}"));
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name}")).execute(&mut c).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut c).await.unwrap();
        let (base, _) = admin_url.rsplit_once('/').unwrap();
        Self { url: format!("{base}/{name}"), admin_url, name }
    }

    pub(crate) async fn drop_it(self) {
        let mut c = sqlx::PgConnection::connect(&self.admin_url).await.unwrap();
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).execute(&mut c).await;
    }
}

fn agent(config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_billsync"))
        .arg("--config")
        .arg(config)
        .args(["run", "--listen", "127.0.0.1:0"])
        .env("SECRET_ACME", "secret-acme")
        .env("SECRET_GLOBEX", "secret-globex")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Sends SIGTERM and waits for the agent to stop: an agent that does not stop within 30 s
/// (say, deadlocked on its own database session) fails the test rather than hanging it.
fn terminate(child: &mut Child, who: &str) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{who} did not stop within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn held(platform: &Emulator) -> (usize, usize, bool) {
    let mut twice = false;
    let mut n = [0; 2];
    for (i, t) in ["acme-prod-001", "globex-prod-001"].iter().enumerate() {
        let mut ids = platform.stored_event_ids(t);
        let all = ids.len();
        ids.sort();
        ids.dedup();
        twice |= ids.len() != all;
        n[i] = ids.len();
    }
    (n[0], n[1], twice)
}

/// Waits (up to `secs`) until `done(acme, globex)` holds for the events on the platform.
async fn wait_until(platform: &Emulator, secs: u64, what: &str, done: impl Fn(usize, usize) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (x, y, _) = held(platform);
        if done(x, y) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {:?}", held(platform));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A database, a slow platform, short leases and claims, 200 events for each of two tenants.
async fn fleet() -> (Database, Emulator, tempfile::TempDir, std::path::PathBuf) {
    let db = Database::create().await;
    let platform = Emulator::start(EmulatorConfig::builtin(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    platform.inject(Fault::probability(FaultKind::Latency { ms: 150 }, 1.0));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("billsync.toml");
    let mut text = format!(
        "[platform]\nbase_url = \"{}\"\n[storage]\nurl = \"{}\"\n[sync]\nmax_batch_events = 10\nlease_seconds = 3\nrequest_timeout_seconds = 2\nclaim_ttl_seconds = 3\n",
        platform.base_url(),
        db.url
    );
    for (name, tenant, app) in [("acme", "acme-prod-001", "app-acme"), ("globex", "globex-prod-001", "app-globex")] {
        text.push_str(&format!(
            "[[tenants]]\nname = \"{name}\"\ntenant_id = \"{tenant}\"\napplication_id = \"{app}\"\nclient_secret_env = \"SECRET_{}\"\n",
            name.to_uppercase()
        ));
    }
    std::fs::write(&config, text).unwrap();
    for tenant in ["acme", "globex"] {
        let at = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
        let lines: Vec<String> = (0..200)
            .map(|i| format!(r#"{{"event_id":"{tenant}-{i}","device_id":"d","meter":"m","quantity":"1","unit":"kWh","occurred_at":"{at}"}}"#))
            .collect();
        let file = dir.path().join(format!("{tenant}.jsonl"));
        std::fs::write(&file, lines.join("\n")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_billsync"))
            .arg("--config")
            .arg(&config)
            .args(["enqueue", "--tenant", tenant])
            .arg(&file)
            .env("SECRET_ACME", "x")
            .env("SECRET_GLOBEX", "x")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    (db, platform, dir, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_one_agent_of_a_fleet_dies_the_other_finishes_every_tenant() {
    let (db, platform, _dir, config) = fleet().await;

    // Act: two agents; the first dies by SIGKILL once delivery is under way.
    let mut a = agent(&config);
    let mut b = agent(&config);
    wait_until(&platform, 30, "the fleet delivered nothing", |x, y| x + y >= 60).await;
    a.kill().unwrap();
    a.wait().unwrap();
    let killed_at = held(&platform);
    wait_until(&platform, 60, "the survivor did not finish", |x, y| x + y >= 400).await;
    terminate(&mut b, "the survivor");

    // Assert
    let (acme, globex, twice) = held(&platform);
    assert_eq!((acme, globex, twice), (200, 200, false), "killed at {killed_at:?}");
    assert!(killed_at.0 + killed_at.1 < 400, "the kill landed mid-backlog");
    let counters = platform.counters();
    assert_eq!(counters.status(429), 0, "the per-tenant limit held across the fleet: {counters:?}");
    platform.shutdown().await;
    db.drop_it().await;
}

fn sync(config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_billsync"))
        .arg("--config")
        .arg(config)
        .arg("sync")
        .env("SECRET_ACME", "secret-acme")
        .env("SECRET_GLOBEX", "secret-globex")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Two `sync`s share the tenants; the one holding them is killed mid-batch as the other
/// starts. The survivor watches both tenants, sees no heartbeat, takes them over once the dead
/// agent's claims lapse on the database's clock, and delivers every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_one_of_two_syncs_dies_the_survivor_delivers_every_event() {
    let (db, platform, _dir, config) = fleet().await;

    let mut a = sync(&config);
    wait_until(&platform, 30, "the first agent delivered nothing", |x, y| x > 0 && y > 0).await;
    let b = sync(&config);
    a.kill().unwrap();
    a.wait().unwrap();
    let killed_at = held(&platform);
    let out = b.wait_with_output().unwrap();

    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the survivor failed: {text}");
    let (acme, globex, twice) = held(&platform);
    assert_eq!((acme, globex, twice), (200, 200, false), "killed at {killed_at:?}; survivor said:\n{text}");
    assert!(killed_at.0 + killed_at.1 < 400, "the kill landed mid-backlog");
    platform.shutdown().await;
    db.drop_it().await;
}

/// A `sync` next to a live `run` agent that holds the tenants: it reports them as that agent's
/// work and does not fail for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_beside_a_live_agent_reports_its_tenants_and_succeeds() {
    let (db, platform, _dir, config) = fleet().await;
    let mut run = agent(&config);
    wait_until(&platform, 30, "the agent delivered nothing", |x, y| x > 0 && y > 0).await;

    let out = sync(&config).wait_with_output().unwrap();

    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("acme is held by agent") && text.contains(", alive"), "{text}");
    terminate(&mut run, "the live agent");
    platform.shutdown().await;
    db.drop_it().await;
}

/// An agent frozen with SIGSTOP past its claim, while another takes its tenants over, finds on
/// SIGCONT that the database refuses its leases and settles: it says the claim was lost and
/// stops, and every event is on the platform once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_resumed_after_its_claim_lapsed_cannot_lease_or_settle() {
    let (db, platform, dir, config) = fleet().await;
    let log = dir.path().join("a.log");
    let mut a = Command::new(env!("CARGO_BIN_EXE_billsync"))
        .arg("--config")
        .arg(&config)
        .args(["run", "--listen", "127.0.0.1:0"])
        .env("SECRET_ACME", "secret-acme")
        .env("SECRET_GLOBEX", "secret-globex")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_until(&platform, 30, "the agent delivered nothing", |x, y| x > 0 && y > 0).await;
    assert!(Command::new("kill").args(["-STOP", &a.id().to_string()]).status().unwrap().success());
    // B takes over once A's claims lapse (3 s), while A stands still.
    let mut b = agent(&config);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(Command::new("kill").args(["-CONT", &a.id().to_string()]).status().unwrap().success());
    wait_until(&platform, 60, "not finished", |x, y| x + y >= 400).await;
    // A says so as soon as it runs again; on a loaded machine that may take a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    let noticed = |said: &str| said.contains("was lost to another agent");
    let mut said = std::fs::read_to_string(&log).unwrap_or_default();
    while !noticed(&said) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        said = std::fs::read_to_string(&log).unwrap_or_default();
    }
    terminate(&mut a, "the resumed agent");
    terminate(&mut b, "the agent that took over");

    assert!(noticed(&said), "A never noticed:\n{said}");
    assert_eq!(held(&platform), (200, 200, false));
    platform.shutdown().await;
    db.drop_it().await;
}
