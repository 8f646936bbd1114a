//! Deciding one batch of [`PurchaseBatcher`]: the statements that sell to it (the first, and
//! retries while the sale turns out sellable right after a refusal; see the parent module),
//! and the one answer each of its requests gets. It answers only the requests it is handed
//! and touches no batcher, only the sold-out memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::time::Instant;
use uuid::Uuid;

use super::{
    BATCH_ATTEMPTS, MAX_REMEMBERED_BUYERS, PurchaseBatcher, Reply, Request, SoldOutBuyers,
    sold_out_answer,
};
use crate::domain::Purchase;
use crate::store::batcher::claim;
use crate::store::purchases::{
    BatchBuyer, BatchResult, Order, Owned, PurchaseOutcome, purchase_batch, refusal_for_buyer,
};
use crate::store::{StoreError, deadline_missed};

impl PurchaseBatcher {
    /// Records that the sale sold out, loading its (final) buyers when there are few enough.
    async fn mark_sold_out(&self, sale_id: Uuid) {
        let buyers = match self
            .store
            .owners_if_at_most(sale_id, MAX_REMEMBERED_BUYERS)
            .await
        {
            Ok(Some(owners)) => Some(Arc::new(owners)),
            // Too many to hold, or the read failed: answer from the database instead.
            Ok(None) | Err(_) => None,
        };
        self.sold_out.insert(sale_id, buyers);
    }

    /// Decides one batch and answers every request in it. With the per-customer limit 1 a
    /// user's requests for one variant (or of a sale without variants) are one order;
    /// otherwise each request is an order, and the batch is decided in rounds, each user's
    /// first order in the first, their second in the next, and so on (one statement sees
    /// each buyer once). So a repeat for another variant is decided after the first: it
    /// hears `ALREADY_PURCHASED` if that bought, and is sold if that variant was sold out.
    pub(super) async fn decide(&self, sale_id: Uuid, batch: Vec<Request>) {
        let merge_repeats = batch.iter().all(|request| request.limit <= 1);
        if merge_repeats && batch.iter().all(|request| request.variant.is_none()) {
            return self.decide_round(sale_id, batch).await;
        }
        let mut rounds: Vec<Vec<Request>> = Vec::new();
        // Each user's orders so far, by variant.
        let mut seen: HashMap<String, Vec<Option<i16>>> = HashMap::new();
        for request in batch {
            let orders = seen.entry(request.user_id.clone()).or_default();
            let round = match orders.iter().position(|v| *v == request.variant) {
                Some(round) if merge_repeats => round,
                _ => {
                    orders.push(request.variant);
                    orders.len() - 1
                }
            };
            if rounds.len() <= round {
                rounds.push(Vec::new());
            }
            rounds[round].push(request);
        }
        for round in rounds {
            self.decide_round(sale_id, round).await;
        }
    }

    /// Decides one round: one statement, and up to [`BATCH_ATTEMPTS`] in all while it
    /// refuses buyers the sale could serve right after (see the `group_commit` module
    /// comment).
    async fn decide_round(&self, sale_id: Uuid, batch: Vec<Request>) {
        let Some(answer_by) = batch.iter().map(|request| request.answer_by).min() else {
            return;
        };
        let limit = batch.iter().map(|request| request.limit).max().unwrap_or(1);
        // One entry per user: a user's extra requests in the same round are repeats (only
        // with the limit 1: above it, rounds hold each user once).
        let mut by_user: HashMap<String, Vec<Reply>> = HashMap::new();
        let mut buyers = Vec::new();
        for request in batch {
            let replies = by_user.entry(request.user_id.clone()).or_default();
            if replies.is_empty() {
                buyers.push(BatchBuyer {
                    user_id: request.user_id,
                    purchase_id: Uuid::new_v4(),
                    quantity: request.quantity,
                    order_key: request.order_key,
                    variant: request.variant,
                });
            }
            replies.push(request.reply);
        }
        let orders: HashMap<String, Order> = buyers
            .iter()
            .map(|buyer| {
                let order = Order {
                    quantity: buyer.quantity,
                    key: buyer.order_key,
                    variant: buyer.variant,
                };
                (buyer.user_id.clone(), order)
            })
            .collect();
        if let Some(remembered) = self.sold_out.get(&sale_id) {
            return self
                .answer_sold_out(sale_id, remembered, by_user, &orders, limit)
                .await;
        }
        // The first statement may take the whole answer timeout, as a lone purchase would.
        let mut cut_off = Instant::now() + self.answer_timeout;
        for attempt in 1..=BATCH_ATTEMPTS {
            let started = Instant::now();
            let result = match self
                .run_batch(sale_id, &mut by_user, &mut buyers, cut_off)
                .await
            {
                Ok(Some(result)) => result,
                Ok(None) => return,
                Err(err) => return fail_all(sale_id, by_user, &err),
            };
            let took = started.elapsed();
            if !result.sale_unarchived {
                return self.answer_gone(sale_id, by_user).await;
            }
            for purchase in result.bought {
                if let Some(replies) = by_user.remove(&purchase.user_id) {
                    answer_owner(replies, purchase, true);
                }
            }
            if limit == 1 {
                for owned in result.owned {
                    if let Some(replies) = by_user.remove(&owned.first.user_id) {
                        answer_owner(replies, owned.first, false);
                    }
                }
            }
            if by_user.is_empty() {
                return;
            }
            // The rest were refused: each hears why the sale refuses their order now, except
            // those it could serve now (the statement's now() fell just before the opening,
            // or its INSERT skipped a buyer who bought through another instance, leaving
            // units unsold).
            if let Err(err) = self.answer_refused(sale_id, &mut by_user, &orders).await {
                return fail_all(sale_id, by_user, &err);
            }
            if by_user.is_empty() {
                return;
            }
            // Decide those again, only if the statement can be answered before the first of
            // them stops waiting (judged by what this one took): else nothing is sent, and
            // they hear a retry-safe 503 now rather than `OutcomeUnknown` for a statement
            // never sent.
            if attempt == BATCH_ATTEMPTS || Instant::now() + took > answer_by {
                break;
            }
            buyers.retain(|buyer| by_user.contains_key(&buyer.user_id));
            cut_off = answer_by;
        }
        // Nothing was written for them: a retry is safe, and will be decided afresh.
        fail_all(sale_id, by_user, &StoreError::Overloaded);
    }

