-- The ledger and reconciliation's scratch set (SQLite, version 5).
--
-- ledger: the narrow record of every event stored (docs: `billsync reconcile`), written by
-- enqueue in the same transaction as the event, and kept when compaction deletes the delivered
-- event itself. occurred_at is in milliseconds since the epoch (UTC), floored as chrono's
-- timestamp_millis does; quantity is the canonical decimal string as stored.
CREATE TABLE ledger (
    tenant      TEXT    NOT NULL,
    event_id    TEXT    NOT NULL,
    occurred_at INTEGER NOT NULL,
    meter       TEXT    NOT NULL,
    unit        TEXT    NOT NULL,
    quantity    TEXT    NOT NULL,
    PRIMARY KEY (tenant, event_id)
) WITHOUT ROWID;
-- The comparison reads a tenant's window of days off this index.
CREATE INDEX ledger_time ON ledger (tenant, occurred_at, event_id);

-- Settings of the outbox itself. ledger_from: the first instant (ms) from which the ledger
-- holds every event; absent when it always did (an outbox created with this version).
CREATE TABLE outbox_meta (
    key   TEXT    PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
) WITHOUT ROWID;

-- An outbox that was used before this version may have compacted delivered events away:
-- nothing is known of them, so reconciliation vouches only from now on. Now plus 5 minutes:
-- an event may occur up to 5 minutes after its enqueue, so a compacted one (enqueued before
-- now) may have occurred until then. Any row anywhere means the outbox was used (everything
-- may have been compacted, and an engine claims its tenants before it delivers).
INSERT INTO outbox_meta (key, value)
SELECT 'ledger_from', CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) + 300000
WHERE EXISTS (SELECT 1 FROM events) OR EXISTS (SELECT 1 FROM tenant_claims) OR EXISTS (SELECT 1 FROM tenant_state);

-- The events still here, from their canonical JSON. occurred_at is RFC 3339 with an offset and
-- up to 9 fraction digits: the whole seconds (with the offset) go through unixepoch, and the
-- first three fraction digits are added as they are, so that the result is exact and floored
-- (unixepoch's own 'subsec' rounds to the nearest millisecond). A body that does not give
-- all four fields is left out, as enqueue leaves it out.
WITH f AS (
    SELECT tenant, event_id,
           json_extract(body, '$.occurred_at') AS t,
           json_extract(body, '$.meter') AS meter,
           json_extract(body, '$.unit') AS unit,
           json_extract(body, '$.quantity') AS quantity
    FROM events WHERE json_valid(body)
),
g AS (
    SELECT *,
           substr(t, 20, 1) = '.' AS has_frac,
           CASE WHEN substr(t, 20, 1) = '.' THEN substr(t, 21) ELSE '' END AS frac_tz,
           CASE WHEN substr(t, 20, 1) = '.' THEN ltrim(substr(t, 21), '0123456789') ELSE substr(t, 20) END AS tz
    FROM f
    WHERE typeof(t) = 'text' AND typeof(meter) = 'text' AND typeof(unit) = 'text' AND typeof(quantity) = 'text'
      AND substr(t, 11, 1) IN ('T', 't', ' ')
),
h AS (
    SELECT *,
           unixepoch(substr(t, 1, 10) || 'T' || substr(t, 12, 8) || tz) AS secs,
           substr(frac_tz, 1, length(frac_tz) - length(tz)) AS digits
    FROM g
    WHERE tz <> ''
)
INSERT INTO ledger (tenant, event_id, occurred_at, meter, unit, quantity)
SELECT tenant, event_id, secs * 1000 + CAST(substr(digits || '000', 1, 3) AS INTEGER), meter, unit, quantity
FROM h
WHERE secs IS NOT NULL AND (NOT has_frac OR digits <> '');

-- One reconciliation in progress: its tenant and window (ms, end excluded), and when it began
-- (runs older than a day are dropped by the next one to begin).
CREATE TABLE reconcile_runs (
    run          TEXT    PRIMARY KEY NOT NULL,
    tenant       TEXT    NOT NULL,
    window_start INTEGER NOT NULL,
    window_end   INTEGER NOT NULL,
    started_at   INTEGER NOT NULL
) WITHOUT ROWID;

-- What the platform holds, per run: a regular table (a temporary one belongs to one
-- connection, and the outbox reads and writes on several).
CREATE TABLE reconcile_held (
    run         TEXT    NOT NULL,
    event_id    TEXT    NOT NULL,
    occurred_at INTEGER NOT NULL,
    meter       TEXT    NOT NULL,
    unit        TEXT    NOT NULL,
    quantity    TEXT    NOT NULL,
    PRIMARY KEY (run, event_id)
) WITHOUT ROWID;
