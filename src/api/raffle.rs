//! Raffles: enter during the window, read the entry, confirm a selection, withdraw. The
//! draw and the selections are the raffle tick's (a background job); see the README's
//! "Raffles (draws)".

use std::sync::Arc;

use poem_openapi::OpenApi;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;

use super::ApiTags;
use super::buyer_auth::{BuyerAuth, BuyerTokens, IdentityError, IdentityRefusal};
use super::error::{ErrorBody, ErrorCode, ServerError};
use super::models::{EntryRequest, RaffleEntryView};
use super::rate_limit::RateLimits;
use crate::domain::sale::valid_user_id;
use crate::domain::{RaffleStatus, Sale};
use crate::metrics::Metrics;
use crate::store::{EnterOutcome, EntryBatcher, RaffleConfirmOutcome, Store, WithdrawOutcome};

mod responses;

use responses::*;

pub struct RaffleApi {
    pub store: Store,
    /// Entries go through group commit.
    pub entries: EntryBatcher,
    pub limits: Arc<RateLimits>,
    pub tokens: Arc<BuyerTokens>,
    pub metrics: Metrics,
}

/// Why a buyer write was refused before it reached the store.
enum Refusal {
    Identity(IdentityError),
    RateLimited(u64),
}

impl RaffleApi {
    fn count(&self, action: &str, outcome: &str) {
        self.metrics
            .queue_actions
            .with_label_values(&[action, outcome])
            .inc();
    }

    /// The verified buyer of a write route, checked and within its rate limit (as the
    /// queue's routes).
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

