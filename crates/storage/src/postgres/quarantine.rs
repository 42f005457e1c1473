//! The quarantine in a PostgreSQL outbox: each operation is one statement on the pool (keeping
//! a message is two: the insert, then, when the same message is already there, the read of its
//! id, in a snapshot of its own that sees an entry another agent just committed).

use async_trait::async_trait;
use billsync_domain::{OutboxError, QuarantineSelection, QuarantineStore, Quarantined};
use sqlx::PgPool;

use super::PostgresOutbox;
use crate::error::{During as _, StoreError};
use crate::quarantine::{EntryRow, NewEntry, described, entry, selected};

/// Tries of a quarantine whose twin was purged between its insert and the read of its id.
const QUARANTINE_TRIES: usize = 3;

#[async_trait]
impl QuarantineStore for PostgresOutbox {
    async fn quarantine(&self, topic: &str, payload: &[u8], reason: &str) -> Result<i64, OutboxError> {
        let entry = NewEntry::new(topic, payload, reason);
        quarantine(&self.pool, &entry, self.now_ms())
            .await
            .during(format_args!("quarantine of a message from topic {topic:?}"))
    }

    async fn quarantined(&self, which: &QuarantineSelection) -> Result<Vec<Quarantined>, OutboxError> {
        let rows: Result<Vec<EntryRow>, _> = sqlx::query_as(
            "SELECT id, received_at, topic, reason, payload, size FROM quarantine \
             WHERE $1::bigint[] IS NULL OR id = ANY($1) ORDER BY received_at, id",
        )
        .bind(selected(which))
        .fetch_all(&self.pool)
        .await;
        let what = || format!("listing {}", described(which));
        rows.during(what())?.into_iter().map(entry).collect::<Result<_, _>>().during(what())
    }

    async fn set_quarantine_reason(&self, id: i64, reason: &str) -> Result<(), OutboxError> {
        sqlx::query("UPDATE quarantine SET reason = $2 WHERE id = $1")
            .bind(id)
            .bind(reason)
            .execute(&self.pool)
            .await
            .during(format_args!("setting the reason of quarantine entry {id}"))?;
        Ok(())
    }

    async fn purge_quarantined(&self, which: &QuarantineSelection) -> Result<u64, OutboxError> {
        let done = sqlx::query("DELETE FROM quarantine WHERE $1::bigint[] IS NULL OR id = ANY($1)")
            .bind(selected(which))
            .execute(&self.pool)
            .await
            .during(format_args!("purge of {}", described(which)))?;
        Ok(done.rows_affected())
    }
}

/// Keeps the entry at `now`, unless one with its digest is there; the id of the one kept.
///
/// The insert waits for a twin another agent is inserting, then does nothing; the read that
/// follows, a statement of its own, sees the twin committed. Only a purge between the two can
/// leave nothing to read: then the insert is tried again.
async fn quarantine(pool: &PgPool, entry: &NewEntry, now: i64) -> Result<i64, StoreError> {
    for _ in 0..QUARANTINE_TRIES {
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO quarantine (received_at, topic, reason, payload, size, digest) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (digest) DO NOTHING RETURNING id",
        )
        .bind(now)
        .bind(entry.topic.as_str())
        .bind(entry.reason.as_str())
        .bind(entry.payload.as_slice())
        .bind(entry.size)
        .bind(entry.digest.as_slice())
        .fetch_optional(pool)
        .await?;
        if let Some(id) = inserted {
            return Ok(id);
        }
        let kept: Option<i64> = sqlx::query_scalar("SELECT id FROM quarantine WHERE digest = $1")
            .bind(entry.digest.as_slice())
            .fetch_optional(pool)
            .await?;
        if let Some(id) = kept {
            return Ok(id);
        }
    }
    Err(StoreError::corrupt("quarantine entry", "its twin was purged at each try while it was being kept"))
}
