//! Failures inside the adapters, and their translation into the port's [`OutboxError`].
//!
//! A [`StoreError`] keeps the driver's (or the operating system's) error as its source, and
//! its `Display` never repeats that error's text. [`StoreError::during`] turns it into the
//! port's error, naming the operation that failed ([`OutboxError::Storage`]'s `what`) and
//! keeping the driver's error as the source, so that a chain printer shows each cause once.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use billsync_domain::{OutboxError, StorageFailure};

/// SQLite's primary result code for a full disk or a database at `max_page_count`.
const SQLITE_FULL: i32 = 13;
/// PostgreSQL's SQLSTATE `disk_full`.
const PG_DISK_FULL: &str = "53100";

/// What went wrong in an adapter, before it is translated for the port.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// The driver failed.
    #[error("database error")]
    Driver(#[from] sqlx::Error),
    /// Applying the embedded migrations failed.
    #[error("could not migrate the outbox schema")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database holds migrations this build does not know.
    #[error("schema version {found} is newer than {supported}")]
    SchemaTooNew { found: i64, supported: i64 },
    /// A stored value that this build cannot read back (a corrupted or foreign row).
    #[error("unreadable stored {what}: {reason}")]
    Corrupt { what: &'static str, reason: String },
    /// The outbox URL names no supported database.
    #[error("unsupported outbox url scheme `{scheme}` (expected sqlite://PATH, postgres:// or postgresql://)")]
    UnsupportedScheme { scheme: String },
    /// The database server could not be reached.
    #[error("could not connect to PostgreSQL at {target}")]
    Connect { target: String, source: sqlx::Error },
    /// The outbox URL is malformed.
    #[error("invalid outbox url `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// The driver could not read the outbox URL.
    #[error("invalid outbox url `{url}`")]
    UnreadableUrl { url: String, source: sqlx::Error },
    /// A later claim generation holds the tenant.
    #[error("the claim on tenant {tenant} (generation {generation}) was lost to another agent")]
    ClaimLost { tenant: billsync_domain::TenantName, generation: u64 },
    /// A tenant's lock file could not be created or locked.
    #[error("tenant lock file {}", path.display())]
    Lock { path: std::path::PathBuf, source: std::io::Error },
    /// The PostgreSQL URL's `sslrootcert` cannot be used.
    #[error("sslrootcert {}", path.display())]
    RootCert { path: std::path::PathBuf, source: std::io::Error },
    /// The writer task is gone (the runtime is shutting down).
    #[error("the outbox writer task has stopped")]
    WriterGone,
}

impl StoreError {
    pub(crate) fn corrupt(what: &'static str, reason: impl ToString) -> Self {
        Self::Corrupt { what, reason: reason.to_string() }
    }

    /// Whether the disk or database is full.
    pub(crate) fn is_full(&self) -> bool {
        match self {
            Self::Driver(e) => driver_full(e),
            Self::Migrate(sqlx::migrate::MigrateError::Execute(e))
            | Self::Migrate(sqlx::migrate::MigrateError::ExecuteMigration(e, _)) => driver_full(e),
            _ => false,
        }
    }

    /// The port's error for this failure of `operation` ("ack of 500 events of tenant acme"):
    /// [`OutboxError::Storage`] says what failed, with the driver's error as its source.
    pub(crate) fn during(self, operation: impl fmt::Display) -> OutboxError {
        self.into_outbox(Some(&operation))
    }

    fn into_outbox(self, operation: Option<&dyn fmt::Display>) -> OutboxError {
        if self.is_full() {
            return OutboxError::Full;
        }
        let what = match (&self, operation) {
            (Self::SchemaTooNew { found, supported }, _) => {
                return OutboxError::SchemaTooNew { found: *found, supported: *supported };
            }
            (Self::ClaimLost { tenant, generation }, _) => {
                return OutboxError::ClaimLost { tenant: tenant.clone(), generation: *generation };
            }
            // The operation is what failed; "database error" adds nothing to it.
            (Self::Driver(_), Some(op)) => op.to_string(),
            (Self::Migrate(sqlx::migrate::MigrateError::ExecuteMigration(_, version)), op) => {
                let own = format!("{self} (migration {version})");
                op.map_or(own.clone(), |op| format!("{op}: {own}"))
            }
            (_, Some(op)) => format!("{op}: {self}"),
            (_, None) => self.to_string(),
        };
        let failure = StorageFailure::new(what);
        OutboxError::Storage(match self.into_source() {
            Some(source) => failure.with_shared_source(source),
            None => failure,
        })
    }

    /// The underlying error, unwrapped from sqlx's own wrappers (whose `Display` repeats it).
    fn into_source(self) -> Option<Arc<dyn Error + Send + Sync + 'static>> {
        match self {
            Self::Driver(e) | Self::Connect { source: e, .. } | Self::UnreadableUrl { source: e, .. } => {
                Some(driver_source(e))
            }
            Self::Migrate(sqlx::migrate::MigrateError::Execute(e))
            | Self::Migrate(sqlx::migrate::MigrateError::ExecuteMigration(e, _)) => Some(driver_source(e)),
            Self::Migrate(e) => Some(Arc::new(e)),
            Self::Lock { source, .. } | Self::RootCert { source, .. } => Some(Arc::new(source)),
            Self::SchemaTooNew { .. }
            | Self::Corrupt { .. }
            | Self::UnsupportedScheme { .. }
            | Self::InvalidUrl { .. }
            | Self::ClaimLost { .. }
            | Self::WriterGone => None,
        }
    }
}

