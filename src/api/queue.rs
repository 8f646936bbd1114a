//! Queued checkout: join the waiting room, poll the position, confirm the hold, leave; and a
//! buyer's purchases across sales.

use std::sync::Arc;

use poem_openapi::OpenApi;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;

use super::ApiTags;
use super::buyer_auth::{BuyerAuth, BuyerTokens, IdentityError, IdentityRefusal};
use super::error::{ErrorBody, ErrorCode, ServerError};
use super::models::{PurchaseRequest, PurchaseView, QueueStatusView};
use super::rate_limit::RateLimits;
use crate::domain::sale::valid_user_id;
use crate::domain::{EntryStatus, Sale};
use crate::metrics::Metrics;
use crate::store::{ConfirmOutcome, JoinBatcher, JoinOutcome, LeaveOutcome, Store};

mod responses;

use responses::*;

/// Seconds a buyer refused with `QUEUE_FULL` is told to wait.
const QUEUE_FULL_RETRY_SECONDS: u64 = 5;

pub struct QueueApi {
    pub store: Store,
    /// Joins go through group commit.
    pub joins: JoinBatcher,
    pub limits: Arc<RateLimits>,
    pub tokens: Arc<BuyerTokens>,
    pub metrics: Metrics,
}

/// Why a buyer write was refused before it reached the store.
enum Refusal {
    Identity(IdentityError),
    RateLimited(u64),
}

impl QueueApi {
    /// The sale `{sale}` names, resolved once at the edge.
    async fn resolve(&self, sale_ref: &str) -> Result<Option<Sale>, ServerError> {
        Ok(self.store.resolve_sale(sale_ref).await?)
    }

    fn count(&self, action: &str, outcome: &str) {
        self.metrics
            .queue_actions
            .with_label_values(&[action, outcome])
            .inc();
    }

