-- Quantities and per-customer limits (issue 21, item 1), step 1 of 3: expand.
--
-- A sale sells up to `per_customer_limit` units to one buyer over all their orders, at most
-- `max_per_order` in one order. An order (a purchase row, or a queued hold) carries its
-- `quantity`; every counter of the sale counts units, never rows.
--
-- Rollouts (the README's expand/contract rules): every column here has a constant default
-- (no rewrite), the previous release writes rows that are valid with those defaults (one
-- unit, the first order of its buyer), and the new constraints on the two large tables are
-- NOT VALID (no scan under the lock; step 3 validates them). The previous release admits a
-- queued hold as one unit whatever its quantity, so sales with a per-customer limit above 1
-- should be created once every instance runs this release.
SET LOCAL lock_timeout = '5s';

ALTER TABLE sales
    ADD COLUMN per_customer_limit integer NOT NULL DEFAULT 1
        CHECK (per_customer_limit BETWEEN 1 AND 100),
    ADD COLUMN max_per_order integer NOT NULL DEFAULT 1,
    ADD CONSTRAINT sales_max_per_order CHECK (max_per_order BETWEEN 1 AND per_customer_limit);

-- A buyer may have several orders in one sale. They form a chain: `units_before` is what
-- the buyer owned in the sale before the order (0 for the first, then q1, q1 + q2 ...), and
-- step 2 makes each link unique (`purchases_one_per_user` on (sale, user, units_before)).
-- Every statement that inserts an order computes `units_before` as the sum of the buyer's
-- orders it can see, so an insert whose snapshot missed an order committed since collides
-- with exactly that order (same `units_before`) and is refused or skipped: the limit is
-- checked against the chain's true end, on any number of instances (see
-- store/purchases.rs). With the default limit 1 every order has `units_before = 0`, and the
-- key is the old one purchase per user.
ALTER TABLE purchases
    ADD COLUMN quantity integer NOT NULL DEFAULT 1,
    ADD COLUMN units_before integer NOT NULL DEFAULT 0,
    -- The buyer's own key for the order (optional): a request that names it again is
    -- answered with the order instead of buying again (see step 2's index).
    ADD COLUMN order_key uuid,
    ADD CONSTRAINT purchases_quantity CHECK (quantity BETWEEN 1 AND 100) NOT VALID,
    ADD CONSTRAINT purchases_units_before
        CHECK (units_before >= 0 AND units_before + quantity <= 100) NOT VALID;

-- A hold reserves the quantity asked for at the join.
ALTER TABLE queue_entries
    ADD COLUMN quantity integer NOT NULL DEFAULT 1,
    ADD CONSTRAINT queue_entries_quantity CHECK (quantity BETWEEN 1 AND 100) NOT VALID;

-- purchase.created carries the order's quantity.
CREATE OR REPLACE FUNCTION outbox_purchases() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    sold_out record;
BEGIN
    PERFORM outbox_record_started(sale_id) FROM (SELECT DISTINCT sale_id FROM bought) b;
    WITH per_sale AS (
        SELECT sale_id, count(*) AS n FROM bought GROUP BY sale_id
    ), numbered AS (
        UPDATE sales s SET last_event_sequence = s.last_event_sequence + p.n,
                           last_event_tx = GREATEST(s.last_event_tx,
                                                    pg_current_xact_id()::text::bigint)
          FROM per_sale p WHERE s.id = p.sale_id
        RETURNING s.id, s.last_event_tx AS feed_tx, s.sku, s.checkout, s.last_event_sequence - p.n AS base
    )
    INSERT INTO events (feed_tx, sale_id, sequence, type, sale_sku, occurred_at, data)
    SELECT n.feed_tx, b.sale_id,
           n.base + row_number() OVER (PARTITION BY b.sale_id ORDER BY b.created_at, b.id),
           'purchase.created', n.sku, b.created_at,
           jsonb_build_object('id', b.id, 'userId', b.user_id, 'createdAt', b.created_at,
                              'checkout', n.checkout, 'quantity', b.quantity)
      FROM bought b JOIN numbered n ON n.id = b.sale_id;
    -- The counters as this statement left them (this transaction holds the row).
    FOR sold_out IN
        SELECT s.id, (SELECT max(created_at) FROM bought WHERE sale_id = s.id) AS at
          FROM sales s
         WHERE s.id IN (SELECT sale_id FROM bought) AND s.available = 0 AND s.held = 0
    LOOP
        INSERT INTO sale_events (sale_id, state, reason, occurred_at)
        VALUES (sold_out.id, 'ended', 'sold_out', sold_out.at)
        ON CONFLICT ON CONSTRAINT sale_events_once DO NOTHING;
    END LOOP;
    RETURN NULL;
END $$;

-- hold.* carry the hold's quantity.
CREATE OR REPLACE FUNCTION outbox_holds() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM after_rows WHERE status IN ('held', 'expired', 'left')) THEN
        RETURN NULL;
    END IF;
    PERFORM outbox_record_started(sale_id)
       FROM (SELECT DISTINCT sale_id FROM after_rows WHERE status = 'held') h;
    WITH changed AS (
        SELECT n.sale_id, n.user_id, n.ticket, n.hold_expires_at, n.quantity,
               CASE WHEN o.status = 'queued' AND n.status = 'held' THEN 'hold.granted'
                    WHEN o.status = 'held' AND n.status = 'expired' THEN 'hold.expired'
                    WHEN o.status = 'held' AND n.status = 'left' THEN 'hold.released'
               END AS type
          FROM after_rows n JOIN before_rows o ON o.sale_id = n.sale_id AND o.user_id = n.user_id
         WHERE o.status IS DISTINCT FROM n.status
    ), wanted AS (
        SELECT * FROM changed WHERE type IS NOT NULL
    ), per_sale AS (
        SELECT sale_id, count(*) AS n FROM wanted GROUP BY sale_id
    ), numbered AS (
        UPDATE sales s SET last_event_sequence = s.last_event_sequence + p.n,
                           last_event_tx = GREATEST(s.last_event_tx,
                                                    pg_current_xact_id()::text::bigint)
          FROM per_sale p WHERE s.id = p.sale_id
        RETURNING s.id, s.last_event_tx AS feed_tx, s.sku, s.last_event_sequence - p.n AS base
    )
    INSERT INTO events (feed_tx, sale_id, sequence, type, sale_sku, data)
    SELECT n.feed_tx, w.sale_id,
           n.base + row_number() OVER (PARTITION BY w.sale_id ORDER BY w.ticket),
           w.type, n.sku,
           jsonb_build_object('userId', w.user_id, 'holdExpiresAt', w.hold_expires_at,
                              'quantity', w.quantity)
      FROM wanted w JOIN numbered n ON n.id = w.sale_id;
    RETURN NULL;
END $$;