    async fn resolve(&self, sale_ref: &str) -> Result<Option<Sale>, ServerError> {
        Ok(self.store.resolve_sale(sale_ref).await?)
    }
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Raffle")]
impl RaffleApi {
    /// Enter a raffle
    ///
    /// During the sale's window. Entering again answers 200 with the entry as it is.
    /// Entries are group-committed per sale: each buyer is answered after the commit.
    #[oai(
        path = "/sales/:sale/entries",
        method = "post",
        operation_id = "enterRaffle"
    )]
    #[tracing::instrument(skip_all, fields(sale = %sale.0))]
    async fn enter(
        &self,
        auth: BuyerAuth,
        /// The sale's id or sku.
        #[oai(validator(max_length = 64))]
        sale: Path<String>,
        body: Json<EntryRequest>,
    ) -> Result<EnterResponse, ServerError> {
        let (claimed, quantity, variant) = match body.0.claimed_user() {
            Ok(request) => request,
            Err(message) => {
                return Ok(EnterResponse::BadRequest(ErrorBody::json(
                    ErrorCode::InvalidRequest,
                    message,
                )));
            }
        };
        let user_id = match self.buyer(&auth, claimed.as_deref()) {
            Ok(user_id) => user_id,
            Err(Refusal::Identity(err)) => return Ok(EnterResponse::refuse(err)),
            Err(Refusal::RateLimited(retry)) => {
                return Ok(EnterResponse::TooManyRequests(
                    ErrorBody::rate_limited(retry),
                    retry,
                ));
            }
        };
        let outcome = self
            .entries
            .enter_variant(&sale.0, &user_id, quantity, variant.as_deref())
            .await?;
        self.count("enter", enter_outcome_name(&outcome));
        Ok(match outcome {
            EnterOutcome::Entered(entry) => {
                EnterResponse::Accepted(Json(RaffleEntryView::from(&entry)))
            }
            EnterOutcome::Existing(entry) => EnterResponse::Ok(Json(RaffleEntryView::from(&entry))),
            EnterOutcome::Withdrawn(_) => EnterResponse::Conflict(ErrorBody::json(
                ErrorCode::EntryWithdrawn,
                "this buyer withdrew from this raffle and may not enter again",
            )),
            EnterOutcome::NotAccepting(state) => {
                EnterResponse::Conflict(ErrorBody::not_accepting_entries(state))
            }
            EnterOutcome::QuantityTooLarge { max_per_order } => {
                EnterResponse::BadRequest(ErrorBody::quantity_too_large(max_per_order))
            }
            EnterOutcome::NotEligible => EnterResponse::Forbidden(ErrorBody::not_eligible()),
            EnterOutcome::VariantRequired => {
                EnterResponse::BadRequest(ErrorBody::variant_required())
            }
            EnterOutcome::UnknownVariant => EnterResponse::BadRequest(ErrorBody::unknown_variant()),
            EnterOutcome::WrongCheckout => EnterResponse::Conflict(wrong_checkout()),
            EnterOutcome::SaleNotFound => {
                EnterResponse::NotFound(ErrorBody::sale_not_found(&sale.0))
            }
        })
    }

    /// An entrant's status
    #[oai(
        path = "/sales/:sale/entries/:user_id",
        method = "get",
        operation_id = "raffleEntry"
    )]
    async fn entry(
        &self,
        auth: BuyerAuth,
        /// The sale's id or sku.
        #[oai(validator(max_length = 64))]
        sale: Path<String>,
        /// The buyer.
        #[oai(validator(min_length = 1, max_length = 128))]
        user_id: Path<String>,
    ) -> Result<EntryResponse, ServerError> {
        if let Err(err) = self.tokens.identify(&auth, Some(&user_id.0)) {
            return Ok(EntryResponse::refuse(err));
        }
        let Some(found) = self.resolve(&sale.0).await? else {
            return Ok(EntryResponse::NotFound(ErrorBody::sale_not_found(&sale.0)));
        };
        if found.checkout != crate::domain::Checkout::Raffle {
            return Ok(EntryResponse::Conflict(wrong_checkout()));
        }
        Ok(match self.store.raffle_entry(found.id, &user_id.0).await? {
            Some(entry) => EntryResponse::Ok(Json(RaffleEntryView::from(&entry))),
            None => EntryResponse::NotFound(not_entered()),
        })
    }

    /// Confirm a selection: buy the held units
    #[oai(
        path = "/sales/:sale/entries/:user_id/confirm",
        method = "post",
        operation_id = "confirmEntry"
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
    ) -> Result<EntryConfirmResponse, ServerError> {
        match self.buyer(&auth, Some(&user_id.0)) {
            Ok(_) => {}
            Err(Refusal::Identity(err)) => return Ok(EntryConfirmResponse::refuse(err)),
            Err(Refusal::RateLimited(retry)) => {
                return Ok(EntryConfirmResponse::TooManyRequests(
                    ErrorBody::rate_limited(retry),
                    retry,
                ));
            }
        }
        let Some(found) = self.resolve(&sale.0).await? else {
            return Ok(EntryConfirmResponse::NotFound(ErrorBody::sale_not_found(
                &sale.0,
            )));
        };
        let outcome = self.store.confirm_selection(&found, &user_id.0).await?;
        let name = confirm_outcome_name(&outcome);
        tracing::info!(outcome = name, "raffle confirm");
        self.count("raffle_confirm", name);
        Ok(match outcome {
            RaffleConfirmOutcome::Purchased(purchase) => {
                EntryConfirmResponse::Created(Json(purchase.into()))
            }
            RaffleConfirmOutcome::HoldExpired => EntryConfirmResponse::Gone(ErrorBody::json(
                ErrorCode::HoldExpired,
                "the hold ran out before the confirmation; it passed to the next entrant",
            )),
            RaffleConfirmOutcome::NotSelected(status) => {
                EntryConfirmResponse::Conflict(not_selected(status))
            }
            RaffleConfirmOutcome::AlreadyPurchased(purchase) => {
                EntryConfirmResponse::Conflict(ErrorBody::already_purchased(purchase))
            }
            RaffleConfirmOutcome::NotActive(state) => {
                EntryConfirmResponse::Conflict(ErrorBody::not_active(state))
            }
            RaffleConfirmOutcome::NotEntered => EntryConfirmResponse::NotFound(not_entered()),
            RaffleConfirmOutcome::WrongCheckout => EntryConfirmResponse::Conflict(wrong_checkout()),
        })
    }

    /// Withdraw from a raffle (a selected entrant's hold passes on)
    #[oai(
        path = "/sales/:sale/entries/:user_id",
        method = "delete",
        operation_id = "withdrawEntry"
    )]
    #[tracing::instrument(skip_all, fields(sale = %sale.0, user = %user_id.0))]
    async fn withdraw(
        &self,
        auth: BuyerAuth,
        /// The sale's id or sku.
        #[oai(validator(max_length = 64))]
        sale: Path<String>,
        /// The buyer.
        #[oai(validator(min_length = 1, max_length = 128))]
        user_id: Path<String>,
    ) -> Result<WithdrawResponse, ServerError> {
        match self.buyer(&auth, Some(&user_id.0)) {
            Ok(_) => {}
            Err(Refusal::Identity(err)) => return Ok(WithdrawResponse::refuse(err)),
            Err(Refusal::RateLimited(retry)) => {
                return Ok(WithdrawResponse::TooManyRequests(
                    ErrorBody::rate_limited(retry),
                    retry,
                ));
            }
        }
        let Some(found) = self.resolve(&sale.0).await? else {
            return Ok(WithdrawResponse::NotFound(ErrorBody::sale_not_found(
                &sale.0,
            )));
        };
        let outcome = self.store.withdraw_entry(&found, &user_id.0).await?;
        Ok(match outcome {
            WithdrawOutcome::Withdrawn { .. }
            | WithdrawOutcome::Finished(RaffleStatus::Withdrawn) => {
                match self.store.raffle_entry(found.id, &user_id.0).await? {
                    Some(entry) => WithdrawResponse::Ok(Json(RaffleEntryView::from(&entry))),
                    None => WithdrawResponse::NotFound(not_entered()),
                }
            }
            WithdrawOutcome::Finished(RaffleStatus::Purchased) => {
                match self.store.find_purchase(found.id, &user_id.0).await? {
                    Some(purchase) => {
                        WithdrawResponse::Conflict(ErrorBody::already_purchased(purchase))
                    }
                    None => WithdrawResponse::NotFound(not_entered()),
                }
            }
            WithdrawOutcome::Finished(RaffleStatus::Expired) => {
                WithdrawResponse::Conflict(ErrorBody::json(
                    ErrorCode::HoldExpired,
                    "the hold ran out already and passed on; nothing to withdraw",
                ))
            }
            WithdrawOutcome::Finished(status) => WithdrawResponse::Conflict(not_selected(status)),
            WithdrawOutcome::NotEntered => WithdrawResponse::NotFound(not_entered()),
            WithdrawOutcome::WrongCheckout => WithdrawResponse::Conflict(wrong_checkout()),
        })
    }
}

