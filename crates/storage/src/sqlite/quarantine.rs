//! The quarantine in a SQLite outbox: keeping a message, setting its reason and purging are
//! writes, so they go through the writer like every other (a quarantine durable at once, as an
//! enqueue is: the broker forgets the message once the ingest acknowledges it); the listing
//! reads on the read pool.

use async_trait::async_trait;
use billsync_domain::{OutboxError, QuarantineSelection, QuarantineStore, Quarantined};
use sqlx::sqlite::SqliteConnection;

use super::{Op, Out, SqliteOutbox, unexpected};
use crate::error::{During as _, StoreError};
use crate::quarantine::{EntryRow, NewEntry, described, entry, selected};

#[async_trait]
impl QuarantineStore for SqliteOutbox {
    async fn quarantine(&self, topic: &str, payload: &[u8], reason: &str) -> Result<i64, OutboxError> {
        // The digest is computed here, on the caller's task, not on the writer's.
        match self.call(Op::Quarantine { entry: NewEntry::new(topic, payload, reason) }).await? {
            Out::Id(id) => Ok(id),
            other => Err(unexpected(other)),
        }
    }

    async fn quarantined(&self, which: &QuarantineSelection) -> Result<Vec<Quarantined>, OutboxError> {
        let what = || format!("listing {}", described(which));
        let rows: Result<Vec<EntryRow>, sqlx::Error> = match selected(which) {
            None => {
                sqlx::query_as(
                    "SELECT id, received_at, topic, reason, payload, size FROM quarantine ORDER BY received_at, id",
                )
                .fetch_all(&self.reader)
                .await
            }
            Some(ids) => {
                let ids = ids_json(ids).during(what())?;
                sqlx::query_as(
                    "SELECT id, received_at, topic, reason, payload, size FROM quarantine \
                     WHERE id IN (SELECT value FROM json_each(?1)) ORDER BY received_at, id",
                )
                .bind(ids)
                .fetch_all(&self.reader)
                .await
            }
        };
        rows.during(what())?.into_iter().map(entry).collect::<Result<_, _>>().during(what())
    }

    async fn set_quarantine_reason(&self, id: i64, reason: &str) -> Result<(), OutboxError> {
        match self.call(Op::SetQuarantineReason { id, reason: reason.to_owned() }).await? {
            Out::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn purge_quarantined(&self, which: &QuarantineSelection) -> Result<u64, OutboxError> {
        match self.call(Op::PurgeQuarantined { ids: selected(which).map(<[i64]>::to_vec) }).await? {
            Out::Count(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }
}

/// Ids as the JSON array `json_each` reads.
fn ids_json(ids: &[i64]) -> Result<String, StoreError> {
    serde_json::to_string(ids).map_err(|e| StoreError::corrupt("quarantine id", e))
}

// ---------------------------------------------------------------- the writer's operations

/// Keeps the entry at `now`, unless one with its digest is there; the id of the one kept.
pub(super) async fn exec_quarantine(
    conn: &mut SqliteConnection,
    entry: &NewEntry,
    now: i64,
) -> Result<Out, StoreError> {
    sqlx::query(
        "INSERT INTO quarantine (received_at, topic, reason, payload, size, digest) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (digest) DO NOTHING",
    )
    .bind(now)
    .bind(entry.topic.as_str())
    .bind(entry.reason.as_str())
    .bind(entry.payload.as_slice())
    .bind(entry.size)
    .bind(entry.digest.as_slice())
    .execute(&mut *conn)
    .await?;
    // Inside the writer's IMMEDIATE transaction nobody else writes: the row is there.
    let id: i64 = sqlx::query_scalar("SELECT id FROM quarantine WHERE digest = ?1")
        .bind(entry.digest.as_slice())
        .fetch_one(&mut *conn)
        .await?;
    Ok(Out::Id(id))
}

/// Replaces an entry's reason (an unknown id changes nothing).
pub(super) async fn exec_set_reason(conn: &mut SqliteConnection, id: i64, reason: &str) -> Result<Out, StoreError> {
    sqlx::query("UPDATE quarantine SET reason = ?2 WHERE id = ?1").bind(id).bind(reason).execute(&mut *conn).await?;
    Ok(Out::Done)
}

/// Removes the entries among `ids` (all of them for `None`); how many.
pub(super) async fn exec_purge(conn: &mut SqliteConnection, ids: Option<&[i64]>) -> Result<Out, StoreError> {
    let done = match ids {
        None => sqlx::query("DELETE FROM quarantine").execute(&mut *conn).await?,
        Some(ids) => {
            sqlx::query("DELETE FROM quarantine WHERE id IN (SELECT value FROM json_each(?1))")
                .bind(ids_json(ids)?)
                .execute(&mut *conn)
                .await?
        }
    };
    Ok(Out::Count(done.rows_affected()))
}
