//! Raffles, as entrants use them after entering: read the entry, confirm a selection,
//! withdraw; and the draw's counters for admins. Entering is group-committed in
//! [`super::raffle_enter`]; the draw, expiry and selection are the raffle tick's, in
//! [`super::raffle_tick`].
//!
//! Lock order, as in the waiting room (store/queue.rs): an entrant's statements lock their
//! entry, then the sale row. An entry batch and the draw's close take the sale row alone;
//! selection holds the sale row first and takes entries only with SKIP LOCKED (it never
//! waits on an entrant); expiry locks entries first (SKIP LOCKED) and the sale row after.

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::db::Db;
use super::purchases::{HeldBought, buy_held, find_purchase};
use super::raffle_tick::enqueue_raffle_tick;
use super::{Store, StoreError};
use crate::domain::{Checkout, Purchase, RaffleEntry, RaffleStats, RaffleStatus, Sale, SaleState};

/// The columns of an entry as [`EntryRow`] reads them; `e` is `raffle_entries`, `r` its
/// `sale_raffles` row (the seed is shown once the draw has begun).
pub(super) const ENTRY_COLUMNS: &str = "e.user_id, e.status, e.quantity, e.variant, e.entered_at, \
     e.hold_expires_at, e.draw_position, \
     CASE WHEN r.draw_started_at IS NOT NULL THEN r.draw_seed END AS draw_seed";

#[derive(FromRow)]
pub(super) struct EntryRow {
    user_id: String,
    status: String,
    quantity: i32,
    variant: Option<String>,
    entered_at: DateTime<Utc>,
    hold_expires_at: Option<DateTime<Utc>>,
    draw_position: Option<i64>,
    draw_seed: Option<i64>,
}

impl From<EntryRow> for RaffleEntry {
    fn from(row: EntryRow) -> Self {
        RaffleEntry {
            user_id: row.user_id,
            // The column's CHECK allows only the six statuses.
            status: RaffleStatus::parse(&row.status).unwrap_or(RaffleStatus::Entered),
            quantity: row.quantity,
            variant: row.variant,
            entered_at: row.entered_at,
            hold_expires_at: row.hold_expires_at,
            draw_position: row.draw_position,
            draw_seed: row.draw_seed,
        }
    }
}

/// The result of confirming a selection.
#[derive(Debug)]
pub enum RaffleConfirmOutcome {
    Purchased(Purchase),
    /// The hold ran out (by the database clock) before the confirmation.
    HoldExpired,
    /// Not selected (yet, or ever): `entered`, `not_selected` or `withdrawn`.
    NotSelected(RaffleStatus),
    AlreadyPurchased(Purchase),
    /// The sale was cancelled or archived; the hold is void.
    NotActive(SaleState),
    NotEntered,
    WrongCheckout,
}

/// The result of withdrawing.
#[derive(Debug)]
pub enum WithdrawOutcome {
    /// Withdrawn; `released` when a hold's units went back to stock.
    Withdrawn {
        released: bool,
    },
    /// Nothing to withdraw: the entry is final already (purchased, expired, not selected,
    /// withdrawn).
    Finished(RaffleStatus),
    NotEntered,
    WrongCheckout,
}

impl Store {
    /// The buyer's entry in the raffle `sale_id`.
    pub async fn raffle_entry(
        &self,
        sale_id: Uuid,
        user_id: &str,
    ) -> Result<Option<RaffleEntry>, StoreError> {
        find_entry(&mut self.conn().await?, sale_id, user_id).await
    }

    /// Turns the entrant's live selection into a purchase of its units.
    ///
    /// Race-free under READ COMMITTED, as the queue's confirm: the first UPDATE locks the
    /// entry and decides against the database clock that the hold is live
    /// (`hold_expires_at > now()`); the tick's expiry needs `hold_expires_at <= now()` and
    /// skips entries a confirm has locked, and a withdrawal re-checks the status after the
    /// lock. So a hold is confirmed or returned to stock, never both. The units move from
    /// `held` to `sold` in the same transaction, on the sale row whose `cancelled_at` and
    /// `archived_at` are re-checked under its lock. The sale's window is the entry window:
    /// a confirm after `ends_at` is the normal case.
    pub async fn confirm_selection(
        &self,
        sale: &Sale,
        user_id: &str,
    ) -> Result<RaffleConfirmOutcome, StoreError> {
        if sale.checkout != Checkout::Raffle {
            return Ok(RaffleConfirmOutcome::WrongCheckout);
        }
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        let confirmed: Option<(i32, Option<String>)> = sqlx::query_as(
            "UPDATE raffle_entries SET status = 'purchased', finished_at = now()
              WHERE sale_id = $1 AND user_id = $2 AND status = 'selected'
                AND hold_expires_at > now()
             RETURNING quantity, variant",
        )
        .bind(sale.id)
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((quantity, variant)) = confirmed else {
            tx.rollback().await?;
            return confirm_refusal(&mut conn, sale.id, user_id).await;
        };
        let held = (quantity, variant.as_deref());
        let purchase = match buy_held(&mut tx, sale.id, user_id, held).await? {
            HeldBought::Bought { purchase, sold_out } => {
                if sold_out {
                    // The last unit: the tick tells every entrant still waiting that
                    // their turn will not come (queued in this transaction).
                    enqueue_raffle_tick(&mut tx, sale.id, None).await?;
                }
                purchase
            }
            HeldBought::Refused => {
                tx.rollback().await?;
                return Ok(RaffleConfirmOutcome::NotActive(
                    self.void_state(sale.id).await?,
                ));
            }
        };
        // Sent and unanswered, the commit may or may not have happened: a retry answers
        // ALREADY_PURCHASED or HOLD_EXPIRED, which tells the buyer which.
        tx.commit().await.map_err(StoreError::after_write)?;
        Ok(RaffleConfirmOutcome::Purchased(purchase))
    }

