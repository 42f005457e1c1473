-- What the engine last knew of each tenant (blocked reason, last error, token expiry), as a
-- small JSON document, so that `billsync status` in another process can show it.
CREATE TABLE tenant_state (
    tenant     TEXT PRIMARY KEY NOT NULL,
    state      TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
