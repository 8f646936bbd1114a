//! What buyers own in a sale, read now: their first order, their units over all their
//! orders, and the orders they made under their own keys.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Owned, PurchaseRow};
use crate::domain::Purchase;
use crate::store::db::Db;
use crate::store::{Store, StoreError};

/// The orders these buyers made in the sale under these keys (absent: no such order).
pub(in crate::store) async fn keyed_orders(
    conn: &mut Db,
    sale_id: Uuid,
    keys: &[(&str, Uuid)],
) -> Result<HashMap<String, Purchase>, StoreError> {
    let users: Vec<&str> = keys.iter().map(|(user, _)| *user).collect();
    let ids: Vec<Uuid> = keys.iter().map(|(_, key)| *key).collect();
    let rows = sqlx::query_as::<_, PurchaseRow>(
        "SELECT p.id, p.sale_id, p.user_id, p.created_at, p.quantity, p.variant
           FROM unnest($2::text[], $3::uuid[]) AS k(user_id, order_key)
           JOIN purchases p ON p.sale_id = $1 AND p.user_id = k.user_id
                           AND p.order_key = k.order_key",
    )
    .bind(sale_id)
    .bind(&users)
    .bind(&ids)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let purchase = Purchase::from(row);
            (purchase.user_id.clone(), purchase)
        })
        .collect())
}

pub(in crate::store) async fn find_purchase(
    conn: &mut Db,
    sale_id: Uuid,
    user_id: &str,
) -> Result<Option<Purchase>, StoreError> {
    Ok(owned_by(conn, sale_id, &[user_id])
        .await?
        .remove(user_id)
        .map(|owned| owned.first))
}

/// What each of `users` owns in the sale, read now: their first order and their units.
/// Users who own nothing are absent.
pub(in crate::store) async fn owned_by(
    conn: &mut Db,
    sale_id: Uuid,
    users: &[&str],
) -> Result<HashMap<String, Owned>, StoreError> {
    /// A buyer's first order (id, user, time, quantity, variant) and their units.
    type FirstAndUnits = (Uuid, String, DateTime<Utc>, i32, Option<String>, i32);
    let rows: Vec<FirstAndUnits> = sqlx::query_as(
        "SELECT DISTINCT ON (user_id) id, user_id, created_at, quantity, variant,
                (sum(quantity) OVER (PARTITION BY user_id))::int
           FROM purchases WHERE sale_id = $1 AND user_id = ANY($2::text[])
          ORDER BY user_id, units_before",
    )
    .bind(sale_id)
    .bind(users)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, user_id, created_at, quantity, variant, units)| {
            let first = Purchase {
                id,
                sale_id,
                user_id: user_id.clone(),
                created_at,
                quantity,
                variant,
            };
            (user_id, Owned { first, units })
        })
        .collect())
}

impl Store {
    /// What every buyer of the sale owns, when the sale has at most `limit` orders (else
    /// `None`).
    pub async fn owners_if_at_most(
        &self,
        sale_id: Uuid,
        limit: i64,
    ) -> Result<Option<HashMap<String, Owned>>, StoreError> {
        let mut conn = self.conn().await?;
        let orders: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT 1 FROM purchases WHERE sale_id = $1 LIMIT $2) o",
        )
        .bind(sale_id)
        .bind(limit + 1)
        .fetch_one(&mut conn)
        .await?;
        if orders > limit {
            return Ok(None);
        }
        let users: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT user_id FROM purchases WHERE sale_id = $1")
                .bind(sale_id)
                .fetch_all(&mut conn)
                .await?;
        let users: Vec<&str> = users.iter().map(String::as_str).collect();
        Ok(Some(owned_by(&mut conn, sale_id, &users).await?))
    }

    /// The orders these buyers made in the sale under these keys, read now.
    pub async fn keyed_orders(
        &self,
        sale_id: Uuid,
        keys: &[(&str, Uuid)],
    ) -> Result<HashMap<String, Purchase>, StoreError> {
        keyed_orders(&mut self.conn().await?, sale_id, keys).await
    }

    /// What each of these users owns in the sale, read now (absent: nothing).
    pub async fn owned_of(
        &self,
        sale_id: Uuid,
        users: &[&str],
    ) -> Result<HashMap<String, Owned>, StoreError> {
        owned_by(&mut self.conn().await?, sale_id, users).await
    }
}
