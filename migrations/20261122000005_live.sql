-- Live status for buyers and consoles: one notification per sale per transaction that
-- writes its events. Each instance LISTENs on one connection and fans the wake-up out to
-- every stream of that sale it serves, so open streams cost no queries of their own.
--
-- The payload is only the sale id: Postgres folds identical notifications of one
-- transaction into one, so a group-commit batch or an admission of a thousand buyers sends
-- one. What changed is read from `events` by sequence (a sale's events commit in sequence
-- order, see 20261122000004_outbox.sql), so a lost or folded notification loses nothing:
-- the next read picks up every event after the last one seen.
CREATE FUNCTION notify_sale_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('flashsale_sale_changes', sale_id::text)
       FROM (SELECT DISTINCT sale_id FROM added) AS changed;
    RETURN NULL;
END $$;

CREATE TRIGGER events_notify AFTER INSERT ON events
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION notify_sale_changes();
