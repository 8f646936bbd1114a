-- Variants in raffles (issue 21, item 2): an entry names the variant it would buy; the draw
-- selects, in draw order, each variant's entrants against that variant's units (see
-- store/raffle_tick.rs), and the variant's counters move with the entry's status by the
-- queue holds' trigger function (see the variant_holds migration for the lock-order
-- argument: it locks the sale row before the variant rows, the order of every writer of a
-- variant, and only for a change that moves units): entered -> selected takes the units
-- from the variant's `available` to its `held`; selected -> expired or withdrawn gives them
-- back; selected -> purchased moves them to `sold`.
SET LOCAL lock_timeout = '5s';

ALTER TABLE raffle_entries ADD COLUMN variant text;

CREATE TRIGGER raffle_entries_variant_counters AFTER UPDATE ON raffle_entries
    REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
    FOR EACH STATEMENT EXECUTE FUNCTION
        variant_hold_counters('entered', 'selected', 'expired', 'withdrawn');

-- Selection takes each variant's ranked entrants in draw order: one range scan per variant.
CREATE INDEX raffle_entries_variant_waiting ON raffle_entries (sale_id, variant, draw_position)
    WHERE status = 'entered' AND draw_position IS NOT NULL AND variant IS NOT NULL;
