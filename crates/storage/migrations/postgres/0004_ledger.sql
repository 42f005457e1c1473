-- The ledger and reconciliation's scratch set (PostgreSQL, version 4).
--
-- ledger: the narrow record of every event stored (`billsync reconcile`), written by enqueue
-- in the same statement as the event, and kept when compaction deletes the delivered event
-- itself. occurred_at is in milliseconds since the epoch (UTC), floored as chrono's
-- timestamp_millis does; quantity is the canonical decimal string as stored.
CREATE TABLE ledger (
    tenant      TEXT   NOT NULL,
    event_id    TEXT   NOT NULL,
    occurred_at BIGINT NOT NULL,
    meter       TEXT   NOT NULL,
    unit        TEXT   NOT NULL,
    quantity    TEXT   NOT NULL,
    PRIMARY KEY (tenant, event_id)
);
-- The comparison reads a tenant's window of days off this index.
CREATE INDEX ledger_time ON ledger (tenant, occurred_at, event_id);

-- Settings of the outbox itself. ledger_from: the first instant (ms) from which the ledger
-- holds every event; absent when it always did (an outbox created with this version).
CREATE TABLE outbox_meta (
    key   TEXT   PRIMARY KEY,
    value BIGINT NOT NULL
);

-- An outbox that was used before this version may have compacted delivered events away:
-- nothing is known of them, so reconciliation vouches only from now on. Now plus 5 minutes:
-- an event may occur up to 5 minutes after its enqueue, so a compacted one (enqueued before
-- now) may have occurred until then. Any row anywhere means the outbox was used (everything
-- may have been compacted, and an engine claims its tenants before it delivers).
INSERT INTO outbox_meta (key, value)
SELECT 'ledger_from', (extract(epoch FROM clock_timestamp()) * 1000)::bigint + 300000
WHERE EXISTS (SELECT 1 FROM events) OR EXISTS (SELECT 1 FROM tenant_claims) OR EXISTS (SELECT 1 FROM tenant_state);

-- The events still here, from their canonical JSON. occurred_at is RFC 3339 with an offset and
-- up to 9 fraction digits: the whole seconds (with the offset) go through timestamptz, and the
-- first three fraction digits are added as they are, so that the result is exact and floored
-- (timestamptz keeps microseconds, rounded). A body that does not give all four fields as
-- strings is left out, as enqueue leaves it out.
INSERT INTO ledger (tenant, event_id, occurred_at, meter, unit, quantity)
SELECT tenant, event_id,
       extract(epoch FROM regexp_replace(t, '\.[0-9]+', '')::timestamptz)::bigint * 1000
           + coalesce(rpad(substring(t FROM '\.([0-9]{1,3})'), 3, '0')::int, 0),
       b ->> 'meter', b ->> 'unit', b ->> 'quantity'
FROM (SELECT tenant, event_id, body::jsonb AS b, body::jsonb ->> 'occurred_at' AS t FROM events) AS e
WHERE jsonb_typeof(b -> 'occurred_at') = 'string'
  AND jsonb_typeof(b -> 'meter') = 'string'
  AND jsonb_typeof(b -> 'unit') = 'string'
  AND jsonb_typeof(b -> 'quantity') = 'string'
  AND t ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$';

-- One reconciliation in progress: its tenant and window (ms, end excluded), and when it began
-- (runs older than a day are dropped by the next one to begin). Unlogged, as the scratch set
-- is: a crash empties both, so that a run in progress then fails as unknown instead of
-- comparing against an empty set.
CREATE UNLOGGED TABLE reconcile_runs (
    run          TEXT   PRIMARY KEY,
    tenant       TEXT   NOT NULL,
    window_start BIGINT NOT NULL,
    window_end   BIGINT NOT NULL,
    started_at   BIGINT NOT NULL
);

-- What the platform holds, per run: a regular table (a temporary one belongs to one
-- connection, and the outbox works on a pool), unlogged (scratch: no WAL to write).
CREATE UNLOGGED TABLE reconcile_held (
    run         TEXT   NOT NULL,
    event_id    TEXT   NOT NULL,
    occurred_at BIGINT NOT NULL,
    meter       TEXT   NOT NULL,
    unit        TEXT   NOT NULL,
    quantity    TEXT   NOT NULL,
    PRIMARY KEY (run, event_id)
);
