//! The [`ErrorBody`] constructors that several routes share: one place says each refusal's
//! code, message and the field it carries.

use poem_openapi::payload::Json;

use super::{ErrorBody, ErrorCode, parse_error_body};
use crate::domain::{Purchase, SaleState};

/// Bodies shared by several routes.
impl ErrorBody {
    pub fn sale_not_found(sale_ref: &str) -> Json<Self> {
        Self::json(ErrorCode::SaleNotFound, format!("no sale {sale_ref:?}"))
    }

    /// `NOT_ELIGIBLE`: the buyer is not on the sale's allow-list.
    pub fn not_eligible() -> Json<Self> {
        Self::json(
            ErrorCode::NotEligible,
            "this sale is restricted to the buyers on its allow-list",
        )
    }

    pub fn invalid_user_id() -> Json<Self> {
        Self::json(
            ErrorCode::InvalidRequest,
            "userId must be 1-128 characters without control characters",
        )
    }

    /// `ALREADY_PURCHASED`, carrying the purchase so a retry learns it won.
    pub fn already_purchased(purchase: Purchase) -> Json<Self> {
        let mut body = Self::new(
            ErrorCode::AlreadyPurchased,
            "this user already bought from this sale",
        );
        body.purchase = Some(Box::new(purchase.into()));
        Json(body)
    }

    /// `VARIANT_REQUIRED`: the sale has variants and the order names none.
    pub fn variant_required() -> Json<Self> {
        Self::json(
            ErrorCode::VariantRequired,
            "this sale has variants: name one (variant)",
        )
    }

    /// `UNKNOWN_VARIANT`: the sale has no variant with the code named (or has none).
    pub fn unknown_variant() -> Json<Self> {
        Self::json(
            ErrorCode::UnknownVariant,
            "this sale has no variant with this code",
        )
    }

    /// `SOLD_OUT` of one variant while others still sell.
    pub fn variant_sold_out() -> Json<Self> {
        Self::json(
            ErrorCode::SoldOut,
            "this variant is sold out (others are not)",
        )
    }

    /// `INSUFFICIENT_STOCK`, carrying the units left.
    pub fn insufficient_stock(available: i32) -> Json<Self> {
        let mut body = Self::new(
            ErrorCode::InsufficientStock,
            format!("only {available} units are left, fewer than the order asks for"),
        );
        body.available = Some(available.into());
        Json(body)
    }

    /// `LIMIT_REACHED`, carrying what remains of the buyer's limit.
    pub fn limit_reached(remaining: i32) -> Json<Self> {
        let mut body = Self::new(
            ErrorCode::LimitReached,
            format!(
                "the order would pass this sale's per-customer limit; {remaining} more units \
                 may be bought"
            ),
        );
        body.remaining = Some(remaining.into());
        Json(body)
    }

    /// `QUANTITY_TOO_LARGE`, carrying the sale's `maxPerOrder`.
    pub fn quantity_too_large(max_per_order: i32) -> Json<Self> {
        let mut body = Self::new(
            ErrorCode::QuantityTooLarge,
            format!("one order of this sale may ask for at most {max_per_order} units"),
        );
        body.max_per_order = Some(max_per_order.into());
        Json(body)
    }

    /// `NOT_ACCEPTING_ENTRIES`, carrying the sale's state.
    pub fn not_accepting_entries(state: SaleState) -> Json<Self> {
        let message = format!(
            "the raffle takes entries only while active; it is {}",
            state.as_str()
        );
        Self::with_state(ErrorCode::NotAcceptingEntries, message, state)
    }

    /// `SALE_NOT_ACTIVE`, carrying the sale's state.
    pub fn not_active(state: SaleState) -> Json<Self> {
        let message = format!("the sale is {}", state.as_str());
        Self::with_state(ErrorCode::SaleNotActive, message, state)
    }

    fn with_state(code: ErrorCode, message: String, state: SaleState) -> Json<Self> {
        let mut body = Self::new(code, message);
        body.state = Some(state.into());
        Json(body)
    }

    pub fn rate_limited(retry_after: u64) -> Json<Self> {
        Self::json(
            ErrorCode::RateLimited,
            format!("too many requests for this user; retry after {retry_after} s"),
        )
    }

    /// The body for a request that failed to parse (see [`parse_error_body`]).
    pub fn bad_input(err: poem::Error) -> Json<Self> {
        parse_error_body(&err).1
    }
}
