-- Quantities, step 2 of 3: the unique key of a buyer's order chain (see step 1) replaces
-- the one-purchase-per-user key, under the old key's name; and the order keys' index.
--
-- The name `purchases_one_per_user` stays: the previous release names it in its statements
-- (`ON CONFLICT ON CONSTRAINT purchases_one_per_user`, and the 23505 it expects), and its
-- inserts write `units_before = 0` (the default), so during a rollout it keeps selling at
-- most one order per buyer, exactly as before. For a sale whose limit is 1 the key is
-- still one purchase per user; above 1 it is one order per link of the buyer's chain.
-- Dropping the old key and adding the new one is one statement: no moment without a key.
--
-- The index is built here, in the migration's transaction, not CONCURRENTLY: a concurrent
-- build waits for every transaction with an older snapshot, and instances starting together
-- wait for the migrator's advisory lock inside one (measured: "deadlock detected", one
-- instance exits; tests/it/deploy.rs). The build blocks writes to `purchases` while it reads
-- the table (its time grows with the table): run the migration before a drop, not during
-- one.
SET LOCAL lock_timeout = '5s';

CREATE UNIQUE INDEX purchases_chain ON purchases (sale_id, user_id, units_before);
ALTER TABLE purchases
    DROP CONSTRAINT purchases_one_per_user,
    ADD CONSTRAINT purchases_one_per_user UNIQUE USING INDEX purchases_chain;

-- One order per key of a buyer in a sale. Partial: orders without a key (every order of the
-- previous release, and every order that names none) cost this index nothing.
CREATE UNIQUE INDEX purchases_order_key ON purchases (sale_id, user_id, order_key)
    WHERE order_key IS NOT NULL;
