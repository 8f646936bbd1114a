-- Hardening: a sale with purchases or holds is archived, never deleted, so no API call can
-- destroy what a buyer was promised; a sale with nothing sold or held may still be removed
-- outright, and then its child rows go with it (ON DELETE CASCADE elsewhere).

-- Set once, by DELETE of a sale that has purchases or holds. An archived sale sells nothing,
-- leaves every listing, and frees its sku; it stays readable by its id.
ALTER TABLE sales ADD COLUMN archived_at timestamptz;

-- The sku is unique among live sales only, so a new sale may take an archived sale's sku.
ALTER TABLE sales DROP CONSTRAINT sales_sku_key;
CREATE UNIQUE INDEX sales_live_sku ON sales (sku) WHERE archived_at IS NULL;

-- A purchase outlives any attempt to delete its sale: the database refuses (23503) rather
-- than cascade, whatever the service does.
ALTER TABLE purchases DROP CONSTRAINT purchases_sale_id_fkey;
ALTER TABLE purchases ADD CONSTRAINT purchases_sale_id_fkey
    FOREIGN KEY (sale_id) REFERENCES sales (id) ON DELETE RESTRICT;

-- The archive is recorded in the state-change log, with the holds it voided.
ALTER TABLE sale_events DROP CONSTRAINT sale_events_state_check;
ALTER TABLE sale_events ADD CONSTRAINT sale_events_state_check
    CHECK (state IN ('active', 'ended', 'archived'));
ALTER TABLE sale_events ADD COLUMN voided_holds integer;

-- Failed jobs stay visible (dead_at) until an admin requeues them; list them by that.
CREATE INDEX jobs_dead ON jobs (dead_at) WHERE dead_at IS NOT NULL;
