//! Group commit for instant purchases: the requests for one sale that arrive while the
//! previous batch is in the database are decided together by one statement
//! ([`Store::purchase_batch`]): one row lock and one WAL flush for many buyers, each answered
//! with their own exact outcome, and only after the commit.
//!
//! Batching is natural, not timed: a sale's batcher takes whatever has queued up while the
//! last batch ran (at most [`MAX_BATCH`]), so a lone buyer waits for nobody. Once a batch
//! sees an instant sale's stock at zero it cannot come back, so later buyers of that sale
//! skip the batcher: one indexed read tells a repeat buyer (`ALREADY_PURCHASED`) from the
//! rest (`SOLD_OUT`); for stocks up to [`MAX_REMEMBERED_BUYERS`] the final buyer list is
//! loaded once and no query is needed at all. Several instances each run their own batchers; the statement is safe
//! across them (see [`Store::purchase_batch`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::purchases::{BatchBuyer, PurchaseOutcome};
use super::{Store, StoreError};
use crate::domain::{Checkout, Purchase};

/// Most buyers decided by one statement.
pub const MAX_BATCH: usize = 2048;
/// Largest stock whose buyers are held in memory once the sale sells out.
const MAX_REMEMBERED_BUYERS: i64 = 100_000;
/// How long a sku keeps resolving to the same sale id without asking the database.
const SKU_CACHE_TTL: Duration = Duration::from_secs(1);
/// A sale's batcher stops after this long without requests (and starts again on demand).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

type Reply = oneshot::Sender<Result<PurchaseOutcome, StoreError>>;

struct Request {
    user_id: String,
    reply: Reply,
}

#[derive(Default)]
struct Shared {
    batchers: HashMap<Uuid, mpsc::UnboundedSender<Request>>,
    /// Sold-out instant sales, with their buyers when the stock is small enough to hold:
    /// a sold-out instant sale never sells again, so that set is final and answers a
    /// repeat buyer (`ALREADY_PURCHASED`) and everyone else (`SOLD_OUT`) without a query.
    sold_out: HashMap<Uuid, Option<Arc<HashMap<String, Purchase>>>>,
    skus: HashMap<String, (Uuid, Checkout, Instant)>,
}

/// The instant-checkout front door: group commit per sale, with the sold-out fast path.
#[derive(Clone)]
pub struct PurchaseQueue {
    store: Store,
    shared: Arc<Mutex<Shared>>,
    /// Off: every purchase is its own statement ([`Store::purchase`]), for comparison.
    batching: bool,
}

impl PurchaseQueue {
    pub fn new(store: Store, batching: bool) -> Self {
        Self {
            store,
            shared: Arc::default(),
            batching,
        }
    }

    /// Buys one unit of the sale `sale_ref` (UUID or sku) for `user_id`, exactly like
    /// [`Store::purchase`], batched with the other buyers of that sale.
    pub async fn purchase(
        &self,
        sale_ref: &str,
        user_id: &str,
    ) -> Result<PurchaseOutcome, StoreError> {
        if !self.batching {
            return self.store.purchase(sale_ref, user_id).await;
        }
        let outcome = self.purchase_resolved(sale_ref, user_id).await?;
        if matches!(outcome, PurchaseOutcome::SaleNotFound) {
            // The cached id may name a sale deleted since (its sku reused): look again.
            if let Ok(mut shared) = self.shared.lock() {
                shared.skus.remove(sale_ref);
            }
            return self.purchase_resolved(sale_ref, user_id).await;
        }
        Ok(outcome)
    }

