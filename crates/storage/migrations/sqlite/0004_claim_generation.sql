-- Tenant claims through an OS lock (SQLite, version 4).
--
-- A tenant is held by whoever holds the lock file `<outbox>.locks/<tenant>.lock` (flock): the
-- kernel releases it when its holder dies, so no timer decides on one host. The row in
-- tenant_claims only says who holds it (for `status` and `sync`), and counts the holders:
-- generation grows with each new one. expires_at is no longer read.
ALTER TABLE tenant_claims ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
