//! The purchases export as CSV: every purchase of a sale, read a page at a time, so memory
//! stays at one page whatever the sale's size.

use futures_util::stream::{self, StreamExt};
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use crate::domain::Purchase;
use crate::store::Store;

/// Buyers read per query (with all their orders, at most the sale's per-customer limit
/// each): memory stays at one page, whatever the sale.
const CSV_PAGE: i64 = 5000;

/// Every purchase of the sale as CSV, a page at a time.
pub fn purchases(
    store: Store,
    sale_id: Uuid,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    let header = stream::once(async {
        Ok(b"purchase_id,sale_id,user_id,created_at,quantity,variant\n".to_vec())
    });
    let pages = stream::unfold(Some(None::<String>), move |after| {
        let store = store.clone();
        async move {
            let after = after?;
            match store
                .purchases_page(sale_id, after.as_deref(), CSV_PAGE)
                .await
            {
                Ok(page) if page.is_empty() => None,
                Ok(page) => {
                    let next = (buyers_in(&page) == CSV_PAGE)
                        .then(|| page.last().map(|p| p.user_id.clone()));
                    Some((csv_rows(&page), next.flatten().map(Some)))
                }
                Err(err) => {
                    tracing::error!(error = %err, sale = %sale_id, "CSV export failed mid-way");
                    Some((Err(std::io::Error::other("the export failed")), None))
                }
            }
        }
    });
    header.chain(pages)
}

/// The page's rows, written by the `csv` crate: a field is quoted when it holds a comma, a
/// quote or a line break (RFC 4180), and its value is never changed otherwise (the export is
/// data for a program and must match the table). Writing into a `Vec` cannot fail; the
/// crate's `Result`s are passed on all the same.
fn csv_rows(purchases: &[Purchase]) -> Result<Vec<u8>, std::io::Error> {
    let mut out = csv::Writer::from_writer(Vec::with_capacity(purchases.len() * 112));
    let mut ids = [0u8; 2 * Hyphenated::LENGTH];
    for purchase in purchases {
        let (id, sale_id) = ids.split_at_mut(Hyphenated::LENGTH);
        let created_at = purchase
            .created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let quantity = purchase.quantity.to_string();
        out.write_record([
            purchase.id.hyphenated().encode_lower(id).as_bytes(),
            purchase
                .sale_id
                .hyphenated()
                .encode_lower(sale_id)
                .as_bytes(),
            purchase.user_id.as_bytes(),
            created_at.as_bytes(),
            quantity.as_bytes(),
            // Empty for a sale without variants.
            purchase.variant.as_deref().unwrap_or_default().as_bytes(),
        ])
        .map_err(std::io::Error::other)?;
    }
    out.into_inner().map_err(|err| err.into_error())
}

/// The buyers a page holds (its orders come grouped by buyer).
pub fn buyers_in(page: &[Purchase]) -> i64 {
    let mut buyers = 0;
    let mut last: Option<&str> = None;
    for purchase in page {
        if last != Some(purchase.user_id.as_str()) {
            buyers += 1;
            last = Some(&purchase.user_id);
        }
    }
    buyers
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The user id's field as the export writes it.
    fn csv_field(user_id: &str) -> String {
        let purchase = Purchase {
            id: Uuid::new_v4(),
            sale_id: Uuid::new_v4(),
            user_id: user_id.to_string(),
            created_at: chrono::Utc::now(),
            quantity: 1,
            variant: None,
        };
        let row = String::from_utf8(csv_rows(&[purchase]).expect("rows")).expect("utf-8");
        // Two ids of 36 characters and their commas before it; a comma, a 27-character
        // time, a comma, the quantity (1), a comma, the empty variant and the line's end
        // after it.
        row[2 * 37..row.len() - 32].to_string()
    }

    #[test]
    fn csv_fields_are_quoted_only_when_they_must_be() {
        assert_eq!(csv_field("alice"), "alice");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=SUM(A1)"), "=SUM(A1)");
    }
}
