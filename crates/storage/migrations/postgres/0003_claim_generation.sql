-- Claims on the database's clock, with generations (PostgreSQL, version 3).
--
-- expires_at is now computed and judged with the database's own clock (milliseconds since
-- the epoch of clock_timestamp()), never an agent's: agents whose clocks disagree still agree
-- on who holds a tenant. generation grows with each new holder of a tenant.
ALTER TABLE tenant_claims ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
