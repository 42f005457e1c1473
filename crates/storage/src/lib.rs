//! The durable outbox of billsync: every billing event whose enqueue returned is kept until
//! the platform has it (acked) or refused it for good (dead-lettered).
//!
//! Two adapters implement the domain port [`billsync_domain::Outbox`]:
//!
//! - [`SqliteOutbox`], the embedded default: one file in WAL mode, one writer task that
//!   commits whatever callers have queued in one transaction (group commit), so that
//!   thousands of small enqueues share one fsync. A tenant is held through an OS lock on a
//!   file beside the outbox, which the kernel releases when its holder dies; leases and
//!   settles under a claim are fenced by its generation, as in PostgreSQL.
//! - [`PostgresOutbox`], for a fleet of agents sharing one database: tenant claims dated by
//!   the database's clock so that one agent drains a tenant at a time, leases as one row each
//!   (taken in turn per tenant), and leases and settles fenced by the claim's generation.
//!
//! In both, an event's row is written once; its state is which narrow table (`pending`,
//! `delivered`, `dead`) holds its `seq`, and a lease is one row listing what it holds.
//!
//! Enqueues (and requeues) are durable when they return. In SQLite the other writes (leases,
//! acks, nacks, dead letters, claims) commit without an fsync of their own: a power loss can
//! undo the last of them (the agent dying cannot), which only makes events pending again, and
//! the platform deduplicates re-sent events on (tenant, event_id) forever.
//!
//! Both also serve the port [`billsync_domain::ReconcileStore`] (`billsync reconcile`): a
//! ledger, the narrow record of every event enqueued, written in the enqueue's transaction and
//! kept when compaction deletes a delivered event, until its own retention drops it (the
//! horizon moving with it); a scratch set of what the platform holds, in the same database; the
//! comparison of the two as SQL joins, streamed; and each tenant's last result.
//!
//! And both serve the port [`billsync_domain::QuarantineStore`] (`billsync quarantine`): the
//! `quarantine` table of broker messages the MQTT ingest could not store as events, each kept
//! (its first 64 KiB, its full size, the reason, the clock's time) just before the message is
//! acknowledged, durable as an enqueue is, and kept once however often the broker redelivers it
//! (a unique SHA-256 of its topic and whole payload); entries are numbered from 1, never reused.
//! [`Location::open_stores`] opens one adapter as all three ports ([`Stores`]).
//!
//! [`open`] picks one from a URL. Both store times as integer milliseconds from the
//! injected [`Clock`], migrate their schema with embedded migrations,
//! and refuse a database written by a newer billsync ([`OutboxError::SchemaTooNew`]).
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use billsync_domain::{BillingEvent, SystemClock, TenantName};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let url = format!("sqlite://{}", dir.path().join("outbox.db").display());
//! let outbox = billsync_storage::open(&url, Arc::new(SystemClock)).await?;
//!
//! let tenant = TenantName::parse("acme")?;
//! let now = chrono::Utc::now();
//! let event = BillingEvent::parse(
//!     &format!(r#"{{"event_id": "e-1", "device_id": "meter-0042", "meter": "energy.active",
//!                  "quantity": "12.500", "unit": "kWh", "occurred_at": "{}"}}"#, now.to_rfc3339()),
//!     now,
//! )?;
//! let report = outbox.enqueue(&tenant, &[event.encode(), event.encode()]).await?;
//! assert_eq!(report.stored, 1);
//! assert_eq!(report.duplicates, [event.event_id().clone()]);
//!
//! let lease = outbox.lease(&tenant, 500, Duration::from_secs(30)).await?.ok_or("nothing to lease")?;
//! outbox.ack(&lease, &[event.event_id().clone()]).await?;
//! assert_eq!(outbox.counts(&tenant).await?.delivered, 1);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod common;
mod error;
mod postgres;
mod quarantine;
mod reconcile;
mod sqlite;

use std::sync::Arc;

use billsync_domain::{Clock, Outbox, OutboxError, QuarantineStore, ReconcileStore};

pub use postgres::PostgresOutbox;
pub use sqlite::{SqliteOptions, SqliteOutbox};

use crate::error::{StoreError, redact_url};

/// The SQLite schema version this build writes: its newest embedded migration. An outbox
/// with a newer one is refused with
/// [`OutboxError::SchemaTooNew`].
pub const SQLITE_SCHEMA_VERSION: i64 = 8;

