//! The lease-and-token claim, written once for every queue table that has one (`jobs`,
//! `webhook_deliveries`): due rows are picked with `FOR UPDATE SKIP LOCKED`, each is given a
//! lease (`locked_until`), a fresh `lock_token` and one more attempt, and the statement
//! commits on its own. The claimer then works outside any transaction; only the holder of
//! the token may finish the row (`WHERE id = $1 AND lock_token = $2`).
//!
//! Each table says which rows are due, in which order, how many, and what the claim
//! returns; this module writes the statement around them. It owns no table and runs no SQL.

/// One class of due rows a claim picks, with its own limit, so that a backlog of one class
/// never crowds out another (the job queue picks queue ticks and other jobs apart).
pub(super) struct Pick<'a> {
    /// The CTE's name.
    pub name: &'a str,
    /// Which rows are due (a lease in force is added here: never write it).
    pub due: &'a str,
    pub order_by: &'a str,
    /// How many at most: a parameter such as `$2`.
    pub limit: &'a str,
}

/// A claim on `table`: the picks, the lease's length in seconds (a parameter), and what the
/// claimed rows return, as columns of `claimed` (the updated rows, alias `c`).
pub(super) struct Claim<'a> {
    pub table: &'a str,
    pub picks: &'a [Pick<'a>],
    pub lease_secs: &'a str,
    pub returning: &'a str,
}

impl Claim<'_> {
    /// The statement: `WITH <picks>, claimed AS (UPDATE ... RETURNING <returning>)` followed
    /// by `then`, the query that reads `claimed` (at least `SELECT * FROM claimed`).
    ///
    /// Race-free under READ COMMITTED with any number of claimers: each pick locks the rows
    /// it returns `FOR UPDATE SKIP LOCKED`, so a row locked by another claim in flight is
    /// skipped, never waited for and never taken twice; a row whose claim committed after
    /// this statement's snapshot is re-checked on its newest version when it is locked, and
    /// that version's lease (in the future) fails the `locked_until` filter. The UPDATE then
    /// changes only rows this statement holds locked, and the lease it writes hides them
    /// from every later claim until it runs out; the new token makes any earlier holder's
    /// finish (or heartbeat) match nothing. The statement is its own transaction: no lock is
    /// held while the claimed work runs.
    pub fn sql(&self, then: &str) -> String {
        let Claim {
            table,
            picks,
            lease_secs,
            returning,
        } = self;
        let mut ctes: Vec<String> = picks
            .iter()
            .map(|pick| {
                format!(
                    "{name} AS (
                 SELECT id FROM {table}
                  WHERE {due}
                    AND (locked_until IS NULL OR locked_until < now())
                  ORDER BY {order_by}
                  LIMIT {limit}
                  FOR UPDATE SKIP LOCKED
             )",
                    name = pick.name,
                    due = pick.due,
                    order_by = pick.order_by,
                    limit = pick.limit,
                )
            })
            .collect();
        let due = picks
            .iter()
            .map(|pick| format!("SELECT id FROM {}", pick.name))
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        ctes.push(format!(
            "claimed AS (
                 UPDATE {table} c
                    SET locked_until = now() + make_interval(secs => {lease_secs}),
                        lock_token = gen_random_uuid(), attempts = c.attempts + 1
                   FROM ({due}) due WHERE c.id = due.id
                 RETURNING {returning}
             )"
        ));
        format!("WITH {}\n             {then}", ctes.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pick_skips_locked_rows_and_leased_ones() {
        let sql = Claim {
            table: "jobs",
            picks: &[
                Pick {
                    name: "ticks",
                    due: "kind = 'queue_tick'",
                    order_by: "run_at, id",
                    limit: "$1",
                },
                Pick {
                    name: "others",
                    due: "kind <> 'queue_tick'",
                    order_by: "run_at, id",
                    limit: "$2",
                },
            ],
            lease_secs: "$3",
            returning: "c.id",
        }
        .sql("SELECT id FROM claimed");
        assert_eq!(sql.matches("FOR UPDATE SKIP LOCKED").count(), 2, "{sql}");
        assert_eq!(sql.matches("locked_until < now()").count(), 2, "{sql}");
        assert!(
            sql.contains("FROM (SELECT id FROM ticks UNION ALL SELECT id FROM others) due"),
            "{sql}"
        );
        assert!(sql.ends_with("SELECT id FROM claimed"), "{sql}");
    }
}
