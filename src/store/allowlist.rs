//! Allow-lists (presales): the buyers an allow-listed sale may sell to. Here are the list's
//! writes (an upload that replaces or adds, one removal) and reads; the checks that sell or
//! join only listed buyers live in the statements that sell and join (`purchases.rs`,
//! `purchases/batch.rs`, `queue_join/batch.rs`).
//!
//! How a list change and a purchase meet, under READ COMMITTED: every statement that sells
//! or joins locks its buyer's row FOR KEY SHARE before it takes the sale's (or the queue's)
//! row, and keeps it to its commit. A removal (a DELETE, here or by a replacing upload)
//! needs that row exclusively, so:
//! - a purchase that locked the row first commits first: the removal waits for it, and
//!   the purchase stays (a removal never cancels a purchase);
//! - a removal that deleted the row first makes the purchase wait; once the removal
//!   commits, the purchase's lock finds the row gone and the buyer is refused. So once a
//!   removal is answered, no statement of that buyer can sell or join.
//! - a buyer added while a statement ran is refused by it (its snapshot missed the row);
//!   the caller reads the list after the refusal, sees the buyer, and decides them again.
//!
//! Uploads of one sale's list (and a sale's DELETE) take one advisory lock per sale for
//! their transaction, so they apply one after another; a removal of one buyer needs only
//! that buyer's row lock. Every writer locks
//! list rows before it touches the sale row (the event's numbering, last), and locks many
//! rows in user order (`COLLATE "C"`), as the batches do: no deadlock with a buyer's
//! statement, which also locks list rows before the sale row.

use std::collections::HashSet;

use tokio::sync::mpsc;
use uuid::Uuid;

use super::db::Db;
use super::{Store, StoreError};

/// An upload's ids, in chunks (each at most a few thousand ids), or why the input is not a
/// list of valid user ids (the upload then changes nothing).
pub type AllowlistChunks = mpsc::Receiver<Result<Vec<String>, String>>;

/// What an upload does with the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadMode {
    /// The list becomes exactly the uploaded ids (PUT).
    Replace,
    /// The uploaded ids join the list (POST).
    Add,
}

/// What an allow-list write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowlistOutcome {
    Changed {
        /// Ids read from the upload (repeats included); 0 for a removal.
        received: i64,
        /// Buyers newly on the list.
        added: i64,
        /// Buyers taken off the list.
        removed: i64,
        /// The list's size after the change (-1 after a removal: not counted).
        size: i64,
    },
    /// The upload was not a list of valid user ids: nothing changed.
    Invalid(String),
    SaleNotFound,
    /// The sale was created without an allow-list.
    NoAllowlist,
}

/// Takes the sale's allow-list writer lock (to the transaction's end) and says whether the
/// sale exists and has a list. The sale row is only read (its `allowlist` never changes).
async fn lock_list(tx: &mut Db, sale_id: Uuid) -> Result<Option<bool>, StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('allowlist:' || $1::text, 0))")
        .bind(sale_id)
        .execute(&mut *tx)
        .await?;
    Ok(
        sqlx::query_scalar("SELECT allowlist FROM sales WHERE id = $1")
            .bind(sale_id)
            .fetch_optional(&mut *tx)
            .await?,
    )
}

/// Records one `sale.allowlist_changed` event, numbered under the sale row's lock like every
/// event of the sale; the last statement of the transaction (list rows first, then the sale
/// row, as a buyer's statement does).
async fn record_change(
    tx: &mut Db,
    sale_id: Uuid,
    data: serde_json::Value,
) -> Result<(), StoreError> {
    sqlx::query(
        "WITH numbered AS (
             UPDATE sales SET last_event_sequence = last_event_sequence + 1,
                              last_event_tx = GREATEST(last_event_tx,
                                                       pg_current_xact_id()::text::bigint)
              WHERE id = $1
             RETURNING id, last_event_tx, sku, last_event_sequence
         )
         INSERT INTO events (feed_tx, sale_id, sequence, type, sale_sku, data)
         SELECT last_event_tx, id, last_event_sequence, 'sale.allowlist_changed', sku, $2
           FROM numbered",
    )
    .bind(sale_id)
    .bind(data)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn list_size(tx: &mut Db, sale_id: Uuid) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM sale_allowlist WHERE sale_id = $1")
            .bind(sale_id)
            .fetch_one(&mut *tx)
            .await?,
    )
}

