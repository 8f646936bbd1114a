//! The entrants a raffle's selection takes (see `Store::select_entrants` for the statement
//! around it): `head` is the ranked entrants who may be selected now, in draw order, locked
//! with SKIP LOCKED; the statement then selects them while the running sum of their units
//! fits in the room. Parameters: `$1` the sale, `$2` the room (units), `$4` the sale's
//! units unsold (available and held).

/// A raffle without variants: the first `$2` waiting ranked entrants (each asks for a unit
/// at least) that could ever be served (`quantity <= $4`: one asking for more than is
/// unsold can never be, and is filtered before the `LIMIT`, so it holds back nobody).
pub(super) const RAFFLE_HEAD: &str = "head AS (
        SELECT ctid AS row_id, draw_position, quantity FROM raffle_entries
         WHERE sale_id = $1 AND status = 'entered' AND draw_position IS NOT NULL
           AND quantity <= $4
         ORDER BY draw_position LIMIT $2
           FOR UPDATE SKIP LOCKED
    )";

/// A raffle with variants: each variant's ranked entrants in draw order, against that
/// variant's units, as the queue's admission does (see `queue_tick/heads.rs`): the variant
/// rows locked FOR NO KEY UPDATE after the sale row (the lock order of every writer of a
/// variant; their latest committed counters), at most `available` entrants of a variant
/// looked at, only those it could ever serve, and of those the ones whose running sum in
/// draw order fits in its `available`; the statement's own running sum keeps the whole
/// within the room. The units move between the variant's counters by the
/// `raffle_entries_variant_counters` trigger, in the same statement, under these locks.
pub(super) const RAFFLE_VARIANT_HEAD: &str = "variants AS MATERIALIZED (
        SELECT code, available, held FROM sale_variants
         WHERE sale_id = $1 ORDER BY position
           FOR NO KEY UPDATE
    ), lines AS (
        SELECT h.row_id, h.draw_position, h.quantity,
               sum(h.quantity) OVER (PARTITION BY v.code ORDER BY h.draw_position) AS through,
               v.available
          FROM variants v CROSS JOIN LATERAL (
               SELECT e.ctid AS row_id, e.draw_position, e.quantity FROM raffle_entries e
                WHERE e.sale_id = $1 AND e.status = 'entered' AND e.variant = v.code
                  AND e.draw_position IS NOT NULL AND e.quantity <= v.available + v.held
                ORDER BY e.draw_position LIMIT LEAST(v.available, $2)
                  FOR UPDATE SKIP LOCKED
          ) h
    ), head AS (
        SELECT row_id, draw_position, quantity FROM lines WHERE through <= available
    )";

/// The entrants of a raffle with variants who can never be served: of each variant whose
/// units still to come (available and held) are fewer than `$3` (the sale's `max_per_order`:
/// above it nobody is hopeless, and the variant is not walked), the ranked waiting
/// entrants asking for more than those units, at most `$2` per variant, locked with SKIP
/// LOCKED. Read under the selection's sale-row lock, so the variants' counters are the
/// latest (every writer of a variant holds the sale row).
pub(super) const HOPELESS_OF_VARIANTS: &str = "SELECT e.row_id FROM (
        SELECT code, available + held AS unsold FROM sale_variants
         WHERE sale_id = $1 AND available + held < $3
    ) v CROSS JOIN LATERAL (
        SELECT x.ctid AS row_id FROM raffle_entries x
         WHERE x.sale_id = $1 AND x.status = 'entered' AND x.variant = v.code
           AND x.draw_position IS NOT NULL AND x.quantity > v.unsold
         ORDER BY x.draw_position LIMIT $2
           FOR UPDATE SKIP LOCKED
    ) e";
