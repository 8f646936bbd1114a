//! A new sale's variant rows (see the variants migration for their locks and invariants).

use uuid::Uuid;

use super::{SALE_COLUMNS, SaleRow};
use crate::domain::{NewSale, Sale};
use crate::store::StoreError;
use crate::store::db::Db;

/// Inserts the variants of the sale `sale_id` (just inserted in this transaction, with the
/// stock of their sum) in the admin's order, and reads the sale back with them.
pub(super) async fn create_variants(
    conn: &mut Db,
    sale_id: Uuid,
    new: &NewSale,
) -> Result<Sale, StoreError> {
    let codes: Vec<&str> = new.variants.iter().map(|v| v.code.as_str()).collect();
    let stocks: Vec<i32> = new.variants.iter().map(|v| v.stock).collect();
    sqlx::query(
        "INSERT INTO sale_variants (sale_id, position, code, stock, available)
         SELECT $1, v.position, v.code, v.stock, v.stock
           FROM unnest($2::text[], $3::int[]) WITH ORDINALITY AS v(code, stock, position)",
    )
    .bind(sale_id)
    .bind(&codes)
    .bind(&stocks)
    .execute(&mut *conn)
    .await?;
    let sql = format!("SELECT {SALE_COLUMNS} FROM sales WHERE id = $1");
    let row = sqlx::query_as::<_, SaleRow>(sqlx::AssertSqlSafe(sql))
        .bind(sale_id)
        .fetch_one(&mut *conn)
        .await?;
    Ok(row.into())
}
