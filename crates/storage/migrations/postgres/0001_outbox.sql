-- The billsync outbox, version 1 (PostgreSQL).
--
-- Times are integer milliseconds since the Unix epoch, from the injected clock (portable
-- between SQLite and PostgreSQL, and independent of the server's clock).
-- state: 0 pending, 1 leased, 2 delivered, 3 dead-lettered. The state constants are
-- literals in every query so that the partial indexes below apply.
-- due_at: when a pending event may next be leased (its enqueue time, or the nack's retry
-- time). It is kept while the event is leased, so that an expired lease puts the event back
-- exactly where it was in the queue.

CREATE TABLE events (
    seq              BIGINT   GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant           TEXT     NOT NULL,
    event_id         TEXT     NOT NULL,
    body             TEXT     NOT NULL,
    state            SMALLINT NOT NULL CHECK (state IN (0, 1, 2, 3)),
    enqueued_at      BIGINT   NOT NULL,
    due_at           BIGINT   NOT NULL,
    attempts         INTEGER  NOT NULL DEFAULT 0,
    lease_id         TEXT,
    lease_expires_at BIGINT,
    delivered_at     BIGINT,
    dead_code        TEXT,
    dead_message     TEXT,
    dead_at          BIGINT,
    CONSTRAINT events_tenant_event_id UNIQUE (tenant, event_id)
);

-- Leasing: the first `max` due pending events of a tenant, in (due_at, seq) order, read
-- straight off the index whatever the backlog.
CREATE INDEX events_pending ON events (tenant, due_at, seq) INCLUDE (enqueued_at) WHERE state = 0;
-- Reclaiming expired leases, counting in-flight events.
CREATE INDEX events_leased ON events (tenant, lease_expires_at) WHERE state = 1;
-- nack by lease id.
CREATE INDEX events_lease_id ON events (lease_id) WHERE state = 1;
-- compact, and delivered counts per tenant.
CREATE INDEX events_delivered_at ON events (delivered_at) WHERE state = 2;
CREATE INDEX events_delivered_tenant ON events (tenant) WHERE state = 2;
-- dead-letter listing, requeue and counts.
CREATE INDEX events_dead ON events (tenant, dead_at, seq) WHERE state = 3;

-- One agent drains a tenant at a time: the holder renews its claim before expires_at.
CREATE TABLE tenant_claims (
    tenant     TEXT   PRIMARY KEY,
    holder     TEXT   NOT NULL,
    expires_at BIGINT NOT NULL
);
