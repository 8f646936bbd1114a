-- Retention never outruns a reader (see store/events.rs, prune_events).
--
-- A delivery keeps its event: the key no longer cascades, so no prune (or anything else)
-- can remove a delivery row with its event; the prune skips events any delivery names.
ALTER TABLE webhook_deliveries
    DROP CONSTRAINT webhook_deliveries_event_tx_sale_id_sequence_fkey,
    ADD CONSTRAINT webhook_deliveries_event_fkey FOREIGN KEY (event_tx, sale_id, sequence)
        REFERENCES events (feed_tx, sale_id, sequence) ON DELETE RESTRICT;

-- The furthest feed position of any pruned event (one row): a feed or stream cursor before
-- it would skip what was pruned, so it is answered 410 CURSOR_EXPIRED with this position,
-- the oldest cursor still complete.
CREATE TABLE feed_pruned_through (
    only_row   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    feed_tx    bigint  NOT NULL,
    sale_id    uuid    NOT NULL,
    sequence   bigint  NOT NULL
);
