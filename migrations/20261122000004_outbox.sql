-- The transactional outbox: every change a shop must hear about (a purchase, a hold that
-- starts or ends, a state change of a sale) writes its event in the same statement, by the
-- statement triggers below. No code path can commit the change without the event or the
-- event without the change: they are one statement, so one commit or one rollback.
--
-- Each sale numbers its events 1, 2, 3... with no gaps: `sales.last_event_sequence` is
-- advanced by the trigger's UPDATE of the sale row, whose lock is held to the commit, so
-- two transactions never take the same numbers, a rolled-back one gives its numbers back,
-- and a sale's events commit in sequence order.
--
-- The feed orders all events by (feed_tx, sale_id, sequence). `feed_tx` is the writing
-- transaction's id, raised to the sale's previous `feed_tx` when that is larger
-- (`sales.last_event_tx`, also under the row lock). So within a sale the feed order is the
-- sequence (commit) order, and `feed_tx` is never below the writer's own id: once a reader
-- sees every transaction below some id finished, no event can still commit below it (see
-- store/events.rs).
ALTER TABLE sales ADD COLUMN last_event_sequence bigint NOT NULL DEFAULT 0,
                  ADD COLUMN last_event_tx bigint NOT NULL DEFAULT 0;

CREATE TABLE events (
    -- The feed position (see above): at least the writing transaction's id.
    feed_tx      bigint      NOT NULL,
    sale_id      uuid        NOT NULL,
    sequence     bigint      NOT NULL CHECK (sequence >= 1),
    -- Stable across redeliveries: the webhook-id of every delivery of this event.
    id           uuid        NOT NULL DEFAULT gen_random_uuid(),
    type         text        NOT NULL CHECK (type IN (
                     'purchase.created', 'hold.granted', 'hold.expired', 'hold.released',
                     'sale.started', 'sale.sold_out', 'sale.ended', 'sale.cancelled',
                     'sale.archived')),
    -- Copied, so an event stays whole whatever later happens to its sale.
    sale_sku     text        NOT NULL,
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    data         jsonb       NOT NULL,
    PRIMARY KEY (feed_tx, sale_id, sequence)
);
-- One number per event of a sale; also the per-sale reads (feed filter, audit, retention).
-- No index on occurred_at: retention finds the oldest events in feed order (the primary key),
-- which follows time closely enough, and every index costs each purchase an insert.
CREATE UNIQUE INDEX events_sale_sequence ON events (sale_id, sequence);

-- What retention has removed of each sale's events, so the audit can still prove that no
-- event is missing: a sale's events are pruned as a prefix of its sequence.
CREATE TABLE events_pruned (
    sale_id          uuid   PRIMARY KEY,
    through_sequence bigint NOT NULL,
    purchase_events  bigint NOT NULL
);

-- purchase.created: one event per inserted purchase (a statement inserts purchases of one
-- sale only, but the grouping makes several correct too). Every statement that inserts a
-- purchase already holds the sale row's lock (the counters move in it), so the UPDATE here
-- waits for nobody and the numbering is ordered by that lock.
CREATE FUNCTION outbox_purchases() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
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
    RETURN NULL;
END $$;

CREATE TRIGGER purchases_outbox AFTER INSERT ON purchases
    REFERENCING NEW TABLE AS bought
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_purchases();

-- hold.granted (queued -> held), hold.expired (held -> expired: run out, or voided by an
-- archive or cancel) and hold.released (held -> left). A confirm (held -> purchased) is
-- reported by its purchase.created. Statements that change holds lock the entries first
-- and the sale row next (admission, expiry, release, archive), so taking the sale row here
-- keeps that order.
CREATE FUNCTION outbox_holds() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
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

CREATE TRIGGER queue_entries_outbox AFTER UPDATE ON queue_entries
    REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_holds();

