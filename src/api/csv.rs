//! The purchases export as CSV: every purchase of a sale, read a page at a time, so memory
//! stays at one page whatever the sale's size.

use futures_util::stream::{self, StreamExt};
use uuid::Uuid;

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
    let header =
        stream::once(async { Ok(b"purchase_id,sale_id,user_id,created_at,quantity\n".to_vec()) });
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
                    Some((Ok(csv_rows(&page)), next.flatten().map(Some)))
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

fn csv_rows(purchases: &[Purchase]) -> Vec<u8> {
    let mut out = String::with_capacity(purchases.len() * 110);
    for purchase in purchases {
        out.push_str(&format!(
            "{},{},{},{},{}\n",
            purchase.id,
            purchase.sale_id,
            csv_field(&purchase.user_id),
            purchase
                .created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            purchase.quantity
        ));
    }
    out.into_bytes()
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

/// A CSV field: quoted when it holds a comma, a quote or a line break (RFC 4180). The value
/// itself is never changed: the export is data for a program and must match the table.
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_they_must_be() {
        assert_eq!(csv_field("alice"), "alice");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=SUM(A1)"), "=SUM(A1)");
    }
}
