-- Every state event in the transaction of its change (see the outbox migration for how
-- events are numbered). Before, sale.started, sale.sold_out and sale.cancelled were written
-- by a job afterwards: a late job put a sale's first purchase before its start, and a parked
-- job left a receiver without its cancel.
--
-- Lock order everywhere: the sale row, then sale_events. Every caller below already holds
-- the sale row (a purchase or confirm moved its counters, admission locked it, a cancel or
-- archive updated it), and the state job locks it before it records (store/sales.rs), so a
-- state is recorded once (sale_events_once) without two writers waiting on each other.

-- Records that the sale has started, once, dated at its start.
CREATE FUNCTION outbox_record_started(p_sale uuid) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM sale_events WHERE sale_id = p_sale AND state = 'active') THEN
        INSERT INTO sale_events (sale_id, state, occurred_at)
        SELECT id, 'active', starts_at FROM sales WHERE id = p_sale
        ON CONFLICT ON CONSTRAINT sale_events_once DO NOTHING;
    END IF;
END $$;

-- purchase.created as before, with sale.started before the sale's first purchase and
-- sale.sold_out after the purchase that took the last unit (instantly or by a confirm).
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
                              'checkout', n.checkout)
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

-- hold.* as before, with sale.started before the sale's first hold.
CREATE OR REPLACE FUNCTION outbox_holds() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM after_rows WHERE status IN ('held', 'expired', 'left')) THEN
        RETURN NULL;
    END IF;
    PERFORM outbox_record_started(sale_id)
       FROM (SELECT DISTINCT sale_id FROM after_rows WHERE status = 'held') h;
    WITH changed AS (
        SELECT n.sale_id, n.user_id, n.ticket, n.hold_expires_at,
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
           jsonb_build_object('userId', w.user_id, 'holdExpiresAt', w.hold_expires_at)
      FROM wanted w JOIN numbered n ON n.id = w.sale_id;
    RETURN NULL;
END $$;
