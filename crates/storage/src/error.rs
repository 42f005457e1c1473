//! Failures inside the adapters, and their translation into the port's [`OutboxError`].

use billsync_domain::OutboxError;

/// SQLite's primary result code for a full disk or a database at `max_page_count`.
const SQLITE_FULL: i32 = 13;
/// PostgreSQL's SQLSTATE `disk_full`.
const PG_DISK_FULL: &str = "53100";

/// What went wrong in an adapter, before it is translated for the port.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// The driver failed.
    #[error(transparent)]
    Driver(#[from] sqlx::Error),
    /// Applying the embedded migrations failed.
    #[error("could not migrate the outbox schema: {0}")]
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
    #[error("could not connect to PostgreSQL at {target}: {source}")]
    Connect { target: String, source: sqlx::Error },
    /// The outbox URL is malformed.
    #[error("invalid outbox url `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// A later claim generation holds the tenant.
    #[error("the claim on tenant {tenant} (generation {generation}) was lost to another agent")]
    ClaimLost { tenant: billsync_domain::TenantName, generation: u64 },
    /// A tenant's lock file could not be created or locked.
    #[error("tenant lock file {}: {reason}", path.display())]
    Lock { path: std::path::PathBuf, reason: String },
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
    fn from(e: StoreError) -> Self {
        if e.is_full() {
            return OutboxError::Full;
        }
        match e {
            StoreError::SchemaTooNew { found, supported } => OutboxError::SchemaTooNew { found, supported },
            StoreError::ClaimLost { tenant, generation } => OutboxError::ClaimLost { tenant, generation },
            other => OutboxError::Storage(other.to_string()),
        }
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
}