/// Which of `users` are on the sale's list, their list rows locked FOR KEY SHARE in user
/// order and held to the caller's commit; none for a sale without a list (its `allowlist`,
/// set at creation, never changes). Called before the caller locks the sale's or the
/// queue's row: every writer of the list locks list rows before those rows (no deadlock).
/// A removal committed before this statement left no row (the buyer is refused); one that
/// comes later waits for the caller's commit (the caller's write came first).
pub(super) async fn lock_listed(
    tx: &mut Db,
    sale_id: Uuid,
    users: &[String],
) -> Result<HashSet<String>, StoreError> {
    let listed: Vec<String> = sqlx::query_scalar(
        "SELECT a.user_id FROM sale_allowlist a
          WHERE a.sale_id = $1 AND a.user_id = ANY($2::text[])
            AND EXISTS (SELECT 1 FROM sales WHERE id = $1 AND allowlist)
          ORDER BY a.user_id COLLATE \"C\"
            FOR KEY SHARE",
    )
    .bind(sale_id)
    .bind(users)
    .fetch_all(tx)
    .await?;
    Ok(listed.into_iter().collect())
}

/// Which of `users` are on the sale's list, read now (no lock): how a refusal is explained
/// after the statement that refused.
pub(super) async fn listed_of(
    conn: &mut Db,
    sale_id: Uuid,
    users: &[&str],
) -> Result<HashSet<String>, StoreError> {
    let listed: Vec<String> = sqlx::query_scalar(
        "SELECT user_id FROM sale_allowlist WHERE sale_id = $1 AND user_id = ANY($2::text[])",
    )
    .bind(sale_id)
    .bind(users)
    .fetch_all(conn)
    .await?;
    Ok(listed.into_iter().collect())
}

impl Store {
    /// Which of `users` are on the sale's list, read now.
    pub(super) async fn listed_of(
        &self,
        sale_id: Uuid,
        users: &[&str],
    ) -> Result<HashSet<String>, StoreError> {
        listed_of(&mut self.conn().await?, sale_id, users).await
    }