    /// The verified buyer of a write route, checked and within its rate limit.
    fn buyer(&self, auth: &BuyerAuth, claimed: Option<&str>) -> Result<String, Refusal> {
        let user_id = self
            .tokens
            .identify(auth, claimed)
            .map_err(Refusal::Identity)?;
        if !valid_user_id(&user_id) {
            return Err(Refusal::Identity(IdentityError::MissingUser));
        }
        self.limits
            .per_user
            .check(&user_id)
            .map_err(Refusal::RateLimited)?;
        Ok(user_id)
    }
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Queue")]
impl QueueApi {
    /// Join a queued sale's waiting room
    ///
    /// Buyers who join before the opening are in a pre-queue whose order is drawn once, by a
    /// seeded shuffle dealt from the opening on; later buyers are served first come, first
    /// served. Joins are group-committed per sale: each buyer is answered after the commit.
    #[oai(
        path = "/sales/:sale/queue",
        method = "post",
        operation_id = "joinQueue"
    )]
    #[tracing::instrument(skip_all, fields(sale = %sale.0))]
    async fn join(
        &self,
        auth: BuyerAuth,
        /// The sale's id or sku.
        #[oai(validator(max_length = 64))]
        sale: Path<String>,
        body: Json<PurchaseRequest>,
    ) -> Result<JoinResponse, ServerError> {
        let (claimed, quantity, variant) = match body.0.claimed_user() {
            Ok((_, order, _)) if order.key.is_some() => {
                return Ok(JoinResponse::BadRequest(ErrorBody::json(
                    ErrorCode::InvalidRequest,
                    "orderKey is for instant purchases: a queue entry is its own key",
                )));
            }
            Ok((claimed, order, variant)) => (claimed, order.quantity, variant),
            Err(message) => {
                return Ok(JoinResponse::BadRequest(ErrorBody::json(
                    ErrorCode::InvalidRequest,
                    message,
                )));
            }
        };
        let user_id = match self.buyer(&auth, claimed.as_deref()) {
            Ok(user_id) => user_id,
            Err(Refusal::Identity(err)) => return Ok(JoinResponse::refuse(err)),
            Err(Refusal::RateLimited(retry)) => {
                return Ok(JoinResponse::TooManyRequests(
                    ErrorBody::rate_limited(retry),
                    retry,
                ));
            }
        };
        let outcome = self
            .joins
            .join_order(&sale.0, &user_id, quantity, variant.as_deref())
            .await?;
        self.count("join", join_outcome_name(&outcome));
        Ok(match outcome {
            JoinOutcome::Queued(entry) | JoinOutcome::Held(entry) => {
                JoinResponse::Accepted(Json(QueueStatusView::new(&entry, None)))
            }
            JoinOutcome::AlreadyPurchased(purchase) => {
                JoinResponse::Conflict(ErrorBody::already_purchased(purchase))
            }
            JoinOutcome::SoldOut => JoinResponse::Conflict(ErrorBody::json(
                ErrorCode::SoldOut,
                "the sale is sold out and no hold can come back",
            )),
            JoinOutcome::VariantSoldOut => JoinResponse::Conflict(ErrorBody::variant_sold_out()),
            JoinOutcome::VariantRequired => JoinResponse::BadRequest(ErrorBody::variant_required()),
            JoinOutcome::UnknownVariant => JoinResponse::BadRequest(ErrorBody::unknown_variant()),
            JoinOutcome::NotActive(state) => JoinResponse::Conflict(ErrorBody::not_active(state)),
            JoinOutcome::QueueFull => JoinResponse::QueueFull(
                ErrorBody::json(ErrorCode::QueueFull, "the queue is full; retry later"),
                QUEUE_FULL_RETRY_SECONDS,
            ),
            JoinOutcome::WrongCheckout => JoinResponse::Conflict(wrong_checkout()),
            JoinOutcome::NotEligible => JoinResponse::Forbidden(ErrorBody::not_eligible()),
            JoinOutcome::QuantityTooLarge { max_per_order } => {
                JoinResponse::BadRequest(ErrorBody::quantity_too_large(max_per_order))
            }
            JoinOutcome::InsufficientStock { unsold } => {
                JoinResponse::Conflict(ErrorBody::insufficient_stock(unsold))
            }
            JoinOutcome::SaleNotFound => JoinResponse::NotFound(ErrorBody::sale_not_found(&sale.0)),
        })
    }

    /// A buyer's place in the queue
    #[oai(
        path = "/sales/:sale/queue/:user_id",
        method = "get",
        operation_id = "queueStatus"
    )]
    async fn status(
        &self,
        auth: BuyerAuth,
        /// The sale's id or sku.
        #[oai(validator(max_length = 64))]
        sale: Path<String>,
        /// The buyer.
        #[oai(validator(min_length = 1, max_length = 128))]
        user_id: Path<String>,
    ) -> Result<QueueStatusResponse, ServerError> {
        if let Err(err) = self.tokens.identify(&auth, Some(&user_id.0)) {
            return Ok(QueueStatusResponse::refuse(err));
        }
        let Some(found) = self.resolve(&sale.0).await? else {
            return Ok(QueueStatusResponse::NotFound(ErrorBody::sale_not_found(
                &sale.0,
            )));
        };
        Ok(match self.store.queue_entry(found.id, &user_id.0).await? {
            Some(entry) => {
                QueueStatusResponse::Ok(Json(QueueStatusView::new(&entry, Some(&found))))
            }
            None if found.checkout == crate::domain::Checkout::Instant => {
                QueueStatusResponse::Conflict(wrong_checkout())
            }
            None => QueueStatusResponse::NotFound(not_in_queue()),
        })
    }

    /// Confirm the hold: buy the held unit
    #[oai(
        path = "/sales/:sale/queue/:user_id/confirm",
        method = "post",
        operation_id = "confirmHold"
    )]
    #[tracing::instrument(skip_all, fields(sale = %sale.0, user = %user_id.0))]
    async fn confirm(
        &self,
        auth: BuyerAuth,
        /// The sale's id or sku.
        #[oai(validator(max_length = 64))]
        sale: Path<String>,
        /// The buyer.
        #[oai(validator(min_length = 1, max_length = 128))]
        user_id: Path<String>,
    ) -> Result<ConfirmResponse, ServerError> {
        match self.buyer(&auth, Some(&user_id.0)) {
            Ok(_) => {}
            Err(Refusal::Identity(err)) => return Ok(ConfirmResponse::refuse(err)),
            Err(Refusal::RateLimited(retry)) => {
                return Ok(ConfirmResponse::TooManyRequests(
                    ErrorBody::rate_limited(retry),
                    retry,
                ));
            }
        }
        let Some(found) = self.resolve(&sale.0).await? else {
            return Ok(ConfirmResponse::NotFound(ErrorBody::sale_not_found(
                &sale.0,
            )));
        };
        let outcome = self.store.confirm_hold(&found, &user_id.0).await?;
        let name = confirm_outcome_name(&outcome);
        tracing::info!(outcome = name, "confirm");
        self.count("confirm", name);
        Ok(match outcome {
            ConfirmOutcome::Purchased(purchase) => ConfirmResponse::Created(Json(purchase.into())),
            ConfirmOutcome::HoldExpired => ConfirmResponse::Gone(ErrorBody::json(
                ErrorCode::HoldExpired,
                "the hold ran out before the confirmation; join again to queue anew",
            )),
            ConfirmOutcome::NoHold => ConfirmResponse::Conflict(ErrorBody::json(
                ErrorCode::NoHold,
                "still queued: wait for a hold before confirming",
            )),
            ConfirmOutcome::AlreadyPurchased(purchase) => {
                ConfirmResponse::Conflict(ErrorBody::already_purchased(purchase))
            }
            ConfirmOutcome::NotActive(state) => {
                ConfirmResponse::Conflict(ErrorBody::not_active(state))
            }
            ConfirmOutcome::NotInQueue => ConfirmResponse::NotFound(not_in_queue()),
            ConfirmOutcome::WrongCheckout => ConfirmResponse::Conflict(wrong_checkout()),
        })
    }

    /// Leave the queue or release the hold
    #[oai(
        path = "/sales/:sale/queue/:user_id",
        method = "delete",
        operation_id = "leaveQueue"
    )]
    #[tracing::instrument(skip_all, fields(sale = %sale.0, user = %user_id.0))]
    async fn leave(
        &self,
        auth: BuyerAuth,
        /// The sale's id or sku.
        #[oai(validator(max_length = 64))]
        sale: Path<String>,
        /// The buyer.
        #[oai(validator(min_length = 1, max_length = 128))]
        user_id: Path<String>,
    ) -> Result<LeaveResponse, ServerError> {
        match self.buyer(&auth, Some(&user_id.0)) {
            Ok(_) => {}
            Err(Refusal::Identity(err)) => return Ok(LeaveResponse::refuse(err)),
            Err(Refusal::RateLimited(retry)) => {
                return Ok(LeaveResponse::TooManyRequests(
                    ErrorBody::rate_limited(retry),
                    retry,
                ));
            }
        }
        let Some(found) = self.resolve(&sale.0).await? else {
            return Ok(LeaveResponse::NotFound(ErrorBody::sale_not_found(&sale.0)));
        };
        Ok(match self.store.leave_queue(&found, &user_id.0).await? {
            LeaveOutcome::Left
            | LeaveOutcome::Released
            | LeaveOutcome::Finished(EntryStatus::Left)
            | LeaveOutcome::Finished(EntryStatus::Expired) => {
                match self.store.queue_entry(found.id, &user_id.0).await? {
                    Some(entry) => LeaveResponse::Ok(Json(QueueStatusView::new(&entry, None))),
                    None => LeaveResponse::NotFound(not_in_queue()),
                }
            }
            LeaveOutcome::Finished(_) => {
                match self.store.find_purchase(found.id, &user_id.0).await? {
                    Some(purchase) => {
                        LeaveResponse::Conflict(ErrorBody::already_purchased(purchase))
                    }
                    None => LeaveResponse::NotFound(not_in_queue()),
                }
            }
            LeaveOutcome::NotInQueue => LeaveResponse::NotFound(not_in_queue()),
            LeaveOutcome::WrongCheckout => LeaveResponse::Conflict(wrong_checkout()),
        })
    }

    /// A buyer's purchases across sales
    #[oai(
        path = "/users/:user_id/purchases",
        method = "get",
        operation_id = "userPurchases"
    )]
    async fn user_purchases(
        &self,
        auth: BuyerAuth,
        /// The buyer.
        #[oai(validator(min_length = 1, max_length = 128))]
        user_id: Path<String>,
    ) -> Result<UserPurchasesResponse, ServerError> {
        if let Err(err) = self.tokens.identify(&auth, Some(&user_id.0)) {
            return Ok(UserPurchasesResponse::refuse(err));
        }
        let purchases = self.store.user_purchases(&user_id.0).await?;
        Ok(UserPurchasesResponse::Ok(Json(
            purchases.into_iter().map(PurchaseView::from).collect(),
        )))
    }
}

