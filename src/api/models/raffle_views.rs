//! A raffle's views: the entry request, an entrant's status, and the draw for admins.

use chrono::{DateTime, Utc};
use poem_openapi::types::MaybeUndefined;
use poem_openapi::{Enum, Object};

use super::optional;
use crate::api::strict::StrictString;
use crate::domain::{RaffleEntry, RaffleStats, RaffleStatus};

/// A buyer's entry into a raffle.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
pub struct EntryRequest {
    /// The buyer, 1-128 characters, no control characters; required unless a buyer token
    /// names them (then it must match the token's `sub`), as for purchases.
    #[oai(validator(min_length = 1, max_length = 128))]
    pub user_id: MaybeUndefined<StrictString>,
    /// Units the entrant's hold will reserve if selected: 1-100 and at most the sale's
    /// `maxPerOrder` (else 400 `QUANTITY_TOO_LARGE`); default 1.
    #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
    pub quantity: MaybeUndefined<i32>,
    /// In a raffle with variants, required: the code of the variant the entrant would buy
    /// (an unknown code is 400 `UNKNOWN_VARIANT`, none 400 `VARIANT_REQUIRED`).
    #[oai(validator(min_length = 1, max_length = 32))]
    pub variant: MaybeUndefined<StrictString>,
}

impl EntryRequest {
    /// The `userId` the request names, if any, the quantity (default 1) and the variant's
    /// code, if any; `null` is refused for each (the message says why).
    pub fn claimed_user(self) -> Result<(Option<String>, i32, Option<String>), String> {
        let user = optional(self.user_id, "userId")?;
        let quantity = optional(self.quantity, "quantity")?.unwrap_or(1);
        let variant = optional(self.variant, "variant")?;
        Ok((user.map(|user| user.0), quantity, variant.map(|v| v.0)))
    }
}

/// Where an entrant stands in a raffle.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum RaffleStatusView {
    /// Entered: waiting for the draw, or ranked (`drawPosition`) and waiting for a turn.
    Entered,
    /// Holding `quantity` units until `holdExpiresAt`: confirm before then.
    Selected,
    /// Confirmed: bought.
    Purchased,
    /// The hold ran out; it passed to the next entrant in draw order.
    Expired,
    /// The stock is gone (or too little is left for this quantity): no turn will come.
    NotSelected,
    /// Withdrawn (a hold went back to stock); may not enter again.
    Withdrawn,
}

impl From<RaffleStatus> for RaffleStatusView {
    fn from(value: RaffleStatus) -> Self {
        match value {
            RaffleStatus::Entered => RaffleStatusView::Entered,
            RaffleStatus::Selected => RaffleStatusView::Selected,
            RaffleStatus::Purchased => RaffleStatusView::Purchased,
            RaffleStatus::Expired => RaffleStatusView::Expired,
            RaffleStatus::NotSelected => RaffleStatusView::NotSelected,
            RaffleStatus::Withdrawn => RaffleStatusView::Withdrawn,
        }
    }
}

/// An entrant of a raffle.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase")]
pub struct RaffleEntryView {
    pub user_id: String,
    pub status: RaffleStatusView,
    /// Units asked for at entry.
    pub quantity: i32,
    /// The variant entered for (raffles with variants).
    #[oai(skip_serializing_if_is_none)]
    pub variant: Option<String>,
    pub entered_at: DateTime<Utc>,
    /// While `selected`: confirm before this instant.
    #[oai(skip_serializing_if_is_none)]
    pub hold_expires_at: Option<DateTime<Utc>>,
    /// 1, 2, 3... in draw order, once the draw has ranked this entrant.
    #[oai(skip_serializing_if_is_none)]
    pub draw_position: Option<i64>,
    /// The draw's seed (decimal string), once entries closed and the draw began: the
    /// order is `md5(drawSeed || userId)`, then `userId` in byte order.
    #[oai(skip_serializing_if_is_none)]
    pub draw_seed: Option<String>,
}

impl From<&RaffleEntry> for RaffleEntryView {
    fn from(entry: &RaffleEntry) -> Self {
        Self {
            user_id: entry.user_id.clone(),
            status: entry.status.into(),
            quantity: entry.quantity,
            variant: entry.variant.clone(),
            entered_at: entry.entered_at,
            hold_expires_at: entry
                .hold_expires_at
                .filter(|_| entry.status == RaffleStatus::Selected),
            draw_position: entry.draw_position,
            draw_seed: entry.draw_seed.map(|seed| seed.to_string()),
        }
    }
}

/// A raffle's draw and its entrants, for admins.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase")]
pub struct RaffleStatsView {
    /// The draw's seed (decimal string), shown once entries closed and the draw began.
    #[oai(skip_serializing_if_is_none)]
    pub draw_seed: Option<String>,
    /// When entries closed and the draw began (at or just after `endsAt`).
    #[oai(skip_serializing_if_is_none)]
    pub draw_started_at: Option<DateTime<Utc>>,
    /// When the last entrant was ranked.
    #[oai(skip_serializing_if_is_none)]
    pub drawn_at: Option<DateTime<Utc>>,
    /// Entrants ranked by the draw (once drawn).
    #[oai(skip_serializing_if_is_none)]
    pub entrants: Option<i32>,
    /// When nothing was left to do: nobody waiting, no hold live.
    #[oai(skip_serializing_if_is_none)]
    pub finished_at: Option<DateTime<Utc>>,
    /// Entrants by status now.
    pub entered: i64,
    pub selected: i64,
    pub purchased: i64,
    pub expired: i64,
    pub not_selected: i64,
    pub withdrawn: i64,
}

impl From<RaffleStats> for RaffleStatsView {
    fn from(stats: RaffleStats) -> Self {
        Self {
            draw_seed: stats.draw_started_at.map(|_| stats.draw_seed.to_string()),
            draw_started_at: stats.draw_started_at,
            drawn_at: stats.drawn_at,
            entrants: stats.entrants,
            finished_at: stats.finished_at,
            entered: stats.entered,
            selected: stats.selected,
            purchased: stats.purchased,
            expired: stats.expired,
            not_selected: stats.not_selected,
            withdrawn: stats.withdrawn,
        }
    }
}

/// One message of a raffle entrant's live stream: the whole entry, so a client only renders
/// it. The SSE `event:` names what changed (`status` first, then `drawn` when the draw gave
/// the entrant a `drawPosition`, `selected`, `purchased`, `expired`, `not_selected` or
/// `withdrawn`; `closing` repeats the latest entry when the instance shuts down:
/// reconnect); `id:` is the sale's event sequence it reflects.
#[derive(Object, Debug, Clone)]
pub struct RaffleStreamEvent {
    #[oai(skip)]
    pub event: &'static str,
    #[oai(skip)]
    pub sequence: i64,
    #[oai(flatten)]
    pub entry: RaffleEntryView,
}
