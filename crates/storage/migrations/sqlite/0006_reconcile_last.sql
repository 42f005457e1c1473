-- The last reconciliation of each tenant (SQLite, version 6).
--
-- result: the JSON document the engine writes after each reconciliation of the tenant, replaced
-- each time, so that `billsync status` in another process can show it; saved_at: when (ms since
-- the epoch, from the injected clock).
--
-- The facts' retention (`[reconcile] keep_days`) drops the ledger's rows by occurred_at across
-- tenants through ledger_time, tenant by tenant; it needs no index of its own (one on
-- occurred_at would cost every enqueue a write).
CREATE TABLE reconcile_last (
    tenant   TEXT    PRIMARY KEY NOT NULL,
    result   TEXT    NOT NULL,
    saved_at INTEGER NOT NULL
);