    /// Withdraws an entry: an entrant waiting leaves the draw; a selected entrant's hold
    /// goes back to stock at once and passes on (a tick is queued in the same transaction).
    ///
    /// Race-free under READ COMMITTED: the UPDATE locks the entry and re-checks its status,
    /// so a withdrawal races a confirm, an expiry or a selection like they race each other
    /// (whoever locks the entry first wins; selection skips a locked entry). The units move
    /// from `held` to `available` in the same transaction, entry first, then the sale row.
    pub async fn withdraw_entry(
        &self,
        sale: &Sale,
        user_id: &str,
    ) -> Result<WithdrawOutcome, StoreError> {
        if sale.checkout != Checkout::Raffle {
            return Ok(WithdrawOutcome::WrongCheckout);
        }
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        let before: Option<(String, i32)> = sqlx::query_as(
            "WITH target AS (
                 SELECT status FROM raffle_entries
                  WHERE sale_id = $1 AND user_id = $2 FOR UPDATE
             )
             UPDATE raffle_entries e SET status = 'withdrawn', finished_at = now()
               FROM target
              WHERE e.sale_id = $1 AND e.user_id = $2 AND e.status IN ('entered', 'selected')
             RETURNING target.status, e.quantity",
        )
        .bind(sale.id)
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await?;
        let outcome = match before {
            Some((status, quantity)) if status == RaffleStatus::Selected.as_str() => {
                sqlx::query(
                    "UPDATE sales SET held = held - $2, available = available + $2 WHERE id = $1",
                )
                .bind(sale.id)
                .bind(quantity)
                .execute(&mut *tx)
                .await?;
                enqueue_raffle_tick(&mut tx, sale.id, None).await?;
                WithdrawOutcome::Withdrawn { released: true }
            }
            Some(_) => WithdrawOutcome::Withdrawn { released: false },
            None => match find_entry(&mut tx, sale.id, user_id).await? {
                Some(entry) => WithdrawOutcome::Finished(entry.status),
                None => WithdrawOutcome::NotEntered,
            },
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// The draw and the entrants' statuses of a raffle (admins; counts over its entries).
    pub async fn raffle_stats(&self, sale_id: Uuid) -> Result<Option<RaffleStats>, StoreError> {
        #[derive(FromRow)]
        struct Row {
            draw_seed: i64,
            draw_started_at: Option<DateTime<Utc>>,
            drawn_at: Option<DateTime<Utc>>,
            entrants: Option<i32>,
            finished_at: Option<DateTime<Utc>>,
            entered: i64,
            selected: i64,
            purchased: i64,
            expired: i64,
            not_selected: i64,
            withdrawn: i64,
        }
        let row: Option<Row> = sqlx::query_as(
            "SELECT r.draw_seed, r.draw_started_at, r.drawn_at, r.entrants, r.finished_at,
                    count(*) FILTER (WHERE e.status = 'entered') AS entered,
                    count(*) FILTER (WHERE e.status = 'selected') AS selected,
                    count(*) FILTER (WHERE e.status = 'purchased') AS purchased,
                    count(*) FILTER (WHERE e.status = 'expired') AS expired,
                    count(*) FILTER (WHERE e.status = 'not_selected') AS not_selected,
                    count(*) FILTER (WHERE e.status = 'withdrawn') AS withdrawn
               FROM sale_raffles r LEFT JOIN raffle_entries e ON e.sale_id = r.sale_id
              WHERE r.sale_id = $1
              GROUP BY r.sale_id",
        )
        .bind(sale_id)
        .fetch_optional(&mut self.conn().await?)
        .await?;
        Ok(row.map(|row| RaffleStats {
            draw_seed: row.draw_seed,
            draw_started_at: row.draw_started_at,
            drawn_at: row.drawn_at,
            entrants: row.entrants,
            finished_at: row.finished_at,
            entered: row.entered,
            selected: row.selected,
            purchased: row.purchased,
            expired: row.expired,
            not_selected: row.not_selected,
            withdrawn: row.withdrawn,
        }))
    }
}

/// Why a confirmation found no live selection.
async fn confirm_refusal(
    conn: &mut Db,
    sale_id: Uuid,
    user_id: &str,
) -> Result<RaffleConfirmOutcome, StoreError> {
    let Some(entry) = find_entry(conn, sale_id, user_id).await? else {
        return Ok(RaffleConfirmOutcome::NotEntered);
    };
    Ok(match entry.status {
        RaffleStatus::Purchased => match find_purchase(conn, sale_id, user_id).await? {
            Some(purchase) => RaffleConfirmOutcome::AlreadyPurchased(purchase),
            None => RaffleConfirmOutcome::NotEntered,
        },
        // Selected but past its expiry (the tick has not returned it yet), or returned.
        RaffleStatus::Selected | RaffleStatus::Expired => RaffleConfirmOutcome::HoldExpired,
        status => RaffleConfirmOutcome::NotSelected(status),
    })
}

/// The entry of `user_id` in the raffle `sale_id`, on `conn`.
pub(super) async fn find_entry(
    conn: &mut Db,
    sale_id: Uuid,
    user_id: &str,
) -> Result<Option<RaffleEntry>, StoreError> {
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM raffle_entries e JOIN sale_raffles r ON r.sale_id = e.sale_id
          WHERE e.sale_id = $1 AND e.user_id = $2"
    );
    // Built from constant text only.
    let row = sqlx::query_as::<_, EntryRow>(sqlx::AssertSqlSafe(sql))
        .bind(sale_id)
        .bind(user_id)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(RaffleEntry::from))
}
