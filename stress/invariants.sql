-- flashsale invariant checks for one sale, straight from the tables.
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -v sale=my-sku -f stress/invariants.sql
--
-- `sale` is the sale's id (archived sales too) or the sku of a live sale; `-v sku=...` is
-- accepted as well.
--
-- Everything counts units (each order's and each hold's `quantity`), not rows. Checks: the
-- sale exists; units purchased <= stock; every buyer within the sale's per-customer limit
-- (no order above `max_per_order`, each buyer's orders a gapless chain of `units_before`);
-- sold + held + available = stock; no negative counter; `sold` equals the units purchased;
-- `held` equals the units of the live holds (queue holds and raffle selections); the queue length equals the waiting entries;
-- every confirmed hold (a raffle's selections too) has its purchase of the same quantity;
-- a raffle's orders are exactly its purchased entries and its draw positions run 1..n once
-- each; every purchase has its `purchase.created` event (counting those retention
-- pruned); the sale's event sequence runs from 1 (or past the pruned prefix) to the sale's
-- last number with no gap and no repeat; a sale's variants (positions 1..n) each balance, their sold is
-- their purchased units, their sums are the sale's counters, and every order of a sale with
-- variants names one of them.
--
-- Prints each check with PASS/FAIL and the numbers behind it, then raises an error when any
-- check failed, so psql exits non-zero exactly when an invariant is broken. The service's
-- `GET /api/v1/admin/sales/{sale}/audit` runs the statement between the two `flashsale:audit`
-- markers below (the binary embeds this file): one source for both.
\set QUIET on
\if :{?sale}
\elif :{?sku}
  \set sale :sku
\else
  \echo 'usage: psql -v ON_ERROR_STOP=1 -v sale=SALE_ID_OR_SKU -f stress/invariants.sql'
  \quit
\endif
-- Resolve the reference to an id once, as the service does (the nil id matches no sale).
SELECT set_config('flashsale.audit_sale', COALESCE(
           (SELECT id::text FROM sales
             WHERE id::text = lower(:'sale') OR (sku = :'sale' AND archived_at IS NULL)
             ORDER BY id::text = lower(:'sale') DESC LIMIT 1),
           '00000000-0000-0000-0000-000000000000'), false) AS audit_sale \gset
-- No JIT: the statement is large and runs once (see store/audit.rs).
SET jit = off;
CREATE TEMP TABLE flashsale_audit AS
-- flashsale:audit:begin
WITH sale AS (
    SELECT * FROM sales WHERE id = current_setting('flashsale.audit_sale')::uuid
), orders AS (
    SELECT p.user_id, p.quantity, p.units_before, s.per_customer_limit, s.max_per_order,
           COALESCE(sum(p.quantity) OVER (PARTITION BY p.user_id ORDER BY p.units_before
                                          ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
                    0) AS owned_before
      FROM purchases p JOIN sale s ON p.sale_id = s.id
), per_buyer AS (
    SELECT user_id, count(*) AS n, sum(quantity) AS units, max(per_customer_limit) AS lim,
           count(*) FILTER (WHERE quantity > max_per_order) AS orders_too_large,
           count(*) FILTER (WHERE units_before <> owned_before) AS broken_links
      FROM orders GROUP BY user_id
), bought AS (
    SELECT COALESCE(sum(n), 0) AS purchases, COALESCE(sum(units), 0) AS units,
           count(*) AS buyers,
           count(*) FILTER (WHERE units > lim) AS over_limit,
           COALESCE(max(units), 0) AS most_units,
           COALESCE(sum(orders_too_large), 0) AS orders_too_large,
           COALESCE(sum(broken_links), 0) AS broken_links
      FROM per_buyer
), holders AS (
    -- Queue entries and raffle entries alike: a raffle's `selected` is a live hold.
    SELECT q.sale_id, q.user_id, q.status, q.quantity, q.hold_expires_at
      FROM queue_entries q JOIN sale s ON q.sale_id = s.id
    UNION ALL
    SELECT r.sale_id, r.user_id, CASE WHEN r.status = 'selected' THEN 'held' ELSE r.status END,
           r.quantity, r.hold_expires_at
      FROM raffle_entries r JOIN sale s ON r.sale_id = s.id
), entries AS (
    SELECT COALESCE(sum(e.quantity) FILTER (WHERE e.status = 'held'), 0) AS holds,
           count(*) FILTER (WHERE e.status = 'queued') AS queued,
           count(*) FILTER (WHERE e.status = 'purchased') AS confirmed,
           count(*) FILTER (WHERE e.status = 'purchased' AND NOT EXISTS (
               SELECT 1 FROM purchases p WHERE p.sale_id = e.sale_id AND p.user_id = e.user_id
                  AND p.quantity = e.quantity
           )) AS confirmed_without_purchase,
           count(*) FILTER (WHERE e.status = 'held' AND e.hold_expires_at IS NULL) AS holds_without_expiry
      FROM holders e
), raffle AS (
    -- A raffle sells only by confirmed selections: one purchase per purchased entry, and
    -- nobody else buys. The draw ranks each entrant once, 1..n without a gap.
    SELECT count(*) FILTER (WHERE r.status = 'purchased') AS purchased_entries,
           count(DISTINCT r.draw_position) AS positions,
           count(r.draw_position) AS ranked,
           COALESCE(max(r.draw_position), 0) AS last_position
      FROM raffle_entries r JOIN sale s ON r.sale_id = s.id
), queue AS (
    SELECT COALESCE(max(q.waiting), 0) AS waiting FROM sale_queues q JOIN sale s ON q.sale_id = s.id
), pruned AS (
    SELECT COALESCE(max(x.through_sequence), 0) AS through,
           COALESCE(max(x.purchase_events), 0) AS purchase_events
      FROM events_pruned x JOIN sale s ON x.sale_id = s.id
), outbox AS (
    SELECT count(*) FILTER (WHERE v.type = 'purchase.created') AS purchase_events,
           count(*) AS events, count(DISTINCT v.sequence) AS numbers,
           min(v.sequence) AS first, max(v.sequence) AS last
      FROM events v JOIN sale s ON v.sale_id = s.id
), variants AS (
    -- Each variant's counters balance and are never negative, `sold` is its purchased
    -- units, the sale's counters are the variants' sums, and in a sale with variants every
    -- order names one of them (none names one in a sale without).
    SELECT count(*) AS n, COALESCE(max(v.position), 0) AS last_position,
           count(*) FILTER (WHERE v.sold + v.held + v.available <> v.stock
                               OR v.available < 0 OR v.held < 0 OR v.sold < 0) AS unbalanced,
           count(*) FILTER (WHERE v.sold <> COALESCE((
               SELECT sum(p.quantity) FROM purchases p
                WHERE p.sale_id = v.sale_id AND p.variant = v.code), 0)) AS sold_mismatch,
           -- Not through `holders`: a second reference would materialize it (every entry
           -- of a large queue) for all the other checks too.
           count(*) FILTER (WHERE v.held <> COALESCE((
               SELECT sum(q.quantity) FROM queue_entries q
                WHERE q.sale_id = v.sale_id AND q.status = 'held' AND q.variant = v.code), 0)
               + COALESCE((
               SELECT sum(r.quantity) FROM raffle_entries r
                WHERE r.sale_id = v.sale_id AND r.status = 'selected' AND r.variant = v.code), 0))
               AS held_mismatch,
           COALESCE(sum(v.stock), 0) AS stock, COALESCE(sum(v.available), 0) AS available,
           COALESCE(sum(v.held), 0) AS held, COALESCE(sum(v.sold), 0) AS sold
      FROM sale_variants v JOIN sale s ON v.sale_id = s.id
), orders_variants AS (
    SELECT count(*) FILTER (WHERE p.variant IS NULL) AS without,
           count(*) FILTER (WHERE p.variant IS NOT NULL AND NOT EXISTS (
               SELECT 1 FROM sale_variants v WHERE v.sale_id = p.sale_id AND v.code = p.variant
           )) AS unknown,
           count(*) FILTER (WHERE p.variant IS NOT NULL) AS named
      FROM purchases p JOIN sale s ON p.sale_id = s.id
), checks (ord, check_name, passed, detail) AS (
    SELECT 1, 'sale_exists', count(*) = 1, format('sales with id %s: %s',
           current_setting('flashsale.audit_sale'), count(*))
      FROM sale
    UNION ALL
    SELECT 2, 'purchases_within_stock', b.units <= s.stock,
           format('units=%s orders=%s stock=%s', b.units, b.purchases, s.stock)
      FROM sale s, bought b
    UNION ALL
    SELECT 3, 'buyers_within_limit',
           b.over_limit = 0 AND b.orders_too_large = 0 AND b.broken_links = 0,
           format('buyers=%s orders=%s over_limit=%s most_units=%s per_customer_limit=%s '
                  'orders_above_max=%s broken_chain_links=%s', b.buyers, b.purchases,
                  b.over_limit, b.most_units, s.per_customer_limit, b.orders_too_large,
                  b.broken_links)
      FROM sale s, bought b
    UNION ALL
    SELECT 4, 'counters_balance', s.sold + s.held + s.available = s.stock,
           format('sold=%s held=%s available=%s stock=%s', s.sold, s.held, s.available, s.stock)
      FROM sale s
    UNION ALL
    SELECT 5, 'counters_non_negative', s.available >= 0 AND s.held >= 0 AND s.sold >= 0,
           format('available=%s held=%s sold=%s', s.available, s.held, s.sold)
      FROM sale s
    UNION ALL
    SELECT 6, 'sold_matches_purchases', s.sold = b.units,
           format('sold=%s units_purchased=%s orders=%s', s.sold, b.units, b.purchases)
      FROM sale s, bought b
    UNION ALL
    SELECT 7, 'held_matches_live_holds', s.held = e.holds AND e.holds_without_expiry = 0,
           format('held=%s units_of_live_holds=%s holds_without_expiry=%s', s.held, e.holds,
                  e.holds_without_expiry)
      FROM sale s, entries e
    UNION ALL
    SELECT 8, 'queue_length_matches_entries', q.waiting = e.queued,
           format('waiting=%s queued_entries=%s', q.waiting, e.queued)
      FROM sale s, entries e, queue q
    UNION ALL
    SELECT 9, 'confirmed_holds_are_purchases', e.confirmed_without_purchase = 0,
           format('confirmed=%s without_purchase=%s', e.confirmed, e.confirmed_without_purchase)
      FROM sale s, entries e
    UNION ALL
    SELECT 10, 'every_purchase_has_its_event',
           b.purchases = o.purchase_events + p.purchase_events,
           format('purchases=%s purchase_created_events=%s pruned=%s', b.purchases,
                  o.purchase_events, p.purchase_events)
      FROM sale s, bought b, outbox o, pruned p
    UNION ALL
    SELECT 11, 'event_sequence_has_no_gaps',
           o.events = o.numbers AND COALESCE(o.last, p.through) = s.last_event_sequence
               AND (o.events = 0 OR (o.first = p.through + 1 AND o.last - o.first + 1 = o.events)),
           format('events=%s first=%s last=%s sale_last=%s pruned_through=%s', o.events,
                  COALESCE(o.first::text, '-'), COALESCE(o.last::text, '-'),
                  s.last_event_sequence, p.through)
      FROM sale s, outbox o, pruned p
    UNION ALL
    SELECT 12, 'raffle_purchases_are_selections',
           s.checkout <> 'raffle'
               OR (b.purchases = r.purchased_entries AND r.positions = r.ranked
                   AND r.last_position = r.ranked),
           format('checkout=%s orders=%s purchased_entries=%s ranked=%s distinct_positions=%s '
                  'last_position=%s', s.checkout, b.purchases, r.purchased_entries, r.ranked,
                  r.positions, r.last_position)
      FROM sale s, bought b, raffle r
    UNION ALL
    SELECT 13, 'variants_balance_and_sum_to_the_sale',
           CASE WHEN v.n = 0 THEN ov.named = 0
                ELSE v.unbalanced = 0 AND v.sold_mismatch = 0 AND v.held_mismatch = 0
                     AND ov.without = 0
                     AND v.last_position = v.n
                     AND ov.unknown = 0 AND v.stock = s.stock AND v.available = s.available
                     AND v.held = s.held AND v.sold = s.sold END,
           format('variants=%s last_position=%s unbalanced=%s sold_not_purchased=%s '
                  'held_not_live_holds=%s sums(stock=%s available=%s '
                  'held=%s sold=%s) orders_without_variant=%s orders_unknown_variant=%s '
                  'orders_naming_one=%s', v.n, v.last_position, v.unbalanced, v.sold_mismatch,
                  v.held_mismatch, v.stock,
                  v.available, v.held, v.sold, ov.without, ov.unknown, ov.named)
      FROM sale s, variants v, orders_variants ov
)
SELECT check_name, passed, detail FROM checks ORDER BY ord
-- flashsale:audit:end
;
\set QUIET off
SELECT check_name AS "check", CASE WHEN passed THEN 'PASS' ELSE 'FAIL' END AS result, detail
  FROM flashsale_audit;
DO $$
DECLARE
    failed text;
BEGIN
    SELECT string_agg(check_name, ', ') INTO failed FROM flashsale_audit WHERE NOT passed;
    IF failed IS NOT NULL THEN
        RAISE EXCEPTION 'flashsale invariants FAILED for sale %: %',
            current_setting('flashsale.audit_sale'), failed;
    END IF;
    RAISE NOTICE 'flashsale invariants: all PASS for sale %', current_setting('flashsale.audit_sale');
END $$;
