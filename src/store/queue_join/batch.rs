//! The statements of a join batch ([`join_batch`]): who may (re)join, tickets, counters,
//! under one lock of the queue row; the front of the door is in [`super`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use uuid::Uuid;

use super::{Ask, JoinOutcome};
use crate::domain::{EntryStatus, QueueEntry, Sale, SaleState};
use crate::store::StoreError;
use crate::store::allowlist::lock_listed;
use crate::store::db::Db;
use crate::store::jobs::enqueue_queue_tick;
use crate::store::purchases::find_purchase;
use crate::store::queue_entry::{ENTRY_SQL_FOR_USERS, EntryRow, queue_counters_sql};
use crate::store::sales::{SALE_COLUMNS, SaleRow};

/// What one batch decided.
#[derive(Debug, Default)]
pub(super) struct JoinBatch {
    pub(super) outcomes: HashMap<String, JoinOutcome>,
    /// False when the sale is archived or gone: a caller who reached it through a cached
    /// reference asks again what the reference names now.
    pub(super) sale_unarchived: bool,
}

/// What the locked queue row says about new waits.
#[derive(sqlx::FromRow)]
struct Door {
    last_ticket: i64,
    waiting: i32,
    /// The pre-queue is closed: set by the first join or tick at or after the start.
    opened: bool,
    shuffle_seed: i64,
}

