-- Variants in the queued checkout (issue 21, item 2): an entry names the variant its hold
-- reserves (`queue_entries.variant`, added by the previous migration), and the variant's
-- counters move with the entry's status, exactly as the sale's do.
--
-- The sale's counters are moved by the statements that change an entry's status (admission,
-- expiry, release, confirm: see store/queue*.rs). The variant's move here, in an AFTER
-- statement trigger on the same UPDATE, so no path that moves a hold can forget them:
-- queued -> held takes the units from the variant's `available` to its `held`; held ->
-- expired or left gives them back; held -> purchased moves them to `sold`. The trigger
-- first locks the sale rows it touches (FOR NO KEY UPDATE; a no-op where the statement's
-- transaction holds them already), then updates the variants: the lock order of every writer
-- of a variant (sale row, then variant rows), so no deadlock, and since every such writer
-- holds the sale row to its commit, one transaction at a time moves a sale's variants, on
-- their latest committed values. `sale_variants_balance` and the CHECKs (>= 0) hold at
-- every commit; admission (store/queue_tick.rs) never grants more of a variant than it has
-- available, so the CHECK is a backstop, not the decision.
SET LOCAL lock_timeout = '5s';

-- One function for every kind of hold (queue entries here, raffle entries in the next
-- migration), told its statuses by the trigger's arguments: the waiting status, the hold's,
-- and the two that give a hold's units back (a hold that becomes `purchased` sells them).
CREATE FUNCTION variant_hold_counters() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    waiting  text := TG_ARGV[0];
    holding  text := TG_ARGV[1];
    returned text[] := ARRAY[TG_ARGV[2], TG_ARGV[3]];
BEGIN
    -- Only a change that moves units touches the sale row: a rejoin, a leave from the
    -- line or a draw slice moves none, and runs under the queue row's lock, which
    -- admission, cancel and archive take after the sale row's (taking the sale row here
    -- too would deadlock with them). First a scan of the new rows alone: a draw slice of
    -- 10,000 tickets leaves them all waiting and costs no join.
    IF NOT EXISTS (SELECT 1 FROM after_rows
                    WHERE variant IS NOT NULL
                      AND (status = holding OR status = 'purchased' OR status = ANY(returned))) THEN
        RETURN NULL;
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM after_rows n JOIN before_rows o ON o.sale_id = n.sale_id AND o.user_id = n.user_id
         WHERE n.variant IS NOT NULL
           AND ((o.status = waiting AND n.status = holding)
                OR (o.status = holding AND (n.status = 'purchased' OR n.status = ANY(returned))))
    ) THEN
        RETURN NULL;
    END IF;
    PERFORM 1 FROM sales
      WHERE id IN (SELECT sale_id FROM after_rows WHERE variant IS NOT NULL)
      ORDER BY id
        FOR NO KEY UPDATE;
    WITH moves AS (
        SELECT n.sale_id, n.variant,
               COALESCE(sum(n.quantity) FILTER (WHERE o.status = waiting AND n.status = holding), 0) AS granted,
               COALESCE(sum(n.quantity) FILTER (WHERE o.status = holding AND n.status = ANY(returned)), 0) AS given_back,
               COALESCE(sum(n.quantity) FILTER (WHERE o.status = holding AND n.status = 'purchased'), 0) AS bought
          FROM after_rows n JOIN before_rows o ON o.sale_id = n.sale_id AND o.user_id = n.user_id
         WHERE n.variant IS NOT NULL AND o.status IS DISTINCT FROM n.status
         GROUP BY n.sale_id, n.variant
    )
    UPDATE sale_variants v
       SET available = v.available - m.granted + m.given_back,
           held = v.held + m.granted - m.given_back - m.bought,
           sold = v.sold + m.bought
      FROM moves m
     WHERE v.sale_id = m.sale_id AND v.code = m.variant
       AND (m.granted <> 0 OR m.given_back <> 0 OR m.bought <> 0);
    RETURN NULL;
END $$;

CREATE TRIGGER queue_entries_variant_counters AFTER UPDATE ON queue_entries
    REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
    FOR EACH STATEMENT EXECUTE FUNCTION variant_hold_counters('queued', 'held', 'expired', 'left');

-- Admission takes each variant's head in ticket order (store/queue_tick.rs): one range scan
-- per variant. Partial: sales without variants (variant NULL) cost it nothing.
CREATE INDEX queue_entries_variant_head ON queue_entries (sale_id, variant, ticket)
    WHERE status = 'queued' AND variant IS NOT NULL;
