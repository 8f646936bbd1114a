-- The waiting room's door for a real opening (100,000 buyers in line within seconds).
--
-- Joins are group-committed (store/join_batch.rs): one lock of the queue row and one commit
-- per batch of buyers, so the queue row is no longer held through each buyer's own WAL
-- flush.
--
-- The pre-queue is no longer rewritten in one statement at the opening. A buyer who joins
-- before the opening takes no ticket: the entry carries its place in the draw instead,
-- `draw_key` = md5(shuffle_seed || user_id) as bytes (ordered like the hex text, so the
-- replay rule is unchanged: md5(seed || user_id), then user_id, byte order). At the opening
-- the tick deals tickets 1, 2, 3... in that order, a bounded slice per statement
-- (`drawn` counts the tickets dealt so far), and admits up to the tickets already dealt
-- while the rest are drawn. `prequeue_size` is set when the last slice is dealt.
ALTER TABLE queue_entries ALTER COLUMN ticket DROP NOT NULL,
                          ADD COLUMN draw_key bytea;
-- Where the draw has reached: the last entry dealt, in draw order (before any: the empty
-- key, below every md5).
ALTER TABLE sale_queues ADD COLUMN drawn bigint NOT NULL DEFAULT 0,
                        ADD COLUMN draw_after_key bytea NOT NULL DEFAULT '\x',
                        ADD COLUMN draw_after_user text NOT NULL DEFAULT '';

-- Pre-queued buyers of queues not yet opened give back their arrival tickets and take
-- their place in the draw (the draw ignored the arrival order before too).
UPDATE queue_entries e
   SET ticket = NULL, draw_key = decode(md5(q.shuffle_seed::text || e.user_id), 'hex')
  FROM sale_queues q
 WHERE q.sale_id = e.sale_id AND q.shuffled_at IS NULL AND e.prequeue;

-- Only a pre-queued entry waits without a ticket, and only with its place in the draw.
ALTER TABLE queue_entries ADD CONSTRAINT queue_entries_ticket_or_draw
    CHECK (ticket IS NOT NULL OR (prequeue AND draw_key IS NOT NULL));

-- The next slice of the draw: the undrawn pre-queue in draw order.
CREATE INDEX queue_entries_undrawn ON queue_entries (sale_id, draw_key, user_id COLLATE "C")
    WHERE prequeue AND status = 'queued' AND ticket IS NULL;

-- hold.* events come only from statements that leave entries held, expired or left. The
-- draw rewrites up to a slice of tickets at once and a join batch rejoins up to a batch of
-- buyers, all staying or becoming 'queued': they skip the join of the transition tables
-- (planned as a nested loop, it ran past the statement timeout on a 10,000-ticket slice).
CREATE OR REPLACE FUNCTION outbox_holds() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM after_rows WHERE status IN ('held', 'expired', 'left')) THEN
        RETURN NULL;
    END IF;
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