/// Joins the sale's queue for each of `users` (distinct), in their order, each asking for
/// the units `quantities` says (1 when absent), or returns each one's current entry: one
/// transaction, one lock of the queue row, one commit.
///
/// Race-free under READ COMMITTED, with any number of batches on any number of
/// instances:
/// 1. The entries of this batch's buyers that will be rejoined (`expired`, `left`) are
///    locked first, in user order (`COLLATE "C"`), so a leave or another batch cannot
///    change them under us, and two batches lock in one order (no deadlock). A buyer's
///    own statements lock their entry before the queue row too, and so does the draw.
///    Then, for a sale with an allow-list, the buyers' list rows (FOR KEY SHARE, held to
///    the commit): a buyer off the list is refused, and a removal either committed before
///    (no row: refused) or waits for this commit (see `store/allowlist.rs`).
/// 2. The queue row is locked (FOR UPDATE) and held to the commit. Every statement that
///    inserts an entry or moves `last_ticket` or `waiting` holds it (joins, leaves,
///    admission, the draw's opening), so from here no entry of this sale can be inserted
///    by anyone else, and `waiting` is exact. The sale is read after it, by a statement of
///    its own (a new snapshot): a cancel, an archive and a DELETE lock the queue row after
///    the sale's, so each either committed before this read (and the batch is refused, in
///    SQL terms: it sees `cancelled_at`/`archived_at`) or waits for this commit (and the
///    join came first).
/// 3. The entries of the batch's buyers are read with a snapshot taken after that lock,
///    so every earlier join is seen: the read tells exactly who waits, holds, bought, or
///    may (re)join. No ON CONFLICT is needed, and none can burn a ticket.
/// 4. New waits are accepted in arrival order while `waiting < queue_capacity` on the
///    locked row, so the capacity is never exceeded, and nobody is refused while there
///    is room. Tickets `last_ticket + 1 ...` go to those who join after the opening; a
///    buyer who joins before it takes no ticket, only a place in the seeded draw
///    (`draw_key`). The first join at or after the start closes the pre-queue
///    (`shuffled_at`), under the same lock, so every pre-queued entry is committed
///    before the draw can see the pre-queue closed, and every later join's ticket is
///    above `last_ticket` at the opening, above every ticket the draw deals.
/// 5. A tick is made due in the same transaction when someone joined an open queue, so
///    it cannot run without seeing them.
///
/// `committing` is set just before the COMMIT is sent (see [`decide_joins`]).
pub(super) async fn join_batch(
    conn: &mut Db,
    sale_id: Uuid,
    (users, asks): (&[String], &HashMap<String, Ask>),
    committing: &AtomicBool,
) -> Result<JoinBatch, StoreError> {
    let mut tx = conn.begin().await?;
    sqlx::query(
        // One primary-key probe per buyer, in user order (a nested loop over the sorted
        // buyers; the subquery with its row lock is never flattened). `user_id = ANY($2)`
        // let a planner on statistics older than the crowd scan every entry of the sale
        // instead: 9 ms a batch at 64,000 entries, growing with the queue.
        "SELECT 1 FROM (SELECT u FROM unnest($2::text[]) u ORDER BY u COLLATE \"C\") b(user_id)
          CROSS JOIN LATERAL (
                SELECT 1 FROM queue_entries e
                 WHERE e.sale_id = $1 AND e.user_id = b.user_id
                   AND e.status IN ('expired', 'left')
                   FOR UPDATE) l",
    )
    .bind(sale_id)
    .bind(users)
    .execute(&mut *tx)
    .await?;
    // 1b. An allow-listed sale: the buyers' list rows, locked FOR KEY SHARE in user order
    // (as every writer of many list rows locks them), before the queue row (every writer of
    // the list locks list rows before the sale's or the queue's row: no deadlock), and held
    // to the commit. A removal committed before this statement left no row (the buyer is
    // refused); one that comes later waits for this commit (the join came first). A sale
    // without a list reads none (its `allowlist`, set at creation, never changes).
    let listed = lock_listed(&mut tx, sale_id, users).await?;
    // 2. The queue row, locked to the commit.
    let door: Option<Door> = sqlx::query_as(
        "SELECT last_ticket, waiting, shuffled_at IS NOT NULL AS opened, shuffle_seed
           FROM sale_queues WHERE sale_id = $1
            FOR UPDATE",
    )
    .bind(sale_id)
    .fetch_optional(&mut *tx)
    .await?;
    // The sale, read by a statement that starts after the lock: a cancel or an archive
    // committed while this batch waited for the lock is seen (they take the queue row too,
    // after the sale's, so one that has not committed yet waits for this commit: the join
    // then came first).
    let sale: Option<SaleRow> = match door {
        Some(_) => {
            let sql = format!("SELECT {SALE_COLUMNS} FROM sales WHERE id = $1");
            // Built from constant text only.
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(sale_id)
                .fetch_optional(&mut *tx)
                .await?
        }
        None => None,
    };
    let (Some(door), Some(sale)) = (door, sale) else {
        let outcomes = users
            .iter()
            .map(|user| (user.clone(), JoinOutcome::SaleNotFound))
            .collect();
        return Ok(JoinBatch {
            outcomes,
            sale_unarchived: false,
        });
    };
    let sale = Sale::from(sale);
    let not_listed = |user: &String| sale.allowlist && !listed.contains(user);
    // 3: whoever already has an entry is answered with it (as of this commit).
    let existing: HashMap<String, QueueEntry> = sqlx::query_as::<_, EntryRow>(ENTRY_SQL_FOR_USERS)
        .bind(sale_id)
        .bind(users)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|row| {
            let entry = QueueEntry::from(row);
            (entry.user_id.clone(), entry)
        })
        .collect();

    let mut outcomes: HashMap<String, JoinOutcome> = HashMap::new();
    let refusal = match sale.state() {
        SaleState::Scheduled | SaleState::Active => None,
        SaleState::Ended if sale.is_sold_out() => Some(JoinOutcome::SoldOut),
        state => Some(JoinOutcome::NotActive(state)),
    };
    let mut room = i64::from(sale.queue_capacity) - i64::from(door.waiting);
    let unsold = sale.available + sale.held;
    let variant_unsold = |user: &String| {
        let code = asks.get(user)?.variant.as_deref()?;
        let position = sale.variant_position(code)?;
        sale.variant_at(position).map(|v| v.available + v.held)
    };
    let (mut joining, mut rejoining, mut bought) = (Vec::new(), Vec::new(), Vec::new());
    for user in users {
        let entry = existing.get(user);
        match (entry.map(|entry| entry.status), &refusal) {
            (Some(EntryStatus::Queued | EntryStatus::Held), _) => {
                if let Some(entry) = entry {
                    outcomes.insert(user.clone(), JoinOutcome::of_entry(entry.clone()));
                }
            }
            (Some(EntryStatus::Purchased), _) => bought.push(user.as_str()),
            (_, Some(JoinOutcome::SoldOut)) => {
                outcomes.insert(user.clone(), JoinOutcome::SoldOut);
            }
            // Checked at the join only: an entry already queued or held keeps its place.
            _ if not_listed(user) => {
                outcomes.insert(user.clone(), JoinOutcome::NotEligible);
            }
            (_, Some(refusal)) => {
                outcomes.insert(user.clone(), refusal.clone());
            }
            _ if room <= 0 => {
                outcomes.insert(user.clone(), JoinOutcome::QueueFull);
            }
            // Larger than all that is unsold: its hold could never be granted, so it is
            // refused rather than queued to be passed over. Final: under the queue row's lock
            // the sale was read after it, and units only leave `available + held` (sold).
            // A variant's: the same of its own units (an unknown variant never gets here:
            // the door checked the code against the sale's variants, which never change).
            _ if variant_unsold(user) == Some(0) => {
                outcomes.insert(user.clone(), JoinOutcome::VariantSoldOut);
            }
            _ if asks.get(user).map_or(1, |ask| ask.quantity)
                > variant_unsold(user).unwrap_or(unsold) =>
            {
                let unsold = variant_unsold(user).unwrap_or(unsold);
                outcomes.insert(user.clone(), JoinOutcome::InsufficientStock { unsold });
            }
            (None, None) => {
                room -= 1;
                joining.push(user.as_str());
            }
            (Some(_), None) => {
                room -= 1;
                rejoining.push(user.as_str());
            }
        }
    }
    let accepted = (joining.len() + rejoining.len()) as i64;
    // The database clock (the transaction's) has not reached the start.
    let prequeue = !door.opened && sale.observed_at < sale.starts_at;
    let joined = if accepted > 0 {
        let writes = (joining.as_slice(), rejoining.as_slice(), asks);
        write_joins(&mut tx, sale_id, &door, prequeue, writes).await?
    } else {
        Vec::new()
    };
    if accepted > 0 && !prequeue {
        // The pre-queue needs no wake-up: the tick due at the opening draws it. (Not
        // before the queue row's lock either: the pending tick's slot would then be held
        // while waiting for it, and every release's wake-up would queue behind.)
        enqueue_queue_tick(&mut tx, sale_id, None).await?;
    }
    // Told only after the commit; an unanswered commit leaves the outcome unknown (a
    // retry returns the entry: joining is idempotent).
    committing.store(true, Ordering::Release);
    tx.commit().await.map_err(StoreError::after_write)?;

    for row in joined {
        let entry = QueueEntry::from(row);
        outcomes.insert(entry.user_id.clone(), JoinOutcome::of_entry(entry));
    }
    for user in bought {
        let outcome = match find_purchase(conn, sale_id, user).await? {
            Some(purchase) => JoinOutcome::AlreadyPurchased(purchase),
            None => JoinOutcome::SaleNotFound,
        };
        outcomes.insert(user.to_string(), outcome);
    }
    Ok(JoinBatch {
        outcomes,
        sale_unarchived: sale.archived_at.is_none(),
    })
}

