//! The head of a queue that admission takes (see `Store::admit` for the statement around
//! it): `head` is the entries that may be admitted now, in ticket order, locked with SKIP
//! LOCKED; the statement then admits them while the running sum of their units fits in the
//! room. Parameters: `$1` the sale, `$2` the room (units), `$4` the last ticket dealt,
//! `$5` the sale's units unsold (available and held).

/// A sale without variants: the first `$2` waiting entries (each asks for one unit at
/// least) that could ever be served (`quantity <= $5`; one that asks for more than is
/// unsold can never be, and is passed over rather than holding back everyone behind it).
pub(super) const HEAD: &str = "head AS (
        SELECT ctid AS row_id, ticket, quantity FROM queue_entries
         WHERE sale_id = $1 AND status = 'queued' AND ticket <= $4 AND quantity <= $5
         ORDER BY ticket LIMIT $2
           FOR UPDATE SKIP LOCKED
    )";

/// A sale with variants: each variant's own line, in ticket order. `variants` locks the
/// sale's variant rows FOR NO KEY UPDATE in position order, after the sale row (locked by
/// the statement before, in the same transaction): the lock order of every writer of a
/// variant, and, since each such writer holds the sale row to its commit, their latest
/// committed counters. Per variant, at most its `available` entries are looked at (each
/// asks for a unit at least), only those that could ever be served by it (`quantity <=
/// available + held` of the variant), and of those the ones whose running sum of units, in
/// ticket order, fits in the variant's `available`: strictly in ticket order within a
/// variant, as in a sale without variants, while a variant with nothing free holds back
/// nobody in another variant's line. The statement's own running sum then keeps the whole
/// within the room (the batch and the cap on live holds). The entries' units move between
/// the variant's counters by the `queue_entries_variant_counters` trigger (see the
/// `variant_holds` migration), in the same statement, under these locks: a variant never
/// grants more than it has available.
pub(super) const VARIANT_HEAD: &str = "variants AS MATERIALIZED (
        SELECT code, available, held FROM sale_variants
         WHERE sale_id = $1 ORDER BY position
           FOR NO KEY UPDATE
    ), lines AS (
        SELECT h.row_id, h.ticket, h.quantity,
               sum(h.quantity) OVER (PARTITION BY v.code ORDER BY h.ticket) AS through,
               v.available
          FROM variants v CROSS JOIN LATERAL (
               SELECT e.ctid AS row_id, e.ticket, e.quantity FROM queue_entries e
                WHERE e.sale_id = $1 AND e.status = 'queued' AND e.variant = v.code
                  AND e.ticket <= $4 AND e.quantity <= v.available + v.held
                ORDER BY e.ticket LIMIT LEAST(v.available, $2)
                  FOR UPDATE SKIP LOCKED
          ) h
    ), head AS (
        SELECT row_id, ticket, quantity FROM lines WHERE through <= available
    )";
