//! A raffle (draw): entries, their statuses, and what a buyer sees of the draw.

use chrono::{DateTime, Utc};

/// Where an entrant stands in a raffle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaffleStatus {
    /// Entered; waiting for the draw, or ranked and waiting for their turn.
    Entered,
    /// Holding the entry's units until `hold_expires_at`: confirm to buy.
    Selected,
    /// Confirmed: bought.
    Purchased,
    /// The hold ran out; its units passed to the next entrant in draw order.
    Expired,
    /// The stock is gone (or too little is left for the entry's quantity): no turn.
    NotSelected,
    /// The entrant withdrew (a hold they had went back to stock).
    Withdrawn,
}

impl RaffleStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RaffleStatus::Entered => "entered",
            RaffleStatus::Selected => "selected",
            RaffleStatus::Purchased => "purchased",
            RaffleStatus::Expired => "expired",
            RaffleStatus::NotSelected => "not_selected",
            RaffleStatus::Withdrawn => "withdrawn",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "entered" => Some(RaffleStatus::Entered),
            "selected" => Some(RaffleStatus::Selected),
            "purchased" => Some(RaffleStatus::Purchased),
            "expired" => Some(RaffleStatus::Expired),
            "not_selected" => Some(RaffleStatus::NotSelected),
            "withdrawn" => Some(RaffleStatus::Withdrawn),
            _ => None,
        }
    }

    /// Whether the entry can still change (a later status may follow).
    pub fn is_final(self) -> bool {
        !matches!(self, RaffleStatus::Entered | RaffleStatus::Selected)
    }
}

/// One entrant of a raffle, with what the draw has revealed so far.
#[derive(Debug, Clone)]
pub struct RaffleEntry {
    pub user_id: String,
    pub status: RaffleStatus,
    /// Units asked for at entry: the hold reserves them, the confirm buys them.
    pub quantity: i32,
    /// The variant asked for at entry (its code), in a raffle with variants.
    pub variant: Option<String>,
    pub entered_at: DateTime<Utc>,
    pub hold_expires_at: Option<DateTime<Utc>>,
    /// 1, 2, 3... in draw order, once the draw has ranked this entrant.
    pub draw_position: Option<i64>,
    /// The draw's seed, shown once entries have closed and the draw has begun.
    pub draw_seed: Option<i64>,
}

/// A raffle's draw and its entrants, for admins.
#[derive(Debug, Clone, Default)]
pub struct RaffleStats {
    /// The seed; the API shows it once the draw has begun.
    pub draw_seed: i64,
    pub draw_started_at: Option<DateTime<Utc>>,
    pub drawn_at: Option<DateTime<Utc>>,
    /// Entrants ranked by the draw (set when its last slice is ranked).
    pub entrants: Option<i32>,
    pub finished_at: Option<DateTime<Utc>>,
    pub entered: i64,
    pub selected: i64,
    pub purchased: i64,
    pub expired: i64,
    pub not_selected: i64,
    pub withdrawn: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_only_entered_and_selected_can_change() {
        for status in [
            RaffleStatus::Entered,
            RaffleStatus::Selected,
            RaffleStatus::Purchased,
            RaffleStatus::Expired,
            RaffleStatus::NotSelected,
            RaffleStatus::Withdrawn,
        ] {
            assert_eq!(RaffleStatus::parse(status.as_str()), Some(status));
            let open = matches!(status, RaffleStatus::Entered | RaffleStatus::Selected);
            assert_eq!(status.is_final(), !open);
        }
        assert_eq!(RaffleStatus::parse("held"), None);
    }
}