/// `NOT_SELECTED`, saying where the entrant stands.
fn not_selected(status: RaffleStatus) -> Json<ErrorBody> {
    let message = match status {
        RaffleStatus::Entered => "not selected yet: wait for the draw and your turn",
        RaffleStatus::Withdrawn => "this entrant withdrew",
        _ => "not selected: the stock went to entrants ranked before",
    };
    ErrorBody::json(ErrorCode::NotSelected, message)
}

fn enter_outcome_name(outcome: &EnterOutcome) -> &'static str {
    match outcome {
        EnterOutcome::Entered(_) => "entered",
        EnterOutcome::Existing(_) => "existing",
        EnterOutcome::Withdrawn(_) => "withdrawn",
        EnterOutcome::NotAccepting(_) => "not_accepting",
        EnterOutcome::QuantityTooLarge { .. } => "quantity_too_large",
        EnterOutcome::NotEligible => "not_eligible",
        EnterOutcome::VariantRequired => "variant_required",
        EnterOutcome::UnknownVariant => "unknown_variant",
        EnterOutcome::WrongCheckout => "wrong_checkout",
        EnterOutcome::SaleNotFound => "sale_not_found",
    }
}

fn confirm_outcome_name(outcome: &RaffleConfirmOutcome) -> &'static str {
    match outcome {
        RaffleConfirmOutcome::Purchased(_) => "purchased",
        RaffleConfirmOutcome::HoldExpired => "hold_expired",
        RaffleConfirmOutcome::NotSelected(_) => "not_selected",
        RaffleConfirmOutcome::AlreadyPurchased(_) => "already_purchased",
        RaffleConfirmOutcome::NotActive(_) => "not_active",
        RaffleConfirmOutcome::NotEntered => "not_entered",
        RaffleConfirmOutcome::WrongCheckout => "wrong_checkout",
    }
}
