-- The quarantine (PostgreSQL, version 6).
--
-- A broker message the MQTT ingest could not store as events (unreadable, for an unknown
-- tenant, or holding an invalid event), kept just before the message is acknowledged, so that
-- `billsync quarantine` can show it, retry it after a fix, or purge it. id: from 1, never
-- reused (an identity: a purged entry's number is not given again); received_at: when (ms
-- since the epoch, from the injected clock of the agent that kept it); payload: the message's
-- first 64 KiB; size: the whole message's size in bytes; digest: SHA-256 of the topic's bytes,
-- a 0 byte and the whole payload, so that a message the broker redelivers (to any agent of the
-- fleet) is kept once.
CREATE TABLE quarantine (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at BIGINT NOT NULL,
    topic       TEXT   NOT NULL,
    reason      TEXT   NOT NULL,
    payload     BYTEA  NOT NULL,
    size        BIGINT NOT NULL,
    digest      BYTEA  NOT NULL,
    CONSTRAINT quarantine_digest UNIQUE (digest)
);