    async fn purchase_resolved(
        &self,
        sale_ref: &str,
        user_id: &str,
    ) -> Result<PurchaseOutcome, StoreError> {
        let Some((sale_id, checkout)) = self.resolve(sale_ref).await? else {
            return Ok(PurchaseOutcome::SaleNotFound);
        };
        if checkout == Checkout::Queued {
            return self.store.purchase(&sale_id.to_string(), user_id).await;
        }
        if let Some(buyers) = self.sold_out(sale_id) {
            let owned = match buyers {
                Some(buyers) => buyers.get(user_id).cloned(),
                None => self.store.find_purchase(sale_id, user_id).await?,
            };
            return Ok(match owned {
                Some(purchase) => PurchaseOutcome::AlreadyPurchased(purchase),
                None => PurchaseOutcome::SoldOut,
            });
        }
        let (reply, answer) = oneshot::channel();
        self.batcher(sale_id)
            .send(Request {
                user_id: user_id.to_string(),
                reply,
            })
            .map_err(|_| StoreError::Unavailable)?;
        answer.await.map_err(|_| StoreError::Unavailable)?
    }

    /// `Some` once the sale is known to be sold out, with its buyers when remembered.
    #[allow(clippy::type_complexity)]
    fn sold_out(&self, sale_id: Uuid) -> Option<Option<Arc<HashMap<String, Purchase>>>> {
        self.shared.lock().ok()?.sold_out.get(&sale_id).cloned()
    }

    /// Records that the sale sold out, loading its (final) buyers when there are few enough.
    async fn mark_sold_out(&self, sale_id: Uuid) {
        let buyers = match self
            .store
            .buyers_if_at_most(sale_id, MAX_REMEMBERED_BUYERS)
            .await
        {
            Ok(Some(buyers)) => Some(Arc::new(
                buyers
                    .into_iter()
                    .map(|purchase| (purchase.user_id.clone(), purchase))
                    .collect(),
            )),
            // Too many to hold, or the read failed: answer from the database instead.
            Ok(None) | Err(_) => None,
        };
        if let Ok(mut shared) = self.shared.lock() {
            shared.sold_out.insert(sale_id, buyers);
        }
    }

    /// The sale id and checkout for a reference, from a short-lived cache. A UUID that
    /// names no sale is tried as a sku, as everywhere else.
    async fn resolve(&self, sale_ref: &str) -> Result<Option<(Uuid, Checkout)>, StoreError> {
        if let Ok(shared) = self.shared.lock()
            && let Some((id, checkout, at)) = shared.skus.get(sale_ref)
            && at.elapsed() < SKU_CACHE_TTL
        {
            return Ok(Some((*id, *checkout)));
        }
        let Some(sale) = self.store.find_sale(sale_ref).await? else {
            return Ok(None);
        };
        if let Ok(mut shared) = self.shared.lock() {
            if shared.skus.len() > 10_000 {
                shared
                    .skus
                    .retain(|_, (_, _, at)| at.elapsed() < SKU_CACHE_TTL);
            }
            shared.skus.insert(
                sale_ref.to_string(),
                (sale.id, sale.checkout, Instant::now()),
            );
        }
        Ok(Some((sale.id, sale.checkout)))
    }