fn join_outcome_name(outcome: &JoinOutcome) -> &'static str {
    match outcome {
        JoinOutcome::Queued(_) => "queued",
        JoinOutcome::Held(_) => "held",
        JoinOutcome::AlreadyPurchased(_) => "already_purchased",
        JoinOutcome::SoldOut => "sold_out",
        JoinOutcome::VariantSoldOut => "variant_sold_out",
        JoinOutcome::VariantRequired => "variant_required",
        JoinOutcome::UnknownVariant => "unknown_variant",
        JoinOutcome::NotActive(_) => "not_active",
        JoinOutcome::QueueFull => "queue_full",
        JoinOutcome::QuantityTooLarge { .. } => "quantity_too_large",
        JoinOutcome::InsufficientStock { .. } => "insufficient_stock",
        JoinOutcome::WrongCheckout => "wrong_checkout",
        JoinOutcome::NotEligible => "not_eligible",
        JoinOutcome::SaleNotFound => "sale_not_found",
    }
}

fn confirm_outcome_name(outcome: &ConfirmOutcome) -> &'static str {
    match outcome {
        ConfirmOutcome::Purchased(_) => "purchased",
        ConfirmOutcome::HoldExpired => "hold_expired",
        ConfirmOutcome::NoHold => "no_hold",
        ConfirmOutcome::AlreadyPurchased(_) => "already_purchased",
        ConfirmOutcome::NotActive(_) => "not_active",
        ConfirmOutcome::NotInQueue => "not_in_queue",
        ConfirmOutcome::WrongCheckout => "wrong_checkout",
    }
}