/// The driver's error as a source: the database's own error (`SqliteError`,
/// `PgDatabaseError`) or the I/O error, rather than sqlx's wrapper, whose `Display` repeats its
/// source's text ("error returned from database: (code: 14) unable to open database file", then
/// the same again as its source).
fn driver_source(e: sqlx::Error) -> Arc<dyn Error + Send + Sync + 'static> {
    match e {
        sqlx::Error::Database(db) => Arc::from(db.into_error()),
        sqlx::Error::Io(io) => Arc::new(io),
        other => Arc::new(other),
    }
}

fn driver_full(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => match db.code() {
            // SQLite reports extended result codes: the primary code is the low byte.
            Some(code) if code == PG_DISK_FULL => true,
            Some(code) => code.parse::<i32>().is_ok_and(|c| c & 0xff == SQLITE_FULL),
            None => false,
        },
        sqlx::Error::Io(io) => io.kind() == std::io::ErrorKind::StorageFull,
        _ => false,
    }
}

impl From<StoreError> for OutboxError {
    /// As [`StoreError::during`], for a failure that names itself (a URL, a server, a file).
    fn from(e: StoreError) -> Self {
        e.into_outbox(None)
    }
}

/// Names the operation of a failed result: `query.await.during(format_args!("counts of
/// tenant {tenant}"))?`.
pub(crate) trait During<T> {
    /// [`StoreError::during`] on the error, if any.
    fn during(self, operation: impl fmt::Display) -> Result<T, OutboxError>;
}

impl<T, E: Into<StoreError>> During<T> for Result<T, E> {
    fn during(self, operation: impl fmt::Display) -> Result<T, OutboxError> {
        self.map_err(|e| e.into().during(operation))
    }
}

/// An error and its sources, `: `-separated, for the adapters' own log lines.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

/// Removes the password from a database URL, for messages and `Debug`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let masked = if userinfo.contains(':') { format!("{user}:***") } else { user.to_owned() };
            // Query parameters may carry a password too.
            let tail = redact_query(tail);
            format!("{scheme}://{masked}@{host}{tail}")
        }
        None => format!("{scheme}://{authority}{}", redact_query(tail)),
    }
}

fn redact_query(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let params: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_owned(),
        })
        .collect();
    format!("{path}?{}", params.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_passwords() {
        let cases = [
            ("postgres://bob:s3cret@db:5432/x", "postgres://bob:***@db:5432/x"),
            ("postgres://bob@db/x", "postgres://bob@db/x"),
            ("postgres://db/x?user=a&password=s3cret", "postgres://db/x?user=a&password=***"),
            ("postgresql://a:b:c@h", "postgresql://a:***@h"),
            ("sqlite://outbox.db", "sqlite://outbox.db"),
        ];
        for (input, expected) in cases {
            assert_eq!(redact_url(input), expected, "{input}");
        }
    }

    #[test]
    fn full_errors_become_outbox_full() {
        let e = StoreError::SchemaTooNew { found: 3, supported: 1 };
        assert_eq!(OutboxError::from(e), OutboxError::SchemaTooNew { found: 3, supported: 1 });
        let e = StoreError::Driver(sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::StorageFull)));
        assert_eq!(OutboxError::from(e), OutboxError::Full);
        let e = StoreError::WriterGone;
        assert!(matches!(OutboxError::from(e), OutboxError::Storage(_)));
    }

    #[test]
    fn a_failure_names_its_operation_and_keeps_the_driver_error_as_its_source() {
        use std::error::Error as _;

        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset by peer");
        let e = StoreError::Driver(sqlx::Error::Io(refused)).during("ack of 3 events of tenant acme");
        assert_eq!(e.to_string(), "outbox storage failed: ack of 3 events of tenant acme");
        let source = e.source().expect("a source");
        // sqlx's wrapper ("error communicating with database: ...") is unwrapped: its text
        // would repeat its own source's.
        let io = source.downcast_ref::<std::io::Error>().expect("the I/O error itself");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset);
        assert_eq!(
            Chain(&e).to_string(),
            "outbox storage failed: ack of 3 events of tenant acme: connection reset by peer"
        );

        let lock = StoreError::Lock {
            path: "/x/o.db.locks/acme.lock".into(),
            source: std::io::ErrorKind::PermissionDenied.into(),
        };
        let e = lock.during("claim of tenant acme");
        assert_eq!(
            e.to_string(),
            "outbox storage failed: claim of tenant acme: tenant lock file /x/o.db.locks/acme.lock"
        );
        assert!(e.source().and_then(|s| s.downcast_ref::<std::io::Error>()).is_some(), "{e:?}");
    }
}