    /// Applies an upload to the sale's list in one transaction: all of it, or (an invalid
    /// id anywhere, a failure, the caller gone) none of it. The ids arrive in chunks, each
    /// written by one statement, so the upload is never whole in memory.
    ///
    /// Replace marks every uploaded buyer's row with this upload's id (inserting the new
    /// ones; re-marking an existing row is a non-key UPDATE, which a purchase's FOR KEY
    /// SHARE does not wait for, so a buyer on both lists is never refused meanwhile), then
    /// deletes the sale's rows this upload did not mark, in user order. Uploading the same
    /// list twice gives the same list.
    ///
    /// The transaction lasts as long as the upload takes to arrive (the caller bounds it):
    /// it holds the list's writer lock and the locks of the rows it wrote, never the sale
    /// row (until its last statement), so buyers keep buying meanwhile.
    pub async fn upload_allowlist(
        &self,
        sale_id: Uuid,
        mode: UploadMode,
        mut chunks: AllowlistChunks,
    ) -> Result<AllowlistOutcome, StoreError> {
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        // One statement may write a large chunk or delete a large list: the pool's short
        // statement timeout is for buyers' statements.
        sqlx::query("SET LOCAL statement_timeout = '120s'")
            .execute(&mut *tx)
            .await?;
        match lock_list(&mut tx, sale_id).await? {
            None => return Ok(AllowlistOutcome::SaleNotFound),
            Some(false) => return Ok(AllowlistOutcome::NoAllowlist),
            Some(true) => {}
        }
        let upload_id = Uuid::new_v4();
        let (mut received, mut added) = (0_i64, 0_i64);
        while let Some(chunk) = chunks.recv().await {
            let ids = match chunk {
                Ok(ids) => ids,
                // Dropped without a commit: rolled back.
                Err(message) => return Ok(AllowlistOutcome::Invalid(message)),
            };
            received += ids.len() as i64;
            let sql = match mode {
                // DISTINCT: one statement may not update a row twice.
                UploadMode::Replace => {
                    "INSERT INTO sale_allowlist AS a (sale_id, user_id, upload_id)
                     SELECT DISTINCT $1::uuid, u, $3::uuid FROM unnest($2::text[]) u
                     ON CONFLICT (sale_id, user_id) DO UPDATE SET upload_id = excluded.upload_id
                     RETURNING (xmax = 0) AS inserted"
                }
                UploadMode::Add => {
                    "INSERT INTO sale_allowlist (sale_id, user_id, upload_id)
                     SELECT $1, u, $3 FROM unnest($2::text[]) u
                     ON CONFLICT DO NOTHING
                     RETURNING true AS inserted"
                }
            };
            let inserted: Vec<bool> = sqlx::query_scalar(sql)
                .bind(sale_id)
                .bind(&ids)
                .bind(upload_id)
                .fetch_all(&mut *tx)
                .await?;
            added += inserted.into_iter().filter(|inserted| *inserted).count() as i64;
        }
        let removed = match mode {
            UploadMode::Replace => sqlx::query(
                "DELETE FROM sale_allowlist a USING (
                     SELECT user_id FROM sale_allowlist
                      WHERE sale_id = $1 AND upload_id <> $2
                      ORDER BY user_id COLLATE \"C\"
                        FOR UPDATE
                 ) gone
                  WHERE a.sale_id = $1 AND a.user_id = gone.user_id",
            )
            .bind(sale_id)
            .bind(upload_id)
            .execute(&mut *tx)
            .await?
            .rows_affected() as i64,
            UploadMode::Add => 0,
        };
        let size = list_size(&mut tx, sale_id).await?;
        let change = match mode {
            UploadMode::Replace => "replaced",
            UploadMode::Add => "added",
        };
        let data = serde_json::json!({
            "change": change, "received": received, "added": added, "removed": removed,
            "size": size,
        });
        record_change(&mut tx, sale_id, data).await?;
        tx.commit().await.map_err(StoreError::after_write)?;
        Ok(AllowlistOutcome::Changed {
            received,
            added,
            removed,
            size,
        })
    }

    /// Takes `user_id` off the sale's list (idempotent: a buyer not on it changes nothing
    /// and records no event). Purchases they made stay. Once this returns, no statement of
    /// theirs sells or joins (see the module comment).
    pub async fn remove_from_allowlist(
        &self,
        sale_id: Uuid,
        user_id: &str,
    ) -> Result<AllowlistOutcome, StoreError> {
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        // No writer lock: one row's DELETE is ordered with an upload by that row's lock (an
        // upload's re-mark or insert of the buyer either committed first, and is deleted,
        // or waits for this commit, and lists the buyer again), so removals of a crowd run
        // side by side instead of each holding a connection while it waits its turn.
        let removed = sqlx::query(
            "DELETE FROM sale_allowlist a USING sales s
              WHERE a.sale_id = $1 AND a.user_id = $2 AND s.id = a.sale_id AND s.allowlist",
        )
        .bind(sale_id)
        .bind(user_id)
        .execute(&mut *tx)
        .await?
        .rows_affected() as i64;
        if removed > 0 {
            // No count of the list (a removal stays one row's work however long the list).
            let data = serde_json::json!({
                "change": "removed", "userId": user_id, "received": 0, "added": 0,
                "removed": removed,
            });
            record_change(&mut tx, sale_id, data).await?;
        }
        tx.commit().await.map_err(StoreError::after_write)?;
        Ok(AllowlistOutcome::Changed {
            received: 0,
            added: 0,
            removed,
            size: -1,
        })
    }

    /// The list's size, and whether `user_id` (when given) is on it, read now.
    pub async fn allowlist_of(
        &self,
        sale_id: Uuid,
        user_id: Option<&str>,
    ) -> Result<(i64, Option<bool>), StoreError> {
        let mut conn = self.conn().await?;
        let size = list_size(&mut conn, sale_id).await?;
        let listed = match user_id {
            Some(user) => Some(listed_of(&mut conn, sale_id, &[user]).await?.contains(user)),
            None => None,
        };
        Ok((size, listed))
    }
}