/// The PostgreSQL schema version this build writes, as [`SQLITE_SCHEMA_VERSION`] is for
/// SQLite (the two schemas move on their own: version 3 is SQLite's lease rows).
pub const POSTGRES_SCHEMA_VERSION: i64 = 7;

/// Where an outbox lives, parsed from its URL once, at the edge:
///
/// - `sqlite://PATH` (or `sqlite:PATH`): a SQLite file, created if missing; `sqlite:///abs/path.db`
///   for an absolute path. Query parameters are ignored. An in-memory database is refused: it
///   would not be durable.
/// - `postgres://...` or `postgresql://...`: a PostgreSQL database.
///
/// Its `Debug` and `Display` never show a password.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file.
    Sqlite {
        /// The file.
        path: std::path::PathBuf,
    },
    /// A PostgreSQL database.
    Postgres {
        /// The connection URL, as given (it may hold a password).
        url: String,
    },
}

impl Location {
    /// Parses an outbox URL.
    ///
    /// # Errors
    /// [`OutboxError::Storage`] naming the URL (password masked) and what is wrong with it.
    pub fn parse(url: &str) -> Result<Self, OutboxError> {
        let Some((scheme, rest)) = url.split_once(':') else {
            return Err(StoreError::InvalidUrl {
                url: redact_url(url),
                reason: "no scheme; expected sqlite://PATH, postgres:// or postgresql://".into(),
            }
            .into());
        };
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" => {
                let path = rest.strip_prefix("//").unwrap_or(rest);
                let path = path.split_once('?').map_or(path, |(p, _)| p);
                if path.is_empty() || path.starts_with(":memory:") || path.contains("mode=memory") {
                    return Err(StoreError::InvalidUrl {
                        url: url.to_owned(),
                        reason: "an outbox needs a file: an in-memory SQLite database is not durable".into(),
                    }
                    .into());
                }
                Ok(Self::Sqlite { path: path.into() })
            }
            "postgres" | "postgresql" => Ok(Self::Postgres { url: url.to_owned() }),
            other => Err(StoreError::UnsupportedScheme { scheme: other.to_owned() }.into()),
        }
    }

    /// Opens (and migrates) the outbox here.
    ///
    /// # Errors
    /// The errors of [`SqliteOutbox::open`] and [`PostgresOutbox::connect`].
    pub async fn open(&self, clock: Arc<dyn Clock>) -> Result<Arc<dyn Outbox>, OutboxError> {
        match self {
            // The error names the file: "unable to open database file" alone does not say which.
            Self::Sqlite { path } => Ok(Arc::new(SqliteOutbox::open(path, clock).await?)),
            Self::Postgres { url } => Ok(Arc::new(PostgresOutbox::connect(url, clock).await?)),
        }
    }

    /// Opens (and migrates) the outbox here, as every port it serves: the outbox, its side of
    /// reconciliation and its quarantine (one adapter behind all three).
    ///
    /// # Errors
    /// As [`Location::open`].
    pub async fn open_stores(&self, clock: Arc<dyn Clock>) -> Result<Stores, OutboxError> {
        match self {
            Self::Sqlite { path } => Ok(Stores::of(Arc::new(SqliteOutbox::open(path, clock).await?))),
            Self::Postgres { url } => Ok(Stores::of(Arc::new(PostgresOutbox::connect(url, clock).await?))),
        }
    }
}

/// One outbox as each port it serves ([`Location::open_stores`]): the same adapter (and
/// database) behind all three handles.
#[derive(Clone)]
pub struct Stores {
    /// The durable outbox of billing events.
    pub outbox: Arc<dyn Outbox>,
    /// Its side of reconciliation: the ledger, the scratch set, the repairs.
    pub reconcile: Arc<dyn ReconcileStore>,
    /// Its quarantine of broker messages that could not be stored as events.
    pub quarantine: Arc<dyn QuarantineStore>,
}

impl Stores {
    fn of<T: Outbox + ReconcileStore + QuarantineStore + 'static>(adapter: Arc<T>) -> Self {
        Self { outbox: adapter.clone(), reconcile: adapter.clone(), quarantine: adapter }
    }
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

