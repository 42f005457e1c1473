-- An event's state in narrow tables, and a lease as one row (PostgreSQL, version 7).
--
-- Up to version 6 an event's state was a column of its row, and every partial index named it
-- in its predicate: leasing 500 events rewrote 500 rows of about 300 bytes (the body included)
-- and locked each of them, and the ack rewrote them again, moving each between partial
-- indexes (no HOT update was possible). Now, as in SQLite since its version 8:
--   events:    written once at enqueue; only `attempts` changes after that (an unindexed
--              column, so a retry is a HOT update);
--   pending:   waiting to be sent, leased or not, with when it is next due;
--   delivered: the platform has it, since delivered_at;
--   dead:      dead-lettered, with the platform's code and message;
--   leases:    one row per lease, carrying its events' seqs and ids (in the same order) and the
--              claim generation it was taken under. A leased event stays in `pending`; the next
--              lease skips the seqs of the tenant's live leases. A lapsed lease holds nothing,
--              without a write; a new holder of the tenant deletes the old holder's leases.
-- An ack deletes a narrow row from `pending` and appends one to `delivered` per event, and
-- deletes one lease row. Times are integer milliseconds since the Unix epoch.

CREATE TABLE pending (
    seq         BIGINT PRIMARY KEY,
    tenant      TEXT   NOT NULL,
    due_at      BIGINT NOT NULL,
    enqueued_at BIGINT NOT NULL
);
-- Leasing reads a tenant's first due events straight off this index, whatever the backlog.
CREATE INDEX pending_due ON pending (tenant, due_at, seq) INCLUDE (enqueued_at);

CREATE TABLE delivered (
    seq          BIGINT PRIMARY KEY,
    delivered_at BIGINT NOT NULL
);
-- Compaction takes the oldest deliveries first.
CREATE INDEX delivered_at ON delivered (delivered_at);

CREATE TABLE dead (
    seq     BIGINT PRIMARY KEY,
    tenant  TEXT   NOT NULL,
    dead_at BIGINT NOT NULL,
    code    TEXT   NOT NULL,
    message TEXT   NOT NULL
);
-- Listing, counting and requeueing a tenant's dead letters.
CREATE INDEX dead_tenant ON dead (tenant, dead_at, seq);

CREATE TABLE leases (
    lease_id   TEXT     PRIMARY KEY,
    tenant     TEXT     NOT NULL,
    -- The claim generation the lease was taken under; NULL when taken without a claim.
    generation BIGINT,
    expires_at BIGINT   NOT NULL,
    seqs       BIGINT[] NOT NULL,
    ids        TEXT[]   NOT NULL
);
CREATE INDEX leases_tenant ON leases (tenant, expires_at);

-- Events leased under version 6 go back to pending in their place (a lease that survives an
-- upgrade is treated as lapsed: at least once, as always).
INSERT INTO pending (seq, tenant, due_at, enqueued_at)
SELECT seq, tenant, due_at, enqueued_at FROM events WHERE state IN (0, 1);
INSERT INTO delivered (seq, delivered_at)
SELECT seq, coalesce(delivered_at, enqueued_at) FROM events WHERE state = 2;
INSERT INTO dead (seq, tenant, dead_at, code, message)
SELECT seq, tenant, coalesce(dead_at, enqueued_at), coalesce(dead_code, ''), coalesce(dead_message, '')
FROM events WHERE state = 3;

DROP INDEX events_pending;
DROP INDEX events_leased;
DROP INDEX events_lease_id;
DROP INDEX events_delivered_at;
DROP INDEX events_delivered_tenant;
DROP INDEX events_dead;
ALTER TABLE events
    DROP COLUMN state,
    DROP COLUMN due_at,
    DROP COLUMN lease_id,
    DROP COLUMN lease_expires_at,
    DROP COLUMN delivered_at,
    DROP COLUMN dead_code,
    DROP COLUMN dead_message,
    DROP COLUMN dead_at;
