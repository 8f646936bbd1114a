//! Buyer routes: the public sale view and instant checkout.

use std::sync::Arc;

use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};
use uuid::Uuid;

use super::ApiTags;
use super::buyer_auth::{BuyerAuth, BuyerTokens, IdentityRefusal, identity_refusal};
use super::error::{ErrorBody, ErrorCode, ServerError};
use super::models::{PurchaseRequest, PurchaseView, SaleView};
use super::rate_limit::RateLimits;
use super::view_cache::SaleViewCache;
use crate::domain::sale::valid_user_id;
use crate::metrics::Metrics;
use crate::store::{PurchaseBatcher, PurchaseOutcome, Store};

pub struct BuyerApi {
    pub store: Store,
    pub limits: Arc<RateLimits>,
    pub tokens: Arc<BuyerTokens>,
    pub purchases: PurchaseBatcher,
    pub views: Arc<SaleViewCache>,
    pub metrics: Metrics,
}

identity_refusal!(PurchaseResponse, GetPurchaseResponse);

#[derive(ApiResponse)]
#[oai(bad_request_handler = "sale_view_parse_error")]
pub enum SaleViewResponse {
    /// The sale as of now: state and counters are read in one statement.
    #[oai(status = 200)]
    Ok(Json<SaleView>),
    /// `INVALID_REQUEST`: the sale reference is too long.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `SALE_NOT_FOUND`.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
}

fn sale_view_parse_error(err: poem::Error) -> SaleViewResponse {
    SaleViewResponse::BadRequest(ErrorBody::bad_input(err))
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "purchase_parse_error")]
pub enum PurchaseResponse {
    /// Bought: the purchase is committed.
    #[oai(status = 201)]
    Created(Json<PurchaseView>),
    /// `INVALID_REQUEST`: malformed JSON, missing, unknown or invalid `userId`, a
    /// `quantity` outside 1-100; `QUANTITY_TOO_LARGE` (with `maxPerOrder`): more units than
    /// the sale's `maxPerOrder`.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHENTICATED`: with buyer tokens on, a missing or invalid token.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `FORBIDDEN`: the token's user is not the request's `userId`; `NOT_ELIGIBLE`: the
    /// sale has an allow-list and the buyer is not on it.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// `SALE_NOT_FOUND`.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// Refused, nothing bought: `SOLD_OUT`; `INSUFFICIENT_STOCK` (with `available`, fewer
    /// units than asked for); `LIMIT_REACHED` (with `remaining`, what the buyer may still
    /// buy); `ALREADY_PURCHASED` (a sale whose per-customer limit is 1, with `purchase`, the
    /// one the user owns); `SALE_NOT_ACTIVE` (with `state`); `WRONG_CHECKOUT` (a queued
    /// sale).
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// `RATE_LIMITED`: too many requests for this user; retry after `Retry-After` seconds.
    #[oai(status = 429)]
    TooManyRequests(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
}

fn purchase_parse_error(err: poem::Error) -> PurchaseResponse {
    PurchaseResponse::BadRequest(ErrorBody::bad_input(err))
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "get_purchase_parse_error")]
pub enum GetPurchaseResponse {
    /// The user's purchase in this sale.
    #[oai(status = 200)]
    Ok(Json<PurchaseView>),
    /// `INVALID_REQUEST`: the sale reference or user id is too long or empty.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHENTICATED`: with buyer tokens on, a missing or invalid token.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `FORBIDDEN`: the token's user is not the request's `userId`.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// `SALE_NOT_FOUND`, or `NOT_PURCHASED` when the user has no purchase in it.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
}

fn get_purchase_parse_error(err: poem::Error) -> GetPurchaseResponse {
    GetPurchaseResponse::BadRequest(ErrorBody::bad_input(err))
}

fn conflict(code: ErrorCode, message: &str) -> PurchaseResponse {
    PurchaseResponse::Conflict(ErrorBody::json(code, message))
}

