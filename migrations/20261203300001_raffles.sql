-- Raffles (issue 21, item 4): a sale with `checkout = 'raffle'` takes entries during its
-- window; at `ends_at` the entrants are ranked by md5(draw_seed || user_id) (then user_id in
-- byte order, as the queue's pre-queue draw), and holds go to them in that order until the
-- stock is gone or the list runs out. See store/raffle*.rs for every statement's argument.
--
-- Rollouts: the previous release reads an unknown checkout as `instant` (and its purchase
-- statements sell only `checkout = 'instant'`, so it sells nothing of a raffle); create
-- raffles once every instance runs this release.
SET LOCAL lock_timeout = '5s';

-- The sales table is small (one row per sale): the new CHECK is validated at once.
ALTER TABLE sales DROP CONSTRAINT sales_checkout_check,
    ADD CONSTRAINT sales_checkout_check CHECK (checkout IN ('instant', 'queued', 'raffle'));

-- The new types are a superset of the old: every row already satisfies the new CHECK, so it
-- is added NOT VALID (no scan of the event table under its lock).
ALTER TABLE events DROP CONSTRAINT events_type_check,
    ADD CONSTRAINT events_type_check CHECK (type IN (
        'purchase.created', 'hold.granted', 'hold.expired', 'hold.released',
        'sale.started', 'sale.sold_out', 'sale.ended', 'sale.cancelled', 'sale.archived',
        'sale.allowlist_changed', 'raffle.entered', 'raffle.withdrawn', 'raffle.drawn', 'raffle.selected',
        'raffle.expired', 'raffle.not_selected')) NOT VALID;

-- One row per raffle: the seed (drawn at creation, shown once the draw has begun) and where
-- the draw stands. Entering never touches it (no counter moves per entry).
CREATE TABLE sale_raffles (
    sale_id          uuid        PRIMARY KEY REFERENCES sales (id) ON DELETE CASCADE,
    draw_seed        bigint      NOT NULL,
    -- Entries closed and the draw begun (the first slice's transaction, at or after ends_at).
    draw_started_at  timestamptz,
    -- Entrants ranked so far; the last one ranked (the next slice starts after it).
    drawn            bigint      NOT NULL DEFAULT 0,
    draw_after_key   bytea       NOT NULL DEFAULT '\x',
    draw_after_user  text        NOT NULL DEFAULT '',
    -- The last slice ranked: `entrants` is the number drawn.
    drawn_at         timestamptz,
    entrants         integer,
    -- Nothing is left to do: no entrant waits and no hold is live.
    finished_at      timestamptz
);

CREATE TABLE raffle_entries (
    sale_id          uuid        NOT NULL REFERENCES sales (id) ON DELETE CASCADE,
    user_id          text        NOT NULL CHECK (char_length(user_id) BETWEEN 1 AND 128),
    quantity         integer     NOT NULL CHECK (quantity BETWEEN 1 AND 100),
    status           text        NOT NULL CHECK (status IN (
                         'entered', 'selected', 'purchased', 'expired', 'not_selected',
                         'withdrawn')),
    -- md5(draw_seed || user_id) as bytes, written at entry (ordered like the hex text).
    draw_key         bytea       NOT NULL,
    -- 1, 2, 3... in draw order, dealt by the draw's slices.
    draw_position    bigint,
    entered_at       timestamptz NOT NULL DEFAULT now(),
    selected_at      timestamptz,
    hold_expires_at  timestamptz,
    finished_at      timestamptz,
    PRIMARY KEY (sale_id, user_id),
    CONSTRAINT raffle_entries_hold_has_expiry
        CHECK (status <> 'selected' OR hold_expires_at IS NOT NULL),
    CONSTRAINT raffle_entries_selected_were_drawn
        CHECK (status NOT IN ('selected', 'purchased', 'expired') OR draw_position IS NOT NULL)
);
-- The draw's next slice: the entrants not ranked yet, in draw order.
CREATE INDEX raffle_entries_undrawn ON raffle_entries (sale_id, draw_key, user_id COLLATE "C")
    WHERE draw_position IS NULL AND status = 'entered';
-- Selection: the ranked entrants still waiting, in draw order.
CREATE INDEX raffle_entries_waiting ON raffle_entries (sale_id, draw_position)
    WHERE status = 'entered' AND draw_position IS NOT NULL;
-- Expiry: the live holds, oldest first.
CREATE INDEX raffle_entries_holds ON raffle_entries (sale_id, hold_expires_at)
    WHERE status = 'selected';

-- At most one pending raffle tick per sale (as for queue ticks).
CREATE UNIQUE INDEX jobs_one_pending_raffle_tick ON jobs (sale_id)
    WHERE kind = 'raffle_tick' AND lock_token IS NULL AND dead_at IS NULL;

-- Numbers `n` new events of a sale under its row lock (see the outbox migration) and
-- returns the feed position and the number before the first; the caller inserts them.
CREATE FUNCTION outbox_number(p_sale uuid, n bigint, OUT feed_tx bigint, OUT sku text,
                              OUT base bigint) LANGUAGE sql AS $$
    UPDATE sales s SET last_event_sequence = s.last_event_sequence + n,
                       last_event_tx = GREATEST(s.last_event_tx, pg_current_xact_id()::text::bigint)
     WHERE s.id = p_sale
    RETURNING s.last_event_tx, s.sku, s.last_event_sequence - n
$$;

-- raffle.entered: one per new entry. Every statement that inserts entries holds the sale
-- row's lock already (store/raffle_enter.rs), so the numbering waits for nobody.
CREATE FUNCTION outbox_raffle_entered() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    sale record;
    numbered record;
BEGIN
    FOR sale IN SELECT sale_id, count(*) AS n FROM entered GROUP BY sale_id LOOP
        PERFORM outbox_record_started(sale.sale_id);
        SELECT * INTO numbered FROM outbox_number(sale.sale_id, sale.n);
        INSERT INTO events (feed_tx, sale_id, sequence, type, sale_sku, occurred_at, data)
        SELECT numbered.feed_tx, e.sale_id,
               numbered.base + row_number() OVER (ORDER BY e.entered_at, e.user_id COLLATE "C"),
               'raffle.entered', numbered.sku, e.entered_at,
               jsonb_build_object('userId', e.user_id, 'quantity', e.quantity)
          FROM entered e WHERE e.sale_id = sale.sale_id;
    END LOOP;
    RETURN NULL;
END $$;

CREATE TRIGGER raffle_entries_entered AFTER INSERT ON raffle_entries
    REFERENCING NEW TABLE AS entered
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_raffle_entered();

-- raffle.selected, raffle.expired, raffle.withdrawn and raffle.not_selected: one per entry
-- whose status changed. A confirm (selected -> purchased) is reported by its
-- purchase.created. The draw's slices only rank entries (no status changes): they skip the
-- transition tables' join.
CREATE FUNCTION outbox_raffle_changes() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    sale record;
    numbered record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM after_rows WHERE status IN ('selected', 'expired', 'withdrawn',
                                                             'not_selected')) THEN
        RETURN NULL;
    END IF;
    FOR sale IN
        SELECT n.sale_id, count(*) AS n
          FROM after_rows n JOIN before_rows o ON o.sale_id = n.sale_id AND o.user_id = n.user_id
         WHERE o.status IS DISTINCT FROM n.status
           AND n.status IN ('selected', 'expired', 'withdrawn', 'not_selected')
         GROUP BY n.sale_id
    LOOP
        SELECT * INTO numbered FROM outbox_number(sale.sale_id, sale.n);
        INSERT INTO events (feed_tx, sale_id, sequence, type, sale_sku, data)
        SELECT numbered.feed_tx, n.sale_id,
               numbered.base + row_number() OVER (ORDER BY n.draw_position NULLS LAST,
                                                           n.user_id COLLATE "C"),
               'raffle.' || n.status, numbered.sku,
               jsonb_strip_nulls(jsonb_build_object(
                   'userId', n.user_id, 'quantity', n.quantity, 'drawPosition', n.draw_position,
                   'holdExpiresAt', n.hold_expires_at))
          FROM after_rows n JOIN before_rows o ON o.sale_id = n.sale_id AND o.user_id = n.user_id
         WHERE n.sale_id = sale.sale_id AND o.status IS DISTINCT FROM n.status
           AND n.status IN ('selected', 'expired', 'withdrawn', 'not_selected');
    END LOOP;
    RETURN NULL;
END $$;

CREATE TRIGGER raffle_entries_changed AFTER UPDATE ON raffle_entries
    REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_raffle_changes();

-- raffle.drawn: once, when the draw's last slice is ranked, with the seed and the count.
CREATE FUNCTION outbox_raffle_drawn() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    numbered record;
BEGIN
    SELECT * INTO numbered FROM outbox_number(NEW.sale_id, 1);
    INSERT INTO events (feed_tx, sale_id, sequence, type, sale_sku, occurred_at, data)
    VALUES (numbered.feed_tx, NEW.sale_id, numbered.base + 1, 'raffle.drawn', numbered.sku,
            NEW.drawn_at,
            jsonb_build_object('drawSeed', NEW.draw_seed::text, 'entrants', NEW.entrants));
    RETURN NULL;
END $$;

CREATE TRIGGER sale_raffles_drawn AFTER UPDATE OF drawn_at ON sale_raffles
    FOR EACH ROW WHEN (OLD.drawn_at IS NULL AND NEW.drawn_at IS NOT NULL)
    EXECUTE FUNCTION outbox_raffle_drawn();