    /// The sender of the sale's batcher, starting one if none runs.
    fn batcher(&self, sale_id: Uuid) -> mpsc::UnboundedSender<Request> {
        let mut shared = match self.shared.lock() {
            Ok(shared) => shared,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(sender) = shared.batchers.get(&sale_id)
            && !sender.is_closed()
        {
            return sender.clone();
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        shared.batchers.insert(sale_id, sender.clone());
        let this = self.clone();
        tokio::spawn(async move { this.run_batcher(sale_id, receiver).await });
        sender
    }

    async fn run_batcher(self, sale_id: Uuid, mut receiver: mpsc::UnboundedReceiver<Request>) {
        loop {
            let first = match tokio::time::timeout(IDLE_TIMEOUT, receiver.recv()).await {
                Ok(Some(request)) => request,
                Ok(None) => break,
                Err(_) => {
                    // Idle: retire, unless a request slipped in meanwhile.
                    if let Ok(mut shared) = self.shared.lock() {
                        shared.batchers.remove(&sale_id);
                    }
                    receiver.close();
                    while let Ok(request) = receiver.try_recv() {
                        self.decide(sale_id, vec![request]).await;
                    }
                    break;
                }
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.decide(sale_id, batch).await;
        }
    }

    /// Decides one batch and answers every request in it.
    async fn decide(&self, sale_id: Uuid, batch: Vec<Request>) {
        // One entry per user: a user's extra requests in the same batch are repeats.
        let mut by_user: HashMap<String, Vec<Reply>> = HashMap::new();
        let mut buyers = Vec::new();
        for request in batch {
            let replies = by_user.entry(request.user_id.clone()).or_default();
            if replies.is_empty() {
                buyers.push(BatchBuyer {
                    user_id: request.user_id,
                    purchase_id: Uuid::new_v4(),
                });
            }
            replies.push(request.reply);
        }
        let result = match self.store.purchase_batch(sale_id, &buyers).await {
            Ok(Some(result)) => result,
            Ok(None) => return self.one_by_one(sale_id, by_user).await,
            Err(err) => return fail_all(by_user, &err),
        };
        for purchase in result.bought {
            if let Some(replies) = by_user.remove(&purchase.user_id) {
                answer_owner(replies, purchase, true);
            }
        }
        for purchase in result.owned {
            if let Some(replies) = by_user.remove(&purchase.user_id) {
                answer_owner(replies, purchase, false);
            }
        }
        if by_user.is_empty() {
            return;
        }
        // The rest were refused. One of them may have bought through another instance after
        // this batch's snapshot: read again, so a repeat buyer never hears SOLD_OUT.
        let refused: Vec<&str> = by_user.keys().map(String::as_str).collect();
        match self.store.purchases_of(sale_id, &refused).await {
            Ok(owned) => {
                for purchase in owned {
                    if let Some(replies) = by_user.remove(&purchase.user_id) {
                        answer_owner(replies, purchase, false);
                    }
                }
            }
            Err(err) => return fail_all(by_user, &err),
        }
        if by_user.is_empty() {
            return;
        }
        // The stock ran out, or the sale is not sellable.
        match self.store.refusal_now(sale_id).await {
            Ok(Some(refusal)) => {
                if matches!(refusal, PurchaseOutcome::SoldOut) && self.sold_out(sale_id).is_none() {
                    self.mark_sold_out(sale_id).await;
                }
                for replies in by_user.into_values() {
                    for reply in replies {
                        let _ = reply.send(Ok(refusal.clone()));
                    }
                }
            }
            // Sellable again (a boundary moment): decide those one by one.
            Ok(None) => self.one_by_one(sale_id, by_user).await,
            Err(err) => fail_all(by_user, &err),
        }
    }

    async fn one_by_one(&self, sale_id: Uuid, by_user: HashMap<String, Vec<Reply>>) {
        for (user_id, replies) in by_user {
            let mut replies = replies.into_iter();
            if let Some(first) = replies.next() {
                let _ = first.send(self.store.purchase(&sale_id.to_string(), &user_id).await);
            }
            for reply in replies {
                let _ = reply.send(self.store.purchase(&sale_id.to_string(), &user_id).await);
            }
        }
    }
}

/// Answers every request of a failed batch with the failure.
fn fail_all(by_user: HashMap<String, Vec<Reply>>, err: &StoreError) {
    let message = err.to_string();
    for reply in by_user.into_values().flatten() {
        let _ = reply.send(Err(StoreError::Batch(message.clone())));
    }
}

/// The first request of a user who owns `purchase` hears `Purchased` when it was bought in
/// this batch; every other request of theirs hears `ALREADY_PURCHASED`.
fn answer_owner(replies: Vec<Reply>, purchase: crate::domain::Purchase, bought_now: bool) {
    let mut first = bought_now;
    for reply in replies {
        let outcome = if first {
            PurchaseOutcome::Purchased(purchase.clone())
        } else {
            PurchaseOutcome::AlreadyPurchased(purchase.clone())
        };
        first = false;
        let _ = reply.send(Ok(outcome));
    }
}