#[OpenApi(prefix_path = "/api/v1/sales", tag = "ApiTags::Buyer")]
impl BuyerApi {
    /// A sale's public view
    ///
    /// State and counters are read together; the view may be up to `SALE_VIEW_CACHE_MS`
    /// old (default 100 ms, at most 1 s; 0 = always fresh); a sku always names the sale it
    /// names now. Purchases never rely on it. By id, an
    /// archived sale is shown (state `archived`); by sku, only the live sale with it.
    #[oai(path = "/:sale", method = "get", operation_id = "getSale")]
    async fn get_sale(
        &self,
        /// The sale's id or sku.
        #[oai(validator(max_length = 64))]
        sale: Path<String>,
    ) -> Result<SaleViewResponse, ServerError> {
        // The id a sku names now (fresh: never a cached answer about an archived sale).
        let id = match Uuid::parse_str(&sale.0) {
            Ok(id) => Some(id),
            Err(_) => self.store.live_sale_id(&sale.0).await?,
        };
        if let Some(view) = id.and_then(|id| self.views.get(id)) {
            return Ok(SaleViewResponse::Ok(Json(view)));
        }
        let found = match id {
            Some(id) => self.store.sale_by_id(id).await?,
            None => None,
        };
        Ok(match found {
            Some(found) => {
                let view = SaleView::from(&found);
                self.views.put(&view);
                SaleViewResponse::Ok(Json(view))
            }
            None => SaleViewResponse::NotFound(ErrorBody::sale_not_found(&sale.0)),
        })
    }

    /// Buy (instant checkout)
    ///
    /// One order of `quantity` units (default 1), all or nothing, within the sale's
    /// `maxPerOrder` and the buyer's `perCustomerLimit` over all their orders (both 1 by
    /// default: one unit per user per sale). The answer comes after the order is committed.
    ///
    /// With the limit 1 a repeat is the same order: it answers 409 `ALREADY_PURCHASED` with
    /// the purchase. Above 1 every request is a new order, until the limit (then 409
    /// `LIMIT_REACHED`), unless it names an `orderKey` the buyer has ordered under: then it
    /// is that order again (409 `ALREADY_PURCHASED` with it).
    ///
    /// A 503 `UNAVAILABLE` with `outcomeUnknown: true` means the purchase was sent to the
    /// database but its answer was lost: it may have committed. With the limit 1, retry the
    /// same request: it answers 201 (it had not) or 409 `ALREADY_PURCHASED` with the
    /// purchase (it had). Above 1, the same holds for a request with an `orderKey`; without
    /// one, read `GET /api/v1/users/{userId}/purchases` before ordering again.
    #[oai(path = "/:sale/purchases", method = "post", operation_id = "purchase")]
    #[tracing::instrument(skip_all, fields(sale = %sale.0, user))]
    async fn purchase(
        &self,
        auth: BuyerAuth,
        /// The sale's id or sku.
        #[oai(validator(max_length = 64))]
        sale: Path<String>,
        body: Json<PurchaseRequest>,
    ) -> Result<PurchaseResponse, ServerError> {
        let (claimed, order, variant) = match body.0.claimed_user() {
            Ok(claimed) => claimed,
            Err(message) => {
                return Ok(PurchaseResponse::BadRequest(ErrorBody::json(
                    ErrorCode::InvalidRequest,
                    message,
                )));
            }
        };
        let user_id = match self.tokens.identify(&auth, claimed.as_deref()) {
            Ok(user_id) => user_id,
            Err(err) => return Ok(PurchaseResponse::refuse(err)),
        };
        tracing::Span::current().record("user", user_id.as_str());
        if !valid_user_id(&user_id) {
            return Ok(PurchaseResponse::BadRequest(ErrorBody::invalid_user_id()));
        }
        if let Err(retry_after) = self.limits.per_user.check(&user_id) {
            return Ok(PurchaseResponse::TooManyRequests(
                ErrorBody::rate_limited(retry_after),
                retry_after,
            ));
        }
        let outcome = match self
            .purchases
            .purchase_order(&sale.0, &user_id, order, variant.as_deref())
            .await
        {
            Ok(outcome) => outcome,
            Err(err) => {
                let name = if err.is_unavailable() {
                    "unavailable"
                } else {
                    "error"
                };
                self.metrics.purchases.with_label_values(&[name]).inc();
                return Err(err.into());
            }
        };
        tracing::info!(outcome = outcome_name(&outcome), "purchase");
        self.metrics
            .purchases
            .with_label_values(&[outcome_name(&outcome)])
            .inc();
        Ok(match outcome {
            PurchaseOutcome::Purchased(purchase) => {
                PurchaseResponse::Created(Json(purchase.into()))
            }
            PurchaseOutcome::AlreadyPurchased(purchase) => {
                PurchaseResponse::Conflict(ErrorBody::already_purchased(purchase))
            }
            PurchaseOutcome::SoldOut => conflict(ErrorCode::SoldOut, "the sale is sold out"),
            PurchaseOutcome::VariantSoldOut => {
                PurchaseResponse::Conflict(ErrorBody::variant_sold_out())
            }
            PurchaseOutcome::VariantRequired => {
                PurchaseResponse::BadRequest(ErrorBody::variant_required())
            }
            PurchaseOutcome::UnknownVariant => {
                PurchaseResponse::BadRequest(ErrorBody::unknown_variant())
            }
            PurchaseOutcome::InsufficientStock { available } => {
                PurchaseResponse::Conflict(ErrorBody::insufficient_stock(available))
            }
            PurchaseOutcome::LimitReached { remaining } => {
                PurchaseResponse::Conflict(ErrorBody::limit_reached(remaining))
            }
            PurchaseOutcome::QuantityTooLarge { max_per_order } => {
                PurchaseResponse::BadRequest(ErrorBody::quantity_too_large(max_per_order))
            }
            PurchaseOutcome::NotActive(state) => {
                PurchaseResponse::Conflict(ErrorBody::not_active(state))
            }
            PurchaseOutcome::NotEligible => PurchaseResponse::Forbidden(ErrorBody::not_eligible()),
            PurchaseOutcome::WrongCheckout => conflict(
                ErrorCode::WrongCheckout,
                "this sale uses the queued checkout: join its queue",
            ),
            // The queue resolves an archived sale into NotActive or AlreadyPurchased; this
            // arm is for completeness.
            PurchaseOutcome::SaleNotFound | PurchaseOutcome::SaleArchived => {
                PurchaseResponse::NotFound(ErrorBody::sale_not_found(&sale.0))
            }
        })
    }