    /// Runs `purchase_batch` for the buyers still waiting, and records the statement's size
    /// and time. The wait for a connection and the statement are cut off at `cut_off` apart:
    /// a connection not had by then is a plain unavailability (nothing was sent); only a
    /// statement sent and not answered leaves the outcome unknown. `None` when every buyer
    /// gave up before it was sent.
    async fn run_batch(
        &self,
        sale_id: Uuid,
        by_user: &mut HashMap<String, Vec<Reply>>,
        buyers: &mut Vec<BatchBuyer>,
        cut_off: Instant,
    ) -> Result<Option<BatchResult>, StoreError> {
        let mut conn = self.store.conn_until(cut_off).await?;
        // From here the statement goes out: buyers who already gave up (told nothing was
        // written) are left out, the rest can no longer be told that.
        claim(by_user);
        buyers.retain(|buyer| by_user.contains_key(&buyer.user_id));
        if buyers.is_empty() {
            return Ok(None);
        }
        let started = Instant::now();
        let sent = AtomicBool::new(false);
        let decided = purchase_batch(&mut conn, sale_id, buyers, &sent);
        let decided = tokio::time::timeout_at(cut_off, decided).await;
        if let Some(metrics) = &self.metrics {
            metrics.batch_size.observe(buyers.len() as f64);
            metrics
                .batch_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        match decided {
            Ok(result) => result.map(Some),
            Err(_) => {
                let sent = sent.load(Ordering::Acquire);
                Err(deadline_missed(&mut conn, sent, "purchase batch"))
            }
        }
    }

    /// Answers the buyers of a sale found archived or removed: nothing was decided about it.
    async fn answer_gone(&self, sale_id: Uuid, by_user: HashMap<String, Vec<Reply>>) {
        let gone = match self.store.refusal_now(sale_id).await {
            Ok(Some(PurchaseOutcome::SaleNotFound)) => PurchaseOutcome::SaleNotFound,
            Ok(_) => PurchaseOutcome::SaleArchived,
            Err(err) => return fail_all(sale_id, by_user, &err),
        };
        answer_all(by_user, &gone);
    }

    /// Answers the refused buyers the sale refuses now, each with their own reason, and
    /// leaves in `by_user` those it could serve now (to be decided again).
    ///
    /// What they own is read after the sale, not before, so that nobody who bought hears
    /// `SOLD_OUT`: an instant sale's stock never comes back, so every purchase of theirs
    /// committed before the read that found it at zero, and this later read sees it (one
    /// skipped by the batch's INSERT, or one taking the last unit on another instance).
    /// Units only leave `available`, so `INSUFFICIENT_STOCK` carries at most what the
    /// statement left. An archived or removed sale's buyers are told nothing about it here.
    async fn answer_refused(
        &self,
        sale_id: Uuid,
        by_user: &mut HashMap<String, Vec<Reply>>,
        orders: &HashMap<String, Order>,
    ) -> Result<(), StoreError> {
        let Some(sale) = self.store.sale_by_id(sale_id).await? else {
            answer_all(std::mem::take(by_user), &PurchaseOutcome::SaleNotFound);
            return Ok(());
        };
        let mut keyed = self.keyed_of(sale_id, by_user, orders).await?;
        let refused: Vec<&str> = by_user.keys().map(String::as_str).collect();
        let mut owned = self.store.owned_of(sale_id, &refused).await?;
        // Read after the statement: a buyer added since is decided again, one removed since
        // is refused (the statement's own lock decided what was sold).
        let listed = if sale.allowlist {
            Some(self.store.listed_of(sale_id, &refused).await?)
        } else {
            None
        };
        let users: Vec<String> = by_user.keys().cloned().collect();
        for user in users {
            let order = orders.get(&user).copied().unwrap_or(Order::ONE);
            let (keyed, owned) = (keyed.remove(&user), owned.remove(&user));
            let eligible = listed.as_ref().is_none_or(|listed| listed.contains(&user));
            let Some(refusal) = refusal_for_buyer(&sale, keyed, owned, order, eligible) else {
                continue;
            };
            if matches!(refusal, PurchaseOutcome::SoldOut) && !self.sold_out.contains_key(&sale_id)
            {
                self.mark_sold_out(sale_id).await;
            }
            if let Some(replies) = by_user.remove(&user) {
                match refusal {
                    PurchaseOutcome::AlreadyPurchased(purchase) => {
                        answer_owner(replies, purchase, false)
                    }
                    refusal => {
                        for reply in replies {
                            let _ = reply.send(Ok(refusal.clone()));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Answers the buyers whose order key names an order of theirs in the sale (read now):
    /// `ALREADY_PURCHASED` with that order. The others stay in `by_user`.
    async fn answer_keyed(
        &self,
        sale_id: Uuid,
        by_user: &mut HashMap<String, Vec<Reply>>,
        orders: &HashMap<String, Order>,
    ) -> Result<(), StoreError> {
        for (user, order) in self.keyed_of(sale_id, by_user, orders).await? {
            if let Some(replies) = by_user.remove(&user) {
                answer_owner(replies, order, false);
            }
        }
        Ok(())
    }

    /// The orders the keys of `by_user`'s buyers name in the sale, read now.
    async fn keyed_of(
        &self,
        sale_id: Uuid,
        by_user: &HashMap<String, Vec<Reply>>,
        orders: &HashMap<String, Order>,
    ) -> Result<HashMap<String, Purchase>, StoreError> {
        let keys: Vec<(&str, Uuid)> = orders
            .iter()
            .filter(|(user, _)| by_user.contains_key(*user))
            .filter_map(|(user, order)| Some((user.as_str(), order.key?)))
            .collect();
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        self.store.keyed_orders(sale_id, &keys).await
    }

    /// Answers a batch of a sold-out sale without selling: one primary-key read says the
    /// sale is still live (it may have been archived, its sku given to a new sale, since
    /// the sold-out memory was filled), then each buyer hears `ALREADY_PURCHASED` or
    /// `SOLD_OUT` from memory (or from one read of their purchases, for a sale too large to
    /// remember).
    async fn answer_sold_out(
        &self,
        sale_id: Uuid,
        remembered: SoldOutBuyers,
        mut by_user: HashMap<String, Vec<Reply>>,
        orders: &HashMap<String, Order>,
        limit: i32,
    ) {
        match self.store.is_unarchived(sale_id).await {
            Ok(true) => {}
            Ok(false) => {
                for reply in by_user.into_values().flatten() {
                    let _ = reply.send(Ok(PurchaseOutcome::SaleArchived));
                }
                return;
            }
            Err(err) => return fail_all(sale_id, by_user, &err),
        }
        if let Err(err) = self.answer_keyed(sale_id, &mut by_user, orders).await {
            return fail_all(sale_id, by_user, &err);
        }
        let owned: HashMap<String, Owned> = match remembered {
            Some(buyers) => by_user
                .keys()
                .filter_map(|user| buyers.get(user).map(|o| (user.clone(), o.clone())))
                .collect(),
            None => {
                let users: Vec<&str> = by_user.keys().map(String::as_str).collect();
                match self.store.owned_of(sale_id, &users).await {
                    Ok(owned) => owned,
                    Err(err) => return fail_all(sale_id, by_user, &err),
                }
            }
        };
        for (user, replies) in by_user.drain() {
            let quantity = orders.get(&user).map_or(1, |order| order.quantity);
            let answer = sold_out_answer(owned.get(&user).cloned(), quantity, limit);
            for reply in replies {
                let _ = reply.send(Ok(answer.clone()));
            }
        }
    }
}

/// Gives every request the same answer.
fn answer_all(by_user: HashMap<String, Vec<Reply>>, outcome: &PurchaseOutcome) {
    for reply in by_user.into_values().flatten() {
        let _ = reply.send(Ok(outcome.clone()));
    }
}

/// Answers every request of a failed batch with the failure, logged here once for all of
/// them: the same unavailability for each (so each buyer hears 503, and "outcome unknown"
/// where it is), else the message.
fn fail_all(sale_id: Uuid, by_user: HashMap<String, Vec<Reply>>, err: &StoreError) {
    let callers = by_user.values().map(Vec::len).sum();
    err.log_batch_failure("purchase batch", sale_id, callers);
    for reply in by_user.into_values().flatten() {
        let _ = reply.send(Err(err.copy_for_caller()));
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
