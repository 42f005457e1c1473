-- Leases as one row each (SQLite, version 3).
--
-- Version 1 marked every leased event (state 1, lease_id, lease_expires_at): leasing 500
-- events rewrote 500 rows and three indexes, and the ack rewrote them again. Now a lease is
-- one row holding its events' seqs; a leased event stays `state = 0` (pending) and is
-- skipped by the next lease while an unexpired lease holds it. Letting a lease lapse needs
-- no write at all: the event is simply no longer held, and keeps its place (due_at).
-- State 1 is no longer written. Events leased under version 1 go back to pending here (a
-- lease that survives an upgrade is treated as lapsed: at-least-once, as always).

CREATE TABLE leases (
    lease_id   TEXT    PRIMARY KEY NOT NULL,
    tenant     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    -- JSON array of the leased events' seq.
    seqs       TEXT    NOT NULL
);
CREATE INDEX leases_tenant ON leases (tenant, expires_at);

UPDATE events SET state = 0, lease_id = NULL, lease_expires_at = NULL WHERE state = 1;
DROP INDEX events_leased;
DROP INDEX events_lease_id;
