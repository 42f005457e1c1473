-- An event's state in narrow tables of its own (SQLite, version 8).
--
-- Up to version 7 an event's state was a column of its row: marking 500 events delivered
-- rewrote 500 rows of about 300 bytes (the body included) and moved 500 entries between three
-- partial indexes. Now the row in `events` is written once, at enqueue, and only `attempts`
-- changes after that (on a retry or a dead letter). Where an event stands is which one of
-- three narrow tables holds its seq:
--   pending:   waiting to be sent (leased or not: a lease is a row of `leases`, as since
--              version 3), with when it is next due and when it was enqueued;
--   delivered: the platform has it, since delivered_at;
--   dead:      dead-lettered, with the platform's code and message.
-- An ack deletes a few dozen bytes per event from `pending` and appends a dozen to `delivered`,
-- all in key order, touching a handful of pages instead of a row and three index entries per
-- event. Times are integer milliseconds since the Unix epoch, from the injected clock.

CREATE TABLE pending (
    seq         INTEGER PRIMARY KEY,
    tenant      TEXT    NOT NULL,
    due_at      INTEGER NOT NULL,
    enqueued_at INTEGER NOT NULL
);
-- Leasing reads a tenant's first due events straight off this index, whatever the backlog;
-- enqueued_at makes counts' oldest pending an index-only scan.
CREATE INDEX pending_due ON pending (tenant, due_at, seq, enqueued_at);

CREATE TABLE delivered (
    seq          INTEGER PRIMARY KEY,
    delivered_at INTEGER NOT NULL
);
-- Compaction takes the oldest deliveries first.
CREATE INDEX delivered_at ON delivered (delivered_at);

CREATE TABLE dead (
    seq     INTEGER PRIMARY KEY,
    tenant  TEXT    NOT NULL,
    dead_at INTEGER NOT NULL,
    code    TEXT    NOT NULL,
    message TEXT    NOT NULL
);
-- Listing, counting and requeueing a tenant's dead letters.
CREATE INDEX dead_tenant ON dead (tenant, dead_at, seq);

-- State 1 (leased) has not been written since version 3, whose migration made such events
-- pending again; it is read as pending here all the same.
INSERT INTO pending (seq, tenant, due_at, enqueued_at)
SELECT seq, tenant, due_at, enqueued_at FROM events WHERE state IN (0, 1);
INSERT INTO delivered (seq, delivered_at)
SELECT seq, coalesce(delivered_at, enqueued_at) FROM events WHERE state = 2;
INSERT INTO dead (seq, tenant, dead_at, code, message)
SELECT seq, tenant, coalesce(dead_at, enqueued_at), coalesce(dead_code, ''), coalesce(dead_message, '')
FROM events WHERE state = 3;

-- A lease now also lists its events' ids, in the order of its seqs, so that an ack finds
-- what it settles in the lease's own row without reading the events. A lease that survives
-- the upgrade is dropped, as one that lapsed: its events are pending in their place.
DELETE FROM leases;
ALTER TABLE leases ADD COLUMN ids TEXT NOT NULL DEFAULT '[]';

DROP INDEX events_pending;
DROP INDEX events_delivered_at;
DROP INDEX events_delivered_tenant;
DROP INDEX events_dead;
ALTER TABLE events DROP COLUMN state;
ALTER TABLE events DROP COLUMN due_at;
ALTER TABLE events DROP COLUMN lease_id;
ALTER TABLE events DROP COLUMN lease_expires_at;
ALTER TABLE events DROP COLUMN delivered_at;
ALTER TABLE events DROP COLUMN dead_code;
ALTER TABLE events DROP COLUMN dead_message;
ALTER TABLE events DROP COLUMN dead_at;
