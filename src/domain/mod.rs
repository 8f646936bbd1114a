//! Plain types and rules of a flash sale: no SQL, no HTTP.
//!
//! The store fills these types from rows, the API turns them into JSON, and the rules here
//! (what state a sale is in, what a valid new sale is) are the one place both agree on.

pub mod backoff;
pub mod events;
pub mod queue;
pub mod raffle;
pub mod sale;

pub use backoff::{backoff, jittered};
pub use events::{
    BadCursor, Event, EventType, FeedCursor, WebhookEndpoint, WebhookUrlError, check_webhook_url,
    new_webhook_secret,
};
pub use queue::{EntryStatus, QueueEntry};
pub use raffle::{RaffleEntry, RaffleStats, RaffleStatus};
pub use sale::{
    Checkout, EndReason, NewSale, NewSaleError, NewVariant, Purchase, Sale, SaleState, Variant,
};