    /// A user's purchase in a sale
    ///
    /// The user's first order in the sale (their only one with the default limit 1; all of
    /// them are listed by `GET /api/v1/users/{userId}/purchases`). By the sale's id this
    /// works for archived sales too: a purchase is never lost.
    #[oai(
        path = "/:sale/purchases/:user_id",
        method = "get",
        operation_id = "getPurchase"
    )]
    async fn get_purchase(
        &self,
        auth: BuyerAuth,
        /// The sale's id or sku.
        #[oai(validator(max_length = 64))]
        sale: Path<String>,
        /// The buyer.
        #[oai(validator(min_length = 1, max_length = 128))]
        user_id: Path<String>,
    ) -> Result<GetPurchaseResponse, ServerError> {
        if let Err(err) = self.tokens.identify(&auth, Some(&user_id.0)) {
            return Ok(GetPurchaseResponse::refuse(err));
        }
        let Some(found) = self.store.resolve_sale(&sale.0).await? else {
            return Ok(GetPurchaseResponse::NotFound(ErrorBody::sale_not_found(
                &sale.0,
            )));
        };
        Ok(
            match self.store.find_purchase(found.id, &user_id.0).await? {
                Some(purchase) => GetPurchaseResponse::Ok(Json(purchase.into())),
                None => GetPurchaseResponse::NotFound(ErrorBody::json(
                    ErrorCode::NotPurchased,
                    "this user has no purchase in this sale",
                )),
            },
        )
    }
}

fn outcome_name(outcome: &PurchaseOutcome) -> &'static str {
    match outcome {
        PurchaseOutcome::Purchased(_) => "purchased",
        PurchaseOutcome::AlreadyPurchased(_) => "already_purchased",
        PurchaseOutcome::SoldOut => "sold_out",
        PurchaseOutcome::VariantSoldOut => "variant_sold_out",
        PurchaseOutcome::VariantRequired => "variant_required",
        PurchaseOutcome::UnknownVariant => "unknown_variant",
        PurchaseOutcome::InsufficientStock { .. } => "insufficient_stock",
        PurchaseOutcome::LimitReached { .. } => "limit_reached",
        PurchaseOutcome::QuantityTooLarge { .. } => "quantity_too_large",
        PurchaseOutcome::NotActive(_) => "not_active",
        PurchaseOutcome::WrongCheckout => "wrong_checkout",
        PurchaseOutcome::NotEligible => "not_eligible",
        PurchaseOutcome::SaleNotFound => "sale_not_found",
        PurchaseOutcome::SaleArchived => "sale_archived",
    }
}