impl Location {
    /// Bytes free for this process on the disk that holds a SQLite outbox (the directory of
    /// its file); `None` for PostgreSQL, whose disk is the server's.
    ///
    /// # Errors
    /// The file system's error (the directory is missing, or `statvfs` fails).
    pub fn disk_available(&self) -> Option<std::io::Result<u64>> {
        match self {
            Self::Sqlite { path } => {
                let dir = match path.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d,
                    _ => std::path::Path::new("."),
                };
                Some(fs4::available_space(dir))
            }
            Self::Postgres { .. } => None,
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite { path } => write!(f, "sqlite://{}", path.display()),
            Self::Postgres { url } => f.write_str(&redact_url(url)),
        }
    }
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Location({self})")
    }
}

/// Opens the outbox named by `url` ([`Location::parse`], then [`Location::open`]).
///
/// # Errors
/// As [`Location::parse`] and [`Location::open`].
pub async fn open(url: &str, clock: Arc<dyn Clock>) -> Result<Arc<dyn Outbox>, OutboxError> {
    Location::parse(url)?.open(clock).await
}

#[cfg(test)]
mod tests {
    use billsync_domain::SystemClock;

    use super::*;

    #[tokio::test]
    async fn open_names_an_unsupported_scheme() {
        let err = open("mysql://root:pw@db/x", Arc::new(SystemClock)).await.err();
        let Some(OutboxError::Storage(failure)) = err else { panic!("expected a storage error, got {err:?}") };
        let msg = failure.what();
        assert!(msg.contains("`mysql`"), "{msg}");
        assert!(!msg.contains("pw"), "{msg}");
    }

    #[tokio::test]
    async fn open_refuses_memory_and_schemeless_urls() {
        for url in ["sqlite::memory:", "sqlite://", "outbox.db"] {
            let err = open(url, Arc::new(SystemClock)).await.err();
            assert!(matches!(err, Some(OutboxError::Storage(_))), "{url}: {err:?}");
        }
    }

    #[tokio::test]
    async fn open_sqlite_url_creates_the_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("o.db");
        let outbox = open(&format!("sqlite://{}", path.display()), Arc::new(SystemClock)).await?;
        assert!(path.exists());
        assert!(!format!("{outbox:p}").is_empty());
        Ok(())
    }

    /// The top error names the file; its source is SQLite's own error, kept whole (not its
    /// text), and each message of the chain appears once.
    #[tokio::test]
    async fn a_sqlite_outbox_that_cannot_be_opened_names_its_file_and_keeps_the_driver_error() {
        use sqlx::error::DatabaseError as _;
        use std::error::Error as _;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join("outbox.db");
        let err = open(&format!("sqlite://{}", path.display()), Arc::new(SystemClock)).await.err();
        let Some(err @ OutboxError::Storage(_)) = err else { panic!("expected a storage error, got {err:?}") };
        let top = err.to_string();
        assert!(top.contains(&path.display().to_string()), "{top}");
        assert!(!top.contains("unable to open"), "the top message repeats its source: {top}");

        let source = err.source().expect("the driver's error is kept as the source");
        let driver = source.downcast_ref::<sqlx::sqlite::SqliteError>().expect("SQLite's own error");
        assert_eq!(driver.code().as_deref(), Some("14"), "SQLITE_CANTOPEN: {driver}");

        let chain = billsync_testkit::error_chain(&err);
        assert_eq!(chain.len(), 2, "{chain:?}");
        assert!(chain[1].contains("unable to open database file"), "{chain:?}");
        assert_eq!(chain.iter().filter(|m| m.contains("unable to open")).count(), 1, "{chain:?}");
        // Clones share the source; equality is by what failed.
        let copy = err.clone();
        assert_eq!(copy, err);
        assert!(copy.source().is_some());
    }

    #[test]
    fn a_location_never_shows_its_password() {
        let at = Location::parse("postgres://bob:s3cret@db:5432/billing").unwrap();
        assert_eq!(format!("{at}"), "postgres://bob:***@db:5432/billing");
        assert!(!format!("{at:?}").contains("s3cret"), "{at:?}");
        let file = Location::parse("sqlite:///var/lib/billsync/outbox.db?mode=rwc").unwrap();
        assert_eq!(file, Location::Sqlite { path: "/var/lib/billsync/outbox.db".into() });
    }

    #[test]
    fn adapters_are_send_and_sync() {
        fn check<T: Send + Sync + std::fmt::Debug>() {}
        check::<SqliteOutbox>();
        check::<PostgresOutbox>();
    }
}