-- sale.*: one event per recorded state change. The state log records each change once
-- (sale_events_once), so each event is emitted once whichever runner records it. The
-- counters are read under the sale row's lock, taken by this UPDATE.
CREATE FUNCTION outbox_sale_states() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH changed AS (
        SELECT r.id AS log_id, r.sale_id, r.occurred_at,
               CASE WHEN r.state = 'active' THEN 'sale.started'
                    WHEN r.state = 'archived' THEN 'sale.archived'
                    WHEN r.reason = 'sold_out' THEN 'sale.sold_out'
                    WHEN r.reason = 'cancelled' THEN 'sale.cancelled'
                    ELSE 'sale.ended'
               END AS type
          FROM recorded r
    ), per_sale AS (
        SELECT sale_id, count(*) AS n FROM changed GROUP BY sale_id
    ), numbered AS (
        UPDATE sales s SET last_event_sequence = s.last_event_sequence + p.n,
                           last_event_tx = GREATEST(s.last_event_tx,
                                                    pg_current_xact_id()::text::bigint)
          FROM per_sale p WHERE s.id = p.sale_id
        RETURNING s.id, s.last_event_tx AS feed_tx, s.sku, s.stock, s.sold, s.held, s.available,
                  s.last_event_sequence - p.n AS base
    )
    INSERT INTO events (feed_tx, sale_id, sequence, type, sale_sku, occurred_at, data)
    SELECT n.feed_tx, c.sale_id,
           n.base + row_number() OVER (PARTITION BY c.sale_id ORDER BY c.log_id),
           c.type, n.sku, c.occurred_at,
           jsonb_build_object('stock', n.stock, 'sold', n.sold, 'held', n.held,
                              'available', n.available)
      FROM changed c JOIN numbered n ON n.id = c.sale_id;
    RETURN NULL;
END $$;

CREATE TRIGGER sale_events_outbox AFTER INSERT ON sale_events
    REFERENCING NEW TABLE AS recorded
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_sale_states();

-- Webhook endpoints. The secret signs deliveries (Standard Webhooks, `whsec_` + base64); it
-- is shown once, when created or rotated. After a rotation the previous secret also signs
-- until `previous_secret_until`, so a receiver can switch without losing a delivery.
CREATE TABLE webhook_endpoints (
    id                     uuid        PRIMARY KEY,
    url                    text        NOT NULL CHECK (char_length(url) BETWEEN 1 AND 2048),
    -- NULL: every type.
    event_types            text[],
    -- NULL: every sale. No foreign key: a filter, and it may name an archived sale.
    sale_id                uuid,
    secret                 text        NOT NULL,
    previous_secret        text,
    previous_secret_until  timestamptz,
    -- How far fan-out has read the feed (the feed's cursor, see store/events.rs).
    cursor_tx              bigint      NOT NULL,
    cursor_sale            uuid        NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000',
    cursor_sequence        bigint      NOT NULL DEFAULT 0,
    created_at             timestamptz NOT NULL DEFAULT now()
);

-- One row per (endpoint, event): claimed with a lease like a job, sent outside any
-- transaction, then marked delivered, retried later, or failed once `retry_until` passes.
CREATE TABLE webhook_deliveries (
    id               bigserial   PRIMARY KEY,
    endpoint_id      uuid        NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_tx         bigint      NOT NULL,
    sale_id          uuid        NOT NULL,
    sequence         bigint      NOT NULL,
    status           text        NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    retry_until      timestamptz NOT NULL,
    locked_until     timestamptz,
    lock_token       uuid,
    last_status      integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    FOREIGN KEY (event_tx, sale_id, sequence)
        REFERENCES events (feed_tx, sale_id, sequence) ON DELETE CASCADE,
    CONSTRAINT webhook_deliveries_once UNIQUE (endpoint_id, sale_id, sequence)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (endpoint_id, next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (finished_at)
    WHERE status <> 'pending';
CREATE INDEX webhook_deliveries_failed ON webhook_deliveries (id) WHERE status = 'failed';
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_tx, sale_id, sequence);

-- At most one pending retention job.
CREATE UNIQUE INDEX jobs_one_pending_prune ON jobs (kind)
    WHERE kind = 'prune_events' AND lock_token IS NULL AND dead_at IS NULL;

-- Purchases made before the outbox existed have no events; they are counted as pruned, so
-- the audit's "one purchase.created per purchase" holds for old sales too.
INSERT INTO events_pruned (sale_id, through_sequence, purchase_events)
SELECT sale_id, 0, count(*) FROM purchases GROUP BY sale_id;
