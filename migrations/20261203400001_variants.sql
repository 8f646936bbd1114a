-- Variants (issue 21, item 2): sizes in one drop. A sale may be created with variants, each
-- with its own stock and counters; the sale row keeps the totals, which every statement that
-- moves a variant's units moves in the same statement, so `sales_counters_balance` still
-- holds for the sale and `sale_variants_balance` for each variant, at every commit.
--
-- Locks: every statement that moves a variant's counters holds the sale row FOR NO KEY
-- UPDATE first (or the UPDATE of its totals), then the variant rows it moves, in position
-- order: one order of locks everywhere (no deadlock), and no two writers of one sale's
-- variants at once.
--
-- Rollouts: the previous release neither reads nor writes variants. It would sell a sale
-- with variants from its totals without naming a variant (and so leave the variants'
-- counters behind the sale's): create sales with variants only once every instance runs this
-- release. Every column here is nullable or has a constant default (no rewrite).
SET LOCAL lock_timeout = '5s';

CREATE TABLE sale_variants (
    sale_id    uuid     NOT NULL REFERENCES sales (id) ON DELETE CASCADE,
    -- 1, 2, 3 ... in the order the admin gave them: the lock order, and the array index the
    -- group-commit statement keeps each variant's units under.
    position   smallint NOT NULL CHECK (position BETWEEN 1 AND 100),
    code       text     NOT NULL CHECK (char_length(code) BETWEEN 1 AND 32),
    stock      integer  NOT NULL CHECK (stock BETWEEN 1 AND 10000000),
    available  integer  NOT NULL CHECK (available >= 0),
    held       integer  NOT NULL DEFAULT 0 CHECK (held >= 0),
    sold       integer  NOT NULL DEFAULT 0 CHECK (sold >= 0),
    PRIMARY KEY (sale_id, position),
    CONSTRAINT sale_variants_code UNIQUE (sale_id, code),
    CONSTRAINT sale_variants_balance CHECK (sold + held + available = stock)
);

-- The variant an order bought or a hold reserves: NULL in a sale without variants.
ALTER TABLE purchases ADD COLUMN variant text;
ALTER TABLE queue_entries ADD COLUMN variant text;

-- purchase.created carries the order's variant (when it has one).
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
               || CASE WHEN b.variant IS NULL THEN '{}'::jsonb
                       ELSE jsonb_build_object('variant', b.variant) END
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

-- hold.* carry the hold's variant (when it has one).
CREATE OR REPLACE FUNCTION outbox_holds() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM after_rows WHERE status IN ('held', 'expired', 'left')) THEN
        RETURN NULL;
    END IF;
    PERFORM outbox_record_started(sale_id)
       FROM (SELECT DISTINCT sale_id FROM after_rows WHERE status = 'held') h;
    WITH changed AS (
        SELECT n.sale_id, n.user_id, n.ticket, n.hold_expires_at, n.quantity, n.variant,
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
               || CASE WHEN w.variant IS NULL THEN '{}'::jsonb
                       ELSE jsonb_build_object('variant', w.variant) END
      FROM wanted w JOIN numbered n ON n.id = w.sale_id;
    RETURN NULL;
END $$;