/// Inserts the new entries, rejoins the returning ones, and moves the queue row's counters
/// (closing the pre-queue when the start has come), in one statement under the queue row's
/// lock (see [`join_batch`]); returns the entries with the queue's counters as this
/// statement left them. Tickets follow arrival order within the batch.
async fn write_joins(
    tx: &mut Db,
    sale_id: Uuid,
    door: &Door,
    prequeue: bool,
    (joining, rejoining, asks): (&[&str], &[&str], &HashMap<String, Ask>),
) -> Result<Vec<EntryRow>, StoreError> {
    let users: Vec<&str> = joining.iter().chain(rejoining).copied().collect();
    let units: Vec<i32> = users
        .iter()
        .map(|user| asks.get(*user).map_or(1, |ask| ask.quantity))
        .collect();
    let variants: Vec<Option<&str>> = users
        .iter()
        .map(|user| asks.get(*user).and_then(|ask| ask.variant.as_deref()))
        .collect();
    let rejoin: Vec<bool> = (0..users.len()).map(|i| i >= joining.len()).collect();
    let sql = format!(
        "WITH req AS (
             SELECT r.user_id, r.rejoin, r.quantity, r.variant,
                    CASE WHEN $4 THEN NULL ELSE $3 + r.ord END AS ticket,
                    CASE WHEN $4 THEN decode(md5($5::bigint::text || r.user_id), 'hex') END AS draw_key
               FROM unnest($2::text[], $6::bool[], $8::int[], $9::text[])
                    WITH ORDINALITY AS r(user_id, rejoin, quantity, variant, ord)
         ), joined AS (
             INSERT INTO queue_entries AS e
                    (sale_id, user_id, ticket, draw_key, prequeue, status, quantity, variant)
             SELECT $1, user_id, ticket, draw_key, $4, 'queued', quantity, variant
               FROM req WHERE NOT rejoin
             RETURNING {ENTRY}
         ), rejoined AS (
             UPDATE queue_entries e
                SET ticket = req.ticket, draw_key = req.draw_key, prequeue = $4,
                    status = 'queued', joined_at = now(), admitted_at = NULL,
                    hold_expires_at = NULL, finished_at = NULL, quantity = req.quantity,
                    variant = req.variant
               FROM req
              WHERE req.rejoin AND e.sale_id = $1 AND e.user_id = req.user_id
                AND e.status IN ('expired', 'left')
             RETURNING {ENTRY}
         ), q AS (
             UPDATE sale_queues
                SET last_ticket = last_ticket + $7,
                    waiting = waiting + (SELECT count(*) FROM joined)
                                      + (SELECT count(*) FROM rejoined),
                    shuffled_at = CASE WHEN shuffled_at IS NULL AND NOT $4 THEN now()
                                       ELSE shuffled_at END
              WHERE sale_id = $1
             RETURNING *
         )
         SELECT e.*, {QUEUE_COUNTERS}
           FROM (SELECT * FROM joined UNION ALL SELECT * FROM rejoined) e, q",
        ENTRY = "e.user_id, e.ticket, e.prequeue, e.status, e.joined_at, e.hold_expires_at, \
                 e.quantity, e.variant",
        QUEUE_COUNTERS = queue_counters_sql!()
    );
    // Built from constant text only.
    Ok(sqlx::query_as::<_, EntryRow>(sqlx::AssertSqlSafe(sql))
        .bind(sale_id)
        .bind(&users)
        .bind(door.last_ticket)
        .bind(prequeue)
        .bind(door.shuffle_seed)
        .bind(&rejoin)
        .bind(users.len() as i64)
        .bind(&units)
        .bind(&variants)
        .fetch_all(&mut *tx)
        .await?)
}
