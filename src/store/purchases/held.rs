//! Buying what a hold reserved: the last step of a queue confirm and of a raffle confirm,
//! one set of statements for both.

use uuid::Uuid;

use super::PurchaseRow;
use crate::domain::{Purchase, SaleState};
use crate::store::db::Db;
use crate::store::jobs::{self, JobKind};
use crate::store::{Store, StoreError};

/// What [`buy_held`] did.
pub(in crate::store) enum HeldBought {
    /// Bought; `sold_out` when it took the last unit (nothing available, nothing held).
    Bought { purchase: Purchase, sold_out: bool },
    /// The sale is cancelled or archived: nothing moved (the caller rolls back).
    Refused,
}

/// Moves `quantity` held units of the sale to `sold` and inserts the buyer's purchase of
/// them (of `variant`, the hold's, in a sale with variants: the variant's own counters move
/// with the entry's status, see the `variant_holds` migration), inside the caller's transaction, which has already locked and marked the hold's
/// entry as bought (see the callers' race arguments).
///
/// Race-free under READ COMMITTED: the counter UPDATE takes the sale row's lock and
/// re-checks `cancelled_at` and `archived_at` on the committed row, so a confirm never
/// commits after a cancel or an archive. The sale row is locked before the purchase is
/// inserted, as by every insert of a purchase of this sale. A buyer's hold is one order:
/// the next link of the buyer's chain (see the quantities migration), `units_before` 0
/// unless the chain already has one (then the insert fails on the chain key and the
/// confirm rolls back). The last unit queues the state job, so the sell-out is recorded
/// (and `sale.sold_out` emitted) now, in this transaction.
pub(in crate::store) async fn buy_held(
    tx: &mut Db,
    sale_id: Uuid,
    user_id: &str,
    (quantity, variant): (i32, Option<&str>),
) -> Result<HeldBought, StoreError> {
    let moved: Option<bool> = sqlx::query_scalar(
        "UPDATE sales SET held = held - $2, sold = sold + $2
          WHERE id = $1 AND cancelled_at IS NULL AND archived_at IS NULL
         RETURNING available = 0 AND held = 0",
    )
    .bind(sale_id)
    .bind(quantity)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(sold_out) = moved else {
        return Ok(HeldBought::Refused);
    };
    if sold_out {
        jobs::enqueue(tx, JobKind::SyncSaleState, sale_id, None).await?;
    }
    let purchase = sqlx::query_as::<_, PurchaseRow>(
        "INSERT INTO purchases (id, sale_id, user_id, quantity, units_before, variant)
         SELECT $1, $2, $3, $4, COALESCE(sum(quantity), 0)::int, $5 FROM purchases
          WHERE sale_id = $2 AND user_id = $3
         RETURNING id, sale_id, user_id, created_at, quantity, variant",
    )
    .bind(Uuid::new_v4())
    .bind(sale_id)
    .bind(user_id)
    .bind(quantity)
    .bind(variant)
    .fetch_one(&mut *tx)
    .await?;
    Ok(HeldBought::Bought {
        purchase: purchase.into(),
        sold_out,
    })
}

impl Store {
    /// Why a confirm found the sale refusing ([`HeldBought::Refused`]): archived, else
    /// cancelled.
    pub(in crate::store) async fn void_state(
        &self,
        sale_id: Uuid,
    ) -> Result<SaleState, StoreError> {
        Ok(match self.sale_by_id(sale_id).await? {
            Some(now) if now.archived_at.is_some() => SaleState::Archived,
            _ => SaleState::Cancelled,
        })
    }
}
